//! VIP lookup and backend choice: the connection table first, then the VIP's
//! Maglev ring.

use lb_common::{
    flow_hash, ring_slot, Addr, ConnEntry, FlowKey, LbConfig, Real, Stat, VipKey, VipMeta,
    CFG_F_HAS_PORT0_VIPS, FAMILY_NONE, IPPROTO_UDP, REAL_NONE, VIP_F_HASH_NO_SRC_PORT,
    VIP_F_NO_CONN_TABLE, VIP_F_UDP_NO_CONN_TABLE,
};

use crate::{
    maps::{ring_size, CONN_TABLE, REALS, RINGS, VIPS},
    stats::count,
};

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

/// The hash of a flow as this VIP wants it hashed.
#[inline(always)]
pub fn hash_flow(vip: &VipMeta, flow: &FlowKey) -> u32 {
    let src_port = if vip.flags & VIP_F_HASH_NO_SRC_PORT != 0 { 0 } else { flow.src_port };
    flow_hash(&flow.src, src_port, flow.dst_port, flow.proto)
}

/// Picks the backend for `flow`, or the drop reason when there is none.
#[inline(always)]
pub fn choose_real(vip: &VipMeta, flow: &FlowKey, hash: u32, conn: ConnUse) -> Result<Choice, Stat> {
    if matches!(conn, ConnUse::LookupInsert | ConnUse::LookupOnly) {
        // SAFETY: copied out at once.
        if let Some(entry) = unsafe { CONN_TABLE.get(flow) } {
            let index = entry.real;
            match real_at(index) {
                Some(real) => return Ok(Choice { index, real }),
                // The backend was removed: the flow re-hashes below.
                None => count(Stat::ConnStale, 0),
            }
        } else {
            count(Stat::ConnMiss, 0);
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
    if matches!(conn, ConnUse::LookupInsert | ConnUse::Refresh)
        && CONN_TABLE.insert(flow, ConnEntry { real: index }, 0).is_err()
    {
        count(Stat::ConnInsertFailed, 0);
    }
    Ok(Choice { index, real })
}
