//! ICMP and ICMPv6 built or rewritten in XDP: echo replies for VIP addresses
//! and "fragmentation needed" / "packet too big" for packets that would not
//! fit the egress MTU once encapsulated.

use aya_ebpf::programs::XdpContext;
use lb_common::{Stat, ENCAP_TTL, FAMILY_V4, IPPROTO_ICMP, IPPROTO_ICMPV6};
use lb_ebpf::{
    csum,
    hdr::*,
    packet::{adjust_head, adjust_tail, read, write, write_eth},
    parse::{L2, L3},
};

/// Largest ICMP error, IP header included, that every host must accept:
/// RFC 1812 4.3.2.3 (IPv4, 576 bytes) and RFC 4443 2.4(c) (IPv6, the
/// minimum MTU, 1280). The error quotes as much of the offending packet as
/// fits, so the sender's stack finds the socket even behind long IPv6
/// extension-header chains.
const MAX_ICMP4_ERROR: usize = 576;
const MAX_ICMP6_ERROR: usize = 1280;
/// The longest quote, in 4-byte words (bounds the checksum loop).
const MAX_QUOTE_WORDS: usize = (MAX_ICMP6_ERROR - IPV6_HLEN - ICMP_HLEN) / 4;

/// Turns an echo request into the reply, in place, and sends it back.
#[inline(always)]
pub fn echo_reply(ctx: &XdpContext, l2: &L2, l3: &L3) -> Result<Stat, Stat> {
    let eth: EthHdr = read(ctx, 0).ok_or(Stat::DropTruncated)?;
    write(ctx, 0, EthHdr { dst: eth.src, src: eth.dst, proto: eth.proto }).ok_or(Stat::DropTruncated)?;
    let ip_off = l2.l3_off;
    let reply_type = if l3.family == FAMILY_V4 {
        let mut ip: Ipv4Hdr = read(ctx, ip_off).ok_or(Stat::DropTruncated)?;
        let old_ttl_proto = u16::from_ne_bytes([ip.ttl, ip.proto]);
        let new_ttl_proto = u16::from_ne_bytes([ENCAP_TTL, ip.proto]);
        ip.check = csum::replace16(ip.check, old_ttl_proto, new_ttl_proto);
        ip.ttl = ENCAP_TTL;
        core::mem::swap(&mut ip.src, &mut ip.dst);
        write(ctx, ip_off, ip).ok_or(Stat::DropTruncated)?;
        ICMP_ECHO_REPLY
    } else {
        let mut ip: Ipv6Hdr = read(ctx, ip_off).ok_or(Stat::DropTruncated)?;
        ip.hop_limit = ENCAP_TTL;
        core::mem::swap(&mut ip.src, &mut ip.dst);
        write(ctx, ip_off, ip).ok_or(Stat::DropTruncated)?;
        ICMPV6_ECHO_REPLY
    };
    // Swapping the addresses leaves the ICMPv6 pseudo-header sum unchanged;
    // only the type word differs.
    let mut icmp: IcmpHdr = read(ctx, l3.l4_off).ok_or(Stat::DropTruncated)?;
    let old_word = u16::from_ne_bytes([icmp.kind, icmp.code]);
    let new_word = u16::from_ne_bytes([reply_type, icmp.code]);
    icmp.check = csum::replace16(icmp.check, old_word, new_word);
    icmp.kind = reply_type;
    write(ctx, l3.l4_off, icmp).ok_or(Stat::DropTruncated)?;
    Ok(Stat::TxIcmpEchoReply)
}

