//! Builds the XDP programs (`lb-ebpf`) with the nightly toolchain and
//! bpf-linker, and places the objects in OUT_DIR for `include_bytes!`.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
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
