//! Part 5: end to end with trafgen through the veth lab (client namespace →
//! router → balancer in native XDP mode → router → backends with decap).
//!
//! trafgen sends UDP to a VIP port no backend serves (the discard port, 9):
//! the backends' kernels count every datagram that arrives (Udp NoPorts)
//! and answer nothing but rate-limited ICMP, so nothing flows back to take
//! CPU from the measurement.
//!
//! On veth every hop runs in the sending CPU's softirq: the softirq time
//! of that CPU covers the router, the balancer and the backends. The
//! balancer's own share comes from the kernel's per-program BPF statistics
//! (`BPF_ENABLE_STATS`): run time and run count of the attached program.

use std::{
    io::Read as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_e2e::{backend4, Lab, CLIENT4, VIP4};
use lb_testkit::netns::Netns;
use serde::Serialize;
use serde_json::Value;

use crate::{
    progress::Progress,
    report::{f, Section, Table},
    sys,
};

/// The UDP port of the benchmark's VIP: discard, which no backend serves.
pub const PORT: u16 = 9;

#[derive(Clone, Debug)]
pub struct Opts {
    /// Packets to send in the measured run (`trafgen -n`).
    pub count: u64,
    /// Packets sent first (neighbour resolution, connection table).
    pub warmup: u64,
    /// The measured run is stopped after this long whatever its count.
    pub timeout: Duration,
    pub backends: usize,
    pub config: PathBuf,
}

impl Opts {
    pub fn default_config() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trafgen/veth-lab.cfg")
    }
}

