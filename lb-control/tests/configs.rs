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
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "unit lacks {line}");
    }
}
