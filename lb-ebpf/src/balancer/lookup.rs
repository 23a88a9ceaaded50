//! VIP lookup and backend choice: the connection table first, then the VIP's
//! Maglev ring.

use lb_common::{
    conn_slot, echo_marker_key, flow_hash, ring_slot, same_vip_key, vip_filter_bit, vip_key_hash, Addr, FlowKey,
    LbConfig, Real, Stat, VipBucket, VipKey, VipMeta, CFG_F_HAS_PORT0_VIPS, CONN_FINGERPRINT_MASK, CONN_REAL_MASK,
    CONN_REFERENCED, CONN_WAYS, FAMILY_NONE, IPPROTO_TCP, IPPROTO_UDP, REAL_NONE, VIP_ADDR_SHARED,
    VIP_F_HASH_NO_SRC_PORT, VIP_F_ICMP_ECHO, VIP_F_NO_CONN_TABLE, VIP_F_UDP_NO_CONN_TABLE,
};

use crate::{
    flood,
    maps::{
        conn_sets, ring_size, vip_buckets, CONN_TABLE, REALS, RINGS, VIPS, VIP_ADDRS, VIP_FILTER, VIP_TABLE,
        VIP_TABLE_LIVE,
    },
    second_chance,
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

/// `key`'s bucket in the live copy of the VIP table.
#[inline(always)]
fn vip_bucket(key: &VipKey) -> Option<&'static VipBucket> {
    let base = VIP_TABLE_LIVE.get(0)?.base;
    VIP_TABLE.get(base.wrapping_add(vip_key_hash(key) & vip_buckets().wrapping_sub(1)))
}

/// One VIP key: its bucket in the live VIP table, then, if that bucket
/// overflowed, the `VIPS` hash map.
#[inline(always)]
fn lookup_vip(key: &VipKey) -> Option<VipMeta> {
    if let Some(bucket) = vip_bucket(key) {
        for slot in &bucket.slots {
            if same_vip_key(&slot.key, key) {
                return Some(slot.meta);
            }
        }
        if bucket.overflow == 0 {
            return None;
        }
    }
    // SAFETY: copied out at once; a concurrent update replaces the element
    // as a whole.
    unsafe { VIPS.get(key) }.copied()
}

/// Finds the VIP for `(addr, port, proto)`, falling back to the address's
/// every-port VIP when the config says one exists.
#[inline(always)]
pub fn find_vip(cfg: &LbConfig, family: u8, addr: Addr, port: u16, proto: u8) -> Option<VipMeta> {
    let mut key = VipKey { addr, port, proto, family };
    if let Some(meta) = lookup_vip(&key) {
        return Some(meta);
    }
    if cfg.flags & CFG_F_HAS_PORT0_VIPS == 0 {
        return None;
    }
    key.port = 0;
    lookup_vip(&key)
}

/// Whether `addr` is exactly a VIP address: the control plane marks each
/// one with its `(address, 0, ICMP)` echo marker. The filter only says
/// "certainly not"; packets that are not plain TCP/UDP to a VIP port (ICMP,
/// fragments, other protocols, malformed headers) ask this before they are
/// treated as VIP traffic.
///
/// Not inlined: only rare paths ask, and one out-of-line copy keeps the
/// hot path's code small (inlined at every caller, it slowed forwarding).
#[inline(never)]
pub fn is_vip_address(family: u8, addr: &Addr) -> bool {
    maybe_vip(addr) && has_echo_marker(family, addr)
}

/// Whether `addr` has its echo marker (is exactly a VIP address), for a
/// caller that already passed the filter: the VIP address table's slot for
/// the address's filter bit names the one VIP address with that bit, and
/// only a slot that more share sends the question on to the VIP table.
#[inline(always)]
pub fn has_echo_marker(family: u8, addr: &Addr) -> bool {
    let Some(live) = VIP_TABLE_LIVE.get(0) else { return false };
    let Some(slot) = VIP_ADDRS.get(live.addrs_base.wrapping_add(vip_filter_bit(addr))) else { return false };
    if slot.family == family as u32 {
        return slot.addr[0] == addr[0]
            && slot.addr[1] == addr[1]
            && slot.addr[2] == addr[2]
            && slot.addr[3] == addr[3];
    }
    if slot.family != VIP_ADDR_SHARED {
        return false;
    }
    vip_flags(&echo_marker_key(family, *addr)) & VIP_F_ICMP_ECHO != 0
}

