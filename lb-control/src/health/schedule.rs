//! When each (VIP, backend) pair is probed: once per interval at its own
//! phase (a hash of the pair, so probes spread over the interval instead of
//! bursting) with a jitter of up to ±5 % of the interval per round, started
//! on a process-wide grid of [`PROBE_STEP`] so the checker's thread wakes
//! once per step, not once per probe.

use std::time::Duration;

use tokio::time::Instant;

use super::checker::Key;

/// Probes start on a grid of this step: every pair due within one step
/// starts at the same instant, and TCP outcomes are read on it, so the
/// checker's thread wakes once per step instead of once or twice per probe
/// (on this VM a wake-up costs about as much as a probe's own socket work).
/// 1,000 pairs at 1 s start 20 at a time, 50 times a second: still spread,
/// not a burst; the shortest interval (100 ms) keeps 5 steps to spread
/// over. A TCP probe's timeout is noticed up to one step late.
pub const PROBE_STEP: Duration = Duration::from_millis(20);

/// `t` rounded up to the probe grid (steps of [`PROBE_STEP`] from `epoch`).
pub fn on_grid(epoch: Instant, t: Instant) -> Instant {
    let step = PROBE_STEP.as_nanos();
    let since = t.saturating_duration_since(epoch).as_nanos();
    let steps = since.div_ceil(step);
    epoch + Duration::from_nanos((steps * step) as u64)
}

/// The grid's origin, shared by every probe of the process.
pub fn grid_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The next step of the grid after now.
pub fn next_step() -> Instant {
    on_grid(grid_epoch(), Instant::now() + Duration::from_nanos(1))
}

/// The phase of a pair inside its interval, and a jitter of up to ±5 % of
/// the interval per round: both from a hash, so runs are reproducible.
fn seed(key: &Key) -> u64 {
    xxhash_rust::xxh64::xxh64(format!("{}|{}", key.0, key.1).as_bytes(), 0)
}

fn spread_seeded(seed: u64, round: u64, interval: Duration) -> (Duration, Duration, bool) {
    let phase = interval.mul_f64((seed % 10_000) as f64 / 10_000.0);
    let j = xxhash_rust::xxh64::xxh64(&round.to_le_bytes(), seed);
    let jitter = interval.mul_f64((j % 1000) as f64 / 1000.0 * 0.05);
    (phase, jitter, j & (1 << 63) != 0)
}

/// One pair's rounds.
#[derive(Debug)]
pub struct Schedule {
    seed: u64,
    interval: Duration,
    /// The pair's phase, advanced by an interval per round; each round
    /// starts at it moved by that round's jitter.
    scheduled: Instant,
    round: u64,
}

impl Schedule {
    /// A pair checked from `now` on; [`Schedule::first`] is its phase.
    pub fn new(key: &Key, interval: Duration, now: Instant) -> Self {
        let seed = seed(key);
        let (phase, ..) = spread_seeded(seed, 0, interval);
        Schedule { seed, interval, scheduled: now + phase, round: 0 }
    }

    /// When the first round is due (before rounding to the grid).
    pub fn first(&self) -> Instant {
        self.scheduled
    }

    /// When the next round is due, after one that ended at `now`. Never two
    /// probes of one pair closer than half an interval; a round that ended
    /// late restarts the phase from `now`.
    pub fn next(&mut self, now: Instant) -> Instant {
        self.round += 1;
        let floor = now + self.interval / 2;
        self.scheduled += self.interval;
        if self.scheduled < floor {
            self.scheduled = now + self.interval;
        }
        let (_, jitter, later) = spread_seeded(self.seed, self.round, self.interval);
        let jittered =
            if later { self.scheduled + jitter } else { self.scheduled.checked_sub(jitter).unwrap_or(self.scheduled) };
        jittered.max(floor)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::{Proto, VipId};

    fn key(i: u32) -> Key {
        let vip = VipId { addr: "10.0.0.1".parse().unwrap(), port: 80, proto: Proto::Tcp };
        (vip, IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i)))
    }

    #[test]
    fn probe_starts_round_up_to_the_grid() {
        let epoch = Instant::now();
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        assert_eq!(on_grid(epoch, epoch), epoch);
        let step = PROBE_STEP.as_millis() as u64;
        assert_eq!(on_grid(epoch, at(1)), at(step));
        assert_eq!(on_grid(epoch, at(step)), at(step));
        assert_eq!(on_grid(epoch, at(step) + Duration::from_nanos(1)), at(2 * step));
        assert_eq!(on_grid(epoch, at(1000 - step / 2)), at(1000));
        // Before the epoch (cannot happen: it is taken first) stays on it.
        assert_eq!(on_grid(at(50), at(20)), at(50));
    }

    #[test]
    fn phases_spread_over_the_interval() {
        let interval = Duration::from_secs(1);
        let mut buckets = [0u32; 10];
        for i in 0..1000u32 {
            let (phase, jitter, _) = spread_seeded(seed(&key(i)), 1, interval);
            assert!(phase < interval && jitter <= interval / 20);
            buckets[(phase.as_millis() / 100) as usize] += 1;
        }
        // 1,000 pairs over ten slices of the interval: none nearly empty or
        // crowded (a burst would put them all in one).
        assert!(buckets.iter().all(|&n| (50..=150).contains(&n)), "{buckets:?}");
    }

    #[test]
    fn rounds_keep_their_phase_within_the_jitter_and_never_crowd() {
        let interval = Duration::from_secs(1);
        let start = Instant::now();
        let mut s = Schedule::new(&key(7), interval, start);
        let phase = s.first() - start;
        let mut previous = s.first();
        for round in 1..=50u32 {
            // Each probe ends 3 ms after it started.
            let due = s.next(previous + Duration::from_millis(3));
            let on_phase = start + phase + interval * round;
            let off = if due > on_phase { due - on_phase } else { on_phase - due };
            assert!(off <= interval / 20, "round {round}: {off:?} off the phase (the jitter does not drift)");
            assert!(due - previous >= interval / 2);
            previous = due;
        }
        // A round that ended long after its time restarts from its end.
        let late_end = previous + interval * 5;
        let due = s.next(late_end);
        assert!(due >= late_end + interval / 2 && due <= late_end + interval + interval / 20);
    }
}
