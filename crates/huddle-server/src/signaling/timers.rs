//! The registry's timers: the resume grace of detached sessions, token warnings and expiry.

use std::time::{Duration, Instant};

use tracing::{Instrument, info};

use super::hub::{Hub, unix_ms};
use super::{ServerState, TOKEN_WARNING};
use crate::registry::{Detached, SessionId};
use crate::sfu::Command;

impl ServerState {
    /// Ends the detached session when its grace period is over, unless it was resumed.
    pub(super) fn spawn_expiry(&self, id: SessionId, d: Detached) {
        let state = self.clone();
        let mut shutdown = self.0.shutdown.subscribe();
        tokio::spawn(
            async move {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(d.deadline)) => {
                        let mut out = Vec::new();
                        let mut hub = state.0.hub.lock();
                        // The timer fired: the deadline is reached even if the clocks differ by a tick.
                        let now = Instant::now().max(d.deadline);
                        if hub.registry.expire(id, d.epoch, now, &mut out) {
                            info!(session = %id, "grace period over: session ended");
                            hub.media_command(Command::SessionGone { session: id });
                            hub.disarm_token(id);
                        }
                        hub.dispatch(out);
                    }
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
            .in_current_span(),
        );
    }
}

impl ServerState {
    /// (Re-)arms the token timer of session `id` for a token expiring at `expire` (Unix
    /// seconds), replacing any earlier one; `None` (no token) only disarms. The timer sends
    /// `token_will_expire` [`TOKEN_WARNING`] before the expiry (at once if less is left) and ends
    /// the session at the expiry with `kicked` 1002056 unless a renewal re-armed it meanwhile.
    /// Both steps are checked again under the hub lock ([`Registry::warn_token`],
    /// [`Registry::expire_token`]), so a timer that lost a race with a renewal does nothing.
    pub(super) fn arm_token(&self, hub: &mut Hub, id: SessionId, expire: Option<i64>) {
        hub.disarm_token(id);
        let Some(expire) = expire else { return };
        hub.token_timer_gen += 1;
        let arming = hub.token_timer_gen;
        let state = self.clone();
        let mut shutdown = self.0.shutdown.subscribe();
        let task = tokio::spawn(
            async move {
                let expire_ms = u64::try_from(expire).unwrap_or(0).saturating_mul(1000);
                let warn_ms = expire_ms.saturating_sub(u64::try_from(TOKEN_WARNING.as_millis()).unwrap_or(0));
                tokio::select! {
                    () = state.token_step(id, arming, warn_ms, expire_ms) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
            .in_current_span(),
        );
        hub.token_timers.insert(id, (arming, task.abort_handle()));
    }

    /// The two steps of a token timer: the warning at `warn_ms`, the end at `expire_ms` (Unix
    /// milliseconds, by the wall clock that tokens use).
    pub(super) async fn token_step(&self, id: SessionId, arming: u64, warn_ms: u64, expire_ms: u64) {
        sleep_until_unix_ms(warn_ms).await;
        {
            let mut out = Vec::new();
            let mut hub = self.0.hub.lock();
            let now = unix_secs();
            let expire = i64::try_from(expire_ms / 1000).unwrap_or(i64::MAX);
            if hub.registry.warn_token(id, expire, now, &mut out) {
                info!(session = %id, remain_secs = expire - now, "token expires soon: warned");
            }
            hub.dispatch(out);
        }
        sleep_until_unix_ms(expire_ms).await;
        let mut out = Vec::new();
        let mut hub = self.0.hub.lock();
        if hub.registry.expire_token(id, unix_secs(), &mut out) {
            info!(session = %id, "token expired without renewal: session ended (1002056)");
        }
        // The kick's `Close` disarms this timer; otherwise forget it if it is still ours.
        hub.dispatch(out);
        if hub.token_timers.get(&id).is_some_and(|(g, _)| *g == arming) {
            hub.token_timers.remove(&id);
        }
    }
}

pub(super) fn unix_secs() -> i64 {
    i64::try_from(unix_ms() / 1000).unwrap_or(i64::MAX)
}

/// Sleeps until the wall clock reads `at` (Unix milliseconds): in steps, as the monotonic clock
/// that timers use and the wall clock may drift apart.
pub(super) async fn sleep_until_unix_ms(at: u64) {
    loop {
        let now = unix_ms();
        if now >= at {
            return;
        }
        // At most ten minutes at a time, so that a wall clock that jumps is followed (and a
        // long-lived token's timer wakes rarely).
        tokio::time::sleep(Duration::from_millis((at - now).min(600_000))).await;
    }
}
