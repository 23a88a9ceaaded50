//! MAC addresses the XDP data plane needs, learned from the kernel over
//! rtnetlink.
//!
//! Why this exists: the XDP program encapsulates packets and sends them back
//! out itself (`XDP_TX`), which bypasses the kernel's neighbour subsystem.
//! Every frame it emits must therefore already carry an Ethernet source (the
//! balancer interface's own MAC) and destination (the next hop's MAC, usually
//! the default gateway), and only the kernel knows those. This module asks the
//! kernel through the `NETLINK_ROUTE` protocol, the same interface `ip link`,
//! `ip route` and `ip neigh` use, so the answers match what the host itself
//! would do.
//!
//! Everything here is synchronous and opens one short-lived netlink socket per
//! call: these lookups happen at start-up and on rare reconfiguration, so a
//! blocking request/response is simpler than an async connection and costs
//! nothing that matters. A netlink socket belongs to the network namespace of
//! the calling *thread* at the moment it is opened, so a thread that entered
//! another namespace with `setns()` sees that namespace (the integration tests
//! rely on this).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags,
    RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NetlinkAddr};

/// An Ethernet (EUI-48) hardware address, in wire order.
pub use lb_common::Mac;

/// IP address family of a route lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family an address belongs to.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn address_family(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Where the kernel sends packets for a destination: the next-hop router, if
/// any, and the outgoing interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// The next-hop router; `None` for an on-link route, where the
    /// destination itself is the next hop.
    pub gateway: Option<IpAddr>,
    /// Index of the outgoing interface.
    pub ifindex: u32,
}

/// Everything that can go wrong while asking the kernel; each variant names
/// the object that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// No interface of that name exists in this network namespace.
    #[error("network interface {name:?} not found")]
    InterfaceNotFound { name: String },
    /// No interface with that index exists in this network namespace.
    #[error("network interface with index {ifindex} not found")]
    InterfaceIndexNotFound { ifindex: u32 },
    /// The interface exists but has no 6-byte hardware address (a tunnel or
    /// other non-Ethernet device), so frames cannot be built for it.
    #[error(
        "network interface {name:?} has no Ethernet MAC address \
         (IFLA_ADDRESS has {len} bytes, expected 6)"
    )]
    NoMacAddress { name: String, len: usize },
    /// The main routing table has no usable default route for the family.
    #[error("no {family} default route in the main routing table")]
    NoDefaultRoute { family: Family },
    /// The default route is on-link (no gateway), so there is no single next
    /// hop whose MAC could be used.
    #[error(
        "the {family} default route has no gateway (it is on-link via \
         interface index {ifindex}), so there is no next hop to resolve"
    )]
    NoGateway { family: Family, ifindex: u32 },
    /// The default route leaves through a different interface than the one
    /// the balancer transmits on, so its gateway is not a valid next hop for
    /// frames sent with `XDP_TX` on that interface.
    #[error(
        "the {family} default route (gateway {}) goes out through interface \
         index {route_ifindex}, not through {ifname:?} (index {ifindex})",
        show_gateway(.gateway)
    )]
    GatewayOnOtherInterface {
        family: Family,
        gateway: Option<IpAddr>,
        ifname: String,
        ifindex: u32,
        route_ifindex: u32,
    },
    /// Neighbour resolution (ARP / IPv6 neighbour discovery) did not produce a
    /// usable entry before the deadline: the neighbour is down, absent, or
    /// not on that link.
    #[error(
        "neighbour {addr} on interface index {ifindex} was not resolved to a \
         MAC address within {timeout:?}"
    )]
    NeighbourUnresolved {
        addr: IpAddr,
        ifindex: u32,
        timeout: Duration,
    },
    /// Resolution of a neighbour could not even be started.
    #[error(
        "could not trigger neighbour resolution of {addr} on interface index \
         {ifindex}: {detail}"
    )]
    ResolutionTrigger {
        addr: IpAddr,
        ifindex: u32,
        detail: String,
    },
    /// The kernel answered a request with an error code.
    #[error(
        "kernel rejected the {request} request: errno {errno} ({})",
        io::Error::from_raw_os_error(*.errno)
    )]
    Kernel { request: &'static str, errno: i32 },
    /// Creating, using or reading the netlink socket failed (including a
    /// reply that never came).
    #[error("netlink socket error during {request}: {source}")]
    Io {
        request: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel's reply could not be parsed.
    #[error("could not decode the kernel's reply to {request}: {detail}")]
    Decode {
        request: &'static str,
        detail: String,
    },
}

fn show_gateway(gateway: &Option<IpAddr>) -> String {
    match gateway {
        Some(addr) => addr.to_string(),
        None => "none, on-link".to_string(),
    }
}

// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Index of the interface called `name` (RTM_GETLINK by IFLA_IFNAME).
///
/// The XDP program is attached, and its frames leave, by index; names are for
/// humans and configuration files.
pub fn interface_index(name: &str) -> Result<u32, NetlinkError> {
    Ok(get_link_by_name(name)?.header.index)
}

/// MAC address of the interface called `name` (RTM_GETLINK, IFLA_ADDRESS):
/// the Ethernet source address of every frame the balancer sends out of it.
pub fn interface_mac(name: &str) -> Result<Mac, NetlinkError> {
    let link = get_link_by_name(name)?;
    let addr = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(addr) => Some(addr.as_slice()),
        _ => None,
    });
    match addr {
        Some(bytes) if bytes.len() == 6 => Ok(bytes.try_into().expect("length checked")),
        other => Err(NetlinkError::NoMacAddress {
            name: name.to_string(),
            len: other.map_or(0, <[u8]>::len),
        }),
    }
}

