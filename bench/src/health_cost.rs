//! What health checks cost the daemon: 1,000 (VIP, backend) pairs checked
//! with TCP connects every second, through the tunnel to a namespace whose
//! decap program and listeners answer every probe. The figure is the
//! daemon process's CPU time (every thread's run time, from
//! /proc/PID/task/*/schedstat; the user/kernel split from /proc/PID/stat's
//! ticks) over a window once every pair is up, in percent of one core.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_control::{
    dataplane::{detach_all, Decap, Limits, XdpMode},
    health::probe::{handshake_state, Handshake},
};
use lb_e2e::API;
use lb_testkit::netns::{self, Netns};
use serde::Serialize;

use crate::{control::config_text, progress::Progress, report::Target, sys};

/// VIPs (ports of one address) × backend addresses = checked pairs.
pub const VIPS: u16 = 20;
pub const BACKENDS: u8 = 50;
pub const INTERVAL: Duration = Duration::from_secs(1);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const FIRST_PORT: u16 = 8000;
/// The daemon's budget for 1,000 pairs at 1 s (percent of one core).
pub const TARGET_PERCENT: f64 = 2.0;

#[derive(Clone, Debug, Serialize)]
pub struct HealthCost {
    pub pairs: usize,
    pub interval_ms: u64,
    pub window_s: f64,
    /// Probes finished per second during the window (from the histogram).
    pub probes_per_s: f64,
    /// Daemon CPU in percent of one core: every thread's time on a CPU,
    /// exact (schedstat).
    pub cpu_percent: f64,
    /// The user-space and kernel parts as the tick counters (utime, stime)
    /// saw them: about ±0.3 each over 20 s.
    pub user_percent: f64,
    pub kernel_percent: f64,
    /// Pairs up at the end of the window.
    pub up: usize,
    /// The same 1,000 handshakes a second from a plain thread, without the
    /// daemon: the syscalls a TCP check cannot do without ([`floor`]), in
    /// percent of one core; `None` if it could not run.
    pub floor_percent: Option<f64>,
}

/// The probe floor: what 1,000 TCP checks a second cost with nothing but
/// the syscalls they need, done the way the checker does them (one socket
/// per pair kept between probes, a non-blocking `connect`, the outcome read
/// with `TCP_INFO` on the checker's probe grid, `connect(AF_UNSPEC)` to reset) from a
/// plain thread in the balancer's namespace, through the same TC program
/// and tunnel (the daemon's marks). Returns the thread's CPU time
/// (`CLOCK_THREAD_CPUTIME_ID`) in percent of one core over `window`, and the
/// handshakes that completed.
fn floor(ns: &Netns, pairs: usize, window: Duration) -> Result<(f64, u64)> {
    const STEP: Duration = lb_control::health::schedule::PROBE_STEP;
    let per_step = (pairs as u128 * STEP.as_nanos() / INTERVAL.as_nanos()).max(1) as usize;
    ns.run(move || {
        let sockets = (0..pairs)
            .map(|i| {
                // SAFETY: plain socket creation; the descriptor is checked.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
                if fd < 0 {
                    bail!("socket: {}", std::io::Error::last_os_error());
                }
                let mark = lb_common::HEALTH_MARK_BASE + (i % BACKENDS as usize) as u32;
                let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                // SAFETY: valid option buffers of the lengths passed, on our
                // own descriptor.
                unsafe {
                    libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, (&raw const mark).cast(), 4);
                    libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&raw const linger).cast(), 8);
                }
                let port = FIRST_PORT + (i / BACKENDS as usize) as u16;
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(VIP).to_be() },
                    sin_zero: [0; 8],
                };
                Ok((fd, addr))
            })
            .collect::<Result<Vec<_>>>()?;
        let thread_cpu = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid timespec for the call to fill.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
        };
        let unspec = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
        let (cpu0, start) = (thread_cpu(), Instant::now());
        let steps = (window.as_nanos() / STEP.as_nanos()) as usize;
        let mut completed = 0u64;
        let mut previous: Option<std::ops::Range<usize>> = None;
        for step in 0..=steps {
            // The previous step's probes: read, then reset.
            for i in previous.take().into_iter().flatten() {
                let fd = sockets[i].0;
                // SAFETY: `tcp_info` is plain data and its buffer and length
                // are passed; `unspec` is a valid sockaddr.
                unsafe {
                    let mut info: libc::tcp_info = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
                    libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len);
                    // Judged as the checker judges it.
                    completed += u64::from(handshake_state(info.tcpi_state) == Handshake::Done);
                    libc::connect(fd, &unspec, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t);
                }
            }
            if step < steps {
                let first = (step * per_step) % pairs;
                let batch = first..(first + per_step).min(pairs);
                for i in batch.clone() {
                    let (fd, addr) = &sockets[i];
                    // SAFETY: a valid sockaddr_in of the length passed.
                    unsafe {
                        libc::connect(
                            *fd,
                            (addr as *const libc::sockaddr_in).cast(),
                            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        )
                    };
                }
                previous = Some(batch);
            }
            if let Some(wait) = (start + STEP * (step as u32 + 1)).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let cpu = thread_cpu() - cpu0;
        let secs = start.elapsed().as_secs_f64();
        for (fd, _) in sockets {
            // SAFETY: closing our own descriptors once.
            unsafe { libc::close(fd) };
        }
        Ok((cpu / secs * 100.0, completed))
    })
}

