//! The neighbour table (ARP / NDP cache): reading an entry, and making the
//! kernel resolve one.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::RouteNetlinkMessage;
use tokio::time::Instant;

use super::rtnl::{kernel_error, timed, Rtnl};
use super::{Family, Mac, NetlinkError};

/// NUD states in which the kernel itself sends frames to the entry's MAC:
/// REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT.
const USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

/// The entry's destination address (NDA_DST).
pub(super) fn destination(neigh: &NeighbourMessage) -> Option<IpAddr> {
    neigh.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

/// The entry's MAC if its state is usable (see [`super::neighbour_mac`]).
pub(super) fn usable_mac(neigh: &NeighbourMessage) -> Option<Mac> {
    if u16::from(neigh.header.state) & USABLE == 0 {
        return None;
    }
    neigh.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::LinkLayerAddress(lladdr) => Mac::try_from(lladdr.as_slice()).ok(),
        _ => None,
    })
}

/// See [`super::neighbour_mac`].
pub(super) async fn neighbour_mac(rtnl: &Rtnl, addr: IpAddr, ifindex: u32) -> Result<Option<Mac>, NetlinkError> {
    const REQUEST: &str = "RTM_GETNEIGH (neighbour dump)";
    let mut msg = NeighbourMessage::default();
    msg.header.family = Family::of(addr).address_family();
    // Lets the kernel filter the dump by interface, which keeps the reply
    // small on hosts with big tables; entries are filtered again below in any
    // case, for kernels that ignore the filter.
    msg.attributes.push(NeighbourAttribute::IfIndex(ifindex));
    let messages = rtnl.dump(REQUEST, RouteNetlinkMessage::GetNeighbour(msg)).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(neigh) => Some(neigh),
            _ => None,
        })
        .find(|neigh| neigh.header.ifindex == ifindex && destination(neigh) == Some(addr))
        .and_then(usable_mac))
}

/// See [`super::resolve_neighbour`].
pub(super) async fn resolve(rtnl: &Rtnl, addr: IpAddr, ifindex: u32, timeout: Duration) -> Result<Mac, NetlinkError> {
    const RETRIGGER_EVERY: Duration = Duration::from_secs(1);
    const MAX_SLEEP: Duration = Duration::from_millis(50);

    if let Some(mac) = neighbour_mac(rtnl, addr, ifindex).await? {
        return Ok(mac);
    }
    let deadline = Instant::now() + timeout;
    trigger_resolution(rtnl, addr, ifindex).await?;
    let mut last_trigger = Instant::now();
    let mut sleep = Duration::from_millis(2);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(sleep.min(deadline - now)).await;
        sleep = (sleep * 2).min(MAX_SLEEP);
        if let Some(mac) = neighbour_mac(rtnl, addr, ifindex).await? {
            return Ok(mac);
        }
        // Re-triggering an INCOMPLETE entry is a no-op in the kernel; it only
        // matters once an earlier attempt has ended in FAILED.
        if last_trigger.elapsed() >= RETRIGGER_EVERY && Instant::now() < deadline {
            trigger_resolution(rtnl, addr, ifindex).await?;
            last_trigger = Instant::now();
        }
    }
    Err(NetlinkError::NeighbourUnresolved { addr, ifindex, timeout })
}

/// Starts resolution of `addr` on `ifindex`; see [`super::resolve_neighbour`].
async fn trigger_resolution(rtnl: &Rtnl, addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    let by_netlink = match trigger_by_ntf_use(rtnl, addr, ifindex).await {
        Ok(()) => return Ok(()),
        // A missing interface is not worth a fallback attempt.
        Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENODEV => {
            return Err(NetlinkError::InterfaceIndexNotFound { ifindex })
        }
        Err(e) => e,
    };
    let ifname = rtnl.link_name(ifindex).await?;
    trigger_by_udp(addr, ifindex, &ifname).map_err(|by_udp| NetlinkError::ResolutionTrigger {
        addr,
        ifindex,
        detail: format!("{by_netlink}; UDP fallback: {by_udp}"),
    })
}

/// RTM_NEWNEIGH with NTF_USE (what the kernel does when it has a packet to
/// send): creates the entry if needed and starts probing it, unless it is
/// already valid. NLM_F_REPLACE rather than the default NLM_F_EXCL, so an
/// existing (FAILED) entry is probed again instead of refused; with NTF_USE
/// the kernel changes no field of it.
async fn trigger_by_ntf_use(rtnl: &Rtnl, addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    const REQUEST: &str = "RTM_NEWNEIGH (NTF_USE resolution trigger)";
    let add =
        rtnl.handle().neighbours().add(ifindex, addr).state(NeighbourState::None).flags(NeighbourFlags::Use).replace();
    timed(REQUEST, add.execute()).await?.map_err(|e| kernel_error(REQUEST, e))
}

/// Fallback trigger: an empty UDP datagram to the discard port, sent from a
/// socket bound to the interface so that it cannot leave through another one;
/// the kernel has to resolve the next hop to send it.
fn trigger_by_udp(addr: IpAddr, ifindex: u32, ifname: &str) -> Result<(), NetlinkError> {
    const REQUEST: &str = "UDP resolution trigger";
    let io_err = |source| NetlinkError::Io { request: REQUEST, source };
    let (bind, target): (SocketAddr, SocketAddr) = match addr {
        IpAddr::V4(a) => (SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(), SocketAddrV4::new(a, 9).into()),
        IpAddr::V6(a) => {
            // A link-local address only means something with its zone.
            let scope = if a.is_unicast_link_local() { ifindex } else { 0 };
            (SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into(), SocketAddrV6::new(a, 9, 0, scope).into())
        }
    };
    let socket = UdpSocket::bind(bind).map_err(io_err)?;
    // SAFETY: the option value is a valid buffer of the given length for the
    // duration of the call, and the descriptor is owned by `socket`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            ifname.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    socket.send_to(&[], target).map_err(io_err)?;
    Ok(())
}
