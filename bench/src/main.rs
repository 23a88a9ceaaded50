//! `lb-bench`: the project's benchmarks. They print their figures; none of
//! them is a test. `lb-bench all` runs every part and writes
//! `bench/results/<date>.{json,md,svg}`; each part also has its own
//! subcommand. See bench/README.md.

mod breakdown;
mod control;
mod dataplane;
mod health_cost;
mod miss_latency;
mod plot;
mod progress;
mod quality;
mod report;
mod results;
mod scaling;
mod syn_flood;
mod sys;
mod trafgen;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use crate::{
    progress::Progress,
    report::{targets_table, Section, Target},
    results::{PartError, Report},
};

#[derive(Parser)]
#[command(about = "Benchmarks of the XDP load balancer (run as root). `lb-bench all` runs them all.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every benchmark, one after the other; writes bench/results/<date>.{json,md,svg}.
    All {
        /// Shorter runs (under two minutes): fewer rounds, calls and packets.
        #[arg(long)]
        quick: bool,
        /// Where the results go.
        #[arg(long, default_value_os_t = default_results_dir())]
        out_dir: PathBuf,
        /// Print only; write no result files.
        #[arg(long)]
        no_write: bool,
        /// Parts to leave out (repeatable).
        #[arg(long, value_enum)]
        skip: Vec<Part>,
    },
    /// 1. Per-packet cost of the balancer per traffic mix, against the XDP_TX floor.
    Dataplane {
        /// Rounds per mix (balancer and floor interleaved in each).
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Packets per round and program, one per BPF_PROG_TEST_RUN call.
        #[arg(long, default_value_t = 20_000)]
        calls: u32,
        /// Backends per VIP.
        #[arg(long, default_value_t = 100)]
        backends: u32,
        /// Distinct flows the new-flow mix rotates through (default: one per
        /// timed packet, so every SYN is a flow the table has not seen).
        #[arg(long)]
        distinct_flows: Option<u32>,
    },
    /// Where each mix's nanoseconds go: the balancer stopped after each
    /// stage of its path, timed like `dataplane` (not part of `all`).
    Breakdown {
        /// Rounds per mix (every stage program and the floor in each).
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Packets per round and program.
        #[arg(long, default_value_t = 10_000)]
        calls: u32,
        /// Backends per VIP.
        #[arg(long, default_value_t = 100)]
        backends: u32,
    },
    /// The cost of one random read in a region the size of a data-plane
    /// table (4 KiB pages like BPF arrays; 2 MiB where THP is available):
    /// the physical cost under the 512-VIP row (not part of `all`).
    MissLatency {
        /// Region sizes in MiB (default: 1, 16, and the ring pool of 512
        /// VIPs with 65537-slot rings).
        #[arg(long, value_delimiter = ',')]
        mib: Vec<usize>,
        /// Dependent reads timed per region.
        #[arg(long, default_value_t = 2_000_000)]
        reads: usize,
    },
    /// 2. The balancer's cost with 1/16/512 VIPs, 10-4096 backends, a full connection table.
    Scaling {
        #[arg(long)]
        quick: bool,
        /// Rounds per mix (default 11, quick 3).
        #[arg(long)]
        rounds: Option<u32>,
        /// Packets per round (default 20000, quick 5000).
        #[arg(long)]
        calls: Option<u32>,
    },
    /// The health checks' cost alone: 1,000 (VIP, backend) pairs checked
    /// every second; the daemon's CPU (also part of `control`).
    HealthCost {
        /// Measurement window.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// 3. Maglev build time, API call to data-plane latency, API calls/s, start-up with 512 VIPs.
    Control {
        #[arg(long)]
        quick: bool,
    },
    /// 4. Maglev table quality: shares and slots moved on removal/addition.
    Maglev {
        #[arg(long)]
        quick: bool,
    },
    /// Not a benchmark: the invariant fuzzer (generated and mutated frames,
    /// every output checked against the README's table; see bench/README.md).
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Replays a run (printed by every run); default: a fresh seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// 5. End to end: trafgen through the veth lab, CPU time per packet.
    Trafgen {
        #[arg(long)]
        quick: bool,
        /// Packets to send (default 1500000, quick 300000).
        #[arg(long)]
        count: Option<u64>,
        /// Stop the measured run after this many seconds (default 20, quick 10).
        #[arg(long)]
        timeout: Option<u64>,
        /// Backends in the lab (1-8).
        #[arg(long, default_value_t = 4)]
        backends: usize,
        /// trafgen config (C preprocessor: DST_MAC, SRC_IP, VIP, VIP_PORT are defined).
        #[arg(long, default_value_os_t = trafgen::Opts::default_config())]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Dataplane,
    Scaling,
    Control,
    Maglev,
    Trafgen,
}

fn default_results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

// ---- printing ----------------------------------------------------------------

fn print_lines(progress: &Progress, lines: impl IntoIterator<Item = String>) {
    for l in lines {
        progress.println(l);
    }
}

fn header(p: &Progress, title: &str) {
    p.println("");
    p.println(format!("== {title} =="));
}

// ---- the daemon binary --------------------------------------------------------

/// The daemon parts run `lb-control` from this executable's directory (as
/// the lab does). Under `cargo run` (CARGO is set) it is built (or found up
/// to date) first, so it matches the library lb-bench was built with: the
/// pinned maps' layout must agree. Run directly, it must already be there.
fn ensure_daemon_built(progress: &Progress) -> Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return lb_e2e::workspace_bin("lb-control")
            .map(|_| ())
            .context("build the daemon first: cargo build --release --workspace --bins");
    };
    let exe = std::env::current_exe()?;
    let release = exe.components().any(|c| c.as_os_str() == "release");
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", "lb-control", "--bins"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    if release {
        cmd.arg("--release");
    }
    progress.note("building lb-control (cargo build -p lb-control --bins)");
    let status = cmd.status().with_context(|| format!("running {}", PathBuf::from(&cargo).display()))?;
    if !status.success() {
        bail!("building lb-control failed: run `cargo build --release --workspace --bins` and look at its errors");
    }
    lb_e2e::workspace_bin("lb-control").map(|_| ())
}

