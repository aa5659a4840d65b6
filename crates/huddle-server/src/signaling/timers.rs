//! The registry's timers in the shell: one task for the whole registry, sleeping until the next
//! deadline the registry reports ([`Registry::poll_timeout`](crate::registry::Registry::poll_timeout)),
//! then running what is due ([`Registry::handle_timeout`](crate::registry::Registry::handle_timeout))
//! and delivering its outputs. The timers themselves (resume grace, token warnings and expiry)
//! are the registry's, tested on virtual time with it.

use std::time::Duration;

use tracing::{Instrument, debug};

use super::ServerState;
use crate::registry::{Clock, Timeout};

/// The longest the task sleeps on a wall-clock deadline before it looks again: the monotonic
/// clock that tokio sleeps by and the wall clock that tokens use may drift apart, or the wall
/// clock may jump.
const WALL_STEP: Duration = Duration::from_secs(600);

impl ServerState {
    /// Tells the timer task (started here on first use) that a timer may have been armed earlier
    /// than the one it sleeps for. Must be called within a tokio runtime.
    pub(super) fn wake_timers(&self) {
        self.0.timer_task.get_or_init(|| {
            tokio::spawn(run(self.clone()).in_current_span());
        });
        self.0.timer_wake.notify_one();
    }
}

/// How long to sleep for `timeout` at `now` (`None`: no timer).
fn wait(timeout: Timeout, now: Clock) -> Option<Duration> {
    let mono = timeout.at.map(|at| at.saturating_duration_since(now.at));
    let wall = timeout
        .unix_ms
        .map(|due| Duration::from_millis(due.saturating_sub(now.unix_ms)).min(WALL_STEP));
    match (mono, wall) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The timer task: until the server shuts down, sleeps until the registry's next deadline or a
/// wake, then runs the timers due and delivers what they cause.
async fn run(state: ServerState) {
    let mut shutdown = state.shutdown_receiver();
    loop {
        let timeout = state.0.hub.lock().registry.poll_timeout();
        let sleep = async {
            match wait(timeout, Clock::now()) {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {
                let mut out = Vec::new();
                let mut hub = state.0.hub.lock();
                let ran = hub.registry.handle_timeout(Clock::now(), &mut out);
                hub.dispatch(out);
                drop(hub);
                debug!(ran, "registry timers");
            }
            () = state.0.timer_wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_task_sleeps_until_the_earlier_deadline_and_looks_again_on_a_long_wall_clock_one() {
        let now = Clock {
            at: Instant::now(),
            unix_ms: 1_000_000,
        };
        assert_eq!(wait(Timeout::default(), now), None);
        let t = |mono_ms: Option<u64>, wall_ms: Option<u64>| Timeout {
            at: mono_ms.map(|ms| now.at + Duration::from_millis(ms)),
            unix_ms: wall_ms.map(|ms| now.unix_ms + ms),
        };
        let ms = Duration::from_millis;
        assert_eq!(wait(t(Some(300), None), now), Some(ms(300)));
        assert_eq!(wait(t(Some(300), Some(200)), now), Some(ms(200)));
        assert_eq!(wait(t(None, Some(3_600_000)), now), Some(WALL_STEP));
        // Overdue: at once.
        let overdue = Timeout {
            at: None,
            unix_ms: Some(now.unix_ms - 5),
        };
        assert_eq!(wait(overdue, now), Some(Duration::ZERO));
    }
}
