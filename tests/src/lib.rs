//! The end-to-end lab: a client, a router, one to three balancer hosts running
//! the real `lb-control` daemon with the balancer on their veth, and
//! backends with the decap program, the VIPs on loopback and real servers.
//!
//! ```text
//!  client (c0) ── rc0 ┐          ┌ rb0 ── b0 backend 0 (decap, VIP on lo)
//!                     router ────┼ rb1 ── b0 backend 1
//!  balancer (l0) ─ rl0┘          └ rb2 ── b0 backend 2
//! ```
//!
//! The router sends VIP traffic to the balancer(s) (ECMP with L4 hashing
//! when there are two); a balancer encapsulates to a backend through its
//! gateway, the router; the backend decapsulates and answers the client
//! directly (direct server return).

pub mod bgp;
pub mod client;
pub mod servers;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_control::dataplane::{detach_all, Decap, XdpMode};
use lb_testkit::netns::{self, veth, Netns};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x10);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
/// Ports the backends serve: HTTP (one line answers), echo (greeting, then
/// every byte back), UDP echo.
pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 7;
pub const UDP_PORT: u16 = 53;
/// Where each balancer's daemon listens, inside its namespace.
pub const API: &str = "127.0.0.1:9780";
/// Egress MTU of the balancers (the veths' MTU).
pub const MTU: u32 = 1500;

pub fn backend4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 10 + i as u8, 2)
}

pub fn backend6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10 + i as u16, 0, 0, 0, 0, 0, 2)
}

pub fn balancer4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 2 + i as u8, 2)
}

pub fn balancer6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 2 + i as u16, 0, 0, 0, 0, 0, 2)
}

/// A binary of this workspace, built next to the test executable.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().context("executable has a directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} is not built: run `cargo build --workspace --bins` first", path.display());
    }
    Ok(path)
}

/// Starts `lb-control --config CONFIG` inside `ns`, its output appended to
/// `log`.
pub fn spawn_daemon(ns: &Netns, config: &Path, log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    ns.command(workspace_bin("lb-control")?)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting lb-control")
}

/// A balancer host of the lab.
pub struct Balancer {
    pub ns: Netns,
    pub index: usize,
    pub pin_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub daemon: Option<Child>,
}

impl Balancer {
    /// Runs `lbctl` inside this balancer's namespace.
    pub fn lbctl(&self, args: &[&str]) -> Result<String> {
        let out = self
            .ns
            .command(workspace_bin("lbctl")?)
            .args(["--api", &format!("http://{API}")])
            .args(args)
            .output()
            .context("running lbctl")?;
        if !out.status.success() {
            bail!("lbctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A GET on this balancer's API.
    pub fn api_get(&self, path: &str) -> Result<serde_json::Value> {
        let text = self.api_get_text(path)?;
        serde_json::from_str(&text).with_context(|| format!("GET {path}: not JSON: {text}"))
    }

    /// A GET whose answer is text (`/metrics`, `/readyz`).
    pub fn api_get_text(&self, path: &str) -> Result<String> {
        let url = format!("http://{API}{path}");
        self.ns.run(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
            let mut resp = agent.get(&url).call().with_context(|| format!("GET {url}"))?;
            Ok(resp.body_mut().read_to_string()?)
        })
    }

    /// A mutating call on this balancer's API (the lab sets no token).
    pub fn api_send(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value> {
        let url = format!("http://{API}{path}");
        let method = method.to_string();
        self.ns.run(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
            let mut resp = match (method.as_str(), body) {
                ("POST", Some(b)) => agent.post(&url).send_json(b),
                ("PUT", Some(b)) => agent.put(&url).send_json(b),
                ("PATCH", Some(b)) => agent.patch(&url).send_json(b),
                ("DELETE", None) => agent.delete(&url).call(),
                (m, _) => bail!("unsupported call {m} {url}"),
            }
            .with_context(|| format!("{method} {url}"))?;
            Ok(resp.body_mut().read_json()?)
        })
    }

    /// Starts the daemon and waits (bounded) until it reports ready.
    pub fn start(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            bail!("daemon {} already running", self.index);
        }
        self.daemon = Some(spawn_daemon(&self.ns, &self.config_path, &self.log_path)?);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.daemon.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.daemon = None;
                bail!("lb-control exited ({status}) during start-up:\n{}", self.log());
            }
            let url = format!("http://{API}/readyz");
            let ok = self.ns.run(move || {
                let agent: ureq::Agent =
                    ureq::Agent::config_builder().timeout_global(Some(Duration::from_millis(500))).build().into();
                Ok(agent.get(&url).call().is_ok())
            })?;
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("lb-control not ready after {timeout:?}:\n{}", self.log())
    }

