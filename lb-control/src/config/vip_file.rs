//! A VIP file: the config's `[[vip]]` tables on their own (with their
//! `[vip.health]`), what `lbctl vip export` writes and `lbctl vip apply -f`
//! reads. Rendered from a [`VipSet`] and the VIPs' own checks so that it
//! parses back (here and inside a config file) to the same; parsed with the
//! config's own checks, so errors name the file, line, column and key.
//! Limits, and what a check means beside the daemon's `[health]` defaults
//! (fields left out, timeout against interval, the check against its VIP),
//! are the daemon's to check.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    health::{check_fields, HealthCheck, RawHealthCheck},
    problem::Checker,
    raw::RawVip,
    validate, ConfigError,
};
use crate::model::{VipFlag, VipId, VipSet, VipSpec};

/// A VIP file's content: the VIPs, and the `[vip.health]` tables as
/// written (fields left out take the daemon's `[health]` defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipFile {
    pub vips: VipSet,
    pub health: BTreeMap<VipId, RawHealthCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVipFile {
    #[serde(default, rename = "vip")]
    vips: Vec<Spanned<RawVip>>,
}

/// Parses a VIP file (`[[vip]]` tables only). `file` names it in errors.
pub fn parse_vip_file(text: &str, file: &str) -> Result<VipFile, ConfigError> {
    let mut c = Checker::new(text, false);
    let parsed = match toml::from_str::<RawVipFile>(text) {
        Ok(raw) => {
            let vips = validate::vips(&mut c, &raw.vips, None);
            let mut health = BTreeMap::new();
            for (i, (id, table)) in validate::vip_health_tables(&raw.vips).into_iter().enumerate() {
                let (Some(id), Some(table)) = (id, table) else { continue };
                check_fields(&mut c, table, &format!("vip[{i}].health"));
                health.insert(id, table.get_ref().clone());
            }
            Some(VipFile { vips, health })
        }
        Err(e) => {
            c.add_toml_error(&e);
            None
        }
    };
    match parsed {
        Some(parsed) if c.problems.is_empty() => Ok(parsed),
        _ => Err(ConfigError::Invalid { file: file.to_string(), problems: c.problems }),
    }
}

fn flag_name(f: VipFlag) -> String {
    serde_json::to_value(f).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Renders a VIP set as `[[vip]]` tables, VIPs and backends in order, each
/// VIP's own check in `health` as its `[vip.health]` table.
pub fn render_vip_file(vips: &VipSet, health: &BTreeMap<VipId, RawHealthCheck>) -> String {
    let mut out = String::from("# VIPs in the config's [[vip]] syntax (lbctl vip export).\n");
    for (id, spec) in vips {
        // Every value is an address, a number or a fixed name: no quoting
        // beyond the plain double quotes is needed.
        let _ = write!(out, "\n[[vip]]\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\n", id.addr, id.port, id.proto);
        if !spec.flags.is_empty() {
            let flags: Vec<String> = spec.flags.iter().map(|f| format!("\"{}\"", flag_name(*f))).collect();
            let _ = writeln!(out, "flags = [{}]", flags.join(", "));
        }
        if let Some(check) = health.get(id) {
            // toml quotes the path (any printable ASCII) as it must be.
            let table = toml::to_string(check).expect("a health check renders as TOML");
            let _ = write!(out, "\n[vip.health]\n{table}");
        }
        for (addr, b) in &spec.backends {
            let _ = write!(out, "\n[[vip.backend]]\naddress = \"{addr}\"\nweight = {}\n", b.weight);
        }
    }
    out
}

/// How one VIP's backends change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendChanges {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
    pub reweighted: Vec<WeightChange>,
}

/// A backend whose weight changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightChange {
    pub address: IpAddr,
    pub before: u32,
    pub after: u32,
}

/// A VIP's flags, when they change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagChange {
    pub before: Vec<VipFlag>,
    pub after: Vec<VipFlag>,
}

/// A VIP's health check, when it changes (every field given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthChange {
    pub before: RawHealthCheck,
    pub after: RawHealthCheck,
}

/// One VIP present before and after, but different.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipChange {
    pub vip: VipId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<FlagChange>,
    pub backends: BackendChanges,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthChange>,
}

