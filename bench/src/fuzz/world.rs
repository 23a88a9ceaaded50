//! The fuzzer's world: VIPs of every kind, their backends and Maglev rings,
//! loaded into a balancer and a decap program, and described in plain data
//! for the model.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use lb_common::{
    addr_v6, echo_marker_key, vip_filter_bit, LbConfig, Real, VipKey, VipMeta, CFG_F_HAS_PORT0_VIPS, CFG_F_READY,
    FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP, VIP_F_ICMP_ECHO,
};
use lb_control::{
    dataplane::{ip_to_addr, Balancer, Decap, Limits},
    maglev::{self, MaglevBackend},
};

pub type Mac = [u8; 6];
pub const GW_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const IF_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x03];
pub const MTU: u32 = 1500;
pub const RING_SIZE: u32 = 4099;
pub const ENCAP_SRC4: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 0);
pub const ENCAP_SRC6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xffff, 0, 0, 0, 0, 0, 0);

/// One VIP as the model sees it.
pub struct Vip {
    pub addr: IpAddr,
    /// 0: every port.
    pub port: u16,
    pub proto: u8,
    /// Its ring, as read back from the balancer's map: backend indices.
    pub ring: Vec<u32>,
    /// Its previous ring (second chance), read back likewise.
    pub prev_ring: Option<Vec<u32>>,
}

pub struct World {
    pub vips: Vec<Vip>,
    /// Backends by index (index 0 unused); `None`: never set.
    pub reals: Vec<Option<IpAddr>>,
    /// Addresses outside the world that share a VIP address's filter bit.
    pub filter_twins: Vec<IpAddr>,
    pub config: LbConfig,
}

impl World {
    pub fn is_vip_address(&self, addr: IpAddr) -> bool {
        self.vips.iter().any(|v| v.addr == addr)
    }

    /// The VIP for `(addr, port, proto)`, else the address's every-port VIP.
    pub fn find_vip(&self, addr: IpAddr, port: u16, proto: u8) -> Option<&Vip> {
        let exact = self.vips.iter().find(|v| v.addr == addr && v.port == port && v.proto == proto);
        exact.or_else(|| self.vips.iter().find(|v| v.addr == addr && v.port == 0 && v.proto == proto))
    }
}

fn real_of(addr: IpAddr) -> Real {
    let (a, family) = ip_to_addr(addr);
    Real { addr: a, family, _pad: [0; 3] }
}

fn net16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The fuzz world's SYN-flood threshold (new flows per CPU per second).
pub const FUZZ_SYN_FLOOD_THRESHOLD: u32 = 64;

