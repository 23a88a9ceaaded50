//! The map writer: loads the XDP balancer and gives typed access to its maps.
//!
//! Everything that writes BPF maps goes through [`Balancer`], so the layout
//! knowledge (which ring a VIP uses, how the ring pool is addressed, how
//! counters are summed over CPUs) lives in one place.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    ConnEntry, Counter, DecapAddr, DecapStat, FlowKey, LbConfig, Real, Stat, VipBucket, VipFilter, VipKey,
    VipMeta, VipSlot,
    DEFAULT_CONN_TABLE_SIZE,
    DEFAULT_MAX_REALS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, RING_SPARES,
};

/// The balancer object, built from `lb-ebpf` by the build script.
pub static BALANCER_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-balancer"));
/// The backends' decap object.
pub static DECAP_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
/// A program that only returns XDP_TX: the benchmarks' floor.
pub static XDP_TX_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp-tx"));

/// Name of the balancer's XDP program in its object.
pub const BALANCER_PROGRAM: &str = "balancer";
pub const DECAP_PROGRAM: &str = "decap";
pub const XDP_TX_PROGRAM: &str = "xdp_tx";

/// Largest Maglev ring accepted (entries); bounds the ring pool's memory.
pub const MAX_RING_SIZE: u32 = 1 << 20;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver.
    Native,
    /// In the kernel's generic (skb) path.
    Generic,
    /// Native when the driver supports it, generic otherwise.
    Auto,
}

/// A loaded object's XDP program, which `load`/`open` checked exists.
fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("the {name} program was checked at load"))
}

/// Attaches `program` to `iface`. With `pin`, the link is pinned there, and
/// a link already pinned there gets this program swapped in atomically
/// (`bpf_link_update`) instead: a restart or upgrade leaves no gap. Without
/// `pin`, the attachment lives in `links`, as long as its owner.
fn attach_xdp(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
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
    let modes: &[XdpMode] = match mode {
        AttachMode::Native => &[XdpMode::Driver],
        AttachMode::Generic => &[XdpMode::Skb],
        AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
    };
    let mut last = None;
    for &m in modes {
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

/// Sizes fixed when the balancer is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries per Maglev ring (a prime).
    pub ring_size: u32,
    pub max_vips: u32,
    /// Backend slots, index 0 included (it is never used).
    pub max_reals: u32,
    pub conn_table_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ring_size: DEFAULT_RING_SIZE,
            max_vips: DEFAULT_MAX_VIPS,
            max_reals: DEFAULT_MAX_REALS,
            conn_table_size: DEFAULT_CONN_TABLE_SIZE,
        }
    }
}

impl Limits {
    /// Number of rings in the pool: one per VIP plus the spares new tables
    /// are written into before they are switched to.
    pub fn ring_count(&self) -> u32 {
        self.max_vips + RING_SPARES
    }

    /// Sets of the connection table (its size rounded down to a power of
    /// two of sets).
    pub fn conn_sets(&self) -> u32 {
        lb_common::conn_sets(self.conn_table_size)
    }

    /// Slots of the connection table.
    pub fn conn_slots(&self) -> u32 {
        self.conn_sets() * lb_common::CONN_WAYS
    }

    /// Buckets of each VIP table copy: one per VIP-table entry (VIPs and
    /// echo markers) on average, a power of two.
    pub fn vip_buckets(&self) -> u32 {
        (self.max_vips * 2).next_power_of_two().max(16)
    }

    /// Backend slots in the whole pool.
    pub fn ring_slots(&self) -> u32 {
        self.ring_count() * self.ring_size
    }

