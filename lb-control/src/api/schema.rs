//! The OpenAPI schemas of the API's bodies and path parameters, as strict
//! as the handlers: addresses as patterns that match exactly the unicast
//! addresses the API takes (in the forms the fuzzer should generate), weights
//! in range, the VIP body split by family, the PATCH body one of two shapes.
//! A unit test checks the patterns against the parsers and address checks.

use std::sync::LazyLock;

use serde_json::{json, Value};
use utoipa::{
    openapi::{schema::Schema, OneOfBuilder, RefOr},
    PartialSchema,
};

use super::body::{Applied, BackendBody, BackendPatch, VipBody};
use crate::{
    controller::StatsSnapshot,
    model::{VipFlag, VipId, MAX_WEIGHT},
};

/// A first IPv4 octet of a unicast host: 1-126, 128-223 (not 0, loopback,
/// multicast, reserved or broadcast).
const V4_FIRST: &str = "(12[0-6]|12[89]|1[01][0-9]|1[3-9][0-9]|2[01][0-9]|22[0-3]|[1-9][0-9]|[1-9])";
const V4_OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])";
const HEXTET: &str = "[0-9a-fA-F]{1,4}";
/// A first IPv6 group that is neither 0 (`::`, `::1`, IPv4-mapped) nor
/// multicast (`ffXX`).
const V6_FIRST: &str = "([1-9a-eA-E][0-9a-fA-F]{0,3}|[fF]([0-9a-eA-E][0-9a-fA-F]{0,2}|[fF][0-9a-fA-F]?)?)";
const PORT: &str = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)";

pub fn ipv4_unicast() -> String {
    format!("{V4_FIRST}(\\.{V4_OCTET}){{3}}")
}

/// Unicast IPv6 with a non-zero first group: eight groups, or fewer around
/// one `::`.
pub fn ipv6_unicast() -> String {
    let mut forms = vec![format!("(:{HEXTET}){{7}}")];
    for before in 0..=6 {
        let after = 6 - before;
        let tail = if after == 0 { String::new() } else { format!("({HEXTET}(:{HEXTET}){{0,{}}})?", after - 1) };
        forms.push(format!("(:{HEXTET}){{{before}}}::{tail}"));
    }
    format!("{V6_FIRST}({})", forms.join("|"))
}

pub static BACKEND_V6_PATTERN: LazyLock<String> = LazyLock::new(|| format!("^{}$", ipv6_unicast()));
pub static BACKEND_PATTERN: LazyLock<String> = LazyLock::new(|| format!("^({}|{})$", ipv4_unicast(), ipv6_unicast()));
pub static VIP_V4_PATTERN: LazyLock<String> = LazyLock::new(|| format!("^(tcp|udp):{}:{PORT}$", ipv4_unicast()));
pub static VIP_V6_PATTERN: LazyLock<String> = LazyLock::new(|| format!("^(tcp|udp):\\[{}\\]:{PORT}$", ipv6_unicast()));
pub static VIP_PATTERN: LazyLock<String> =
    LazyLock::new(|| format!("^(tcp|udp):({}|\\[{}\\]):{PORT}$", ipv4_unicast(), ipv6_unicast()));

/// A schema from its JSON form. Only for schemas without `oneOf`/`anyOf`
/// at the top (utoipa's untagged `Schema` would read those as objects);
/// a unit test checks each one round-trips.
pub(super) fn schema(v: Value) -> RefOr<Schema> {
    serde_json::from_value(v).expect("a valid schema literal")
}

fn one_of(items: impl IntoIterator<Item = RefOr<Schema>>) -> RefOr<Schema> {
    let mut b = OneOfBuilder::new();
    for i in items {
        b = b.item(i);
    }
    RefOr::T(Schema::OneOf(b.build()))
}

fn vip_string(pattern: &str) -> Value {
    json!({"type": "string", "pattern": pattern, "examples": ["tcp:192.0.2.10:80"],
        "description": "PROTOCOL:ADDRESS:PORT; IPv6 in brackets; port 0 means every port"})
}

fn backend_object(pattern: &str) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["address"],
        "properties": {
            "address": {"type": "string", "pattern": pattern, "description": "a unicast host, not the VIP's address"},
            "weight": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT, "default": 1,
                "description": "relative share of new flows; 0 drains"},
        },
    })
}

