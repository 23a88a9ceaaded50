//! Second chance in the reconciler: a changed table keeps the one it
//! replaced as the VIP's previous table (`PREV_RINGS`) for the window, one
//! per VIP; it goes when the window passes, when second chance is turned
//! off, when the VIP goes; rings run out gracefully.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use common::*;
use lb_control::{
    dataplane::{Balancer, Limits},
    engine::Engine,
    model::{Backend, VipId, VipSet, VipSpec},
};

fn id(port: u16) -> VipId {
    format!("tcp:10.0.0.10:{port}").parse().unwrap()
}

fn set(ports: &[u16], backends: &[Ipv4Addr]) -> VipSet {
    ports
        .iter()
        .map(|&p| {
            let spec = VipSpec {
                flags: vec![],
                backends: backends.iter().map(|a| (IpAddr::V4(*a), Backend { weight: 1 })).collect(),
            };
            (id(p), spec)
        })
        .collect()
}

fn engine(window: Option<Duration>) -> Engine {
    let mut e = Engine::adopt(Balancer::load(limits()).unwrap()).unwrap();
    e.set_second_chance(window).unwrap();
    e
}

/// The VIP's previous ring as the data plane sees it.
fn prev_in_maps(e: &Engine, vip: &VipId) -> Option<u32> {
    let num = e.vip_num(vip).unwrap();
    e.balancer().prev_ring(num).unwrap()
}

#[test]
fn a_changed_table_keeps_the_old_one_until_the_window_passes() {
    let mut e = engine(Some(Duration::from_secs(600)));
    e.apply(&set(&[80], &[REAL1, REAL2]), &config()).unwrap();
    assert_eq!(prev_in_maps(&e, &id(80)), None, "a new VIP has no previous table");
    let old_ring = e.balancer().vip(&vip_key(VIP4.into(), 80, 6)).unwrap().ring;
    let old_table = e.balancer().ring(old_ring).unwrap();
    e.apply(&set(&[80], &[REAL1, REAL2, REAL3]), &config()).unwrap();
    assert_eq!(prev_in_maps(&e, &id(80)), Some(old_ring));
    assert_eq!(e.previous_ring(&id(80)), Some(old_ring));
    assert_eq!(e.balancer().ring(old_ring).unwrap(), old_table, "the previous table is intact");
    // Not yet: the window has not passed.
    assert_eq!(e.expire_previous(Instant::now()).unwrap(), 0);
    assert_eq!(e.expire_previous(Instant::now() + Duration::from_secs(601)).unwrap(), 1);
    assert_eq!(prev_in_maps(&e, &id(80)), None);
    assert_eq!(e.previous_ring(&id(80)), None);
}

#[test]
fn one_previous_table_per_vip_the_one_just_left() {
    let mut e = engine(Some(Duration::from_secs(600)));
    e.apply(&set(&[80], &[REAL1]), &config()).unwrap();
    e.apply(&set(&[80], &[REAL1, REAL2]), &config()).unwrap();
    let second = e.balancer().vip(&vip_key(VIP4.into(), 80, 6)).unwrap().ring;
    e.apply(&set(&[80], &[REAL1, REAL2, REAL3]), &config()).unwrap();
    assert_eq!(prev_in_maps(&e, &id(80)), Some(second));
}

#[test]
fn off_keeps_nothing_and_turning_it_off_lets_every_table_go() {
    let mut off = engine(None);
    off.apply(&set(&[80], &[REAL1]), &config()).unwrap();
    off.apply(&set(&[80], &[REAL1, REAL2]), &config()).unwrap();
    assert_eq!(prev_in_maps(&off, &id(80)), None);

    let mut e = engine(Some(Duration::from_secs(600)));
    e.apply(&set(&[80, 81], &[REAL1]), &config()).unwrap();
    e.apply(&set(&[80, 81], &[REAL1, REAL2]), &config()).unwrap();
    assert!(prev_in_maps(&e, &id(80)).is_some() && prev_in_maps(&e, &id(81)).is_some());
    e.set_second_chance(None).unwrap();
    assert_eq!((prev_in_maps(&e, &id(80)), prev_in_maps(&e, &id(81))), (None, None));
}

#[test]
fn a_removed_vip_takes_its_previous_table_along_and_its_number_comes_back_clean() {
    let mut e = engine(Some(Duration::from_secs(600)));
    e.apply(&set(&[80], &[REAL1]), &config()).unwrap();
    e.apply(&set(&[80], &[REAL1, REAL2]), &config()).unwrap();
    let num = e.vip_num(&id(80)).unwrap();
    e.apply(&set(&[], &[]), &config()).unwrap();
    assert_eq!(e.balancer().prev_ring(num).unwrap(), None);
    e.apply(&set(&[81], &[REAL1]), &config()).unwrap();
    assert_eq!(prev_in_maps(&e, &id(81)), None);
}

#[test]
fn when_rings_run_out_the_oldest_previous_table_goes_first() {
    // 40 VIPs in a pool of 40 + 2 + 32 rings: changing every VIP wants 40
    // previous tables; 34 rings are free, so the oldest go early.
    let limits = Limits { ring_size: 13, max_vips: 40, max_reals: 200, conn_table_size: 4096 };
    let mut e = Engine::adopt(Balancer::load(limits).unwrap()).unwrap();
    e.set_second_chance(Some(Duration::from_secs(600))).unwrap();
    let ports: Vec<u16> = (80..120).collect();
    for backends in [&[REAL1][..], &[REAL1, REAL2], &[REAL1, REAL2, REAL3], &[REAL2, REAL3]] {
        e.apply(&set(&ports, backends), &config()).unwrap();
    }
    let kept = ports.iter().filter(|&&p| e.previous_ring(&id(p)).is_some()).count();
    // Every ring that holds no current table holds a previous one (the
    // next new table takes the oldest's ring).
    assert_eq!(kept, 34, "previous tables kept");
    // Every VIP still forwards by its current table, and no two VIPs share
    // a ring (current or previous).
    let mut rings = std::collections::BTreeSet::new();
    for &p in &ports {
        let meta = e.balancer().vip(&vip_key(VIP4.into(), p, 6)).unwrap();
        assert!(rings.insert(meta.ring), "ring {} used twice", meta.ring);
        if let Some(prev) = e.previous_ring(&id(p)) {
            assert!(rings.insert(prev), "ring {prev} used twice");
        }
    }
}
