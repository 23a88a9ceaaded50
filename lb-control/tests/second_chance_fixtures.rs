//! Second chance, byte-exact with the counters each packet must move: the
//! balancer's encapsulation with and without a second hop, and the decap
//! program's outcomes (delivered on a socket or a SYN, forwarded once,
//! delivered to a reset when neither backend has the flow). "Has a socket"
//! is a real socket in the test's network namespace, found by
//! `bpf_skc_lookup_tcp` under `BPF_PROG_TEST_RUN`.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};

use common::*;
use lb_common::{Counter, DecapStat, FlowKey, Stat, FAMILY_V4, IPPROTO_TCP};
use lb_control::dataplane::{ip_to_addr, Balancer, Decap};
use lb_testkit::packet_builder as pb;
use libtest_mimic::{Arguments, Trial};

/// A ring of the pool no VIP of the standard world uses: the previous
/// table of the fixtures.
const PREV_RING: u32 = 12;
const BACKEND_MAC: pb::Mac = [0x02, 0, 0, 0, 0, 0x10];

/// The standard world, with the TCP VIPs' previous tables naming `prev4`
/// (IPv4 VIP) and `prev6` (IPv6 VIP) in every slot.
fn world_with_previous(prev4: u32, prev6: u32) -> Balancer {
    let mut bal = world();
    let size = bal.limits().ring_size as usize;
    bal.write_ring(PREV_RING, &vec![prev4; size]).unwrap();
    bal.set_prev_ring(vipnum::TCP4, Some(PREV_RING)).unwrap();
    bal.write_ring(PREV_RING + 1, &vec![prev6; size]).unwrap();
    bal.set_prev_ring(vipnum::TCP6, Some(PREV_RING + 1)).unwrap();
    bal
}

fn ack4(payload: &[u8]) -> Vec<u8> {
    tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, payload)
}

fn ack6(payload: &[u8]) -> Vec<u8> {
    tcp6(CLIENT6, VIP6, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, payload)
}

fn hash4() -> u32 {
    encap_hash(CLIENT4.into(), CLIENT_PORT, VIP4.into(), PORT_HTTP, IPPROTO_TCP)
}

fn hash6() -> u32 {
    encap_hash(CLIENT6.into(), CLIENT_PORT, VIP6.into(), PORT_HTTP, IPPROTO_TCP)
}

fn v4_hdr(inner: &[u8]) -> pb::V4 {
    pb::V4 { tos: inner[1], ttl: 64, id: 0, dont_fragment: inner[6] & 0x40 != 0, ..pb::V4::default() }
}

/// What the balancer sends with a second hop: outer (balancer → current) |
/// hop (→ previous) | inner, both from the flow's outer source.
fn expect_hop4(inner: &[u8], current: Ipv4Addr, previous: Ipv4Addr, hash: u32) -> Vec<u8> {
    let hop = pb::ipv4(outer_src4(hash), previous, 4, inner, &v4_hdr(inner));
    let outer = pb::ipv4(outer_src4(hash), current, 4, &hop, &v4_hdr(inner));
    pb::eth(GW_MAC, IF_MAC, 0x0800, &outer)
}

fn expect_hop6(inner: &[u8], current: Ipv6Addr, previous: Ipv6Addr, hash: u32) -> Vec<u8> {
    let tc = ((inner[0] & 0x0f) << 4) | (inner[1] >> 4);
    let hop = pb::ipv6_flow(outer_src6(hash), previous, 41, inner, tc, hash & 0xf_ffff);
    let outer = pb::ipv6_flow(outer_src6(hash), current, 41, &hop, tc, hash & 0xf_ffff);
    pb::eth(GW_MAC, IF_MAC, 0x86DD, &outer)
}

fn flow4() -> FlowKey {
    let (src, _) = ip_to_addr(CLIENT4.into());
    let (dst, _) = ip_to_addr(VIP4.into());
    FlowKey::new(FAMILY_V4, IPPROTO_TCP, src, net16(CLIENT_PORT), dst, net16(PORT_HTTP))
}

