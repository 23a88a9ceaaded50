//! Which next hop the balancer's frames go to: the main table's default
//! route (lowest metric, preferring a next hop on the balancer's interface),
//! its gateway, and that gateway's MAC.

use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags, RouteType, RouteVia,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::rtnl::{first, Rtnl};
use super::{neighbour, Family, Mac, NetlinkError, Route};

/// A default-route next hop with the metric of its route.
pub(super) struct Candidate {
    pub(super) route: Route,
    pub(super) metric: u32,
}

/// All usable default-route next hops of the main table, best metric first
/// (stable: dump order among equals).
pub(super) async fn default_routes(rtnl: &Rtnl, family: Family) -> Result<Vec<Candidate>, NetlinkError> {
    const REQUEST: &str = "RTM_GETROUTE (route dump)";
    let mut msg = RouteMessage::default();
    msg.header.address_family = family.address_family();
    let messages = rtnl.dump(REQUEST, RouteNetlinkMessage::GetRoute(msg)).await?;

    let mut candidates = Vec::new();
    for message in &messages {
        let RouteNetlinkMessage::NewRoute(route) = message else {
            continue;
        };
        let header = &route.header;
        if header.address_family != family.address_family()
            || !is_main_default(route)
            || header.kind != RouteType::Unicast
            || header.flags.intersects(RouteFlags::Dead | RouteFlags::Cloned)
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
        candidates.extend(next_hops(route).into_iter().map(|route| Candidate { route, metric }));
    }
    candidates.sort_by_key(|c| c.metric);
    Ok(candidates)
}

/// Whether `route` is a default route (prefix length 0, not
/// source-specific) of the main table: the routes the balancer follows.
pub(super) fn is_main_default(route: &RouteMessage) -> bool {
    let table = route
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    table == u32::from(RouteHeader::RT_TABLE_MAIN)
        && route.header.destination_prefix_length == 0
        && route.header.source_prefix_length == 0
}

/// See [`super::route_to`].
pub(super) async fn route_to(rtnl: &Rtnl, dest: IpAddr) -> Result<Option<Route>, NetlinkError> {
    const REQUEST: &str = "RTM_GETROUTE (route lookup)";
    let family = Family::of(dest);
    let mut msg = RouteMessage::default();
    msg.header.address_family = family.address_family();
    msg.header.destination_prefix_length = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(dest)));
    let route = match first(REQUEST, rtnl.handle().route().get(msg).execute()).await {
        Ok(route) => route,
        // "Network is unreachable" / "No route to host" is an answer, not a
        // failure: there is no route.
        Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENETUNREACH || errno == libc::EHOSTUNREACH => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    if matches!(
        route.header.kind,
        RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit | RouteType::Throw
    ) {
        return Ok(None);
    }
    Ok(next_hops(&route).into_iter().next())
}

/// See [`super::gateway_mac`].
pub(super) async fn gateway_mac(
    rtnl: &Rtnl,
    ifname: &str,
    family: Family,
    timeout: Duration,
) -> Result<(IpAddr, Mac), NetlinkError> {
    let ifindex = rtnl.link_by_name(ifname).await?.header.index;
    let candidates = default_routes(rtnl, family).await?;
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
    let mac = neighbour::resolve(rtnl, gateway, ifindex, timeout).await?;
    Ok((gateway, mac))
}

/// See [`super::next_hop_mac`].
pub(super) async fn next_hop_mac(rtnl: &Rtnl, ifname: &str, timeout: Duration) -> Result<(IpAddr, Mac), NetlinkError> {
    match gateway_mac(rtnl, ifname, Family::V4, timeout).await {
        Ok(found) => Ok(found),
        Err(v4) => gateway_mac(rtnl, ifname, Family::V6, timeout).await.map_err(|_| v4),
    }
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
            .map(|hop| Route { gateway: gateway_of(&hop.attributes), ifindex: hop.interface_index })
            .collect(),
        None => {
            let oif = route.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Oif(oif) => Some(*oif),
                _ => None,
            });
            match oif {
                Some(ifindex) if ifindex != 0 => vec![Route { gateway: gateway_of(&route.attributes), ifindex }],
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
