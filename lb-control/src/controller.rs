//! The controller: one owner of the engine, the state file and the running
//! config. The API, SIGHUP and the gateway watcher all change the data plane
//! through it, one change at a time.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc, time::Duration};

use lb_common::{Counter, LbConfig, Stat};
use serde::{Deserialize, Serialize};

use crate::{
    attachment, bgp,
    config::{
        health::{HealthCheck, HealthSettings},
        Config, Prefix, Reattach,
    },
    dataplane::{Balancer, DataplaneError},
    engine::{ApplyReport, Engine, EngineError},
    health,
    lock::{LockError, PinDirLock},
    model::{VipId, VipSet},
    netlink,
    state::{self, State, StateError},
};

#[derive(thiserror::Error, Debug)]
pub enum ControlError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the balancer is not attached ({0}); changes are refused until it is")]
    Detached(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the new config cannot be applied while running: {0}")]
    NeedsRestart(String),
    #[error("discovering {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: netlink::NetlinkError,
    },
}

/// How long to wait for the gateway's neighbour entry.
pub const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(3);

/// The outer-source fields of the data plane config for a prefix: the
/// prefix itself and the host bits the flow hash fills in (at most the last
/// 32 bits of an IPv6 source).
pub fn source_fields_v4(p: &Prefix<std::net::Ipv4Addr>) -> (u32, u32) {
    let host = if p.len >= 32 { 0 } else { u32::MAX >> p.len };
    let net = u32::from(p.addr) & !host;
    (u32::from_ne_bytes(net.to_be_bytes()), u32::from_ne_bytes(host.to_be_bytes()))
}

pub fn source_fields_v6(p: &Prefix<std::net::Ipv6Addr>) -> ([u32; 4], [u32; 4]) {
    let host: u128 = if p.len >= 128 { 0 } else { (u128::MAX >> p.len) & 0xffff_ffff };
    let net = u128::from(p.addr) & !host;
    (lb_common::addr_v6(net.to_be_bytes()), lb_common::addr_v6(host.to_be_bytes()))
}

/// The data plane config for `config`: encapsulation from the file, MACs
/// from the file's overrides or else from the kernel.
pub fn forwarding(config: &Config) -> Result<LbConfig, ControlError> {
    let iface = config.interfaces.first().expect("validated: at least one interface");
    let if_mac = match config.gateway.interface_mac {
        Some(m) => m,
        None => netlink::interface_mac(iface)
            .map_err(|source| ControlError::Netlink { what: format!("the MAC of {iface}"), source })?,
    };
    let gw_mac = match config.gateway.mac {
        Some(m) => m,
        None => gateway_mac(iface)?,
    };
    let (src_v4, src_v4_mask) = source_fields_v4(&config.encap.source_v4);
    let (src_v6, src_v6_mask) = source_fields_v6(&config.encap.source_v6);
    Ok(LbConfig {
        flags: 0,
        mtu: config.encap.mtu,
        gw_mac,
        if_mac,
        src_v4,
        src_v4_mask,
        src_v6,
        src_v6_mask,
        syn_flood_threshold: config.syn_flood.threshold,
    })
}

/// The default gateway's MAC on `iface`: IPv4's default route first, then
/// IPv6's.
pub fn gateway_mac(iface: &str) -> Result<[u8; 6], ControlError> {
    netlink::next_hop_mac(iface, NEIGHBOUR_TIMEOUT)
        .map(|(_, mac)| mac)
        .map_err(|source| ControlError::Netlink { what: format!("the gateway MAC on {iface}"), source })
}

/// Counters as the API and metrics report them, and as lbctl reads them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Every reason counter by name.
    pub global: BTreeMap<String, Counter>,
    /// Sums per action (tx, pass, drop).
    pub actions: BTreeMap<String, Counter>,
    pub vips: BTreeMap<String, Counter>,
    pub backends: BTreeMap<String, Counter>,
    /// CPUs in SYN-flood mode now (README, "SYN-flood mode"); 0 from a
    /// daemon that predates it.
    #[serde(default)]
    pub syn_flood_cpus: u32,
}

