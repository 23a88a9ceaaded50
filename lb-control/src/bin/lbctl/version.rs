//! `lbctl version`: lbctl's own version and commit, and what the daemon
//! runs (`GET /v1/version`).

use anyhow::Result;
use lb_control::api::{VersionBody, GIT_COMMIT, VERSION};

use crate::{print_json, Client};

pub fn version(client: &Client, json: bool) -> Result<()> {
    let own = serde_json::json!({"version": VERSION, "git_commit": GIT_COMMIT});
    let daemon = client.get::<VersionBody>("/v1/version");
    if json {
        // The daemon's part is its answer, or the reason there is none.
        let daemon = match &daemon {
            Ok(d) => serde_json::to_value(d)?,
            Err(e) => serde_json::json!({"error": format!("{e:#}")}),
        };
        print_json(&serde_json::json!({"lbctl": own, "daemon": daemon}))?;
    } else {
        println!("{:<20} {VERSION} (commit {GIT_COMMIT})", "lbctl");
        if let Ok(d) = &daemon {
            println!("{:<20} {} (commit {})", "lb-control", d.version, d.git_commit);
            println!("{:<20} {}", "program tag", d.program_tag);
            println!("{:<20} {}", "map layout", d.map_layout_version);
            println!("{:<20} {}", "kernel", d.kernel);
        }
    }
    daemon.map(|_| ())
}
