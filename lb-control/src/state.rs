//! The state file: what the daemon last applied, so API changes survive a
//! restart without the config file ever being rewritten.
//!
//! It keeps two VIP sets: the config file's VIPs as of the last apply, and
//! the effective VIPs (config plus API changes). When the config file
//! changes, each VIP the file changed is taken from the file; every other VIP
//! keeps its API changes (see [`merge_config_change`]). Health checks set
//! through the API (`PUT /v1/vips/{vip}/health`, or with a VIP) are kept
//! the same way beside the config file's checks (version 2; a version 1
//! file, without health, still loads): a VIP whose check the file changed
//! takes the file's, the others keep the API's (see
//! [`merge_health_change`]).

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::health::{HealthCheck, HealthSettings},
    model::{VipId, VipSet},
};

/// The version written.
pub const STATE_VERSION: u32 = 2;
/// The versions read: 1 has no health checks (none were kept then).
pub const STATE_VERSIONS_READ: [u32; 2] = [1, STATE_VERSION];

/// Health checks set through the API, by VIP: only where they differ from
/// the config file's check of that VIP.
pub type HealthOverrides = BTreeMap<VipId, HealthCheck>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// The config file's VIPs when they were last applied.
    pub config_vips: VipSet,
    /// What the data plane serves: config plus API changes.
    pub vips: VipSet,
    /// The config file's `[health]` and `[vip.health]` when last applied
    /// (absent in version 1).
    #[serde(default)]
    pub config_health: HealthSettings,
    /// Checks set through the API over the file's (absent in version 1).
    #[serde(default)]
    pub health: HealthOverrides,
}

#[derive(thiserror::Error, Debug)]
pub enum StateError {
    #[error("reading state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has version {found}; this daemon reads versions 1 and {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the state file; `None` if there is none yet.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path: path.to_owned(), source }),
    };
    let state: State =
        serde_json::from_str(&text).map_err(|source| StateError::Parse { path: path.to_owned(), source })?;
    if !STATE_VERSIONS_READ.contains(&state.version) {
        return Err(StateError::Version { path: path.to_owned(), found: state.version });
    }
    // Written back as the current version at the next save.
    Ok(Some(State { version: STATE_VERSION, ..state }))
}

/// Writes the state file atomically: a temporary file in the same
/// directory, synced, renamed over the old one, and the directory synced, so
/// a crash leaves either the old or the new state, never a torn one.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let err = |source| StateError::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let body = serde_json::to_vec_pretty(state).expect("state serialises");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })
}

/// Applies a change of the config file to the effective VIPs: every VIP
/// whose config entry changed (added, edited or removed) is taken from the
/// new config; VIPs the config did not change keep what the API made of
/// them.
pub fn merge_config_change(effective: &VipSet, old_config: &VipSet, new_config: &VipSet) -> VipSet {
    let mut out = effective.clone();
    for id in old_config.keys().chain(new_config.keys()) {
        match (old_config.get(id), new_config.get(id)) {
            (old, new) if old == new => {}
            (_, Some(spec)) => {
                out.insert(*id, spec.clone());
            }
            (_, None) => {
                out.remove(id);
            }
        }
    }
    out
}

/// Applies a change of the config file to the API's health checks: a VIP
/// whose check in the file changed (its `[vip.health]`, or `[health]` for a
/// VIP without one) takes the file's, so its override goes; so does the
/// override of a VIP no longer in `vips`, and one now equal to the file's.
pub fn merge_health_change(
    overrides: &HealthOverrides,
    old_config: &HealthSettings,
    new_config: &HealthSettings,
    vips: &VipSet,
) -> HealthOverrides {
    overrides
        .iter()
        .filter(|(id, check)| {
            vips.contains_key(id)
                && old_config.for_vip(id) == new_config.for_vip(id)
                && new_config.for_vip(id) != *check
        })
        .map(|(id, check)| (*id, check.clone()))
        .collect()
}

/// The state after the config file changed from what `saved` last applied
/// to `config_vips` and `config_health`: VIPs and health checks merged.
pub fn with_config(saved: &State, config_vips: &VipSet, config_health: &HealthSettings) -> State {
    let vips = merge_config_change(&saved.vips, &saved.config_vips, config_vips);
    let health = merge_health_change(&saved.health, &saved.config_health, config_health, &vips);
    State {
        version: STATE_VERSION,
        config_vips: config_vips.clone(),
        vips,
        config_health: config_health.clone(),
        health,
    }
}

