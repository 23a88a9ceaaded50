//! Builds the XDP programs (`lb-ebpf`) with the nightly toolchain and
//! bpf-linker, and places the objects in OUT_DIR for `include_bytes!`.
use anyhow::Context as _;

/// `git` in lb-control's directory, its trimmed output if it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Embeds the commit being built as `LB_GIT_COMMIT` (`GET /v1/version`),
/// "unknown" without git; rebuilt when HEAD moves.
fn embed_git_commit() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LB_GIT_COMMIT={commit}");
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn main() -> anyhow::Result<()> {
    embed_git_commit();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("lb-control has a parent directory")?
        .join("lb-ebpf");
    let root_str = root.to_str().context("lb-ebpf path is UTF-8")?;
    // lb-ebpf is its own workspace (it targets bpfel-unknown-none and pins
    // its own lockfile); aya-build runs cargo in the current directory.
    std::env::set_current_dir(&root).context("entering lb-ebpf")?;
    println!("cargo:rerun-if-changed={}", root.parent().unwrap().join("lb-common").display());
    aya_build::build_ebpf(
        [aya_build::Package { name: "lb-ebpf", root_dir: root_str, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
