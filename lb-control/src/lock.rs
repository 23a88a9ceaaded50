//! One daemon per `pin_dir`: an exclusive `flock` on the pin directory
//! itself, taken before any map is opened.
//!
//! bpffs holds only directories and pinned objects (no regular files, no
//! symlinks), so the lock is on the directory; the holder's PID comes from
//! the kernel's lock table (`/proc/locks`), which is always right, even
//! after a holder was killed (the kernel drops the lock with its last fd).

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(thiserror::Error, Debug)]
pub enum LockError {
    #[error("{path} is in use by another lb-control (PID {pid}); stop that daemon first")]
    HeldBy { path: PathBuf, pid: u32 },
    #[error("{path} is locked by another process (its PID is not in /proc/locks); stop it first")]
    HeldByUnknown { path: PathBuf },
    #[error("locking {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock on a pin directory; released when dropped (or when
/// the process dies).
#[derive(Debug)]
pub struct PinDirLock {
    path: PathBuf,
    dir: File,
}

impl PinDirLock {
    /// Creates `pin_dir` if needed and locks it, without waiting: if another
    /// process holds it, the error names that process.
    pub fn acquire(pin_dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io { path: pin_dir.to_path_buf(), source };
        std::fs::create_dir_all(pin_dir).map_err(io)?;
        let dir = File::open(pin_dir).map_err(io)?;
        match dir.try_lock() {
            Ok(()) => Ok(Self { path: pin_dir.to_path_buf(), dir }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let meta = dir.metadata().map_err(io)?;
                Err(match holder_pid(meta.dev(), meta.ino()) {
                    Some(pid) => LockError::HeldBy { path: pin_dir.to_path_buf(), pid },
                    None => LockError::HeldByUnknown { path: pin_dir.to_path_buf() },
                })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the locked directory is still the one at the path: someone
    /// may have removed the (empty) directory, e.g. `lb-control detach
    /// --force`, and a new one at the same path would be unlocked.
    pub fn is_current(&self) -> bool {
        match (self.dir.metadata(), std::fs::metadata(&self.path)) {
            (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
            _ => false,
        }
    }

    /// Locks the directory now at the path if the locked one was replaced
    /// (see [`PinDirLock::is_current`]). Returns whether it had to.
    pub fn renew(&mut self) -> Result<bool, LockError> {
        if self.is_current() {
            return Ok(false);
        }
        *self = Self::acquire(&self.path)?;
        Ok(true)
    }
}

/// The PID holding a `flock` on the file with this device and inode, from
/// `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 1234 00:1b:5678 0 EOF`; the
/// device is `major:minor` in hex).
pub fn holder_pid(dev: u64, ino: u64) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&table, dev, ino)
}

fn holder_in(table: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = (libc::major(dev), libc::minor(dev), ino);
    table.lines().find_map(|line| {
        // "N: FLOCK ADVISORY WRITE PID MAJOR:MINOR:INODE START END"; a
        // waiter's line has "->" after "N:", which shifts it out of shape.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = fields.get(5)?.split(':');
        let major = u32::from_str_radix(id.next()?, 16).ok()?;
        let minor = u32::from_str_radix(id.next()?, 16).ok()?;
        let inode = id.next()?.parse::<u64>().ok()?;
        ((major, minor, inode) == want).then(|| fields[4].parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_in_the_lock_table() {
        let dev = libc::makedev(0, 0x27);
        let table = "1: POSIX  ADVISORY  WRITE 99 00:27:63395 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 22929 00:27:63395 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 7 fe:00:63395 0 EOF\n";
        assert_eq!(holder_in(table, dev, 63395), Some(22929));
        assert_eq!(holder_in(table, dev, 63396), None);
        assert_eq!(holder_in(table, libc::makedev(0xfe, 0), 63395), Some(7));
    }

    #[test]
    fn a_second_lock_names_this_process() {
        let dir = std::env::temp_dir().join(format!("lb-lock-test-{}", std::process::id()));
        let first = PinDirLock::acquire(&dir).expect("first lock");
        // flock locks belong to the open file, so a second open conflicts
        // even within one process.
        match PinDirLock::acquire(&dir) {
            Err(LockError::HeldBy { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected HeldBy, got {other:?}"),
        }
        assert!(first.is_current());
        drop(first);
        PinDirLock::acquire(&dir).expect("free again once dropped");
        let _ = std::fs::remove_dir(&dir);
    }
}
