//! SYN-flood mode, byte-exact with the counters each packet must move: a
//! SYN below the threshold is tabled, one over it is forwarded by the ring
//! alone (the table unchanged), an established entry survives a flood of
//! SYNs of its own set, a window that ended leaves the mode, other misses
//! are tabled during a flood, threshold 0 is off. The per-CPU windows are
//! set from user space (every CPU alike), so "over the threshold" does not
//! depend on how fast the test sends.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;
use lb_common::{flow_hash64, ConnEntry, FlowKey, LbConfig, Stat, SynFloodState, IPPROTO_TCP, IPPROTO_UDP};
use lb_control::dataplane::{ip_to_addr, monotonic_coarse_ns, Balancer};
use lb_testkit::packet_builder as pb;
use libtest_mimic::{Arguments, Trial};

const THRESHOLD: u32 = 10;

/// The standard world with `threshold` and every CPU's window set to
/// `new_flows` flows, begun `age_ns` ago.
fn flood_world(threshold: u32, new_flows: u64, age_ns: u64) -> Balancer {
    let mut bal = world();
    bal.set_config(&LbConfig { syn_flood_threshold: threshold, ..config() }).unwrap();
    let window_start_ns = monotonic_coarse_ns() - age_ns;
    bal.set_syn_flood_windows(SynFloodState { window_start_ns, new_flows }).unwrap();
    bal
}

/// Every CPU's window is over the threshold and current.
fn flooded() -> Balancer {
    flood_world(THRESHOLD, THRESHOLD as u64 + 5, 0)
}

fn flow(client: IpAddr, sport: u16, vip: IpAddr, dport: u16, proto: u8) -> FlowKey {
    let (src, family) = ip_to_addr(client);
    let (dst, _) = ip_to_addr(vip);
    FlowKey::new(family, proto, src, net16(sport), dst, net16(dport))
}

fn flow4(sport: u16) -> FlowKey {
    flow(CLIENT4.into(), sport, VIP4.into(), PORT_HTTP, IPPROTO_TCP)
}

fn syn4(sport: u16) -> Vec<u8> {
    tcp4(CLIENT4, VIP4, sport, PORT_HTTP, pb::TCP_SYN, &[])
}

/// The frame the balancer sends for `inner`, a TCP packet of CLIENT4:sport
/// to VIP4:80, towards `real`.
fn encap4(inner: &[u8], sport: u16, real: Ipv4Addr) -> Vec<u8> {
    expect_ipip4(inner, real, encap_hash(CLIENT4.into(), sport, VIP4.into(), PORT_HTTP, IPPROTO_TCP))
}

/// [`check_balancer`] for a packet the balancer sends on (`XDP_TX`).
fn check(bal: &mut Balancer, input: &[u8], output: &[u8], want: &[(Stat, u64)]) -> Result<(), String> {
    check_balancer(bal, input, XDP_TX, output, want)
}

/// The windows' flow counts, summed over CPUs (only the test's CPU moves).
fn flows_counted(bal: &Balancer) -> u64 {
    bal.syn_flood_windows().unwrap().iter().map(|w| w.new_flows).sum()
}

fn expect_entry(bal: &Balancer, flow: &FlowKey, want: Option<u32>) -> Result<(), String> {
    let got = bal.conn(flow).map(|e| e.real);
    if got != want {
        return Err(format!("connection-table entry {got:?}, want {want:?}"));
    }
    Ok(())
}

fn syn_below_threshold_is_tabled() -> Result<(), String> {
    let mut bal = flood_world(THRESHOLD, 3, 0);
    let before = flows_counted(&bal);
    check(&mut bal, &frame4(&syn4(41000)), &encap4(&syn4(41000), 41000, REAL1), &[(Stat::TxEncap, 1)])?;
    expect_entry(&bal, &flow4(41000), Some(1))?;
    if flows_counted(&bal) != before + 1 {
        return Err(format!("the window counted {} new flows, want 1", flows_counted(&bal) - before));
    }
    Ok(())
}

fn syn_over_threshold_is_untabled() -> Result<(), String> {
    // The window is at the threshold: this SYN takes it over (the window
    // is counted once), the next is over it already.
    let mut bal = flood_world(THRESHOLD, THRESHOLD as u64, 0);
    let inner = syn4(41001);
    check(
        &mut bal,
        &frame4(&inner),
        &encap4(&inner, 41001, REAL1),
        &[(Stat::TxEncap, 1), (Stat::SynFloodUntabled, 1), (Stat::SynFloodWindows, 1)],
    )?;
    let inner = syn4(41002);
    check(
        &mut bal,
        &frame4(&inner),
        &encap4(&inner, 41002, REAL1),
        &[(Stat::TxEncap, 1), (Stat::SynFloodUntabled, 1)],
    )?;
    if bal.conn_count() != 0 {
        return Err(format!("{} connection-table entries, want none", bal.conn_count()));
    }
    expect_entry(&bal, &flow4(41001), None)
}

