//! Types shared by the XDP programs (`lb-ebpf`) and the control plane
//! (`lb-control`): map keys and values, flags, limits and counter indices.
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree
//! on the byte layout. Addresses and ports are kept in network byte order:
//! the data plane copies them from packets without conversion.
#![no_std]

pub mod stats;

pub use stats::{Action, DecapStat, Stat};

/// Bumped whenever the layout of any pinned map changes; part of the pin path
/// so an upgraded daemon never reads maps written with an older layout.
pub const MAP_LAYOUT_VERSION: u32 = 8;

/// Maglev table size per VIP; a prime. The data plane reads the real value
/// from the `RING_SIZE` global set at load time.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Default number of VIPs the maps are sized for.
pub const DEFAULT_MAX_VIPS: u32 = 512;
/// Default number of backend slots (index 0 is reserved, see [`REAL_NONE`]).
pub const DEFAULT_MAX_REALS: u32 = 4096;
/// Default size of the connection table (slots).
pub const DEFAULT_CONN_TABLE_SIZE: u32 = 1 << 20;
/// Spare Maglev rings beyond one per VIP: a VIP's new table is written into a
/// spare ring and then switched to in one map update, so readers never see a
/// half-written table.
pub const RING_SPARES: u32 = 2;
/// Default largest L3 packet the egress link carries (its MTU).
pub const DEFAULT_MTU: u32 = 1500;
/// Hop limit / TTL of the outer header of encapsulated packets.
pub const ENCAP_TTL: u8 = 64;

/// Backend index meaning "no backend": an empty Maglev slot.
pub const REAL_NONE: u32 = 0;

/// Address family tags used in keys (not the libc values, which differ by OS).
pub const FAMILY_NONE: u8 = 0;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;

/// VIP flag: hash on the client address only (client stickiness across
/// connections), not its source port.
pub const VIP_F_HASH_NO_SRC_PORT: u32 = 1 << 0;
/// VIP flag: never use the connection table (every packet takes the Maglev
/// table's current choice).
pub const VIP_F_NO_CONN_TABLE: u32 = 1 << 1;
/// VIP flag: UDP packets never use the connection table.
pub const VIP_F_UDP_NO_CONN_TABLE: u32 = 1 << 2;
/// Marks the per-address entry `(addr, 0, ICMP/ICMPv6)` the control plane
/// writes for every VIP address: echo requests to it are answered.
pub const VIP_F_ICMP_ECHO: u32 = 1 << 3;
/// Every flag the data plane understands.
pub const VIP_F_ALL: u32 =
    VIP_F_HASH_NO_SRC_PORT | VIP_F_NO_CONN_TABLE | VIP_F_UDP_NO_CONN_TABLE | VIP_F_ICMP_ECHO;

/// Control flag: the config map has been filled; until then the balancer
/// passes every packet to the kernel.
pub const CFG_F_READY: u32 = 1 << 0;
/// Control flag: some VIP listens on every port (port 0), so a miss on the
/// exact key needs a second lookup.
pub const CFG_F_HAS_PORT0_VIPS: u32 = 1 << 1;

/// An IPv4 or IPv6 address as four words holding the network-order bytes
/// (`u32::from_ne_bytes` of each 4-byte group). IPv4 uses word 0 only.
pub type Addr = [u32; 4];