// ---- options per run length ---------------------------------------------------

struct Plan {
    dp_rounds: u32,
    dp_calls: u32,
    scaling: scaling::Opts,
    control: control::Opts,
    quality: quality::Opts,
    trafgen: trafgen::Opts,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                dp_rounds: 5,
                dp_calls: 5_000,
                scaling: scaling::Opts { rounds: 3, calls: 5_000 },
                control: control::Opts::quick(),
                quality: quality::Opts { removals: 10, additions: 5 },
                trafgen: trafgen_opts(true, None, None, 4, trafgen::Opts::default_config()),
            }
        } else {
            Plan {
                dp_rounds: 21,
                dp_calls: 20_000,
                scaling: scaling::Opts { rounds: 11, calls: 20_000 },
                control: control::Opts::full(),
                quality: quality::Opts { removals: 1_000, additions: 50 },
                trafgen: trafgen_opts(false, None, None, 4, trafgen::Opts::default_config()),
            }
        }
    }
}

fn trafgen_opts(
    quick: bool,
    count: Option<u64>,
    timeout: Option<u64>,
    backends: usize,
    config: PathBuf,
) -> trafgen::Opts {
    trafgen::Opts {
        count: count.unwrap_or(if quick { 300_000 } else { 1_500_000 }),
        warmup: 20_000,
        timeout: Duration::from_secs(timeout.unwrap_or(if quick { 10 } else { 20 })),
        backends,
        config,
    }
}

