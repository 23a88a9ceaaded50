//! The `lb-control` daemon end to end: a real daemon process with real BPF
//! maps, in network namespaces of its own, driven through its REST API, its
//! signals and `lbctl`, with the data plane checked by running packets with
//! `BPF_PROG_TEST_RUN` against the daemon's live (pinned) maps.
//!
//! Each test builds its own lab ([`Lab`]): a namespace "lb" holding the
//! balancer's interface `lbd0` (a veth, fixed MAC, 10.99.0.2/24, default
//! route via 10.99.0.1) whose peer `gwd0` lives in a namespace "gw" (fixed
//! MAC, 10.99.0.1/24, fd99::1/64), a config file, token and state file in a
//! temporary directory, a pin directory under /sys/fs/bpf, and the daemon
//! started inside "lb" (its API on that namespace's 127.0.0.1:9780, so tests
//! run in parallel without clashing). Everything is removed when the lab is
//! dropped, also when a test fails; a failing test prints the daemon's log.
//! No packet leaves the two namespaces: the data plane is exercised with
//! test runs only.
//!
//! Needs root, bpffs on /sys/fs/bpf and iproute2.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    hash::{Hash as _, Hasher as _},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use common::{frame4, frame6, run_prog, tcp4, udp6, CLIENT4, CLIENT6, XDP_PASS, XDP_TX};
use lb_common::{addr_v4, ConnEntry, FlowKey, FAMILY_V4, IPPROTO_TCP};
use lb_control::{
    config::Config,
    dataplane::{detach_all, link_pin, versioned_pin_dir, Balancer, Limits},
};
use lb_testkit::{
    netns::{unique_name, Netns},
    packet_builder as pb,
};
use serde_json::{json, Value};

// ---- the lab ---------------------------------------------------------------

const LB_IF: &str = "lbd0";
const GW_IF: &str = "gwd0";
const LB_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0xd0, 0x00, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0xd0, 0x00, 0x01];
const API: &str = "http://127.0.0.1:9780";
const TOKEN: &str = "daemon-test-token-5f0c1e";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);

/// The VIPs of the config file every lab starts with.
const BASE_VIPS: &str = r#"
[[vip]]
address = "10.0.0.10"
port = 80
protocol = "tcp"

[[vip.backend]]
address = "10.1.0.1"

[[vip.backend]]
address = "10.1.0.2"
weight = 2

[[vip]]
address = "fc00::10"
port = 53
protocol = "udp"

[[vip.backend]]
address = "fc00:1::1"
"#;

const VIP_HTTP: &str = "tcp:10.0.0.10:80";
const VIP_DNS6: &str = "udp:[fc00::10]:53";
const HTTP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0x10);
const REAL1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const REAL2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const REAL6: Ipv6Addr = Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 1);

/// What `GET /v1/vips` answers for [`BASE_VIPS`].
/// A backend list without each backend's health (the operator's part).
fn weights(list: Value) -> Value {
    let mut list = list;
    for b in list.as_array_mut().into_iter().flatten() {
        if let Some(o) = b.as_object_mut() {
            o.remove("health");
            o.remove("failed_open");
        }
    }
    list
}

fn base_vips_json() -> Value {
    json!([
        {"vip": VIP_HTTP, "flags": [], "backends": [
            {"address": "10.1.0.1", "weight": 1},
            {"address": "10.1.0.2", "weight": 2},
        ]},
        {"vip": VIP_DNS6, "flags": [], "backends": [
            {"address": "fc00:1::1", "weight": 1},
        ]},
    ])
}

fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// One test's namespaces, files, pins and daemon. Dropping it kills the
/// daemon, removes the pins (which detaches the program), the temporary
/// directory and the namespaces.
struct Lab {
    daemon: Option<Child>,
    dir: PathBuf,
    pin_dir: PathBuf,
    config: PathBuf,
    token_file: PathBuf,
    state_file: PathBuf,
    log: PathBuf,
    limits: Limits,
    // Dropped after Drop::drop ran, in this order.
    lb: Netns,
    gw: Netns,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Err(e) = detach_all(&self.pin_dir) {
            eprintln!("cleaning up pins under {}: {e}", self.pin_dir.display());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    /// Builds the namespaces and files and starts the daemon; returns once
    /// `/readyz` answers.
    fn new() -> Lab {
        let lb = Netns::new(unique_name("lbd")).expect("creating a network namespace (needs root and iproute2)");
        let gw = Netns::new(unique_name("gwd")).expect("creating a network namespace");
        let tag = lb.name().to_string();
        let dir = std::env::temp_dir().join(format!("lb-daemon-test-{tag}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lb-daemon-test-{tag}"));
        let mut lab = Lab {
            daemon: None,
            config: dir.join("lb.toml"),
            token_file: dir.join("token"),
            state_file: dir.join("state.json"),
            log: dir.join("daemon.log"),
            dir,
            pin_dir,
            limits: Limits::default(),
            lb,
            gw,
        };
        // Leftovers of an earlier run that had the same process id.
        let _ = detach_all(&lab.pin_dir);
        let _ = fs::remove_dir_all(&lab.dir);
        fs::create_dir_all(&lab.dir).unwrap();
        fs::write(&lab.token_file, format!("{TOKEN}\n")).unwrap();
        lab.write_config(BASE_VIPS);
        lab.limits = Config::load(&lab.config).expect("the lab's config is valid").limits;
        lab.network();
        lab.start();
        lab
    }

    fn network(&self) {
        let (lb, gw) = (&self.lb, &self.gw);
        let (lb_mac, gw_mac) = (mac_str(&LB_MAC), mac_str(&GW_MAC));
        lb.ip(&[
            "link",
            "add",
            LB_IF,
            "address",
            &lb_mac,
            "type",
            "veth",
            "peer",
            "name",
            GW_IF,
            "address",
            &gw_mac,
            "netns",
            gw.name(),
        ])
        .unwrap();
        gw.ip(&["addr", "add", "10.99.0.1/24", "dev", GW_IF]).unwrap();
        gw.ip(&["addr", "add", "fd99::1/64", "dev", GW_IF, "nodad"]).unwrap();
        gw.ip(&["link", "set", GW_IF, "up"]).unwrap();
        lb.ip(&["addr", "add", "10.99.0.2/24", "dev", LB_IF]).unwrap();
        lb.ip(&["addr", "add", "fd99::2/64", "dev", LB_IF, "nodad"]).unwrap();
        lb.ip(&["link", "set", LB_IF, "up"]).unwrap();
        lb.ip(&["route", "add", "default", "via", "10.99.0.1", "dev", LB_IF]).unwrap();
    }

    /// The config file's text with these `[[vip]]` tables.
    fn config_text(&self, vips: &str) -> String {
        format!(
            r#"interfaces = ["{LB_IF}"]
xdp_mode = "native"
pin_dir = "{pin}"
state_file = "{state}"

[limits]
ring_size = 65537
max_vips = 16
max_backends = 64
conn_table_size = 4096

[api]
listen = "127.0.0.1:9780"
token_file = "{token}"
max_body_bytes = 4096
{vips}"#,
            pin = self.pin_dir.display(),
            state = self.state_file.display(),
            token = self.token_file.display(),
        )
    }

    fn write_config(&self, vips: &str) {
        fs::write(&self.config, self.config_text(vips)).unwrap();
    }

    /// Everything the daemon wrote (stdout and stderr, every start).
    fn logs(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- daemon log ({}) ---\n{text}--- end of daemon log ---", self.log.display())
    }

    fn pid(&self) -> i32 {
        self.daemon.as_ref().expect("the daemon is running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own, not yet reaped, child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill({sig})");
    }

    /// Starts the daemon in the "lb" namespace and waits for `/readyz`.
    fn start(&mut self) {
        self.start_with(|_| {});
    }

    /// [`Lab::start`], with `adjust` applied to the command first.
    fn start_with(&mut self, adjust: impl FnOnce(&mut Command)) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = self.lb.command(env!("CARGO_BIN_EXE_lb-control"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("LB_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. The daemon dies with the test
        // thread that started it, even if the test process is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        adjust(&mut cmd);
        self.daemon = Some(cmd.spawn().expect("spawning lb-control"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                self.daemon = None;
                panic!("the daemon exited ({status}) before it was ready\n{}", self.logs());
            }
            match self.try_http("GET", "/readyz", None, None) {
                Ok(r) if r.status == 200 && r.body == "ready\n" => return,
                Ok(r) => last = format!("HTTP {}: {}", r.status, r.body),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(POLL);
        }
        panic!("/readyz did not answer within {READY_TIMEOUT:?} (last: {last})\n{}", self.logs());
    }

    /// SIGTERM, then waits (bounded) for the daemon to exit.
    fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.daemon.take().unwrap();
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(POLL);
        }
        // SAFETY: our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        panic!("the daemon did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}", self.logs());
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.daemon.as_mut().expect("started").try_wait().unwrap() {
            self.daemon = None;
            panic!("the daemon exited ({status})\n{}", self.logs());
        }
    }

    /// Waits (bounded) for the log to contain `needle`.
    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            if start.elapsed() > timeout {
                panic!("the daemon's log never mentioned {needle:?} within {timeout:?}\n{}", self.logs());
            }
            std::thread::sleep(POLL);
        }
    }

    // ---- HTTP ----------------------------------------------------------

    /// One HTTP request to the daemon, made from inside the namespace.
    fn try_http(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        auth: Option<&str>,
    ) -> anyhow::Result<Resp> {
        let url = format!("{API}{path}");
        let method = method.to_string();
        let auth = auth.map(str::to_string);
        self.lb.run(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .max_idle_connections(0)
                .build()
                .into();
            let mut req = ureq::http::Request::builder().method(method.as_str()).uri(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            let resp = match body {
                Some((content_type, bytes)) => {
                    let req = if content_type.is_empty() { req } else { req.header("Content-Type", content_type) };
                    agent.run(req.body(bytes)?)
                }
                None => agent.run(req.body(())?),
            };
            let mut resp = resp.with_context(|| format!("{method} {url}"))?;
            let status = resp.status().as_u16();
            let content_type =
                resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            // Lossy: a capture's pcapng is binary.
            let body = String::from_utf8_lossy(&resp.body_mut().read_to_vec()?).into_owned();
            Ok(Resp { status, content_type, body })
        })
    }

    fn http(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>, auth: Option<&str>) -> Resp {
        self.try_http(method, path, body, auth).unwrap_or_else(|e| panic!("{method} {path}: {e:#}\n{}", self.logs()))
    }

    /// A GET without a token.
    fn get(&self, path: &str) -> Resp {
        self.http("GET", path, None, None)
    }

    /// A GET that must answer 200 with JSON.
    fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// A call with the right token and, if any, a JSON body.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let body = body.map(|b| ("application/json", serde_json::to_vec(b).unwrap()));
        self.http(method, path, body, Some(&format!("Bearer {TOKEN}")))
    }

    fn vips(&self) -> Value {
        self.get_json("/v1/vips")
    }

    // ---- data plane ------------------------------------------------------

    /// The daemon's pinned maps, adopted (never created: they must exist),
    /// with a program of our own for test runs.
    fn balancer(&self) -> Balancer {
        let vips = versioned_pin_dir(&self.pin_dir).join(lb_common::map_names::VIPS);
        assert!(vips.exists(), "no pinned maps at {}\n{}", vips.display(), self.logs());
        let bal = Balancer::open(self.limits, Some(&self.pin_dir)).expect("opening the daemon's pinned maps");
        assert!(bal.adopted(), "the maps were not adopted");
        bal
    }

    /// `ip -d link show lbd0` in the "lb" namespace.
    fn link(&self) -> String {
        self.lb.ip(&["-d", "link", "show", LB_IF]).unwrap()
    }

    /// Runs an `lbctl` command inside the namespace (with the token file
    /// when `token`); returns (exit status, stdout, stderr).
    fn lbctl(&self, token: bool, args: &[&str]) -> (ExitStatus, String, String) {
        let mut cmd = self.lb.command(env!("CARGO_BIN_EXE_lbctl"));
        cmd.env_remove("LBCTL_API").env_remove("LBCTL_TOKEN_FILE").arg("--api").arg(API);
        if token {
            cmd.arg("--token-file").arg(&self.token_file);
        }
        cmd.args(args);
        run_bounded(cmd, &self.dir, &format!("lbctl {}", args.join(" ")))
    }
}

/// Runs a command to completion, bounded by [`COMMAND_TIMEOUT`]; output goes
/// through files in `dir` so nothing can block on a full pipe.
fn run_bounded(mut cmd: Command, dir: &Path, what: &str) -> (ExitStatus, String, String) {
    let n = unique_name("out");
    let (out_path, err_path) = (dir.join(format!("{n}.stdout")), dir.join(format!("{n}.stderr")));
    cmd.stdin(Stdio::null()).stdout(fs::File::create(&out_path).unwrap()).stderr(fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    };
    let out = fs::read_to_string(&out_path).unwrap();
    let err = fs::read_to_string(&err_path).unwrap();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    (status, out, err)
}

#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Checks a success status; returns the JSON body.
    fn ok(&self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(self.content_type.starts_with("application/json"), "{what}: content type {}", self.content_type);
        self.json()
    }

    /// Checks an error answer: status, `{"error": {"code", "message"}}`.
    /// Returns the message.
    fn error(&self, status: u16, code: &str, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(self.content_type.starts_with("application/json"), "{what}: content type {}", self.content_type);
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{what}: {}", self.body);
        let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: no message: {}", self.body));
        assert!(!msg.is_empty(), "{what}: empty message");
        msg.to_string()
    }
}

// ---- packets -----------------------------------------------------------------

fn xdp(bal: &mut Balancer, frame: &[u8]) -> (u32, Vec<u8>) {
    let (action, out, _) = run_prog(bal.program(), frame);
    (action, out)
}

/// Checks the Ethernet header of a forwarded frame: to the gateway's MAC
/// (the daemon found it through netlink), from the interface's.
fn check_eth(out: &[u8], ethertype: [u8; 2]) {
    assert_eq!(out[0..6], GW_MAC, "destination MAC is the gateway's");
    assert_eq!(out[6..12], LB_MAC, "source MAC is lbd0's");
    assert_eq!(out[12..14], ethertype, "outer ethertype");
}

/// Where a TCP packet from CLIENT4:`sport` to `vip`:`dport` goes: `Some`
/// backend when it is tunnelled (XDP_TX), `None` when it is passed to the
/// kernel. Any other action fails the test.
fn route4(bal: &mut Balancer, vip: Ipv4Addr, dport: u16, sport: u16, flags: u8) -> Option<Ipv4Addr> {
    let payload: &[u8] = if flags & pb::TCP_SYN != 0 { &[] } else { b"data" };
    let (action, out) = xdp(bal, &frame4(&tcp4(CLIENT4, vip, sport, dport, flags, payload)));
    match action {
        XDP_PASS => None,
        XDP_TX => {
            check_eth(&out, [0x08, 0x00]);
            assert_eq!(out[23], 4, "IP-in-IP");
            Some(Ipv4Addr::new(out[30], out[31], out[32], out[33]))
        }
        other => panic!("{vip}:{dport} from port {sport}: unexpected XDP action {other}"),
    }
}

fn syn4(bal: &mut Balancer, vip: Ipv4Addr, dport: u16, sport: u16) -> Option<Ipv4Addr> {
    route4(bal, vip, dport, sport, pb::TCP_SYN)
}

