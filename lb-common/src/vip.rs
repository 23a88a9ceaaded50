//! VIP keys and values, the VIP table's buckets, the VIP address filter
//! and the VIP address table.

use crate::{
    addr::Addr,
    consts::{FAMILY_V4, IPPROTO_ICMP, IPPROTO_ICMPV6, VIP_F_ICMP_ECHO},
};

/// A bitmap of VIP addresses, hashed: a packet whose destination's bit is
/// clear is not for any VIP, and goes to the kernel without a hash-map
/// lookup. A set bit may be a collision; the `VIPS` lookup decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipFilter {
    pub words: [u64; VIP_FILTER_WORDS as usize],
}

pub const VIP_FILTER_WORDS: u32 = 64;

impl Default for VipFilter {
    fn default() -> Self {
        Self { words: [0; VIP_FILTER_WORDS as usize] }
    }
}

impl VipFilter {
    pub fn insert(&mut self, addr: &Addr) {
        let bit = vip_filter_bit(addr);
        self.words[(bit / 64) as usize] |= 1 << (bit % 64);
    }

    pub fn contains(&self, addr: &Addr) -> bool {
        let bit = vip_filter_bit(addr);
        self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    pub fn union(&self, other: &VipFilter) -> VipFilter {
        let mut out = *self;
        for (w, o) in out.words.iter_mut().zip(other.words) {
            *w |= o;
        }
        out
    }
}

/// The filter bit of an address (0..4096): a multiplicative hash of its
/// words folded together.
#[inline(always)]
pub const fn vip_filter_bit(addr: &Addr) -> u32 {
    let x = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    x.wrapping_mul(0x9e37_79b1) >> 20
}

/// A VIP as the data plane's fast table holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    /// `family == FAMILY_NONE` marks an empty slot.
    pub key: VipKey,
    pub meta: VipMeta,
}

/// Default buckets of the VIP table: room for the default VIPs and their
/// echo markers at one per bucket on average.
pub const DEFAULT_VIP_BUCKETS: u32 = 1024;

/// Slots per bucket of the VIP table.
pub const VIP_BUCKET_SLOTS: usize = 4;

/// One bucket of the VIP table: up to four VIPs whose [`vip_key_hash`]
/// picks it. A full bucket sets `overflow`, and lookups of keys it does not
/// hold go on to the `VIPS` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipBucket {
    pub slots: [VipSlot; VIP_BUCKET_SLOTS],
    pub overflow: u32,
    pub _pad: u32,
}

/// Which copy of the VIP table is live: entry 0 of `VIP_TABLE_LIVE`. The
/// `VIP_TABLE` array holds two copies of the table, one after the other;
/// the control plane rebuilds the one not live, then points `base` at it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipTableLive {
    /// The live copy's first bucket: 0, or the buckets of one copy.
    pub base: u32,
    /// The live copy's first slot of `VIP_ADDRS`: 0 or [`VIP_ADDR_SLOTS`]
    /// (published with the table, from the same VIPs).
    pub addrs_base: u32,
    /// 0 until the control plane first published a table (a new map).
    pub published: u32,
    pub _pad: u32,
}

/// Slots of each copy of the VIP address table (`VIP_ADDRS`): one per bit
/// of the VIP filter, which picks the slot ([`vip_filter_bit`]).
pub const VIP_ADDR_SLOTS: u32 = VIP_FILTER_WORDS * 64;

/// [`VipAddrSlot::family`] when two or more VIP addresses share the slot:
/// the data plane asks the VIP table for the address's echo marker.
pub const VIP_ADDR_SHARED: u32 = 0xff;

/// One slot of the VIP address table: the one VIP address (an address with
/// its echo marker) whose filter bit this is, so the data plane tells
/// exactly whether a packet is for a VIP address with one read (echo
/// replies; the rare paths that ask [`is_echo_marker`]'s question).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipAddrSlot {
    pub addr: Addr,
    /// `FAMILY_V4`/`FAMILY_V6` of `addr`; `FAMILY_NONE`: no VIP address has
    /// this bit; [`VIP_ADDR_SHARED`]: more than one has.
    pub family: u32,
    /// The kernel lays array values out 8 bytes apart; user space maps
    /// the array as a slice of these.
    pub _pad: u32,
}

/// The key of `addr`'s echo marker: `(address, 0, ICMP or ICMPv6)`. The
/// control plane writes it, with [`VIP_F_ICMP_ECHO`], for every VIP address.
pub const fn echo_marker_key(family: u8, addr: Addr) -> VipKey {
    let proto = if family == FAMILY_V4 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 };
    VipKey { addr, port: 0, proto, family }
}

/// Whether a VIPS entry is an address's echo marker: its
/// [`echo_marker_key`] with [`VIP_F_ICMP_ECHO`]. An address with its marker
/// is a VIP address.
pub const fn is_echo_marker(key: &VipKey, meta: &VipMeta) -> bool {
    let marker = echo_marker_key(key.family, key.addr);
    key.port == marker.port && key.proto == marker.proto && meta.flags & VIP_F_ICMP_ECHO != 0
}

