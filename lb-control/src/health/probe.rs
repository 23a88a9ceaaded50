//! One probe: an ordinary kernel socket to VIP:port carrying the backend's
//! mark (`SO_MARK`), so the TC program sends it through the tunnel to that
//! backend. TCP connects; HTTP sends `GET path` (hyper's HTTP/1 client) and
//! checks the status; UDP sends a datagram and waits for any reply. Every
//! failure is a short reason: "timeout", "refused", "status 503", ...
//!
//! TCP and HTTP probes of one pair reuse one socket: after each probe the
//! connection is dissolved with `connect(AF_UNSPEC)` (a reset, as a
//! zero-linger close sends) and the next probe connects the same socket
//! again. That saves a `socket`, a `close` (an inode and a dentry) and an
//! epoll registration per probe; each connection is still new (a new
//! ephemeral port, a full handshake), so the check is the same. A TCP check
//! reads the handshake's outcome on the checker's probe grid
//! (`TCP_INFO`), so it needs no epoll registration and no wake-up of its
//! own (the checker's batch drives it, [`super::batch`]); HTTP registers
//! the socket for the exchange.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpStream, UdpSocket};

use crate::config::health::{CheckKind, HealthCheck};

/// The datagram a UDP probe sends.
pub const UDP_PAYLOAD: &[u8] = b"xdp-lb health probe\n";

/// One (VIP, backend) pair's prober: its check, where probes go, their
/// mark, and the TCP socket kept between probes.
pub struct Prober {
    check: HealthCheck,
    target: SocketAddr,
    mark: u32,
    /// The socket between probes: unconnected, not registered with epoll.
    idle: Option<Socket>,
    /// The socket during a probe, registered with the runtime. Registered
    /// anew per connection: tokio keeps a socket's "closed" readiness for
    /// as long as it is registered, and a dissolved connection polls closed.
    connected: Option<TcpStream>,
}

impl Prober {
    pub fn new(check: HealthCheck, target: SocketAddr, mark: u32) -> Self {
        Prober { check, target, mark, idle: None, connected: None }
    }

