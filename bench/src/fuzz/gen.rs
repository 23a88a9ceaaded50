//! Frame generation: valid traffic to every kind of VIP in the fuzzer's
//! world, then mutations. Deterministic for a seed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use lb_testkit::packet_builder as pb;

use super::world::{World, IF_MAC, ROUTER_MAC};

/// SplitMix64: small, fast, and good enough to drive a fuzzer.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Frames are never shorter than an Ethernet header (BPF_PROG_TEST_RUN
/// refuses them) nor longer than a page's worth of test buffer allows.
pub const MIN_FRAME: usize = 14;
pub const MAX_FRAME: usize = 1600;

fn client4(rng: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1 + rng.below(8) as u8)
}

fn client6(rng: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 + rng.below(8) as u16)
}

fn client_port(rng: &mut Rng) -> u16 {
    40000 + rng.below(16) as u16
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    // Mostly small; sometimes around the largest size that fits the MTU
    // once encapsulated, on both sides of it.
    let n = match rng.below(8) {
        0 => 1380 + rng.below(120),
        1 => rng.below(1400),
        _ => rng.below(64),
    };
    rng.bytes(n)
}

/// IPv4 header options: NOPs and an end-of-list, a multiple of 4 bytes.
fn options(rng: &mut Rng) -> Vec<u8> {
    let n = 4 * (1 + rng.below(10));
    let mut o = vec![1u8; n];
    o[n - 1] = 0;
    o
}

/// An IPv6 packet, with 0..=5 hop-by-hop / routing / destination-options
/// headers in front of the upper layer sometimes.
fn ipv6(rng: &mut Rng, src: Ipv6Addr, dst: Ipv6Addr, proto: u8, upper: &[u8]) -> Vec<u8> {
    let count = if rng.one_in(3) { rng.below(6) } else { 0 };
    let mut next = proto;
    let mut body = upper.to_vec();
    for _ in 0..count {
        let kind = *rng.pick(&[0u8, 43, 60]);
        body = pb::ipv6_ext(next, rng.below(4) as u8, &body);
        next = kind;
    }
    pb::ipv6(src, dst, next, &body, rng.byte())
}

fn ipv4(rng: &mut Rng, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, upper: &[u8]) -> Vec<u8> {
    let f = pb::V4 {
        tos: rng.byte(),
        ttl: 1 + rng.byte() / 2,
        id: rng.next_u64() as u16,
        dont_fragment: !rng.one_in(4),
        options: if rng.one_in(5) { options(rng) } else { Vec::new() },
        ..pb::V4::default()
    };
    pb::ipv4(src, dst, proto, upper, &f)
}

fn transport(rng: &mut Rng, proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let data = payload(rng);
    if proto == IPPROTO_TCP {
        let flags = *rng.pick(&[pb::TCP_SYN, pb::TCP_ACK, pb::TCP_ACK | pb::TCP_PSH, pb::TCP_SYN | pb::TCP_ACK]);
        pb::tcp(src, dst, sport, dport, flags, &data)
    } else {
        pb::udp(src, dst, sport, dport, &data)
    }
}

/// An IP packet from `src` to `dst` carrying `upper`, in the family of the
/// addresses.
fn ip(rng: &mut Rng, src: IpAddr, dst: IpAddr, proto: u8, upper: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(rng, s, d, proto, upper),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(rng, s, d, proto, upper),
        _ => unreachable!("mixed families"),
    }
}

fn client_for(rng: &mut Rng, dst: IpAddr) -> IpAddr {
    match dst {
        IpAddr::V4(_) => client4(rng).into(),
        IpAddr::V6(_) => client6(rng).into(),
    }
}

/// A destination: usually a VIP (its address and port), sometimes a VIP
/// address on another port, an address sharing a VIP's filter bit, or any
/// address.
fn destination(rng: &mut Rng, world: &World) -> (IpAddr, u16) {
    let vip = rng.pick(&world.vips);
    let port = if vip.port == 0 { rng.below(65536) as u16 } else { vip.port };
    match rng.below(10) {
        0 => (*rng.pick(&world.filter_twins), port),
        1 => (vip.addr, rng.below(65536) as u16),
        2 => match vip.addr {
            IpAddr::V4(_) => (Ipv4Addr::from(rng.next_u64() as u32).into(), port),
            IpAddr::V6(_) => (Ipv6Addr::from(rng.next_u64() as u128 | ((rng.next_u64() as u128) << 64)).into(), port),
        },
        // The VIP itself (for the other transport protocol, or ICMP, the
        // address is still a VIP address).
        _ => (vip.addr, port),
    }
}