fn v6_syn_over_threshold_is_untabled() -> Result<(), String> {
    let mut bal = flooded();
    let inner = tcp6(CLIENT6, VIP6, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]);
    let hash = encap_hash(CLIENT6.into(), CLIENT_PORT, VIP6.into(), PORT_HTTP, IPPROTO_TCP);
    check(
        &mut bal,
        &frame6(&inner),
        &expect_ip6tnl(&inner, REAL6_4, hash),
        &[(Stat::TxEncap, 1), (Stat::SynFloodUntabled, 1)],
    )?;
    if bal.conn_count() != 0 {
        return Err(format!("{} connection-table entries, want none", bal.conn_count()));
    }
    Ok(())
}

fn established_entry_survives_a_flood_of_its_set() -> Result<(), String> {
    let mut bal = flooded();
    // An established flow the table sends to REAL2 (the ring says REAL1).
    let established = flow4(CLIENT_PORT);
    bal.set_conn(&established, &ConnEntry { real: 2 }).unwrap();
    let sets = bal.limits().conn_sets();
    let set = |f: &FlowKey| flow_hash64(f) as u32 & (sets - 1);
    // Twice as many SYNs of the same set as it has ways: tabled, they would
    // have filled it and evicted the entry.
    let same_set: Vec<u16> =
        (1024u16..).filter(|&p| set(&flow4(p)) == set(&established)).take(2 * lb_common::CONN_WAYS as usize).collect();
    for &port in &same_set {
        let inner = syn4(port);
        check(
            &mut bal,
            &frame4(&inner),
            &encap4(&inner, port, REAL1),
            &[(Stat::TxEncap, 1), (Stat::SynFloodUntabled, 1)],
        )
        .map_err(|e| format!("SYN from port {port}: {e}"))?;
    }
    // A SYN of the flow itself takes the ring and leaves the entry alone.
    let inner = syn4(CLIENT_PORT);
    check(
        &mut bal,
        &frame4(&inner),
        &encap4(&inner, CLIENT_PORT, REAL1),
        &[(Stat::TxEncap, 1), (Stat::SynFloodUntabled, 1)],
    )?;
    expect_entry(&bal, &established, Some(2))?;
    // Its packets still find it.
    let inner = tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, b"still here");
    check(&mut bal, &frame4(&inner), &encap4(&inner, CLIENT_PORT, REAL2), &[(Stat::TxEncap, 1)])?;
    if bal.conn_count() != 1 {
        return Err(format!("{} connection-table entries, want the established one", bal.conn_count()));
    }
    Ok(())
}

/// The test's CPU started a window of one flow since `start`.
fn fresh_window(bal: &Balancer, start: u64) -> Result<(), String> {
    let windows = bal.syn_flood_windows().unwrap();
    let fresh = windows.iter().filter(|w| w.new_flows == 1 && w.window_start_ns >= start).count();
    if fresh != 1 {
        return Err(format!("want one CPU with a new window of one flow, got {windows:?}"));
    }
    Ok(())
}

fn window_rollover_at_the_threshold_leaves_flood_mode() -> Result<(), String> {
    // At the threshold, but the window began two seconds ago: the flow that
    // would cross it reads the clock and starts a new window.
    let mut bal = flood_world(THRESHOLD, THRESHOLD as u64, 2_000_000_000);
    let start = monotonic_coarse_ns();
    let inner = syn4(41003);
    check(&mut bal, &frame4(&inner), &encap4(&inner, 41003, REAL1), &[(Stat::TxEncap, 1)])?;
    expect_entry(&bal, &flow4(41003), Some(1))?;
    fresh_window(&bal, start)
}

