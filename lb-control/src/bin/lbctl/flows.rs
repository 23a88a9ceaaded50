//! `lbctl flow` and `lbctl conns`: where a flow goes, and what the
//! connection table holds (`GET /v1/flows`, `GET /v1/conns`).

use std::net::SocketAddr;

use anyhow::Result;
use lb_control::{
    flows::{ConnSummary, FlowAnswer, FlowSource},
    model::VipId,
};

use crate::{print_json, Client};

/// Prints where `client`'s flow to `vip` goes.
pub fn flow(client: &Client, vip: &VipId, from: &SocketAddr, json: bool) -> Result<()> {
    let a: FlowAnswer = client.get(&format!("/v1/flows?vip={vip}&client={from}"))?;
    if json {
        return print_json(&a);
    }
    let show =
        |b: Option<std::net::IpAddr>| b.map_or_else(|| "none (dropped: no backend)".to_string(), |b| b.to_string());
    println!("{:<14} {}", "VIP", a.vip);
    if a.vip.port != a.port {
        println!("{:<14} {}", "PORT", a.port);
    }
    println!("{:<14} {}", "CLIENT", a.client);
    println!("{:<14} {}", "BACKEND", show(a.backend));
    let source = match a.source {
        FlowSource::ConnTable => "connection table".to_string(),
        FlowSource::Ring if a.conn_table_bypassed => format!("ring slot {} (the VIP bypasses the table)", a.ring_slot),
        FlowSource::Ring if a.stale_entry => {
            format!("ring slot {} (the table's entry names a removed backend)", a.ring_slot)
        }
        FlowSource::Ring => format!("ring slot {} (no table entry)", a.ring_slot),
    };
    println!("{:<14} {source}", "FROM");
    println!("{:<14} {}", "REAL", a.real);
    if a.source == FlowSource::ConnTable {
        println!("{:<14} {} (slot {}: where a new connection goes)", "RING", show(a.ring_backend), a.ring_slot);
    }
    Ok(())
}

/// Prints the connection table's fill and its entries per backend.
pub fn conns(client: &Client, vip: Option<&VipId>, json: bool) -> Result<()> {
    let path = match vip {
        Some(v) => format!("/v1/conns?vip={v}"),
        None => "/v1/conns".to_string(),
    };
    let s: ConnSummary = client.get(&path)?;
    if json {
        return print_json(&s);
    }
    println!("connection table: {} of {} slots used ({:.2}%)", s.entries, s.slots, s.fill * 100.0);
    if s.unowned > 0 {
        println!("{} entries name removed backends (their flows re-hash)", s.unowned);
    }
    println!();
    println!("{:<28} {:<40} {:>6} {:>12}", "VIP", "BACKEND", "REAL", "ENTRIES");
    for r in &s.backends {
        println!("{:<28} {:<40} {:>6} {:>12}", r.vip.to_string(), r.backend.to_string(), r.real, r.entries);
    }
    Ok(())
}
