//! `/metrics`: the counters in the Prometheus/OpenMetrics text format, built
//! with `prometheus-client` from a snapshot of the BPF maps at scrape time.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter as PromCounter, family::Family, gauge::Gauge},
    registry::Registry,
};

use lb_common::Counter;

use crate::controller::StatsSnapshot;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Registers `<name>_packets` and `<name>_bytes` counter families, one
/// series per row, labelled `label`.
pub(crate) fn counters<'a, K: ToString + 'a>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    rows: impl IntoIterator<Item = (K, &'a Counter)>,
) {
    let packets = Family::<Labels, PromCounter>::default();
    let bytes = Family::<Labels, PromCounter>::default();
    for (key, c) in rows {
        let labels = vec![(label, key.to_string())];
        packets.get_or_create(&labels).inc_by(c.packets);
        bytes.get_or_create(&labels).inc_by(c.bytes);
    }
    registry.register(format!("{name}_packets"), format!("{help}: packets"), packets);
    registry.register(format!("{name}_bytes"), format!("{help}: bytes"), bytes);
}

/// Encodes a snapshot.
pub fn encode_snapshot(snap: &StatsSnapshot, vips: usize, backends: usize, ready: bool, attached: bool) -> String {
    encode_with(snap, vips, backends, ready, attached, |_| {})
}

/// Encodes a snapshot and what `extra` registers (health's series).
pub fn encode_with(
    snap: &StatsSnapshot,
    vips: usize,
    backends: usize,
    ready: bool,
    attached: bool,
    extra: impl FnOnce(&mut Registry),
) -> String {
    let mut registry = Registry::with_prefix("xdp_lb");
    counters(&mut registry, "reason", "Packets by the reason the balancer gave them", "reason", &snap.global);
    counters(&mut registry, "action", "Packets by final action", "action", &snap.actions);
    counters(&mut registry, "vip", "Packets to each VIP", "vip", &snap.vips);
    counters(&mut registry, "backend", "Packets sent to each backend", "backend", &snap.backends);
    for (name, help, value) in [
        ("vips", "VIPs configured", vips as i64),
        ("backends", "Distinct backends in use", backends as i64),
        ("ready", "1 once the balancer is attached", ready as i64),
        (
            "syn_flood_cpus",
            "CPUs in SYN-flood mode now (SYNs forwarded without a connection-table entry)",
            snap.syn_flood_cpus as i64,
        ),
        (
            "attached",
            "1 while the balancer is attached to every interface (0 once detached behind the daemon)",
            attached as i64,
        ),
    ] {
        let g = Gauge::<i64>::default();
        g.set(value);
        registry.register(name, help, g);
    }
    extra(&mut registry);
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::Counter as C;

    #[test]
    fn snapshot_is_encoded_with_labels() {
        let mut snap = StatsSnapshot::default();
        snap.global.insert("tx_encap".into(), C { packets: 5, bytes: 500 });
        snap.actions.insert("tx".into(), C { packets: 5, bytes: 500 });
        snap.vips.insert("tcp:10.0.0.10:80".into(), C { packets: 5, bytes: 500 });
        snap.backends.insert("10.1.0.1".into(), C { packets: 3, bytes: 300 });
        let text = encode_snapshot(&snap, 1, 1, true, true);
        assert!(text.contains("xdp_lb_reason_packets_total{reason=\"tx_encap\"} 5"), "{text}");
        assert!(text.contains("xdp_lb_vip_bytes_total{vip=\"tcp:10.0.0.10:80\"} 500"), "{text}");
        assert!(text.contains("xdp_lb_backend_packets_total{backend=\"10.1.0.1\"} 3"), "{text}");
        assert!(text.contains("xdp_lb_ready 1"), "{text}");
        assert!(text.contains("xdp_lb_attached 1"), "{text}");
        assert!(text.contains("xdp_lb_syn_flood_cpus 0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
