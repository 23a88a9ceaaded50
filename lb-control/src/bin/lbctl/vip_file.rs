//! `lbctl vip export` and `lbctl vip apply -f FILE [--dry-run]`: the
//! running VIP set as a file in the config's `[[vip]]` syntax, and that file
//! applied back as one change (`PUT /v1/vips`), all or nothing, with the
//! diff printed.

use std::path::Path;

use anyhow::{Context as _, Result};
use lb_control::{
    api::{BackendBody, VipBody},
    config::{parse_vip_file, render_vip_file, VipSetDiff},
    model::{Backend, VipSet, VipSpec},
};
use serde::Deserialize;

use crate::{print_json, Client};

fn to_set(list: Vec<VipBody>) -> VipSet {
    list.into_iter()
        .map(|v| {
            let backends = v.backends.into_iter().map(|b| (b.address, Backend { weight: b.weight })).collect();
            (v.vip, VipSpec { flags: v.flags, backends })
        })
        .collect()
}

fn to_list(set: &VipSet) -> Vec<VipBody> {
    set.iter()
        .map(|(id, spec)| VipBody {
            vip: *id,
            flags: spec.flags.clone(),
            backends: spec.backends.iter().map(|(a, b)| BackendBody { address: *a, weight: b.weight }).collect(),
        })
        .collect()
}

/// Prints the running VIP set: as a VIP file, or (`-o json`) as the API's list.
pub fn export(client: &Client, json: bool) -> Result<()> {
    let list: Vec<VipBody> = client.get("/v1/vips")?;
    if json {
        print_json(&list)
    } else {
        print!("{}", render_vip_file(&to_set(list)));
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
    }
}
