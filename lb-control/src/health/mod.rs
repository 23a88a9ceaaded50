//! Health checks through the tunnel. Probes are ordinary kernel sockets to
//! VIP:port marked for one backend (`SO_MARK`); the TC egress program
//! ([`tc`]) encapsulates them to that backend like data packets, so a probe
//! fails when the service, the VIP on the backend's loopback or its decap
//! does. Results feed one [`machine::Machine`] per (VIP, backend)
//! ([`checker`]); state changes go to the controller as one change each.
//!
//! The operator's intent (the state file) and the health overlay stay
//! apart: the controller applies [`effective`] of the two, and only the
//! intent is persisted.

pub mod batch;
pub mod checker;
pub mod machine;
pub mod probe;
pub mod schedule;
pub mod tc;
mod ticker;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

pub use machine::{HealthState, Machine};

use crate::{
    config::health::{HealthSettings, OnDown},
    model::{VipId, VipSet},
};

/// The backends the checks found down.
pub type DownSet = BTreeSet<(VipId, IpAddr)>;

/// A VIP is failed open when no backend with weight > 0 would be left up:
/// then every backend stays as the operator set it.
fn fails_open(id: &VipId, spec: &crate::model::VipSpec, down: &DownSet) -> bool {
    let serving: Vec<_> = spec.backends.iter().filter(|(_, b)| b.weight > 0).map(|(a, _)| *a).collect();
    !serving.is_empty() && serving.iter().all(|a| down.contains(&(*id, *a)))
}

/// What the data plane gets: the operator's VIPs with each down backend out
/// of the ring (`on_down = "remove"`) or at weight 0 (`"drain"`), except in
/// VIPs that fail open. Returns the set and the VIPs failed open.
pub fn effective(vips: &VipSet, down: &DownSet, settings: &HealthSettings) -> (VipSet, BTreeSet<VipId>) {
    let mut out = vips.clone();
    let mut failed_open = BTreeSet::new();
    for (id, spec) in out.iter_mut() {
        if !down.iter().any(|(v, _)| v == id) {
            continue;
        }
        if fails_open(id, spec, down) {
            failed_open.insert(*id);
            continue;
        }
        let on_down = settings.for_vip(id).on_down;
        spec.backends.retain(|addr, b| {
            if !down.contains(&(*id, *addr)) {
                return true;
            }
            match on_down {
                OnDown::Remove => false,
                OnDown::Drain => {
                    b.weight = 0;
                    true
                }
            }
        });
    }
    (out, failed_open)
}

/// The operator's VIPs without any down backend, fail-open or not: what BGP
/// counts (`bgp.min_healthy` counts backends with weight > 0 that are not
/// down).
pub fn without_down(vips: &VipSet, down: &DownSet) -> VipSet {
    let mut out = vips.clone();
    for (id, spec) in out.iter_mut() {
        spec.backends.retain(|addr, _| !down.contains(&(*id, *addr)));
    }
    out
}

/// A backend's health as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BackendHealth {
    pub state: HealthState,
    /// When the state last changed (RFC 3339).
    pub since: String,
    pub last_error: Option<String>,
    pub checks_ok: u64,
    pub checks_failed: u64,
}

impl BackendHealth {
    pub fn disabled() -> Self {
        BackendHealth {
            state: HealthState::Disabled,
            since: rfc3339(std::time::UNIX_EPOCH),
            last_error: None,
            checks_ok: 0,
            checks_failed: 0,
        }
    }

    pub fn from_machine(m: &Machine) -> Self {
        BackendHealth {
            state: m.state,
            since: rfc3339(m.since),
            last_error: m.last_error.clone(),
            checks_ok: m.checks_ok,
            checks_failed: m.checks_failed,
        }
    }
}

pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Probe durations by check kind (`xdp_lb_health_check_duration_seconds`).
pub type DurationFamily = prometheus_client::metrics::family::Family<
    Vec<(&'static str, String)>,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

fn duration_histogram() -> prometheus_client::metrics::histogram::Histogram {
    // 0.5 ms .. ~4 s.
    prometheus_client::metrics::histogram::Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 14,
    ))
}

/// What the checker knows now, for the API and metrics: every checked
/// backend's record and the probe durations.
#[derive(Debug)]
pub struct Registry {
    inner: std::sync::Mutex<RegistryInner>,
    pub durations: DurationFamily,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { inner: Default::default(), durations: DurationFamily::new_with_constructor(duration_histogram) }
    }
}

#[derive(Debug, Default, Clone)]
pub struct RegistryInner {
    pub machines: BTreeMap<(VipId, IpAddr), MachineCell>,
    /// Why no check runs (the checker could not start) and since when.
    pub unavailable: Option<(String, std::time::SystemTime)>,
    /// The TC program's counters, by reason, as last read by the checker.
    pub probe_packets: Vec<(lb_common::ProbeStat, lb_common::Counter)>,
}

