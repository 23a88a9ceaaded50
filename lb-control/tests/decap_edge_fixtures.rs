//! Decap fixtures for issue 9's class 8: a malformed inner packet of a
//! tunnel to this host is dropped; whatever is not a tunnel to this host
//! passes, however malformed. One named test each, with its counter.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;
use lb_common::DecapStat;
use lb_control::dataplane::Decap;
use lb_testkit::packet_builder as pb;

const HOST4: Ipv4Addr = REAL1;
const BACKEND_MAC: pb::Mac = [0x02, 0, 0, 0, 0, 0x10];

fn decap() -> Decap {
    let mut d = Decap::load().expect("load decap (needs root and BPF)");
    d.add_addr(IpAddr::V4(HOST4)).unwrap();
    d.add_addr(IpAddr::V6(REAL6_4)).unwrap();
    d
}

/// Runs `input` through decap: the action, the frame untouched (both
/// actions here leave it so), and exactly `stat` moved by one.
fn check(input: &[u8], want_action: u32, stat: DecapStat) {
    let mut d = decap();
    let before = d.all_stats().unwrap();
    let (action, out, _) = run_prog(d.program(), input);
    let after = d.all_stats().unwrap();
    assert_eq!(action, want_action, "action");
    if action == XDP_PASS {
        assert!(out == input, "output differs: {}", diff(&out, input));
    }
    let moved: Vec<_> =
        before.iter().zip(&after).filter(|(b, a)| b.1 != a.1).map(|(b, a)| (b.0, a.1.packets - b.1.packets)).collect();
    assert_eq!(moved, [(stat, 1)], "counters moved");
}

fn inner4() -> Vec<u8> {
    tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"hello backend")
}

/// IPv4-in-IPv4 to `dst` around `inner` (taken as is).
fn tunnel4(dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    pb::eth(BACKEND_MAC, ROUTER_MAC, 0x0800, &pb::ipv4(outer_src4(1), dst, 4, inner, &pb::V4::default()))
}

#[test]
fn inner_ihl_below_5_is_dropped() {
    let mut inner = inner4();
    inner[0] = 0x44;
    check(&tunnel4(HOST4, &inner), XDP_DROP, DecapStat::DropMalformed);
}

#[test]
fn inner_total_length_longer_than_the_outer_payload_is_dropped() {
    let mut inner = inner4();
    let len = inner.len() as u16 + 8;
    inner[2..4].copy_from_slice(&len.to_be_bytes());
    check(&tunnel4(HOST4, &inner), XDP_DROP, DecapStat::DropMalformed);
}

#[test]
fn inner_total_length_shorter_than_the_outer_payload_is_dropped() {
    let mut inner = inner4();
    let len = inner.len() as u16 - 4;
    inner[2..4].copy_from_slice(&len.to_be_bytes());
    check(&tunnel4(HOST4, &inner), XDP_DROP, DecapStat::DropMalformed);
}

#[test]
fn inner_options_cut_by_the_inner_length_are_dropped() {
    // IHL 15 (60 bytes of header) in a 24-byte inner packet.
    let mut inner = inner4()[..24].to_vec();
    inner[0] = 0x4f;
    inner[2..4].copy_from_slice(&24u16.to_be_bytes());
    check(&tunnel4(HOST4, &inner), XDP_DROP, DecapStat::DropMalformed);
}

#[test]
fn inner_v6_payload_length_inconsistent_with_the_outer_is_dropped() {
    let mut inner = tcp6(CLIENT6, VIP6, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"x");
    inner[4..6].copy_from_slice(&300u16.to_be_bytes());
    let outer = pb::ipv6(outer_src6(1), REAL6_4, 41, &inner, 0);
    check(&pb::eth(BACKEND_MAC, ROUTER_MAC, 0x86DD, &outer), XDP_DROP, DecapStat::DropMalformed);
}

#[test]
fn malformed_tunnel_outer_to_this_host_is_dropped() {
    let mut f = tunnel4(HOST4, &inner4());
    f[14] = 0x44; // outer IHL 4
    check(&f, XDP_DROP, DecapStat::DropMalformed);
}

#[test]
fn malformed_non_tunnel_packet_is_passed() {
    let mut ip = inner4();
    ip[0] = 0x44;
    check(&frame4(&ip), XDP_PASS, DecapStat::PassNotEncap);
}

#[test]
fn non_tunnel_packet_with_bad_total_length_is_passed() {
    let mut ip = inner4();
    ip[2..4].copy_from_slice(&2000u16.to_be_bytes());
    check(&frame4(&ip), XDP_PASS, DecapStat::PassNotEncap);
}

#[test]
fn malformed_tunnel_to_another_host_is_passed() {
    let mut f = tunnel4(REAL2, &inner4());
    f[16..18].copy_from_slice(&4000u16.to_be_bytes()); // outer total length beyond the frame
    check(&f, XDP_PASS, DecapStat::PassNotLocal);
}

#[test]
fn frame_cut_inside_the_outer_header_is_passed() {
    // Too short to tell whether it is a tunnel to this host.
    let f = tunnel4(HOST4, &inner4())[..14 + 12].to_vec();
    check(&f, XDP_PASS, DecapStat::PassNotEncap);
}