// ---- main ----------------------------------------------------------------------

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Dataplane { rounds, calls, backends, distinct_flows } => {
            let p = Progress::new(0);
            let mut floor = dataplane::Floor::load()?;
            let d = dataplane::run(rounds, calls, backends, distinct_flows, &mut floor, &p)?;
            p.finish();
            print_lines(&p, d.lines());
        }
        Command::Breakdown { rounds, calls, backends } => {
            let p = Progress::new(0);
            let mut floor = dataplane::Floor::load()?;
            let b = breakdown::run(rounds, calls, backends, &mut floor, &p)?;
            p.finish();
            print_lines(&p, b.lines());
        }
        Command::MissLatency { mib, reads } => {
            let sizes = if mib.is_empty() {
                let pool =
                    lb_control::dataplane::Limits { max_vips: 512, ..Default::default() }.ring_slots() as usize * 2;
                vec![1, 16, pool.div_ceil(1 << 20)]
            } else {
                mib
            };
            for line in miss_latency::lines(&miss_latency::run(&sizes, reads)?) {
                println!("{line}");
            }
        }
        Command::Scaling { quick, rounds, calls } => {
            let p = Progress::new(scaling::steps());
            let mut floor = dataplane::Floor::load()?;
            let opts = scaling::Opts {
                rounds: rounds.unwrap_or(if quick { 3 } else { 11 }),
                calls: calls.unwrap_or(if quick { 5_000 } else { 20_000 }),
            };
            let s = scaling::run(opts, &mut floor, &p)?;
            p.finish();
            print_lines(&p, s.lines());
        }
        Command::Control { quick } => {
            let opts = if quick { control::Opts::quick() } else { control::Opts::full() };
            let p = Progress::new(control::steps(&opts));
            ensure_daemon_built(&p)?;
            let c = control::run(&opts, &p)?;
            p.finish();
            print_lines(&p, c.lines());
            p.println("");
            print_lines(&p, targets_table(&c.targets()).text());
        }
        Command::HealthCost { seconds } => {
            let p = Progress::new(3);
            ensure_daemon_built(&p)?;
            let h = health_cost::run(Duration::from_secs(seconds), &p)?;
            p.finish();
            p.println(h.line());
            print_lines(&p, targets_table(&[health_cost::target(Some(&h))]).text());
        }
        Command::Maglev { quick } => {
            let plan = Plan::new(quick);
            let p = Progress::new(quality::SIZES.len() as u64);
            let q = quality::run(&plan.quality, &p)?;
            p.finish();
            print_lines(&p, q.lines());
            p.println("");
            print_lines(&p, targets_table(&q.targets()).text());
        }
        Command::Fuzz { packets, seed } => {
            let seed = seed.unwrap_or_else(lb_bench::fuzz::fresh_seed);
            println!("fuzz: seed {seed} (replay with --seed {seed})");
            let opts = lb_bench::fuzz::Options { packets, seed, keep: 10 };
            let report = lb_bench::fuzz::run(&opts, |n| eprint!("\r{n} / {packets} frames"))?;
            eprintln!();
            print!("{}", report.render());
            if report.total_violations() > 0 {
                bail!("{} violations", report.total_violations());
            }
        }
        Command::Trafgen { quick, count, timeout, backends, config } => {
            let opts = trafgen_opts(quick, count, timeout, backends, config);
            let p = Progress::new(trafgen::steps());
            ensure_daemon_built(&p)?;
            let t = trafgen::run(&opts, &p)?;
            p.finish();
            print_lines(&p, t.lines());
        }
        Command::All { quick, out_dir, no_write, skip } => {
            let ok = run_all(quick, &out_dir, no_write, &skip)?;
            if !ok {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// Runs every part; returns false when a part failed (targets not met are
/// figures, not failures).
fn run_all(quick: bool, out_dir: &std::path::Path, no_write: bool, skip: &[Part]) -> Result<bool> {
    let started = Instant::now();
    let plan = Plan::new(quick);
    let on = |p: Part| !skip.contains(&p);
    let mut steps = 0;
    if on(Part::Scaling) {
        steps += scaling::steps();
    }
    if on(Part::Control) {
        steps += control::steps(&plan.control);
    }
    if on(Part::Maglev) {
        steps += quality::SIZES.len() as u64;
    }
    if on(Part::Trafgen) {
        steps += trafgen::steps();
    }
    let p = Progress::new(steps);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut report = Report {
        date: sys::today_utc(),
        command,
        quick,
        duration_s: 0.0,
        host: sys::host(),
        dataplane: None,
        scaling: None,
        control: None,
        maglev_quality: None,
        trafgen: None,
        targets: Vec::new(),
        errors: Vec::new(),
    };
    p.println(format!(
        "lb-bench all ({} run) on Linux {}, {} CPUs ({}), {} GiB",
        if quick { "quick" } else { "full" },
        report.host.kernel,
        report.host.cpus_online,
        report.host.cpu_model,
        report.host.memory_gib
    ));
    let daemon = if on(Part::Control) || on(Part::Trafgen) {
        ensure_daemon_built(&p).map_err(|e| format!("{e:#}"))
    } else {
        Ok(())
    };
    let fail = |report: &mut Report, part: &'static str, e: String| {
        p.println(format!("FAILED: {part}: {e}"));
        report.errors.push(PartError { part, error: e });
    };

    let mut floor = if on(Part::Dataplane) || on(Part::Scaling) { Some(dataplane::Floor::load()) } else { None };
    if on(Part::Dataplane) {
        header(&p, "1. Data plane: every mix, balancer vs XDP_TX floor");
        let r = match floor.as_mut() {
            Some(Ok(fl)) => dataplane::run(plan.dp_rounds, plan.dp_calls, 100, None, fl, &p),
            Some(Err(e)) => Err(anyhow::anyhow!("loading the floor program: {e}")),
            None => unreachable!(),
        };
        match r {
            Ok(d) => {
                print_lines(&p, d.lines());
                report.targets.extend(d.targets());
                report.dataplane = Some(d);
            }
            Err(e) => fail(&mut report, "dataplane", format!("{e:#}")),
        }
    }
    if on(Part::Scaling) {
        header(&p, "2. Data plane scaling: VIPs, backends, full connection table");
        let r = match floor.as_mut() {
            Some(Ok(fl)) => scaling::run(plan.scaling, fl, &p),
            Some(Err(e)) => Err(anyhow::anyhow!("loading the floor program: {e}")),
            None => unreachable!(),
        };
        match r {
            Ok(s) => {
                print_lines(&p, s.lines());
                report.scaling = Some(s);
            }
            Err(e) => fail(&mut report, "scaling", format!("{e:#}")),
        }
    }
    drop(floor);
    if on(Part::Control) {
        header(&p, "3. Control plane: Maglev build, API -> data plane, API calls/s, start-up");
        let r = match &daemon {
            // Maglev build times need no daemon: measure them anyway.
            Err(e) => control::maglev_build(&plan.control, &p).map(|b| control::ControlReport {
                maglev_build: b,
                api_latency: Vec::new(),
                api_throughput: Vec::new(),
                api_load: Vec::new(),
                startup: None,
                health_cost: None,
                errors: vec![format!("daemon parts skipped: {e}")],
            }),
            Ok(()) => control::run(&plan.control, &p),
        };
        match r {
            Ok(c) => {
                print_lines(&p, c.lines());
                for e in &c.errors {
                    report.errors.push(PartError { part: "control", error: e.clone() });
                }
                report.targets.extend(c.targets());
                report.control = Some(c);
            }
            Err(e) => fail(&mut report, "control", format!("{e:#}")),
        }
    }
    if on(Part::Maglev) {
        header(&p, "4. Maglev quality");
        match quality::run(&plan.quality, &p) {
            Ok(q) => {
                print_lines(&p, q.lines());
                report.targets.extend(q.targets());
                report.maglev_quality = Some(q);
            }
            Err(e) => fail(&mut report, "maglev", format!("{e:#}")),
        }
    }
    if on(Part::Trafgen) {
        header(&p, "5. End to end: trafgen through the veth lab");
        let r = match &daemon {
            Err(e) => Err(anyhow::anyhow!("{e}")),
            Ok(()) => trafgen::run(&plan.trafgen, &p),
        };
        match r {
            Ok(t) => {
                print_lines(&p, t.lines());
                report.trafgen = Some(t);
            }
            Err(e) => fail(&mut report, "trafgen", format!("{e:#}")),
        }
    }

    // Targets: data plane first, as listed in the issue.
    let order = |t: &Target| match t.part {
        "dataplane" => 0,
        "control" => 1,
        _ => 2,
    };
    report.targets.sort_by_key(order);
    report.duration_s = started.elapsed().as_secs_f64();
    p.finish();
    header(&p, "Targets");
    print_lines(&p, targets_table(&report.targets).text());
    let met = report.targets.iter().filter(|t| t.met).count();
    p.println(format!(
        "{met} of {} targets met; {} part(s) failed; {:.0} s",
        report.targets.len(),
        report.errors.len(),
        report.duration_s
    ));
    if !no_write {
        for path in report.write(out_dir)? {
            p.println(format!("wrote {}", path.display()));
        }
    }
    Ok(report.errors.is_empty())
}
