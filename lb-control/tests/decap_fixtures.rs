//! Packet fixtures for the backends' decap program, and the round trip:
//! whatever the balancer sends, decap turns back into the client's packet.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::*;
use lb_common::{Counter, DecapStat};
use lb_control::dataplane::Decap;
use lb_testkit::packet_builder as pb;
use libtest_mimic::{Arguments, Trial};

/// The backend's own addresses: outer destinations it decapsulates for.
const HOST4: Ipv4Addr = REAL1;
const HOST6: Ipv6Addr = REAL6_4;
const BACKEND_MAC: pb::Mac = [0x02, 0, 0, 0, 0, 0x10];

fn decap() -> Decap {
    let mut d = Decap::load().expect("load decap (needs root and BPF)");
    d.add_addr(IpAddr::V4(HOST4)).unwrap();
    d.add_addr(IpAddr::V6(HOST6)).unwrap();
    d
}

fn inner4() -> Vec<u8> {
    tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"hello backend")
}

fn inner6() -> Vec<u8> {
    tcp6(CLIENT6, VIP6, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"hello backend")
}

/// What the router delivers to the backend: the balancer's output with the
/// Ethernet header rewritten for the last hop.
fn tunnelled(outer_src: IpAddr, dst: IpAddr, inner: &[u8]) -> Vec<u8> {
    let inner_v4 = inner[0] >> 4 == 4;
    let proto = if inner_v4 { 4 } else { 41 };
    match (outer_src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pb::eth(BACKEND_MAC, ROUTER_MAC, 0x0800, &pb::ipv4(s, d, proto, inner, &pb::V4::default()))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => pb::eth(BACKEND_MAC, ROUTER_MAC, 0x86DD, &pb::ipv6(s, d, proto, inner, 0)),
        _ => unreachable!(),
    }
}

fn inner_frame(inner: &[u8]) -> Vec<u8> {
    let ether_type = if inner[0] >> 4 == 4 { 0x0800 } else { 0x86DD };
    pb::eth(BACKEND_MAC, ROUTER_MAC, ether_type, inner)
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    /// Expected XDP action and output (`None`: the input, untouched).
    action: u32,
    output: Option<Vec<u8>>,
    stat: DecapStat,
}

fn cases() -> Vec<Case> {
    let src4: IpAddr = outer_src4(1).into();
    let src6: IpAddr = outer_src6(1).into();
    let mut v = vec![
        Case {
            name: "ipv4-in-ipv4 to this host is decapsulated",
            input: tunnelled(src4, HOST4.into(), &inner4()),
            action: XDP_PASS,
            output: Some(inner_frame(&inner4())),
            stat: DecapStat::DecapV4,
        },
        Case {
            name: "ipv6-in-ipv6 to this host is decapsulated",
            input: tunnelled(src6, HOST6.into(), &inner6()),
            action: XDP_PASS,
            output: Some(inner_frame(&inner6())),
            stat: DecapStat::DecapV6,
        },
        Case {
            name: "ipv4-in-ipv6 to this host is decapsulated",
            input: tunnelled(src6, HOST6.into(), &inner4()),
            action: XDP_PASS,
            output: Some(inner_frame(&inner4())),
            stat: DecapStat::DecapV6,
        },
        Case {
            name: "vlan-tagged tunnel keeps its tag",
            input: {
                let f = tunnelled(src4, HOST4.into(), &inner4());
                pb::eth_vlan(BACKEND_MAC, ROUTER_MAC, 0x0123, 0x0800, &f[14..])
            },
            action: XDP_PASS,
            output: Some(pb::eth_vlan(BACKEND_MAC, ROUTER_MAC, 0x0123, 0x0800, &inner4())),
            stat: DecapStat::DecapV4,
        },
        Case {
            name: "tunnel to another host is left alone",
            input: tunnelled(src4, REAL2.into(), &inner4()),
            action: XDP_PASS,
            output: None,
            stat: DecapStat::PassNotLocal,
        },
        Case {
            name: "plain tcp is left alone",
            input: frame4(&inner4()),
            action: XDP_PASS,
            output: None,
            stat: DecapStat::PassNotEncap,
        },
        Case {
            name: "arp is left alone",
            input: pb::eth([0xff; 6], ROUTER_MAC, 0x0806, &[0u8; 28]),
            action: XDP_PASS,
            output: None,
            stat: DecapStat::PassNotEncap,
        },
        Case {
            name: "fragmented tunnel packet goes to the kernel",
            input: {
                let ip = pb::ipv4(
                    outer_src4(1),
                    HOST4,
                    4,
                    &inner4(),
                    &pb::V4 { dont_fragment: false, more_fragments: true, ..pb::V4::default() },
                );
                pb::eth(BACKEND_MAC, ROUTER_MAC, 0x0800, &ip)
            },
            action: XDP_PASS,
            output: None,
            stat: DecapStat::PassFragment,
        },
        Case {
            name: "inner header of the wrong version is dropped",
            input: {
                // The outer header says IPv4 inside; the inner says 6.
                let mut inner = inner4();
                inner[0] = 0x65;
                let ip = pb::ipv4(outer_src4(1), HOST4, 4, &inner, &pb::V4::default());
                pb::eth(BACKEND_MAC, ROUTER_MAC, 0x0800, &ip)
            },
            action: XDP_DROP,
            output: None,
            stat: DecapStat::DropMalformed,
        },
        Case {
            name: "inner header cut short is dropped",
            input: tunnelled(src4, HOST4.into(), &inner4()[..12]),
            action: XDP_DROP,
            output: None,
            stat: DecapStat::DropTruncated,
        },
        Case {
            // Too short to tell whether it is a tunnel to this host: the
            // kernel's to judge.
            name: "outer header cut short is passed",
            input: tunnelled(src4, HOST4.into(), &inner4())[..24].to_vec(),
            action: XDP_PASS,
            output: None,
            stat: DecapStat::PassNotEncap,
        },
    ];
    // An outer IPv4 header with IHL 6 (4 bytes of options).
    let opts = pb::V4 { options: vec![1, 1, 1, 0], ..pb::V4::default() };
    v.push(Case {
        name: "outer ipv4 with options is decapsulated",
        input: pb::eth(BACKEND_MAC, ROUTER_MAC, 0x0800, &pb::ipv4(outer_src4(1), HOST4, 4, &inner4(), &opts)),
        action: XDP_PASS,
        output: Some(inner_frame(&inner4())),
        stat: DecapStat::DecapV4,
    });
    v
}

