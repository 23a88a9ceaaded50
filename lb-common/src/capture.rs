//! Packet capture: the filter the control plane arms and the records the
//! balancer writes into its capture ring (a BPF ring buffer) while armed.
//!
//! Unarmed, the data plane pays one array read ([`CaptureFilter::armed`]).
//! Armed, it copies up to [`CAPTURE_SNAPLEN_MAX`] bytes of each frame as it
//! arrived and, when it leaves (XDP_TX: encapsulated, or an ICMP reply), as
//! it left, with the packet's reason counter, into one [`CaptureRecord`].
//! The filter map is never pinned: a restarted daemon's program starts
//! with a new, unarmed one, and the data plane itself stops at
//! [`CaptureFilter::deadline_ns`] even if the daemon is gone.

/// Bytes of a frame a record holds at most (each direction).
pub const CAPTURE_SNAPLEN_MAX: u32 = 256;
/// Bytes of the capture ring (a power of two, page multiple): about 7,600
/// records.
pub const CAPTURE_RING_BYTES: u32 = 1 << 22;

/// Record only dropped packets.
pub const CAPTURE_F_DROPS: u32 = 1 << 0;
/// Record only packets counted under [`CaptureFilter::reason`].
pub const CAPTURE_F_REASON: u32 = 1 << 1;
/// Record only packets that reached a VIP lookup (not the kernel's own
/// traffic: `pass_non_vip`, `pass_non_ip`, `pass_not_ready`); the VIP and
/// backend filters are then applied by the control plane.
pub const CAPTURE_F_VIP_TRAFFIC: u32 = 1 << 2;

/// Entry 0 of `CAPTURE_FILTER`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureFilter {
    /// Non-zero: a capture runs.
    pub armed: u32,
    /// `CAPTURE_F_*`.
    pub flags: u32,
    /// A [`crate::Stat`] index, with [`CAPTURE_F_REASON`].
    pub reason: u32,
    /// Bytes to copy of each frame, 1..=[`CAPTURE_SNAPLEN_MAX`].
    pub snaplen: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) after which the data plane
    /// records nothing more.
    pub deadline_ns: u64,
    /// Records lost because the ring was full (the data plane adds; a
    /// hint: CPUs losing records at the same time may undercount).
    pub lost: u64,
}

/// What a record says about its packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureHeader {
    /// `bpf_ktime_get_ns()` when the packet was recorded.
    pub ktime_ns: u64,
    /// The frame's length as it arrived, and the bytes recorded of it.
    pub arrived_len: u32,
    pub arrived_cap: u32,
    /// The frame's length as it left (0: it did not leave by XDP_TX), and
    /// the bytes recorded of it.
    pub left_len: u32,
    pub left_cap: u32,
    /// The packet's reason counter ([`crate::Stat`] index); its action
    /// follows from it.
    pub stat: u32,
    pub _pad: u32,
}

/// One packet, both ways.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CaptureRecord {
    pub header: CaptureHeader,
    pub arrived: [u8; CAPTURE_SNAPLEN_MAX as usize],
    pub left: [u8; CAPTURE_SNAPLEN_MAX as usize],
}

const _: () = assert!(core::mem::size_of::<CaptureFilter>() == 32);
const _: () = assert!(core::mem::size_of::<CaptureHeader>() == 32);
const _: () = assert!(core::mem::size_of::<CaptureRecord>() == 32 + 2 * CAPTURE_SNAPLEN_MAX as usize);
const _: () = assert!(CAPTURE_SNAPLEN_MAX.is_power_of_two() && CAPTURE_RING_BYTES.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for CaptureFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CaptureHeader {}
    // SAFETY: as above (byte arrays after a padded header).
    unsafe impl aya::Pod for CaptureRecord {}
}
