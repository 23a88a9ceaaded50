//! The checker: every checked (VIP, backend) is probed once per interval at
//! its own phase ([`super::schedule`]). TCP checks run in one batch the
//! checker steps on the probe grid ([`super::batch`]); HTTP and UDP checks
//! are a task each, behind one semaphore (bounded concurrency). Results go
//! through one place that counts them in the pair's record (held beside the
//! pair: no registry lookup per probe), logs each transition once with its
//! reason, and hands down/up changes to the controller one at a time.
//!
//! What to check follows the controller's published view: the operator's
//! VIPs (so backends taken out by health are still probed and can come
//! back) and their health settings.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use lb_common::{LbConfig, CFG_F_READY, HEALTH_MARK_BASE, MAX_HEALTH_TARGETS};
use tokio::sync::{mpsc, Semaphore};

use super::{
    batch::{TcpBatch, TcpOutcome},
    machine::{HealthState, Transition},
    probe,
    schedule::{grid_epoch, on_grid, Schedule},
    tc::HealthProgram,
    ticker::StepTicker,
    Machine, MachineCell, Registry,
};
use crate::{
    config::health::{CheckKind, HealthCheck, HealthSettings},
    model::{VipId, VipSet},
};

/// Probes in flight at once, whatever the number of targets.
pub const MAX_CONCURRENT_PROBES: usize = 256;

/// How often the TC program's counters are copied for `/metrics`.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);

/// What the checker follows: the operator's VIPs, their checks and the
/// forwarding config probes are encapsulated with.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub vips: VipSet,
    pub health: HealthSettings,
    pub forwarding: LbConfig,
}

/// A backend changed between down and not down: `(vip, backend, down)`.
/// Called on a blocking thread, one change at a time.
pub type OnChange = Arc<dyn Fn(VipId, IpAddr, bool) + Send + Sync>;

pub type Key = (VipId, IpAddr);

pub struct ProbeResult {
    pub key: Key,
    /// The check that ran (shared: no copy per probe).
    pub check: Arc<HealthCheck>,
    pub result: Result<(), String>,
    pub took: Duration,
}

struct Task {
    check: Arc<HealthCheck>,
    /// The pair's record, also in the registry (and in the batch for TCP).
    machine: MachineCell,
    /// The task probing the pair; `None` for a TCP check (in the batch).
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// Marks handed out per backend address (one mark serves every VIP of the
/// backend: the mark only names where the tunnel goes).
#[derive(Default)]
struct Marks {
    by_addr: BTreeMap<IpAddr, u32>,
    free: Vec<u32>,
    next: u32,
}

impl Marks {
    fn get_or_assign(&mut self, addr: IpAddr) -> Option<(u32, bool)> {
        if let Some(m) = self.by_addr.get(&addr) {
            return Some((*m, false));
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.next < MAX_HEALTH_TARGETS => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        let mark = HEALTH_MARK_BASE + index;
        self.by_addr.insert(addr, mark);
        Some((mark, true))
    }

    fn release(&mut self, addr: &IpAddr) -> Option<u32> {
        let mark = self.by_addr.remove(addr)?;
        self.free.push(mark - HEALTH_MARK_BASE);
        Some(mark)
    }
}

pub struct Checker {
    registry: Arc<Registry>,
    program: HealthProgram,
    on_change: OnChange,
    semaphore: Arc<Semaphore>,
    tasks: BTreeMap<Key, Task>,
    tcp: TcpBatch,
    marks: Marks,
    forwarding: Option<LbConfig>,
    recorder: Recorder,
    tx: mpsc::Sender<ProbeResult>,
    rx: mpsc::Receiver<ProbeResult>,
}

impl Checker {
    pub fn new(registry: Arc<Registry>, program: HealthProgram, on_change: OnChange) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        Checker {
            registry,
            program,
            on_change,
            semaphore: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
            tasks: BTreeMap::new(),
            tcp: TcpBatch::default(),
            marks: Marks::default(),
            forwarding: None,
            recorder: Recorder::default(),
            tx,
            rx,
        }
    }

