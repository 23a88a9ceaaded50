//! Shared harness of the BPF_PROG_TEST_RUN fixture tests: a standard "world"
//! of VIPs and backends, packet runners, and expected-output builders that
//! construct frames independently of the data plane (with pnet_packet).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::{
    addr_v4, addr_v6, flow_hash, Counter, LbConfig, Real, Stat, VipKey, VipMeta, CFG_F_HAS_PORT0_VIPS, CFG_F_READY,
    FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, VIP_F_ICMP_ECHO,
};
use lb_control::dataplane::{Balancer, Limits};
use lb_testkit::packet_builder::{self as pb, Mac};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const GW_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const IF_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The router that delivers client traffic to the balancer.
pub const ROUTER_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x03];
pub const MTU: u32 = 1500;

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
pub const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
pub const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0x99);

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0x10);
/// IPv4 VIP served by an IPv6 backend (IPv4-in-IPv6).
pub const VIP4_V6REAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
/// Every TCP port of this address.
pub const VIP4_ANYPORT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);
/// A VIP whose ring is empty.
pub const VIP4_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 40);
/// A VIP whose ring names a backend index that was never set.
pub const VIP4_UNKNOWN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 41);
/// An IPv6 VIP (wrongly) served by an IPv4 backend.
pub const VIP6_V4REAL: Ipv6Addr = Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0x41);

pub const REAL1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub const REAL2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const REAL3: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
pub const REAL6_4: Ipv6Addr = Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 1);
pub const REAL6_5: Ipv6Addr = Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 2);
/// A backend index the ring of VIP4_UNKNOWN names but no backend occupies.
pub const UNKNOWN_REAL_INDEX: u32 = 9;

pub const ENCAP_SRC4: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 0);
pub const ENCAP_SRC6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xffff, 0, 0, 0, 0, 0, 0);

pub const PORT_HTTP: u16 = 80;
pub const PORT_DNS: u16 = 53;
pub const CLIENT_PORT: u16 = 40000;

/// A small ring keeps the fixtures fast; the default size (65537) is used
/// by the Maglev and distribution tests.
pub fn limits() -> Limits {
    Limits { ring_size: 65537, max_vips: 16, max_reals: 16, conn_table_size: 4096 }
}

pub fn config() -> LbConfig {
    LbConfig {
        flags: CFG_F_READY | CFG_F_HAS_PORT0_VIPS,
        mtu: MTU,
        gw_mac: GW_MAC,
        if_mac: IF_MAC,
        src_v4: u32::from_ne_bytes(ENCAP_SRC4.octets()),
        src_v4_mask: u32::from_ne_bytes([0, 0, 255, 255]),
        src_v6: addr_v6(ENCAP_SRC6.octets()),
        src_v6_mask: [0, 0, 0, u32::MAX],
        syn_flood_threshold: 0,
    }
}

pub fn real4(a: Ipv4Addr) -> Real {
    Real { addr: addr_v4(a.octets()), family: FAMILY_V4, _pad: [0; 3] }
}

pub fn real6(a: Ipv6Addr) -> Real {
    Real { addr: addr_v6(a.octets()), family: FAMILY_V6, _pad: [0; 3] }
}

pub fn net16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

pub fn vip_key(addr: IpAddr, port: u16, proto: u8) -> VipKey {
    match addr {
        IpAddr::V4(a) => VipKey { addr: addr_v4(a.octets()), port: net16(port), proto, family: FAMILY_V4 },
        IpAddr::V6(a) => VipKey { addr: addr_v6(a.octets()), port: net16(port), proto, family: FAMILY_V6 },
    }
}

/// VIP numbers (= ring numbers) of the standard world.
pub mod vipnum {
    pub const TCP4: u32 = 0;
    pub const UDP4: u32 = 1;
    pub const TCP6: u32 = 2;
    pub const UDP6: u32 = 3;
    pub const V4_V6REAL: u32 = 4;
    pub const ANYPORT: u32 = 5;
    pub const EMPTY: u32 = 6;
    pub const UNKNOWN: u32 = 7;
    pub const V6_V4REAL: u32 = 8;
}

