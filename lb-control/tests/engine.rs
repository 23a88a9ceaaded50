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
    VipSpec {
        flags: vec![],
        backends: backends.iter().map(|(a, w)| (IpAddr::V4(*a), Backend { weight: *w })).collect(),
    }
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

    // Ping the VIP address: the engine wrote its echo marker. The reply is
    // counted by its reason, not as the VIP's traffic.
    let vip_num = e.vip_num(&vip_http()).unwrap();
    let vip_before = e.balancer().vip_stat(vip_num).unwrap();
    let replies_before = e.balancer().stat(Stat::TxIcmpEchoReply).unwrap();
    let echo = pb::ipv4(CLIENT4, VIP4, 1, &pb::icmp4(8, 0, [0, 1, 0, 1], b"x"), &pb::V4::default());
    assert_eq!(run(e.balancer_mut(), &frame4(&echo)).0, XDP_TX);
    assert_eq!(e.balancer().stat(Stat::TxIcmpEchoReply).unwrap().packets, replies_before.packets + 1);
    assert_eq!(e.balancer().vip_stat(vip_num).unwrap(), vip_before, "an echo is not the VIP's traffic");

    // Drain REAL3: it leaves the ring but keeps its slot, so established
    // flows (connection table) stay.
    let mut drained = three();
    drained.get_mut(&vip_http()).unwrap().backends.get_mut(&IpAddr::V4(REAL3)).unwrap().weight = 0;
    let r = e.apply(&drained, &config()).unwrap();
    assert_eq!((r.tables_written, r.backends_removed), (1, 0));
    assert!(e.real_index(&vip_http(), &IpAddr::V4(REAL3)).is_some(), "drained backend keeps its slot");
    for port in 30000..30300 {
        assert_ne!(backend_of(&mut e, port), Some(REAL3), "no new flows to a drained backend");
    }

    // Remove REAL3: its slot is freed.
    let mut removed = three();
    removed.get_mut(&vip_http()).unwrap().backends.remove(&IpAddr::V4(REAL3));
    let r = e.apply(&removed, &config()).unwrap();
    assert_eq!(r.backends_removed, 1);
    assert_eq!(e.real_index(&vip_http(), &IpAddr::V4(REAL3)), None);

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
    let crowd: VipSet =
        [(vip_http(), spec(&(1..=16).map(|i| (Ipv4Addr::new(10, 2, 0, i), 1)).collect::<Vec<_>>()))].into();
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
        Err(DataplaneError::PinnedMismatch { name, .. }) => assert_eq!(name, lb_common::map_names::VIPS),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("mismatched pins adopted"),
    }
    let removed = detach_all(&pins.0).unwrap();
    assert_eq!(removed.len(), lb_common::map_names::BALANCER_MAPS.len(), "{removed:?}");
    assert!(!pins.0.exists());
}

/// Where a packet of the flow `port → vip:80` with these TCP flags goes.
fn sent_to(engine: &mut Engine, vip: Ipv4Addr, port: u16, flags: u8) -> Option<Ipv4Addr> {
    let ip = tcp4(CLIENT4, vip, port, PORT_HTTP, flags, if flags == pb::TCP_SYN { b"" } else { b"x" });
    let (action, out) = run(engine.balancer_mut(), &frame4(&ip));
    (action == XDP_TX).then(|| Ipv4Addr::new(out[30], out[31], out[32], out[33]))
}

/// A client port whose new flow to `vip` the ring sends to `backend`; the
/// SYN is sent, so the flow is in the connection table.
fn flow_to(engine: &mut Engine, vip: Ipv4Addr, backend: Ipv4Addr, ports: std::ops::Range<u16>) -> u16 {
    ports
        .into_iter()
        .find(|&port| sent_to(engine, vip, port, pb::TCP_SYN) == Some(backend))
        .unwrap_or_else(|| panic!("no flow to {vip} lands on {backend}"))
}

fn conn_real(engine: &Engine, vip: Ipv4Addr, port: u16) -> Option<u32> {
    let flow = lb_common::FlowKey::new(
        lb_common::FAMILY_V4,
        lb_common::IPPROTO_TCP,
        lb_common::addr_v4(CLIENT4.octets()),
        net16(port),
        lb_common::addr_v4(vip.octets()),
        net16(PORT_HTTP),
    );
    engine.balancer().conn(&flow).map(|c| c.real)
}

