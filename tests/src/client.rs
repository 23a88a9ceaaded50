//! Client-side helpers. Call them inside the client's namespace
//! ([`crate::Lab::in_client`]); sockets they return stay usable from any
//! thread afterwards.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::parse_greeting;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP request to the VIP; returns the backend that answered and the
/// client's address (its source port decides the backend).
pub fn http_get(vip: SocketAddr) -> Result<(usize, SocketAddr)> {
    let mut s = TcpStream::connect_timeout(&vip, TIMEOUT).with_context(|| format!("connect {vip}"))?;
    let local = s.local_addr()?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(s, "GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") {
        bail!("unexpected answer {body:?}");
    }
    Ok((parse_greeting(body.lines().last().unwrap_or(""))?, local))
}

/// A long-lived echo connection.
pub struct EchoConn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The backend that greeted us.
    pub backend: usize,
}

impl EchoConn {
    pub fn open(vip: SocketAddr) -> Result<EchoConn> {
        let stream = TcpStream::connect_timeout(&vip, TIMEOUT).with_context(|| format!("connect {vip}"))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line).context("reading the greeting")?;
        let backend = parse_greeting(&line)?;
        Ok(EchoConn { stream, reader, backend })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// Sends `data` and checks every byte comes back.
    pub fn exchange(&mut self, data: &[u8]) -> Result<()> {
        let mut writer = self.stream.try_clone()?;
        let out = data.to_vec();
        // Write and read at once: the echo may fill the socket buffers.
        let sender = std::thread::spawn(move || writer.write_all(&out));
        let mut back = vec![0u8; data.len()];
        let read = self.reader.read_exact(&mut back);
        sender.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        read.context("reading the echo")?;
        if back != data {
            let at = back.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
            bail!("echo differs from byte {at}");
        }
        Ok(())
    }

    /// Closes cleanly: our FIN, then the server's.
    pub fn close(mut self) -> Result<()> {
        self.stream.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        if !rest.is_empty() {
            bail!("{} unexpected bytes before close", rest.len());
        }
        Ok(())
    }
}

/// One UDP datagram to the VIP and its echo; returns the backend. Retries a
/// few times (the first datagram may wait for neighbour resolution).
pub fn udp_exchange(vip: SocketAddr, payload: &[u8]) -> Result<usize> {
    let bind: SocketAddr = if vip.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 4096];
    for _ in 0..5 {
        sock.send_to(payload, vip)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = &buf[..n];
            let nl = text.iter().position(|&b| b == b'\n').context("no greeting line")?;
            if &text[nl + 1..] != payload {
                bail!("UDP echo differs");
            }
            return parse_greeting(std::str::from_utf8(&text[..nl])?);
        }
    }
    bail!("no UDP answer from {vip}")
}
