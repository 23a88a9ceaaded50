//! Second chance on the backend: a tunnel whose payload is itself an
//! IP-in-IP packet (the hop header, naming a second backend) carries a TCP
//! packet the balancer could not place for sure. Delivered here when this
//! host has a socket for the flow (not a listener) or the packet is a SYN;
//! else sent on, once, to the hop's backend with the hop cleared; else
//! (no hop left: neither backend has the flow) delivered, so the kernel
//! answers with a reset. README, "Second chance".

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
};
use lb_common::{DecapStat, ENCAP_TTL, FAMILY_V4, IPPROTO_TCP};
use lb_ebpf::{
    csum,
    hdr::*,
    packet::{read, write},
    parse::{self, L2, L3},
};

/// `TCP_LISTEN` in the kernel's `enum tcp_state`: a listener is no
/// evidence that this host has the flow.
const TCP_LISTEN: u32 = 10;

/// What to do with a second-chance packet.
pub enum Verdict {
    /// Strip both tunnel headers (`strip` bytes after the Ethernet
    /// header); the inner packet is of `family`.
    Deliver { stat: DecapStat, strip: usize, family: u8 },
    /// Sent on to the hop's backend (already rewritten): `XDP_TX`.
    Forward,
}

/// Handles a packet whose outer header (`outer`, ending at `hop_off`)
/// carries the hop header `hop_off..hop_off + hop_len`, itself carrying an
/// IP packet of `inner_family` that fills it exactly (checked here).
#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    l2: &L2,
    outer: &L3,
    hop_off: usize,
    hop_len: usize,
    hop_payload: usize,
    inner_family: u8,
) -> Result<Verdict, DecapStat> {
    let inner_off = hop_off + hop_len;
    let inner =
        if inner_family == FAMILY_V4 { parse::parse_ipv4(ctx, inner_off) } else { parse::parse_ipv6(ctx, inner_off) }
            .map_err(|e| match e {
            parse::ParseError::Truncated => DecapStat::DropTruncated,
            _ => DecapStat::DropMalformed,
        })?;
    // The balancer gives a second hop to whole TCP packets only.
    if inner.total_len != hop_payload || inner.fragment || inner.proto != IPPROTO_TCP {
        return Err(DecapStat::DropMalformed);
    }
    let l4 = match parse::parse_l4(ctx, &inner, inner_off) {
        Some(Ok(l4)) => l4,
        Some(Err(parse::ParseError::Truncated)) => return Err(DecapStat::DropTruncated),
        _ => return Err(DecapStat::DropMalformed),
    };
    let strip = inner_off - l2.l3_off;
    if l4.is_syn() {
        return Ok(Verdict::Deliver { stat: DecapStat::ScDeliverSyn, strip, family: inner_family });
    }
    if has_flow_socket(ctx, &inner, l4.src_port, l4.dst_port) {
        return Ok(Verdict::Deliver { stat: DecapStat::ScDeliverSocket, strip, family: inner_family });
    }
    if forward(ctx, l2, outer, hop_off)? {
        return Ok(Verdict::Forward);
    }
    Ok(Verdict::Deliver { stat: DecapStat::ScNoFlow, strip, family: inner_family })
}

/// Whether this host has a socket for the inner flow in any state but
/// listening: an established (or closing) socket, a request socket of a
/// handshake in progress, a time-wait socket.
#[inline(always)]
fn has_flow_socket(ctx: &XdpContext, inner: &L3, src_port: u16, dst_port: u16) -> bool {
    // SAFETY: a plain-data union, fully initialised (zeroed, then the
    // member for this family written).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if inner.family == FAMILY_V4 {
        tuple.__bindgen_anon_1.ipv4.saddr = inner.src[0];
        tuple.__bindgen_anon_1.ipv4.daddr = inner.dst[0];
        tuple.__bindgen_anon_1.ipv4.sport = src_port;
        tuple.__bindgen_anon_1.ipv4.dport = dst_port;
        12
    } else {
        tuple.__bindgen_anon_1.ipv6.saddr = inner.src;
        tuple.__bindgen_anon_1.ipv6.daddr = inner.dst;
        tuple.__bindgen_anon_1.ipv6.sport = src_port;
        tuple.__bindgen_anon_1.ipv6.dport = dst_port;
        36
    };
    // SAFETY: the helper reads `size` bytes of the tuple on our stack; a
    // non-null result is a referenced socket, released below.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.ctx as *mut _, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is a valid sock_common pointer until released; `state`
    // is one of the fields readable through it.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut _) };
    state != TCP_LISTEN
}

/// Sends the packet on to the hop's backend: the outer header now goes
/// from this host (its destination) to the hop's destination, the hop's
/// destination is cleared (so the next backend never forwards it again),
/// and the Ethernet addresses are swapped (the packet came from the next
/// hop towards the other backends: the router). `Ok(false)` when there is
/// no hop left (or the outer header has options, which the balancer never
/// writes).
#[inline(always)]
fn forward(ctx: &XdpContext, l2: &L2, outer: &L3, hop_off: usize) -> Result<bool, DecapStat> {
    if outer.family == FAMILY_V4 {
        // The outer header first: read after the hop, its bounds check
        // would be folded into the hop's, in a form the verifier cannot use.
        let mut ip: Ipv4Hdr = read(ctx, l2.l3_off).ok_or(DecapStat::DropTruncated)?;
        let hop: Ipv4Hdr = read(ctx, hop_off).ok_or(DecapStat::DropTruncated)?;
        if hop.dst == 0 || hop_off != l2.l3_off + IPV4_HLEN {
            return Ok(false);
        }
        ip.src = ip.dst;
        ip.dst = hop.dst;
        ip.ttl = ENCAP_TTL;
        ip.check = 0;
        ip.check = csum::ipv4_header(&ip);
        let mut cleared = Ipv4Hdr { dst: 0, check: 0, ..hop };
        cleared.check = csum::ipv4_header(&cleared);
        write(ctx, l2.l3_off, ip).ok_or(DecapStat::DropTruncated)?;
        write(ctx, hop_off, cleared).ok_or(DecapStat::DropTruncated)?;
    } else {
        let mut ip: Ipv6Hdr = read(ctx, l2.l3_off).ok_or(DecapStat::DropTruncated)?;
        let hop: Ipv6Hdr = read(ctx, hop_off).ok_or(DecapStat::DropTruncated)?;
        if hop.dst == [0; 4] || hop_off != l2.l3_off + IPV6_HLEN {
            return Ok(false);
        }
        ip.src = ip.dst;
        ip.dst = hop.dst;
        ip.hop_limit = ENCAP_TTL;
        write(ctx, l2.l3_off, ip).ok_or(DecapStat::DropTruncated)?;
        write(ctx, hop_off, Ipv6Hdr { dst: [0; 4], ..hop }).ok_or(DecapStat::DropTruncated)?;
    }
    let eth: EthHdr = read(ctx, 0).ok_or(DecapStat::DropTruncated)?;
    write(ctx, 0, EthHdr { dst: eth.src, src: eth.dst, proto: eth.proto }).ok_or(DecapStat::DropTruncated)?;
    Ok(true)
}
