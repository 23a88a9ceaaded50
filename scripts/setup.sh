#!/usr/bin/env bash
# One-time (idempotent) set-up of a build/test host for xdp-lb.
# Installs Debian packages, the nightly's rust-src, bpf-linker built against
# the nightly's own libLLVM, schemathesis (the API fuzzer) in a virtualenv of
# the project's, and mounts bpffs. Quick when already done.
set -euo pipefail

NIGHTLY="${LB_NIGHTLY:-nightly}"
# bpf-linker's rpath points into this prefix, so it must outlive the build.
LLVM_PREFIX_DIR="${LB_LLVM_PREFIX:-/opt/xdp-lb/llvm}"
# The API fuzz test's virtualenv and its pinned packages.
VENV_DIR="${LB_VENV:-/opt/xdp-lb/venv}"
FUZZ_REQUIREMENTS="$(cd "$(dirname "$0")" && pwd)/fuzz/requirements.txt"
# bird2: the BGP daemon of the multi-balancer lab (and of production hosts).
# bpftool: the readable-maps test (and operators) dump the pinned maps.
# tcpdump: the capture test reads the captured file with it.
DEB_PACKAGES=(netsniff-ng iproute2 ethtool procps python3 python3-venv bird2 prometheus bpftool tcpdump)

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (BPF, netns and apt need it)"; exit 1
  fi
}

install_debs() {
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_rust_src() {
  if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
    log "adding rust-src to $NIGHTLY"
    rustup component add rust-src --toolchain "$NIGHTLY"
  fi
}

# The gates in test.sh: rustfmt and clippy on the stable toolchain.
install_rust_gates() {
  local have
  have="$(rustup component list --installed 2>/dev/null)"
  for c in rustfmt clippy; do
    if ! grep -q "^$c" <<<"$have"; then
      log "adding $c to the stable toolchain"
      rustup component add "$c"
    fi
  done
}

install_bpf_linker() {
  local sysroot llvm_lib
  sysroot="$(rustc +"$NIGHTLY" --print sysroot)"
  llvm_lib="$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.*-rust-*' | head -n1)"
  if [ -z "$llvm_lib" ]; then
    log "no libLLVM in $sysroot/lib"; exit 1
  fi
  mkdir -p "$LLVM_PREFIX_DIR/lib"
  ln -sfn "$llvm_lib" "$LLVM_PREFIX_DIR/lib/libLLVM.so"
  ln -sfn "$llvm_lib" "$LLVM_PREFIX_DIR/lib/$(basename "$llvm_lib")"
  if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version >/dev/null 2>&1; then
    return
  fi
  local major
  major="$(basename "$llvm_lib" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')"
  log "building bpf-linker against $llvm_lib (LLVM $major), about a minute"
  LLVM_PREFIX="$LLVM_PREFIX_DIR" cargo +"$NIGHTLY" install --locked bpf-linker \
    --no-default-features --features "llvm-$major" >&2
}

install_schemathesis() {
  # The copy of the requirements the virtualenv was built from: unchanged
  # means nothing to do.
  local stamp="$VENV_DIR/.xdp-lb-requirements.txt"
  if [ -x "$VENV_DIR/bin/schemathesis" ] && cmp -s "$stamp" "$FUZZ_REQUIREMENTS"; then
    return
  fi
  log "installing schemathesis into $VENV_DIR (pinned in scripts/fuzz/requirements.txt)"
  /usr/bin/python3 -m venv "$VENV_DIR"
  "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -r "$FUZZ_REQUIREMENTS" >&2
  cp "$FUZZ_REQUIREMENTS" "$stamp"
}

mount_bpffs() {
  if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
  fi
}

need_root
install_debs
install_rust_src
install_rust_gates
install_bpf_linker
install_schemathesis
mount_bpffs
log "ok"
