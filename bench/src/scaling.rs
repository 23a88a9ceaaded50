//! Part 2: how the balancer's per-packet cost changes with the number of
//! VIPs, the number of backends, and a full connection table.
//!
//! `dataplane::setup` makes three VIPs (IPv4 TCP, IPv4 UDP, IPv6 TCP) per
//! VIP number and sends every mix to the first; here each configuration has
//! one kind (IPv4 TCP port 80) per VIP, so 512 VIPs need 512 rings (a
//! 135 MB pool) instead of 1537, and the timed flows are spread over all
//! the VIPs, so more VIPs really means more tables and entries touched.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use lb_common::{
    addr_v4, ConnEntry, FlowKey, Real, Stat, VipKey, VipMeta, DEFAULT_CONN_TABLE_SIZE, FAMILY_V4, IPPROTO_TCP,
};
use lb_control::{
    dataplane::{Balancer, Limits},
    maglev::{self, MaglevBackend},
};
use lb_testkit::packet_builder as pb;
use serde::Serialize;

use crate::{
    dataplane::{self, Floor, Mix, MixRow},
    progress::Progress,
    report::{f, Section, Table},
};

const IF_MAC: pb::Mac = [0x02, 0, 0, 0, 0, 0x02];
const ROUTER_MAC: pb::Mac = [0x02, 0, 0, 0, 0, 0x03];
/// First VIP; VIP `v` is this address plus `v`.
const VIP_BASE: u32 = 0x0a00_000a; // 10.0.0.10
/// Flows the established mix rotates through (all in the table, spread
/// over every VIP).
pub const ESTABLISHED_FLOWS: u32 = 4096;

#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub rounds: u32,
    pub calls: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScalingRow {
    /// What varies: "vips", "backends" or "conn table full".
    pub case: String,
    pub vips: u32,
    pub backends: u32,
    pub conn_table_size: u32,
    /// How the table was filled before timing (full-table case).
    pub fill: Option<Fill>,
    /// Connection-table evictions while the SYN mix was timed (warm-up and
    /// floor packets excluded: the floor touches no map).
    pub syn_evictions: Option<u64>,
    pub established: MixRow,
    pub syn: MixRow,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScalingReport {
    pub rounds: u32,
    pub calls: u32,
    pub ring_size: u32,
    pub established_flows: u32,
    pub rows: Vec<ScalingRow>,
}

/// (case, VIPs, backends per VIP, full connection table).
const CONFIGS: &[(&str, u32, u32, bool)] = &[
    ("vips", 1, 100, false),
    ("vips", 16, 100, false),
    ("vips", 512, 100, false),
    ("backends", 1, 10, false),
    ("backends", 1, 100, false),
    ("backends", 1, 1000, false),
    ("backends", 1, 4096, false),
    ("conn table full", 1, 100, true),
];

pub fn steps() -> u64 {
    // The (1 VIP, 100 backends) configuration is timed once and listed in
    // both groups.
    (CONFIGS.len() as u64 - 1) * 2
}

fn vip(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(VIP_BASE + v)
}

fn client(i: u32) -> Ipv4Addr {
    // Spread over the address space (not in 10/8, where the VIPs live).
    Ipv4Addr::from(0xc000_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761)) | 0x8000_0000)
}

fn net16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

fn tcp4(client: Ipv4Addr, sport: u16, dst: Ipv4Addr, flags: u8, payload: &[u8]) -> Vec<u8> {
    let seg = pb::tcp(client.into(), dst.into(), sport, 80, flags, payload);
    pb::eth(IF_MAC, ROUTER_MAC, 0x0800, &pb::ipv4(client, dst, IPPROTO_TCP, &seg, &pb::V4::default()))
}

/// Loads the balancer with `vips` IPv4 TCP VIPs (port 80) sharing
/// `backends` IPv4 backends, one Maglev table per VIP ring.
pub fn setup(vips: u32, backends: u32, conn_table_size: u32) -> Result<Balancer> {
    let limits = Limits { max_vips: vips, max_reals: backends + 1, conn_table_size, ..Limits::default() };
    let mut bal = Balancer::load(limits).context("loading the balancer (root and BPF needed)")?;
    bal.set_config(&crate::dataplane::forwarding())?;
    let mut list = Vec::with_capacity(backends as usize);
    for i in 0..backends {
        let a = Ipv4Addr::from(0x0a01_0000 + i + 1);
        bal.set_real(i + 1, &Real { addr: addr_v4(a.octets()), family: FAMILY_V4, _pad: [0; 3] })?;
        list.push(MaglevBackend { id: i + 1, key: a.octets().to_vec(), weight: 1 });
    }
    let table = maglev::build(&list, limits.ring_size)?;
    // One VIP-table publication for the lot (each waits for readers).
    bal.defer_vip_publishing(true)?;
    for v in 0..vips {
        bal.write_ring(v, &table)?;
        let key = VipKey { addr: addr_v4(vip(v).octets()), port: net16(80), proto: IPPROTO_TCP, family: FAMILY_V4 };
        bal.set_vip(&key, &VipMeta { flags: 0, vip_num: v, ring: v })?;
    }
    bal.defer_vip_publishing(false)?;
    Ok(bal)
}

