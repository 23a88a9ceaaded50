//! A packet-capture session: what to capture ([`CaptureSpec`]), the data
//! plane's filter for it, the control plane's own filters (VIP, backend:
//! read from the recorded frames), and the pcapng stream the records
//! become. Each record is two packets in the file, the frame as it arrived
//! and, when it left by XDP_TX, as it left (encapsulated, or the ICMP
//! reply), each with a comment naming the direction, the reason counter and
//! the action (pcapng rather than pcap: comments carry them, and tcpdump,
//! tshark and Wireshark read it).

use std::{
    borrow::Cow,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use lb_common::{
    CaptureFilter, CaptureRecord, Stat, CAPTURE_F_DROPS, CAPTURE_F_REASON, CAPTURE_F_VIP_TRAFFIC, CAPTURE_SNAPLEN_MAX,
};
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption},
        },
        PcapNgWriter,
    },
    DataLink,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};

use crate::{dataplane::monotonic_ns, model::VipId};

/// Records a capture takes when the call names no count.
pub const DEFAULT_COUNT: u64 = 1000;
pub const MAX_COUNT: u64 = 1_000_000;
/// How long a capture runs when the call names no duration (seconds).
pub const DEFAULT_DURATION_SECS: u64 = 10;
pub const MAX_DURATION_SECS: u64 = 3600;
/// While nothing matches, an interface-statistics block goes out this
/// often: the connection is never idle long enough for the API's idle
/// timeout to cut a quiet capture, and a client that went away is noticed.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// What to capture; every filter given must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    /// Packets to this VIP (its address, protocol, and port unless 0).
    pub vip: Option<VipId>,
    /// Packets sent to this backend.
    pub backend: Option<IpAddr>,
    /// Packets counted under this reason.
    pub reason: Option<Stat>,
    /// Dropped packets only.
    pub drops: bool,
    /// Stop after this many packets (records).
    pub count: u64,
    pub duration: Duration,
    /// Bytes of each frame, 1..=CAPTURE_SNAPLEN_MAX.
    pub snaplen: u32,
}

#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum SpecError {
    #[error("count must be in 1..={MAX_COUNT}, not {0}")]
    Count(u64),
    #[error("duration_secs must be in 1..={MAX_DURATION_SECS}, not {0}")]
    Duration(u64),
    #[error("snaplen must be in 1..={CAPTURE_SNAPLEN_MAX}, not {0}")]
    Snaplen(u32),
    #[error("'{0}' is not a reason counter (see GET /v1/stats for their names)")]
    Reason(String),
    #[error("reason and drops exclude each other")]
    ReasonAndDrops,
}

/// The reason counter named `name`.
pub fn parse_reason(name: &str) -> Result<Stat, SpecError> {
    Stat::ALL.iter().copied().find(|s| s.name() == name).ok_or_else(|| SpecError::Reason(name.to_string()))
}

impl CaptureSpec {
    /// A spec from the call's values, each checked; absent ones take the
    /// defaults.
    pub fn new(
        vip: Option<VipId>,
        backend: Option<IpAddr>,
        reason: Option<Stat>,
        drops: bool,
        count: Option<u64>,
        duration_secs: Option<u64>,
        snaplen: Option<u32>,
    ) -> Result<Self, SpecError> {
        let count = count.unwrap_or(DEFAULT_COUNT);
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(SpecError::Count(count));
        }
        let secs = duration_secs.unwrap_or(DEFAULT_DURATION_SECS);
        if !(1..=MAX_DURATION_SECS).contains(&secs) {
            return Err(SpecError::Duration(secs));
        }
        let snaplen = snaplen.unwrap_or(CAPTURE_SNAPLEN_MAX);
        if !(1..=CAPTURE_SNAPLEN_MAX).contains(&snaplen) {
            return Err(SpecError::Snaplen(snaplen));
        }
        if reason.is_some() && drops {
            return Err(SpecError::ReasonAndDrops);
        }
        Ok(Self { vip, backend, reason, drops, count, duration: Duration::from_secs(secs), snaplen })
    }

    /// The data plane's filter for this spec, armed until `deadline_ns`.
    pub fn filter(&self, deadline_ns: u64) -> CaptureFilter {
        let mut flags = 0;
        if self.drops {
            flags |= CAPTURE_F_DROPS;
        }
        if self.reason.is_some() {
            flags |= CAPTURE_F_REASON;
        }
        if self.vip.is_some() || self.backend.is_some() {
            flags |= CAPTURE_F_VIP_TRAFFIC;
        }
        CaptureFilter {
            armed: 1,
            flags,
            reason: self.reason.map_or(0, |s| s as u32),
            snaplen: self.snaplen,
            deadline_ns,
            lost: 0,
        }
    }

    /// The filters the data plane leaves to us: the VIP (from the frame as
    /// it arrived) and the backend (the outer destination as it left).
    pub fn matches(&self, rec: &CaptureRecord) -> bool {
        let arrived = &rec.arrived[..rec.header.arrived_cap.min(CAPTURE_SNAPLEN_MAX) as usize];
        let left = &rec.left[..rec.header.left_cap.min(CAPTURE_SNAPLEN_MAX) as usize];
        if let Some(vip) = &self.vip {
            let Some(dst) = destination(arrived) else { return false };
            let port_ok = vip.port == 0 || dst.port == Some(vip.port);
            if dst.addr != vip.addr || dst.proto != vip.proto.number() || !port_ok {
                return false;
            }
        }
        if let Some(backend) = self.backend {
            if destination(left).map(|d| d.addr) != Some(backend) {
                return false;
            }
        }
        true
    }
}