/// The main table's default route (destination prefix length 0) for
/// `family`, or `None` if there is none.
///
/// With several default routes the one with the lowest metric wins, as in the
/// kernel; routes that are not plain unicast (blackhole, unreachable, ...),
/// dead next hops and source-specific routes are ignored. For a multipath
/// route the first live next hop is returned.
pub fn default_route(family: Family) -> Result<Option<Route>, NetlinkError> {
    Ok(default_routes(family)?.first().map(|c| c.route))
}

/// The route the kernel would use to reach `dest` (RTM_GETROUTE with RTA_DST,
/// i.e. `ip route get DEST`), policy routing included; `None` if `dest` is
/// unreachable. Useful to find the next hop towards the backends.
///
/// For one of the host's own addresses this is the local route (through the
/// loopback interface, no gateway).
pub fn route_to(dest: IpAddr) -> Result<Option<Route>, NetlinkError> {
    const REQUEST: &str = "RTM_GETROUTE (route lookup)";
    let family = Family::of(dest);
    let mut msg = RouteMessage::default();
    msg.header.address_family = family.address_family();
    msg.header.destination_prefix_length = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dest)));

    let mut reply =
        match RtnlSocket::open(REQUEST)?.request(REQUEST, RouteNetlinkMessage::GetRoute(msg), 0) {
            Ok(reply) => reply,
            // "Network is unreachable" / "No route to host" is an answer, not a
            // failure: there is no route.
            Err(NetlinkError::Kernel { errno, .. })
                if errno == libc::ENETUNREACH || errno == libc::EHOSTUNREACH =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
    let route = std::mem::take(&mut reply.messages)
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(route) => Some(route),
            _ => None,
        });
    let Some(route) = route else {
        return Err(reply.undecodable_or(REQUEST, "no route in the reply"));
    };
    if matches!(
        route.header.kind,
        RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit | RouteType::Throw
    ) {
        return Ok(None);
    }
    Ok(next_hops(&route).into_iter().next())
}

