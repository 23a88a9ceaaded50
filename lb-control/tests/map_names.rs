//! The map and global names lb-common defines are exactly those of the
//! eBPF objects: aya-ebpf's `#[map]` takes the static's identifier, not a
//! constant, so this test is what keeps the two sides from drifting.

use std::collections::BTreeSet;

use lb_common::{global_names, map_names};
use lb_control::dataplane::{BALANCER_ELF, DECAP_ELF};

/// The maps of an object (aya also makes maps of the `.data`/`.rodata`/
/// `.bss` sections the globals live in; those are not named by us).
fn object_maps(elf: &[u8]) -> BTreeSet<String> {
    let obj = aya_obj::Object::parse(elf).expect("the object parses");
    obj.maps.keys().filter(|name| !name.starts_with('.')).cloned().collect()
}

/// Whether the object's string table names a symbol `name`.
fn has_symbol(elf: &[u8], name: &str) -> bool {
    let needle = [b"\0", name.as_bytes(), b"\0"].concat();
    elf.windows(needle.len()).any(|w| w == needle)
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn balancer_maps_are_the_lb_common_names() {
    let maps = object_maps(BALANCER_ELF);
    let want = names(&[&map_names::BALANCER_MAPS[..], &map_names::CAPTURE_MAPS[..]].concat());
    assert_eq!(maps, want, "maps of the balancer object vs lb_common::map_names");
    for global in global_names::BALANCER_GLOBALS {
        assert!(has_symbol(BALANCER_ELF, global), "the balancer object has no global {global}");
    }
    assert!(!has_symbol(BALANCER_ELF, "NO_SUCH_GLOBAL"), "the symbol search finds what is not there");
}

#[test]
fn decap_maps_are_the_lb_common_names() {
    let maps = object_maps(DECAP_ELF);
    assert_eq!(maps, names(&map_names::DECAP_MAPS), "maps of the decap object vs lb_common::map_names");
}