fn frame(rng: &mut Rng, ip: &[u8]) -> Vec<u8> {
    let ether_type = if ip[0] >> 4 == 6 { 0x86DD } else { 0x0800 };
    if rng.one_in(4) {
        let tci = rng.next_u64() as u16 & 0x0fff;
        let mut f = pb::eth_vlan(IF_MAC, ROUTER_MAC, tci, ether_type, ip);
        if rng.one_in(4) {
            f[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        }
        f
    } else {
        pb::eth(IF_MAC, ROUTER_MAC, ether_type, ip)
    }
}

/// One valid frame of a random kind.
pub fn valid(rng: &mut Rng, world: &World) -> Vec<u8> {
    let router4: IpAddr = Ipv4Addr::new(198, 51, 100, 1).into();
    let router6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1).into();
    match rng.below(10) {
        // TCP or UDP to a VIP (or near one).
        0..=5 => {
            let proto = if rng.one_in(3) { IPPROTO_UDP } else { IPPROTO_TCP };
            let (dst, dport) = destination(rng, world);
            let src = client_for(rng, dst);
            let sport = client_port(rng);
            let upper = transport(rng, proto, src, dst, sport, dport);
            {
                let packet = ip(rng, src, dst, proto, &upper);
                frame(rng, &packet)
            }
        }
        // Echo request to a VIP address (or not).
        6 => {
            let (dst, _) = destination(rng, world);
            let src = client_for(rng, dst);
            let data = payload(rng);
            let rest = [rng.byte(), rng.byte(), rng.byte(), rng.byte()];
            let (proto, msg) = match (src, dst) {
                (IpAddr::V4(_), _) => (IPPROTO_ICMP, pb::icmp4(8, 0, rest, &data)),
                (IpAddr::V6(s), IpAddr::V6(d)) => (IPPROTO_ICMPV6, pb::icmp6(s, d, 128, 0, rest, &data)),
                _ => unreachable!(),
            };
            {
                let packet = ip(rng, src, dst, proto, &msg);
                frame(rng, &packet)
            }
        }
        // An ICMP error about a packet a backend sent from a VIP.
        7..=8 => {
            let proto = if rng.one_in(3) { IPPROTO_UDP } else { IPPROTO_TCP };
            let (vip, vport) = destination(rng, world);
            let client = client_for(rng, vip);
            let cport = client_port(rng);
            let upper = transport(rng, proto, vip, client, vport, cport);
            let quoted = ip(rng, vip, client, proto, &upper);
            let quote_len = match rng.below(3) {
                0 => quoted.len(),
                1 => quoted.len().min(rng.below(quoted.len() + 1)),
                _ => quoted.len().min(64 + rng.below(600)),
            };
            let quote = &quoted[..quote_len];
            let rest = [0, 0, rng.byte(), rng.byte()];
            match vip {
                IpAddr::V4(_) => {
                    let kind = if rng.one_in(5) { *rng.pick(&[0u8, 5, 11, 12]) } else { 3 };
                    let code = rng.below(16) as u8;
                    {
                        let packet = ip(rng, router4, vip, IPPROTO_ICMP, &pb::icmp4(kind, code, rest, quote));
                        frame(rng, &packet)
                    }
                }
                IpAddr::V6(v) => {
                    let kind = if rng.one_in(5) { *rng.pick(&[3u8, 4, 129, 135]) } else { *rng.pick(&[1u8, 2]) };
                    let IpAddr::V6(r) = router6 else { unreachable!() };
                    let msg = pb::icmp6(r, v, kind, rng.below(8) as u8, rest, quote);
                    {
                        let packet = ip(rng, router6, vip, IPPROTO_ICMPV6, &msg);
                        frame(rng, &packet)
                    }
                }
            }
        }
        // Other protocols (GRE, SCTP, ICMP in IPv6 and the reverse).
        _ => {
            let (dst, _) = destination(rng, world);
            let src = client_for(rng, dst);
            let proto = *rng.pick(&[47u8, 132, IPPROTO_ICMP, IPPROTO_ICMPV6, 50, 51]);
            let body = payload(rng);
            {
                let packet = ip(rng, src, dst, proto, &body);
                frame(rng, &packet)
            }
        }
    }
}

/// Offset of the IP header in a frame built by [`frame`] (best effort on
/// mutated frames).
fn l3_off(f: &[u8]) -> usize {
    match f.get(12..14) {
        Some([0x81, 0x00]) | Some([0x88, 0xa8]) => 18,
        _ => 14,
    }
}

fn fix_ipv4_checksum(f: &mut [u8], l3: usize) {
    let Some(&vihl) = f.get(l3) else { return };
    let ihl = ((vihl & 0x0f) as usize * 4).max(20);
    if f.len() < l3 + ihl || f[l3] >> 4 != 4 {
        return;
    }
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    let sum = super::model::csum(&f[l3..l3 + ihl], 0);
    f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}