fn backend(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 0, i + 1)
}

fn vip_sections() -> String {
    let mut s = format!("\n[health]\nkind = \"tcp\"\ninterval = \"{}ms\"\ntimeout = \"500ms\"\n", INTERVAL.as_millis());
    for port in FIRST_PORT..FIRST_PORT + VIPS {
        s += &format!("\n[[vip]]\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"tcp\"\n");
        for i in 0..BACKENDS {
            s += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend(i));
        }
    }
    s
}

/// CPU time of every thread of a process, in seconds, exact (the
/// scheduler's `sum_exec_runtime`, `/proc/PID/task/*/schedstat`): utime and
/// stime count 10 ms ticks, too coarse for a process at 2 % of a core.
fn cpu_exact(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).context("listing the daemon's threads")? {
        // A thread may end between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) {
            ns += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

/// (utime, stime) of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the daemon's stat")?;
    // Fields after the command (which may hold spaces) start at state (3).
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let hz = sys::ticks_per_second() as f64;
    Ok((f[11].parse::<u64>()? as f64 / hz, f[12].parse::<u64>()? as f64 / hz))
}

fn metrics(ns: &Netns) -> Result<String> {
    let url = format!("http://{API}/metrics");
    ns.run(move || {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
        Ok(agent.get(&url).call()?.body_mut().read_to_string()?)
    })
}

fn up_pairs(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("xdp_lb_backend_up{") && l.ends_with(" 1")).count()
}

