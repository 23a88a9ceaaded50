//! The VIPs: the `VIPS` hash map (the overflow path and the source of
//! truth), the two copies of the VIP table the data plane reads, swapped
//! through `VIP_TABLES`, and the VIP address filter.

use std::collections::BTreeMap;

use aya::maps::{Array, ArrayOfMaps, HashMap, MapData, MapError};
use lb_common::{map_names, vip_key_hash, VipBucket, VipFilter, VipKey, VipMeta, VipSlot, FAMILY_NONE};

use super::{map_err, mmap::MmapArray, DataplaneError};

/// The VIP table for these VIPs: each in the first free slot of its bucket;
/// a bucket with no room left is marked overflowed, and the data plane looks
/// such keys up in the VIPS map.
pub fn build_vip_table(vips: &BTreeMap<VipKey, VipMeta>, buckets: u32) -> Vec<VipBucket> {
    let mut table = vec![VipBucket::default(); buckets as usize];
    for (key, meta) in vips {
        let bucket = &mut table[(vip_key_hash(key) & (buckets - 1)) as usize];
        match bucket.slots.iter_mut().find(|s| s.key.family == FAMILY_NONE) {
            Some(slot) => *slot = VipSlot { key: *key, meta: *meta },
            None => bucket.overflow = 1,
        }
    }
    table
}

/// The VIP maps and what user space knows of them.
pub(super) struct VipTable {
    vips: HashMap<MapData, VipKey, VipMeta>,
    /// The two copies of the VIP table, mapped, and the map-of-maps that
    /// names the live one.
    copies: [MmapArray<VipBucket>; 2],
    outer: ArrayOfMaps<MapData, MapData>,
    copy_ids: [u32; 2],
    active: usize,
    buckets: u32,
    /// What `vips` holds, so tables are built without reading the map back.
    mirror: BTreeMap<VipKey, VipMeta>,
    /// Set while a batch of changes is made: the table is published once.
    defer_publish: bool,
    dirty: bool,
    filter_map: Array<MapData, VipFilter>,
    /// What `filter_map` holds.
    filter: VipFilter,
}

impl VipTable {
    /// Takes over the maps; a first start installs a table, a restart (or
    /// a second handle on the pins) finds one.
    pub(super) fn new(
        vips: HashMap<MapData, VipKey, VipMeta>,
        copies: [(MmapArray<VipBucket>, u32); 2],
        outer: ArrayOfMaps<MapData, MapData>,
        filter_map: Array<MapData, VipFilter>,
        buckets: u32,
    ) -> Result<Self, DataplaneError> {
        let filter = filter_map.get(&0, 0).map_err(map_err(map_names::VIP_FILTER))?;
        let mirror = vips.iter().collect::<Result<BTreeMap<_, _>, _>>().map_err(map_err(map_names::VIPS))?;
        let [(a, id_a), (b, id_b)] = copies;
        let mut table = Self {
            vips,
            copies: [a, b],
            outer,
            copy_ids: [id_a, id_b],
            active: 0,
            buckets,
            mirror,
            defer_publish: false,
            dirty: false,
            filter_map,
            filter,
        };
        match table.live_copy()? {
            Some(live) => table.active = live,
            None => table.publish()?,
        }
        Ok(table)
    }

    pub(super) fn set(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        // The filter learns the address before the VIP exists.
        if !self.filter.contains(&key.addr) {
            let mut f = self.filter;
            f.insert(&key.addr);
            self.write_filter(f)?;
        }
        self.vips.insert(key, meta, 0).map_err(map_err(map_names::VIPS))?;
        self.mirror.insert(*key, *meta);
        if !self.update_in_place(key, meta) {
            self.dirty = true;
        }
        self.publish_unless_deferred()
    }

    pub(super) fn remove(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        match self.vips.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(map_names::VIPS)(e)),
        }
        if self.mirror.remove(key).is_some() {
            self.dirty = true;
        }
        self.publish_unless_deferred()
    }

    pub(super) fn get(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.get(key, 0).ok()
    }

    /// Every entry of the VIPS map (VIPs and echo markers).
    pub(super) fn all(&self) -> Result<Vec<(VipKey, VipMeta)>, DataplaneError> {
        self.vips.iter().collect::<Result<_, _>>().map_err(map_err(map_names::VIPS))
    }

    /// Which copy of the VIP table is live, as the kernel says (another
    /// handle on the same pins may have swapped it).
    fn live_copy(&self) -> Result<Option<usize>, DataplaneError> {
        match self.outer.get(&0, 0) {
            Ok(inner) => {
                let id = inner.info().map_err(map_err(map_names::VIP_TABLES))?.id();
                Ok(self.copy_ids.iter().position(|&t| t == id))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::VIP_TABLES)(e)),
        }
    }

    /// A VIP the live table holds changes in place: one aligned 32-bit store
    /// per field, each seen whole by the data plane.
    fn update_in_place(&mut self, key: &VipKey, meta: &VipMeta) -> bool {
        match self.live_copy() {
            Ok(Some(live)) => self.active = live,
            _ => return false,
        }
        let index = (vip_key_hash(key) & (self.buckets - 1)) as usize;
        let bucket = &mut self.copies[self.active].slice_mut()[index];
        let Some(slot) = bucket.slots.iter_mut().find(|s| s.key.family != FAMILY_NONE && s.key == *key) else {
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
        if self.defer_publish || !self.dirty {
            return Ok(());
        }
        self.publish()
    }

    /// Holds back table publishing while a batch of VIP changes is made
    /// (`true`), or publishes what the batch changed (`false`).
    pub(super) fn defer_publishing(&mut self, defer: bool) -> Result<(), DataplaneError> {
        self.defer_publish = defer;
        self.publish_unless_deferred()
    }

    /// Builds the VIP table from the VIPS map's contents into the copy
    /// that is not live, and makes it live. Returns once no program reads
    /// the previous copy any more.
    pub(super) fn publish(&mut self) -> Result<(), DataplaneError> {
        if let Some(live) = self.live_copy()? {
            self.active = live;
        }
        let table = build_vip_table(&self.mirror, self.buckets);
        let next = 1 - self.active;
        self.copies[next].slice_mut().copy_from_slice(&table);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.outer.set(0, self.copies[next].map(), 0).map_err(map_err(map_names::VIP_TABLES))?;
        self.active = next;
        self.dirty = false;
        Ok(())
    }

    fn write_filter(&mut self, f: VipFilter) -> Result<(), DataplaneError> {
        self.filter_map.set(0, f, 0).map_err(map_err(map_names::VIP_FILTER))?;
        self.filter = f;
        Ok(())
    }

    /// Rebuilds the VIP filter from the VIPS map, dropping the bits of
    /// addresses no VIP uses any more (removing a VIP leaves its bit set:
    /// harmless, a stale bit only costs a lookup).
    pub(super) fn rebuild_filter(&mut self) -> Result<(), DataplaneError> {
        let mut f = VipFilter::default();
        for (key, _) in self.all()? {
            f.insert(&key.addr);
        }
        if f != self.filter {
            self.write_filter(f)?;
        }
        Ok(())
    }
}
