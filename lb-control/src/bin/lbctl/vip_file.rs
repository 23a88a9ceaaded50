//! `lbctl vip export` and `lbctl vip apply -f FILE [--dry-run]`: the
//! running VIP set as a file in the config's `[[vip]]` syntax, and that file
//! applied back as one change (`PUT /v1/vips`), all or nothing, with the
//! diff printed.

use std::path::Path;

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;

use lb_control::{
    api::{BackendBody, VipBody},
    config::{health::RawHealthCheck, parse_vip_file, render_vip_file, HealthChange, VipFile, VipSetDiff},
    model::{Backend, VipSpec},
};
use serde::Deserialize;

use crate::{print_json, Client};

fn to_file(list: Vec<VipBody>) -> VipFile {
    let mut file = VipFile::default();
    for v in list {
        let backends = v.backends.into_iter().map(|b| (b.address, Backend { weight: b.weight })).collect();
        file.vips.insert(v.vip, VipSpec { flags: v.flags, backends });
        if let Some(h) = v.health {
            file.health.insert(v.vip, h);
        }
    }
    file
}

fn to_list(file: &VipFile) -> Vec<VipBody> {
    file.vips
        .iter()
        .map(|(id, spec)| VipBody {
            vip: *id,
            flags: spec.flags.clone(),
            backends: spec.backends.iter().map(|(a, b)| BackendBody { address: *a, weight: b.weight }).collect(),
            health: file.health.get(id).cloned(),
        })
        .collect()
}

/// Prints the running VIP set: as a VIP file, or (`-o json`) as the API's list.
pub fn export(client: &Client, json: bool) -> Result<()> {
    let list: Vec<VipBody> = client.get("/v1/vips")?;
    if json {
        print_json(&list)
    } else {
        let file = to_file(list);
        print!("{}", render_vip_file(&file.vips, &file.health));
        Ok(())
    }
}

#[derive(Deserialize, serde::Serialize)]
struct Replaced {
    dry_run: bool,
    diff: VipSetDiff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<serde_json::Value>,
}

/// Reads `file` (`-` for stdin), sends it as the whole VIP set, prints the diff.
pub fn apply(client: &Client, file: &Path, dry_run: bool, json: bool) -> Result<()> {
    let (text, name) = if file == Path::new("-") {
        (std::io::read_to_string(std::io::stdin()).context("reading the VIP file from stdin")?, "<stdin>".to_string())
    } else {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        (text, file.display().to_string())
    };
    // Located errors before anything is sent; the daemon checks the limits.
    let set = parse_vip_file(&text, &name)?;
    let path = if dry_run { "/v1/vips?dry_run=true" } else { "/v1/vips" };
    let r: Replaced = client.send("PUT", path, Some(&to_list(&set)))?;
    if json {
        return print_json(&r);
    }
    print_diff(&r.diff);
    let summary =
        format!("{} added, {} removed, {} changed", r.diff.added.len(), r.diff.removed.len(), r.diff.changed.len());
    if r.dry_run {
        println!("{summary} (dry run: nothing changed)");
    } else {
        println!("{summary}");
    }
    Ok(())
}

fn print_diff(d: &VipSetDiff) {
    for v in &d.added {
        println!("+ {v}");
    }
    for v in &d.removed {
        println!("- {v}");
    }
    for c in &d.changed {
        println!("~ {}", c.vip);
        if let Some(f) = &c.flags {
            let names = |fl: &[lb_control::model::VipFlag]| -> String {
                let n: Vec<String> = fl
                    .iter()
                    .map(|f| {
                        serde_json::to_value(f).ok().and_then(|s| s.as_str().map(String::from)).unwrap_or_default()
                    })
                    .collect();
                if n.is_empty() {
                    "-".into()
                } else {
                    n.join(",")
                }
            };
            println!("    flags {} -> {}", names(&f.before), names(&f.after));
        }
        for a in &c.backends.added {
            println!("    + backend {a}");
        }
        for a in &c.backends.removed {
            println!("    - backend {a}");
        }
        for w in &c.backends.reweighted {
            println!("    ~ backend {} weight {} -> {}", w.address, w.before, w.after);
        }
        if let Some(h) = &c.health {
            println!("    ~ health {}", health_change(h));
        }
    }
}

/// The fields a health check change touches: `kind tcp -> http, rise 2 -> 3`.
fn health_change(h: &HealthChange) -> String {
    let fields = |r: &RawHealthCheck| -> BTreeMap<String, String> {
        let v = serde_json::to_value(r).unwrap_or_default();
        let mut out = BTreeMap::new();
        for (k, v) in v.as_object().into_iter().flatten() {
            let text = match v {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(k.clone(), text);
        }
        out
    };
    let (before, after) = (fields(&h.before), fields(&h.after));
    let changed: Vec<String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k} {} -> {v}", before.get(k).map_or("-", String::as_str)))
        .collect();
    changed.join(", ")
}