/// The MAC address the kernel's neighbour table (ARP / NDP cache) holds for
/// `addr` on interface `ifindex`, if the entry is usable.
///
/// Usable means REACHABLE, STALE, DELAY, PROBE, PERMANENT or NOARP: the kernel
/// itself would send frames to that MAC. INCOMPLETE (resolution in progress),
/// FAILED (nobody answered) and missing entries give `None`. This only reads
/// the table; see [`resolve_neighbour`] to fill it.
pub fn neighbour_mac(addr: IpAddr, ifindex: u32) -> Result<Option<Mac>, NetlinkError> {
    const REQUEST: &str = "RTM_GETNEIGH (neighbour dump)";
    const USABLE: u16 = 0x02 /* REACHABLE */ | 0x04 /* STALE */ | 0x08 /* DELAY */
        | 0x10 /* PROBE */ | 0x40 /* NOARP */ | 0x80 /* PERMANENT */;

    let mut msg = NeighbourMessage::default();
    msg.header.family = Family::of(addr).address_family();
    // Lets the kernel filter the dump by interface, which keeps the reply
    // small on hosts with big tables; entries are filtered again below in any
    // case, for kernels that ignore the filter.
    msg.attributes.push(NeighbourAttribute::IfIndex(ifindex));

    let reply = RtnlSocket::open(REQUEST)?.dump(REQUEST, RouteNetlinkMessage::GetNeighbour(msg))?;
    for message in &reply.messages {
        let RouteNetlinkMessage::NewNeighbour(neigh) = message else {
            continue;
        };
        if neigh.header.ifindex != ifindex {
            continue;
        }
        let destination = neigh.attributes.iter().find_map(|attr| match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        if destination != Some(addr) {
            continue;
        }
        if u16::from(neigh.header.state) & USABLE == 0 {
            return Ok(None);
        }
        let lladdr = neigh.attributes.iter().find_map(|attr| match attr {
            NeighbourAttribute::LinkLayerAddress(lladdr) => Some(lladdr.as_slice()),
            _ => None,
        });
        return Ok(lladdr.and_then(|l| Mac::try_from(l).ok()));
    }
    match reply.undecodable {
        // An entry we could not parse might have been the one asked for.
        Some(detail) => Err(NetlinkError::Decode {
            request: REQUEST,
            detail,
        }),
        None => Ok(None),
    }
}

/// The MAC address of `addr` on interface `ifindex`, asking the kernel to
/// resolve it (ARP / neighbour solicitation) if its table has no usable entry,
/// and waiting at most `timeout` for the answer.
///
/// Resolution is started with an RTM_NEWNEIGH request carrying NTF_USE, which
/// makes the kernel probe exactly as if it had a packet to send but sends no
/// packet of ours. If the kernel refuses it (no CAP_NET_ADMIN), a zero-length
/// UDP datagram to port 9 (discard) from a socket bound to the interface is
/// used instead. A FAILED entry is re-triggered about once a second while
/// waiting.
///
/// The kernel sends IPv6 solicitations from the interface's link-local
/// address, so just after the link comes up, while that address is still
/// tentative (duplicate address detection), the first answer can take about
/// two seconds: choose `timeout` accordingly at start-up.
pub fn resolve_neighbour(
    addr: IpAddr,
    ifindex: u32,
    timeout: Duration,
) -> Result<Mac, NetlinkError> {
    const RETRIGGER_EVERY: Duration = Duration::from_secs(1);
    const MAX_SLEEP: Duration = Duration::from_millis(50);

    if let Some(mac) = neighbour_mac(addr, ifindex)? {
        return Ok(mac);
    }
    let deadline = Instant::now() + timeout;
    trigger_resolution(addr, ifindex)?;
    let mut last_trigger = Instant::now();
    let mut sleep = Duration::from_millis(2);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(sleep.min(deadline - now));
        sleep = (sleep * 2).min(MAX_SLEEP);
        if let Some(mac) = neighbour_mac(addr, ifindex)? {
            return Ok(mac);
        }
        // Re-triggering an INCOMPLETE entry is a no-op in the kernel; it only
        // matters once an earlier attempt has ended in FAILED.
        if last_trigger.elapsed() >= RETRIGGER_EVERY && Instant::now() < deadline {
            trigger_resolution(addr, ifindex)?;
            last_trigger = Instant::now();
        }
    }
    Err(NetlinkError::NeighbourUnresolved {
        addr,
        ifindex,
        timeout,
    })
}

/// The default route's gateway for `family` and its MAC address: the
/// Ethernet destination of the frames the balancer sends out of `ifname`.
///
/// The default route (lowest metric) must leave through `ifname` and must
/// have a gateway; otherwise the error says which of the two is wrong. The
/// gateway is resolved with [`resolve_neighbour`] within `timeout`.
pub fn gateway_mac(
    ifname: &str,
    family: Family,
    timeout: Duration,
) -> Result<(IpAddr, Mac), NetlinkError> {
    let ifindex = interface_index(ifname)?;
    let candidates = default_routes(family)?;
    let Some(best) = candidates.first() else {
        return Err(NetlinkError::NoDefaultRoute { family });
    };
    // Among equal-cost next hops of the best default route, prefer one on the
    // balancer's interface.
    let chosen = candidates
        .iter()
        .take_while(|c| c.metric == best.metric)
        .find(|c| c.route.ifindex == ifindex)
        .unwrap_or(best)
        .route;
    if chosen.ifindex != ifindex {
        return Err(NetlinkError::GatewayOnOtherInterface {
            family,
            gateway: chosen.gateway,
            ifname: ifname.to_string(),
            ifindex,
            route_ifindex: chosen.ifindex,
        });
    }
    let Some(gateway) = chosen.gateway else {
        return Err(NetlinkError::NoGateway { family, ifindex });
    };
    let mac = resolve_neighbour(gateway, ifindex, timeout)?;
    Ok((gateway, mac))
}

