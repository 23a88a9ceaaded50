//! SYN-flood mode (Katran's `is_under_flood`): each CPU counts the flows it
//! would write into the connection table per window of
//! [`lb_common::SYN_FLOOD_WINDOW_NS`]. While the count is over
//! `LbConfig::syn_flood_threshold`, a SYN on that CPU is forwarded by the
//! ring alone and not written to the table, so a flood of one-packet flows
//! neither costs an insert (a cold cache line of the table) nor displaces
//! an established entry. Other misses still insert (README, "SYN-flood
//! mode"). Threshold 0: off, and nothing here reads the clock.

use aya_ebpf::{btf_maps::PerCpuArray, helpers::bpf_ktime_get_coarse_ns, macros::btf_map};
use lb_common::{Stat, SynFloodState, SYN_FLOOD_CLOCK_EVERY, SYN_FLOOD_WINDOW_NS};

use crate::stats::count;

/// Entry 0: this CPU's window. Per CPU, so plain loads and stores.
#[btf_map]
pub static SYN_FLOOD: PerCpuArray<SynFloodState, 1> = PerCpuArray::new();

/// Whether this CPU's window was already over `threshold` at its last new
/// flow, without reading the clock: the SYN path asks before it starts
/// loading the flow's connection-table set, which a SYN in flood mode never
/// reads. A window that has ended meanwhile only costs that one SYN its
/// early load; [`new_flow`] decides.
#[inline(always)]
pub fn flooded(threshold: u32) -> bool {
    if threshold == 0 {
        return false;
    }
    match SYN_FLOOD.get_ptr(0) {
        // SAFETY: this CPU's entry; nothing else writes it while we run.
        Some(state) => (unsafe { (*state).new_flows }) > threshold as u64,
        None => false,
    }
}

/// Counts one flow the balancer is about to insert into the connection
/// table; true when this CPU is over `threshold` in its current window
/// (flood mode). The window that crosses the threshold is counted once
/// (`syn_flood_windows`).
///
/// The clock is read only on the flow that would cross the threshold and
/// on every [`SYN_FLOOD_CLOCK_EVERY`]th: the helper call costs a SYN in
/// flood mode about a sixth of its time here (bench/README). So no CPU
/// enters the mode on an old window's count, and a window ends at most
/// that many flows late: the mode too, whose last SYNs then go untabled
/// (their flows are tabled by their next packet: other misses insert).
#[inline(always)]
pub fn new_flow(threshold: u32) -> bool {
    if threshold == 0 {
        return false;
    }
    let Some(state) = SYN_FLOOD.get_ptr_mut(0) else { return false };
    let threshold = threshold as u64;
    // SAFETY: this CPU's entry; nothing else writes it while we run.
    let flows = unsafe { (*state).new_flows } + 1;
    if flows == threshold + 1 || flows % SYN_FLOOD_CLOCK_EVERY == 0 {
        // The coarse clock (the last tick) is exact enough for a one-second
        // window and reads no clock source.
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        // SAFETY: as above.
        unsafe {
            if now.wrapping_sub((*state).window_start_ns) >= SYN_FLOOD_WINDOW_NS {
                (*state).window_start_ns = now;
                (*state).new_flows = 1;
                return false;
            }
        }
    }
    // SAFETY: as above.
    unsafe { (*state).new_flows = flows };
    if flows == threshold + 1 {
        count(Stat::SynFloodWindows, 0);
    }
    flows > threshold
}