/// [`lookup_vip`]'s flags only, 0 when there is no such entry. (Not an
/// `Option<VipMeta>`: LLVM reads an absent value's undefined flags before
/// it looks at the discriminant, which the verifier refuses.)
#[inline(always)]
fn vip_flags(key: &VipKey) -> u32 {
    if let Some(bucket) = vip_bucket(key) {
        for slot in &bucket.slots {
            if same_vip_key(&slot.key, key) {
                return slot.meta.flags;
            }
        }
        if bucket.overflow == 0 {
            return 0;
        }
    }
    // SAFETY: read at once; a concurrent update replaces the element whole.
    match unsafe { VIPS.get(key) } {
        Some(meta) => meta.flags,
        None => 0,
    }
}

/// A chosen backend.
#[derive(Clone, Copy)]
pub struct Choice {
    pub index: u32,
    pub real: Real,
    /// Second chance: the backend the VIP's previous table names for this
    /// flow, when it differs ([`REAL_NONE`] otherwise, always on a hit).
    pub previous: u32,
}

/// The real at `index`, if it is set.
#[inline(always)]
pub fn real_at(index: u32) -> Option<Real> {
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
    /// A TCP packet that is not a SYN: as `LookupInsert`, but on a miss
    /// whose previous table (second chance) names another backend, the
    /// packet carries that one too and nothing is remembered, so every
    /// packet of the flow keeps its second chance while the table is kept.
    LookupSecondChance,
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
    if vip.flags & VIP_F_NO_CONN_TABLE != 0 || (proto == IPPROTO_UDP && vip.flags & VIP_F_UDP_NO_CONN_TABLE != 0) {
        ConnUse::Bypass
    } else if syn {
        ConnUse::Refresh
    } else if proto == IPPROTO_TCP {
        ConnUse::LookupSecondChance
    } else {
        ConnUse::LookupInsert
    }
}

/// The flow's Maglev hash as this VIP wants it (without the source port
/// for client stickiness).
#[inline(always)]
fn maglev_hash(vip: &VipMeta, flow: &FlowKey) -> u32 {
    let src_port = if vip.flags & VIP_F_HASH_NO_SRC_PORT != 0 { 0 } else { flow.src_port };
    flow_hash(&flow.src, src_port, flow.dst_port, flow.proto)
}

/// First slot of the set of a flow hashing to `hash`.
#[inline(always)]
fn conn_set(hash: u32) -> u32 {
    (hash & conn_sets().wrapping_sub(1)).wrapping_mul(CONN_WAYS)
}

/// Starts loading a flow's connection-table set: the set is usually not in
/// the cache for a new flow, and reading it this early lets the miss
/// overlap the VIP lookup instead of following it.
#[inline(always)]
pub fn touch_conn_set(hash64: u64) {
    if let Some(slot) = CONN_TABLE.get_ptr(conn_set(hash64 as u32)) {
        // SAFETY: an aligned u64 of the map; the value is not used.
        let _ = unsafe { core::ptr::read_volatile(slot) };
    }
}

/// The backend the table remembers for this fingerprint, marking the slot.
#[inline(always)]
fn conn_lookup(fingerprint: u64, set: u32) -> Option<u32> {
    let want = fingerprint & CONN_FINGERPRINT_MASK;
    for way in 0..CONN_WAYS {
        let slot = CONN_TABLE.get_ptr_mut(set + way)?;
        // SAFETY: an aligned u64 in the map; every access is one atomic
        // 64-bit load or store (see lb_common::CONN_WAYS).
        let v = unsafe { core::ptr::read_volatile(slot) };
        if v & CONN_FINGERPRINT_MASK == want && v & CONN_REAL_MASK != 0 {
            if v & CONN_REFERENCED == 0 {
                unsafe { core::ptr::write_volatile(slot, v | CONN_REFERENCED) };
            }
            return Some((v & CONN_REAL_MASK) as u32);
        }
    }
    None
}