/// Where new connections from 64 client ports go, with how many each.
fn spread4(bal: &mut Balancer, vip: Ipv4Addr, dport: u16, first_port: u16) -> BTreeMap<Ipv4Addr, usize> {
    let mut seen = BTreeMap::new();
    for sport in first_port..first_port + 64 {
        let b = syn4(bal, vip, dport, sport).unwrap_or_else(|| panic!("SYN to {vip}:{dport} from {sport} was passed"));
        *seen.entry(b).or_default() += 1;
    }
    seen
}

/// Where a UDP datagram from CLIENT6:`sport` to `vip`:`dport` goes (IPv6
/// in IPv6), as [`route4`].
fn udp6_route(bal: &mut Balancer, vip: Ipv6Addr, dport: u16, sport: u16) -> Option<Ipv6Addr> {
    let (action, out) = xdp(bal, &frame6(&udp6(CLIENT6, vip, sport, dport, b"query")));
    match action {
        XDP_PASS => None,
        XDP_TX => {
            check_eth(&out, [0x86, 0xdd]);
            assert_eq!(out[20], 41, "IPv6-in-IPv6");
            Some(Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap()))
        }
        other => panic!("{vip}:{dport}: unexpected XDP action {other}"),
    }
}

fn flow4(client: Ipv4Addr, sport: u16, vip: Ipv4Addr, dport: u16) -> FlowKey {
    FlowKey::new(FAMILY_V4, IPPROTO_TCP, addr_v4(client.octets()), sport.to_be(), addr_v4(vip.octets()), dport.to_be())
}

/// What the data plane serves, in a comparable form: every VIPS entry with
/// a digest of its ring, and every backend slot in use.
fn dataplane_snapshot(bal: &Balancer) -> Vec<String> {
    let mut out: Vec<String> = bal
        .vips()
        .unwrap()
        .into_iter()
        .map(|(key, meta)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bal.ring(meta.ring).unwrap().hash(&mut h);
            format!("{key:?} -> {meta:?} ring digest {:016x}", h.finish())
        })
        .collect();
    out.sort();
    for index in 1..bal.limits().max_reals {
        let real = bal.real(index).unwrap();
        if real.family != 0 {
            out.push(format!("real {index}: {real:?}"));
        }
    }
    out
}

/// The id of the XDP program attached, from `ip -d link show` ("prog/xdp id N").
fn attached_prog_id(link: &str) -> Option<u32> {
    let at = link.find("prog/xdp id ")? + "prog/xdp id ".len();
    link[at..].split_whitespace().next()?.parse().ok()
}

fn pinned_map_ids(pin_dir: &Path) -> BTreeMap<String, u32> {
    let dir = versioned_pin_dir(pin_dir);
    lb_common::map_names::BALANCER_MAPS
        .iter()
        .map(|name| {
            let info =
                aya::maps::MapInfo::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("pinned map {name}: {e}"));
            (name.to_string(), info.id())
        })
        .collect()
}

// ---- 1. every endpoint ---------------------------------------------------------