pub fn steps() -> u64 {
    3
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuRow {
    pub cpu: usize,
    pub user_ms: f64,
    pub system_ms: f64,
    pub softirq_ms: f64,
    pub idle_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendRow {
    pub address: String,
    /// The balancer's per-backend counter.
    pub forwarded: u64,
    /// Packets the backend's interface received.
    pub rx_packets: u64,
    /// UDP datagrams the backend's kernel took in for the discard port
    /// (no socket: counted as NoPorts).
    pub udp_no_ports: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrafgenReport {
    pub command: String,
    pub config: String,
    pub seconds: f64,
    pub stopped_by_timeout: bool,
    /// trafgen's own count ("packets outgoing").
    pub sent_trafgen: Option<u64>,
    /// The client interface's tx counter.
    pub sent_interface: u64,
    pub sent_mpps: f64,
    pub balancer_tx_encap: u64,
    pub balancer_pass: u64,
    pub balancer_drop: u64,
    pub balancer_conn_miss: u64,
    pub far_side_rx: u64,
    pub far_side_udp: u64,
    pub far_side_udp_errors: u64,
    pub backends: Vec<BackendRow>,
    pub cpus: Vec<CpuRow>,
    /// The CPU that did the most softirq work (trafgen's CPU).
    pub busiest_cpu: usize,
    /// Softirq time of that CPU per packet sent: the whole path on veth.
    pub softirq_ns_per_packet: f64,
    /// Softirq + system time of that CPU per packet sent (trafgen's send
    /// calls included).
    pub kernel_ns_per_packet: f64,
    /// The balancer program's own run time per run (BPF statistics).
    pub balancer_prog_runs: u64,
    pub balancer_prog_ns_per_packet: f64,
    /// The same attached program run through BPF_PROG_TEST_RUN right after
    /// the live run, on frames like trafgen's (same flows, same maps).
    /// Timed twice: with BPF statistics on (as during the live run: the
    /// kernel then times every run, test-run's too) and off.
    pub test_runs: Vec<TestRunFigure>,
    pub trafgen_output: String,
    pub note: String,
}

/// The live program timed through BPF_PROG_TEST_RUN (one packet per call)
/// next to the XDP_TX floor, interleaved round by round.
#[derive(Clone, Debug, Serialize)]
pub struct TestRunFigure {
    /// BPF statistics were on (`BPF_ENABLE_STATS`) while timed.
    pub stats_on: bool,
    pub rounds: u32,
    pub calls: u32,
    /// Median over rounds of the mean ns per packet.
    pub ns: f64,
    pub floor_ns: f64,
    /// Median over rounds of program / floor.
    pub ratio: f64,
}

/// Frames like `veth-lab.cfg`'s: 60 bytes, UDP from the client to the VIP's
/// discard port, one per source port of trafgen's range (16384 flows).
fn lab_frames(router_mac: &str) -> Result<Vec<Vec<u8>>> {
    use lb_testkit::packet_builder as pb;
    let mut dst = [0u8; 6];
    for (i, part) in router_mac.split(':').enumerate().take(6) {
        dst[i] = u8::from_str_radix(part, 16).with_context(|| format!("router MAC {router_mac}"))?;
    }
    let src = [0x02, 0, 0, 0, 0, 0x42];
    Ok((1024u16..=17407)
        .map(|sport| {
            let udp = pb::udp(CLIENT4.into(), VIP4.into(), sport, PORT, &[0x61; 18]);
            let v4 = pb::V4 { ttl: 64, dont_fragment: true, ..pb::V4::default() };
            pb::eth(dst, src, 0x0800, &pb::ipv4(CLIENT4, VIP4, lb_common::IPPROTO_UDP, &udp, &v4))
        })
        .collect())
}

/// Times the attached program `prog_id` through BPF_PROG_TEST_RUN on
/// `frames`, next to the floor.
fn time_live_program(prog_id: u32, frames: &[Vec<u8>], rounds: u32, stats_on: bool) -> Result<TestRunFigure> {
    let fd = sys::prog_fd(prog_id)?;
    let mut floor = crate::dataplane::Floor::load()?;
    let mut out = vec![0u8; 4096];
    let calls = frames.len() as u32;
    let (mut ns, mut floor_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut cursor = 0usize;
    for _ in 0..rounds {
        let fl = crate::dataplane::time_calls(floor.program(), frames, calls, &mut cursor, &mut out)?;
        let mut total = 0u64;
        for frame in frames {
            total += sys::test_run_ns(&fd, frame, &mut out)? as u64;
        }
        let b = total as f64 / calls as f64;
        ns.push(b);
        floor_ns.push(fl);
        ratios.push(b / fl);
    }
    Ok(TestRunFigure {
        stats_on,
        rounds,
        calls,
        ns: sys::median(&mut ns),
        floor_ns: sys::median(&mut floor_ns),
        ratio: sys::median(&mut ratios),
    })
}

pub const NOTE: &str = "trafgen through the qdisc path on veth sends a few hundred thousand packets per second at \
best (see the rate above): this measures CPU time per packet, not the balancer's ceiling. On veth every hop (client, router, balancer XDP, \
router again, backend decap and UDP) runs in the sending CPU's softirq, so the softirq figure is the whole path; \
the balancer program's own share is the BPF statistics figure. With 2 CPUs, timer ticks and other work \
(anything else running shows on the other CPU) make the /proc/stat figures noisy (tick-sampled); the BPF figure is measured by the kernel around each run \
(its two clock reads add some tens of ns per packet).";

fn json_of(text: &str) -> Result<Value> {
    serde_json::from_str(text).context("parsing ip -j output")
}

fn link_json(ns: &Netns, dev: &str) -> Result<Value> {
    let v = json_of(&ns.ip(&["-s", "-j", "link", "show", "dev", dev])?)?;
    v.get(0).cloned().with_context(|| format!("no link {dev}"))
}

fn mac_of(ns: &Netns, dev: &str) -> Result<String> {
    Ok(link_json(ns, dev)?["address"].as_str().with_context(|| format!("no MAC on {dev}"))?.to_string())
}

fn counter(link: &Value, dir: &str) -> u64 {
    link["stats64"][dir]["packets"].as_u64().unwrap_or(0)
}

/// The id of the XDP program attached to `dev`.
fn xdp_prog_id(ns: &Netns, dev: &str) -> Result<u32> {
    let link = link_json(ns, dev)?;
    let xdp = &link["xdp"];
    let id = xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"].as_array().and_then(|a| a.iter().find_map(|x| x["prog"]["id"].as_u64())))
        .with_context(|| format!("no XDP program on {dev}: {xdp}"))?;
    Ok(id as u32)
}

/// UDP counters of a namespace (/proc/net/snmp as a process inside sees it).
fn udp_counters(ns: &Netns) -> Result<std::collections::HashMap<String, u64>> {
    let out = ns.command("cat").arg("/proc/net/snmp").output().context("reading /proc/net/snmp")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    if lines.len() < 2 {
        bail!("no Udp lines in /proc/net/snmp");
    }
    Ok(lines[0]
        .split_whitespace()
        .skip(1)
        .zip(lines[1].split_whitespace().skip(1))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect())
}

struct Snapshot {
    client_tx: u64,
    stats: Value,
    backend_rx: Vec<u64>,
    udp: Vec<std::collections::HashMap<String, u64>>,
    cpus: Vec<(usize, sys::CpuTimes)>,
    prog: sys::ProgStats,
}

fn snapshot(lab: &Lab, prog_id: u32) -> Result<Snapshot> {
    Ok(Snapshot {
        client_tx: counter(&link_json(&lab.client, "c0")?, "tx"),
        stats: lab.balancers[0].api_get("/v1/stats")?,
        backend_rx: lab.backends.iter().map(|b| Ok(counter(&link_json(&b.ns, "b0")?, "rx"))).collect::<Result<_>>()?,
        udp: lab.backends.iter().map(|b| udp_counters(&b.ns)).collect::<Result<_>>()?,
        cpus: sys::proc_stat()?,
        prog: sys::prog_stats(prog_id)?,
    })
}

struct TrafgenRun {
    output: String,
    seconds: f64,
    timed_out: bool,
    sent: Option<u64>,
}

fn trafgen(lab: &Lab, opts: &Opts, router_mac: &str, count: u64, timeout: Duration) -> Result<(String, TrafgenRun)> {
    let args: Vec<String> = vec![
        "-q".into(),
        "-P".into(),
        "1".into(),
        "--no-sock-mem".into(),
        "--notouch-irq".into(),
        "-o".into(),
        "c0".into(),
        "--cpp".into(),
        "-D".into(),
        format!("DST_MAC={router_mac}"),
        "-D".into(),
        format!("SRC_IP={CLIENT4}"),
        "-D".into(),
        format!("VIP={VIP4}"),
        "-D".into(),
        format!("VIP_PORT={PORT}"),
        "-c".into(),
        opts.config.display().to_string(),
        "-n".into(),
        count.to_string(),
    ];
    let command = format!("trafgen {}", args.join(" "));
    let start = Instant::now();
    let mut child = lab
        .client
        .command("trafgen")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting trafgen")?;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            // SIGINT: trafgen stops and prints its counts.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            if !sys::wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
                child.try_wait().ok().flatten().is_some()
            }) {
                let _ = child.kill();
            }
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let seconds = start.elapsed().as_secs_f64();
    let mut output = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut output)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut output)?;
    }
    if !status.success() && !timed_out {
        bail!("{command} failed ({status}):\n{output}");
    }
    let sent = output.lines().find_map(|l| {
        let l = l.trim();
        l.strip_suffix("packets outgoing").and_then(|n| n.trim().parse().ok())
    });
    Ok((command, TrafgenRun { output, seconds, timed_out, sent }))
}

