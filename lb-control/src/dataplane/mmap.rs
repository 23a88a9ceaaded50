//! A `BPF_F_MMAPABLE` array mapped into our memory (memmap2): the ring pool
//! (a 65537-entry table is one copy instead of 65537 syscalls), the VIP
//! table and its live-copy entry, and the connection table.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;
use memmap2::{MmapMut, MmapOptions};

use super::DataplaneError;

/// The array's values as a slice of `T`. The map handle is kept so the
/// kernel object lives as long as the mapping.
pub(super) struct MmapArray<T> {
    mmap: MmapMut,
    entries: usize,
    /// Held, never read: the kernel object lives as long as the mapping.
    _map: MapData,
    _values: std::marker::PhantomData<T>,
}

impl<T: aya::Pod> MmapArray<T> {
    /// Maps `entries` values of `map` (its whole page-rounded size, at
    /// offset 0, shared, as the kernel requires).
    pub(super) fn new(map: MapData, entries: usize) -> Result<Self, DataplaneError> {
        // The kernel places array values round_up(value_size, 8) bytes
        // apart: a slice of T matches only if no value has hidden padding
        // and whole Ts fill each value (the ring pool's u64s are read as u16s).
        let value_size = map.info().map_err(|e| DataplaneError::Mmap(std::io::Error::other(e)))?.value_size() as usize;
        if !value_size.is_multiple_of(8) || !value_size.is_multiple_of(std::mem::size_of::<T>()) {
            return Err(DataplaneError::Mmap(std::io::Error::other(format!(
                "an mmapable array of {value_size}-byte values cannot be read as {}-byte values",
                std::mem::size_of::<T>()
            ))));
        }
        let page = 4096usize;
        let bytes = (entries * std::mem::size_of::<T>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: the fd is a BPF array we hold open for as long as the
        // mapping (`map` lives in self). The data plane writes it too; we
        // only read or write whole, aligned values (see the callers).
        let mmap = unsafe { MmapOptions::new().len(bytes).map_mut(fd) }.map_err(DataplaneError::Mmap)?;
        Ok(Self { mmap, entries, _map: map, _values: std::marker::PhantomData })
    }

    pub(super) fn slice(&self) -> &[T] {
        // SAFETY: the mapping is page-aligned (so aligned for T) and holds at
        // least `entries` values; T is plain data (aya::Pod), so every bit
        // pattern is a valid value.
        unsafe { std::slice::from_raw_parts(self.mmap.as_ptr().cast::<T>(), self.entries) }
    }

    pub(super) fn slice_mut(&mut self) -> &mut [T] {
        // SAFETY: as in slice(); &mut self makes us the only user-space writer.
        unsafe { std::slice::from_raw_parts_mut(self.mmap.as_mut_ptr().cast::<T>(), self.entries) }
    }
}
