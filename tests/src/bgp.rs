//! The multi-balancer lab: the router and every balancer run BIRD 2; the
//! balancers' daemons announce the VIPs through their BIRD (the `[bgp]`
//! table), the router learns them over eBGP with BFD and installs them as
//! ECMP multipath routes (kernel protocol, `merge paths on`), hashed by
//! 5-tuple (`fib_multipath_hash_policy = 1`, set by [`Lab::build`]).
//!
//! Each BIRD has its own config, control socket, pid file and log in the
//! lab's temporary directory, runs in the foreground as a child of the test
//! and is killed when dropped. Also here: a client load of short HTTP
//! connections and long-lived echo streams that records every failure and
//! checks every answer's backend against the Maglev table, and the client's
//! TCP counters.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_common::{VipKey, IPPROTO_TCP};
use lb_control::dataplane::{ip_to_addr, versioned_pin_dir};
use lb_testkit::netns::{self, Netns};

use crate::{
    backend4, backend6, balancer4, balancer6, client, client::EchoConn, vip_addr, Lab, ECHO_PORT, HTTP_PORT, VIP4, VIP6,
};

pub const ROUTER_AS: u32 = 65000;
/// Every balancer uses the same AS: the router sees equal AS paths and
/// merges the routes into one multipath route.
pub const BALANCER_AS: u32 = 65001;
/// Attached by the balancers' daemons (`bgp.communities`), checked at the
/// router.
pub const COMMUNITY: &str = "65000:100";
/// BFD: a peer is declared down after `BFD_MULTIPLIER` intervals without a
/// packet. 100 ms rather than less: the lab shares two CPUs with builds.
pub const BFD_INTERVAL_MS: u64 = 100;
pub const BFD_MULTIPLIER: u64 = 3;
/// BGP timers (seconds); BIRD's minimum hold time is 3.
pub const HOLD_TIME: u64 = 3;

/// BIRD's binary: Debian installs it in /usr/sbin, which a test's PATH may
/// lack.
fn bird_binary() -> &'static str {
    if Path::new("/usr/sbin/bird").exists() {
        "/usr/sbin/bird"
    } else {
        "bird"
    }
}

/// One BIRD process.
pub struct Bird {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Bird {
    /// Writes `config` to `dir/bird.conf` and starts BIRD in `ns`, in the
    /// foreground with its own control socket and pid file; waits (bounded)
    /// until its control socket answers.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> Result<Bird> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config)?;
        let socket = dir.join("bird.ctl");
        let out = std::fs::File::create(dir.join("bird.out"))?;
        let child = ns
            .command(bird_binary())
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting bird (scripts/setup.sh installs bird2)")?;
        let mut bird = Bird { child: Some(child), dir: dir.to_owned(), socket };
        let start = Instant::now();
        while bird.command("show status").is_err() {
            if let Some(status) = bird.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("bird exited ({status}):\n{}", bird.output());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("bird's control socket {} does not answer:\n{}", bird.socket.display(), bird.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bird)
    }

    pub fn control(&self) -> lb_control::bgp::Bird {
        lb_control::bgp::Bird { socket: self.socket.clone() }
    }

    /// One command on the control socket.
    pub fn command(&self, command: &str) -> Result<String> {
        Ok(self.control().command(command)?)
    }

    /// BIRD's stdout/stderr and log.
    pub fn output(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        format!("{}{}", read("bird.out"), read("bird.log"))
    }

