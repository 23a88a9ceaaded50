//! Integration tests of `lb_control::netlink` against the real kernel.
//!
//! Each test builds its own pair of network namespaces, "host" (where the code
//! under test runs) and "gw" (the next-hop router), joined by a veth pair with
//! fixed MACs and IPv4 + IPv6 addresses, and removes them when it ends, even on
//! failure. The code under test runs in a thread that entered the host
//! namespace with `setns()`, so its netlink sockets talk to that namespace
//! only; no traffic ever leaves the two namespaces.
//!
//! Needs root (network namespaces, veth) and iproute2's `ip`.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lb_control::netlink::{
    default_route, gateway_mac, interface_index, interface_mac, neighbour_mac, resolve_neighbour, route_to, Family,
    LinkMacs, Mac, MacWatch, NetlinkError, Route,
};

const HOST_IF: &str = "lbh0";
const GW_IF: &str = "lbg0";
const HOST_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x00, 0x02];
const GW_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x00, 0x01];
const STATIC_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x00, 0x50];

const HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// A second, worse (higher-metric) default gateway that does not exist.
const BACKUP_GW_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 3);
/// In the subnet, but nobody has it.
const UNUSED_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 99);
const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd4c, 0x4200, 0, 0, 0, 0, 0, 2);
const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd4c, 0x4200, 0, 0, 0, 0, 0, 1);
const BACKUP_GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd4c, 0x4200, 0, 0, 0, 0, 0, 3);
const UNUSED_V6: Ipv6Addr = Ipv6Addr::new(0xfd4c, 0x4200, 0, 0, 0, 0, 0, 0x99);
/// Off-link destinations, reached through the default routes.
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

