//! The health probes' TC egress program: a packet whose `skb->mark` names a
//! probe target (`HEALTH_TARGETS`, written by the daemon's prober) leaves
//! encapsulated to that backend with the balancer's own encapsulation:
//! IPv4-in-IPv4, IPv6-in-IPv6 or IPv4-in-IPv6, the outer source taken from
//! the configured prefix by the balancer's own flow hash of the inner
//! packet, the gateway's MAC as destination. The backend's reply goes from
//! the VIP to this host's address (the inner source) and never to the outer
//! source, so any address of the prefix serves.
//! The backend decapsulates, its service answers from the VIP straight to
//! this host (DSR), and the balancer passes the answer (not VIP-destined).
//! Every other packet passes untouched.
//!
//! Packet bytes are read and written with the skb helpers
//! (`bpf_skb_load_bytes`/`bpf_skb_store_bytes`), which check bounds
//! themselves: no direct packet pointers here. The inner packet's own L4
//! checksum is left as the socket left it: with checksum offload the skb
//! stays `CHECKSUM_PARTIAL` and `csum_start` still points at the inner L4
//! header after `bpf_skb_adjust_room` (it is relative to the buffer, and
//! the room is opened in front of it), so the device, or the kernel's
//! fallback in `validate_xmit_skb`, completes the inner checksum.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6,
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use lb_common::{
    flow_hash64, Action, Addr, Counter, FlowKey, LbConfig, ProbeStat, Real, CFG_F_READY, ENCAP_TTL, FAMILY_V4,
    FAMILY_V6, HEALTH_MARK_BASE, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_HEALTH_TARGETS,
};
use lb_ebpf::{
    csum,
    hdr::{EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN, IP_DF},
};

/// Probe mark → the backend the probe goes to.
#[map]
static HEALTH_TARGETS: HashMap<u32, Real> = HashMap::with_max_entries(MAX_HEALTH_TARGETS, 0);

/// Entry 0: the balancer's forwarding config (MACs, outer source prefix).
#[map]
static HEALTH_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

#[map]
static HEALTH_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(ProbeStat::COUNT, 0);

#[classifier]
pub fn lb_health(ctx: TcContext) -> i32 {
    let bytes = ctx.len();
    let stat = match process(&ctx) {
        Ok(stat) | Err(stat) => stat,
    };
    if let Some(c) = HEALTH_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: this CPU's own slot; nothing else writes it meanwhile.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
    match stat.action() {
        Action::Drop => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// What the inner packet is: its family, length, TOS and DF bit, and the
/// flow fields the outer source is hashed from.
struct Inner {
    family: u8,
    total_len: usize,
    tos: u8,
    dont_fragment: bool,
    proto: u8,
    src: Addr,
    dst: Addr,
    /// Offset of the L4 header (ports), when the protocol has ports.
    l4_off: Option<usize>,
}

/// The balancer's flow hash of the inner packet ([`flow_hash64`]), so a
/// probe's outer source follows the data packets' scheme exactly. Ports
/// are read when the L4 header is there (probes are TCP or UDP).
#[inline(always)]
fn flow_hash(ctx: &TcContext, inner: &Inner) -> u32 {
    let ports: [u16; 2] = match inner.l4_off {
        Some(off) => ctx.load(off).unwrap_or([0, 0]),
        None => [0, 0],
    };
    let flow = FlowKey::new(inner.family, inner.proto, inner.src, ports[0], inner.dst, ports[1]);
    flow_hash64(&flow) as u32
}

#[inline(always)]
fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP
}

#[inline(always)]
fn inner(ctx: &TcContext) -> Result<Inner, ProbeStat> {
    let eth: EthHdr = ctx.load(0).map_err(|_| ProbeStat::DropMalformed)?;
    match u16::from_be(eth.proto) {
        ETH_P_IP => {
            let ip: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| ProbeStat::DropMalformed)?;
            if ip.version_ihl >> 4 != 4 {
                return Err(ProbeStat::DropMalformed);
            }
            let frag_off = u16::from_be(ip.frag_off);
            let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
            Ok(Inner {
                family: FAMILY_V4,
                total_len: u16::from_be(ip.tot_len) as usize,
                tos: ip.tos,
                dont_fragment: frag_off & IP_DF != 0,
                proto: ip.proto,
                src: [ip.src, 0, 0, 0],
                dst: [ip.dst, 0, 0, 0],
                l4_off: has_ports(ip.proto).then_some(ETH_HLEN + ihl),
            })
        }
        ETH_P_IPV6 => {
            let ip: Ipv6Hdr = ctx.load(ETH_HLEN).map_err(|_| ProbeStat::DropMalformed)?;
            let vtc_flow = u32::from_be(ip.vtc_flow);
            if vtc_flow >> 28 != 6 {
                return Err(ProbeStat::DropMalformed);
            }
            Ok(Inner {
                family: FAMILY_V6,
                total_len: IPV6_HLEN + u16::from_be(ip.payload_len) as usize,
                tos: (vtc_flow >> 20) as u8,
                dont_fragment: true,
                proto: ip.next_hdr,
                src: ip.src,
                dst: ip.dst,
                // Probe sockets add no extension headers.
                l4_off: has_ports(ip.next_hdr).then_some(ETH_HLEN + IPV6_HLEN),
            })
        }
        _ => Err(ProbeStat::DropMalformed),
    }
}