    pub fn validate(&self) -> Result<(), DataplaneError> {
        let bad = |msg: String| Err(DataplaneError::Limits(msg));
        if self.ring_size < 2 || self.ring_size > MAX_RING_SIZE {
            return bad(format!("ring_size {} is outside 2..={MAX_RING_SIZE}", self.ring_size));
        }
        if self.max_reals > lb_common::MAX_REALS_LIMIT {
            return bad(format!(
                "max_reals {} is above {} (backend indices are 16 bits in the connection table)",
                self.max_reals,
                lb_common::MAX_REALS_LIMIT
            ));
        }
        if self.max_vips == 0 || self.max_reals < 2 || self.conn_table_size == 0 {
            return bad(format!(
                "max_vips ({}), max_reals ({}) and conn_table_size ({}) must be positive \
                 (max_reals counts the reserved index 0)",
                self.max_vips, self.max_reals, self.conn_table_size
            ));
        }
        if (self.ring_count() as u64) * (self.ring_size as u64) > u32::MAX as u64 {
            return bad(format!(
                "{} rings of {} entries do not fit one BPF array",
                self.ring_count(),
                self.ring_size
            ));
        }
        Ok(())
    }
}

#[derive(thiserror::Error, Debug)]
pub enum DataplaneError {
    #[error("invalid limits: {0}")]
    Limits(String),
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the object or has an unexpected type")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the object or is not XDP")]
    MissingProgram(&'static str),
    #[error("{what} index {index} is out of range (limit {limit})")]
    OutOfRange { what: &'static str, index: u32, limit: u32 },
    #[error("Maglev table has {got} entries, the rings hold {want}")]
    RingLength { got: usize, want: u32 },
    #[error("pinned map {name} at {path} has {found}, this config needs {want}; the limits changed since it was created: restore them, or run `lb-control detach` (drops every connection) and start again")]
    PinnedMismatch { name: &'static str, path: PathBuf, found: String, want: String },
    #[error("creating pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("XDP link of {iface}: {detail}")]
    Link { iface: String, detail: String },
    #[error("counting possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("mapping the ring pool into memory: {0}")]
    Mmap(#[source] std::io::Error),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// A `BPF_F_MMAPABLE` array mapped into our memory: the ring pool (a
/// 65537-entry table is one copy instead of 65537 syscalls; its u64
/// elements hold four u16 slots, little-endian, so it reads as a flat u16
/// array), the VIP tables and the connection table.
struct Mmapped<T> {
    base: NonNull<T>,
    entries: usize,
    bytes: usize,
    _map: MapData,
}

// SAFETY: the mapping is owned by this struct and only written through &mut.
unsafe impl<T> Send for Mmapped<T> {}
unsafe impl<T> Sync for Mmapped<T> {}

impl<T: Copy> Mmapped<T> {
    fn new(map: MapData, entries: usize) -> Result<Self, DataplaneError> {
        let page = 4096usize;
        let bytes = (entries * std::mem::size_of::<T>()).div_ceil(page) * page;
        // SAFETY: mapping a BPF array fd we own, shared, at offset 0, for its
        // whole (page-rounded) size, as the kernel requires.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<T>()).ok_or_else(|| {
            DataplaneError::Mmap(std::io::Error::other("mmap returned a null pointer"))
        })?;
        Ok(Self { base, entries, bytes, _map: map })
    }

    fn slice(&self) -> &[T] {
        // SAFETY: `entries` values are mapped for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.entries) }
    }

    fn map(&self) -> &MapData {
        &self._map
    }

    fn slice_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and &mut self makes us the only user-space writer.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.entries) }
    }
}

impl<T> Drop for Mmapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// The VIP table for these VIPs: each in the first free slot of its bucket;
/// a bucket with no room left is marked overflowed, and the data plane looks
/// such keys up in the VIPS map.
pub fn build_vip_table(vips: &BTreeMap<VipKey, VipMeta>, buckets: u32) -> Vec<VipBucket> {
    let mut table = vec![VipBucket::default(); buckets as usize];
    for (key, meta) in vips {
        let bucket = &mut table[(lb_common::vip_key_hash(key) & (buckets - 1)) as usize];
        match bucket.slots.iter_mut().find(|s| s.key.family == lb_common::FAMILY_NONE) {
            Some(slot) => *slot = VipSlot { key: *key, meta: *meta },
            None => bucket.overflow = 1,
        }
    }
    table
}

