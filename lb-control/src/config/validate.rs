//! Validation of the raw TOML shape into a [`Config`]: every rule a running
//! daemon relies on, each failure located. `lb-control check`, start-up and
//! SIGHUP all come through here ([`super::Config::load`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::MAX_REALS_LIMIT;
use toml::Spanned;

use super::{
    host, parse_mac, parse_prefix,
    problem::Checker,
    raw::{RawConfig, RawLimits, RawVip},
    Api, Config, Encap, Gateway, Prefix, DEFAULT_HEADER_READ_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_LISTEN,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_PIN_DIR, DEFAULT_STATE_FILE, MAX_TIMEOUT_SECS,
};
use crate::{
    dataplane::{Limits, MAX_RING_SIZE},
    model::{
        check_backend_addr, check_backend_family, check_backend_set, check_vip_addr, check_weight, Backend, Proto,
        VipFlag, VipId, VipSet, VipSpec,
    },
};

impl Checker<'_> {
    fn ip(&mut self, value: &Spanned<String>, key: &str) -> Option<IpAddr> {
        match value.get_ref().parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(&value.span(), key, format!("'{}' is not an IP address", value.get_ref()));
                None
            }
        }
    }

    /// An absolute path naming a file or directory (not empty, not `/`).
    fn path(&mut self, value: Option<&Spanned<String>>, key: &str, default: &str) -> Option<PathBuf> {
        let Some(v) = value else { return Some(default.into()) };
        let p = Path::new(v.get_ref());
        if v.get_ref().is_empty() {
            self.add(&v.span(), key, "is empty: give an absolute path");
        } else if !p.is_absolute() {
            self.add(&v.span(), key, format!("'{}' is relative: give an absolute path", p.display()));
        } else if p.file_name().is_none() || v.get_ref().ends_with('/') {
            self.add(&v.span(), key, format!("'{}' names no file", p.display()));
        } else {
            return Some(p.to_owned());
        }
        None
    }
}

pub(super) fn validate(c: &mut Checker<'_>, raw: RawConfig) -> Option<Config> {
    let interfaces = interfaces(c, &raw);
    let encap = encap(c, &raw);
    let gateway = gateway(c, &raw);
    let limits = limits(c, &raw.limits);
    let pin_dir = c.path(raw.pin_dir.as_ref(), "pin_dir", DEFAULT_PIN_DIR);
    if let (Some(dir), true) = (&pin_dir, c.check_host) {
        if let Err(e) = host::check_pin_dir(dir) {
            c.add(&raw.pin_dir.as_ref().map_or(0..0, |s| s.span()), "pin_dir", e);
        }
    }
    let state_file = c.path(raw.state_file.as_ref(), "state_file", DEFAULT_STATE_FILE);
    let api = api(c, &raw);
    let vips = vips(c, &raw.vips, Some(&limits));
    let health = super::health::validate_health(c, raw.health.as_ref(), &vip_health_tables(&raw.vips));
    Some(Config {
        interfaces,
        xdp_mode: raw.xdp_mode,
        reattach: raw.reattach,
        pin_dir: pin_dir?,
        state_file: state_file?,
        encap: encap?,
        gateway,
        limits,
        api: api?,
        bgp: super::bgp::validate_bgp(c, &raw.bgp)?,
        second_chance: super::second_chance::validate_second_chance(c, &raw.second_chance)?,
        syn_flood: super::syn_flood::validate_syn_flood(c, &raw.syn_flood)?,
        health: health?,
        vips,
    })
}

/// Each `[[vip]]`'s identity as written (`None` when it does not parse:
/// that is reported already) and its `[vip.health]` table.
pub(super) fn vip_health_tables(
    raw_vips: &[Spanned<RawVip>],
) -> Vec<(Option<VipId>, Option<&Spanned<super::health::RawHealthCheck>>)> {
    raw_vips
        .iter()
        .map(|v| {
            let v = v.get_ref();
            let id = (|| {
                Some(VipId {
                    addr: v.address.get_ref().parse().ok()?,
                    port: u16::try_from(*v.port.get_ref()).ok()?,
                    proto: v.protocol.get_ref().parse().ok()?,
                })
            })();
            (id, v.health.as_ref())
        })
        .collect()
}

