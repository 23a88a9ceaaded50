//! Builds well-formed (or deliberately broken) frames with `pnet_packet`, for
//! the fixture tests, the benchmarks and `BPF_PROG_TEST_RUN` probes.
//!
//! Each layer is built on its own and nested by the caller, so a test can
//! break exactly one field of one header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet_packet::{
    ethernet::{EtherType, EtherTypes, MutableEthernetPacket},
    icmp::{self, IcmpPacket, MutableIcmpPacket},
    icmpv6::{self, Icmpv6Packet, MutableIcmpv6Packet},
    ip::IpNextHeaderProtocol,
    ipv4::{self, Ipv4Packet, MutableIpv4Packet},
    ipv6::MutableIpv6Packet,
    tcp::{self, MutableTcpPacket, TcpPacket},
    udp::{self, MutableUdpPacket, UdpPacket},
};

pub use lb_common::Mac;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_FIN: u8 = 0x01;

/// An Ethernet frame around `payload`.
pub fn eth(dst: Mac, src: Mac, ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + payload.len()];
    let mut p = MutableEthernetPacket::new(&mut buf).expect("buffer sized for the header");
    p.set_destination(dst.into());
    p.set_source(src.into());
    p.set_ethertype(EtherType(ether_type));
    p.set_payload(payload);
    buf
}

/// An Ethernet frame with one 802.1Q tag.
pub fn eth_vlan(dst: Mac, src: Mac, tci: u16, ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(4 + payload.len());
    inner.extend_from_slice(&tci.to_be_bytes());
    inner.extend_from_slice(&ether_type.to_be_bytes());
    inner.extend_from_slice(payload);
    eth(dst, src, EtherTypes::Vlan.0, &inner)
}

/// IPv4 header fields a fixture may want to change.
#[derive(Clone, Debug)]
pub struct V4 {
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// In 8-byte units.
    pub fragment_offset: u16,
    /// Raw option bytes (padded by the caller to a multiple of 4).
    pub options: Vec<u8>,
}

impl Default for V4 {
    fn default() -> Self {
        Self {
            tos: 0,
            ttl: 64,
            id: 0x1234,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            options: Vec::new(),
        }
    }
}

/// An IPv4 packet with a correct header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8], f: &V4) -> Vec<u8> {
    assert!(f.options.len().is_multiple_of(4) && f.options.len() <= 40, "options must be padded");
    let hdr = 20 + f.options.len();
    let mut buf = vec![0u8; hdr + payload.len()];
    buf[20..hdr].copy_from_slice(&f.options);
    let mut p = MutableIpv4Packet::new(&mut buf).expect("buffer sized for the header");
    p.set_version(4);
    p.set_header_length((hdr / 4) as u8);
    p.set_dscp(f.tos >> 2);
    p.set_ecn(f.tos & 3);
    p.set_total_length((hdr + payload.len()) as u16);
    p.set_identification(f.id);
    let flags = (if f.dont_fragment { 2 } else { 0 }) | (if f.more_fragments { 1 } else { 0 });
    p.set_flags(flags);
    p.set_fragment_offset(f.fragment_offset);
    p.set_ttl(f.ttl);
    p.set_next_level_protocol(IpNextHeaderProtocol(proto));
    p.set_source(src);
    p.set_destination(dst);
    p.set_payload(payload);
    let check = ipv4::checksum(&Ipv4Packet::new(pnet_packet::Packet::packet(&p)).expect("valid"));
    p.set_checksum(check);
    buf
}

/// An IPv6 packet. `next_header` names the first header of `payload`, which
/// may start with extension headers.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8], traffic_class: u8) -> Vec<u8> {
    ipv6_flow(src, dst, next_header, payload, traffic_class, 0)
}

pub fn ipv6_flow(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload: &[u8],
    traffic_class: u8,
    flow_label: u32,
) -> Vec<u8> {
    let mut buf = vec![0u8; 40 + payload.len()];
    let mut p = MutableIpv6Packet::new(&mut buf).expect("buffer sized for the header");
    p.set_version(6);
    p.set_traffic_class(traffic_class);
    p.set_flow_label(flow_label);
    p.set_payload_length(payload.len() as u16);
    p.set_next_header(IpNextHeaderProtocol(next_header));
    p.set_hop_limit(64);
    p.set_source(src);
    p.set_destination(dst);
    p.set_payload(payload);
    buf
}

