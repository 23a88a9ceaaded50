//! The shipped example config is valid, and the systemd unit points at the
//! binaries and paths the README names.

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/lb.toml");
    let config = lb_control::config::Config::load(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.vips.len(), 3);
    assert_eq!(config.limits.ring_size, 65537);
}

#[test]
fn systemd_unit_is_a_notify_service_with_reload_and_watchdog() {
    let unit = include_str!("../../configs/lb-control.service");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "ExecStart=/usr/local/bin/lb-control --config /etc/xdp-lb/lb.toml",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN",
        "ProtectSystem=strict",
        "LimitNOFILE=65536",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "unit lacks {line}");
    }
}

/// The API server's limits and `reattach`: defaults, the example's values,
/// and located errors for values that cannot work.
#[test]
fn api_limits_and_reattach_are_read_and_checked() {
    use lb_control::config::{Config, Reattach};
    use std::time::Duration;
    let base = "interfaces = [\"eth0\"]\n";
    let c = Config::parse(base).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.reattach, Reattach::Auto);
    assert_eq!((c.api.header_read_timeout, c.api.idle_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
    assert_eq!(c.api.max_connections, 4096);
    let c = Config::parse(&format!(
        "{base}reattach = \"never\"\n[api]\nheader_read_timeout_secs = 2\nidle_timeout_secs = 3\nmax_connections = 7\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.reattach, Reattach::Never);
    assert_eq!((c.api.header_read_timeout, c.api.idle_timeout), (Duration::from_secs(2), Duration::from_secs(3)));
    assert_eq!(c.api.max_connections, 7);
    for (text, key, line) in [
        ("[api]\nmax_connections = 0\n", "api.max_connections", 3),
        ("[api]\nheader_read_timeout_secs = 0\n", "api.header_read_timeout_secs", 3),
        ("[api]\nidle_timeout_secs = 100000\n", "api.idle_timeout_secs", 3),
        ("reattach = \"sometimes\"\n", "reattach", 2),
    ] {
        let e = Config::parse(&format!("{base}{text}")).expect_err(text);
        let p = &e.problems()[0];
        assert_eq!((p.key.as_str(), p.line), (key, line), "{text}: {e}");
    }
}
