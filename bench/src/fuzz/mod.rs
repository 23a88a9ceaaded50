//! The invariant fuzzer: generated and mutated frames through the balancer
//! (BPF_PROG_TEST_RUN, one packet per call), every output checked against
//! an independent model of the README's input → action → counter table,
//! every encapsulated packet run through the decap program back to the
//! original. Seeded: a failure replays with `--seed`.

mod gen;
mod model;
mod world;

pub use gen::Rng;

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::{Action, Counter, FlowKey, Stat};
use lb_control::dataplane::Decap;

use self::model::Expect;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// What each run checks; a violation names one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// The XDP action is the model's.
    Action,
    /// Exactly one reason counter moved, the model's, by the frame's size.
    OneCounter,
    /// A passed frame leaves unchanged.
    PassUnchanged,
    /// The outer Ethernet and IP headers of an encapsulated packet.
    EncapOuter,
    /// The inner packet, byte-identical to what arrived (trailer trimmed).
    EncapInner,
    /// The backend is the VIP's ring choice for the flow.
    EncapBackend,
    /// A flow always reaches the same backend.
    OneFlowOneBackend,
    /// Echo and too-big replies: right bytes, valid checksums, back to the
    /// source.
    Reply,
    /// The decap program turns an encapsulated packet back into the
    /// original (a second hop: sent on to the hop by the first backend,
    /// then delivered by the second).
    DecapRoundTrip,
    /// The `second_chance_hop` event counter moved by one for a packet
    /// sent with a second hop, and not otherwise.
    HopCounter,
}

/// One broken invariant, with the frame that broke it.
pub struct Violation {
    pub invariant: Invariant,
    pub index: u64,
    pub detail: String,
    pub frame: Vec<u8>,
}

/// Packets of flows whose VIP's previous table names another backend.
#[derive(Default)]
pub struct SecondChanceSeen {
    /// Placed by the connection table (sent to the current backend only).
    pub table_hits: u64,
    /// Sent with a second hop: IPv4 flows, IPv6 flows.
    pub second_hops: [u64; 2],
}

pub struct Options {
    pub packets: u64,
    pub seed: u64,
    /// Violations kept with their frames.
    pub keep: usize,
}

#[derive(Default)]
pub struct Report {
    pub seed: u64,
    pub packets: u64,
    pub per_action: HashMap<&'static str, u64>,
    pub per_counter: HashMap<&'static str, u64>,
    pub violations: HashMap<Invariant, u64>,
    pub first: Vec<Violation>,
    pub decapsulated: u64,
    /// SYNs forwarded in SYN-flood mode, without a table entry (the
    /// world's threshold is low, so most of a run is in the mode).
    pub untabled_syns: u64,
    pub second_chance: SecondChanceSeen,
    pub seconds: f64,
}

impl Report {
    pub fn total_violations(&self) -> u64 {
        self.violations.values().sum()
    }

    /// A human-readable summary: frames per action and counter,
    /// violations per invariant, the first violations with their frames.
    pub fn render(&self) -> String {
        let mut s = format!(
            "fuzz: seed {} ({:#x}), {} frames in {:.1} s, {} encapsulated frames decapsulated\n",
            self.seed, self.seed, self.packets, self.seconds, self.decapsulated
        );
        let mut actions: Vec<_> = self.per_action.iter().collect();
        actions.sort();
        s += "frames per action:";
        for (a, n) in actions {
            s += &format!(" {a} {n}");
        }
        let mut counters: Vec<_> = self.per_counter.iter().collect();
        counters.sort();
        s += "\nframes per counter:\n";
        for (c, n) in counters {
            s += &format!("  {c:<28} {n}\n");
        }
        s += &format!(
            "SYNs forwarded untabled (SYN-flood mode, threshold {} per CPU per second): {}\n",
            world::FUZZ_SYN_FLOOD_THRESHOLD,
            self.untabled_syns
        );
        s += &format!(
            "second chance: {} packets placed by the connection table, sent with a second hop {} (IPv4) and {} (IPv6)\n",
            self.second_chance.table_hits, self.second_chance.second_hops[0], self.second_chance.second_hops[1]
        );
        s += &format!("violations: {}\n", self.total_violations());
        let mut v: Vec<_> = self.violations.iter().collect();
        v.sort();
        for (inv, n) in v {
            s += &format!("  {inv:?}: {n}\n");
        }
        for v in &self.first {
            s +=
                &format!("violation {:?} at frame {}: {}\n  frame {}\n", v.invariant, v.index, v.detail, hex(&v.frame));
        }
        if self.total_violations() > 0 {
            s += &format!("replay: lb-bench fuzz --packets {} --seed {}\n", self.packets, self.seed);
        }
        s
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A seed from the clock and the process id: a fresh one each run.
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut r = gen::Rng::new(t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32));
    r.next_u64()
}