fn interfaces(c: &mut Checker<'_>, raw: &RawConfig) -> Vec<String> {
    let mut interfaces = Vec::new();
    if raw.interfaces.get_ref().is_empty() {
        c.add(&raw.interfaces.span(), "interfaces", "at least one interface is needed");
    }
    for (i, name) in raw.interfaces.get_ref().iter().enumerate() {
        let n = name.get_ref();
        if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
            c.add(&name.span(), format!("interfaces[{i}]"), format!("'{n}' is not an interface name"));
        } else if interfaces.contains(n) {
            c.add(&name.span(), format!("interfaces[{i}]"), format!("'{n}' is listed twice"));
        } else {
            interfaces.push(n.clone());
        }
    }
    interfaces
}

fn encap(c: &mut Checker<'_>, raw: &RawConfig) -> Option<Encap> {
    let source_v4 = match &raw.encap.source_v4 {
        Some(s) => parse_prefix::<Ipv4Addr>(s.get_ref(), 32).map_err(|e| c.add(&s.span(), "encap.source_v4", e)).ok(),
        None => Some(Prefix { addr: Ipv4Addr::new(172, 16, 0, 0), len: 16 }),
    };
    let source_v6 = match &raw.encap.source_v6 {
        Some(s) => parse_prefix::<Ipv6Addr>(s.get_ref(), 128).map_err(|e| c.add(&s.span(), "encap.source_v6", e)).ok(),
        None => Some(Prefix { addr: Ipv6Addr::new(0xfc00, 0xffff, 0, 0, 0, 0, 0, 0), len: 96 }),
    };
    let mtu = raw.encap.mtu.as_ref().map_or(lb_common::DEFAULT_MTU, |m| *m.get_ref());
    if let Some(m) = raw.encap.mtu.as_ref().filter(|_| !(576..=65535).contains(&mtu)) {
        c.add(&m.span(), "encap.mtu", format!("{mtu} is outside 576..=65535"));
    }
    Some(Encap { source_v4: source_v4?, source_v6: source_v6?, mtu })
}

fn gateway(c: &mut Checker<'_>, raw: &RawConfig) -> Gateway {
    let mut mac = |v: &Option<Spanned<String>>, key: &str| {
        v.as_ref().and_then(|s| parse_mac(s.get_ref()).map_err(|e| c.add(&s.span(), key, e)).ok())
    };
    Gateway {
        mac: mac(&raw.gateway.mac, "gateway.mac"),
        interface_mac: mac(&raw.gateway.interface_mac, "gateway.interface_mac"),
    }
}

