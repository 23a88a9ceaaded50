//! The capture's maps (see [`lb_common::CaptureFilter`]): the filter the
//! control plane arms and disarms, and the ring the records arrive in,
//! lent to one capture session at a time.

use aya::maps::{Array, MapData, RingBuf};
use lb_common::{map_names, CaptureFilter};

use super::{map_err, DataplaneError};

pub(super) struct CaptureMaps {
    filter: Array<MapData, CaptureFilter>,
    /// `None` while a session holds it.
    ring: Option<RingBuf<MapData>>,
}

impl CaptureMaps {
    pub(super) fn new(filter: Array<MapData, CaptureFilter>, ring: RingBuf<MapData>) -> Self {
        Self { filter, ring: Some(ring) }
    }

    pub(super) fn set(&mut self, filter: &CaptureFilter) -> Result<(), DataplaneError> {
        self.filter.set(0, filter, 0).map_err(map_err(map_names::CAPTURE_FILTER))
    }

    pub(super) fn get(&self) -> Result<CaptureFilter, DataplaneError> {
        self.filter.get(&0, 0).map_err(map_err(map_names::CAPTURE_FILTER))
    }

    pub(super) fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    pub(super) fn return_ring(&mut self, ring: RingBuf<MapData>) {
        self.ring = Some(ring);
    }
}

/// Now on the clock `bpf_ktime_get_ns()` reads (CLOCK_MONOTONIC), in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