fn stat(v: &Value, group: &str, name: &str) -> u64 {
    v[group][name]["packets"].as_u64().unwrap_or(0)
}

pub fn run(opts: &Opts, progress: &Progress) -> Result<TrafgenReport> {
    if netns_which("trafgen").is_none() {
        bail!("trafgen is not installed (Debian: apt-get install netsniff-ng)");
    }
    if !opts.config.exists() {
        bail!("trafgen config {} not found", opts.config.display());
    }
    progress.step(format!("trafgen: building the veth lab ({} backends), starting the daemon", opts.backends));
    let mut lab = Lab::build(opts.backends, 1)?;
    let mut discard = format!("\n[[vip]]\naddress = \"{VIP4}\"\nport = {PORT}\nprotocol = \"udp\"\n");
    for j in 0..opts.backends {
        discard += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend4(j));
    }
    let config = lab.config(0, &(lab.default_vips() + &discard));
    std::fs::write(&lab.balancers[0].config_path, config)?;
    lab.start_balancers()?;
    let router_mac = mac_of(&lab.router, "rc0")?;
    let prog_id = xdp_prog_id(&lab.balancers[0].ns, "l0")?;
    // Per-program run time is counted while this fd is open.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;

    progress.step(format!("trafgen: warm-up, {} packets", opts.warmup));
    trafgen(&lab, opts, &router_mac, opts.warmup, Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(300));

    progress.step(format!("trafgen: {} packets (stopped after {:?} at most)", opts.count, opts.timeout));
    let before = snapshot(&lab, prog_id)?;
    let (command, run) = trafgen(&lab, opts, &router_mac, opts.count, opts.timeout)?;
    // Let the last packets through the softirqs.
    std::thread::sleep(Duration::from_millis(300));
    let after = snapshot(&lab, prog_id)?;
    // The same program, maps and flows, through BPF_PROG_TEST_RUN: what
    // part 1 measures, to set beside the live figure.
    let mut test_runs = Vec::new();
    match lab_frames(&router_mac) {
        Ok(frames) => {
            let mut time = |stats_on| match time_live_program(prog_id, &frames, 5, stats_on) {
                Ok(t) => test_runs.push(t),
                Err(e) => progress.note(format!("trafgen: timing the live program through test-run failed: {e:#}")),
            };
            time(true);
            drop(stats);
            time(false);
        }
        Err(e) => progress.note(format!("trafgen: no frames for the test-run timing: {e:#}")),
    }

    let sent_interface = after.client_tx - before.client_tx;
    let sent = run.sent.unwrap_or(sent_interface).max(1);
    let d = |g: &str, n: &str| stat(&after.stats, g, n) - stat(&before.stats, g, n);
    let mut backends = Vec::new();
    for (j, _) in lab.backends.iter().enumerate() {
        let addr = backend4(j).to_string();
        let fwd = after.stats["backends"][&addr]["packets"].as_u64().unwrap_or(0)
            - before.stats["backends"][&addr]["packets"].as_u64().unwrap_or(0);
        let udp = |s: &Snapshot, k: &str| s.udp[j].get(k).copied().unwrap_or(0);
        backends.push(BackendRow {
            address: addr,
            forwarded: fwd,
            rx_packets: after.backend_rx[j] - before.backend_rx[j],
            udp_no_ports: udp(&after, "NoPorts") - udp(&before, "NoPorts"),
        });
    }
    let udp_err = |s: &Snapshot| -> u64 {
        s.udp
            .iter()
            .map(|m| m.get("InErrors").copied().unwrap_or(0) + m.get("InCsumErrors").copied().unwrap_or(0))
            .sum()
    };
    let hz = sys::ticks_per_second() as f64;
    let ms = |ticks: u64| ticks as f64 * 1e3 / hz;
    let mut cpus = Vec::new();
    let (mut kernel_ticks, mut busiest, mut busiest_soft) = (0u64, 0usize, 0u64);
    for (cpu, a) in &after.cpus {
        let Some((_, b)) = before.cpus.iter().find(|(c, _)| c == cpu) else { continue };
        let dt = a.minus(b);
        if dt.softirq >= busiest_soft {
            busiest_soft = dt.softirq;
            busiest = *cpu;
            kernel_ticks = dt.softirq + dt.system;
        }
        cpus.push(CpuRow {
            cpu: *cpu,
            user_ms: ms(dt.user),
            system_ms: ms(dt.system),
            softirq_ms: ms(dt.softirq),
            idle_ms: ms(dt.idle),
        });
    }
    let runs = after.prog.run_cnt - before.prog.run_cnt;
    let prog_ns = (after.prog.run_time_ns - before.prog.run_time_ns) as f64 / runs.max(1) as f64;
    Ok(TrafgenReport {
        command,
        config: opts.config.display().to_string(),
        seconds: run.seconds,
        stopped_by_timeout: run.timed_out,
        sent_trafgen: run.sent,
        sent_interface,
        sent_mpps: sent as f64 / run.seconds / 1e6,
        balancer_tx_encap: d("global", "tx_encap"),
        balancer_pass: d("actions", "pass"),
        balancer_drop: d("actions", "drop"),
        balancer_conn_miss: d("global", "conn_miss"),
        far_side_rx: backends.iter().map(|b| b.rx_packets).sum(),
        far_side_udp: backends.iter().map(|b| b.udp_no_ports).sum(),
        far_side_udp_errors: udp_err(&after) - udp_err(&before),
        backends,
        cpus,
        busiest_cpu: busiest,
        softirq_ns_per_packet: busiest_soft as f64 * 1e9 / hz / sent as f64,
        kernel_ns_per_packet: kernel_ticks as f64 * 1e9 / hz / sent as f64,
        balancer_prog_runs: runs,
        balancer_prog_ns_per_packet: prog_ns,
        test_runs,
        trafgen_output: run.output.trim().to_string(),
        note: NOTE.into(),
    })
}