    /// Runs one probe, bounded by the check's timeout, and leaves the
    /// socket unconnected for the next one. Returns the result and how
    /// long the check took (for TCP, the handshake's round trip).
    pub async fn probe(&mut self) -> (Result<(), String>, Duration) {
        let timeout = self.check.timeout;
        let start = Instant::now();
        let result = match tokio::time::timeout(timeout, self.run()).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(timeout)),
        };
        self.disconnect();
        (result, start.elapsed())
    }

    /// An HTTP or UDP probe. TCP checks run in the checker's batch
    /// ([`Prober::tcp_start`], [`Prober::tcp_outcome`]), not here.
    async fn run(&mut self) -> Result<(), String> {
        match self.check.kind {
            CheckKind::Http => {
                let (check, target) = (self.check.clone(), self.target);
                let stream = self.connect().await?;
                http(&check, target, stream).await
            }
            CheckKind::Udp => udp(self.target, self.mark).await,
            CheckKind::Tcp => Err("TCP checks run in the checker's batch".into()),
            CheckKind::None => Ok(()),
        }
    }

    /// Starts a TCP check: a non-blocking `connect` of the pair's socket.
    pub fn tcp_start(&mut self) -> Result<(), String> {
        let sock = self.start_connect()?;
        self.idle = Some(sock);
        Ok(())
    }

    /// The started TCP check's outcome once the handshake ended: its round
    /// trip as the kernel measured it, or why it failed. `None` while the
    /// SYN waits for an answer.
    pub fn tcp_outcome(&mut self) -> Option<Result<Duration, String>> {
        let Some(sock) = &self.idle else { return Some(Err("no probe socket".into())) };
        let info = match tcp_info(sock) {
            Ok(info) => info,
            Err(e) => return Some(Err(e)),
        };
        match handshake_state(info.tcpi_state) {
            Handshake::Done => Some(Ok(Duration::from_micros(info.tcpi_rtt.into()))),
            Handshake::Pending => None,
            Handshake::Failed => Some(match sock.take_error() {
                Ok(Some(e)) => Err(reason(&e)),
                Ok(None) => Err(format!("TCP state {}", info.tcpi_state)),
                Err(e) => Err(format!("SO_ERROR: {e}")),
            }),
        }
    }

    /// Starts connecting the pair's socket (made on first use).
    fn start_connect(&mut self) -> Result<Socket, String> {
        let sock = match self.idle.take() {
            Some(sock) => sock,
            None => {
                let sock = marked(self.target, Type::STREAM, Protocol::TCP, self.mark)?;
                // Should the socket ever be closed connected: a reset, no
                // TIME_WAIT socket (1,000 probes/s would hold 60,000).
                sock.set_linger(Some(Duration::ZERO)).map_err(|e| format!("SO_LINGER: {e}"))?;
                sock
            }
        };
        match sock.connect(&self.target.into()) {
            Ok(()) => Ok(sock),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
            Err(e) => {
                self.idle = Some(sock);
                Err(reason(&e))
            }
        }
    }

    /// Connects the pair's socket and registers it with the runtime, for a
    /// check that talks over the connection.
    async fn connect(&mut self) -> Result<&mut TcpStream, String> {
        // Connect first, register after: registered while unconnected, the
        // socket would poll closed and stay "ready" for the whole probe.
        let sock = self.start_connect()?;
        let stream = TcpStream::from_std(std::net::TcpStream::from(sock)).map_err(|e| format!("epoll: {e}"))?;
        let stream = self.connected.insert(stream);
        loop {
            stream.writable().await.map_err(|e| format!("epoll: {e}"))?;
            if let Some(e) = stream.take_error().map_err(|e| format!("SO_ERROR: {e}"))? {
                return Err(reason(&e));
            }
            match stream.peer_addr() {
                Ok(_) => return Ok(stream),
                // Woken before the handshake ended: wait for the next edge.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                    let _ = stream
                        .try_io(tokio::io::Interest::WRITABLE, || Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
                }
                Err(e) => return Err(reason(&e)),
            }
        }
    }

    /// Dissolves the connection (a reset if it was established) and keeps
    /// the socket for the next probe; a socket that cannot be dissolved is
    /// closed instead and the next probe makes a new one.
    pub fn disconnect(&mut self) {
        let sock = match self.connected.take() {
            Some(stream) => match stream.into_std() {
                Ok(stream) => Socket::from(stream),
                Err(e) => {
                    tracing::debug!(error = %e, "health: releasing a probe socket");
                    return;
                }
            },
            None => match self.idle.take() {
                Some(sock) => sock,
                None => return,
            },
        };
        let unspec = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
        // SAFETY: `unspec` is a valid `sockaddr` of the length passed, and
        // the descriptor is the socket this prober owns.
        let rc = unsafe {
            libc::connect(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &unspec,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            self.idle = Some(sock);
        } else {
            tracing::debug!(error = %std::io::Error::last_os_error(), "health: dissolving a probe connection");
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Handshake {
    Done,
    Pending,
    Failed,
}

/// What a probe socket's TCP state says of its handshake. A server that
/// accepts and hangs up at once leaves the socket in CLOSE_WAIT by the
/// time it is read: the handshake completed, the check passes.
pub fn handshake_state(state: u8) -> Handshake {
    match state {
        TCP_ESTABLISHED | TCP_CLOSE_WAIT => Handshake::Done,
        TCP_SYN_SENT => Handshake::Pending,
        _ => Handshake::Failed,
    }
}

/// `tcpi_state` values (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_CLOSE_WAIT: u8 = 8;

fn tcp_info(sock: &Socket) -> Result<libc::tcp_info, String> {
    // SAFETY: `tcp_info` is plain old data; zeroes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe `info`; the descriptor is
    // the prober's socket. The kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!("TCP_INFO: {}", std::io::Error::last_os_error()));
    }
    Ok(info)
}

pub fn timed_out(timeout: Duration) -> String {
    format!("timeout after {}", humantime::format_duration(Duration::from_millis(timeout.as_millis() as u64)))
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

async fn http(check: &HealthCheck, target: SocketAddr, stream: &mut TcpStream) -> Result<(), String> {
    let (mut sender, mut conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let request = hyper::Request::get(check.path.as_str())
        .header(hyper::header::HOST, target.to_string())
        .header(hyper::header::USER_AGENT, "xdp-lb-health")
        .header(hyper::header::CONNECTION, "close")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| format!("http request: {e}"))?;
    // The connection is driven here, beside the request, not on a task of
    // its own: it borrows the prober's stream.
    let response = sender.send_request(request);
    tokio::pin!(response);
    let result = tokio::select! {
        r = &mut response => r,
        c = &mut conn => match c {
            Err(e) => Err(e),
            // Closed after the answer: the response is complete.
            Ok(()) => response.await,
        },
    };
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

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        net::TcpListener,
    };

    use super::*;

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck { kind, path: "/healthz".into(), timeout: Duration::from_secs(2), ..Default::default() }
    }

    /// An HTTP server on loopback answering `status` and closing, for
    /// `n` connections; returns the request lines it saw.
    fn http_server(n: usize, status: u16) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..n {
                let (mut conn, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                seen.push(line.trim_end().to_string());
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                        break;
                    }
                }
                write!(conn, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
            }
            seen
        });
        (addr, server)
    }

    /// A TCP check to the end: start, then read the outcome until known.
    async fn tcp_probe(prober: &mut Prober) -> Result<Duration, String> {
        prober.tcp_start()?;
        let deadline = Instant::now() + Duration::from_secs(2);
        let outcome = loop {
            if let Some(outcome) = prober.tcp_outcome() {
                break outcome;
            }
            assert!(Instant::now() < deadline, "no outcome");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        prober.disconnect();
        outcome
    }

    #[tokio::test]
    async fn one_socket_serves_many_tcp_probes_and_sees_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let mut prober = Prober::new(check(CheckKind::Tcp), target, 0);
        for _ in 0..3 {
            let rtt = tcp_probe(&mut prober).await.unwrap();
            assert!(rtt < Duration::from_secs(1), "the handshake's round trip: {rtt:?}");
            assert!(prober.idle.is_some(), "the socket is kept for the next probe");
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(prober.idle.as_ref().unwrap());
        // Three connections reached the listener, each with its own port.
        let ports: std::collections::BTreeSet<u16> = (0..3).map(|_| listener.accept().unwrap().1.port()).collect();
        assert_eq!(ports.len(), 3);
        drop(listener);
        assert_eq!(tcp_probe(&mut prober).await, Err("refused".into()));
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(prober.idle.as_ref().unwrap()), fd, "still the same socket");
    }

    #[test]
    fn a_handshake_is_done_even_if_the_server_hung_up_already() {
        assert_eq!(handshake_state(TCP_ESTABLISHED), Handshake::Done);
        assert_eq!(handshake_state(TCP_CLOSE_WAIT), Handshake::Done);
        assert_eq!(handshake_state(TCP_SYN_SENT), Handshake::Pending);
        // TCP_CLOSE (refused, reset, unreachable): the socket's error says which.
        assert_eq!(handshake_state(7), Handshake::Failed);
    }

    #[tokio::test]
    async fn http_probes_reuse_the_socket_and_judge_the_status() {
        let (target, server) = http_server(3, 200);
        let mut prober = Prober::new(check(CheckKind::Http), target, 0);
        for _ in 0..3 {
            assert_eq!(prober.probe().await.0, Ok(()));
        }
        assert_eq!(server.join().unwrap(), vec!["GET /healthz HTTP/1.1"; 3]);
        let (target, server) = http_server(1, 503);
        let mut prober = Prober::new(check(CheckKind::Http), target, 0);
        assert_eq!(prober.probe().await.0, Err("status 503".into()));
        server.join().unwrap();
    }
}
