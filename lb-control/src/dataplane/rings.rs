//! The pool of Maglev rings: `ring_count` rings of `ring_size` backend
//! indices, u16 each (the BPF array's u64 elements hold four, little-endian,
//! so mapped it reads as a flat u16 array).

use super::{mmap::MmapArray, DataplaneError, Limits};

pub(super) struct RingPool {
    slots: MmapArray<u16>,
    limits: Limits,
}

impl RingPool {
    pub(super) fn new(slots: MmapArray<u16>, limits: Limits) -> Self {
        Self { slots, limits }
    }

    pub(super) fn check_ring(&self, ring: u32) -> Result<(), DataplaneError> {
        if ring >= self.limits.ring_count() {
            return Err(DataplaneError::OutOfRange { what: "ring", index: ring, limit: self.limits.ring_count() });
        }
        Ok(())
    }

    fn range(&self, ring: u32, len: usize) -> Result<std::ops::Range<usize>, DataplaneError> {
        self.check_ring(ring)?;
        let size = self.limits.ring_size as usize;
        if len != size {
            return Err(DataplaneError::RingLength { got: len, want: self.limits.ring_size });
        }
        Ok(ring as usize * size..(ring as usize + 1) * size)
    }

    /// Writes a whole Maglev table into ring `ring`.
    pub(super) fn write(&mut self, ring: u32, table: &[u32]) -> Result<(), DataplaneError> {
        let range = self.range(ring, table.len())?;
        if let Some(&bad) = table.iter().find(|&&i| i >= self.limits.max_reals) {
            return Err(DataplaneError::OutOfRange { what: "backend", index: bad, limit: self.limits.max_reals });
        }
        for (slot, &index) in self.slots.slice_mut()[range].iter_mut().zip(table) {
            // max_reals <= 2^16 (validated), so the index fits.
            *slot = index as u16;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Ring `ring`'s backend indices.
    pub(super) fn read(&self, ring: u32) -> Result<Vec<u32>, DataplaneError> {
        let range = self.range(ring, self.limits.ring_size as usize)?;
        Ok(self.slots.slice()[range].iter().map(|&i| i as u32).collect())
    }

    /// One entry of ring `ring`.
    pub(super) fn entry(&self, ring: u32, slot: u32) -> Result<u32, DataplaneError> {
        let range = self.range(ring, self.limits.ring_size as usize)?;
        if slot >= self.limits.ring_size {
            return Err(DataplaneError::OutOfRange { what: "ring slot", index: slot, limit: self.limits.ring_size });
        }
        Ok(self.slots.slice()[range.start + slot as usize] as u32)
    }

    /// Whether ring `ring` holds exactly `table`.
    pub(super) fn equals(&self, ring: u32, table: &[u32]) -> Result<bool, DataplaneError> {
        let range = self.range(ring, table.len())?;
        Ok(self.slots.slice()[range].iter().zip(table).all(|(&a, &b)| a as u32 == b))
    }
}