/// A balancer loaded with the standard world: every VIP's ring holds a
/// single backend, so a fixture's expected backend does not depend on the
/// hash (the distribution tests fill rings with several).
pub fn world() -> Balancer {
    let mut bal = Balancer::load(limits()).expect("load balancer (needs root and BPF)");
    // One VIP-table publish for the whole world, not one per VIP.
    bal.defer_vip_publishing(true).unwrap();
    bal.set_config(&config()).unwrap();
    bal.set_real(1, &real4(REAL1)).unwrap();
    bal.set_real(2, &real4(REAL2)).unwrap();
    bal.set_real(3, &real4(REAL3)).unwrap();
    bal.set_real(4, &real6(REAL6_4)).unwrap();
    bal.set_real(5, &real6(REAL6_5)).unwrap();
    let size = bal.limits().ring_size as usize;
    let vips: [(IpAddr, u16, u8, u32, u32, u32); 9] = [
        (VIP4.into(), PORT_HTTP, IPPROTO_TCP, vipnum::TCP4, 1, 0),
        (VIP4.into(), PORT_DNS, IPPROTO_UDP, vipnum::UDP4, 2, 0),
        (VIP6.into(), PORT_HTTP, IPPROTO_TCP, vipnum::TCP6, 4, 0),
        (VIP6.into(), PORT_DNS, IPPROTO_UDP, vipnum::UDP6, 5, 0),
        (VIP4_V6REAL.into(), PORT_HTTP, IPPROTO_TCP, vipnum::V4_V6REAL, 4, 0),
        (VIP4_ANYPORT.into(), 0, IPPROTO_TCP, vipnum::ANYPORT, 3, 0),
        (VIP4_EMPTY.into(), PORT_HTTP, IPPROTO_TCP, vipnum::EMPTY, 0, 0),
        (VIP4_UNKNOWN.into(), PORT_HTTP, IPPROTO_TCP, vipnum::UNKNOWN, UNKNOWN_REAL_INDEX, 0),
        (VIP6_V4REAL.into(), PORT_HTTP, IPPROTO_TCP, vipnum::V6_V4REAL, 1, 0),
    ];
    for (addr, port, proto, num, real, flags) in vips {
        bal.write_ring(num, &vec![real; size]).unwrap();
        bal.set_vip(&vip_key(addr, port, proto), &VipMeta { flags, vip_num: num, ring: num }).unwrap();
    }
    // Echo markers for the two main VIP addresses.
    bal.set_vip(
        &vip_key(VIP4.into(), 0, IPPROTO_ICMP),
        &VipMeta { flags: VIP_F_ICMP_ECHO, vip_num: vipnum::TCP4, ring: vipnum::TCP4 },
    )
    .unwrap();
    bal.set_vip(
        &vip_key(VIP6.into(), 0, IPPROTO_ICMPV6),
        &VipMeta { flags: VIP_F_ICMP_ECHO, vip_num: vipnum::TCP6, ring: vipnum::TCP6 },
    )
    .unwrap();
    bal.defer_vip_publishing(false).unwrap();
    bal
}

/// Runs one packet through an XDP program once (`repeat = 1`).
pub fn run_prog(prog: &mut Xdp, input: &[u8]) -> (u32, Vec<u8>, std::time::Duration) {
    let mut out = vec![0u8; input.len() + 512];
    let opts = TestRunOptions { data_in: Some(input), data_out: Some(&mut out), ..TestRunOptions::new() };
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out, r.duration)
}

pub fn run(bal: &mut Balancer, input: &[u8]) -> (u32, Vec<u8>) {
    let (action, out, _) = run_prog(bal.program(), input);
    (action, out)
}