fn run_prog(prog: &mut Xdp, input: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; input.len() + 512];
    let opts = TestRunOptions { data_in: Some(input), data_out: Some(&mut out), ..TestRunOptions::new() };
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// The reason counters that moved between two snapshots.
fn moved(before: &[(Stat, Counter)], after: &[(Stat, Counter)]) -> Vec<(Stat, u64, u64)> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1 && b.0.action() != Action::Event)
        .map(|(b, a)| (b.0, a.1.packets - b.1.packets, a.1.bytes - b.1.bytes))
        .collect()
}

/// What checking a frame's outcome needs beyond the frame: the backend each
/// flow went to so far and the decap program.
struct Checked<'a> {
    flows: &'a mut HashMap<FlowKey, u32>,
    decap: &'a mut Decap,
    /// Encapsulated packets the decap program turned back.
    decapsulated: u64,
}

/// A broken invariant and what broke it.
type Broken = (Invariant, String);

/// What the balancer did with a frame.
#[derive(Clone, Copy)]
struct Seen<'a> {
    frame: &'a [u8],
    action: u32,
    out: &'a [u8],
    /// The reason counters that moved.
    counters: &'a [(Stat, u64, u64)],
    /// How far the `second_chance_hop` event counter moved.
    hops: u64,
}

/// The length of the frame the model expects out (0: none).
fn expect_len(want: &Expect) -> usize {
    match want {
        Expect::Encap { bytes, .. }
        | Expect::SecondHop { bytes, .. }
        | Expect::TooBig { bytes }
        | Expect::EchoReply { bytes, .. } => bytes.len(),
        _ => 0,
    }
}