fn balancer_trials() -> Vec<Trial> {
    vec![
        Trial::test("balancer: v4 ack missing the table, previous table disagrees: second hop", || {
            let mut bal = world_with_previous(2, 5);
            let inner = ack4(b"data");
            let want = expect_hop4(&inner, REAL1, REAL2, hash4());
            check_balancer(
                &mut bal,
                &frame4(&inner),
                XDP_TX,
                &want,
                &[(Stat::TxEncap, 1), (Stat::ConnMiss, 1), (Stat::SecondChanceHop, 1)],
            )?;
            // Not remembered: the next packet has its second chance too.
            if bal.conn(&flow4()).is_some() {
                return Err("a second-chance flow was written to the connection table".into());
            }
            check_balancer(
                &mut bal,
                &frame4(&inner),
                XDP_TX,
                &want,
                &[(Stat::TxEncap, 1), (Stat::ConnMiss, 1), (Stat::SecondChanceHop, 1)],
            )
            .map_err(Into::into)
        }),
        Trial::test("balancer: v6 ack missing the table, previous table disagrees: second hop", || {
            let mut bal = world_with_previous(2, 5);
            let inner = ack6(b"data6");
            let want = expect_hop6(&inner, REAL6_4, REAL6_5, hash6());
            check_balancer(
                &mut bal,
                &frame6(&inner),
                XDP_TX,
                &want,
                &[(Stat::TxEncap, 1), (Stat::ConnMiss, 1), (Stat::SecondChanceHop, 1)],
            )
            .map_err(Into::into)
        }),
        Trial::test("balancer: v4 ack, previous table agrees: plain tunnel, remembered", || {
            let mut bal = world_with_previous(1, 4);
            let inner = ack4(b"data");
            check_balancer(
                &mut bal,
                &frame4(&inner),
                XDP_TX,
                &expect_ipip4(&inner, REAL1, hash4()),
                &[(Stat::TxEncap, 1), (Stat::ConnMiss, 1)],
            )?;
            if bal.conn(&flow4()).map(|e| e.real) != Some(1) {
                return Err("the flow was not remembered".into());
            }
            Ok(())
        }),
        Trial::test("balancer: v4 syn ignores the previous table", || {
            let mut bal = world_with_previous(2, 5);
            let inner = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
            check_balancer(
                &mut bal,
                &frame4(&inner),
                XDP_TX,
                &expect_ipip4(&inner, REAL1, hash4()),
                &[(Stat::TxEncap, 1)],
            )
            .map_err(Into::into)
        }),
        Trial::test("balancer: v4 ack that hits the table ignores the previous table", || {
            let mut bal = world();
            let inner = ack4(b"data");
            run(&mut bal, &frame4(&inner));
            let size = bal.limits().ring_size as usize;
            bal.write_ring(PREV_RING, &vec![2; size]).unwrap();
            bal.set_prev_ring(vipnum::TCP4, Some(PREV_RING)).unwrap();
            check_balancer(
                &mut bal,
                &frame4(&inner),
                XDP_TX,
                &expect_ipip4(&inner, REAL1, hash4()),
                &[(Stat::TxEncap, 1)],
            )
            .map_err(Into::into)
        }),
        Trial::test("balancer: udp ignores the previous table", || {
            let mut bal = world();
            let size = bal.limits().ring_size as usize;
            bal.write_ring(PREV_RING, &vec![3; size]).unwrap();
            bal.set_prev_ring(vipnum::UDP4, Some(PREV_RING)).unwrap();
            let inner = udp4(CLIENT4, VIP4, 5353, PORT_DNS, b"query");
            let hash = encap_hash(CLIENT4.into(), 5353, VIP4.into(), PORT_DNS, lb_common::IPPROTO_UDP);
            check_balancer(
                &mut bal,
                &frame4(&inner),
                XDP_TX,
                &expect_ipip4(&inner, REAL2, hash),
                &[(Stat::TxEncap, 1), (Stat::ConnMiss, 1)],
            )
            .map_err(Into::into)
        }),
        Trial::test("balancer: previous table naming an unset backend: plain tunnel", || {
            let mut bal = world_with_previous(UNKNOWN_REAL_INDEX, 4);
            let inner = ack4(b"data");
            check_balancer(
                &mut bal,
                &frame4(&inner),
                XDP_TX,
                &expect_ipip4(&inner, REAL1, hash4()),
                &[(Stat::TxEncap, 1), (Stat::ConnMiss, 1)],
            )
            .map_err(Into::into)
        }),
        Trial::test("balancer: too big with a second hop: the MTU leaves room for both headers", || {
            let mut bal = world_with_previous(2, 5);
            // 1461 bytes: fits one header (1481), not two (1501).
            let inner = ack4(&vec![0x55; 1461 - 40]);
            let input = frame4(&inner);
            let before = snapshot(&bal);
            let (action, out) = run(&mut bal, &input);
            let moved: Vec<(Stat, u64)> =
                changed(&before, &snapshot(&bal)).into_iter().map(|(s, p, _)| (s, p)).collect();
            if action != XDP_TX || moved != [(Stat::TxIcmpTooBig, 1), (Stat::ConnMiss, 1)] {
                return Err(format!("action {action}, counters {moved:?}").into());
            }
            // ICMP "fragmentation needed" from the VIP to the client, with
            // next-hop MTU 1500 - 2 × 20 (RFC 1191: bytes 6..8 of the ICMP
            // header), quoting the start of the packet.
            let icmp = &out[14 + 20..];
            let (kind, code, mtu) = (icmp[0], icmp[1], u16::from_be_bytes([icmp[6], icmp[7]]));
            if (kind, code, mtu) != (3, 4, 1460) || out[14 + 12..14 + 20] != [VIP4.octets(), CLIENT4.octets()].concat()
            {
                return Err(format!("icmp type {kind} code {code} mtu {mtu}").into());
            }
            if icmp[8..8 + 28] != inner[..28] {
                return Err("the quote is not the packet's start".into());
            }
            Ok(())
        }),
    ]
}

