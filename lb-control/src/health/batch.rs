//! TCP checks without a task each: the checker keeps every TCP pair here
//! and, once per grid step, reads the handshakes started the step before
//! (`TCP_INFO`) and starts the ones due (in time order: a step touches only
//! those, not every pair). A step is one wake-up of the
//! checker's thread however many pairs it serves; no timer, channel or
//! epoll registration per probe. What is left per probe is its syscalls:
//! `connect`, `getsockopt`, `connect(AF_UNSPEC)` (see `lb-bench
//! health-cost`, whose probe floor does just these).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;

use super::{
    checker::{Key, ProbeResult},
    probe::{timed_out, Prober},
    schedule::Schedule,
};
use crate::config::health::HealthCheck;

struct Pair {
    key: Key,
    check: Arc<HealthCheck>,
    prober: Prober,
    schedule: Schedule,
    due: Instant,
    /// When the handshake in flight started.
    started: Option<Instant>,
}

/// The TCP pairs in slots, the starts due in time order and the handshakes
/// in flight, both by slot: a step touches only what is due or open, and
/// finds each by index, not by key.
#[derive(Default)]
pub struct TcpBatch {
    slots: Vec<Option<Pair>>,
    free: Vec<usize>,
    by_key: BTreeMap<Key, usize>,
    /// Starts by time, `(due, slot)`; an entry whose slot was emptied,
    /// reused or rescheduled since does not match its pair's `due` and is
    /// skipped when it comes up.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    in_flight: Vec<usize>,
}

impl TcpBatch {
    pub fn insert(&mut self, key: Key, check: Arc<HealthCheck>, target: SocketAddr, mark: u32, now: Instant) {
        self.remove(&key);
        let schedule = Schedule::new(&key, check.interval, now);
        let due = schedule.first();
        let prober = Prober::new((*check).clone(), target, mark);
        let pair = Pair { key, check, prober, schedule, due, started: None };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(pair);
                slot
            }
            None => {
                self.slots.push(Some(pair));
                self.slots.len() - 1
            }
        };
        self.by_key.insert(key, slot);
        self.due.push(Reverse((due, slot)));
    }

    /// Stops checking `key`; a handshake in flight is reset.
    pub fn remove(&mut self, key: &Key) {
        let Some(slot) = self.by_key.remove(key) else { return };
        if let Some(mut pair) = self.slots[slot].take() {
            if pair.started.is_some() {
                self.in_flight.retain(|s| *s != slot);
                pair.prober.disconnect();
            }
        }
        self.free.push(slot);
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// One grid step at `now`: the outcomes of handshakes that ended or ran
    /// out of time, then the starts of those due, at most `max_in_flight`
    /// handshakes open at once (the rest start a step later).
    pub fn step(&mut self, now: Instant, max_in_flight: usize) -> Vec<ProbeResult> {
        let mut results = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            let slot = self.in_flight[i];
            let Some(pair) = self.slots[slot].as_mut() else {
                self.in_flight.swap_remove(i);
                continue;
            };
            let took = pair.started.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            let outcome = match pair.prober.tcp_outcome() {
                Some(outcome) => outcome,
                None if took >= pair.check.timeout => Err(timed_out(pair.check.timeout)),
                None => {
                    i += 1;
                    continue;
                }
            };
            pair.prober.disconnect();
            pair.started = None;
            self.in_flight.swap_remove(i);
            let (result, took) = match outcome {
                Ok(rtt) => (Ok(()), rtt),
                Err(e) => (Err(e), took),
            };
            results.push(ProbeResult { key: pair.key, check: pair.check.clone(), result, took });
            pair.due = pair.schedule.next(now);
            self.due.push(Reverse((pair.due, slot)));
        }
        while let Some(&Reverse((due, slot))) = self.due.peek() {
            if due > now || self.in_flight.len() >= max_in_flight {
                break;
            }
            self.due.pop();
            let Some(pair) = self.slots[slot].as_mut() else { continue };
            if pair.due != due || pair.started.is_some() {
                continue;
            }
            match pair.prober.tcp_start() {
                Ok(()) => {
                    pair.started = Some(now);
                    self.in_flight.push(slot);
                }
                Err(e) => {
                    pair.prober.disconnect();
                    let key = pair.key;
                    results.push(ProbeResult { key, check: pair.check.clone(), result: Err(e), took: Duration::ZERO });
                    pair.due = pair.schedule.next(now);
                    self.due.push(Reverse((pair.due, slot)));
                }
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, TcpListener};

    use super::*;
    use crate::{
        config::health::CheckKind,
        model::{Proto, VipId},
    };

    #[tokio::test]
    async fn steps_start_due_pairs_and_report_their_handshakes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        // A port nobody listens on: bind one, note it, close it.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let vip = VipId { addr: "127.0.0.1".parse().unwrap(), port: open.port(), proto: Proto::Tcp };
        let check = Arc::new(HealthCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            ..Default::default()
        });
        let up: Key = (vip, IpAddr::from([10, 0, 0, 1]));
        let refused: Key = (vip, IpAddr::from([10, 0, 0, 2]));
        let mut batch = TcpBatch::default();
        let t0 = Instant::now();
        batch.insert(up, check.clone(), open, 0, t0);
        batch.insert(refused, check.clone(), closed, 0, t0);
        // Nothing is due before its phase; both are due an interval later.
        let mut results = Vec::new();
        let mut now = t0;
        while results.len() < 4 && now < t0 + Duration::from_secs(2) {
            now += Duration::from_millis(10);
            tokio::time::sleep(Duration::from_millis(2)).await;
            results.extend(batch.step(now, 16).into_iter().map(|r| (r.key, r.result)));
        }
        let of = |k: Key| results.iter().filter(|(key, _)| *key == k).map(|(_, r)| r.clone()).collect::<Vec<_>>();
        assert_eq!(of(up), vec![Ok(()), Ok(())], "{results:?}");
        assert_eq!(of(refused), vec![Err("refused".to_string()), Err("refused".to_string())]);
        assert!(batch.in_flight.is_empty());
        // A limit of one handshake in flight delays the other pair a step.
        let mut batch = TcpBatch::default();
        batch.insert(up, check.clone(), open, 0, t0);
        batch.insert(refused, check, closed, 0, t0);
        let late = t0 + Duration::from_secs(1);
        batch.step(late, 1);
        assert_eq!(batch.in_flight.len(), 1);
        batch.remove(&up);
        batch.remove(&refused);
        assert!(batch.is_empty() && batch.in_flight.is_empty());
    }
}
