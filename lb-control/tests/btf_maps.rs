//! Readable maps: every pinned balancer map carries BTF, so `bpftool map
//! dump pinned …` prints named fields (needs `bpftool`, installed by
//! scripts/setup.sh).

mod common;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use common::*;
use lb_common::map_names;
use lb_control::{
    dataplane::{detach_all, versioned_pin_dir, Balancer},
    engine::Engine,
    model::{Backend, VipId, VipSet, VipSpec},
};
use serde_json::Value;

/// A bpffs directory of this test's own, removed at the end.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = detach_all(&self.0);
    }
}

fn bpftool(args: &[&str]) -> Value {
    let out =
        Command::new("bpftool").arg("-j").args(args).output().expect("bpftool runs (scripts/setup.sh installs it)");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON")
}

fn pinned(dir: &Path, name: &str) -> String {
    versioned_pin_dir(dir).join(name).display().to_string()
}

#[test]
fn every_pinned_map_has_btf_and_dumps_with_field_names() {
    let pins = PinDir(PathBuf::from(format!("/sys/fs/bpf/lb-test-btf-{}", std::process::id())));
    let mut e = Engine::adopt(Balancer::open(limits(), Some(&pins.0)).unwrap()).unwrap();
    let vip: VipId = "tcp:10.0.0.10:80".parse().unwrap();
    let vips: VipSet =
        [(vip, VipSpec { flags: vec![], backends: [(IpAddr::V4(REAL1), Backend { weight: 1 })].into() })].into();
    e.apply(&vips, &config()).unwrap();

    let without: Vec<&str> = map_names::BALANCER_MAPS
        .into_iter()
        .filter(|name| {
            let info = bpftool(&["map", "show", "pinned", &pinned(&pins.0, name)]);
            info["btf_id"].as_u64().is_none_or(|id| id == 0)
        })
        .collect();
    assert!(without.is_empty(), "maps without BTF: {without:?}");

    // A backend slot: named fields, the address as the data plane holds it.
    let reals = bpftool(&["map", "dump", "pinned", &pinned(&pins.0, map_names::REALS)]);
    let index = e.real_index(&vip, &IpAddr::V4(REAL1)).unwrap();
    let entry = reals
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["formatted"]["key"] == index)
        .unwrap_or_else(|| panic!("no formatted entry {index} in {reals}"));
    let value = &entry["formatted"]["value"];
    assert_eq!(value["family"], lb_common::FAMILY_V4, "{value}");
    assert_eq!(value["addr"][0], u32::from_ne_bytes(REAL1.octets()), "{value}");

    // A VIP: the key's and the value's fields by name.
    let vips = bpftool(&["map", "dump", "pinned", &pinned(&pins.0, map_names::VIPS)]);
    let found = vips.as_array().unwrap().iter().any(|x| {
        let f = &x["formatted"];
        f["key"]["port"] == 80u16.to_be() && f["key"]["proto"] == lb_common::IPPROTO_TCP && f["value"]["ring"].is_u64()
    });
    assert!(found, "no VIP tcp:10.0.0.10:80 with named fields in {vips}");

    // Counters: per-CPU values, named.
    let stats = bpftool(&["map", "dump", "pinned", &pinned(&pins.0, map_names::STATS)]);
    let first = &stats[0]["formatted"]["values"][0]["value"];
    assert!(first["packets"].is_u64() && first["bytes"].is_u64(), "{}", stats[0]);
}