/// The Maglev hash the data plane computes for a client flow.
pub fn maglev_hash4(client: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> u32 {
    flow_hash(&addr_v4(client.octets()), net16(sport), net16(dport), proto)
}

/// The hash the outer source (and IPv6 flow label) of a flow comes from.
pub fn encap_hash(client: IpAddr, sport: u16, vip: IpAddr, dport: u16, proto: u8) -> u32 {
    let (src, family) = lb_control::dataplane::ip_to_addr(client);
    let (dst, _) = lb_control::dataplane::ip_to_addr(vip);
    lb_common::flow_hash64(&lb_common::FlowKey::new(family, proto, src, net16(sport), dst, net16(dport))) as u32
}

pub fn outer_src4(hash: u32) -> Ipv4Addr {
    let h = hash.to_ne_bytes();
    let p = ENCAP_SRC4.octets();
    Ipv4Addr::new(p[0], p[1], h[2], h[3])
}

pub fn outer_src6(hash: u32) -> Ipv6Addr {
    let mut o = ENCAP_SRC6.octets();
    o[12..].copy_from_slice(&hash.to_ne_bytes());
    Ipv6Addr::from(o)
}

/// What the balancer must send for an IPv4 inner packet to an IPv4 backend.
pub fn expect_ipip4(inner: &[u8], real: Ipv4Addr, hash: u32) -> Vec<u8> {
    let tos = inner[1];
    let df = inner[6] & 0x40 != 0;
    let outer = pb::ipv4(
        outer_src4(hash),
        real,
        4,
        inner,
        &pb::V4 { tos, ttl: 64, id: 0, dont_fragment: df, ..pb::V4::default() },
    );
    pb::eth(GW_MAC, IF_MAC, 0x0800, &outer)
}

/// What the balancer must send for an inner packet (IPv4 or IPv6) to an
/// IPv6 backend.
pub fn expect_ip6tnl(inner: &[u8], real: Ipv6Addr, hash: u32) -> Vec<u8> {
    let (tc, next) = if inner[0] >> 4 == 4 { (inner[1], 4) } else { (((inner[0] & 0x0f) << 4) | (inner[1] >> 4), 41) };
    let outer = pb::ipv6_flow(outer_src6(hash), real, next, inner, tc, hash & 0xf_ffff);
    pb::eth(GW_MAC, IF_MAC, 0x86DD, &outer)
}

/// Frames from the client side arrive from the router.
pub fn frame4(ip: &[u8]) -> Vec<u8> {
    pb::eth(IF_MAC, ROUTER_MAC, 0x0800, ip)
}

pub fn frame6(ip: &[u8]) -> Vec<u8> {
    pb::eth(IF_MAC, ROUTER_MAC, 0x86DD, ip)
}

pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let seg = pb::tcp(src.into(), dst.into(), sport, dport, flags, payload);
    pb::ipv4(src, dst, IPPROTO_TCP, &seg, &pb::V4::default())
}

pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let d = pb::udp(src.into(), dst.into(), sport, dport, payload);
    pb::ipv4(src, dst, IPPROTO_UDP, &d, &pb::V4::default())
}

pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let seg = pb::tcp(src.into(), dst.into(), sport, dport, flags, payload);
    pb::ipv6(src, dst, IPPROTO_TCP, &seg, 0)
}

pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let d = pb::udp(src.into(), dst.into(), sport, dport, payload);
    pb::ipv6(src, dst, IPPROTO_UDP, &d, 0)
}

/// Global counters as a vector, for before/after comparisons.
pub fn snapshot(bal: &Balancer) -> Vec<(Stat, Counter)> {
    bal.all_stats().unwrap()
}

/// The counters that changed between two snapshots, with their deltas.
pub fn changed(before: &[(Stat, Counter)], after: &[(Stat, Counter)]) -> Vec<(Stat, u64, u64)> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, a)| (b.0, a.1.packets - b.1.packets, a.1.bytes - b.1.bytes))
        .collect()
}

/// Runs `input` once; checks the action, every output byte and exactly the
/// counters `want` (packets).
pub fn check_balancer(
    bal: &mut Balancer,
    input: &[u8],
    action: u32,
    output: &[u8],
    want: &[(Stat, u64)],
) -> Result<(), String> {
    let before = snapshot(bal);
    let (got_action, out) = run(bal, input);
    let moved: Vec<(Stat, u64)> = changed(&before, &snapshot(bal)).into_iter().map(|(s, p, _)| (s, p)).collect();
    if got_action != action {
        return Err(format!("action {got_action}, want {action}"));
    }
    if out != output {
        return Err(format!("output differs: {}", diff(&out, output)));
    }
    let mut want = want.to_vec();
    want.sort_by_key(|(s, _)| *s as u32);
    if moved != want {
        return Err(format!("counters moved {moved:?}, want {want:?}"));
    }
    Ok(())
}

/// A side-by-side hex view of where two frames first differ.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let from = first.saturating_sub(8);
    let show = |v: &[u8]| v.iter().skip(from).take(32).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    format!(
        "lengths got {} want {}; first difference at byte {first}\n  got  [{from}..]: {}\n  want [{from}..]: {}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    )
}
