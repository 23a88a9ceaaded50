//! One probe: an ordinary kernel socket to VIP:port carrying the backend's
//! mark (`SO_MARK`), so the TC program sends it through the tunnel to that
//! backend. TCP connects; HTTP sends `GET path` (hyper's HTTP/1 client) and
//! checks the status; UDP sends a datagram and waits for any reply. Every
//! failure is a short reason: "timeout", "refused", "status 503", ...

use std::{net::SocketAddr, time::Duration};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::config::health::{CheckKind, HealthCheck};

/// The datagram a UDP probe sends.
pub const UDP_PAYLOAD: &[u8] = b"xdp-lb health probe\n";

/// Runs one probe of `check` to `target` marked `mark`, bounded by the
/// check's timeout.
pub async fn probe(check: &HealthCheck, target: SocketAddr, mark: u32) -> Result<(), String> {
    let run = async {
        match check.kind {
            CheckKind::Tcp => connect(target, mark).await.map(drop),
            CheckKind::Http => http(check, target, mark).await,
            CheckKind::Udp => udp(target, mark).await,
            CheckKind::None => Ok(()),
        }
    };
    match tokio::time::timeout(check.timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!("timeout after {}", humantime::format_duration(round_ms(check.timeout)))),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        _ => e.to_string(),
    }
}

/// A socket of `ty` for `target`, non-blocking from the start
/// (`SOCK_NONBLOCK`: no `fcntl` round trip per probe), carrying `mark`.
fn marked(target: SocketAddr, ty: Type, proto: Protocol, mark: u32) -> Result<Socket, String> {
    let sock =
        Socket::new(Domain::for_address(target), ty.nonblocking(), Some(proto)).map_err(|e| format!("socket: {e}"))?;
    sock.set_mark(mark).map_err(|e| format!("SO_MARK: {e}"))?;
    Ok(sock)
}

async fn connect(target: SocketAddr, mark: u32) -> Result<TcpStream, String> {
    let sock = marked(target, Type::STREAM, Protocol::TCP, mark)?;
    // Close with a reset, as HAProxy's checks do: no FIN exchange and no
    // TIME_WAIT socket per probe (1,000 probes/s would hold 60,000).
    sock.set_linger(Some(Duration::ZERO)).map_err(|e| format!("SO_LINGER: {e}"))?;
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    sock.connect(target).await.map_err(|e| reason(&e))
}

async fn http(check: &HealthCheck, target: SocketAddr, mark: u32) -> Result<(), String> {
    let stream = connect(target, mark).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(check.path.as_str())
        .header(hyper::header::HOST, target.to_string())
        .header(hyper::header::USER_AGENT, "xdp-lb-health")
        .header(hyper::header::CONNECTION, "close")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| format!("http request: {e}"))?;
    let result = sender.send_request(request).await;
    conn.abort();
    let status = result.map_err(|e| format!("http: {e}"))?.status().as_u16();
    let (lo, hi) = check.expect_status;
    if (lo..=hi).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Not connected: a UDP server that answers from its own address instead
/// of the VIP (no `IP_PKTINFO`) still counts as answering; any datagram to
/// the probe's own ephemeral port is the reply.
async fn udp(target: SocketAddr, mark: u32) -> Result<(), String> {
    let sock = marked(target, Type::DGRAM, Protocol::UDP, mark)?;
    let any: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    sock.bind(&any.into()).map_err(|e| format!("udp bind: {e}"))?;
    let sock = UdpSocket::from_std(std::net::UdpSocket::from(sock)).map_err(|e| format!("udp socket: {e}"))?;
    sock.send_to(UDP_PAYLOAD, target).await.map_err(|e| reason(&e))?;
    let mut buf = [0u8; 512];
    sock.recv_from(&mut buf).await.map(drop).map_err(|e| reason(&e))
}