/// The state to start from: the saved one brought up to date with the
/// config file, or the config file alone on a first start.
pub fn startup_state(saved: Option<State>, config_vips: &VipSet, config_health: &HealthSettings) -> State {
    match saved {
        Some(saved) => with_config(&saved, config_vips, config_health),
        None => State {
            version: STATE_VERSION,
            config_vips: config_vips.clone(),
            vips: config_vips.clone(),
            config_health: config_health.clone(),
            health: HealthOverrides::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::health::CheckKind,
        model::{Backend, VipSpec},
    };

    fn id(s: &str) -> VipId {
        s.parse().unwrap()
    }

    fn spec(backends: &[(&str, u32)]) -> VipSpec {
        VipSpec {
            flags: vec![],
            backends: backends.iter().map(|(a, w)| (a.parse().unwrap(), Backend { weight: *w })).collect(),
        }
    }

    #[test]
    fn config_changes_win_only_where_the_config_changed() {
        let a = id("tcp:10.0.0.1:80");
        let b = id("tcp:10.0.0.2:80");
        let c = id("udp:10.0.0.3:53");
        let old_cfg: VipSet = [(a, spec(&[("10.1.0.1", 1)])), (b, spec(&[("10.1.0.2", 1)]))].into();
        // The API drained a's backend and added c.
        let effective: VipSet =
            [(a, spec(&[("10.1.0.1", 0)])), (b, spec(&[("10.1.0.2", 1)])), (c, spec(&[("10.1.0.3", 1)]))].into();
        // The operator edits b in the file and removes nothing else.
        let new_cfg: VipSet = [(a, spec(&[("10.1.0.1", 1)])), (b, spec(&[("10.1.0.9", 1)]))].into();
        let merged = merge_config_change(&effective, &old_cfg, &new_cfg);
        assert_eq!(merged[&a], spec(&[("10.1.0.1", 0)]), "API drain kept");
        assert_eq!(merged[&b], spec(&[("10.1.0.9", 1)]), "file edit applied");
        assert_eq!(merged[&c], spec(&[("10.1.0.3", 1)]), "API-added VIP kept");
        // Removing a VIP from the file removes it.
        let newer: VipSet = [(b, spec(&[("10.1.0.9", 1)]))].into();
        let merged = merge_config_change(&merged, &new_cfg, &newer);
        assert!(!merged.contains_key(&a));
        assert!(merged.contains_key(&c));
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("lb-state-test-{}", std::process::id()));
        let path = dir.join("sub/state.json");
        let a = id("tcp:[fc00::1]:443");
        let check =
            HealthCheck { kind: CheckKind::Http, path: "/a\"b\\".into(), port: Some(8080), ..Default::default() };
        let state = State {
            version: STATE_VERSION,
            config_vips: VipSet::new(),
            vips: [(a, spec(&[("fc00:1::1", 3)]))].into(),
            config_health: HealthSettings { defaults: check.clone(), vips: [(a, HealthCheck::default())].into() },
            health: [(a, check)].into(),
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"]);
        fs::write(&path, "{ not json").unwrap();
        assert!(matches!(load(&path), Err(StateError::Parse { .. })));
        fs::write(&path, r#"{"version": 99, "config_vips": {}, "vips": {}}"#).unwrap();
        assert!(matches!(load(&path), Err(StateError::Version { found: 99, .. })));
        assert_eq!(load(&dir.join("missing.json")).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn first_start_takes_the_config() {
        let a = id("tcp:10.0.0.1:80");
        let cfg: VipSet = [(a, spec(&[("10.1.0.1", 1)]))].into();
        let s = startup_state(None, &cfg, &HealthSettings::default());
        assert_eq!(s.vips, cfg);
        assert_eq!(s.config_vips, cfg);
    }

    /// A version 1 file (no health) still loads, with no API checks.
    #[test]
    fn a_version_1_file_loads_without_health() {
        let dir = std::env::temp_dir().join(format!("lb-state-v1-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let v1 = r#"{"version": 1, "config_vips": {}, "vips": {"tcp:10.0.0.1:80": {"flags": [], "backends": {"10.1.0.1": {"weight": 2}}}}}"#;
        fs::write(&path, v1).unwrap();
        let state = load(&path).unwrap().unwrap();
        assert_eq!(state.version, STATE_VERSION, "written back as the current version");
        assert_eq!(state.vips[&id("tcp:10.0.0.1:80")], spec(&[("10.1.0.1", 2)]));
        assert!(state.health.is_empty());
        // A stored check that is not valid is refused, not half-read.
        fs::write(
            &path,
            v1.replace(r#""version": 1"#, r#""version": 2"#)
                .replace(r#""vips": {"tcp"#, r#""health": {"tcp:10.0.0.1:80": {"rise": 0}}, "vips": {"tcp"#),
        )
        .unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("rise"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_wins_only_where_it_changed_the_vips_check() {
        let (a, b, c) = (id("tcp:10.0.0.1:80"), id("tcp:10.0.0.2:80"), id("tcp:10.0.0.3:80"));
        let tcp = HealthCheck { kind: CheckKind::Tcp, ..Default::default() };
        let http = HealthCheck { kind: CheckKind::Http, ..Default::default() };
        let vips: VipSet = [(a, spec(&[])), (b, spec(&[])), (c, spec(&[]))].into();
        let old = HealthSettings { defaults: HealthCheck::default(), vips: [(a, tcp.clone())].into() };
        let overrides: HealthOverrides = [(a, http.clone()), (b, http.clone()), (c, http.clone())].into();
        // The file changes a's table and nothing else: a takes the file's.
        let new = HealthSettings {
            defaults: HealthCheck::default(),
            vips: [(a, HealthCheck { rise: 5, ..tcp.clone() })].into(),
        };
        let merged = merge_health_change(&overrides, &old, &new, &vips);
        assert_eq!(merged, [(b, http.clone()), (c, http.clone())].into());
        // Unchanged file: every override stays; a VIP gone takes its own.
        assert_eq!(merge_health_change(&overrides, &old, &old, &vips), overrides);
        let fewer: VipSet = [(a, spec(&[]))].into();
        assert_eq!(merge_health_change(&overrides, &old, &old, &fewer), [(a, http.clone())].into());
        // New [health] defaults change the check of every VIP without a table.
        let new_defaults = HealthSettings { defaults: tcp.clone(), vips: old.vips.clone() };
        assert_eq!(merge_health_change(&overrides, &old, &new_defaults, &vips), [(a, http)].into());
    }
}
