//! Several balancers behind a router that learns the VIPs over BGP (BIRD on
//! every host, BFD, ECMP multipath in the router's kernel): announcements
//! follow readiness, backends up, detach and VIP removal; flows keep their backend when
//! balancers are added, removed gracefully, or killed; real TCP throughout.
//! Each test builds its own lab (unique namespaces, temporary directory,
//! BIRD processes; all removed on drop, also on failure). Needs root and
//! bird2. Lines starting with `FIGURE` are the measurements quoted in the
//! README.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use lb_e2e::{
    backend6,
    bgp::{client_tcp_counters, echo_predictors, finish_detach, http_predictors, open_echo, BgpLab, Load, LoadReport},
    client, vip_addr, HTTP_PORT, VIP4, VIP6,
};
use serde_json::json;

/// Route changes the router must make within this time (BGP updates are
/// sent at once; BFD declares a peer down after 3 × 100 ms).
const CONVERGE: Duration = Duration::from_secs(10);

fn counter_delta(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
    name: &str,
) -> u64 {
    after.get(name).copied().unwrap_or(0).saturating_sub(before.get(name).copied().unwrap_or(0))
}

fn check_load(what: &str, r: &LoadReport) -> Result<()> {
    println!(
        "FIGURE {what}: {} short connections, {} echo rounds, {} failed, {} on another backend than the table's",
        r.requests,
        r.echo_rounds,
        r.failures.len(),
        r.wrong_backend.len()
    );
    ensure!(r.failures.is_empty(), "{what}: failures: {:#?}", &r.failures[..r.failures.len().min(20)]);
    ensure!(
        r.wrong_backend.is_empty(),
        "{what}: wrong backends: {:#?}",
        &r.wrong_backend[..r.wrong_backend.len().min(20)]
    );
    ensure!(
        r.requests > 50 && r.echo_rounds > 20,
        "{what}: the load ran ({} requests, {} rounds)",
        r.requests,
        r.echo_rounds
    );
    Ok(())
}

