//! `[health]` (defaults) and `[vip.health]` (per VIP): how the daemon
//! checks each backend through the tunnel (see [`crate::health`]). The
//! same shape is the body of `PUT /v1/vips/{vip}/health`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::problem::Checker;
use crate::model::{Proto, VipId};

/// What a probe does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Connect; success is an established connection.
    Tcp,
    /// `GET path`; success is a status inside `expect_status`.
    Http,
    /// Send a datagram; success is any reply.
    Udp,
    /// No checks: the backend's health is "disabled".
    #[default]
    None,
}

/// What a down backend becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// Out of the ring: its flows re-hash to the others.
    #[default]
    Remove,
    /// Weight 0: no new flows, established ones stay.
    Drain,
}

/// One VIP's check, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// `None`: the VIP's own port.
    pub port: Option<u16>,
    pub path: String,
    /// Inclusive range of good HTTP statuses.
    pub expect_status: (u16, u16),
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub on_down: OnDown,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest interval accepted: probes faster than this only load backends.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest interval or timeout accepted (an hour): longer is a typo.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Largest rise/fall accepted.
pub const MAX_RISE_FALL: u32 = 100;

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::None,
            port: None,
            path: "/".into(),
            expect_status: (200, 299),
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: 2,
            fall: 3,
            on_down: OnDown::Remove,
        }
    }
}

impl HealthCheck {
    /// The port probes of `vip` go to; `None` when there is none (a port-0
    /// VIP without `port`, refused by validation).
    pub fn probe_port(&self, vip: &VipId) -> Option<u16> {
        self.port.or((vip.port != 0).then_some(vip.port))
    }

    /// The kind's name, as the config writes it (a metrics label).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Udp => "udp",
            CheckKind::None => "none",
        }
    }

    pub fn enabled(&self) -> bool {
        self.kind != CheckKind::None
    }

    /// Checks that only make sense beside the VIP: the port (port-0 VIPs
    /// need one) and the kind against the protocol.
    pub fn check_for(&self, vip: &VipId) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            return Ok(());
        }
        if self.probe_port(vip).is_none() {
            return Err(("port", format!("VIP {vip} serves every port: its health check needs a port")));
        }
        match (self.kind, vip.proto) {
            (CheckKind::Udp, Proto::Tcp) => Err(("kind", format!("a UDP check cannot probe TCP VIP {vip}"))),
            (CheckKind::Tcp | CheckKind::Http, Proto::Udp) => {
                Err(("kind", format!("a TCP or HTTP check cannot probe UDP VIP {vip}")))
            }
            _ => Ok(()),
        }
    }
}

/// The check's TOML/JSON shape: every field optional (falling back to the
/// `[health]` defaults), durations written like "2s" or "500ms".
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: Option<CheckKind>,
    pub port: Option<u32>,
    pub path: Option<String>,
    /// `[lowest, highest]` good status, inclusive.
    pub expect_status: Option<Vec<u32>>,
    /// e.g. "2s", "500ms".
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub on_down: Option<OnDown>,
}

impl From<&HealthCheck> for RawHealthCheck {
    fn from(h: &HealthCheck) -> Self {
        RawHealthCheck {
            kind: Some(h.kind),
            port: h.port.map(u32::from),
            path: Some(h.path.clone()),
            expect_status: Some(vec![h.expect_status.0.into(), h.expect_status.1.into()]),
            interval: Some(humantime::format_duration(h.interval).to_string()),
            timeout: Some(humantime::format_duration(h.timeout).to_string()),
            rise: Some(h.rise),
            fall: Some(h.fall),
            on_down: Some(h.on_down),
        }
    }
}