/// One checked backend's record, shared: the checker (its only writer)
/// keeps it beside the pair and updates it without a map lookup per probe;
/// the registry's readers find it by key.
#[derive(Clone, Debug)]
pub struct MachineCell(std::sync::Arc<std::sync::Mutex<Machine>>);

impl MachineCell {
    pub fn new(machine: Machine) -> Self {
        MachineCell(std::sync::Arc::new(std::sync::Mutex::new(machine)))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Machine) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Registry {
    pub fn with<T>(&self, f: impl FnOnce(&mut RegistryInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A checked backend's health: `unknown` until its checker has a record
    /// of it, with the reason when the checker could not start.
    pub fn backend(&self, vip: &VipId, addr: &IpAddr) -> BackendHealth {
        self.with(|r| match (r.machines.get(&(*vip, *addr)), &r.unavailable) {
            (Some(m), _) => m.with(|m| BackendHealth::from_machine(m)),
            (None, Some((reason, since))) => BackendHealth {
                state: HealthState::Unknown,
                since: rfc3339(*since),
                last_error: Some(reason.clone()),
                checks_ok: 0,
                checks_failed: 0,
            },
            (None, None) => {
                let mut h = BackendHealth::disabled();
                h.state = HealthState::Unknown;
                h
            }
        })
    }

    /// Records that no check runs, and why: every checked backend reads
    /// `unknown` with that reason, and `health_checks_running` is 0.
    pub fn set_unavailable(&self, reason: String) {
        self.with(|r| r.unavailable = Some((reason, std::time::SystemTime::now())));
    }
}

/// The checker's plan from the controller's view.
fn plan_of(view: &crate::controller::View) -> checker::Plan {
    checker::Plan { vips: view.vips.clone(), health: view.health.clone(), forwarding: view.forwarding }
}

/// The running checker; [`CheckerHandle::abort`] stops it.
pub struct CheckerHandle {
    stop: tokio::sync::oneshot::Sender<()>,
}

impl CheckerHandle {
    /// Stops every probe (the checker's thread ends).
    pub fn abort(self) {
        let _ = self.stop.send(());
    }
}

/// Loads the TC program, attaches it to `interfaces` (pinned under
/// `pin_dir`) and starts the checker: it follows the controller's view and
/// reports to `state.health`; down/up changes go through the controller.
///
/// The checker and its probes run on a thread of their own with a
/// single-threaded runtime: a probe's timer and socket wake that one
/// thread, not a parked worker of the API's runtime through a futex each
/// time (at 1,000 probes/s those wake-ups and context switches were about a
/// third of the checker's CPU).
pub fn spawn(
    state: crate::api::Shared,
    interfaces: &[String],
    pin_dir: &std::path::Path,
) -> Result<CheckerHandle, CheckerError> {
    let mut program = tc::HealthProgram::load()?;
    for iface in interfaces {
        program.attach(iface, Some(pin_dir))?;
    }
    let mut views = state.view.clone();
    let (plan_tx, plan_rx) = tokio::sync::watch::channel(plan_of(&views.borrow_and_update()));
    tokio::spawn(async move {
        while views.changed().await.is_ok() {
            let plan = plan_of(&views.borrow_and_update());
            plan_tx.send_if_modified(|old| {
                let changed = *old != plan;
                *old = plan;
                changed
            });
        }
    });
    let ctl_state = state.clone();
    let on_change: checker::OnChange = std::sync::Arc::new(move |vip, backend, down| {
        let mut ctl = ctl_state.ctl.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = ctl.set_backend_down(vip, backend, down) {
            tracing::error!(vip = %vip, backend = %backend, down, error = %e, "applying a health change");
        }
    });
    let checker = checker::Checker::new(state.health.clone(), program, on_change);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let registry = state.health.clone();
    std::thread::Builder::new()
        .name("health-checker".into())
        .spawn(move || {
            // Built (and dropped) on this thread: a runtime may not be
            // dropped inside the daemon's async context.
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "health checks unavailable: the checker's runtime did not start");
                    registry.set_unavailable(format!("health checks unavailable: the checker's runtime: {e}"));
                    return;
                }
            };
            let ticker = match runtime.block_on(async { ticker::StepTicker::new() }) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "health checks unavailable: the probe step timer did not start");
                    registry.set_unavailable(format!("health checks unavailable: the probe step timer: {e}"));
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    () = checker.run(plan_rx, ticker) => tracing::error!("the health checker stopped"),
                    _ = stopped => {}
                }
            })
        })
        .map_err(CheckerError::Runtime)?;
    Ok(CheckerHandle { stop })
}