/// What API readers see, published after every change: they never wait
/// for a change in progress (its map writes, fsync or table swap).
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The operator's VIPs (health overlay not applied).
    pub vips: VipSet,
    /// Why the daemon is not ready (not attached yet, or detached).
    pub not_ready: Option<String>,
    /// Health checks per VIP (the config's, with API changes).
    pub health: HealthSettings,
    /// VIPs whose every serving backend is down: kept whole (fail open).
    pub failed_open: std::collections::BTreeSet<VipId>,
    /// The forwarding config the data plane uses (and probes too).
    pub forwarding: LbConfig,
}

pub struct Controller {
    engine: Engine,
    state: State,
    config: Config,
    forwarding: LbConfig,
    attached: bool,
    /// The balancer's program id, known once attached.
    program_id: Option<u32>,
    /// Set when the balancer was found detached behind the daemon's back.
    detached: Option<String>,
    /// The last attachment check that could not be made (logged once).
    check_failed: Option<String>,
    view: tokio::sync::watch::Sender<Arc<View>>,
    /// Announces this host's VIP addresses through BIRD (`[bgp]` enabled).
    announcer: Option<bgp::Announcer>,
    /// Backends the health checks found down: an overlay on the operator's
    /// VIPs, never persisted.
    down: health::DownSet,
    /// VIPs failed open at the last apply.
    failed_open: std::collections::BTreeSet<VipId>,
}

impl Controller {
    /// Opens (or adopts) the pinned data plane, brings it to the saved state
    /// merged with the config, and persists that state. Nothing is attached.
    pub fn open(config: Config, forwarding: LbConfig) -> Result<Self, ControlError> {
        let bal = Balancer::open(config.limits, Some(&config.pin_dir))?;
        let adopted = bal.adopted();
        let mut engine = Engine::adopt(bal)?;
        engine.set_second_chance(config.second_chance.window())?;
        let saved = state::load(&config.state_file)?;
        let state = state::startup_state(saved, &config.vips, &config.health);
        let report = engine.apply(&state.vips, &forwarding)?;
        state::save(&config.state_file, &state)?;
        tracing::info!(adopted, ?report, vips = state.vips.len(), "data plane ready");
        let view = tokio::sync::watch::Sender::new(Arc::new(View::default()));
        let ctl = Self {
            engine,
            state,
            config,
            forwarding,
            attached: false,
            program_id: None,
            detached: None,
            check_failed: None,
            view,
            announcer: None,
            down: Default::default(),
            failed_open: Default::default(),
        };
        ctl.publish();
        Ok(ctl)
    }

