//! What a churn run reports: the server's live counts, its memory over the run and the slope of
//! it per 1000 cycles.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The server's counts, from `GET /api/info` (`"live"`, given to loopback callers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCounts {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Sessions, attached or in grace.
    pub sessions: u64,
    /// Sessions in grace.
    pub detached: u64,
    /// Rooms.
    pub rooms: u64,
    /// Published streams.
    pub streams: u64,
    /// Open peer connections.
    pub peer_connections: u64,
}

impl LiveCounts {
    /// The counts of several servers, added.
    pub fn sum(&self, o: &LiveCounts) -> LiveCounts {
        LiveCounts {
            connections: self.connections + o.connections,
            sessions: self.sessions + o.sessions,
            detached: self.detached + o.detached,
            rooms: self.rooms + o.rooms,
            streams: self.streams + o.streams,
            peer_connections: self.peer_connections + o.peer_connections,
        }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        *self == LiveCounts::default()
    }
}

/// One sample of the server's memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RssSample {
    /// Seconds since the start.
    pub t_s: f64,
    /// Cycles completed by then.
    pub cycles: u64,
    /// Resident set, KiB.
    pub rss_kib: u64,
}

/// The server's memory over a churn run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnMemory {
    /// The sampled process.
    pub pid: u32,
    /// RSS before the first client.
    pub rss_kib_start: u64,
    /// RSS at the end of the warm-up (the first sample after it).
    pub rss_kib_warmup_end: u64,
    /// RSS when the last cycle ended.
    pub rss_kib_end: u64,
    /// RSS once the server was empty again (or the wait for it ended).
    pub rss_kib_idle: u64,
    /// The largest RSS after the warm-up.
    pub rss_kib_max_after_warmup: u64,
    /// Least-squares slope of RSS over cycles completed, after the warm-up: KiB per 1000 cycles
    /// (`None` with fewer than two samples or no cycle between them).
    pub slope_kib_per_1000_cycles: Option<f64>,
    /// Samples after the warm-up (the slope's).
    pub samples_after_warmup: u64,
    /// Every sample, one a second.
    pub samples: Vec<RssSample>,
}

/// The result of a churn run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnReport {
    /// `huddle`.
    pub target: String,
    /// `churn`.
    pub mode: String,
    /// Clients.
    pub clients: u32,
    /// The seed.
    pub seed: u64,
    /// How long cycles were started, seconds.
    pub duration_s: f64,
    /// The warm-up, seconds.
    pub warmup_s: f64,
    /// Cycles that ran to their end (clean, dropped or mid-ICE).
    pub cycles_completed: u64,
    /// Completed cycles that logged out.
    pub cycles_clean: u64,
    /// Completed cycles that closed the socket without a logout.
    pub cycles_dropped: u64,
    /// Completed cycles that closed the publish connection during ICE.
    pub cycles_mid_ice: u64,
    /// Cycles cut short by an error.
    pub cycles_failed: u64,
    /// Plays asked for.
    pub plays: u64,
    /// Plays that received media.
    pub plays_with_media: u64,
    /// Plays whose publisher left meanwhile (expected).
    pub plays_gone: u64,
    /// Probes sent by publishers.
    pub packets_sent: u64,
    /// Probes received by players.
    pub packets_received: u64,
    /// Errors by `phase:code`.
    pub errors: BTreeMap<String, u64>,
    /// The first errors in full.
    pub error_samples: Vec<String>,
    /// The server's memory (with a server PID).
    pub memory: Option<ChurnMemory>,
    /// The server's counts at the end (`None`: it gave none).
    pub live_end: Option<LiveCounts>,
    /// Seconds after the last cycle until the server was empty (`None`: not within the wait).
    pub empty_after_s: Option<f64>,
    /// The whole run, seconds.
    pub total_s: f64,
    /// Logins, publishes and plays per signaling server the clients were spread over (the live
    /// counts at the end are the sum over them).
    #[serde(default)]
    pub servers: Vec<crate::ServerCounts>,
}

impl ChurnReport {
    /// Whether the server was seen empty at the end.
    pub fn back_to_empty(&self) -> bool {
        self.live_end.is_some_and(|l| l.is_empty())
    }