fn window_rollover_during_a_flood_leaves_it_within_the_clock_period() -> Result<(), String> {
    // Far over the threshold, the window began two seconds ago: in flood
    // mode the clock is read every SYN_FLOOD_CLOCK_EVERY flows, so the mode
    // ends within that many SYNs; those before go untabled.
    let mut bal = flood_world(THRESHOLD, 1_000_000, 2_000_000_000);
    if bal.syn_flood_cpus().unwrap() != 0 {
        return Err("a CPU whose window ended counts as flooded".into());
    }
    let start = monotonic_coarse_ns();
    for n in 1..=lb_common::SYN_FLOOD_CLOCK_EVERY as u16 {
        let port = 42000 + n;
        let inner = syn4(port);
        let before = snapshot(&bal);
        let (action, out) = run(&mut bal, &frame4(&inner));
        if action != XDP_TX || out != encap4(&inner, port, REAL1) {
            return Err(format!("SYN {n}: action {action}, output {}", diff(&out, &encap4(&inner, port, REAL1))));
        }
        let moved: Vec<Stat> = changed(&before, &snapshot(&bal)).into_iter().map(|(s, ..)| s).collect();
        match moved.as_slice() {
            [Stat::TxEncap, Stat::SynFloodUntabled] => expect_entry(&bal, &flow4(port), None)?,
            [Stat::TxEncap] => {
                expect_entry(&bal, &flow4(port), Some(1))?;
                return fresh_window(&bal, start);
            }
            other => return Err(format!("SYN {n}: counters {other:?}")),
        }
    }
    Err(format!("still in flood mode after {} SYNs in a window that ended", lb_common::SYN_FLOOD_CLOCK_EVERY))
}

fn other_misses_are_tabled_during_a_flood() -> Result<(), String> {
    let mut bal = flooded();
    let before = flows_counted(&bal);
    let ack = tcp4(CLIENT4, VIP4, 41004, PORT_HTTP, pb::TCP_ACK, b"no SYN seen");
    check(&mut bal, &frame4(&ack), &encap4(&ack, 41004, REAL1), &[(Stat::TxEncap, 1), (Stat::ConnMiss, 1)])?;
    expect_entry(&bal, &flow4(41004), Some(1))?;
    let udp = udp4(CLIENT4, VIP4, 41005, PORT_DNS, b"query");
    let hash = encap_hash(CLIENT4.into(), 41005, VIP4.into(), PORT_DNS, IPPROTO_UDP);
    check(&mut bal, &frame4(&udp), &expect_ipip4(&udp, REAL2, hash), &[(Stat::TxEncap, 1), (Stat::ConnMiss, 1)])?;
    expect_entry(&bal, &flow(CLIENT4.into(), 41005, VIP4.into(), PORT_DNS, IPPROTO_UDP), Some(2))?;
    if flows_counted(&bal) != before + 2 {
        return Err(format!("the window counted {} new flows, want 2", flows_counted(&bal) - before));
    }
    Ok(())
}

fn threshold_zero_is_off() -> Result<(), String> {
    let mut bal = flood_world(0, 1_000_000, 0);
    let before = bal.syn_flood_windows().unwrap();
    if bal.syn_flood_cpus().unwrap() != 0 {
        return Err("with threshold 0 a CPU counts as flooded".into());
    }
    let inner = syn4(41006);
    check(&mut bal, &frame4(&inner), &encap4(&inner, 41006, REAL1), &[(Stat::TxEncap, 1)])?;
    expect_entry(&bal, &flow4(41006), Some(1))?;
    if bal.syn_flood_windows().unwrap() != before {
        return Err("with threshold 0 the window moved".into());
    }
    Ok(())
}

fn flooded_cpus_are_counted() -> Result<(), String> {
    let bal = flooded();
    let cpus = bal.syn_flood_windows().unwrap().len() as u32;
    match bal.syn_flood_cpus().unwrap() {
        n if n == cpus && n > 0 => Ok(()),
        n => Err(format!("{n} CPUs in flood mode, want all {cpus}")),
    }
}

/// A fixture: Ok, or what differed.
type Fixture = fn() -> Result<(), String>;

fn main() -> std::process::ExitCode {
    let trials: Vec<(&str, Fixture)> = vec![
        ("v4 syn below the threshold: tabled, counted in the window", syn_below_threshold_is_tabled),
        ("v4 syn over the threshold: forwarded untabled, the table unchanged", syn_over_threshold_is_untabled),
        ("v6 syn over the threshold: forwarded untabled", v6_syn_over_threshold_is_untabled),
        (
            "established entry during a flood: neither evicted by its set's SYNs nor overwritten by its own",
            established_entry_survives_a_flood_of_its_set,
        ),
        (
            "window rollover at the threshold: the next syn reads the clock and is tabled",
            window_rollover_at_the_threshold_leaves_flood_mode,
        ),
        (
            "window rollover during a flood: a syn is tabled again within SYN_FLOOD_CLOCK_EVERY",
            window_rollover_during_a_flood_leaves_it_within_the_clock_period,
        ),
        ("ack and udp misses during a flood: tabled and counted", other_misses_are_tabled_during_a_flood),
        ("threshold 0: off, the window untouched", threshold_zero_is_off),
        ("flooded cpus: counted from the windows", flooded_cpus_are_counted),
    ];
    let trials = trials.into_iter().map(|(name, f)| Trial::test(name, move || f().map_err(Into::into))).collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