    /// SIGKILL: no BGP notification, no BFD "admin down": the peer must
    /// notice by itself.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// How many BGP sessions are established.
    pub fn established(&self) -> Result<usize> {
        Ok(self.command("show protocols")?.lines().filter(|l| l.contains(" BGP ") && l.contains("Established")).count())
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// BFD and BGP timers shared by both sides.
fn timers() -> String {
    format!(
        "  hold time {HOLD_TIME}; keepalive time 1; connect delay time 1; connect retry time 1;\n  \
         error wait time 1, 2; graceful restart off; bfd on;\n"
    )
}

fn bfd(interfaces: &str) -> String {
    format!(
        "protocol bfd {{\n  interface \"{interfaces}\" {{ min rx interval {BFD_INTERVAL_MS} ms; \
         min tx interval {BFD_INTERVAL_MS} ms; idle tx interval 300 ms; multiplier {BFD_MULTIPLIER}; }};\n}}\n"
    )
}

/// The router's BIRD: a v4 and a v6 session to every balancer, BFD, and
/// the learned routes into the kernel as multipath routes.
pub fn router_config(dir: &Path, balancers: usize) -> String {
    let mut c = format!(
        "log \"{}/bird.log\" all;\nrouter id 10.10.1.1;\nprotocol device {{ scan time 1; }}\n\
         protocol kernel kernel4 {{\n  ipv4 {{ import none; export where source = RTS_BGP; }};\n  merge paths on;\n}}\n\
         protocol kernel kernel6 {{\n  ipv6 {{ import none; export where source = RTS_BGP; }};\n  merge paths on;\n}}\n{}\
         template bgp balancer {{\n  local as {ROUTER_AS};\n{}}}\n",
        dir.display(),
        bfd("rl*"),
        timers()
    );
    for i in 0..balancers {
        c += &format!(
            "protocol bgp lb{i}v4 from balancer {{\n  neighbor {} as {BALANCER_AS};\n  ipv4 {{ import all; export none; }};\n}}\n\
             protocol bgp lb{i}v6 from balancer {{\n  neighbor {} as {BALANCER_AS};\n  ipv6 {{ import all; export none; }};\n}}\n",
            balancer4(i),
            balancer6(i)
        );
    }
    c
}

/// Balancer `i`'s BIRD: the daemon's include file, and sessions to the
/// router exporting only the generated static protocols. The same shape as
/// `configs/bird.conf`.
pub fn balancer_config(dir: &Path, i: usize, include_file: &Path) -> String {
    format!(
        "log \"{}/bird.log\" all;\nrouter id {};\nprotocol device {{ scan time 1; }}\n\
         include \"{}\";\n{}\
         template bgp uplink {{\n  local as {BALANCER_AS};\n{}}}\n\
         protocol bgp uplink4 from uplink {{\n  neighbor 10.10.{}.1 as {ROUTER_AS};\n  \
         ipv4 {{ import none; export where proto = \"{}\"; }};\n}}\n\
         protocol bgp uplink6 from uplink {{\n  neighbor fd00:{}::1 as {ROUTER_AS};\n  \
         ipv6 {{ import none; export where proto = \"{}\"; }};\n}}\n",
        dir.display(),
        balancer4(i),
        include_file.display(),
        bfd("l0"),
        timers(),
        2 + i,
        lb_control::bgp::PROTOCOL_V4,
        2 + i,
        lb_control::bgp::PROTOCOL_V6,
    )
}

/// The lab with BGP: [`Lab`] plus a BIRD on the router and on every
/// balancer. The router's static VIP routes are removed: only BGP routes
/// the VIPs.
pub struct BgpLab {
    // Fields drop in order: processes first, then the namespaces.
    pub router_bird: Bird,
    pub birds: Vec<Bird>,
    drop_links: Vec<OwnedFd>,
    pub lab: Lab,
}

impl BgpLab {
    /// Builds the lab with `balancers` balancer hosts and 3 backends, starts
    /// every BIRD (not the daemons) and waits until every BGP session is
    /// established.
    pub fn build(balancers: usize) -> Result<BgpLab> {
        let lab = Lab::build(3, balancers)?;
        for args in [&["route", "del", "10.100.0.0/24"][..], &["-6", "route", "del", "fd00:100::/64"]] {
            lab.router.ip(args)?;
        }
        for b in &lab.balancers {
            let include = Self::include_file_of(&lab, b.index);
            // BIRD's config includes this file: it must exist before BIRD
            // starts. Empty is valid (no static protocols yet).
            std::fs::write(&include, "")?;
            let config = format!(
                "{}\n[bgp]\nenabled = true\nbird_socket = \"{}\"\ninclude_file = \"{}\"\nmin_healthy = 1\ncommunities = [\"{COMMUNITY}\"]\n",
                lab.config(b.index, &lab.default_vips()),
                Self::bird_dir_of(&lab, b.index).join("bird.ctl").display(),
                include.display(),
            );
            std::fs::write(&b.config_path, config)?;
        }
        let router_dir = lab.path("bird-router");
        let router_bird = Bird::start(&lab.router, &router_dir, &router_config(&router_dir, balancers))?;
        let mut birds = Vec::new();
        for b in &lab.balancers {
            let dir = Self::bird_dir_of(&lab, b.index);
            birds.push(Bird::start(
                &b.ns,
                &dir,
                &balancer_config(&dir, b.index, &Self::include_file_of(&lab, b.index)),
            )?);
        }
        let bgp = BgpLab { router_bird, birds, drop_links: Vec::new(), lab };
        let start = Instant::now();
        while bgp.router_bird.established()? < 2 * balancers {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("BGP sessions not established:\n{}", bgp.router_bird.command("show protocols")?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bgp)
    }

    /// Starts balancer `i`'s BIRD again (after [`Bird::kill`]), with the
    /// same config, socket and include file.
    pub fn restart_bird(&mut self, i: usize) -> Result<()> {
        self.birds[i].kill();
        let dir = Self::bird_dir_of(&self.lab, i);
        let config = std::fs::read_to_string(dir.join("bird.conf"))?;
        self.birds[i] = Bird::start(&self.lab.balancers[i].ns, &dir, &config)?;
        Ok(())
    }

    fn bird_dir_of(lab: &Lab, i: usize) -> PathBuf {
        lab.path(&format!("bird-lb{i}"))
    }

    fn include_file_of(lab: &Lab, i: usize) -> PathBuf {
        lab.balancers[i].config_path.with_file_name("bird-vips.conf")
    }

    /// The include file balancer `i`'s daemon writes.
    pub fn include_file(&self, i: usize) -> PathBuf {
        Self::include_file_of(&self.lab, i)
    }

    /// The balancers the router's kernel sends the VIP to now (the
    /// nexthops of its route; empty when there is none).
    pub fn nexthops(&self, v6: bool) -> Result<BTreeSet<usize>> {
        let out = if v6 {
            self.lab.router.ip(&["-6", "route", "show", "exact", &format!("{VIP6}/128")])?
        } else {
            self.lab.router.ip(&["route", "show", "exact", &format!("{VIP4}/32")])?
        };
        let words: Vec<&str> = out.split_whitespace().collect();
        let mut via = BTreeSet::new();
        for pair in words.windows(2).filter(|w| w[0] == "dev") {
            let i = pair[1].strip_prefix("rl").and_then(|n| n.parse().ok());
            via.insert(i.with_context(|| format!("a VIP route through {}: {out}", pair[1]))?);
        }
        Ok(via)
    }

    /// Waits (bounded) until the router sends both VIPs through exactly
    /// `expected`; returns how long that took.
    pub fn wait_nexthops(&self, expected: &[usize], timeout: Duration) -> Result<Duration> {
        self.wait_routes(expected, expected, timeout)
    }

    /// Waits (bounded) until the router sends the IPv4 VIP through exactly
    /// `v4` and the IPv6 VIP through `v6`; returns how long that took.
    pub fn wait_routes(&self, v4: &[usize], v6: &[usize], timeout: Duration) -> Result<Duration> {
        let want4: BTreeSet<usize> = v4.iter().copied().collect();
        let want6: BTreeSet<usize> = v6.iter().copied().collect();
        let start = Instant::now();
        loop {
            let (got4, got6) = (self.nexthops(false)?, self.nexthops(true)?);
            if got4 == want4 && got6 == want6 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "after {timeout:?} the router routes the VIPs via {got4:?} / {got6:?}, not {want4:?} / {want6:?}\n{}",
                    self.router_bird.command("show route all").unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A graceful removal: stop the daemon (the data plane keeps
    /// forwarding), then `lb-control detach`, which withdraws through BIRD,
    /// waits `withdraw_wait` seconds and detaches.
    pub fn detach(&mut self, i: usize, withdraw_wait: u64) -> Result<String> {
        let child = self.begin_detach(i, withdraw_wait)?;
        finish_detach(child)
    }

    /// [`BgpLab::detach`] without waiting for `lb-control detach` to end.
    pub fn begin_detach(&mut self, i: usize, withdraw_wait: u64) -> Result<Child> {
        let b = &mut self.lab.balancers[i];
        b.stop()?;
        b.ns.command(crate::workspace_bin("lb-control")?)
            .arg("--config")
            .arg(&b.config_path)
            .args(["detach", "--withdraw-wait", &withdraw_wait.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lb-control detach")
    }

    /// Balancer `i` dies at once, as a host losing power would with its
    /// link still up: its balancer program is swapped (atomically, in its
    /// pinned link) for one that drops every frame, a policy rule blackholes
    /// everything it would send (so the kernel cannot close BIRD's TCP
    /// session for it), then its daemon and BIRD get SIGKILL. The router
    /// can only notice through BFD or the BGP hold timer.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let pin = versioned_pin_dir(&self.lab.balancers[i].pin_dir).join("link-l0");
        self.drop_links.push(swap_in_drop_all(&pin)?);
        let ns = &self.lab.balancers[i].ns;
        ns.ip(&["rule", "add", "priority", "1", "blackhole"])?;
        ns.ip(&["-6", "rule", "add", "priority", "1", "blackhole"])?;
        self.birds[i].kill();
        if let Some(mut d) = self.lab.balancers[i].daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        Ok(())
    }
}

/// Waits for `lb-control detach` (bounded) and returns its output.
pub fn finish_detach(mut child: Child) -> Result<String> {
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("lb-control detach did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("lb-control detach failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A minimal `bpf_attr` for `BPF_PROG_LOAD` (the fields up to
/// `expected_attach_type`; the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// The attach type aya loads XDP programs with; a link only takes a
/// program of the same type and attach type.
const BPF_XDP: u32 = 37;

fn bpf(cmd: libc::c_long, attr: *const u8, size: usize) -> Result<i32> {
    // SAFETY: `attr` points at a live, initialised bpf_attr prefix of `size`
    // bytes owned by the caller for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if ret < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(ret as i32)
}

/// Loads a two-instruction XDP program (`r0 = XDP_DROP; exit`) and puts it
/// into the pinned XDP link at `link_pin` in place of the balancer: no
/// window without a program. Returns the program's fd.
fn swap_in_drop_all(link_pin: &Path) -> Result<OwnedFd> {
    // mov64 r0, 1 (XDP_DROP); exit
    let insns: [u64; 2] =
        [u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"drop_all");
    let load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    let prog = bpf(BPF_PROG_LOAD, (&load as *const ProgLoadAttr).cast(), size_of::<ProgLoadAttr>())?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    let prog = unsafe { OwnedFd::from_raw_fd(prog) };
    let path = std::ffi::CString::new(link_pin.as_os_str().as_encoded_bytes())?;
    // bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    let get: [u64; 2] = [path.as_ptr() as u64, 0];
    let link = bpf(BPF_OBJ_GET, get.as_ptr().cast(), 16).with_context(|| format!("opening {}", link_pin.display()))?;
    // SAFETY: as above, a fresh fd from the kernel.
    let link = unsafe { OwnedFd::from_raw_fd(link) };
    // bpf_attr for BPF_LINK_UPDATE: link_fd, new_prog_fd, flags, old_prog_fd.
    let update: [u32; 4] = [link.as_raw_fd() as u32, prog.as_raw_fd() as u32, 0, 0];
    bpf(BPF_LINK_UPDATE, update.as_ptr().cast(), 16).context("swapping the drop program into the link")?;
    Ok(prog)
}

/// The backend a flow gets, from one balancer's Maglev ring: (ring, ring
/// index → lab backend).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Predictor {
    vip: SocketAddr,
    slots: Vec<usize>,
}

impl Predictor {
    /// Reads balancer `i`'s ring for this TCP VIP, as backend numbers.
    pub fn read(lab: &Lab, i: usize, vip: SocketAddr) -> Result<Predictor> {
        let bal = lab.dataplane(i)?;
        let (addr, family) = ip_to_addr(vip.ip());
        let key = VipKey { addr, port: vip.port().to_be(), proto: IPPROTO_TCP, family };
        let meta = bal.vip(&key).with_context(|| format!("no VIP {vip} on balancer {i}"))?;
        let ring = bal.ring(meta.ring)?;
        let mut backend_of = HashMap::new();
        for &index in BTreeSet::from_iter(ring.iter().copied()).iter() {
            let real = bal.real(index)?;
            let bytes: Vec<u8> = real.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let a = if real.family == lb_common::FAMILY_V4 {
                IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
            } else {
                IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))
            };
            let j = (0..8)
                .find(|&j| IpAddr::V4(backend4(j)) == a || IpAddr::V6(backend6(j)) == a)
                .with_context(|| format!("{a} is not a lab backend"))?;
            backend_of.insert(index, j);
        }
        Ok(Predictor { vip, slots: ring.iter().map(|i| backend_of[i]).collect() })
    }

    pub fn backend(&self, client: SocketAddr) -> usize {
        let (caddr, _) = ip_to_addr(client.ip());
        let hash = lb_common::flow_hash(&caddr, client.port().to_be(), self.vip.port().to_be(), IPPROTO_TCP);
        self.slots[lb_common::ring_slot(hash, self.slots.len() as u32) as usize]
    }
}

/// What the client load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Short HTTP connections completed.
    pub requests: u64,
    /// Rounds of data echoed on the long-lived connections.
    pub echo_rounds: u64,
    /// Every failed request or exchange, with its error.
    pub failures: Vec<String>,
    /// Answers from another backend than the Maglev table names.
    pub wrong_backend: Vec<String>,
}

/// Client load until stopped: `http_threads` threads of back-to-back HTTP
/// connections (IPv4 and IPv6 in turn), and one thread exchanging data on
/// every long-lived echo connection in turn.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    pub fn start(lab: &Lab, http_threads: usize, echo: Vec<EchoConn>, predict: [Predictor; 2]) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let ns_path = format!("/var/run/netns/{}", lab.client.name());
        let mut threads = Vec::new();
        for t in 0..http_threads {
            let (stop, path, predict) = (stop.clone(), ns_path.clone(), predict.clone());
            threads.push(std::thread::spawn(move || {
                let mut r = LoadReport::default();
                if let Err(e) = netns::enter(&path) {
                    r.failures.push(format!("entering the client namespace: {e}"));
                    return r;
                }
                // Bounded: a stop flag the test sets, and a cap.
                for n in 0..1_000_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let v6 = (n + t as u64) % 2 == 1;
                    match client::http_get(vip_addr(v6, HTTP_PORT)) {
                        Ok((backend, local)) => {
                            r.requests += 1;
                            let want = predict[v6 as usize].backend(local);
                            if backend != want {
                                r.wrong_backend.push(format!("{local}: backend {backend}, table says {want}"));
                            }
                        }
                        Err(e) => r.failures.push(format!("HTTP over {}: {e:#}", if v6 { "IPv6" } else { "IPv4" })),
                    }
                }
                r
            }));
        }
        let stop2 = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut r = LoadReport::default();
            let mut conns: Vec<Option<EchoConn>> = echo.into_iter().map(Some).collect();
            for round in 0..1_000_000u64 {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                for (i, slot) in conns.iter_mut().enumerate() {
                    let Some(c) = slot else { continue };
                    let data: Vec<u8> = (0..600).map(|k| (k as u64 * 7 + round + i as u64) as u8).collect();
                    if let Err(e) = c.exchange(&data) {
                        r.failures.push(format!("echo connection {i} (backend {}): {e:#}", c.backend));
                        *slot = None;
                    }
                }
                r.echo_rounds += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            for (i, c) in conns.into_iter().enumerate() {
                if let Some(c) = c {
                    if let Err(e) = c.close() {
                        r.failures.push(format!("closing echo connection {i}: {e:#}"));
                    }
                }
            }
            r
        }));
        Ok(Load { stop, threads })
    }

    /// Stops the load and sums what every thread saw.
    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for t in self.threads {
            match t.join() {
                Ok(r) => {
                    total.requests += r.requests;
                    total.echo_rounds += r.echo_rounds;
                    total.failures.extend(r.failures);
                    total.wrong_backend.extend(r.wrong_backend);
                }
                Err(_) => total.failures.push("a load thread panicked".into()),
            }
        }
        total
    }
}

/// Opens `n` long-lived echo connections (IPv4 and IPv6 in turn), each
/// checked against the table; returns them.
pub fn open_echo(lab: &Lab, n: usize, predict: &[Predictor; 2]) -> Result<Vec<EchoConn>> {
    lab.in_client(|| {
        let mut out = Vec::new();
        for i in 0..n {
            let v6 = i % 2 == 1;
            let mut c = EchoConn::open(vip_addr(v6, ECHO_PORT))?;
            c.exchange(b"hello")?;
            let want = predict[v6 as usize].backend(c.local_addr()?);
            anyhow::ensure!(c.backend == want, "echo connection {i} on backend {}, the table says {want}", c.backend);
            out.push(c);
        }
        Ok(out)
    })
}

/// The client namespace's TCP counters (`/proc/net/snmp` and `netstat`).
pub fn client_tcp_counters(lab: &Lab) -> Result<HashMap<String, u64>> {
    lab.in_client(|| {
        let mut out = HashMap::new();
        // thread-self: this thread is the one inside the namespace.
        for file in ["/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"] {
            let text = std::fs::read_to_string(file)?;
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [names, values] = pair else { continue };
                let (prefix, names) = names.split_once(':').context("snmp line")?;
                let values = values.split_once(':').context("snmp line")?.1;
                if prefix != "Tcp" && prefix != "TcpExt" {
                    continue;
                }
                for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                    out.insert(n.to_string(), v.parse().unwrap_or(0));
                }
            }
        }
        Ok(out)
    })
}

/// Predictors for the HTTP VIPs (IPv4, IPv6) from balancer `i`.
pub fn http_predictors(lab: &Lab, i: usize) -> Result<[Predictor; 2]> {
    Ok([Predictor::read(lab, i, vip_addr(false, HTTP_PORT))?, Predictor::read(lab, i, vip_addr(true, HTTP_PORT))?])
}

/// Predictors for the echo VIPs (IPv4, IPv6) from balancer `i`.
pub fn echo_predictors(lab: &Lab, i: usize) -> Result<[Predictor; 2]> {
    Ok([Predictor::read(lab, i, vip_addr(false, ECHO_PORT))?, Predictor::read(lab, i, vip_addr(true, ECHO_PORT))?])
}
