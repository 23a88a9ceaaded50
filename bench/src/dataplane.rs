//! Per-packet cost of the balancer through BPF_PROG_TEST_RUN, one packet per
//! call (`repeat = 1`), next to a program that only returns XDP_TX (the
//! floor), interleaved round by round in the same run.
//!
//! Why one packet per call: with `repeat > 1` the kernel reruns the program
//! on the buffer it already encapsulated, and live-frames mode recycles pages
//! without restoring them; both time the wrong path.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::{
    addr_v4, addr_v6, LbConfig, Real, Stat, VipMeta, CFG_F_READY, FAMILY_V4, FAMILY_V6,
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, VIP_F_ICMP_ECHO,
};
use lb_control::{
    dataplane::{ip_to_addr, Balancer, Limits, XDP_TX_ELF, XDP_TX_PROGRAM},
    maglev::{self, MaglevBackend},
};
use lb_testkit::packet_builder as pb;

const IF_MAC: pb::Mac = [0x02, 0, 0, 0, 0, 0x02];
const ROUTER_MAC: pb::Mac = [0x02, 0, 0, 0, 0, 0x03];
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0x10);
const NON_VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

/// A traffic mix: the frames sent in rotation and the one reason counter
/// each of them must bump.
pub struct Mix {
    pub name: &'static str,
    pub frames: Vec<Vec<u8>>,
    pub path: Stat,
    /// Send every frame once before timing (fills the connection table).
    pub warm: bool,
}

#[derive(Clone, Debug)]
pub struct MixResult {
    pub name: &'static str,
    /// Median over rounds of the average ns per packet.
    pub ns: f64,
    pub ns_min: f64,
    pub ns_max: f64,
    pub floor_ns: f64,
    /// Median over rounds of (balancer / floor) measured in the same round.
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// Every timed packet bumped the intended counter.
    pub path_verified: bool,
}

impl MixResult {
    pub fn mpps(&self) -> f64 {
        1_000.0 / self.ns
    }
}

fn frame4(ip: &[u8]) -> Vec<u8> {
    pb::eth(IF_MAC, ROUTER_MAC, 0x0800, ip)
}

fn frame6(ip: &[u8]) -> Vec<u8> {
    pb::eth(IF_MAC, ROUTER_MAC, 0x86DD, ip)
}

fn tcp4(client: Ipv4Addr, sport: u16, dst: Ipv4Addr, flags: u8, payload: &[u8]) -> Vec<u8> {
    let seg = pb::tcp(client.into(), dst.into(), sport, 80, flags, payload);
    frame4(&pb::ipv4(client, dst, IPPROTO_TCP, &seg, &pb::V4::default()))
}

fn client4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xc000_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761)))
}

/// The standard mixes. `distinct` is how many different flows the new-flow
/// mix rotates through.
pub fn mixes(distinct: u32) -> Vec<Mix> {
    let payload = [0x61u8; 64];
    let c6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
    vec![
        Mix {
            name: "ipv4 tcp established",
            frames: vec![tcp4(client4(1), 40000, VIP4, pb::TCP_ACK | pb::TCP_PSH, &payload)],
            path: Stat::TxEncap,
            warm: true,
        },
        Mix {
            name: "ipv4 tcp syn (new flows)",
            frames: (0..distinct).map(|i| tcp4(client4(i), 1024 + (i % 60000) as u16, VIP4, pb::TCP_SYN, &[])).collect(),
            path: Stat::TxEncap,
            warm: false,
        },
        Mix {
            name: "ipv6 tcp established",
            frames: vec![frame6(&pb::ipv6(
                c6,
                VIP6,
                IPPROTO_TCP,
                &pb::tcp(c6.into(), VIP6.into(), 40000, 80, pb::TCP_ACK | pb::TCP_PSH, &payload),
                0,
            ))],
            path: Stat::TxEncap,
            warm: true,
        },
        Mix {
            name: "ipv4 udp",
            frames: vec![frame4(&pb::ipv4(
                client4(1),
                VIP4,
                IPPROTO_UDP,
                &pb::udp(client4(1).into(), VIP4.into(), 5353, 53, &payload),
                &pb::V4::default(),
            ))],
            path: Stat::TxEncap,
            warm: true,
        },
        Mix {
            name: "non-vip (passed)",
            frames: vec![tcp4(client4(1), 40000, NON_VIP4, pb::TCP_ACK, &payload)],
            path: Stat::PassNonVip,
            warm: false,
        },
        Mix {
            name: "icmp echo to vip",
            frames: vec![frame4(&pb::ipv4(
                client4(1),
                VIP4,
                IPPROTO_ICMP,
                &pb::icmp4(8, 0, [0, 1, 0, 1], &payload),
                &pb::V4::default(),
            ))],
            path: Stat::TxIcmpEchoReply,
            warm: false,
        },
    ]
}

fn net16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The forwarding config every benchmark balancer uses.
pub fn forwarding() -> LbConfig {
    LbConfig {
        flags: CFG_F_READY,
        mtu: 1500,
        gw_mac: [0x02, 0, 0, 0, 0, 0x01],
        if_mac: IF_MAC,
        src_v4: u32::from_ne_bytes([10, 255, 0, 0]),
        src_v4_mask: u32::from_ne_bytes([0, 0, 255, 255]),
        src_v6: addr_v6(Ipv6Addr::new(0xfc00, 0xffff, 0, 0, 0, 0, 0, 0).octets()),
        src_v6_mask: [0, 0, 0, u32::MAX],
    }
}