    /// Stops the daemon with SIGTERM (the balancer stays attached).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.daemon.take() else { return Ok(()) };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("lb-control did not stop on SIGTERM:\n{}", self.log())
    }

    /// Sends SIGHUP: reload the config file.
    pub fn reload(&self) -> Result<()> {
        let child = self.daemon.as_ref().context("daemon not running")?;
        // SAFETY: signalling our own child.
        if unsafe { libc::kill(child.id() as i32, libc::SIGHUP) } != 0 {
            bail!("kill -HUP: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A global counter of this balancer, by name.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let stats = self.api_get("/v1/stats")?;
        stats["global"][name]["packets"].as_u64().with_context(|| format!("no counter {name}"))
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = detach_all(&self.pin_dir);
    }
}

/// A backend host: decap on its veth, the VIPs on loopback, servers.
pub struct Backend {
    pub ns: Netns,
    pub index: usize,
    _decap: Decap,
}

pub struct Lab {
    pub dir: PathBuf,
    pub client: Netns,
    pub router: Netns,
    pub balancers: Vec<Balancer>,
    pub backends: Vec<Backend>,
    pub servers: servers::Servers,
    _router_xdp: Vec<Decap>,
}

/// Turns off IPv6 duplicate address detection in a namespace: addresses are
/// usable at once (the lab's addresses are unique by construction).
fn no_dad(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
}

fn no_rp_filter(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "0")
}

fn addr(ns: &Netns, iface: &str, cidr: &str) -> Result<()> {
    if cidr.contains(':') {
        ns.ip(&["-6", "addr", "add", cidr, "dev", iface, "nodad"])?;
    } else {
        ns.ip(&["addr", "add", cidr, "dev", iface])?;
    }
    Ok(())
}

fn default_routes(ns: &Netns, gw4: &str, gw6: &str) -> Result<()> {
    ns.ip(&["route", "add", "default", "via", gw4])?;
    ns.ip(&["-6", "route", "add", "default", "via", gw6])?;
    Ok(())
}

