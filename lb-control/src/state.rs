//! The state file: what the daemon last applied, so API changes survive a
//! restart without the config file ever being rewritten.
//!
//! It keeps two VIP sets: the config file's VIPs as of the last apply, and
//! the effective VIPs (config plus API changes). When the config file
//! changes, each VIP the file changed is taken from the file; every other VIP
//! keeps its API changes (see [`merge_config_change`]).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::VipSet;

pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// The config file's VIPs when they were last applied.
    pub config_vips: VipSet,
    /// What the data plane serves: config plus API changes.
    pub vips: VipSet,
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
    #[error("state file {path} has version {found}; this daemon reads version {STATE_VERSION}")]
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
    if state.version != STATE_VERSION {
        return Err(StateError::Version { path: path.to_owned(), found: state.version });
    }
    Ok(Some(state))
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

/// The state to start from: the saved one brought up to date with the
/// config file, or the config file alone on a first start.
pub fn startup_state(saved: Option<State>, config_vips: &VipSet) -> State {
    match saved {
        Some(saved) => State {
            version: STATE_VERSION,
            vips: merge_config_change(&saved.vips, &saved.config_vips, config_vips),
            config_vips: config_vips.clone(),
        },
        None => State { version: STATE_VERSION, config_vips: config_vips.clone(), vips: config_vips.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, VipId, VipSpec};

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
        let state =
            State { version: STATE_VERSION, config_vips: VipSet::new(), vips: [(a, spec(&[("fc00:1::1", 3)]))].into() };
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
        let s = startup_state(None, &cfg);
        assert_eq!(s.vips, cfg);
        assert_eq!(s.config_vips, cfg);
    }
}