    /// Runs until `plans` closes; `ticker` steps the TCP batch.
    pub(super) async fn run(mut self, mut plans: tokio::sync::watch::Receiver<Plan>, mut ticker: StepTicker) {
        let plan = plans.borrow_and_update().clone();
        self.reconcile(&plan).await;
        self.follow(&mut ticker);
        let mut counters = tokio::time::interval(COUNTERS_EVERY);
        counters.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The step's outcomes and transitions in buffers kept between steps.
        let mut outcomes: Vec<TcpOutcome> = Vec::new();
        let mut transitions: Vec<(Key, MachineCell, Transition)> = Vec::new();
        loop {
            tokio::select! {
                _ = counters.tick() => self.read_counters(),
                changed = plans.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let plan = plans.borrow_and_update().clone();
                    self.reconcile(&plan).await;
                    self.follow(&mut ticker);
                }
                Some(r) = self.rx.recv() => {
                    // A result of a task stopped meanwhile (or of an older
                    // check) is stale.
                    let Some(task) = self.tasks.get(&r.key).filter(|t| Arc::ptr_eq(&t.check, &r.check)) else {
                        continue;
                    };
                    let machine = task.machine.clone();
                    if let Some(t) = self.recorder.record(&self.registry, &r.check, &machine, r.result, r.took) {
                        self.apply(r.key, &machine, t).await;
                    }
                }
                tick = ticker.tick(), if !self.tcp.is_empty() => {
                    if let Err(e) = tick {
                        tracing::error!(error = %e, "health: the probe step timer failed");
                        break;
                    }
                    // The batch holds exactly the current TCP checks: its
                    // outcomes are never stale.
                    self.tcp.step(tokio::time::Instant::now(), MAX_CONCURRENT_PROBES, &mut outcomes);
                    for o in outcomes.drain(..) {
                        let Some((key, check, machine)) = self.tcp.pair(o.slot) else { continue };
                        if let Some(t) = self.recorder.record(&self.registry, check, machine, o.result, o.took) {
                            transitions.push((*key, machine.clone(), t));
                        }
                    }
                    for (key, machine, t) in transitions.drain(..) {
                        self.apply(key, &machine, t).await;
                    }
                }
            }
        }
        for (key, t) in std::mem::take(&mut self.tasks) {
            self.tcp.remove(&key);
            if let Some(handle) = t.handle {
                handle.abort();
            }
        }
    }

    /// The ticker runs while there are TCP checks to step, and only then.
    fn follow(&self, ticker: &mut StepTicker) {
        let set = if self.tcp.is_empty() { ticker.disarm() } else { ticker.arm() };
        if let Err(e) = set {
            tracing::error!(error = %e, "health: setting the probe step timer");
        }
    }

    /// Copies the TC program's counters to the registry (for `/metrics`).
    fn read_counters(&self) {
        match self.program.stats() {
            Ok(stats) => self.registry.with(|r| r.probe_packets = stats),
            Err(e) => tracing::warn!(error = %e, "health: reading the probe program's counters"),
        }
    }

    async fn reconcile(&mut self, plan: &Plan) {
        if self.forwarding != Some(plan.forwarding) {
            // The controller's config carries no flags; the engine adds
            // READY when it writes the balancer's. The view is published
            // after the data plane is set up, so it is ready here too.
            let cfg = LbConfig { flags: plan.forwarding.flags | CFG_F_READY, ..plan.forwarding };
            match self.program.set_config(&cfg) {
                Ok(()) => self.forwarding = Some(plan.forwarding),
                Err(e) => tracing::error!(error = %e, "health: writing the forwarding config"),
            }
        }
        let mut wanted: BTreeMap<Key, (HealthCheck, SocketAddr)> = BTreeMap::new();
        for (id, spec) in &plan.vips {
            let check = plan.health.for_vip(id);
            let Some(port) = check.probe_port(id).filter(|_| check.enabled()) else { continue };
            for addr in spec.backends.keys() {
                wanted.insert((*id, *addr), (check.clone(), SocketAddr::new(id.addr, port)));
            }
        }
        // Stop what is no longer wanted, or wanted differently.
        let stale: Vec<Key> = self
            .tasks
            .iter()
            .filter(|(k, t)| wanted.get(k).is_none_or(|(c, _)| c != &*t.check))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            let task = self.tasks.remove(&key).expect("listed above");
            self.tcp.remove(&key);
            if let Some(handle) = task.handle {
                handle.abort();
            }
            self.registry.with(|r| r.machines.remove(&key));
            let was_down = task.machine.with(|m| m.state == HealthState::Down);
            if was_down {
                self.change(key, false).await;
            }
        }
        let in_use: BTreeSet<IpAddr> = wanted.keys().map(|(_, a)| *a).collect();
        let unused: Vec<IpAddr> = self.marks.by_addr.keys().filter(|a| !in_use.contains(a)).copied().collect();
        for addr in unused {
            if let Some(mark) = self.marks.release(&addr) {
                if let Err(e) = self.program.remove_target(mark) {
                    tracing::error!(error = %e, backend = %addr, "health: removing a probe target");
                }
            }
        }
        for (key, (check, target)) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let Some((mark, new)) = self.marks.get_or_assign(key.1) else {
                tracing::error!(limit = MAX_HEALTH_TARGETS, backend = %key.1, "health: too many backends to probe");
                continue;
            };
            if new {
                if let Err(e) = self.program.set_target(mark, key.1) {
                    tracing::error!(error = %e, backend = %key.1, "health: writing a probe target");
                    continue;
                }
            }
            let machine = MachineCell::new(Machine::new(SystemTime::now()));
            self.registry.with(|r| r.machines.insert(key, machine.clone()));
            let check = Arc::new(check);
            let handle = if check.kind == CheckKind::Tcp {
                self.tcp.insert(key, check.clone(), machine.clone(), target, mark, tokio::time::Instant::now());
                None
            } else {
                let (semaphore, tx) = (self.semaphore.clone(), self.tx.clone());
                Some(tokio::spawn(probe_loop(key, check.clone(), target, mark, semaphore, tx)))
            };
            self.tasks.insert(key, Task { check, machine, handle });
        }
    }

    /// Applies a transition a result called for: logged once with its
    /// reason, handed to the data plane, and only then entered in the
    /// record (API, metrics): readers never see "down" for a backend still
    /// in the ring.
    async fn apply(&self, key: Key, machine: &MachineCell, t: Transition) {
        let (vip, backend) = key;
        let reason = t.reason.as_deref().unwrap_or("checks pass");
        let (from, to) = (t.from.name(), t.to.name());
        if t.to == HealthState::Down {
            tracing::warn!(vip = %vip, backend = %backend, from, to, reason, "backend health changed");
        } else {
            tracing::info!(vip = %vip, backend = %backend, from, to, reason, "backend health changed");
        }
        match (t.from, t.to) {
            (_, HealthState::Down) => self.change(key, true).await,
            (HealthState::Down, _) => self.change(key, false).await,
            _ => {}
        }
        machine.with(|m| m.enter(&t, SystemTime::now()));
    }

    async fn change(&self, (vip, backend): Key, down: bool) {
        let on_change = self.on_change.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || on_change(vip, backend, down)).await {
            tracing::error!(error = %e, "health: applying a change failed");
        }
    }
}

