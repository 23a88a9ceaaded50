//! Per-packet cost of the balancer through BPF_PROG_TEST_RUN, one packet per
//! call (`repeat = 1`), next to a program that only returns XDP_TX (the
//! floor), interleaved round by round in the same run.
//!
//! Why one packet per call: with `repeat > 1` the kernel reruns the program
//! on the buffer it already encapsulated, and live-frames mode recycles pages
//! without restoring them; both time the wrong path.
//!
//! Part 1 of the benchmark, `DataplaneReport`, is at the end: every mix's
//! figures (`MixRow`, also the scaling part's rows) and its targets.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::{
    addr_v4, addr_v6, LbConfig, Real, Stat, VipMeta, CFG_F_READY, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, VIP_F_ICMP_ECHO,
};
use lb_control::{
    dataplane::{ip_to_addr, Balancer, Limits, XDP_TX_ELF, XDP_TX_PROGRAM},
    maglev::{self, MaglevBackend},
};
use lb_testkit::packet_builder as pb;
use serde::Serialize;

use crate::{
    progress::Progress,
    report::{f, targets_table, Section, Table, Target},
};

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

/// Flows the spread established mix rotates through, all warmed into the
/// connection table first (the "100,000 warmed flows").
pub const SPREAD_FLOWS: u32 = 100_000;

/// Mix names the targets name (see [`MIX_TARGETS`]).
pub const EST_V4: &str = "ipv4 tcp established";
pub const EST_V6: &str = "ipv6 tcp established";
pub const UDP_V4: &str = "ipv4 udp";
pub const EST_SPREAD: &str = "ipv4 tcp established (100,000 flows)";
pub const SYN_SAME: &str = "ipv4 tcp syn (same flow again)";
pub const SYN_NEW: &str = "ipv4 tcp syn (new flows)";
pub const ECHO: &str = "icmp echo to vip";
pub const NON_VIP: &str = "non-vip (passed)";
pub const SYN_NEW_1_VIP: &str = "ipv4 tcp syn (new flows), 1 vip";
pub const SYN_NEW_512_VIPS: &str = "ipv4 tcp syn (new flows), 512 vips";

/// Counters that must not move while a mix is timed, besides its own
/// rising by one per packet: an established mix that missed the table
/// would still leave encapsulated.
pub fn must_stay(mix: &Mix) -> &'static [Stat] {
    if mix.name == EST_V4 || mix.name == EST_V6 || mix.name == EST_SPREAD || mix.name == UDP_V4 {
        &[Stat::ConnMiss, Stat::ConnStale]
    } else {
        &[]
    }
}

