//! The connection table: flow keys and the packed 64-bit slots.

use crate::addr::Addr;

/// Key of the connection table: the flow as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The flow `src:src_port → dst:dst_port` (ports in network order).
    #[inline(always)]
    pub const fn new(family: u8, proto: u8, src: Addr, src_port: u16, dst: Addr, dst_port: u16) -> Self {
        FlowKey { src, dst, src_port, dst_port, proto, family, _pad: [0; 2] }
    }
}

/// A connection's backend, as the control plane reads and writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    /// Index into `REALS`.
    pub real: u32,
}

/// The connection table is one array shared by all CPUs, 8-way
/// set-associative: a flow's set (low bits of [`flow_hash64`]) is one 64-byte cache line
/// of eight 64-bit slots. A slot packs the flow's 47-bit fingerprint
/// ([`flow_hash64`]), a reference bit and the 16-bit backend index, so
/// every write is one atomic 64-bit store: concurrent CPUs can lose an
/// update (a later miss re-inserts it) but never see a torn entry, and
/// lookups of established flows only read (no lock, no cache-line bouncing).
/// Replacement approximates LRU with the reference bit (CLOCK, as the
/// kernel's LRU maps do): a hit marks the slot; an insert takes an empty
/// slot, else one not referenced since it was written, so one-packet flows
/// (a SYN flood) go before established ones.
pub const CONN_WAYS: u32 = 8;
/// Low 16 bits of a slot: the backend index ([`REAL_NONE`]: empty).
pub const CONN_REAL_MASK: u64 = 0xffff;
/// Bit 16 of a slot: referenced since written or last swept.
pub const CONN_REFERENCED: u64 = 1 << 16;
/// Bits 17..64 of a slot: the flow's fingerprint, the top bits of
/// [`flow_hash64`]. Two flows of one set share them with probability about
/// 2^-47.
pub const CONN_FINGERPRINT_MASK: u64 = !0x1_ffff;
/// Backend indices must fit a slot.
pub const MAX_REALS_LIMIT: u32 = 1 << 16;

/// A slot holding `real` for the flow of this hash, unreferenced.
#[inline(always)]
pub const fn conn_slot(fingerprint: u64, real: u32) -> u64 {
    (fingerprint & CONN_FINGERPRINT_MASK) | (real as u64 & CONN_REAL_MASK)
}

/// Sets of a table of at most `slots` slots: a power of two, so the set
/// index is a mask.
pub const fn conn_sets(slots: u32) -> u32 {
    let sets = slots / CONN_WAYS;
    if sets <= 1 {
        1
    } else {
        1 << (31 - sets.leading_zeros())
    }
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 4);
const _: () = assert!(8 * CONN_WAYS as usize == 64);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnEntry {}
}
