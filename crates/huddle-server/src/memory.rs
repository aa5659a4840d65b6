//! Memory given back to the system after a burst of connections.
//!
//! glibc's allocator keeps what a burst of connections freed in its per-thread arenas, ready for
//! the next burst, so the server's RSS stays at its peak after the connections close (a second
//! burst reuses it; nothing leaks). That is the right trade while connections come and go, and the
//! wrong one after a rare burst (a flood, or every client reconnecting at once): the memory stays
//! counted against the host until the process ends. So a task watches the number of open
//! connections and, once it has fallen well below its peak, asks glibc to return the free pages
//! of every arena (`malloc_trim(3)`). Nothing else in the server knows about it.
//!
//! Other allocators (musl's, or a global allocator that returns memory by itself) need nothing:
//! there the task does not run.

use std::time::Duration;

use crate::ServerState;

/// How often the count of open connections is looked at.
const EVERY: Duration = Duration::from_secs(5);

/// How far below its peak the count must fall before a trim: a burst of a couple of hundred
/// connections freed a few MB (about 12 KiB each); fewer is not worth the allocator's time.
const AFTER_CLOSED: usize = 200;

/// The decision, apart from the clock and the allocator: feed it the most connections open at once
/// since the last look and those open now; it says when to trim.
#[derive(Debug, Default)]
pub(crate) struct TrimAfterBursts {
    peak: usize,
}

impl TrimAfterBursts {
    /// Whether to trim now.
    pub(crate) fn observe(&mut self, peak: usize, open: usize) -> bool {
        self.peak = self.peak.max(peak).max(open);
        if self.peak - open >= AFTER_CLOSED {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Watches `state`'s connections until it shuts down, trimming after each burst.
pub(crate) async fn trim_after_bursts(state: ServerState) {
    if !CAN_TRIM {
        return;
    }
    let mut shutdown = state.shutdown_receiver();
    let mut decide = TrimAfterBursts::default();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if decide.observe(state.take_connections_peak(), state.connections()) {
            // A trim walks every arena under its lock: off the runtime's threads.
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(
                released,
                open = state.connections(),
                "returned free memory after a burst"
            );
        }
    }
}

const CAN_TRIM: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Asks glibc to return the free memory of all its arenas; whether any was returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim(3) takes a plain integer (the bytes to keep at the top of the main
    // heap), touches only the allocator's own free lists under their locks, and is safe to call
    // from any thread at any time; it returns 1 if memory was released, 0 if not.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_the_count_falls_well_below_its_peak() {
        let mut d = TrimAfterBursts::default();
        // Ordinary coming and going: no trim.
        for open in [0, 3, 10, 7, 150, 20, 40] {
            assert!(!d.observe(open, open), "trimmed at {open}");
        }
        // A burst of 500, then they close: one trim, and not again at the same level.
        assert!(!d.observe(540, 540));
        assert!(d.observe(40, 40));
        assert!(!d.observe(40, 40));
        assert!(!d.observe(40, 10));
        // The next burst measures from the level after the trim.
        assert!(!d.observe(220, 220));
        assert!(d.observe(220, 15));
        // A burst that came and went between two looks counts by its peak.
        assert!(d.observe(600, 12));
    }

    #[test]
    fn a_trim_on_this_platform_does_not_fail() {
        // A burst's worth of small blocks, of which every eighth stays: the freed ones lie between
        // live ones, where free() alone cannot give them back, as after a burst of connections.
        let burst: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 4096]).collect();
        let kept: Vec<Vec<u8>> = burst.into_iter().step_by(8).collect();
        // On glibc the pages between the kept blocks come back.
        assert_eq!(trim(), CAN_TRIM);
        drop(kept);
    }
}