// ---------------------------------------------------------------------------
// Requests.

fn get_link_by_name(name: &str) -> Result<LinkMessage, NetlinkError> {
    const REQUEST: &str = "RTM_GETLINK (link by name)";
    // A name the kernel could never have given an interface is simply not
    // found (the kernel would answer EINVAL/ERANGE instead, less helpfully).
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['\0', '/']) {
        return Err(NetlinkError::InterfaceNotFound {
            name: name.to_string(),
        });
    }
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    match get_link(REQUEST, msg) {
        Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENODEV => {
            Err(NetlinkError::InterfaceNotFound {
                name: name.to_string(),
            })
        }
        other => other,
    }
}

fn interface_name(ifindex: u32) -> Result<String, NetlinkError> {
    const REQUEST: &str = "RTM_GETLINK (link by index)";
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let link = match get_link(REQUEST, msg) {
        Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENODEV => {
            return Err(NetlinkError::InterfaceIndexNotFound { ifindex })
        }
        other => other?,
    };
    link.attributes
        .into_iter()
        .find_map(|attr| match attr {
            LinkAttribute::IfName(name) => Some(name),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::Decode {
            request: REQUEST,
            detail: format!("link {ifindex} has no IFLA_IFNAME"),
        })
}

fn get_link(request: &'static str, msg: LinkMessage) -> Result<LinkMessage, NetlinkError> {
    let mut reply =
        RtnlSocket::open(request)?.request(request, RouteNetlinkMessage::GetLink(msg), 0)?;
    let mut messages = std::mem::take(&mut reply.messages).into_iter();
    loop {
        match messages.next() {
            Some(RouteNetlinkMessage::NewLink(link)) => return Ok(link),
            Some(_) => continue,
            None => return Err(reply.undecodable_or(request, "no link in the reply")),
        }
    }
}

/// A default-route next hop with the metric of its route.
struct Candidate {
    route: Route,
    metric: u32,
}

/// All usable default-route next hops of the main table, best metric first
/// (stable: dump order among equals).
fn default_routes(family: Family) -> Result<Vec<Candidate>, NetlinkError> {
    const REQUEST: &str = "RTM_GETROUTE (route dump)";
    let mut msg = RouteMessage::default();
    msg.header.address_family = family.address_family();
    let reply = RtnlSocket::open(REQUEST)?.dump(REQUEST, RouteNetlinkMessage::GetRoute(msg))?;

    let mut candidates = Vec::new();
    for message in &reply.messages {
        let RouteNetlinkMessage::NewRoute(route) = message else {
            continue;
        };
        let header = &route.header;
        let table = route
            .attributes
            .iter()
            .find_map(|attr| match attr {
                RouteAttribute::Table(table) => Some(*table),
                _ => None,
            })
            .unwrap_or(u32::from(header.table));
        if header.address_family != family.address_family()
            || table != u32::from(RouteHeader::RT_TABLE_MAIN)
            || header.destination_prefix_length != 0
            || header.source_prefix_length != 0
            || header.kind != RouteType::Unicast
            || header
                .flags
                .intersects(RouteFlags::Dead | RouteFlags::Cloned)
        {
            continue;
        }
        let metric = route
            .attributes
            .iter()
            .find_map(|attr| match attr {
                RouteAttribute::Priority(metric) => Some(*metric),
                _ => None,
            })
            .unwrap_or(0);
        candidates.extend(
            next_hops(route)
                .into_iter()
                .map(|route| Candidate { route, metric }),
        );
    }
    if candidates.is_empty() {
        if let Some(detail) = reply.undecodable {
            // A route we could not parse might have been the default route.
            return Err(NetlinkError::Decode {
                request: REQUEST,
                detail,
            });
        }
    }
    candidates.sort_by_key(|c| c.metric);
    Ok(candidates)
}

/// The live next hops of a route message: the single gateway/oif pair, or
/// each member of an RTA_MULTIPATH list.
fn next_hops(route: &RouteMessage) -> Vec<Route> {
    let multipath = route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::MultiPath(hops) => Some(hops),
        _ => None,
    });
    match multipath {
        Some(hops) => hops
            .iter()
            .filter(|hop| !hop.flags.contains(RouteNextHopFlags::Dead))
            .filter(|hop| hop.interface_index != 0)
            .map(|hop| Route {
                gateway: gateway_of(&hop.attributes),
                ifindex: hop.interface_index,
            })
            .collect(),
        None => {
            let oif = route.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Oif(oif) => Some(*oif),
                _ => None,
            });
            match oif {
                Some(ifindex) if ifindex != 0 => vec![Route {
                    gateway: gateway_of(&route.attributes),
                    ifindex,
                }],
                _ => Vec::new(),
            }
        }
    }
}

