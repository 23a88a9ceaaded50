//! Part 3: the control plane. Maglev build time; the real `lb-control`
//! daemon in a network namespace: API call to data-plane visibility
//! latency, API calls per second, the API under load (idle connections
//! held open, changes alongside reads), start-up time with 512 VIPs.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_common::FAMILY_V4;
use lb_control::{
    dataplane::{detach_all, Balancer, Limits},
    engine::vip_key,
    maglev::{self, MaglevBackend},
    model::VipId,
};
use lb_testkit::netns::{self, Netns};
use serde::Serialize;
use serde_json::json;

use crate::{
    progress::Progress,
    report::{f, Section, Table, Target},
    sys,
};

/// Where the daemon listens, inside its namespace.
const API: &str = "127.0.0.1:9780";
const RING: u32 = 65_537;

#[derive(Clone, Copy, Debug)]
pub struct Opts {
    /// Maglev builds: at least this many runs and this long per size.
    pub build_min_runs: usize,
    pub build_min_time: Duration,
    /// PATCH calls timed for the latency figure.
    pub latency_calls: usize,
    /// POST + DELETE pairs timed.
    pub vip_pairs: usize,
    /// Length of each throughput measurement.
    pub throughput_time: Duration,
    pub concurrent_clients: usize,
    /// Cold starts (and as many restarts) with 512 VIPs.
    pub startup_runs: usize,
    /// `/healthz` calls timed while idle connections are held open.
    pub healthz_calls: usize,
    /// Length of the reads-alongside-changes measurement.
    pub read_under_writes_time: Duration,
    /// Window the health checks' CPU cost is measured over.
    pub health_window: Duration,
}

impl Opts {
    pub fn full() -> Self {
        Self {
            build_min_runs: 31,
            build_min_time: Duration::from_millis(600),
            latency_calls: 1_000,
            vip_pairs: 200,
            throughput_time: Duration::from_secs(3),
            concurrent_clients: 4,
            startup_runs: 5,
            healthz_calls: 1_000,
            read_under_writes_time: Duration::from_secs(10),
            health_window: Duration::from_secs(20),
        }
    }

    pub fn quick() -> Self {
        Self {
            build_min_runs: 9,
            build_min_time: Duration::from_millis(150),
            latency_calls: 200,
            vip_pairs: 50,
            throughput_time: Duration::from_millis(500),
            concurrent_clients: 4,
            startup_runs: 1,
            healthz_calls: 200,
            read_under_writes_time: Duration::from_secs(2),
            health_window: Duration::from_secs(5),
        }
    }
}

pub fn steps(opts: &Opts) -> u64 {
    BUILD_SIZES.len() as u64 + 4 + 4 + 2 + 2 * opts.startup_runs as u64 + 3
}

// ---- Maglev build time -----------------------------------------------------

pub const BUILD_SIZES: &[u32] = &[10, 100, 1_000, 4_096];

#[derive(Clone, Debug, Serialize)]
pub struct BuildRow {
    pub backends: u32,
    pub ring_size: u32,
    pub runs: usize,
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

pub fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n).map(|i| MaglevBackend::new(i + 1, Ipv4Addr::from(0x0a01_0000 + i + 1).octets().to_vec(), 1)).collect()
}

pub fn maglev_build(opts: &Opts, progress: &Progress) -> Result<Vec<BuildRow>> {
    let mut rows = Vec::new();
    for &n in BUILD_SIZES {
        progress.step(format!("control: Maglev build, {n} backends, M = {RING}"));
        let list = backends(n);
        // Warm-up (page faults of the first table, caches).
        for _ in 0..2 {
            std::hint::black_box(maglev::build(&list, RING)?);
        }
        let mut us = Vec::new();
        let start = Instant::now();
        while us.len() < opts.build_min_runs || (start.elapsed() < opts.build_min_time && us.len() < 2_000) {
            let t = Instant::now();
            let table = maglev::build(std::hint::black_box(&list), RING)?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(table);
        }
        let (min, max) = us.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let runs = us.len();
        rows.push(BuildRow {
            backends: n,
            ring_size: RING,
            runs,
            median_us: sys::median(&mut us),
            min_us: min,
            max_us: max,
        });
    }
    Ok(rows)
}

// ---- the daemon in a namespace --------------------------------------------

/// A namespace with a veth pair (`l0` for the balancer, `p0` its peer) for
/// the daemon to attach to in native mode. No traffic is sent: the MACs are
/// given in the config, so the daemon needs no gateway.
pub struct DaemonHost {
    pub ns: Netns,
    pub dir: PathBuf,
}