/// The hash that picks a VIP's bucket: three independent 64-bit multiplies
/// (address halves, port/protocol/family) folded by a fourth. Every VIP
/// packet computes it, and the bucket index only needs a good spread of
/// its low bits, not a murmur chain of five dependent rounds (a quarter of
/// the instructions; bench/README, "Where the nanoseconds go").
#[inline(always)]
pub const fn vip_key_hash(key: &VipKey) -> u32 {
    let a = key.addr;
    let rest = ((key.port as u64) << 16) | ((key.proto as u64) << 8) | key.family as u64;
    let x = (a[0] as u64 | (a[1] as u64) << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (a[2] as u64 | (a[3] as u64) << 32).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ (rest | 0x5a00_0000_0000).wrapping_mul(0x1656_67b1_9e37_79f9);
    ((x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 32) as u32
}

/// Whether two VIP keys are equal, word by word (a derived `==` may become a
/// `memcmp` call, which BPF has not got).
#[inline(always)]
pub fn same_vip_key(a: &VipKey, b: &VipKey) -> bool {
    // SAFETY: VipKey is 20 bytes of plain data with no padding.
    let a: [u32; 5] = unsafe { core::mem::transmute(*a) };
    // SAFETY: as above.
    let b: [u32; 5] = unsafe { core::mem::transmute(*b) };
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// Key of the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKey {
    pub addr: Addr,
    /// Network byte order; 0 means every port of this address.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// `VIP_F_*` flags.
    pub flags: u32,
    /// Index of this VIP's counters in `VIP_STATS`.
    pub vip_num: u32,
    /// Which ring of the `RINGS` pool holds this VIP's Maglev table.
    pub ring: u32,
}

/// Value of the `REALS` array: one *real*, the data plane's word for a
/// backend slot. The config, the API and lbctl speak of *backends*; the
/// engine gives each (VIP, backend) pair its own real, so removing a
/// backend from one VIP frees that VIP's real alone (and its flows
/// re-hash) while other VIPs keep theirs. `limits.max_backends` =
/// `max_reals` − 1 (index 0 is [`crate::REAL_NONE`]) counts pairs; the
/// `REAL_OWNERS` array names each real's VIP, and per-backend counters are
/// the sums over a backend's reals.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    pub addr: Addr,
    /// [`FAMILY_NONE`] marks an unused slot.
    pub family: u8,
    pub _pad: [u8; 3],
}

// Layout guards: the eBPF side and user space must agree byte for byte.
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<VipMeta>() == 12);
const _: () = assert!(core::mem::size_of::<Real>() == 20);
const _: () = assert!(core::mem::size_of::<VipSlot>() == 32);
const _: () = assert!(core::mem::size_of::<VipBucket>() == 136);
const _: () = assert!(core::mem::size_of::<VipTableLive>() == 16);
const _: () = assert!(core::mem::size_of::<VipAddrSlot>() == 24);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, no implicit padding (padding is explicit), so
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipMeta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Real {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipTableLive {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipAddrSlot {}
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use crate::addr::{addr_v4, addr_v6};

    #[test]
    fn vip_key_hash_spreads_vips_over_buckets() {
        // 512 VIPs in consecutive addresses, each with its echo marker, and
        // 512 IPv6 VIPs: 1,536 keys over 1,024 buckets of 4 slots. A random
        // spread overflows about 19 buckets (five keys or more, Poisson
        // 1.5); allow twice that. And every field matters.
        let mut buckets = [0u32; 1024];
        for i in 0..512u32 {
            let v4 = crate::addr_v4((0x0a00_000au32 + i).to_be_bytes());
            let v6 = crate::addr_v6((0xfc00_0000_0000_0000_0000_0000_0000_0010u128 + i as u128).to_be_bytes());
            for key in [
                VipKey { addr: v4, port: 80u16.to_be(), proto: 6, family: crate::FAMILY_V4 },
                VipKey { addr: v4, port: 0, proto: 1, family: crate::FAMILY_V4 },
                VipKey { addr: v6, port: 443u16.to_be(), proto: 6, family: crate::FAMILY_V6 },
            ] {
                buckets[(vip_key_hash(&key) & 1023) as usize] += 1;
            }
        }
        let overflowing = buckets.iter().filter(|&&n| n as usize > VIP_BUCKET_SLOTS).count();
        assert!(overflowing <= 38, "{overflowing} buckets overflow");
        let key = VipKey { addr: crate::addr_v4([10, 0, 0, 10]), port: 80u16.to_be(), proto: 6, family: 4 };
        let h = vip_key_hash(&key);
        assert_ne!(h, vip_key_hash(&VipKey { port: 81u16.to_be(), ..key }));
        assert_ne!(h, vip_key_hash(&VipKey { proto: 17, ..key }));
        assert_ne!(h, vip_key_hash(&VipKey { family: 6, ..key }));
        assert_ne!(h, vip_key_hash(&VipKey { addr: crate::addr_v4([10, 0, 0, 11]), ..key }));
    }

    #[test]
    fn vip_filter_holds_what_was_inserted_and_little_else() {
        let mut f = VipFilter::default();
        for i in 0..64u32 {
            f.insert(&addr_v4((0x0a00_0000 + i).to_be_bytes()));
        }
        for i in 0..64u32 {
            assert!(f.contains(&addr_v4((0x0a00_0000 + i).to_be_bytes())));
        }
        // 64 of 4096 bits set: about 1.6% of other addresses collide.
        let false_hits = (1000..11_000u32).filter(|i| f.contains(&addr_v4((0x0b00_0000 + i).to_be_bytes()))).count();
        assert!(false_hits < 400, "{false_hits} false hits in 10000");
        let v6 = addr_v6([0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(!VipFilter::default().contains(&v6));
        let mut g = VipFilter::default();
        g.insert(&v6);
        assert!(g.union(&f).contains(&v6) && g.union(&f).contains(&addr_v4([10, 0, 0, 0])));
    }
}