/// Remembers `fingerprint → real`: the flow's own slot if it has one, else
/// an empty slot, else one not referenced since it was written; if every
/// slot was referenced, all are unmarked and one is taken by the hash.
#[inline(always)]
fn conn_insert(fingerprint: u64, set: u32, hash: u32, real: u32) {
    let want = fingerprint & CONN_FINGERPRINT_MASK;
    let mut pick = CONN_WAYS;
    let mut unreferenced = CONN_WAYS;
    for way in 0..CONN_WAYS {
        let Some(slot) = CONN_TABLE.get_ptr_mut(set + way) else { return };
        // SAFETY: as in conn_lookup.
        let v = unsafe { core::ptr::read_volatile(slot) };
        if v & CONN_REAL_MASK == 0 || v & CONN_FINGERPRINT_MASK == want {
            pick = way;
            break;
        }
        if unreferenced == CONN_WAYS && v & CONN_REFERENCED == 0 {
            unreferenced = way;
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
                // SAFETY: as in conn_lookup.
                unsafe {
                    let v = core::ptr::read_volatile(slot);
                    core::ptr::write_volatile(slot, v & !CONN_REFERENCED);
                }
            }
        }
        pick = (hash >> 29) & (CONN_WAYS - 1);
    }
    if let Some(slot) = CONN_TABLE.get_ptr_mut(set + pick) {
        // SAFETY: as in conn_lookup. A new entry starts unreferenced: a flow
        // that never sends a second packet is the first to go.
        unsafe { core::ptr::write_volatile(slot, conn_slot(fingerprint, real)) };
    }
}

/// Picks the backend for `flow`, or the drop reason when there is none.
/// `hash64` is [`flow_hash64`] of the flow: the connection table's set and
/// fingerprint. `flood_threshold` is `LbConfig::syn_flood_threshold`: every
/// insert counts as a new flow, and a SYN over it is not inserted.
#[inline(always)]
pub fn choose_real(
    vip: &VipMeta,
    flow: &FlowKey,
    hash64: u64,
    conn: ConnUse,
    flood_threshold: u32,
) -> Result<Choice, Stat> {
    let set = conn_set(hash64 as u32);
    if matches!(conn, ConnUse::LookupInsert | ConnUse::LookupSecondChance | ConnUse::LookupOnly) {
        match conn_lookup(hash64, set) {
            Some(index) => match real_at(index) {
                Some(real) => return Ok(Choice { index, real, previous: REAL_NONE }),
                // The backend was removed: the flow re-hashes below.
                None => count(Stat::ConnStale, 0),
            },
            None => count(Stat::ConnMiss, 0),
        }
    }
    let size = ring_size();
    let offset = ring_slot(maglev_hash(vip, flow), size);
    let index = ring_entry(vip.ring, offset, size);
    if index == REAL_NONE {
        return Err(Stat::DropNoBackend);
    }
    let real = real_at(index).ok_or(Stat::DropUnknownReal)?;
    if conn == ConnUse::LookupSecondChance {
        let previous = second_chance::previous_choice(vip.vip_num, offset, size, index, &real);
        if previous != REAL_NONE {
            return Ok(Choice { index, real, previous });
        }
    }
    if matches!(conn, ConnUse::LookupInsert | ConnUse::LookupSecondChance | ConnUse::Refresh) {
        if flood::new_flow(flood_threshold) && conn == ConnUse::Refresh {
            // SYN-flood mode: the ring alone decides (the same backend
            // while the ring is unchanged); the table is not touched.
            count(Stat::SynFloodUntabled, 0);
        } else {
            conn_insert(hash64, set, hash64 as u32, index);
        }
    }
    Ok(Choice { index, real, previous: REAL_NONE })
}

/// The backend index at `offset` of ring `ring` ([`REAL_NONE`] beyond the
/// pool).
#[inline(always)]
pub fn ring_entry(ring: u32, offset: u32, size: u32) -> u32 {
    let slot = ring.wrapping_mul(size).wrapping_add(offset);
    match RINGS.get(slot / 4) {
        // Little-endian: slot 4k is the lowest 16 bits.
        Some(&quad) => ((quad >> ((slot & 3) * 16)) & 0xffff) as u32,
        None => REAL_NONE,
    }
}