/// Converts IPv4 octets to an [`Addr`].
#[inline(always)]
pub const fn addr_v4(octets: [u8; 4]) -> Addr {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Converts IPv6 octets to an [`Addr`].
#[inline(always)]
pub const fn addr_v6(o: [u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

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

/// Value of the `REALS` array: one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    pub addr: Addr,
    /// [`FAMILY_NONE`] marks an unused slot.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Key of the connection table: the flow as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The flow `src:src_port → dst:dst_port` (ports in network order).
    #[inline(always)]
    pub const fn new(family: u8, proto: u8, src: Addr, src_port: u16, dst: Addr, dst_port: u16) -> Self {
        FlowKey { src, dst, src_port, dst_port, proto, family, _pad: [0; 2] }
    }
}

/// A connection's backend, as the control plane reads and writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    /// Index into `REALS`.
    pub real: u32,
}

/// The connection table is one array shared by all CPUs, 8-way
/// set-associative: a flow's set (low bits of [`flow_hash64`]) is one 64-byte cache line
/// of eight 64-bit slots. A slot packs the flow's 47-bit fingerprint
/// ([`flow_hash64`]), a reference bit and the 16-bit backend index, so
/// every write is one atomic 64-bit store: concurrent CPUs can lose an
/// update (a later miss re-inserts it) but never see a torn entry, and
/// lookups of established flows only read (no lock, no cache-line bouncing).
/// Replacement approximates LRU with the reference bit (CLOCK, as the
/// kernel's LRU maps do): a hit marks the slot; an insert takes an empty
/// slot, else one not referenced since it was written, so one-packet flows
/// (a SYN flood) go before established ones.
pub const CONN_WAYS: u32 = 8;
/// Low 16 bits of a slot: the backend index ([`REAL_NONE`]: empty).
pub const CONN_REAL_MASK: u64 = 0xffff;
/// Bit 16 of a slot: referenced since written or last swept.
pub const CONN_REFERENCED: u64 = 1 << 16;
/// Bits 17..64 of a slot: the flow's fingerprint, the top bits of
/// [`flow_hash64`]. Two flows of one set share them with probability about
/// 2^-47.
pub const CONN_FINGERPRINT_MASK: u64 = !0x1_ffff;
/// Backend indices must fit a slot.
pub const MAX_REALS_LIMIT: u32 = 1 << 16;

/// A slot holding `real` for the flow of this hash, unreferenced.
#[inline(always)]
pub const fn conn_slot(fingerprint: u64, real: u32) -> u64 {
    (fingerprint & CONN_FINGERPRINT_MASK) | (real as u64 & CONN_REAL_MASK)
}

/// The 64-bit hash of a flow's full 5-tuple: its low bits pick the
/// connection table's set, its top 47 bits are the slot's fingerprint, its
/// low 32 bits give the outer source address and IPv6 flow label. Only the
/// Maglev choice uses the pinned [`flow_hash`], and only on a
/// connection-table miss. 64-bit multiply-xorshift rounds: half the work of
/// two 32-bit hashes. Not pinned: it never leaves one host.
#[inline(always)]
pub const fn flow_hash64(flow: &FlowKey) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let (s, d) = (&flow.src, &flow.dst);
    let ports = ((flow.src_port as u64) << 48)
        | ((flow.dst_port as u64) << 32)
        | ((flow.proto as u64) << 8)
        | flow.family as u64;
    let mut h = 0x243f_6a88_85a3_08d3u64;
    h = (h ^ (((s[0] as u64) << 32) | s[1] as u64)).wrapping_mul(K);
    h = (h ^ (h >> 29) ^ (((s[2] as u64) << 32) | s[3] as u64)).wrapping_mul(K);
    h = (h ^ (h >> 29) ^ (((d[0] as u64) << 32) | d[1] as u64)).wrapping_mul(K);
    h = (h ^ (h >> 29) ^ (((d[2] as u64) << 32) | d[3] as u64)).wrapping_mul(K);
    h = (h ^ (h >> 29) ^ ports).wrapping_mul(K);
    // splitmix64's finaliser: every input bit reaches every output bit.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Sets of a table of at most `slots` slots: a power of two, so the set
/// index is a mask.
pub const fn conn_sets(slots: u32) -> u32 {
    let sets = slots / CONN_WAYS;
    if sets <= 1 {
        1
    } else {
        1 << (31 - sets.leading_zeros())
    }
}

/// The single entry of the `CONFIG` array: per-host forwarding settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// `CFG_F_*` flags.
    pub flags: u32,
    /// Largest L3 packet (outer header included) the egress link carries.
    pub mtu: u32,
    /// Next hop's MAC: destination of every encapsulated frame.
    pub gw_mac: [u8; 6],
    /// The balancer interface's MAC: source of every encapsulated frame.
    pub if_mac: [u8; 6],
    /// Outer IPv4 source: `src_v4 | (flow hash & src_v4_mask)`.
    pub src_v4: u32,
    pub src_v4_mask: u32,
    /// Outer IPv6 source: the same, word by word.
    pub src_v6: Addr,
    pub src_v6_mask: Addr,
}

/// Per-CPU packet and byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Key of the decap program's `DECAP_ADDRS` map: an outer destination this
/// host accepts tunnelled packets for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapAddr {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Murmur3-style mixing: cheap in BPF (no loops, no tables) and well spread.
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The flow hash that picks a Maglev slot and the outer source address.
///
/// Shared by both sides so tests and tools can predict the data plane's
/// choice. It has no per-host seed on purpose: every balancer behind the same
/// ECMP route must send a flow to the same backend. Ports are raw network
/// order `u16`s; pass `src_port = 0` for client-address stickiness.
#[inline(always)]
pub const fn flow_hash(src: &Addr, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    flow_hash_seeded(0x9747_b28c, src, src_port, dst_port, proto)
}

#[inline(always)]
const fn flow_hash_seeded(seed: u32, src: &Addr, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let mut h = seed;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    finish(h ^ 24)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no implicit padding
    // (padding is explicit), so every bit pattern is a valid value.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for Real {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for DecapAddr {}
    unsafe impl aya::Pod for VipFilter {}
    unsafe impl aya::Pod for VipBucket {}
}