/// Loads the balancer with `vips` VIPs of each kind and `backends` backends
/// per VIP, Maglev tables of the default size, and a config that forwards.
pub fn setup(limits: Limits, vips: u32, backends: u32) -> Result<Balancer> {
    if vips * 3 + 1 > limits.max_vips || backends + 1 > limits.max_reals / 2 {
        bail!("limits too small for {vips} VIPs x3 and {backends} backends x2");
    }
    let mut bal = Balancer::load(limits).context("loading the balancer (root and BPF needed)")?;
    bal.set_config(&forwarding())?;
    // Backends 1..=n are IPv4, n+1..=2n IPv6.
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for i in 0..backends {
        let a4 = Ipv4Addr::from(0x0a01_0000 + i + 1);
        let a6 = Ipv6Addr::from(0xfc00_0001_0000_0000_0000_0000_0000_0000u128 + i as u128 + 1);
        bal.set_real(i + 1, &Real { addr: addr_v4(a4.octets()), family: FAMILY_V4, _pad: [0; 3] })?;
        bal.set_real(backends + i + 1, &Real { addr: addr_v6(a6.octets()), family: FAMILY_V6, _pad: [0; 3] })?;
        v4.push(MaglevBackend { id: i + 1, key: a4.octets().to_vec(), weight: 1 });
        v6.push(MaglevBackend { id: backends + i + 1, key: a6.octets().to_vec(), weight: 1 });
    }
    let table4 = maglev::build(&v4, limits.ring_size)?;
    let table6 = maglev::build(&v6, limits.ring_size)?;
    let mut num = 0;
    for v in 0..vips {
        let a4 = Ipv4Addr::from(u32::from(VIP4) + v);
        let a6 = Ipv6Addr::from(u128::from(VIP6) + v as u128);
        for (addr, port, proto, table) in [
            (std::net::IpAddr::V4(a4), 80, IPPROTO_TCP, &table4),
            (std::net::IpAddr::V4(a4), 53, IPPROTO_UDP, &table4),
            (std::net::IpAddr::V6(a6), 80, IPPROTO_TCP, &table6),
        ] {
            let (addr, family) = ip_to_addr(addr);
            bal.write_ring(num, table)?;
            let key = lb_common::VipKey { addr, port: net16(port), proto, family };
            bal.set_vip(&key, &VipMeta { flags: 0, vip_num: num, ring: num })?;
            num += 1;
        }
    }
    let (addr, family) = ip_to_addr(VIP4.into());
    bal.set_vip(
        &lb_common::VipKey { addr, port: 0, proto: IPPROTO_ICMP, family },
        &VipMeta { flags: VIP_F_ICMP_ECHO, vip_num: num, ring: 0 },
    )?;
    Ok(bal)
}

/// The floor program, loaded.
pub struct Floor(Ebpf);

impl Floor {
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(XDP_TX_ELF)?;
        let prog: &mut Xdp = ebpf.program_mut(XDP_TX_PROGRAM).context("xdp_tx program")?.try_into()?;
        prog.load()?;
        Ok(Self(ebpf))
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.0.program_mut(XDP_TX_PROGRAM).and_then(|p| p.try_into().ok()).expect("loaded")
    }
}

/// Runs `calls` packets, one per BPF_PROG_TEST_RUN, rotating through
/// `frames` from `*cursor`; returns the mean kernel-reported ns per packet.
pub fn time_calls(prog: &mut Xdp, frames: &[Vec<u8>], calls: u32, cursor: &mut usize, out: &mut [u8]) -> Result<f64> {
    let mut total_ns = 0u128;
    for _ in 0..calls {
        let frame = &frames[*cursor % frames.len()];
        *cursor += 1;
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut *out), ..TestRunOptions::new() };
        let r = prog.test_run(opts)?;
        total_ns += r.duration.as_nanos();
    }
    Ok(total_ns as f64 / calls as f64)
}


/// Times one mix: `rounds` rounds of `calls` packets, balancer and floor
/// interleaved in every round.
pub fn run_mix(bal: &mut Balancer, floor: &mut Floor, mix: &Mix, rounds: u32, calls: u32) -> Result<MixResult> {
    let mut out = vec![0u8; 4096];
    let mut cursor = 0usize;
    if mix.warm {
        for f in &mix.frames {
            let opts = TestRunOptions { data_in: Some(f), data_out: Some(&mut out), ..TestRunOptions::new() };
            bal.program().test_run(opts)?;
        }
    }
    let before = bal.stat(mix.path)?;
    let (mut bal_ns, mut floor_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut floor_cursor = 0usize;
    for _ in 0..rounds {
        let f = time_calls(floor.program(), &mix.frames, calls, &mut floor_cursor, &mut out)?;
        let b = time_calls(bal.program(), &mix.frames, calls, &mut cursor, &mut out)?;
        bal_ns.push(b);
        floor_ns.push(f);
        ratios.push(b / f);
    }
    let after = bal.stat(mix.path)?;
    let packets = rounds as u64 * calls as u64;
    let (ns_min, ns_max) = bal_ns.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let (ratio_min, ratio_max) = ratios.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    Ok(MixResult {
        name: mix.name,
        ns: crate::sys::median(&mut bal_ns),
        ns_min,
        ns_max,
        floor_ns: crate::sys::median(&mut floor_ns),
        ratio: crate::sys::median(&mut ratios),
        ratio_min,
        ratio_max,
        path_verified: after.packets - before.packets == packets,
    })
}
