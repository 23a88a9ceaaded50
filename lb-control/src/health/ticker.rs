//! The probe grid's clock for the TCP batch: a periodic `timerfd` on the
//! checker's runtime. A tokio timer moved on after each step is the earliest
//! timer when it is registered, so registering it wakes the runtime's
//! driver (an eventfd write and a spare `epoll_wait` per step), and a step
//! whose deadline crosses a 64 ms block of tokio's timer wheel is woken
//! early once more to cascade it (about a third of the steps). The kernel's
//! periodic timer wakes the thread once per step: one `epoll_wait` and one
//! `read`.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    time::Duration,
};

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};

use super::schedule::{next_step, PROBE_STEP};

/// How long after its grid point a step fires: the starts queued for the
/// point are due by then, whatever the rounding between clocks.
const AFTER_THE_POINT: Duration = Duration::from_micros(200);

/// `TimerFd` as tokio's `AsyncFd` takes it (by `AsRawFd`).
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct StepTicker {
    timer: AsyncFd<Timer>,
    armed: bool,
}

impl StepTicker {
    /// A ticker, not yet armed. Needs the runtime's I/O driver.
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        // SAFETY: the descriptor is the `TimerFd`'s own, which the `AsyncFd`
        // owns (in `Timer`) and drops with itself; `as_raw_fd` always
        // returns that same descriptor.
        let timer = unsafe { AsyncFd::register_with_interest(Timer(timer), Interest::READABLE) }?;
        Ok(StepTicker { timer, armed: false })
    }

    /// Ticks on every grid step from the next one on (no-op if armed).
    pub fn arm(&mut self) -> io::Result<()> {
        if self.armed {
            return Ok(());
        }
        let first = next_step().saturating_duration_since(Instant::now()) + AFTER_THE_POINT;
        let expiration =
            Expiration::IntervalDelayed(TimeSpec::from_duration(first), TimeSpec::from_duration(PROBE_STEP));
        self.timer.get_ref().0.set(expiration, TimerSetTimeFlags::empty())?;
        self.armed = true;
        Ok(())
    }

    /// Stops ticking (no wake-ups while there is nothing to step).
    pub fn disarm(&mut self) -> io::Result<()> {
        if self.armed {
            self.timer.get_ref().0.unset()?;
            self.armed = false;
        }
        Ok(())
    }

    /// Waits for the next tick. Steps missed meanwhile (a slow step) are one
    /// tick, not a burst of them.
    pub async fn tick(&self) -> io::Result<()> {
        loop {
            let mut ready = self.timer.readable().await?;
            let mut expirations = [0u8; 8];
            match nix::unistd::read(&self.timer.get_ref().0, &mut expirations) {
                Ok(_) => {
                    // Drained: the next expiration is a new edge. Clearing
                    // keeps any readiness the driver saw after this guard.
                    ready.clear_ready();
                    return Ok(());
                }
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_once_per_step_while_armed() {
        let mut ticker = StepTicker::new().unwrap();
        ticker.arm().unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            ticker.tick().await.unwrap();
        }
        let took = start.elapsed();
        // Five ticks: four full steps after the first, at most five.
        assert!(took >= PROBE_STEP * 4 && took < PROBE_STEP * 5 + Duration::from_millis(50), "{took:?}");
        ticker.disarm().unwrap();
        let silent = tokio::time::timeout(PROBE_STEP * 3, ticker.tick()).await;
        assert!(silent.is_err(), "a disarmed ticker does not tick");
    }
}
