//! `lbctl backend list`'s table: weight and health side by side.

use lb_control::api::{health_label, BackendStatus};

/// One line per backend: address, the operator's weight, the health state
/// (with the last error while down, or while unknown because the checker
/// could not start) and the check counts.
pub fn print_backends(list: &[BackendStatus]) {
    println!("{:<40} {:<16} {:<20} {:>10} {:>10}  SINCE", "BACKEND", "WEIGHT", "HEALTH", "CHECKS_OK", "FAILED");
    for b in list {
        let weight = format!("{}{}", b.weight, if b.weight == 0 { " (draining)" } else { "" });
        let mut health = health_label(&b.health).to_string();
        if b.failed_open {
            health += " (failed open)";
        }
        let since = if b.health.checks_ok + b.health.checks_failed == 0 { "-" } else { b.health.since.as_str() };
        print!(
            "{:<40} {:<16} {:<20} {:>10} {:>10}  {since}",
            b.address, weight, health, b.health.checks_ok, b.health.checks_failed
        );
        match &b.health.last_error {
            Some(e)
                if matches!(
                    b.health.state,
                    lb_control::health::HealthState::Down | lb_control::health::HealthState::Unknown
                ) =>
            {
                println!("  ({e})")
            }
            _ => println!(),
        }
    }
}

/// `lbctl vip health VIP [--kind K] ...`: sets one VIP's check (fields left
/// out take the `[health]` defaults); kept in the state file until the
/// config file changes that VIP's check.
#[derive(clap::Args)]
pub struct HealthArgs {
    #[arg(long, value_parser = ["tcp", "http", "udp", "none"])]
    kind: Option<String>,
    /// Default: the VIP's port (required for port-0 VIPs).
    #[arg(long)]
    port: Option<u16>,
    /// HTTP path, e.g. /healthz.
    #[arg(long)]
    path: Option<String>,
    /// Good HTTP statuses, LOWEST-HIGHEST, e.g. 200-299.
    #[arg(long, value_parser = parse_status_range)]
    expect_status: Option<(u16, u16)>,
    /// e.g. 2s, 500ms.
    #[arg(long)]
    interval: Option<String>,
    #[arg(long)]
    timeout: Option<String>,
    #[arg(long)]
    rise: Option<u32>,
    #[arg(long)]
    fall: Option<u32>,
    #[arg(long, value_parser = ["remove", "drain"])]
    on_down: Option<String>,
}

fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or_else(|| format!("'{s}' is not LOWEST-HIGHEST, e.g. 200-299"))?;
    let n = |x: &str| x.trim().parse::<u16>().map_err(|_| format!("'{x}' is not a status"));
    Ok((n(lo)?, n(hi)?))
}

impl HealthArgs {
    /// The `PUT /v1/vips/{vip}/health` body: only the fields given.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            body.insert(k.into(), v);
        };
        if let Some(v) = &self.kind {
            put("kind", v.as_str().into());
        }
        if let Some(v) = self.port {
            put("port", v.into());
        }
        if let Some(v) = &self.path {
            put("path", v.as_str().into());
        }
        if let Some((lo, hi)) = self.expect_status {
            put("expect_status", serde_json::json!([lo, hi]));
        }
        if let Some(v) = &self.interval {
            put("interval", v.as_str().into());
        }
        if let Some(v) = &self.timeout {
            put("timeout", v.as_str().into());
        }
        if let Some(v) = self.rise {
            put("rise", v.into());
        }
        if let Some(v) = self.fall {
            put("fall", v.into());
        }
        if let Some(v) = &self.on_down {
            put("on_down", v.as_str().into());
        }
        serde_json::Value::Object(body)
    }
}