/// An IPv6 extension header (hop-by-hop, routing or destination options)
/// of `8 * (len_units + 1)` bytes in front of `rest`.
pub fn ipv6_ext(next_header: u8, len_units: u8, rest: &[u8]) -> Vec<u8> {
    let size = 8 * (len_units as usize + 1);
    let mut v = vec![0u8; size];
    v[0] = next_header;
    v[1] = len_units;
    // PadN option filling the rest, so the header is valid as options.
    v[2] = 1;
    v[3] = (size - 4) as u8;
    v.extend_from_slice(rest);
    v
}

/// An IPv6 fragment header in front of `rest`.
pub fn ipv6_frag(next_header: u8, offset_units: u16, more: bool, id: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![next_header, 0];
    v.extend_from_slice(&((offset_units << 3) | more as u16).to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

/// A TCP segment with a correct checksum for the given addresses.
pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 20 + payload.len()];
    let mut p = MutableTcpPacket::new(&mut buf).expect("buffer sized for the header");
    p.set_source(sport);
    p.set_destination(dport);
    p.set_sequence(0x0102_0304);
    p.set_acknowledgement(if flags & TCP_ACK != 0 { 0x0a0b_0c0d } else { 0 });
    p.set_data_offset(5);
    p.set_flags(flags);
    p.set_window(65535);
    p.set_payload(payload);
    let check = {
        let view = TcpPacket::new(pnet_packet::Packet::packet(&p)).expect("valid");
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => tcp::ipv4_checksum(&view, &s, &d),
            (IpAddr::V6(s), IpAddr::V6(d)) => tcp::ipv6_checksum(&view, &s, &d),
            _ => panic!("mixed address families"),
        }
    };
    p.set_checksum(check);
    buf
}

/// A UDP datagram with a correct checksum for the given addresses.
pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    let mut p = MutableUdpPacket::new(&mut buf).expect("buffer sized for the header");
    p.set_source(sport);
    p.set_destination(dport);
    p.set_length((8 + payload.len()) as u16);
    p.set_payload(payload);
    let check = {
        let view = UdpPacket::new(pnet_packet::Packet::packet(&p)).expect("valid");
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => udp::ipv4_checksum(&view, &s, &d),
            (IpAddr::V6(s), IpAddr::V6(d)) => udp::ipv6_checksum(&view, &s, &d),
            _ => panic!("mixed address families"),
        }
    };
    p.set_checksum(check);
    buf
}

/// An ICMP message: type, code, the 4 "rest of header" bytes, then `body`.
pub fn icmp4(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + body.len()];
    buf[4..8].copy_from_slice(&rest);
    buf[8..].copy_from_slice(body);
    let mut p = MutableIcmpPacket::new(&mut buf).expect("buffer sized for the header");
    p.set_icmp_type(icmp::IcmpType(kind));
    p.set_icmp_code(icmp::IcmpCode(code));
    let check = icmp::checksum(&IcmpPacket::new(pnet_packet::Packet::packet(&p)).expect("valid"));
    p.set_checksum(check);
    buf
}

/// An ICMPv6 message with a correct checksum for the given addresses.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + body.len()];
    buf[4..8].copy_from_slice(&rest);
    buf[8..].copy_from_slice(body);
    let mut p = MutableIcmpv6Packet::new(&mut buf).expect("buffer sized for the header");
    p.set_icmpv6_type(icmpv6::Icmpv6Type(kind));
    p.set_icmpv6_code(icmpv6::Icmpv6Code(code));
    let check = icmpv6::checksum(&Icmpv6Packet::new(pnet_packet::Packet::packet(&p)).expect("valid"), &src, &dst);
    p.set_checksum(check);
    buf
}

/// Whether an IPv4 header's checksum verifies.
pub fn ipv4_checksum_ok(ip: &[u8]) -> bool {
    match Ipv4Packet::new(ip) {
        Some(p) => ipv4::checksum(&p) == p.get_checksum(),
        None => false,
    }
}
