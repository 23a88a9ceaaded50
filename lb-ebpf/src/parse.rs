//! Header parsing: Ethernet (one optional 802.1Q/802.1ad tag), IPv4 (any
//! valid IHL), IPv6 (hop-by-hop, routing and destination-options extension
//! headers) and the first bytes of TCP, UDP, ICMP and ICMPv6.
//!
//! The parser only reads. It reports what it found or why it stopped, and the
//! caller turns that into an action and a counter.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    hdr::*,
    packet::{len, read},
};

/// Extension headers walked before giving up on an IPv6 packet.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// Why parsing stopped short of a packet the balancer can act on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A header runs past the end of the frame.
    Truncated,
    /// Not IPv4 or IPv6 (ARP, LLDP, a second VLAN tag, ...).
    NonIp,
    /// The IP version field does not match the ethertype.
    BadVersion,
    /// IPv4 IHL below 5.
    BadIhl,
    /// IP length fields disagree with the headers or the frame.
    BadTotalLen,
    /// TCP data offset below 5, or an L4 header cut by the IP length.
    BadL4Header,
    /// More IPv6 extension headers than we walk, or ones we do not (AH/ESP
    /// are not extension headers we can skip without keys).
    Ipv6ExtUnsupported,
}

/// Where the IP header starts, and the 802.1Q tag in front of it, if any.
#[derive(Clone, Copy)]
pub struct L2 {
    pub l3_off: usize,
    pub ether_type: u16,
    /// Tag protocol identifier and TCI (network order) of the single VLAN
    /// tag, when there is one.
    pub vlan: Option<VlanTag>,
}

#[derive(Clone, Copy)]
pub struct VlanTag {
    pub tpid: u16,
    pub tci: u16,
}

#[inline(always)]
pub fn parse_eth(ctx: &XdpContext) -> Result<L2, ParseError> {
    let eth: EthHdr = read(ctx, 0).ok_or(ParseError::Truncated)?;
    let proto = u16::from_be(eth.proto);
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tag: VlanHdr = read(ctx, ETH_HLEN).ok_or(ParseError::Truncated)?;
        return Ok(L2 {
            l3_off: ETH_HLEN + VLAN_HLEN,
            ether_type: u16::from_be(tag.proto),
            vlan: Some(VlanTag { tpid: eth.proto, tci: tag.tci }),
        });
    }
    Ok(L2 { l3_off: ETH_HLEN, ether_type: proto, vlan: None })
}

/// An IP header, parsed and checked.
#[derive(Clone, Copy)]
pub struct L3 {
    pub family: u8,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// Offset of the upper-layer header from the start of the frame.
    pub l4_off: usize,
    /// Length of the IP packet (headers included) per its header.
    pub total_len: usize,
    /// A fragment (first or later): upper-layer ports are not reliable.
    pub fragment: bool,
    /// IPv4 don't-fragment bit (IPv6 routers never fragment: always set).
    pub dont_fragment: bool,
}

#[inline(always)]
pub fn parse_ipv4(ctx: &XdpContext, l3_off: usize) -> Result<L3, ParseError> {
    let ip = ipv4_fixed(ctx, l3_off)?;
    check_ipv4(ctx, l3_off, &ip)
}

/// The fixed 20 bytes of an IPv4 header, version checked.
#[inline(always)]
pub fn ipv4_fixed(ctx: &XdpContext, l3_off: usize) -> Result<Ipv4Hdr, ParseError> {
    let ip: Ipv4Hdr = read(ctx, l3_off).ok_or(ParseError::Truncated)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(ParseError::BadVersion);
    }
    Ok(ip)
}

/// The rest of [`parse_ipv4`], from the fixed header already read.
#[inline(always)]
pub fn check_ipv4(ctx: &XdpContext, l3_off: usize, ip: &Ipv4Hdr) -> Result<L3, ParseError> {
    let hdr_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if hdr_len < IPV4_HLEN {
        return Err(ParseError::BadIhl);
    }
    // The options, if any, must be in the frame.
    if l3_off + hdr_len > len(ctx) {
        return Err(ParseError::Truncated);
    }
    let total_len = u16::from_be(ip.tot_len) as usize;
    if total_len < hdr_len || l3_off + total_len > len(ctx) {
        return Err(ParseError::BadTotalLen);
    }
    let frag = u16::from_be(ip.frag_off);
    Ok(L3 {
        family: FAMILY_V4,
        proto: ip.proto,
        src: [ip.src, 0, 0, 0],
        dst: [ip.dst, 0, 0, 0],
        tos: ip.tos,
        l4_off: l3_off + hdr_len,
        total_len,
        fragment: frag & (IP_MF | IP_OFFSET) != 0,
        dont_fragment: frag & IP_DF != 0,
    })
}

