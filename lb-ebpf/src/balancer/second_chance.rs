//! Second chance: a TCP packet that misses the connection table (its flow
//! came from another balancer, say) and whose VIP's previous Maglev table
//! names another backend is sent to the current backend with the previous
//! one as a second hop. The hop is a second IP-in-IP header inside the
//! first: `outer (balancer → current) | hop (→ previous) | inner`. A
//! backend's decap program that has no socket for the flow sends the packet
//! on to the hop (README, "Second chance").

use aya_ebpf::programs::XdpContext;
use lb_common::{LbConfig, Real, Stat, FAMILY_V4, PREV_RING_NONE, REAL_NONE};
use lb_ebpf::{
    hdr::{IPV4_HLEN, IPV6_HLEN},
    packet::{adjust_head, write, write_eth},
    parse::{L2, L3},
};

use crate::{
    encap::{hop_proto, ipv4_outer, ipv6_outer, outer_ether_type},
    lookup::{real_at, ring_entry},
    maps::PREV_RINGS,
};

/// The backend the VIP's previous table names at `offset`, when that is
/// another backend of the same family as `current` (the hop header is of
/// the outer header's family); [`REAL_NONE`] otherwise.
#[inline(always)]
pub fn previous_choice(vip_num: u32, offset: u32, size: u32, current: u32, current_real: &Real) -> u32 {
    let prev_ring = match PREV_RINGS.get(vip_num) {
        Some(&v) if v != PREV_RING_NONE => v - 1,
        _ => return REAL_NONE,
    };
    let previous = ring_entry(prev_ring, offset, size);
    if previous == REAL_NONE || previous == current {
        return REAL_NONE;
    }
    match real_at(previous) {
        Some(real) if real.family == current_real.family => previous,
        _ => REAL_NONE,
    }
}

/// How large a second-chance packet gets: both IP-in-IP headers.
#[inline(always)]
pub fn overhead(real: &Real) -> usize {
    if real.family == FAMILY_V4 {
        2 * IPV4_HLEN
    } else {
        2 * IPV6_HLEN
    }
}

/// Prepends the outer header (to `current`), the hop header (to
/// `previous`) and the gateway's Ethernet header. The caller has checked
/// the size against the MTU and cut trailers.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    cfg: &LbConfig,
    l2: &L2,
    l3: &L3,
    current: &Real,
    previous: &Real,
    hash: u32,
) -> Result<Stat, Stat> {
    let inner_len = l3.total_len;
    let v4 = current.family == FAMILY_V4;
    let hlen = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    adjust_head(ctx, -(2 * hlen as i32)).ok_or(Stat::DropHeadroom)?;
    let l3_off =
        write_eth(ctx, cfg.gw_mac, cfg.if_mac, l2.vlan, outer_ether_type(current.family)).ok_or(Stat::DropTruncated)?;
    let inner_proto = hop_proto(l3.family);
    let hop_proto = hop_proto(current.family);
    if v4 {
        let outer = ipv4_outer(cfg, l3, hash, current.addr[0], hop_proto, IPV4_HLEN + inner_len);
        write(ctx, l3_off, outer).ok_or(Stat::DropTruncated)?;
        // The hop's source is the outer one: the second backend sees a
        // tunnel from this balancer's prefix either way.
        let hop = ipv4_outer(cfg, l3, hash, previous.addr[0], inner_proto, inner_len);
        write(ctx, l3_off + IPV4_HLEN, hop).ok_or(Stat::DropTruncated)?;
    } else {
        let outer = ipv6_outer(cfg, l3, hash, current.addr, hop_proto, IPV6_HLEN + inner_len);
        write(ctx, l3_off, outer).ok_or(Stat::DropTruncated)?;
        let hop = ipv6_outer(cfg, l3, hash, previous.addr, inner_proto, inner_len);
        write(ctx, l3_off + IPV6_HLEN, hop).ok_or(Stat::DropTruncated)?;
    }
    Ok(Stat::TxEncap)
}
