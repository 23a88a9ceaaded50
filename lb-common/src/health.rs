//! Health probes through the tunnel: the shared facts of the TC egress
//! program (`lb-ebpf/src/health/main.rs`) and the daemon's prober. A probe
//! socket carries `SO_MARK = HEALTH_MARK_BASE + target`; the program looks
//! the mark up in `HEALTH_TARGETS` and encapsulates the packet to that
//! backend exactly as the balancer encapsulates data packets.

/// The first mark of the probe range. Marks `HEALTH_MARK_BASE ..
/// HEALTH_MARK_BASE + MAX_HEALTH_TARGETS` belong to the daemon: chosen high
/// and odd-looking ("LBH" in ASCII) so they do not meet the small marks
/// firewalls and policy routing usually use.
pub const HEALTH_MARK_BASE: u32 = 0x4c42_4800;

/// Largest number of probe targets (distinct backend addresses) at once.
pub const MAX_HEALTH_TARGETS: u32 = 65_536;

/// Names of the health program's maps (the statics of
/// `lb-ebpf/src/health/main.rs` carry exactly these names).
pub mod health_map_names {
    /// mark → [`crate::Real`] (the backend address the probe goes to).
    pub const HEALTH_TARGETS: &str = "HEALTH_TARGETS";
    /// Entry 0: the [`crate::LbConfig`] the balancer uses (MACs, outer
    /// source prefix), so probes are encapsulated like data packets.
    pub const HEALTH_CONFIG: &str = "HEALTH_CONFIG";
    /// Per-CPU [`crate::Counter`]s indexed by [`crate::ProbeStat`].
    pub const HEALTH_STATS: &str = "HEALTH_STATS";
    /// Every map of the health object.
    pub const HEALTH_MAPS: [&str; 3] = [HEALTH_TARGETS, HEALTH_CONFIG, HEALTH_STATS];
}

/// The name of the TC program in the health object.
pub const HEALTH_PROGRAM: &str = "lb_health";
