//! The independent model: README's input → action → counter table, written
//! from the table over plain byte slices (no code shared with the data
//! plane beyond lb-common's flow hashes and the rings read back from the
//! map). It says what must come out of each frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    flow_hash, flow_hash64, ring_slot, FlowKey, Stat, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use lb_control::dataplane::ip_to_addr;

use super::world::{Vip, World, RING_SIZE};

/// What must happen to a frame.
#[derive(Debug)]
pub enum Expect {
    Pass(Stat),
    Drop(Stat),
    /// Encapsulated to `real` (an index): `bytes` is the whole frame.
    Encap {
        real: u32,
        flow: FlowKey,
        bytes: Vec<u8>,
        l3: usize,
        outer_len: usize,
        inner: Vec<u8>,
    },
    /// Echo reply: `bytes` except the checksum fields (IPv4 header, ICMP
    /// at `l4`), which must verify whenever the request's did.
    EchoReply {
        bytes: Vec<u8>,
        l3: usize,
        l4: usize,
        v4: bool,
        checks_valid: bool,
    },
    TooBig {
        bytes: Vec<u8>,
    },
    /// Encapsulated to `real` with a second hop to another backend (second
    /// chance): the hop header inside the outer one. `forwarded`: the frame
    /// the first backend's decap program sends on to the hop.
    SecondHop {
        real: u32,
        flow: FlowKey,
        bytes: Vec<u8>,
        forwarded: Vec<u8>,
        l3: usize,
        inner: Vec<u8>,
    },
    /// A TCP packet (not a SYN) of a VIP whose previous table names another
    /// backend for its flow: the connection table decides. `hit`: the flow
    /// is in it (only a SYN outside the SYN-flood mode puts it there);
    /// `miss`: it is not, and the packet gets its second chance. The
    /// checker, which sees the SYNs, picks.
    Either {
        flow: FlowKey,
        hit: Box<Expect>,
        miss: Box<Expect>,
    },
}

impl Expect {
    /// The reason counter; for [`Expect::Either`], the hit's.
    pub fn stat(&self) -> Stat {
        match self {
            Expect::Pass(s) | Expect::Drop(s) => *s,
            Expect::Encap { .. } | Expect::SecondHop { .. } => Stat::TxEncap,
            Expect::EchoReply { .. } => Stat::TxIcmpEchoReply,
            Expect::TooBig { .. } => Stat::TxIcmpTooBig,
            Expect::Either { hit, .. } => hit.stat(),
        }
    }
}