impl Checked<'_> {
    /// Checks the balancer's outcome for `frame` (its action, its output and
    /// the reason counters that moved) against `want`: the reason counter
    /// if all holds, else the first broken invariant.
    fn check(&mut self, want: &Expect, seen: &Seen) -> Result<Stat, Broken> {
        let Seen { frame, action, out, counters, hops } = *seen;
        let stat = want.stat();
        if counters != [(stat, 1, frame.len() as u64)] {
            return Err((Invariant::OneCounter, format!("counters moved {counters:?}, model says {}", stat.name())));
        }
        let want_action = match stat.action() {
            Action::Tx => XDP_TX,
            Action::Drop => XDP_DROP,
            _ => XDP_PASS,
        };
        if action != want_action {
            return Err((Invariant::Action, format!("action {action}, model says {want_action} ({})", stat.name())));
        }
        let want_hops = matches!(want, Expect::SecondHop { .. }) as u64;
        if hops != want_hops {
            return Err((Invariant::HopCounter, format!("second_chance_hop moved by {hops}, model says {want_hops}")));
        }
        match want {
            Expect::Pass(_) if out != frame => {
                return Err((Invariant::PassUnchanged, format!("output differs: {}", hex(out))));
            }
            Expect::Pass(_) | Expect::Drop(_) => {}
            Expect::Encap { real, flow, bytes, l3, outer_len, inner } => {
                self.same_backend(flow, *real)?;
                if out != &bytes[..] {
                    let l2_len = l3 + outer_len;
                    let dst_len = if *outer_len == 20 { 4 } else { 16 };
                    let (inv, what) = if out.len() != bytes.len() || out[l2_len..] != inner[..] {
                        (Invariant::EncapInner, "inner packet")
                    } else if out[l2_len - dst_len..l2_len] != bytes[l2_len - dst_len..l2_len] {
                        (Invariant::EncapBackend, "outer destination (backend)")
                    } else {
                        (Invariant::EncapOuter, "outer headers")
                    };
                    return Err((inv, format!("{what} differs: got {} want {}", hex(out), hex(bytes))));
                }
                // Through the decap program: back to the original packet.
                self.decap_to(out, *l3, inner, XDP_PASS)?;
            }
            Expect::SecondHop { real, flow, bytes, forwarded, l3, inner } => {
                self.same_backend(flow, *real)?;
                if out != &bytes[..] {
                    let inv = if out.len() < inner.len() || out[out.len() - inner.len()..] != inner[..] {
                        Invariant::EncapInner
                    } else {
                        Invariant::EncapOuter
                    };
                    return Err((inv, format!("second hop differs: got {} want {}", hex(out), hex(bytes))));
                }
                // The first backend, with no socket for the flow, sends it
                // on to the hop; the second, with no hop left, delivers it.
                let (d_action, hop) = run_prog(self.decap.program(), out).map_err(decap_failed)?;
                if d_action != XDP_TX || hop != *forwarded {
                    return Err((
                        Invariant::DecapRoundTrip,
                        format!("first decap action {d_action}, got {} want {}", hex(&hop), hex(forwarded)),
                    ));
                }
                self.decap_to(&hop, *l3, inner, XDP_PASS)?;
            }
            Expect::EchoReply { bytes, l3, l4, v4, checks_valid } => {
                let (mut got, mut bytes) = (out.to_vec(), bytes.clone());
                let same_len = got.len() == bytes.len();
                if same_len {
                    // Checksums are checked by verifying, not by value.
                    for at in [Some(l4 + 2), v4.then_some(l3 + 10)].into_iter().flatten() {
                        got[at..at + 2].fill(0);
                        bytes[at..at + 2].fill(0);
                    }
                }
                if !same_len || got != bytes {
                    return Err((Invariant::Reply, format!("echo reply differs: got {}", hex(out))));
                }
                if *checks_valid && !model::echo_checksums_verify(out, *l3, *l4, *v4) {
                    return Err((Invariant::Reply, format!("echo reply checksum does not verify: {}", hex(out))));
                }
            }
            Expect::TooBig { bytes } if out != &bytes[..] => {
                return Err((Invariant::Reply, format!("too-big reply differs: got {} want {}", hex(out), hex(bytes))));
            }
            Expect::TooBig { .. } => {}
            Expect::Either { .. } => unreachable!("the caller checks each alternative"),
        }
        Ok(stat)
    }

    /// A flow always reaches the same (first) backend.
    fn same_backend(&mut self, flow: &FlowKey, real: u32) -> Result<(), Broken> {
        if *self.flows.entry(*flow).or_insert(real) != real {
            return Err((Invariant::OneFlowOneBackend, format!("flow now at backend {real}")));
        }
        Ok(())
    }

    /// Runs the decap program on `packet` (an IP-in-IP packet whose outer
    /// header starts at `l3`): it must pass exactly the original `inner`
    /// packet behind the same Ethernet header, its ethertype the inner's.
    fn decap_to(&mut self, packet: &[u8], l3: usize, inner: &[u8], want_action: u32) -> Result<(), Broken> {
        self.decapsulated += 1;
        let (d_action, d_out) = run_prog(self.decap.program(), packet).map_err(decap_failed)?;
        let mut want = packet[..l3].to_vec();
        let et: u16 = if inner[0] >> 4 == 4 { 0x0800 } else { 0x86DD };
        want[l3 - 2..l3].copy_from_slice(&et.to_be_bytes());
        want.extend_from_slice(inner);
        if d_action != want_action || d_out != want {
            return Err((
                Invariant::DecapRoundTrip,
                format!("decap action {d_action}, got {} want {}", hex(&d_out), hex(&want)),
            ));
        }
        Ok(())
    }
}

fn decap_failed(e: anyhow::Error) -> Broken {
    (Invariant::DecapRoundTrip, format!("the decap program's test run failed: {e}"))
}

