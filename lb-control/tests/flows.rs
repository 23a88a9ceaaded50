//! Flow lookup against the data plane itself: packets go through the
//! balancer (BPF_PROG_TEST_RUN) and the lookup must name the backend each
//! one went to, for ring decisions and for connection-table hits, and the
//! connection-table summary must count the entries the packets made.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use common::*;
use lb_control::{
    dataplane::Balancer,
    engine::Engine,
    flows::{self, FlowError, FlowSource},
    model::{Backend, VipFlag, VipId, VipSet, VipSpec},
};
use lb_testkit::packet_builder as pb;

fn vip_http() -> VipId {
    "tcp:10.0.0.10:80".parse().unwrap()
}

fn vip6() -> VipId {
    "udp:[fc00::10]:53".parse().unwrap()
}

fn spec(backends: &[(IpAddr, u32)], flags: Vec<VipFlag>) -> VipSpec {
    VipSpec { flags, backends: backends.iter().map(|(a, w)| (*a, Backend { weight: *w })).collect() }
}

fn three(weight3: u32) -> VipSet {
    let v4 = [(IpAddr::V4(REAL1), 1), (IpAddr::V4(REAL2), 1), (IpAddr::V4(REAL3), weight3)];
    let v6 = [(IpAddr::V6(REAL6_4), 1), (IpAddr::V6(REAL6_5), 1)];
    [(vip_http(), spec(&v4, vec![])), (vip6(), spec(&v6, vec![]))].into()
}

fn engine() -> Engine {
    let mut e = Engine::adopt(Balancer::load(limits()).unwrap()).unwrap();
    e.apply(&three(1), &config()).unwrap();
    e
}

/// Sends one TCP packet of `client:port → VIP4:80`; the backend it was
/// encapsulated to.
fn send4(e: &mut Engine, port: u16, flags: u8) -> IpAddr {
    let ip = tcp4(CLIENT4, VIP4, port, PORT_HTTP, flags, b"x");
    let (action, out) = run(e.balancer_mut(), &frame4(&ip));
    assert_eq!(action, XDP_TX, "port {port}: not forwarded");
    IpAddr::V4(Ipv4Addr::new(out[30], out[31], out[32], out[33]))
}

/// Sends one UDP packet of `CLIENT6:port → VIP6:53`; its backend.
fn send6(e: &mut Engine, port: u16) -> IpAddr {
    let ip = udp6(CLIENT6, VIP6, port, PORT_DNS, b"q");
    let (action, out) = run(e.balancer_mut(), &frame6(&ip));
    assert_eq!(action, XDP_TX, "port {port}: not forwarded");
    let dst: [u8; 16] = out[14 + 24..14 + 40].try_into().unwrap();
    IpAddr::V6(Ipv6Addr::from(dst))
}

fn client4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(CLIENT4), port)
}

#[test]
fn a_new_flow_is_predicted_from_the_ring_then_found_in_the_table() {
    let mut e = engine();
    let mut seen = std::collections::BTreeSet::new();
    for port in 20000..20200 {
        let before = flows::lookup(&e, &vip_http(), client4(port)).unwrap();
        assert_eq!(before.source, FlowSource::Ring, "port {port}: no entry yet");
        assert!(!before.stale_entry && !before.conn_table_bypassed);
        assert_eq!(before.backend, before.ring_backend);
        let went = send4(&mut e, port, pb::TCP_ACK);
        assert_eq!(before.backend, Some(went), "port {port}: the ring's prediction");
        seen.insert(went);

        let after = flows::lookup(&e, &vip_http(), client4(port)).unwrap();
        assert_eq!(after.source, FlowSource::ConnTable, "port {port}: the packet made an entry");
        assert_eq!(after.backend, Some(went));
        assert_eq!(after.real, e.real_index(&vip_http(), &went).unwrap());
        assert_eq!(after.ring_slot, before.ring_slot);
    }
    assert_eq!(seen.len(), 3, "the flows reach every backend: {seen:?}");

    // IPv6, UDP: the same, through the v6 hash inputs.
    for port in 30000..30050 {
        let client = SocketAddr::new(IpAddr::V6(CLIENT6), port);
        let before = flows::lookup(&e, &vip6(), client).unwrap();
        assert_eq!(before.source, FlowSource::Ring);
        assert_eq!(before.backend, Some(send6(&mut e, port)), "port {port}");
        assert_eq!(flows::lookup(&e, &vip6(), client).unwrap().source, FlowSource::ConnTable);
    }
}

#[test]
fn a_table_hit_that_differs_from_the_ring_is_where_the_packet_goes() {
    let mut e = engine();
    let ports: Vec<u16> = (40000..40300).collect();
    let first: Vec<IpAddr> = ports.iter().map(|&p| send4(&mut e, p, pb::TCP_ACK)).collect();
    // Drain REAL3: the ring no longer names it, but its entries stay.
    e.apply(&three(0), &config()).unwrap();
    let mut hits_off_ring = 0;
    for (&port, &went_before) in ports.iter().zip(&first) {
        let a = flows::lookup(&e, &vip_http(), client4(port)).unwrap();
        assert_eq!(a.source, FlowSource::ConnTable, "port {port}");
        assert_eq!(a.backend, Some(went_before), "port {port}: the entry");
        if a.ring_backend != a.backend {
            hits_off_ring += 1;
            assert_eq!(a.backend, Some(IpAddr::V4(REAL3)), "only the drained backend left the ring");
        }
        // An established packet follows the entry, a SYN the ring.
        assert_eq!(Some(send4(&mut e, port, pb::TCP_ACK)), a.backend, "port {port}: established");
        assert_eq!(Some(send4(&mut e, port, pb::TCP_SYN)), a.ring_backend, "port {port}: SYN");
        let now = flows::lookup(&e, &vip_http(), client4(port)).unwrap();
        assert_eq!(now.backend, a.ring_backend, "port {port}: the SYN rewrote the entry");
    }
    assert!(hits_off_ring > 50, "REAL3 had about a third of 300 flows, got {hits_off_ring}");
}

