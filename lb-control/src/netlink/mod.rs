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
//! The transport is the `rtnetlink` crate (`rtnl`); the choice of the next
//! hop is `route`, neighbour resolution `neighbour`, and `watch` follows
//! changes through multicast events. The functions below are synchronous
//! (callable from async code too): each opens its own short-lived connection
//! on a small runtime, since these lookups happen at start-up and on
//! reconfiguration. A netlink socket belongs to the network namespace of the
//! calling *thread* at the moment it is opened, so a thread that entered
//! another namespace with `setns()` sees that namespace (the integration
//! tests rely on this).

mod neighbour;
mod route;
mod rtnl;
mod watch;

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_route::AddressFamily;

pub use watch::{LinkMacs, MacWatch};

use rtnl::Rtnl;

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
    NeighbourUnresolved { addr: IpAddr, ifindex: u32, timeout: Duration },
    /// Resolution of a neighbour could not even be started.
    #[error(
        "could not trigger neighbour resolution of {addr} on interface index \
         {ifindex}: {detail}"
    )]
    ResolutionTrigger { addr: IpAddr, ifindex: u32, detail: String },
    /// The kernel answered a request with an error code.
    #[error(
        "kernel rejected the {request} request: errno {errno} ({})",
        io::Error::from_raw_os_error(*.errno)
    )]
    Kernel { request: &'static str, errno: i32 },
    /// Creating, using or reading the netlink socket failed (including a
    /// reply that never came, or a connection that closed).
    #[error("netlink socket error during {request}: {source}")]
    Io {
        request: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel's reply was not the message asked for (netlink-proto
    /// skips messages it cannot parse, so a missing answer ends up here).
    #[error("unexpected reply of the kernel to {request}: {detail}")]
    Decode { request: &'static str, detail: String },
}

fn show_gateway(gateway: &Option<IpAddr>) -> String {
    match gateway {
        Some(addr) => addr.to_string(),
        None => "none, on-link".to_string(),
    }
}

/// Runs `query` on a fresh connection driven by a single-threaded runtime
/// of its own, on a thread of its own: a runtime cannot start inside another
/// (the caller may be async code), and a new thread starts in its creator's
/// network namespace, so the socket is in the caller's.
fn blocking<T: Send>(query: impl AsyncFnOnce(&Rtnl) -> Result<T, NetlinkError> + Send) -> Result<T, NetlinkError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| NetlinkError::Io { request: "starting the netlink runtime", source })?;
                runtime.block_on(async {
                    let rtnl = Rtnl::connect()?;
                    query(&rtnl).await
                })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Index of the interface called `name` (RTM_GETLINK by IFLA_IFNAME).
///
/// The XDP program is attached, and its frames leave, by index; names are for
/// humans and configuration files.
pub fn interface_index(name: &str) -> Result<u32, NetlinkError> {
    blocking(async |rtnl| Ok(rtnl.link_by_name(name).await?.header.index))
}

/// MAC address of the interface called `name` (RTM_GETLINK, IFLA_ADDRESS):
/// the Ethernet source address of every frame the balancer sends out of it.
pub fn interface_mac(name: &str) -> Result<Mac, NetlinkError> {
    blocking(async |rtnl| rtnl.interface_mac(name).await)
}

/// The main table's default route (destination prefix length 0) for
/// `family`, or `None` if there is none.
///
/// With several default routes the one with the lowest metric wins, as in the
/// kernel; routes that are not plain unicast (blackhole, unreachable, ...),
/// dead next hops and source-specific routes are ignored. For a multipath
/// route the first live next hop is returned.
pub fn default_route(family: Family) -> Result<Option<Route>, NetlinkError> {
    blocking(async |rtnl| Ok(route::default_routes(rtnl, family).await?.first().map(|c| c.route)))
}

/// The route the kernel would use to reach `dest` (RTM_GETROUTE with RTA_DST,
/// i.e. `ip route get DEST`), policy routing included; `None` if `dest` is
/// unreachable. Useful to find the next hop towards the backends.
///
/// For one of the host's own addresses this is the local route (through the
/// loopback interface, no gateway).
pub fn route_to(dest: IpAddr) -> Result<Option<Route>, NetlinkError> {
    blocking(async |rtnl| route::route_to(rtnl, dest).await)
}

/// The MAC address the kernel's neighbour table (ARP / NDP cache) holds for
/// `addr` on interface `ifindex`, if the entry is usable.
///
/// Usable means REACHABLE, STALE, DELAY, PROBE, PERMANENT or NOARP: the kernel
/// itself would send frames to that MAC. INCOMPLETE (resolution in progress),
/// FAILED (nobody answered) and missing entries give `None`. This only reads
/// the table; see [`resolve_neighbour`] to fill it.
pub fn neighbour_mac(addr: IpAddr, ifindex: u32) -> Result<Option<Mac>, NetlinkError> {
    blocking(async |rtnl| neighbour::neighbour_mac(rtnl, addr, ifindex).await)
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
pub fn resolve_neighbour(addr: IpAddr, ifindex: u32, timeout: Duration) -> Result<Mac, NetlinkError> {
    blocking(async |rtnl| neighbour::resolve(rtnl, addr, ifindex, timeout).await)
}

/// The default route's gateway for `family` and its MAC address: the
/// Ethernet destination of the frames the balancer sends out of `ifname`.
///
/// The default route (lowest metric) must leave through `ifname` and must
/// have a gateway; otherwise the error says which of the two is wrong. The
/// gateway is resolved with [`resolve_neighbour`] within `timeout`.
pub fn gateway_mac(ifname: &str, family: Family, timeout: Duration) -> Result<(IpAddr, Mac), NetlinkError> {
    blocking(async |rtnl| route::gateway_mac(rtnl, ifname, family, timeout).await)
}

/// The next hop of the frames the balancer sends out of `ifname` and its
/// MAC: the IPv4 default gateway, or else the IPv6 one. The error is
/// IPv4's, the family most hosts route by.
pub fn next_hop_mac(ifname: &str, timeout: Duration) -> Result<(IpAddr, Mac), NetlinkError> {
    blocking(async |rtnl| route::next_hop_mac(rtnl, ifname, timeout).await)
}