fn counters(d: &Decap) -> Vec<(DecapStat, Counter)> {
    d.all_stats().unwrap()
}

fn check(c: &Case) -> Result<(), String> {
    let mut d = decap();
    let before = counters(&d);
    let (action, out, _) = run_prog(d.program(), &c.input);
    let want = c.output.as_deref().unwrap_or(&c.input);
    let after = counters(&d);
    let moved: Vec<_> =
        before.iter().zip(&after).filter(|(b, a)| b.1 != a.1).map(|(b, a)| (b.0, a.1.packets - b.1.packets)).collect();
    if action != c.action {
        Err(format!("action {action}, want {}", c.action))
    } else if action == XDP_PASS && out != want {
        Err(format!("output differs: {}", diff(&out, want)))
    } else if moved != [(c.stat, 1)] {
        Err(format!("counters moved {moved:?}, want {:?}", c.stat))
    } else {
        Ok(())
    }
}

/// One test per fixture, named after it, plus the round trip.
fn main() -> std::process::ExitCode {
    let mut trials = vec![Trial::test("balancer then decap round trip", || {
        balancer_then_decap_round_trip();
        Ok(())
    })];
    trials.extend(cases().into_iter().map(|c| Trial::test(c.name, move || check(&c).map_err(Into::into))));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// The balancer's output, delivered to the backend, decapsulates to exactly
/// the packet the client sent: for IPv4-in-IPv4, IPv6-in-IPv6 and
/// IPv4-in-IPv6, with and without a VLAN tag.
fn balancer_then_decap_round_trip() {
    let mut bal = world();
    let mut d = decap();
    // One decap program standing in for every backend the world has.
    for real in [REAL2, REAL3] {
        d.add_addr(IpAddr::V4(real)).unwrap();
    }
    d.add_addr(IpAddr::V6(REAL6_5)).unwrap();
    let packets: Vec<(&str, Vec<u8>)> = vec![
        ("v4 tcp", frame4(&inner4())),
        ("v6 tcp", frame6(&inner6())),
        ("v4 udp", frame4(&udp4(CLIENT4, VIP4, 5353, PORT_DNS, b"query"))),
        ("v4 to v6 backend", frame4(&tcp4(CLIENT4, VIP4_V6REAL, 1234, PORT_HTTP, pb::TCP_SYN, &[]))),
        ("v4 vlan", pb::eth_vlan(IF_MAC, ROUTER_MAC, 7, 0x0800, &inner4())),
    ];
    for (name, input) in packets {
        let (action, sent) = run(&mut bal, &input);
        assert_eq!(action, XDP_TX, "{name}: balancer action");
        let (action, got, _) = run_prog(d.program(), &sent);
        assert_eq!(action, XDP_PASS, "{name}: decap action");
        // Same L3 packet; the MACs are the hop's.
        let l2 = if input[12..14] == [0x81, 0x00] { 18 } else { 14 };
        assert_eq!(got[l2..], input[l2..], "{name}: {}", diff(&got[l2..], &input[l2..]));
        assert_eq!(got[..6], GW_MAC, "{name}: destination MAC");
        assert_eq!(got[12..l2], input[12..l2], "{name}: ethertype/tag");
    }
}
