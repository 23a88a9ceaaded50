//! `lb-demo`: builds the lab (client, router, balancer, three backends),
//! starts the daemon, sends real requests to the VIPs, shows where they went,
//! and leaves the lab up until interrupted.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Parser;
use lb_e2e::{client, vip_addr, workspace_bin, Lab, API, HTTP_PORT, UDP_PORT, VIP4, VIP6};

#[derive(Parser)]
#[command(about = "Run the xdp-lb demo lab (root)")]
struct Cli {
    /// Backends in the lab.
    #[arg(long, default_value_t = 3)]
    backends: usize,
    /// HTTP requests to send to each VIP.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Keep the lab up this many seconds, then tear it down (default: until
    /// Ctrl-C).
    #[arg(long)]
    hold_secs: Option<u64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn table(title: &str, counts: &[usize]) {
    let total: usize = counts.iter().sum::<usize>().max(1);
    println!("  {title}");
    for (i, c) in counts.iter().enumerate() {
        println!("    backend-{i}  {c:>5}  {:>5.1}%  {}", *c as f64 * 100.0 / total as f64, "#".repeat(c * 40 / total));
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    anyhow::ensure!(euid == 0, "the demo creates network namespaces: run it as root");
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!("building the lab: client, router, 1 balancer, {} backends ...", cli.backends);
    let mut lab = Lab::build(cli.backends, 1)?;
    let config = std::fs::read_to_string(&lab.balancers[0].config_path)?;
    println!("\nstarting lb-control with {}:\n", lab.balancers[0].config_path.display());
    for line in config.lines().take(16) {
        println!("    {line}");
    }
    println!("    ... ({} VIPs)\n", config.matches("[[vip]]").count());
    lab.start_balancers()?;
    println!("daemon ready; the balancer is attached (native XDP) to l0 in {}\n", lab.balancers[0].ns.name());

    let n = cli.requests;
    let started = Instant::now();
    let mut per_vip = Vec::new();
    for v6 in [false, true] {
        let vip = vip_addr(v6, HTTP_PORT);
        let answers =
            lab.in_client(|| (0..n).map(|_| client::http_get(vip).map(|(b, _)| b)).collect::<Result<Vec<_>>>())?;
        let mut counts = vec![0; cli.backends];
        for b in answers {
            counts[b] += 1;
        }
        per_vip.push((format!("HTTP to {vip}"), counts));
    }
    let udp = vip_addr(false, UDP_PORT);
    let answers = lab.in_client(|| {
        (0..n / 3).map(|i| client::udp_exchange(udp, format!("query {i}").as_bytes())).collect::<Result<Vec<_>>>()
    })?;
    let mut counts = vec![0; cli.backends];
    for b in answers {
        counts[b] += 1;
    }
    per_vip.push((format!("UDP to {udp}"), counts));
    println!(
        "sent {} HTTP requests and {} UDP queries in {:.1}s; answers came straight from the backends (DSR):\n",
        2 * n,
        n / 3,
        started.elapsed().as_secs_f64()
    );
    for (title, counts) in &per_vip {
        table(title, counts);
    }
    println!("\n  the backends' own count of HTTP requests served: {:?}", lab.servers.http_counts());

    println!("\n$ lbctl vip list\n{}", lab.balancers[0].lbctl(&["vip", "list"])?);
    println!("$ lbctl stats\n{}", lab.balancers[0].lbctl(&["stats"])?);

    let (c, l, b0) = (lab.client.name(), lab.balancers[0].ns.name(), lab.backends[0].ns.name());
    let lbctl = workspace_bin("lbctl")?;
    println!("the lab stays up. Try, in another shell (as root):");
    println!("  ip netns exec {c} curl -s http://{VIP4}/          # which backend answers");
    println!("  ip netns exec {c} curl -s http://[{VIP6}]/");
    println!("  ip netns exec {c} ping -c 2 {VIP4}                # answered by the balancer's XDP");
    println!("  ip netns exec {l} {} --api http://{API} stats", lbctl.display());
    println!(
        "  ip netns exec {l} {} --api http://{API} backend drain tcp:{VIP4}:80 {}",
        lbctl.display(),
        lb_e2e::backend4(0)
    );
    println!("  ip netns exec {l} {} --api http://{API} watch", lbctl.display());
    println!("  ip -n {l} link show l0                               # prog/xdp: the balancer");
    println!("  ip -n {b0} addr show lo                              # the VIP on a backend");
    println!("  daemon log: {}", lab.balancers[0].log_path.display());
    match cli.hold_secs {
        Some(s) => println!("\ntearing down in {s}s (or on Ctrl-C) ..."),
        None => println!("\nCtrl-C tears the lab down."),
    }
    let deadline = cli.hold_secs.map(|s| Instant::now() + Duration::from_secs(s));
    while !STOP.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("tearing down the lab ...");
    drop(lab);
    println!("done.");
    Ok(())
}
