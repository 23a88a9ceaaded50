//! Counter updates. Per-CPU arrays: a plain add, no atomics.

use lb_common::{Counter, Stat};

use crate::maps::{REAL_STATS, STATS, VIP_STATS};

#[inline(always)]
fn bump(counter: Option<*mut Counter>, bytes: usize) {
    if let Some(c) = counter {
        // SAFETY: per-CPU slot; nothing else writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

/// Counts one packet of `bytes` under `stat`.
#[inline(always)]
pub fn count(stat: Stat, bytes: usize) {
    bump(STATS.get_ptr_mut(stat as u32), bytes);
}

#[inline(always)]
pub fn count_vip(vip_num: u32, bytes: usize) {
    bump(VIP_STATS.get_ptr_mut(vip_num), bytes);
}

#[inline(always)]
pub fn count_real(real: u32, bytes: usize) {
    bump(REAL_STATS.get_ptr_mut(real), bytes);
}
