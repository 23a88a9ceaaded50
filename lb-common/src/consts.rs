//! Limits, defaults, family and protocol numbers, flags and the names of
//! every map and load-time global: defined once, read by both sides.

/// Bumped whenever the layout of any pinned map changes; part of the pin path
/// so an upgraded daemon never reads maps written with an older layout.
pub const MAP_LAYOUT_VERSION: u32 = 12;

/// Maglev table size per VIP; a prime. The data plane reads the real value
/// from the `RING_SIZE` global set at load time.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Default number of VIPs the maps are sized for.
pub const DEFAULT_MAX_VIPS: u32 = 512;
/// Default number of reals: backend slots, one per (VIP, backend) pair
/// (index 0 is reserved, see [`REAL_NONE`]).
pub const DEFAULT_MAX_REALS: u32 = 16384;
/// Default size of the connection table (slots).
pub const DEFAULT_CONN_TABLE_SIZE: u32 = 1 << 20;
/// Spare Maglev rings beyond one per VIP: a VIP's new table is written into a
/// spare ring and then switched to in one map update, so readers never see a
/// half-written table.
pub const RING_SPARES: u32 = 2;
/// Rings beyond those for VIPs and spares that keep VIPs' previous Maglev
/// tables for second chance (`PREV_RINGS`): while a VIP's previous table is
/// kept, a flow that misses the connection table and whose backend changed
/// with the table carries its previous backend as a second hop. When every
/// one is taken, the oldest previous table is let go early.
pub const PREVIOUS_RINGS: u32 = 32;
/// `PREV_RINGS` value meaning "no previous table"; any other value is the
/// ring's index plus one (so a zeroed map means none).
pub const PREV_RING_NONE: u32 = 0;
/// SYN-flood mode: the window new flows are counted in, per CPU
/// ([`crate::SynFloodState`]).
pub const SYN_FLOOD_WINDOW_NS: u64 = 1_000_000_000;
/// SYN-flood mode: a CPU reads the clock on the new flow that would cross
/// the threshold and on every this many (a power of two) only, so a window,
/// and the mode with it, ends at most this many flows late.
pub const SYN_FLOOD_CLOCK_EVERY: u64 = 16;
/// SYN-flood mode: the default threshold, new flows per CPU per window
/// (Katran's `MAX_CONN_RATE`). 0 turns the mode off.
pub const DEFAULT_SYN_FLOOD_THRESHOLD: u32 = 125_000;

/// Default largest L3 packet the egress link carries (its MTU).
pub const DEFAULT_MTU: u32 = 1500;
/// Hop limit / TTL of the outer header of encapsulated packets.
pub const ENCAP_TTL: u8 = 64;

/// Backend index meaning "no backend": an empty Maglev slot.
pub const REAL_NONE: u32 = 0;

/// Largest Maglev ring accepted (entries); bounds the ring pool's memory
/// (a ring is `ring_size * 2` bytes: u16 slots). The largest prime below it
/// is 1 048 573.
pub const MAX_RING_SIZE: u32 = 1 << 20;

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
pub const VIP_F_ALL: u32 = VIP_F_HASH_NO_SRC_PORT | VIP_F_NO_CONN_TABLE | VIP_F_UDP_NO_CONN_TABLE | VIP_F_ICMP_ECHO;

/// Control flag: the config map has been filled; until then the balancer
/// passes every packet to the kernel.
pub const CFG_F_READY: u32 = 1 << 0;
/// Control flag: some VIP listens on every port (port 0), so a miss on the
/// exact key needs a second lookup.
pub const CFG_F_HAS_PORT0_VIPS: u32 = 1 << 1;

/// Names of the balancer's maps: the statics of `lb-ebpf/src/balancer/maps.rs`
/// carry exactly these names (aya-ebpf's `#[map]` takes the static's
/// identifier or a literal, not a constant), and a test of lb-control
/// checks the object's maps against [`BALANCER_MAPS`] both ways.
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const VIP_TABLE: &str = "VIP_TABLE";
    pub const VIP_TABLE_LIVE: &str = "VIP_TABLE_LIVE";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const REALS: &str = "REALS";
    pub const REAL_OWNERS: &str = "REAL_OWNERS";
    pub const RINGS: &str = "RINGS";
    pub const CONN_TABLE: &str = "CONN_TABLE";
    pub const CONFIG: &str = "CONFIG";
    pub const STATS: &str = "STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    pub const PREV_RINGS: &str = "PREV_RINGS";
    pub const SYN_FLOOD: &str = "SYN_FLOOD";
    pub const CAPTURE_FILTER: &str = "CAPTURE_FILTER";
    pub const CAPTURE_RING: &str = "CAPTURE_RING";
    pub const CAPTURE_SCRATCH: &str = "CAPTURE_SCRATCH";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_STATS: &str = "DECAP_STATS";

    /// The capture's maps: never pinned, so a new program (a restart)
    /// starts unarmed (see [`crate::CaptureFilter`]).
    pub const CAPTURE_MAPS: [&str; 3] = [CAPTURE_FILTER, CAPTURE_RING, CAPTURE_SCRATCH];

    /// Every pinned map of the balancer object (the object also has the
    /// [`CAPTURE_MAPS`]).
    pub const BALANCER_MAPS: [&str; 15] = [
        VIPS,
        VIP_FILTER,
        VIP_TABLE,
        VIP_TABLE_LIVE,
        VIP_ADDRS,
        REALS,
        REAL_OWNERS,
        RINGS,
        PREV_RINGS,
        CONN_TABLE,
        CONFIG,
        STATS,
        VIP_STATS,
        REAL_STATS,
        SYN_FLOOD,
    ];
    /// Every map of the decap object.
    pub const DECAP_MAPS: [&str; 2] = [DECAP_ADDRS, DECAP_STATS];
}

/// Names of the balancer's load-time globals (`#[no_mangle]` statics the
/// control plane overrides with `EbpfLoader::override_global`).
pub mod global_names {
    pub const RING_SIZE: &str = "RING_SIZE";
    pub const CONN_SETS: &str = "CONN_SETS";
    pub const VIP_BUCKETS: &str = "VIP_BUCKETS";
    /// Every load-time global of the balancer object.
    pub const BALANCER_GLOBALS: [&str; 3] = [RING_SIZE, CONN_SETS, VIP_BUCKETS];
}