/// Loads the world into a new balancer and a decap program that stands in
/// for every backend.
pub fn load() -> Result<(World, Balancer, Decap)> {
    let limits = Limits { ring_size: RING_SIZE, max_vips: 16, max_reals: 16, conn_table_size: 4096 };
    let mut bal = Balancer::load(limits).context("loading the balancer (needs root and BPF)")?;
    bal.defer_vip_publishing(true)?;
    let config = LbConfig {
        flags: CFG_F_READY | CFG_F_HAS_PORT0_VIPS,
        mtu: MTU,
        gw_mac: GW_MAC,
        if_mac: IF_MAC,
        src_v4: u32::from_ne_bytes(ENCAP_SRC4.octets()),
        src_v4_mask: u32::from_ne_bytes([0, 0, 255, 255]),
        src_v6: addr_v6(ENCAP_SRC6.octets()),
        src_v6_mask: [0, 0, 0, u32::MAX],
        // Low, so the run spends most of its time in SYN-flood mode: the
        // model needs no change, as the ring (fixed here) decides a SYN's
        // backend in and out of the mode.
        syn_flood_threshold: FUZZ_SYN_FLOOD_THRESHOLD,
    };
    bal.set_config(&config)?;
    let r4 = |d| IpAddr::V4(Ipv4Addr::new(10, 1, 0, d));
    let r6 = |d| IpAddr::V6(Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, d));
    let mut reals: Vec<Option<IpAddr>> = vec![None; 16];
    for (i, addr) in [(1, r4(1)), (2, r4(2)), (3, r4(3)), (4, r6(1)), (5, r6(2)), (6, r6(3))] {
        bal.set_real(i, &real_of(addr))?;
        reals[i as usize] = Some(addr);
    }
    let v4 = |d| IpAddr::V4(Ipv4Addr::new(10, 0, 0, d));
    let v6 = |d| IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, d));
    // (address, port, protocol, backend indices; 9 is never set)
    let defs: [(IpAddr, u16, u8, &[u32]); 12] = [
        (v4(10), 80, IPPROTO_TCP, &[1, 2, 3]),
        (v4(10), 53, IPPROTO_UDP, &[1, 2, 3]),
        (v6(0x10), 80, IPPROTO_TCP, &[4, 5, 6]),
        (v6(0x10), 53, IPPROTO_UDP, &[4, 5]),
        // An IPv4 VIP served by IPv6 backends (IPv4-in-IPv6).
        (v4(20), 80, IPPROTO_TCP, &[4, 5]),
        // Every port.
        (v4(30), 0, IPPROTO_TCP, &[1, 3]),
        (v6(0x30), 0, IPPROTO_UDP, &[5, 6]),
        // No backends: an empty ring.
        (v4(40), 80, IPPROTO_TCP, &[]),
        // A ring naming a backend that was never set.
        (v4(41), 80, IPPROTO_TCP, &[9]),
        // An IPv6 VIP with an IPv4 backend (refused by the data plane).
        (v6(0x41), 80, IPPROTO_TCP, &[1]),
        // Second chance: a previous table (below) with one more backend.
        (v4(50), 80, IPPROTO_TCP, &[1, 2]),
        (v6(0x50), 80, IPPROTO_TCP, &[4, 5]),
    ];
    // (VIP number, the previous table's backends): beside the current ones,
    // one that is still set (3, 6: a second hop), one that never was (9) and
    // one of the other family (1, for the IPv4 VIP with IPv6 backends): no
    // second hop for those two, so every kind of previous choice occurs.
    let previous: [(u32, &[u32]); 3] = [(10, &[1, 2, 3, 9]), (11, &[4, 5, 6, 9]), (4, &[4, 5, 6, 1])];
    let mut vips = Vec::new();
    for (num, (addr, port, proto, backends)) in defs.into_iter().enumerate() {
        let num = num as u32;
        let table = if backends.is_empty() {
            vec![0; RING_SIZE as usize]
        } else {
            let b: Vec<_> =
                backends.iter().map(|&i| MaglevBackend::new(i, format!("backend-{i}").into_bytes(), 1)).collect();
            maglev::build(&b, RING_SIZE)?
        };
        bal.write_ring(num, &table)?;
        let (a, family) = ip_to_addr(addr);
        bal.set_vip(
            &VipKey { addr: a, port: net16(port), proto, family },
            &VipMeta { flags: 0, vip_num: num, ring: num },
        )?;
        // The model reads the ring back from the map, as the data plane sees it.
        vips.push(Vip { addr, port, proto, ring: bal.ring(num)?, prev_ring: None });
    }
    for (i, (num, backends)) in previous.into_iter().enumerate() {
        let ring = limits.ring_count() - 1 - i as u32;
        let b: Vec<_> =
            backends.iter().map(|&i| MaglevBackend::new(i, format!("backend-{i}").into_bytes(), 1)).collect();
        bal.write_ring(ring, &maglev::build(&b, RING_SIZE)?)?;
        bal.set_prev_ring(num, Some(ring))?;
        vips[num as usize].prev_ring = Some(bal.ring(ring)?);
    }
    // Every VIP address has its echo marker, as the control plane makes them.
    let mut addrs: Vec<IpAddr> = vips.iter().map(|v| v.addr).collect();
    addrs.sort();
    addrs.dedup();
    for (i, addr) in addrs.iter().enumerate() {
        let (a, family) = ip_to_addr(*addr);
        bal.set_vip(&echo_marker_key(family, a), &VipMeta { flags: VIP_F_ICMP_ECHO, vip_num: i as u32, ring: 0 })?;
    }
    bal.defer_vip_publishing(false)?;
    let mut decap = Decap::load().context("loading decap")?;
    for addr in reals.iter().flatten() {
        decap.add_addr(*addr)?;
    }
    let filter_twins = twins(&addrs);
    Ok((World { vips, reals, filter_twins, config }, bal, decap))
}

/// For each VIP address, a few addresses outside the world with the same
/// VIP-filter bit.
fn twins(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for addr in addrs {
        let (a, family) = ip_to_addr(*addr);
        let bit = vip_filter_bit(&a);
        let mut found = 0;
        for i in 1u32.. {
            let cand: IpAddr = if family == FAMILY_V4 {
                Ipv4Addr::from(0x0c00_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761))).into()
            } else {
                Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, (i >> 16) as u16, i as u16).into()
            };
            let (c, _) = ip_to_addr(cand);
            if vip_filter_bit(&c) == bit && !addrs.contains(&cand) {
                out.push(cand);
                found += 1;
                if found == 3 {
                    break;
                }
            }
        }
    }
    out
}
