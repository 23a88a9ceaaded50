//! `lbctl backend list`'s table: weight and health side by side.

use lb_control::api::{health_label, BackendStatus};

/// One line per backend: address, the operator's weight, the health state
/// (with the last error while down) and the check counts.
pub fn print_backends(list: &[BackendStatus]) {
    println!("{:<40} {:<16} {:<10} {:>10} {:>10}  SINCE", "BACKEND", "WEIGHT", "HEALTH", "CHECKS_OK", "FAILED");
    for b in list {
        let weight = format!("{}{}", b.weight, if b.weight == 0 { " (draining)" } else { "" });
        let mut health = health_label(&b.health).to_string();
        if b.failed_open {
            health += " (failed open)";
        }
        let since = if b.health.checks_ok + b.health.checks_failed == 0 { "-" } else { b.health.since.as_str() };
        print!(
            "{:<40} {:<16} {:<10} {:>10} {:>10}  {since}",
            b.address, weight, health, b.health.checks_ok, b.health.checks_failed
        );
        match &b.health.last_error {
            Some(e) if b.health.state == lb_control::health::HealthState::Down => println!("  ({e})"),
            _ => println!(),
        }
    }
}
