//! `lbctl`: drives the lb-control daemon through its REST API.

mod capture;
mod docs;
mod flows;
mod health;
mod version;
mod vip_file;

use std::{collections::BTreeMap, io::Write as _, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lb_common::Counter;
use lb_control::{
    api::{BackendBody, BackendPatch, VipBody},
    controller::StatsSnapshot as Stats,
    model::{VipFlag, VipId},
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Control the XDP load balancer through the lb-control API")]
struct Cli {
    /// The daemon's API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9780", env = "LBCTL_API")]
    api: String,
    /// File holding the API token (needed for changes when the daemon has one).
    #[arg(long, global = true, env = "LBCTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// VIPs.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Backends of a VIP.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Counters: per action and reason, per VIP, per backend.
    Stats,
    /// Where a client's flow to a VIP goes: the backend, and whether the
    /// connection table or the Maglev ring (which slot) decides.
    Flow {
        /// The destination: a VIP, or ADDRESS:PORT of an every-port VIP
        /// (e.g. tcp:10.0.0.30:443).
        vip: VipId,
        /// The client as ADDRESS:PORT (IPv6 in brackets).
        client: std::net::SocketAddr,
    },
    /// Capture packets as the balancer saw them (arrived, and left
    /// encapsulated) into a pcapng file, e.g. `-w - | tcpdump -r -`.
    Capture(capture::CaptureArgs),
    /// Connection-table fill, and entries per backend (of one VIP or all).
    Conns { vip: Option<VipId> },
    /// Live packet rates, refreshed every interval.
    Watch {
        #[arg(long, default_value = "1")]
        interval_secs: f64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// lbctl's version and the daemon's (version, commit, program tag, map layout, kernel).
    Version,
    /// Print a shell completion script, e.g. `lbctl completions bash > /etc/bash_completion.d/lbctl`.
    Completions { shell: clap_complete::Shell },
    /// Write lbctl's man pages (lbctl.1, lbctl-vip.1, ...) into a directory.
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum VipCmd {
    List,
    Show {
        vip: VipId,
    },
    /// Add a VIP, e.g. `lbctl vip add tcp:10.0.0.10:80 -b 10.1.0.1 -b 10.1.0.2=3`.
    Add {
        vip: VipId,
        /// A backend as ADDRESS or ADDRESS=WEIGHT; repeat for more.
        #[arg(long = "backend", short)]
        backends: Vec<BackendArg>,
        #[arg(long = "flag", value_enum)]
        flags: Vec<VipFlag>,
    },
    Remove {
        vip: VipId,
    },
    /// Print the running VIP set in the config's [[vip]] syntax (`> vips.toml`).
    Export,
    /// Replace the whole VIP set with a file's [[vip]] tables in one change
    /// (all or nothing), and print the diff.
    Apply {
        /// The VIP file (`-` for stdin).
        #[arg(long, short)]
        file: PathBuf,
        /// Only check the file against the daemon and print the diff.
        #[arg(long)]
        dry_run: bool,
    },
    /// Set a VIP's health check, e.g. `lbctl vip health tcp:10.0.0.10:80 --kind http --path /healthz`.
    Health {
        vip: VipId,
        #[command(flatten)]
        check: health::HealthArgs,
    },
}

#[derive(Subcommand)]
enum BackendCmd {
    List {
        vip: VipId,
    },
    Add {
        vip: VipId,
        address: IpAddr,
        #[arg(long, default_value_t = lb_control::model::DEFAULT_WEIGHT)]
        weight: u32,
    },
    Remove {
        vip: VipId,
        address: IpAddr,
    },
    /// Set a backend's weight.
    Weight {
        vip: VipId,
        address: IpAddr,
        weight: u32,
    },
    /// Weight 0: no new flows; established ones finish.
    Drain {
        vip: VipId,
        address: IpAddr,
    },
    /// Replace all of a VIP's backends (ADDRESS or ADDRESS=WEIGHT).
    Replace {
        vip: VipId,
        backends: Vec<BackendArg>,
    },
}

#[derive(Clone)]
struct BackendArg(BackendBody);

impl std::str::FromStr for BackendArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, weight) = match s.split_once('=') {
            Some((a, w)) => (a, w.parse::<u32>().map_err(|_| format!("'{w}' is not a weight"))?),
            None => (s, lb_control::model::DEFAULT_WEIGHT),
        };
        let address = addr.parse().map_err(|_| format!("'{addr}' is not an IP address"))?;
        Ok(BackendArg(BackendBody { address, weight }))
    }
}

#[derive(Deserialize)]
struct ApiErrorBody {
    error: ApiErrorDetail,
}

#[derive(Deserialize)]
struct ApiErrorDetail {
    code: String,
    message: String,
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(cli: &Cli) -> Result<Self> {
        let token = match &cli.token_file {
            Some(p) => Some(lb_control::api::read_token(p)?),
            None => None,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self { base: cli.api.trim_end_matches('/').to_string(), token, agent })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish<T: DeserializeOwned>(
        &self,
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut resp = resp.with_context(|| format!("{what}: cannot reach the daemon at {}", self.base))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().with_context(|| format!("{what}: reading the answer"))?;
        if !status.is_success() {
            match serde_json::from_str::<ApiErrorBody>(&text) {
                Ok(e) => bail!("{what}: {} ({}, HTTP {})", e.error.message, e.error.code, status.as_u16()),
                Err(_) => bail!("{what}: HTTP {}: {text}", status.as_u16()),
            }
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: unexpected answer: {text}"))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.agent.get(&self.url(path)).call();
        self.finish(&format!("GET {path}"), resp)
    }

    fn send<B: Serialize, T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&B>) -> Result<T> {
        let url = self.url(path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let what = format!("{method} {path}");
        macro_rules! go {
            ($req:expr) => {{
                let mut req = $req;
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                match body {
                    Some(b) => req.send_json(b),
                    None => req.send_empty(),
                }
            }};
        }
        let resp = match method {
            "POST" => go!(self.agent.post(&url)),
            "PUT" => go!(self.agent.put(&url)),
            "PATCH" => go!(self.agent.patch(&url)),
            "DELETE" => {
                let mut req = self.agent.delete(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            other => bail!("unsupported method {other}"),
        };
        self.finish(&what, resp)
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_vips(vips: &[VipBody]) {
    println!("{:<28} {:<30} BACKENDS (address=weight)", "VIP", "FLAGS");
    for v in vips {
        let flags: Vec<String> = v
            .flags
            .iter()
            .map(|f| serde_json::to_value(f).ok().and_then(|s| s.as_str().map(String::from)).unwrap_or_default())
            .collect();
        let backends: Vec<String> = v.backends.iter().map(|b| format!("{}={}", b.address, b.weight)).collect();
        println!(
            "{:<28} {:<30} {}",
            v.vip.to_string(),
            if flags.is_empty() { "-".into() } else { flags.join(",") },
            backends.join(" ")
        );
    }
}

fn print_counters(title: &str, rows: &BTreeMap<String, Counter>) {
    println!("{:<34} {:>16} {:>18}", title, "PACKETS", "BYTES");
    for (k, c) in rows {
        println!("{:<34} {:>16} {:>18}", k, c.packets, c.bytes);
    }
}

fn main() -> Result<()> {
    // SAFETY: called before any other thread exists; restores the default
    // action for SIGPIPE, so `lbctl ... | head` ends quietly when the reader
    // closes the pipe instead of panicking on the write.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    // The local commands need no daemon (and no token file).
    match &cli.command {
        Command::Completions { shell } => {
            docs::completions(*shell);
            return Ok(());
        }
        Command::Man { dir } => return docs::man(dir),
        _ => {}
    }
    let client = Client::new(&cli)?;
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Vip(VipCmd::List) => {
            let vips: Vec<VipBody> = client.get("/v1/vips")?;
            if json {
                print_json(&vips)?
            } else {
                print_vips(&vips)
            }
        }
        Command::Vip(VipCmd::Show { vip }) => {
            let v: VipBody = client.get(&format!("/v1/vips/{vip}"))?;
            if json {
                print_json(&v)?
            } else {
                print_vips(&[v])
            }
        }
        Command::Vip(VipCmd::Add { vip, backends, flags }) => {
            let body = VipBody {
                vip: *vip,
                flags: flags.clone(),
                backends: backends.iter().map(|b| b.0.clone()).collect(),
                health: None,
            };
            let r: serde_json::Value = client.send("POST", "/v1/vips", Some(&body))?;
            if json {
                print_json(&r)?
            } else {
                println!("added {vip}")
            }
        }
        Command::Vip(VipCmd::Remove { vip }) => {
            let r: serde_json::Value = client.send::<(), _>("DELETE", &format!("/v1/vips/{vip}"), None)?;
            if json {
                print_json(&r)?
            } else {
                println!("removed {vip}")
            }
        }
        Command::Vip(VipCmd::Health { vip, check }) => {
            let r: serde_json::Value = client.send("PUT", &format!("/v1/vips/{vip}/health"), Some(&check.body()))?;
            if json {
                print_json(&r)?
            } else {
                println!("{vip}: health check {}", r["health"])
            }
        }
        Command::Backend(BackendCmd::List { vip }) => {
            let list: Vec<lb_control::api::BackendStatus> = client.get(&format!("/v1/vips/{vip}/backends"))?;
            if json {
                print_json(&list)?
            } else {
                health::print_backends(&list)
            }
        }
        Command::Backend(BackendCmd::Add { vip, address, weight }) => {
            let body = BackendBody { address: *address, weight: *weight };
            let r: serde_json::Value = client.send("POST", &format!("/v1/vips/{vip}/backends"), Some(&body))?;
            if json {
                print_json(&r)?
            } else {
                println!("added backend {address} to {vip}")
            }
        }
        Command::Backend(BackendCmd::Remove { vip, address }) => {
            let r: serde_json::Value =
                client.send::<(), _>("DELETE", &format!("/v1/vips/{vip}/backends/{address}"), None)?;
            if json {
                print_json(&r)?
            } else {
                println!("removed backend {address} from {vip}")
            }
        }
        Command::Backend(BackendCmd::Weight { vip, address, weight }) => {
            let patch = BackendPatch { weight: Some(*weight), drain: None };
            let r: serde_json::Value =
                client.send("PATCH", &format!("/v1/vips/{vip}/backends/{address}"), Some(&patch))?;
            if json {
                print_json(&r)?
            } else {
                println!("backend {address} of {vip}: weight {weight}")
            }
        }
        Command::Backend(BackendCmd::Drain { vip, address }) => {
            let patch = BackendPatch { weight: None, drain: Some(true) };
            let r: serde_json::Value =
                client.send("PATCH", &format!("/v1/vips/{vip}/backends/{address}"), Some(&patch))?;
            if json {
                print_json(&r)?
            } else {
                println!("backend {address} of {vip}: draining")
            }
        }
        Command::Backend(BackendCmd::Replace { vip, backends }) => {
            let list: Vec<BackendBody> = backends.iter().map(|b| b.0.clone()).collect();
            let r: serde_json::Value = client.send("PUT", &format!("/v1/vips/{vip}/backends"), Some(&list))?;
            if json {
                print_json(&r)?
            } else {
                println!("{vip}: {} backends", list.len())
            }
        }
        Command::Stats => {
            let s: Stats = client.get("/v1/stats")?;
            if json {
                print_json(&s)?
            } else {
                let event = |name: &str| s.global.get(name).map_or(0, |c| c.packets);
                println!(
                    "SYN-FLOOD MODE: {} CPUs now; {} SYNs forwarded untabled, {} CPU-windows (<= 1 s each) in flood mode",
                    s.syn_flood_cpus,
                    event(lb_common::Stat::SynFloodUntabled.name()),
                    event(lb_common::Stat::SynFloodWindows.name()),
                );
                println!();
                print_counters("ACTION", &s.actions);
                println!();
                let nonzero: BTreeMap<String, Counter> = s.global.into_iter().filter(|(_, c)| c.packets > 0).collect();
                print_counters("REASON (non-zero)", &nonzero);
                println!();
                print_counters("VIP", &s.vips);
                println!();
                print_counters("BACKEND", &s.backends);
            }
        }
        Command::Flow { vip, client: from } => flows::flow(&client, vip, from, json)?,
        Command::Capture(args) => {
            let bytes = capture::capture(&client, args)?;
            if args.to_file() {
                eprintln!("{bytes} bytes of pcapng written");
            }
        }
        Command::Conns { vip } => flows::conns(&client, vip.as_ref(), json)?,
        Command::Watch { interval_secs, count } => watch(&client, *interval_secs, *count, json)?,
        Command::Vip(VipCmd::Export) => vip_file::export(&client, json)?,
        Command::Vip(VipCmd::Apply { file, dry_run }) => vip_file::apply(&client, file, *dry_run, json)?,
        Command::Version => version::version(&client, json)?,
        // Answered above, without a client.
        Command::Completions { .. } | Command::Man { .. } => {}
    }
    Ok(())
}

/// Prints packet rates per action, VIP and backend between two samples.
fn watch(client: &Client, interval_secs: f64, count: Option<u64>, json: bool) -> Result<()> {
    if !(interval_secs > 0.0 && interval_secs <= 3600.0) {
        bail!("--interval-secs must be in (0, 3600]");
    }
    let interval = Duration::from_secs_f64(interval_secs);
    let mut prev: Stats = client.get("/v1/stats")?;
    let mut prev_t = std::time::Instant::now();
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(interval);
        let now: Stats = client.get("/v1/stats")?;
        let dt = prev_t.elapsed().as_secs_f64();
        prev_t = std::time::Instant::now();
        let rate = |a: &BTreeMap<String, Counter>, b: &BTreeMap<String, Counter>| -> BTreeMap<String, f64> {
            a.iter()
                .map(|(k, c)| {
                    let before = b.get(k).map_or(0, |p| p.packets);
                    (k.clone(), c.packets.saturating_sub(before) as f64 / dt)
                })
                .collect()
        };
        let actions = rate(&now.actions, &prev.actions);
        let vips = rate(&now.vips, &prev.vips);
        let backends = rate(&now.backends, &prev.backends);
        if json {
            println!("{}", serde_json::json!({"actions_pps": actions, "vips_pps": vips, "backends_pps": backends}));
        } else {
            print!("\x1b[2J\x1b[H");
            println!("packets per second over {dt:.1}s\n");
            for (title, rows) in [("ACTION", &actions), ("VIP", &vips), ("BACKEND", &backends)] {
                println!("{title:<34} {:>14}", "PPS");
                for (k, v) in rows {
                    println!("{k:<34} {v:>14.1}");
                }
                println!();
            }
        }
        std::io::stdout().flush()?;
        prev = now;
        n += 1;
    }
    Ok(())
}
