//! The reconciler against real maps: what an apply writes, what it leaves
//! alone, how a rejected change leaves no trace, and adoption of pinned maps
//! by a restarted daemon.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use common::*;
use lb_common::Stat;
use lb_control::{
    dataplane::{detach_all, Balancer, DataplaneError},
    engine::{Engine, EngineError},
    model::{Backend, VipId, VipSet, VipSpec},
};
use lb_testkit::packet_builder as pb;

fn id(s: &str) -> VipId {
    s.parse().unwrap()
}

fn spec(backends: &[(Ipv4Addr, u32)]) -> VipSpec {
    VipSpec { flags: vec![], backends: backends.iter().map(|(a, w)| (IpAddr::V4(*a), Backend { weight: *w })).collect() }
}

fn vip_http() -> VipId {
    id("tcp:10.0.0.10:80")
}

fn three() -> VipSet {
    [(vip_http(), spec(&[(REAL1, 1), (REAL2, 1), (REAL3, 1)]))].into()
}

/// Where a SYN from `port` goes.
fn backend_of(engine: &mut Engine, port: u16) -> Option<Ipv4Addr> {
    let ip = tcp4(CLIENT4, VIP4, port, PORT_HTTP, pb::TCP_SYN, &[]);
    let (action, out) = run(engine.balancer_mut(), &frame4(&ip));
    (action == XDP_TX).then(|| Ipv4Addr::new(out[30], out[31], out[32], out[33]))
}

fn fresh() -> Engine {
    Engine::adopt(Balancer::load(limits()).unwrap()).unwrap()
}

#[test]
fn apply_serves_the_vips_and_only_rewrites_what_changed() {
    let mut e = fresh();
    let r = e.apply(&three(), &config()).unwrap();
    assert_eq!((r.vips_added, r.tables_written, r.backends_added), (1, 1, 3));
    let mut seen = std::collections::BTreeSet::new();
    for port in 20000..20300 {
        seen.insert(backend_of(&mut e, port).expect("forwarded"));
    }
    assert_eq!(seen.len(), 3, "every backend gets flows: {seen:?}");

    // Nothing changed: nothing written.
    assert!(e.apply(&three(), &config()).unwrap().is_empty());

    // Ping the VIP address: the engine wrote its echo marker.
    let echo = pb::ipv4(CLIENT4, VIP4, 1, &pb::icmp4(8, 0, [0, 1, 0, 1], b"x"), &pb::V4::default());
    assert_eq!(run(e.balancer_mut(), &frame4(&echo)).0, XDP_TX);

    // Drain REAL3: it leaves the ring but keeps its slot, so established
    // flows (connection table) stay.
    let mut drained = three();
    drained.get_mut(&vip_http()).unwrap().backends.get_mut(&IpAddr::V4(REAL3)).unwrap().weight = 0;
    let r = e.apply(&drained, &config()).unwrap();
    assert_eq!((r.tables_written, r.backends_removed), (1, 0));
    assert!(e.real_index(&IpAddr::V4(REAL3)).is_some(), "drained backend keeps its slot");
    for port in 30000..30300 {
        assert_ne!(backend_of(&mut e, port), Some(REAL3), "no new flows to a drained backend");
    }

    // Remove REAL3: its slot is freed.
    let mut removed = three();
    removed.get_mut(&vip_http()).unwrap().backends.remove(&IpAddr::V4(REAL3));
    let r = e.apply(&removed, &config()).unwrap();
    assert_eq!(r.backends_removed, 1);
    assert_eq!(e.real_index(&IpAddr::V4(REAL3)), None);

    // Remove the VIP: traffic to it goes to the kernel, the marker goes too.
    let r = e.apply(&VipSet::new(), &config()).unwrap();
    assert_eq!((r.vips_removed, r.backends_removed), (1, 2));
    let ip = tcp4(CLIENT4, VIP4, 1234, PORT_HTTP, pb::TCP_SYN, &[]);
    assert_eq!(run(e.balancer_mut(), &frame4(&ip)).0, XDP_PASS);
    assert_eq!(run(e.balancer_mut(), &frame4(&echo)).0, XDP_PASS);
}