/// Where `name` is on PATH.
fn netns_which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file())
}

impl TrafgenReport {
    fn summary(&self) -> Vec<String> {
        let sent = self.sent_trafgen.unwrap_or(self.sent_interface);
        let pct = |n: u64| f(n as f64 * 100.0 / sent.max(1) as f64, 2);
        vec![
            format!("command (client namespace): {}", self.command),
            format!(
                "sent: {} packets (trafgen), {} (client interface tx) in {} s = {} Mpps{}",
                self.sent_trafgen.map_or("?".into(), |n| n.to_string()),
                self.sent_interface,
                f(self.seconds, 2),
                f(self.sent_mpps, 3),
                if self.stopped_by_timeout { " (stopped by the timeout)" } else { "" }
            ),
            format!(
                "balancer forwarded (tx_encap): {} ({}% of sent); passed {}, dropped {}; connection-table misses {}",
                self.balancer_tx_encap,
                pct(self.balancer_tx_encap),
                self.balancer_pass,
                self.balancer_drop,
                self.balancer_conn_miss
            ),
            format!(
                "far side: {} packets on the backends' interfaces, {} UDP datagrams taken in by their kernels ({}% of sent), {} UDP errors",
                self.far_side_rx,
                self.far_side_udp,
                pct(self.far_side_udp),
                self.far_side_udp_errors
            ),
        ]
    }