/// The two scaling mixes for `vips` VIPs: established flows (warmed into
/// the table) and new flows (SYNs never seen before), flow `i` to VIP
/// `i % vips`.
pub fn mixes(vips: u32, new_flows: u32) -> [Mix; 2] {
    let payload = [0x61u8; 64];
    [
        Mix {
            name: "tcp established (4096 flows)",
            frames: (0..ESTABLISHED_FLOWS)
                .map(|i| {
                    tcp4(client(i), 1024 + (i % 60_000) as u16, vip(i % vips), pb::TCP_ACK | pb::TCP_PSH, &payload)
                })
                .collect(),
            path: Stat::TxEncap,
            warm: true,
        },
        Mix {
            name: "tcp syn (new flows)",
            frames: (0..new_flows)
                .map(|i| {
                    let j = i + ESTABLISHED_FLOWS;
                    tcp4(client(j), 1024 + (j % 60_000) as u16, vip(i % vips), pb::TCP_SYN, &[])
                })
                .collect(),
            path: Stat::TxEncap,
            warm: false,
        },
    ]
}

/// How full the connection table was made.
#[derive(Clone, Debug, Serialize)]
pub struct Fill {
    /// Distinct flows written.
    pub flows_written: u64,
    /// Distinct flows the table holds afterwards.
    pub flows_held: usize,
    /// The configured size (`conn_table_size`).
    pub capacity: u32,
}

/// Fills the connection table to capacity with distinct flows, through
/// `Balancer::set_conn` (which knows the table's layout), half a table at
/// a time, until another half-table of new flows no longer raises the
/// count of flows held (by 0.1% of the batch), or eight tables' worth have
/// been written.
fn fill_conn_table(bal: &mut Balancer, backends: u32, progress: &Progress) -> Result<Fill> {
    let size = bal.limits().conn_table_size;
    let batch = (size / 2).max(1);
    let (mut written, mut held) = (0u32, bal.conn_count());
    loop {
        progress.note(format!("filling the connection table: {written} flows written, {held} held, size {size}"));
        for i in written..written + batch {
            // Clients in 11.0.0.0/8 and up: never one of the timed flows.
            let key = FlowKey::new(
                FAMILY_V4,
                IPPROTO_TCP,
                addr_v4(Ipv4Addr::from(0x0b00_0000 + i).octets()),
                net16(1024 + (i % 60_000) as u16),
                addr_v4(vip(0).octets()),
                net16(80),
            );
            bal.set_conn(&key, &ConnEntry { real: 1 + i % backends })?;
        }
        written += batch;
        let now = bal.conn_count();
        let grew = now.saturating_sub(held);
        held = now;
        if grew < (batch as usize / 1000).max(1) || written >= size.saturating_mul(8) {
            break;
        }
    }
    Ok(Fill { flows_written: written as u64, flows_held: held, capacity: size })
}

/// A counter by name, if this data plane has it.
fn named_stat(bal: &Balancer, name: &str) -> Result<Option<u64>> {
    match Stat::ALL.iter().find(|s| s.name() == name) {
        Some(&s) => Ok(Some(bal.stat(s)?.packets)),
        None => Ok(None),
    }
}

fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub fn run(opts: Opts, floor: &mut Floor, progress: &Progress) -> Result<ScalingReport> {
    let new_flows = opts.rounds * opts.calls;
    let mut rows: Vec<ScalingRow> = Vec::new();
    for &(case, vips, backends, full) in CONFIGS {
        if let Some(done) = rows.iter().find(|r| r.vips == vips && r.backends == backends && r.fill.is_none() && !full)
        {
            let mut again = done.clone();
            again.case = case.into();
            rows.push(again);
            continue;
        }
        let conn = DEFAULT_CONN_TABLE_SIZE;
        progress.step(format!(
            "scaling: {} x {backends} backends{}: loading",
            plural(vips, "VIP"),
            if full { ", full connection table" } else { "" }
        ));
        let mut bal = setup(vips, backends, conn)?;
        let fill = if full { Some(fill_conn_table(&mut bal, backends, progress)?) } else { None };
        let [est, syn] = mixes(vips, new_flows);
        // An untimed pass first (caches, CPU frequency); the SYN mix's flows
        // stay unseen.
        dataplane::run_mix(&mut bal, floor, &est, 1, opts.calls.min(5_000))?;
        progress.note(format!("scaling: {} x {backends} backends: {}", plural(vips, "VIP"), est.name));
        let e = dataplane::run_mix(&mut bal, floor, &est, opts.rounds, opts.calls)?;
        progress.step(format!("scaling: {} x {backends} backends: {}", plural(vips, "VIP"), syn.name));
        let evicted_before = named_stat(&bal, "conn_evicted")?;
        let s = dataplane::run_mix(&mut bal, floor, &syn, opts.rounds, opts.calls)?;
        let syn_evictions = match (evicted_before, named_stat(&bal, "conn_evicted")?) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        rows.push(ScalingRow {
            case: case.into(),
            vips,
            backends,
            conn_table_size: conn,
            fill,
            syn_evictions,
            established: MixRow::from(&e),
            syn: MixRow::from(&s),
        });
    }
    Ok(ScalingReport {
        rounds: opts.rounds,
        calls: opts.calls,
        ring_size: Limits::default().ring_size,
        established_flows: ESTABLISHED_FLOWS,
        rows,
    })
}

impl Section for ScalingReport {
    const TITLE: &'static str = "2. Data plane scaling";

    fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "BPF_PROG_TEST_RUN, repeat=1, {} rounds x {} packets per mix; IPv4 TCP VIPs; est = {} established flows over all VIPs, SYN = unseen flows",
            self.rounds, self.calls, self.established_flows
        )];
        out.extend(self.table().text());
        out
    }

    fn markdown(&self) -> String {
        format!("{}\n\n{}", self.describe(), self.table().markdown())
    }
}

impl ScalingReport {
    fn describe(&self) -> String {
        format!(
            "BPF_PROG_TEST_RUN, one packet per call, {} rounds x {} packets per mix, balancer and XDP_TX floor interleaved. \
             IPv4 TCP VIPs (port 80) sharing one backend pool, Maglev ring {}, connection table {} entries. \
             Established: {} flows warmed into the table, flow i to VIP i mod VIPs. SYN: a flow never seen before per packet. \
             Full table: filled with other flows before timing until more new flows no longer raise the count it holds \
             (conn table = flows held of the configured size); the established flows are warmed in, and each SYN has to \
             take the place of another flow.",
            self.rounds,
            self.calls,
            self.ring_size,
            self.rows.first().map_or(0, |r| r.conn_table_size),
            self.established_flows
        )
    }

    fn table(&self) -> Table {
        let mut t = Table::new(
            &[
                "varies",
                "VIPs",
                "backends",
                "conn table",
                "est ns",
                "est Mpps",
                "est ratio",
                "SYN ns",
                "SYN Mpps",
                "SYN ratio",
                "SYN evictions",
                "floor ns",
                "path",
            ],
            1,
        );
        for r in &self.rows {
            let floor = (r.established.floor_ns + r.syn.floor_ns) / 2.0;
            t.row(vec![
                r.case.clone(),
                r.vips.to_string(),
                r.backends.to_string(),
                r.fill.as_ref().map_or("-".into(), |x| format!("{} of {}", x.flows_held, x.capacity)),
                format!("{} ({}-{})", f(r.established.ns, 1), f(r.established.ns_min, 0), f(r.established.ns_max, 0)),
                f(r.established.mpps, 2),
                format!(
                    "{} ({}-{})",
                    f(r.established.ratio, 2),
                    f(r.established.ratio_min, 2),
                    f(r.established.ratio_max, 2)
                ),
                format!("{} ({}-{})", f(r.syn.ns, 1), f(r.syn.ns_min, 0), f(r.syn.ns_max, 0)),
                f(r.syn.mpps, 2),
                format!("{} ({}-{})", f(r.syn.ratio, 2), f(r.syn.ratio_min, 2), f(r.syn.ratio_max, 2)),
                r.syn_evictions.map_or("-".into(), |n| n.to_string()),
                f(floor, 1),
                if r.established.path_verified && r.syn.path_verified {
                    "verified".into()
                } else {
                    "WRONG PATH".into()
                },
            ]);
        }
        t
    }
}