fn vip_object(vip_pattern: &str, backend_pattern: &str) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["vip"],
        "properties": {
            "vip": vip_string(vip_pattern),
            "flags": {"type": "array", "items": VipFlag::schema()},
            "backends": {"type": "array", "uniqueItems": true, "items": backend_object(backend_pattern),
                "description": "distinct addresses; an IPv6 VIP takes IPv6 backends only"},
            "health": {"$ref": "#/components/schemas/RawHealthCheck",
                "description": "the VIP's own check ([vip.health]); listed whole when the VIP has one; \
                    sent, fields left out take the [health] defaults, and leaving it out gives the VIP those defaults"},
        },
    })
}

macro_rules! named_schema {
    ($ty:ty, $name:literal, $body:expr) => {
        impl ::utoipa::PartialSchema for $ty {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                $body
            }
        }
        impl ::utoipa::ToSchema for $ty {
            fn name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed($name)
            }
        }
    };
}
pub(super) use named_schema;

named_schema!(VipId, "VipId", schema(vip_string(&VIP_PATTERN)));
named_schema!(BackendBody, "Backend", schema(backend_object(&BACKEND_PATTERN)));
named_schema!(
    VipBody,
    "Vip",
    one_of([
        schema(vip_object(&VIP_V4_PATTERN, &BACKEND_PATTERN)),
        schema(vip_object(&VIP_V6_PATTERN, &BACKEND_V6_PATTERN)),
    ])
);
named_schema!(
    BackendPatch,
    "BackendPatch",
    one_of([
        // `null` counts as absent, so the other field may be null.
        schema(json!({"type": "object", "additionalProperties": false, "required": ["weight"],
            "properties": {"weight": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT}, "drain": {"type": "null"}}})),
        schema(json!({"type": "object", "additionalProperties": false, "required": ["drain"],
            "properties": {"drain": {"type": "boolean", "enum": [true], "description": "weight 0: no new flows"},
                "weight": {"type": "null"}}})),
    ])
);

fn counter() -> Value {
    json!({"type": "object", "required": ["packets", "bytes"], "additionalProperties": false,
        "properties": {"packets": {"type": "integer", "minimum": 0}, "bytes": {"type": "integer", "minimum": 0}}})
}

/// The `applied` object: what a change did to the data plane.
pub(super) fn apply_report() -> Value {
    json!({
            "type": "object", "additionalProperties": false,
            "required": ["vips_added", "vips_removed", "tables_written", "flags_changed", "backends_added", "backends_removed"],
            "properties": {
                "vips_added": {"type": "integer", "minimum": 0},
                "vips_removed": {"type": "integer", "minimum": 0},
                "tables_written": {"type": "integer", "minimum": 0, "description": "VIPs whose Maglev table was rewritten"},
                "flags_changed": {"type": "integer", "minimum": 0},
                "backends_added": {"type": "integer", "minimum": 0},
                "backends_removed": {"type": "integer", "minimum": 0},
            },
    })
}

named_schema!(
    Applied,
    "Applied",
    schema(json!({
        "type": "object", "required": ["applied"], "additionalProperties": false,
        "properties": {"applied": apply_report()},
    }))
);
named_schema!(
    StatsSnapshot,
    "Stats",
    schema(json!({
        "type": "object", "required": ["global", "actions", "vips", "backends", "syn_flood_cpus"], "additionalProperties": false,
        "properties": {
            "global": {"type": "object", "additionalProperties": counter(), "description": "every reason counter by name"},
            "actions": {"type": "object", "additionalProperties": counter(), "description": "sums per action"},
            "vips": {"type": "object", "additionalProperties": counter(), "description": "by VIP (PROTOCOL:ADDRESS:PORT)"},
            "backends": {"type": "object", "additionalProperties": counter(), "description": "by backend address"},
            "syn_flood_cpus": {"type": "integer", "minimum": 0, "description": "CPUs in SYN-flood mode now"},
        },
    }))
);

/// A backend address as a path parameter.
pub struct BackendAddr;
named_schema!(BackendAddr, "BackendAddress", schema(json!({"type": "string", "pattern": *BACKEND_PATTERN})));

/// A reason counter's name, a query parameter of `GET /v1/capture`.
pub struct ReasonName;
named_schema!(
    ReasonName,
    "Reason",
    schema(json!({"type": "string", "enum": lb_common::Stat::ALL.iter().map(|s| s.name()).collect::<Vec<_>>()}))
);

/// A client as ADDRESS:PORT (IPv6 in brackets), a query parameter of
/// `GET /v1/flows`.
pub struct ClientAddr;
pub static CLIENT_PATTERN: LazyLock<String> =
    LazyLock::new(|| format!("^({}|\\[{}\\]):{PORT}$", ipv4_unicast(), ipv6_unicast()));
