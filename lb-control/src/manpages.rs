//! Man pages for `lb-control` and `lbctl`, generated from their clap
//! definitions (`clap_mangen`): one page for the command and one per
//! subcommand (`lbctl-vip-apply.1`), as `lb-control man --dir` and
//! `lbctl man --dir` write them.

use std::path::{Path, PathBuf};

/// Writes `cmd`'s page and its subcommands' pages into `dir` (created if
/// missing); returns the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd;
    cmd.build();
    let mut written = Vec::new();
    write_tree(&cmd, cmd.get_name().to_string(), dir, &mut written)?;
    Ok(written)
}

fn write_tree(cmd: &clap::Command, name: String, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    // The page's title is its file name: `lbctl-vip-apply`.
    let page = cmd.clone().name(name.clone()).bin_name(name.replace('-', " "));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_tree(sub, format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    #[command(name = "demo", about = "a demo")]
    struct Demo {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        /// Does the first thing.
        First {
            #[arg(long)]
            count: u32,
        },
        Second,
    }

    #[test]
    fn every_subcommand_gets_a_page() {
        let dir = std::env::temp_dir().join(format!("lb-man-{}", std::process::id()));
        let written = write_man_pages(<Demo as clap::CommandFactory>::command(), &dir).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["demo.1", "demo-first.1", "demo-second.1"]);
        let first = std::fs::read_to_string(dir.join("demo-first.1")).unwrap();
        assert!(first.contains(".TH demo-first") && first.contains("count"), "{first}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
