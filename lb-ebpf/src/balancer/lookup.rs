//! VIP lookup and backend choice: the connection table first, then the VIP's
//! Maglev ring.

use lb_common::{
    conn_fingerprint, conn_hash, flow_hash, ring_slot, vip_filter_bit, Addr, FlowKey, LbConfig, Real, Stat, VipKey, VipMeta,
    CFG_F_HAS_PORT0_VIPS, CONN_WAYS, FAMILY_NONE, IPPROTO_UDP, REAL_NONE, VIP_F_HASH_NO_SRC_PORT,
    VIP_F_NO_CONN_TABLE, VIP_F_UDP_NO_CONN_TABLE,
};

use crate::{
    maps::{conn_sets, ring_size, CONN_TABLE, REALS, RINGS, VIPS, VIP_FILTER},
    stats::count,
};

/// Whether `addr` may be a VIP address (false: certainly not).
#[inline(always)]
pub fn maybe_vip(addr: &Addr) -> bool {
    let Some(filter) = VIP_FILTER.get(0) else { return true };
    let bit = vip_filter_bit(addr);
    let word = filter.words.get((bit >> 6) as usize).copied().unwrap_or(u64::MAX);
    word & (1 << (bit & 63)) != 0
}

/// Finds the VIP for `(addr, port, proto)`, falling back to the address's
/// every-port VIP when the config says one exists.
#[inline(always)]
pub fn find_vip(cfg: &LbConfig, family: u8, addr: Addr, port: u16, proto: u8) -> Option<VipMeta> {
    let mut key = VipKey { addr, port, proto, family };
    // SAFETY: values are plain data copied out at once; a concurrent update
    // replaces the element as a whole.
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(*meta);
    }
    if cfg.flags & CFG_F_HAS_PORT0_VIPS == 0 {
        return None;
    }
    key.port = 0;
    unsafe { VIPS.get(&key) }.copied()
}

/// A chosen backend.
#[derive(Clone, Copy)]
pub struct Choice {
    pub index: u32,
    pub real: Real,
}

#[inline(always)]
fn real_at(index: u32) -> Option<Real> {
    let real = REALS.get(index)?;
    if real.family == FAMILY_NONE {
        return None;
    }
    Some(*real)
}

/// How a packet may use the connection table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ConnUse {
    /// Look up; on a miss take the ring's choice and remember it.
    LookupInsert,
    /// A new TCP connection: take the ring's choice and (re)write the entry,
    /// so new connections follow ring changes.
    Refresh,
    /// Look up, never write (ICMP errors about a flow).
    LookupOnly,
    /// The ring alone decides.
    Bypass,
}

#[inline(always)]
pub fn conn_use(vip: &VipMeta, proto: u8, syn: bool) -> ConnUse {
    if vip.flags & VIP_F_NO_CONN_TABLE != 0
        || (proto == IPPROTO_UDP && vip.flags & VIP_F_UDP_NO_CONN_TABLE != 0)
    {
        ConnUse::Bypass
    } else if syn {
        ConnUse::Refresh
    } else {
        ConnUse::LookupInsert
    }
}

/// The hashes of a flow: the VIP's (Maglev slot, outer source) and the
/// connection table's (full 5-tuple). The same unless the VIP hashes
/// without the source port.
#[inline(always)]
pub fn hash_flow(vip: &VipMeta, flow: &FlowKey) -> (u32, u32) {
    let full = conn_hash(flow);
    if vip.flags & VIP_F_HASH_NO_SRC_PORT != 0 {
        (flow_hash(&flow.src, 0, flow.dst_port, flow.proto), full)
    } else {
        (full, full)
    }
}

/// First slot of this CPU's set for a flow hashing to `hash`.
#[inline(always)]
fn conn_set(hash: u32) -> u32 {
    let sets = conn_sets();
    // SAFETY: a helper without side effects (inlined by the verifier).
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    (cpu.wrapping_mul(sets).wrapping_add(hash & sets.wrapping_sub(1))).wrapping_mul(CONN_WAYS)
}

