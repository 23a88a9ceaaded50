//! The monitoring files in `configs/` against the daemon: every metric the
//! Grafana dashboard and the Prometheus rules query is one `/metrics`
//! exports (its encoder, `lb_control::metrics`, run on a snapshot with every
//! counter), Prometheus's own `up`/`scrape_duration_seconds`, or a metric
//! another issue documents and that is listed below as future; every
//! `reason` they name is a counter of the data plane. The rules file passes
//! `promtool check rules` and its unit tests (`promtool test rules`,
//! `configs/prometheus-rules.test.yml`). promtool comes with Debian's
//! `prometheus` package, which `scripts/setup.sh` installs.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use lb_common::{Counter, ProbeStat, Stat};
use lb_control::{
    controller::{StatsSnapshot, View},
    health::{self, Machine, MachineCell},
    metrics::encode_with,
    model::{Proto, VipId},
};
use regex::Regex;
use serde_json::Value;

/// Metrics another issue documents and the daemon does not export yet.
const FUTURE: &[(&str, &str)] = &[];
/// Series Prometheus makes itself for every scrape target.
const PROMETHEUS_OWN: &[&str] = &["up", "scrape_duration_seconds"];

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// Every series name `/metrics` can carry.
fn exported() -> BTreeSet<String> {
    let one = Counter { packets: 1, bytes: 1 };
    let mut snap = StatsSnapshot::default();
    for s in Stat::ALL {
        snap.global.insert(s.name().into(), one);
    }
    snap.actions.insert("tx".into(), one);
    snap.vips.insert("tcp:192.0.2.10:80".into(), one);
    snap.backends.insert("10.1.0.1".into(), one);
    // The health checker's series too, with one checked backend, a VIP
    // failed open and every probe counter.
    let vip = VipId { addr: "192.0.2.10".parse().unwrap(), port: 80, proto: Proto::Tcp };
    let checks = health::Registry::default();
    checks.with(|r| {
        r.machines
            .insert((vip, "10.1.0.1".parse().unwrap()), MachineCell::new(Machine::new(std::time::SystemTime::now())));
        r.probe_packets = ProbeStat::ALL.iter().map(|s| (*s, one)).collect();
    });
    checks.durations.get_or_create(&vec![("kind", "tcp".to_string())]).observe(0.001);
    let view = View { failed_open: [vip].into(), ..Default::default() };
    let text = encode_with(&snap, 1, 1, true, true, |r| health::register_metrics(r, &checks, &view));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Checks one PromQL expression; returns what is wrong with it.
fn problems(expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let future = |n: &str| FUTURE.iter().any(|(f, _)| *f == n);
    for m in Regex::new(r"\bxdp_lb_[a-z0-9_]+").unwrap().find_iter(expr) {
        if !exported.contains(m.as_str()) && !future(m.as_str()) {
            out.push(format!("{} is not a metric /metrics exports", m.as_str()));
        }
    }
    // Anything else used as a selector must be Prometheus's own.
    for c in Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{").unwrap().captures_iter(expr) {
        let name = &c[1];
        if !name.starts_with("xdp_lb_") && !PROMETHEUS_OWN.contains(&name) {
            out.push(format!("{name} is neither a daemon metric nor one of Prometheus's own"));
        }
    }
    let reasons: Vec<&str> =
        Stat::ALL.iter().map(|s| s.name()).chain(ProbeStat::ALL.iter().map(|s| s.name())).collect();
    for c in Regex::new(r#"reason(=~|=)"([^"]*)""#).unwrap().captures_iter(expr) {
        let ok = match &c[1] {
            "=" => reasons.contains(&&c[2]),
            _ => {
                let re = Regex::new(&format!("^(?:{})$", &c[2])).unwrap();
                reasons.iter().any(|r| re.is_match(r))
            }
        };
        if !ok {
            out.push(format!("reason{}\"{}\" matches no counter", &c[1], &c[2]));
        }
    }
    out
}

/// Every `expr` and `query` string in the dashboard.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_the_daemon_exports() {
    let exported = exported();
    assert!(exported.contains("xdp_lb_reason_packets_total") && exported.contains("xdp_lb_ready"), "{exported:?}");
    let path = configs().join("grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    let all: Vec<String> =
        queries.iter().flat_map(|q| problems(q, &exported).into_iter().map(move |p| format!("{q}: {p}"))).collect();
    assert!(all.is_empty(), "{}:\n{}", path.display(), all.join("\n"));
    // What an operator looks for first is there.
    let text = queries.join("\n");
    for needle in [
        "xdp_lb_ready",
        "xdp_lb_attached",
        "xdp_lb_action_packets_total",
        r#"reason=~"drop_.*""#,
        r#"reason="conn_evicted""#,
        "xdp_lb_backend_up",
        r#"up{job="xdp-lb""#,
    ] {
        assert!(text.contains(needle), "no panel queries {needle}");
    }
    let panels = dash["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().expect("a panel id")).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids repeat");
    assert!(panels.iter().all(|p| p["gridPos"].is_object() && p["title"].is_string()));
}

#[test]
fn the_alert_rules_query_only_metrics_the_daemon_exports() {
    let exported = exported();
    let path = configs().join("prometheus-rules.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let exprs: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("expr:")).map(str::trim).collect();
    assert!(exprs.len() >= 6, "{exprs:?}");
    let all: Vec<String> =
        exprs.iter().flat_map(|q| problems(q, &exported).into_iter().map(move |p| format!("{q}: {p}"))).collect();
    assert!(all.is_empty(), "{}:\n{}", path.display(), all.join("\n"));
    for (future, why) in FUTURE {
        if text.contains(future) {
            assert!(text.contains(&format!("# - {future}")), "the rules file must say {future} is future ({why})");
        }
    }
}

#[test]
fn the_checks_catch_a_wrong_name() {
    let exported = exported();
    assert_eq!(problems("rate(xdp_lb_reason_packets_total[5m])", &exported), Vec::<String>::new());
    assert_eq!(problems("xdp_lb_reasons_total", &exported).len(), 1);
    assert_eq!(
        problems(r#"xdp_lb_health_probe_packets_total{reason=~"probe_drop_.*"}"#, &exported),
        Vec::<String>::new()
    );
    assert_eq!(problems("xdp_lb_health_probes_total", &exported).len(), 1);
    assert_eq!(problems("node_load1{}", &exported).len(), 1);
    assert_eq!(problems(r#"xdp_lb_reason_packets_total{reason="drop_everything"}"#, &exported).len(), 1);
    assert_eq!(problems(r#"xdp_lb_reason_packets_total{reason=~"dorp_.*"}"#, &exported).len(), 1);
}

/// `promtool`, or a clear failure naming what installs it.
fn promtool() -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("promtool").is_file()))
        .unwrap_or(false);
    assert!(found, "promtool is missing: run scripts/setup.sh (it installs Debian's prometheus package)");
    let mut cmd = Command::new("promtool");
    cmd.current_dir(configs());
    cmd
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    for args in [["check", "rules", "prometheus-rules.yml"], ["test", "rules", "prometheus-rules.test.yml"]] {
        let out = promtool().args(args).output().expect("running promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
