//! IP-in-IP encapsulation towards the chosen backend: IPv4-in-IPv4,
//! IPv6-in-IPv6 and IPv4-in-IPv6. The outer source is derived from the flow
//! hash inside the configured prefix, so a backend's RSS spreads flows over
//! its queues.

use aya_ebpf::programs::XdpContext;
use lb_common::{LbConfig, Real, Stat, ENCAP_TTL, FAMILY_V4, FAMILY_V6, IPPROTO_IPIP, IPPROTO_IPV6};
use lb_ebpf::{
    csum,
    hdr::{Ipv4Hdr, Ipv6Hdr, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN, IP_DF},
    packet::{adjust_head, write, write_eth},
    parse::{L2, L3},
};

/// What encapsulation a packet needs, or why it cannot have one.
pub enum Plan {
    Encap {
        outer_family: u8,
        overhead: usize,
    },
    /// Too big for the egress MTU once encapsulated; `mtu` is the largest
    /// inner packet that fits.
    TooBig {
        mtu: u32,
    },
    Refuse(Stat),
}

#[inline(always)]
pub fn plan(cfg: &LbConfig, l3: &L3, real: &Real, extra: usize) -> Plan {
    let (outer_family, overhead) = match (l3.family, real.family) {
        (FAMILY_V4, FAMILY_V4) => (FAMILY_V4, IPV4_HLEN + extra),
        (_, FAMILY_V6) => (FAMILY_V6, IPV6_HLEN + extra),
        // IPv6 inside IPv4 would need 6in4 on every backend; not offered.
        _ => return Plan::Refuse(Stat::DropFamilyMismatch),
    };
    if l3.total_len + overhead > cfg.mtu as usize {
        return Plan::TooBig { mtu: cfg.mtu.saturating_sub(overhead as u32) };
    }
    Plan::Encap { outer_family, overhead }
}

/// The protocol number of an IP-in-IP header whose payload is of `family`.
#[inline(always)]
pub fn hop_proto(family: u8) -> u8 {
    if family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    }
}

#[inline(always)]
pub fn outer_ether_type(family: u8) -> u16 {
    if family == FAMILY_V4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    }
}

/// An outer IPv4 header from the configured prefix to `dst`, carrying
/// `payload_len` bytes of protocol `proto`.
#[inline(always)]
pub fn ipv4_outer(cfg: &LbConfig, l3: &L3, hash: u32, dst: u32, proto: u8, payload_len: usize) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: l3.tos,
        tot_len: ((IPV4_HLEN + payload_len) as u16).to_be(),
        id: 0,
        frag_off: if l3.dont_fragment { IP_DF.to_be() } else { 0 },
        ttl: ENCAP_TTL,
        proto,
        check: 0,
        src: cfg.src_v4 | (hash & cfg.src_v4_mask),
        dst,
    };
    ip.check = csum::ipv4_header(&ip);
    ip
}

/// An outer IPv6 header from the configured prefix to `dst` (flow label:
/// the flow hash), carrying `payload_len` bytes of protocol `proto`.
#[inline(always)]
pub fn ipv6_outer(cfg: &LbConfig, l3: &L3, hash: u32, dst: [u32; 4], proto: u8, payload_len: usize) -> Ipv6Hdr {
    let vtc_flow = (6u32 << 28) | ((l3.tos as u32) << 20) | (hash & 0x000f_ffff);
    Ipv6Hdr {
        vtc_flow: vtc_flow.to_be(),
        payload_len: (payload_len as u16).to_be(),
        next_hdr: proto,
        hop_limit: ENCAP_TTL,
        src: [
            cfg.src_v6[0] | (hash & cfg.src_v6_mask[0]),
            cfg.src_v6[1] | (hash & cfg.src_v6_mask[1]),
            cfg.src_v6[2] | (hash & cfg.src_v6_mask[2]),
            cfg.src_v6[3] | (hash & cfg.src_v6_mask[3]),
        ],
        dst,
    }
}

/// Prepends the outer header and the gateway's Ethernet header.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    cfg: &LbConfig,
    l2: &L2,
    l3: &L3,
    real: &Real,
    hash: u32,
    outer_family: u8,
    overhead: usize,
) -> Result<Stat, Stat> {
    let inner_len = l3.total_len;
    let inner_proto = hop_proto(l3.family);
    adjust_head(ctx, -(overhead as i32)).ok_or(Stat::DropHeadroom)?;
    let l3_off =
        write_eth(ctx, cfg.gw_mac, cfg.if_mac, l2.vlan, outer_ether_type(outer_family)).ok_or(Stat::DropTruncated)?;
    if outer_family == FAMILY_V4 {
        let ip = ipv4_outer(cfg, l3, hash, real.addr[0], inner_proto, inner_len);
        write(ctx, l3_off, ip).ok_or(Stat::DropTruncated)?;
    } else {
        let ip = ipv6_outer(cfg, l3, hash, real.addr, inner_proto, inner_len);
        write(ctx, l3_off, ip).ok_or(Stat::DropTruncated)?;
    }
    Ok(Stat::TxEncap)
}