#[test]
fn vips_are_announced_only_while_a_balancer_serves() -> Result<()> {
    let mut bgp = BgpLab::build(3)?;
    // Every session is up, no daemon runs: nothing is announced.
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        bgp.nexthops(false)?.is_empty() && bgp.nexthops(true)?.is_empty(),
        "a VIP route before any balancer is ready"
    );

    let started = Instant::now();
    bgp.lab.balancers[0].start()?;
    let ready = started.elapsed();
    let appeared = bgp.wait_nexthops(&[0], CONVERGE)?;
    println!("FIGURE announce: daemon ready in {ready:?}, VIP routes at the router {appeared:?} later");
    let shown = bgp.router_bird.command(&format!("show route {VIP4}/32 all"))?;
    ensure!(shown.contains("(65000,100)"), "the route carries the configured community:\n{shown}");

    bgp.lab.balancers[1].start()?;
    bgp.lab.balancers[2].start()?;
    bgp.wait_nexthops(&[0, 1, 2], CONVERGE)?;
    let served = bgp
        .lab
        .in_client(|| (0..30).map(|i| client::http_get(vip_addr(i % 2 == 1, HTTP_PORT))).collect::<Result<Vec<_>>>())?;
    println!("multipath route via balancers 0, 1, 2; {} requests served through it", served.len());

    // A daemon restart withdraws nothing and leaves the include file alone.
    let include = bgp.include_file(1);
    let written = std::fs::metadata(&include)?.modified()?;
    bgp.lab.balancers[1].stop()?;
    let mut polls = 0;
    for (what, duration) in [("down", Duration::from_secs(1)), ("restarted", Duration::from_secs(2))] {
        if what == "restarted" {
            bgp.lab.balancers[1].start()?;
        }
        let until = Instant::now() + duration;
        while Instant::now() < until {
            let (v4, v6) = (bgp.nexthops(false)?, bgp.nexthops(true)?);
            ensure!(v4.len() == 3 && v6.len() == 3, "daemon {what}: a route lost balancer 1: {v4:?} {v6:?}");
            polls += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    println!("routes intact at {polls} checks while balancer 1's daemon was down and after it restarted");
    ensure!(
        std::fs::metadata(&include)?.modified()? == written,
        "the restarted daemon rewrote an unchanged include file"
    );
    ensure!(
        bgp.lab.balancers[1].log().contains("BGP announcements applied"),
        "the restarted daemon re-applied:\n{}",
        bgp.lab.balancers[1].log()
    );

    // Removing every VIP of an address withdraws that address only.
    let removal = Instant::now();
    for port in [80, 7] {
        bgp.lab.balancers[2].api_send("DELETE", &format!("/v1/vips/tcp:{VIP4}:{port}"), None)?;
    }
    bgp.lab.balancers[2].api_send("DELETE", &format!("/v1/vips/udp:{VIP4}:53"), None)?;
    let api = removal.elapsed();
    let gone = bgp.wait_routes(&[0, 1], &[0, 1, 2], CONVERGE)?;
    println!("FIGURE VIP removal: the API calls took {api:?}; the router dropped balancer 2 from the IPv4 route {gone:?} after they returned");

    // An address whose VIPs all lack a backend up (min_healthy = 1) is
    // withdrawn; one VIP with one backend up announces it again.
    let vips6 = [format!("tcp:[{VIP6}]:80"), format!("tcp:[{VIP6}]:7"), format!("udp:[{VIP6}]:53")];
    for vip in &vips6 {
        for j in 0..3 {
            let path = format!("/v1/vips/{vip}/backends/{}", backend6(j));
            bgp.lab.balancers[2].api_send("PATCH", &path, Some(json!({"drain": true})))?;
        }
    }
    bgp.wait_routes(&[0, 1], &[0, 1], CONVERGE)?;
    let path = format!("/v1/vips/{}/backends/{}", vips6[2], backend6(1));
    bgp.lab.balancers[2].api_send("PATCH", &path, Some(json!({"weight": 1})))?;
    bgp.wait_routes(&[0, 1], &[0, 1, 2], CONVERGE)?;
    println!(
        "every IPv6 VIP drained on balancer 2: IPv6 address withdrawn; one backend of one VIP back: announced again"
    );

    // Graceful detach of balancer 1: withdrawn by a BGP update.
    let detach = Instant::now();
    let child = bgp.begin_detach(1, 1)?;
    let stopped = detach.elapsed();
    let withdrawn = bgp.wait_routes(&[0], &[0, 2], CONVERGE)?;
    let out = finish_detach(child)?;
    println!("FIGURE detach: daemon stopped in {stopped:?}; routes withdrawn {withdrawn:?} after `lb-control detach` started; {}", out.trim());

    // Balancer 0 dies: BFD notices.
    let killed = Instant::now();
    bgp.kill(0)?;
    let detected = bgp.wait_routes(&[], &[2], CONVERGE)?;
    println!(
        "FIGURE kill: the router removed the dead balancer {detected:?} after it died (BFD {} x {} ms)",
        lb_e2e::bgp::BFD_MULTIPLIER,
        lb_e2e::bgp::BFD_INTERVAL_MS
    );
    ensure!(
        killed.elapsed() < Duration::from_secs(lb_e2e::bgp::HOLD_TIME),
        "BFD, not the hold timer, detected the failure"
    );
    ensure!(
        detected >= Duration::from_millis(lb_e2e::bgp::BFD_INTERVAL_MS),
        "faster than BFD can: the dead balancer told the router"
    );
    let sessions = bgp.router_bird.command("show bfd sessions")?;
    let dead = lb_e2e::balancer4(0).to_string();
    ensure!(
        sessions.lines().any(|l| l.split_whitespace().next() == Some(dead.as_str()) && l.contains("Down")),
        "the router's BFD session to the dead balancer is down:\n{sessions}"
    );
    Ok(())
}

#[test]
fn adding_and_removing_a_balancer_under_load_breaks_nothing() -> Result<()> {
    let mut bgp = BgpLab::build(3)?;
    bgp.lab.balancers[0].start()?;
    bgp.lab.balancers[1].start()?;
    bgp.wait_nexthops(&[0, 1], CONVERGE)?;
    let http = http_predictors(&bgp.lab, 0)?;
    let echo_p = echo_predictors(&bgp.lab, 0)?;
    ensure!(http_predictors(&bgp.lab, 1)? == http, "balancers 0 and 1 hold the same Maglev table");
    let echo = open_echo(&bgp.lab, 24, &echo_p)?;
    let before = client_tcp_counters(&bgp.lab)?;
    let load = Load::start(&bgp.lab, 2, echo, http.clone())?;
    std::thread::sleep(Duration::from_secs(2));

    // Scale out: balancer 2 joins the ECMP group once its daemon is ready.
    let start = Instant::now();
    bgp.lab.balancers[2].start()?;
    let ready = start.elapsed();
    let joined = bgp.wait_nexthops(&[0, 1, 2], CONVERGE)?;
    println!("FIGURE scale out: balancer 2 ready in {ready:?}, in the router's multipath route {joined:?} later");
    ensure!(
        http_predictors(&bgp.lab, 2)? == http && echo_predictors(&bgp.lab, 2)? == echo_p,
        "balancer 2 holds the same Maglev tables"
    );
    std::thread::sleep(Duration::from_secs(3));
    let carried = bgp.lab.balancers[2].counter("tx_encap")?;
    println!("balancer 2 forwarded {carried} packets");
    ensure!(carried > 0, "the new balancer carries flows");

    // Scale in: withdraw balancer 0, wait, detach it.
    let start = Instant::now();
    let child = bgp.begin_detach(0, 2)?;
    let left = bgp.wait_nexthops(&[1, 2], CONVERGE)?;
    finish_detach(child)?;
    println!(
        "FIGURE scale in: balancer 0 withdrawn {left:?} after `lb-control detach` started; detached after {:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));

    let report = load.finish();
    let after = client_tcp_counters(&bgp.lab)?;
    let (retrans, resets) =
        (counter_delta(&before, &after, "RetransSegs"), counter_delta(&before, &after, "EstabResets"));
    println!("client TCP: {retrans} segments retransmitted, {resets} established connections reset");
    check_load("scale out and in", &report)?;
    ensure!(resets == 0, "{resets} connections reset");
    Ok(())
}

#[test]
fn a_killed_balancer_resets_no_connection() -> Result<()> {
    let mut bgp = BgpLab::build(2)?;
    bgp.lab.balancers[0].start()?;
    bgp.lab.balancers[1].start()?;
    bgp.wait_nexthops(&[0, 1], CONVERGE)?;
    let http = http_predictors(&bgp.lab, 0)?;
    let echo_p = echo_predictors(&bgp.lab, 0)?;
    let echo = open_echo(&bgp.lab, 24, &echo_p)?;
    let before = client_tcp_counters(&bgp.lab)?;
    let load = Load::start(&bgp.lab, 2, echo, http)?;
    std::thread::sleep(Duration::from_secs(2));
    let carried = bgp.lab.balancers[1].counter("tx_encap")?;
    ensure!(carried > 0, "balancer 1 carries flows before it dies");

    bgp.kill(1)?;
    let detected = bgp.wait_nexthops(&[0], CONVERGE)?;
    println!("FIGURE kill under load: the router dropped the dead balancer after {detected:?}");
    std::thread::sleep(Duration::from_secs(3));

    let report = load.finish();
    let after = client_tcp_counters(&bgp.lab)?;
    let (retrans, resets, failed) = (
        counter_delta(&before, &after, "RetransSegs"),
        counter_delta(&before, &after, "EstabResets"),
        counter_delta(&before, &after, "AttemptFails"),
    );
    println!("FIGURE kill under load: client retransmitted {retrans} segments; {resets} established and {failed} opening connections reset");
    check_load("kill", &report)?;
    ensure!(resets == 0 && failed == 0, "connections reset: {resets} established, {failed} opening");
    Ok(())
}

#[test]
fn bird_being_down_is_not_fatal_and_announcements_follow_when_it_returns() -> Result<()> {
    let mut bgp = BgpLab::build(1)?;
    bgp.birds[0].kill();
    bgp.lab.balancers[0].start()?;
    // The daemon serves (ready, API answers) and keeps retrying.
    let deadline = Instant::now() + CONVERGE;
    while !bgp.lab.balancers[0].log().contains("applying BGP announcements failed") {
        ensure!(Instant::now() < deadline, "no retry logged:\n{}", bgp.lab.balancers[0].log());
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(bgp.lab.balancers[0].api_get("/v1/vips")?.as_array().map(|a| a.len()) == Some(6), "the API serves");
    ensure!(bgp.nexthops(false)?.is_empty(), "nothing announced without BIRD");
    let text = std::fs::read_to_string(bgp.include_file(0))?;
    ensure!(text.contains(&format!("route {VIP4}/32 blackhole")), "the include file is written anyway:\n{text}");

    let back = Instant::now();
    bgp.restart_bird(0)?;
    let routed = bgp.wait_nexthops(&[0], CONVERGE)?;
    println!("FIGURE BIRD down: the daemon kept serving and retrying; routes at the router {routed:?} after BIRD was back ({:?} in all)", back.elapsed());
    let deadline = Instant::now() + Duration::from_secs(40);
    while !bgp.lab.balancers[0].log().contains("BGP announcements applied") {
        ensure!(Instant::now() < deadline, "the retry never succeeded:\n{}", bgp.lab.balancers[0].log());
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
