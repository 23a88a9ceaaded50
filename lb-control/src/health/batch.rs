//! TCP checks without a task each: the checker keeps every TCP pair here
//! and, once per grid step, reads the handshakes started the step before
//! (`TCP_INFO`) and starts the ones queued for that step (a step touches
//! only those, not every pair). A step is one wake-up of the checker's
//! thread however many pairs it serves; no timer, channel, epoll
//! registration, allocation or map lookup per probe. What is left per
//! probe is its syscalls: `connect`, `getsockopt`, `connect(AF_UNSPEC)`
//! (see `lb-bench health-cost`, whose probe floor does just these).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    checker::Key,
    probe::{timed_out, Prober},
    schedule::{grid_epoch, on_grid, Schedule},
    MachineCell,
};
use crate::config::health::HealthCheck;

struct Pair {
    key: Key,
    check: Arc<HealthCheck>,
    machine: MachineCell,
    prober: Prober,
    schedule: Schedule,
    /// The grid step the next start is queued for.
    due: Instant,
    /// When the handshake in flight started.
    started: Option<Instant>,
}

/// A handshake's outcome: the pair's slot ([`TcpBatch::pair`]), the result
/// and how long it took (the round trip the kernel measured, or the wait).
pub struct TcpOutcome {
    pub slot: usize,
    pub result: Result<(), String>,
    pub took: Duration,
}

/// The TCP pairs in slots, the starts queued by grid step and the
/// handshakes in flight, both by slot: a step touches only what is due or
/// open, and finds each by index, not by key.
#[derive(Default)]
pub struct TcpBatch {
    slots: Vec<Option<Pair>>,
    free: Vec<usize>,
    by_key: BTreeMap<Key, usize>,
    /// The slots to start at each grid step. An entry whose slot was
    /// emptied, reused or rescheduled since does not match its pair's `due`
    /// and is skipped when it comes up. Per step one map entry is taken,
    /// not one per probe; emptied queues are kept in `spare` for reuse.
    due: BTreeMap<Instant, Vec<usize>>,
    spare: Vec<Vec<usize>>,
    in_flight: Vec<usize>,
}

impl TcpBatch {
    pub fn insert(
        &mut self,
        key: Key,
        check: Arc<HealthCheck>,
        machine: MachineCell,
        target: SocketAddr,
        mark: u32,
        now: Instant,
    ) {
        self.remove(&key);
        let schedule = Schedule::new(&key, check.interval, now);
        let due = on_grid(grid_epoch(), schedule.first());
        let prober = Prober::new((*check).clone(), target, mark);
        let pair = Pair { key, check, machine, prober, schedule, due, started: None };
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
        self.queue(due, slot);
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

    /// The pair in `slot` (of an outcome of the last step): its key, check
    /// and record.
    pub fn pair(&self, slot: usize) -> Option<(&Key, &Arc<HealthCheck>, &MachineCell)> {
        self.slots.get(slot)?.as_ref().map(|p| (&p.key, &p.check, &p.machine))
    }

    fn queue(&mut self, step: Instant, slot: usize) {
        let spare = &mut self.spare;
        self.due.entry(step).or_insert_with(|| spare.pop().unwrap_or_default()).push(slot);
    }

    /// One grid step at `now`: the outcomes of handshakes that ended or ran
    /// out of time, then the starts queued for steps up to `now`, at most
    /// `max_in_flight` handshakes open at once (the rest start a step
    /// later). Outcomes are appended to `outcomes`.
    pub fn step(&mut self, now: Instant, max_in_flight: usize, outcomes: &mut Vec<TcpOutcome>) {
        let epoch = grid_epoch();
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
            outcomes.push(TcpOutcome { slot, result, took });
            pair.due = on_grid(epoch, pair.schedule.next(now));
            let due = pair.due;
            self.queue(due, slot);
        }
        while self.in_flight.len() < max_in_flight {
            let Some(mut queued) = self.due.first_entry().filter(|e| *e.key() <= now) else { break };
            let step = *queued.key();
            let Some(slot) = queued.get_mut().pop() else {
                self.spare.push(queued.remove());
                continue;
            };
            let Some(pair) = self.slots[slot].as_mut() else { continue };
            if pair.due != step || pair.started.is_some() {
                continue;
            }
            match pair.prober.tcp_start() {
                Ok(()) => {
                    pair.started = Some(now);
                    self.in_flight.push(slot);
                }
                Err(e) => {
                    pair.prober.disconnect();
                    outcomes.push(TcpOutcome { slot, result: Err(e), took: Duration::ZERO });
                    pair.due = on_grid(epoch, pair.schedule.next(now));
                    let due = pair.due;
                    self.queue(due, slot);
                }
            }
        }
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
        let cell = || MachineCell::new(crate::health::Machine::new(std::time::SystemTime::now()));
        let mut batch = TcpBatch::default();
        let t0 = Instant::now();
        batch.insert(up, check.clone(), cell(), open, 0, t0);
        batch.insert(refused, check.clone(), cell(), closed, 0, t0);
        // Nothing is due before its phase; both are due an interval later.
        let (mut results, mut outcomes) = (Vec::new(), Vec::new());
        let mut now = t0;
        while results.len() < 4 && now < t0 + Duration::from_secs(2) {
            now += Duration::from_millis(10);
            tokio::time::sleep(Duration::from_millis(2)).await;
            batch.step(now, 16, &mut outcomes);
            results.extend(outcomes.drain(..).map(|o| (*batch.pair(o.slot).unwrap().0, o.result)));
        }
        let of = |k: Key| results.iter().filter(|(key, _)| *key == k).map(|(_, r)| r.clone()).collect::<Vec<_>>();
        assert_eq!(of(up), vec![Ok(()), Ok(())], "{results:?}");
        assert_eq!(of(refused), vec![Err("refused".to_string()), Err("refused".to_string())]);
        assert!(batch.in_flight.is_empty());
        // A limit of one handshake in flight delays the other pair a step.
        let mut batch = TcpBatch::default();
        batch.insert(up, check.clone(), cell(), open, 0, t0);
        batch.insert(refused, check, cell(), closed, 0, t0);
        let late = t0 + Duration::from_secs(1);
        batch.step(late, 1, &mut outcomes);
        assert!(outcomes.is_empty());
        assert_eq!(batch.in_flight.len(), 1);
        let first = batch.in_flight[0];
        // The next step reads the first handshake and starts the other.
        std::thread::sleep(Duration::from_millis(20));
        batch.step(late + Duration::from_millis(20), 1, &mut outcomes);
        assert_eq!(outcomes.iter().map(|o| o.slot).collect::<Vec<_>>(), [first]);
        assert_eq!(batch.in_flight.len(), 1);
        assert_ne!(batch.in_flight[0], first);
        batch.remove(&up);
        batch.remove(&refused);
        assert!(batch.is_empty() && batch.in_flight.is_empty());
    }
}