impl DaemonHost {
    pub fn new() -> Result<Self> {
        let ns = Netns::new(netns::unique_name("lbbn"))?;
        ns.ip(&["link", "add", "l0", "type", "veth", "peer", "name", "p0"])?;
        ns.ip(&["link", "set", "l0", "up"])?;
        ns.ip(&["link", "set", "p0", "up"])?;
        ns.ip(&["addr", "add", "10.99.0.2/24", "dev", "l0"])?;
        let dir = std::env::temp_dir().join(netns::unique_name("lb-bench-"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { ns, dir })
    }
}

impl Drop for DaemonHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One daemon configuration: its files and pins.
pub struct Daemon<'a> {
    host: &'a DaemonHost,
    pub limits: Limits,
    pub pin_dir: PathBuf,
    pub config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

pub fn config_text(pin_dir: &Path, state_file: &Path, limits: &Limits, vips: &str) -> String {
    format!(
        "interfaces = [\"l0\"]\nxdp_mode = \"native\"\npin_dir = \"{}\"\nstate_file = \"{}\"\n\n\
         [encap]\nsource_v4 = \"172.16.0.0/16\"\nsource_v6 = \"fd00:ffff::/96\"\nmtu = 1500\n\n\
         [gateway]\nmac = \"02:00:00:00:00:01\"\ninterface_mac = \"02:00:00:00:00:02\"\n\n\
         [limits]\nring_size = {}\nmax_vips = {}\nmax_backends = {}\nconn_table_size = {}\n\n\
         [api]\nlisten = \"{API}\"\n{vips}",
        pin_dir.display(),
        state_file.display(),
        limits.ring_size,
        limits.max_vips,
        limits.max_reals - 1,
        limits.conn_table_size,
    )
}

/// `[[vip]]` sections: TCP port 80, IPv4 backends of weight 1.
pub fn vip_sections(vips: &[(Ipv4Addr, Vec<Ipv4Addr>)]) -> String {
    let mut s = String::new();
    for (addr, backends) in vips {
        s += &format!("\n[[vip]]\naddress = \"{addr}\"\nport = 80\nprotocol = \"tcp\"\n");
        for b in backends {
            s += &format!("[[vip.backend]]\naddress = \"{b}\"\n");
        }
    }
    s
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(timeout)).build().into()
}

impl<'a> Daemon<'a> {
    /// Writes the config (fresh pins; the state file named after `name`,
    /// in `state_dir` or else the host's temporary directory).
    pub fn new(host: &'a DaemonHost, name: &str, limits: Limits, vips: &str, state_dir: Option<&Path>) -> Result<Self> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", netns::unique_name("lb-bench")));
        let config_path = host.dir.join(format!("{name}.toml"));
        let state = state_dir.unwrap_or(&host.dir).join(format!("{name}.state.json"));
        std::fs::write(&config_path, config_text(&pin_dir, &state, &limits, vips))?;
        Ok(Self { host, limits, pin_dir, config_path, log_path: host.dir.join(format!("{name}.log")), child: None })
    }

    /// Spawns the daemon and waits until `/readyz` answers 200; returns the
    /// time from spawn to that answer.
    pub fn start(&mut self) -> Result<Duration> {
        if self.child.is_some() {
            bail!("daemon already running");
        }
        let t0 = Instant::now();
        let child = lb_e2e::spawn_daemon(&self.host.ns, &self.config_path, &self.log_path)?;
        let child = self.child.insert(child);
        let url = format!("http://{API}/readyz");
        let ready = self.host.ns.run(|| {
            let agent = agent(Duration::from_millis(500));
            while t0.elapsed() < Duration::from_secs(60) {
                if let Some(status) = child.try_wait()? {
                    bail!("lb-control exited ({status}) during start-up");
                }
                if agent.get(&url).call().is_ok() {
                    return Ok(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            bail!("lb-control not ready after 60 s")
        });
        match ready {
            Ok(d) => Ok(d),
            Err(e) => {
                let _ = self.stop();
                Err(e.context(format!("daemon log:\n{}", self.log())))
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM and wait (the balancer stays attached with its pins).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        if sys::wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
            child.try_wait().ok().flatten().is_some()
        }) {
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("lb-control did not stop on SIGTERM")
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if !sys::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                c.try_wait().ok().flatten().is_some()
            }) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = detach_all(&self.pin_dir);
    }
}

// ---- API call to data-plane visibility ------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct LatencyStats {
    pub op: String,
    pub calls: usize,
    /// Request sent to response read.
    pub call_p50_ms: f64,
    pub call_p99_ms: f64,
    pub call_max_ms: f64,
    /// Request sent to the change verified in the pinned maps.
    pub visible_p50_ms: f64,
    pub visible_p99_ms: f64,
    pub visible_max_ms: f64,
    /// Calls whose change was already in the maps when the response came.
    pub visible_at_return: usize,
}

fn latency_stats(op: &str, call: &mut [f64], visible: &mut [f64], at_return: usize) -> LatencyStats {
    call.sort_by(|a, b| a.total_cmp(b));
    visible.sort_by(|a, b| a.total_cmp(b));
    LatencyStats {
        op: op.into(),
        calls: call.len(),
        call_p50_ms: sys::percentile(call, 50.0),
        call_p99_ms: sys::percentile(call, 99.0),
        call_max_ms: call.last().copied().unwrap_or(f64::NAN),
        visible_p50_ms: sys::percentile(visible, 50.0),
        visible_p99_ms: sys::percentile(visible, 99.0),
        visible_max_ms: visible.last().copied().unwrap_or(f64::NAN),
        visible_at_return: at_return,
    }
}

const LAT_VIP: &str = "tcp:10.200.0.1:80";
const LAT_VIP2: &str = "tcp:10.200.0.2:80";
const LAT_BACKENDS: u32 = 8;

fn lat_backend(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 0, i as u8 + 1)
}