#[inline(always)]
pub fn parse_ipv6(ctx: &XdpContext, l3_off: usize) -> Result<L3, ParseError> {
    let ip = ipv6_fixed(ctx, l3_off)?;
    check_ipv6(ctx, l3_off, &ip)
}

/// The fixed 40 bytes of an IPv6 header, version checked.
#[inline(always)]
pub fn ipv6_fixed(ctx: &XdpContext, l3_off: usize) -> Result<Ipv6Hdr, ParseError> {
    let ip: Ipv6Hdr = read(ctx, l3_off).ok_or(ParseError::Truncated)?;
    if u32::from_be(ip.vtc_flow) >> 28 != 6 {
        return Err(ParseError::BadVersion);
    }
    Ok(ip)
}

/// The rest of [`parse_ipv6`] (lengths, extension headers), from the fixed
/// header already read.
#[inline(always)]
pub fn check_ipv6(ctx: &XdpContext, l3_off: usize, ip: &Ipv6Hdr) -> Result<L3, ParseError> {
    let vtc = u32::from_be(ip.vtc_flow);
    let payload_len = u16::from_be(ip.payload_len) as usize;
    // Zero means a jumbogram (hop-by-hop option), which no Ethernet frame
    // carries: treat it as a length error.
    if payload_len == 0 || l3_off + IPV6_HLEN + payload_len > len(ctx) {
        return Err(ParseError::BadTotalLen);
    }
    let end = l3_off + IPV6_HLEN + payload_len;
    let mut next = ip.next_hdr;
    let mut off = l3_off + IPV6_HLEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DEST_OPTS => {
                let ext: Ipv6ExtHdr = read(ctx, off).ok_or(ParseError::Truncated)?;
                next = ext.next_hdr;
                off += (ext.len as usize + 1) * 8;
            }
            IPV6_EXT_FRAGMENT => {
                // Fixed 8 bytes. Whether first or later fragment, the flow's
                // ports are not in every fragment: report it and stop.
                let ext: Ipv6ExtHdr = read(ctx, off).ok_or(ParseError::Truncated)?;
                next = ext.next_hdr;
                off += 8;
                fragment = true;
                break;
            }
            _ => break,
        }
        if off > end {
            return Err(ParseError::BadTotalLen);
        }
    }
    // A fragment header right after the last header walked still makes the
    // packet a fragment: the counter says so, not "unsupported protocol".
    if !fragment && next == IPV6_EXT_FRAGMENT {
        let ext: Ipv6ExtHdr = read(ctx, off).ok_or(ParseError::Truncated)?;
        next = ext.next_hdr;
        off += 8;
        fragment = true;
    }
    if !fragment && matches!(next, IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DEST_OPTS) {
        return Err(ParseError::Ipv6ExtUnsupported);
    }
    if off > end {
        return Err(ParseError::BadTotalLen);
    }
    Ok(L3 {
        family: FAMILY_V6,
        proto: next,
        src: ip.src,
        dst: ip.dst,
        tos: (vtc >> 20) as u8,
        l4_off: off,
        total_len: IPV6_HLEN + payload_len,
        fragment,
        dont_fragment: true,
    })
}

/// The parts of the upper-layer header the balancer uses.
#[derive(Clone, Copy)]
pub struct L4 {
    /// Network order. For ICMP: zero.
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags; zero for other protocols.
    pub tcp_flags: u8,
    /// ICMP type and code; zero for other protocols.
    pub icmp_type: u8,
    pub icmp_code: u8,
}

