//! Fixtures for the data plane's edges (issue 9), one named test each: the
//! input frame (the hex where it gives one), the action, every
//! output byte (built independently with pnet_packet) and the one reason
//! counter. Runs through BPF_PROG_TEST_RUN with `repeat = 1`; needs root.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::*;
use lb_common::{
    addr_v4, vip_filter_bit, Action, Stat, VipMeta, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, VIP_F_ICMP_ECHO,
};
use lb_control::dataplane::Balancer;
use lb_testkit::packet_builder as pb;

/// What the balancer must do with a frame.
enum Want {
    Tx(Vec<u8>),
    /// Passed, the frame untouched.
    Pass,
    Drop,
}

/// Runs `input` through the standard world and checks the action, the
/// output bytes and that exactly `stat` moved, by one packet of the input.
fn check(input: &[u8], want: Want, stat: Stat) {
    check_in(&mut world(), input, want, stat);
}

/// [`check`] on a given balancer.
fn check_in(bal: &mut Balancer, input: &[u8], want: Want, stat: Stat) {
    let before = snapshot(bal);
    let (action, out) = run(bal, input);
    let (want_action, want_bytes) = match &want {
        Want::Tx(bytes) => (XDP_TX, Some(bytes.as_slice())),
        Want::Pass => (XDP_PASS, Some(input)),
        Want::Drop => (XDP_DROP, None),
    };
    assert_eq!(action, want_action, "action");
    if let Some(want) = want_bytes {
        assert!(out == want, "output differs: {}", diff(&out, want));
    }
    let moved = changed(&before, &snapshot(bal));
    let reasons: Vec<_> = moved.iter().filter(|(s, ..)| s.action() != Action::Event).collect();
    assert_eq!(reasons, [&(stat, 1, input.len() as u64)], "reason counters moved");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// An address outside the world whose VIP-filter bit is VIP4's (the
/// issue's frames use 12.38.102.133).
const TWIN4: Ipv4Addr = Ipv4Addr::new(12, 38, 102, 133);

fn assert_twin() {
    assert_eq!(vip_filter_bit(&addr_v4(TWIN4.octets())), vip_filter_bit(&addr_v4(VIP4.octets())));
}

const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

// --- 1. The VIP filter only short-cuts "certainly not" ---------------------

#[test]
fn filter_twin_icmp_error_quoting_a_vip_flow_is_passed() {
    assert_twin();
    // 198.51.100.1 -> 12.38.102.133: frag-needed quoting 10.0.0.10:80 -> 192.0.2.7:40000.
    let f = hex(concat!(
        "0200000000020200000000030800450000381234400040018bb1c63364010c26668503045689000005dc",
        "450000281234400040065c8b0a00000ac000020700509c4001020304"
    ));
    check(&f, Want::Pass, Stat::PassNonVip);
}

#[test]
fn filter_twin_fragment_is_passed_as_non_vip() {
    assert_twin();
    let seg = pb::tcp(CLIENT4.into(), TWIN4.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"data");
    let ip = pb::ipv4(
        CLIENT4,
        TWIN4,
        IPPROTO_TCP,
        &seg,
        &pb::V4 { more_fragments: true, dont_fragment: false, ..Default::default() },
    );
    check(&frame4(&ip), Want::Pass, Stat::PassNonVip);
}

#[test]
fn filter_twin_other_protocol_is_passed_as_non_vip() {
    assert_twin();
    let ip = pb::ipv4(CLIENT4, TWIN4, 47, &[0u8; 24], &pb::V4::default());
    check(&frame4(&ip), Want::Pass, Stat::PassNonVip);
}

#[test]
fn filter_twin_with_bad_ihl_is_passed_not_dropped() {
    assert_twin();
    let mut ip = tcp4(CLIENT4, TWIN4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    ip[0] = 0x44;
    check(&frame4(&ip), Want::Pass, Stat::PassNonVip);
}

#[test]
fn filter_twin_with_tcp_header_cut_is_passed_not_dropped() {
    assert_twin();
    let mut ip = tcp4(CLIENT4, TWIN4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    ip[32] = 0x30; // data offset 3
    check(&frame4(&ip), Want::Pass, Stat::PassNonVip);
}

#[test]
fn filter_twin_time_exceeded_is_passed_as_non_vip() {
    assert_twin();
    let from_backend = tcp4(VIP4, CLIENT4, PORT_HTTP, CLIENT_PORT, pb::TCP_ACK, &[0u8; 8]);
    let ip = pb::ipv4(ROUTER4, TWIN4, IPPROTO_ICMP, &pb::icmp4(11, 0, [0; 4], &from_backend[..28]), &pb::V4::default());
    check(&frame4(&ip), Want::Pass, Stat::PassNonVip);
}

#[test]
fn filter_twin_too_big_tcp_gets_no_icmp_reply() {
    assert_twin();
    let seg = pb::tcp(CLIENT4.into(), TWIN4.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &[0xab; 1460]);
    let ip = pb::ipv4(CLIENT4, TWIN4, IPPROTO_TCP, &seg, &pb::V4::default());
    check(&frame4(&ip), Want::Pass, Stat::PassNonVip);
}

/// An echo request from the client to `to`, and its reply.
fn echo4(to: Ipv4Addr) -> (Vec<u8>, Vec<u8>) {
    let request = pb::ipv4(CLIENT4, to, IPPROTO_ICMP, &pb::icmp4(8, 0, [0, 5, 0, 1], b"ping"), &pb::V4::default());
    let reply = pb::ipv4(to, CLIENT4, IPPROTO_ICMP, &pb::icmp4(0, 0, [0, 5, 0, 1], b"ping"), &pb::V4::default());
    (frame4(&request), pb::eth(ROUTER_MAC, IF_MAC, 0x0800, &reply))
}

#[test]
fn filter_twin_echo_request_is_passed_as_non_vip() {
    assert_twin();
    let (request, _) = echo4(TWIN4);
    check(&request, Want::Pass, Stat::PassNonVip);
}

/// Two VIP addresses whose filter bit is the same share their slot of the
/// VIP address table: echoes to both are answered (the VIP table decides),
/// a third address with that bit is passed, and once one of the two is
/// gone its slot names the other alone again.
#[test]
fn echo_to_vip_addresses_sharing_a_filter_bit() {
    assert_twin();
    let third = (0..u32::MAX)
        .map(|i| Ipv4Addr::from(0x0b00_0000 + i))
        .find(|a| vip_filter_bit(&addr_v4(a.octets())) == vip_filter_bit(&addr_v4(VIP4.octets())))
        .unwrap();
    let twin_marker = vip_key(TWIN4.into(), 0, IPPROTO_ICMP);
    let mut bal = world();
    bal.set_vip(&twin_marker, &VipMeta { flags: VIP_F_ICMP_ECHO, vip_num: vipnum::TCP4, ring: vipnum::TCP4 }).unwrap();
    for to in [VIP4, TWIN4] {
        let (request, reply) = echo4(to);
        check_in(&mut bal, &request, Want::Tx(reply), Stat::TxIcmpEchoReply);
    }
    check_in(&mut bal, &echo4(third).0, Want::Pass, Stat::PassNonVip);

    bal.remove_vip(&twin_marker).unwrap();
    check_in(&mut bal, &echo4(TWIN4).0, Want::Pass, Stat::PassNonVip);
    let (request, reply) = echo4(VIP4);
    check_in(&mut bal, &request, Want::Tx(reply), Stat::TxIcmpEchoReply);
}

// --- 2. Echo reply checksum ------------------------------------------------

#[test]
fn echo_reply_to_an_all_zero_message_has_checksum_ffff() {
    let f = hex("02000000000202000000000308004500001c1234400040015c9cc00002070a00000a0800f7ff00000000");
    let icmp = pb::icmp4(0, 0, [0; 4], &[]);
    assert_eq!(icmp[2..4], [0xff, 0xff], "independent checksum");
    let reply = pb::ipv4(VIP4, CLIENT4, IPPROTO_ICMP, &icmp, &pb::V4::default());
    check(&f, Want::Tx(pb::eth(ROUTER_MAC, IF_MAC, 0x0800, &reply)), Stat::TxIcmpEchoReply);
}

// --- 3. ICMP error quotes inside the IP length only -------------------------

#[test]
fn icmp_error_quote_in_the_trailer_is_not_read() {
    // IP length 28: the "quote" after it is trailer bytes.
    let f = hex(concat!(
        "02000000000202000000000308004500001c123440004001f46ec63364010a00000a0304f7fb00000500",
        "450000281234400040065c8b0a00000ac000020700509c4001020304"
    ));
    check(&f, Want::Pass, Stat::PassIcmpOther);
}

// --- 4. A fragment header after four extension headers ---------------------

#[test]
fn v6_fragment_header_after_four_extension_headers_is_a_fragment() {
    let seg = pb::tcp(CLIENT6.into(), VIP6.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"data");
    let frag = pb::ipv6_frag(IPPROTO_TCP, 0, true, 7, &seg);
    let chain = pb::ipv6_ext(43, 0, &pb::ipv6_ext(60, 0, &pb::ipv6_ext(60, 0, &pb::ipv6_ext(44, 0, &frag))));
    let ip = pb::ipv6(CLIENT6, VIP6, 0, &chain, 0);
    check(&frame6(&ip), Want::Pass, Stat::PassFragment);
}

#[test]
fn v6_fifth_extension_header_is_an_unsupported_chain() {
    let seg = pb::tcp(CLIENT6.into(), VIP6.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"data");
    let chain = (0..5).fold(seg, |rest, i| pb::ipv6_ext(if i == 0 { IPPROTO_TCP } else { 60 }, 0, &rest));
    let ip = pb::ipv6(CLIENT6, VIP6, 60, &chain, 0);
    check(&frame6(&ip), Want::Pass, Stat::PassIpv6ExtUnsupported);
}

// --- 5. Too-big quotes up to the RFC limits ---------------------------------

#[test]
fn v6_too_big_quote_keeps_the_ports_behind_long_extension_headers() {
    // 104 bytes of destination options, then TCP: the old 128-byte quote
    // ended before the ports.
    let seg = pb::tcp(CLIENT6.into(), VIP6.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &[0xcd; 1300]);
    let ip = pb::ipv6(CLIENT6, VIP6, 60, &pb::ipv6_ext(IPPROTO_TCP, 12, &seg), 0);
    let quote = &ip[..1280 - 48];
    let icmp = pb::icmp6(VIP6, CLIENT6, 2, 0, 1460u32.to_be_bytes(), quote);
    let reply = pb::eth(ROUTER_MAC, IF_MAC, 0x86DD, &pb::ipv6(VIP6, CLIENT6, IPPROTO_ICMPV6, &icmp, 0));
    assert_eq!(reply.len(), 14 + 1280);
    check(&frame6(&ip), Want::Tx(reply), Stat::TxIcmpTooBig);
}

#[test]
fn v4_too_big_reply_is_576_bytes() {
    let seg = pb::tcp(CLIENT4.into(), VIP4.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &[0xab; 1460]);
    let ip = pb::ipv4(CLIENT4, VIP4, IPPROTO_TCP, &seg, &pb::V4::default());
    let icmp = pb::icmp4(3, 4, [0, 0, 0x05, 0xc8], &ip[..576 - 28]);
    let reply =
        pb::ipv4(VIP4, CLIENT4, IPPROTO_ICMP, &icmp, &pb::V4 { id: 0, dont_fragment: false, ..Default::default() });
    assert_eq!(reply.len(), 576);
    check(&frame4(&ip), Want::Tx(pb::eth(ROUTER_MAC, IF_MAC, 0x0800, &reply)), Stat::TxIcmpTooBig);
}

// --- 6. Trailers are trimmed before encapsulating ---------------------------

fn tcp4_of_len(ip_len: usize) -> Vec<u8> {
    let seg = pb::tcp(CLIENT4.into(), VIP4.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &vec![0xab; ip_len - 40]);
    pb::ipv4(CLIENT4, VIP4, IPPROTO_TCP, &seg, &pb::V4::default())
}

fn h4tcp() -> u32 {
    encap_hash(CLIENT4.into(), CLIENT_PORT, VIP4.into(), PORT_HTTP, IPPROTO_TCP)
}

#[test]
fn trailer_is_trimmed_before_encapsulation() {
    let ip = tcp4_of_len(1480);
    let mut f = frame4(&ip);
    f.extend_from_slice(&[0x5a; 30]);
    let want = expect_ipip4(&ip, REAL1, h4tcp());
    assert_eq!(want.len(), 1514);
    check(&f, Want::Tx(want), Stat::TxEncap);
}

#[test]
fn trailer_is_trimmed_from_an_echo_reply() {
    let echo = pb::icmp4(8, 0, [0, 9, 0, 1], b"ping");
    let ip = pb::ipv4(CLIENT4, VIP4, IPPROTO_ICMP, &echo, &pb::V4::default());
    let mut f = frame4(&ip);
    f.extend_from_slice(&[0x5a; 12]);
    let reply = pb::ipv4(VIP4, CLIENT4, IPPROTO_ICMP, &pb::icmp4(0, 0, [0, 9, 0, 1], b"ping"), &pb::V4::default());
    check(&f, Want::Tx(pb::eth(ROUTER_MAC, IF_MAC, 0x0800, &reply)), Stat::TxIcmpEchoReply);
}

// --- 7. No ICMP error in answer to an ICMP error ---------------------------

#[test]
fn icmp_error_too_big_to_forward_is_dropped_not_answered() {
    // A frag-needed about a VIP flow, quoting so much that it would not fit
    // once encapsulated (1481 bytes of IP, DF).
    let from_backend = tcp4(VIP4, CLIENT4, PORT_HTTP, CLIENT_PORT, pb::TCP_ACK, &[0u8; 1481 - 28 - 40]);
    let icmp = pb::icmp4(3, 4, [0, 0, 0x05, 0x00], &from_backend);
    let ip = pb::ipv4(ROUTER4, VIP4, IPPROTO_ICMP, &icmp, &pb::V4::default());
    assert_eq!(ip.len(), 1481);
    check(&frame4(&ip), Want::Drop, Stat::DropTooBig);
}

#[test]
fn v6_packet_too_big_too_big_to_forward_is_dropped_not_answered() {
    let router6 = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
    let from_backend6 = tcp6(VIP6, CLIENT6, PORT_HTTP, CLIENT_PORT, pb::TCP_ACK, &[0u8; 1400]);
    let icmp = pb::icmp6(router6, VIP6, 2, 0, 1280u32.to_be_bytes(), &from_backend6);
    let ip = pb::ipv6(router6, VIP6, IPPROTO_ICMPV6, &icmp, 0);
    check(&frame6(&ip), Want::Drop, Stat::DropTooBig);
}
