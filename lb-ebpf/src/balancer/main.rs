//! The balancer: picks a backend for each packet to a VIP (connection table,
//! then Maglev) and forwards it IP-in-IP with XDP_TX. Everything that is not
//! for a VIP goes to the kernel. Each packet bumps exactly one reason counter.
#![no_std]
#![no_main]

mod capture;
mod encap;
mod flood;
mod icmp;
mod lookup;
mod maps;
mod second_chance;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    flow_hash64, Action, Addr, FlowKey, LbConfig, Stat, CFG_F_READY, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP,
    IPPROTO_ICMPV6, VIP_F_ICMP_ECHO,
};
use lb_ebpf::{
    hdr::*,
    packet::{adjust_tail, len},
    parse::{self, ParseError, L2, L3, L4},
};

use crate::{
    encap::Plan,
    lookup::{choose_real, conn_use, find_vip, is_vip_address, maybe_vip, touch_conn_set, ConnUse},
    maps::CONFIG,
    stats::{count, count_real, count_vip},
};

// `#[xdp]` wraps this function in the program's entry; inlined there, the
// packet's path runs in the entry itself. Left to LLVM, a body this large
// stays a BPF subprogram called once per packet (a call, a frame, the
// callee-saved registers), which cost every path some 8 ns (bench/README).
#[xdp]
#[inline(always)]
pub fn balancer(ctx: XdpContext) -> u32 {
    let bytes = len(&ctx);
    let capturing = capture::armed();
    if capturing {
        capture::arrived(&ctx);
    }
    let stat = match process(&ctx, bytes) {
        Ok(stat) | Err(stat) => stat,
    };
    count(stat, bytes);
    if capturing {
        capture::finished(&ctx, stat);
    }
    match stat.action() {
        Action::Tx => xdp_action::XDP_TX,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Pass | Action::Event => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn parse_error(e: ParseError) -> Stat {
    match e {
        ParseError::Truncated => Stat::DropTruncated,
        ParseError::NonIp => Stat::PassNonIp,
        ParseError::BadVersion => Stat::DropBadVersion,
        ParseError::BadIhl => Stat::DropBadIhl,
        ParseError::BadTotalLen => Stat::DropBadTotalLen,
        ParseError::BadL4Header => Stat::DropBadL4Header,
        ParseError::Ipv6ExtUnsupported => Stat::PassIpv6ExtUnsupported,
    }
}

/// `stat` if the destination is exactly a VIP address, else `pass_non_vip`:
/// the VIP filter may only short-cut the negative answer, so every path
/// that has not found its VIP by an exact lookup asks here (rare paths
/// only: fragments, other protocols, ICMP, malformed headers).
#[inline(always)]
fn if_vip_address(family: u8, dst: Addr, stat: Stat) -> Stat {
    if is_vip_address(family, &dst) {
        stat
    } else {
        Stat::PassNonVip
    }
}

#[inline(always)]
fn process(ctx: &XdpContext, bytes: usize) -> Result<Stat, Stat> {
    let cfg = match CONFIG.get(0) {
        Some(cfg) if cfg.flags & CFG_F_READY != 0 => cfg,
        _ => return Ok(Stat::PassNotReady),
    };
    let l2 = parse::parse_eth(ctx).map_err(parse_error)?;
    if l2.ether_type != ETH_P_IP && l2.ether_type != ETH_P_IPV6 {
        return Ok(Stat::PassNonIp);
    }
    // The destination decides first: most traffic that is not for a VIP
    // leaves here, without a map lookup and without checking the rest of
    // its headers (that is the kernel's business). Each family reads its
    // fixed header once.
    let l3 = if l2.ether_type == ETH_P_IP {
        let ip = parse::ipv4_fixed(ctx, l2.l3_off).map_err(parse_error)?;
        let dst = [ip.dst, 0, 0, 0];
        if !maybe_vip(&dst) {
            return Ok(Stat::PassNonVip);
        }
        parse::check_ipv4(ctx, l2.l3_off, &ip).map_err(|e| if_vip_address(FAMILY_V4, dst, parse_error(e)))?
    } else {
        let ip = parse::ipv6_fixed(ctx, l2.l3_off).map_err(parse_error)?;
        if !maybe_vip(&ip.dst) {
            return Ok(Stat::PassNonVip);
        }
        parse::check_ipv6(ctx, l2.l3_off, &ip).map_err(|e| if_vip_address(FAMILY_V6, ip.dst, parse_error(e)))?
    };
    if l3.fragment {
        return Err(if_vip_address(l3.family, l3.dst, Stat::PassFragment));
    }
    let l4 = match parse::parse_l4(ctx, &l3, l2.l3_off) {
        Some(Ok(l4)) => l4,
        Some(Err(e)) => return Err(if_vip_address(l3.family, l3.dst, parse_error(e))),
        None => return Err(if_vip_address(l3.family, l3.dst, Stat::PassUnsupportedProto)),
    };
    if l3.proto == IPPROTO_ICMP || l3.proto == IPPROTO_ICMPV6 {
        return handle_icmp(ctx, cfg, &l2, &l3, &l4, bytes);
    }
    let flow = FlowKey::new(l3.family, l3.proto, l3.src, l4.src_port, l3.dst, l4.dst_port);
    let hash64 = flow_hash64(&flow);
    let syn = l4.is_syn();
    // A SYN in flood mode never reads its connection-table set.
    if !(syn && flood::flooded(cfg.syn_flood_threshold)) {
        touch_conn_set(hash64);
    }
    let vip = find_vip(cfg, l3.family, l3.dst, l4.dst_port, l3.proto).ok_or(Stat::PassNonVip)?;
    count_vip(vip.vip_num, bytes);
    let choice = choose_real(&vip, &flow, hash64, conn_use(&vip, l3.proto, syn), cfg.syn_flood_threshold)?;
    count_real(choice.index, bytes);
    if choice.previous != lb_common::REAL_NONE {
        return forward_second_chance(ctx, cfg, &l2, &l3, &choice.real, choice.previous, hash64 as u32, bytes);
    }
    forward(ctx, cfg, &l2, &l3, &choice.real, hash64 as u32, bytes, false)
}

/// Encapsulates towards `real` with the previous table's backend as a
/// second hop, or answers "too big" with the MTU that leaves room for both
/// headers. Only TCP packets that are not SYNs come here (never an ICMP
/// error). Inlined (a BPF call takes five arguments at most); only flows
/// whose table changed run it.
#[inline(always)]
fn forward_second_chance(
    ctx: &XdpContext,
    cfg: &LbConfig,
    l2: &L2,
    l3: &L3,
    real: &lb_common::Real,
    previous: u32,
    hash: u32,
    bytes: usize,
) -> Result<Stat, Stat> {
    let Some(previous) = lookup::real_at(previous) else {
        return forward(ctx, cfg, l2, l3, real, hash, bytes, false);
    };
    let extra = second_chance::overhead(real) / 2;
    match encap::plan(cfg, l3, real, extra) {
        Plan::Encap { .. } => {
            trim_to_ip(ctx, l2, l3, bytes)?;
            let stat = second_chance::encapsulate(ctx, cfg, l2, l3, real, &previous, hash)?;
            count(Stat::SecondChanceHop, bytes);
            Ok(stat)
        }
        Plan::TooBig { mtu } => icmp::too_big(ctx, l2, l3, mtu, bytes),
        Plan::Refuse(stat) => Err(stat),
    }
}

/// Cuts what follows the IP packet (Ethernet padding, trailers): it is not
/// part of the packet, must not travel into the tunnel or a reply, and
/// must not count against the MTU. Returns the frame's new length.
#[inline(always)]
fn trim_to_ip(ctx: &XdpContext, l2: &L2, l3: &L3, bytes: usize) -> Result<usize, Stat> {
    let ip_end = l2.l3_off + l3.total_len;
    if bytes > ip_end {
        adjust_tail(ctx, ip_end as i32 - bytes as i32).ok_or(Stat::DropTruncated)?;
    }
    Ok(ip_end)
}

/// Encapsulates towards `real`, or answers "too big". An ICMP error is
/// never answered with an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4(e)): if
/// it does not fit, it is dropped.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    cfg: &LbConfig,
    l2: &L2,
    l3: &L3,
    real: &lb_common::Real,
    hash: u32,
    bytes: usize,
    icmp_error: bool,
) -> Result<Stat, Stat> {
    match encap::plan(cfg, l3, real, 0) {
        Plan::Encap { outer_family, overhead } => {
            trim_to_ip(ctx, l2, l3, bytes)?;
            encap::encapsulate(ctx, cfg, l2, l3, real, hash, outer_family, overhead)
        }
        Plan::TooBig { .. } if icmp_error => Err(Stat::DropTooBig),
        Plan::TooBig { mtu } => icmp::too_big(ctx, l2, l3, mtu, bytes),
        Plan::Refuse(stat) => Err(stat),
    }
}

/// Echo requests to a VIP address are answered here; errors about a VIP's
/// flow (unreachable, fragmentation needed, packet too big), sent to that
/// VIP's address, follow that flow to its backend; the rest (neighbour
/// discovery, ...) is the kernel's.
#[inline(always)]
fn handle_icmp(ctx: &XdpContext, cfg: &LbConfig, l2: &L2, l3: &L3, l4: &L4, bytes: usize) -> Result<Stat, Stat> {
    let v4 = l3.family == FAMILY_V4;
    let (echo, error) = if v4 {
        (l4.icmp_type == ICMP_ECHO_REQUEST, l4.icmp_type == ICMP_DEST_UNREACH)
    } else {
        (l4.icmp_type == ICMPV6_ECHO_REQUEST, l4.icmp_type == ICMPV6_DEST_UNREACH || l4.icmp_type == ICMPV6_PKT_TOOBIG)
    };
    if echo {
        let marker = find_vip(cfg, l3.family, l3.dst, 0, l3.proto).ok_or(Stat::PassNonVip)?;
        if marker.flags & VIP_F_ICMP_ECHO == 0 {
            return Err(Stat::PassNonVip);
        }
        count_vip(marker.vip_num, bytes);
        trim_to_ip(ctx, l2, l3, bytes)?;
        return icmp::echo_reply(ctx, l2, l3);
    }
    if !error {
        return Err(if_vip_address(l3.family, l3.dst, Stat::PassIcmpOther));
    }
    let ip_end = l2.l3_off + l3.total_len;
    let Some(quoted) = parse::parse_quoted(ctx, l3.family, l3.l4_off, ip_end) else {
        return Err(if_vip_address(l3.family, l3.dst, Stat::PassIcmpOther));
    };
    // The quoted packet went from the VIP to the client, so the error about
    // it is addressed to the VIP itself; an error to another address (one
    // that shares the VIP's filter bit, say) is not ours.
    if quoted.vip != l3.dst {
        return Err(Stat::PassNonVip);
    }
    let vip = find_vip(cfg, l3.family, quoted.vip, quoted.vip_port, quoted.proto).ok_or(Stat::PassNonVip)?;
    count_vip(vip.vip_num, bytes);
    let flow = FlowKey::new(l3.family, quoted.proto, quoted.client, quoted.client_port, quoted.vip, quoted.vip_port);
    let hash64 = flow_hash64(&flow);
    let conn =
        if conn_use(&vip, quoted.proto, false) == ConnUse::Bypass { ConnUse::Bypass } else { ConnUse::LookupOnly };
    let choice = choose_real(&vip, &flow, hash64, conn, cfg.syn_flood_threshold)?;
    count_real(choice.index, bytes);
    let stat = forward(ctx, cfg, l2, l3, &choice.real, hash64 as u32, bytes, true)?;
    count(Stat::IcmpErrorForwarded, bytes);
    Ok(stat)
}