impl L4 {
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

/// Parses the upper-layer header at `l3.l4_off`, which must lie within the IP
/// packet. `None` for protocols the balancer does not handle.
#[inline(always)]
pub fn parse_l4(ctx: &XdpContext, l3: &L3, l3_off: usize) -> Option<Result<L4, ParseError>> {
    let ip_end = l3_off + l3.total_len;
    let l4 = match l3.proto {
        IPPROTO_TCP => parse_tcp(ctx, l3.l4_off, ip_end),
        IPPROTO_UDP => parse_udp(ctx, l3.l4_off, ip_end),
        IPPROTO_ICMP if l3.family == FAMILY_V4 => parse_icmp(ctx, l3.l4_off, ip_end),
        IPPROTO_ICMPV6 if l3.family == FAMILY_V6 => parse_icmp(ctx, l3.l4_off, ip_end),
        _ => return None,
    };
    Some(l4)
}

#[inline(always)]
fn parse_tcp(ctx: &XdpContext, off: usize, ip_end: usize) -> Result<L4, ParseError> {
    let tcp: TcpHdr = read(ctx, off).ok_or(ParseError::Truncated)?;
    let doff = (tcp.doff >> 4) as usize * 4;
    if doff < 20 || off + doff > ip_end {
        return Err(ParseError::BadL4Header);
    }
    Ok(L4 { src_port: tcp.src_port, dst_port: tcp.dst_port, tcp_flags: tcp.flags, icmp_type: 0, icmp_code: 0 })
}

#[inline(always)]
fn parse_udp(ctx: &XdpContext, off: usize, ip_end: usize) -> Result<L4, ParseError> {
    let udp: UdpHdr = read(ctx, off).ok_or(ParseError::Truncated)?;
    if off + 8 > ip_end {
        return Err(ParseError::BadL4Header);
    }
    Ok(L4 { src_port: udp.src_port, dst_port: udp.dst_port, tcp_flags: 0, icmp_type: 0, icmp_code: 0 })
}

#[inline(always)]
fn parse_icmp(ctx: &XdpContext, off: usize, ip_end: usize) -> Result<L4, ParseError> {
    let icmp: IcmpHdr = read(ctx, off).ok_or(ParseError::Truncated)?;
    if off + ICMP_HLEN > ip_end {
        return Err(ParseError::BadL4Header);
    }
    Ok(L4 { src_port: 0, dst_port: 0, tcp_flags: 0, icmp_type: icmp.kind, icmp_code: icmp.code })
}

/// The flow an ICMP error is about, read from the packet it quotes: the
/// quoted packet went from the VIP to the client, so the client's flow is
/// its reverse.
#[derive(Clone, Copy)]
pub struct QuotedFlow {
    pub vip: Addr,
    pub vip_port: u16,
    pub client: Addr,
    pub client_port: u16,
    pub proto: u8,
}

/// Reads the IP header and the first 4 bytes (ports) of the TCP or UDP
/// packet quoted by an ICMP error whose header starts at `icmp_off`. Only
/// bytes inside the ICMP error's IP packet (up to `ip_end`) count: a quote
/// that a trailer would complete is no quote.
#[inline(always)]
pub fn parse_quoted(ctx: &XdpContext, family: u8, icmp_off: usize, ip_end: usize) -> Option<QuotedFlow> {
    let inner = icmp_off + ICMP_HLEN;
    let (vip, client, proto, l4_off) = if family == FAMILY_V4 {
        let ip: Ipv4Hdr = read(ctx, inner)?;
        let hdr_len = ((ip.version_ihl & 0x0f) as usize) * 4;
        if ip.version_ihl >> 4 != 4 || hdr_len < IPV4_HLEN {
            return None;
        }
        ([ip.src, 0, 0, 0], [ip.dst, 0, 0, 0], ip.proto, inner + hdr_len)
    } else {
        let ip: Ipv6Hdr = read(ctx, inner)?;
        if u32::from_be(ip.vtc_flow) >> 28 != 6 {
            return None;
        }
        (ip.src, ip.dst, ip.next_hdr, inner + IPV6_HLEN)
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    // The ports are the last bytes read: inside the IP packet, the headers
    // before them are too.
    if l4_off + 4 > ip_end {
        return None;
    }
    let ports: [u16; 2] = read(ctx, l4_off)?;
    Some(QuotedFlow { vip, vip_port: ports[0], client, client_port: ports[1], proto })
}
