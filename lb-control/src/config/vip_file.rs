//! A VIP file: the config's `[[vip]]` tables on their own, what
//! `lbctl vip export` writes and `lbctl vip apply -f` reads. Rendered from a
//! [`VipSet`] so that it parses back (here and inside a config file) to the
//! same set; parsed with the config's own checks, so errors name the file,
//! line, column and key. Limits are the daemon's to check.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{problem::Checker, raw::RawVip, validate, ConfigError};
use crate::model::{VipFlag, VipId, VipSet, VipSpec};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVipFile {
    #[serde(default, rename = "vip")]
    vips: Vec<Spanned<RawVip>>,
}

/// Parses a VIP file (`[[vip]]` tables only). `file` names it in errors.
pub fn parse_vip_file(text: &str, file: &str) -> Result<VipSet, ConfigError> {
    let mut c = Checker::new(text, false);
    let vips = match toml::from_str::<RawVipFile>(text) {
        Ok(raw) => Some(validate::vips(&mut c, &raw.vips, None)),
        Err(e) => {
            c.add_toml_error(&e);
            None
        }
    };
    match vips {
        Some(vips) if c.problems.is_empty() => Ok(vips),
        _ => Err(ConfigError::Invalid { file: file.to_string(), problems: c.problems }),
    }
}

fn flag_name(f: VipFlag) -> String {
    serde_json::to_value(f).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Renders a VIP set as `[[vip]]` tables, VIPs and backends in order.
pub fn render_vip_file(vips: &VipSet) -> String {
    let mut out = String::from("# VIPs in the config's [[vip]] syntax (lbctl vip export).\n");
    for (id, spec) in vips {
        // Every value is an address, a number or a fixed name: no quoting
        // beyond the plain double quotes is needed.
        let _ = write!(out, "\n[[vip]]\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\n", id.addr, id.port, id.proto);
        if !spec.flags.is_empty() {
            let flags: Vec<String> = spec.flags.iter().map(|f| format!("\"{}\"", flag_name(*f))).collect();
            let _ = writeln!(out, "flags = [{}]", flags.join(", "));
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

/// One VIP present before and after, but different.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipChange {
    pub vip: VipId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<FlagChange>,
    pub backends: BackendChanges,
}

/// What replacing one VIP set by another changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSetDiff {
    pub added: Vec<VipId>,
    pub removed: Vec<VipId>,
    pub changed: Vec<VipChange>,
}

impl VipSetDiff {
    pub fn between(before: &VipSet, after: &VipSet) -> Self {
        let mut diff = VipSetDiff::default();
        for (id, new) in after {
            match before.get(id) {
                None => diff.added.push(*id),
                Some(old) if old != new => diff.changed.push(vip_change(id, old, new)),
                Some(_) => {}
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
    VipChange { vip: *id, flags, backends }
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

    #[test]
    fn an_exported_set_parses_back_to_itself() {
        let vips = sample();
        let text = render_vip_file(&vips);
        assert_eq!(parse_vip_file(&text, "vips.toml").unwrap(), vips, "{text}");
        // The same text is valid inside a config file.
        let config = format!("interfaces = [\"eth0\"]\n{text}");
        assert_eq!(Config::parse(&config).unwrap().vips, vips, "{config}");
        assert_eq!(parse_vip_file(&render_vip_file(&VipSet::new()), "empty").unwrap(), VipSet::new());
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
        let d = VipSetDiff::between(&before, &after);
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
        assert!(VipSetDiff::between(&before, &before).is_empty());
    }
}