// Layout guards: the eBPF side and user space must agree byte for byte.
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<VipMeta>() == 12);
const _: () = assert!(core::mem::size_of::<Real>() == 20);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 4);
const _: () = assert!(8 * CONN_WAYS as usize == 64);
const _: () = assert!(core::mem::size_of::<LbConfig>() == 60);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<DecapAddr>() == 20);
const _: () = assert!(core::mem::size_of::<VipSlot>() == 32);
const _: () = assert!(core::mem::size_of::<VipBucket>() == 136);

/// Maps a flow hash to a slot of a Maglev ring of `ring_size` entries.
///
/// A multiply-shift (Lemire's range reduction) instead of `%`: uniform over
/// the ring and far cheaper than a division in the data plane.
#[inline(always)]
pub const fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    ((hash as u64 * ring_size as u64) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every balancer, of every version, must hash a flow the same way:
    /// hosts behind one ECMP route would otherwise disagree on backends
    /// during a rolling upgrade. These values were computed once; a change
    /// here is a breaking change of the data plane.
    #[test]
    fn flow_hash_is_pinned() {
        let client = addr_v4([192, 0, 2, 7]);
        let p = |x: u16| u16::from_ne_bytes(x.to_be_bytes());
        let client6 = addr_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        let got = [
            flow_hash(&client, p(40000), p(80), IPPROTO_TCP),
            flow_hash(&client, 0, p(80), IPPROTO_TCP),
            flow_hash(&client6, p(40000), p(443), IPPROTO_UDP),
        ];
        assert_eq!(got, PINNED);
    }

    const PINNED: [u32; 3] = [4_287_520_068, 1_889_238_607, 1_242_248_024];

    #[test]
    fn flow_hash_depends_on_every_input() {
        let a = addr_v4([10, 0, 0, 1]);
        let base = flow_hash(&a, 1, 2, IPPROTO_TCP);
        assert_ne!(base, flow_hash(&addr_v4([10, 0, 0, 2]), 1, 2, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, 3, 2, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, 1, 3, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, 1, 2, IPPROTO_UDP));
        assert_ne!(base, flow_hash(&[a[0], 1, 0, 0], 1, 2, IPPROTO_TCP));
    }

    #[test]
    fn ring_slot_stays_in_range_and_spreads() {
        let size = DEFAULT_RING_SIZE;
        assert_eq!(ring_slot(0, size), 0);
        assert_eq!(ring_slot(u32::MAX, size), size - 1);
        let mut buckets = [0u32; 16];
        for i in 0..160_000u32 {
            let h = flow_hash(&addr_v4(i.to_be_bytes()), 0, 0, IPPROTO_TCP);
            let slot = ring_slot(h, size);
            assert!(slot < size);
            buckets[(slot as u64 * 16 / size as u64) as usize] += 1;
        }
        // 10,000 expected per bucket; a fair hash stays well within 5%.
        for b in buckets {
            assert!((9_500..=10_500).contains(&b), "uneven buckets: {buckets:?}");
        }
    }

    #[test]
    fn counter_names_are_unique_and_snake_case() {
        let mut names: [&str; Stat::COUNT as usize] = [""; Stat::COUNT as usize];
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
            names[i] = s.name();
            assert!(s.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
        }
        names.sort_unstable();
        assert!(names.windows(2).all(|w| w[0] != w[1]));
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

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

#[cfg(test)]
mod hash64_tests {
    extern crate std;
    use super::*;

    fn flow(i: u32) -> FlowKey {
        FlowKey::new(FAMILY_V4, IPPROTO_TCP, addr_v4((0xc000_0200 + (i >> 16)).to_be_bytes()), (i & 0xffff) as u16, addr_v4([10, 0, 0, 10]), 80u16.to_be())
    }

    #[test]
    fn flow_hash64_spreads_sets_and_separates_fingerprints() {
        // 2^17 flows from 2 clients over 1024 sets: about 128 each.
        let mut sets = [0u32; 1024];
        let mut fingerprints = std::collections::HashSet::new();
        for i in 0..(1 << 17) {
            let h = flow_hash64(&flow(i));
            sets[(h & 1023) as usize] += 1;
            fingerprints.insert(h & CONN_FINGERPRINT_MASK);
        }
        let (lo, hi) = sets.iter().fold((u32::MAX, 0), |(lo, hi), &n| (lo.min(n), hi.max(n)));
        assert!(lo > 80 && hi < 180, "sets from {lo} to {hi} flows");
        assert_eq!(fingerprints.len(), 1 << 17, "no two flows share a fingerprint");
        // Every field matters, the destination included.
        let base = flow_hash64(&flow(7));
        let mut f = flow(7);
        f.dst = addr_v4([10, 0, 0, 11]);
        assert_ne!(flow_hash64(&f), base);
        f = flow(7);
        f.proto = IPPROTO_UDP;
        assert_ne!(flow_hash64(&f), base);
    }
}
