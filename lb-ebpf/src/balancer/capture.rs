//! Packet capture (see [`lb_common::CaptureFilter`]): unarmed, one array
//! read per packet; armed, the frame's head as it arrived is kept in a
//! per-CPU record and, if the packet matches the filter once its reason is
//! known, sent to user space with the frame's head as it left.

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

/// A capture in progress for this packet.
pub struct Armed {
    filter: *mut CaptureFilter,
    record: *mut CaptureRecord,
    snaplen: u32,
}

#[inline(always)]
fn head_len(ctx: &XdpContext, snaplen: u32) -> u32 {
    let n = len(ctx) as u32;
    if n < snaplen {
        n
    } else {
        snaplen
    }
}

/// Called first: `None` (one map read) unless a capture is armed and not
/// past its deadline; then the frame's head is kept as it arrived.
#[inline(always)]
pub fn arrived(ctx: &XdpContext) -> Option<Armed> {
    let filter = CAPTURE_FILTER.get_ptr_mut(0)?;
    // SAFETY: entry 0 of an array map, valid for the program's run.
    let f = unsafe { &*filter };
    if f.armed == 0 {
        return None;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > f.deadline_ns {
        return None;
    }
    let snaplen = if f.snaplen == 0 || f.snaplen > CAPTURE_SNAPLEN_MAX { CAPTURE_SNAPLEN_MAX } else { f.snaplen };
    let record = CAPTURE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch record; nothing else uses it while we run.
    let r = unsafe { &mut *record };
    let n = head_len(ctx, snaplen);
    r.header.ktime_ns = now;
    r.header.arrived_len = len(ctx) as u32;
    r.header.arrived_cap = if load_head(ctx, &mut r.arrived, n).is_some() { n } else { 0 };
    Some(Armed { filter, record, snaplen })
}

/// Called last, with the packet's reason: sends the record if the packet
/// matches the filter, with the frame's head as it leaves (XDP_TX).
#[inline(always)]
pub fn finished(ctx: &XdpContext, armed: Armed, stat: Stat) {
    // SAFETY: as in `arrived`.
    let (f, r) = unsafe { (&*armed.filter, &mut *armed.record) };
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
        let n = head_len(ctx, armed.snaplen);
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
            let lost = &raw mut (*armed.filter).lost;
            core::ptr::write_volatile(lost, core::ptr::read_volatile(lost) + 1);
        }
    }
}
