//! Backend choice over sequences of packets: the connection table, ring
//! changes, per-VIP flags, spread over a multi-backend ring, and counters.

mod common;

use std::net::Ipv4Addr;

use common::*;
use lb_common::{
    addr_v4, ring_slot, ConnEntry, FlowKey, Stat, VipMeta, FAMILY_V4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    VIP_F_HASH_NO_SRC_PORT, VIP_F_NO_CONN_TABLE, VIP_F_UDP_NO_CONN_TABLE,
};
use lb_control::dataplane::Balancer;
use lb_testkit::packet_builder as pb;

/// The first spare ring of the standard world (rings 0..=8 are in use).
const SPARE_RING: u32 = 10;

/// Sends one IPv4 frame; returns the backend address it was tunnelled to.
fn send4(bal: &mut Balancer, ip: &[u8]) -> Ipv4Addr {
    let (action, out) = run(bal, &frame4(ip));
    assert_eq!(action, XDP_TX, "expected the packet to be forwarded");
    assert_eq!(out[12..14], [0x08, 0x00], "IPv4 outer header");
    Ipv4Addr::new(out[30], out[31], out[32], out[33])
}

fn flow4(client: Ipv4Addr, sport: u16, vip: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(FAMILY_V4, proto, addr_v4(client.octets()), net16(sport), addr_v4(vip.octets()), net16(dport))
}

/// Points the TCP VIP at a new single-backend table the way the control
/// plane does: write a spare ring, then switch the VIP to it.
fn switch_tcp_vip_to(bal: &mut Balancer, real: u32, flags: u32) {
    let size = bal.limits().ring_size as usize;
    bal.write_ring(SPARE_RING, &vec![real; size]).unwrap();
    let key = vip_key(VIP4.into(), PORT_HTTP, IPPROTO_TCP);
    bal.set_vip(&key, &VipMeta { flags, vip_num: vipnum::TCP4, ring: SPARE_RING }).unwrap();
}

fn set_tcp_vip_flags(bal: &mut Balancer, flags: u32) {
    let key = vip_key(VIP4.into(), PORT_HTTP, IPPROTO_TCP);
    let mut meta = bal.vip(&key).unwrap();
    meta.flags = flags;
    bal.set_vip(&key, &meta).unwrap();
}

#[test]
fn established_flow_keeps_its_backend_and_a_new_syn_follows_the_ring() {
    let mut bal = world();
    let syn = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    let ack = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"data");
    let flow = flow4(CLIENT4, CLIENT_PORT, VIP4, PORT_HTTP, IPPROTO_TCP);

    assert_eq!(send4(&mut bal, &syn), REAL1);
    assert_eq!(bal.conn(&flow), Some(ConnEntry { real: 1 }), "the SYN wrote the entry");

    switch_tcp_vip_to(&mut bal, 2, 0);
    for _ in 0..3 {
        assert_eq!(send4(&mut bal, &ack), REAL1, "established flow stays put");
    }
    // A flow the table has never seen takes the new choice.
    let other = tcp4(CLIENT4, VIP4, CLIENT_PORT + 1, PORT_HTTP, pb::TCP_ACK, b"data");
    let misses = bal.stat(Stat::ConnMiss).unwrap().packets;
    assert_eq!(send4(&mut bal, &other), REAL2);
    assert_eq!(bal.stat(Stat::ConnMiss).unwrap().packets, misses + 1);

    // The same 5-tuple opens a new connection: it follows the ring now.
    assert_eq!(send4(&mut bal, &syn), REAL2);
    assert_eq!(bal.conn(&flow), Some(ConnEntry { real: 2 }), "the SYN refreshed the entry");
    assert_eq!(send4(&mut bal, &ack), REAL2);
}

#[test]
fn draining_backend_keeps_established_flows() {
    // Draining = the backend leaves the ring but stays in REALS.
    let mut bal = world();
    let ack = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"x");
    assert_eq!(send4(&mut bal, &ack), REAL1);
    switch_tcp_vip_to(&mut bal, 3, 0);
    assert_eq!(send4(&mut bal, &ack), REAL1);
    let fresh = tcp4(CLIENT4, VIP4, 50000, PORT_HTTP, pb::TCP_SYN, &[]);
    assert_eq!(send4(&mut bal, &fresh), REAL3);
}

