//! The backends' decap program and its maps.

use std::{net::IpAddr, path::Path};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray},
    programs::{xdp::XdpLink, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{map_names, Counter, DecapAddr, DecapStat};

use super::{
    counters::sum,
    load::{attach_xdp, link_pin, versioned_pin_dir, xdp_program, XdpMode},
    map_err, take, DataplaneError, DECAP_ELF, DECAP_PROGRAM,
};

/// The backends' decap program and its maps.
pub struct Decap {
    ebpf: Ebpf,
    links: Vec<XdpLink>,
    addrs: HashMap<MapData, DecapAddr, u8>,
    stats: PerCpuArray<MapData, Counter>,
}

impl Decap {
    /// Loads (verifies) the decap program. Nothing is attached.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::open(None)
    }

    /// Like [`Decap::load`], with its maps pinned under `pin_dir`
    /// (versioned; adopted when already there).
    pub fn open(pin_dir: Option<&Path>) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        let dir = pin_dir.map(versioned_pin_dir);
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).map_err(|e| DataplaneError::PinDir { path: dir.clone(), source: e })?;
            for name in map_names::DECAP_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(DECAP_ELF)?;
        let program: &mut Xdp =
            ebpf.program_mut(DECAP_PROGRAM).ok_or(DataplaneError::MissingProgram(DECAP_PROGRAM))?.try_into()?;
        program.load()?;
        Ok(Self {
            addrs: take(&mut ebpf, map_names::DECAP_ADDRS)?,
            stats: take(&mut ebpf, map_names::DECAP_STATS)?,
            ebpf,
            links: Vec::new(),
        })
    }

    /// Attaches decap to `iface` (see [`super::Balancer::attach`] for pinning).
    pub fn attach(&mut self, iface: &str, mode: XdpMode, pin_dir: Option<&Path>) -> Result<(), DataplaneError> {
        let pin = pin_dir.map(|d| link_pin(d, iface));
        let Self { ebpf, links, .. } = self;
        attach_xdp(xdp_program(ebpf, DECAP_PROGRAM), iface, mode, pin.as_deref(), links)
    }

    pub fn program(&mut self) -> &mut Xdp {
        xdp_program(&mut self.ebpf, DECAP_PROGRAM)
    }

    /// Accepts tunnelled packets whose outer destination is `addr`.
    pub fn add_addr(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        self.addrs.insert(DecapAddr::from(addr), 1, 0).map_err(map_err(map_names::DECAP_ADDRS))
    }

    pub fn remove_addr(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        match self.addrs.remove(&DecapAddr::from(addr)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::DECAP_ADDRS)(e)),
        }
    }

    pub fn stat(&self, stat: DecapStat) -> Result<Counter, DataplaneError> {
        sum(&self.stats, stat as u32, map_names::DECAP_STATS)
    }

    pub fn all_stats(&self) -> Result<Vec<(DecapStat, Counter)>, DataplaneError> {
        DecapStat::ALL.iter().map(|&s| Ok((s, self.stat(s)?))).collect()
    }
}
