//! The memory sampler: the server's RSS and the cycles done, once a second.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::cycle::Ctx;
use super::report::RssSample;

/// Each second: the server's RSS with the cycles so far, and a progress line when asked.
pub(super) fn spawn_sampler(
    ctx: Arc<Ctx>,
    started: Instant,
    samples: Arc<Mutex<Vec<RssSample>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let t_s = started.elapsed().as_secs_f64();
            let cycles = ctx.counts.cycles.load(Ordering::Relaxed);
            let rss = ctx.plan.server.and_then(|s| s.sample().ok()).map(|s| s.rss_kib);
            if let Some(rss_kib) = rss {
                samples
                    .lock()
                    .expect("not poisoned")
                    .push(RssSample { t_s, cycles, rss_kib });
            }
            if ctx.plan.progress {
                let phase = if t_s < ctx.plan.warmup.as_secs_f64() {
                    "churn (warm-up)"
                } else {
                    "churn"
                };
                let rss = rss.map_or(String::new(), |r| {
                    format!("  server {:7.1} MiB", r as f64 / 1024.0)
                });
                eprintln!(
                    "[{t_s:6.1}s] {phase:<16} cycles {:>6}  failed {:>4}  errors {:>4}  plays {:>6}{rss}",
                    cycles,
                    ctx.counts.failed.load(Ordering::Relaxed),
                    ctx.counts.errors.load(Ordering::Relaxed),
                    ctx.counts.plays.load(Ordering::Relaxed),
                );
            }
        }
    })
}