/// The internet checksum of `data` on top of a partial sum: the value to
/// write into a zeroed checksum field.
pub fn csum(data: &[u8], init: u32) -> u16 {
    let mut sum = init as u64;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One's-complement sum of an IPv6 pseudo-header.
pub fn pseudo6(src: &[u8], dst: &[u8], len: usize, next: u8) -> u32 {
    let mut sum = 0u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    sum + (len as u32 >> 16) + (len as u32 & 0xffff) + next as u32
}

/// Whether `data`, checksum included, verifies.
pub fn verifies(data: &[u8], init: u32) -> bool {
    csum(data, init) == 0
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

struct Ip {
    v4: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    tos: u8,
    l4: usize,
    end: usize,
    fragment: bool,
    df: bool,
}

/// Parses the IP header per the table's rows, in their order of precedence.
fn parse_ip(f: &[u8], l3: usize, ether_type: u16, world: &World) -> Result<Ip, Stat> {
    let v4 = ether_type == 0x0800;
    let fixed = if v4 { 20 } else { 40 };
    if f.len() < l3 + fixed {
        return Err(Stat::DropTruncated);
    }
    if f[l3] >> 4 != if v4 { 4 } else { 6 } {
        return Err(Stat::DropBadVersion);
    }
    let (src, dst): (IpAddr, IpAddr) = if v4 {
        (
            Ipv4Addr::from(<[u8; 4]>::try_from(&f[l3 + 12..l3 + 16]).unwrap()).into(),
            Ipv4Addr::from(<[u8; 4]>::try_from(&f[l3 + 16..l3 + 20]).unwrap()).into(),
        )
    } else {
        (
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 8..l3 + 24]).unwrap()).into(),
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 24..l3 + 40]).unwrap()).into(),
        )
    };
    // From here on, only traffic to a VIP address is the balancer's.
    if !world.is_vip_address(dst) {
        return Err(Stat::PassNonVip);
    }
    if v4 {
        let ihl = (f[l3] & 0x0f) as usize * 4;
        if ihl < 20 {
            return Err(Stat::DropBadIhl);
        }
        if f.len() < l3 + ihl {
            return Err(Stat::DropTruncated);
        }
        let total = be16(f, l3 + 2) as usize;
        if total < ihl || l3 + total > f.len() {
            return Err(Stat::DropBadTotalLen);
        }
        let frag = be16(f, l3 + 6);
        Ok(Ip {
            v4,
            src,
            dst,
            proto: f[l3 + 9],
            tos: f[l3 + 1],
            l4: l3 + ihl,
            end: l3 + total,
            fragment: frag & 0x3fff != 0,
            df: frag & 0x4000 != 0,
        })
    } else {
        let plen = be16(f, l3 + 4) as usize;
        if plen == 0 || l3 + 40 + plen > f.len() {
            return Err(Stat::DropBadTotalLen);
        }
        let end = l3 + 40 + plen;
        let mut next = f[l3 + 6];
        let mut off = l3 + 40;
        let mut fragment = false;
        // Up to four hop-by-hop / routing / destination-options headers,
        // then possibly a fragment header.
        let mut walked = 0;
        loop {
            match next {
                0 | 43 | 60 if walked < 4 => {
                    if f.len() < off + 2 {
                        return Err(Stat::DropTruncated);
                    }
                    next = f[off];
                    off += (f[off + 1] as usize + 1) * 8;
                    walked += 1;
                    if off > end {
                        return Err(Stat::DropBadTotalLen);
                    }
                }
                44 => {
                    if f.len() < off + 2 {
                        return Err(Stat::DropTruncated);
                    }
                    next = f[off];
                    off += 8;
                    fragment = true;
                    break;
                }
                _ => break,
            }
        }
        if !fragment && matches!(next, 0 | 43 | 60) {
            return Err(Stat::PassIpv6ExtUnsupported);
        }
        if off > end {
            return Err(Stat::DropBadTotalLen);
        }
        let vtc = u32::from_be_bytes(f[l3..l3 + 4].try_into().unwrap());
        Ok(Ip { v4, src, dst, proto: next, tos: (vtc >> 20) as u8, l4: off, end, fragment, df: true })
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

fn net16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The flow key (ports in network order) of `src:sport → dst:dport`.
fn flow(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> FlowKey {
    FlowKey::new(family(src), proto, ip_to_addr(src).0, net16(sport), ip_to_addr(dst).0, net16(dport))
}

/// The frame the balancer must send for `inner` to backend `real`;
/// `inner_v4`: whether `inner` is an IPv4 packet.
#[allow(clippy::too_many_arguments)]
fn encap_frame(
    world: &World,
    f: &[u8],
    l3: usize,
    inner: &[u8],
    inner_v4: bool,
    real: IpAddr,
    hash: u32,
    ip: &Ip,
) -> Vec<u8> {
    let cfg = &world.config;
    let mut out = Vec::with_capacity(inner.len() + 60);
    out.extend_from_slice(&cfg.gw_mac);
    out.extend_from_slice(&cfg.if_mac);
    if l3 == 18 {
        out.extend_from_slice(&f[12..16]);
    }
    match real {
        IpAddr::V4(r) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let src = (cfg.src_v4 | (hash & cfg.src_v4_mask)).to_ne_bytes();
            let mut h = vec![0x45, ip.tos];
            h.extend_from_slice(&((20 + inner.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&(if ip.df { 0x4000u16 } else { 0 }).to_be_bytes());
            h.extend_from_slice(&[64, 4, 0, 0]);
            h.extend_from_slice(&src);
            h.extend_from_slice(&r.octets());
            let c = csum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&h);
        }
        IpAddr::V6(r) => {
            out.extend_from_slice(&0x86DDu16.to_be_bytes());
            let vtc = (6u32 << 28) | ((ip.tos as u32) << 20) | (hash & 0xf_ffff);
            out.extend_from_slice(&vtc.to_be_bytes());
            out.extend_from_slice(&(inner.len() as u16).to_be_bytes());
            out.extend_from_slice(&[if inner_v4 { 4 } else { 41 }, 64]);
            for i in 0..4 {
                out.extend_from_slice(&(cfg.src_v6[i] | (hash & cfg.src_v6_mask[i])).to_ne_bytes());
            }
            out.extend_from_slice(&r.octets());
        }
    }
    out.extend_from_slice(inner);
    out
}

/// The ICMP error answering a packet too big to encapsulate.
fn too_big_frame(f: &[u8], l3: usize, ip: &Ip, mtu: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&f[6..12]);
    out.extend_from_slice(&f[0..6]);
    if l3 == 18 {
        out.extend_from_slice(&f[12..16]);
    }
    let total = ip.end - l3;
    let limit = if ip.v4 { 576 - 28 } else { 1280 - 48 };
    let quote = &f[l3..l3 + (total.min(limit) & !3)];
    let (vip, client) = (addr_bytes(ip.dst), addr_bytes(ip.src));
    if ip.v4 {
        out.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut icmp = vec![3, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&(mtu as u16).to_be_bytes());
        icmp.extend_from_slice(quote);
        let c = csum(&icmp, 0);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
        h.extend_from_slice(&vip);
        h.extend_from_slice(&client);
        let c = csum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&icmp);
    } else {
        out.extend_from_slice(&0x86DDu16.to_be_bytes());
        let mut icmp = vec![2, 0, 0, 0];
        icmp.extend_from_slice(&mtu.to_be_bytes());
        icmp.extend_from_slice(quote);
        let c = csum(&icmp, pseudo6(&vip, &client, icmp.len(), 58));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&(6u32 << 28).to_be_bytes());
        out.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        out.extend_from_slice(&[58, 64]);
        out.extend_from_slice(&vip);
        out.extend_from_slice(&client);
        out.extend_from_slice(&icmp);
    }
    out
}