/// A frame's IP destination, protocol and (TCP/UDP) destination port.
struct Destination {
    addr: IpAddr,
    proto: u8,
    port: Option<u16>,
}

/// Reads the destination of an Ethernet frame (one VLAN tag at most).
fn destination(frame: &[u8]) -> Option<Destination> {
    let mut l3 = 14;
    let mut ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ether_type == 0x8100 {
        ether_type = u16::from_be_bytes(frame.get(16..18)?.try_into().ok()?);
        l3 = 18;
    }
    let (addr, proto, l4) = match ether_type {
        0x0800 => {
            let ihl = (*frame.get(l3)? & 0x0f) as usize * 4;
            let dst: [u8; 4] = frame.get(l3 + 16..l3 + 20)?.try_into().ok()?;
            (IpAddr::from(dst), *frame.get(l3 + 9)?, l3 + ihl)
        }
        0x86dd => {
            let dst: [u8; 16] = frame.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            (IpAddr::from(dst), *frame.get(l3 + 6)?, l3 + 40)
        }
        _ => return None,
    };
    let port = match proto {
        lb_common::IPPROTO_TCP | lb_common::IPPROTO_UDP => {
            frame.get(l4 + 2..l4 + 4).map(|p| u16::from_be_bytes([p[0], p[1]]))
        }
        _ => None,
    };
    Some(Destination { addr, proto, port })
}

/// Turns records into pcapng bytes.
pub struct PcapNg {
    writer: PcapNgWriter<Vec<u8>>,
    /// Wall-clock time at monotonic time 0, for the packets' timestamps.
    epoch_offset: Duration,
}

impl PcapNg {
    /// A stream whose first bytes (from [`PcapNg::take`]) are the section
    /// and interface headers.
    pub fn new(snaplen: u32) -> Self {
        let mut writer = PcapNgWriter::new(Vec::new()).expect("writing to memory");
        // pcap-file writes timestamps in nanoseconds: say so (the default
        // resolution is microseconds).
        let options = vec![InterfaceDescriptionOption::IfTsResol(9)];
        let interface = InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen, options };
        writer.write_pcapng_block(interface).expect("writing to memory");
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let epoch_offset = wall.saturating_sub(Duration::from_nanos(monotonic_ns()));
        Self { writer, epoch_offset }
    }

    /// Adds one record: the frame as it arrived and, if it left, as it left.
    pub fn push(&mut self, rec: &CaptureRecord) {
        let h = rec.header;
        let timestamp = self.epoch_offset + Duration::from_nanos(h.ktime_ns);
        let (reason, action) = match Stat::ALL.get(h.stat as usize) {
            Some(s) => (s.name(), s.action().name()),
            None => ("unknown", "unknown"),
        };
        let mut frame = |data: &[u8], len: u32, comment: String| {
            let block = EnhancedPacketBlock {
                interface_id: 0,
                timestamp,
                original_len: len,
                data: Cow::Borrowed(data),
                options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
            };
            self.writer.write_pcapng_block(block).expect("writing to memory");
        };
        let cap = |n: u32| n.min(CAPTURE_SNAPLEN_MAX) as usize;
        frame(&rec.arrived[..cap(h.arrived_cap)], h.arrived_len, format!("arrived; reason={reason} action={action}"));
        if h.left_len > 0 {
            frame(&rec.left[..cap(h.left_cap)], h.left_len, format!("left; reason={reason} action={action}"));
        }
    }

    /// Adds an interface-statistics block: the packets delivered so far.
    pub fn statistics(&mut self, delivered: u64) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let block = InterfaceStatisticsBlock {
            interface_id: 0,
            // The interface's resolution: nanoseconds.
            timestamp: now.as_nanos() as u64,
            options: vec![InterfaceStatisticsOption::IsbUsrDeliv(delivered)],
        };
        self.writer.write_pcapng_block(block).expect("writing to memory");
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.writer.get_mut())
    }
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Count,
    Duration,
    ClientGone,
    Error,
}