    fn backend_table(&self) -> Table {
        let mut t = Table::new(&["backend", "balancer forwarded", "interface rx", "UDP taken in"], 1);
        for b in &self.backends {
            t.row(vec![
                b.address.clone(),
                b.forwarded.to_string(),
                b.rx_packets.to_string(),
                b.udp_no_ports.to_string(),
            ]);
        }
        t
    }

    fn cpu_table(&self) -> Table {
        let mut c = Table::new(&["CPU", "user ms", "system ms", "softirq ms", "idle ms"], 0);
        for r in &self.cpus {
            c.row(vec![r.cpu.to_string(), f(r.user_ms, 0), f(r.system_ms, 0), f(r.softirq_ms, 0), f(r.idle_ms, 0)]);
        }
        c
    }

    fn test_run_line(&self) -> String {
        if self.test_runs.is_empty() {
            return "the same program through BPF_PROG_TEST_RUN: not measured (see the progress notes)".into();
        }
        let runs: Vec<String> = self
            .test_runs
            .iter()
            .map(|t| {
                format!(
                    "{} ns/packet with BPF statistics {} (floor {} ns, ratio {}x)",
                    f(t.ns, 1),
                    if t.stats_on { "on" } else { "off" },
                    f(t.floor_ns, 1),
                    f(t.ratio, 2)
                )
            })
            .collect();
        format!(
            "the same program, live: {} ns/packet (BPF statistics); through BPF_PROG_TEST_RUN right after, on frames like \
             trafgen's ({} rounds x {} packets): {} (bench/README, \"Live path vs test-run\")",
            f(self.balancer_prog_ns_per_packet, 1),
            self.test_runs[0].rounds,
            self.test_runs[0].calls,
            runs.join("; ")
        )
    }

    fn cpu_line(&self) -> String {
        format!(
            "CPU per packet: balancer XDP program {} ns/packet over {} runs (BPF_ENABLE_STATS: run_time_ns / run_cnt); \
             CPU {} (the sending CPU, where the whole path runs): softirq {} ns/packet, softirq + system {} ns/packet \
             (/proc/stat, tick-sampled; system includes trafgen's sends)",
            f(self.balancer_prog_ns_per_packet, 1),
            self.balancer_prog_runs,
            self.busiest_cpu,
            f(self.softirq_ns_per_packet, 0),
            f(self.kernel_ns_per_packet, 0)
        )
    }
}

impl Section for TrafgenReport {
    const TITLE: &'static str = "5. End to end with trafgen (veth lab)";

    fn lines(&self) -> Vec<String> {
        let mut out = self.summary();
        out.extend(self.backend_table().text());
        out.extend(self.cpu_table().text());
        out.push(self.cpu_line());
        out.push(self.test_run_line());
        out.push(format!("note: {}", self.note));
        out
    }

    fn markdown(&self) -> String {
        let mut md: String = self.summary().iter().map(|l| format!("- {l}\n")).collect();
        md += "\n";
        md += &self.backend_table().markdown();
        md += "\n";
        md += &self.cpu_table().markdown();
        md += &format!("\n{}\n\n{}\n\n{}\n", self.cpu_line(), self.test_run_line(), self.note);
        md += &format!("\ntrafgen's output:\n\n```\n{}\n```\n", self.trafgen_output);
        md
    }
}
