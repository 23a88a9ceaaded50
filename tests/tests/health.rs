//! Health checks end to end: the daemon probes each backend through the
//! tunnel (marked sockets, the TC program, the backends' decap), real HTTP
//! and echo servers answer from the VIP. A stopped server or a VIP gone from
//! a backend's loopback takes the backend out; started again it comes back;
//! `on_down = "drain"` keeps established flows; all down fails open. Each
//! test builds its own lab. Needs root.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use lb_e2e::{
    backend4, backend6, client, client::EchoConn, servers::Service, vip_addr, Lab, ECHO_PORT, HTTP_PORT, UDP_PORT,
    VIP4, VIP6,
};
use serde_json::json;

const INTERVAL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_millis(300);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Scheduling and apply latency allowed on top of the protocol's bound on a
/// shared two-core machine.
const SLACK: Duration = Duration::from_millis(700);

fn http_vip() -> String {
    format!("tcp:{VIP4}:{HTTP_PORT}")
}

fn http6_vip() -> String {
    format!("tcp:[{VIP6}]:{HTTP_PORT}")
}

fn echo_vip() -> String {
    format!("tcp:{VIP4}:{ECHO_PORT}")
}

fn udp_vip() -> String {
    format!("udp:{VIP4}:{UDP_PORT}")
}

/// The IPv4 HTTP VIP checked with HTTP, the echo VIP with TCP connects
/// (drained when down), the UDP echo VIP with datagrams; three backends
/// each.
fn vips(backends: usize) -> String {
    let check = format!(
        "interval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {RISE}\nfall = {FALL}\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    let mut out = String::new();
    for (port, proto, health) in [
        (HTTP_PORT, "tcp", format!("kind = \"http\"\npath = \"/\"\n{check}")),
        (ECHO_PORT, "tcp", format!("kind = \"tcp\"\non_down = \"drain\"\n{check}")),
        (UDP_PORT, "udp", format!("kind = \"udp\"\n{check}")),
    ] {
        out +=
            &format!("\n[[vip]]\naddress = \"{VIP4}\"\nport = {port}\nprotocol = \"{proto}\"\n[vip.health]\n{health}");
        for j in 0..backends {
            out += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend4(j));
        }
    }
    // The IPv6 HTTP VIP, checked through the IPv6 tunnel.
    out += &format!(
        "\n[[vip]]\naddress = \"{VIP6}\"\nport = {HTTP_PORT}\nprotocol = \"tcp\"\n[vip.health]\nkind = \"http\"\npath = \"/\"\n{check}"
    );
    for j in 0..backends {
        out += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend6(j));
    }
    out
}

fn lab() -> Result<Lab> {
    let mut lab = Lab::build(3, 1)?;
    std::fs::write(&lab.balancers[0].config_path, lab.config(0, &vips(3)))?;
    lab.start_balancers()?;
    Ok(lab)
}

/// Each backend's health state and the VIP's fail-open flag, from the API.
fn health(lab: &Lab, vip: &str) -> Result<(Vec<String>, bool)> {
    let list = lab.balancers[0].api_get(&format!("/v1/vips/{vip}/backends"))?;
    let mut states = vec![String::new(); 3];
    let mut failed_open = false;
    for b in list.as_array().cloned().unwrap_or_default() {
        let addr: IpAddr = b["address"].as_str().unwrap_or_default().parse()?;
        let i = (0..3)
            .find(|&i| IpAddr::V4(backend4(i)) == addr || IpAddr::V6(backend6(i)) == addr)
            .expect("a lab backend");
        states[i] = b["health"]["state"].as_str().unwrap_or_default().to_string();
        failed_open |= b["failed_open"].as_bool().unwrap_or(false);
    }
    Ok((states, failed_open))
}