    /// The published [`View`], for readers that must not wait.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<View>> {
        self.view.subscribe()
    }

    fn not_ready(&self) -> Option<String> {
        match (&self.detached, self.attached) {
            (Some(reason), _) => Some(format!("detached: {reason}")),
            (None, false) => Some("not attached yet".into()),
            (None, true) => None,
        }
    }

    /// Tells readers (the API's view) and routers (BGP) what changed: the
    /// one place every change of the VIP set or of readiness goes through.
    fn publish(&self) {
        self.view.send_replace(Arc::new(View {
            vips: self.state.vips.clone(),
            not_ready: self.not_ready(),
            health: self.health_settings(),
            failed_open: self.failed_open.clone(),
            forwarding: self.forwarding,
        }));
        self.announce();
    }

    /// The health checks in force: the config's, with the API's changes
    /// (persisted in the state file).
    pub fn health_settings(&self) -> HealthSettings {
        let mut h = self.config.health.clone();
        h.vips.extend(self.state.health.iter().map(|(k, v)| (*k, v.clone())));
        h
    }

    /// What the data plane gets: the operator's VIPs with the health overlay
    /// (see [`health::effective`]). Logs VIPs that start or stop failing open.
    fn effective(&mut self) -> VipSet {
        let settings = self.health_settings();
        let vips = &self.state.vips;
        // Down marks of backends gone, or of VIPs no longer checked, lapse.
        self.down.retain(|(id, addr)| {
            vips.get(id).is_some_and(|s| s.backends.contains_key(addr)) && settings.for_vip(id).enabled()
        });
        let (effective, failed_open) = health::effective(vips, &self.down, &settings);
        for id in failed_open.difference(&self.failed_open) {
            tracing::error!(vip = %id, "every backend of the VIP is down: failing open, all stay in the ring");
        }
        for id in self.failed_open.difference(&failed_open) {
            tracing::warn!(vip = %id, "the VIP no longer fails open");
        }
        self.failed_open = failed_open;
        effective
    }

    /// A health check found `backend` of `vip` down (or up again): one
    /// change, applied with the operator's VIPs and not persisted.
    pub fn set_backend_down(&mut self, vip: VipId, backend: IpAddr, down: bool) -> Result<ApplyReport, ControlError> {
        let changed = if down { self.down.insert((vip, backend)) } else { self.down.remove(&(vip, backend)) };
        if !changed {
            return Ok(ApplyReport::default());
        }
        let effective = self.effective();
        let result = self.engine.apply(&effective, &self.forwarding);
        self.publish();
        Ok(result?)
    }

    /// Sets a VIP's health check (the API's `PUT /v1/vips/{vip}/health`):
    /// persisted like every API change.
    pub fn set_vip_health(&mut self, vip: VipId, check: HealthCheck) -> Result<ApplyReport, ControlError> {
        self.change(|vips, health| {
            if !vips.contains_key(&vip) {
                return Err(ControlError::NotFound(format!("no VIP {vip}")));
            }
            health.set(vip, check);
            Ok(())
        })
    }

    fn refuse_if_detached(&self) -> Result<(), ControlError> {
        match &self.detached {
            Some(reason) => Err(ControlError::Detached(reason.clone())),
            None => Ok(()),
        }
    }

    /// Checks that every interface still runs this daemon's program through
    /// its pinned link (see [`attachment`]). When not, the daemon is not
    /// ready and refuses changes; with `reattach = "auto"` it attaches
    /// again (after re-taking the pin directory's lock if the directory was
    /// replaced). Logs each change of state once.
    pub fn check_attachment(&mut self, lock: &mut PinDirLock) {
        let Some(program_id) = self.program_id.filter(|_| self.attached) else { return };
        let pin_dir = self.config.pin_dir.clone();
        let mut problems = Vec::new();
        for iface in &self.config.interfaces {
            match attachment::problem(&pin_dir, iface, program_id) {
                Ok(Some(problem)) => problems.push(problem),
                Ok(None) => {}
                Err(e) => {
                    // No evidence either way (e.g. out of descriptors): keep
                    // the last verdict, try again next period.
                    let error = format!("{iface}: {e}");
                    if self.check_failed.as_deref() != Some(error.as_str()) {
                        tracing::warn!(%error, "cannot check the XDP attachment; trying again");
                        self.check_failed = Some(error);
                    }
                    return;
                }
            }
        }
        if self.check_failed.take().is_some() {
            tracing::info!("the XDP attachment can be checked again");
        }
        if problems.is_empty() {
            if self.detached.take().is_some() {
                tracing::info!("the balancer is attached again");
                self.publish();
            }
            return;
        }
        let reason = problems.join("; ");
        let first = self.detached.is_none();
        if first {
            tracing::error!(%reason, reattach = ?self.config.reattach, "the balancer was detached behind the daemon's back");
        }
        // Keep the pin directory ours even if it was removed and made anew,
        // so no second daemon starts on it meanwhile.
        let relocked = lock.renew().map_err(ControlError::from);
        let outcome = match self.config.reattach {
            Reattach::Never => match relocked {
                Ok(_) => format!("{reason}; reattach = \"never\": restart the daemon to attach again"),
                Err(e) => format!("{reason}; reattach = \"never\"; {e}"),
            },
            Reattach::Auto => match relocked.and_then(|_| self.reattach()) {
                Ok(()) => {
                    tracing::info!("re-attached the balancer (reattach = \"auto\")");
                    self.detached = None;
                    self.publish();
                    return;
                }
                Err(e) => format!("{reason}; re-attaching failed: {e}"),
            },
        };
        if self.detached.as_deref() != Some(outcome.as_str()) {
            if !first {
                tracing::error!(reason = %outcome, "the balancer is still detached");
            }
            self.detached = Some(outcome);
            self.publish();
        }
    }

    /// Attaches again to every interface whose link is gone or defunct.
    fn reattach(&mut self) -> Result<(), ControlError> {
        let pin_dir = self.config.pin_dir.clone();
        // The maps first (their pins may be gone with the link's), so a
        // later restart adopts them and the connections they track.
        let repinned = self.engine.balancer().repin_maps(&pin_dir)?;
        if repinned > 0 {
            tracing::warn!(maps = repinned, "pinned the balancer's maps again");
        }
        let mode = self.config.xdp_mode;
        for iface in &self.config.interfaces {
            let Some(program_id) = self.program_id else { break };
            if matches!(attachment::problem(&pin_dir, iface, program_id), Ok(None)) {
                continue;
            }
            // A defunct link's pin would be reused by attach: drop it first.
            let pin = crate::dataplane::link_pin(&pin_dir, iface);
            if pin.exists() {
                std::fs::remove_file(&pin)
                    .map_err(|source| ControlError::Dataplane(DataplaneError::PinDir { path: pin.clone(), source }))?;
            }
            self.engine.balancer_mut().attach(iface, mode, Some(&pin_dir))?;
        }
        Ok(())
    }

    /// Attaches (or, after a restart, atomically re-attaches) the balancer
    /// to every configured interface.
    pub fn attach(&mut self) -> Result<(), ControlError> {
        let mode = self.config.xdp_mode;
        for iface in &self.config.interfaces {
            self.engine.balancer_mut().attach(iface, mode, Some(&self.config.pin_dir))?;
            tracing::info!(iface, ?mode, "attached");
        }
        self.program_id = Some(self.engine.balancer_mut().program().info().map_err(DataplaneError::from)?.id());
        self.attached = true;
        self.publish();
        Ok(())
    }

    /// The loaded balancer program's tag (`GET /v1/version`).
    pub fn program_tag(&mut self) -> Result<u64, ControlError> {
        Ok(self.engine.balancer_mut().program().info().map_err(DataplaneError::from)?.tag())
    }

    /// Attached to every interface, as far as the last check knows.
    pub fn ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Attached (and not found detached since).
    pub fn attached(&self) -> bool {
        self.attached && self.detached.is_none()
    }

    /// Announces through `announcer` from now on (the daemon does this once
    /// at start, before attaching; until then nothing is rewritten, so a
    /// restart withdraws nothing).
    pub fn set_announcer(&mut self, announcer: bgp::Announcer) {
        self.announcer = Some(announcer);
        self.announce();
    }

    /// The one place BGP announcements are derived (from [`Self::publish`]:
    /// whenever readiness or the VIP set changes). Serving means attached and
    /// not found detached since, so a detach behind the daemon's back
    /// withdraws. Announces nothing before the first attach: a daemon
    /// starting up leaves the previous announcements (and the running data
    /// plane) alone.
    fn announce(&self) {
        let Some(announcer) = &self.announcer else { return };
        if !self.attached && announcer.desired().is_none() {
            // Never attached by this daemon: still starting up.
            return;
        }
        let b = &self.config.bgp;
        // min_healthy counts backends up by health too (weight > 0, not down).
        let serving = health::without_down(&self.state.vips, &self.down);
        announcer.sync(&bgp::announced(&serving, self.ready(), b.min_healthy), &b.communities);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn vips(&self) -> &VipSet {
        &self.state.vips
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Applies an edit of the VIP set: validated first (a rejected edit
    /// changes nothing), persisted, then applied; if the apply fails the
    /// previous state is restored and persisted again.
    pub fn mutate<F>(&mut self, edit: F) -> Result<ApplyReport, ControlError>
    where
        F: FnOnce(&mut VipSet) -> Result<(), ControlError>,
    {
        self.change(|vips, _| edit(vips))
    }

    /// [`Self::mutate`] for an edit of the VIP set and of their health
    /// checks together: one change, one state file write. A VIP removed
    /// loses its API check with it.
    pub fn change<F>(&mut self, edit: F) -> Result<ApplyReport, ControlError>
    where
        F: FnOnce(&mut VipSet, &mut HealthEdit<'_>) -> Result<(), ControlError>,
    {
        self.refuse_if_detached()?;
        let mut vips = self.state.vips.clone();
        let mut overrides = self.state.health.clone();
        edit(&mut vips, &mut HealthEdit { config: &self.config.health, overrides: &mut overrides })?;
        overrides.retain(|id, _| vips.contains_key(id));
        for (id, check) in &overrides {
            check.check_for(id).map_err(|(field, m)| ControlError::Invalid(format!("{id}: health.{field}: {m}")))?;
        }
        self.engine.check(&vips)?;
        let next = State { vips, health: overrides, ..self.state.clone() };
        let previous = std::mem::replace(&mut self.state, next);
        if let Err(e) = state::save(&self.config.state_file, &self.state) {
            self.state = previous;
            return Err(e.into());
        }
        let effective = self.effective();
        let result = match self.engine.apply(&effective, &self.forwarding) {
            Ok(report) => Ok(report),
            Err(e) => {
                tracing::error!(error = %e, "apply failed; restoring the previous state");
                self.state = previous;
                let _ = state::save(&self.config.state_file, &self.state);
                let effective = self.effective();
                let _ = self.engine.apply(&effective, &self.forwarding);
                Err(e.into())
            }
        };
        self.publish();
        result
    }

    /// Applies a changed config file (SIGHUP). Settings that fix the maps'
    /// layout or the attachment need a restart and are refused; VIPs the file
    /// changed are applied, API changes elsewhere are kept.
    pub fn reload(&mut self, new: Config, forwarding: LbConfig) -> Result<ApplyReport, ControlError> {
        self.refuse_if_detached()?;
        let old = &self.config;
        let fixed = [
            ("limits", old.limits != new.limits),
            ("interfaces", old.interfaces != new.interfaces),
            ("xdp_mode", old.xdp_mode != new.xdp_mode),
            ("pin_dir", old.pin_dir != new.pin_dir),
            ("state_file", old.state_file != new.state_file),
            ("api", old.api != new.api),
            // bgp.min_healthy and bgp.communities apply on reload.
            (
                "bgp",
                (old.bgp.enabled, &old.bgp.bird_socket, &old.bgp.include_file)
                    != (new.bgp.enabled, &new.bgp.bird_socket, &new.bgp.include_file),
            ),
        ];
        let changed: Vec<_> = fixed.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect();
        if !changed.is_empty() {
            return Err(ControlError::NeedsRestart(format!("changed: {}", changed.join(", "))));
        }
        let next = state::with_config(&self.state, &new.vips, &new.health);
        self.engine.check(&next.vips)?;
        state::save(&new.state_file, &next)?;
        let previous = std::mem::replace(&mut self.state, next);
        let previous_config = std::mem::replace(&mut self.config, new);
        let effective = self.effective();
        let result = match self.engine.apply(&effective, &forwarding) {
            Ok(report) => {
                if let Err(e) = self.engine.set_second_chance(self.config.second_chance.window()) {
                    tracing::error!(error = %e, "second chance: the new window could not be applied");
                }
                self.forwarding = forwarding;
                Ok(report)
            }
            Err(e) => {
                self.state = previous;
                self.config = previous_config;
                let _ = state::save(&self.config.state_file, &self.state);
                let effective = self.effective();
                let _ = self.engine.apply(&effective, &self.forwarding);
                Err(e.into())
            }
        };
        self.publish();
        result
    }

    /// Lets go of previous Maglev tables (second chance) whose window has
    /// passed; called periodically by the daemon.
    pub fn expire_second_chance(&mut self) -> Result<usize, ControlError> {
        Ok(self.engine.expire_previous(std::time::Instant::now())?)
    }

    /// Updates the MACs (the gateway watcher's finding).
    pub fn set_macs(&mut self, gw_mac: [u8; 6], if_mac: [u8; 6]) -> Result<bool, ControlError> {
        if self.forwarding.gw_mac == gw_mac && self.forwarding.if_mac == if_mac {
            return Ok(false);
        }
        let mut f = self.forwarding;
        f.gw_mac = gw_mac;
        f.if_mac = if_mac;
        self.engine.set_forwarding(f)?;
        self.forwarding = f;
        Ok(true)
    }

    pub fn forwarding_config(&self) -> &LbConfig {
        &self.forwarding
    }

    pub fn stats(&self) -> Result<StatsSnapshot, ControlError> {
        let bal = self.engine.balancer();
        let mut snap = StatsSnapshot::default();
        for (stat, c) in bal.all_stats()? {
            snap.global.insert(stat.name().into(), c);
            if stat.action() != lb_common::Action::Event {
                snap.actions.entry(stat.action().name().into()).or_default().add(&c);
            }
        }
        for (id, vip_num) in self.engine.installed_vips() {
            snap.vips.insert(id.to_string(), bal.vip_stat(vip_num)?);
        }
        for (addr, counter) in self.engine.backend_counters()? {
            snap.backends.insert(addr.to_string(), counter);
        }
        snap.syn_flood_cpus = bal.syn_flood_cpus()?;
        Ok(snap)
    }

    /// The number of packets of one reason, for tests and logs.
    /// Arms the packet capture for `spec` and lends its ring to the caller
    /// (one capture at a time: a second one is a conflict).
    pub fn start_capture(
        &mut self,
        spec: &crate::capture::CaptureSpec,
    ) -> Result<aya::maps::RingBuf<aya::maps::MapData>, ControlError> {
        let bal = self.engine.balancer_mut();
        let ring =
            bal.take_capture_ring().ok_or_else(|| ControlError::Conflict("a capture is already running".into()))?;
        // Records left from an earlier session would be this one's first.
        let mut ring = ring;
        while ring.next().is_some() {}
        let deadline = crate::dataplane::monotonic_ns() + spec.duration.as_nanos() as u64;
        if let Err(e) = bal.set_capture(&spec.filter(deadline)) {
            bal.return_capture_ring(ring);
            return Err(e.into());
        }
        Ok(ring)
    }

    /// Disarms the capture, takes its ring back, and returns how many
    /// records the data plane lost to a full ring.
    pub fn stop_capture(&mut self, ring: aya::maps::RingBuf<aya::maps::MapData>) -> Result<u64, ControlError> {
        let bal = self.engine.balancer_mut();
        bal.return_capture_ring(ring);
        let lost = bal.capture().map(|f| f.lost).unwrap_or(0);
        bal.set_capture(&lb_common::CaptureFilter::default())?;
        Ok(lost)
    }

    pub fn stat(&self, stat: Stat) -> Result<Counter, ControlError> {
        Ok(self.engine.balancer().stat(stat)?)
    }

    pub fn vip(&self, id: &VipId) -> Option<&crate::model::VipSpec> {
        self.state.vips.get(id)
    }

    pub fn has_backend(&self, id: &VipId, addr: &IpAddr) -> bool {
        self.state.vips.get(id).is_some_and(|s| s.backends.contains_key(addr))
    }
}

/// The health checks an edit ([`Controller::change`]) sets: kept only
/// where they differ from the config file's, so a later change of the
/// file's check of that VIP takes over.
pub struct HealthEdit<'a> {
    config: &'a HealthSettings,
    overrides: &'a mut state::HealthOverrides,
}

impl HealthEdit<'_> {
    /// `[health]`: what fields a check leaves out take.
    pub fn defaults(&self) -> &HealthCheck {
        &self.config.defaults
    }

    /// The check `vip` is to have.
    pub fn set(&mut self, vip: VipId, check: HealthCheck) {
        if *self.config.for_vip(&vip) == check {
            self.overrides.remove(&vip);
        } else {
            self.overrides.insert(vip, check);
        }
    }
}

/// Checks a config file as `lb-control check` does.
pub fn check_file(path: &Path) -> Result<Config, crate::config::ConfigError> {
    Config::load(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_prefix_fields() {
        let (net, mask) = source_fields_v4(&Prefix { addr: "10.255.3.4".parse().unwrap(), len: 16 });
        assert_eq!(net.to_ne_bytes(), [10, 255, 0, 0]);
        assert_eq!(mask.to_ne_bytes(), [0, 0, 255, 255]);
        let (net, mask) = source_fields_v4(&Prefix { addr: "10.255.3.4".parse().unwrap(), len: 32 });
        assert_eq!((net.to_ne_bytes(), mask), ([10, 255, 3, 4], 0));
        let (net, mask) = source_fields_v6(&Prefix { addr: "fc00:ffff::1".parse().unwrap(), len: 96 });
        assert_eq!(net, lb_common::addr_v6("fc00:ffff::".parse::<std::net::Ipv6Addr>().unwrap().octets()));
        assert_eq!(mask, [0, 0, 0, u32::MAX]);
        let (_, mask) = source_fields_v6(&Prefix { addr: "fc00::".parse().unwrap(), len: 112 });
        assert_eq!(mask[3].to_ne_bytes(), [0, 0, 255, 255]);
        let (_, mask) = source_fields_v6(&Prefix { addr: "fc00::".parse().unwrap(), len: 64 });
        assert_eq!(mask, [0, 0, 0, u32::MAX], "only the last 32 bits vary");
    }
}
