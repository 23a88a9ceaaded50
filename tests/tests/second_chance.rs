//! Second chance end to end: two balancers behind the router's ECMP, real
//! TCP through the backends' decap programs. Long-lived connections all go
//! through balancer 0; the backend set changes on both balancers (a backend
//! added, or one drained), and at the same moment every flow moves to
//! balancer 1, which has never seen them. With second chance every
//! connection continues, every byte intact; without it (the config switch)
//! some break, and the test prints how many.

use anyhow::Result;
use lb_e2e::{backend4, client::EchoConn, vip_addr, Lab, ECHO_PORT, VIP4};
use serde_json::json;

const CONNECTIONS: usize = 48;

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn vip_path() -> String {
    format!("/v1/vips/tcp:{VIP4}:{ECHO_PORT}")
}

/// The echo VIP with backends `0..n`, and the `[second_chance]` switch.
fn vips(n: usize, second_chance: bool) -> String {
    let mut s = format!("\n[[vip]]\naddress = \"{VIP4}\"\nport = {ECHO_PORT}\nprotocol = \"tcp\"\n");
    for j in 0..n {
        s += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend4(j));
    }
    s + &format!("\n[second_chance]\nenabled = {second_chance}\nwindow = \"10m\"\n")
}

#[derive(Clone, Copy, Debug)]
enum Change {
    /// Backend 3 joins the VIP (it started with 0..3).
    AddBackend,
    /// Backend 0 is drained (weight 0: out of the table, its connections
    /// are meant to finish).
    DrainBackend,
}

/// Runs the scenario; returns (connections broken, packets the backends
/// sent on to a second backend).
fn scenario(change: Change, second_chance: bool) -> Result<(usize, u64)> {
    let mut lab = Lab::build(4, 2)?;
    let start = match change {
        Change::AddBackend => 3,
        Change::DrainBackend => 4,
    };
    for i in 0..2 {
        std::fs::write(&lab.balancers[i].config_path, lab.config(i, &vips(start, second_chance)))?;
    }
    lab.start_balancers()?;
    // Every flow through balancer 0 only: balancer 1 never sees them.
    lab.route_via(&[0])?;
    let vip = vip_addr(false, ECHO_PORT);
    let mut conns = lab.in_client(|| {
        (0..CONNECTIONS)
            .map(|i| {
                let mut c = EchoConn::open(vip)?;
                c.exchange(&payload(2000, i as u8))?;
                Ok(c)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut per_backend = [0usize; 4];
    conns.iter().for_each(|c| per_backend[c.backend] += 1);
    // The backend set changes on both balancers, then every flow moves.
    for b in &lab.balancers {
        match change {
            Change::AddBackend => b.api_send(
                "POST",
                &format!("{}/backends", vip_path()),
                Some(json!({"address": backend4(3).to_string()})),
            )?,
            Change::DrainBackend => {
                b.api_send("PATCH", &format!("{}/backends/{}", vip_path(), backend4(0)), Some(json!({"drain": true})))?
            }
        };
    }
    lab.route_via(&[1])?;
    let mut broken = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        // Two rounds: the second shows the flow keeps its backend.
        for round in 0..2u8 {
            if let Err(e) = c.exchange(&payload(3000, i as u8 ^ round)) {
                println!("connection {i} (backend {}): {e:#}", c.backend);
                broken += 1;
                break;
            }
        }
    }
    let hops = lab.balancers[1].counter("second_chance_hop")?;
    println!(
        "{change:?}, second chance {}: {CONNECTIONS} connections (per backend {per_backend:?}) moved to the other \
         balancer: {broken} broken; balancer 1 sent {hops} packets with a second hop",
        if second_chance { "on" } else { "off" },
    );
    for c in conns {
        let _ = c.close();
    }
    Ok((broken, hops))
}

#[test]
fn backend_added_while_flows_change_balancer_every_connection_continues() -> Result<()> {
    let (broken, hops) = scenario(Change::AddBackend, true)?;
    assert_eq!(broken, 0, "connections broken with second chance");
    assert!(hops > 0, "some flows needed their second chance");
    Ok(())
}

#[test]
fn backend_drained_while_flows_change_balancer_every_connection_continues() -> Result<()> {
    let (broken, hops) = scenario(Change::DrainBackend, true)?;
    assert_eq!(broken, 0, "connections broken with second chance");
    assert!(hops > 0, "some flows needed their second chance");
    Ok(())
}

#[test]
fn without_second_chance_the_same_changes_break_connections() -> Result<()> {
    let (added, hops) = scenario(Change::AddBackend, false)?;
    assert_eq!(hops, 0, "second chance is off");
    let (drained, _) = scenario(Change::DrainBackend, false)?;
    println!("FIGURE without second chance: {added} of {CONNECTIONS} broken (backend added), {drained} (drained)");
    assert!(added > 0 && drained > 0, "without second chance some connections break");
    Ok(())
}
