//! One backend's health: unknown until `rise` successes or `fall` failures
//! in a row decide it, then up or down until the opposite streak. Pure (no
//! clock, no I/O): the checker feeds results and timestamps in.

use std::time::SystemTime;

/// What the checks say about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Checked, but no streak has decided yet.
    Unknown,
    Up,
    Down,
    /// The VIP has no checks (`kind = "none"`).
    Disabled,
}

impl HealthState {
    pub fn name(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
            HealthState::Disabled => "disabled",
        }
    }
}

/// A state change the checker logs and applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthState,
    pub to: HealthState,
    /// The last check's error (for a change to down) or `None`.
    pub reason: Option<String>,
}

/// A backend's running record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub state: HealthState,
    pub since: SystemTime,
    pub last_error: Option<String>,
    pub checks_ok: u64,
    pub checks_failed: u64,
    /// Current streak: positive successes, negative failures.
    streak: i64,
}

impl Machine {
    pub fn new(now: SystemTime) -> Self {
        Machine { state: HealthState::Unknown, since: now, last_error: None, checks_ok: 0, checks_failed: 0, streak: 0 }
    }

    /// Counts one check's result and returns the transition it calls for,
    /// without entering it: the checker enters it ([`Machine::enter`]) once
    /// the data plane has it, so readers never see a state the ring does
    /// not have yet.
    pub fn count(&mut self, result: Result<(), String>, rise: u32, fall: u32) -> Option<Transition> {
        let to = match result {
            Ok(()) => {
                self.checks_ok += 1;
                self.streak = self.streak.max(0) + 1;
                (self.state != HealthState::Up && self.streak >= i64::from(rise)).then_some(HealthState::Up)
            }
            Err(e) => {
                self.checks_failed += 1;
                self.last_error = Some(e);
                self.streak = self.streak.min(0) - 1;
                (self.state != HealthState::Down && -self.streak >= i64::from(fall)).then_some(HealthState::Down)
            }
        }?;
        let reason = (to == HealthState::Down).then(|| self.last_error.clone()).flatten();
        Some(Transition { from: self.state, to, reason })
    }

    /// Enters a transition [`Machine::count`] called for.
    pub fn enter(&mut self, t: &Transition, now: SystemTime) {
        self.state = t.to;
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Machine {
        /// Counts one result and enters the transition it calls for at once.
        fn record(&mut self, result: Result<(), String>, rise: u32, fall: u32, now: SystemTime) -> Option<Transition> {
            let t = self.count(result, rise, fall)?;
            self.enter(&t, now);
            Some(t)
        }
    }

    fn run(m: &mut Machine, results: &[bool]) -> Vec<HealthState> {
        let now = SystemTime::UNIX_EPOCH;
        results
            .iter()
            .filter_map(|ok| m.record(if *ok { Ok(()) } else { Err("refused".into()) }, 2, 3, now))
            .map(|t| t.to)
            .collect()
    }

    #[test]
    fn unknown_becomes_up_after_rise_successes() {
        let mut m = Machine::new(SystemTime::UNIX_EPOCH);
        assert_eq!(run(&mut m, &[true]), []);
        assert_eq!(m.state, HealthState::Unknown);
        assert_eq!(run(&mut m, &[true]), [HealthState::Up]);
        assert_eq!((m.checks_ok, m.checks_failed), (2, 0));
    }

    #[test]
    fn unknown_becomes_down_after_fall_failures_with_the_reason() {
        let mut m = Machine::new(SystemTime::UNIX_EPOCH);
        let t: Vec<_> = (0..3).filter_map(|_| m.record(Err("timeout".into()), 2, 3, SystemTime::UNIX_EPOCH)).collect();
        assert_eq!(
            t,
            [Transition { from: HealthState::Unknown, to: HealthState::Down, reason: Some("timeout".into()) }]
        );
        assert_eq!(m.last_error.as_deref(), Some("timeout"));
    }

    #[test]
    fn flapping_shorter_than_a_streak_changes_nothing() {
        let mut m = Machine::new(SystemTime::UNIX_EPOCH);
        run(&mut m, &[true, true]);
        assert_eq!(run(&mut m, &[false, false, true, false, false, true, false, true]), []);
        assert_eq!(m.state, HealthState::Up);
        assert_eq!(run(&mut m, &[false, false, false]), [HealthState::Down]);
        assert_eq!(run(&mut m, &[true, false, true]), []);
        assert_eq!(run(&mut m, &[true]), [HealthState::Up]);
    }

    #[test]
    fn a_counted_transition_waits_until_entered() {
        let mut m = Machine::new(SystemTime::UNIX_EPOCH);
        assert_eq!(m.count(Ok(()), 2, 3), None);
        let t = m.count(Ok(()), 2, 3).expect("the second success calls for up");
        assert_eq!((t.from, t.to), (HealthState::Unknown, HealthState::Up));
        // Counted, not entered: the record still says unknown, since then.
        assert_eq!((m.state, m.since, m.checks_ok), (HealthState::Unknown, SystemTime::UNIX_EPOCH, 2));
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7);
        m.enter(&t, now);
        assert_eq!((m.state, m.since), (HealthState::Up, now));
        assert_eq!(m.count(Ok(()), 2, 3), None, "up already: no second transition");
    }

    #[test]
    fn a_decided_state_is_not_reported_again() {
        let mut m = Machine::new(SystemTime::UNIX_EPOCH);
        assert_eq!(run(&mut m, &[false; 10]), [HealthState::Down]);
        assert_eq!(m.checks_failed, 10);
    }
}
