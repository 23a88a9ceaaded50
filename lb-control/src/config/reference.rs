//! Keeps `docs/config.md` in step with the config types: every key the raw
//! serde structs accept is found by asking them (a probe key in each table
//! makes serde's `deny_unknown_fields` list the table's fields), tables are
//! found by trying each key as `[table]` and `[[array]]`, and the document
//! must name every key by its dotted path in backticks.

use super::raw::RawConfig;

const PROBE: &str = "__probe_key__";
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md");

/// One segment of a key's path, and how it is written as a header.
#[derive(Clone)]
struct Segment {
    name: String,
    array: bool,
}

/// The TOML text that opens the table at `path` and puts the probe key in it.
fn probe_text(path: &[Segment]) -> String {
    let mut text = String::new();
    for i in 0..path.len() {
        let dotted: Vec<&str> = path[..=i].iter().map(|s| s.name.as_str()).collect();
        let dotted = dotted.join(".");
        if path[i].array {
            text.push_str(&format!("[[{dotted}]]\n"));
        } else {
            text.push_str(&format!("[{dotted}]\n"));
        }
    }
    text.push_str(&format!("{PROBE} = 1\n"));
    text
}

/// The fields of the table at `path`, if `path` is a table there: serde's
/// "unknown field `probe`, expected one of `a`, `b`" lists them.
fn fields_of(path: &[Segment]) -> Option<Vec<String>> {
    let err = toml::from_str::<RawConfig>(&probe_text(path)).err()?;
    let msg = err.message().to_string();
    let rest = msg.strip_prefix(&format!("unknown field `{PROBE}`"))?;
    if rest.contains("there are no fields") {
        return Some(Vec::new());
    }
    Some(rest.split('`').skip(1).step_by(2).map(String::from).collect())
}

/// Every key path the config accepts, tables included, e.g. `api.listen`,
/// `vip.backend.weight`.
fn accepted_keys() -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<Segment>> = vec![Vec::new()];
    while let Some(path) = stack.pop() {
        let fields = fields_of(&path).unwrap_or_else(|| {
            let names: Vec<&str> = path.iter().map(|s| s.name.as_str()).collect();
            panic!("{} is not a table the probe can open", names.join("."))
        });
        for field in fields {
            let mut child = path.clone();
            child.push(Segment { name: field, array: false });
            let dotted: Vec<&str> = child.iter().map(|s| s.name.as_str()).collect();
            out.push(dotted.join("."));
            if fields_of(&child).is_some() {
                stack.push(child);
                continue;
            }
            child.last_mut().expect("just pushed").array = true;
            if fields_of(&child).is_some() {
                stack.push(child);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_probe_finds_the_known_keys() {
    let keys = accepted_keys();
    for k in ["interfaces", "api.listen", "api.max_connections", "bgp.communities", "vip.flags", "vip.backend.weight"] {
        assert!(keys.contains(&k.to_string()), "{k} not found in {keys:?}");
    }
    assert!(!keys.iter().any(|k| k.contains(PROBE)));
}

#[test]
fn docs_config_md_names_every_key() {
    let doc = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("reading {DOC}: {e}"));
    let missing: Vec<String> = accepted_keys()
        .into_iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .map(|k| {
            let section = match k.rsplit_once('.') {
                Some((table, _)) => format!("the `[{table}]` section"),
                None => "the \"Top level\" section".to_string(),
            };
            format!("  `{k}`: add a row for it to {section} (type, default, range, reload)")
        })
        .collect();
    assert!(missing.is_empty(), "docs/config.md lacks keys the config accepts:\n{}", missing.join("\n"));
}
