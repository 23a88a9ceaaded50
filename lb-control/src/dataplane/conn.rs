//! The connection table, mapped: 8-way sets of packed 64-bit slots (see
//! [`lb_common::CONN_WAYS`]). Every access is one aligned 64-bit load or
//! store, as on the data plane's side.

use lb_common::{
    conn_slot, flow_hash64, ConnEntry, FlowKey, CONN_FINGERPRINT_MASK, CONN_REAL_MASK, CONN_REFERENCED, CONN_WAYS,
};

use std::sync::atomic::{AtomicU64, Ordering};

use super::mmap::MmapArray;

pub(super) struct ConnTable {
    slots: MmapArray<u64>,
    sets: u32,
}

impl ConnTable {
    pub(super) fn new(slots: MmapArray<u64>, sets: u32) -> Self {
        Self { slots, sets }
    }

    /// The slots of the set `flow` lives in.
    fn set_of(&self, flow: &FlowKey) -> std::ops::Range<usize> {
        let set = (flow_hash64(flow) as u32 & (self.sets - 1)) * CONN_WAYS;
        set as usize..(set + CONN_WAYS) as usize
    }

    /// The backend the table remembers for `flow`.
    pub(super) fn get(&self, flow: &FlowKey) -> Option<ConnEntry> {
        let fp = flow_hash64(flow) & CONN_FINGERPRINT_MASK;
        self.slots.slice()[self.set_of(flow)]
            .iter()
            .find(|&&v| v & CONN_REAL_MASK != 0 && v & CONN_FINGERPRINT_MASK == fp)
            .map(|&v| ConnEntry { real: (v & CONN_REAL_MASK) as u32 })
    }

    /// Writes `flow → entry`, marked used (the caller checked the index).
    pub(super) fn set(&mut self, flow: &FlowKey, entry: &ConnEntry) {
        let fp = flow_hash64(flow);
        let range = self.set_of(flow);
        let set = &mut self.slots.slice_mut()[range];
        let want = fp & CONN_FINGERPRINT_MASK;
        let way = set.iter().position(|&v| v & CONN_REAL_MASK == 0 || v & CONN_FINGERPRINT_MASK == want).unwrap_or(0);
        // SAFETY: an aligned u64 of our mapping: one atomic store.
        unsafe { std::ptr::write_volatile(&mut set[way], conn_slot(fp, entry.real) | CONN_REFERENCED) };
    }

    /// Empties every slot that names one of these reals (`forget[real]`
    /// set), and returns how many. A slot the data plane rewrote meanwhile
    /// is left alone (compare-and-swap). Run before a freed real is given to
    /// another (VIP, backend) pair, so no entry left from its previous pair
    /// sends a flow to the new one.
    pub(super) fn forget(&mut self, forget: &[bool]) -> usize {
        let mut forgotten = 0;
        for slot in self.slots.slice_mut() {
            let ptr: *mut u64 = slot;
            // SAFETY: an aligned u64 of our mapping, valid for as long as
            // the borrow; the data plane accesses it only atomically too.
            let cell = unsafe { AtomicU64::from_ptr(ptr) };
            let v = cell.load(Ordering::Relaxed);
            let real = (v & CONN_REAL_MASK) as usize;
            if real != 0
                && forget.get(real).copied().unwrap_or(false)
                && cell.compare_exchange(v, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                forgotten += 1;
            }
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        forgotten
    }

    /// Entries per real (indexed by real; reals at or beyond `max_reals`
    /// are counted in the last element), one scan of the table.
    pub(super) fn count_by_real(&self, max_reals: usize) -> Vec<u64> {
        let mut counts = vec![0u64; max_reals + 1];
        for &v in self.slots.slice() {
            let real = (v & CONN_REAL_MASK) as usize;
            if real != 0 {
                counts[real.min(max_reals)] += 1;
            }
        }
        counts
    }

    /// Slots in the table.
    pub(super) fn slots(&self) -> usize {
        self.slots.slice().len()
    }

    /// Entries in the table (a full scan: not for hot paths).
    pub(super) fn count(&self) -> usize {
        self.slots.slice().iter().filter(|&&v| v & CONN_REAL_MASK != 0).count()
    }
}
