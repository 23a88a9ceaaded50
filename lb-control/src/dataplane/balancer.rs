//! [`Balancer`]: the loaded balancer and its maps, each concern in its own
//! type (VIP table, ring pool, connection table, counters); this type
//! checks indices and keeps the public methods in one place.

use std::path::Path;

use aya::{
    maps::{Array, Map, MapData, RingBuf},
    programs::{xdp::XdpLink, Xdp},
    Ebpf,
};
use lb_common::{
    map_names, CaptureFilter, ConnEntry, Counter, FlowKey, LbConfig, Real, Stat, SynFloodState, VipKey, VipMeta,
    REAL_NONE, VIP_ADDR_SLOTS,
};

use super::{
    capture::CaptureMaps,
    conn::ConnTable,
    counters::Counters,
    flood::SynFloodWindows,
    load::{attach_xdp, link_pin, load_balancer, open_pinned, xdp_program, PinnedMaps, XdpMode},
    map_err,
    mmap::MmapArray,
    rings::RingPool,
    take,
    vip_table::VipTable,
    DataplaneError, Limits, BALANCER_PROGRAM,
};

/// The loaded balancer and its maps.
pub struct Balancer {
    ebpf: Ebpf,
    /// Attachments made without pinning; dropped with the balancer.
    links: Vec<XdpLink>,
    /// The maps were already pinned (a restart), not created empty.
    adopted: bool,
    limits: Limits,
    vips: VipTable,
    reals: Array<MapData, Real>,
    /// The VIP each real serves (for a restarted daemon; see
    /// [`lb_common::Real`]).
    real_owners: Array<MapData, VipKey>,
    rings: RingPool,
    /// Each VIP's previous ring plus one, by VIP number (second chance).
    prev_rings: Array<MapData, u32>,
    conn: ConnTable,
    config: Array<MapData, LbConfig>,
    counters: Counters,
    /// The SYN-flood mode's per-CPU windows.
    syn_flood: SynFloodWindows,
    capture: CaptureMaps,
    /// Handles on the pinned maps (when pinned), to pin them again.
    pinned: Option<PinnedMaps>,
}