/// Forwarding per the table: ring choice, backend checks, size; for a TCP
/// packet that is not a SYN (`second_chance`) of a VIP with a previous
/// table, also the outcome of a connection-table miss.
#[allow(clippy::too_many_arguments)]
fn forward(
    world: &World,
    f: &[u8],
    l3: usize,
    ip: &Ip,
    vip: &Vip,
    fl: FlowKey,
    icmp_error: bool,
    second_chance: bool,
) -> Expect {
    let slot = ring_slot(flow_hash(&fl.src, fl.src_port, fl.dst_port, fl.proto), RING_SIZE) as usize;
    let index = vip.ring[slot];
    if index == 0 {
        return Expect::Drop(Stat::DropNoBackend);
    }
    let Some(real) = world.reals.get(index as usize).copied().flatten() else {
        return Expect::Drop(Stat::DropUnknownReal);
    };
    let hit = encapsulate(world, f, l3, ip, index, real, fl, icmp_error, None);
    // Second chance: the previous table names another backend, set, of the
    // current one's family (the hop header is of the outer's family).
    let previous = vip.prev_ring.as_ref().filter(|_| second_chance).map(|prev| prev[slot]);
    match previous.and_then(|p| Some((p, world.reals.get(p as usize).copied().flatten()?))) {
        Some((p, prev)) if p != index && prev.is_ipv4() == real.is_ipv4() => {
            let miss = encapsulate(world, f, l3, ip, index, real, fl, false, Some(prev));
            Expect::Either { flow: fl, hit: Box::new(hit), miss: Box::new(miss) }
        }
        _ => hit,
    }
}

/// Encapsulation to `real` (index `index`), with a second hop to
/// `previous` if given: family and size checks, then the frame.
#[allow(clippy::too_many_arguments)]
fn encapsulate(
    world: &World,
    f: &[u8],
    l3: usize,
    ip: &Ip,
    index: u32,
    real: IpAddr,
    fl: FlowKey,
    icmp_error: bool,
    previous: Option<IpAddr>,
) -> Expect {
    if !ip.v4 && real.is_ipv4() {
        return Expect::Drop(Stat::DropFamilyMismatch);
    }
    let hlen = if real.is_ipv4() { 20 } else { 40 };
    let overhead = if previous.is_some() { 2 * hlen } else { hlen };
    let total = ip.end - l3;
    if total + overhead > world.config.mtu as usize {
        if icmp_error || (ip.v4 && !ip.df) {
            return Expect::Drop(Stat::DropTooBig);
        }
        return Expect::TooBig { bytes: too_big_frame(f, l3, ip, world.config.mtu - overhead as u32) };
    }
    let inner = f[l3..ip.end].to_vec();
    let hash = flow_hash64(&fl) as u32;
    let Some(previous) = previous else {
        let bytes = encap_frame(world, f, l3, &inner, ip.v4, real, hash, ip);
        return Expect::Encap { real: index, flow: fl, bytes, l3, outer_len: overhead, inner };
    };
    // The hop header (to the previous backend) and the inner packet, then
    // the outer header (to the current one) in front.
    let hop = encap_frame(world, f, l3, &inner, ip.v4, previous, hash, ip);
    let hop_packet = &hop[l3..];
    let bytes = encap_frame(world, f, l3, hop_packet, real.is_ipv4(), real, hash, ip);
    let forwarded = hop_forwarded(&bytes, l3, real.is_ipv4());
    Expect::SecondHop { real: index, flow: fl, bytes, forwarded, l3, inner }
}

