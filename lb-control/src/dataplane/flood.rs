//! The SYN-flood mode's per-CPU windows (`SYN_FLOOD`, see
//! [`lb_common::SynFloodState`]): which CPUs are in flood mode now.

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use lb_common::{map_names, SynFloodState};

use super::{map_err, DataplaneError};

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock the data plane's windows use
/// (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write; CLOCK_MONOTONIC_COARSE exists on
    // every kernel this runs on (2.6.32+).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(super) struct SynFloodWindows {
    pub(super) map: PerCpuArray<MapData, SynFloodState>,
}

impl SynFloodWindows {
    /// Every CPU's window.
    pub(super) fn states(&self) -> Result<Vec<SynFloodState>, DataplaneError> {
        let values = self.map.get(&0, 0).map_err(map_err(map_names::SYN_FLOOD))?;
        Ok(values.iter().copied().collect())
    }

    /// Sets every CPU's window to `state` (tests and benchmarks).
    pub(super) fn set_all(&mut self, state: SynFloodState) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let values = PerCpuValues::try_from(vec![state; cpus]).map_err(DataplaneError::Cpus)?;
        self.map.set(0, values, 0).map_err(map_err(map_names::SYN_FLOOD))
    }

    /// How many CPUs are in flood mode now under `threshold`.
    pub(super) fn flooded_cpus(&self, threshold: u32) -> Result<u32, DataplaneError> {
        let now = monotonic_coarse_ns();
        Ok(self.states()?.iter().filter(|s| s.flooded_at(now, threshold)).count() as u32)
    }
}
