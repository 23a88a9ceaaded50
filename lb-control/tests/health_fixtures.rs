//! The probes' TC egress program under `BPF_PROG_TEST_RUN`: each probe
//! packet, built with the packet builder and carrying its mark in the skb
//! context, must leave as exactly the frame the balancer would send for the
//! same packet (every byte: outer header, outer source from the flow hash,
//! MACs), and bump exactly one counter; other packets pass untouched.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use common::*;
use lb_common::{LbConfig, ProbeStat, HEALTH_MARK_BASE, IPPROTO_TCP, IPPROTO_UDP};
use lb_control::health::tc::HealthProgram;
use lb_testkit::packet_builder::{self as pb, Mac};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// The neighbour's MAC the kernel put on the probe; the program replaces it
/// with the configured gateway's, as for data packets.
const KERNEL_DST_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x09];
/// The balancer host's own address: the probe socket's source.
const HOST4: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 2);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);
const PROBE_PORT: u16 = 45_678;

const MARK_V4: u32 = HEALTH_MARK_BASE;
const MARK_V6: u32 = HEALTH_MARK_BASE + 1;

fn program(cfg: LbConfig) -> HealthProgram {
    let mut p = HealthProgram::load().expect("loading the health program");
    p.set_config(&cfg).unwrap();
    p.set_target(MARK_V4, IpAddr::V4(REAL1)).unwrap();
    p.set_target(MARK_V6, IpAddr::V6(REAL6_4)).unwrap();
    p
}

/// Runs one frame with `mark` in the skb; returns the verdict, the frame
/// out and the one counter that moved (with its packet delta).
fn run(p: &mut HealthProgram, frame: &[u8], mark: u32) -> (u32, Vec<u8>, Vec<(ProbeStat, u64, u64)>) {
    let before = p.stats().unwrap();
    // struct __sk_buff up to `mark`: len and pkt_type must be zero.
    let mut ctx = [0u8; 12];
    ctx[8..].copy_from_slice(&mark.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let opts =
        TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ctx_in: Some(&ctx), ..TestRunOptions::new() };
    let r = p.program().unwrap().test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    let after = p.stats().unwrap();
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, a)| (b.0, a.1.packets - b.1.packets, a.1.bytes - b.1.bytes))
        .collect();
    (r.return_value, out, moved)
}

fn probe_frame(ip: &[u8]) -> Vec<u8> {
    let ether_type = if ip[0] >> 4 == 4 { 0x0800 } else { 0x86DD };
    pb::eth(KERNEL_DST_MAC, IF_MAC, ether_type, ip)
}

fn check(got: &[u8], want: &[u8]) {
    assert!(got == want, "frames differ:\n{}", diff(got, want));
}

#[test]
fn a_tcp_probe_to_an_ipv4_vip_leaves_ipip_encapsulated_to_its_backend() {
    let mut p = program(config());
    let inner = tcp4(HOST4, VIP4, PROBE_PORT, PORT_HTTP, 0x02, &[]);
    let frame = probe_frame(&inner);
    let (verdict, out, moved) = run(&mut p, &frame, MARK_V4);
    let hash = encap_hash(HOST4.into(), PROBE_PORT, VIP4.into(), PORT_HTTP, IPPROTO_TCP);
    assert_eq!(verdict, TC_ACT_OK);
    check(&out, &expect_ipip4(&inner, REAL1, hash));
    assert_eq!(moved, [(ProbeStat::ProbeEncapsulated, 1, frame.len() as u64)]);
}

#[test]
fn an_http_request_segment_keeps_its_payload_byte_for_byte() {
    let mut p = program(config());
    let get = b"GET /healthz HTTP/1.1\r\nhost: 10.0.0.10:80\r\n\r\n";
    let inner = tcp4(HOST4, VIP4, PROBE_PORT, PORT_HTTP, 0x18, get);
    let (verdict, out, _) = run(&mut p, &probe_frame(&inner), MARK_V4);
    let hash = encap_hash(HOST4.into(), PROBE_PORT, VIP4.into(), PORT_HTTP, IPPROTO_TCP);
    assert_eq!(verdict, TC_ACT_OK);
    check(&out, &expect_ipip4(&inner, REAL1, hash));
}

#[test]
fn an_ipv6_probe_leaves_ipv6_in_ipv6_with_the_flow_label_from_the_hash() {
    let mut p = program(config());
    let inner = udp6(HOST6, VIP6, PROBE_PORT, PORT_DNS, b"xdp-lb health probe\n");
    let (verdict, out, moved) = run(&mut p, &probe_frame(&inner), MARK_V6);
    let hash = encap_hash(HOST6.into(), PROBE_PORT, VIP6.into(), PORT_DNS, IPPROTO_UDP);
    assert_eq!(verdict, TC_ACT_OK);
    check(&out, &expect_ip6tnl(&inner, REAL6_4, hash));
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].0, ProbeStat::ProbeEncapsulated);
}

#[test]
fn an_ipv4_probe_to_an_ipv6_backend_leaves_ipv4_in_ipv6() {
    let mut p = program(config());
    let inner = tcp4(HOST4, VIP4_V6REAL, PROBE_PORT, PORT_HTTP, 0x02, &[]);
    let (verdict, out, _) = run(&mut p, &probe_frame(&inner), MARK_V6);
    let hash = encap_hash(HOST4.into(), PROBE_PORT, VIP4_V6REAL.into(), PORT_HTTP, IPPROTO_TCP);
    assert_eq!(verdict, TC_ACT_OK);
    check(&out, &expect_ip6tnl(&inner, REAL6_4, hash));
}

#[test]
fn unmarked_and_unknown_marked_packets_pass_untouched() {
    let mut p = program(config());
    let frame = probe_frame(&tcp4(HOST4, VIP4, PROBE_PORT, PORT_HTTP, 0x02, &[]));
    for mark in [0, 7, HEALTH_MARK_BASE + 5] {
        let (verdict, out, moved) = run(&mut p, &frame, mark);
        assert_eq!(verdict, TC_ACT_OK, "mark {mark:#x}");
        check(&out, &frame);
        assert_eq!(moved, [(ProbeStat::PassNotProbe, 1, frame.len() as u64)], "mark {mark:#x}");
    }
}

#[test]
fn an_ipv6_probe_to_an_ipv4_backend_is_dropped_not_sent_raw() {
    let mut p = program(config());
    let frame = probe_frame(&tcp6(HOST6, VIP6, PROBE_PORT, PORT_HTTP, 0x02, &[]));
    let (verdict, _, moved) = run(&mut p, &frame, MARK_V4);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(moved, [(ProbeStat::DropFamilyMismatch, 1, frame.len() as u64)]);
}

#[test]
fn a_probe_before_the_config_is_written_is_dropped() {
    let mut p = program(LbConfig { flags: 0, ..config() });
    let frame = probe_frame(&tcp4(HOST4, VIP4, PROBE_PORT, PORT_HTTP, 0x02, &[]));
    let (verdict, _, moved) = run(&mut p, &frame, MARK_V4);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(moved, [(ProbeStat::DropNotReady, 1, frame.len() as u64)]);
}

#[test]
fn the_health_object_has_exactly_lb_commons_map_names() {
    let ebpf = aya::EbpfLoader::new().load(lb_control::dataplane::HEALTH_ELF).unwrap();
    let mut found: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
    found.sort();
    let mut want = lb_common::health_map_names::HEALTH_MAPS.to_vec();
    want.sort();
    assert_eq!(found, want);
    assert!(ebpf.program(lb_common::HEALTH_PROGRAM).is_some());
}