/// One problem of a raw check: the field it is about and what is wrong.
pub type FieldProblem = (&'static str, String);

fn duration(value: &Option<String>, field: &'static str, default: Duration) -> Result<Duration, FieldProblem> {
    let Some(text) = value else { return Ok(default) };
    let d = humantime::parse_duration(text)
        .map_err(|e| (field, format!("'{text}' is not a duration like \"2s\" or \"500ms\": {e}")))?;
    if d > MAX_INTERVAL {
        return Err((field, format!("{text} is longer than an hour")));
    }
    Ok(d)
}

impl RawHealthCheck {
    /// Validates against `defaults`; every problem found, each with its
    /// field.
    pub fn resolve(&self, defaults: &HealthCheck) -> Result<HealthCheck, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut h = defaults.clone();
        if let Some(k) = self.kind {
            h.kind = k;
        }
        if let Some(p) = self.port {
            match u16::try_from(p) {
                Ok(0) | Err(_) => problems.push(("port", format!("{p} is not a port (1..=65535)"))),
                Ok(p) => h.port = Some(p),
            }
        }
        if let Some(path) = &self.path {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(("path", format!("'{path}' is not an absolute URL path without spaces")));
            } else {
                h.path = path.clone();
            }
        }
        if let Some(s) = &self.expect_status {
            match s.as_slice() {
                [lo, hi] if (100..=599).contains(lo) && (100..=599).contains(hi) && lo <= hi => {
                    h.expect_status = (*lo as u16, *hi as u16)
                }
                _ => problems.push(("expect_status", format!("{s:?} is not [lowest, highest] within 100..=599"))),
            }
        }
        match duration(&self.interval, "interval", h.interval) {
            Ok(d) if d < MIN_INTERVAL => problems.push(("interval", format!("{d:?} is shorter than 100ms"))),
            Ok(d) => h.interval = d,
            Err(p) => problems.push(p),
        }
        match duration(&self.timeout, "timeout", h.timeout) {
            Ok(d) if d.is_zero() => problems.push(("timeout", "is zero".into())),
            Ok(d) => h.timeout = d,
            Err(p) => problems.push(p),
        }
        if h.timeout > h.interval {
            problems.push(("timeout", format!("{:?} is longer than the interval {:?}", h.timeout, h.interval)));
        }
        for (field, value, target) in [("rise", self.rise, &mut h.rise), ("fall", self.fall, &mut h.fall)] {
            match value {
                Some(v) if v == 0 || v > MAX_RISE_FALL => {
                    problems.push((field, format!("{v} is not within 1..={MAX_RISE_FALL}")))
                }
                Some(v) => *target = v,
                None => {}
            }
        }
        if let Some(o) = self.on_down {
            h.on_down = o;
        }
        if problems.is_empty() {
            Ok(h)
        } else {
            Err(problems)
        }
    }
}

/// Reports a raw check's problems under `key` (e.g. `health` or
/// `vip[2].health`), at the table's position.
pub(super) fn validate_check(
    c: &mut Checker<'_>,
    raw: &Spanned<RawHealthCheck>,
    key: &str,
    defaults: &HealthCheck,
) -> Option<HealthCheck> {
    match raw.get_ref().resolve(defaults) {
        Ok(h) => Some(h),
        Err(problems) => {
            for (field, message) in problems {
                c.add(&raw.span(), format!("{key}.{field}"), message);
            }
            None
        }
    }
}

/// `[health]` and every `[vip.health]`, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthSettings {
    /// `[health]`: what a VIP without its own table gets.
    pub defaults: HealthCheck,
    /// The VIPs with a `[vip.health]` table of their own.
    pub vips: std::collections::BTreeMap<VipId, HealthCheck>,
}

impl HealthSettings {
    /// The check `vip` gets from the config file.
    pub fn for_vip(&self, vip: &VipId) -> &HealthCheck {
        self.vips.get(vip).unwrap_or(&self.defaults)
    }
}

