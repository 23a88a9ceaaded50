//! Packet fixtures for the balancer: each a named input frame, the expected
//! action, the expected output bytes (built independently with pnet_packet)
//! and the one reason counter it must bump. Runs through BPF_PROG_TEST_RUN
//! with `repeat = 1`; needs root. Each fixture is its own test (libtest-mimic):
//! `cargo test -p lb-control --test balancer_fixtures -- "v6 echo"` runs those
//! whose name contains the words.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::*;
use lb_common::{Stat, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use lb_control::dataplane::Balancer;
use lb_testkit::packet_builder as pb;
use libtest_mimic::{Arguments, Trial};

/// What a fixture expects.
enum Expect {
    /// XDP_TX with exactly these bytes.
    Tx(Vec<u8>),
    /// XDP_PASS with the frame untouched.
    Pass,
    /// XDP_DROP.
    Drop,
}

struct Fixture {
    name: &'static str,
    input: Vec<u8>,
    expect: Expect,
    stat: Stat,
    /// Adjusts the standard world before the run.
    setup: Option<fn(&mut Balancer)>,
}

fn fx(name: &'static str, input: Vec<u8>, expect: Expect, stat: Stat) -> Fixture {
    Fixture { name, input, expect, stat, setup: None }
}

const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";

fn syn4() -> Vec<u8> {
    tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[])
}

fn h4tcp() -> u32 {
    encap_hash(CLIENT4.into(), CLIENT_PORT, VIP4.into(), PORT_HTTP, IPPROTO_TCP)
}

fn h6tcp() -> u32 {
    encap_hash(CLIENT6.into(), CLIENT_PORT, VIP6.into(), PORT_HTTP, IPPROTO_TCP)
}

/// A TCP segment of `ip_len` bytes in total (DF as given).
fn big_tcp4(ip_len: usize, df: bool) -> Vec<u8> {
    let payload = vec![0xabu8; ip_len - 40];
    let seg = pb::tcp(CLIENT4.into(), VIP4.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &payload);
    pb::ipv4(CLIENT4, VIP4, IPPROTO_TCP, &seg, &pb::V4 { dont_fragment: df, ..pb::V4::default() })
}

/// The ICMP "fragmentation needed" the balancer must answer `orig` (an IPv4
/// packet from the client) with: from the VIP, quoting as much of the
/// packet as a 576-byte reply holds (in whole words), next-hop MTU as given.
fn expect_frag_needed(orig: &[u8], mtu: u16) -> Vec<u8> {
    let quote = &orig[..orig.len().min(576 - 28) & !3];
    let mut rest = [0u8; 4];
    rest[2..].copy_from_slice(&mtu.to_be_bytes());
    let icmp = pb::icmp4(3, 4, rest, quote);
    let ip = pb::ipv4(VIP4, CLIENT4, IPPROTO_ICMP, &icmp, &pb::V4 { id: 0, dont_fragment: false, ..pb::V4::default() });
    pb::eth(ROUTER_MAC, IF_MAC, 0x0800, &ip)
}

fn expect_pkt_too_big(orig: &[u8], vip: Ipv6Addr, mtu: u32, quote_len: usize) -> Vec<u8> {
    let icmp = pb::icmp6(vip, CLIENT6, 2, 0, mtu.to_be_bytes(), &orig[..quote_len]);
    pb::eth(ROUTER_MAC, IF_MAC, 0x86DD, &pb::ipv6(vip, CLIENT6, IPPROTO_ICMPV6, &icmp, 0))
}

/// An ICMP error from a router on the path back to the client, about a
/// packet the backend sent from the VIP: `quoted` is that packet.
fn icmp4_error_about(kind: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let icmp = pb::icmp4(kind, code, rest, quoted);
    pb::ipv4(router, VIP4, IPPROTO_ICMP, &icmp, &pb::V4::default())
}

