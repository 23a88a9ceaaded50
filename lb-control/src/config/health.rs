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

/// One VIP's check, validated. Serialised (the state file) in the API's
/// shape with every field written, and read back through the same checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RawHealthCheck", try_from = "RawHealthCheck")]
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
/// Durations are written `<1..=9999>ms` or `<1..=9999>s` (the API's
/// schema states the same pattern).
pub const DURATION_PATTERN: &str = "^[1-9][0-9]{0,3}(ms|s)$";
/// An interval: the same, at least 100 ms.
pub const INTERVAL_PATTERN: &str = "^([1-9][0-9]{2,3}ms|[1-9][0-9]{0,3}s)$";
/// An HTTP path: absolute, printable ASCII without spaces.
pub const PATH_PATTERN: &str = "^/[!-~]*$";
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
    /// (The API refuses these with `health_check_mismatch`: no schema can
    /// state them.)
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
/// `[health]` defaults), durations written like "2s" or "500ms". The
/// schema states every rule about one field; what it cannot state (the
/// status range's order, timeout ≤ interval, the check against the VIP)
/// is refused with the code `health_check_mismatch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: Option<CheckKind>,
    /// Default: the VIP's port (required for port-0 VIPs).
    #[schema(minimum = 1, maximum = 65535)]
    #[serde(default, deserialize_with = "integral_u32")]
    pub port: Option<u32>,
    /// HTTP only.
    #[schema(pattern = "^/[!-~]*$")]
    pub path: Option<String>,
    /// `[lowest, highest]` good status, inclusive.
    #[schema(schema_with = expect_status_schema)]
    #[serde(default, deserialize_with = "integral_u32s")]
    pub expect_status: Option<Vec<u32>>,
    /// e.g. "2s", "500ms"; at least 100 ms.
    #[schema(pattern = "^([1-9][0-9]{2,3}ms|[1-9][0-9]{0,3}s)$")]
    pub interval: Option<String>,
    /// e.g. "1s", "300ms"; at most the interval.
    #[schema(pattern = "^[1-9][0-9]{0,3}(ms|s)$")]
    pub timeout: Option<String>,
    /// Consecutive successes to mark up.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "integral_u32")]
    pub rise: Option<u32>,
    /// Consecutive failures to mark down.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "integral_u32")]
    pub fall: Option<u32>,
    pub on_down: Option<OnDown>,
}

/// A JSON number that is a whole u32, written `3` or `3.0` (JSON Schema's
/// "integer" takes both).
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Whole(u64),
    Float(f64),
}

impl Number {
    fn into_u32<E: serde::de::Error>(self) -> Result<u32, E> {
        let whole = match self {
            Number::Whole(n) => Some(n),
            Number::Float(f) if f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&f) => Some(f as u64),
            Number::Float(_) => None,
        };
        whole.and_then(|n| u32::try_from(n).ok()).ok_or_else(|| E::custom("expected a whole number within u32"))
    }
}

fn integral_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<Number>::deserialize(d)?.map(Number::into_u32).transpose()
}

fn integral_u32s<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    Option::<Vec<Number>>::deserialize(d)?.map(|v| v.into_iter().map(Number::into_u32).collect()).transpose()
}

fn expect_status_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    let status = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(100)).maximum(Some(599));
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(status)
        .min_items(Some(2))
        .max_items(Some(2))
        .build()
}

impl From<&HealthCheck> for RawHealthCheck {
    fn from(h: &HealthCheck) -> Self {
        RawHealthCheck {
            kind: Some(h.kind),
            port: h.port.map(u32::from),
            path: Some(h.path.clone()),
            expect_status: Some(vec![h.expect_status.0.into(), h.expect_status.1.into()]),
            interval: Some(format_duration(h.interval)),
            timeout: Some(format_duration(h.timeout)),
            rise: Some(h.rise),
            fall: Some(h.fall),
            on_down: Some(h.on_down),
        }
    }
}

impl From<HealthCheck> for RawHealthCheck {
    fn from(h: HealthCheck) -> Self {
        RawHealthCheck::from(&h)
    }
}

impl TryFrom<RawHealthCheck> for HealthCheck {
    type Error = String;

    /// A check written whole (the state file): fields left out take the
    /// built-in defaults.
    fn try_from(raw: RawHealthCheck) -> Result<Self, String> {
        raw.resolve(&HealthCheck::default()).map_err(|problems| {
            problems.iter().map(|(field, m)| format!("{field}: {m}")).collect::<Vec<_>>().join("; ")
        })
    }
}