impl Lab {
    /// Builds the topology and starts the backends' servers. The balancer
    /// daemons are configured ([`Lab::config`]) but not started.
    pub fn build(backends: usize, balancers: usize) -> Result<Lab> {
        anyhow::ensure!((1..=8).contains(&backends) && (1..=3).contains(&balancers), "1-8 backends, 1-3 balancers");
        let dir = std::env::temp_dir().join(netns::unique_name("xdp-lb-lab-"));
        std::fs::create_dir_all(&dir)?;
        let client = Netns::new(netns::unique_name("lbc"))?;
        let router = Netns::new(netns::unique_name("lbr"))?;
        for ns in [&client, &router] {
            no_dad(ns)?;
        }
        no_rp_filter(&router)?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // ECMP over the balancers by 5-tuple.
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        router.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;

        veth(&client, "c0", &router, "rc0")?;
        addr(&client, "c0", "10.10.1.2/24")?;
        addr(&client, "c0", "fd00:1::2/64")?;
        addr(&router, "rc0", "10.10.1.1/24")?;
        addr(&router, "rc0", "fd00:1::1/64")?;
        default_routes(&client, "10.10.1.1", "fd00:1::1")?;
        // The partial-checksum state of locally generated TCP is lost when
        // the balancer's native XDP rewrites the frame: send full checksums.
        client.run(|| netns::run("ethtool", &["-K", "c0", "tx", "off"]).map(|_| ()))?;

        let mut lb_list = Vec::new();
        let mut router_xdp = Vec::new();
        for i in 0..balancers {
            let ns = Netns::new(netns::unique_name("lbl"))?;
            no_dad(&ns)?;
            let r_if = format!("rl{i}");
            veth(&ns, "l0", &router, &r_if)?;
            addr(&ns, "l0", &format!("{}/24", balancer4(i)))?;
            addr(&ns, "l0", &format!("{}/64", balancer6(i)))?;
            addr(&router, &r_if, &format!("10.10.{}.1/24", 2 + i))?;
            addr(&router, &r_if, &format!("fd00:{}::1/64", 2 + i))?;
            default_routes(&ns, &format!("10.10.{}.1", 2 + i), &format!("fd00:{}::1", 2 + i))?;
            // XDP_TX'd frames reach a veth peer only with an XDP program
            // on it: the decap program with no addresses passes everything.
            let r_if2 = r_if.clone();
            router_xdp.push(router.run(move || {
                let mut d = Decap::load()?;
                d.attach(&r_if2, XdpMode::Native, None)?;
                Ok(d)
            })?);
            let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", netns::unique_name("xdp-lb-lab")));
            let sub = dir.join(format!("lb{i}"));
            std::fs::create_dir_all(&sub)?;
            lb_list.push(Balancer {
                ns,
                index: i,
                pin_dir,
                config_path: sub.join("lb.toml"),
                log_path: sub.join("lb-control.log"),
                daemon: None,
            });
        }
        let mut be_list = Vec::new();
        for j in 0..backends {
            let ns = Netns::new(netns::unique_name("lbb"))?;
            no_dad(&ns)?;
            no_rp_filter(&ns)?;
            let r_if = format!("rb{j}");
            veth(&ns, "b0", &router, &r_if)?;
            ns.sysctl("net.ipv4.conf.b0.rp_filter", "0")?;
            addr(&ns, "b0", &format!("{}/24", backend4(j)))?;
            addr(&ns, "b0", &format!("{}/64", backend6(j)))?;
            addr(&router, &r_if, &format!("10.10.{}.1/24", 10 + j))?;
            addr(&router, &r_if, &format!("fd00:{:x}::1/64", 0x10 + j))?;
            default_routes(&ns, &format!("10.10.{}.1", 10 + j), &format!("fd00:{:x}::1", 0x10 + j))?;
            // Second chance: a backend's decap program sends packets on with
            // XDP_TX, which reaches the router only with an XDP program on
            // its end (as for the balancers above).
            let r_if2 = r_if.clone();
            router_xdp.push(router.run(move || {
                let mut d = Decap::load()?;
                d.attach(&r_if2, XdpMode::Native, None)?;
                Ok(d)
            })?);
            ns.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            ns.ip(&["-6", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
            let decap = ns.run(move || {
                let mut d = Decap::load()?;
                d.add_addr(IpAddr::V4(backend4(j)))?;
                d.add_addr(IpAddr::V6(backend6(j)))?;
                d.attach("b0", XdpMode::Native, None)?;
                Ok(d)
            })?;
            be_list.push(Backend { ns, index: j, _decap: decap });
        }
        let servers = servers::Servers::start(&be_list)?;
        let lab = Lab { dir, client, router, balancers: lb_list, backends: be_list, servers, _router_xdp: router_xdp };
        lab.route_via(&(0..balancers).collect::<Vec<_>>())?;
        for b in &lab.balancers {
            std::fs::write(&b.config_path, lab.config(b.index, &lab.default_vips()))?;
        }
        Ok(lab)
    }

    /// The lab's VIPs as config text: HTTP, echo and UDP on the IPv4 and the
    /// IPv6 VIP, every backend with weight 1.
    pub fn default_vips(&self) -> String {
        let mut out = String::new();
        for (vip, v6) in [(VIP4.to_string(), false), (VIP6.to_string(), true)] {
            for (port, proto) in [(HTTP_PORT, "tcp"), (ECHO_PORT, "tcp"), (UDP_PORT, "udp")] {
                out += &format!("\n[[vip]]\naddress = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\n");
                for j in 0..self.backends.len() {
                    let b = if v6 { backend6(j).to_string() } else { backend4(j).to_string() };
                    out += &format!("[[vip.backend]]\naddress = \"{b}\"\n");
                }
            }
        }
        out
    }

    /// A balancer's config file with these VIP sections.
    pub fn config(&self, i: usize, vips: &str) -> String {
        let b = &self.balancers[i];
        format!(
            "interfaces = [\"l0\"]\nxdp_mode = \"native\"\npin_dir = \"{}\"\nstate_file = \"{}\"\n\n\
             [encap]\nsource_v4 = \"172.16.0.0/16\"\nsource_v6 = \"fd00:ffff::/96\"\nmtu = {MTU}\n\n\
             [limits]\nmax_vips = 32\nmax_backends = 64\nconn_table_size = 65536\n\n\
             [api]\nlisten = \"{API}\"\n{vips}",
            b.pin_dir.display(),
            b.config_path.with_file_name("state.json").display(),
        )
    }

    /// Starts every balancer's daemon.
    pub fn start_balancers(&mut self) -> Result<()> {
        for b in &mut self.balancers {
            b.start()?;
        }
        Ok(())
    }

    /// Routes the VIPs through these balancers only (ECMP when several).
    pub fn route_via(&self, balancers: &[usize]) -> Result<()> {
        for (prefix, v6) in [("10.100.0.0/24", false), ("fd00:100::/64", true)] {
            let mut args: Vec<String> = Vec::new();
            if v6 {
                args.push("-6".into());
            }
            args.extend(["route".into(), "replace".into(), prefix.into()]);
            for &i in balancers {
                let via = if v6 { balancer6(i).to_string() } else { balancer4(i).to_string() };
                if balancers.len() > 1 {
                    args.push("nexthop".into());
                }
                args.extend(["via".into(), via, "dev".into(), format!("rl{i}")]);
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            self.router.ip(&refs)?;
        }
        Ok(())
    }

    /// The limits every lab balancer is configured with (see [`Lab::config`]).
    pub fn limits() -> lb_control::dataplane::Limits {
        lb_control::dataplane::Limits { ring_size: 65537, max_vips: 32, max_reals: 65, conn_table_size: 65536 }
    }

    /// Opens balancer `i`'s pinned maps (a second handle on the daemon's
    /// live data plane) to read what it would do.
    pub fn dataplane(&self, i: usize) -> Result<lb_control::dataplane::Balancer> {
        Ok(lb_control::dataplane::Balancer::open(Self::limits(), Some(&self.balancers[i].pin_dir))?)
    }

    /// The backend (index) a new flow from `client` to `vip` gets by the
    /// Maglev table balancer `bal` holds now.
    pub fn predict(
        bal: &lb_control::dataplane::Balancer,
        vip: SocketAddr,
        proto: u8,
        client: SocketAddr,
    ) -> Result<usize> {
        let (vaddr, family) = lb_control::dataplane::ip_to_addr(vip.ip());
        let key = lb_common::VipKey { addr: vaddr, port: vip.port().to_be(), proto, family };
        let meta = bal.vip(&key).with_context(|| format!("no VIP {vip} in the maps"))?;
        let ring = bal.ring(meta.ring)?;
        let (caddr, _) = lb_control::dataplane::ip_to_addr(client.ip());
        let hash = lb_common::flow_hash(&caddr, client.port().to_be(), vip.port().to_be(), proto);
        let index = ring[lb_common::ring_slot(hash, ring.len() as u32) as usize];
        let real = bal.real(index)?;
        let bytes: Vec<u8> = real.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let addr = if real.family == lb_common::FAMILY_V4 {
            IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
        } else {
            IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))
        };
        (0..8)
            .find(|&j| IpAddr::V4(backend4(j)) == addr || IpAddr::V6(backend6(j)) == addr)
            .with_context(|| format!("{addr} is not a lab backend"))
    }

    /// Runs `f` inside the client's namespace (sockets made there stay
    /// there, and can be used from any thread afterwards).
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        self.client.run(f)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.stop();
        // Balancers (daemons, pins) and namespaces clean up in their own
        // Drop, in field order after this.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which backend answered: its index, from the greeting `backend-<i>`.
pub fn parse_greeting(line: &str) -> Result<usize> {
    line.trim()
        .strip_prefix("backend-")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("unexpected greeting {line:?}"))
}

pub fn vip_addr(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::new(IpAddr::V6(VIP6), port)
    } else {
        SocketAddr::new(IpAddr::V4(VIP4), port)
    }
}