/// The standard mixes. `distinct` is how many different flows the new-flow
/// mix rotates through.
pub fn mixes(distinct: u32) -> Vec<Mix> {
    let payload = [0x61u8; 64];
    let c6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
    vec![
        Mix {
            name: EST_V4,
            frames: vec![tcp4(client4(1), 40000, VIP4, pb::TCP_ACK | pb::TCP_PSH, &payload)],
            path: Stat::TxEncap,
            warm: true,
        },
        Mix {
            name: EST_SPREAD,
            frames: (0..SPREAD_FLOWS)
                .map(|i| tcp4(client4(i + 7), 1024 + (i % 60000) as u16, VIP4, pb::TCP_ACK | pb::TCP_PSH, &payload))
                .collect(),
            path: Stat::TxEncap,
            warm: true,
        },
        Mix {
            name: SYN_SAME,
            frames: vec![tcp4(client4(3), 41000, VIP4, pb::TCP_SYN, &[])],
            path: Stat::TxEncap,
            warm: true,
        },
        Mix {
            name: SYN_NEW,
            frames: (0..distinct)
                .map(|i| tcp4(client4(i), 1024 + (i % 60000) as u16, VIP4, pb::TCP_SYN, &[]))
                .collect(),
            path: Stat::TxEncap,
            warm: false,
        },
        Mix {
            name: EST_V6,
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
            name: UDP_V4,
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
            name: NON_VIP,
            frames: vec![tcp4(client4(1), 40000, NON_VIP4, pb::TCP_ACK, &payload)],
            path: Stat::PassNonVip,
            warm: false,
        },
        Mix {
            name: ECHO,
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

/// Second chance's miss path: the TCP VIP gets a previous table (every
/// slot: backend 1), and the mix is ACKs of 1024 flows the connection table
/// has never seen whose current backend is another, so each one is looked
/// up in both tables and leaves with a second hop (and, by design, is not
/// remembered: every timed packet takes this path). The previous table is
/// installed by [`enable_second_chance`] just before the mix runs, so the
/// other mixes are timed without one.
pub fn second_chance_mix(bal: &mut Balancer) -> Result<Mix> {
    let payload = [0x61u8; 64];
    let current = bal.ring(0)?;
    let size = current.len() as u32;
    let frames: Vec<Vec<u8>> = (0..)
        .map(|i: u32| (client4(i), 50000 + (i % 10000) as u16))
        .filter(|(client, port)| {
            let (addr, _) = ip_to_addr((*client).into());
            let hash = lb_common::flow_hash(&addr, net16(*port), net16(80), IPPROTO_TCP);
            current[lb_common::ring_slot(hash, size) as usize] != 1
        })
        .take(1024)
        .map(|(client, port)| tcp4(client, port, VIP4, pb::TCP_ACK | pb::TCP_PSH, &payload))
        .collect();
    Ok(Mix { name: "ipv4 tcp miss, second hop", frames, path: Stat::SecondChanceHop, warm: false })
}

/// Gives the TCP VIP (VIP number 0) a previous table naming backend 1 in
/// every slot, in the pool's last ring.
pub fn enable_second_chance(bal: &mut Balancer) -> Result<()> {
    let size = bal.limits().ring_size as usize;
    let prev_ring = bal.limits().ring_count() - 1;
    bal.write_ring(prev_ring, &vec![1; size])?;
    bal.set_prev_ring(0, Some(prev_ring))?;
    Ok(())
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
        // On, never reached: the SYN rows pay for the mode's check.
        syn_flood_threshold: u32::MAX,
    }
}

/// Loads the balancer with `vips` VIPs of each kind and `backends` backends
/// per VIP, Maglev tables of the default size, and a config that forwards.
pub fn setup(limits: Limits, vips: u32, backends: u32) -> Result<Balancer> {
    setup_pinned(limits, vips, backends, None)
}

/// [`setup`], the maps pinned under `pin_dir` when given (so another
/// object can share them: the breakdown's stage programs).
pub fn setup_pinned(limits: Limits, vips: u32, backends: u32, pin_dir: Option<&std::path::Path>) -> Result<Balancer> {
    if vips * 3 + 1 > limits.max_vips || backends + 1 > limits.max_reals / 2 {
        bail!("limits too small for {vips} VIPs x3 and {backends} backends x2");
    }
    let mut bal = Balancer::open(limits, pin_dir).context("loading the balancer (root and BPF needed)")?;
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
    run_mix_checked(bal, floor, mix, rounds, calls, must_stay(mix))
}

/// [`run_mix`], with counters that must not move while the mix is timed
/// (the path check fails if one does).
pub fn run_mix_checked(
    bal: &mut Balancer,
    floor: &mut Floor,
    mix: &Mix,
    rounds: u32,
    calls: u32,
    unchanged: &[Stat],
) -> Result<MixResult> {
    if mix.warm {
        let mut out = vec![0u8; 4096];
        for f in &mix.frames {
            let opts = TestRunOptions { data_in: Some(f), data_out: Some(&mut out), ..TestRunOptions::new() };
            bal.program().test_run(opts)?;
        }
    }
    let before = bal.stat(mix.path)?;
    let still_before = unchanged.iter().map(|&s| bal.stat(s).map(|c| c.packets)).collect::<Result<Vec<_>, _>>()?;
    let timed = time_rounds(bal, floor, &mix.frames, rounds, calls, |_| Ok(()))?;
    let after = bal.stat(mix.path)?;
    let still_after = unchanged.iter().map(|&s| bal.stat(s).map(|c| c.packets)).collect::<Result<Vec<_>, _>>()?;
    let packets = rounds as u64 * calls as u64;
    Ok(timed.result(mix.name, after.packets - before.packets == packets && still_before == still_after))
}

/// A mix's rounds: balancer and floor ns per packet, and their ratio, per
/// round.
pub struct Rounds {
    bal_ns: Vec<f64>,
    floor_ns: Vec<f64>,
    ratios: Vec<f64>,
}

/// Times `rounds` rounds of `calls` packets of `frames`, balancer and floor
/// interleaved in every round; `before_round` runs (untimed) before each.
pub fn time_rounds(
    bal: &mut Balancer,
    floor: &mut Floor,
    frames: &[Vec<u8>],
    rounds: u32,
    calls: u32,
    mut before_round: impl FnMut(&mut Balancer) -> Result<()>,
) -> Result<Rounds> {
    let mut out = vec![0u8; 4096];
    let (mut cursor, mut floor_cursor) = (0usize, 0usize);
    let mut timed = Rounds { bal_ns: Vec::new(), floor_ns: Vec::new(), ratios: Vec::new() };
    for _ in 0..rounds {
        before_round(bal)?;
        let f = time_calls(floor.program(), frames, calls, &mut floor_cursor, &mut out)?;
        let b = time_calls(bal.program(), frames, calls, &mut cursor, &mut out)?;
        timed.bal_ns.push(b);
        timed.floor_ns.push(f);
        timed.ratios.push(b / f);
    }
    Ok(timed)
}

impl Rounds {
    /// The mix's figures: medians over rounds, the rounds' range.
    pub fn result(mut self, name: &'static str, path_verified: bool) -> MixResult {
        let range = |v: &[f64]| v.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let ((ns_min, ns_max), (ratio_min, ratio_max)) = (range(&self.bal_ns), range(&self.ratios));
        MixResult {
            name,
            ns: crate::sys::median(&mut self.bal_ns),
            ns_min,
            ns_max,
            floor_ns: crate::sys::median(&mut self.floor_ns),
            ratio: crate::sys::median(&mut self.ratios),
            ratio_min,
            ratio_max,
            path_verified,
        }
    }
}

// ---- part 1: the report -------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct DataplaneReport {
    pub rounds: u32,
    pub calls: u32,
    pub backends: u32,
    pub ring_size: u32,
    pub mixes: Vec<MixRow>,
}

/// Which mix a target is about, from its (lower-case) name.
type MixTest = fn(&str) -> bool;

/// The part-1 targets (issue 11's table, in its order): (what, mix name
/// test, largest ratio to the floor).
const MIX_TARGETS: &[(&str, MixTest, f64)] = &[
    ("established IPv4 TCP", |n| n == EST_V4, 2.0),
    ("established IPv6 TCP", |n| n == EST_V6, 2.0),
    ("UDP", |n| n == UDP_V4, 2.2),
    ("established, 100,000 warmed flows", |n| n == EST_SPREAD, 4.0),
    ("TCP SYN, same flow again", |n| n == SYN_SAME, 2.6),
    ("TCP SYN, new flow", |n| n == SYN_NEW, 5.0),
    ("TCP SYN flood, untabled", |n| n == crate::syn_flood::NAME, 3.3),
    ("ICMP echo to a VIP, answered", |n| n == ECHO, 1.3),
    ("non-VIP, passed", |n| n == NON_VIP, 1.2),
];

/// Relative targets: (what, mix, baseline mix of the same run, largest
/// ratio of their ratios to the floor).
const RELATIVE_TARGETS: &[(&str, &str, &str, f64)] =
    &[("TCP SYN, new flows, 512 VIPs vs 1 VIP", SYN_NEW_512_VIPS, SYN_NEW_1_VIP, 1.3)];

impl DataplaneReport {
    fn describe(&self) -> String {
        format!(
            "BPF_PROG_TEST_RUN, repeat = 1 (one packet per call), {} rounds x {} packets per mix; {} backends per VIP, ring {}. \
             The floor is a program that only returns XDP_TX, timed on the same frames in the same rounds (interleaved). \
             ns = median over rounds of the mean kernel-reported ns per packet (range of rounds in brackets); \
             Mpps = 1000 / ns on one core; ratio = median over rounds of balancer / floor in the same round; \
             path verified = every timed packet bumped the counter of the intended path.",
            self.rounds, self.calls, self.backends, self.ring_size
        )
    }

    fn table(&self) -> Table {
        let mut t = Table::new(
            &["mix", "ns/pkt", "spread", "Mpps", "floor ns", "floor Mpps", "ratio", "ratio spread", "path"],
            1,
        );
        for m in &self.mixes {
            t.row(vec![
                m.name.clone(),
                f(m.ns, 1),
                format!("{}-{}", f(m.ns_min, 1), f(m.ns_max, 1)),
                f(m.mpps, 2),
                f(m.floor_ns, 1),
                f(m.floor_mpps, 2),
                f(m.ratio, 2),
                format!("{}-{}", f(m.ratio_min, 2), f(m.ratio_max, 2)),
                m.path().into(),
            ]);
        }
        t
    }

    pub fn targets(&self) -> Vec<Target> {
        MIX_TARGETS
            .iter()
            .map(|(what, matches, limit)| {
                let name = format!("data plane: {what} <= {limit}x floor");
                match self.mixes.iter().find(|m| matches(&m.name.to_lowercase())) {
                    Some(m) => Target {
                        part: "dataplane",
                        name,
                        target: format!("<= {limit:.1}x"),
                        value: format!(
                            "{}x ({} ns vs {} ns){}",
                            f(m.ratio, 2),
                            f(m.ns, 1),
                            f(m.floor_ns, 1),
                            if m.path_verified { "" } else { ", WRONG PATH" }
                        ),
                        met: m.path_verified && m.ratio <= *limit,
                    },
                    None => Target {
                        part: "dataplane",
                        name,
                        target: format!("<= {limit:.1}x"),
                        value: "no such mix".into(),
                        met: false,
                    },
                }
            })
            .chain(RELATIVE_TARGETS.iter().map(|&(what, mix, base, limit)| {
                let name = format!("data plane: {what} <= {limit}x");
                let find = |n: &str| self.mixes.iter().find(|m| m.name == n);
                let (value, met) = match (find(mix), find(base)) {
                    (Some(m), Some(b)) => (
                        format!(
                            "{}x ({}x vs {}x the floor){}",
                            f(m.ratio / b.ratio, 2),
                            f(m.ratio, 2),
                            f(b.ratio, 2),
                            if m.path_verified && b.path_verified { "" } else { ", WRONG PATH" }
                        ),
                        m.path_verified && b.path_verified && m.ratio / b.ratio <= limit,
                    ),
                    _ => ("no such mix".into(), false),
                };
                Target { part: "dataplane", name, target: format!("<= {limit:.1}x"), value, met }
            }))
            .collect()
    }
}

impl Section for DataplaneReport {
    const TITLE: &'static str = "1. Data plane: per-packet cost per traffic mix";

    fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "BPF_PROG_TEST_RUN, repeat=1, {} rounds x {} packets per mix; {} backends per VIP, ring {}; floor = XDP_TX-only program, same rounds",
            self.rounds, self.calls, self.backends, self.ring_size
        )];
        out.extend(self.table().text());
        out.push(String::new());
        out.extend(targets_table(&self.targets()).text());
        out
    }

    fn markdown(&self) -> String {
        format!("{}\n\n{}", self.describe(), self.table().markdown())
    }
}

