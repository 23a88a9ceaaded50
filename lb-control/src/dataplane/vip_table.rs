//! The VIPs: the `VIPS` hash map (the overflow path and the source of
//! truth), the two copies of the VIP table the data plane reads (the
//! `VIP_TABLE` array) and of the VIP address table (`VIP_ADDRS`), with
//! `VIP_TABLE_LIVE` naming the live copies, and the VIP address filter.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, MapData, MapError};
use lb_common::{
    is_echo_marker, map_names, vip_filter_bit, vip_key_hash, VipAddrSlot, VipBucket, VipFilter, VipKey, VipMeta,
    VipSlot, VipTableLive, FAMILY_NONE, VIP_ADDR_SHARED, VIP_ADDR_SLOTS,
};

use super::{grace::GracePeriod, map_err, mmap::MmapArray, DataplaneError};

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

/// The VIP address table for these VIPs: each echo marker's address in the
/// slot of its filter bit; a slot two or more addresses share says so.
pub fn build_vip_addrs(vips: &BTreeMap<VipKey, VipMeta>) -> Vec<VipAddrSlot> {
    let mut slots = vec![VipAddrSlot::default(); VIP_ADDR_SLOTS as usize];
    for (key, _) in vips.iter().filter(|(key, meta)| is_echo_marker(key, meta)) {
        let slot = &mut slots[vip_filter_bit(&key.addr) as usize];
        *slot = if slot.family == FAMILY_NONE as u32 {
            VipAddrSlot { addr: key.addr, family: key.family as u32, _pad: 0 }
        } else {
            VipAddrSlot { addr: [0; 4], family: VIP_ADDR_SHARED, _pad: 0 }
        };
    }
    slots
}