/// Takes an mmapable array map out of the object and maps `entries` values.
fn take_mmap<T: aya::Pod>(ebpf: &mut Ebpf, name: &'static str, entries: u32) -> Result<MmapArray<T>, DataplaneError> {
    match ebpf.take_map(name) {
        Some(Map::Array(data)) => MmapArray::new(data, entries as usize),
        _ => Err(DataplaneError::MissingMap(name)),
    }
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
        let (mut ebpf, adopted) = load_balancer(&limits, pin_dir)?;
        let pinned = pin_dir.map(|dir| open_pinned(dir, &limits)).transpose()?;
        let rings = take_mmap(&mut ebpf, map_names::RINGS, limits.ring_slots())?;
        let conn = take_mmap(&mut ebpf, map_names::CONN_TABLE, limits.conn_slots())?;
        let vip_table = take_mmap(&mut ebpf, map_names::VIP_TABLE, limits.vip_table_entries())?;
        let vip_table_live = take_mmap(&mut ebpf, map_names::VIP_TABLE_LIVE, 1)?;
        let vip_addrs = take_mmap(&mut ebpf, map_names::VIP_ADDRS, 2 * VIP_ADDR_SLOTS)?;
        let vips = VipTable::new(
            take(&mut ebpf, map_names::VIPS)?,
            vip_table,
            vip_addrs,
            vip_table_live,
            take(&mut ebpf, map_names::VIP_FILTER)?,
            limits.vip_buckets(),
        )?;
        Ok(Self {
            links: Vec::new(),
            adopted,
            vips,
            reals: take(&mut ebpf, map_names::REALS)?,
            real_owners: take(&mut ebpf, map_names::REAL_OWNERS)?,
            rings: RingPool::new(rings, limits),
            prev_rings: take(&mut ebpf, map_names::PREV_RINGS)?,
            conn: ConnTable::new(conn, limits.conn_sets()),
            config: take(&mut ebpf, map_names::CONFIG)?,
            counters: Counters {
                stats: take(&mut ebpf, map_names::STATS)?,
                vip_stats: take(&mut ebpf, map_names::VIP_STATS)?,
                real_stats: take(&mut ebpf, map_names::REAL_STATS)?,
            },
            syn_flood: SynFloodWindows { map: take(&mut ebpf, map_names::SYN_FLOOD)? },
            capture: CaptureMaps::new(
                take(&mut ebpf, map_names::CAPTURE_FILTER)?,
                take(&mut ebpf, map_names::CAPTURE_RING)?,
            ),
            limits,
            ebpf,
            pinned,
        })
    }

    /// Pins again the maps whose pins were removed while this balancer ran
    /// (`lb-control detach --force`), so a later restart adopts them (and the
    /// connections they track) instead of starting empty. Returns how many
    /// it pinned; 0 for a balancer that was never pinned.
    pub fn repin_maps(&self, pin_dir: &Path) -> Result<usize, DataplaneError> {
        self.pinned.as_ref().map_or(Ok(0), |p| p.repin(pin_dir))
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
    pub fn attach(&mut self, iface: &str, mode: XdpMode, pin_dir: Option<&Path>) -> Result<(), DataplaneError> {
        let pin = pin_dir.map(|d| link_pin(d, iface));
        let Self { ebpf, links, .. } = self;
        attach_xdp(xdp_program(ebpf, BALANCER_PROGRAM), iface, mode, pin.as_deref(), links)
    }

    /// The XDP program, for attaching or test runs.
    pub fn program(&mut self) -> &mut Xdp {
        xdp_program(&mut self.ebpf, BALANCER_PROGRAM)
    }

    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError> {
        self.config.set(0, cfg, 0).map_err(map_err(map_names::CONFIG))
    }

    pub fn config(&self) -> Result<LbConfig, DataplaneError> {
        self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))
    }

    // ---- VIPs ----------------------------------------------------------

    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        if meta.vip_num >= self.limits.max_vips {
            return Err(DataplaneError::OutOfRange {
                what: "vip_num",
                index: meta.vip_num,
                limit: self.limits.max_vips,
            });
        }
        self.rings.check_ring(meta.ring)?;
        self.vips.set(key, meta)
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        self.vips.remove(key)
    }

    pub fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.get(key)
    }

    /// Every entry of the VIPS map (VIPs and echo markers).
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, DataplaneError> {
        self.vips.all()
    }

    /// Holds back table publishing while a batch of VIP changes is made
    /// (`true`), or publishes what the batch changed (`false`).
    pub fn defer_vip_publishing(&mut self, defer: bool) -> Result<(), DataplaneError> {
        self.vips.defer_publishing(defer)
    }

    /// Builds the VIP table from the VIPS map's contents into the copy
    /// that is not live, and makes it live. Returns once no program reads
    /// the previous copy any more.
    pub fn publish_vips(&mut self) -> Result<(), DataplaneError> {
        self.vips.publish()
    }

    /// Rebuilds the VIP filter from the VIPS map (see
    /// [`lb_common::VipFilter`]): drops the bits of removed addresses.
    pub fn rebuild_vip_filter(&mut self) -> Result<(), DataplaneError> {
        self.vips.rebuild_filter()
    }

    // ---- reals -----------------------------------------------------------

    fn check_real(&self, index: u32) -> Result<(), DataplaneError> {
        if index == REAL_NONE || index >= self.limits.max_reals {
            return Err(DataplaneError::OutOfRange { what: "backend", index, limit: self.limits.max_reals });
        }
        Ok(())
    }

    pub fn set_real(&mut self, index: u32, real: &Real) -> Result<(), DataplaneError> {
        self.check_real(index)?;
        self.reals.set(index, real, 0).map_err(map_err(map_names::REALS))
    }

    /// Marks a backend slot unused: packets of flows pinned to it re-hash.
    /// Its owner is cleared too.
    pub fn clear_real(&mut self, index: u32) -> Result<(), DataplaneError> {
        self.set_real(index, &Real::default())?;
        self.set_real_owner(index, &VipKey::default())
    }

    /// Records which VIP real `index` serves.
    pub fn set_real_owner(&mut self, index: u32, owner: &VipKey) -> Result<(), DataplaneError> {
        self.check_real(index)?;
        self.real_owners.set(index, owner, 0).map_err(map_err(map_names::REAL_OWNERS))
    }

    /// The VIP real `index` serves (a default key when none was recorded).
    pub fn real_owner(&self, index: u32) -> Result<VipKey, DataplaneError> {
        self.real_owners.get(&index, 0).map_err(map_err(map_names::REAL_OWNERS))
    }

    pub fn real(&self, index: u32) -> Result<Real, DataplaneError> {
        self.reals.get(&index, 0).map_err(map_err(map_names::REALS))
    }

    // ---- rings -----------------------------------------------------------

    /// Writes a whole Maglev table into ring `ring`. Callers switch a VIP to
    /// it afterwards with [`Balancer::set_vip`]; the map update that does so
    /// orders these stores before it.
    pub fn write_ring(&mut self, ring: u32, table: &[u32]) -> Result<(), DataplaneError> {
        self.rings.write(ring, table)
    }

    /// Ring `ring`'s backend indices.
    pub fn ring(&self, ring: u32) -> Result<Vec<u32>, DataplaneError> {
        self.rings.read(ring)
    }

    /// Entry `slot` of ring `ring`: the backend index the data plane reads
    /// for a flow whose ring slot this is.
    pub fn ring_entry(&self, ring: u32, slot: u32) -> Result<u32, DataplaneError> {
        self.rings.entry(ring, slot)
    }

    /// Whether ring `ring` holds exactly `table`.
    pub fn ring_equals(&self, ring: u32, table: &[u32]) -> Result<bool, DataplaneError> {
        self.rings.equals(ring, table)
    }

    /// Sets the previous ring of the VIP numbered `vip_num` (second chance),
    /// or clears it with `None`.
    pub fn set_prev_ring(&mut self, vip_num: u32, ring: Option<u32>) -> Result<(), DataplaneError> {
        if vip_num >= self.limits.max_vips {
            return Err(DataplaneError::OutOfRange { what: "VIP number", index: vip_num, limit: self.limits.max_vips });
        }
        let value = match ring {
            Some(ring) => {
                self.rings.check_ring(ring)?;
                ring + 1
            }
            None => lb_common::PREV_RING_NONE,
        };
        self.prev_rings.set(vip_num, value, 0).map_err(map_err(map_names::PREV_RINGS))
    }

    /// The previous ring of the VIP numbered `vip_num`, if it has one.
    pub fn prev_ring(&self, vip_num: u32) -> Result<Option<u32>, DataplaneError> {
        let value = self.prev_rings.get(&vip_num, 0).map_err(map_err(map_names::PREV_RINGS))?;
        Ok(value.checked_sub(1))
    }

    // ---- connection table ------------------------------------------------

    /// The backend the connection table remembers for `flow`.
    pub fn conn(&self, flow: &FlowKey) -> Option<ConnEntry> {
        self.conn.get(flow)
    }

    /// Writes `flow → entry` into the connection table, marked used.
    pub fn set_conn(&mut self, flow: &FlowKey, entry: &ConnEntry) -> Result<(), DataplaneError> {
        self.check_real(entry.real)?;
        self.conn.set(flow, entry);
        Ok(())
    }

    /// Empties every connection-table entry that names one of `reals`, and
    /// returns how many (one scan of the table, whatever their number).
    /// The engine runs it before it gives freed reals to new (VIP, backend)
    /// pairs.
    pub fn forget_conns_of(&mut self, reals: &[u32]) -> Result<usize, DataplaneError> {
        let mut forget = vec![false; self.limits.max_reals as usize];
        for &real in reals {
            self.check_real(real)?;
            forget[real as usize] = true;
        }
        Ok(if reals.is_empty() { 0 } else { self.conn.forget(&forget) })
    }

    /// Entries in the connection table (a full scan: not for hot paths).
    pub fn conn_count(&self) -> usize {
        self.conn.count()
    }

    /// Connection-table slots in all.
    pub fn conn_slots(&self) -> usize {
        self.conn.slots()
    }

    /// Connection-table entries per real, indexed by real (one scan of the
    /// mapped table; the last element counts entries naming a real beyond
    /// `max_reals`, which only a corrupted table holds).
    pub fn conn_count_by_real(&self) -> Vec<u64> {
        self.conn.count_by_real(self.limits.max_reals as usize)
    }

    // ---- capture -----------------------------------------------------------

    /// Arms (or, with `armed == 0`, disarms) the packet capture.
    pub fn set_capture(&mut self, filter: &CaptureFilter) -> Result<(), DataplaneError> {
        self.capture.set(filter)
    }

    /// The capture filter as the data plane sees it (with its lost count).
    pub fn capture(&self) -> Result<CaptureFilter, DataplaneError> {
        self.capture.get()
    }

    /// The capture ring, for one session at a time (`None`: lent out).
    pub fn take_capture_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.capture.take_ring()
    }

    pub fn return_capture_ring(&mut self, ring: RingBuf<MapData>) {
        self.capture.return_ring(ring)
    }

    // ---- counters --------------------------------------------------------

    /// A global counter, summed over CPUs.
    pub fn stat(&self, stat: Stat) -> Result<Counter, DataplaneError> {
        self.counters.stat(stat)
    }

    /// Every global counter, summed over CPUs, in [`Stat::ALL`] order.
    pub fn all_stats(&self) -> Result<Vec<(Stat, Counter)>, DataplaneError> {
        Stat::ALL.iter().map(|&s| Ok((s, self.stat(s)?))).collect()
    }

    pub fn vip_stat(&self, vip_num: u32) -> Result<Counter, DataplaneError> {
        self.counters.vip(vip_num)
    }

    pub fn real_stat(&self, index: u32) -> Result<Counter, DataplaneError> {
        self.counters.real(index)
    }

    // ---- SYN-flood mode -----------------------------------------------------

    /// Every CPU's SYN-flood window, by CPU.
    pub fn syn_flood_windows(&self) -> Result<Vec<SynFloodState>, DataplaneError> {
        self.syn_flood.states()
    }

    /// Sets every CPU's SYN-flood window (tests and benchmarks: a window
    /// over the threshold, or one that has ended).
    pub fn set_syn_flood_windows(&mut self, state: SynFloodState) -> Result<(), DataplaneError> {
        self.syn_flood.set_all(state)
    }

    /// How many CPUs are in SYN-flood mode now, under the threshold the
    /// config map holds.
    pub fn syn_flood_cpus(&self) -> Result<u32, DataplaneError> {
        self.syn_flood.flooded_cpus(self.config()?.syn_flood_threshold)
    }

    /// Zeroes a VIP's counters before its number is given to a new VIP.
    pub fn reset_vip_stats(&mut self, vip_num: u32) -> Result<(), DataplaneError> {
        self.counters.reset_vip(vip_num)
    }

    /// Zeroes a backend slot's counters before it is given to a new backend.
    pub fn reset_real_stats(&mut self, index: u32) -> Result<(), DataplaneError> {
        self.check_real(index)?;
        self.counters.reset_real(index)
    }
}