/// Streams the ring's matching records as pcapng into `out` until the
/// count, the duration, or the receiver goes away. Returns the ring (for
/// the next session), how many records matched and why it ended. The
/// caller arms the data plane before and disarms it after.
pub async fn stream(
    ring: RingBuf<MapData>,
    spec: CaptureSpec,
    out: mpsc::Sender<Vec<u8>>,
) -> (RingBuf<MapData>, u64, Ended) {
    let mut pcap = PcapNg::new(spec.snaplen);
    let deadline = tokio::time::Instant::now() + spec.duration;
    // SAFETY: the ring's fd is its map's, owned by the RingBuf the AsyncFd
    // holds until into_inner: open and the same for the whole time.
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            let (ring, error) = e.into_parts();
            tracing::error!(%error, "capture: polling the ring");
            return (ring, 0, Ended::Error);
        }
    };
    let mut taken = 0u64;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    if out.send(pcap.take()).await.is_err() {
        return (ring.into_inner(), 0, Ended::ClientGone);
    }
    let ended = 'session: loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { break Ended::Error };
                let mut batch = 0;
                while let Some(item) = guard.get_inner_mut().next() {
                    if item.len() < size_of::<CaptureRecord>() {
                        continue;
                    }
                    // SAFETY: a whole record, plain data (aya::Pod), read
                    // unaligned out of the ring.
                    let rec = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CaptureRecord>()) };
                    drop(item);
                    if spec.matches(&rec) {
                        pcap.push(&rec);
                        taken += 1;
                        batch += 1;
                        if taken == spec.count {
                            break;
                        }
                    }
                }
                guard.clear_ready();
                if batch > 0 && out.send(pcap.take()).await.is_err() {
                    break 'session Ended::ClientGone;
                }
                if taken == spec.count {
                    break 'session Ended::Count;
                }
            }
            _ = keepalive.tick() => {
                pcap.statistics(taken);
                if out.send(pcap.take()).await.is_err() {
                    break 'session Ended::ClientGone;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break Ended::Duration,
            _ = out.closed() => break Ended::ClientGone,
        }
    };
    (ring.into_inner(), taken, ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_bounded() {
        let ok = CaptureSpec::new(None, None, None, false, None, None, None).unwrap();
        assert_eq!((ok.count, ok.duration.as_secs(), ok.snaplen), (DEFAULT_COUNT, DEFAULT_DURATION_SECS, 256));
        let spec = |c, d, s| CaptureSpec::new(None, None, None, false, c, d, s);
        assert_eq!(spec(Some(0), None, None), Err(SpecError::Count(0)));
        assert_eq!(spec(Some(MAX_COUNT + 1), None, None), Err(SpecError::Count(MAX_COUNT + 1)));
        assert_eq!(spec(None, Some(0), None), Err(SpecError::Duration(0)));
        assert_eq!(spec(None, Some(MAX_DURATION_SECS + 1), None), Err(SpecError::Duration(3601)));
        assert_eq!(spec(None, None, Some(257)), Err(SpecError::Snaplen(257)));
        let both = CaptureSpec::new(None, None, Some(Stat::DropNoBackend), true, None, None, None);
        assert_eq!(both, Err(SpecError::ReasonAndDrops));
        assert_eq!(parse_reason("drop_no_backend"), Ok(Stat::DropNoBackend));
        assert!(parse_reason("drop_everything").is_err());
    }

    #[test]
    fn the_control_plane_filters_read_the_frames() {
        let mut rec = CaptureRecord {
            header: Default::default(),
            arrived: [0; CAPTURE_SNAPLEN_MAX as usize],
            left: [0; CAPTURE_SNAPLEN_MAX as usize],
        };
        // Ethernet, IPv4 to 10.0.0.10, TCP to port 80.
        let inner: Vec<u8> = [&[0u8; 12][..], &[0x08, 0x00], &[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]]
            .concat()
            .into_iter()
            .chain([192, 0, 2, 7, 10, 0, 0, 10, 0x9c, 0x40, 0, 80])
            .collect();
        rec.arrived[..inner.len()].copy_from_slice(&inner);
        rec.header.arrived_cap = inner.len() as u32;
        // Encapsulated to 10.1.0.1.
        let outer: Vec<u8> = [&[0u8; 12][..], &[0x08, 0x00], &[0x45, 0, 0, 60, 0, 0, 0, 0, 64, 4, 0, 0]]
            .concat()
            .into_iter()
            .chain([10, 255, 0, 1, 10, 1, 0, 1])
            .collect();
        rec.left[..outer.len()].copy_from_slice(&outer);
        rec.header.left_cap = outer.len() as u32;
        let with = |vip: &str, backend: Option<&str>| CaptureSpec {
            vip: Some(vip.parse().unwrap()),
            backend: backend.map(|b| b.parse().unwrap()),
            ..CaptureSpec::new(None, None, None, false, None, None, None).unwrap()
        };
        assert!(with("tcp:10.0.0.10:80", None).matches(&rec));
        assert!(with("tcp:10.0.0.10:0", Some("10.1.0.1")).matches(&rec));
        assert!(!with("tcp:10.0.0.10:81", None).matches(&rec));
        assert!(!with("udp:10.0.0.10:80", None).matches(&rec));
        assert!(!with("tcp:10.0.0.11:80", None).matches(&rec));
        assert!(!with("tcp:10.0.0.10:80", Some("10.1.0.2")).matches(&rec));
        rec.header.left_cap = 0;
        assert!(!with("tcp:10.0.0.10:80", Some("10.1.0.1")).matches(&rec), "it did not leave");
    }
}