/// What the first backend's decap program, having no socket for the flow,
/// sends on: the Ethernet addresses swapped (back to the router); the
/// outer header from this backend (its old destination) to the hop's
/// destination with a fresh TTL; the hop's destination cleared, so the
/// second backend delivers it (README, "Second chance").
fn hop_forwarded(second_hop: &[u8], l3: usize, v4: bool) -> Vec<u8> {
    let mut out = second_hop.to_vec();
    out[0..6].copy_from_slice(&second_hop[6..12]);
    out[6..12].copy_from_slice(&second_hop[0..6]);
    let (hlen, src, dst, alen) = if v4 { (20, 12, 16, 4) } else { (40, 8, 24, 16) };
    let hop = l3 + hlen;
    out[l3 + src..l3 + src + alen].copy_from_slice(&second_hop[l3 + dst..l3 + dst + alen]);
    out[l3 + dst..l3 + dst + alen].copy_from_slice(&second_hop[hop + dst..hop + dst + alen]);
    out[hop + dst..hop + dst + alen].fill(0);
    if v4 {
        out[l3 + 8] = 64;
        for h in [l3, hop] {
            out[h + 10..h + 12].fill(0);
            let c = csum(&out[h..h + 20], 0);
            out[h + 10..h + 12].copy_from_slice(&c.to_be_bytes());
        }
    } else {
        out[l3 + 7] = 64;
    }
    out
}

/// What the balancer must do with frame `f`; and, for a TCP SYN that the
/// VIP's ring placed (whatever became of it after: encapsulated, too big,
/// refused), its flow: the connection table then remembers the flow unless
/// the SYN-flood mode is on.
pub fn expect(world: &World, f: &[u8]) -> (Expect, Option<FlowKey>) {
    let mut placed_syn = None;
    let want = expect_frame(world, f, &mut placed_syn);
    (want, placed_syn)
}

fn expect_frame(world: &World, f: &[u8], placed_syn: &mut Option<FlowKey>) -> Expect {
    if f.len() < 14 {
        return Expect::Drop(Stat::DropTruncated);
    }
    let mut ether_type = be16(f, 12);
    let mut l3 = 14;
    if ether_type == 0x8100 || ether_type == 0x88a8 {
        if f.len() < 18 {
            return Expect::Drop(Stat::DropTruncated);
        }
        ether_type = be16(f, 16);
        l3 = 18;
    }
    if ether_type != 0x0800 && ether_type != 0x86DD {
        return Expect::Pass(Stat::PassNonIp);
    }
    let ip = match parse_ip(f, l3, ether_type, world) {
        Ok(ip) => ip,
        Err(s) if s.action() == lb_common::Action::Drop => return Expect::Drop(s),
        Err(s) => return Expect::Pass(s),
    };
    if ip.fragment {
        return Expect::Pass(Stat::PassFragment);
    }
    let icmp_proto = if ip.v4 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 };
    let l4_len = match ip.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        p if p == icmp_proto => 8,
        _ => return Expect::Pass(Stat::PassUnsupportedProto),
    };
    if f.len() < ip.l4 + l4_len {
        return Expect::Drop(Stat::DropTruncated);
    }
    let l4_hdr = if ip.proto == IPPROTO_TCP { (f[ip.l4 + 12] >> 4) as usize * 4 } else { l4_len };
    if l4_hdr < 20 && ip.proto == IPPROTO_TCP || ip.l4 + l4_hdr > ip.end {
        return Expect::Drop(Stat::DropBadL4Header);
    }
    if ip.proto == icmp_proto {
        return icmp(world, f, l3, &ip);
    }
    let (sport, dport) = (be16(f, ip.l4), be16(f, ip.l4 + 2));
    let Some(vip) = world.find_vip(ip.dst, dport, ip.proto) else {
        return Expect::Pass(Stat::PassNonVip);
    };
    // A SYN (SYN set, ACK not) never takes a second hop.
    let syn = ip.proto == IPPROTO_TCP && f[ip.l4 + 13] & 0x12 == 0x02;
    let second_chance = ip.proto == IPPROTO_TCP && !syn;
    let fl = flow(ip.proto, ip.src, sport, ip.dst, dport);
    let want = forward(world, f, l3, &ip, vip, fl, false, second_chance);
    if syn && !matches!(want, Expect::Drop(Stat::DropNoBackend | Stat::DropUnknownReal)) {
        *placed_syn = Some(fl);
    }
    want
}

