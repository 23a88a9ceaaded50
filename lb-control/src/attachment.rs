//! Is the balancer still attached? The daemon polls its pinned XDP links:
//! a link whose pin was removed (`lb-control detach --force`), that was
//! detached (`bpftool link detach`, the interface went away) or that runs
//! another program means the data plane no longer follows the daemon.
//!
//! The kernel reports an XDP link's interface only in the link's fdinfo
//! (`ifindex:`); aya's `LinkInfo` does not carry it, and an aya link does
//! not lend its descriptor, so the link is opened here from its pin.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    time::Duration,
};

use crate::dataplane::link_pin;

/// How often the daemon checks its links.
pub const CHECK_PERIOD: Duration = Duration::from_secs(1);

/// What the kernel says about a pinned XDP link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpLinkState {
    pub program_id: u32,
    /// 0 once the link was detached from its interface.
    pub ifindex: u32,
}

/// `BPF_OBJ_GET`'s part of `union bpf_attr` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    /// Explicit, so it is zero: the kernel refuses non-zero bytes past the
    /// fields it knows.
    _padding: u32,
}

const BPF_OBJ_GET: libc::c_long = 7;

/// Opens the link pinned at `pin`: `Ok(None)` if nothing is pinned there.
fn open_pin(pin: &Path) -> std::io::Result<Option<OwnedFd>> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let attr = ObjGetAttr { pathname: path.as_ptr() as u64, ..Default::default() };
    // SAFETY: BPF_OBJ_GET reads `attr` (whose path outlives the call) and
    // returns a new descriptor or -1; nothing else is touched.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjGetAttr, std::mem::size_of::<ObjGetAttr>())
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::NotFound { Ok(None) } else { Err(e) };
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// The state of the XDP link pinned at `pin`, `Ok(None)` if none is pinned.
pub fn xdp_link_state(pin: &Path) -> std::io::Result<Option<XdpLinkState>> {
    let Some(fd) = open_pin(pin)? else { return Ok(None) };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    parse_fdinfo(&info).map(Some).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is not an XDP link", pin.display()))
    })
}

fn parse_fdinfo(info: &str) -> Option<XdpLinkState> {
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim));
    if field("link_type")? != "xdp" {
        return None;
    }
    Some(XdpLinkState { program_id: field("prog_id")?.parse().ok()?, ifindex: field("ifindex")?.parse().ok()? })
}

/// Why the balancer's program `program_id` is not attached to `iface`
/// through its pinned link: `Ok(None)` if it is, `Ok(Some(reason))` if it
/// is not, `Err` if the kernel could not be asked (out of descriptors, …):
/// that is no evidence of a detach.
pub fn problem(pin_dir: &Path, iface: &str, program_id: u32) -> std::io::Result<Option<String>> {
    let pin = link_pin(pin_dir, iface);
    let Some(state) = xdp_link_state(&pin)? else {
        return Ok(Some(format!("{iface}: the XDP link's pin {} was removed", pin.display())));
    };
    if state.ifindex == 0 {
        return Ok(Some(format!("{iface}: the XDP link was detached from the interface")));
    }
    let ifindex = crate::netlink::interface_index(iface).map_err(std::io::Error::other)?;
    if state.ifindex != ifindex {
        return Ok(Some(format!("{iface}: the XDP link is on interface {} instead", state.ifindex)));
    }
    if state.program_id != program_id {
        return Ok(Some(format!(
            "{iface}: the XDP link runs program {}, not this daemon's {program_id}",
            state.program_id
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_xdp_links_fdinfo() {
        let info = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1057\nlink_type:\txdp\nlink_id:\t12\n\
                    prog_tag:\t0123456789abcdef\nprog_id:\t42\nifindex:\t3\n";
        assert_eq!(parse_fdinfo(info), Some(XdpLinkState { program_id: 42, ifindex: 3 }));
        assert_eq!(parse_fdinfo(&info.replace("ifindex:\t3", "ifindex:\t0")).map(|s| s.ifindex), Some(0));
        assert_eq!(parse_fdinfo(&info.replace("link_type:\txdp", "link_type:\ttcx")), None);
    }

    #[test]
    fn a_missing_pin_is_no_link() {
        let pin = Path::new("/sys/fs/bpf/lb-attachment-test-no-such-pin");
        assert!(matches!(xdp_link_state(pin), Ok(None)));
    }
}