fn latency_limits() -> Limits {
    Limits { ring_size: RING, max_vips: 16, max_reals: 65, conn_table_size: 65_536 }
}

/// Expected Maglev table for the latency VIP's backends with backend 0 at
/// `weight`, using the backend indices the daemon gave them.
fn expected_table(index: &HashMap<Ipv4Addr, u32>, weight0: u32) -> Result<Vec<u32>> {
    let list: Vec<MaglevBackend> = (0..LAT_BACKENDS)
        .map(|i| {
            let a = lat_backend(i);
            Ok(MaglevBackend::new(
                *index.get(&a).context("backend not in REALS")?,
                a.octets().to_vec(),
                if i == 0 { weight0 } else { 1 },
            ))
        })
        .collect::<Result<_>>()?;
    Ok(maglev::build(&list, RING)?)
}

/// Whether two Maglev tables are the same up to the backend indices: each
/// index of `a` stands for exactly one of `b`, slot by slot.
fn same_but_indices(a: &[u32], b: &[u32]) -> bool {
    let (mut fwd, mut back) = (HashMap::new(), HashMap::new());
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| *fwd.entry(*x).or_insert(*y) == *y && *back.entry(*y).or_insert(*x) == *x)
}

/// Waits (bounded) until `check` holds; returns whether it held at once.
fn verify(check: impl Fn() -> Result<bool>) -> Result<bool> {
    if check()? {
        return Ok(true);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if check()? {
            return Ok(false);
        }
        std::hint::spin_loop();
    }
    bail!("the change never became visible in the pinned maps")
}

