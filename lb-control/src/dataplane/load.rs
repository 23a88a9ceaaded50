//! Loading, pinning, attaching and detaching the XDP objects.

use std::path::{Path, PathBuf};

use aya::{
    maps::{MapData, MapInfo},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    global_names, map_names, Counter, LbConfig, Real, Stat, SynFloodState, VipAddrSlot, VipBucket, VipFilter, VipKey,
    VipMeta, VipTableLive, VIP_ADDR_SLOTS,
};

use super::{map_err, DataplaneError, Limits, BALANCER_ELF, BALANCER_PROGRAM, BALANCER_STAGES_ELF};

/// How an XDP program is attached: the config's `xdp_mode`, the
/// `--mode` of `lb-control decap`, and what [`Balancer::attach`] takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (fastest; the NIC driver must support it).
    #[default]
    Native,
    /// In the kernel's generic (skb) path (any interface; slower).
    Generic,
    /// Native when the driver supports it, generic otherwise.
    Auto,
}

impl XdpMode {
    /// aya's attach modes to try, in order.
    fn aya_modes(self) -> &'static [aya::programs::XdpMode] {
        use aya::programs::XdpMode as Aya;
        match self {
            XdpMode::Native => &[Aya::Driver],
            XdpMode::Generic => &[Aya::Skb],
            XdpMode::Auto => &[Aya::Driver, Aya::Skb],
        }
    }
}

/// A loaded object's XDP program, which `load`/`open` checked exists.
pub(super) fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("the {name} program was checked at load"))
}

