//! The backends' decap program: strips the outer IPv4/IPv6 header of an
//! IP-in-IP packet addressed to this host and passes the inner packet up, so
//! backends need no `ipip`/`ip6_tunnel` module.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    Counter, DecapAddr, DecapStat, FAMILY_V4, FAMILY_V6, IPPROTO_IPIP, IPPROTO_IPV6,
};
use lb_ebpf::{
    hdr::*,
    packet::{adjust_head, len, read, write_eth},
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
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn parse_error(e: ParseError) -> DecapStat {
    match e {
        ParseError::Truncated => DecapStat::DropTruncated,
        ParseError::NonIp | ParseError::Ipv6ExtUnsupported => DecapStat::PassNotEncap,
        _ => DecapStat::DropMalformed,
    }
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Result<DecapStat, DecapStat> {
    let l2 = parse::parse_eth(ctx).map_err(parse_error)?;
    let outer = match l2.ether_type {
        ETH_P_IP => parse::parse_ipv4(ctx, l2.l3_off),
        ETH_P_IPV6 => parse::parse_ipv6(ctx, l2.l3_off),
        _ => return Ok(DecapStat::PassNotEncap),
    }
    .map_err(parse_error)?;
    let inner_family = match outer.proto {
        IPPROTO_IPIP => FAMILY_V4,
        IPPROTO_IPV6 => FAMILY_V6,
        _ => return Ok(DecapStat::PassNotEncap),
    };
    if outer.fragment {
        return Ok(DecapStat::PassFragment);
    }
    let key = DecapAddr { addr: outer.dst, family: outer.family, _pad: [0; 3] };
    // SAFETY: only checked for presence.
    if unsafe { DECAP_ADDRS.get(&key) }.is_none() {
        return Ok(DecapStat::PassNotLocal);
    }
    // The inner header must be there and match what the outer one says.
    // (Read whole headers: a 1-byte bounds check compiles to a form the
    // verifier cannot use.)
    let inner_off = outer.l4_off;
    let (version, ether_type) = if inner_family == FAMILY_V4 {
        let ip: Ipv4Hdr = read(ctx, inner_off).ok_or(DecapStat::DropTruncated)?;
        (ip.version_ihl >> 4, ETH_P_IP)
    } else {
        let ip: Ipv6Hdr = read(ctx, inner_off).ok_or(DecapStat::DropTruncated)?;
        ((u32::from_be(ip.vtc_flow) >> 28) as u8, ETH_P_IPV6)
    };
    let want = if inner_family == FAMILY_V4 { 4 } else { 6 };
    if version != want {
        return Err(DecapStat::DropMalformed);
    }
    let eth: EthHdr = read(ctx, 0).ok_or(DecapStat::DropTruncated)?;
    let outer_len = inner_off - l2.l3_off;
    adjust_head(ctx, outer_len as i32).ok_or(DecapStat::DropHeadroom)?;
    write_eth(ctx, eth.dst, eth.src, l2.vlan, ether_type).ok_or(DecapStat::DropTruncated)?;
    Ok(if outer.family == FAMILY_V4 { DecapStat::DecapV4 } else { DecapStat::DecapV6 })
}
