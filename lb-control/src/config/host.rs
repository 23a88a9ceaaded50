//! Checks of the config against the host, made by [`super::Config::load`]
//! (so by `check`, start-up and SIGHUP alike): the pin directory is on a
//! bpffs mount and the API token file can be read.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

/// Checks that `pin_dir` is, or would be created, on a bpffs mount: the
/// directory itself if it exists, else its nearest existing ancestor.
pub fn check_pin_dir(pin_dir: &Path) -> Result<(), String> {
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let c_path = CString::new(existing.as_os_str().as_bytes()).map_err(|_| "contains a NUL byte".to_string())?;
    // SAFETY: libc::statfs is plain integers; all zeroes is a valid value.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads a NUL-terminated path and writes into the struct
    // we own; it keeps neither pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } != 0 {
        return Err(format!("statfs {}: {}", existing.display(), std::io::Error::last_os_error()));
    }
    // f_type's width differs between architectures; compare as u32.
    if fs.f_type as u32 != libc::BPF_FS_MAGIC as u32 {
        return Err(format!(
            "'{}' is not on a bpffs mount ({} is not bpffs; mount one: mount -t bpf bpf /sys/fs/bpf)",
            pin_dir.display(),
            existing.display()
        ));
    }
    Ok(())
}

/// Reads the API token from a file (surrounding whitespace ignored); an
/// empty token is an error.
pub fn read_token(path: &Path) -> Result<String, String> {
    let token = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token)
}
