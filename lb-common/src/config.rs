//! The per-host forwarding settings of the `CONFIG` map.

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
}

const _: () = assert!(core::mem::size_of::<LbConfig>() == 60);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no implicit padding: every bit pattern is valid.
unsafe impl aya::Pod for LbConfig {}
