//! The controller: one owner of the engine, the state file and the running
//! config. The API, SIGHUP and the gateway watcher all change the data plane
//! through it, one change at a time.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use lb_common::{Counter, LbConfig, Stat};
use serde::Serialize;

use crate::{
    bgp,
    config::{Config, Prefix, XdpMode},
    dataplane::{AttachMode, Balancer, DataplaneError},
    engine::{ApplyReport, Engine, EngineError},
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
    Ok(LbConfig { flags: 0, mtu: config.encap.mtu, gw_mac, if_mac, src_v4, src_v4_mask, src_v6, src_v6_mask })
}

/// The default gateway's MAC on `iface`: IPv4's default route first, then
/// IPv6's.
pub fn gateway_mac(iface: &str) -> Result<[u8; 6], ControlError> {
    let v4 = netlink::gateway_mac(iface, netlink::Family::V4, NEIGHBOUR_TIMEOUT);
    match v4 {
        Ok((_, mac)) => Ok(mac),
        Err(e4) => netlink::gateway_mac(iface, netlink::Family::V6, NEIGHBOUR_TIMEOUT)
            .map(|(_, mac)| mac)
            .map_err(|_| ControlError::Netlink { what: format!("the gateway MAC on {iface}"), source: e4 }),
    }
}

pub fn attach_mode(mode: XdpMode) -> AttachMode {
    match mode {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
        XdpMode::Auto => AttachMode::Auto,
    }
}

/// Counters as the API and metrics report them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatsSnapshot {
    /// Every reason counter by name.
    pub global: BTreeMap<&'static str, Counter>,
    /// Sums per action (tx, pass, drop).
    pub actions: BTreeMap<&'static str, Counter>,
    pub vips: BTreeMap<String, Counter>,
    pub backends: BTreeMap<String, Counter>,
}

fn add(a: &mut Counter, b: &Counter) {
    a.packets += b.packets;
    a.bytes += b.bytes;
}

pub struct Controller {
    engine: Engine,
    state: State,
    config: Config,
    forwarding: LbConfig,
    attached: bool,
    /// Announces this host's VIP addresses through BIRD (`[bgp]` enabled).
    announcer: Option<bgp::Announcer>,
}

impl Controller {
    /// Opens (or adopts) the pinned data plane, brings it to the saved state
    /// merged with the config, and persists that state. Nothing is attached.
    pub fn open(config: Config, forwarding: LbConfig) -> Result<Self, ControlError> {
        let bal = Balancer::open(config.limits, Some(&config.pin_dir))?;
        let adopted = bal.adopted();
        let mut engine = Engine::adopt(bal)?;
        let saved = state::load(&config.state_file)?;
        let state = state::startup_state(saved, &config.vips);
        let report = engine.apply(&state.vips, &forwarding)?;
        state::save(&config.state_file, &state)?;
        tracing::info!(adopted, ?report, vips = state.vips.len(), "data plane ready");
        Ok(Self { engine, state, config, forwarding, attached: false, announcer: None })
    }

    /// Attaches (or, after a restart, atomically re-attaches) the balancer
    /// to every configured interface.
    pub fn attach(&mut self) -> Result<(), ControlError> {
        let mode = attach_mode(self.config.xdp_mode);
        for iface in &self.config.interfaces {
            self.engine.balancer_mut().attach(iface, mode, Some(&self.config.pin_dir))?;
            tracing::info!(iface, ?mode, "attached");
        }
        self.set_ready(true);
        Ok(())
    }

    pub fn ready(&self) -> bool {
        self.attached
    }

    /// Marks the balancer as serving or not (attached, or found detached)
    /// and announces or withdraws its VIPs accordingly.
    pub fn set_ready(&mut self, ready: bool) {
        self.attached = ready;
        self.announce();
    }

    /// Announces through `announcer` from now on (the daemon does this once
    /// at start, before attaching; until then nothing is rewritten, so a
    /// restart withdraws nothing).
    pub fn set_announcer(&mut self, announcer: bgp::Announcer) {
        self.announcer = Some(announcer);
        self.announce();
    }

    /// The one place BGP announcements are derived: called whenever the
    /// readiness or the VIP set changes. Announces nothing before the first
    /// attach: a daemon starting up leaves the previous announcements (and
    /// the running data plane) alone.
    pub fn announce(&self) {
        let Some(announcer) = &self.announcer else { return };
        if !self.attached && announcer.desired().is_none() {
            // Never attached by this daemon: still starting up.
            return;
        }
        let b = &self.config.bgp;
        announcer.sync(&bgp::announced(&self.state.vips, self.attached, b.min_healthy), &b.communities);
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
        let mut next = self.state.vips.clone();
        edit(&mut next)?;
        self.engine.check(&next)?;
        let previous = std::mem::replace(&mut self.state.vips, next);
        if let Err(e) = state::save(&self.config.state_file, &self.state) {
            self.state.vips = previous;
            return Err(e.into());
        }
        match self.engine.apply(&self.state.vips, &self.forwarding) {
            Ok(report) => {
                self.announce();
                Ok(report)
            }
            Err(e) => {
                tracing::error!(error = %e, "apply failed; restoring the previous state");
                self.state.vips = previous;
                let _ = state::save(&self.config.state_file, &self.state);
                let _ = self.engine.apply(&self.state.vips, &self.forwarding);
                Err(e.into())
            }
        }
    }

    /// Applies a changed config file (SIGHUP). Settings that fix the maps'
    /// layout or the attachment need a restart and are refused; VIPs the file
    /// changed are applied, API changes elsewhere are kept.
    pub fn reload(&mut self, new: Config, forwarding: LbConfig) -> Result<ApplyReport, ControlError> {
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
        let vips = state::merge_config_change(&self.state.vips, &self.state.config_vips, &new.vips);
        self.engine.check(&vips)?;
        let next = State { version: state::STATE_VERSION, config_vips: new.vips.clone(), vips };
        state::save(&new.state_file, &next)?;
        let previous = std::mem::replace(&mut self.state, next);
        match self.engine.apply(&self.state.vips, &forwarding) {
            Ok(report) => {
                self.config = new;
                self.forwarding = forwarding;
                self.announce();
                Ok(report)
            }
            Err(e) => {
                self.state = previous;
                let _ = state::save(&self.config.state_file, &self.state);
                let _ = self.engine.apply(&self.state.vips, &self.forwarding);
                Err(e.into())
            }
        }
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
            snap.global.insert(stat.name(), c);
            if stat.action() != lb_common::Action::Event {
                add(snap.actions.entry(stat.action().name()).or_default(), &c);
            }
        }
        for (id, vip_num) in self.engine.installed_vips() {
            snap.vips.insert(id.to_string(), bal.vip_stat(vip_num)?);
        }
        for (addr, index) in self.engine.backends() {
            snap.backends.insert(addr.to_string(), bal.real_stat(index)?);
        }
        Ok(snap)
    }

    /// The number of packets of one reason, for tests and logs.
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
