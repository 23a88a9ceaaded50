//! `lbctl capture`: streams `GET /v1/capture` (pcapng) into a file or
//! stdout (`-w -`, for `tcpdump -r -`).

use std::{fs::File, io::Write, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use lb_control::model::VipId;

use crate::{ApiErrorBody, Client};

#[derive(clap::Args)]
pub struct CaptureArgs {
    /// Only packets to this VIP (port 0: any port of its address).
    #[arg(long)]
    vip: Option<VipId>,
    /// Only packets sent to this backend.
    #[arg(long)]
    backend: Option<IpAddr>,
    /// Only packets counted under this reason (e.g. drop_no_backend; see `lbctl stats`).
    #[arg(long, conflicts_with = "drops")]
    reason: Option<String>,
    /// Only dropped packets.
    #[arg(long)]
    drops: bool,
    /// Stop after this many packets (the daemon's default: 1000).
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds (the daemon's default: 10).
    #[arg(long)]
    duration: Option<u64>,
    /// Bytes of each frame (at most 256).
    #[arg(long)]
    snaplen: Option<u32>,
    /// Where the pcapng goes: a file, or `-` for stdout.
    #[arg(short = 'w', long = "write")]
    write: PathBuf,
}

impl CaptureArgs {
    /// Whether the capture goes to a file rather than stdout.
    pub fn to_file(&self) -> bool {
        self.write.as_os_str() != "-"
    }
}

/// Runs the capture; returns the bytes written.
pub fn capture(client: &Client, args: &CaptureArgs) -> Result<u64> {
    let mut query = Vec::new();
    if let Some(v) = &args.vip {
        query.push(format!("vip={v}"));
    }
    if let Some(b) = &args.backend {
        query.push(format!("backend={b}"));
    }
    if let Some(r) = &args.reason {
        query.push(format!("reason={r}"));
    }
    if args.drops {
        query.push("drops=true".into());
    }
    for (key, value) in
        [("count", args.count), ("duration_secs", args.duration), ("snaplen", args.snaplen.map(u64::from))]
    {
        if let Some(v) = value {
            query.push(format!("{key}={v}"));
        }
    }
    let path = format!("/v1/capture?{}", query.join("&"));
    // The call lasts as long as the capture: no overall timeout beyond its
    // duration (the daemon's default when none is given) and a margin.
    let limit = Duration::from_secs(args.duration.unwrap_or(10) + 30);
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(limit)).build().into();
    let mut req = agent.get(&client.url(&path));
    if let Some(t) = &client.token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().with_context(|| format!("GET {path}: cannot reach the daemon at {}", client.base))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        match serde_json::from_str::<ApiErrorBody>(&text) {
            Ok(e) => bail!("GET {path}: {} ({}, HTTP {status})", e.error.message, e.error.code),
            Err(_) => bail!("GET {path}: HTTP {status}: {text}"),
        }
    }
    let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut out: Box<dyn Write> = if !args.to_file() {
        Box::new(std::io::stdout().lock())
    } else {
        let file = File::create(&args.write).with_context(|| format!("creating {}", args.write.display()))?;
        Box::new(file)
    };
    // Each chunk is written through at once: a reader (`tcpdump -r -`, a
    // file being watched) sees packets as they are captured.
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = std::io::Read::read(&mut body, &mut buf).context("receiving the capture")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).context("writing the capture")?;
        out.flush().context("writing the capture")?;
        written += n as u64;
    }
    Ok(written)
}
