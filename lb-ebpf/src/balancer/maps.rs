//! The balancer's maps. Sizes here are defaults; the control plane resizes
//! them at load time (`EbpfLoader::set_max_entries`). Each static's name is
//! its map's name, the one in `lb_common::map_names` (`#[map]` takes no
//! constant; `lb-control/tests/map_names.rs` checks the two agree).
//!
//! Every map is a BTF map (`#[btf_map]`, the `.maps` section): the kernel
//! knows its key and value types, so `bpftool map dump` prints named fields.

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    Counter, LbConfig, Real, Stat, VipAddrSlot, VipBucket, VipFilter, VipKey, VipMeta, VipTableLive, CONN_WAYS,
    DEFAULT_CONN_TABLE_SIZE, DEFAULT_MAX_REALS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, DEFAULT_VIP_BUCKETS,
    PREVIOUS_RINGS, RING_SPARES, VIP_ADDR_SLOTS,
};

/// User space maps the array and writes whole tables with one memcpy.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// VIPs by (address, port, protocol); two entries per VIP address at most
/// (the VIP and the address's ICMP echo marker).
#[btf_map]
pub static VIPS: HashMap<VipKey, VipMeta, { DEFAULT_MAX_VIPS as usize * 2 }> = HashMap::new();

/// The VIP table the data plane reads: buckets of [`lb_common::VipSlot`]s
/// (one array lookup instead of a hash-map lookup per packet), two copies
/// back to back; `VIP_TABLE_LIVE` says where the live one starts. The
/// control plane rebuilds the other copy, points `VIP_TABLE_LIVE` at it and
/// waits for an RCU grace period before it writes the old one again, so a
/// copy is never rewritten while read. A VIP's ring or flags change in
/// place (one aligned 32-bit store each). A plain array, sized at load
/// time: the verifier inlines its lookups (an inner map of a map-of-maps
/// sized at load time costs a helper call per packet).
#[btf_map]
pub static VIP_TABLE: Array<VipBucket, { 2 * DEFAULT_VIP_BUCKETS as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

/// Entry 0: which copy of `VIP_TABLE` and of `VIP_ADDRS` is live
/// ([`lb_common::VipTableLive`]), written by user space through mmap.
#[btf_map]
pub static VIP_TABLE_LIVE: Array<VipTableLive, 1, { BPF_F_MMAPABLE as usize }> = Array::new();

/// The VIP address table, one [`lb_common::VipAddrSlot`] per VIP-filter
/// bit: which VIP address has that bit. Two copies, published with the VIP
/// table's (same VIPs, same swap, same grace period).
#[btf_map]
pub static VIP_ADDRS: Array<VipAddrSlot, { 2 * VIP_ADDR_SLOTS as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// Buckets of each VIP table copy (a power of two); set at load time.
#[no_mangle]
pub static VIP_BUCKETS: u32 = DEFAULT_VIP_BUCKETS;

#[inline(always)]
pub fn vip_buckets() -> u32 {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&VIP_BUCKETS) }
}

/// Entry 0: the bitmap of VIP addresses ([`lb_common::VipFilter`]).
#[btf_map]
pub static VIP_FILTER: Array<VipFilter, 1> = Array::new();

/// Backends by index; index 0 is never used ([`lb_common::REAL_NONE`]).
#[btf_map]
pub static REALS: Array<Real, { DEFAULT_MAX_REALS as usize }> = Array::new();

/// The VIP each real serves ([`lb_common::Real`]: one real per (VIP,
/// backend) pair), for the control plane alone: a restarted daemon reads
/// it back. The data plane never reads it.
#[btf_map]
pub static REAL_OWNERS: Array<VipKey, { DEFAULT_MAX_REALS as usize }> = Array::new();

/// The pool of Maglev rings, `RING_SIZE` backend indices each, as u16s
/// packed four per element: array elements are 8-byte aligned, and 16 bits
/// hold every backend index ([`lb_common::MAX_REALS_LIMIT`]), so a ring is a
/// quarter of what u32 elements would take (and more of it stays in the
/// cache). Seen from user space through mmap, the pool is a flat array of
/// u16. A VIP uses the ring its [`VipMeta::ring`] names.
#[btf_map]
pub static RINGS: Array<
    u64,
    { ((DEFAULT_MAX_VIPS + RING_SPARES + PREVIOUS_RINGS) * DEFAULT_RING_SIZE).div_ceil(4) as usize },
    { BPF_F_MMAPABLE as usize },
> = Array::new();

/// Second chance: each VIP's previous Maglev ring (the table before its
/// last change) plus one, by [`VipMeta::vip_num`];
/// [`lb_common::PREV_RING_NONE`] when there is none. Read only on the
/// connection-table miss of a TCP packet that is not a SYN.
#[btf_map]
pub static PREV_RINGS: Array<u32, { DEFAULT_MAX_VIPS as usize }> = Array::new();

/// Established flows and the backend they were sent to: 8-way
/// set-associative, 64-bit slots, CLOCK replacement (see
/// [`lb_common::CONN_WAYS`]). Mmapable so the control plane can read it
/// without a syscall per slot.
#[btf_map]
pub static CONN_TABLE: Array<u64, { DEFAULT_CONN_TABLE_SIZE as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// Sets in `CONN_TABLE` (a power of two); set at load time.
#[no_mangle]
pub static CONN_SETS: u32 = DEFAULT_CONN_TABLE_SIZE / CONN_WAYS;

#[inline(always)]
pub fn conn_sets() -> u32 {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&CONN_SETS) }
}

/// Entry 0: MACs, outer source prefixes, MTU, flags.
#[btf_map]
pub static CONFIG: Array<LbConfig, 1> = Array::new();

/// Global counters, indexed by [`Stat`].
#[btf_map]
pub static STATS: PerCpuArray<Counter, { Stat::COUNT as usize }> = PerCpuArray::new();

/// Per-VIP counters, indexed by [`VipMeta::vip_num`].
#[btf_map]
pub static VIP_STATS: PerCpuArray<Counter, { DEFAULT_MAX_VIPS as usize }> = PerCpuArray::new();

/// Per-backend counters, indexed like `REALS`.
#[btf_map]
pub static REAL_STATS: PerCpuArray<Counter, { DEFAULT_MAX_REALS as usize }> = PerCpuArray::new();

/// Entries per Maglev ring; set at load time, read-only afterwards, so the
/// verifier sees a constant.
#[no_mangle]
pub static RING_SIZE: u32 = DEFAULT_RING_SIZE;

#[inline(always)]
pub fn ring_size() -> u32 {
    // SAFETY: a plain read of a load-time constant; volatile so the compiler
    // does not fold in the default.
    unsafe { core::ptr::read_volatile(&RING_SIZE) }
}