#[inline(always)]
fn process(ctx: &TcContext) -> Result<ProbeStat, ProbeStat> {
    // SAFETY: a plain read of the skb's mark field.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark.wrapping_sub(HEALTH_MARK_BASE) >= MAX_HEALTH_TARGETS {
        return Ok(ProbeStat::PassNotProbe);
    }
    // SAFETY: the value is copied out at once; the daemon replaces entries
    // whole.
    let Some(real) = (unsafe { HEALTH_TARGETS.get(&mark) }).copied() else {
        return Ok(ProbeStat::PassNotProbe);
    };
    // From here on the packet is a probe: it must never leave unencapsulated
    // (addressed to the VIP, it would come back to a balancer).
    let cfg = HEALTH_CONFIG.get(0).copied().ok_or(ProbeStat::DropNotReady)?;
    if cfg.flags & CFG_F_READY == 0 {
        return Err(ProbeStat::DropNotReady);
    }
    let inner = inner(ctx)?;
    let (outer_family, overhead, encap_flag) = match (inner.family, real.family) {
        (FAMILY_V4, FAMILY_V4) => (FAMILY_V4, IPV4_HLEN, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4),
        (_, FAMILY_V6) => (FAMILY_V6, IPV6_HLEN, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6),
        _ => return Err(ProbeStat::DropFamilyMismatch),
    };
    let hash = flow_hash(ctx, &inner);
    ctx.adjust_room(overhead as i32, BPF_ADJ_ROOM_MAC, (BPF_F_ADJ_ROOM_FIXED_GSO | encap_flag) as u64)
        .map_err(|_| ProbeStat::DropNoRoom)?;
    let inner_proto = if inner.family == FAMILY_V4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    let ether_type = if outer_family == FAMILY_V4 { ETH_P_IP } else { ETH_P_IPV6 };
    let eth = EthHdr { dst: cfg.gw_mac, src: cfg.if_mac, proto: ether_type.to_be() };
    ctx.store(0, &eth, 0).map_err(|_| ProbeStat::DropMalformed)?;
    if outer_family == FAMILY_V4 {
        let mut ip = Ipv4Hdr {
            version_ihl: 0x45,
            tos: inner.tos,
            tot_len: ((IPV4_HLEN + inner.total_len) as u16).to_be(),
            id: 0,
            frag_off: if inner.dont_fragment { IP_DF.to_be() } else { 0 },
            ttl: ENCAP_TTL,
            proto: inner_proto,
            check: 0,
            src: cfg.src_v4 | (hash & cfg.src_v4_mask),
            dst: real.addr[0],
        };
        ip.check = csum::ipv4_header(&ip);
        ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ProbeStat::DropMalformed)?;
    } else {
        let vtc_flow = (6u32 << 28) | ((inner.tos as u32) << 20) | (hash & 0x000f_ffff);
        let mut src = cfg.src_v6;
        for (word, mask) in src.iter_mut().zip(cfg.src_v6_mask.iter()) {
            *word |= hash & mask;
        }
        let ip = Ipv6Hdr {
            vtc_flow: vtc_flow.to_be(),
            payload_len: (inner.total_len as u16).to_be(),
            next_hdr: inner_proto,
            hop_limit: ENCAP_TTL,
            src,
            dst: real.addr,
        };
        ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ProbeStat::DropMalformed)?;
    }
    Ok(ProbeStat::ProbeEncapsulated)
}
