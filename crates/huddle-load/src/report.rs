//! The result of a run: a plain struct, as JSON ([`Report::to_json`]) for scripts and as a table
//! ([`Report::to_table`]) for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::metrics::{Histogram, ProcSample, ProcTarget, percentile};

/// p50/p95/p99/max of a set of values, in the unit its field names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    /// How many values.
    pub n: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Dist {
    /// Exact nearest-rank percentiles of `samples`; `None` when empty.
    pub fn from_samples(samples: &[f64]) -> Option<Dist> {
        Some(Dist {
            n: samples.len() as u64,
            p50: percentile(samples, 50.0)?,
            p95: percentile(samples, 95.0)?,
            p99: percentile(samples, 99.0)?,
            max: percentile(samples, 100.0)?,
        })
    }

    /// Percentiles of a microsecond histogram, in milliseconds.
    pub fn from_histogram_us(h: &Histogram) -> Option<Dist> {
        let ms = |p| h.percentile(p).map(|us| us as f64 / 1e3);
        Some(Dist {
            n: h.len(),
            p50: ms(50.0)?,
            p95: ms(95.0)?,
            p99: ms(99.0)?,
            max: h.max() as f64 / 1e3,
        })
    }
}

/// Where the play joins' time went (WebRTC runs): each phase from the end of the one before, ms.
/// `login` is per subscriber; the others per play connection, from the start of its negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlayPhases {
    /// Subscriber: start of its login → logged in (signaling connection, challenge, `login`).
    pub login: Option<Dist>,
    /// Start of the stream's negotiation (`play` request or subscriber join) → the remote SDP
    /// applied (the server's answer, or our answer to Janus's offer).
    pub signaling: Option<Dist>,
    /// → ICE connected (a connectivity check answered).
    pub ice: Option<Dist>,
    /// → DTLS connected (handshake done, SRTP keys made).
    pub dtls: Option<Dist>,
    /// → the first probe: the wait for the publisher's next packet (one every 20 ms at 50/s),
    /// and its way through the server.
    pub first_packet: Option<Dist>,
}

/// The server process (or relay thread) over the measurement window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcReport {
    /// The sampled process.
    pub pid: u32,
    /// The sampled thread, when only one thread was counted (the in-process B0 relay).
    pub tid: Option<u32>,
    /// CPU time (user + system) used in the window, seconds.
    pub cpu_s: f64,
    /// Average cores busy in the window.
    pub cpu_cores: f64,
    /// CPU microseconds per delivered (forwarded) packet.
    pub cpu_us_per_packet: Option<f64>,
    /// Time its threads were runnable but waited for a CPU in the window (schedstat), seconds:
    /// on a shared machine, what other processes took from it.
    #[serde(default)]
    pub runq_wait_s: f64,
    /// Resident memory before any client joined, KiB.
    pub rss_kib_before: u64,
    /// Resident memory at the end of the window, KiB.
    pub rss_kib_end: u64,
    /// Largest resident memory seen (sampled each second), KiB.
    pub rss_kib_peak: u64,
    /// (end − before) / planned play streams, KiB.
    pub rss_kib_per_play_stream: Option<f64>,
    /// Cores used in the window per thread name (threads of one name summed), busiest first;
    /// names under 0.005 cores left out. Shows whether the server spreads over the cores.
    #[serde(default)]
    pub threads: Vec<ThreadCpu>,
}

/// One thread name's share of the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadCpu {
    /// The thread name (`/proc/PID/task/TID/comm`).
    pub name: String,
    /// Average cores busy in the window.
    pub cores: f64,
}

/// Per-thread-name cores between two [`crate::metrics::thread_cpu_us`] readings `window_s` apart.
pub(crate) fn thread_cores(
    start: &std::collections::BTreeMap<String, u64>,
    end: &std::collections::BTreeMap<String, u64>,
    window_s: f64,
) -> Vec<ThreadCpu> {
    let mut v: Vec<ThreadCpu> = end
        .iter()
        .map(|(name, us)| ThreadCpu {
            name: name.clone(),
            cores: us.saturating_sub(start.get(name).copied().unwrap_or(0)) as f64 / 1e6 / window_s.max(1e-9),
        })
        .filter(|t| t.cores >= 0.005)
        .collect();
    v.sort_by(|a, b| b.cores.total_cmp(&a.cores));
    v
}