/// Replaces a packet that is too big to forward with the ICMP error telling
/// its sender the largest size that fits (`mtu`), quoting its headers, and
/// sends it back. IPv4 packets without DF cannot be fragmented here and are
/// dropped. `bytes` is the frame's length on entry (trailer included: the
/// reply is cut to its own length).
#[inline(always)]
pub fn too_big(ctx: &XdpContext, l2: &L2, l3: &L3, mtu: u32, bytes: usize) -> Result<Stat, Stat> {
    if !l3.dont_fragment {
        return Err(Stat::DropTooBig);
    }
    let eth: EthHdr = read(ctx, 0).ok_or(Stat::DropTruncated)?;
    let v4 = l3.family == FAMILY_V4;
    let ip_len = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    // The quoted headers start where the original IP header is: the new IP
    // and ICMP headers go in front of it.
    // As much of the packet as the limit allows, in whole 4-byte words (the
    // headers and the 8 transport bytes always are: IP headers are whole
    // words and the transport header was checked to be in the packet).
    let limit = if v4 { MAX_ICMP4_ERROR } else { MAX_ICMP6_ERROR } - ip_len - ICMP_HLEN;
    let quote_len = if l3.total_len < limit { l3.total_len } else { limit } & !3;
    let (client, vip) = (l3.src, l3.dst);
    let push = (ip_len + ICMP_HLEN) as i32;
    adjust_head(ctx, -push).ok_or(Stat::DropHeadroom)?;
    let new_len = l2.l3_off + ip_len + ICMP_HLEN + quote_len;
    // The original packet was larger than the MTU, so this only shrinks.
    // (Computed from the entry length: the verifier refuses arithmetic on
    // the end-of-packet pointer.)
    let cur_len = bytes + push as usize;
    adjust_tail(ctx, new_len as i32 - cur_len as i32).ok_or(Stat::DropTruncated)?;

    let ether_type = if v4 { ETH_P_IP } else { ETH_P_IPV6 };
    let ip_off = write_eth(ctx, eth.src, eth.dst, l2.vlan, ether_type).ok_or(Stat::DropTruncated)?;
    let icmp_off = ip_off + ip_len;
    let icmp_len = ICMP_HLEN + quote_len;

    let mut sum = if v4 {
        let mut ip = Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            tot_len: ((IPV4_HLEN + icmp_len) as u16).to_be(),
            id: 0,
            frag_off: 0,
            ttl: ENCAP_TTL,
            proto: IPPROTO_ICMP,
            check: 0,
            src: vip[0],
            dst: client[0],
        };
        ip.check = csum::ipv4_header(&ip);
        write(ctx, ip_off, ip).ok_or(Stat::DropTruncated)?;
        0
    } else {
        let ip = Ipv6Hdr {
            vtc_flow: (6u32 << 28).to_be(),
            payload_len: (icmp_len as u16).to_be(),
            next_hdr: IPPROTO_ICMPV6,
            hop_limit: ENCAP_TTL,
            src: vip,
            dst: client,
        };
        write(ctx, ip_off, ip).ok_or(Stat::DropTruncated)?;
        // Pseudo-header: addresses, upper-layer length, next header.
        let sum = csum::add_addr(csum::add_addr(0, &vip), &client);
        let sum = csum::add32(sum, (icmp_len as u32).to_be());
        csum::add32(sum, (IPPROTO_ICMPV6 as u32).to_be())
    };

    // IPv4: unused(16) + next-hop MTU(16); ICMPv6: MTU(32).
    let rest = if v4 { (mtu & 0xffff).to_be() } else { mtu.to_be() };
    let (kind, code) = if v4 { (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) } else { (ICMPV6_PKT_TOOBIG, 0) };
    let icmp = IcmpHdr { kind, code, check: 0, rest };
    sum = csum::add32(sum, u32::from_ne_bytes([kind, code, 0, 0]));
    sum = csum::add32(sum, rest);
    let quote_off = icmp_off + ICMP_HLEN;
    for i in 0..MAX_QUOTE_WORDS {
        if i * 4 >= quote_len {
            break;
        }
        let word: u32 = read(ctx, quote_off + i * 4).ok_or(Stat::DropTruncated)?;
        sum = csum::add32(sum, word);
    }
    write(ctx, icmp_off, IcmpHdr { check: csum::fold(sum), ..icmp }).ok_or(Stat::DropTruncated)?;
    Ok(Stat::TxIcmpTooBig)
}
