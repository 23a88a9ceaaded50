//! Network namespaces for the lab, the end-to-end tests and the demo:
//! create them, run code or commands inside, and delete them on drop (also
//! when a test panics). Needs root and iproute2.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name no other namespace of this or another run uses: `prefix`, the
/// process id and a counter (kept short: interface names are 15 bytes).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs `ip` with these arguments; the error carries its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs a command to completion; the error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out =
        Command::new(program).args(args).output().with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("{program} {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward` style).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(move || std::fs::write(&path, value).with_context(|| format!("writing {path}")))
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&path)?;
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A command that runs inside the namespace (network only: unlike
    /// `ip netns exec`, the mount namespace and so /sys/fs/bpf stay the
    /// host's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let path = format!("/var/run/netns/{}", self.name);
        let mut cmd = Command::new(program);
        // Opened before fork, so the child only calls setns and close.
        let file = File::open(&path);
        // SAFETY: the hook runs between fork and exec and only calls setns(),
        // which is async-signal-safe, on a descriptor opened above.
        unsafe {
            cmd.pre_exec(move || {
                let file = file.as_ref().map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid namespace fd; setns only changes this thread's netns.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a veth pair `a` (in `ns_a`) — `b` (in `ns_b`), both up.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> Result<()> {
    ns_a.ip(&["link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b.name()])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}
