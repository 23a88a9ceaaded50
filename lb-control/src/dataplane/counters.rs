//! The per-CPU counters: global reasons (`STATS`), per VIP (`VIP_STATS`)
//! and per real (`REAL_STATS`), summed over CPUs when read.

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use lb_common::{map_names, Counter, Stat};

use super::{map_err, DataplaneError};

/// Sums entry `index` of a per-CPU counter array over the CPUs.
pub(super) fn sum(
    map: &PerCpuArray<MapData, Counter>,
    index: u32,
    name: &'static str,
) -> Result<Counter, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_err(name))?;
    Ok(values.iter().fold(Counter::default(), |mut acc, c| {
        acc.add(c);
        acc
    }))
}

fn zeroes() -> Result<PerCpuValues<Counter>, DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
    PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(DataplaneError::Cpus)
}

pub(super) struct Counters {
    pub(super) stats: PerCpuArray<MapData, Counter>,
    pub(super) vip_stats: PerCpuArray<MapData, Counter>,
    pub(super) real_stats: PerCpuArray<MapData, Counter>,
}

impl Counters {
    pub(super) fn stat(&self, stat: Stat) -> Result<Counter, DataplaneError> {
        sum(&self.stats, stat as u32, map_names::STATS)
    }

    pub(super) fn vip(&self, vip_num: u32) -> Result<Counter, DataplaneError> {
        sum(&self.vip_stats, vip_num, map_names::VIP_STATS)
    }

    pub(super) fn real(&self, index: u32) -> Result<Counter, DataplaneError> {
        sum(&self.real_stats, index, map_names::REAL_STATS)
    }

    pub(super) fn reset_vip(&mut self, vip_num: u32) -> Result<(), DataplaneError> {
        self.vip_stats.set(vip_num, zeroes()?, 0).map_err(map_err(map_names::VIP_STATS))
    }

    pub(super) fn reset_real(&mut self, index: u32) -> Result<(), DataplaneError> {
        self.real_stats.set(index, zeroes()?, 0).map_err(map_err(map_names::REAL_STATS))
    }
}
