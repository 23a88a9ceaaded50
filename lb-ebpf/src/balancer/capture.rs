//! Packet capture (see [`lb_common::CaptureFilter`]): unarmed, one array
//! read per packet; armed, the frame's head as it arrived is kept in a
//! per-CPU record and, if the packet matches the filter once its reason is
//! known (and the capture is not past its deadline), sent to user space
//! with the frame's head as it left.

use aya_ebpf::{
    btf_maps::{Array, PerCpuArray, RingBuf},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    Action, CaptureFilter, CaptureRecord, Stat, CAPTURE_F_DROPS, CAPTURE_F_REASON, CAPTURE_F_VIP_TRAFFIC,
    CAPTURE_RING_BYTES, CAPTURE_SNAPLEN_MAX,
};
use lb_ebpf::packet::{len, load_head};

/// Entry 0: the filter; `armed == 0` when no capture runs.
#[btf_map]
pub static CAPTURE_FILTER: Array<CaptureFilter, 1> = Array::new();

/// Records for user space.
#[btf_map]
pub static CAPTURE_RING: RingBuf<CaptureRecord, { CAPTURE_RING_BYTES as usize }> = RingBuf::new();

/// The record of the packet being processed on this CPU.
#[btf_map]
pub static CAPTURE_SCRATCH: PerCpuArray<CaptureRecord, 1> = PerCpuArray::new();

#[inline(always)]
fn head_len(ctx: &XdpContext, snaplen: u32) -> u32 {
    let n = len(ctx) as u32;
    if n < snaplen {
        n
    } else {
        snaplen
    }
}

#[inline(always)]
fn snaplen(f: &CaptureFilter) -> u32 {
    if f.snaplen == 0 || f.snaplen > CAPTURE_SNAPLEN_MAX {
        CAPTURE_SNAPLEN_MAX
    } else {
        f.snaplen
    }
}

/// Whether a capture is armed: the one map read every packet pays. Only
/// a bool stays live across the packet's processing, and the rest is out
/// of line, so the hot path's code and registers are as without capture.
#[inline(always)]
pub fn armed() -> bool {
    CAPTURE_FILTER.get(0).is_some_and(|f| f.armed != 0)
}

/// Keeps the frame's head as it arrived (armed, before any change to it).
#[inline(never)]
pub fn arrived(ctx: &XdpContext) {
    let (Some(f), Some(record)) = (CAPTURE_FILTER.get(0), CAPTURE_SCRATCH.get_ptr_mut(0)) else { return };
    // SAFETY: this CPU's scratch record; nothing else uses it while we run.
    let r = unsafe { &mut *record };
    // SAFETY: a helper without arguments.
    r.header.ktime_ns = unsafe { bpf_ktime_get_ns() };
    r.header.arrived_len = len(ctx) as u32;
    r.header.arrived_cap = 0;
    let n = head_len(ctx, snaplen(f));
    if load_head(ctx, &mut r.arrived, n).is_some() {
        r.header.arrived_cap = n;
    }
}

/// With the packet's reason: sends the record if the packet matches the
/// filter and the capture is not past its deadline, with the frame's head
/// as it leaves (XDP_TX).
#[inline(never)]
pub fn finished(ctx: &XdpContext, stat: Stat) {
    let (Some(filter), Some(record)) = (CAPTURE_FILTER.get_ptr_mut(0), CAPTURE_SCRATCH.get_ptr_mut(0)) else {
        return;
    };
    // SAFETY: entry 0 of an array map and this CPU's scratch record, valid
    // for the program's run.
    let (f, r) = unsafe { (&*filter, &mut *record) };
    if f.armed == 0 || r.header.ktime_ns > f.deadline_ns {
        return;
    }
    let action = stat.action();
    if f.flags & CAPTURE_F_DROPS != 0 && action != Action::Drop {
        return;
    }
    if f.flags & CAPTURE_F_REASON != 0 && f.reason != stat as u32 {
        return;
    }
    if f.flags & CAPTURE_F_VIP_TRAFFIC != 0 && matches!(stat, Stat::PassNonVip | Stat::PassNonIp | Stat::PassNotReady) {
        return;
    }
    r.header.stat = stat as u32;
    r.header.left_len = 0;
    r.header.left_cap = 0;
    if action == Action::Tx {
        let n = head_len(ctx, snaplen(f));
        r.header.left_len = len(ctx) as u32;
        if load_head(ctx, &mut r.left, n).is_some() {
            r.header.left_cap = n;
        }
    }
    if CAPTURE_RING.output(&*r, 0).is_err() {
        // SAFETY: an aligned u64 of the map value. Not atomic (the BPF
        // target has no atomic read-modify-write in core): CPUs losing
        // records at once may undercount; it is a hint for the operator.
        unsafe {
            let lost = &raw mut (*filter).lost;
            core::ptr::write_volatile(lost, core::ptr::read_volatile(lost) + 1);
        }
    }
}