/// Waits until `backend` of `vip` reads `state`; returns how long it took.
/// While waiting, `each_poll` runs (client load).
fn wait_for(
    lab: &Lab,
    vip: &str,
    backend: usize,
    state: &str,
    limit: Duration,
    mut each_poll: impl FnMut(&Lab) -> Result<()>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if health(lab, vip)?.0[backend] == state {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            let list = lab.balancers[0].api_get(&format!("/v1/vips/{vip}/backends"))?;
            bail!("backend {backend} of {vip} not {state} after {limit:?}: {list}");
        }
        each_poll(lab)?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_all_up(lab: &Lab, vip: &str) -> Result<()> {
    for i in 0..3 {
        wait_for(lab, vip, i, "up", Duration::from_secs(10), |_| Ok(()))?;
    }
    Ok(())
}

/// Client load: one HTTP request with up to three attempts; returns the
/// attempts that failed and the backend that finally answered.
fn request(lab: &Lab) -> Result<(u32, Option<usize>)> {
    let vip = vip_addr(false, HTTP_PORT);
    let mut failed = 0;
    for _ in 0..3 {
        match lab.in_client(|| client::http_get(vip)) {
            Ok((backend, _)) => return Ok((failed, Some(backend))),
            Err(_) => failed += 1,
        }
    }
    Ok((failed, None))
}

#[test]
fn a_stopped_server_leaves_the_ring_and_comes_back_and_a_missing_vip_is_found() -> Result<()> {
    let mut lab = lab()?;
    wait_all_up(&lab, &http_vip())?;
    wait_all_up(&lab, &http6_vip())?;
    let (states, failed_open) = health(&lab, &http_vip())?;
    assert_eq!((states, failed_open), (vec!["up".to_string(); 3], false));

    // Stop backend 1's HTTP server under client load.
    let bound = INTERVAL * FALL + TIMEOUT;
    lab.servers.stop_service(1, Service::Http);
    let (mut failed_attempts, mut failed_requests, mut requests) = (0u32, 0u32, 0u32);
    let detected = wait_for(&lab, &http_vip(), 1, "down", bound + SLACK + Duration::from_secs(2), |lab| {
        let (failed, answered) = request(lab)?;
        requests += 1;
        failed_attempts += failed;
        failed_requests += u32::from(answered.is_none());
        Ok(())
    })?;
    println!(
        "HTTP server stopped: down after {} ms (bound fall × interval + timeout = {} ms); \
         {requests} requests meanwhile, {failed_attempts} failed attempts, {failed_requests} failed after 3 tries",
        detected.as_millis(),
        bound.as_millis()
    );
    assert!(detected <= bound + SLACK, "detected after {detected:?}, bound {bound:?}");
    // The server serves both families: its IPv6 VIP's check fails too.
    let detected6 = wait_for(&lab, &http6_vip(), 1, "down", bound + SLACK, |_| Ok(()))?;
    println!("the same through the IPv6 tunnel: down {} ms later", detected6.as_millis());
    let served_by_1 = lab.servers.http_counts()[1];
    let mut after = vec![0usize; 3];
    for _ in 0..60 {
        let (failed, answered) = request(&lab)?;
        assert_eq!(failed, 0, "no failure once the backend is out");
        after[answered.expect("answered")] += 1;
    }
    println!("60 requests after detection: per backend {after:?}, none failed");
    assert_eq!(after[1], 0, "no new connection goes to the stopped backend");
    assert_eq!(lab.servers.http_counts()[1], served_by_1);
    let lines = lab.balancers[0].log();
    assert!(lines.contains("backend health changed"), "the transition is logged");

    // Start it again: up after `rise` successes.
    lab.servers.start_service(&lab.backends[1], Service::Http)?;
    let up = wait_for(&lab, &http_vip(), 1, "up", INTERVAL * (RISE + 1) + SLACK + Duration::from_secs(1), |_| Ok(()))?;
    println!("HTTP server started again: up after {} ms", up.as_millis());
    let mut back = vec![0usize; 3];
    for _ in 0..60 {
        back[request(&lab)?.1.expect("answered")] += 1;
    }
    assert!(back[1] > 0, "backend 1 serves again: {back:?}");

    // The VIP gone from backend 2's loopback while its server runs.
    lab.backends[2].ns.ip(&["addr", "del", &format!("{VIP4}/32"), "dev", "lo"])?;
    let gone = wait_for(&lab, &http_vip(), 2, "down", bound + SLACK + Duration::from_secs(2), |_| Ok(()))?;
    println!("VIP removed from backend 2's loopback: down after {} ms", gone.as_millis());
    let (states6, _) = health(&lab, &http6_vip())?;
    assert_eq!(states6[2], "up", "backend 2 still has the IPv6 VIP: {states6:?}");
    let list = lab.balancers[0].api_get(&format!("/v1/vips/{}/backends", http_vip()))?;
    let b2 = list.as_array().unwrap().iter().find(|b| b["address"] == backend4(2).to_string()).unwrap();
    assert!(b2["health"]["last_error"].is_string(), "the reason is reported: {b2}");
    assert_eq!(b2["weight"], 1, "the operator's weight is untouched");
    let metrics = lab.balancers[0].api_get_text("/metrics")?;
    assert!(
        metrics.contains(&format!("xdp_lb_backend_up{{vip=\"{}\",backend=\"{}\"}} 0", http_vip(), backend4(2))),
        "{metrics}"
    );
    // The TC program's counters (copied every 5 s): every probe packet was
    // encapsulated, none dropped.
    let encapsulated = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("xdp_lb_health_probe_packets_total{reason=\"probe_encapsulated\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut metrics = metrics;
    while encapsulated(&metrics) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        metrics = lab.balancers[0].api_get_text("/metrics")?;
    }
    assert!(encapsulated(&metrics) > 0, "{metrics}");
    for line in metrics.lines().filter(|l| l.starts_with("xdp_lb_health_probe_packets_total{reason=\"probe_drop_")) {
        assert!(line.ends_with(" 0"), "{line}");
    }
    let readyz = lab.balancers[0].api_get_text("/readyz")?;
    assert_eq!(readyz, "ready\n", "/readyz ignores backend health");
    Ok(())
}

#[test]
fn drain_keeps_established_flows_and_all_down_fails_open() -> Result<()> {
    let mut lab = lab()?;
    wait_all_up(&lab, &echo_vip())?;
    wait_all_up(&lab, &http_vip())?;
    // UDP probes: a datagram through the tunnel, the echo's reply from the VIP.
    wait_all_up(&lab, &udp_vip())?;

    // An established echo connection; its backend's echo server stops.
    let mut conn = lab.in_client(|| EchoConn::open(vip_addr(false, ECHO_PORT)))?;
    let b = conn.backend;
    conn.exchange(b"before")?;
    lab.servers.stop_service(b, Service::Echo);
    wait_for(&lab, &echo_vip(), b, "down", Duration::from_secs(5), |_| Ok(()))?;
    let list = lab.balancers[0].api_get(&format!("/v1/vips/{}/backends", echo_vip()))?;
    println!("echo backend {b} down (drain): {list}");
    for i in 0..5u8 {
        conn.exchange(&[b'x'; 1000].map(|c| c ^ i))?;
    }
    println!("the established connection to drained backend {b} still carries data");
    conn.close()?;

    // Every HTTP backend down: all stay, the VIP says it failed open.
    for i in 0..3 {
        lab.servers.stop_service(i, Service::Http);
    }
    for i in 0..3 {
        wait_for(&lab, &http_vip(), i, "down", Duration::from_secs(5), |_| Ok(()))?;
    }
    // A backend reads down only once the controller has applied it.
    assert!(health(&lab, &http_vip())?.1, "the API says the VIP failed open");
    let metrics = lab.balancers[0].api_get_text("/metrics")?;
    assert!(metrics.contains(&format!("xdp_lb_vip_failed_open{{vip=\"{}\"}} 1", http_vip())), "{metrics}");
    assert!(lab.balancers[0].log().contains("failing open"));
    // Fail open keeps the ring whole: a connection still reaches a backend
    // host (its port refuses, as every server is down) rather than being
    // dropped for want of a backend.
    let drops = lab.balancers[0].counter("drop_no_backend")?;
    let _ = request(&lab)?;
    assert_eq!(lab.balancers[0].counter("drop_no_backend")?, drops);

    let table = lab.balancers[0].lbctl(&["backend", "list", &http_vip()])?;
    println!("{table}");
    assert!(table.contains("HEALTH") && table.contains("down (failed open)"), "{table}");
    let set = lab.balancers[0].lbctl(&["vip", "health", &echo_vip(), "--kind", "tcp", "--rise", "3"])?;
    assert!(set.contains("\"rise\":3"), "{set}");

    // The API changes a check: kind "none" disables it, the backends return.
    let r =
        lab.balancers[0].api_send("PUT", &format!("/v1/vips/{}/health", http_vip()), Some(json!({"kind": "none"})))?;
    assert_eq!(r["health"]["kind"], "none");
    let (states, failed_open) = health(&lab, &http_vip())?;
    assert_eq!((states, failed_open), (vec!["disabled".to_string(); 3], false));
    Ok(())
}