/// How far the event counter `stat` moved between two snapshots.
fn event_moved(before: &[(Stat, Counter)], after: &[(Stat, Counter)], stat: Stat) -> u64 {
    let packets = |snap: &[(Stat, Counter)]| snap.iter().find(|(s, _)| *s == stat).map_or(0, |(_, c)| c.packets);
    packets(after) - packets(before)
}

/// Runs the fuzzer; `progress` is called every 10,000 frames.
pub fn run(opts: &Options, mut progress: impl FnMut(u64)) -> Result<Report> {
    let (world, mut bal, mut decap) = world::load()?;
    let mut rng = gen::Rng::new(opts.seed);
    let mut report = Report { seed: opts.seed, packets: opts.packets, ..Report::default() };
    let mut flows: HashMap<FlowKey, u32> = HashMap::new();
    // Flows the connection table may hold for second chance: only a SYN
    // outside the SYN-flood mode puts one there (a second-chance miss, an
    // ICMP error and a flood-mode SYN never do; evictions only remove).
    let mut tabled: HashSet<FlowKey> = HashSet::new();
    let mut before = bal.all_stats()?;
    let started = Instant::now();
    for index in 0..opts.packets {
        if index % 10_000 == 0 {
            progress(index);
        }
        let frame = gen::frame_for(&mut rng, &world);
        let (want, placed_syn) = model::expect(&world, &frame);
        let (action, out) = run_prog(bal.program(), &frame)?;
        let after = bal.all_stats()?;
        let counters = moved(&before, &after);
        let hops = event_moved(&before, &after, Stat::SecondChanceHop);
        let untabled = event_moved(&before, &after, Stat::SynFloodUntabled);
        before = after;
        let mut checked = Checked { flows: &mut flows, decap: &mut decap, decapsulated: 0 };
        let seen = Seen { frame: &frame, action, out: &out, counters: &counters, hops };
        let result = match &want {
            // Second chance: a flow the table cannot hold must take the
            // second hop; one it may hold, either.
            Expect::Either { flow, hit, miss } if tabled.contains(flow) => match checked.check(hit, &seen) {
                Ok(stat) => {
                    report.second_chance.table_hits += matches!(**hit, Expect::Encap { .. }) as u64;
                    Ok(stat)
                }
                Err(hit_broken) => checked.check(miss, &seen).map_err(|miss_broken| {
                    // Report the alternative the output looks like.
                    let (broken, other) = if out.len() == expect_len(hit) {
                        (hit_broken, miss_broken)
                    } else {
                        (miss_broken, hit_broken)
                    };
                    (broken.0, format!("{} (as the other outcome: {})", broken.1, other.1))
                }),
            },
            Expect::Either { miss, .. } => checked.check(miss, &seen),
            want => checked.check(want, &seen),
        };
        // A SYN the ring placed is in the table now, unless the flood mode
        // kept it out (checked even when its frame broke an invariant).
        if let Some(flow) = placed_syn.filter(|_| untabled == 0) {
            tabled.insert(flow);
        }
        if let (Expect::Either { flow, .. }, Ok(_), 1) = (&want, &result, hops) {
            report.second_chance.second_hops[(flow.family != lb_common::FAMILY_V4) as usize] += 1;
        }
        report.decapsulated += checked.decapsulated;
        // The model's reason counter (for a broken frame: the table hit's).
        let stat = match &result {
            Ok(stat) => *stat,
            Err(_) => want.stat(),
        };
        *report.per_action.entry(stat.action().name()).or_default() += 1;
        *report.per_counter.entry(stat.name()).or_default() += 1;
        if let Err((invariant, detail)) = result {
            *report.violations.entry(invariant).or_default() += 1;
            if report.first.len() < opts.keep {
                report.first.push(Violation { invariant, index, detail, frame: frame.clone() });
            }
        }
    }
    progress(opts.packets);
    report.seconds = started.elapsed().as_secs_f64();
    report.untabled_syns = bal.stat(Stat::SynFloodUntabled)?.packets;
    Ok(report)
}