/// The loaded balancer and its maps.
pub struct Balancer {
    ebpf: Ebpf,
    /// Attachments made without pinning; dropped with the balancer.
    links: Vec<XdpLink>,
    /// The maps were already pinned (a restart), not created empty.
    adopted: bool,
    limits: Limits,
    vips: HashMap<MapData, VipKey, VipMeta>,
    /// The two copies of the VIP table, mapped, and the map-of-maps that
    /// names the live one.
    vip_tables: [Mmapped<VipBucket>; 2],
    vip_outer: ArrayOfMaps<MapData, MapData>,
    vip_table_ids: [u32; 2],
    active_table: usize,
    /// What `vips` holds, so tables are built without reading the map back.
    vip_mirror: BTreeMap<VipKey, VipMeta>,
    /// Set while a batch of changes is made: the table is published once.
    defer_publish: bool,
    vips_dirty: bool,
    vip_filter: Array<MapData, VipFilter>,
    /// What `vip_filter` holds.
    filter: VipFilter,
    reals: Array<MapData, Real>,
    rings: Mmapped<u16>,
    conn: Mmapped<u64>,
    config: Array<MapData, LbConfig>,
    stats: PerCpuArray<MapData, Counter>,
    vip_stats: PerCpuArray<MapData, Counter>,
    real_stats: PerCpuArray<MapData, Counter>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// The balancer's maps that outlive the daemon when pinned, with the layout
/// each must have: (name, key size, value size, entries).
fn pinned_layout(limits: &Limits) -> [(&'static str, usize, usize, u32); 12] {
    use std::mem::size_of;
    [
        ("VIPS", size_of::<VipKey>(), size_of::<VipMeta>(), limits.max_vips * 2),
        ("VIP_FILTER", 4, size_of::<VipFilter>(), 1),
        ("VIP_TABLE_A", 4, size_of::<VipBucket>(), limits.vip_buckets()),
        ("VIP_TABLE_B", 4, size_of::<VipBucket>(), limits.vip_buckets()),
        ("VIP_TABLES", 4, 4, 1),
        ("REALS", 4, size_of::<Real>(), limits.max_reals),
        ("RINGS", 4, 8, limits.ring_slots().div_ceil(4)),
        ("CONN_TABLE", 4, 8, limits.conn_slots()),
        ("CONFIG", 4, size_of::<LbConfig>(), 1),
        ("STATS", 4, size_of::<Counter>(), Stat::COUNT),
        ("VIP_STATS", 4, size_of::<Counter>(), limits.max_vips),
        ("REAL_STATS", 4, size_of::<Counter>(), limits.max_reals),
    ]
}

/// Where a layout version's pins live under the configured pin directory.
/// The version is part of the path so an upgrade that changes a map's
/// layout never adopts maps written with the old one.
pub fn versioned_pin_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{}", lb_common::MAP_LAYOUT_VERSION))
}

/// Where the balancer's XDP link for `iface` is pinned.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    versioned_pin_dir(pin_dir).join(format!("link-{iface}"))
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

impl Balancer {
    /// Loads the balancer object with these limits and loads (verifies) its
    /// XDP program. Nothing is attached.
    pub fn load(limits: Limits) -> Result<Self, DataplaneError> {
        Self::open(limits, None)
    }

