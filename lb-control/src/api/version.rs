//! `GET /v1/version`: what is running, for bug reports and upgrades: the
//! daemon's version and git commit (embedded by `build.rs`), the balancer
//! program's tag (the kernel's hash of its instructions: two daemons run the
//! same program exactly when the tags agree), the map-layout version its
//! pins are kept under, and the kernel release.

use std::sync::OnceLock;

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    error::{ApiError, ErrorBody},
    on_controller,
    schema::{named_schema, schema},
    Shared,
};

/// The daemon's (and `lbctl`'s) version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this binary was built from, or "unknown" (no git at
/// build time).
pub const GIT_COMMIT: &str = env!("LB_GIT_COMMIT");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionBody {
    pub version: String,
    pub git_commit: String,
    /// The loaded balancer program's tag, 16 hex digits (`bpftool prog`
    /// shows the same).
    pub program_tag: String,
    pub map_layout_version: u32,
    /// `uname -r`.
    pub kernel: String,
}

/// The running kernel's release, or "unknown" when /proc cannot say.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[utoipa::path(get, path = "/v1/version", tag = "operations", responses(
    (status = 200, description = "what is running", body = VersionBody),
    (status = 500, description = "the program could not be asked for its tag", body = ErrorBody),
))]
pub async fn version(State(s): State<Shared>) -> Result<Json<VersionBody>, ApiError> {
    // A daemon loads one balancer program for its life (re-attaching
    // reuses it), so its tag is asked once: later reads never wait for a
    // change in progress.
    static PROGRAM_TAG: OnceLock<u64> = OnceLock::new();
    let tag = match PROGRAM_TAG.get() {
        Some(tag) => *tag,
        None => {
            let tag = on_controller(&s, |ctl| ctl.program_tag()).await?;
            *PROGRAM_TAG.get_or_init(|| tag)
        }
    };
    Ok(Json(VersionBody {
        version: VERSION.into(),
        git_commit: GIT_COMMIT.into(),
        program_tag: format!("{tag:016x}"),
        map_layout_version: lb_common::MAP_LAYOUT_VERSION,
        kernel: kernel_release(),
    }))
}

named_schema!(
    VersionBody,
    "Version",
    schema(json!({
        "type": "object", "additionalProperties": false,
        "required": ["version", "git_commit", "program_tag", "map_layout_version", "kernel"],
        "properties": {
            "version": {"type": "string", "examples": [VERSION]},
            "git_commit": {"type": "string", "pattern": "^([0-9a-f]{40}|[0-9a-f]{64}|unknown)$"},
            "program_tag": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "map_layout_version": {"type": "integer", "minimum": 0},
            "kernel": {"type": "string"},
        },
    }))
);

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema as _;

    use super::*;

    #[test]
    fn the_schema_names_every_field_and_the_build_has_a_commit_or_says_unknown() {
        let body = VersionBody {
            version: VERSION.into(),
            git_commit: GIT_COMMIT.into(),
            program_tag: format!("{:016x}", 0xabcu64),
            map_layout_version: lb_common::MAP_LAYOUT_VERSION,
            kernel: kernel_release(),
        };
        let v = serde_json::to_value(&body).unwrap();
        let s = serde_json::to_value(VersionBody::schema()).unwrap();
        let mut required: Vec<&str> = s["required"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        required.sort();
        let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(required, fields);
        let pattern = |k: &str| regex::Regex::new(s["properties"][k]["pattern"].as_str().unwrap()).unwrap();
        assert!(pattern("git_commit").is_match(GIT_COMMIT), "{GIT_COMMIT}");
        assert!(pattern("program_tag").is_match(&body.program_tag));
        assert_ne!(body.kernel, "unknown", "/proc/sys/kernel/osrelease is readable here");
    }
}