#[test]
fn every_endpoint_answers_as_documented() {
    let lab = Lab::new();

    // Probes.
    let r = lab.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = lab.get("/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));

    // The OpenAPI document documents every route.
    let doc = lab.get("/v1/openapi.json").ok(200, "openapi");
    let paths = doc["paths"].as_object().expect("\"paths\" is an object");
    for (method, path) in lb_control::api::ROUTES {
        assert!(
            paths.get(*path).and_then(|p| p.get(method.to_lowercase())).is_some(),
            "{method} {path} not documented"
        );
    }

    // The config's VIPs.
    assert_eq!(lab.vips(), base_vips_json());
    assert_eq!(lab.get_json(&format!("/v1/vips/{VIP_HTTP}")), base_vips_json()[0]);
    assert_eq!(lab.get_json(&format!("/v1/vips/{VIP_DNS6}")), base_vips_json()[1], "an IPv6 VIP in the path");
    assert_eq!(weights(lab.get_json(&format!("/v1/vips/{VIP_DNS6}/backends"))), base_vips_json()[1]["backends"]);

    // POST a VIP; the weight defaults to 1; flags are kept.
    let new = "tcp:10.0.0.20:443";
    let r = lab.call(
        "POST",
        "/v1/vips",
        Some(&json!({"vip": new, "flags": ["hash-no-src-port"], "backends": [{"address": "10.1.0.3"}]})),
    );
    let applied = r.ok(201, "POST /v1/vips");
    assert_eq!(applied["applied"]["vips_added"], 1, "{applied}");
    assert_eq!(applied["applied"]["backends_added"], 1, "{applied}");
    let want = json!({"vip": new, "flags": ["hash-no-src-port"], "backends": [{"address": "10.1.0.3", "weight": 1}]});
    assert_eq!(lab.get_json(&format!("/v1/vips/{new}")), want);
    assert_eq!(lab.vips().as_array().unwrap().len(), 3);

    // Backends: POST one, PUT the list, PATCH weight and drain, DELETE one.
    let backends = format!("/v1/vips/{new}/backends");
    assert_eq!(weights(lab.get_json(&backends)), json!([{"address": "10.1.0.3", "weight": 1}]));
    lab.call("POST", &backends, Some(&json!({"address": "10.1.0.4", "weight": 5}))).ok(201, "POST backend");
    assert_eq!(
        weights(lab.get_json(&backends)),
        json!([{"address": "10.1.0.3", "weight": 1}, {"address": "10.1.0.4", "weight": 5}])
    );
    let r = lab.call("PUT", &backends, Some(&json!([{"address": "10.1.0.5", "weight": 2}, {"address": "10.1.0.6"}])));
    let applied = r.ok(200, "PUT backends");
    assert_eq!(applied["applied"]["tables_written"], 1, "{applied}");
    assert_eq!(
        weights(lab.get_json(&backends)),
        json!([{"address": "10.1.0.5", "weight": 2}, {"address": "10.1.0.6", "weight": 1}])
    );
    lab.call("PATCH", &format!("{backends}/10.1.0.5"), Some(&json!({"weight": 7}))).ok(200, "PATCH weight");
    lab.call("PATCH", &format!("{backends}/10.1.0.6"), Some(&json!({"drain": true}))).ok(200, "PATCH drain");
    assert_eq!(
        weights(lab.get_json(&backends)),
        json!([{"address": "10.1.0.5", "weight": 7}, {"address": "10.1.0.6", "weight": 0}])
    );
    lab.call("DELETE", &format!("{backends}/10.1.0.6"), None).ok(200, "DELETE backend");
    assert_eq!(weights(lab.get_json(&backends)), json!([{"address": "10.1.0.5", "weight": 7}]));

    // Stats and metrics count packets run through the daemon's maps.
    let before = lab.get_json("/v1/stats");
    for key in ["global", "actions", "vips", "backends"] {
        assert!(before[key].is_object(), "stats has no {key}: {before}");
    }
    assert!(before["vips"][new].is_object(), "stats of {new}: {before}");
    assert!(before["backends"]["10.1.0.5"].is_object(), "stats of backend 10.1.0.5: {before}");
    let mut bal = lab.balancer();
    for sport in 30000..30003 {
        assert!(syn4(&mut bal, HTTP4, 80, sport).is_some());
    }
    let after = lab.get_json("/v1/stats");
    let packets = |v: &Value, path: &[&str]| path.iter().fold(v, |v, k| &v[*k])["packets"].as_u64().unwrap_or(0);
    assert_eq!(packets(&after, &["vips", VIP_HTTP]) - packets(&before, &["vips", VIP_HTTP]), 3, "{after}");
    assert_eq!(packets(&after, &["actions", "tx"]) - packets(&before, &["actions", "tx"]), 3, "{after}");
    let to_backends: u64 = ["10.1.0.1", "10.1.0.2"]
        .iter()
        .map(|b| packets(&after, &["backends", b]) - packets(&before, &["backends", b]))
        .sum();
    assert_eq!(to_backends, 3, "{after}");

    let r = lab.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/openmetrics-text"), "{}", r.content_type);
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    let vip_line = format!("xdp_lb_vip_packets_total{{vip=\"{VIP_HTTP}\"}} {}", packets(&after, &["vips", VIP_HTTP]));
    for want in [
        vip_line.as_str(),
        "xdp_lb_ready 1",
        "xdp_lb_vips 3",
        "xdp_lb_reason_packets_total{reason=",
        "xdp_lb_backend_packets_total{backend=\"10.1.0.5\"}",
    ] {
        assert!(r.body.contains(want), "/metrics lacks {want:?}:\n{}", r.body);
    }

    // DELETE the VIP: gone from the API and from the data plane.
    let applied = lab.call("DELETE", &format!("/v1/vips/{new}"), None).ok(200, "DELETE VIP");
    assert_eq!(applied["applied"]["vips_removed"], 1, "{applied}");
    lab.get(&format!("/v1/vips/{new}")).error(404, "not_found", "GET removed VIP");
    assert_eq!(lab.vips(), base_vips_json());
    assert_eq!(syn4(&mut bal, Ipv4Addr::new(10, 0, 0, 20), 443, 30010), None);

    // Unknown endpoints and methods answer JSON errors too.
    lab.get("/v2/nothing").error(404, "not_found", "unknown endpoint");
    lab.call("PUT", "/v1/stats", None).error(405, "method_not_allowed", "PUT /v1/stats");
}

// ---- 2. bad inputs ---------------------------------------------------------------

#[test]
fn bad_requests_are_refused_with_the_right_error_and_change_nothing() {
    let lab = Lab::new();
    let bal = lab.balancer();
    let vips_before = lab.vips();
    let state_before = fs::read(&lab.state_file).expect("the daemon wrote its state file");
    let dataplane_before = dataplane_snapshot(&bal);
    let bearer = format!("Bearer {TOKEN}");
    let basic = format!("Basic {TOKEN}");
    let json_ct = "application/json";

    let big_backends: Vec<Value> =
        (0..200).map(|i| json!({"address": format!("10.2.{}.{}", i / 250, i % 250 + 1), "weight": 1})).collect();
    let big = serde_json::to_vec(&json!({"vip": "tcp:10.0.0.50:80", "backends": big_backends})).unwrap();
    assert!(big.len() > 4096, "the oversized body must exceed api.max_body_bytes");
    // 64 new backends + the IPv6 VIP's one: more than limits.max_backends,
    // in a body that fits the size limit.
    let crowd: Vec<Value> = (1..=64).map(|i| json!({"address": format!("10.3.0.{i}")})).collect();
    let crowd = serde_json::to_vec(&crowd).unwrap();
    assert!(crowd.len() < 4096);

    let http_backends = format!("/v1/vips/{VIP_HTTP}/backends");
    let dns_backends = format!("/v1/vips/{VIP_DNS6}/backends");
    let body = |s: &str| Some((json_ct, s.as_bytes().to_vec()));
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &str, String, Option<(&str, Vec<u8>)>, Option<&str>, u16, &str, &str)> = vec![
        // (what, method, path, body, auth, status, code, message contains)
        (
            "malformed JSON",
            "POST",
            "/v1/vips".into(),
            body(r#"{"vip": "tcp:10.0.0.50:80", "#),
            Some(&bearer),
            400,
            "invalid_json",
            "",
        ),
        (
            "wrong content type",
            "POST",
            "/v1/vips".into(),
            Some(("text/plain", br#"{"vip": "tcp:10.0.0.50:80"}"#.to_vec())),
            Some(&bearer),
            415,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            "no content type",
            "POST",
            "/v1/vips".into(),
            Some(("", br#"{"vip": "tcp:10.0.0.50:80"}"#.to_vec())),
            Some(&bearer),
            415,
            "unsupported_media_type",
            "",
        ),
        (
            "oversized body",
            "POST",
            "/v1/vips".into(),
            Some((json_ct, big.clone())),
            Some(&bearer),
            413,
            "payload_too_large",
            "",
        ),
        (
            "unknown field in a VIP",
            "POST",
            "/v1/vips".into(),
            body(r#"{"vip": "tcp:10.0.0.50:80", "bogus": 1}"#),
            Some(&bearer),
            400,
            "invalid_json",
            "bogus",
        ),
        (
            "unknown field in a backend",
            "POST",
            http_backends.clone(),
            body(r#"{"address": "10.1.0.9", "wieght": 2}"#),
            Some(&bearer),
            400,
            "invalid_json",
            "wieght",
        ),
        (
            "unknown field in a patch",
            "PATCH",
            format!("{http_backends}/10.1.0.1"),
            body(r#"{"weight": 3, "colour": "red"}"#),
            Some(&bearer),
            400,
            "invalid_json",
            "colour",
        ),
        (
            "unknown VIP: GET",
            "GET",
            "/v1/vips/tcp:10.0.0.99:80".into(),
            None,
            None,
            404,
            "not_found",
            "tcp:10.0.0.99:80",
        ),
        (
            "unknown VIP: DELETE",
            "DELETE",
            "/v1/vips/tcp:10.0.0.99:80".into(),
            None,
            Some(&bearer),
            404,
            "not_found",
            "tcp:10.0.0.99:80",
        ),
        (
            "unknown VIP: GET backends",
            "GET",
            "/v1/vips/tcp:10.0.0.99:80/backends".into(),
            None,
            None,
            404,
            "not_found",
            "",
        ),
        (
            "unknown VIP: POST backend",
            "POST",
            "/v1/vips/tcp:10.0.0.99:80/backends".into(),
            body(r#"{"address": "10.1.0.9"}"#),
            Some(&bearer),
            404,
            "not_found",
            "",
        ),
        (
            "unknown VIP: PUT backends",
            "PUT",
            "/v1/vips/tcp:10.0.0.99:80/backends".into(),
            body(r#"[{"address": "10.1.0.9"}]"#),
            Some(&bearer),
            404,
            "not_found",
            "",
        ),
        (
            "unknown VIP: PATCH backend",
            "PATCH",
            "/v1/vips/tcp:10.0.0.99:80/backends/10.1.0.1".into(),
            body(r#"{"drain": true}"#),
            Some(&bearer),
            404,
            "not_found",
            "",
        ),
        ("same address, other protocol", "GET", "/v1/vips/udp:10.0.0.10:80".into(), None, None, 404, "not_found", ""),
        (
            "unknown backend: PATCH",
            "PATCH",
            format!("{http_backends}/10.1.0.99"),
            body(r#"{"weight": 3}"#),
            Some(&bearer),
            404,
            "not_found",
            "10.1.0.99",
        ),
        (
            "unknown backend: DELETE",
            "DELETE",
            format!("{http_backends}/10.1.0.99"),
            None,
            Some(&bearer),
            404,
            "not_found",
            "10.1.0.99",
        ),
        ("bad VIP syntax: GET", "GET", "/v1/vips/not-a-vip".into(), None, None, 400, "bad_request", "not-a-vip"),
        (
            "bad VIP syntax: no port",
            "DELETE",
            "/v1/vips/tcp:10.0.0.10".into(),
            None,
            Some(&bearer),
            400,
            "bad_request",
            "",
        ),
        (
            "bad VIP syntax: protocol",
            "GET",
            "/v1/vips/sctp:10.0.0.10:80/backends".into(),
            None,
            None,
            400,
            "bad_request",
            "sctp",
        ),
        (
            "bad VIP syntax: IPv6 without brackets",
            "GET",
            "/v1/vips/udp:fc00::10:53".into(),
            None,
            None,
            400,
            "bad_request",
            "brackets",
        ),
        (
            "bad VIP syntax in a body",
            "POST",
            "/v1/vips".into(),
            body(r#"{"vip": "sctp:10.0.0.50:80"}"#),
            Some(&bearer),
            400,
            "invalid_json",
            "sctp",
        ),
        (
            "bad backend syntax",
            "PATCH",
            format!("{http_backends}/not-an-ip"),
            body(r#"{"weight": 3}"#),
            Some(&bearer),
            400,
            "bad_request",
            "not-an-ip",
        ),
        (
            "duplicate VIP",
            "POST",
            "/v1/vips".into(),
            body(&json!({"vip": VIP_HTTP, "backends": [{"address": "10.1.0.9"}]}).to_string()),
            Some(&bearer),
            409,
            "conflict",
            VIP_HTTP,
        ),
        (
            "duplicate backend",
            "POST",
            http_backends.clone(),
            body(r#"{"address": "10.1.0.1", "weight": 4}"#),
            Some(&bearer),
            409,
            "conflict",
            "10.1.0.1",
        ),
        (
            "a backend listed twice",
            "PUT",
            http_backends.clone(),
            body(r#"[{"address": "10.1.0.7"}, {"address": "10.1.0.7", "weight": 2}]"#),
            Some(&bearer),
            400,
            "duplicate_backend",
            "twice",
        ),
        (
            "IPv4 backend of an IPv6 VIP: POST backend",
            "POST",
            dns_backends.clone(),
            body(r#"{"address": "10.1.0.9"}"#),
            Some(&bearer),
            400,
            "family_mismatch",
            "IPv6",
        ),
        (
            "IPv4 backend of an IPv6 VIP: PUT",
            "PUT",
            dns_backends.clone(),
            body(r#"[{"address": "fc00:1::2"}, {"address": "10.1.0.9"}]"#),
            Some(&bearer),
            400,
            "family_mismatch",
            "IPv6",
        ),
        (
            "IPv4 backend of an IPv6 VIP: POST VIP",
            "POST",
            "/v1/vips".into(),
            body(r#"{"vip": "tcp:[fc00::50]:80", "backends": [{"address": "10.1.0.9"}]}"#),
            Some(&bearer),
            400,
            "family_mismatch",
            "IPv6",
        ),
        (
            "weight out of range: POST",
            "POST",
            http_backends.clone(),
            body(r#"{"address": "10.1.0.9", "weight": 10001}"#),
            Some(&bearer),
            400,
            "bad_request",
            "10001",
        ),
        (
            "weight out of range: PATCH",
            "PATCH",
            format!("{http_backends}/10.1.0.1"),
            body(r#"{"weight": 10001}"#),
            Some(&bearer),
            400,
            "bad_request",
            "10001",
        ),
        (
            "weight out of range: PUT",
            "PUT",
            http_backends.clone(),
            body(r#"[{"address": "10.1.0.1", "weight": 4294967295}]"#),
            Some(&bearer),
            400,
            "bad_request",
            "out of range",
        ),
        (
            "negative weight",
            "PATCH",
            format!("{http_backends}/10.1.0.1"),
            body(r#"{"weight": -1}"#),
            Some(&bearer),
            400,
            "invalid_json",
            "",
        ),
        (
            "weight and drain",
            "PATCH",
            format!("{http_backends}/10.1.0.1"),
            body(r#"{"weight": 3, "drain": true}"#),
            Some(&bearer),
            400,
            "bad_request",
            "",
        ),
        (
            "an empty patch",
            "PATCH",
            format!("{http_backends}/10.1.0.1"),
            body("{}"),
            Some(&bearer),
            400,
            "bad_request",
            "",
        ),
        (
            "more backends than the limit",
            "PUT",
            http_backends.clone(),
            Some((json_ct, crowd.clone())),
            Some(&bearer),
            422,
            "rejected",
            "exceed",
        ),
        (
            "missing token: POST",
            "POST",
            "/v1/vips".into(),
            body(r#"{"vip": "tcp:10.0.0.50:80"}"#),
            None,
            401,
            "unauthorized",
            "Bearer",
        ),
        ("missing token: DELETE", "DELETE", format!("/v1/vips/{VIP_HTTP}"), None, None, 401, "unauthorized", ""),
        (
            "missing token: PATCH",
            "PATCH",
            format!("{http_backends}/10.1.0.1"),
            body(r#"{"drain": true}"#),
            None,
            401,
            "unauthorized",
            "",
        ),
        (
            "wrong token",
            "DELETE",
            format!("/v1/vips/{VIP_HTTP}"),
            None,
            Some("Bearer daemon-test-token-5f0c1f"),
            401,
            "unauthorized",
            "wrong token",
        ),
        (
            "wrong token length",
            "PUT",
            http_backends.clone(),
            body(r#"[]"#),
            Some("Bearer x"),
            401,
            "unauthorized",
            "wrong token",
        ),
        ("token without Bearer", "DELETE", format!("/v1/vips/{VIP_HTTP}"), None, Some(TOKEN), 401, "unauthorized", ""),
        (
            "wrong scheme",
            "POST",
            "/v1/vips".into(),
            body(r#"{"vip": "tcp:10.0.0.50:80"}"#),
            Some(&basic),
            401,
            "unauthorized",
            "",
        ),
    ];
    for (what, method, path, body, auth, status, code, contains) in cases {
        let r = lab.http(method, &path, body, auth);
        let msg = r.error(status, code, &format!("{what} ({method} {path})"));
        assert!(msg.contains(contains), "{what}: message {msg:?} does not mention {contains:?}");
        assert_eq!(lab.vips(), vips_before, "{what} changed the VIPs");
        assert_eq!(fs::read(&lab.state_file).unwrap(), state_before, "{what} changed the state file");
        assert_eq!(dataplane_snapshot(&bal), dataplane_before, "{what} changed the data plane");
    }

    // Reads need no token.
    assert_eq!(lab.get("/v1/vips").status, 200);
    assert_eq!(lab.get(&format!("/v1/vips/{VIP_HTTP}/backends")).status, 200);
    assert_eq!(lab.get("/v1/stats").status, 200);
    assert_eq!(lab.get("/metrics").status, 200);
    // And the right token works after all that.
    lab.call("PATCH", &format!("{http_backends}/10.1.0.1"), Some(&json!({"weight": 3})))
        .ok(200, "PATCH with the token");
    assert_eq!(weights(lab.get_json(&http_backends))[0], json!({"address": "10.1.0.1", "weight": 3}));
    assert_ne!(fs::read(&lab.state_file).unwrap(), state_before, "a good change is persisted");
}

// ---- 3. API changes are in the data plane when the call returns -----------------

#[test]
fn api_changes_are_in_the_data_plane_when_the_call_returns() {
    let lab = Lab::new();
    // Opened before the calls, so each check below runs right after the
    // call's answer, with nothing in between.
    let mut bal = lab.balancer();
    let vip = Ipv4Addr::new(10, 0, 0, 30);
    let id = "tcp:10.0.0.30:8080";
    let (b7, b8, b9, b10) = (
        Ipv4Addr::new(10, 1, 0, 7),
        Ipv4Addr::new(10, 1, 0, 8),
        Ipv4Addr::new(10, 1, 0, 9),
        Ipv4Addr::new(10, 1, 0, 10),
    );
    assert_eq!(syn4(&mut bal, vip, 8080, 20000), None, "not a VIP yet");

    lab.call(
        "POST",
        "/v1/vips",
        Some(&json!({"vip": id, "backends": [{"address": "10.1.0.7"}, {"address": "10.1.0.8"}]})),
    )
    .ok(201, "POST VIP");
    let first = syn4(&mut bal, vip, 8080, 20000);
    assert!(matches!(first, Some(b) if b == b7 || b == b8), "right after POST the SYN went to {first:?}");
    let seen = spread4(&mut bal, vip, 8080, 20100);
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [b7, b8], "{seen:?}");

    lab.call("PUT", &format!("/v1/vips/{id}/backends"), Some(&json!([{"address": "10.1.0.9"}]))).ok(200, "PUT");
    assert_eq!(spread4(&mut bal, vip, 8080, 20200).keys().copied().collect::<Vec<_>>(), [b9]);

    lab.call("POST", &format!("/v1/vips/{id}/backends"), Some(&json!({"address": "10.1.0.10"})))
        .ok(201, "POST backend");
    assert_eq!(spread4(&mut bal, vip, 8080, 20300).keys().copied().collect::<Vec<_>>(), [b9, b10]);

    lab.call("PATCH", &format!("/v1/vips/{id}/backends/10.1.0.9"), Some(&json!({"drain": true}))).ok(200, "drain");
    assert_eq!(
        spread4(&mut bal, vip, 8080, 20400).keys().copied().collect::<Vec<_>>(),
        [b10],
        "no new flows to a drained backend"
    );

    lab.call("PATCH", &format!("/v1/vips/{id}/backends/10.1.0.9"), Some(&json!({"weight": 1}))).ok(200, "undrain");
    lab.call("DELETE", &format!("/v1/vips/{id}/backends/10.1.0.10"), None).ok(200, "DELETE backend");
    assert_eq!(spread4(&mut bal, vip, 8080, 20500).keys().copied().collect::<Vec<_>>(), [b9]);

    lab.call("DELETE", &format!("/v1/vips/{id}"), None).ok(200, "DELETE VIP");
    assert_eq!(syn4(&mut bal, vip, 8080, 20000), None, "right after DELETE the VIP's traffic goes to the kernel");
    assert_eq!(route4(&mut bal, vip, 8080, 20100, pb::TCP_ACK), None, "established flows too");

    // IPv6, UDP.
    let vip6 = Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0x30);
    let real6 = Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 5);
    assert_eq!(udp6_route(&mut bal, vip6, 5353, 1000), None);
    lab.call("POST", "/v1/vips", Some(&json!({"vip": "udp:[fc00::30]:5353", "backends": [{"address": real6}]})))
        .ok(201, "POST VIP6");
    assert_eq!(udp6_route(&mut bal, vip6, 5353, 1000), Some(real6));
    lab.call("DELETE", "/v1/vips/udp:[fc00::30]:5353", None).ok(200, "DELETE VIP6");
    assert_eq!(udp6_route(&mut bal, vip6, 5353, 1000), None);

    // The config's VIPs were served all along.
    assert!(matches!(syn4(&mut bal, HTTP4, 80, 20000), Some(b) if b == REAL1 || b == REAL2));
    assert_eq!(udp6_route(&mut bal, DNS6, 53, 1000), Some(REAL6));
}

// ---- 4. SIGHUP reload --------------------------------------------------------------

#[test]
fn sighup_reloads_the_config_and_a_bad_config_is_rejected() {
    let mut lab = Lab::new();
    let mut bal = lab.balancer();
    // An API change to a VIP the file does not change: kept by the reload.
    lab.call("PATCH", &format!("/v1/vips/{VIP_HTTP}/backends/10.1.0.2"), Some(&json!({"weight": 5}))).ok(200, "PATCH");

    // The file drops the IPv6 VIP and adds tcp:10.0.0.20:443.
    let reloaded_vips = format!(
        "{}\n[[vip]]\naddress = \"10.0.0.20\"\nport = 443\nprotocol = \"tcp\"\n\n[[vip.backend]]\naddress = \"10.1.0.3\"\nweight = 3\n",
        BASE_VIPS.split("[[vip]]\naddress = \"fc00::10\"").next().unwrap()
    );
    // The SYN-flood threshold applies on reload too.
    assert_eq!(bal.config().unwrap().syn_flood_threshold, lb_common::DEFAULT_SYN_FLOOD_THRESHOLD);
    assert_eq!(lab.get_json("/v1/stats")["syn_flood_cpus"], 0);
    lab.write_config(&format!("[syn_flood]\nthreshold = 777\n\n{reloaded_vips}"));
    Config::load(&lab.config).expect("the new config is valid");
    let want = json!([
        {"vip": VIP_HTTP, "flags": [], "backends": [{"address": "10.1.0.1", "weight": 1}, {"address": "10.1.0.2", "weight": 5}]},
        {"vip": "tcp:10.0.0.20:443", "flags": [], "backends": [{"address": "10.1.0.3", "weight": 3}]},
    ]);
    lab.signal(libc::SIGHUP);
    let start = Instant::now();
    while lab.vips() != want {
        lab.assert_running();
        assert!(
            start.elapsed() < RELOAD_TIMEOUT,
            "the reload was not applied within {RELOAD_TIMEOUT:?}: {}\n{}",
            lab.vips(),
            lab.logs()
        );
        std::thread::sleep(POLL);
    }
    lab.wait_log("config reloaded", RELOAD_TIMEOUT);
    assert_eq!(bal.config().unwrap().syn_flood_threshold, 777, "the reload wrote the SYN-flood threshold");
    assert_eq!(syn4(&mut bal, Ipv4Addr::new(10, 0, 0, 20), 443, 1234), Some(Ipv4Addr::new(10, 1, 0, 3)));
    assert_eq!(udp6_route(&mut bal, DNS6, 53, 1000), None, "the removed VIP is gone from the data plane");

    // A bad file: an unknown key. Rejected; nothing changes; still serving.
    let good_text = fs::read_to_string(&lab.config).unwrap();
    let vips_before = lab.vips();
    let dataplane_before = dataplane_snapshot(&bal);
    let state_before = fs::read(&lab.state_file).unwrap();
    fs::write(&lab.config, good_text.replacen("[limits]\n", "[limits]\nbogus_limit = 1\n", 1)).unwrap();
    lab.signal(libc::SIGHUP);
    let log = lab.wait_log("config reload rejected", RELOAD_TIMEOUT);
    let line = log.lines().find(|l| l.contains("config reload rejected")).unwrap();
    assert!(line.contains("bogus_limit"), "the rejection names the key: {line}");
    assert!(line.contains("line 7"), "the rejection names the line: {line}");
    lab.assert_running();
    assert_eq!(lab.get("/healthz").status, 200);
    assert_eq!(lab.get("/readyz").status, 200);
    assert_eq!(lab.vips(), vips_before);
    assert_eq!(dataplane_snapshot(&bal), dataplane_before);
    assert_eq!(fs::read(&lab.state_file).unwrap(), state_before);

    // A valid file that changes what needs a restart (the limits): refused too.
    fs::write(&lab.config, good_text.replace("max_vips = 16", "max_vips = 32").replace("weight = 3", "weight = 4"))
        .unwrap();
    lab.signal(libc::SIGHUP);
    let log = lab.wait_log("changed: limits", RELOAD_TIMEOUT);
    assert_eq!(log.matches("config reload rejected").count(), 2, "{}", lab.logs());
    lab.assert_running();
    assert_eq!(lab.vips(), vips_before, "nothing of a refused reload is applied");
    assert_eq!(dataplane_snapshot(&bal), dataplane_before);

    // A good file again: the daemon still reloads.
    fs::write(&lab.config, good_text.replace("weight = 3", "weight = 4")).unwrap();
    lab.signal(libc::SIGHUP);
    let start = Instant::now();
    while lab.get_json("/v1/vips/tcp:10.0.0.20:443")["backends"][0]["weight"] != 4 {
        lab.assert_running();
        assert!(start.elapsed() < RELOAD_TIMEOUT, "the last reload was not applied\n{}", lab.logs());
        std::thread::sleep(POLL);
    }
    assert_eq!(lab.get_json(&format!("/v1/vips/{VIP_HTTP}/backends"))[1]["weight"], 5, "the API change is still kept");
}

// ---- 5. restart adoption ---------------------------------------------------------

#[test]
fn a_restarted_daemon_adopts_the_pinned_maps_and_keeps_connections() {
    let mut lab = Lab::new();
    let sport = 41000;
    let flow = flow4(CLIENT4, sport, HTTP4, 80);
    let (backend, entry, maps_before, prog_before) = {
        let mut bal = lab.balancer();
        let backend = syn4(&mut bal, HTTP4, 80, sport).expect("the SYN is forwarded");
        assert!(backend == REAL1 || backend == REAL2, "{backend}");
        assert_eq!(route4(&mut bal, HTTP4, 80, sport, pb::TCP_ACK), Some(backend));
        let entry = bal.conn(&flow).expect("the SYN made a connection-table entry");
        let prog = attached_prog_id(&lab.link()).expect("a program is attached to lbd0");
        (backend, entry, pinned_map_ids(&lab.pin_dir), prog)
    };

    let status = lab.stop();
    assert!(status.success(), "the daemon exited with {status}\n{}", lab.logs());
    assert!(lab.try_http("GET", "/healthz", None, None).is_err(), "the API is down");
    let link = lab.link();
    assert!(link.contains("prog/xdp"), "the balancer stays attached without the daemon:\n{link}");
    assert_eq!(attached_prog_id(&link), Some(prog_before));
    {
        let mut bal = lab.balancer();
        assert_eq!(
            route4(&mut bal, HTTP4, 80, sport, pb::TCP_ACK),
            Some(backend),
            "the flow keeps its backend while the daemon is down"
        );
        assert_eq!(bal.conn(&flow), Some(entry));
    }

    lab.start();
    assert_eq!(lab.get("/readyz").body, "ready\n");
    assert!(lab.logs().contains("adopted=true"), "the daemon says it adopted the maps\n{}", lab.logs());
    assert_eq!(pinned_map_ids(&lab.pin_dir), maps_before, "the same maps, not new ones");
    let link = lab.link();
    let prog_after =
        attached_prog_id(&link).unwrap_or_else(|| panic!("no program attached after the restart:\n{link}"));
    assert_ne!(prog_after, prog_before, "the restarted daemon swapped its program into the pinned link");
    assert_eq!(lab.vips(), base_vips_json(), "the restart changed no VIP");

    let mut bal = lab.balancer();
    assert_eq!(bal.conn(&flow), Some(entry), "the connection-table entry survived");
    assert_eq!(route4(&mut bal, HTTP4, 80, sport, pb::TCP_ACK), Some(backend));
    // Drain that backend now: new connections avoid it, the old one stays
    // on it (through the adopted connection table).
    lab.call("PATCH", &format!("/v1/vips/{VIP_HTTP}/backends/{backend}"), Some(&json!({"drain": true})))
        .ok(200, "drain");
    assert_eq!(route4(&mut bal, HTTP4, 80, sport, pb::TCP_ACK), Some(backend), "the established flow stays");
    let seen = spread4(&mut bal, HTTP4, 80, 42000);
    assert!(!seen.contains_key(&backend), "new flows avoid the drained backend: {seen:?}");
    assert_eq!(bal.conn(&flow), Some(ConnEntry { real: entry.real }));
}

// ---- 6. the state file -------------------------------------------------------------

#[test]
fn api_changes_survive_a_restart_and_the_config_file_is_untouched() {
    let mut lab = Lab::new();
    let config_before = fs::read(&lab.config).unwrap();
    lab.call("PATCH", &format!("/v1/vips/{VIP_HTTP}/backends/10.1.0.2"), Some(&json!({"drain": true})))
        .ok(200, "drain");
    lab.call("POST", "/v1/vips", Some(&json!({"vip": "tcp:10.0.0.40:8443", "flags": ["no-conn-table"], "backends": [{"address": "10.1.0.11", "weight": 9}]})))
        .ok(201, "POST VIP");
    lab.call("DELETE", &format!("/v1/vips/{VIP_DNS6}"), None).ok(200, "DELETE config VIP");
    let want = json!([
        {"vip": VIP_HTTP, "flags": [], "backends": [{"address": "10.1.0.1", "weight": 1}, {"address": "10.1.0.2", "weight": 0}]},
        {"vip": "tcp:10.0.0.40:8443", "flags": ["no-conn-table"], "backends": [{"address": "10.1.0.11", "weight": 9}]},
    ]);
    assert_eq!(lab.vips(), want);
    let state: Value = serde_json::from_slice(&fs::read(&lab.state_file).unwrap()).expect("the state file is JSON");
    assert!(state["vips"]["tcp:10.0.0.40:8443"].is_object(), "the state file holds the API's VIP: {state}");
    assert_eq!(fs::read(&lab.config).unwrap(), config_before, "the config file is never written");

    let status = lab.stop();
    assert!(status.success(), "{status}\n{}", lab.logs());
    lab.start();
    assert_eq!(lab.vips(), want, "the API changes survived the restart");
    assert_eq!(fs::read(&lab.config).unwrap(), config_before, "the config file is byte for byte the same");

    let mut bal = lab.balancer();
    assert_eq!(
        spread4(&mut bal, HTTP4, 80, 43000).keys().copied().collect::<Vec<_>>(),
        [REAL1],
        "the drained backend gets no new flows"
    );
    assert_eq!(syn4(&mut bal, Ipv4Addr::new(10, 0, 0, 40), 8443, 43000), Some(Ipv4Addr::new(10, 1, 0, 11)));
    assert_eq!(udp6_route(&mut bal, DNS6, 53, 1000), None, "the VIP deleted through the API stays deleted");

    // A second restart in a row changes nothing either.
    let state_before = fs::read(&lab.state_file).unwrap();
    lab.stop();
    lab.start();
    assert_eq!(lab.vips(), want);
    assert_eq!(fs::read(&lab.state_file).unwrap(), state_before);
}

// ---- 7. lbctl ------------------------------------------------------------------------

#[test]
fn lbctl_drives_the_daemon() {
    let lab = Lab::new();
    let ok = |token: bool, args: &[&str]| -> String {
        let (status, out, err) = lab.lbctl(token, args);
        assert!(status.success(), "lbctl {args:?} failed ({status}):\nstdout: {out}\nstderr: {err}\n{}", lab.logs());
        out
    };
    let id = "tcp:10.0.0.50:80";

    let out = ok(true, &["vip", "add", id, "-b", "10.1.0.21", "-b", "10.1.0.22=3", "--flag", "hash-no-src-port"]);
    assert!(out.contains(&format!("added {id}")), "{out}");
    assert_eq!(
        lab.get_json(&format!("/v1/vips/{id}")),
        json!({"vip": id, "flags": ["hash-no-src-port"], "backends": [{"address": "10.1.0.21", "weight": 1}, {"address": "10.1.0.22", "weight": 3}]})
    );

    // Table and JSON listings.
    let table = ok(false, &["vip", "list"]);
    let header = table.lines().next().unwrap_or("");
    assert!(header.starts_with("VIP") && header.contains("FLAGS") && header.contains("BACKENDS"), "{table}");
    let row = table.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
    assert!(row.contains("hash-no-src-port") && row.contains("10.1.0.21=1") && row.contains("10.1.0.22=3"), "{row}");
    assert!(table.lines().any(|l| l.starts_with(VIP_DNS6) && l.contains("fc00:1::1=1")), "{table}");
    assert_eq!(table.lines().count(), 4, "a header and three VIPs:\n{table}");
    let listed: Value =
        serde_json::from_str(&ok(false, &["vip", "list", "-o", "json"])).expect("vip list -o json is JSON");
    assert_eq!(listed, lab.vips());
    let shown = ok(false, &["vip", "show", VIP_DNS6]);
    assert!(shown.contains("fc00:1::1=1"), "{shown}");

    // Drain.
    let out = ok(true, &["backend", "drain", id, "10.1.0.21"]);
    assert!(out.contains("draining"), "{out}");
    assert_eq!(
        weights(lab.get_json(&format!("/v1/vips/{id}/backends")))[0],
        json!({"address": "10.1.0.21", "weight": 0})
    );
    let list = ok(false, &["backend", "list", id]);
    assert!(list.lines().any(|l| l.starts_with("10.1.0.21") && l.contains("(draining)")), "{list}");

    // Stats: a packet to the new VIP is counted.
    let mut bal = lab.balancer();
    assert_eq!(syn4(&mut bal, Ipv4Addr::new(10, 0, 0, 50), 80, 5000), Some(Ipv4Addr::new(10, 1, 0, 22)));
    let stats = ok(false, &["stats"]);
    for want in ["SYN-FLOOD MODE: 0 CPUs now", "ACTION", "REASON (non-zero)", "VIP", "BACKEND", id, "10.1.0.22"] {
        assert!(stats.contains(want), "stats lacks {want:?}:\n{stats}");
    }
    let vip_row = stats.lines().find(|l| l.starts_with(id)).unwrap();
    assert_eq!(vip_row.split_whitespace().nth(1), Some("1"), "one packet to {id}: {vip_row}");
    let stats_json: Value = serde_json::from_str(&ok(false, &["-o", "json", "stats"])).expect("stats -o json is JSON");
    assert_eq!(stats_json["vips"][id]["packets"], 1, "{stats_json}");
    assert_eq!(stats_json["syn_flood_cpus"], 0, "{stats_json}");

    // Watch: one sample, as one JSON line.
    let out = ok(false, &["watch", "--count", "1", "--interval-secs", "0.2", "-o", "json"]);
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let sample: Value = serde_json::from_str(lines[0]).expect("watch -o json prints JSON");
    for key in ["actions_pps", "vips_pps", "backends_pps"] {
        assert!(sample[key].is_object(), "{key} missing: {sample}");
    }
    assert!(sample["vips_pps"][id].is_number(), "{sample}");

    // Errors: a non-zero exit and the API's message on stderr.
    let (status, out, err) = lab.lbctl(true, &["backend", "drain", "tcp:10.0.0.99:80", "10.1.0.21"]);
    assert!(!status.success(), "draining a backend of an unknown VIP succeeded: {out}");
    assert!(
        err.contains("no VIP tcp:10.0.0.99:80") && err.contains("not_found") && err.contains("404"),
        "stderr: {err}"
    );
    let (status, _, err) = lab.lbctl(false, &["vip", "remove", id]);
    assert!(!status.success(), "a change without the token succeeded");
    assert!(err.contains("Authorization: Bearer") && err.contains("401"), "stderr: {err}");
    let (status, _, err) = lab.lbctl(true, &["vip", "add", id, "-b", "10.1.0.23"]);
    assert!(!status.success() && err.contains("exists") && err.contains("409"), "duplicate VIP: {status} {err}");
    assert_eq!(lab.vips().as_array().unwrap().len(), 3, "failed commands changed nothing");

    // Remove.
    let out = ok(true, &["vip", "remove", id]);
    assert!(out.contains(&format!("removed {id}")), "{out}");
    lab.get(&format!("/v1/vips/{id}")).error(404, "not_found", "removed VIP");
    assert_eq!(lab.vips(), base_vips_json());
}

/// `lbctl flow` names the backend the daemon's data plane sends a flow to
/// (ring, then connection table), and `lbctl conns` counts the entry.
#[test]
fn lbctl_flow_and_conns_read_the_live_maps() {
    let lab = Lab::new();
    let ok = |args: &[&str]| -> String {
        let (status, out, err) = lab.lbctl(false, args);
        assert!(status.success(), "lbctl {args:?} failed ({status}):\nstdout: {out}\nstderr: {err}\n{}", lab.logs());
        out
    };
    let client = format!("{CLIENT4}:41000");
    let before: Value = serde_json::from_str(&ok(&["-o", "json", "flow", VIP_HTTP, &client])).expect("JSON");
    assert_eq!(before["source"], "ring", "{before}");
    let table = ok(&["flow", VIP_HTTP, &client]);
    assert!(table.contains(&format!("ring slot {}", before["ring_slot"])), "{table}");

    let mut bal = lab.balancer();
    let went = route4(&mut bal, HTTP4, 80, 41000, pb::TCP_ACK).expect("forwarded");
    assert_eq!(before["backend"], went.to_string(), "the lookup predicted the backend: {before}");
    let after: Value = serde_json::from_str(&ok(&["-o", "json", "flow", VIP_HTTP, &client])).expect("JSON");
    assert_eq!((after["source"].as_str(), after["backend"].as_str()), (Some("conn_table"), Some(&*went.to_string())));
    let table = ok(&["flow", VIP_HTTP, &client]);
    assert!(table.lines().any(|l| l.starts_with("FROM") && l.contains("connection table")), "{table}");

    let conns: Value = serde_json::from_str(&ok(&["-o", "json", "conns", VIP_HTTP])).expect("JSON");
    assert_eq!(conns["entries"], 1, "{conns}");
    let rows = conns["backends"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{conns}");
    for row in rows {
        let want = u64::from(row["backend"] == went.to_string());
        assert_eq!(row["entries"], want, "{row}");
    }
    let table = ok(&["conns"]);
    assert!(table.starts_with("connection table: 1 of "), "{table}");
    assert!(table.lines().any(|l| l.starts_with(VIP_HTTP) && l.contains(&went.to_string())), "{table}");

    // IPv6: brackets in the query string.
    let client6 = format!("[{CLIENT6}]:5353");
    let v6: Value = serde_json::from_str(&ok(&["-o", "json", "flow", VIP_DNS6, &client6])).expect("JSON");
    assert_eq!((v6["source"].as_str(), v6["backend"].as_str()), (Some("ring"), Some("fc00:1::1")), "{v6}");
    assert_eq!(udp6_route(&mut bal, DNS6, 53, 5353), Some(REAL6));

    // Bad input: a clear error and a non-zero exit.
    lab.get(&format!("/v1/flows?vip={VIP_HTTP}")).error(400, "bad_request", "no client");
    lab.get(&format!("/v1/flows?vip=tcp:10.0.0.10:81&client={client}")).error(404, "not_found", "unknown VIP");
    lab.get(&format!("/v1/flows?vip={VIP_HTTP}&client=[fc00::1]:1")).error(400, "family_mismatch", "family");
    lab.get("/v1/conns?vip=nonsense").error(400, "bad_request", "bad VIP");
    let (status, _, err) = lab.lbctl(false, &["flow", "tcp:10.0.0.10:81", &client]);
    assert!(!status.success() && err.contains("404"), "{err}");
}

/// The capture needs the token, checks its bounds, ends at its duration
/// with a valid (here empty) pcapng stream, and runs one at a time.
#[test]
fn capture_needs_the_token_is_bounded_and_runs_one_at_a_time() {
    let lab = Lab::new();
    lab.get("/v1/capture?duration_secs=1").error(401, "unauthorized", "capture without the token");
    lab.call("GET", "/v1/capture?duration_secs=0", None).error(400, "bad_request", "duration 0");
    lab.call("GET", "/v1/capture?snaplen=257", None).error(400, "bad_request", "snaplen beyond 256");
    lab.call("GET", "/v1/capture?reason=drop_everything", None).error(400, "bad_request", "unknown reason");
    lab.call("GET", "/v1/capture?reason=drop_no_backend&drops=true", None).error(
        400,
        "reason_and_drops",
        "reason and drops",
    );

    // One capture at a time: a second one while the first runs is refused.
    let started = std::time::Instant::now();
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| lab.call("GET", "/v1/capture?duration_secs=2", None));
        std::thread::sleep(Duration::from_millis(500));
        let second = lab.call("GET", "/v1/capture?duration_secs=1", None);
        (first.join().unwrap(), second)
    });
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(started.elapsed() >= Duration::from_secs(2), "it lasted its duration");
    assert_eq!(first.content_type, "application/x-pcapng");
    // A section header block (0x0A0D0D0A) and an interface description: a
    // valid, empty capture.
    assert!(first.body.starts_with("\n\r\r\n"), "pcapng section header: {:?}", first.body);
    second.error(409, "conflict", "a second capture");
    // The first one ended and gave the ring back: a new one may start.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.call("GET", "/v1/capture?duration_secs=1", None).status, 200);
    assert!(lab.logs().contains("capture stopped"), "{}", lab.logs());

    // A client that goes away ends its capture (noticed at the latest by
    // the next keep-alive block), and the data plane is disarmed.
    let mut cmd = lab.lb.command(env!("CARGO_BIN_EXE_lbctl"));
    cmd.args(["--api", API, "--token-file"]).arg(&lab.token_file);
    cmd.args(["capture", "--duration", "60", "-w"]).arg(lab.dir.join("gone.pcapng"));
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    child.kill().unwrap();
    child.wait().unwrap();
    let limit = std::time::Instant::now() + lb_control::capture::KEEPALIVE + Duration::from_secs(5);
    while !lab.logs().contains("ended=ClientGone") {
        assert!(std::time::Instant::now() < limit, "the capture outlived its client:\n{}", lab.logs());
        std::thread::sleep(POLL);
    }
}

// ---- 8. check and detach -------------------------------------------------------------

#[test]
fn check_validates_config_files_and_detach_removes_pins_and_program() {
    let mut lab = Lab::new();
    let bin = env!("CARGO_BIN_EXE_lb-control");
    let check = |path: &Path| {
        let mut cmd = Command::new(bin);
        cmd.env_remove("LB_CONFIG").arg("--config").arg(path).arg("check");
        run_bounded(cmd, &lab.dir, "lb-control check")
    };

    let (status, out, err) = check(&lab.config);
    assert!(status.success(), "check of a good file failed: {out}{err}");
    assert!(out.contains("ok (2 VIPs, 3 backends)"), "{out}");

    let good = fs::read_to_string(&lab.config).unwrap();
    let bad = lab.dir.join("bad.toml");
    // An unknown key on line 2.
    let (first, rest) = good.split_once('\n').unwrap();
    fs::write(&bad, format!("{first}\nbogus_key = 1\n{rest}")).unwrap();
    let (status, out, err) = check(&bad);
    assert!(!status.success(), "check accepted an unknown key: {out}");
    assert!(err.contains("line 2") && err.contains("bogus_key"), "stderr: {err}");
    // A weight out of range: located at its line, named by its key.
    let text = good.replace("weight = 2", "weight = 10001");
    let line = text.lines().position(|l| l == "weight = 10001").unwrap() + 1;
    fs::write(&bad, text).unwrap();
    let (status, _, err) = check(&bad);
    assert!(!status.success(), "check accepted weight 10001");
    assert!(err.contains(&format!("line {line}")) && err.contains("vip[0].backend[1].weight"), "stderr: {err}");
    // A file that does not exist.
    let (status, _, err) = check(&lab.dir.join("missing.toml"));
    assert!(!status.success() && err.contains("missing.toml"), "stderr: {err}");

    // Detach: pins and program gone.
    let status = lab.stop();
    assert!(status.success(), "{status}");
    assert!(lab.link().contains("prog/xdp"), "attached before detach");
    let mut cmd = Command::new(bin);
    cmd.env_remove("LB_CONFIG").arg("--config").arg(&lab.config).arg("detach");
    let (status, out, err) = run_bounded(cmd, &lab.dir, "lb-control detach");
    assert!(status.success(), "detach failed: {out}{err}");
    // Every map, the XDP link and the health probes' TC link.
    let pins = lb_common::map_names::BALANCER_MAPS.len() + 2;
    assert!(out.contains(&format!("removed {pins} pins")), "every map and both links: {out}");
    assert!(!lab.pin_dir.exists(), "the pin directory is gone");
    let start = Instant::now();
    loop {
        let link = lab.link();
        if !link.contains("xdp") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the program is still attached after detach:\n{link}");
        std::thread::sleep(POLL);
    }
    // Detaching again finds nothing to remove and still succeeds.
    let mut cmd = Command::new(bin);
    cmd.env_remove("LB_CONFIG").arg("--config").arg(&lab.config).arg("detach");
    let (status, out, _) = run_bounded(cmd, &lab.dir, "lb-control detach");
    assert!(status.success() && out.contains("removed 0 pins"), "{out}");
}

// ---- regressions of bugs found by these tests ---------------------------------------

/// A client that sent half a request must not keep a stopping daemon alive
/// (graceful shutdown has a deadline).
#[test]
fn sigterm_stops_the_daemon_despite_a_stalled_client() {
    use std::io::Write as _;
    let mut lab = Lab::new();
    let mut stalled = lab.lb.run(|| Ok(std::net::TcpStream::connect("127.0.0.1:9780")?)).unwrap();
    stalled.write_all(b"GET /v1/vips HTTP/1.1\r\nHost: lb\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let status = lab.stop(); // panics after STOP_TIMEOUT
    assert!(status.success(), "{status}");
}

/// A backend slot's counters (REAL_STATS) are reset when the slot is given
/// to a new backend, also after a restart, when adoption reuses a freed slot
/// at once.
#[test]
fn a_new_backend_starts_with_zero_counters() {
    let mut lab = Lab::new();
    {
        let mut bal = lab.balancer();
        let seen = spread4(&mut bal, HTTP4, 80, 1000);
        assert!(seen.get(&REAL1).is_some_and(|n| *n > 0), "{seen:?}");
    }
    lab.call("DELETE", &format!("/v1/vips/{VIP_HTTP}/backends/10.1.0.1"), None).ok(200, "DELETE backend");
    lab.stop();
    lab.start();
    lab.call("POST", &format!("/v1/vips/{VIP_HTTP}/backends"), Some(&json!({"address": "10.1.0.50"})))
        .ok(201, "POST backend");
    let stats = lab.get_json("/v1/stats");
    assert_eq!(
        stats["backends"]["10.1.0.50"]["packets"], 0,
        "a backend that never got a packet: {}",
        stats["backends"]
    );
}

/// Issue 10 item 4, through the API: a backend removed from one VIP while
/// another VIP keeps it. The first VIP's established flows on it re-hash;
/// the other VIP's stay; its counters still count what it served.
#[test]
fn removing_a_shared_backend_from_one_vip_leaves_the_other_vips_flows() {
    let lab = Lab::new();
    let mut bal = lab.balancer();
    let (other, other_id) = (Ipv4Addr::new(10, 0, 0, 40), "tcp:10.0.0.40:80");
    lab.call(
        "POST",
        "/v1/vips",
        Some(&json!({"vip": other_id, "backends": [{"address": "10.1.0.1"}, {"address": "10.1.0.2"}]})),
    )
    .ok(201, "POST a VIP sharing both backends");
    // An established flow on REAL1 for each VIP.
    let on_real1 = |bal: &mut Balancer, vip: Ipv4Addr| {
        (30000..31000u16).find(|&p| syn4(bal, vip, 80, p) == Some(REAL1)).expect("a flow lands on 10.1.0.1")
    };
    let (http_port, other_port) = (on_real1(&mut bal, HTTP4), on_real1(&mut bal, other));
    assert_eq!(route4(&mut bal, HTTP4, 80, http_port, pb::TCP_ACK), Some(REAL1));
    assert_eq!(route4(&mut bal, other, 80, other_port, pb::TCP_ACK), Some(REAL1));
    let count = |lab: &Lab| lab.get_json("/v1/stats")["backends"]["10.1.0.1"]["packets"].as_u64().unwrap();
    let before = count(&lab);

    lab.call("DELETE", &format!("/v1/vips/{VIP_HTTP}/backends/10.1.0.1"), None)
        .ok(200, "DELETE the backend from one VIP");
    assert_eq!(route4(&mut bal, HTTP4, 80, http_port, pb::TCP_ACK), Some(REAL2), "that VIP's flow re-hashes");
    assert_eq!(route4(&mut bal, other, 80, other_port, pb::TCP_ACK), Some(REAL1), "the other VIP's flow stays");
    assert_eq!(count(&lab), before + 1, "10.1.0.1 keeps what it counted for {VIP_HTTP}");
}

/// When the gateway's neighbour entry changes, the daemon's MAC watcher
/// (driven by netlink notifications, not a poll) puts the new MAC into the
/// data plane within a second.
#[test]
fn a_new_gateway_mac_reaches_the_data_plane_within_a_second() {
    const NEW_GW_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0xd0, 0x00, 0x11];
    const PROMPTLY: Duration = Duration::from_secs(1);
    let lab = Lab::new();
    let bal = lab.balancer();
    assert_eq!(bal.config().unwrap().gw_mac, GW_MAC, "the gateway's MAC at start-up");
    let new_mac = mac_str(&NEW_GW_MAC);
    lab.lb.ip(&["neigh", "replace", "10.99.0.1", "lladdr", &new_mac, "dev", LB_IF, "nud", "permanent"]).unwrap();
    let start = Instant::now();
    while bal.config().unwrap().gw_mac != NEW_GW_MAC {
        assert!(
            start.elapsed() < PROMPTLY,
            "the new gateway MAC is not in the data plane after {PROMPTLY:?}\n{}",
            lab.logs()
        );
        std::thread::sleep(POLL);
    }
    println!("new gateway MAC in the data plane after {:?}", start.elapsed());
    lab.wait_log(&format!("gateway_mac={new_mac}"), PROMPTLY);
}

// ---- inputs checked once (issue 10, items 5 to 8) ---------------------------------

/// `check` refuses every config start-up would refuse, with the same located
/// error (file, line, column, key), and a refused start changes nothing.
#[test]
fn check_refuses_what_start_refuses_with_the_same_located_error() {
    let lab = Lab::new();
    let bin = env!("CARGO_BIN_EXE_lb-control");
    let good = lab.config_text(BASE_VIPS);
    let pin = format!("pin_dir = \"{}\"", lab.pin_dir.display());
    let state = format!("state_file = \"{}\"", lab.state_file.display());
    let token = format!("token_file = \"{}\"", lab.token_file.display());
    let not_bpffs = format!("pin_dir = \"{}\"", lab.dir.join("pins").display());
    let cases: Vec<(&str, String, &str)> = vec![
        // (what, config text, "key: ..." the error names)
        (
            "max_vips overflowing the ring count",
            good.replace("max_vips = 16", "max_vips = 4294967295"),
            "limits.max_vips: ",
        ),
        ("an empty state_file", good.replace(&state, "state_file = \"\""), "state_file: "),
        ("a relative pin_dir", good.replace(&pin, "pin_dir = \"xdp-lb\""), "pin_dir: "),
        ("a pin_dir outside bpffs", good.replace(&pin, &not_bpffs), "pin_dir: "),
        (
            "a public listen address without a token",
            good.replace(&token, "").replace("127.0.0.1:9780", "0.0.0.0:9780"),
            "api.listen: ",
        ),
        ("max_body_bytes = 0", good.replace("max_body_bytes = 4096", "max_body_bytes = 0"), "api.max_body_bytes: "),
        ("an empty file", String::new(), "interfaces: missing field"),
        (
            "more VIPs than max_vips",
            good.replace("max_vips = 16", "max_vips = 1"),
            "vip[1]: 2 VIPs exceed limits.max_vips = 1",
        ),
        (
            "a backend that is the VIP",
            good.replace("address = \"10.1.0.2\"", "address = \"10.0.0.10\""),
            "vip[0].backend[1].address: ",
        ),
    ];
    let bad = lab.dir.join("bad.toml");
    let state_before = fs::read(&lab.state_file).unwrap();
    let maps_before = pinned_map_ids(&lab.pin_dir);
    for (what, text, names) in cases {
        fs::write(&bad, &text).unwrap();
        let mut check = Command::new(bin);
        check.env_remove("LB_CONFIG").arg("--config").arg(&bad).arg("check");
        let (status, out, check_err) = run_bounded(check, &lab.dir, "lb-control check");
        assert!(!status.success(), "{what}: check accepted it: {out}");
        let located = check_err
            .lines()
            .find(|l| l.contains(names))
            .unwrap_or_else(|| panic!("{what}: check does not name {names:?}: {check_err}"));
        let prefix = format!("{}: line ", bad.display());
        assert!(located.contains(&prefix) && located.contains(", column "), "{what}: not located: {located}");
        // Start-up: the same error, and it exits before touching anything.
        let mut start = lab.lb.command(bin);
        start.env_remove("LB_CONFIG").env_remove("NOTIFY_SOCKET").arg("--config").arg(&bad).arg("run");
        let (status, _, start_err) = run_bounded(start, &lab.dir, "lb-control run");
        assert!(!status.success(), "{what}: start accepted it");
        let at = located.find(&prefix).unwrap();
        assert!(start_err.contains(&located[at..]), "{what}: start said {start_err:?}, check said {located:?}");
    }
    assert_eq!(fs::read(&lab.state_file).unwrap(), state_before, "a refused start changed the state file");
    assert_eq!(pinned_map_ids(&lab.pin_dir), maps_before, "a refused start changed the pins");
    assert_eq!(lab.vips(), base_vips_json());
}

/// Addresses that can never be right answer 400 `invalid_address` and
/// change nothing; the Bearer scheme is case-insensitive.
#[test]
fn addresses_that_can_never_be_right_are_refused() {
    let lab = Lab::new();
    let bal = lab.balancer();
    let vips_before = lab.vips();
    let state_before = fs::read(&lab.state_file).unwrap();
    let dataplane_before = dataplane_snapshot(&bal);
    let http_backends = format!("/v1/vips/{VIP_HTTP}/backends");
    let dns_backends = format!("/v1/vips/{VIP_DNS6}/backends");
    let cases: Vec<(&str, &str, String, Value, &str)> = vec![
        // (what, method, path, body, message contains); the code is
        // invalid_address, backend_is_vip ("itself") or duplicate_backend
        // ("IPv4-mapped")
        ("VIP 0.0.0.0", "POST", "/v1/vips".into(), json!({"vip": "tcp:0.0.0.0:80"}), "unspecified"),
        ("VIP ::", "POST", "/v1/vips".into(), json!({"vip": "tcp:[::]:80"}), "unspecified"),
        ("VIP multicast", "POST", "/v1/vips".into(), json!({"vip": "udp:224.0.0.1:53"}), "multicast"),
        ("backend 0.0.0.0", "POST", http_backends.clone(), json!({"address": "0.0.0.0"}), "unspecified"),
        ("backend ::", "POST", dns_backends.clone(), json!({"address": "::"}), "unspecified"),
        ("backend broadcast", "POST", http_backends.clone(), json!({"address": "255.255.255.255"}), "broadcast"),
        ("backend 224.0.0.1", "POST", http_backends.clone(), json!({"address": "224.0.0.1"}), "multicast"),
        ("backend ff02::1", "POST", dns_backends.clone(), json!({"address": "ff02::1"}), "multicast"),
        ("backend loopback", "POST", http_backends.clone(), json!({"address": "127.0.0.1"}), "loopback"),
        (
            "backend = the VIP",
            "POST",
            http_backends.clone(),
            json!({"address": "10.0.0.10"}),
            "VIP tcp:10.0.0.10:80 itself",
        ),
        ("backend = the IPv6 VIP", "PUT", dns_backends.clone(), json!([{"address": "fc00::10"}]), "itself"),
        (
            "mapped twin of a backend",
            "POST",
            http_backends.clone(),
            json!({"address": "::ffff:10.1.0.1"}),
            "IPv4-mapped",
        ),
        (
            "mapped twin in a list",
            "PUT",
            http_backends.clone(),
            json!([{"address": "10.1.0.7"}, {"address": "::ffff:10.1.0.7"}]),
            "IPv4-mapped",
        ),
        (
            "mapped twin in a new VIP",
            "POST",
            "/v1/vips".into(),
            json!({"vip": "tcp:10.0.0.60:80", "backends": [{"address": "::ffff:10.1.0.7"}, {"address": "10.1.0.7"}]}),
            "IPv4-mapped",
        ),
        (
            "a reserved backend in a new VIP",
            "POST",
            "/v1/vips".into(),
            json!({"vip": "tcp:10.0.0.60:80", "backends": [{"address": "0.0.0.0"}]}),
            "unspecified",
        ),
    ];
    for (what, method, path, body, contains) in cases {
        let code = match contains {
            c if c.contains("itself") => "backend_is_vip",
            "IPv4-mapped" => "duplicate_backend",
            _ => "invalid_address",
        };
        let msg = lab.call(method, &path, Some(&body)).error(400, code, what);
        assert!(msg.contains(contains), "{what}: {msg:?} does not mention {contains:?}");
        assert_eq!(lab.vips(), vips_before, "{what} changed the VIPs");
        assert_eq!(fs::read(&lab.state_file).unwrap(), state_before, "{what} changed the state file");
        assert_eq!(dataplane_snapshot(&bal), dataplane_before, "{what} changed the data plane");
    }
    lab.get("/v1/vips/tcp:0.0.0.0:80").error(400, "invalid_address", "GET a VIP that cannot exist");

    // RFC 7235: the scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {TOKEN}");
        let body = serde_json::to_vec(&json!({"weight": 4})).unwrap();
        let r = lab.http("PATCH", &format!("{http_backends}/10.1.0.1"), Some(("application/json", body)), Some(&auth));
        r.ok(200, &format!("PATCH with {scheme:?}"));
    }
}

/// `/v1/openapi.json` serves the generated document, which is the committed
/// file.
#[test]
fn the_served_openapi_document_is_the_generated_one() {
    let lab = Lab::new();
    let r = lab.get("/v1/openapi.json");
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/json"), "{}", r.content_type);
    assert_eq!(r.body, *lb_control::api::openapi_json());
    assert_eq!(r.body, fs::read_to_string(lb_control::api::OPENAPI_FILE).unwrap(), "regenerate openapi.json");
    let doc = r.json();
    let patch = &doc["components"]["schemas"]["BackendPatch"]["oneOf"];
    assert_eq!(patch.as_array().map(Vec::len), Some(2), "{patch}");
    assert!(doc["components"]["schemas"]["VipId"]["pattern"].is_string());
}

// ---- API fuzzing (issue 10, item 9) -------------------------------------------------

/// Where `scripts/setup.sh` installs schemathesis.
const SCHEMATHESIS: &str = "/opt/xdp-lb/venv/bin/schemathesis";
const FUZZ_TIMEOUT: Duration = Duration::from_secs(600);

/// Checks that the API, the state file and the data plane describe the same
/// VIPs: every VIP of `GET /v1/vips` (and no other) is in the state file and
/// in `VIPS` with its echo marker, and its ring holds exactly its backends of
/// non-zero weight.
fn assert_api_state_and_maps_agree(lab: &Lab) {
    let api: Vec<lb_control::api::VipBody> = serde_json::from_value(lab.vips()).expect("GET /v1/vips parses");
    let state = lb_control::state::load(&lab.state_file).unwrap().expect("a state file");
    let from_api: lb_control::model::VipSet = api
        .iter()
        .map(|v| {
            let backends = v.backends.iter().map(|b| (b.address, lb_control::model::Backend { weight: b.weight }));
            (v.vip, lb_control::model::VipSpec { flags: v.flags.clone(), backends: backends.collect() })
        })
        .collect();
    assert_eq!(state.vips, from_api, "the state file and GET /v1/vips differ");

    let bal = lab.balancer();
    let in_maps: BTreeMap<lb_common::VipKey, lb_common::VipMeta> = bal.vips().unwrap().into_iter().collect();
    let mut expected_keys = std::collections::BTreeSet::new();
    for (id, spec) in &from_api {
        let key = common::vip_key(id.addr, id.port, id.proto.number());
        let meta = in_maps.get(&key).unwrap_or_else(|| panic!("VIP {id} is not in the VIPS map"));
        expected_keys.insert(key);
        let echo = if id.addr.is_ipv4() { lb_common::IPPROTO_ICMP } else { lb_common::IPPROTO_ICMPV6 };
        expected_keys.insert(common::vip_key(id.addr, 0, echo));
        let in_ring: Vec<std::net::IpAddr> = bal
            .ring(meta.ring)
            .unwrap()
            .into_iter()
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .filter(|i| *i != 0)
            .map(|i| {
                let real = bal.real(i).unwrap();
                spec.backends
                    .keys()
                    .copied()
                    .find(|a| lb_control::dataplane::ip_to_addr(*a) == (real.addr, real.family))
                    .unwrap_or_else(|| {
                        panic!("VIP {id}'s ring names backend slot {i} ({real:?}), not one of its backends")
                    })
            })
            .collect();
        // A backend of small weight may own no slot of a small ring; every
        // slot's backend serves the VIP, and a VIP with serving backends
        // has a full ring.
        let serving: Vec<_> = spec.backends.iter().filter(|(_, b)| b.weight > 0).map(|(a, _)| *a).collect();
        assert!(in_ring.iter().all(|a| serving.contains(a)), "VIP {id}: ring {in_ring:?}, serving {serving:?}");
        assert_eq!(in_ring.is_empty(), serving.is_empty(), "VIP {id}: ring {in_ring:?}, serving {serving:?}");
    }
    let keys: std::collections::BTreeSet<_> = in_maps.keys().copied().collect();
    assert_eq!(keys, expected_keys, "the VIPS map holds VIPs the API does not list (or lacks some)");
    // REALS holds exactly the backends of all VIPs.
    let all_backends: std::collections::BTreeSet<_> =
        from_api.values().flat_map(|s| s.backends.keys()).map(|a| lb_control::dataplane::ip_to_addr(*a)).collect();
    let reals: std::collections::BTreeSet<_> = (1..bal.limits().max_reals)
        .map(|i| bal.real(i).unwrap())
        .filter(|r| r.family != 0)
        .map(|r| (r.addr, r.family))
        .collect();
    assert_eq!(reals, all_backends, "REALS and the VIPs' backends differ");
}

/// schemathesis against a real daemon, every check, about 30 examples per
/// operation: no server error, no answer outside its schema, no valid
/// request refused, no invalid one accepted; afterwards the API, the state
/// file and the maps agree. `LB_FUZZ_SEED` changes the (fixed) seed.
#[test]
fn schemathesis_finds_nothing_and_state_files_and_maps_agree() {
    assert!(
        Path::new(SCHEMATHESIS).exists(),
        "{SCHEMATHESIS} is missing: run scripts/setup.sh (it installs schemathesis into /opt/xdp-lb/venv)"
    );
    let mut lab = Lab::new();
    // Room for what the fuzzer adds: a VIP or a backend refused for want of
    // space would be a valid request refused. A small ring keeps that cheap.
    lab.stop();
    detach_all(&lab.pin_dir).unwrap();
    let _ = fs::remove_file(&lab.state_file);
    let text = lab
        .config_text(BASE_VIPS)
        .replace("ring_size = 65537", "ring_size = 257")
        .replace("max_vips = 16", "max_vips = 1024")
        .replace("max_backends = 64", "max_backends = 8192")
        .replace("max_body_bytes = 4096", "max_body_bytes = 1048576");
    fs::write(&lab.config, text).unwrap();
    lab.limits = Config::load(&lab.config).unwrap().limits;
    lab.start();

    let seed = std::env::var("LB_FUZZ_SEED").unwrap_or_else(|_| "20261125".into());
    let report = lab.dir.join("schemathesis-junit.xml");
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fuzz");
    let mut cmd = lab.lb.command(SCHEMATHESIS);
    cmd.arg("--config-file").arg(fuzz_dir.join("schemathesis.toml"));
    cmd.args(["run", &format!("{API}/v1/openapi.json"), "--checks", "all", "--max-examples", "30", "--seed", &seed])
        .args(["--generation-database", "none", "--no-color", "--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .arg("--report-junit-path")
        .arg(&report)
        .args(["--report", "junit"])
        .env("SCHEMATHESIS_HOOKS", fuzz_dir.join("hooks.py"))
        .env("HOME", &lab.dir)
        .current_dir(&lab.dir);
    let (status, out, err) = run_bounded_for(cmd, &lab.dir, "schemathesis", FUZZ_TIMEOUT);
    if let Some(path) = std::env::var_os("LB_FUZZ_OUTPUT") {
        fs::write(path, format!("{out}\n{err}")).unwrap();
    }
    assert!(status.success(), "schemathesis found problems ({status}):\n{out}\n{err}\n{}", lab.logs());
    assert!(out.contains("passed"), "schemathesis ran no test?\n{out}");
    lab.assert_running();
    assert_api_state_and_maps_agree(&lab);
}

/// [`run_bounded`] with its own time limit.
fn run_bounded_for(mut cmd: Command, dir: &Path, what: &str, limit: Duration) -> (ExitStatus, String, String) {
    let n = unique_name("out");
    let (out_path, err_path) = (dir.join(format!("{n}.stdout")), dir.join(format!("{n}.stderr")));
    cmd.stdin(Stdio::null()).stdout(fs::File::create(&out_path).unwrap()).stderr(fs::File::create(&err_path).unwrap());
    // SAFETY: prctl is async-signal-safe; the child dies with the test.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}: {}", fs::read_to_string(&out_path).unwrap_or_default());
        }
        std::thread::sleep(POLL);
    };
    (status, fs::read_to_string(&out_path).unwrap(), fs::read_to_string(&err_path).unwrap())
}

// ---- control-plane safety (issue 10) -------------------------------------------------

/// Runs `lb-control --config CONFIG run` inside the lab's namespace to
/// completion (bounded): for daemons that must refuse to start.
fn run_second_daemon(lab: &Lab, config: &Path) -> (ExitStatus, String, String) {
    let mut cmd = lab.lb.command(env!("CARGO_BIN_EXE_lb-control"));
    cmd.env_remove("LB_CONFIG").env_remove("NOTIFY_SOCKET").env("NO_COLOR", "1").arg("--config").arg(config).arg("run");
    run_bounded(cmd, &lab.dir, "a second lb-control")
}

/// A second daemon on the same pin directory (another config, another API
/// port) refuses to start, names the first one's PID and changes nothing;
/// a daemon whose API port is taken exits before it creates a single map.
#[test]
fn a_second_daemon_on_the_same_pin_dir_changes_nothing() {
    let mut lab = Lab::new();
    let vips_before = lab.vips();
    let maps_before = pinned_map_ids(&lab.pin_dir);
    let dataplane_before = dataplane_snapshot(&lab.balancer());
    let state_before = fs::read(&lab.state_file).unwrap();
    let prog_before = attached_prog_id(&lab.link());

    // Another config: only the IPv6 VIP, the API on another port.
    let vip6_only = BASE_VIPS.split("[[vip]]").filter(|t| t.contains("fc00::10")).collect::<String>();
    let other = lab.dir.join("other.toml");
    let text = lab.config_text(&format!("[[vip]]{vip6_only}")).replace("127.0.0.1:9780", "127.0.0.1:9781");
    fs::write(&other, text).unwrap();
    let (status, out, err) = run_second_daemon(&lab, &other);
    assert!(!status.success(), "a second daemon started: {out}{err}");
    let pid = lab.pid().to_string();
    assert!(err.contains("in use by another lb-control") && err.contains(&format!("PID {pid}")), "stderr: {err}");

    lab.assert_running();
    assert_eq!(lab.vips(), vips_before, "the API's VIPs changed");
    assert_eq!(pinned_map_ids(&lab.pin_dir), maps_before, "the pinned maps were replaced");
    assert_eq!(dataplane_snapshot(&lab.balancer()), dataplane_before, "the data plane changed");
    assert_eq!(fs::read(&lab.state_file).unwrap(), state_before, "the state file was rewritten");
    assert_eq!(attached_prog_id(&lab.link()), prog_before, "the attached program changed");

    // `detach` refuses too, naming the daemon; nothing is removed.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-control"));
    cmd.env_remove("LB_CONFIG").arg("--config").arg(&lab.config).arg("detach");
    let (status, out, err) = run_bounded(cmd, &lab.dir, "lb-control detach");
    assert!(!status.success(), "detach ran under a live daemon: {out}");
    assert!(err.contains(&format!("PID {pid}")) && err.contains("--force"), "stderr: {err}");
    assert_eq!(pinned_map_ids(&lab.pin_dir), maps_before, "detach removed pins");

    // Another pin directory, but the API's port is taken: no map is created.
    let free_pins = PathBuf::from(format!("{}-second", lab.pin_dir.display()));
    let other_state = lab.dir.join("other-state.json");
    let text = lab
        .config_text(BASE_VIPS)
        .replace(&lab.pin_dir.display().to_string(), &free_pins.display().to_string())
        .replace(&lab.state_file.display().to_string(), &other_state.display().to_string());
    fs::write(&other, text).unwrap();
    let (status, out, err) = run_second_daemon(&lab, &other);
    let created = versioned_pin_dir(&free_pins).exists();
    let _ = detach_all(&free_pins);
    let _ = fs::remove_dir(&free_pins);
    assert!(!status.success(), "a daemon started on a taken port: {out}{err}");
    assert!(err.contains("binding the API to 127.0.0.1:9780"), "stderr: {err}");
    assert!(!created, "maps were pinned before the API's port was bound");
    assert!(!other_state.exists(), "a state file was written before the API's port was bound");
    assert_eq!(lab.vips(), vips_before);
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
fn fd_limits() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

/// Lets this (test) process open `needed` descriptors: raises its soft
/// limit to the hard one, which must be enough.
fn allow_fds(needed: u64) {
    let (soft, hard) = fd_limits();
    if soft < needed {
        let lim = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: setrlimit reads the struct we own.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    assert!(fd_limits().0 >= needed, "this test needs {needed} file descriptors; the hard limit is {hard}");
}

/// Starts the lab's daemon with its soft descriptor limit at `soft` (as
/// systemd's default 1024) and the hard one at `hard`.
fn start_with_fd_limit(lab: &mut Lab, soft: u64, hard: u64) {
    lab.start_with(move |cmd| {
        // SAFETY: setrlimit is async-signal-safe; it only touches the child.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
}

/// Opens `count` connections to the API from inside the lab; every other
/// one sends half a request head, the rest send nothing.
fn idle_connections(lab: &Lab, count: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write as _;
    lab.lb
        .run(move || {
            let mut held = Vec::with_capacity(count);
            for i in 0..count {
                let mut s = std::net::TcpStream::connect_timeout(&"127.0.0.1:9780".parse()?, Duration::from_secs(5))?;
                if i % 2 == 1 {
                    // May fail on a connection the server already closed
                    // (beyond its cap): that one is checked elsewhere.
                    let _ = s.write_all(b"GET /v1/vips HTTP/1.1\r\nHost: lb\r\n");
                }
                held.push(s);
            }
            Ok(held)
        })
        .expect("opening connections to the API")
}

/// Whether the server closed this connection (EOF or reset) within `wait`.
fn closed_by_server(s: &std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read as _;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// 1,100 idle and half-sent connections against a daemon started with a
/// soft descriptor limit of 1024: `/healthz`, `/readyz` and the API keep
/// answering while they are held.
#[test]
fn idle_and_half_sent_connections_do_not_starve_the_api() {
    const HELD: usize = 1100;
    allow_fds(HELD as u64 + 200);
    let mut lab = Lab::new();
    lab.stop();
    let (_, hard) = fd_limits();
    start_with_fd_limit(&mut lab, 1024, hard);

    let held = idle_connections(&lab, HELD);
    for _ in 0..20 {
        let started = Instant::now();
        let r = lab.http("GET", "/healthz", None, None);
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "/healthz with {HELD} connections held");
        assert!(started.elapsed() < Duration::from_secs(2), "/healthz took {:?}", started.elapsed());
    }
    assert_eq!(lab.get("/readyz").status, 200);
    lab.call("PATCH", &format!("/v1/vips/{VIP_HTTP}/backends/10.1.0.2"), Some(&json!({"weight": 3})))
        .ok(200, "PATCH with connections held");
    lab.assert_running();
    assert!(!lab.logs().contains("accepting an API connection failed"), "accept failed\n{}", lab.logs());
    drop(held);
}

/// Connections beyond `api.max_connections` are closed at once (and
/// logged); idle and half-sent ones are closed after the timeouts, which
/// frees the API again.
#[test]
fn the_connection_cap_and_timeouts_free_the_api() {
    const CAP: usize = 40;
    allow_fds(200);
    let mut lab = Lab::new();
    lab.stop();
    let text = fs::read_to_string(&lab.config).unwrap().replace(
        "max_body_bytes = 4096",
        &format!("max_body_bytes = 4096\nmax_connections = {CAP}\nheader_read_timeout_secs = 1\nidle_timeout_secs = 2"),
    );
    fs::write(&lab.config, text).unwrap();
    lab.start();

    // A keep-alive connection that sent one request and then idles.
    let mut keep_alive = lab.lb.run(|| Ok(std::net::TcpStream::connect("127.0.0.1:9780")?)).unwrap();
    {
        use std::io::{Read as _, Write as _};
        keep_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n").unwrap();
        keep_alive.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = keep_alive.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    }
    // A request whose body stalls after its head: only the idle timeout
    // (no byte either way for 2 s) ends it.
    let stalled_body = lab
        .lb
        .run(|| {
            use std::io::Write as _;
            let mut s = std::net::TcpStream::connect("127.0.0.1:9780")?;
            let head = format!(
                "POST /v1/vips HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"vip\":"
            );
            s.write_all(head.as_bytes())?;
            Ok(s)
        })
        .unwrap();
    let opened = Instant::now();
    let held = idle_connections(&lab, CAP + 10);
    // The cap holds the keep-alive and stalled ones and CAP - 2 of these;
    // at least the last ten are closed as soon as they are accepted.
    let refused = held.iter().rev().take(10).filter(|s| closed_by_server(s, Duration::from_millis(300))).count();
    assert_eq!(refused, 10, "connections beyond the cap were not closed at once");
    assert!(opened.elapsed() < Duration::from_millis(900), "checking took too long to tell 'at once' from the timeout");
    lab.wait_log("API connection limit reached", Duration::from_secs(5));

    // Header-read timeout (1 s) for the idle and half-sent ones and for the
    // keep-alive one waiting for its next request; idle timeout (2 s) for
    // the stalled body: all closed, the API answers.
    let first = &held[0];
    assert!(closed_by_server(first, Duration::from_secs(5)), "an idle connection outlived the header-read timeout");
    assert!(closed_by_server(&held[1], Duration::from_secs(5)), "a half-sent request outlived the header-read timeout");
    assert!(closed_by_server(&keep_alive, Duration::from_secs(5)), "an idle keep-alive connection was kept");
    assert!(
        closed_by_server(&stalled_body, Duration::from_secs(8)),
        "a stalled request body outlived the idle timeout"
    );
    assert_eq!(lab.vips(), base_vips_json(), "the stalled call changed nothing");
    let r = lab.http("GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
    lab.assert_running();
}

/// `lb-control detach --force` against a live daemon: removes the pins,
/// which detaches the program. Returns its output.
fn force_detach(lab: &Lab) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-control"));
    cmd.env_remove("LB_CONFIG").arg("--config").arg(&lab.config).arg("detach").arg("--force");
    let (status, out, err) = run_bounded(cmd, &lab.dir, "lb-control detach --force");
    assert!(status.success(), "detach --force failed: {out}{err}");
    // Every map of the balancer, its link on the one interface and the
    // health probes' TC link there.
    let pins = lb_common::map_names::BALANCER_MAPS.len() + 2;
    assert!(out.contains(&format!("removed {pins} pins")), "{out}");
    out
}

/// The daemon's gauges from `/metrics`: (ready, attached).
fn ready_and_attached(lab: &Lab) -> (String, String) {
    let text = lab.get("/metrics").body;
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    };
    (gauge("xdp_lb_ready"), gauge("xdp_lb_attached"))
}

/// With the default `reattach = "auto"`, a detach behind the daemon's
/// back is logged and undone within a few seconds: the daemon's program
/// is on the interface again through a newly pinned link, and changes
/// work.
#[test]
fn a_detached_balancer_is_reattached_by_default() {
    let lab = Lab::new();
    let prog = attached_prog_id(&lab.link()).expect("attached at start");
    force_detach(&lab);
    lab.wait_log("the balancer was detached behind the daemon's back", Duration::from_secs(5));
    lab.wait_log("re-attached the balancer", Duration::from_secs(5));
    assert_eq!(attached_prog_id(&lab.link()), Some(prog), "the daemon's program is attached again");
    assert!(link_pin(&lab.pin_dir, LB_IF).exists(), "the link is pinned again");
    for name in lb_common::map_names::BALANCER_MAPS {
        assert!(versioned_pin_dir(&lab.pin_dir).join(name).exists(), "map {name} is pinned again");
    }
    assert_eq!(lab.get("/readyz").status, 200);
    assert_eq!(ready_and_attached(&lab), ("1".into(), "1".into()));
    lab.call("PATCH", &format!("/v1/vips/{VIP_HTTP}/backends/10.1.0.2"), Some(&json!({"weight": 3})))
        .ok(200, "PATCH after re-attaching");
    // Still locked: a second daemon is refused even though detach removed
    // the pin directory.
    let (status, _, err) = run_second_daemon(&lab, &lab.config);
    assert!(!status.success() && err.contains(&format!("PID {}", lab.pid())), "stderr: {err}");
}

/// With `reattach = "never"` the daemon stays detached: `/readyz` answers
/// 503 with the reason, changes answer 503, the gauges say 0, reads still
/// work; a restart attaches again.
#[test]
fn with_reattach_never_a_detached_daemon_refuses_changes_until_restarted() {
    let mut lab = Lab::new();
    lab.stop();
    let text = fs::read_to_string(&lab.config)
        .unwrap()
        .replace("xdp_mode = \"native\"", "xdp_mode = \"native\"\nreattach = \"never\"");
    fs::write(&lab.config, text).unwrap();
    lab.start();
    let vips = lab.vips();
    force_detach(&lab);

    let start = Instant::now();
    let reason = loop {
        let r = lab.get("/readyz");
        if r.status == 503 {
            break r.error(503, "not_ready", "/readyz after detach");
        }
        assert!(start.elapsed() < Duration::from_secs(5), "/readyz still {} {} 5 s after detach", r.status, r.body);
        std::thread::sleep(POLL);
    };
    assert!(reason.contains("detached") && reason.contains("never"), "{reason}");
    lab.wait_log("the balancer was detached behind the daemon's back", Duration::from_secs(1));
    assert!(!lab.link().contains("prog/xdp"), "still attached:\n{}", lab.link());
    let msg = lab.call("PATCH", &format!("/v1/vips/{VIP_HTTP}/backends/10.1.0.2"), Some(&json!({"weight": 3}))).error(
        503,
        "not_attached",
        "PATCH while detached",
    );
    assert!(msg.contains("not attached"), "{msg}");
    lab.call("DELETE", &format!("/v1/vips/{VIP_HTTP}"), None).error(503, "not_attached", "DELETE while detached");
    assert_eq!(lab.vips(), vips, "reads still answer, and nothing changed");
    assert_eq!(ready_and_attached(&lab), ("0".into(), "0".into()));
    std::thread::sleep(Duration::from_secs(2));
    assert!(!lab.link().contains("prog/xdp"), "re-attached despite reattach = \"never\"");

    lab.stop();
    lab.start();
    assert!(lab.link().contains("prog/xdp"), "a restart attaches again");
    assert_eq!(lab.vips(), vips, "the state file kept the VIPs");
    lab.call("PATCH", &format!("/v1/vips/{VIP_HTTP}/backends/10.1.0.2"), Some(&json!({"weight": 3})))
        .ok(200, "PATCH after the restart");
}

/// Out of descriptors (the daemon's limit lowered under it): accept errors
/// are logged, the attachment check does not mistake its own failure for
/// a detach, and the API answers again once the connections close.
#[test]
fn accept_errors_are_logged_and_the_api_recovers() {
    allow_fds(200);
    let mut lab = Lab::new();
    let pid = lab.pid();
    let open = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let lim = libc::rlimit { rlim_cur: open + 8, rlim_max: open + 8 };
    // SAFETY: prlimit on our own child, from a struct we own.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) }, 0);
    let held = idle_connections(&lab, 40);
    lab.wait_log("accepting an API connection failed", Duration::from_secs(10));
    // Two attachment checks run out of descriptors meanwhile.
    std::thread::sleep(Duration::from_millis(2_500));
    lab.assert_running();
    drop(held);

    let start = Instant::now();
    loop {
        match lab.try_http("GET", "/readyz", None, None) {
            Ok(r) if r.status == 200 => break,
            Ok(r) => panic!("/readyz {}: {}\n{}", r.status, r.body, lab.logs()),
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(10), "the API did not recover: {e:#}\n{}", lab.logs())
            }
        }
        std::thread::sleep(POLL);
    }
    assert!(!lab.logs().contains("detached behind"), "a failed check was taken for a detach\n{}", lab.logs());
}

// ---- operator tools: version, VIP export and apply (issue 13, items 4 and 5) ---------

/// `GET /v1/version` and `lbctl version` say what runs: the version, a
/// commit, the attached program's tag (as the kernel reports it for the
/// program on the interface), the map layout and the kernel.
#[test]
fn version_names_the_running_program_and_kernel() {
    let lab = Lab::new();
    let v = lab.get("/v1/version").ok(200, "GET /v1/version");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["git_commit"], lb_control::api::GIT_COMMIT, "{v}");
    assert_eq!(v["map_layout_version"], lb_common::MAP_LAYOUT_VERSION, "{v}");
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(v["kernel"], kernel.trim(), "{v}");
    let id = attached_prog_id(&lab.link()).expect("a program on the interface");
    let attached = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .unwrap_or_else(|| panic!("program {id} is not loaded"));
    assert_eq!(v["program_tag"], format!("{:016x}", attached.tag()), "{v}");

    let (status, out, err) = lab.lbctl(false, &["version"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("lbctl") && out.contains("lb-control"), "{out}");
    assert!(out.contains(v["program_tag"].as_str().unwrap()) && out.contains(kernel.trim()), "{out}");
    let (status, out, err) = lab.lbctl(false, &["-o", "json", "version"]);
    assert!(status.success(), "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["daemon"], v);
    assert_eq!(j["lbctl"]["version"], env!("CARGO_PKG_VERSION"));
}

/// The running set, as `GET /v1/vips` lists it, in the model.
fn running_set(lab: &Lab) -> lb_control::model::VipSet {
    let api: Vec<lb_control::api::VipBody> = serde_json::from_value(lab.vips()).unwrap();
    api.into_iter()
        .map(|v| {
            let backends = v.backends.iter().map(|b| (b.address, lb_control::model::Backend { weight: b.weight }));
            (v.vip, lb_control::model::VipSpec { flags: v.flags, backends: backends.collect() })
        })
        .collect()
}

/// `lbctl vip export` writes the running set in the config's syntax; the
/// file, edited, goes back with `lbctl vip apply -f` as one change (a dry
/// run first changes nothing) and the diff is printed; a bad entry or a set
/// beyond the limits refuses the whole set.
#[test]
fn vip_export_and_apply_round_trip_and_refuse_as_a_whole() {
    let lab = Lab::new();
    let before = running_set(&lab);
    let (status, exported, err) = lab.lbctl(false, &["vip", "export"]);
    assert!(status.success(), "{err}");
    assert_eq!(lb_control::config::parse_vip_file(&exported, "export").unwrap().vips, before, "{exported}");

    // Edit: drop the IPv6 VIP, reweight and add a backend, add a VIP.
    let edited = exported
        .replace("address = \"10.1.0.2\"\nweight = 2", "address = \"10.1.0.2\"\nweight = 5\n\n[[vip.backend]]\naddress = \"10.1.0.3\"\nweight = 1")
        .split("\n[[vip]]\naddress = \"fc00::10\"")
        .next()
        .unwrap()
        .to_string()
        + "\n[[vip]]\naddress = \"10.0.0.11\"\nport = 443\nprotocol = \"tcp\"\nflags = [\"hash-no-src-port\"]\n\n[[vip.backend]]\naddress = \"10.1.0.1\"\nweight = 1\n";
    let want = lb_control::config::parse_vip_file(&edited, "edited").unwrap().vips;
    assert_eq!(want.len(), 2, "{edited}");
    let file = lab.dir.join("vips.toml");
    fs::write(&file, &edited).unwrap();
    let file = file.to_str().unwrap();

    let (status, out, err) = lab.lbctl(true, &["vip", "apply", "-f", file, "--dry-run"]);
    assert!(status.success(), "{err}");
    for line in [
        "+ tcp:10.0.0.11:443",
        "- udp:[fc00::10]:53",
        "~ tcp:10.0.0.10:80",
        "    + backend 10.1.0.3",
        "    ~ backend 10.1.0.2 weight 2 -> 5",
        "1 added, 1 removed, 1 changed (dry run: nothing changed)",
    ] {
        assert!(out.lines().any(|l| l == line), "dry run: no line {line:?} in\n{out}");
    }
    assert_eq!(running_set(&lab), before, "a dry run changed the set");

    let (status, out, err) = lab.lbctl(true, &["-o", "json", "vip", "apply", "-f", file]);
    assert!(status.success(), "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["dry_run"], false, "{r}");
    assert_eq!(r["applied"]["vips_added"], 1, "{r}");
    assert_eq!(r["applied"]["vips_removed"], 1, "{r}");
    assert_eq!(running_set(&lab), want);
    assert_api_state_and_maps_agree(&lab);
    let (_, again, _) = lab.lbctl(false, &["vip", "export"]);
    assert_eq!(lb_control::config::parse_vip_file(&again, "again").unwrap().vips, want);

    // A bad entry among good ones: refused as a whole by the API ...
    let good = json!({"vip": "tcp:10.0.0.12:80", "backends": [{"address": "10.1.0.9"}]});
    let bad = json!({"vip": "tcp:10.0.0.13:80", "backends": [{"address": "10.0.0.13"}]});
    let msg = lab.call("PUT", "/v1/vips", Some(&json!([good, bad]))).error(400, "backend_is_vip", "a bad entry");
    assert!(msg.starts_with("[1] tcp:10.0.0.13:80"), "{msg}");
    lab.call("PUT", "/v1/vips", Some(&json!([good, good]))).error(400, "duplicate_vip", "a VIP twice");
    let r = lab.http(
        "PUT",
        "/v1/vips?dry_run=maybe",
        Some(("application/json", b"[]".to_vec())),
        Some(&format!("Bearer {TOKEN}")),
    );
    r.error(400, "bad_request", "dry_run not a boolean");
    // ... and beyond the limits (max_vips = 16).
    let many: Vec<Value> = (1..=17).map(|i| json!({"vip": format!("tcp:10.0.1.{i}:80")})).collect();
    lab.call("PUT", "/v1/vips", Some(&Value::Array(many.clone()))).error(422, "rejected", "17 VIPs");
    let r = lab.http(
        "PUT",
        "/v1/vips?dry_run=true",
        Some(("application/json", serde_json::to_vec(&many).unwrap())),
        Some(&format!("Bearer {TOKEN}")),
    );
    r.error(422, "rejected", "17 VIPs, dry run");
    lab.http("PUT", "/v1/vips", Some(("application/json", b"[]".to_vec())), None).error(
        401,
        "unauthorized",
        "no token",
    );
    // ... and by lbctl before it sends anything, with the file's line.
    let bad_file = lab.dir.join("bad.toml");
    fs::write(&bad_file, format!("{edited}\n[[vip]]\naddress = \"10.0.0.14\"\nport = 80\nprotocol = \"tcp\"\n\n[[vip.backend]]\naddress = \"10.1.0.300\"\n")).unwrap();
    let (status, _, err) = lab.lbctl(true, &["vip", "apply", "-f", bad_file.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("bad.toml: line") && err.contains("vip[2].backend[0].address"), "{err}");
    assert_eq!(running_set(&lab), want, "a refused set changed something");
    assert_api_state_and_maps_agree(&lab);

    // The empty set empties the balancer.
    let r = lab.call("PUT", "/v1/vips", Some(&json!([]))).ok(200, "PUT []");
    assert_eq!(r["diff"]["removed"].as_array().unwrap().len(), 2, "{r}");
    assert!(running_set(&lab).is_empty());
    assert_api_state_and_maps_agree(&lab);
}

/// `--log-format json` (here through `LB_LOG_FORMAT`): every line the
/// daemon logs is one JSON object with its level, message and fields.
#[test]
fn json_logs_are_one_object_per_line() {
    let mut lab = Lab::new();
    lab.stop();
    let from = fs::metadata(&lab.log).unwrap().len() as usize;
    lab.start_with(|cmd| {
        cmd.env("LB_LOG_FORMAT", "json");
    });
    let vip = "tcp:10.0.0.30:80";
    lab.call("POST", "/v1/vips", Some(&json!({"vip": vip, "backends": [{"address": "10.1.0.3"}]})))
        .ok(201, "POST /v1/vips");
    lab.stop();
    let text = fs::read_to_string(&lab.log).unwrap();
    let lines: Vec<Value> = text[from..]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    assert!(lines.iter().all(|l| l["level"].is_string() && l["message"].is_string()), "{text}");
    let added = lines.iter().find(|l| l["message"] == "VIP added").unwrap_or_else(|| panic!("no 'VIP added'\n{text}"));
    assert_eq!(added["vip"], vip, "the event's fields are top-level keys: {added}");
    assert_eq!(added["level"], "INFO");
}

// ---- health checks set through the API persist (issue 12) ----------------------------

/// Each backend's health state of `vip`, as `GET /v1/vips/{vip}/backends` gives it.
fn health_states(lab: &Lab, vip: &str) -> Vec<String> {
    let list = lab.get_json(&format!("/v1/vips/{vip}/backends"));
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|b| b["health"]["state"].as_str().unwrap_or_else(|| panic!("no health state: {b}")).to_string())
        .collect()
}

/// The state file as JSON.
fn state_json(lab: &Lab) -> Value {
    serde_json::from_slice(&fs::read(&lab.state_file).unwrap()).expect("the state file is JSON")
}

/// SIGHUP, then waits (bounded) until the daemon logged one more
/// "config reloaded".
fn reload_and_wait(lab: &mut Lab) {
    let log = lab.log.clone();
    let reloads = || fs::read_to_string(&log).unwrap_or_default().matches("config reloaded").count();
    let before = reloads();
    lab.signal(libc::SIGHUP);
    let start = Instant::now();
    while reloads() == before {
        lab.assert_running();
        assert!(start.elapsed() < RELOAD_TIMEOUT, "no reload within {RELOAD_TIMEOUT:?}\n{}", lab.logs());
        std::thread::sleep(POLL);
    }
}

/// A check set with `PUT /v1/vips/{vip}/health` is written to the state
/// file and is still in force after a restart and after a SIGHUP with an
/// unchanged config; a config change of that VIP's `[vip.health]` takes the
/// file's; removing the VIP removes its check.
#[test]
fn an_api_health_check_survives_restarts_and_reloads_until_the_file_changes_it() {
    let mut lab = Lab::new();
    assert_eq!(health_states(&lab, VIP_HTTP), ["disabled", "disabled"], "the config checks nothing");
    let check = json!({"kind": "tcp", "interval": "5s", "timeout": "1s", "rise": 1, "fall": 5});
    let r = lab.call("PUT", &format!("/v1/vips/{VIP_HTTP}/health"), Some(&check)).ok(200, "PUT health");
    assert_eq!(r["health"]["kind"], "tcp", "{r}");
    let in_force = |lab: &Lab| {
        let states = health_states(lab, VIP_HTTP);
        assert_eq!(states.len(), 2);
        assert!(states.iter().all(|s| s != "disabled"), "the API's check is not in force: {states:?}\n{}", lab.logs());
        let vip = lab.get_json(&format!("/v1/vips/{VIP_HTTP}"));
        assert_eq!((&vip["health"]["kind"], &vip["health"]["interval"]), (&json!("tcp"), &json!("5s")), "{vip}");
        let state = state_json(lab);
        assert_eq!(state["version"], 2, "{state}");
        assert_eq!(state["health"][VIP_HTTP]["kind"], "tcp", "the state file holds the check: {state}");
        assert_eq!(state["health"][VIP_HTTP]["fall"], 5, "{state}");
    };
    in_force(&lab);

    // A restart: read back from the state file.
    let status = lab.stop();
    assert!(status.success(), "{status}\n{}", lab.logs());
    lab.start();
    in_force(&lab);

    // A reload with the config unchanged keeps it.
    reload_and_wait(&mut lab);
    in_force(&lab);

    // A check of another VIP goes with its VIP.
    let udp = json!({"kind": "udp", "interval": "5s"});
    lab.call("PUT", &format!("/v1/vips/{VIP_DNS6}/health"), Some(&udp)).ok(200, "PUT udp health");
    assert_eq!(state_json(&lab)["health"][VIP_DNS6]["kind"], "udp");
    lab.call("DELETE", &format!("/v1/vips/{VIP_DNS6}"), None).ok(200, "DELETE");
    lab.call("POST", "/v1/vips", Some(&json!({"vip": VIP_DNS6, "backends": [{"address": "fc00:1::1"}]})))
        .ok(201, "POST again");
    assert!(state_json(&lab)["health"].get(VIP_DNS6).is_none(), "{}", state_json(&lab));
    assert_eq!(health_states(&lab, VIP_DNS6), ["disabled"], "the removed VIP's check did not come back");
    in_force(&lab);

    // The file changes this VIP's [vip.health]: the file's check wins.
    let with_table = BASE_VIPS.replacen(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\n\n[vip.health]\nkind = \"none\"\ninterval = \"7s\"\n",
        1,
    );
    lab.write_config(&with_table);
    Config::load(&lab.config).expect("the new config is valid");
    reload_and_wait(&mut lab);
    assert_eq!(health_states(&lab, VIP_HTTP), ["disabled", "disabled"], "the file's check (none) is in force");
    let vip = lab.get_json(&format!("/v1/vips/{VIP_HTTP}"));
    assert_eq!((&vip["health"]["kind"], &vip["health"]["interval"]), (&json!("none"), &json!("7s")), "{vip}");
    let state = state_json(&lab);
    assert!(state["health"].get(VIP_HTTP).is_none(), "the API's check is gone: {state}");
    // ... and so it stays over a restart.
    lab.stop();
    lab.start();
    assert_eq!(health_states(&lab, VIP_HTTP), ["disabled", "disabled"]);
}

/// `lbctl vip export` writes each VIP's own check as `[vip.health]`;
/// `lbctl vip apply -f` sends it back in the same single change, with the
/// check's change in the diff; a VIP without the table gets the `[health]`
/// defaults; a check that cannot probe its VIP refuses the whole set.
#[test]
fn vip_export_and_apply_carry_health_checks() {
    let lab = Lab::new();
    let check = json!({"kind": "http", "path": "/hz", "interval": "3s", "timeout": "500ms", "on_down": "drain"});
    lab.call("PUT", &format!("/v1/vips/{VIP_HTTP}/health"), Some(&check)).ok(200, "PUT health");
    let (status, exported, err) = lab.lbctl(false, &["vip", "export"]);
    assert!(status.success(), "{err}");
    assert!(exported.contains("[vip.health]\nkind = \"http\"") && exported.contains("path = \"/hz\""), "{exported}");
    assert_eq!(exported.matches("[vip.health]").count(), 1, "only the VIP with a check of its own: {exported}");
    let parsed = lb_control::config::parse_vip_file(&exported, "export").unwrap();
    assert_eq!(parsed.health.len(), 1);
    // The export applied as it is changes nothing.
    let file = lab.dir.join("vips.toml");
    fs::write(&file, &exported).unwrap();
    let (status, out, err) = lab.lbctl(true, &["vip", "apply", "-f", file.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.contains("0 added, 0 removed, 0 changed"), "{out}");

    // Edit: a longer interval for the HTTP VIP, a UDP check for the DNS VIP.
    let edited = exported.replace("interval = \"3s\"", "interval = \"4s\"").replacen(
        "protocol = \"udp\"\n",
        "protocol = \"udp\"\n\n[vip.health]\nkind = \"udp\"\n",
        1,
    );
    fs::write(&file, &edited).unwrap();
    let file = file.to_str().unwrap();
    let (status, out, err) = lab.lbctl(true, &["vip", "apply", "-f", file, "--dry-run"]);
    assert!(status.success(), "{err}");
    for line in [
        "~ tcp:10.0.0.10:80",
        "    ~ health interval 3s -> 4s",
        "~ udp:[fc00::10]:53",
        "    ~ health kind none -> udp",
        "0 added, 0 removed, 2 changed (dry run: nothing changed)",
    ] {
        assert!(out.lines().any(|l| l == line), "dry run: no line {line:?} in\n{out}");
    }
    assert_eq!(lab.get_json(&format!("/v1/vips/{VIP_HTTP}"))["health"]["interval"], "3s", "a dry run changed it");
    let (status, _, err) = lab.lbctl(true, &["vip", "apply", "-f", file]);
    assert!(status.success(), "{err}");
    assert_eq!(lab.get_json(&format!("/v1/vips/{VIP_HTTP}"))["health"]["interval"], "4s");
    assert_eq!(lab.get_json(&format!("/v1/vips/{VIP_DNS6}"))["health"]["kind"], "udp");
    assert!(health_states(&lab, VIP_DNS6).iter().all(|s| s != "disabled"));
    let state = state_json(&lab);
    assert_eq!(
        (&state["health"][VIP_HTTP]["interval"], &state["health"][VIP_DNS6]["kind"]),
        (&json!("4s"), &json!("udp"))
    );
    // Exported again: the same VIPs and checks (written whole now; the
    // lab's [health] defaults are the built-in ones).
    let resolved = |text: &str| {
        let f = lb_control::config::parse_vip_file(text, "file").unwrap();
        let defaults = lb_control::config::health::HealthCheck::default();
        let checks: BTreeMap<_, _> = f.health.iter().map(|(id, raw)| (*id, raw.resolve(&defaults).unwrap())).collect();
        (f.vips, checks)
    };
    let (_, again, _) = lab.lbctl(false, &["vip", "export"]);
    assert_eq!(resolved(&again), resolved(&edited), "{again}");

    // A check that cannot probe its VIP: the whole set is refused.
    let bad = edited.replace("kind = \"http\"", "kind = \"udp\"");
    fs::write(file, &bad).unwrap();
    let (status, _, err) = lab.lbctl(true, &["vip", "apply", "-f", file]);
    assert!(!status.success());
    assert!(err.contains("[0] tcp:10.0.0.10:80: health: kind"), "{err}");
    assert_eq!(lab.get_json(&format!("/v1/vips/{VIP_HTTP}"))["health"]["kind"], "http", "a refused set changed it");

    // The HTTP VIP's table left out: it gets the [health] defaults (none).
    let table = edited.find("[vip.health]\nkind = \"http\"").expect("the HTTP VIP's table");
    let end = table + edited[table..].find("\n[[vip.backend]]").expect("its backends after it");
    let without = format!("{}{}", &edited[..table], &edited[end + 1..]);
    fs::write(file, &without).unwrap();
    let parsed = lb_control::config::parse_vip_file(&without, "without").unwrap();
    assert_eq!(parsed.health.keys().map(ToString::to_string).collect::<Vec<_>>(), [VIP_DNS6], "{without}");
    let (status, out, err) = lab.lbctl(true, &["vip", "apply", "-f", file]);
    assert!(status.success(), "{err}");
    assert!(out.lines().any(|l| l.starts_with("    ~ health ") && l.contains("kind http -> none")), "{out}");
    assert!(lab.get_json(&format!("/v1/vips/{VIP_HTTP}")).get("health").is_none());
    assert_eq!(health_states(&lab, VIP_HTTP), ["disabled", "disabled"]);
    assert!(state_json(&lab)["health"].get(VIP_HTTP).is_none());
}

/// When the probes' TC program cannot be set up, the daemon still serves
/// and says so: checked backends read "unknown" with the reason (not
/// "disabled"), `xdp_lb_health_checks_running` is 0, and the log says why.
#[test]
fn a_checker_that_cannot_start_says_so() {
    let mut lab = Lab::new();
    let check = json!({"kind": "tcp", "interval": "5s"});
    lab.call("PUT", &format!("/v1/vips/{VIP_HTTP}/health"), Some(&check)).ok(200, "PUT health");
    assert!(lab.get("/metrics").body.contains("xdp_lb_health_checks_running 1"), "{}", lab.get("/metrics").body);
    lab.stop();
    // Something the daemon cannot unpin (a directory) where the TC link's
    // pin goes: attaching the program fails.
    let pin = lb_control::health::tc::health_link_pin(&lab.pin_dir, LB_IF);
    let _ = fs::remove_file(&pin);
    fs::create_dir(&pin).unwrap();
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }
    // Dropped before the lab, whose clean-up removes files only.
    let _guard = RemoveDir(pin.clone());
    lab.start();
    lab.wait_log("health checks unavailable", READY_TIMEOUT);
    let list = lab.get_json(&format!("/v1/vips/{VIP_HTTP}/backends"));
    for b in list.as_array().unwrap() {
        assert_eq!(b["health"]["state"], "unknown", "{list}");
        let error = b["health"]["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("TC program did not load") && error.contains("health-link"), "{list}");
    }
    assert_eq!(health_states(&lab, VIP_DNS6), ["disabled"], "an unchecked VIP stays disabled");
    let metrics = lab.get("/metrics").body;
    assert!(metrics.contains("xdp_lb_health_checks_running 0"), "{metrics}");
    assert_eq!(lab.get("/readyz").status, 200, "still serving");
    lab.stop();
}