/// Issue 10 item 4: a backend removed from one VIP while another VIP keeps
/// it. The first VIP's established flows on it re-hash; the other VIP's
/// stay, through their own connection-table entries.
#[test]
fn removing_a_shared_backend_from_one_vip_rehashes_only_that_vips_flows() {
    const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
    let vip_b = id("tcp:10.0.0.11:80");
    let both =
        |a: &[(Ipv4Addr, u32)]| -> VipSet { [(vip_http(), spec(a)), (vip_b, spec(&[(REAL1, 1), (REAL2, 1)]))].into() };
    let mut e = fresh();
    e.apply(&both(&[(REAL1, 1), (REAL2, 1), (REAL3, 1)]), &config()).unwrap();
    let (a_real, b_real) =
        (e.real_index(&vip_http(), &REAL1.into()).unwrap(), e.real_index(&vip_b, &REAL1.into()).unwrap());
    assert_ne!(a_real, b_real, "each (VIP, backend) pair has a real of its own");

    // Established flows to REAL1 on both VIPs.
    let a_port = flow_to(&mut e, VIP4, REAL1, 20000..21000);
    let b_port = flow_to(&mut e, VIP_B, REAL1, 20000..21000);
    assert_eq!(sent_to(&mut e, VIP4, a_port, pb::TCP_ACK), Some(REAL1));
    assert_eq!(sent_to(&mut e, VIP_B, b_port, pb::TCP_ACK), Some(REAL1));
    assert_eq!(conn_real(&e, VIP4, a_port), Some(a_real));
    assert_eq!(conn_real(&e, VIP_B, b_port), Some(b_real));

    // REAL1 leaves VIP A only.
    let r = e.apply(&both(&[(REAL2, 1), (REAL3, 1)]), &config()).unwrap();
    assert_eq!((r.backends_removed, r.backends_added), (1, 0));
    assert_eq!(e.real_index(&vip_http(), &REAL1.into()), None);
    assert_eq!(e.real_index(&vip_b, &REAL1.into()), Some(b_real));
    let rehashed = sent_to(&mut e, VIP4, a_port, pb::TCP_ACK);
    assert!(matches!(rehashed, Some(REAL2 | REAL3)), "VIP A's flow went to {rehashed:?}, not re-hashed");
    assert_ne!(conn_real(&e, VIP4, a_port), Some(a_real), "the flow's entry was rewritten");
    assert_eq!(sent_to(&mut e, VIP_B, b_port, pb::TCP_ACK), Some(REAL1), "VIP B's flow stays");
    assert_eq!(conn_real(&e, VIP_B, b_port), Some(b_real), "through its own entry");
}

/// A backend's counters are the sums over its reals, and do not go
/// backwards when it leaves one of its VIPs.
#[test]
fn a_shared_backends_counters_add_up_over_its_vips() {
    const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
    let vip_b = id("tcp:10.0.0.11:80");
    let mut set: VipSet = [(vip_http(), spec(&[(REAL1, 1)])), (vip_b, spec(&[(REAL1, 1)]))].into();
    let mut e = fresh();
    e.apply(&set, &config()).unwrap();
    for port in 0..3 {
        assert_eq!(sent_to(&mut e, VIP4, 30000 + port, pb::TCP_SYN), Some(REAL1));
    }
    for port in 0..2 {
        assert_eq!(sent_to(&mut e, VIP_B, 30000 + port, pb::TCP_SYN), Some(REAL1));
    }
    let packets = |e: &Engine| e.backend_counters().unwrap()[&IpAddr::V4(REAL1)].packets;
    assert_eq!(packets(&e), 5, "3 packets through VIP A's real, 2 through VIP B's");
    assert_eq!(e.backends().collect::<Vec<_>>(), [IpAddr::V4(REAL1)], "one backend, however many VIPs");

    set.get_mut(&vip_http()).unwrap().backends = [(IpAddr::V4(REAL2), Backend { weight: 1 })].into();
    e.apply(&set, &config()).unwrap();
    assert_eq!(packets(&e), 5, "VIP A's packets stay in REAL1's count");
    assert_eq!(sent_to(&mut e, VIP_B, 30009, pb::TCP_SYN), Some(REAL1));
    assert_eq!(packets(&e), 6);

    // Gone from every VIP: no counters; back later, it starts from zero.
    set.get_mut(&vip_b).unwrap().backends = [(IpAddr::V4(REAL2), Backend { weight: 1 })].into();
    e.apply(&set, &config()).unwrap();
    assert!(!e.backend_counters().unwrap().contains_key(&IpAddr::V4(REAL1)));
    set.get_mut(&vip_b).unwrap().backends.insert(IpAddr::V4(REAL1), Backend { weight: 1 });
    e.apply(&set, &config()).unwrap();
    assert_eq!(packets(&e), 0, "a backend added again starts from zero");
}

/// A freed real is given to a new pair only once no connection-table entry
/// names it: an entry left by its old pair would send that flow to the new
/// pair's backend.
#[test]
fn a_reused_real_never_inherits_the_old_pairs_flows() {
    let mut e = fresh();
    e.apply(&three(), &config()).unwrap();
    let old_real = e.real_index(&vip_http(), &REAL1.into()).unwrap();
    let port = flow_to(&mut e, VIP4, REAL1, 20000..21000);
    assert_eq!(conn_real(&e, VIP4, port), Some(old_real));

    // REAL1 leaves: its real is freed; the flow sends nothing meanwhile, so
    // its entry still names the real.
    let two: VipSet = [(vip_http(), spec(&[(REAL2, 1), (REAL3, 1)]))].into();
    e.apply(&two, &config()).unwrap();
    assert_eq!(conn_real(&e, VIP4, port), Some(old_real));

    // Enough new backends that the freed real (reused last) is taken again.
    let other = id("tcp:10.0.0.12:80");
    // 15 reals: REAL2, REAL3 and 13 new ones, the last of them the freed real.
    let crowd: Vec<(Ipv4Addr, u32)> = (1..=13).map(|i| (Ipv4Addr::new(10, 3, 0, i), 1)).collect();
    let mut more = two.clone();
    more.insert(other, spec(&crowd));
    e.apply(&more, &config()).unwrap();
    let heir = crowd.iter().find(|(a, _)| e.real_index(&other, &IpAddr::V4(*a)) == Some(old_real));
    assert!(heir.is_some(), "the freed real {old_real} was not reused; the test proves nothing");
    assert_eq!(conn_real(&e, VIP4, port), None, "the old pair's entry was swept");
    let now = sent_to(&mut e, VIP4, port, pb::TCP_ACK);
    assert!(matches!(now, Some(REAL2 | REAL3)), "the flow went to {now:?}, not to one of its VIP's backends");
}