fn fixtures() -> Vec<Fixture> {
    use Expect::*;
    let mut v = Vec::new();

    // --- Forwarding: IPv4-in-IPv4 -------------------------------------
    let ip = syn4();
    v.push(fx(
        "v4 tcp syn to vip: ipip to its backend",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL1, h4tcp())),
        Stat::TxEncap,
    ));
    let ip = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK | pb::TCP_PSH, PAYLOAD);
    v.push(fx(
        "v4 tcp data to vip (connection-table miss)",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL1, h4tcp())),
        Stat::TxEncap,
    ));
    let ip = udp4(CLIENT4, VIP4, 5353, PORT_DNS, b"dns query");
    v.push(fx(
        "v4 udp to vip",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL2, encap_hash(CLIENT4.into(), 5353, VIP4.into(), PORT_DNS, IPPROTO_UDP))),
        Stat::TxEncap,
    ));
    let seg = pb::tcp(CLIENT4.into(), VIP4.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, PAYLOAD);
    let ip = pb::ipv4(CLIENT4, VIP4, IPPROTO_TCP, &seg, &pb::V4 { tos: 0xb8, ..pb::V4::default() });
    v.push(fx(
        "v4 tos is carried to the outer header",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL1, h4tcp())),
        Stat::TxEncap,
    ));
    let ip = pb::ipv4(CLIENT4, VIP4, IPPROTO_TCP, &seg, &pb::V4 { dont_fragment: false, ..pb::V4::default() });
    v.push(fx("v4 without DF: outer without DF", frame4(&ip), Tx(expect_ipip4(&ip, REAL1, h4tcp())), Stat::TxEncap));
    let opts = vec![0x07, 0x07, 0x04, 0, 0, 0, 0, 0x01]; // record route (7 bytes) + NOP
    let ip = pb::ipv4(CLIENT4, VIP4, IPPROTO_TCP, &seg, &pb::V4 { options: opts, ..pb::V4::default() });
    v.push(fx(
        "v4 with options (IHL 7) is forwarded whole",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL1, h4tcp())),
        Stat::TxEncap,
    ));
    let ip = syn4();
    let mut want = expect_ipip4(&ip, REAL1, h4tcp());
    want = pb::eth_vlan(GW_MAC, IF_MAC, 0x0064, 0x0800, &want[14..]);
    v.push(fx(
        "v4 behind an 802.1Q tag: tag kept",
        pb::eth_vlan(IF_MAC, ROUTER_MAC, 0x0064, 0x0800, &ip),
        Tx(want),
        Stat::TxEncap,
    ));
    let ip = tcp4(CLIENT4, VIP4_ANYPORT, CLIENT_PORT, 8443, pb::TCP_SYN, &[]);
    v.push(fx(
        "v4 to an every-port vip",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL3, encap_hash(CLIENT4.into(), CLIENT_PORT, VIP4_ANYPORT.into(), 8443, IPPROTO_TCP))),
        Stat::TxEncap,
    ));
    let ip = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &[]);
    let mut padded = frame4(&ip);
    padded.resize(60, 0);
    // The padding is not part of the IP packet: it stays behind.
    let want = expect_ipip4(&ip, REAL1, h4tcp());
    v.push(fx("v4 minimum frame with ethernet padding", padded, Tx(want), Stat::TxEncap));

    // --- Forwarding: IPv6-in-IPv6 and IPv4-in-IPv6 ----------------------
    let ip = tcp6(CLIENT6, VIP6, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    v.push(fx("v6 tcp syn to vip: ip6ip6", frame6(&ip), Tx(expect_ip6tnl(&ip, REAL6_4, h6tcp())), Stat::TxEncap));
    let ip = udp6(CLIENT6, VIP6, 5353, PORT_DNS, b"dns query");
    v.push(fx(
        "v6 udp to vip",
        frame6(&ip),
        Tx(expect_ip6tnl(&ip, REAL6_5, encap_hash(CLIENT6.into(), 5353, VIP6.into(), PORT_DNS, IPPROTO_UDP))),
        Stat::TxEncap,
    ));
    let seg = pb::tcp(CLIENT6.into(), VIP6.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, PAYLOAD);
    let ip = pb::ipv6(CLIENT6, VIP6, IPPROTO_TCP, &seg, 0x2e);
    v.push(fx(
        "v6 traffic class is carried to the outer header",
        frame6(&ip),
        Tx(expect_ip6tnl(&ip, REAL6_4, h6tcp())),
        Stat::TxEncap,
    ));
    let ip = pb::ipv6(CLIENT6, VIP6, 0, &pb::ipv6_ext(IPPROTO_TCP, 0, &seg), 0);
    v.push(fx("v6 with hop-by-hop header", frame6(&ip), Tx(expect_ip6tnl(&ip, REAL6_4, h6tcp())), Stat::TxEncap));
    let ip = pb::ipv6(CLIENT6, VIP6, 60, &pb::ipv6_ext(43, 1, &pb::ipv6_ext(IPPROTO_TCP, 0, &seg)), 0);
    v.push(fx(
        "v6 with destination-options and routing headers",
        frame6(&ip),
        Tx(expect_ip6tnl(&ip, REAL6_4, h6tcp())),
        Stat::TxEncap,
    ));
    let ip = tcp6(CLIENT6, VIP6, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    let want = expect_ip6tnl(&ip, REAL6_4, h6tcp());
    v.push(fx(
        "v6 behind an 802.1Q tag",
        pb::eth_vlan(IF_MAC, ROUTER_MAC, 0x0fff, 0x86DD, &ip),
        Tx(pb::eth_vlan(GW_MAC, IF_MAC, 0x0fff, 0x86DD, &want[14..])),
        Stat::TxEncap,
    ));
    let ip = tcp4(CLIENT4, VIP4_V6REAL, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    let h = encap_hash(CLIENT4.into(), CLIENT_PORT, VIP4_V6REAL.into(), PORT_HTTP, IPPROTO_TCP);
    v.push(fx("v4 vip with v6 backend: ipip6", frame4(&ip), Tx(expect_ip6tnl(&ip, REAL6_4, h)), Stat::TxEncap));

    // --- ICMP ----------------------------------------------------------
    let echo = pb::icmp4(8, 0, [0x12, 0x34, 0, 1], b"ping payload");
    let ip = pb::ipv4(CLIENT4, VIP4, IPPROTO_ICMP, &echo, &pb::V4 { ttl: 63, ..pb::V4::default() });
    let reply = pb::ipv4(
        VIP4,
        CLIENT4,
        IPPROTO_ICMP,
        &pb::icmp4(0, 0, [0x12, 0x34, 0, 1], b"ping payload"),
        &pb::V4::default(),
    );
    v.push(fx(
        "v4 echo request to vip is answered",
        frame4(&ip),
        Tx(pb::eth(ROUTER_MAC, IF_MAC, 0x0800, &reply)),
        Stat::TxIcmpEchoReply,
    ));
    let echo = pb::icmp6(CLIENT6, VIP6, 128, 0, [0, 7, 0, 1], b"ping6");
    let ip = pb::ipv6(CLIENT6, VIP6, IPPROTO_ICMPV6, &echo, 0);
    let reply = pb::ipv6(VIP6, CLIENT6, IPPROTO_ICMPV6, &pb::icmp6(VIP6, CLIENT6, 129, 0, [0, 7, 0, 1], b"ping6"), 0);
    v.push(fx(
        "v6 echo request to vip is answered",
        frame6(&ip),
        Tx(pb::eth(ROUTER_MAC, IF_MAC, 0x86DD, &reply)),
        Stat::TxIcmpEchoReply,
    ));
    let ip = pb::ipv4(CLIENT4, OTHER4, IPPROTO_ICMP, &pb::icmp4(8, 0, [0, 1, 0, 1], b"x"), &pb::V4::default());
    v.push(fx("v4 echo request to a non-vip is passed", frame4(&ip), Pass, Stat::PassNonVip));
    // The backend answered from VIP4:80 to the client; a router says the
    // path needs smaller packets. The error must reach the same backend.
    let from_backend = tcp4(VIP4, CLIENT4, PORT_HTTP, CLIENT_PORT, pb::TCP_ACK, &[0u8; 8]);
    let ip = icmp4_error_about(3, 4, [0, 0, 0x05, 0x00], &from_backend[..28]);
    v.push(fx(
        "v4 frag-needed about a vip flow follows the flow",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL1, h4tcp())),
        Stat::TxEncap,
    ));
    let ip = icmp4_error_about(3, 3, [0; 4], &from_backend[..28]);
    v.push(fx(
        "v4 port-unreachable about a vip flow follows the flow",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL1, h4tcp())),
        Stat::TxEncap,
    ));
    let not_vip = tcp4(OTHER4, CLIENT4, PORT_HTTP, CLIENT_PORT, pb::TCP_ACK, &[]);
    let ip = icmp4_error_about(3, 4, [0, 0, 0x05, 0x00], &not_vip[..28]);
    v.push(fx("v4 icmp error about a non-vip flow is passed", frame4(&ip), Pass, Stat::PassNonVip));
    let ip = icmp4_error_about(11, 0, [0; 4], &from_backend[..28]);
    v.push(fx("v4 time-exceeded is left to the kernel", frame4(&ip), Pass, Stat::PassIcmpOther));
    let from_backend6 = tcp6(VIP6, CLIENT6, PORT_HTTP, CLIENT_PORT, pb::TCP_ACK, &[0u8; 8]);
    let router6 = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
    let icmp = pb::icmp6(router6, VIP6, 2, 0, 1280u32.to_be_bytes(), &from_backend6[..48]);
    let ip = pb::ipv6(router6, VIP6, IPPROTO_ICMPV6, &icmp, 0);
    v.push(fx(
        "v6 packet-too-big about a vip flow follows the flow",
        frame6(&ip),
        Tx(expect_ip6tnl(&ip, REAL6_4, h6tcp())),
        Stat::TxEncap,
    ));
    let ns = pb::icmp6(CLIENT6, VIP6, 135, 0, [0; 4], &VIP6.octets());
    let ip = pb::ipv6(CLIENT6, VIP6, IPPROTO_ICMPV6, &ns, 0);
    v.push(fx("v6 neighbour solicitation is left to the kernel", frame6(&ip), Pass, Stat::PassIcmpOther));

    // --- Too big once encapsulated ---------------------------------------
    let ip = big_tcp4(1500, true);
    v.push(fx(
        "v4 1500 bytes with DF: frag-needed back, mtu 1480",
        frame4(&ip),
        Tx(expect_frag_needed(&ip, 1480)),
        Stat::TxIcmpTooBig,
    ));
    let ip = big_tcp4(1481, true);
    v.push(fx(
        "v4 one byte over: frag-needed back",
        frame4(&ip),
        Tx(expect_frag_needed(&ip, 1480)),
        Stat::TxIcmpTooBig,
    ));
    let ip = big_tcp4(1480, true);
    v.push(fx(
        "v4 exactly the largest size that fits is forwarded",
        frame4(&ip),
        Tx(expect_ipip4(&ip, REAL1, h4tcp())),
        Stat::TxEncap,
    ));
    let ip = big_tcp4(1500, false);
    v.push(fx("v4 too big without DF is dropped", frame4(&ip), Drop, Stat::DropTooBig));
    let seg = pb::tcp(CLIENT6.into(), VIP6.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &vec![0xcd; 1440]);
    let ip = pb::ipv6(CLIENT6, VIP6, IPPROTO_TCP, &seg, 0);
    v.push(fx(
        "v6 1500 bytes: packet-too-big back, mtu 1460",
        frame6(&ip),
        Tx(expect_pkt_too_big(&ip, VIP6, 1460, 1280 - 48)),
        Stat::TxIcmpTooBig,
    ));

    // --- Passed to the kernel ---------------------------------------------
    let ip = tcp4(CLIENT4, OTHER4, CLIENT_PORT, 22, pb::TCP_SYN, &[]);
    v.push(fx("v4 tcp to a non-vip address", frame4(&ip), Pass, Stat::PassNonVip));
    let ip = tcp4(CLIENT4, VIP4, CLIENT_PORT, 443, pb::TCP_SYN, &[]);
    v.push(fx("v4 tcp to a vip address on another port", frame4(&ip), Pass, Stat::PassNonVip));
    let ip = udp4(CLIENT4, VIP4, 5353, PORT_HTTP, b"x");
    v.push(fx("v4 udp to a tcp-only vip port", frame4(&ip), Pass, Stat::PassNonVip));
    let ip = tcp6(CLIENT6, OTHER6, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    v.push(fx("v6 tcp to a non-vip address", frame6(&ip), Pass, Stat::PassNonVip));
    // An address whose VIP-filter bit is a VIP's: the map lookup decides.
    let vip_bit = lb_common::vip_filter_bit(&lb_common::addr_v4(VIP4.octets()));
    let twin = (1..u32::MAX)
        .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
        .find(|a| *a != VIP4 && lb_common::vip_filter_bit(&lb_common::addr_v4(a.octets())) == vip_bit)
        .unwrap();
    let ip = tcp4(CLIENT4, twin, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    v.push(fx("v4 to a non-vip address sharing a vip's filter bit", frame4(&ip), Pass, Stat::PassNonVip));
    let arp = {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&ROUTER_MAC);
        a.extend_from_slice(&CLIENT4.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&VIP4.octets());
        a
    };
    v.push(fx("arp is passed", pb::eth([0xff; 6], ROUTER_MAC, 0x0806, &arp), Pass, Stat::PassNonIp));
    v.push(fx(
        "lldp is passed",
        pb::eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], ROUTER_MAC, 0x88cc, &[0u8; 46]),
        Pass,
        Stat::PassNonIp,
    ));
    let ip = syn4();
    let inner_tag = pb::eth_vlan(IF_MAC, ROUTER_MAC, 0x0064, 0x8100, &[&[0x00u8, 0x65, 0x08, 0x00][..], &ip].concat());
    v.push(fx("double-tagged (q-in-q) frame is passed", inner_tag, Pass, Stat::PassNonIp));
    let seg = pb::tcp(CLIENT4.into(), VIP4.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, PAYLOAD);
    let ip = pb::ipv4(
        CLIENT4,
        VIP4,
        IPPROTO_TCP,
        &seg,
        &pb::V4 { dont_fragment: false, more_fragments: true, ..pb::V4::default() },
    );
    v.push(fx("v4 first fragment is passed", frame4(&ip), Pass, Stat::PassFragment));
    let ip = pb::ipv4(
        CLIENT4,
        VIP4,
        IPPROTO_TCP,
        &seg[8..],
        &pb::V4 { dont_fragment: false, fragment_offset: 1, ..pb::V4::default() },
    );
    v.push(fx("v4 later fragment is passed", frame4(&ip), Pass, Stat::PassFragment));
    let seg6 = pb::tcp(CLIENT6.into(), VIP6.into(), CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, PAYLOAD);
    let ip = pb::ipv6(CLIENT6, VIP6, 44, &pb::ipv6_frag(IPPROTO_TCP, 0, true, 77, &seg6), 0);
    v.push(fx("v6 fragment is passed", frame6(&ip), Pass, Stat::PassFragment));
    let ip = pb::ipv4(CLIENT4, VIP4, 47, &[0u8; 24], &pb::V4::default());
    v.push(fx("v4 gre to a vip address is passed", frame4(&ip), Pass, Stat::PassUnsupportedProto));
    let deep = (0..5).fold(seg6.clone(), |rest, i| pb::ipv6_ext(if i == 0 { IPPROTO_TCP } else { 60 }, 0, &rest));
    let ip = pb::ipv6(CLIENT6, VIP6, 60, &deep, 0);
    v.push(fx("v6 with five extension headers is passed", frame6(&ip), Pass, Stat::PassIpv6ExtUnsupported));
    let mut f = fx("nothing is balanced before the config is ready", frame4(&syn4()), Pass, Stat::PassNotReady);
    f.setup = Some(|bal| {
        let mut cfg = bal.config().unwrap();
        cfg.flags = 0;
        bal.set_config(&cfg).unwrap();
    });
    v.push(f);

    // --- Dropped: malformed and truncated ---------------------------------
    v.push(fx("vlan tag cut off", pb::eth(IF_MAC, ROUTER_MAC, 0x8100, &[0x00, 0x64]), Drop, Stat::DropTruncated));
    v.push(fx("v4 header cut at 10 bytes", frame4(&syn4()[..10]), Drop, Stat::DropTruncated));
    let ip6 = tcp6(CLIENT6, VIP6, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    v.push(fx("v6 header cut at 30 bytes", frame6(&ip6[..30]), Drop, Stat::DropTruncated));
    let mut ip = syn4();
    ip.truncate(30);
    ip[2..4].copy_from_slice(&30u16.to_be_bytes());
    v.push(fx("tcp header cut at 10 bytes", frame4(&fix_csum4(ip)), Drop, Stat::DropTruncated));
    let mut ip = udp4(CLIENT4, VIP4, 5353, PORT_DNS, b"");
    ip.truncate(24);
    ip[2..4].copy_from_slice(&24u16.to_be_bytes());
    v.push(fx("udp header cut at 4 bytes", frame4(&fix_csum4(ip)), Drop, Stat::DropTruncated));
    let ip = pb::ipv4(CLIENT4, VIP4, IPPROTO_ICMP, &[8, 0, 0, 0], &pb::V4::default());
    v.push(fx("icmp header cut at 4 bytes", frame4(&ip), Drop, Stat::DropTruncated));
    let ip = pb::ipv6(CLIENT6, VIP6, 0, &[IPPROTO_TCP], 0);
    v.push(fx("v6 extension header cut", frame6(&ip), Drop, Stat::DropTruncated));
    let mut ip = syn4();
    ip[0] = 0x4f; // IHL 15: 60 bytes of header, the frame has 40
    v.push(fx("v4 ihl beyond the frame", frame4(&fix_csum4(ip)), Drop, Stat::DropTruncated));
    let mut ip = syn4();
    ip[0] = 0x44;
    v.push(fx("v4 ihl 4 is invalid", frame4(&fix_csum4(ip)), Drop, Stat::DropBadIhl));
    let mut ip = syn4();
    ip[0] = 0x65;
    v.push(fx("ipv4 ethertype with version 6 header", frame4(&ip), Drop, Stat::DropBadVersion));
    let mut ip = syn4();
    ip[2..4].copy_from_slice(&100u16.to_be_bytes());
    v.push(fx("v4 total length beyond the frame", frame4(&fix_csum4(ip)), Drop, Stat::DropBadTotalLen));
    let mut ip = syn4();
    ip[2..4].copy_from_slice(&16u16.to_be_bytes());
    v.push(fx("v4 total length below the header", frame4(&fix_csum4(ip)), Drop, Stat::DropBadTotalLen));
    let mut ip = tcp6(CLIENT6, VIP6, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    ip[4..6].copy_from_slice(&200u16.to_be_bytes());
    v.push(fx("v6 payload length beyond the frame", frame6(&ip), Drop, Stat::DropBadTotalLen));
    let mut ip = syn4();
    ip[32] = 0x30; // data offset 3
    v.push(fx("tcp data offset 3 is invalid", frame4(&ip), Drop, Stat::DropBadL4Header));

    // --- Dropped: no usable backend ---------------------------------------
    let ip = tcp4(CLIENT4, VIP4_EMPTY, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    v.push(fx("vip with an empty ring slot", frame4(&ip), Drop, Stat::DropNoBackend));
    let ip = tcp4(CLIENT4, VIP4_UNKNOWN, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    v.push(fx("ring names an unknown backend index", frame4(&ip), Drop, Stat::DropUnknownReal));
    let ip = tcp6(CLIENT6, VIP6_V4REAL, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    v.push(fx("v6 vip with a v4 backend", frame6(&ip), Drop, Stat::DropFamilyMismatch));
    let mut f = fx(
        "backend removed: the flow's table entry is stale, the ring decides",
        frame4(&tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, PAYLOAD)),
        Tx(expect_ipip4(&tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, PAYLOAD), REAL1, h4tcp())),
        Stat::TxEncap,
    );
    f.setup = Some(|bal| {
        // The flow was pinned to backend 3, which has since been removed.
        let flow = lb_common::FlowKey::new(
            lb_common::FAMILY_V4,
            IPPROTO_TCP,
            lb_common::addr_v4(CLIENT4.octets()),
            net16(CLIENT_PORT),
            lb_common::addr_v4(VIP4.octets()),
            net16(PORT_HTTP),
        );
        bal.set_conn(&flow, &lb_common::ConnEntry { real: 3 }).unwrap();
        bal.clear_real(3).unwrap();
    });
    v.push(f);
    v
}

/// Recomputes the IPv4 header checksum after a fixture broke a field, so
/// the only defect is the intended one.
fn fix_csum4(mut ip: Vec<u8>) -> Vec<u8> {
    let ihl = ((ip[0] & 0x0f) as usize * 4).clamp(20, ip.len());
    ip[10] = 0;
    ip[11] = 0;
    let sum: u32 = ip[..ihl].chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    ip
}

fn check(f: &Fixture) -> Result<(), String> {
    let mut bal = world();
    if let Some(setup) = f.setup {
        setup(&mut bal);
    }
    let before = snapshot(&bal);
    let (action, out) = run(&mut bal, &f.input);
    let (want_action, want_bytes) = match &f.expect {
        Expect::Tx(bytes) => (XDP_TX, Some(bytes.as_slice())),
        Expect::Pass => (XDP_PASS, Some(f.input.as_slice())),
        Expect::Drop => (XDP_DROP, None),
    };
    if action != want_action {
        return Err(format!("action {action}, want {want_action}"));
    }
    if let Some(want) = want_bytes {
        if out != want {
            return Err(format!("output differs: {}", diff(&out, want)));
        }
    }
    // Exactly one reason counter moves, by one packet of the input's size;
    // event counters (connection-table misses) may move too.
    let moved = changed(&before, &snapshot(&bal));
    let reasons: Vec<_> = moved.iter().filter(|(s, ..)| s.action() != lb_common::Action::Event).collect();
    match reasons.as_slice() {
        [(stat, 1, bytes)] if *stat == f.stat && *bytes == f.input.len() as u64 => Ok(()),
        other => Err(format!("counters moved {other:?}, want {:?} by one packet of {} bytes", f.stat, f.input.len())),
    }
}

/// One test per fixture, named after it, so `cargo test NAME` selects
/// fixtures and the runner counts them; plus the check that names are unique.
fn main() -> std::process::ExitCode {
    let fixtures = fixtures();
    let mut names: Vec<_> = fixtures.iter().map(|f| f.name).collect();
    let mut trials = vec![Trial::test("fixture names are unique", move || {
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        if names.len() == n {
            Ok(())
        } else {
            Err(format!("{} fixture name(s) repeated", n - names.len()).into())
        }
    })];
    trials.extend(fixtures.into_iter().map(|f| Trial::test(f.name, move || check(&f).map_err(Into::into))));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