fn icmp(world: &World, f: &[u8], l3: usize, ip: &Ip) -> Expect {
    let kind = f[ip.l4];
    let (echo, error) = if ip.v4 { (kind == 8, kind == 3) } else { (kind == 128, kind == 1 || kind == 2) };
    if echo {
        return echo_reply(f, l3, ip);
    }
    if !error {
        return Expect::Pass(Stat::PassIcmpOther);
    }
    // The quoted packet, inside the ICMP error's IP length only.
    let q = ip.l4 + 8;
    let quoted = if ip.v4 {
        let ok = q + 20 <= ip.end && f[q] >> 4 == 4 && f[q] & 0x0f >= 5;
        ok.then(|| {
            let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&f[at..at + 4]).unwrap());
            (a(q + 12), a(q + 16), f[q + 9], q + (f[q] & 0x0f) as usize * 4)
        })
    } else {
        let ok = q + 40 <= ip.end && f[q] >> 4 == 6;
        ok.then(|| {
            let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap());
            (a(q + 8), a(q + 24), f[q + 6], q + 40)
        })
    };
    let Some((vip_addr, client, proto, ql4)) = quoted else {
        return Expect::Pass(Stat::PassIcmpOther);
    };
    if !(proto == IPPROTO_TCP || proto == IPPROTO_UDP) || ql4 + 4 > ip.end {
        return Expect::Pass(Stat::PassIcmpOther);
    }
    if vip_addr != ip.dst {
        return Expect::Pass(Stat::PassNonVip);
    }
    let (vport, cport) = (be16(f, ql4), be16(f, ql4 + 2));
    let Some(vip) = world.find_vip(vip_addr, vport, proto) else {
        return Expect::Pass(Stat::PassNonVip);
    };
    forward(world, f, l3, ip, vip, flow(proto, client, cport, vip_addr, vport), true, false)
}

fn echo_reply(f: &[u8], l3: usize, ip: &Ip) -> Expect {
    let mut r = f[..ip.end].to_vec();
    r[0..6].copy_from_slice(&f[6..12]);
    r[6..12].copy_from_slice(&f[0..6]);
    let icmp_len = ip.end - ip.l4;
    let checks_valid;
    if ip.v4 {
        let ihl = (f[l3] & 0x0f) as usize * 4;
        checks_valid = verifies(&f[l3..l3 + ihl], 0) && verifies(&f[ip.l4..ip.end], 0);
        r[l3 + 8] = 64;
        r[l3 + 12..l3 + 16].copy_from_slice(&f[l3 + 16..l3 + 20]);
        r[l3 + 16..l3 + 20].copy_from_slice(&f[l3 + 12..l3 + 16]);
        r[ip.l4] = 0;
    } else {
        let p = pseudo6(&f[l3 + 8..l3 + 24], &f[l3 + 24..l3 + 40], icmp_len, 58);
        checks_valid = verifies(&f[ip.l4..ip.end], p);
        r[l3 + 7] = 64;
        r[l3 + 8..l3 + 24].copy_from_slice(&f[l3 + 24..l3 + 40]);
        r[l3 + 24..l3 + 40].copy_from_slice(&f[l3 + 8..l3 + 24]);
        r[ip.l4] = 129;
    }
    Expect::EchoReply { bytes: r, l3, l4: ip.l4, v4: ip.v4, checks_valid }
}

/// Whether an echo reply's checksums verify (`l4`: its ICMP header).
pub fn echo_checksums_verify(reply: &[u8], l3: usize, l4: usize, v4: bool) -> bool {
    if v4 {
        let ihl = (reply[l3] & 0x0f) as usize * 4;
        verifies(&reply[l3..l3 + ihl], 0) && verifies(&reply[l4..], 0)
    } else {
        let p = pseudo6(&reply[l3 + 8..l3 + 24], &reply[l3 + 24..l3 + 40], reply.len() - l4, 58);
        verifies(&reply[l4..], p)
    }
}