named_schema!(
    ClientAddr,
    "ClientAddress",
    schema(json!({"type": "string", "pattern": *CLIENT_PATTERN, "examples": ["198.51.100.7:51234"]}))
);

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use regex::Regex;

    use super::*;
    use crate::model::{check_backend_addr, check_vip_addr};

    #[test]
    fn schema_literals_round_trip() {
        for s in
            [VipId::schema(), BackendBody::schema(), Applied::schema(), StatsSnapshot::schema(), BackendAddr::schema()]
        {
            let v = serde_json::to_value(&s).unwrap();
            assert_eq!(serde_json::to_value(schema(v.clone())).unwrap(), v);
        }
        let patch = serde_json::to_value(BackendPatch::schema()).unwrap();
        assert_eq!(patch["oneOf"].as_array().map(Vec::len), Some(2), "{patch}");
        let vip = serde_json::to_value(VipBody::schema()).unwrap();
        assert_eq!(vip["oneOf"].as_array().map(Vec::len), Some(2), "{vip}");
    }

    /// The response schemas name exactly the fields the types serialise.
    #[test]
    fn response_schemas_match_the_types() {
        let fields = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let required = |v: &Value| {
            let mut k: Vec<String> =
                v["required"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().into()).collect();
            k.sort();
            k
        };
        let applied = serde_json::to_value(Applied::schema()).unwrap();
        let report = serde_json::to_value(Applied { applied: Default::default() }).unwrap();
        assert_eq!(required(&applied), fields(&report));
        assert_eq!(required(&applied["properties"]["applied"]), fields(&report["applied"]));
        let stats = serde_json::to_value(StatsSnapshot::schema()).unwrap();
        assert_eq!(required(&stats), fields(&serde_json::to_value(StatsSnapshot::default()).unwrap()));
        let counter_fields = fields(&serde_json::to_value(lb_common::Counter::default()).unwrap());
        assert_eq!(required(&stats["properties"]["global"]["additionalProperties"]), counter_fields);
    }

    #[test]
    fn address_patterns_accept_only_addresses_the_api_takes() {
        let backend = Regex::new(&BACKEND_PATTERN).unwrap();
        let vip = Regex::new(&VIP_PATTERN).unwrap();
        let any_vip: VipId = "tcp:[2001:db8::ffff]:1".parse().unwrap();
        let accepted = |s: &str| {
            s.parse::<IpAddr>().is_ok_and(|a| check_vip_addr(a).is_ok() && check_backend_addr(&any_vip, a).is_ok())
        };
        let matching = [
            "1.0.0.0",
            "10.1.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "192.0.2.10",
            "223.255.255.254",
            "9.9.9.9",
            "fc00::1",
            "2001:db8::10",
            "fe80::1",
            "f::",
            "ff::1",
            "ffe::1",
            "1:2:3:4:5:6:7:8",
            "1::",
            "1:2:3:4:5:6:7::",
            "1::2:3:4:5:6:7",
            "FC00::A",
            "2001:0db8:0000:0000:0000:0000:0000:0001",
        ];
        for s in matching {
            assert!(backend.is_match(s), "{s} does not match the backend pattern");
            assert!(accepted(s), "{s} matches but the API refuses it");
            let v = if s.contains(':') { format!("udp:[{s}]:53") } else { format!("tcp:{s}:80") };
            assert!(vip.is_match(&v), "{v}");
            assert!(v.parse::<VipId>().is_ok(), "{v}");
        }
        let not_matching = [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "239.1.1.1",
            "255.255.255.255",
            "240.0.0.1",
            "10.1.0.256",
            "01.2.3.4",
            "10.1.0",
            "::",
            "::1",
            "ff02::1",
            "ffff::1",
            "::ffff:10.1.0.1",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            "12345::1",
            "1:2:3:4:5:6:7:8::",
            "",
            "fc00::1%eth0",
        ];
        for s in not_matching {
            assert!(!backend.is_match(s), "{s} matches the backend pattern");
        }
        for v in ["tcp:10.0.0.1:65536", "tcp:10.0.0.1:080", "sctp:10.0.0.1:80", "tcp:fc00::1:80", "tcp:10.0.0.1"] {
            assert!(!vip.is_match(v), "{v}");
        }
        assert!(vip.is_match("tcp:10.0.0.1:65535") && vip.is_match("udp:10.0.0.1:0"));
    }
}
