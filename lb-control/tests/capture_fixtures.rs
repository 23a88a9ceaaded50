//! The data plane's packet capture, through BPF_PROG_TEST_RUN: unarmed it
//! records nothing; armed, each matching packet's record holds the frame
//! as it arrived and as it left, byte for byte, with its reason; the
//! filters (drops, reason, VIP traffic), the snap length and the deadline
//! hold.

mod common;

use aya::maps::{MapData, RingBuf};
use common::*;
use lb_common::{
    CaptureFilter, CaptureRecord, Stat, CAPTURE_F_DROPS, CAPTURE_F_REASON, CAPTURE_F_VIP_TRAFFIC, CAPTURE_SNAPLEN_MAX,
};
use lb_control::dataplane::{monotonic_ns, Balancer};
use lb_testkit::packet_builder as pb;

fn arm(bal: &mut Balancer, flags: u32, reason: Stat, snaplen: u32) {
    let deadline_ns = monotonic_ns() + 60_000_000_000;
    let f = CaptureFilter { armed: 1, flags, reason: reason as u32, snaplen, deadline_ns, lost: 0 };
    bal.set_capture(&f).unwrap();
}

fn records(ring: &mut RingBuf<MapData>) -> Vec<CaptureRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<CaptureRecord>());
        // SAFETY: a whole record, plain data; read unaligned from the ring.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CaptureRecord>()) });
    }
    out
}

fn syn() -> Vec<u8> {
    frame4(&tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]))
}

fn no_backend() -> Vec<u8> {
    frame4(&tcp4(CLIENT4, VIP4_EMPTY, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]))
}

fn not_for_a_vip() -> Vec<u8> {
    frame4(&tcp4(CLIENT4, OTHER4, CLIENT_PORT, PORT_HTTP, pb::TCP_SYN, &[]))
}

#[test]
fn unarmed_records_nothing_and_armed_records_both_frames() {
    let mut bal = world();
    let mut ring = bal.take_capture_ring().expect("the ring");
    assert_eq!(bal.capture().unwrap(), CaptureFilter::default(), "a new program starts unarmed");
    for frame in [syn(), no_backend(), not_for_a_vip()] {
        run(&mut bal, &frame);
    }
    assert!(records(&mut ring).is_empty(), "unarmed: no record");

    arm(&mut bal, 0, Stat::TxEncap, CAPTURE_SNAPLEN_MAX);
    let input = frame4(&tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &[0x5a; 400]));
    let (action, output) = run(&mut bal, &input);
    assert_eq!(action, XDP_TX);
    assert_eq!(run(&mut bal, &no_backend()).0, XDP_DROP);
    let got = records(&mut ring);
    assert_eq!(got.len(), 2, "one record per packet");

    let h = got[0].header;
    assert_eq!(h.stat, Stat::TxEncap as u32);
    assert_eq!((h.arrived_len, h.arrived_cap), (input.len() as u32, CAPTURE_SNAPLEN_MAX));
    assert_eq!(got[0].arrived[..], input[..256], "the frame as it arrived");
    assert_eq!((h.left_len, h.left_cap), (output.len() as u32, CAPTURE_SNAPLEN_MAX));
    assert_eq!(got[0].left[..], output[..256], "the frame as it left, encapsulated");
    assert!(h.ktime_ns > 0 && h.ktime_ns <= monotonic_ns());

    let h = got[1].header;
    assert_eq!(h.stat, Stat::DropNoBackend as u32);
    let n = no_backend().len();
    assert_eq!((h.arrived_len, h.arrived_cap), (n as u32, n as u32));
    assert_eq!(got[1].arrived[..n], no_backend()[..]);
    assert_eq!((h.left_len, h.left_cap), (0, 0), "a dropped packet does not leave");

    // Disarmed again: nothing.
    bal.set_capture(&CaptureFilter::default()).unwrap();
    run(&mut bal, &syn());
    assert!(records(&mut ring).is_empty());
    bal.return_capture_ring(ring);
}

#[test]
fn filters_snaplen_and_deadline_hold() {
    let mut bal = world();
    let mut ring = bal.take_capture_ring().unwrap();
    let send_all = |bal: &mut Balancer| {
        for frame in [syn(), no_backend(), not_for_a_vip()] {
            run(bal, &frame);
        }
    };
    let stats = |ring: &mut RingBuf<MapData>| -> Vec<u32> { records(ring).iter().map(|r| r.header.stat).collect() };

    arm(&mut bal, CAPTURE_F_DROPS, Stat::TxEncap, 256);
    send_all(&mut bal);
    assert_eq!(stats(&mut ring), [Stat::DropNoBackend as u32], "drops only");

    arm(&mut bal, CAPTURE_F_REASON, Stat::PassNonVip, 256);
    send_all(&mut bal);
    assert_eq!(stats(&mut ring), [Stat::PassNonVip as u32], "one reason");

    arm(&mut bal, CAPTURE_F_VIP_TRAFFIC, Stat::TxEncap, 256);
    send_all(&mut bal);
    assert_eq!(stats(&mut ring), [Stat::TxEncap as u32, Stat::DropNoBackend as u32], "VIP traffic only");

    arm(&mut bal, 0, Stat::TxEncap, 64);
    let big = frame4(&tcp4(CLIENT4, VIP4, CLIENT_PORT, PORT_HTTP, pb::TCP_ACK, &[7; 300]));
    let (_, out) = run(&mut bal, &big);
    let got = records(&mut ring);
    let h = got[0].header;
    assert_eq!((h.arrived_len, h.arrived_cap, h.left_len, h.left_cap), (big.len() as u32, 64, out.len() as u32, 64));
    assert_eq!((&got[0].arrived[..64], &got[0].left[..64]), (&big[..64], &out[..64]), "snap length");

    let past = CaptureFilter { armed: 1, snaplen: 256, deadline_ns: monotonic_ns() - 1, ..Default::default() };
    bal.set_capture(&past).unwrap();
    send_all(&mut bal);
    assert!(records(&mut ring).is_empty(), "past its deadline the data plane records nothing");
    bal.return_capture_ring(ring);
}