/// Applies one random mutation.
pub fn mutate(rng: &mut Rng, world: &World, f: &mut Vec<u8>) {
    let l3 = l3_off(f);
    let v4 = f.get(l3).is_some_and(|b| b >> 4 == 4);
    match rng.below(13) {
        // Truncation at any offset.
        0 => {
            let at = MIN_FRAME + rng.below(f.len().saturating_sub(MIN_FRAME) + 1);
            f.truncate(at);
        }
        // Bit flips, mostly in the headers.
        1 | 2 => {
            for _ in 0..1 + rng.below(3) {
                let span = if rng.one_in(4) { f.len() } else { f.len().min(l3 + 80) };
                let at = rng.below(span);
                f[at] ^= 1 << rng.below(8);
            }
        }
        // A random IHL (checksum fixed half the time).
        3 if v4 && f.len() > l3 => {
            f[l3] = 0x40 | rng.below(16) as u8;
            if rng.one_in(2) {
                fix_ipv4_checksum(f, l3);
            }
        }
        // A random length field.
        4 if f.len() >= l3 + 6 => {
            let at = if v4 { l3 + 2 } else { l3 + 4 };
            let value = match rng.below(3) {
                0 => rng.below(65536) as u16,
                _ => {
                    let cur = u16::from_be_bytes([f[at], f[at + 1]]) as i32;
                    (cur + rng.below(81) as i32 - 40).clamp(0, 65535) as u16
                }
            };
            f[at..at + 2].copy_from_slice(&value.to_be_bytes());
            if v4 {
                fix_ipv4_checksum(f, l3);
            }
        }
        // A random TCP data offset (wherever the TCP header would be).
        5 => {
            let ihl = if v4 { (f.get(l3).map_or(5, |b| b & 0x0f) as usize * 4).max(20) } else { 40 };
            if let Some(b) = f.get_mut(l3 + ihl + 12) {
                *b = (rng.below(16) as u8) << 4 | (*b & 0x0f);
            }
        }
        // Fragments.
        6 if v4 && f.len() >= l3 + 20 => {
            let mf = rng.one_in(2);
            let off = if rng.one_in(2) { 0 } else { 1 + rng.below(200) as u16 };
            let word = (if mf { 0x2000 } else { 0 }) | off | if rng.one_in(2) { 0x4000 } else { 0 };
            f[l3 + 6..l3 + 8].copy_from_slice(&word.to_be_bytes());
            fix_ipv4_checksum(f, l3);
        }
        6 if f.len() >= l3 + 40 => {
            // Put a fragment header in front of the IPv6 payload.
            let next = f[l3 + 6];
            let mut frag = vec![next, 0];
            let off = if rng.one_in(2) { 0u16 } else { 1 + rng.below(100) as u16 };
            frag.extend_from_slice(&((off << 3) | rng.below(2) as u16).to_be_bytes());
            frag.extend_from_slice(&rng.bytes(4));
            f.splice(l3 + 40..l3 + 40, frag);
            f[l3 + 6] = 44;
            let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]).wrapping_add(8);
            f[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        }
        // Version not matching the ethertype.
        7 if f.len() > l3 => {
            if rng.one_in(2) {
                f[l3] = (rng.below(16) as u8) << 4 | (f[l3] & 0x0f);
            } else {
                let et: u16 = if v4 { 0x86DD } else { 0x0800 };
                f[l3 - 2..l3].copy_from_slice(&et.to_be_bytes());
            }
        }
        // A second VLAN tag.
        8 => {
            let tag = [0x81, 0x00, rng.byte() & 0x0f, rng.byte()];
            f.splice(12..12, tag);
        }
        // A trailer (Ethernet padding, or junk).
        9 => {
            let n = 1 + rng.below(64);
            let t = if rng.one_in(2) { vec![0u8; n] } else { rng.bytes(n) };
            f.extend_from_slice(&t);
        }
        // A tiny frame, or a frame of random bytes after an Ethernet header.
        10 => {
            let n = if rng.one_in(2) { rng.below(50) } else { rng.below(MAX_FRAME - 14) };
            let et = *rng.pick(&[0x0800u16, 0x86DD, 0x8100, 0x0806]);
            *f = pb::eth(IF_MAC, ROUTER_MAC, et, &rng.bytes(n));
        }
        // The destination moved to an address sharing a VIP's filter bit.
        11 if f.len() >= l3 + 40 => {
            let twin = *rng.pick(&world.filter_twins);
            match twin {
                IpAddr::V4(a) if v4 => {
                    f[l3 + 16..l3 + 20].copy_from_slice(&a.octets());
                    fix_ipv4_checksum(f, l3);
                }
                IpAddr::V6(a) if !v4 => f[l3 + 24..l3 + 40].copy_from_slice(&a.octets()),
                _ => {}
            }
        }
        // A byte of random value anywhere.
        _ => {
            if !f.is_empty() {
                let at = rng.below(f.len());
                f[at] = rng.byte();
            }
        }
    }
    f.truncate(MAX_FRAME);
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
}

/// One frame: valid traffic, then (most of the time) one to three mutations.
pub fn frame_for(rng: &mut Rng, world: &World) -> Vec<u8> {
    let mut f = valid(rng, world);
    if !rng.one_in(3) {
        for _ in 0..1 + rng.below(3) {
            mutate(rng, world, &mut f);
        }
    }
    f.truncate(MAX_FRAME);
    f
}
