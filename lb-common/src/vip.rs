//! VIP keys and values, the VIP table's buckets and the VIP address
//! filter.

use crate::{
    addr::Addr,
    hash::{finish, mix},
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

/// The hash that picks a VIP's bucket.
#[inline(always)]
pub const fn vip_key_hash(key: &VipKey) -> u32 {
    let mut h = 0x1b87_3593;
    h = mix(h, key.addr[0]);
    h = mix(h, key.addr[1]);
    h = mix(h, key.addr[2]);
    h = mix(h, key.addr[3]);
    h = mix(h, ((key.port as u32) << 16) | ((key.proto as u32) << 8) | key.family as u32);
    finish(h)
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
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use crate::addr::{addr_v4, addr_v6};

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