    /// Like [`Balancer::load`], with every map pinned under `pin_dir`
    /// (versioned): maps already pinned there are adopted, contents and all,
    /// so a restarted daemon keeps the VIPs, backends and connections.
    pub fn open(limits: Limits, pin_dir: Option<&Path>) -> Result<Self, DataplaneError> {
        limits.validate()?;
        let mut loader = EbpfLoader::new();
        let mut adopted = false;
        let pin_paths: Vec<(&'static str, PathBuf)> = match pin_dir {
            Some(dir) => {
                let dir = versioned_pin_dir(dir);
                std::fs::create_dir_all(&dir).map_err(|e| DataplaneError::PinDir { path: dir.clone(), source: e })?;
                adopted = check_pins(&dir, &limits)?;
                pinned_layout(&limits).iter().map(|(name, ..)| (*name, dir.join(name))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .override_global("RING_SIZE", &limits.ring_size, true)
            .map_max_entries("VIPS", limits.max_vips * 2)
            .map_max_entries("REALS", limits.max_reals)
            .map_max_entries("RINGS", limits.ring_slots().div_ceil(4))
            .override_global("CONN_SETS", &limits.conn_sets(), true)
            .override_global("VIP_BUCKETS", &limits.vip_buckets(), true)
            .map_max_entries("VIP_TABLE_A", limits.vip_buckets())
            .map_max_entries("VIP_TABLE_B", limits.vip_buckets())
            .map_max_entries("CONN_TABLE", limits.conn_slots())
            .map_max_entries("VIP_STATS", limits.max_vips)
            .map_max_entries("REAL_STATS", limits.max_reals)
            .load(BALANCER_ELF)?;
        let program: &mut Xdp = ebpf
            .program_mut(BALANCER_PROGRAM)
            .ok_or(DataplaneError::MissingProgram(BALANCER_PROGRAM))?
            .try_into()?;
        program.load()?;
        let rings = match ebpf.take_map("RINGS") {
            Some(Map::Array(data)) => data,
            _ => return Err(DataplaneError::MissingMap("RINGS")),
        };
        let rings = Mmapped::new(rings, limits.ring_slots() as usize)?;
        let vip_filter: Array<MapData, VipFilter> = take(&mut ebpf, "VIP_FILTER")?;
        let filter = vip_filter.get(&0, 0).map_err(map_err("VIP_FILTER"))?;
        let table = |ebpf: &mut Ebpf, name: &'static str| -> Result<(Mmapped<VipBucket>, u32), DataplaneError> {
            match ebpf.take_map(name) {
                Some(Map::Array(data)) => {
                    let id = data.info().map_err(map_err(name))?.id();
                    Ok((Mmapped::new(data, limits.vip_buckets() as usize)?, id))
                }
                _ => Err(DataplaneError::MissingMap(name)),
            }
        };
        let (table_a, id_a) = table(&mut ebpf, "VIP_TABLE_A")?;
        let (table_b, id_b) = table(&mut ebpf, "VIP_TABLE_B")?;
        let vip_outer: ArrayOfMaps<MapData, MapData> = take(&mut ebpf, "VIP_TABLES")?;
        let vips: HashMap<MapData, VipKey, VipMeta> = take(&mut ebpf, "VIPS")?;
        let vip_mirror = vips.iter().collect::<Result<BTreeMap<_, _>, _>>().map_err(map_err("VIPS"))?;
        let mut bal = Self {
            vip_tables: [table_a, table_b],
            vip_table_ids: [id_a, id_b],
            vip_outer,
            active_table: 0,
            vip_mirror,
            defer_publish: false,
            vips_dirty: false,
            links: Vec::new(),
            adopted,
            vip_filter,
            filter,
            vips,
            reals: take(&mut ebpf, "REALS")?,
            conn: match ebpf.take_map("CONN_TABLE") {
                Some(Map::Array(data)) => Mmapped::new(data, limits.conn_slots() as usize)?,
                _ => return Err(DataplaneError::MissingMap("CONN_TABLE")),
            },
            config: take(&mut ebpf, "CONFIG")?,
            stats: take(&mut ebpf, "STATS")?,
            vip_stats: take(&mut ebpf, "VIP_STATS")?,
            real_stats: take(&mut ebpf, "REAL_STATS")?,
            rings,
            limits,
            ebpf,
        };
        // A first start installs a table; a restart (or a second handle on
        // the pins) finds one.
        match bal.live_table()? {
            Some(live) => bal.active_table = live,
            None => bal.publish_vips()?,
        }
        Ok(bal)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the maps were adopted from pins rather than created.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Attaches the balancer to `iface`, or, when a link is already pinned
    /// for it (a restart or upgrade), swaps this program into that link in
    /// one step (`bpf_link_update`): no packet goes unprocessed.
    pub fn attach(&mut self, iface: &str, mode: AttachMode, pin_dir: Option<&Path>) -> Result<(), DataplaneError> {
        let pin = pin_dir.map(|d| link_pin(d, iface));
        let Self { ebpf, links, .. } = self;
        attach_xdp(xdp_program(ebpf, BALANCER_PROGRAM), iface, mode, pin.as_deref(), links)
    }

    /// The XDP program, for attaching or test runs.
    pub fn program(&mut self) -> &mut Xdp {
        xdp_program(&mut self.ebpf, BALANCER_PROGRAM)
    }

    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError> {
        self.config.set(0, cfg, 0).map_err(map_err("CONFIG"))
    }

    pub fn config(&self) -> Result<LbConfig, DataplaneError> {
        self.config.get(&0, 0).map_err(map_err("CONFIG"))
    }

    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        if meta.vip_num >= self.limits.max_vips {
            return Err(DataplaneError::OutOfRange {
                what: "vip_num",
                index: meta.vip_num,
                limit: self.limits.max_vips,
            });
        }
        self.check_ring(meta.ring)?;
        // The filter learns the address before the VIP exists.
        if !self.filter.contains(&key.addr) {
            let mut f = self.filter;
            f.insert(&key.addr);
            self.write_filter(f)?;
        }
        self.vips.insert(key, meta, 0).map_err(map_err("VIPS"))?;
        self.vip_mirror.insert(*key, *meta);
        if !self.update_vip_in_place(key, meta) {
            self.vips_dirty = true;
        }
        self.publish_unless_deferred()
    }

    /// Which copy of the VIP table is live, as the kernel says (another
    /// handle on the same pins may have swapped it).
    fn live_table(&self) -> Result<Option<usize>, DataplaneError> {
        match self.vip_outer.get(&0, 0) {
            Ok(inner) => {
                let id = inner.info().map_err(map_err("VIP_TABLES"))?.id();
                Ok(self.vip_table_ids.iter().position(|&t| t == id))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("VIP_TABLES")(e)),
        }
    }

    /// A VIP the live table holds changes in place: one aligned 32-bit store
    /// per field, each seen whole by the data plane.
    fn update_vip_in_place(&mut self, key: &VipKey, meta: &VipMeta) -> bool {
        match self.live_table() {
            Ok(Some(live)) => self.active_table = live,
            _ => return false,
        }
        let index = (lb_common::vip_key_hash(key) & (self.limits.vip_buckets() - 1)) as usize;
        let bucket = &mut self.vip_tables[self.active_table].slice_mut()[index];
        let Some(slot) = bucket.slots.iter_mut().find(|s| s.key.family != lb_common::FAMILY_NONE && s.key == *key)
        else {
            return false;
        };
        // SAFETY: aligned u32 fields of our mapping; volatile so each is
        // one store.
        unsafe {
            std::ptr::write_volatile(&mut slot.meta.ring, meta.ring);
            std::ptr::write_volatile(&mut slot.meta.flags, meta.flags);
            std::ptr::write_volatile(&mut slot.meta.vip_num, meta.vip_num);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        true
    }

    fn publish_unless_deferred(&mut self) -> Result<(), DataplaneError> {
        if self.defer_publish || !self.vips_dirty {
            return Ok(());
        }
        self.publish_vips()
    }

    /// Holds back table publishing while a batch of VIP changes is made
    /// (`true`), or publishes what the batch changed (`false`).
    pub fn defer_vip_publishing(&mut self, defer: bool) -> Result<(), DataplaneError> {
        self.defer_publish = defer;
        self.publish_unless_deferred()
    }

    /// Builds the VIP table from the VIPS map's contents into the copy
    /// that is not live, and makes it live. Returns once no program reads
    /// the previous copy any more.
    pub fn publish_vips(&mut self) -> Result<(), DataplaneError> {
        if let Some(live) = self.live_table()? {
            self.active_table = live;
        }
        let table = build_vip_table(&self.vip_mirror, self.limits.vip_buckets());
        let next = 1 - self.active_table;
        self.vip_tables[next].slice_mut().copy_from_slice(&table);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.vip_outer.set(0, self.vip_tables[next].map(), 0).map_err(map_err("VIP_TABLES"))?;
        self.active_table = next;
        self.vips_dirty = false;
        Ok(())
    }

    fn write_filter(&mut self, f: VipFilter) -> Result<(), DataplaneError> {
        self.vip_filter.set(0, f, 0).map_err(map_err("VIP_FILTER"))?;
        self.filter = f;
        Ok(())
    }

    /// Rebuilds the VIP filter from the VIPS map, dropping the bits of
    /// addresses no VIP uses any more (removing a VIP leaves its bit set:
    /// harmless, a stale bit only costs a lookup).
    pub fn rebuild_vip_filter(&mut self) -> Result<(), DataplaneError> {
        let mut f = VipFilter::default();
        for (key, _) in self.vips()? {
            f.insert(&key.addr);
        }
        if f != self.filter {
            self.write_filter(f)?;
        }
        Ok(())
    }

    pub fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.get(key, 0).ok()
    }

    /// Every entry of the VIPS map (VIPs and echo markers).
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, DataplaneError> {
        self.vips.iter().collect::<Result<_, _>>().map_err(map_err("VIPS"))
    }

    fn zero_counters() -> Result<PerCpuValues<Counter>, DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(DataplaneError::Cpus)
    }

    /// Zeroes a VIP's counters before its number is given to a new VIP.
    pub fn reset_vip_stats(&mut self, vip_num: u32) -> Result<(), DataplaneError> {
        self.vip_stats.set(vip_num, Self::zero_counters()?, 0).map_err(map_err("VIP_STATS"))
    }

    /// Zeroes a backend slot's counters before it is given to a new backend.
    pub fn reset_real_stats(&mut self, index: u32) -> Result<(), DataplaneError> {
        self.check_real(index)?;
        self.real_stats.set(index, Self::zero_counters()?, 0).map_err(map_err("REAL_STATS"))
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        match self.vips.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("VIPS")(e)),
        }
        if self.vip_mirror.remove(key).is_some() {
            self.vips_dirty = true;
        }
        self.publish_unless_deferred()
    }