/// The raw shape's pieces validation needs: the defaults table and, per
/// `[[vip]]`, its identity as written and its health table.
pub(super) fn validate_health(
    c: &mut Checker<'_>,
    defaults: Option<&Spanned<RawHealthCheck>>,
    vips: &[(Option<VipId>, Option<&Spanned<RawHealthCheck>>)],
) -> Option<HealthSettings> {
    let defaults = match defaults {
        None => HealthCheck::default(),
        Some(raw) => validate_check(c, raw, "health", &HealthCheck::default())?,
    };
    let mut out = HealthSettings { defaults: defaults.clone(), vips: Default::default() };
    for (i, (id, raw)) in vips.iter().enumerate() {
        let Some(id) = id else { continue };
        let key = format!("vip[{i}].health");
        let check = match raw {
            Some(raw) => match validate_check(c, raw, &key, &defaults) {
                Some(h) => h,
                None => continue,
            },
            None => defaults.clone(),
        };
        if let Err((field, message)) = check.check_for(id) {
            // A `[health]` default that cannot fit this VIP (a port-0 VIP,
            // another protocol) is reported at the VIP's table when it has
            // one, else at the defaults.
            let span = raw.map(|r| r.span()).unwrap_or(0..0);
            let key = if raw.is_some() { key } else { format!("vip[{i}] (from [health])") };
            c.add(&span, format!("{key}.{field}"), message);
            continue;
        }
        if raw.is_some() {
            out.vips.insert(*id, check);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(port: u16, proto: Proto) -> VipId {
        VipId { addr: "10.0.0.1".parse().unwrap(), port, proto }
    }

    #[test]
    fn fields_fall_back_to_the_defaults_and_durations_parse() {
        let raw = RawHealthCheck {
            kind: Some(CheckKind::Http),
            interval: Some("500ms".into()),
            timeout: Some("200ms".into()),
            ..Default::default()
        };
        let h = raw.resolve(&HealthCheck::default()).unwrap();
        assert_eq!(h.kind, CheckKind::Http);
        assert_eq!(h.interval, Duration::from_millis(500));
        assert_eq!(h.timeout, Duration::from_millis(200));
        assert_eq!((h.rise, h.fall, h.expect_status), (2, 3, (200, 299)));
    }

    #[test]
    fn every_bad_field_is_named() {
        let raw = RawHealthCheck {
            port: Some(70000),
            path: Some("healthz".into()),
            expect_status: Some(vec![299, 200]),
            interval: Some("soon".into()),
            rise: Some(0),
            ..Default::default()
        };
        let fields: Vec<_> = raw.resolve(&HealthCheck::default()).unwrap_err().into_iter().map(|p| p.0).collect();
        assert_eq!(fields, ["port", "path", "expect_status", "interval", "rise"]);
    }

    #[test]
    fn a_timeout_longer_than_the_interval_is_refused() {
        let raw = RawHealthCheck { interval: Some("1s".into()), timeout: Some("2s".into()), ..Default::default() };
        assert_eq!(raw.resolve(&HealthCheck::default()).unwrap_err()[0].0, "timeout");
    }

    #[test]
    fn port_zero_vips_need_a_port_and_kinds_match_the_protocol() {
        let tcp = HealthCheck { kind: CheckKind::Tcp, ..Default::default() };
        assert_eq!(tcp.check_for(&vip(0, Proto::Tcp)).unwrap_err().0, "port");
        assert!(HealthCheck { port: Some(80), ..tcp.clone() }.check_for(&vip(0, Proto::Tcp)).is_ok());
        assert_eq!(tcp.check_for(&vip(53, Proto::Udp)).unwrap_err().0, "kind");
        assert!(HealthCheck::default().check_for(&vip(0, Proto::Udp)).is_ok());
    }

    const BASE: &str =
        "interfaces = [\"eth0\"]\n[encap]\nsource_v4 = \"10.255.0.0/16\"\nsource_v6 = \"fc00:ffff::/96\"\n";

    fn problems(text: &str) -> Vec<(usize, String, String)> {
        match crate::config::Config::parse(text) {
            Ok(_) => vec![],
            Err(crate::config::ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| (p.line, p.key, p.message)).collect()
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn the_file_gives_defaults_and_per_vip_checks() {
        let text = format!(
            "{BASE}[health]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
             [[vip]]\naddress = \"10.0.0.10\"\nport = 80\nprotocol = \"tcp\"\n\
             [vip.health]\nkind = \"http\"\npath = \"/healthz\"\non_down = \"drain\"\n\
             [[vip]]\naddress = \"10.0.0.11\"\nport = 81\nprotocol = \"tcp\"\n"
        );
        let c = crate::config::Config::parse(&text).unwrap();
        let http = c.health.for_vip(&VipId { addr: "10.0.0.10".parse().unwrap(), port: 80, proto: Proto::Tcp });
        assert_eq!((http.kind, http.on_down, http.path.as_str()), (CheckKind::Http, OnDown::Drain, "/healthz"));
        assert_eq!(http.interval, Duration::from_secs(1), "unset fields come from [health]");
        let tcp = c.health.for_vip(&VipId { addr: "10.0.0.11".parse().unwrap(), port: 81, proto: Proto::Tcp });
        assert_eq!(tcp.kind, CheckKind::Tcp);
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let text = format!(
            "{BASE}[[vip]]\naddress = \"10.0.0.10\"\nport = 0\nprotocol = \"tcp\"\n\
             [vip.health]\nkind = \"tcp\"\nrise = 0\n"
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        // Located at the table (line 9, `[vip.health]`): the same shape is
        // the API's JSON body, which carries no spans.
        assert_eq!((p[0].0, p[0].1.as_str()), (9, "vip[0].health.rise"), "{p:?}");
        // Fixed, the port-0 VIP still needs a port.
        let p = problems(&text.replace("rise = 0", "rise = 1"));
        assert_eq!(p[0].1, "vip[0].health.port", "{p:?}");
        assert!(problems(&text.replace("rise = 0", "port = 80")).is_empty());
    }
}
