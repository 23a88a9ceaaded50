//! The backends' servers, run on threads inside each backend's namespace:
//! HTTP (answers which backend it is), TCP echo (a greeting line, then every
//! byte back) and UDP echo. They count what they served.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{Backend, ECHO_PORT, HTTP_PORT, UDP_PORT};

/// What one backend served.
#[derive(Default, Debug)]
pub struct Served {
    pub http: AtomicU64,
    pub echo: AtomicU64,
    pub udp: AtomicU64,
}

pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub served: Vec<Arc<Served>>,
    /// Per backend, per TCP service (HTTP, echo): its own stop flag and
    /// accept thread, so one server can stop (its port then refuses) and
    /// start again while established connections carry on.
    listeners: Vec<[Option<Listener>; 2]>,
}

/// A running accept loop: its own stop flag and its thread.
type Listener = (Arc<AtomicBool>, JoinHandle<()>);

/// The TCP services a backend runs.
#[derive(Clone, Copy, Debug)]
pub enum Service {
    Http = 0,
    Echo = 1,
}

fn any(port: u16) -> SocketAddr {
    // Dual-stack: one socket serves the IPv4 and the IPv6 VIP.
    SocketAddr::from(([0u16; 8], port))
}

impl Servers {
    pub fn start(backends: &[Backend]) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut served = Vec::new();
        let mut listeners = Vec::new();
        for b in backends {
            let counts = Arc::new(Served::default());
            let name = format!("backend-{}", b.index);
            // Sockets are made inside the namespace, then served from
            // ordinary threads.
            let (http, echo, udp) = b.ns.run(|| {
                let http = TcpListener::bind(any(HTTP_PORT)).context("bind http")?;
                let echo = TcpListener::bind(any(ECHO_PORT)).context("bind echo")?;
                let udp = UdpSocket::bind(any(UDP_PORT)).context("bind udp")?;
                Ok((http, echo, udp))
            })?;
            let mut own = [None, None];
            for (slot, (listener, echo_mode)) in own.iter_mut().zip([(http, false), (echo, true)]) {
                *slot = Some(spawn_accept(listener, echo_mode, name.clone(), counts.clone(), stop.clone())?);
            }
            listeners.push(own);
            udp.set_read_timeout(Some(Duration::from_millis(100)))?;
            let (stop2, counts2, name2) = (stop.clone(), counts.clone(), name.clone());
            threads.push(std::thread::spawn(move || udp_loop(udp, &name2, &counts2, &stop2)));
            served.push(counts);
        }
        Ok(Servers { stop, threads, served, listeners })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for (own_stop, t) in self.listeners.iter_mut().flat_map(|l| l.iter_mut()).filter_map(Option::take) {
            own_stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }

    /// Stops one backend's server: its listening socket closes (new
    /// connections are refused); connections it accepted carry on.
    pub fn stop_service(&mut self, backend: usize, service: Service) {
        if let Some((own_stop, t)) = self.listeners[backend][service as usize].take() {
            own_stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }

    /// Starts a stopped server again.
    pub fn start_service(&mut self, backend: &Backend, service: Service) -> Result<()> {
        let port = match service {
            Service::Http => HTTP_PORT,
            Service::Echo => ECHO_PORT,
        };
        let listener = backend.ns.run(|| TcpListener::bind(any(port)).context("bind"))?;
        let name = format!("backend-{}", backend.index);
        let counts = self.served[backend.index].clone();
        let handle = spawn_accept(listener, matches!(service, Service::Echo), name, counts, self.stop.clone())?;
        self.listeners[backend.index][service as usize] = Some(handle);
        Ok(())
    }

    /// HTTP requests served per backend.
    pub fn http_counts(&self) -> Vec<u64> {
        self.served.iter().map(|s| s.http.load(Ordering::Relaxed)).collect()
    }

    pub fn echo_counts(&self) -> Vec<u64> {
        self.served.iter().map(|s| s.echo.load(Ordering::Relaxed)).collect()
    }

    pub fn udp_counts(&self) -> Vec<u64> {
        self.served.iter().map(|s| s.udp.load(Ordering::Relaxed)).collect()
    }
}

fn spawn_accept(
    listener: TcpListener,
    echo: bool,
    name: String,
    counts: Arc<Served>,
    all_stop: Arc<AtomicBool>,
) -> Result<Listener> {
    listener.set_nonblocking(true)?;
    let own_stop = Arc::new(AtomicBool::new(false));
    let own = own_stop.clone();
    let t = std::thread::spawn(move || accept_loop(listener, echo, &name, &counts, &all_stop, &own));
    Ok((own_stop, t))
}

fn accept_loop(
    listener: TcpListener,
    echo: bool,
    name: &str,
    counts: &Arc<Served>,
    stop: &AtomicBool,
    own_stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) && !own_stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (name, counts) = (name.to_string(), counts.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    let _ = if echo { serve_echo(stream, &name, &counts) } else { serve_http(stream, &name, &counts) };
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_http(stream: TcpStream, name: &str, counts: &Served) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    // Read the request head (bounded).
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    counts.http.fetch_add(1, Ordering::Relaxed);
    let body = format!("{name}\n");
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.shutdown(Shutdown::Write)
}

fn serve_echo(mut stream: TcpStream, name: &str, counts: &Served) -> std::io::Result<()> {
    counts.echo.fetch_add(1, Ordering::Relaxed);
    stream.write_all(format!("{name}\n").as_bytes())?;
    let mut buf = [0u8; 16384];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return stream.shutdown(Shutdown::Write);
        }
        stream.write_all(&buf[..n])?;
    }
}

fn udp_loop(sock: UdpSocket, name: &str, counts: &Served, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            counts.udp.fetch_add(1, Ordering::Relaxed);
            let mut reply = format!("{name}\n").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from);
        }
    }
}