/// Attaches `program` to `iface`. With `pin`, the link is pinned there, and
/// a link already pinned there gets this program swapped in atomically
/// (`bpf_link_update`) instead: a restart or upgrade leaves no gap. Without
/// `pin`, the attachment lives in `links`, as long as its owner.
pub(super) fn attach_xdp(
    program: &mut Xdp,
    iface: &str,
    mode: XdpMode,
    pin: Option<&Path>,
    links: &mut Vec<XdpLink>,
) -> Result<(), DataplaneError> {
    let link_err = |detail: String| DataplaneError::Link { iface: iface.into(), detail };
    if let Some(pin) = pin.filter(|p| p.exists()) {
        let link = PinnedLink::from_pin(pin).map_err(|e| link_err(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| link_err(e.to_string()))?;
        let id = program.attach_to_link(link)?;
        // The pin keeps the link, and so the attachment, alive.
        drop(program.take_link(id)?);
        return Ok(());
    }
    let mut last = None;
    for &m in mode.aya_modes() {
        match program.attach(iface, m) {
            Ok(id) => {
                let link = program.take_link(id)?;
                match pin {
                    Some(pin) => {
                        let fd = FdLink::try_from(link)
                            .map_err(|e| link_err(format!("not a bpf_link, cannot pin it: {e}")))?;
                        fd.pin(pin).map_err(|e| link_err(e.to_string()))?;
                    }
                    None => links.push(link),
                }
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(DataplaneError::Attach { iface: iface.into(), source: last.expect("at least one mode") })
}

/// Removes what [`Balancer::open`] and [`Balancer::attach`] pinned under
/// `pin_dir`: the links (which detaches the program from the interfaces)
/// and the maps (freed once nothing holds them). Returns what was removed.
pub fn detach_all(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let dir = versioned_pin_dir(pin_dir);
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(DataplaneError::PinDir { path: dir, source: e }),
    };
    for entry in entries {
        let path = entry.map_err(|e| DataplaneError::PinDir { path: dir.clone(), source: e })?.path();
        std::fs::remove_file(&path).map_err(|e| DataplaneError::PinDir { path: path.clone(), source: e })?;
        removed.push(path);
    }
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(pin_dir);
    removed.sort();
    Ok(removed)
}

/// The balancer's maps that outlive the daemon when pinned, with the layout
/// each must have: (name, key size, value size, entries).
fn pinned_layout(limits: &Limits) -> [(&'static str, usize, usize, u32); 15] {
    use std::mem::size_of;
    [
        (map_names::VIPS, size_of::<VipKey>(), size_of::<VipMeta>(), limits.max_vips * 2),
        (map_names::VIP_FILTER, 4, size_of::<VipFilter>(), 1),
        (map_names::VIP_TABLE, 4, size_of::<VipBucket>(), limits.vip_table_entries()),
        (map_names::VIP_TABLE_LIVE, 4, size_of::<VipTableLive>(), 1),
        (map_names::VIP_ADDRS, 4, size_of::<VipAddrSlot>(), 2 * VIP_ADDR_SLOTS),
        (map_names::REALS, 4, size_of::<Real>(), limits.max_reals),
        (map_names::REAL_OWNERS, 4, size_of::<VipKey>(), limits.max_reals),
        (map_names::RINGS, 4, 8, limits.ring_slots().div_ceil(4)),
        (map_names::PREV_RINGS, 4, 4, limits.max_vips),
        (map_names::CONN_TABLE, 4, 8, limits.conn_slots()),
        (map_names::CONFIG, 4, size_of::<LbConfig>(), 1),
        (map_names::STATS, 4, size_of::<Counter>(), Stat::COUNT),
        (map_names::VIP_STATS, 4, size_of::<Counter>(), limits.max_vips),
        (map_names::REAL_STATS, 4, size_of::<Counter>(), limits.max_reals),
        (map_names::SYN_FLOOD, 4, size_of::<SynFloodState>(), 1),
    ]
}

/// Handles on the maps pinned under `pin_dir` (versioned), opened from their
/// pins: what [`PinnedMaps::repin`] pins again if the pins are removed
/// while the daemon runs (`lb-control detach --force`).
pub(super) fn open_pinned(pin_dir: &Path, limits: &Limits) -> Result<PinnedMaps, DataplaneError> {
    let dir = versioned_pin_dir(pin_dir);
    let maps = pinned_layout(limits)
        .into_iter()
        .map(|(name, ..)| MapData::from_pin(dir.join(name)).map(|m| (name, m)).map_err(map_err(name)))
        .collect::<Result<_, _>>()?;
    Ok(PinnedMaps { maps })
}

/// The balancer's pinned maps, by name.
pub(super) struct PinnedMaps {
    maps: Vec<(&'static str, MapData)>,
}

impl PinnedMaps {
    /// Pins again every map whose pin is gone; returns how many it pinned.
    pub(super) fn repin(&self, pin_dir: &Path) -> Result<usize, DataplaneError> {
        let dir = versioned_pin_dir(pin_dir);
        std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::PinDir { path: dir.clone(), source })?;
        let mut pinned = 0;
        for (name, map) in &self.maps {
            let path = dir.join(name);
            if !path.exists() {
                map.pin(&path).map_err(|e| DataplaneError::Pin { name, message: e.to_string() })?;
                pinned += 1;
            }
        }
        Ok(pinned)
    }
}

/// Where a layout version's pins live under the configured pin directory.
/// The version is part of the path so an upgrade that changes a map's
/// layout never adopts maps written with the old one.
pub fn versioned_pin_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{}", lb_common::MAP_LAYOUT_VERSION))
}

/// Checks maps already pinned under `dir` against the layout these limits
/// need: aya would reuse them by name without looking.
fn check_pins(dir: &Path, limits: &Limits) -> Result<bool, DataplaneError> {
    let mut found = 0;
    for (name, key, value, entries) in pinned_layout(limits) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        found += 1;
        let info = MapInfo::from_pin(&path).map_err(map_err(name))?;
        if (info.key_size(), info.value_size(), info.max_entries()) != (key as u32, value as u32, entries) {
            return Err(DataplaneError::PinnedMismatch {
                name,
                path,
                found: format!("key {} value {} entries {}", info.key_size(), info.value_size(), info.max_entries()),
                want: format!("key {key} value {value} entries {entries}"),
            });
        }
    }
    Ok(found > 0)
}

/// Loads the balancer object sized for `limits`, its maps pinned under
/// `pin_dir` (versioned) when given, and loads (verifies) its program.
/// Returns the object and whether its maps were adopted from pins.
pub(super) fn load_balancer(limits: &Limits, pin_dir: Option<&Path>) -> Result<(Ebpf, bool), DataplaneError> {
    let (mut ebpf, adopted) = load_object(BALANCER_ELF, limits, pin_dir)?;
    let program: &mut Xdp =
        ebpf.program_mut(BALANCER_PROGRAM).ok_or(DataplaneError::MissingProgram(BALANCER_PROGRAM))?.try_into()?;
    program.load()?;
    Ok((ebpf, adopted))
}

/// The balancer cut short after each stage ([`BALANCER_STAGES_ELF`], for
/// `lb-bench breakdown`), its maps those of the balancer pinned under
/// `pin_dir` (loaded first with [`super::Balancer::open`] and these
/// `limits`), every program loaded. Never part of the daemon.
pub fn load_balancer_stages(limits: &Limits, pin_dir: &Path) -> Result<Ebpf, DataplaneError> {
    let (mut ebpf, _) = load_object(BALANCER_STAGES_ELF, limits, Some(pin_dir))?;
    let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_string()).collect();
    for name in names {
        let Some(program) = ebpf.program_mut(&name) else { continue };
        let program: &mut Xdp = program.try_into()?;
        program.load()?;
    }
    Ok(ebpf)
}

/// Opens a balancer object (`elf`: the balancer or its stage variants)
/// sized for `limits`, its maps pinned under `pin_dir` (versioned) when
/// given; programs are not loaded yet.
fn load_object(elf: &[u8], limits: &Limits, pin_dir: Option<&Path>) -> Result<(Ebpf, bool), DataplaneError> {
    limits.validate()?;
    let mut loader = EbpfLoader::new();
    let mut adopted = false;
    if let Some(dir) = pin_dir {
        let dir = versioned_pin_dir(dir);
        std::fs::create_dir_all(&dir).map_err(|e| DataplaneError::PinDir { path: dir.clone(), source: e })?;
        adopted = check_pins(&dir, limits)?;
        for (name, ..) in pinned_layout(limits) {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let ebpf = loader
        .override_global(global_names::RING_SIZE, &limits.ring_size, true)
        .override_global(global_names::CONN_SETS, &limits.conn_sets(), true)
        .override_global(global_names::VIP_BUCKETS, &limits.vip_buckets(), true)
        .map_max_entries(map_names::VIPS, limits.max_vips * 2)
        .map_max_entries(map_names::REALS, limits.max_reals)
        .map_max_entries(map_names::REAL_OWNERS, limits.max_reals)
        .map_max_entries(map_names::RINGS, limits.ring_slots().div_ceil(4))
        .map_max_entries(map_names::PREV_RINGS, limits.max_vips)
        .map_max_entries(map_names::VIP_TABLE, limits.vip_table_entries())
        .map_max_entries(map_names::CONN_TABLE, limits.conn_slots())
        .map_max_entries(map_names::VIP_STATS, limits.max_vips)
        .map_max_entries(map_names::REAL_STATS, limits.max_reals)
        .load(elf)?;
    Ok((ebpf, adopted))
}

/// Where `iface`'s link is pinned under `pin_dir`.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    versioned_pin_dir(pin_dir).join(format!("link-{iface}"))
}
