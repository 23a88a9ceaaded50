//! `lb-bench`: the project's benchmarks. They print their figures; none of
//! them is a test.

mod dataplane;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_control::dataplane::Limits;

#[derive(Parser)]
#[command(about = "Benchmarks of the XDP load balancer (run as root)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-packet cost of the balancer per traffic mix, against the XDP_TX floor.
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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Dataplane { rounds, calls, backends, distinct_flows } => {
            let limits = Limits { max_vips: 16, max_reals: 2 * backends + 2, ..Limits::default() };
            let mut bal = dataplane::setup(limits, 1, backends)?;
            let mut floor = dataplane::Floor::load()?;
            println!(
                "BPF_PROG_TEST_RUN, repeat=1, {rounds} rounds x {calls} packets per mix; {backends} backends per VIP, ring {}",
                limits.ring_size
            );
            println!(
                "{:<26} {:>9} {:>17} {:>9} {:>7} {:>13} {:>7} {}",
                "mix", "ns/pkt", "spread", "floor ns", "ratio", "ratio spread", "Mpps", "path"
            );
            for mix in dataplane::mixes(distinct_flows.unwrap_or(rounds * calls)) {
                let r = dataplane::run_mix(&mut bal, &mut floor, &mix, rounds, calls)?;
                println!(
                    "{:<26} {:>9.1} {:>8.1}-{:<8.1} {:>9.1} {:>7.2} {:>6.2}-{:<6.2} {:>7.2} {}",
                    r.name,
                    r.ns,
                    r.ns_min,
                    r.ns_max,
                    r.floor_ns,
                    r.ratio,
                    r.ratio_min,
                    r.ratio_max,
                    r.mpps(),
                    if r.path_verified { "verified" } else { "WRONG PATH" }
                );
            }
        }
    }
    Ok(())
}