/// Each limit in its range (located at its key), then the combination the
/// data plane sizes its maps from (`Limits::validate`, checked arithmetic).
fn limits(c: &mut Checker<'_>, raw: &RawLimits) -> Limits {
    let d = Limits::default();
    let get = |v: &Option<Spanned<u32>>, default: u32| v.as_ref().map_or(default, |x| *x.get_ref());
    let max_backends = get(&raw.max_backends, d.max_reals - 1);
    let limits = Limits {
        ring_size: get(&raw.ring_size, d.ring_size),
        max_vips: get(&raw.max_vips, d.max_vips),
        // The data plane reserves index 0.
        max_reals: max_backends.saturating_add(1),
        conn_table_size: get(&raw.conn_table_size, d.conn_table_size),
    };
    let mut bad = false;
    let mut check = |v: &Option<Spanned<u32>>, key: &str, ok: bool, why: String| {
        if let (Some(v), false) = (v, ok) {
            c.add(&v.span(), key, format!("{} {why}", v.get_ref()));
            bad = true;
        }
    };
    let ring = limits.ring_size;
    check(
        &raw.ring_size,
        "limits.ring_size",
        (2..=MAX_RING_SIZE).contains(&ring),
        format!("is outside 2..={MAX_RING_SIZE}"),
    );
    check(
        &raw.ring_size,
        "limits.ring_size",
        ring < 2 || super::is_prime(ring),
        "is not a prime (Maglev needs one; the default is 65537)".into(),
    );
    check(&raw.max_vips, "limits.max_vips", limits.max_vips > 0, "is not positive".into());
    let max_b = MAX_REALS_LIMIT - 1;
    check(
        &raw.max_backends,
        "limits.max_backends",
        (1..=max_b).contains(&max_backends),
        format!("is outside 1..={max_b} (backend indices are 16 bits)"),
    );
    check(&raw.conn_table_size, "limits.conn_table_size", limits.conn_table_size > 0, "is not positive".into());
    if !bad {
        if let Err(e) = limits.validate() {
            // What is left is the size of the ring pool: max_vips × ring_size.
            let span = raw.max_vips.as_ref().or(raw.ring_size.as_ref()).map_or(0..0, |s| s.span());
            c.add(&span, "limits.max_vips", e.to_string());
        }
    }
    limits
}

fn api(c: &mut Checker<'_>, raw: &RawConfig) -> Option<Api> {
    let listen = match &raw.api.listen {
        Some(s) => s
            .get_ref()
            .parse::<SocketAddr>()
            .map_err(|_| c.add(&s.span(), "api.listen", format!("'{}' is not ADDRESS:PORT", s.get_ref())))
            .ok(),
        None => Some(DEFAULT_LISTEN.parse().expect("literal")),
    };
    let token_file = match &raw.api.token_file {
        Some(t) => Some(c.path(Some(t), "api.token_file", "")?),
        None => None,
    };
    if let (Some(t), Some(path), true) = (&raw.api.token_file, &token_file, c.check_host) {
        if let Err(e) = host::read_token(path) {
            c.add(&t.span(), "api.token_file", e);
        }
    }
    if let (Some(l), None) = (listen, &token_file) {
        if !l.ip().is_loopback() {
            let span = raw.api.listen.as_ref().map_or(0..0, |s| s.span());
            c.add(&span, "api.listen", format!("{l} is not a loopback address: set api.token_file"));
        }
    }
    let max_body_bytes = raw.api.max_body_bytes.as_ref().map_or(DEFAULT_MAX_BODY_BYTES, |s| *s.get_ref());
    if let Some(m) = raw.api.max_body_bytes.as_ref().filter(|_| max_body_bytes == 0) {
        c.add(&m.span(), "api.max_body_bytes", "0 refuses every body: give at least 1 (the default is 1048576)");
    }
    let mut secs = |value: &Option<Spanned<u64>>, key: &str, default: u64| {
        let Some(v) = value else { return Duration::from_secs(default) };
        if !(1..=MAX_TIMEOUT_SECS).contains(v.get_ref()) {
            c.add(&v.span(), key, format!("{} is not in 1..={MAX_TIMEOUT_SECS} seconds", v.get_ref()));
        }
        Duration::from_secs(*v.get_ref())
    };
    let header_read_timeout =
        secs(&raw.api.header_read_timeout_secs, "api.header_read_timeout_secs", DEFAULT_HEADER_READ_TIMEOUT_SECS);
    let idle_timeout = secs(&raw.api.idle_timeout_secs, "api.idle_timeout_secs", DEFAULT_IDLE_TIMEOUT_SECS);
    let max_connections = match &raw.api.max_connections {
        Some(v) if *v.get_ref() == 0 => {
            c.add(&v.span(), "api.max_connections", "0 would refuse every connection");
            0
        }
        Some(v) => *v.get_ref(),
        None => DEFAULT_MAX_CONNECTIONS,
    };
    Some(Api { listen: listen?, token_file, max_body_bytes, header_read_timeout, idle_timeout, max_connections })
}