/// Part 1: every mix, the balancer next to the floor.
pub fn run(
    rounds: u32,
    calls: u32,
    backends: u32,
    distinct_flows: Option<u32>,
    floor: &mut Floor,
    progress: &Progress,
) -> Result<DataplaneReport> {
    let limits = Limits { max_vips: 16, max_reals: 2 * backends + 2, ..Limits::default() };
    progress.note("data plane: loading the balancer");
    let mut bal = setup(limits, 1, backends)?;
    let mut mixes = mixes(distinct_flows.unwrap_or(rounds * calls));
    mixes.push(second_chance_mix(&mut bal)?);
    let flood = crate::syn_flood::mix(distinct_flows.unwrap_or(rounds * calls));
    progress.add(mixes.len() as u64 + 3);
    // One short untimed pass first (caches, CPU frequency): otherwise the
    // first mix timed pays for it. Not on a new-flow mix, whose flows must
    // stay unseen.
    if let Some(w) = mixes.iter().find(|m| m.warm) {
        progress.note(format!("data plane: warm-up with {}", w.name));
        run_mix(&mut bal, floor, w, 2, calls.min(5_000))?;
    }
    let mut rows = Vec::new();
    for mix in &mixes {
        progress.step(format!("data plane: {}", mix.name));
        if mix.path == Stat::SecondChanceHop {
            enable_second_chance(&mut bal)?;
        }
        let r = run_mix(&mut bal, floor, mix, rounds, calls)?;
        rows.push(MixRow::from(&r));
    }
    progress.step(format!("data plane: {}", flood.name));
    rows.push(MixRow::from(&crate::syn_flood::run_mix(&mut bal, floor, &flood, rounds, calls)?));
    drop(bal);
    // New flows with 1 and with 512 VIPs, set up as the scaling part does
    // (one IPv4 TCP VIP kind, flows spread over every VIP), timed in this
    // run so their ratio compares like with like.
    for (vips, name) in [(1, SYN_NEW_1_VIP), (512, SYN_NEW_512_VIPS)] {
        progress.step(format!("data plane: loading {vips} VIPs"));
        let mut bal = crate::scaling::setup(vips, backends, lb_common::DEFAULT_CONN_TABLE_SIZE)?;
        let [est, mut syn] = crate::scaling::mixes(vips, rounds * calls);
        run_mix(&mut bal, floor, &est, 1, calls.min(5_000))?;
        syn.name = name;
        progress.note(format!("data plane: {name}"));
        rows.push(MixRow::from(&run_mix(&mut bal, floor, &syn, rounds, calls)?));
    }
    Ok(DataplaneReport { rounds, calls, backends, ring_size: limits.ring_size, mixes: rows })
}