    /// Errors in all.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// What makes the run not clean: no cycle, errors, a server not back to empty.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.cycles_completed == 0 {
            f.push("no cycle completed".into());
        }
        if !self.errors.is_empty() {
            let first = self.error_samples.first().map_or("", String::as_str);
            f.push(format!(
                "{} errors ({:?}); first: {first}",
                self.error_count(),
                self.errors
            ));
        }
        match self.live_end {
            None => f.push("the server gave no live counts (GET /api/info from loopback)".into()),
            Some(l) if !l.is_empty() => f.push(format!("the server is not empty at the end: {l:?}")),
            Some(_) => {}
        }
        f
    }

    /// As one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    /// As a table for people.
    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "target            {} (churn), {} clients, seed {}",
            self.target, self.clients, self.seed
        );
        let _ = writeln!(
            t,
            "run               {:.1} s of cycles (warm-up {:.1} s), {:.1} s in all",
            self.duration_s, self.warmup_s, self.total_s
        );
        let _ = writeln!(
            t,
            "cycles            {} completed ({} clean, {} dropped socket, {} dropped mid-ICE), {} failed",
            self.cycles_completed,
            self.cycles_clean,
            self.cycles_dropped,
            self.cycles_mid_ice,
            self.cycles_failed
        );
        let _ = writeln!(
            t,
            "plays             {} asked, {} with media, {} gone (publisher left)",
            self.plays, self.plays_with_media, self.plays_gone
        );
        let _ = writeln!(
            t,
            "packets           {} sent, {} received",
            self.packets_sent, self.packets_received
        );
        if self.errors.is_empty() {
            let _ = writeln!(t, "errors            none");
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            let _ = writeln!(t, "errors            {}", list.join(", "));
            for e in self.error_samples.iter().take(5) {
                let _ = writeln!(t, "  {e}");
            }
        }
        match &self.memory {
            Some(m) => {
                let _ = writeln!(
                    t,
                    "server RSS KiB    start {}, warm-up end {}, end {}, idle {}, max after warm-up {}",
                    m.rss_kib_start,
                    m.rss_kib_warmup_end,
                    m.rss_kib_end,
                    m.rss_kib_idle,
                    m.rss_kib_max_after_warmup
                );
                let slope = m
                    .slope_kib_per_1000_cycles
                    .map_or("n/a".to_string(), |s| format!("{s:+.1}"));
                let _ = writeln!(
                    t,
                    "RSS slope         {slope} KiB per 1000 cycles ({} samples after warm-up)",
                    m.samples_after_warmup
                );
            }
            None => {
                let _ = writeln!(t, "server RSS        not sampled (no server PID)");
            }
        }
        let live = match (self.live_end, self.empty_after_s) {
            (None, _) => "no live counts (GET /api/info from loopback)".to_string(),
            (Some(l), Some(s)) if l.is_empty() => format!("empty {s:.1} s after the last cycle"),
            (Some(l), _) => format!(
                "NOT EMPTY: {} connections, {} sessions ({} detached), {} rooms, {} streams, {} peer \
                 connections",
                l.connections, l.sessions, l.detached, l.rooms, l.streams, l.peer_connections
            ),
        };
        let _ = writeln!(t, "server at end     {live}");
        if self.servers.len() > 1 {
            for s in &self.servers {
                let _ = writeln!(
                    t,
                    "server {:<10} {} logins ({} failed), {} publishes and plays ({} failed)",
                    s.url, s.logins, s.login_failures, s.joins, s.join_failures
                );
            }
        }
        t
    }
}

/// Least-squares slope of `y` over `x`; `None` without two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

pub(super) fn memory(
    pid: u32,
    start: u64,
    samples: Vec<RssSample>,
    warmup_s: f64,
    end: u64,
    idle: u64,
) -> ChurnMemory {
    let after: Vec<&RssSample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let points: Vec<(f64, f64)> = after
        .iter()
        .map(|s| (s.cycles as f64, s.rss_kib as f64))
        .collect();
    ChurnMemory {
        pid,
        rss_kib_start: start,
        rss_kib_warmup_end: after.first().map_or(end, |s| s.rss_kib),
        rss_kib_end: end,
        rss_kib_idle: idle,
        rss_kib_max_after_warmup: after.iter().map(|s| s.rss_kib).max().unwrap_or(end).max(end),
        slope_kib_per_1000_cycles: slope(&points).map(|s| s * 1000.0),
        samples_after_warmup: after.len() as u64,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_slope() {
        assert_eq!(slope(&[]), None);
        assert_eq!(slope(&[(1.0, 5.0)]), None);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 7.0)]), None);
        let s = slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]).unwrap();
        assert!((s - 2.0).abs() < 1e-12);
        // Noise around a flat line: a slope near zero.
        let s = slope(&[(0.0, 10.0), (1.0, 12.0), (2.0, 10.0), (3.0, 12.0), (4.0, 10.0)]).unwrap();
        assert!(s.abs() < 0.01, "{s}");
    }

    #[test]
    fn memory_after_the_warmup() {
        let samples = (0..10)
            .map(|i| RssSample {
                t_s: f64::from(i),
                cycles: 100 * i as u64,
                rss_kib: if i < 3 {
                    1000 * (i as u64 + 1)
                } else {
                    5000 + i as u64
                },
            })
            .collect();
        let m = memory(1, 500, samples, 3.0, 5010, 4900);
        assert_eq!(m.rss_kib_warmup_end, 5003);
        assert_eq!(m.samples_after_warmup, 7);
        assert_eq!(m.rss_kib_max_after_warmup, 5010);
        // 1 KiB per 100 cycles: 10 KiB per 1000.
        assert!((m.slope_kib_per_1000_cycles.unwrap() - 10.0).abs() < 1e-9);
    }
}