/// The backend the table remembers for `flow`, marking the slot used.
#[inline(always)]
fn conn_lookup(fingerprint: u64, set: u32) -> Option<u32> {
    for way in 0..CONN_WAYS {
        let slot = CONN_TABLE.get_ptr_mut(set + way)?;
        // SAFETY: this CPU's own slot; XDP runs with migration disabled,
        // so nothing else writes it meanwhile.
        unsafe {
            if (*slot).fingerprint == fingerprint && (*slot).real != REAL_NONE {
                if (*slot).referenced == 0 {
                    (*slot).referenced = 1;
                }
                return Some((*slot).real);
            }
        }
    }
    None
}

/// Remembers `flow → real`: the flow's own slot if it has one, else an empty
/// slot, else one not referenced since the last sweep; if every slot was
/// referenced, all are unmarked and one is taken by the hash.
#[inline(always)]
fn conn_insert(fingerprint: u64, set: u32, hash: u32, real: u32) {
    let mut pick = CONN_WAYS;
    let mut unreferenced = CONN_WAYS;
    for way in 0..CONN_WAYS {
        let Some(slot) = CONN_TABLE.get_ptr_mut(set + way) else { return };
        // SAFETY: this CPU's own slot (see conn_lookup).
        unsafe {
            if (*slot).real == REAL_NONE || (*slot).fingerprint == fingerprint {
                pick = way;
                break;
            }
            if unreferenced == CONN_WAYS && (*slot).referenced == 0 {
                unreferenced = way;
            }
        }
    }
    if pick == CONN_WAYS {
        // The set is full: another flow's entry goes.
        count(Stat::ConnEvicted, 0);
        pick = unreferenced;
    }
    if pick == CONN_WAYS {
        for way in 0..CONN_WAYS {
            if let Some(slot) = CONN_TABLE.get_ptr_mut(set + way) {
                // SAFETY: as above.
                unsafe { (*slot).referenced = 0 };
            }
        }
        pick = (hash >> 30) & (CONN_WAYS - 1);
    }
    if let Some(slot) = CONN_TABLE.get_ptr_mut(set + pick) {
        // SAFETY: as above. A new entry starts unreferenced: a flow that
        // never sends a second packet is the first to go.
        unsafe {
            (*slot).fingerprint = fingerprint;
            (*slot).real = real;
            (*slot).referenced = 0;
        }
    }
}

/// Picks the backend for `flow`, or the drop reason when there is none.
/// `hash` is the VIP's flow hash (the Maglev slot); `conn_hash` the full
/// 5-tuple hash that picks the connection-table set.
#[inline(always)]
pub fn choose_real(
    vip: &VipMeta,
    flow: &FlowKey,
    hash: u32,
    conn_hash: u32,
    conn: ConnUse,
) -> Result<Choice, Stat> {
    let set = conn_set(conn_hash);
    let fingerprint = conn_fingerprint(flow, conn_hash);
    if matches!(conn, ConnUse::LookupInsert | ConnUse::LookupOnly) {
        match conn_lookup(fingerprint, set) {
            Some(index) => match real_at(index) {
                Some(real) => return Ok(Choice { index, real }),
                // The backend was removed: the flow re-hashes below.
                None => count(Stat::ConnStale, 0),
            },
            None => count(Stat::ConnMiss, 0),
        }
    }
    let size = ring_size();
    let slot = vip.ring.wrapping_mul(size).wrapping_add(ring_slot(hash, size));
    let index = match RINGS.get(slot / 2) {
        // Little-endian: the even slot is the low half.
        Some(&pair) => (pair >> ((slot & 1) * 32)) as u32,
        None => REAL_NONE,
    };
    if index == REAL_NONE {
        return Err(Stat::DropNoBackend);
    }
    let real = real_at(index).ok_or(Stat::DropUnknownReal)?;
    if matches!(conn, ConnUse::LookupInsert | ConnUse::Refresh) {
        conn_insert(fingerprint, set, conn_hash, index);
    }
    Ok(Choice { index, real })
}