/// Where results are counted: the probe-duration histogram of each check
/// kind (looked up in the registry's family on first use, then by index)
/// and the pair's record.
#[derive(Default)]
struct Recorder {
    durations: [Option<prometheus_client::metrics::histogram::Histogram>; 4],
}

impl Recorder {
    /// Counts one result: its duration in the kind's histogram, the result
    /// in the pair's record. Returns the transition it calls for, not yet
    /// entered ([`Checker::apply`] enters it).
    fn record(
        &mut self,
        registry: &Registry,
        check: &HealthCheck,
        machine: &MachineCell,
        result: Result<(), String>,
        took: Duration,
    ) -> Option<Transition> {
        let index = match check.kind {
            CheckKind::None => 0,
            CheckKind::Tcp => 1,
            CheckKind::Http => 2,
            CheckKind::Udp => 3,
        };
        let kind = check.kind_name();
        self.durations[index]
            .get_or_insert_with(|| registry.durations.get_or_create(&vec![("kind", kind.to_string())]).clone())
            .observe(took.as_secs_f64());
        machine.with(|m| m.count(result, check.rise, check.fall))
    }
}

async fn probe_loop(
    key: Key,
    check: Arc<HealthCheck>,
    target: SocketAddr,
    mark: u32,
    semaphore: Arc<Semaphore>,
    tx: mpsc::Sender<ProbeResult>,
) {
    let epoch = grid_epoch();
    let mut prober = probe::Prober::new((*check).clone(), target, mark);
    let mut schedule = Schedule::new(&key, check.interval, tokio::time::Instant::now());
    let mut start_at = schedule.first();
    loop {
        tokio::time::sleep_until(on_grid(epoch, start_at)).await;
        let Ok(permit) = semaphore.acquire().await else { return };
        let (result, took) = prober.probe().await;
        drop(permit);
        if tx.send(ProbeResult { key, check: check.clone(), result, took }).await.is_err() {
            return;
        }
        start_at = schedule.next(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_reused_per_backend_and_recycled() {
        let mut m = Marks::default();
        let a: IpAddr = "10.1.0.1".parse().unwrap();
        let b: IpAddr = "10.1.0.2".parse().unwrap();
        assert_eq!(m.get_or_assign(a), Some((HEALTH_MARK_BASE, true)));
        assert_eq!(m.get_or_assign(a), Some((HEALTH_MARK_BASE, false)));
        assert_eq!(m.get_or_assign(b), Some((HEALTH_MARK_BASE + 1, true)));
        assert_eq!(m.release(&a), Some(HEALTH_MARK_BASE));
        assert_eq!(m.get_or_assign("10.1.0.3".parse().unwrap()), Some((HEALTH_MARK_BASE, true)));
    }
}
