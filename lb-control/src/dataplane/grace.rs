//! Waiting until no XDP program still reads what user space is about to
//! rewrite (the VIP-table copy that was live a moment ago).
//!
//! The kernel has no call that waits for an RCU grace period, but an update
//! of a map-of-maps returns only after one: `bpf_map_update_elem` on an
//! array- or hash-of-maps ends in `synchronize_rcu()`
//! (`maybe_wait_bpf_programs`, kernel/bpf/syscall.c), so every XDP program
//! that started before the update (each runs inside one RCU read section)
//! has finished when it returns. [`GracePeriod`] owns a private pair of
//! maps, an array-of-maps and the one-entry array it holds, and waits by
//! storing that array again. The balancer's maps are plain arrays, so the
//! verifier inlines their lookups.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use super::DataplaneError;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The head of `union bpf_attr` for `BPF_MAP_CREATE`; the kernel reads
/// the fields it does not get as zero.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised prefix of `union bpf_attr` for
    // `cmd`, and its size is passed with it (the kernel zero-extends it).
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as libc::c_uint) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn create_map(attr: &mut MapCreateAttr) -> Result<OwnedFd, DataplaneError> {
    let fd = bpf(BPF_MAP_CREATE, attr).map_err(DataplaneError::GracePeriod)?;
    // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A way to wait for an RCU grace period (see the module doc).
pub(super) struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl GracePeriod {
    pub(super) fn new() -> Result<Self, DataplaneError> {
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(b"lb_grace");
        let inner = create_map(&mut MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_name: name,
            ..Default::default()
        })?;
        let outer = create_map(&mut MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            map_name: name,
            ..Default::default()
        })?;
        Ok(Self { outer, inner })
    }

    /// Returns once every BPF program that was running when it was called
    /// has finished.
    pub(super) fn wait(&self) -> Result<(), DataplaneError> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        let mut attr = MapElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(DataplaneError::GracePeriod)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_its_maps_and_waits() {
        let grace = GracePeriod::new().expect("creating the grace-period maps (root, CAP_BPF)");
        let started = std::time::Instant::now();
        for _ in 0..3 {
            grace.wait().expect("the map-of-maps update");
        }
        eprintln!("three grace periods: {:?}", started.elapsed());
    }
}
