//! The backends' decap program: strips the outer IPv4/IPv6 header of an
//! IP-in-IP packet addressed to this host and passes the inner packet up, so
//! backends need no `ipip`/`ip6_tunnel` module. A tunnel inside the tunnel
//! is a second-chance packet (`second_chance.rs`).
#![no_std]
#![no_main]

mod second_chance;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{Counter, DecapAddr, DecapStat, FAMILY_V4, FAMILY_V6, IPPROTO_IPIP, IPPROTO_IPV6};
use lb_ebpf::{
    hdr::*,
    packet::{adjust_head, len, read, write},
    parse::{self, ParseError},
};

/// Outer destinations this host decapsulates for; anything else is left
/// alone (it may be a tunnel the host's kernel terminates itself).
#[map]
static DECAP_ADDRS: HashMap<DecapAddr, u8> = HashMap::with_max_entries(64, 0);

#[map]
static DECAP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DecapStat::COUNT, 0);

#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    let bytes = len(&ctx);
    let stat = match process(&ctx) {
        Ok(stat) | Err(stat) => stat,
    };
    if let Some(c) = DECAP_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
    match stat.action() {
        lb_common::Action::Drop => xdp_action::XDP_DROP,
        lb_common::Action::Tx => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn parse_error(e: ParseError) -> DecapStat {
    match e {
        ParseError::Truncated => DecapStat::DropTruncated,
        _ => DecapStat::DropMalformed,
    }
}

/// Whether this host decapsulates for `addr`.
#[inline(always)]
fn is_local(family: u8, addr: lb_common::Addr) -> bool {
    let key = DecapAddr { addr, family, _pad: [0; 3] };
    // SAFETY: only checked for presence.
    unsafe { DECAP_ADDRS.get(&key) }.is_some()
}

/// An outer header that failed its checks: dropped only when it is
/// recognisably a tunnel to this host (fixed header readable, IP-in-IP
/// protocol, local destination); anything else is not ours to judge and
/// goes to the kernel.
#[inline(always)]
fn bad_outer(ctx: &XdpContext, l2: &parse::L2, e: ParseError) -> DecapStat {
    let (family, dst, proto) = match l2.ether_type {
        ETH_P_IP => match read::<Ipv4Hdr>(ctx, l2.l3_off) {
            Some(ip) if ip.version_ihl >> 4 == 4 => (FAMILY_V4, [ip.dst, 0, 0, 0], ip.proto),
            _ => return DecapStat::PassNotEncap,
        },
        _ => match read::<Ipv6Hdr>(ctx, l2.l3_off) {
            Some(ip) if u32::from_be(ip.vtc_flow) >> 28 == 6 => (FAMILY_V6, ip.dst, ip.next_hdr),
            _ => return DecapStat::PassNotEncap,
        },
    };
    if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 {
        return DecapStat::PassNotEncap;
    }
    if !is_local(family, dst) {
        return DecapStat::PassNotLocal;
    }
    parse_error(e)
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Result<DecapStat, DecapStat> {
    // A frame too short for Ethernet, or not IP, is no tunnel.
    let l2 = parse::parse_eth(ctx).map_err(|_| DecapStat::PassNotEncap)?;
    let outer = match l2.ether_type {
        ETH_P_IP => parse::parse_ipv4(ctx, l2.l3_off),
        ETH_P_IPV6 => parse::parse_ipv6(ctx, l2.l3_off),
        _ => return Ok(DecapStat::PassNotEncap),
    }
    .map_err(|e| bad_outer(ctx, &l2, e))?;
    let inner_family = match outer.proto {
        IPPROTO_IPIP => FAMILY_V4,
        IPPROTO_IPV6 => FAMILY_V6,
        _ => return Ok(DecapStat::PassNotEncap),
    };
    if outer.fragment {
        return Ok(DecapStat::PassFragment);
    }
    if !is_local(outer.family, outer.dst) {
        return Ok(DecapStat::PassNotLocal);
    }
    // The inner header must be there, be what the outer one says, and
    // fill the outer packet exactly. (Read whole headers: a 1-byte bounds
    // check compiles to a form the verifier cannot use.)
    let inner_off = outer.l4_off;
    let outer_payload = l2.l3_off + outer.total_len - inner_off;
    let (ether_type, inner_proto, inner_hlen) = if inner_family == FAMILY_V4 {
        let ip: Ipv4Hdr = read(ctx, inner_off).ok_or(DecapStat::DropTruncated)?;
        let hdr_len = ((ip.version_ihl & 0x0f) as usize) * 4;
        if ip.version_ihl >> 4 != 4 || hdr_len < IPV4_HLEN {
            return Err(DecapStat::DropMalformed);
        }
        let total_len = u16::from_be(ip.tot_len) as usize;
        // Options cut by the inner length, or an inner length that is not
        // the outer payload's.
        if total_len != outer_payload || hdr_len > total_len {
            return Err(DecapStat::DropMalformed);
        }
        (ETH_P_IP, ip.proto, hdr_len)
    } else {
        let ip: Ipv6Hdr = read(ctx, inner_off).ok_or(DecapStat::DropTruncated)?;
        if u32::from_be(ip.vtc_flow) >> 28 != 6 {
            return Err(DecapStat::DropMalformed);
        }
        if IPV6_HLEN + u16::from_be(ip.payload_len) as usize != outer_payload {
            return Err(DecapStat::DropMalformed);
        }
        (ETH_P_IPV6, ip.next_hdr, IPV6_HLEN)
    };
    // A tunnel inside the tunnel: second chance.
    let (strip, ether_type, stat) = if inner_proto == IPPROTO_IPIP || inner_proto == IPPROTO_IPV6 {
        let family = if inner_proto == IPPROTO_IPIP { FAMILY_V4 } else { FAMILY_V6 };
        match second_chance::handle(ctx, &l2, &outer, inner_off, inner_hlen, outer_payload - inner_hlen, family)? {
            second_chance::Verdict::Forward => return Ok(DecapStat::ScForward),
            second_chance::Verdict::Deliver { stat, strip, family } => {
                (strip, if family == FAMILY_V4 { ETH_P_IP } else { ETH_P_IPV6 }, stat)
            }
        }
    } else {
        let stat = if outer.family == FAMILY_V4 { DecapStat::DecapV4 } else { DecapStat::DecapV6 };
        (inner_off - l2.l3_off, ether_type, stat)
    };
    // The Ethernet header (and tag) moves in front of the inner packet.
    // Read from the packet rather than taken from `l2.vlan`: LLVM leaves an
    // absent tag's fields undefined, and the verifier refuses to copy them.
    let eth: EthHdr = read(ctx, 0).ok_or(DecapStat::DropTruncated)?;
    let tag: VlanHdr = if l2.vlan.is_some() {
        read(ctx, ETH_HLEN).ok_or(DecapStat::DropTruncated)?
    } else {
        VlanHdr { tci: 0, proto: 0 }
    };
    adjust_head(ctx, strip as i32).ok_or(DecapStat::DropHeadroom)?;
    if l2.vlan.is_some() {
        write(ctx, 0, eth).ok_or(DecapStat::DropTruncated)?;
        write(ctx, ETH_HLEN, VlanHdr { tci: tag.tci, proto: ether_type.to_be() }).ok_or(DecapStat::DropTruncated)?;
    } else {
        write(ctx, 0, EthHdr { proto: ether_type.to_be(), ..eth }).ok_or(DecapStat::DropTruncated)?;
    }
    Ok(stat)
}