    fn check_real(&self, index: u32) -> Result<(), DataplaneError> {
        if index == lb_common::REAL_NONE || index >= self.limits.max_reals {
            return Err(DataplaneError::OutOfRange {
                what: "backend",
                index,
                limit: self.limits.max_reals,
            });
        }
        Ok(())
    }

    fn check_ring(&self, ring: u32) -> Result<(), DataplaneError> {
        if ring >= self.limits.ring_count() {
            return Err(DataplaneError::OutOfRange {
                what: "ring",
                index: ring,
                limit: self.limits.ring_count(),
            });
        }
        Ok(())
    }

    pub fn set_real(&mut self, index: u32, real: &Real) -> Result<(), DataplaneError> {
        self.check_real(index)?;
        self.reals.set(index, real, 0).map_err(map_err("REALS"))
    }

    /// Marks a backend slot unused: packets of flows pinned to it re-hash.
    pub fn clear_real(&mut self, index: u32) -> Result<(), DataplaneError> {
        self.set_real(index, &Real::default())
    }

    pub fn real(&self, index: u32) -> Result<Real, DataplaneError> {
        self.reals.get(&index, 0).map_err(map_err("REALS"))
    }

    /// Writes a whole Maglev table into ring `ring`. Callers switch a VIP to
    /// it afterwards with [`Balancer::set_vip`]; the map update that does so
    /// orders these stores before it.
    pub fn write_ring(&mut self, ring: u32, table: &[u32]) -> Result<(), DataplaneError> {
        let range = self.ring_range(ring, table.len())?;
        if let Some(&bad) = table.iter().find(|&&i| i >= self.limits.max_reals) {
            return Err(DataplaneError::OutOfRange { what: "backend", index: bad, limit: self.limits.max_reals });
        }
        for (slot, &index) in self.rings.slice_mut()[range].iter_mut().zip(table) {
            // max_reals <= 2^16 (validated), so the index fits.
            *slot = index as u16;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn ring_range(&self, ring: u32, len: usize) -> Result<std::ops::Range<usize>, DataplaneError> {
        self.check_ring(ring)?;
        let size = self.limits.ring_size as usize;
        if len != size {
            return Err(DataplaneError::RingLength { got: len, want: self.limits.ring_size });
        }
        Ok(ring as usize * size..(ring as usize + 1) * size)
    }

    /// Ring `ring`'s backend indices.
    pub fn ring(&self, ring: u32) -> Result<Vec<u32>, DataplaneError> {
        let range = self.ring_range(ring, self.limits.ring_size as usize)?;
        Ok(self.rings.slice()[range].iter().map(|&i| i as u32).collect())
    }

    /// Whether ring `ring` holds exactly `table`.
    pub fn ring_equals(&self, ring: u32, table: &[u32]) -> Result<bool, DataplaneError> {
        let range = self.ring_range(ring, table.len())?;
        Ok(self.rings.slice()[range].iter().zip(table).all(|(&a, &b)| a as u32 == b))
    }

    /// The slots of the set `flow` lives in.
    fn conn_set_of(&self, flow: &FlowKey) -> std::ops::Range<usize> {
        let set = (lb_common::flow_hash64(flow) as u32 & (self.limits.conn_sets() - 1)) * lb_common::CONN_WAYS;
        set as usize..(set + lb_common::CONN_WAYS) as usize
    }

    /// The backend the connection table remembers for `flow`.
    pub fn conn(&self, flow: &FlowKey) -> Option<ConnEntry> {
        let fp = lb_common::flow_hash64(flow) & lb_common::CONN_FINGERPRINT_MASK;
        self.conn.slice()[self.conn_set_of(flow)]
            .iter()
            .find(|&&v| v & lb_common::CONN_REAL_MASK != 0 && v & lb_common::CONN_FINGERPRINT_MASK == fp)
            .map(|&v| ConnEntry { real: (v & lb_common::CONN_REAL_MASK) as u32 })
    }

    /// Writes `flow → entry` into the connection table, marked used.
    pub fn set_conn(&mut self, flow: &FlowKey, entry: &ConnEntry) -> Result<(), DataplaneError> {
        self.check_real(entry.real)?;
        let fp = lb_common::flow_hash64(flow);
        let range = self.conn_set_of(flow);
        let set = &mut self.conn.slice_mut()[range];
        let want = fp & lb_common::CONN_FINGERPRINT_MASK;
        let way = set
            .iter()
            .position(|&v| v & lb_common::CONN_REAL_MASK == 0 || v & lb_common::CONN_FINGERPRINT_MASK == want)
            .unwrap_or(0);
        // SAFETY: an aligned u64 of our mapping: one atomic store.
        unsafe {
            std::ptr::write_volatile(&mut set[way], lb_common::conn_slot(fp, entry.real) | lb_common::CONN_REFERENCED)
        };
        Ok(())
    }

    /// Entries in the connection table (a full scan: not for hot paths).
    pub fn conn_count(&self) -> usize {
        self.conn.slice().iter().filter(|&&v| v & lb_common::CONN_REAL_MASK != 0).count()
    }

    fn sum(map: &PerCpuArray<MapData, Counter>, index: u32, name: &'static str) -> Result<Counter, DataplaneError> {
        let values = map.get(&index, 0).map_err(map_err(name))?;
        Ok(values.iter().fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }))
    }