impl ProcReport {
    pub(crate) fn new(
        target: ProcTarget,
        before: ProcSample,
        start: ProcSample,
        end: ProcSample,
        samples: &[ProcSample],
        delivered: u64,
        play_streams: u64,
    ) -> ProcReport {
        let cpu_us = end.cpu_us.saturating_sub(start.cpu_us) as f64;
        let window_s = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let peak = samples
            .iter()
            .map(|s| s.rss_kib)
            .chain([before.rss_kib, start.rss_kib, end.rss_kib])
            .max()
            .unwrap_or(0);
        ProcReport {
            pid: target.pid,
            tid: target.tid,
            cpu_s: cpu_us / 1e6,
            cpu_cores: cpu_us / 1e6 / window_s,
            cpu_us_per_packet: (delivered > 0).then(|| cpu_us / delivered as f64),
            runq_wait_s: end.runq_wait_us.saturating_sub(start.runq_wait_us) as f64 / 1e6,
            rss_kib_before: before.rss_kib,
            rss_kib_end: end.rss_kib,
            rss_kib_peak: peak,
            rss_kib_per_play_stream: (play_streams > 0)
                .then(|| end.rss_kib.saturating_sub(before.rss_kib) as f64 / play_streams as f64),
            threads: Vec::new(),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `huddle`, `janus` or `b0-relay`.
    pub target: String,
    /// `webrtc` (ICE, DTLS, SRTP) or `plain-udp`.
    pub mode: String,
    /// Publishers planned.
    pub publishers: u32,
    /// Subscribers planned (each plays every publisher).
    pub subscribers: u32,
    /// publishers × subscribers.
    pub play_streams: u64,
    /// Packets per second per publisher.
    pub packet_rate: u32,
    /// The measurement window, seconds.
    pub window_s: f64,
    /// Publishers connected (ICE + DTLS) within the join timeout.
    pub publishers_joined: u64,
    /// Play streams connected within the join timeout.
    pub play_streams_joined: u64,
    /// Probes the publishers sent in the window.
    pub sent_packets: u64,
    /// sent × subscribers: what a perfect server delivers.
    pub expected_packets: u64,
    /// Distinct probes sent in the window that reached a subscriber.
    pub delivered_packets: u64,
    /// delivered / window.
    pub delivered_pps: f64,
    /// 1 − delivered / expected (streams that never joined count as lost).
    pub loss: f64,
    /// Probes received more than once.
    pub duplicates: u64,
    /// RFC 3550 interarrival jitter, mean over streams, ms.
    pub jitter_ms_mean: Option<f64>,
    /// The worst stream's jitter, ms.
    pub jitter_ms_max: Option<f64>,
    /// One-way latency publisher → subscriber (same clock: loopback), ms.
    pub latency_ms: Option<Dist>,
    /// The same latency up to the moment the datagram entered the subscriber's socket (kernel
    /// receive timestamp, `SO_TIMESTAMPNS`): sender, server and kernel, without the time the
    /// datagram waited for the generator to read it. WebRTC runs only.
    #[serde(default)]
    pub latency_socket_ms: Option<Dist>,
    /// Publisher: start of signaling → ICE + DTLS up, ms.
    pub publish_join_ms: Option<Dist>,
    /// Play: start of the stream's negotiation (`play`/subscriber join) → ICE + DTLS up, ms
    /// (plain UDP: first packet).
    pub play_join_ms: Option<Dist>,
    /// Play: start of the stream's negotiation → first probe, ms.
    pub first_packet_ms: Option<Dist>,
    /// Per subscriber: start of its login → first probe of any stream, ms. A subscriber negotiates
    /// its streams one after another, so its later streams start later.
    pub login_first_packet_ms: Option<Dist>,
    /// The play joins phase by phase (WebRTC runs).
    #[serde(default)]
    pub play_phases_ms: Option<PlayPhases>,
    /// The server's CPU and memory, when its process was given.
    pub server: Option<ProcReport>,
    /// Cores the load generator itself used in the window (it shares the machine).
    pub generator_cpu_cores: f64,
    /// Time the generator's threads were runnable but waited for a CPU in the window, seconds.
    #[serde(default)]
    pub generator_runq_wait_s: f64,
    /// The whole run (join, window, drain, stop), seconds.
    pub total_s: f64,
    /// The first errors clients met (at most 20).
    pub errors: Vec<String>,
    /// Per signaling server the clients were spread over (one entry when there is one server; empty
    /// for the plain UDP relay).
    #[serde(default)]
    pub servers: Vec<ServerReport>,
}

/// What the clients assigned to one signaling server did (`huddle load-test --server A --server
/// B`). A play counts on its subscriber's server; it is cross-node when its publisher was assigned
/// another server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    /// The signaling URL.
    pub url: String,
    /// Publishers assigned to it.
    pub publishers: u64,
    /// Subscribers assigned to it.
    pub subscribers: u64,
    /// Clients whose login there succeeded.
    pub logins: u64,
    /// Publish connections up (ICE + DTLS).
    pub publishes_joined: u64,
    /// Play streams of its subscribers.
    pub plays: u64,
    /// Of those, connected (ICE + DTLS).
    pub plays_joined: u64,
    /// Of those, with at least one probe received.
    pub plays_with_media: u64,
    /// Plays of a publisher on another server.
    pub cross_node_plays: u64,
    /// Of those, with at least one probe received.
    pub cross_node_plays_with_media: u64,
    /// Publish or play connections that failed (login, signaling or media).
    pub failures: u64,
}

impl Report {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// What a smoke run (a tiny load any working server carries) got wrong; empty when every
    /// client joined, no client failed, the publishers sent at least 90% of the planned packets,
    /// not one packet was lost, and the server, when sampled, used CPU in the window.
    pub fn smoke_failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.publishers_joined != u64::from(self.publishers) {
            f.push(format!(
                "{}/{} publishers joined",
                self.publishers_joined, self.publishers
            ));
        }
        if self.play_streams_joined != self.play_streams {
            f.push(format!(
                "{}/{} play streams joined",
                self.play_streams_joined, self.play_streams
            ));
        }
        if let Some(e) = self.errors.first() {
            f.push(format!("{} client errors, first: {e}", self.errors.len()));
        }
        let planned = f64::from(self.publishers) * f64::from(self.packet_rate) * self.window_s;
        if (self.sent_packets as f64) < 0.9 * planned {
            f.push(format!(
                "{} packets sent of {planned:.0} planned",
                self.sent_packets
            ));
        }
        if self.expected_packets == 0 || self.loss > 0.0 {
            f.push(format!(
                "loss {:.3}% ({} of {} expected delivered)",
                self.loss * 100.0,
                self.delivered_packets,
                self.expected_packets
            ));
        }
        if let Some(s) = &self.server
            && s.cpu_s <= 0.0
        {
            f.push(format!("the server (PID {}) used no CPU", s.pid));
        }
        f
    }