/// A duration as [`DURATION_PATTERN`] writes it: whole seconds as "2s",
/// else milliseconds.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// One problem of a raw check: the field it is about and what is wrong.
pub type FieldProblem = (&'static str, String);

/// Fields whose problem involves another field or the VIP: the API refuses
/// those with `health_check_mismatch`, every other with `bad_request`.
pub const CROSS_FIELD: [&str; 3] = ["expect_status order", "timeout vs interval", "vip"];

/// `<1..=9999>ms` or `<1..=9999>s`, as [`DURATION_PATTERN`] says.
fn duration(value: &Option<String>, field: &'static str, default: Duration) -> Result<Duration, FieldProblem> {
    let Some(text) = value else { return Ok(default) };
    let bad = || (field, format!("'{text}' is not a duration like \"2s\" or \"500ms\" (1 to 9999 ms or s)"));
    let (digits, unit) = match text.strip_suffix("ms") {
        Some(d) => (d, Duration::from_millis(1)),
        None => (text.strip_suffix('s').ok_or_else(bad)?, Duration::from_secs(1)),
    };
    let well_formed = !digits.is_empty() && digits.len() <= 4 && !digits.starts_with('0');
    let n: u32 = digits.parse().ok().filter(|_| well_formed).ok_or_else(bad)?;
    Ok(unit * n)
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
            if !path.starts_with('/') || !path.chars().all(|c| c.is_ascii_graphic()) {
                problems.push(("path", format!("'{path}' is not an absolute URL path of printable ASCII")));
            } else {
                h.path = path.clone();
            }
        }
        if let Some(s) = &self.expect_status {
            match s.as_slice() {
                [lo, hi] if (100..=599).contains(lo) && (100..=599).contains(hi) => {
                    if lo <= hi {
                        h.expect_status = (*lo as u16, *hi as u16)
                    } else {
                        problems.push(("expect_status order", format!("{s:?}: the lowest status comes first")))
                    }
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
            Ok(d) => h.timeout = d,
            Err(p) => problems.push(p),
        }
        if h.timeout > h.interval {
            problems
                .push(("timeout vs interval", format!("{:?} is longer than the interval {:?}", h.timeout, h.interval)));
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

/// Reports the problems of a `[vip.health]` table in a VIP file that do
/// not depend on the daemon's `[health]` defaults (a bad port, path,
/// duration, status, rise or fall), under `key`. What involves another
/// field or the defaults (timeout against interval, the check against its
/// VIP) is the daemon's to judge, with the defaults it runs with.
pub(super) fn check_fields(c: &mut Checker<'_>, raw: &Spanned<RawHealthCheck>, key: &str) {
    if let Err(problems) = raw.get_ref().resolve(&HealthCheck::default()) {
        for (field, message) in problems.into_iter().filter(|(f, _)| *f != "timeout vs interval") {
            c.add(&raw.span(), format!("{key}.{field}"), message);
        }
    }
}

/// `[health]` and every `[vip.health]`, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
            expect_status: Some(vec![99, 200]),
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
        assert_eq!(raw.resolve(&HealthCheck::default()).unwrap_err()[0].0, "timeout vs interval");
        for bad in ["1m", "0s", "10000ms", "05s", "1.5s", "s", "99ms"] {
            let raw = RawHealthCheck { interval: Some(bad.into()), ..Default::default() };
            assert!(raw.resolve(&HealthCheck::default()).is_err(), "{bad}");
        }
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

    /// The schema's patterns and the parser agree: what the pattern takes
    /// parses (and round-trips), what it refuses does not.
    #[test]
    fn the_schema_patterns_are_the_parsers_rules() {
        let doc: serde_json::Value = serde_json::from_str(crate::api::openapi_json()).unwrap();
        let props = &doc["components"]["schemas"]["RawHealthCheck"]["properties"];
        assert_eq!(props["interval"]["pattern"], INTERVAL_PATTERN);
        assert_eq!(props["timeout"]["pattern"], DURATION_PATTERN);
        assert_eq!(props["path"]["pattern"], PATH_PATTERN);
        let interval = regex::Regex::new(INTERVAL_PATTERN).unwrap();
        let any = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in ["1ms", "99ms", "100ms", "9999ms", "10000ms", "1s", "9999s", "0s", "01s", "1m", "1.5s", "2 s"] {
            let raw = RawHealthCheck { interval: Some(text.into()), timeout: Some("1ms".into()), ..Default::default() };
            assert_eq!(raw.resolve(&HealthCheck::default()).is_ok(), interval.is_match(text), "interval {text}");
            let parsed = duration(&Some(text.into()), "timeout", Duration::ZERO);
            assert_eq!(parsed.is_ok(), any.is_match(text), "duration {text}");
            if let Ok(d) = parsed {
                assert!(any.is_match(&format_duration(d)), "{text} → {}", format_duration(d));
            }
        }
    }
}
