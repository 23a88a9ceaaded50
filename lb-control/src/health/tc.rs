//! Loads the probes' TC egress program (`lb-health`), attaches it to every
//! balancer interface through TCX (a bpf_link, pinned beside the XDP link as
//! `health-link-IFACE`), and writes its maps: probe mark → backend, and the
//! forwarding config the balancer uses.
//!
//! A restart replaces the pinned link with a fresh one (its maps are the
//! new process's); no probe is sent while no daemon runs, so nothing needs
//! the old maps.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        links::FdLink,
        tc::{SchedClassifier, TcAttachType},
    },
    Ebpf,
};
use lb_common::{health_map_names, ip_to_addr, Counter, LbConfig, ProbeStat, Real, HEALTH_PROGRAM};

use crate::dataplane::{versioned_pin_dir, HEALTH_ELF};

#[derive(thiserror::Error, Debug)]
pub enum TcError {
    #[error("loading the health program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("health program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("health map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the health object has no {0}")]
    Missing(&'static str),
    #[error("pinning the health link of {iface} at {path}: {detail}")]
    Pin { iface: String, path: PathBuf, detail: String },
}

/// Where the TCX link of `iface` is pinned.
pub fn health_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    versioned_pin_dir(pin_dir).join(format!("health-link-{iface}"))
}

/// The loaded program and its maps.
pub struct HealthProgram {
    ebpf: Ebpf,
    targets: HashMap<MapData, u32, Real>,
    config: Array<MapData, LbConfig>,
    stats: PerCpuArray<MapData, Counter>,
}

impl HealthProgram {
    /// Loads the program without attaching it.
    pub fn load() -> Result<Self, TcError> {
        let mut ebpf = aya::EbpfLoader::new().load(HEALTH_ELF)?;
        let targets = take_map(&mut ebpf, health_map_names::HEALTH_TARGETS)?;
        let config = take_map(&mut ebpf, health_map_names::HEALTH_CONFIG)?;
        let targets = HashMap::try_from(targets).map_err(map_err(health_map_names::HEALTH_TARGETS))?;
        let config = Array::try_from(config).map_err(map_err(health_map_names::HEALTH_CONFIG))?;
        let stats = take_map(&mut ebpf, health_map_names::HEALTH_STATS)?;
        let stats = PerCpuArray::try_from(stats).map_err(map_err(health_map_names::HEALTH_STATS))?;
        let mut this = Self { ebpf, targets, config, stats };
        this.program()?.load()?;
        Ok(this)
    }

    /// The TC program (for `BPF_PROG_TEST_RUN` in tests).
    pub fn program(&mut self) -> Result<&mut SchedClassifier, TcError> {
        Ok(self.ebpf.program_mut(HEALTH_PROGRAM).ok_or(TcError::Missing(HEALTH_PROGRAM))?.try_into()?)
    }

    /// Attaches to `iface`'s egress through TCX; with `pin_dir`, the link is
    /// pinned (replacing an earlier daemon's) so it outlives this handle.
    pub fn attach(&mut self, iface: &str, pin_dir: Option<&Path>) -> Result<(), TcError> {
        let pin = pin_dir.map(|d| health_link_pin(d, iface));
        let pin_err = |path: &Path, detail: String| TcError::Pin { iface: iface.into(), path: path.into(), detail };
        if let Some(pin) = pin.as_deref().filter(|p| p.exists()) {
            // Unpinning the last reference detaches the old program.
            std::fs::remove_file(pin).map_err(|e| pin_err(pin, e.to_string()))?;
        }
        let program = self.program()?;
        let id = program.attach(iface, TcAttachType::Egress)?;
        if let Some(pin) = pin {
            let link = program.take_link(id)?;
            let fd = FdLink::try_from(link).map_err(|e| pin_err(&pin, format!("not a bpf_link: {e}")))?;
            fd.pin(&pin).map_err(|e| pin_err(&pin, e.to_string()))?;
        }
        Ok(())
    }

    /// The forwarding config probes are encapsulated with (the balancer's).
    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<(), TcError> {
        self.config.set(0, cfg, 0).map_err(map_err(health_map_names::HEALTH_CONFIG))
    }

    /// Probes marked `mark` go to `backend`.
    pub fn set_target(&mut self, mark: u32, backend: IpAddr) -> Result<(), TcError> {
        let (addr, family) = ip_to_addr(backend);
        let real = Real { addr, family, _pad: [0; 3] };
        self.targets.insert(mark, real, 0).map_err(map_err(health_map_names::HEALTH_TARGETS))
    }

    /// Every counter of the program, summed over the CPUs.
    pub fn stats(&self) -> Result<Vec<(ProbeStat, Counter)>, TcError> {
        ProbeStat::ALL
            .iter()
            .map(|stat| {
                let per_cpu = self.stats.get(&(*stat as u32), 0).map_err(map_err(health_map_names::HEALTH_STATS))?;
                let mut sum = Counter::default();
                per_cpu.iter().for_each(|c| sum.add(c));
                Ok((*stat, sum))
            })
            .collect()
    }

    pub fn remove_target(&mut self, mark: u32) -> Result<(), TcError> {
        match self.targets.remove(&mark) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(TcError::Map { name: health_map_names::HEALTH_TARGETS, source }),
        }
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> TcError {
    move |source| TcError::Map { name, source }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, TcError> {
    ebpf.take_map(name).ok_or(TcError::Missing(name))
}
