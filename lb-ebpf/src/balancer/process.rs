//! The balancer's per-packet path, from the config check to the verdict:
//! parse, VIP filter and lookup, backend choice, encapsulation (or an ICMP
//! answer). [`run`] is the whole program; its `STOP` parameter ends the
//! path early after one [`Stage`] so `lb-bench breakdown` can time each
//! stage (the `lb-balancer-stages` object, never loaded by the daemon; the
//! balancer itself is `run::<{ Stage::Full as u8 }>`, every check of
//! `STOP` folded away at compile time).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    flow_hash64, Action, Addr, FlowKey, LbConfig, Stat, CFG_F_READY, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6,
};
use lb_ebpf::{
    hdr::*,
    packet::{adjust_tail, len},
    parse::{self, ParseError, L2, L3, L4},
};

use crate::{
    capture,
    encap::{self, Plan},
    flood, icmp,
    lookup::{
        self, choose_real, conn_use, find_vip, has_echo_marker, is_vip_address, maybe_vip, touch_conn_set, ConnUse,
    },
    maps::CONFIG,
    second_chance,
    stats::{count, count_real, count_vip},
};

/// Where a breakdown variant stops, in the order the full path runs them;
/// each includes every stage before it. A stopped variant returns XDP_TX
/// without touching the packet (and without the final counter).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The capture check (one array read).
    Capture = 1,
    /// + the config read and its ready flag.
    Config = 2,
    /// + Ethernet and IP headers, the VIP address filter.
    L3 = 3,
    /// + the TCP/UDP/ICMP header.
    L4 = 4,
    /// + the flow hash and the early touch of its connection-table set
    ///   (a SYN's touch follows the VIP lookup).
    Hash = 5,
    /// + the VIP lookup (and a SYN's touch of its set; echo: the address's
    ///   echo marker, and the reply follows at once).
    Vip = 6,
    /// + the VIP counter and the backend choice (connection table, Maglev
    ///   ring on a miss, the insert).
    Choose = 7,
    /// + the backend's counter.
    RealCounter = 8,
    /// + encapsulation with its header checksum (for echo: the reply).
    Encap = 9,
    /// + the reason counter: the whole program.
    Full = 10,
}

/// Whether the variant `STOP` ends after `stage`.
#[inline(always)]
const fn stops_at<const STOP: u8>(stage: Stage) -> bool {
    STOP == stage as u8
}

/// The program: the packet's path and its one reason counter, with the
/// capture hooks around them when a capture is armed.
#[inline(always)]
pub fn run<const STOP: u8>(ctx: &XdpContext) -> u32 {
    let bytes = len(ctx);
    let capturing = capture::armed();
    if stops_at::<STOP>(Stage::Capture) {
        return xdp_action::XDP_TX;
    }
    if capturing {
        capture::arrived(ctx);
    }
    let stat = match process::<STOP>(ctx, bytes) {
        Ok(stat) | Err(stat) => stat,
    };
    if STOP > Stage::Encap as u8 {
        count(stat, bytes);
    }
    if capturing {
        capture::finished(ctx, stat);
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
fn process<const STOP: u8>(ctx: &XdpContext, bytes: usize) -> Result<Stat, Stat> {
    let cfg = match CONFIG.get(0) {
        Some(cfg) if cfg.flags & CFG_F_READY != 0 => cfg,
        _ => return Ok(Stat::PassNotReady),
    };
    if stops_at::<STOP>(Stage::Config) {
        return Ok(Stat::TxEncap);
    }
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
    if stops_at::<STOP>(Stage::L3) {
        return Ok(Stat::TxEncap);
    }
    let l4 = match parse::parse_l4(ctx, &l3, l2.l3_off) {
        Some(Ok(l4)) => l4,
        Some(Err(e)) => return Err(if_vip_address(l3.family, l3.dst, parse_error(e))),
        None => return Err(if_vip_address(l3.family, l3.dst, Stat::PassUnsupportedProto)),
    };
    if stops_at::<STOP>(Stage::L4) {
        return Ok(Stat::TxEncap);
    }
    if l3.proto == IPPROTO_ICMP || l3.proto == IPPROTO_ICMPV6 {
        if stops_at::<STOP>(Stage::Hash) {
            return Ok(Stat::TxEncap);
        }
        return handle_icmp::<STOP>(ctx, cfg, &l2, &l3, &l4, bytes);
    }
    let flow = FlowKey::new(l3.family, l3.proto, l3.src, l4.src_port, l3.dst, l4.dst_port);
    let hash64 = flow_hash64(&flow);
    let syn = l4.is_syn();
    // The connection-table set is usually not in the cache; its load starts
    // early so the miss overlaps other work. A packet that will likely hit
    // the table starts it before the VIP lookup. A SYN (never a hit: it
    // reads its VIP's Maglev ring, another likely miss) starts it after the
    // lookup that names the ring, beside that read, so the two misses
    // overlap (with 512 VIPs' rings, 1.55x the 1-VIP row before, 1.27x
    // after). A SYN in flood mode never reads its set.
    if !syn {
        touch_conn_set(hash64);
    }
    if stops_at::<STOP>(Stage::Hash) {
        return Ok(Stat::TxEncap);
    }
    let vip = find_vip(cfg, l3.family, l3.dst, l4.dst_port, l3.proto).ok_or(Stat::PassNonVip)?;
    if syn && !flood::flooded(cfg.syn_flood_threshold) {
        touch_conn_set(hash64);
    }
    if stops_at::<STOP>(Stage::Vip) {
        return Ok(Stat::TxEncap);
    }
    count_vip(vip.vip_num, bytes);
    let choice = choose_real(&vip, &flow, hash64, conn_use(&vip, l3.proto, syn), cfg.syn_flood_threshold)?;
    if stops_at::<STOP>(Stage::Choose) {
        return Ok(Stat::TxEncap);
    }
    count_real(choice.index, bytes);
    if stops_at::<STOP>(Stage::RealCounter) {
        return Ok(Stat::TxEncap);
    }
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
fn handle_icmp<const STOP: u8>(
    ctx: &XdpContext,
    cfg: &LbConfig,
    l2: &L2,
    l3: &L3,
    l4: &L4,
    bytes: usize,
) -> Result<Stat, Stat> {
    let v4 = l3.family == FAMILY_V4;
    let (echo, error) = if v4 {
        (l4.icmp_type == ICMP_ECHO_REQUEST, l4.icmp_type == ICMP_DEST_UNREACH)
    } else {
        (l4.icmp_type == ICMPV6_ECHO_REQUEST, l4.icmp_type == ICMPV6_DEST_UNREACH || l4.icmp_type == ICMPV6_PKT_TOOBIG)
    };
    if echo {
        // Answered for the address, not for one of its VIPs: the reply is
        // counted by its reason alone (no VIP's traffic figures).
        if !has_echo_marker(l3.family, &l3.dst) {
            return Err(Stat::PassNonVip);
        }
        if STOP <= Stage::RealCounter as u8 {
            return Ok(Stat::TxEncap);
        }
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