#[test]
fn removed_backend_rehashes_its_flows() {
    let mut bal = world();
    let ack = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"x");
    let flow = flow4(CLIENT4, CLIENT_PORT, VIP4, PORT_HTTP, IPPROTO_TCP);
    assert_eq!(send4(&mut bal, &ack), REAL1);
    switch_tcp_vip_to(&mut bal, 2, 0);
    bal.clear_real(1).unwrap();
    let stale = bal.stat(Stat::ConnStale).unwrap().packets;
    assert_eq!(send4(&mut bal, &ack), REAL2);
    assert_eq!(bal.stat(Stat::ConnStale).unwrap().packets, stale + 1);
    assert_eq!(bal.conn(&flow), Some(ConnEntry { real: 2 }), "entry rewritten to the new backend");
}

#[test]
fn bypass_flag_never_uses_the_table() {
    let mut bal = world();
    set_tcp_vip_flags(&mut bal, VIP_F_NO_CONN_TABLE);
    let ack = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"x");
    assert_eq!(send4(&mut bal, &ack), REAL1);
    assert_eq!(bal.conn_count(), 0);
    switch_tcp_vip_to(&mut bal, 2, VIP_F_NO_CONN_TABLE);
    assert_eq!(send4(&mut bal, &ack), REAL2, "without the table the ring decides every packet");
}

#[test]
fn udp_flag_keeps_udp_out_of_the_table() {
    let mut bal = world();
    let dns = udp4(CLIENT4, VIP4, 5353, PORT_DNS, b"q");
    let flow = flow4(CLIENT4, 5353, VIP4, PORT_DNS, IPPROTO_UDP);
    assert_eq!(send4(&mut bal, &dns), REAL2);
    assert_eq!(bal.conn(&flow), Some(ConnEntry { real: 2 }), "UDP uses the table by default");

    let mut bal = world();
    let key = vip_key(VIP4.into(), PORT_DNS, IPPROTO_UDP);
    let mut meta = bal.vip(&key).unwrap();
    meta.flags = VIP_F_UDP_NO_CONN_TABLE;
    bal.set_vip(&key, &meta).unwrap();
    assert_eq!(send4(&mut bal, &dns), REAL2);
    assert_eq!(bal.conn(&flow), None, "UDP flag: no entry");
}

/// Fills the TCP VIP's ring with backends 1, 2, 3 in turn.
fn three_backend_ring(bal: &mut Balancer) -> Vec<u32> {
    let size = bal.limits().ring_size;
    let table: Vec<u32> = (0..size).map(|i| 1 + i % 3).collect();
    bal.write_ring(vipnum::TCP4, &table).unwrap();
    table
}

#[test]
fn client_stickiness_ignores_the_source_port() {
    let mut bal = world();
    three_backend_ring(&mut bal);
    set_tcp_vip_flags(&mut bal, VIP_F_HASH_NO_SRC_PORT);
    let mut seen = std::collections::BTreeSet::new();
    for port in 20000..20050 {
        seen.insert(send4(&mut bal, &tcp4(CLIENT4, VIP4, port, PORT_HTTP, pb::TCP_SYN, &[])));
    }
    assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");

    set_tcp_vip_flags(&mut bal, 0);
    let mut seen = std::collections::BTreeSet::new();
    for port in 30000..30050 {
        seen.insert(send4(&mut bal, &tcp4(CLIENT4, VIP4, port, PORT_HTTP, pb::TCP_SYN, &[])));
    }
    assert_eq!(seen.len(), 3, "source ports spread over every backend: {seen:?}");
}

#[test]
fn spread_follows_the_ring_and_counters_add_up() {
    let mut bal = world();
    let table = three_backend_ring(&mut bal);
    let size = bal.limits().ring_size;
    let reals = [REAL1, REAL2, REAL3];
    let mut per_real = [0u64; 4];
    let mut bytes_per_real = [0u64; 4];
    let flows = 600u32;
    for i in 0..flows {
        let client = Ipv4Addr::from(0xc633_0000u32 + i * 7919);
        let sport = 1024 + (i % 60000) as u16;
        let ip = tcp4(client, VIP4, sport, PORT_HTTP, pb::TCP_SYN, &[]);
        let want = table[ring_slot(maglev_hash4(client, sport, PORT_HTTP, IPPROTO_TCP), size) as usize];
        let got = send4(&mut bal, &ip);
        assert_eq!(got, reals[want as usize - 1], "flow {i} went to the wrong backend");
        per_real[want as usize] += 1;
        bytes_per_real[want as usize] += frame4(&ip).len() as u64;
    }
    for r in 1..=3u32 {
        let c = bal.real_stat(r).unwrap();
        assert_eq!(c.packets, per_real[r as usize], "backend {r} packets");
        assert_eq!(c.bytes, bytes_per_real[r as usize], "backend {r} bytes");
        assert!(c.packets > flows as u64 / 5, "backend {r} got {} of {flows}", c.packets);
    }
    let vip = bal.vip_stat(vipnum::TCP4).unwrap();
    assert_eq!(vip.packets, flows as u64);
    assert_eq!(vip.bytes, bytes_per_real.iter().sum::<u64>());
    assert_eq!(bal.stat(Stat::TxEncap).unwrap().packets, flows as u64);
    // A set-associative table: a few sets overflow and evict (counted).
    let evicted = bal.stat(Stat::ConnEvicted).unwrap().packets as usize;
    assert_eq!(bal.conn_count() + evicted, flows as usize, "every flow is in the table or counted as evicted");
    assert!(evicted < flows as usize / 20, "{evicted} evictions for {flows} flows in 4096 slots");
}