fn probes_done(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("xdp_lb_health_check_duration_seconds_count"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

pub fn run(window: Duration, progress: &Progress) -> Result<HealthCost> {
    progress.step("control: health checks, 1,000 pairs at 1 s: setting up");
    let lb = Netns::new(netns::unique_name("lbhc"))?;
    let be = Netns::new(netns::unique_name("lbhb"))?;
    lb.ip(&["link", "add", "l0", "type", "veth", "peer", "name", "p0", "netns", be.name()])?;
    lb.ip(&["link", "set", "l0", "address", "02:00:00:00:00:02", "up"])?;
    lb.ip(&["addr", "add", "10.99.0.2/24", "dev", "l0"])?;
    lb.ip(&["route", "add", "default", "via", "10.99.0.1"])?;
    be.ip(&["link", "set", "p0", "address", "02:00:00:00:00:01", "up"])?;
    be.ip(&["link", "set", "lo", "up"])?;
    be.ip(&["addr", "add", "10.99.0.1/24", "dev", "p0"])?;
    be.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter", "net.ipv4.conf.p0.rp_filter"] {
        be.sysctl(key, "0")?;
    }
    let _decap = be.run(|| {
        let mut d = Decap::load()?;
        for i in 0..BACKENDS {
            d.add_addr(backend(i).into())?;
        }
        d.attach("p0", XdpMode::Native, None)?;
        Ok(d)
    })?;
    // The backend side's receive work in a NAPI thread of its own, as on
    // a separate host: veth otherwise runs it in the sender's (the
    // daemon's) context and bills it to the daemon.
    netns::run("ip", &["netns", "exec", be.name(), "sh", "-c", "echo 1 > /sys/class/net/p0/threaded"])
        .context("threaded NAPI on the backend side")?;
    // Listeners that accept and close: every probe succeeds.
    let stop = Arc::new(AtomicBool::new(false));
    let listeners = be.run(|| {
        (FIRST_PORT..FIRST_PORT + VIPS)
            .map(|p| Ok(TcpListener::bind((Ipv4Addr::UNSPECIFIED, p))?))
            .collect::<Result<Vec<_>>>()
    })?;
    // Blocking accepts (a polling loop would wake 20 threads every few ms
    // on this 2-core machine, beside the daemon being measured); at the end
    // a connection from inside the namespace wakes each one to stop.
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((s, _)) = l.accept() {
                        drop(s);
                    }
                }
            })
        })
        .collect();
    let dir = std::env::temp_dir().join(netns::unique_name("lb-bench-health-"));
    std::fs::create_dir_all(&dir)?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", netns::unique_name("lb-bench-health")));
    let limits = Limits { ring_size: 65537, max_vips: 32, max_reals: 1100, conn_table_size: 65536 };
    let config = dir.join("health.toml");
    std::fs::write(&config, config_text(&pin_dir, &dir.join("state.json"), &limits, &vip_sections()))?;
    let log = dir.join("health.log");
    let mut child = lb_e2e::spawn_daemon(&lb, &config, &log)?;
    let result = (|| -> Result<HealthCost> {
        let pairs = VIPS as usize * BACKENDS as usize;
        progress.step(format!("control: health checks, waiting for {pairs} pairs to be up"));
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("lb-control exited ({status})");
            }
            if metrics(&lb).map(|m| up_pairs(&m)).unwrap_or(0) == pairs {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("not every pair up after 60 s ({} up)", metrics(&lb).map(|m| up_pairs(&m)).unwrap_or(0));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // The replies' receive work on the balancer side in a NAPI thread,
        // as a NIC's softirq would be (veth has NAPI once the balancer's
        // XDP program is attached): the daemon pays for its sockets and
        // their transmit path, not for the receive path.
        netns::run("ip", &["netns", "exec", lb.name(), "sh", "-c", "echo 1 > /sys/class/net/l0/threaded"])
            .context("threaded NAPI on the balancer side")?;
        // One more interval so the start-up's work is behind us.
        std::thread::sleep(INTERVAL);
        progress.step(format!("control: health checks, measuring {} s", window.as_secs()));
        let probes0 = probes_done(&metrics(&lb)?);
        let (cpu0, exact0, w0) = (cpu_seconds(child.id())?, cpu_exact(child.id())?, Instant::now());
        std::thread::sleep(window);
        let (cpu1, exact1, w1) = (cpu_seconds(child.id())?, cpu_exact(child.id())?, Instant::now());
        let m = metrics(&lb)?;
        let secs = (w1 - w0).as_secs_f64();
        progress.step(format!("control: health checks, the probe floor without the daemon, {} s", window.as_secs()));
        let floor_percent = match floor(&lb, pairs, window) {
            Ok((percent, completed)) if completed as f64 >= 0.95 * pairs as f64 * window.as_secs_f64() => Some(percent),
            Ok((_, completed)) => {
                eprintln!("the probe floor is not reported: only {completed} handshakes completed");
                None
            }
            Err(e) => {
                eprintln!("the probe floor is not reported: {e:#}");
                None
            }
        };
        Ok(HealthCost {
            pairs,
            interval_ms: INTERVAL.as_millis() as u64,
            window_s: secs,
            probes_per_s: (probes_done(&m) - probes0) / secs,
            cpu_percent: (exact1 - exact0) / secs * 100.0,
            user_percent: (cpu1.0 - cpu0.0) / secs * 100.0,
            kernel_percent: (cpu1.1 - cpu0.1) / secs * 100.0,
            up: up_pairs(&m),
            floor_percent,
        })
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if !sys::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        child.try_wait().ok().flatten().is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = detach_all(&pin_dir);
    stop.store(true, Ordering::Relaxed);
    let _ = be.run(|| {
        for port in FIRST_PORT..FIRST_PORT + VIPS {
            let _ = std::net::TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1));
        }
        Ok(())
    });
    for t in threads {
        let _ = t.join();
    }
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| e.context(format!("daemon log:\n{daemon_log}")))
}

impl HealthCost {
    pub fn line(&self) -> String {
        format!(
            "health checks: {} (VIP, backend) pairs, TCP connect every {} ms through the tunnel: \
             {:.0} probes/s, daemon CPU {:.2} % of one core (ticks: {:.2} % user, {:.2} % kernel) over {:.0} s ({} up); \
             the same handshakes from a bare thread (the probe floor): {}",
            self.pairs,
            self.interval_ms,
            self.probes_per_s,
            self.cpu_percent,
            self.user_percent,
            self.kernel_percent,
            self.window_s,
            self.up,
            self.floor_percent.map_or("not measured".into(), |f| format!("{f:.2} % of one core"))
        )
    }
}

/// The target row: 1,000 pairs at 1 s within two core-percent.
pub fn target(h: Option<&HealthCost>) -> Target {
    let name =
        format!("health checks, {} pairs at {} s: daemon CPU", VIPS as usize * BACKENDS as usize, INTERVAL.as_secs());
    let target = format!("<= {TARGET_PERCENT} % of a core");
    match h {
        Some(h) => Target {
            part: "control",
            name,
            target,
            value: format!(
                "{:.2} % ({:.0} probes/s, {} up; probe floor {})",
                h.cpu_percent,
                h.probes_per_s,
                h.up,
                h.floor_percent.map_or("-".into(), |f| format!("{f:.2} %"))
            ),
            met: h.cpu_percent <= TARGET_PERCENT && h.up == h.pairs,
        },
        None => Target { part: "control", name, target, value: "not measured".into(), met: false },
    }
}