#[test]
fn adding_a_backend_moves_about_a_quarter_of_new_flows() {
    let mut e = fresh();
    e.apply(&three(), &config()).unwrap();
    let before: Vec<_> = (0..2000).map(|p| backend_of(&mut e, 10000 + p)).collect();
    let mut four = three();
    four.get_mut(&vip_http()).unwrap().backends.insert(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 4)), Backend { weight: 1 });
    e.apply(&four, &config()).unwrap();
    let after: Vec<_> = (0..2000).map(|p| backend_of(&mut e, 10000 + p)).collect();
    let moved: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
    let reshuffled = moved.iter().filter(|(_, b)| **b != Some(Ipv4Addr::new(10, 1, 0, 4))).count();
    // Maglev moves a few slots between old backends too (well under 1%).
    assert!(reshuffled <= 2000 / 50, "{reshuffled} flows moved between old backends");
    let share = (moved.len() - reshuffled) as f64 / 2000.0;
    assert!((0.20..=0.30).contains(&share), "{share} of flows moved, want about 1/4");
}

#[test]
fn a_rejected_change_leaves_no_trace() {
    let mut e = fresh();
    e.apply(&three(), &config()).unwrap();
    let ring_before = e.balancer().ring(0).unwrap().to_vec();
    let stats_before = e.balancer().stat(Stat::TxEncap).unwrap();

    // IPv4 backend for an IPv6 VIP.
    let mut bad = three();
    bad.insert(id("tcp:[fc00::10]:80"), spec(&[(REAL1, 1)]));
    assert!(matches!(e.apply(&bad, &config()), Err(EngineError::Rejected(m)) if m.contains("IPv6")));
    // More VIPs than the limit (16).
    let too_many: VipSet = (0..17u8).map(|i| (id(&format!("tcp:10.9.0.{i}:80")), spec(&[(REAL1, 1)]))).collect();
    assert!(matches!(e.apply(&too_many, &config()), Err(EngineError::Rejected(m)) if m.contains("exceed")));
    // More backends than slots (16, index 0 reserved).
    let crowd: VipSet = [(vip_http(), spec(&(1..=16).map(|i| (Ipv4Addr::new(10, 2, 0, i), 1)).collect::<Vec<_>>()))].into();
    assert!(matches!(e.apply(&crowd, &config()), Err(EngineError::Rejected(m)) if m.contains("backends exceed")));

    assert_eq!(e.balancer().ring(0).unwrap(), ring_before.as_slice());
    assert!(e.apply(&three(), &config()).unwrap().is_empty(), "the maps still hold the old state");
    assert_eq!(e.balancer().stat(Stat::TxEncap).unwrap(), stats_before);
    assert_eq!(e.balancer().vips().unwrap().len(), 2, "the VIP and its echo marker, nothing else");
}

/// A bpffs directory of this test's own, removed at the end.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> Self {
        PinDir(PathBuf::from(format!("/sys/fs/bpf/lb-test-{name}-{}", std::process::id())))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = detach_all(&self.0);
    }
}

#[test]
fn a_restarted_daemon_adopts_pinned_maps_and_rewrites_nothing() {
    let pins = PinDir::new("adopt");
    let syn = frame4(&tcp4(CLIENT4, VIP4, 4242, PORT_HTTP, pb::TCP_SYN, &[]));
    let ack = frame4(&tcp4(CLIENT4, VIP4, 4242, PORT_HTTP, pb::TCP_ACK, b"x"));
    let first = {
        let mut e = Engine::adopt(Balancer::open(limits(), Some(&pins.0)).unwrap()).unwrap();
        assert!(!e.balancer().adopted());
        e.apply(&three(), &config()).unwrap();
        let (_, out) = run(e.balancer_mut(), &syn);
        out[30..34].to_vec()
        // The engine, its program and map handles are dropped here.
    };
    let mut e = Engine::adopt(Balancer::open(limits(), Some(&pins.0)).unwrap()).unwrap();
    assert!(e.balancer().adopted());
    assert!(e.apply(&three(), &config()).unwrap().is_empty(), "same state: no table rewritten");
    // The connection made before the restart is still in the table.
    let (action, out) = run(e.balancer_mut(), &ack);
    assert_eq!(action, XDP_TX);
    assert_eq!(out[30..34], first[..]);
    assert_eq!(e.balancer().conn_count(), 1);

    // Other limits than the pinned maps were made with: refused, clearly.
    let mut other = limits();
    other.max_vips = 32;
    match Balancer::open(other, Some(&pins.0)) {
        Err(DataplaneError::PinnedMismatch { name, .. }) => assert_eq!(name, "VIPS"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("mismatched pins adopted"),
    }
    let removed = detach_all(&pins.0).unwrap();
    assert_eq!(removed.len(), 12, "{removed:?}");
    assert!(!pins.0.exists());
}