#[test]
fn a_full_set_evicts_one_packet_flows_before_established_ones() {
    let mut bal = world();
    // Flows of one set on this CPU: same connection-table hash bits.
    let sets = bal.limits().conn_sets();
    let want = lb_common::flow_hash64(&flow4(CLIENT4, 1000, VIP4, PORT_HTTP, IPPROTO_TCP)) as u32 & (sets - 1);
    let same_set: Vec<u16> = (1000u16..60000)
        .filter(|&p| {
            lb_common::flow_hash64(&flow4(CLIENT4, p, VIP4, PORT_HTTP, IPPROTO_TCP)) as u32 & (sets - 1) == want
        })
        .take(16)
        .collect();
    assert_eq!(same_set.len(), 16);
    // Five established flows (a SYN, then data: the second packet marks the slot).
    for &p in &same_set[..5] {
        send4(&mut bal, &tcp4(CLIENT4, VIP4, p, PORT_HTTP, pb::TCP_SYN, &[]));
        send4(&mut bal, &tcp4(CLIENT4, VIP4, p, PORT_HTTP, pb::TCP_ACK, b"x"));
    }
    // A flood of one-packet flows through the same set (eight ways).
    for &p in &same_set[5..] {
        send4(&mut bal, &tcp4(CLIENT4, VIP4, p, PORT_HTTP, pb::TCP_SYN, &[]));
    }
    for &p in &same_set[..5] {
        let flow = flow4(CLIENT4, p, VIP4, PORT_HTTP, IPPROTO_TCP);
        assert_eq!(bal.conn(&flow), Some(ConnEntry { real: 1 }), "established flow from port {p} kept");
    }
    assert_eq!(bal.stat(Stat::ConnEvicted).unwrap().packets, 8, "each flood SYN past the eighth way evicts one");
}

#[test]
fn icmp_error_follows_the_connection_table_without_writing_it() {
    let mut bal = world();
    let flow = flow4(CLIENT4, CLIENT_PORT, VIP4, PORT_HTTP, IPPROTO_TCP);
    bal.set_conn(&flow, &ConnEntry { real: 3 }).unwrap();
    let from_backend = tcp4(VIP4, CLIENT4, PORT_HTTP, CLIENT_PORT, pb::TCP_ACK, &[0u8; 8]);
    let icmp = pb::icmp4(3, 4, [0, 0, 5, 0], &from_backend[..28]);
    let ip = pb::ipv4(Ipv4Addr::new(198, 51, 100, 1), VIP4, IPPROTO_ICMP, &icmp, &pb::V4::default());
    assert_eq!(send4(&mut bal, &ip), REAL3, "the error reaches the flow's backend");
    assert_eq!(bal.stat(Stat::IcmpErrorForwarded).unwrap().packets, 1);

    // An error about a flow the table does not know takes the ring's choice
    // and leaves no entry behind.
    let before = bal.conn_count();
    let from_backend = tcp4(VIP4, CLIENT4, PORT_HTTP, 55555, pb::TCP_ACK, &[0u8; 8]);
    let icmp = pb::icmp4(3, 4, [0, 0, 5, 0], &from_backend[..28]);
    let ip = pb::ipv4(Ipv4Addr::new(198, 51, 100, 1), VIP4, IPPROTO_ICMP, &icmp, &pb::V4::default());
    assert_eq!(send4(&mut bal, &ip), REAL1);
    assert_eq!(bal.conn_count(), before);
}

#[test]
fn ring_switch_is_atomic_per_vip() {
    // Switching one VIP to a spare ring leaves the other VIPs alone.
    let mut bal = world();
    switch_tcp_vip_to(&mut bal, 3, VIP_F_NO_CONN_TABLE);
    let syn = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    assert_eq!(send4(&mut bal, &syn), REAL3);
    assert_eq!(send4(&mut bal, &udp4(CLIENT4, VIP4, 5353, PORT_DNS, b"q")), REAL2);
    assert_eq!(bal.ring(vipnum::TCP4).unwrap()[0], 1, "the old ring is untouched");
}
