//! `lbctl completions SHELL` and `lbctl man --dir DIR`: shell completions
//! (`clap_complete`) and man pages, both from lbctl's own clap definition.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "lbctl", &mut std::io::stdout());
}

/// Writes lbctl's man pages into `dir` and names them.
pub fn man(dir: &Path) -> Result<()> {
    let written = lb_control::manpages::write_man_pages(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}
