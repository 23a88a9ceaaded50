//! The per-host forwarding settings of the `CONFIG` map, and the per-CPU
//! state of the SYN-flood mode.

use crate::addr::Addr;

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
    /// SYN-flood mode: new flows per CPU per window
    /// ([`crate::SYN_FLOOD_WINDOW_NS`]) above which a CPU stops writing
    /// SYNs into the connection table; 0 = the mode is off.
    pub syn_flood_threshold: u32,
}

const _: () = assert!(core::mem::size_of::<LbConfig>() == 64);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no implicit padding: every bit pattern is valid.
unsafe impl aya::Pod for LbConfig {}

/// One CPU's SYN-flood window (the `SYN_FLOOD` per-CPU array, entry 0):
/// the data plane counts the flows it would insert into the connection
/// table (SYNs and other misses that insert) per window of
/// [`crate::SYN_FLOOD_WINDOW_NS`]; while `new_flows` exceeds
/// [`LbConfig::syn_flood_threshold`], SYNs on this CPU are forwarded by the
/// ring alone and not written to the table. A window starts at the first
/// new flow after the previous one ended (Katran's `is_under_flood`), as
/// far as the clock, read every [`crate::SYN_FLOOD_CLOCK_EVERY`] flows
/// and on the flow crossing the threshold, tells.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynFloodState {
    /// When the window began: `bpf_ktime_get_coarse_ns`, which is
    /// `CLOCK_MONOTONIC_COARSE` in user space.
    pub window_start_ns: u64,
    /// New flows counted in the window (flood-mode SYNs included).
    pub new_flows: u64,
}

const _: () = assert!(core::mem::size_of::<SynFloodState>() == 16);

impl SynFloodState {
    /// Whether this CPU is in flood mode at `now_ns` (same clock) under
    /// `threshold`: its window has not ended and is over the threshold.
    pub const fn flooded_at(&self, now_ns: u64, threshold: u32) -> bool {
        threshold != 0
            && self.new_flows > threshold as u64
            && now_ns.wrapping_sub(self.window_start_ns) < crate::SYN_FLOOD_WINDOW_NS
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, two u64s: every bit pattern is valid.
unsafe impl aya::Pod for SynFloodState {}
