//! `lbctl completions` and the man pages of both binaries: generated from
//! the clap definitions, so they name every command; the bash script is
//! valid bash.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).env_remove("LBCTL_TOKEN_FILE").output().expect("running the binary");
    assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_name_every_command_and_bash_reads_its_script() {
    let lbctl = env!("CARGO_BIN_EXE_lbctl");
    for shell in ["bash", "zsh", "fish"] {
        let script = run(lbctl, &["completions", shell]);
        for word in ["vip", "backend", "export", "apply", "version", "dry-run", "output"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let dir = std::env::temp_dir().join(format!("lbctl-completions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lbctl.bash");
    std::fs::write(&path, run(lbctl, &["completions", "bash"])).unwrap();
    let status = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "bash -n refuses the completion script");
    let out = Command::new(lbctl).args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid value"));
}

#[test]
fn man_pages_cover_every_subcommand() {
    let dir = std::env::temp_dir().join(format!("lb-man-pages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let listed = run(env!("CARGO_BIN_EXE_lbctl"), &["man", "--dir", d]);
    let listed = listed + &run(env!("CARGO_BIN_EXE_lb-control"), &["man", "--dir", d]);
    for page in [
        "lbctl.1",
        "lbctl-vip-apply.1",
        "lbctl-backend-drain.1",
        "lbctl-version.1",
        "lb-control.1",
        "lb-control-detach.1",
    ] {
        let path = dir.join(page);
        assert!(listed.contains(&*path.to_string_lossy()), "{page} not listed:\n{listed}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") && text.contains(".SH SYNOPSIS"), "{page}:\n{text}");
    }
    let apply = std::fs::read_to_string(dir.join("lbctl-vip-apply.1")).unwrap();
    assert!(apply.contains("\\-\\-dry\\-run") && apply.contains("lbctl vip apply"), "{apply}");
    std::fs::remove_dir_all(&dir).unwrap();
}