// ---- decap -------------------------------------------------------------

const HOST4: Ipv4Addr = REAL1;
const HOST6: Ipv6Addr = REAL6_4;

fn decap() -> Decap {
    let mut d = Decap::load().expect("load decap (needs root and BPF)");
    d.add_addr(IpAddr::V4(HOST4)).unwrap();
    d.add_addr(IpAddr::V6(HOST6)).unwrap();
    d.add_addr(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    d
}

/// A second-chance packet as the router delivers it to `host`: the
/// balancer's output with the last hop's MACs.
fn arriving4(inner: &[u8], host: Ipv4Addr, hop: Ipv4Addr) -> Vec<u8> {
    let src = outer_src4(7);
    let hop = pb::ipv4(src, hop, 4, inner, &v4_hdr(inner));
    pb::eth(BACKEND_MAC, ROUTER_MAC, 0x0800, &pb::ipv4(src, host, 4, &hop, &v4_hdr(inner)))
}

fn arriving6(inner: &[u8], host: Ipv6Addr, hop: Ipv6Addr) -> Vec<u8> {
    let src = outer_src6(7);
    let hop = pb::ipv6_flow(src, hop, 41, inner, 0, 7);
    pb::eth(BACKEND_MAC, ROUTER_MAC, 0x86DD, &pb::ipv6_flow(src, host, 41, &hop, 0, 7))
}

fn delivered(inner: &[u8]) -> Vec<u8> {
    let ether_type = if inner[0] >> 4 == 4 { 0x0800 } else { 0x86DD };
    pb::eth(BACKEND_MAC, ROUTER_MAC, ether_type, inner)
}

/// What a backend sends on: back to the router, from this host to the
/// hop's backend, the hop cleared.
fn forwarded4(inner: &[u8], host: Ipv4Addr, next: Ipv4Addr) -> Vec<u8> {
    let hop = pb::ipv4(outer_src4(7), Ipv4Addr::UNSPECIFIED, 4, inner, &v4_hdr(inner));
    pb::eth(ROUTER_MAC, BACKEND_MAC, 0x0800, &pb::ipv4(host, next, 4, &hop, &v4_hdr(inner)))
}

fn forwarded6(inner: &[u8], host: Ipv6Addr, next: Ipv6Addr) -> Vec<u8> {
    let hop = pb::ipv6_flow(outer_src6(7), Ipv6Addr::UNSPECIFIED, 41, inner, 0, 7);
    pb::eth(ROUTER_MAC, BACKEND_MAC, 0x86DD, &pb::ipv6_flow(host, next, 41, &hop, 0, 7))
}

fn check_decap(input: &[u8], action: u32, output: &[u8], stat: DecapStat) -> Result<(), String> {
    let mut d = decap();
    let counters = |d: &Decap| -> Vec<(DecapStat, Counter)> { d.all_stats().unwrap() };
    let before = counters(&d);
    let (got, out, _) = run_prog(d.program(), input);
    let after = counters(&d);
    let moved: Vec<_> =
        before.iter().zip(&after).filter(|(b, a)| b.1 != a.1).map(|(b, a)| (b.0, a.1.packets - b.1.packets)).collect();
    if got != action {
        return Err(format!("action {got}, want {action}"));
    }
    if out != output {
        return Err(format!("output differs: {}", diff(&out, output)));
    }
    if moved != [(stat, 1)] {
        return Err(format!("counters moved {moved:?}, want {stat:?}"));
    }
    Ok(())
}

/// A TCP connection over loopback in the test's namespace: the server's
/// established socket is what the decap program must find. Returns the
/// streams (kept open) and the client's and the listener's ports.
fn connection() -> (TcpListener, TcpStream, TcpStream, u16, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    (listener, client, server, client_port, port)
}

fn decap_trials() -> Vec<Trial> {
    vec![
        Trial::test("decap: v4 no socket here, hop present: forwarded to the hop, hop cleared", || {
            let inner = ack4(b"data");
            check_decap(
                &arriving4(&inner, HOST4, REAL2),
                XDP_TX,
                &forwarded4(&inner, HOST4, REAL2),
                DecapStat::ScForward,
            )
            .map_err(Into::into)
        }),
        Trial::test("decap: v6 no socket here, hop present: forwarded to the hop, hop cleared", || {
            let inner = ack6(b"data6");
            check_decap(
                &arriving6(&inner, HOST6, REAL6_5),
                XDP_TX,
                &forwarded6(&inner, HOST6, REAL6_5),
                DecapStat::ScForward,
            )
            .map_err(Into::into)
        }),
        Trial::test("decap: syn with a hop is delivered here", || {
            let inner = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
            check_decap(&arriving4(&inner, HOST4, REAL2), XDP_PASS, &delivered(&inner), DecapStat::ScDeliverSyn)
                .map_err(Into::into)
        }),
        Trial::test("decap: hop cleared and no socket (neither backend has the flow): delivered to a reset", || {
            let inner = ack4(b"data");
            check_decap(
                &arriving4(&inner, HOST4, Ipv4Addr::UNSPECIFIED),
                XDP_PASS,
                &delivered(&inner),
                DecapStat::ScNoFlow,
            )
            .map_err(Into::into)
        }),
        Trial::test("decap: an established socket for the flow: delivered here", || {
            let (_l, _c, _s, client_port, port) = connection();
            let lo = Ipv4Addr::LOCALHOST;
            let inner = tcp4(lo, lo, client_port, port, pb::TCP_ACK, b"data");
            check_decap(&arriving4(&inner, lo, REAL2), XDP_PASS, &delivered(&inner), DecapStat::ScDeliverSocket)
                .map_err(Into::into)
        }),
        Trial::test("decap: a listener alone is not the flow's socket: forwarded", || {
            let (_l, _c, _s, _client_port, port) = connection();
            let lo = Ipv4Addr::LOCALHOST;
            // Another client port: only the listener matches.
            let inner = tcp4(lo, lo, 1, port, pb::TCP_ACK, b"data");
            check_decap(&arriving4(&inner, lo, REAL2), XDP_TX, &forwarded4(&inner, lo, REAL2), DecapStat::ScForward)
                .map_err(Into::into)
        }),
        Trial::test("decap: udp inside a hop is malformed (the balancer never sends it)", || {
            let inner = udp4(CLIENT4, VIP4, 5353, PORT_DNS, b"query");
            let input = arriving4(&inner, HOST4, REAL2);
            check_decap(&input, XDP_DROP, &input, DecapStat::DropMalformed).map_err(Into::into)
        }),
    ]
}

/// The balancer's output goes to the current backend (no socket), on to
/// the previous one, which delivers exactly the client's packet (here no
/// socket either, so as `sc_no_flow`; the e2e test has real ones).
fn round_trip() -> Result<(), String> {
    let mut bal = world_with_previous(2, 5);
    let inner = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"round trip");
    let (action, sent) = run(&mut bal, &frame4(&inner));
    if action != XDP_TX {
        return Err(format!("balancer action {action}"));
    }
    // First backend: no socket for this flow, so the packet goes on to REAL2.
    let mut first = decap();
    let (action, on, _) = run_prog(first.program(), &sent);
    if action != XDP_TX || on[30..34] != REAL2.octets() || on[26..30] != HOST4.octets() {
        return Err(format!("first backend: action {action}"));
    }
    // Second backend: the hop is cleared, so it never sends it on.
    let mut second = Decap::load().expect("load decap");
    second.add_addr(IpAddr::V4(REAL2)).unwrap();
    let (action, up, _) = run_prog(second.program(), &on);
    if action != XDP_PASS || up[14..] != inner[..] {
        return Err(format!("second backend: action {action}: {}", diff(&up[14..], &inner)));
    }
    if second.stat(DecapStat::ScNoFlow).unwrap().packets != 1 {
        return Err("second backend: not counted as sc_no_flow".into());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut trials = balancer_trials();
    trials.extend(decap_trials());
    trials
        .push(Trial::test("balancer then two backends: the second has the flow", || round_trip().map_err(Into::into)));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