/// The `[[vip]]` tables, checked against `limits` when given (a VIP file
/// for `lbctl vip apply` is checked against the daemon's limits by the daemon).
pub(super) fn vips(c: &mut Checker<'_>, raw_vips: &[Spanned<RawVip>], limits: Option<&Limits>) -> VipSet {
    let mut vips = VipSet::new();
    let mut pairs = 0u64;
    for (i, v) in raw_vips.iter().enumerate() {
        let v_span = v.span();
        let v = v.get_ref();
        let key = format!("vip[{i}]");
        let addr = c.ip(&v.address, &format!("{key}.address"));
        let addr = addr.and_then(|a| {
            check_vip_addr(a)
                .map(|_| a)
                .map_err(|e| c.add(&v.address.span(), format!("{key}.address"), e.to_string()))
                .ok()
        });
        let port = *v.port.get_ref();
        if port > u16::MAX as u32 {
            c.add(
                &v.port.span(),
                format!("{key}.port"),
                format!("{port} is not a port (0..=65535; 0 means every port)"),
            );
        }
        let proto = v
            .protocol
            .get_ref()
            .parse::<Proto>()
            .map_err(|e| c.add(&v.protocol.span(), format!("{key}.protocol"), e))
            .ok();
        let mut flags: Vec<VipFlag> = v.flags.iter().map(|f| *f.get_ref()).collect();
        flags.sort();
        flags.dedup();
        let (Some(addr), Some(proto), Ok(port)) = (addr, proto, u16::try_from(port)) else { continue };
        let id = VipId { addr, port, proto };
        let mut spec = VipSpec { flags, backends: BTreeMap::new() };
        for (j, b) in v.backends.iter().enumerate() {
            let b = b.get_ref();
            let bkey = format!("{key}.backend[{j}]");
            let Some(baddr) = c.ip(&b.address, &format!("{bkey}.address")) else { continue };
            let checked = check_backend_family(&id, baddr)
                .and_then(|_| check_backend_addr(&id, baddr).map_err(|e| e.to_string()))
                .and_then(|_| check_backend_set(&id, spec.backends.keys().chain([&baddr])).map_err(|e| e.to_string()));
            if let Err(e) = checked {
                c.add(&b.address.span(), format!("{bkey}.address"), e);
                continue;
            }
            if let Err(e) = check_weight(*b.weight.get_ref()) {
                c.add(&b.weight.span(), format!("{bkey}.weight"), e);
                continue;
            }
            if spec.backends.insert(baddr, Backend { weight: *b.weight.get_ref() }).is_some() {
                c.add(
                    &b.address.span(),
                    format!("{bkey}.address"),
                    format!("backend {baddr} is listed twice for VIP {id}"),
                );
            }
            // The data plane has one real per (VIP, backend) pair.
            pairs += 1;
            let Some(limits) = limits else { continue };
            if pairs == limits.max_reals as u64 {
                // The first pair beyond the limit (index 0 is reserved).
                let msg = format!(
                    "backend {baddr} exceeds limits.max_backends = {} (a backend counts once per VIP it serves)",
                    limits.max_reals - 1
                );
                c.add(&b.address.span(), format!("{bkey}.address"), msg);
            }
        }
        if let Some(limits) = limits.filter(|l| spec.backends.len() as u64 > l.ring_size as u64) {
            c.add(
                &v_span,
                key.clone(),
                format!("{} backends do not fit a ring of {}", spec.backends.len(), limits.ring_size),
            );
        }
        if vips.insert(id, spec).is_some() {
            c.add(&v.address.span(), format!("{key}.address"), format!("VIP {id} is defined twice"));
        } else if let Some(limits) = limits.filter(|l| vips.len() as u64 == l.max_vips as u64 + 1) {
            let total = raw_vips.len();
            c.add(&v_span, key, format!("{total} VIPs exceed limits.max_vips = {}", limits.max_vips));
        }
    }
    vips
}
