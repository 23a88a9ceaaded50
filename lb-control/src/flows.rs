//! Where a flow goes, and what the connection table holds: answered from the
//! live maps with the data plane's own functions (lb-common's `flow_hash64`
//! for the connection table, `flow_hash` and `ring_slot` for the Maglev
//! ring), so the answer is the backend the balancer picks for the next
//! packet of that flow, not a recomputation that could drift.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    flow_hash, ip_to_addr, ring_slot, FlowKey, IPPROTO_UDP, REAL_NONE, VIP_F_HASH_NO_SRC_PORT, VIP_F_NO_CONN_TABLE,
    VIP_F_UDP_NO_CONN_TABLE,
};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::DataplaneError,
    engine::{vip_key, Engine},
    model::VipId,
};

#[derive(thiserror::Error, Debug)]
pub enum FlowError {
    #[error("no VIP {0} in the data plane")]
    UnknownVip(VipId),
    #[error("client {client} is not of VIP {vip}'s address family")]
    FamilyMismatch { vip: VipId, client: IpAddr },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// Where the backend of an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowSource {
    /// The connection table holds an entry for the flow.
    ConnTable,
    /// No (usable) entry: the VIP's Maglev ring decides.
    Ring,
}

/// Where a flow's next packet goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowAnswer {
    /// The VIP that serves the flow (port 0: an every-port VIP).
    #[schema(value_type = String, example = "tcp:192.0.2.10:80")]
    pub vip: VipId,
    #[schema(value_type = String, example = "198.51.100.7:51234")]
    pub client: SocketAddr,
    /// The flow's destination port.
    pub port: u16,
    /// The backend a packet of this flow (not a TCP SYN) goes to; absent
    /// when the ring has no backend (the packet is dropped, `drop_no_backend`).
    #[schema(value_type = Option<String>)]
    pub backend: Option<IpAddr>,
    pub source: FlowSource,
    /// The backend slot (real) the data plane reads.
    pub real: u32,
    /// The flow's slot in the VIP's Maglev ring.
    pub ring_slot: u32,
    /// The ring's choice: where a new TCP connection (SYN) of this flow
    /// goes, and where the flow goes once its entry is gone.
    #[schema(value_type = Option<String>)]
    pub ring_backend: Option<IpAddr>,
    /// A connection-table entry names a backend slot that is no longer in
    /// use: the next packet re-hashes (counted as `conn_stale`).
    pub stale_entry: bool,
    /// The VIP does not use the connection table for this protocol.
    pub conn_table_bypassed: bool,
}

/// Looks `client → dest` up in the live maps, as the data plane does for a
/// packet that is not a TCP SYN. `dest` is the packet's destination: a VIP,
/// or an address and port served by an every-port VIP (port 0), which the
/// data plane falls back to when no VIP has that exact port.
pub fn lookup(engine: &Engine, dest: &VipId, client: SocketAddr) -> Result<FlowAnswer, FlowError> {
    let bal = engine.balancer();
    let key = vip_key(dest);
    let every_port = VipId { port: 0, ..*dest };
    let (vip, meta) = match bal.vip(&key) {
        Some(meta) => (dest, meta),
        None => (&every_port, bal.vip(&vip_key(&every_port)).ok_or(FlowError::UnknownVip(*dest))?),
    };
    let (src, family) = ip_to_addr(client.ip());
    if family != key.family {
        return Err(FlowError::FamilyMismatch { vip: *vip, client: client.ip() });
    }
    let src_port = client.port().to_be();
    let flow = FlowKey::new(family, key.proto, src, src_port, key.addr, key.port);

    // The ring's choice (lookup.rs: maglev_hash, then the ring pool).
    let hash_port = if meta.flags & VIP_F_HASH_NO_SRC_PORT != 0 { 0 } else { src_port };
    let ring_size = bal.limits().ring_size;
    let slot = ring_slot(flow_hash(&src, hash_port, key.port, key.proto), ring_size);
    let ring_real = bal.ring_entry(meta.ring, slot)?;
    let ring_backend = backend_of(engine, ring_real)?;

    let bypassed = meta.flags & VIP_F_NO_CONN_TABLE != 0
        || (key.proto == IPPROTO_UDP && meta.flags & VIP_F_UDP_NO_CONN_TABLE != 0);
    let mut stale_entry = false;
    if !bypassed {
        // The set and fingerprint: flow_hash64, inside ConnTable::get.
        if let Some(entry) = bal.conn(&flow) {
            match backend_of(engine, entry.real)? {
                Some(addr) => {
                    return Ok(FlowAnswer {
                        vip: *vip,
                        client,
                        port: dest.port,
                        backend: Some(addr),
                        source: FlowSource::ConnTable,
                        real: entry.real,
                        ring_slot: slot,
                        ring_backend,
                        stale_entry: false,
                        conn_table_bypassed: false,
                    });
                }
                None => stale_entry = true,
            }
        }
    }
    Ok(FlowAnswer {
        vip: *vip,
        client,
        port: dest.port,
        backend: ring_backend,
        source: FlowSource::Ring,
        real: ring_real,
        ring_slot: slot,
        ring_backend,
        stale_entry,
        conn_table_bypassed: bypassed,
    })
}

/// The backend address in real `index`, as the data plane reads it
/// (`None`: an unused slot).
fn backend_of(engine: &Engine, index: u32) -> Result<Option<IpAddr>, FlowError> {
    if index == REAL_NONE || index >= engine.balancer().limits().max_reals {
        return Ok(None);
    }
    Ok(engine.balancer().real(index)?.ip())
}

/// Connection-table entries of one (VIP, backend) pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnBackend {
    #[schema(value_type = String, example = "tcp:192.0.2.10:80")]
    pub vip: VipId,
    #[schema(value_type = String, example = "10.1.0.1")]
    pub backend: IpAddr,
    pub real: u32,
    pub entries: u64,
}

/// The connection table's fill: overall and per (VIP, backend).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnSummary {
    /// Slots in the table.
    pub slots: u64,
    /// Slots holding an entry (every VIP).
    pub entries: u64,
    /// `entries / slots`.
    pub fill: f64,
    /// Per (VIP, backend), of the VIP asked for or of every VIP.
    pub backends: Vec<ConnBackend>,
    /// Entries naming a backend slot no installed VIP uses (left by a
    /// removed backend until the slot is reused; such flows re-hash).
    pub unowned: u64,
}

/// One scan of the mapped connection table, counted per real and mapped
/// back to (VIP, backend) pairs; `vip` narrows the per-backend rows.
pub fn conn_summary(engine: &Engine, vip: Option<&VipId>) -> Result<ConnSummary, FlowError> {
    let bal = engine.balancer();
    if let Some(id) = vip {
        if bal.vip(&vip_key(id)).is_none() {
            return Err(FlowError::UnknownVip(*id));
        }
    }
    let counts = bal.conn_count_by_real();
    let entries: u64 = counts.iter().sum();
    let slots = bal.conn_slots() as u64;
    let mut owned = 0u64;
    let mut rows = BTreeMap::new();
    for (id, backend, real) in engine.reals() {
        let n = counts.get(real as usize).copied().unwrap_or(0);
        owned += n;
        if vip.is_none_or(|v| v == id) {
            rows.insert((*id, backend), ConnBackend { vip: *id, backend, real, entries: n });
        }
    }
    Ok(ConnSummary {
        slots,
        entries,
        fill: if slots == 0 { 0.0 } else { entries as f64 / slots as f64 },
        backends: rows.into_values().collect(),
        unowned: entries - owned,
    })
}