    /// A global counter, summed over CPUs.
    pub fn stat(&self, stat: Stat) -> Result<Counter, DataplaneError> {
        Self::sum(&self.stats, stat as u32, "STATS")
    }

    /// Every global counter, summed over CPUs, in [`Stat::ALL`] order.
    pub fn all_stats(&self) -> Result<Vec<(Stat, Counter)>, DataplaneError> {
        Stat::ALL.iter().map(|&s| Ok((s, self.stat(s)?))).collect()
    }

    pub fn vip_stat(&self, vip_num: u32) -> Result<Counter, DataplaneError> {
        Self::sum(&self.vip_stats, vip_num, "VIP_STATS")
    }

    pub fn real_stat(&self, index: u32) -> Result<Counter, DataplaneError> {
        Self::sum(&self.real_stats, index, "REAL_STATS")
    }
}

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
            for name in ["DECAP_ADDRS", "DECAP_STATS"] {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(DECAP_ELF)?;
        let program: &mut Xdp = ebpf
            .program_mut(DECAP_PROGRAM)
            .ok_or(DataplaneError::MissingProgram(DECAP_PROGRAM))?
            .try_into()?;
        program.load()?;
        Ok(Self {
            addrs: take(&mut ebpf, "DECAP_ADDRS")?,
            stats: take(&mut ebpf, "DECAP_STATS")?,
            ebpf,
            links: Vec::new(),
        })
    }

    /// Attaches decap to `iface` (see [`Balancer::attach`] for pinning).
    pub fn attach(&mut self, iface: &str, mode: AttachMode, pin_dir: Option<&Path>) -> Result<(), DataplaneError> {
        let pin = pin_dir.map(|d| link_pin(d, iface));
        let Self { ebpf, links, .. } = self;
        attach_xdp(xdp_program(ebpf, DECAP_PROGRAM), iface, mode, pin.as_deref(), links)
    }

    pub fn program(&mut self) -> &mut Xdp {
        xdp_program(&mut self.ebpf, DECAP_PROGRAM)
    }

    /// Accepts tunnelled packets whose outer destination is `addr`.
    pub fn add_addr(&mut self, addr: std::net::IpAddr) -> Result<(), DataplaneError> {
        self.addrs.insert(decap_addr(addr), 1, 0).map_err(map_err("DECAP_ADDRS"))
    }

    pub fn remove_addr(&mut self, addr: std::net::IpAddr) -> Result<(), DataplaneError> {
        match self.addrs.remove(&decap_addr(addr)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("DECAP_ADDRS")(e)),
        }
    }

    pub fn stat(&self, stat: DecapStat) -> Result<Counter, DataplaneError> {
        Balancer::sum(&self.stats, stat as u32, "DECAP_STATS")
    }

    pub fn all_stats(&self) -> Result<Vec<(DecapStat, Counter)>, DataplaneError> {
        DecapStat::ALL.iter().map(|&s| Ok((s, self.stat(s)?))).collect()
    }
}

fn decap_addr(addr: std::net::IpAddr) -> DecapAddr {
    let (addr, family) = ip_to_addr(addr);
    DecapAddr { addr, family, _pad: [0; 3] }
}

/// An IP address as the data plane's [`lb_common::Addr`] and family tag.
pub fn ip_to_addr(addr: std::net::IpAddr) -> (lb_common::Addr, u8) {
    match addr {
        std::net::IpAddr::V4(a) => (lb_common::addr_v4(a.octets()), lb_common::FAMILY_V4),
        std::net::IpAddr::V6(a) => (lb_common::addr_v6(a.octets()), lb_common::FAMILY_V6),
    }
}