    /// A human table.
    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let dist = |d: &Option<Dist>| match d {
            Some(d) => format!(
                "p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  (n={})",
                d.p50, d.p95, d.p99, d.max, d.n
            ),
            None => "-".into(),
        };
        let opt = |v: Option<f64>, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}"));
        let _ = writeln!(t, "target            {} ({})", self.target, self.mode);
        let _ = writeln!(
            t,
            "load              {} publishers x {} subscribers = {} play streams, {} pkt/s each",
            self.publishers, self.subscribers, self.play_streams, self.packet_rate
        );
        let _ = writeln!(
            t,
            "joined            {}/{} publishers, {}/{} play streams",
            self.publishers_joined, self.publishers, self.play_streams_joined, self.play_streams
        );
        let _ = writeln!(
            t,
            "window            {:.2} s (whole run {:.2} s)",
            self.window_s, self.total_s
        );
        let _ = writeln!(
            t,
            "delivered         {:.0} pkt/s  ({} of {} expected, {} sent)",
            self.delivered_pps, self.delivered_packets, self.expected_packets, self.sent_packets
        );
        // A starved generator sends less than planned: the load was lighter than it says.
        let planned = self.publishers_joined as f64 * f64::from(self.packet_rate) * self.window_s;
        if planned > 0.0 && (self.sent_packets as f64) < 0.95 * planned {
            let _ = writeln!(
                t,
                "WARNING           publishers sent {:.0}% of the planned rate (generator starved of CPU?)",
                self.sent_packets as f64 / planned * 100.0
            );
        }
        let _ = writeln!(
            t,
            "loss              {:.3} %  ({} duplicates)",
            self.loss * 100.0,
            self.duplicates
        );
        let _ = writeln!(
            t,
            "jitter ms         mean {}  max {}",
            opt(self.jitter_ms_mean, 3),
            opt(self.jitter_ms_max, 3)
        );
        let _ = writeln!(t, "latency ms        {}", dist(&self.latency_ms));
        if self.latency_socket_ms.is_some() {
            let _ = writeln!(t, "  to socket ms    {}", dist(&self.latency_socket_ms));
        }
        let _ = writeln!(t, "publish join ms   {}", dist(&self.publish_join_ms));
        let _ = writeln!(t, "play join ms      {}", dist(&self.play_join_ms));
        let _ = writeln!(t, "first packet ms   {}", dist(&self.first_packet_ms));
        let _ = writeln!(t, "login→1st pkt ms  {}", dist(&self.login_first_packet_ms));
        if let Some(ph) = &self.play_phases_ms {
            let p50 = |d: &Option<Dist>| opt(d.map(|d| d.p50), 1);
            let _ = writeln!(
                t,
                "  phases p50 ms   login {}  signaling {}  ICE {}  DTLS {}  → 1st pkt {}",
                p50(&ph.login),
                p50(&ph.signaling),
                p50(&ph.ice),
                p50(&ph.dtls),
                p50(&ph.first_packet)
            );
        }
        match &self.server {
            Some(s) => {
                let _ = writeln!(
                    t,
                    "server CPU        {:.3} s = {:.3} cores, {} us/packet, waited for a CPU {:.3} s",
                    s.cpu_s,
                    s.cpu_cores,
                    opt(s.cpu_us_per_packet, 2),
                    s.runq_wait_s
                );
                if !s.threads.is_empty() {
                    let list: Vec<String> = s
                        .threads
                        .iter()
                        .map(|th| format!("{} {:.3}", th.name, th.cores))
                        .collect();
                    let _ = writeln!(t, "server threads    {} (cores)", list.join("  "));
                }
                let _ = writeln!(
                    t,
                    "server RSS KiB    before {}  end {}  peak {}  per play stream {}",
                    s.rss_kib_before,
                    s.rss_kib_end,
                    s.rss_kib_peak,
                    opt(s.rss_kib_per_play_stream, 1)
                );
            }
            None => {
                let _ = writeln!(t, "server            (no process to sample)");
            }
        }
        let _ = writeln!(
            t,
            "generator CPU     {:.3} cores, waited for a CPU {:.3} s",
            self.generator_cpu_cores, self.generator_runq_wait_s
        );
        if self.servers.len() > 1 {
            for s in &self.servers {
                let _ = writeln!(
                    t,
                    "server {:<10} {} pubs + {} subs, {} logins, {} publishes up, plays {}/{} up, {} with media, cross-node {}/{} with media, {} failed",
                    s.url,
                    s.publishers,
                    s.subscribers,
                    s.logins,
                    s.publishes_joined,
                    s.plays_joined,
                    s.plays,
                    s.plays_with_media,
                    s.cross_node_plays_with_media,
                    s.cross_node_plays,
                    s.failures
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(t, "error             {e}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cores_are_per_name_busiest_first_and_skip_idle_ones() {
        let start = [("huddle-media-0", 1_000_000), ("huddle-media-1", 0), ("tokio", 5)]
            .map(|(n, us)| (n.to_string(), us))
            .into_iter()
            .collect();
        let end = [
            ("huddle-media-0", 1_400_000),
            ("huddle-media-1", 500_000),
            ("tokio", 6),
            ("new", 20_000),
        ]
        .map(|(n, us)| (n.to_string(), us))
        .into_iter()
        .collect();
        let t = thread_cores(&start, &end, 1.0);
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["huddle-media-1", "huddle-media-0", "new"]);
        assert!((t[0].cores - 0.5).abs() < 1e-9 && (t[1].cores - 0.4).abs() < 1e-9);
        // This process's threads are read from /proc.
        let mine = crate::metrics::thread_cpu_us(std::process::id());
        assert!(!mine.is_empty());
    }

    /// A 2 × 3 run of 2 s at 50 packets/s that went well.
    fn good() -> Report {
        serde_json::from_value(serde_json::json!({
            "target": "janus", "mode": "webrtc", "publishers": 2, "subscribers": 3,
            "play_streams": 6, "packet_rate": 50, "window_s": 2.0, "publishers_joined": 2,
            "play_streams_joined": 6, "sent_packets": 200, "expected_packets": 600,
            "delivered_packets": 600, "delivered_pps": 300.0, "loss": 0.0, "duplicates": 0,
            "server": {
                "pid": 42, "tid": null, "cpu_s": 0.05, "cpu_cores": 0.025,
                "cpu_us_per_packet": 83.3, "rss_kib_before": 1000, "rss_kib_end": 1200,
                "rss_kib_peak": 1200, "rss_kib_per_play_stream": 33.3,
            },
            "generator_cpu_cores": 0.1, "total_s": 3.0, "errors": [],
        }))
        .unwrap()
    }

    #[test]
    fn a_clean_tiny_run_passes_the_smoke_check() {
        assert_eq!(good().smoke_failures(), Vec::<String>::new());
    }

    #[test]
    fn the_smoke_check_names_each_failure() {
        let mut r = good();
        r.play_streams_joined = 5;
        r.delivered_packets = 500;
        r.loss = 1.0 / 6.0;
        r.errors.push("media: ICE disconnected".into());
        r.sent_packets = 100;
        r.server.as_mut().unwrap().cpu_s = 0.0;
        let f = r.smoke_failures().join("; ");
        for want in [
            "5/6 play streams joined",
            "1 client errors, first: media: ICE disconnected",
            "100 packets sent of 200 planned",
            "loss 16.667%",
            "PID 42) used no CPU",
        ] {
            assert!(f.contains(want), "{want:?} not in {f:?}");
        }
        let mut r = good();
        r.loss = 1.0 / 600.0;
        assert_eq!(r.smoke_failures().len(), 1);
        let mut r = good();
        r.publishers_joined = 0;
        assert!(r.smoke_failures()[0].contains("0/2 publishers joined"));
    }
}