fn mac_str(mac: Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Runs `ip` with the whitespace-separated arguments of `command`, panicking
/// with its stderr if it fails.
fn ip(command: &str) -> String {
    let out = Command::new("ip")
        .args(command.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {command}`: {e}"));
    assert!(
        out.status.success(),
        "`ip {command}` failed ({}): {} (these tests need root and iproute2)",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host and gw namespaces of one test; deleting them on drop (also when
/// the test panics) destroys the veth pair and everything configured inside.
struct Topology {
    host: String,
    gw: String,
    namespaces: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

impl Topology {
    /// host (lbh0, HOST_MAC, 10.231.0.2/24, fd4c:4200::2/64)
    ///   <-veth->  gw (lbg0, GW_MAC, 10.231.0.1/24, fd4c:4200::1/64),
    /// with default routes in host via the gw (metric 0 / 1024) and via an
    /// absent backup gateway (metric 100 / 2048).
    fn new() -> Topology {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut topo = Topology {
            host: format!("lbnl-host-{pid}-{id}"),
            gw: format!("lbnl-gw-{pid}-{id}"),
            namespaces: Vec::new(),
        };
        // Recorded one by one, so that a failure half-way still cleans up.
        for ns in [topo.host.clone(), topo.gw.clone()] {
            ip(&format!("netns add {ns}"));
            topo.namespaces.push(ns);
        }
        let (h, g) = (&topo.host, &topo.gw);
        // Link-local addresses skip duplicate address detection, so IPv6
        // neighbour solicitations (sourced from them) can go out at once
        // rather than after DAD, ~2 s after the link comes up.
        for ns in [h, g] {
            Self::run_in(ns, || {
                for conf in ["all", "default"] {
                    let knob = format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad");
                    std::fs::write(&knob, "0").unwrap_or_else(|e| panic!("write {knob}: {e}"));
                }
            });
        }
        let (host_mac, gw_mac) = (mac_str(HOST_MAC), mac_str(GW_MAC));
        ip(&format!(
            "-n {h} link add {HOST_IF} address {host_mac} type veth \
             peer name {GW_IF} address {gw_mac} netns {g}"
        ));
        for (ns, ifname) in [(h, HOST_IF), (g, GW_IF)] {
            ip(&format!("-n {ns} link set lo up"));
            ip(&format!("-n {ns} link set {ifname} up"));
        }
        ip(&format!("-n {h} addr add {HOST_V4}/24 dev {HOST_IF}"));
        ip(&format!("-n {h} addr add {HOST_V6}/64 dev {HOST_IF} nodad"));
        ip(&format!("-n {g} addr add {GW_V4}/24 dev {GW_IF}"));
        ip(&format!("-n {g} addr add {GW_V6}/64 dev {GW_IF} nodad"));
        ip(&format!("-n {h} -4 route add default via {GW_V4} dev {HOST_IF}"));
        ip(&format!("-n {h} -4 route add default via {BACKUP_GW_V4} dev {HOST_IF} metric 100"));
        ip(&format!("-n {h} -6 route add default via {GW_V6} dev {HOST_IF}"));
        ip(&format!("-n {h} -6 route add default via {BACKUP_GW_V6} dev {HOST_IF} metric 2048"));
        topo
    }

    /// Runs `f` on a thread inside namespace `ns` and returns its result
    /// (re-raising its panic).
    fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: a valid namespace file descriptor; setns() only
                // changes the network namespace of this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            });
            handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::run_in(&self.host, f)
    }

    fn in_gw<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::run_in(&self.gw, f)
    }

    /// Index of `ifname` in `ns`, as `ip` reports it (`N: name@...`).
    fn ifindex(ns: &str, ifname: &str) -> u32 {
        let out = ip(&format!("-n {ns} -o link show dev {ifname}"));
        out.split(':').next().unwrap().trim().parse().unwrap()
    }

    fn host_ifindex(&self) -> u32 {
        Self::ifindex(&self.host, HOST_IF)
    }

    /// Empties the host's neighbour table for the veth (both families).
    fn flush_host_neighbours(&self) {
        ip(&format!("-n {} neigh flush dev {HOST_IF}", self.host));
    }
}

#[test]
fn interface_mac_and_index_match_the_configuration() {
    let topo = Topology::new();
    let expected_index = topo.host_ifindex();
    let (mac, index, lo) = topo.in_host(|| (interface_mac(HOST_IF), interface_index(HOST_IF), interface_index("lo")));
    assert_eq!(mac.unwrap(), HOST_MAC);
    assert_eq!(index.unwrap(), expected_index);
    assert_eq!(lo.unwrap(), 1);
    // The gw side sees its own interface with its own MAC.
    assert_eq!(topo.in_gw(|| interface_mac(GW_IF)).unwrap(), GW_MAC);
}

/// The synchronous lookups also work when called from async code (they run
/// their own runtime on a thread of their own), still in the caller's
/// namespace.
#[test]
fn lookups_work_from_async_code_in_the_callers_namespace() {
    let topo = Topology::new();
    let (mac, gateway) = topo.in_host(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async { (interface_mac(HOST_IF), gateway_mac(HOST_IF, Family::V4, RESOLVE_TIMEOUT)) })
    });
    assert_eq!(mac.unwrap(), HOST_MAC);
    assert_eq!(gateway.unwrap(), (IpAddr::V4(GW_V4), GW_MAC));
}

#[test]
fn missing_interface_is_reported_by_name() {
    let topo = Topology::new();
    let (mac, index, too_long) =
        topo.in_host(|| (interface_mac("nosuch0"), interface_index("nosuch0"), interface_mac("a-name-far-too-long")));
    match mac {
        Err(NetlinkError::InterfaceNotFound { ref name }) if name == "nosuch0" => {}
        other => panic!("expected InterfaceNotFound(nosuch0), got {other:?}"),
    }
    assert!(mac.unwrap_err().to_string().contains("\"nosuch0\""));
    assert!(matches!(index, Err(NetlinkError::InterfaceNotFound { ref name }) if name == "nosuch0"));
    assert!(matches!(too_long, Err(NetlinkError::InterfaceNotFound { .. })), "{too_long:?}");
    // The host's own interface is not visible from the gw namespace.
    let from_gw = topo.in_gw(|| interface_mac(HOST_IF));
    assert!(matches!(from_gw, Err(NetlinkError::InterfaceNotFound { .. })), "{from_gw:?}");
}

#[test]
fn default_route_picks_the_lowest_metric_gateway() {
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    let (v4, v6) = topo.in_host(|| (default_route(Family::V4), default_route(Family::V6)));
    assert_eq!(v4.unwrap(), Some(Route { gateway: Some(IpAddr::V4(GW_V4)), ifindex }));
    assert_eq!(v6.unwrap(), Some(Route { gateway: Some(IpAddr::V6(GW_V6)), ifindex }));
}

#[test]
fn default_route_absent_or_on_link() {
    let topo = Topology::new();
    let gw_ifindex = Topology::ifindex(&topo.gw, GW_IF);
    // The gw namespace has no default route at all...
    let (v4, v6, gw_mac) = topo.in_gw(|| {
        (default_route(Family::V4), default_route(Family::V6), gateway_mac(GW_IF, Family::V6, RESOLVE_TIMEOUT))
    });
    assert_eq!(v4.unwrap(), None);
    assert_eq!(v6.unwrap(), None);
    match gw_mac {
        Err(NetlinkError::NoDefaultRoute { family: Family::V6 }) => {}
        other => panic!("expected NoDefaultRoute(V6), got {other:?}"),
    }
    // ...then an on-link one (no gateway).
    ip(&format!("-n {} -4 route add default dev {GW_IF}", topo.gw));
    let (v4, gw_mac) = topo.in_gw(|| (default_route(Family::V4), gateway_mac(GW_IF, Family::V4, RESOLVE_TIMEOUT)));
    assert_eq!(v4.unwrap(), Some(Route { gateway: None, ifindex: gw_ifindex }));
    match gw_mac {
        Err(NetlinkError::NoGateway { family: Family::V4, ifindex }) if ifindex == gw_ifindex => {}
        other => panic!("expected NoGateway(V4), got {other:?}"),
    }
}

#[test]
fn route_to_finds_the_next_hop() {
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    let (on_link, remote4, remote6, local) = topo.in_host(|| {
        (
            route_to(IpAddr::V4(GW_V4)),
            route_to(IpAddr::V4(REMOTE_V4)),
            route_to(IpAddr::V6(REMOTE_V6)),
            route_to(IpAddr::V4(HOST_V4)),
        )
    });
    assert_eq!(on_link.unwrap(), Some(Route { gateway: None, ifindex }));
    assert_eq!(remote4.unwrap(), Some(Route { gateway: Some(IpAddr::V4(GW_V4)), ifindex }));
    assert_eq!(remote6.unwrap(), Some(Route { gateway: Some(IpAddr::V6(GW_V6)), ifindex }));
    // One of our own addresses: the local route, through lo.
    assert_eq!(local.unwrap(), Some(Route { gateway: None, ifindex: 1 }));
    // The gw namespace has no route to the outside world.
    let (none4, none6) = topo.in_gw(|| (route_to(IpAddr::V4(REMOTE_V4)), route_to(IpAddr::V6(REMOTE_V6))));
    assert_eq!(none4.unwrap(), None);
    assert_eq!(none6.unwrap(), None);
}

fn check_gateway_mac_resolves(family: Family, gateway: IpAddr) {
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    topo.flush_host_neighbours();
    let (before, resolved, after) = topo.in_host(|| {
        let before = neighbour_mac(gateway, ifindex);
        let started = Instant::now();
        let resolved = gateway_mac(HOST_IF, family, RESOLVE_TIMEOUT);
        eprintln!("{family} gateway resolved in {:?}", started.elapsed());
        (before, resolved, neighbour_mac(gateway, ifindex))
    });
    assert_eq!(before.unwrap(), None, "the neighbour table should start empty");
    assert_eq!(resolved.unwrap(), (gateway, GW_MAC));
    assert_eq!(after.unwrap(), Some(GW_MAC), "the kernel's table now has the gateway");
}

#[test]
fn gateway_mac_resolves_ipv4_gateway_from_empty_table() {
    check_gateway_mac_resolves(Family::V4, IpAddr::V4(GW_V4));
}

#[test]
fn gateway_mac_resolves_ipv6_gateway_from_empty_table() {
    check_gateway_mac_resolves(Family::V6, IpAddr::V6(GW_V6));
}

#[test]
fn gateway_mac_rejects_an_interface_the_route_does_not_use() {
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    let result = topo.in_host(|| gateway_mac("lo", Family::V4, RESOLVE_TIMEOUT));
    match &result {
        Err(NetlinkError::GatewayOnOtherInterface {
            family: Family::V4,
            gateway: Some(IpAddr::V4(gw)),
            ifname,
            ifindex: 1,
            route_ifindex,
        }) if *gw == GW_V4 && ifname == "lo" && *route_ifindex == ifindex => {}
        other => panic!("expected GatewayOnOtherInterface, got {other:?}"),
    }
    let message = result.unwrap_err().to_string();
    assert!(message.contains("\"lo\"") && message.contains(&GW_V4.to_string()), "{message}");
    let missing = topo.in_host(|| gateway_mac("nosuch0", Family::V4, RESOLVE_TIMEOUT));
    assert!(matches!(missing, Err(NetlinkError::InterfaceNotFound { ref name }) if name == "nosuch0"));
}

#[test]
fn neighbour_mac_is_none_for_unknown_and_some_for_static_entries() {
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    let static_v4 = Ipv4Addr::new(10, 231, 0, 50);
    let static_mac = mac_str(STATIC_MAC);
    ip(&format!("-n {} neigh add {static_v4} lladdr {static_mac} dev {HOST_IF} nud permanent", topo.host));
    let (unknown4, unknown6, known, wrong_if, resolved) = topo.in_host(|| {
        (
            neighbour_mac(IpAddr::V4(Ipv4Addr::new(10, 231, 0, 200)), ifindex),
            neighbour_mac(IpAddr::V6(Ipv6Addr::new(0xfd4c, 0x4200, 0, 0, 0, 0, 0, 0x200)), ifindex),
            neighbour_mac(IpAddr::V4(static_v4), ifindex),
            neighbour_mac(IpAddr::V4(static_v4), 1),
            // Already usable: no resolution, no waiting.
            resolve_neighbour(IpAddr::V4(static_v4), ifindex, Duration::ZERO),
        )
    });
    assert_eq!(unknown4.unwrap(), None);
    assert_eq!(unknown6.unwrap(), None);
    assert_eq!(known.unwrap(), Some(STATIC_MAC));
    assert_eq!(wrong_if.unwrap(), None, "entries are per interface");
    assert_eq!(resolved.unwrap(), STATIC_MAC);
}

fn check_resolve_times_out(addr: IpAddr) {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let topo = Topology::new();
    let ifindex = topo.host_ifindex();
    let (result, elapsed, after) = topo.in_host(|| {
        let started = Instant::now();
        let result = resolve_neighbour(addr, ifindex, TIMEOUT);
        (result, started.elapsed(), neighbour_mac(addr, ifindex))
    });
    match &result {
        Err(NetlinkError::NeighbourUnresolved { addr: a, ifindex: i, timeout })
            if *a == addr && *i == ifindex && *timeout == TIMEOUT => {}
        other => panic!("expected NeighbourUnresolved({addr}), got {other:?}"),
    }
    assert!(result.unwrap_err().to_string().contains(&addr.to_string()));
    assert!(elapsed >= TIMEOUT, "gave up early, after {elapsed:?}");
    assert!(elapsed < TIMEOUT + Duration::from_secs(2), "took {elapsed:?}");
    // The kernel did try: its entry exists, but unresolved entries do not count.
    let entry = ip(&format!("-n {} neigh show {addr} dev {HOST_IF}", topo.host));
    assert!(entry.contains("INCOMPLETE") || entry.contains("FAILED"), "entry: {entry:?}");
    assert_eq!(after.unwrap(), None);
}

#[test]
fn resolve_neighbour_times_out_for_unused_ipv4_address() {
    check_resolve_times_out(IpAddr::V4(UNUSED_V4));
}

#[test]
fn resolve_neighbour_times_out_for_unused_ipv6_address() {
    check_resolve_times_out(IpAddr::V6(UNUSED_V6));
}

/// Stops the watcher thread when dropped, also when an assertion fails, so
/// the test's thread scope can end.
struct StopWatcher(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for StopWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

/// The next MACs the watcher reports for the host's interface, within
/// `within`, and how long they took.
fn next_report(reports: &std::sync::mpsc::Receiver<(String, LinkMacs)>, within: Duration) -> (LinkMacs, Duration) {
    let started = Instant::now();
    let (iface, macs) = reports.recv_timeout(within).unwrap_or_else(|e| panic!("no MAC report within {within:?}: {e}"));
    assert_eq!(iface, HOST_IF);
    (macs, started.elapsed())
}

/// The event-driven watcher reports the gateway's MAC, then each change
/// within a second: the neighbour entry replaced, the interface's own MAC
/// changed, the default route moved to another gateway.
#[test]
fn mac_watch_follows_changes_as_they_happen() {
    const NEW_GW_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x00, 0x11];
    const BACKUP_GW_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x00, 0x33];
    const NEW_HOST_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x00, 0x22];
    const PROMPTLY: Duration = Duration::from_secs(1);
    let topo = Topology::new();
    let h = topo.host.clone();
    let (report, reports) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::scope(|s| {
        let _stop = StopWatcher(Some(stop));
        s.spawn(|| {
            topo.in_host(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let watch = MacWatch {
                    interfaces: vec![HOST_IF.to_string()],
                    gateway_mac: None,
                    interface_mac: None,
                    neighbour_timeout: RESOLVE_TIMEOUT,
                };
                runtime.block_on(async {
                    tokio::select! {
                        _ = watch.run(move |iface, macs| {
                            let _ = report.send((iface.to_string(), macs));
                        }) => {}
                        _ = stopped => {}
                    }
                });
            })
        });

        // First: resolved from an empty neighbour table.
        let (first, _) = next_report(&reports, RESOLVE_TIMEOUT + PROMPTLY);
        assert_eq!(first, LinkMacs { if_mac: HOST_MAC, gw_mac: GW_MAC });

        ip(&format!("-n {h} neigh replace {GW_V4} lladdr {} dev {HOST_IF} nud permanent", mac_str(NEW_GW_MAC)));
        let (macs, took) = next_report(&reports, PROMPTLY);
        assert_eq!(macs, LinkMacs { if_mac: HOST_MAC, gw_mac: NEW_GW_MAC });
        println!("new gateway MAC reported after {took:?}");

        // A new address flushes the interface's neighbour entries (permanent
        // ones too): the gateway is resolved again, to its real MAC.
        ip(&format!("-n {h} link set {HOST_IF} address {}", mac_str(NEW_HOST_MAC)));
        let (macs, took) = next_report(&reports, PROMPTLY);
        assert_eq!(macs, LinkMacs { if_mac: NEW_HOST_MAC, gw_mac: GW_MAC });
        println!("new interface MAC reported after {took:?}");

        ip(&format!("-n {h} neigh add {BACKUP_GW_V4} lladdr {} dev {HOST_IF} nud permanent", mac_str(BACKUP_GW_MAC)));
        ip(&format!("-n {h} -4 route del default via {GW_V4} dev {HOST_IF}"));
        let (macs, took) = next_report(&reports, PROMPTLY);
        assert_eq!(macs, LinkMacs { if_mac: NEW_HOST_MAC, gw_mac: BACKUP_GW_MAC });
        println!("default route moved to the backup gateway, reported after {took:?}");

        // Nothing else moved: no further report.
        assert!(reports.recv_timeout(Duration::from_millis(300)).is_err(), "a report without a change");
    });
}

/// Every configured interface is followed: with an ECMP default route over
/// two links (two routers), each interface reports its own MAC and its own
/// gateway's, and a change on the second is reported for the second only.
#[test]
fn mac_watch_follows_every_interface() {
    const HOST2_IF: &str = "lbh1";
    const GW2_IF: &str = "lbg1";
    const HOST2_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x01, 0x02];
    const GW2_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x01, 0x01];
    const NEW_GW2_MAC: Mac = [0x02, 0x4c, 0x42, 0x00, 0x01, 0x11];
    const GW2_V4: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 1);
    let topo = Topology::new();
    let (h, g) = (topo.host.clone(), topo.gw.clone());
    ip(&format!(
        "-n {h} link add {HOST2_IF} address {} type veth peer name {GW2_IF} address {} netns {g}",
        mac_str(HOST2_MAC),
        mac_str(GW2_MAC)
    ));
    ip(&format!("-n {h} link set {HOST2_IF} up"));
    ip(&format!("-n {g} link set {GW2_IF} up"));
    ip(&format!("-n {h} addr add 10.232.0.2/24 dev {HOST2_IF}"));
    ip(&format!("-n {g} addr add {GW2_V4}/24 dev {GW2_IF}"));
    ip(&format!(
        "-n {h} -4 route replace default nexthop via {GW_V4} dev {HOST_IF} nexthop via {GW2_V4} dev {HOST2_IF}"
    ));

    let (report, reports) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::scope(|s| {
        let _stop = StopWatcher(Some(stop));
        s.spawn(|| {
            topo.in_host(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let watch = MacWatch {
                    interfaces: vec![HOST_IF.to_string(), HOST2_IF.to_string()],
                    gateway_mac: None,
                    interface_mac: None,
                    neighbour_timeout: RESOLVE_TIMEOUT,
                };
                runtime.block_on(async {
                    tokio::select! {
                        _ = watch.run(move |iface, macs| {
                            let _ = report.send((iface.to_string(), macs));
                        }) => {}
                        _ = stopped => {}
                    }
                });
            })
        });
        let mut first: Vec<_> = (0..2)
            .map(|_| reports.recv_timeout(2 * RESOLVE_TIMEOUT).expect("a first report for each interface"))
            .collect();
        first.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            first,
            [
                (HOST_IF.to_string(), LinkMacs { if_mac: HOST_MAC, gw_mac: GW_MAC }),
                (HOST2_IF.to_string(), LinkMacs { if_mac: HOST2_MAC, gw_mac: GW2_MAC }),
            ]
        );

        ip(&format!("-n {h} neigh replace {GW2_V4} lladdr {} dev {HOST2_IF} nud permanent", mac_str(NEW_GW2_MAC)));
        let (iface, macs) = reports.recv_timeout(Duration::from_secs(1)).expect("a report within a second");
        assert_eq!((iface.as_str(), macs), (HOST2_IF, LinkMacs { if_mac: HOST2_MAC, gw_mac: NEW_GW2_MAC }));
        assert!(reports.recv_timeout(Duration::from_millis(300)).is_err(), "a report without a change");
    });
}