/// Why the checker could not start.
#[derive(thiserror::Error, Debug)]
pub enum CheckerError {
    #[error("the probes' TC program did not load: {0}")]
    Tc(#[from] tc::TcError),
    #[error("starting the checker's thread: {0}")]
    Runtime(std::io::Error),
}

/// Registers `backend_up{vip,backend}` (1 up, 0 down or not yet known;
/// checked backends only), `health_checks_running` (0 when the checker
/// could not start), `vip_failed_open{vip}`, the probe-duration histogram
/// `health_check_duration_seconds{kind}` and the TC program's counters
/// `health_probe_packets_total{reason}` / `health_probe_bytes_total{reason}`.
pub fn register_metrics(
    registry: &mut prometheus_client::registry::Registry,
    health: &Registry,
    view: &crate::controller::View,
) {
    use prometheus_client::metrics::{family::Family, gauge::Gauge};
    let up = Family::<Vec<(&'static str, String)>, Gauge>::default();
    health.with(|r| {
        for ((vip, backend), m) in &r.machines {
            let labels = vec![("vip", vip.to_string()), ("backend", backend.to_string())];
            up.get_or_create(&labels).set(i64::from(m.with(|m| m.state) == HealthState::Up));
        }
    });
    registry.register("backend_up", "1 while the health checks find the backend up", up);
    let running = Gauge::<i64>::default();
    running.set(i64::from(health.with(|r| r.unavailable.is_none())));
    registry.register(
        "health_checks_running",
        "1 while the health checker runs; 0 when it could not start (its TC program did not load or attach)",
        running,
    );
    let open = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for id in &view.failed_open {
        open.get_or_create(&vec![("vip", id.to_string())]).set(1);
    }
    registry.register("vip_failed_open", "1 while every backend of the VIP is down and all are kept", open);
    registry.register(
        "health_check_duration_seconds",
        "How long health probes took, by check kind (TCP: the handshake's round trip)",
        health.durations.clone(),
    );
    let probe_packets = health.with(|r| r.probe_packets.clone());
    crate::metrics::counters(
        registry,
        "health_probe",
        "Packets the probes' TC program saw, by its reason",
        "reason",
        probe_packets.iter().map(|(stat, c)| (stat.name(), c)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::health::HealthCheck,
        model::{Backend, Proto, VipSpec},
    };

    fn vip() -> VipId {
        VipId { addr: "10.0.0.1".parse().unwrap(), port: 80, proto: Proto::Tcp }
    }
    fn b(i: u8) -> IpAddr {
        IpAddr::from([10, 1, 0, i])
    }
    fn set(weights: &[u32]) -> VipSet {
        let backends = weights.iter().enumerate().map(|(i, w)| (b(i as u8), Backend { weight: *w })).collect();
        [(vip(), VipSpec { flags: vec![], backends })].into()
    }
    fn settings(on_down: OnDown) -> HealthSettings {
        HealthSettings { defaults: HealthCheck { on_down, ..Default::default() }, vips: Default::default() }
    }

    #[test]
    fn a_down_backend_leaves_the_ring_or_is_drained() {
        let down: DownSet = [(vip(), b(1))].into();
        let (removed, open) = effective(&set(&[1, 1, 1]), &down, &settings(OnDown::Remove));
        assert!(open.is_empty());
        assert_eq!(removed[&vip()].backends.keys().copied().collect::<Vec<_>>(), [b(0), b(2)]);
        let (drained, _) = effective(&set(&[1, 1, 1]), &down, &settings(OnDown::Drain));
        assert_eq!(drained[&vip()].backends[&b(1)].weight, 0);
        assert_eq!(drained[&vip()].backends[&b(0)].weight, 1);
    }

    #[test]
    fn every_serving_backend_down_fails_open() {
        // b(2) is drained by the operator: it does not count as serving.
        let down: DownSet = [(vip(), b(0)), (vip(), b(1))].into();
        let (out, open) = effective(&set(&[1, 1, 0]), &down, &settings(OnDown::Remove));
        assert_eq!(open, [vip()].into());
        assert_eq!(out, set(&[1, 1, 0]));
        assert!(without_down(&set(&[1, 1, 0]), &down)[&vip()].backends.values().all(|b| b.weight == 0));
    }

    #[test]
    fn the_operators_set_is_never_changed() {
        let vips = set(&[3, 1]);
        let down: DownSet = [(vip(), b(0))].into();
        let _ = effective(&vips, &down, &settings(OnDown::Drain));
        assert_eq!(vips, set(&[3, 1]));
    }

    #[test]
    fn bgp_counts_only_backends_up_by_health_even_when_failing_open() {
        let all_down: DownSet = [(vip(), b(0)), (vip(), b(1))].into();
        let one_down: DownSet = [(vip(), b(0))].into();
        let announced = |down: &DownSet, min| crate::bgp::announced(&without_down(&set(&[1, 1]), down), true, min);
        assert!(announced(&all_down, 1).is_empty(), "every backend down: withdrawn, though the ring keeps them");
        assert_eq!(announced(&one_down, 1), [vip().addr].into());
        assert!(announced(&one_down, 2).is_empty(), "min_healthy = 2 with one backend up");
    }
}