/// `where_state` names where the daemon keeps its state file (each change
/// is written and fsynced there before it is applied).
pub fn api_latency(d: &Daemon, opts: &Opts, where_state: &str, progress: &Progress) -> Result<Vec<LatencyStats>> {
    let limits = d.limits;
    let pin_dir = d.pin_dir.clone();
    progress.step(format!(
        "control: API -> data plane latency, {} PATCH calls, state file on {where_state}",
        opts.latency_calls
    ));
    let calls = opts.latency_calls;
    let pairs = opts.vip_pairs;
    d.host.ns.run(move || {
        // A second handle on the daemon's live maps.
        let bal = Balancer::open(limits, Some(&pin_dir)).context("opening the daemon's pinned maps")?;
        let mut index = HashMap::new();
        for i in 1..limits.max_reals {
            let r = bal.real(i)?;
            if r.family == FAMILY_V4 {
                index.insert(Ipv4Addr::from(r.addr[0].to_ne_bytes()), i);
            }
        }
        let tables = [expected_table(&index, 1)?, expected_table(&index, 2)?];
        let id: VipId = LAT_VIP.parse().map_err(anyhow::Error::msg)?;
        let key = vip_key(&id);
        let ring_is = |t: &[u32]| -> Result<bool> {
            let Some(meta) = bal.vip(&key) else { return Ok(false) };
            Ok(bal.ring(meta.ring)? == t)
        };
        anyhow::ensure!(ring_is(&tables[0])?, "the VIP's ring is not the expected table before the run");
        let agent = agent(Duration::from_secs(10));
        let url = format!("http://{API}/v1/vips/{LAT_VIP}/backends/{}", lat_backend(0));
        let (mut call, mut vis, mut at_return) = (Vec::new(), Vec::new(), 0);
        for i in 0..calls {
            let w = if i % 2 == 0 { 2 } else { 1 };
            let t0 = Instant::now();
            agent.patch(&url).send_json(json!({ "weight": w }))?.into_body().read_to_vec()?;
            call.push(t0.elapsed().as_secs_f64() * 1e3);
            if verify(|| ring_is(&tables[w as usize - 1]))? {
                at_return += 1;
            }
            vis.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let patch =
            latency_stats(&format!("PATCH backend weight, state on {where_state}"), &mut call, &mut vis, at_return);

        // POST a VIP, then DELETE it: the entry (and its table) appear and go.
        let id2: VipId = LAT_VIP2.parse().map_err(anyhow::Error::msg)?;
        let key2 = vip_key(&id2);
        let body = json!({
            "vip": LAT_VIP2,
            "backends": (0..LAT_BACKENDS).map(|i| json!({ "address": lat_backend(i).to_string() })).collect::<Vec<_>>(),
        });
        let (mut pc, mut pv, mut pr) = (Vec::new(), Vec::new(), 0);
        let (mut dc, mut dv, mut dr) = (Vec::new(), Vec::new(), 0);
        let post_url = format!("http://{API}/v1/vips");
        let del_url = format!("http://{API}/v1/vips/{LAT_VIP2}");
        for _ in 0..pairs {
            let t0 = Instant::now();
            agent.post(&post_url).send_json(&body)?.into_body().read_to_vec()?;
            pc.push(t0.elapsed().as_secs_f64() * 1e3);
            // The second VIP has reals of its own (one per VIP and backend):
            // its ring is the first VIP's table with other indices.
            let present = || -> Result<bool> {
                let Some(meta) = bal.vip(&key2) else { return Ok(false) };
                Ok(same_but_indices(&bal.ring(meta.ring)?, &tables[0]))
            };
            if verify(present)? {
                pr += 1;
            }
            pv.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            agent.delete(&del_url).call()?.into_body().read_to_vec()?;
            dc.push(t0.elapsed().as_secs_f64() * 1e3);
            if verify(|| Ok(bal.vip(&key2).is_none()))? {
                dr += 1;
            }
            dv.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let mut out = vec![patch];
        if pairs > 0 {
            out.push(latency_stats(&format!("POST VIP (8 backends), state on {where_state}"), &mut pc, &mut pv, pr));
            out.push(latency_stats(&format!("DELETE VIP, state on {where_state}"), &mut dc, &mut dv, dr));
        }
        Ok(out)
    })
}

// ---- API calls per second ---------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRow {
    pub call: String,
    pub clients: usize,
    pub seconds: f64,
    pub calls: u64,
    pub errors: u64,
    pub per_second: f64,
}

fn throughput(
    d: &Daemon,
    call: &str,
    clients: usize,
    time: Duration,
    op: impl Fn(&ureq::Agent, usize, u64) -> Result<()> + Sync,
) -> Result<ThroughputRow> {
    let done = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let op = &op;
    let (done_ref, errors_ref) = (&done, &errors);
    let elapsed = d.host.ns.run(move || {
        let agents: Vec<ureq::Agent> = (0..clients).map(|_| agent(Duration::from_secs(10))).collect();
        // One call each first: connections open, pools warm.
        for (c, a) in agents.iter().enumerate() {
            op(a, c, 0)?;
        }
        let start = Instant::now();
        // Threads made here inherit this thread's namespace.
        std::thread::scope(|s| {
            for (c, a) in agents.iter().enumerate() {
                s.spawn(move || {
                    let mut i = 1u64;
                    while start.elapsed() < time {
                        match op(a, c, i) {
                            Ok(()) => done_ref.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors_ref.fetch_add(1, Ordering::Relaxed),
                        };
                        i += 1;
                    }
                });
            }
        });
        Ok(start.elapsed())
    })?;
    let calls = done.load(Ordering::Relaxed);
    Ok(ThroughputRow {
        call: call.into(),
        clients,
        seconds: elapsed.as_secs_f64(),
        calls,
        errors: errors.load(Ordering::Relaxed),
        per_second: calls as f64 / elapsed.as_secs_f64(),
    })
}

pub fn api_throughput(d: &Daemon, opts: &Opts, progress: &Progress) -> Result<Vec<ThroughputRow>> {
    let mut rows = Vec::new();
    let get = |a: &ureq::Agent, _c: usize, _i: u64| -> Result<()> {
        a.get(&format!("http://{API}/v1/vips")).call()?.into_body().read_to_vec()?;
        Ok(())
    };
    let patch = |a: &ureq::Agent, c: usize, i: u64| -> Result<()> {
        let url = format!("http://{API}/v1/vips/{LAT_VIP}/backends/{}", lat_backend(c as u32 % LAT_BACKENDS));
        a.patch(&url).send_json(json!({ "weight": 1 + (i % 2) }))?.into_body().read_to_vec()?;
        Ok(())
    };
    let t = opts.throughput_time;
    for clients in [1, opts.concurrent_clients] {
        progress.step(format!("control: GET /v1/vips calls per second, {clients} client(s)"));
        rows.push(throughput(d, "GET /v1/vips", clients, t, get)?);
        progress.step(format!("control: PATCH backend weight calls per second, {clients} client(s)"));
        rows.push(throughput(d, "PATCH backend weight", clients, t, patch)?);
    }
    Ok(rows)
}

// ---- the API under load -----------------------------------------------------

/// Idle connections held open while `/healthz` is timed.
pub const IDLE_CONNECTIONS: usize = 1_000;
/// VIP add/remove calls per second while `GET /v1/vips` is timed.
pub const CHANGES_PER_SECOND: u32 = 20;
/// `[api]` settings of the daemon under load: timeouts longer than the
/// measurement, so the idle connections stay open through it.
const LOAD_API_SETTINGS: &str = "header_read_timeout_secs = 120\nidle_timeout_secs = 120\n";

#[derive(Clone, Debug, Serialize)]
pub struct LoadRow {
    pub call: String,
    pub alongside: String,
    pub calls: usize,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn load_row(call: &str, alongside: String, ms: &mut [f64], errors: u64) -> LoadRow {
    ms.sort_by(|a, b| a.total_cmp(b));
    LoadRow {
        call: call.into(),
        alongside,
        calls: ms.len(),
        errors,
        p50_ms: sys::percentile(ms, 50.0),
        p99_ms: sys::percentile(ms, 99.0),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
    }
}

/// `/healthz` (a new connection per call, as a health checker makes them)
/// while [`IDLE_CONNECTIONS`] connections that sent nothing are held open.
pub fn healthz_with_idle_connections(d: &Daemon, opts: &Opts, progress: &Progress) -> Result<LoadRow> {
    progress.step(format!("control: /healthz with {IDLE_CONNECTIONS} idle connections held open"));
    // This process holds them all: raise its own descriptor limit.
    let fds = rlimit::increase_nofile_limit(u64::MAX).context("raising the file descriptor limit")?;
    anyhow::ensure!(fds > IDLE_CONNECTIONS as u64 + 100, "a file descriptor limit of {fds} is too low");
    let calls = opts.healthz_calls;
    d.host.ns.run(move || {
        let addr: std::net::SocketAddr = API.parse()?;
        let held = (0..IDLE_CONNECTIONS)
            .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .collect::<std::io::Result<Vec<_>>>()
            .context("opening the idle connections")?;
        let url = format!("http://{API}/healthz");
        let (mut ms, mut errors) = (Vec::with_capacity(calls), 0);
        for _ in 0..calls {
            // A fresh agent: no pooled connection, every call is accepted anew.
            let agent = agent(Duration::from_secs(5));
            let t0 = Instant::now();
            match agent.get(&url).call().and_then(|r| r.into_body().read_to_vec()) {
                Ok(_) => ms.push(t0.elapsed().as_secs_f64() * 1e3),
                Err(_) => errors += 1,
            }
        }
        // They were held open throughout: the server closed none of them.
        let closed = held
            .iter()
            .filter(|s| {
                use std::io::Read as _;
                let _ = s.set_nonblocking(true);
                matches!((&**s).read(&mut [0u8; 1]), Ok(0))
            })
            .count();
        anyhow::ensure!(closed == 0, "{closed} of the idle connections were closed during the measurement");
        drop(held);
        Ok(load_row(
            "GET /healthz (new connection each)",
            format!("{IDLE_CONNECTIONS} idle connections held open"),
            &mut ms,
            errors,
        ))
    })
}

/// `GET /v1/vips` on a keep-alive connection while another client adds and
/// removes a VIP [`CHANGES_PER_SECOND`] times a second.
pub fn reads_alongside_changes(d: &Daemon, opts: &Opts, progress: &Progress) -> Result<(LoadRow, LoadRow)> {
    progress.step(format!("control: GET /v1/vips with {CHANGES_PER_SECOND} VIP add/remove calls per second alongside"));
    let time = opts.read_under_writes_time;
    d.host.ns.run(move || {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (stop_ref, start) = (&stop, Instant::now());
        let body = json!({
            "vip": LAT_VIP2,
            "backends": (0..LAT_BACKENDS).map(|i| json!({ "address": lat_backend(i).to_string() })).collect::<Vec<_>>(),
        });
        std::thread::scope(|s| {
            // Threads made here inherit this thread's namespace.
            let writer = s.spawn(move || {
                let agent = agent(Duration::from_secs(10));
                let period = Duration::from_secs(1) / CHANGES_PER_SECOND;
                let (mut ms, mut errors) = (Vec::new(), 0u64);
                let mut next = Instant::now();
                for i in 0u64.. {
                    if stop_ref.load(Ordering::Relaxed) {
                        break;
                    }
                    let t0 = Instant::now();
                    let result = if i % 2 == 0 {
                        agent.post(&format!("http://{API}/v1/vips")).send_json(&body)
                    } else {
                        agent.delete(&format!("http://{API}/v1/vips/{LAT_VIP2}")).call()
                    };
                    match result.and_then(|r| r.into_body().read_to_vec()) {
                        Ok(_) => ms.push(t0.elapsed().as_secs_f64() * 1e3),
                        Err(_) => errors += 1,
                    }
                    next += period;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                // Leave the VIP set as it was.
                let _ = agent.delete(&format!("http://{API}/v1/vips/{LAT_VIP2}")).call();
                (ms, errors)
            });
            let agent = agent(Duration::from_secs(10));
            let url = format!("http://{API}/v1/vips");
            let (mut ms, mut errors) = (Vec::new(), 0u64);
            while start.elapsed() < time {
                let t0 = Instant::now();
                match agent.get(&url).call().and_then(|r| r.into_body().read_to_vec()) {
                    Ok(_) => ms.push(t0.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
            }
            stop.store(true, Ordering::Relaxed);
            let (mut wms, werrors) = writer.join().map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
            let rate = wms.len() as f64 / start.elapsed().as_secs_f64();
            let reads = load_row(
                "GET /v1/vips (keep-alive)",
                format!("{} VIP add/remove calls/s ({} made)", f(rate, 1), wms.len()),
                &mut ms,
                errors,
            );
            let writes = load_row("POST/DELETE VIP (8 backends)", "the reads above".into(), &mut wms, werrors);
            Ok((reads, writes))
        })
    })
}

// ---- start-up with 512 VIPs ------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct Startup {
    pub vips: usize,
    pub backends_per_vip: usize,
    pub distinct_backends: usize,
    pub ring_size: u32,
    pub max_vips: u32,
    pub conn_table_size: u32,
    /// Fresh pins: maps created, 512 tables built and written, attached.
    pub cold_ms: Vec<f64>,
    pub cold_median_ms: f64,
    /// Same pins again (a restart): maps adopted, tables rebuilt and found
    /// identical, link updated.
    pub restart_ms: Vec<f64>,
    pub restart_median_ms: f64,
}

pub const STARTUP_VIPS: usize = 512;
const STARTUP_BACKENDS_PER_VIP: usize = 10;
const STARTUP_POOL: usize = 100;

pub fn startup(host: &DaemonHost, opts: &Opts, progress: &Progress) -> Result<Startup> {
    let vips: Vec<(Ipv4Addr, Vec<Ipv4Addr>)> = (0..STARTUP_VIPS)
        .map(|j| {
            let addr = Ipv4Addr::new(10, 200, (j / 250) as u8, (j % 250) as u8 + 1);
            let backends = (0..STARTUP_BACKENDS_PER_VIP)
                .map(|k| Ipv4Addr::new(10, 201, 0, ((j + k * 10) % STARTUP_POOL) as u8 + 1))
                .collect();
            (addr, backends)
        })
        .collect();
    let sections = vip_sections(&vips);
    let limits = Limits::default();
    let (mut cold, mut restart) = (Vec::new(), Vec::new());
    for run in 0..opts.startup_runs {
        progress.step(format!(
            "control: start-up with {STARTUP_VIPS} VIPs, cold start {}/{}",
            run + 1,
            opts.startup_runs
        ));
        let mut d = Daemon::new(host, &format!("startup{run}"), limits, &sections, None)?;
        cold.push(d.start()?.as_secs_f64() * 1e3);
        d.stop()?;
        progress.step(format!("control: start-up with {STARTUP_VIPS} VIPs, restart {}/{}", run + 1, opts.startup_runs));
        restart.push(d.start()?.as_secs_f64() * 1e3);
        d.stop()?;
    }
    Ok(Startup {
        vips: STARTUP_VIPS,
        backends_per_vip: STARTUP_BACKENDS_PER_VIP,
        distinct_backends: STARTUP_POOL,
        ring_size: limits.ring_size,
        max_vips: limits.max_vips,
        conn_table_size: limits.conn_table_size,
        cold_median_ms: sys::median(&mut cold.clone()),
        cold_ms: cold,
        restart_median_ms: sys::median(&mut restart.clone()),
        restart_ms: restart,
    })
}

// ---- the part ---------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct ControlReport {
    pub maglev_build: Vec<BuildRow>,
    pub api_latency: Vec<LatencyStats>,
    pub api_throughput: Vec<ThroughputRow>,
    pub api_load: Vec<LoadRow>,
    pub startup: Option<Startup>,
    /// Health checks of 1,000 pairs at 1 s: the daemon's CPU.
    pub health_cost: Option<crate::health_cost::HealthCost>,
    /// Sub-measurements that failed (the others are still reported).
    pub errors: Vec<String>,
}

pub fn run(opts: &Opts, progress: &Progress) -> Result<ControlReport> {
    let mut report = ControlReport {
        maglev_build: maglev_build(opts, progress)?,
        api_latency: Vec::new(),
        api_throughput: Vec::new(),
        api_load: Vec::new(),
        startup: None,
        health_cost: None,
        errors: Vec::new(),
    };
    let host = DaemonHost::new()?;
    let vips = vip_sections(&[(Ipv4Addr::new(10, 200, 0, 1), (0..LAT_BACKENDS).map(lat_backend).collect())]);
    let daemon_part = (|| -> Result<()> {
        progress.step("control: starting the daemon for the API measurements");
        let mut d = Daemon::new(&host, "api", latency_limits(), &vips, None)?;
        d.start()?;
        match api_latency(&d, opts, "disk", progress) {
            Ok(l) => report.api_latency = l,
            Err(e) => report.errors.push(format!("API latency: {e:#}")),
        }
        match api_throughput(&d, opts, progress) {
            Ok(t) => report.api_throughput = t,
            Err(e) => report.errors.push(format!("API throughput: {e:#}")),
        }
        d.stop()
    })();
    let load_part = (|| -> Result<()> {
        progress.step("control: starting the daemon for the API under load");
        let mut d = Daemon::new(&host, "api-load", latency_limits(), &format!("{LOAD_API_SETTINGS}{vips}"), None)?;
        d.start()?;
        match healthz_with_idle_connections(&d, opts, progress) {
            Ok(r) => report.api_load.push(r),
            Err(e) => report.errors.push(format!("/healthz with idle connections: {e:#}")),
        }
        match reads_alongside_changes(&d, opts, progress) {
            Ok((reads, writes)) => report.api_load.extend([reads, writes]),
            Err(e) => report.errors.push(format!("reads alongside changes: {e:#}")),
        }
        d.stop()
    })();
    if let Err(e) = load_part {
        report.errors.push(format!("API load daemon: {e:#}"));
    }
    if let Err(e) = daemon_part {
        report.errors.push(format!("API daemon: {e:#}"));
    }
    // The same with the state file on tmpfs: what the call costs without
    // the disk's fsync.
    let shm = PathBuf::from("/dev/shm").join(netns::unique_name("lb-bench-"));
    if std::fs::create_dir_all(&shm).is_ok() {
        let tmpfs_part = (|| -> Result<Vec<LatencyStats>> {
            progress.step("control: starting a daemon with its state file on tmpfs");
            let mut d = Daemon::new(&host, "api-tmpfs", latency_limits(), &vips, Some(&shm))?;
            d.start()?;
            let l = api_latency(&d, opts, "tmpfs", progress)?;
            d.stop()?;
            Ok(l)
        })();
        match tmpfs_part {
            Ok(l) => report.api_latency.extend(l),
            Err(e) => report.errors.push(format!("API latency, state on tmpfs: {e:#}")),
        }
        let _ = std::fs::remove_dir_all(&shm);
    }
    match startup(&host, opts, progress) {
        Ok(s) => report.startup = Some(s),
        Err(e) => report.errors.push(format!("start-up: {e:#}")),
    }
    match crate::health_cost::run(opts.health_window, progress) {
        Ok(h) => report.health_cost = Some(h),
        Err(e) => report.errors.push(format!("health checks' cost: {e:#}")),
    }
    Ok(report)
}

impl Section for ControlReport {
    const TITLE: &'static str = "3. Control plane";

    fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("Maglev build time (lb_control::maglev::build, equal weights, M = {RING}):")];
        out.extend(self.build_table().text());
        out.push(String::new());
        out.push(
            "API call -> data plane (real daemon in a namespace, keep-alive HTTP on loopback; \
             visible = the pinned maps hold the new entry/table):"
                .into(),
        );
        out.extend(self.latency_table().text());
        out.push(String::new());
        out.push("API calls per second (each client a thread with its own keep-alive connection):".into());
        out.extend(self.throughput_table().text());
        out.push(String::new());
        out.push("The API under load (a separate daemon; its header-read and idle timeouts outlast the run):".into());
        out.extend(self.load_table().text());
        if let Some(s) = self.startup_line() {
            out.push(String::new());
            out.push(s);
        }
        if let Some(h) = &self.health_cost {
            out.push(String::new());
            out.push(h.line());
        }
        for e in &self.errors {
            out.push(format!("FAILED: {e}"));
        }
        out
    }

    fn markdown(&self) -> String {
        let mut md = format!("Maglev build time (`lb_control::maglev::build`, equal weights, M = {RING}):\n\n");
        md += &self.build_table().markdown();
        md += "\nAPI call → data plane visibility (real daemon in a network namespace; keep-alive HTTP on loopback; \
               *call* = request sent to response read, *visible* = request sent to the change verified in the pinned maps):\n\n";
        md += &self.latency_table().markdown();
        md += "\nAPI calls per second:\n\n";
        md += &self.throughput_table().markdown();
        md += "\nThe API under load (a separate daemon; its header-read and idle timeouts outlast the run):\n\n";
        md += &self.load_table().markdown();
        if let Some(s) = self.startup_line() {
            md += &format!("\n{s}.\n");
        }
        if let Some(h) = &self.health_cost {
            md += &format!("\n{}.\n", h.line());
        }
        for e in &self.errors {
            md += &format!("\n**Failed:** `{}`\n", e.replace('\n', " "));
        }
        md
    }
}

impl ControlReport {
    pub fn build_table(&self) -> Table {
        let mut t = Table::new(&["backends", "M", "runs", "median", "min", "max"], 0);
        for r in &self.maglev_build {
            t.row(vec![
                r.backends.to_string(),
                r.ring_size.to_string(),
                r.runs.to_string(),
                format!("{} ms", f(r.median_us / 1e3, 3)),
                format!("{} ms", f(r.min_us / 1e3, 3)),
                format!("{} ms", f(r.max_us / 1e3, 3)),
            ]);
        }
        t
    }

    pub fn latency_table(&self) -> Table {
        let mut t = Table::new(
            &[
                "call",
                "calls",
                "call p50",
                "call p99",
                "call max",
                "visible p50",
                "visible p99",
                "visible max",
                "visible at return",
            ],
            1,
        );
        for l in &self.api_latency {
            t.row(vec![
                l.op.clone(),
                l.calls.to_string(),
                format!("{} ms", f(l.call_p50_ms, 3)),
                format!("{} ms", f(l.call_p99_ms, 3)),
                format!("{} ms", f(l.call_max_ms, 3)),
                format!("{} ms", f(l.visible_p50_ms, 3)),
                format!("{} ms", f(l.visible_p99_ms, 3)),
                format!("{} ms", f(l.visible_max_ms, 3)),
                format!("{}/{}", l.visible_at_return, l.calls),
            ]);
        }
        t
    }

    pub fn throughput_table(&self) -> Table {
        let mut t = Table::new(&["call", "clients", "seconds", "calls", "errors", "calls/s"], 1);
        for r in &self.api_throughput {
            t.row(vec![
                r.call.clone(),
                r.clients.to_string(),
                f(r.seconds, 2),
                r.calls.to_string(),
                r.errors.to_string(),
                f(r.per_second, 0),
            ]);
        }
        t
    }

    pub fn load_table(&self) -> Table {
        let mut t = Table::new(&["call", "alongside", "calls", "errors", "p50", "p99", "max"], 2);
        for r in &self.api_load {
            t.row(vec![
                r.call.clone(),
                r.alongside.clone(),
                r.calls.to_string(),
                r.errors.to_string(),
                format!("{} ms", f(r.p50_ms, 3)),
                format!("{} ms", f(r.p99_ms, 3)),
                format!("{} ms", f(r.max_ms, 3)),
            ]);
        }
        t
    }

    pub fn startup_line(&self) -> Option<String> {
        self.startup.as_ref().map(|s| {
            let list = |v: &[f64]| v.iter().map(|x| f(*x, 0)).collect::<Vec<_>>().join(", ");
            format!(
                "start-up to /readyz with {} VIPs ({} backends each, {} distinct; ring {}, max_vips {}, connection table {}): \
                 cold start median {} ms ({} ms), restart adopting the pins median {} ms ({} ms)",
                s.vips,
                s.backends_per_vip,
                s.distinct_backends,
                s.ring_size,
                s.max_vips,
                s.conn_table_size,
                f(s.cold_median_ms, 0),
                list(&s.cold_ms),
                f(s.restart_median_ms, 0),
                list(&s.restart_ms)
            )
        })
    }

    pub fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        match self.maglev_build.iter().find(|r| r.backends == 1_000) {
            Some(r) => t.push(Target {
                part: "control",
                name: "Maglev build, 1,000 backends (M = 65537)".into(),
                target: "< 1 ms".into(),
                value: format!("{} ms median", f(r.median_us / 1e3, 3)),
                met: r.median_us < 1_000.0,
            }),
            None => t.push(missing("Maglev build, 1,000 backends (M = 65537)", "< 1 ms")),
        }
        match self.api_latency.first() {
            Some(l) => t.push(Target {
                part: "control",
                name: format!("API call to data plane p99 ({}, {} calls)", l.op, l.calls),
                target: "< 5 ms".into(),
                value: format!("{} ms", f(l.visible_p99_ms, 3)),
                met: l.visible_p99_ms < 5.0,
            }),
            None => t.push(missing("API call to data plane p99", "< 5 ms")),
        }
        let healthz = format!("/healthz p99 with {IDLE_CONNECTIONS} idle connections held open");
        match self.api_load.iter().find(|r| r.call.starts_with("GET /healthz")) {
            Some(r) => t.push(Target {
                part: "control",
                name: healthz,
                target: "< 50 ms".into(),
                value: format!("{} ms ({} errors)", f(r.p99_ms, 3), r.errors),
                met: r.p99_ms < 50.0 && r.errors == 0,
            }),
            None => t.push(missing(&healthz, "< 50 ms")),
        }
        let reads = format!("GET /v1/vips p99 with {CHANGES_PER_SECOND} VIP add/remove calls/s alongside");
        match self.api_load.iter().find(|r| r.call.starts_with("GET /v1/vips")) {
            Some(r) => t.push(Target {
                part: "control",
                name: reads,
                target: "< 5 ms".into(),
                value: format!("{} ms ({}; {} errors)", f(r.p99_ms, 3), r.alongside, r.errors),
                met: r.p99_ms < 5.0 && r.errors == 0,
            }),
            None => t.push(missing(&reads, "< 5 ms")),
        }
        t.push(crate::health_cost::target(self.health_cost.as_ref()));
        t
    }
}

fn missing(name: &str, target: &str) -> Target {
    Target { part: "control", name: name.into(), target: target.into(), value: "not measured".into(), met: false }
}
