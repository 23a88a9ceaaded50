//! Packet capture in the lab: `lbctl capture` while real HTTP connections
//! go through the balancer; tcpdump reads the file, and every packet is
//! there as it arrived (client → VIP) and as it left (IP-in-IP from the
//! encapsulation prefix to a backend, the same packet inside). Needs root
//! and tcpdump (scripts/setup.sh installs it).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_e2e::{backend4, client, vip_addr, workspace_bin, Lab, API, CLIENT4, HTTP_PORT, VIP4};

const RECORDS: usize = 24;

#[test]
fn a_capture_holds_each_packet_as_it_arrived_and_as_it_left() -> Result<()> {
    let mut lab = Lab::build(2, 1)?;
    lab.start_balancers()?;
    let file = lab.path("capture.pcapng");
    let vip = format!("tcp:{VIP4}:{HTTP_PORT}");
    let mut capture = lab.balancers[0]
        .ns
        .command(workspace_bin("lbctl")?)
        .args(["--api", &format!("http://{API}"), "capture", "--vip", &vip, "--count", &RECORDS.to_string()])
        .args(["--duration", "30", "-w"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting lbctl capture")?;
    // Armed once the stream's first bytes (the pcapng headers) arrived.
    let start = Instant::now();
    while std::fs::metadata(&file).map_or(0, |m| m.len()) == 0 {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = capture.kill();
            bail!("the capture did not start:\n{}", lab.balancers[0].log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Traffic to another VIP port is not captured; HTTP is.
    lab.in_client(|| {
        for _ in 0..10 {
            client::http_get(vip_addr(false, HTTP_PORT))?;
        }
        Ok(())
    })?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = capture.try_wait()? {
            break status;
        }
        if start.elapsed() > Duration::from_secs(40) {
            let _ = capture.kill();
            bail!("the capture did not stop at its count");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "lbctl capture failed: {status}\n{}", lab.balancers[0].log());
    assert!(lab.balancers[0].log().contains("capture stopped"), "{}", lab.balancers[0].log());

    let out =
        Command::new("tcpdump").args(["-nn", "-S", "-tt", "-r"]).arg(&file).output().context("running tcpdump")?;
    assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * RECORDS, "each packet arrived and left:\n{text}");
    let inner = format!("IP {CLIENT4}.");
    let to_vip = format!(" > {VIP4}.{HTTP_PORT}: Flags");
    let backends = [backend4(0).to_string(), backend4(1).to_string()];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    for pair in lines.chunks(2) {
        let (arrived, left) = (pair[0], pair[1]);
        // "-tt": seconds since the epoch, first; the packets are from the last minute.
        let stamp: f64 = arrived.split_whitespace().next().unwrap_or("").parse().unwrap_or(0.0);
        assert!((now - 60.0..=now).contains(&stamp), "timestamp {stamp}, now {now}: {arrived}");
        assert!(arrived.contains(&inner) && arrived.contains(&to_vip), "arrived: {arrived}");
        // "IP 172.16.x.y > 10.1.0.z: IP 10.10.1.2.port > 10.100.0.10.80: Flags …"
        let outer = left.split_once(": IP ").map(|(o, _)| o).unwrap_or("");
        assert!(outer.contains("IP 172.16."), "left from the encapsulation prefix: {left}");
        assert!(backends.iter().any(|b| outer.ends_with(&format!("> {b}"))), "left to a backend: {left}");
        let arrived_packet = arrived.split_once(" IP ").map(|(_, p)| p).unwrap_or("");
        let left_inner = left.split_once(": IP ").map(|(_, p)| p).unwrap_or("");
        assert_eq!(left_inner, arrived_packet, "the same packet inside the tunnel");
    }

    // The comments carry the reason and action (tcpdump -v does not show
    // pcapng comments; the bytes do).
    let raw = std::fs::read(&file)?;
    let comment = b"left; reason=tx_encap action=tx";
    assert!(raw.windows(comment.len()).any(|w| w == comment), "no reason comment in the file");

    // Piped: `-w -` into `tcpdump -r -`.
    let piped = lab.balancers[0]
        .ns
        .command(workspace_bin("lbctl")?)
        .args(["--api", &format!("http://{API}"), "capture", "--drops", "--duration", "1", "-w", "-"])
        .output()?;
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    let mut tcpdump =
        Command::new("tcpdump").args(["-nn", "-r", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    std::io::Write::write_all(&mut tcpdump.stdin.take().unwrap(), &piped.stdout)?;
    let read = tcpdump.wait_with_output()?;
    assert!(read.status.success(), "an empty capture is a valid file: {}", String::from_utf8_lossy(&read.stderr));
    assert!(read.stdout.is_empty(), "no drops in the lab: {}", String::from_utf8_lossy(&read.stdout));
    Ok(())
}