#[test]
fn a_stale_entry_and_a_bypassed_table_fall_back_to_the_ring() {
    let mut e = engine();
    // Find a flow on REAL3, then remove REAL3: its slot is cleared, the
    // entry stays until the slot is reused, and the packet re-hashes.
    let port = (41000..41200).find(|&p| send4(&mut e, p, pb::TCP_ACK) == IpAddr::V4(REAL3)).unwrap();
    let mut two = three(1);
    two.get_mut(&vip_http()).unwrap().backends.remove(&IpAddr::V4(REAL3));
    e.apply(&two, &config()).unwrap();
    let a = flows::lookup(&e, &vip_http(), client4(port)).unwrap();
    assert!(a.stale_entry, "the entry names a cleared slot: {a:?}");
    assert_eq!(a.source, FlowSource::Ring);
    assert_ne!(a.backend, Some(IpAddr::V4(REAL3)));
    assert_eq!(Some(send4(&mut e, port, pb::TCP_ACK)), a.backend);

    let mut bypass = two.clone();
    bypass.get_mut(&vip_http()).unwrap().flags = vec![VipFlag::NoConnTable];
    e.apply(&bypass, &config()).unwrap();
    for port in 42000..42050 {
        let a = flows::lookup(&e, &vip_http(), client4(port)).unwrap();
        assert!(a.conn_table_bypassed && a.source == FlowSource::Ring);
        assert_eq!(Some(send4(&mut e, port, pb::TCP_ACK)), a.backend);
    }
}

#[test]
fn conns_counts_the_entries_per_backend() {
    let mut e = engine();
    let empty = flows::conn_summary(&e, None).unwrap();
    assert_eq!((empty.entries, empty.unowned), (0, 0));
    assert_eq!(empty.slots, e.balancer().conn_slots() as u64);
    assert_eq!(empty.backends.len(), 5, "every (VIP, backend) pair has a row");

    let mut want = std::collections::BTreeMap::<IpAddr, u64>::new();
    for port in 20000..20120 {
        *want.entry(send4(&mut e, port, pb::TCP_ACK)).or_default() += 1;
    }
    for port in 30000..30030 {
        *want.entry(send6(&mut e, port)).or_default() += 1;
    }
    let all = flows::conn_summary(&e, None).unwrap();
    assert_eq!(all.entries, 150);
    assert_eq!(all.fill, 150.0 / all.slots as f64);
    for row in &all.backends {
        assert_eq!(row.entries, want.get(&row.backend).copied().unwrap_or(0), "{row:?}");
    }
    let http = flows::conn_summary(&e, Some(&vip_http())).unwrap();
    assert_eq!(http.backends.len(), 3);
    assert!(http.backends.iter().all(|r| r.vip == vip_http()));
    assert_eq!(http.backends.iter().map(|r| r.entries).sum::<u64>(), 120);
    assert_eq!(http.entries, 150, "the fill is the whole table's");

    // Entries of a removed backend are counted as unowned.
    let mut two = three(1);
    two.get_mut(&vip_http()).unwrap().backends.remove(&IpAddr::V4(REAL3));
    e.apply(&two, &config()).unwrap();
    let after = flows::conn_summary(&e, None).unwrap();
    assert_eq!(after.unowned, want[&IpAddr::V4(REAL3)]);
}

#[test]
fn an_every_port_vip_serves_the_flow_to_its_real_port() {
    let mut e = engine();
    let any: VipId = "tcp:10.0.0.30:0".parse().unwrap();
    let mut vips = three(1);
    vips.insert(any, spec(&[(IpAddr::V4(REAL1), 1), (IpAddr::V4(REAL2), 1), (IpAddr::V4(REAL3), 1)], vec![]));
    e.apply(&vips, &config()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (i, dport) in [443u16, 8443, 9000].into_iter().enumerate() {
        let dest: VipId = format!("tcp:10.0.0.30:{dport}").parse().unwrap();
        for port in 50000..50040 {
            let a = flows::lookup(&e, &dest, client4(port)).unwrap();
            assert_eq!((a.vip, a.port, a.source), (any, dport, FlowSource::Ring), "{a:?}");
            let ip = tcp4(CLIENT4, VIP4_ANYPORT, port, dport, pb::TCP_ACK, b"x");
            let (action, out) = run(e.balancer_mut(), &frame4(&ip));
            assert_eq!(action, XDP_TX);
            let went = IpAddr::V4(Ipv4Addr::new(out[30], out[31], out[32], out[33]));
            assert_eq!(a.backend, Some(went), "{dest} from port {port}");
            seen.insert((i, went));
            assert_eq!(flows::lookup(&e, &dest, client4(port)).unwrap().source, FlowSource::ConnTable);
        }
    }
    assert_eq!(seen.len(), 9, "each port's flows reach every backend: {seen:?}");
}

#[test]
fn bad_lookups_are_errors() {
    let e = engine();
    let missing: VipId = "tcp:10.0.0.10:81".parse().unwrap();
    assert!(matches!(flows::lookup(&e, &missing, client4(1)), Err(FlowError::UnknownVip(v)) if v == missing));
    assert!(matches!(flows::conn_summary(&e, Some(&missing)), Err(FlowError::UnknownVip(_))));
    let v6_client = SocketAddr::new(IpAddr::V6(CLIENT6), 1);
    assert!(matches!(flows::lookup(&e, &vip_http(), v6_client), Err(FlowError::FamilyMismatch { .. })));
}