/// What replacing one VIP set by another changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSetDiff {
    pub added: Vec<VipId>,
    pub removed: Vec<VipId>,
    pub changed: Vec<VipChange>,
}

/// Each VIP's health check in force.
pub type VipChecks = BTreeMap<VipId, HealthCheck>;

impl VipSetDiff {
    /// What replacing `before` (with its checks) by `after` changes.
    pub fn between(before: &VipSet, after: &VipSet, before_checks: &VipChecks, after_checks: &VipChecks) -> Self {
        let mut diff = VipSetDiff::default();
        for (id, new) in after {
            let Some(old) = before.get(id) else {
                diff.added.push(*id);
                continue;
            };
            let health = match (before_checks.get(id), after_checks.get(id)) {
                (Some(b), Some(a)) if a != b => {
                    Some(HealthChange { before: RawHealthCheck::from(b), after: RawHealthCheck::from(a) })
                }
                _ => None,
            };
            if old != new || health.is_some() {
                diff.changed.push(VipChange { health, ..vip_change(id, old, new) });
            }
        }
        diff.removed = before.keys().filter(|id| !after.contains_key(id)).copied().collect();
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

fn vip_change(id: &VipId, old: &VipSpec, new: &VipSpec) -> VipChange {
    let weights = |s: &VipSpec| -> BTreeMap<IpAddr, u32> { s.backends.iter().map(|(a, b)| (*a, b.weight)).collect() };
    let (before, after) = (weights(old), weights(new));
    let backends = BackendChanges {
        added: after.keys().filter(|a| !before.contains_key(a)).copied().collect(),
        removed: before.keys().filter(|a| !after.contains_key(a)).copied().collect(),
        reweighted: after
            .iter()
            .filter_map(|(a, w)| {
                before.get(a).filter(|old| *old != w).map(|old| WeightChange { address: *a, before: *old, after: *w })
            })
            .collect(),
    };
    let flags = (old.flags != new.flags).then(|| FlagChange { before: old.flags.clone(), after: new.flags.clone() });
    VipChange { vip: *id, flags, backends, health: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, model::Backend};

    fn sample() -> VipSet {
        let mut vips = VipSet::new();
        let backends = |list: &[(&str, u32)]| -> BTreeMap<IpAddr, Backend> {
            list.iter().map(|(a, w)| (a.parse().unwrap(), Backend { weight: *w })).collect()
        };
        vips.insert(
            "tcp:192.0.2.10:80".parse().unwrap(),
            VipSpec {
                flags: vec![VipFlag::HashNoSrcPort, VipFlag::NoConnTable],
                backends: backends(&[("10.1.0.1", 1), ("10.1.0.2", 0), ("10.1.0.3", 10000)]),
            },
        );
        vips.insert(
            "udp:[2001:db8::53]:0".parse().unwrap(),
            VipSpec { flags: vec![], backends: backends(&[("2001:db8:1::1", 7)]) },
        );
        vips.insert("tcp:192.0.2.11:443".parse().unwrap(), VipSpec::default());
        vips
    }

    /// An HTTP check with every field, a path that needs quoting.
    fn sample_health() -> BTreeMap<VipId, RawHealthCheck> {
        let check = HealthCheck {
            kind: crate::config::health::CheckKind::Http,
            port: Some(8080),
            path: "/health\"z\\".into(),
            expect_status: (200, 204),
            interval: std::time::Duration::from_millis(1500),
            timeout: std::time::Duration::from_millis(300),
            rise: 1,
            fall: 4,
            on_down: crate::config::health::OnDown::Drain,
        };
        [("tcp:192.0.2.10:80".parse().unwrap(), RawHealthCheck::from(&check))].into()
    }

    #[test]
    fn an_exported_set_parses_back_to_itself() {
        let vips = sample();
        let health = sample_health();
        let text = render_vip_file(&vips, &health);
        assert_eq!(
            parse_vip_file(&text, "vips.toml").unwrap(),
            VipFile { vips: vips.clone(), health: health.clone() },
            "{text}"
        );
        // The same text is valid inside a config file, checks and all.
        let config = format!("interfaces = [\"eth0\"]\n{text}");
        let parsed = Config::parse(&config).unwrap();
        assert_eq!(parsed.vips, vips, "{config}");
        let web: VipId = "tcp:192.0.2.10:80".parse().unwrap();
        assert_eq!(RawHealthCheck::from(parsed.health.for_vip(&web)), health[&web]);
        assert_eq!(parsed.health.vips.len(), 1);
        assert_eq!(
            parse_vip_file(&render_vip_file(&VipSet::new(), &BTreeMap::new()), "empty").unwrap(),
            VipFile::default()
        );
    }

    #[test]
    fn a_bad_health_table_is_refused_with_its_place_and_the_daemon_judges_the_rest() {
        let head = "[[vip]]\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\n\n[vip.health]\n";
        let e = parse_vip_file(&format!("{head}kind = \"http\"\nrise = 0\n"), "vips.toml").unwrap_err().to_string();
        assert!(e.contains("vips.toml: line 6") && e.contains("vip[0].health.rise"), "{e}");
        // A timeout beside the daemon's default interval, unknown here: kept as written.
        let f = parse_vip_file(&format!("{head}timeout = \"3s\"\n"), "vips.toml").unwrap();
        assert_eq!(f.health.values().next().unwrap().timeout.as_deref(), Some("3s"));
    }

    #[test]
    fn a_bad_vip_file_is_refused_with_its_place() {
        let text = "[[vip]]\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\n\n\
                    [[vip.backend]]\naddress = \"10.1.0.300\"\n";
        let e = parse_vip_file(text, "vips.toml").unwrap_err().to_string();
        assert!(e.contains("vips.toml: line 7") && e.contains("vip[0].backend[0].address"), "{e}");
        let e = parse_vip_file("interfaces = [\"eth0\"]\n", "vips.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `interfaces`"), "{e}");
    }

    #[test]
    fn the_diff_names_every_change() {
        let before = sample();
        let mut after = sample();
        let web: VipId = "tcp:192.0.2.10:80".parse().unwrap();
        let spec = after.get_mut(&web).unwrap();
        spec.flags = vec![VipFlag::HashNoSrcPort];
        spec.backends.remove(&"10.1.0.1".parse().unwrap());
        spec.backends.insert("10.1.0.4".parse().unwrap(), Backend { weight: 1 });
        spec.backends.get_mut(&"10.1.0.2".parse().unwrap()).unwrap().weight = 5;
        after.remove(&"tcp:192.0.2.11:443".parse().unwrap());
        after.insert("tcp:192.0.2.12:80".parse().unwrap(), VipSpec::default());
        let none = VipChecks::new();
        let d = VipSetDiff::between(&before, &after, &none, &none);
        assert_eq!(d.added, ["tcp:192.0.2.12:80".parse().unwrap()]);
        assert_eq!(d.removed, ["tcp:192.0.2.11:443".parse().unwrap()]);
        assert_eq!(d.changed.len(), 1);
        let c = &d.changed[0];
        assert_eq!(c.vip, web);
        let flags = FlagChange {
            before: vec![VipFlag::HashNoSrcPort, VipFlag::NoConnTable],
            after: vec![VipFlag::HashNoSrcPort],
        };
        assert_eq!(c.flags, Some(flags));
        assert_eq!(c.backends.added, ["10.1.0.4".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.backends.removed, ["10.1.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.backends.reweighted, [WeightChange { address: "10.1.0.2".parse().unwrap(), before: 0, after: 5 }]);
        assert!(VipSetDiff::between(&before, &before, &none, &none).is_empty());
        // A check that changes makes its VIP changed, backends or not.
        let udp: VipId = "udp:[2001:db8::53]:0".parse().unwrap();
        let old: VipChecks = [(udp, HealthCheck::default())].into();
        let new_check =
            HealthCheck { kind: crate::config::health::CheckKind::Udp, port: Some(53), ..Default::default() };
        let new: VipChecks = [(udp, new_check.clone())].into();
        let d = VipSetDiff::between(&before, &before, &old, &new);
        assert_eq!(d.changed.len(), 1);
        let h = d.changed[0].health.as_ref().unwrap();
        assert_eq!((h.before.kind, h.after.kind), (Some(crate::config::health::CheckKind::None), Some(new_check.kind)));
        assert!(d.changed[0].backends == BackendChanges::default() && d.changed[0].flags.is_none());
    }
}