/// RTA_GATEWAY, or RTA_VIA (an IPv6 next hop for an IPv4 route, RFC 5549).
fn gateway_of(attributes: &[RouteAttribute]) -> Option<IpAddr> {
    attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Gateway(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Gateway(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        RouteAttribute::Via(RouteVia::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Via(RouteVia::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

/// Starts resolution of `addr` on `ifindex`; see [`resolve_neighbour`].
fn trigger_resolution(addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    let by_netlink = match trigger_by_ntf_use(addr, ifindex) {
        Ok(()) => return Ok(()),
        // A missing interface is not worth a fallback attempt.
        Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENODEV => {
            return Err(NetlinkError::InterfaceIndexNotFound { ifindex })
        }
        Err(e) => e,
    };
    trigger_by_udp(addr, ifindex).map_err(|by_udp| NetlinkError::ResolutionTrigger {
        addr,
        ifindex,
        detail: format!("{by_netlink}; UDP fallback: {by_udp}"),
    })
}

/// RTM_NEWNEIGH with NTF_USE (what the kernel does when it has a packet to
/// send): creates the entry if needed and starts probing it, unless it is
/// already valid.
fn trigger_by_ntf_use(addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    const REQUEST: &str = "RTM_NEWNEIGH (NTF_USE resolution trigger)";
    let mut msg = NeighbourMessage::default();
    msg.header.family = Family::of(addr).address_family();
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::None;
    msg.header.flags = NeighbourFlags::Use;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            addr,
        )));
    RtnlSocket::open(REQUEST)?.request(
        REQUEST,
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_ACK | NLM_F_CREATE,
    )?;
    Ok(())
}

/// Fallback trigger: an empty UDP datagram to the discard port, sent from a
/// socket bound to the interface so that it cannot leave through another one;
/// the kernel has to resolve the next hop to send it.
fn trigger_by_udp(addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    const REQUEST: &str = "UDP resolution trigger";
    let ifname = interface_name(ifindex)?;
    let io_err = |source| NetlinkError::Io {
        request: REQUEST,
        source,
    };
    let (bind, target): (SocketAddr, SocketAddr) = match addr {
        IpAddr::V4(a) => (
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddrV4::new(a, 9).into(),
        ),
        IpAddr::V6(a) => {
            // A link-local address only means something with its zone.
            let scope = if a.is_unicast_link_local() {
                ifindex
            } else {
                0
            };
            (
                SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into(),
                SocketAddrV6::new(a, 9, 0, scope).into(),
            )
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

// ---------------------------------------------------------------------------
// Synchronous rtnetlink transport.

/// How long to wait for any single reply datagram before giving up: the
/// kernel answers rtnetlink requests at once, so silence means trouble, and a
/// control plane must not hang on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Dumps interrupted by concurrent table changes (NLM_F_DUMP_INTR) are
/// retried this many times before the last, possibly inconsistent, one is
/// used anyway.
const DUMP_ATTEMPTS: usize = 3;

struct RtnlSocket {
    socket: Socket,
    sequence: u32,
}

/// The decoded messages of one reply.
struct Reply {
    messages: Vec<RouteNetlinkMessage>,
    /// The first message of the reply that could not be parsed, if any: dumps
    /// skip such messages (one odd route must not hide the others), callers
    /// report it when they found nothing.
    undecodable: Option<String>,
    interrupted: bool,
}

impl Reply {
    fn undecodable_or(&self, request: &'static str, otherwise: &str) -> NetlinkError {
        NetlinkError::Decode {
            request,
            detail: self
                .undecodable
                .clone()
                .unwrap_or_else(|| otherwise.to_string()),
        }
    }
}

impl RtnlSocket {
    fn open(request: &'static str) -> Result<Self, NetlinkError> {
        let io_err = |source| NetlinkError::Io { request, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err)?;
        socket.bind_auto().map_err(io_err)?;
        // Connected to the kernel (port 0): only its replies are received.
        socket.connect(&NetlinkAddr::new(0, 0)).map_err(io_err)?;
        let timeout = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: the option value points to a live timeval of the given size,
        // and the descriptor is owned by `socket`.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        Ok(RtnlSocket {
            socket,
            sequence: 0,
        })
    }

    /// A dump request, retried if the kernel reports it was interrupted.
    fn dump(
        &mut self,
        request: &'static str,
        message: RouteNetlinkMessage,
    ) -> Result<Reply, NetlinkError> {
        let mut attempt = 1;
        loop {
            let reply = self.request(request, message.clone(), NLM_F_DUMP)?;
            if !reply.interrupted || attempt == DUMP_ATTEMPTS {
                return Ok(reply);
            }
            attempt += 1;
        }
    }

    /// Sends one request and collects its reply: every message up to
    /// NLMSG_DONE for a dump, up to the acknowledgement with NLM_F_ACK, or the
    /// single answer otherwise. A kernel error becomes [`NetlinkError::Kernel`].
    fn request(
        &mut self,
        request: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Reply, NetlinkError> {
        let io_err = |source: io::Error| NetlinkError::Io {
            request,
            source: if source.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply from the kernel within {REPLY_TIMEOUT:?}"),
                )
            } else {
                source
            },
        };
        let decode = |detail: String| NetlinkError::Decode { request, detail };

        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io_err)?;

        let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let wants_ack = flags & NLM_F_ACK != 0;
        let mut reply = Reply {
            messages: Vec::new(),
            undecodable: None,
            interrupted: false,
        };
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(io_err)?;
            let mut offset = 0;
            while offset < datagram.len() {
                let frame = NetlinkBuffer::new_checked(&datagram[offset..])
                    .map_err(|e| decode(e.to_string()))?;
                let length = frame.length() as usize;
                let (kind, msg_flags, sequence) =
                    (frame.message_type(), frame.flags(), frame.sequence_number());
                let bytes = &datagram[offset..offset + length];
                offset += (length + 3) & !3;
                if sequence != self.sequence {
                    continue; // Not an answer to this request.
                }
                if msg_flags & NLM_F_DUMP_INTR != 0 {
                    reply.interrupted = true;
                }
                match kind {
                    NLMSG_NOOP => continue,
                    NLMSG_OVERRUN => return Err(decode("NLMSG_OVERRUN: data lost".into())),
                    NLMSG_DONE => {
                        // A dump can end with an error code after NLMSG_DONE.
                        let code = bytes
                            .get(16..20)
                            .map_or(0, |c| i32::from_ne_bytes(c.try_into().expect("4 bytes")));
                        if code < 0 {
                            return Err(NetlinkError::Kernel {
                                request,
                                errno: -code,
                            });
                        }
                        return Ok(reply);
                    }
                    NLMSG_ERROR => {
                        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                            .map_err(|e| decode(e.to_string()))?;
                        let NetlinkPayload::Error(error) = parsed.payload else {
                            return Err(decode("malformed NLMSG_ERROR".into()));
                        };
                        return match error.code {
                            None => Ok(reply), // The acknowledgement.
                            Some(code) => Err(NetlinkError::Kernel {
                                request,
                                errno: code.get().abs(),
                            }),
                        };
                    }
                    _ => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                        Ok(parsed) => {
                            if let NetlinkPayload::InnerMessage(inner) = parsed.payload {
                                reply.messages.push(inner);
                            }
                            if !is_dump && !wants_ack {
                                return Ok(reply);
                            }
                        }
                        Err(e) if is_dump => {
                            reply.undecodable.get_or_insert_with(|| e.to_string());
                        }
                        Err(e) => return Err(decode(e.to_string())),
                    },
                }
            }
        }
    }
}