/// A data-plane mix's figures (one row of part 1, or of the scaling part).
#[derive(Clone, Debug, Serialize)]
pub struct MixRow {
    pub name: String,
    /// Median over rounds of the mean ns per packet, and the rounds' range.
    pub ns: f64,
    pub ns_min: f64,
    pub ns_max: f64,
    pub mpps: f64,
    /// The XDP_TX-only floor, timed in the same rounds.
    pub floor_ns: f64,
    pub floor_mpps: f64,
    /// Median over rounds of balancer / floor, and the rounds' range.
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    pub path_verified: bool,
}

impl From<&MixResult> for MixRow {
    fn from(r: &MixResult) -> Self {
        MixRow {
            name: r.name.to_string(),
            ns: r.ns,
            ns_min: r.ns_min,
            ns_max: r.ns_max,
            mpps: r.mpps(),
            floor_ns: r.floor_ns,
            floor_mpps: 1_000.0 / r.floor_ns,
            ratio: r.ratio,
            ratio_min: r.ratio_min,
            ratio_max: r.ratio_max,
            path_verified: r.path_verified,
        }
    }
}

impl MixRow {
    pub fn path(&self) -> &'static str {
        if self.path_verified {
            "verified"
        } else {
            "WRONG PATH"
        }
    }
}