/// The VIP maps and what user space knows of them.
pub(super) struct VipTable {
    vips: HashMap<MapData, VipKey, VipMeta>,
    /// The two copies of the VIP table, back to back, mapped.
    table: MmapArray<VipBucket>,
    /// The two copies of the VIP address table, back to back, mapped.
    addrs: MmapArray<VipAddrSlot>,
    /// Which copy is live, mapped: shared with the data plane (and with any
    /// other handle on the same pins), so it is read afresh each time.
    live: MmapArray<VipTableLive>,
    grace: GracePeriod,
    /// Buckets of one copy.
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
        table: MmapArray<VipBucket>,
        addrs: MmapArray<VipAddrSlot>,
        live: MmapArray<VipTableLive>,
        filter_map: Array<MapData, VipFilter>,
        buckets: u32,
    ) -> Result<Self, DataplaneError> {
        let filter = filter_map.get(&0, 0).map_err(map_err(map_names::VIP_FILTER))?;
        let mirror = vips.iter().collect::<Result<BTreeMap<_, _>, _>>().map_err(map_err(map_names::VIPS))?;
        let mut table = Self {
            vips,
            table,
            addrs,
            live,
            grace: GracePeriod::new()?,
            buckets,
            mirror,
            defer_publish: false,
            dirty: false,
            filter_map,
            filter,
        };
        if table.live_copy().is_none() {
            table.publish()?;
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

    /// Which copy of the VIP table is live (`None` before the first
    /// publish, or if the entry names no copy), read from the map: another
    /// handle on the same pins may have swapped it.
    fn live_copy(&self) -> Option<usize> {
        // SAFETY: an aligned value of our mapping; volatile because the
        // data plane and other handles share it.
        let live = unsafe { std::ptr::read_volatile(&self.live.slice()[0]) };
        match live.base {
            _ if live.published == 0 => None,
            0 => Some(0),
            b if b == self.buckets => Some(1),
            _ => None,
        }
    }

    /// The buckets of copy `copy`.
    fn copy_mut(&mut self, copy: usize) -> &mut [VipBucket] {
        let n = self.buckets as usize;
        &mut self.table.slice_mut()[copy * n..(copy + 1) * n]
    }

    /// A VIP the live table holds changes in place: one aligned 32-bit store
    /// per field, each seen whole by the data plane.
    /// An entry that becomes or stops being an echo marker changes the VIP
    /// address table too: that takes a publish.
    fn update_in_place(&mut self, key: &VipKey, meta: &VipMeta) -> bool {
        let Some(live) = self.live_copy() else { return false };
        let index = (vip_key_hash(key) & (self.buckets - 1)) as usize;
        let bucket = &mut self.copy_mut(live)[index];
        let Some(slot) = bucket.slots.iter_mut().find(|s| s.key.family != FAMILY_NONE && s.key == *key) else {
            return false;
        };
        if is_echo_marker(key, &slot.meta) != is_echo_marker(key, meta) {
            return false;
        }
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
    /// the previous copy any more, so the next publish may rewrite it.
    pub(super) fn publish(&mut self) -> Result<(), DataplaneError> {
        let next = match self.live_copy() {
            Some(live) => 1 - live,
            None => 0,
        };
        let built = build_vip_table(&self.mirror, self.buckets);
        self.copy_mut(next).copy_from_slice(&built);
        let slots = VIP_ADDR_SLOTS as usize;
        self.addrs.slice_mut()[next * slots..(next + 1) * slots].copy_from_slice(&build_vip_addrs(&self.mirror));
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let live = &mut self.live.slice_mut()[0];
        // SAFETY: aligned u32 fields of our mapping; volatile so each is one
        // store. A reader sees each copy old or new (both whole: the old
        // ones are not rewritten before the grace period below).
        unsafe {
            std::ptr::write_volatile(&mut live.base, next as u32 * self.buckets);
            std::ptr::write_volatile(&mut live.addrs_base, next as u32 * VIP_ADDR_SLOTS);
            std::ptr::write_volatile(&mut live.published, 1);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.grace.wait()?;
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::{addr_v4, FAMILY_V4, IPPROTO_ICMP, IPPROTO_TCP, VIP_F_ICMP_ECHO};

    use super::*;

    fn marker(a: Ipv4Addr) -> (VipKey, VipMeta) {
        let key = VipKey { addr: addr_v4(a.octets()), port: 0, proto: IPPROTO_ICMP, family: FAMILY_V4 };
        (key, VipMeta { flags: VIP_F_ICMP_ECHO, vip_num: 1, ring: 1 })
    }

    #[test]
    fn vip_address_table_names_each_marker_or_says_shared() {
        let a = Ipv4Addr::new(10, 0, 0, 10);
        let bit = |x: Ipv4Addr| vip_filter_bit(&addr_v4(x.octets()));
        let twin = (1..u32::MAX).map(|i| Ipv4Addr::from(u32::from(a) + i)).find(|&x| bit(x) == bit(a)).unwrap();
        let other = (1..u32::MAX).map(|i| Ipv4Addr::from(u32::from(a) + i)).find(|&x| bit(x) != bit(a)).unwrap();
        // A VIP that is not a marker does not count.
        let vip = VipKey { addr: addr_v4(other.octets()), port: 80u16.to_be(), proto: IPPROTO_TCP, family: FAMILY_V4 };
        let mut vips: BTreeMap<_, _> = [marker(a), (vip, VipMeta::default())].into();
        let slots = build_vip_addrs(&vips);
        assert_eq!(
            slots[bit(a) as usize],
            VipAddrSlot { addr: addr_v4(a.octets()), family: FAMILY_V4 as u32, _pad: 0 }
        );
        assert_eq!(slots.iter().filter(|s| s.family != FAMILY_NONE as u32).count(), 1);

        vips.extend([marker(twin), marker(other)]);
        let slots = build_vip_addrs(&vips);
        assert_eq!(slots[bit(a) as usize].family, VIP_ADDR_SHARED);
        assert_eq!(slots[bit(other) as usize].addr, addr_v4(other.octets()));
        // A marker without its flag is no marker.
        vips.insert(marker(twin).0, VipMeta::default());
        assert_eq!(build_vip_addrs(&vips)[bit(a) as usize].addr, addr_v4(a.octets()));
    }
}
