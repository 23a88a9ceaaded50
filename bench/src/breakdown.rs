//! Where each mix's nanoseconds go: the balancer cut short after each stage
//! of its path (the `lb-balancer-stages` object: the balancer's own code,
//! one program per stage, sharing the balancer's maps through their pins),
//! timed like part 1, every stage and the XDP_TX floor interleaved in each
//! round. A stage's cost is the median over rounds of (this stage's
//! ns - the previous stage's ns) in the same round. Not part of `lb-bench
//! all`: `lb-bench breakdown`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::{programs::Xdp, Ebpf};
use lb_control::dataplane::{load_balancer_stages, Limits};
use serde::Serialize;

use crate::{
    dataplane::{self, Floor, Mix},
    progress::Progress,
    report::{f, Table},
};

/// The stage programs in path order: (program, what it adds to the one
/// before). Program `stage_n` stops after `lb_ebpf`'s `Stage` n.
pub const STAGES: &[(&str, &str)] = &[
    ("stage_1", "capture check"),
    ("stage_2", "config read"),
    ("stage_3", "Ethernet + IP headers, VIP filter"),
    ("stage_4", "TCP/UDP/ICMP header"),
    ("stage_5", "flow hash, conn-set touch (not SYNs)"),
    ("stage_6", "VIP lookup (+ a SYN's conn-set touch)"),
    ("stage_7", "VIP counter, backend choice (conn table, ring, insert)"),
    ("stage_8", "backend counter"),
    ("stage_9", "encapsulation + checksum / echo reply"),
    ("stage_10", "reason counter (= the whole balancer)"),
];

#[derive(Clone, Debug, Serialize)]
pub struct MixBreakdown {
    pub mix: String,
    pub floor_ns: f64,
    /// Median ns per packet of each stage program, in [`STAGES`] order.
    pub stage_ns: Vec<f64>,
    /// Median over rounds of each stage's increment over the one before
    /// (the first: over the floor).
    pub delta_ns: Vec<f64>,
    /// Median ratio of the whole program (last stage) to the floor.
    pub ratio: f64,
    /// Every packet of the whole program bumped the intended counter.
    pub path_verified: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BreakdownReport {
    pub rounds: u32,
    pub calls: u32,
    pub mixes: Vec<MixBreakdown>,
}

/// Removes the breakdown's pin directory however the run ends.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf.program_mut(name).with_context(|| format!("no program {name} in the stages object"))?.try_into()?)
}

fn median(v: &mut [f64]) -> f64 {
    crate::sys::median(v)
}

fn breakdown_mix(
    bal: &mut lb_control::dataplane::Balancer,
    stages: &mut Ebpf,
    floor: &mut Floor,
    mix: &Mix,
    rounds: u32,
    calls: u32,
) -> Result<MixBreakdown> {
    let mut out = vec![0u8; 4096];
    if mix.warm {
        let mut cursor = 0;
        dataplane::time_calls(bal.program(), &mix.frames, mix.frames.len() as u32, &mut cursor, &mut out)?;
    }
    let n = STAGES.len();
    let (mut floor_ns, mut stage_ns, mut deltas) = (Vec::new(), vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut ratios = Vec::new();
    // Each program starts at its own place in the mix: a program that
    // walks the flows another program has just walked would find their
    // connection-table sets in the cache and look cheaper than it is.
    let mut cursors: Vec<usize> = (0..=n).map(|i| i * mix.frames.len() / (n + 1)).collect();
    let last = STAGES[n - 1].0;
    let before = bal.stat(mix.path)?;
    let mut whole_packets = 0u64;
    for _ in 0..rounds {
        let fl = dataplane::time_calls(floor.program(), &mix.frames, calls, &mut cursors[n], &mut out)?;
        floor_ns.push(fl);
        let mut prev = fl;
        for (i, (name, _)) in STAGES.iter().enumerate() {
            let ns = dataplane::time_calls(program(stages, name)?, &mix.frames, calls, &mut cursors[i], &mut out)?;
            stage_ns[i].push(ns);
            deltas[i].push(ns - prev);
            prev = ns;
            if *name == last {
                ratios.push(ns / fl);
                whole_packets += calls as u64;
            }
        }
    }
    let after = bal.stat(mix.path)?;
    Ok(MixBreakdown {
        mix: mix.name.to_string(),
        floor_ns: median(&mut floor_ns),
        stage_ns: stage_ns.iter_mut().map(|v| median(v)).collect(),
        delta_ns: deltas.iter_mut().map(|v| median(v)).collect(),
        ratio: median(&mut ratios),
        path_verified: after.packets - before.packets == whole_packets,
    })
}

/// Times every stage of every part-1 mix (but second chance's).
pub fn run(rounds: u32, calls: u32, backends: u32, floor: &mut Floor, progress: &Progress) -> Result<BreakdownReport> {
    let limits = Limits { max_vips: 16, max_reals: 2 * backends + 2, ..Limits::default() };
    let pins = PinDir(PathBuf::from("/sys/fs/bpf").join(lb_testkit::netns::unique_name("lbbd")));
    progress.note("breakdown: loading the balancer and its stage programs");
    let mut bal = dataplane::setup_pinned(limits, 1, backends, Some(&pins.0))?;
    let mut stages = load_balancer_stages(&limits, &pins.0).context("loading the stage programs")?;
    // New flows: enough for every program to see its own.
    let mixes = dataplane::mixes(rounds * calls * (STAGES.len() as u32 + 1));
    progress.add(mixes.len() as u64);
    let mut rows = Vec::new();
    for mix in &mixes {
        progress.step(format!("breakdown: {}", mix.name));
        rows.push(breakdown_mix(&mut bal, &mut stages, floor, mix, rounds, calls)?);
    }
    Ok(BreakdownReport { rounds, calls, mixes: rows })
}

impl BreakdownReport {
    /// One row per stage, one column per mix: ns the stage adds.
    pub fn table(&self) -> Table {
        let mut headers = vec!["stage (adds)".to_string()];
        headers.extend(self.mixes.iter().map(|m| m.mix.clone()));
        let refs: Vec<&str> = headers.iter().map(|s| s.as_str()).collect();
        let mut t = Table::new(&refs, 1);
        t.row(
            std::iter::once("floor (XDP_TX only), ns".to_string())
                .chain(self.mixes.iter().map(|m| f(m.floor_ns, 1)))
                .collect(),
        );
        for (i, (_, what)) in STAGES.iter().enumerate() {
            t.row(
                std::iter::once(format!("{}. {what}", i + 1))
                    .chain(self.mixes.iter().map(|m| format!("{:+.1}", m.delta_ns[i])))
                    .collect(),
            );
        }
        t.row(
            std::iter::once("whole program, ns".to_string())
                .chain(self.mixes.iter().map(|m| f(m.stage_ns[STAGES.len() - 1], 1)))
                .collect(),
        );
        t.row(
            std::iter::once("ratio to the floor".to_string()).chain(self.mixes.iter().map(|m| f(m.ratio, 2))).collect(),
        );
        t.row(
            std::iter::once("path".to_string())
                .chain(self.mixes.iter().map(|m| if m.path_verified { "verified" } else { "WRONG PATH" }.to_string()))
                .collect(),
        );
        t
    }

    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "BPF_PROG_TEST_RUN, repeat=1, {} rounds x {} packets per program; each stage program = the balancer stopped after that stage; \
             ns a stage adds = median over rounds of (stage - previous stage) in the same round",
            self.rounds, self.calls
        )];
        out.extend(self.table().text());
        out
    }
}
