//! Following the MACs of every balancer interface as they change: the
//! interface's own MAC, its default gateway and that gateway's neighbour
//! entry. Driven by the kernel's rtnetlink notifications (links, neighbours,
//! IPv4 and IPv6 routes), so a new gateway MAC is seen within milliseconds;
//! a slow resync covers notifications the kernel dropped (a full socket
//! buffer loses them silently).

use std::net::IpAddr;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;

use super::rtnl::{link_mac, Rtnl};
use super::{neighbour, route, Mac, NetlinkError};

/// The notifications that can move a MAC the balancer uses.
const GROUPS: [MulticastGroup; 4] =
    [MulticastGroup::Link, MulticastGroup::Neigh, MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route];

/// After a relevant notification, how long to let a burst of them (a route
/// replaced, then its neighbour resolved) settle before looking once.
const SETTLE: Duration = Duration::from_millis(20);

/// A full lookup this often even without notifications.
const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// Wait before reopening a notification socket the kernel closed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The two MACs of every frame the balancer sends out of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkMacs {
    /// The interface's own MAC: the Ethernet source.
    pub if_mac: Mac,
    /// The next hop's MAC: the Ethernet destination.
    pub gw_mac: Mac,
}

/// What to follow: the interfaces, and the MACs the config fixes (those are
/// reported as given, never looked up).
#[derive(Clone, Debug)]
pub struct MacWatch {
    pub interfaces: Vec<String>,
    pub gateway_mac: Option<Mac>,
    pub interface_mac: Option<Mac>,
    /// How long one resolution of a gateway's MAC may take.
    pub neighbour_timeout: Duration,
}

/// One interface and what the last lookup found.
struct Followed {
    name: String,
    ifindex: Option<u32>,
    /// The gateway whose neighbour entry gives `macs.gw_mac` (also when its
    /// resolution failed: its entry appearing is the change to wait for).
    gateway: Option<IpAddr>,
    macs: Option<LinkMacs>,
    last_error: Option<String>,
}

impl MacWatch {
    /// Follows every interface's MACs; never returns (drop or abort the
    /// task to stop). `changed(interface, macs)` gets each interface's first
    /// finding and then every change. A failed lookup is logged (once per
    /// distinct error) and the last finding stays. Runs on the current tokio
    /// runtime; its netlink sockets belong to the network namespace of the
    /// thread that first polls it.
    pub async fn run(self, mut changed: impl FnMut(&str, LinkMacs)) {
        let mut followed: Vec<Followed> = self
            .interfaces
            .iter()
            .map(|name| Followed { name: name.clone(), ifindex: None, gateway: None, macs: None, last_error: None })
            .collect();
        loop {
            let (rtnl, mut events) = match Rtnl::watch(&GROUPS) {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::error!(error = %e, "cannot follow the gateway MACs; retrying");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            };
            // Subscribed first, so a change during this lookup is not missed.
            self.refresh(&rtnl, &mut followed, &mut changed).await;
            let start = tokio::time::Instant::now() + RESYNC_EVERY;
            let mut resync = tokio::time::interval_at(start, RESYNC_EVERY);
            resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    event = events.next() => {
                        let Some((message, _)) = event else { break };
                        if !relevant(&message, &followed) {
                            continue;
                        }
                        tokio::time::sleep(SETTLE).await;
                        // The lookup below sees whatever the burst changed.
                        while let Some(Some(_)) = events.next().now_or_never() {}
                    }
                    _ = resync.tick() => {}
                }
                self.refresh(&rtnl, &mut followed, &mut changed).await;
            }
            tracing::warn!("the kernel closed the netlink notification socket; reopening it");
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }

    /// Looks every interface up and reports what changed.
    async fn refresh(&self, rtnl: &Rtnl, followed: &mut [Followed], changed: &mut impl FnMut(&str, LinkMacs)) {
        for iface in followed {
            match self.lookup(rtnl, iface).await {
                Ok(macs) => {
                    iface.last_error = None;
                    if iface.macs != Some(macs) {
                        iface.macs = Some(macs);
                        changed(&iface.name, macs);
                    }
                }
                Err(e) => {
                    let error = e.to_string();
                    if iface.last_error.as_ref() != Some(&error) {
                        tracing::warn!(iface = %iface.name, %error, "MAC lookup failed; keeping the last MACs");
                        iface.last_error = Some(error);
                    }
                }
            }
        }
    }

    async fn lookup(&self, rtnl: &Rtnl, iface: &mut Followed) -> Result<LinkMacs, NetlinkError> {
        let link = rtnl.link_by_name(&iface.name).await?;
        iface.ifindex = Some(link.header.index);
        let if_mac = match self.interface_mac {
            Some(mac) => mac,
            None => link_mac(&link).map_err(|len| NetlinkError::NoMacAddress { name: iface.name.clone(), len })?,
        };
        let gw_mac = match self.gateway_mac {
            Some(mac) => mac,
            None => match route::next_hop_mac(rtnl, &iface.name, self.neighbour_timeout).await {
                Ok((gateway, mac)) => {
                    iface.gateway = Some(gateway);
                    mac
                }
                Err(e) => {
                    if let NetlinkError::NeighbourUnresolved { addr, .. } = e {
                        iface.gateway = Some(addr);
                    }
                    return Err(e);
                }
            },
        };
        Ok(LinkMacs { if_mac, gw_mac })
    }
}

/// Whether a notification can change a followed interface's MACs: a change
/// of one of its links, of a main-table default route, or of its gateway's
/// neighbour entry (removed, or usable with a MAC other than the known one;
/// the states between, as resolution goes on, change nothing yet).
fn relevant(message: &NetlinkMessage<RouteNetlinkMessage>, followed: &[Followed]) -> bool {
    let NetlinkPayload::InnerMessage(message) = &message.payload else {
        return false;
    };
    match message {
        RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link) => {
            followed.iter().any(|f| f.ifindex == Some(link.header.index) || link_name(link) == Some(&f.name))
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => route::is_main_default(r),
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let removed = matches!(message, RouteNetlinkMessage::DelNeighbour(_));
            followed.iter().any(|f| {
                f.ifindex == Some(n.header.ifindex)
                    && f.gateway.is_some()
                    && neighbour::destination(n) == f.gateway
                    && (removed || neighbour::usable_mac(n).is_some_and(|mac| Some(mac) != f.macs.map(|m| m.gw_mac)))
            })
        }
        _ => false,
    }
}

fn link_name(link: &LinkMessage) -> Option<&String> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name),
        _ => None,
    })
}
