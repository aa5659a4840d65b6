//! `/metrics`: the server's counts in Prometheus' text format, for loopback or a bearer token.
//!
//! Most figures already exist as counts that the server keeps for itself (the registry's
//! [`Stats`](crate::Stats), the media plane's [`MediaStats`](crate::MediaStats), the open
//! connections): they are copied into the families at each scrape, under one lock, so that a
//! scrape sees one moment. What no count holds (how long logins take) is observed as it happens.
//! `docs/operations.md` lists every family.

use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use sha2::{Digest, Sha256};

use crate::ServerState;

/// The content type of Prometheus' text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The families and the lock that makes a scrape one moment.
pub(crate) struct Metrics {
    registry: Registry,
    scrape: Mutex<()>,
    login_seconds: HistogramVec,
    gauges: Gauges,
    counters: Counters,
    webhook_depth: IntGaugeVec,
    webhook_deliveries: IntCounterVec,
    webhook_dropped: IntCounter,
    recordings: IntGauge,
    /// Recording packets: written, dropped (the recorder was behind); recordings failed.
    record_counts: [IntCounter; 3],
    shard_cpu: CounterVec,
}

struct Gauges {
    connections: IntGauge,
    sessions: IntGauge,
    sessions_detached: IntGauge,
    rooms: IntGauge,
    streams: IntGauge,
    peer_connections: IntGauge,
}

struct Counters {
    datagrams_received: IntCounter,
    datagrams_dropped_unknown: IntCounter,
    datagrams_dropped_invalid: IntCounter,
    datagrams_dropped_overload: IntCounter,
    rtp_received: IntCounter,
    rtp_forwarded: IntCounter,
    rtp_muted: IntCounter,
    rtp_dropped_stale: IntCounter,
    transmits_dropped: IntCounter,
    keyframe_requests: IntCounter,
    peer_connections_opened: IntCounter,
    peer_connections_connected: IntCounter,
    peer_connections_closed: IntCounter,
    rtp_bytes_received: IntCounter,
    rtp_bytes_forwarded: IntCounter,
    rtp_lost: IntCounter,
    nacks_received: IntCounter,
    nacks_sent: IntCounter,
    rtx_sent: IntCounter,
}

impl Metrics {
    /// The families, with the media plane's first-packet histogram (which its shards observe
    /// in `counters`).
    pub(crate) fn new(counters: &crate::sfu::Counters) -> Metrics {
        let registry = Registry::new();
        registry
            .register(Box::new(counters.first_packet.vec.clone()))
            .expect("one family per name");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("a valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("one family per name");
            g
        };
        let gauges = Gauges {
            connections: gauge("huddle_connections", "Open WebSocket connections."),
            sessions: gauge(
                "huddle_sessions",
                "Sessions (users logged in to a room), attached or detached.",
            ),
            sessions_detached: gauge(
                "huddle_sessions_detached",
                "Sessions whose connection broke, waiting for a resume.",
            ),
            rooms: gauge("huddle_rooms", "Rooms with at least one session."),
            streams: gauge("huddle_streams", "Published streams."),
            peer_connections: gauge("huddle_peer_connections", "Open media peer connections."),
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("one family per name");
            c
        };
        let dropped = |reason: &str, help: &str| {
            let opts = Opts::new("huddle_udp_datagrams_dropped_total", help).const_label("reason", reason);
            let c = IntCounter::with_opts(opts).expect("a valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("one series per reason");
            c
        };
        let dropped_help = "UDP datagrams dropped on receipt, by reason.";
        let counters = Counters {
            datagrams_received: counter("huddle_udp_datagrams_received_total", "UDP datagrams received."),
            datagrams_dropped_unknown: dropped("unknown", dropped_help),
            datagrams_dropped_invalid: dropped("invalid", dropped_help),
            datagrams_dropped_overload: dropped("overload", dropped_help),
            rtp_received: counter(
                "huddle_rtp_packets_received_total",
                "RTP packets received from publishers.",
            ),
            rtp_forwarded: counter(
                "huddle_rtp_packets_forwarded_total",
                "RTP packets written to players (one per player per packet).",
            ),
            rtp_muted: counter(
                "huddle_rtp_packets_muted_total",
                "RTP packets not written to players that muted their track (mute_play).",
            ),
            rtp_dropped_stale: counter(
                "huddle_rtp_packets_dropped_stale_total",
                "RTP packets dropped because they waited in the server's queues too long (overload).",
            ),
            transmits_dropped: counter(
                "huddle_udp_transmits_dropped_total",
                "Datagrams not sent: the send queue was full or the socket refused them.",
            ),
            keyframe_requests: counter(
                "huddle_keyframe_requests_total",
                "Keyframe requests (PLI/FIR) forwarded to publishers.",
            ),
            peer_connections_opened: counter(
                "huddle_peer_connections_opened_total",
                "Media peer connections opened (offers answered).",
            ),
            peer_connections_connected: counter(
                "huddle_peer_connections_connected_total",
                "Media peer connections that connected (ICE and DTLS).",
            ),
            peer_connections_closed: counter(
                "huddle_peer_connections_closed_total",
                "Media peer connections closed.",
            ),
            rtp_bytes_received: counter(
                "huddle_rtp_payload_received_bytes_total",
                "RTP payload bytes received from publishers (RTP headers, SRTP, UDP and IP overhead \
                 not counted).",
            ),
            rtp_bytes_forwarded: counter(
                "huddle_rtp_payload_forwarded_bytes_total",
                "RTP payload bytes written to players, one copy per player (RTP headers, SRTP, UDP \
                 and IP overhead and retransmissions not counted).",
            ),
            rtp_lost: counter(
                "huddle_rtp_packets_lost_total",
                "RTP packets missing from publishers' sequence numbers when a later packet arrived: \
                 lost on the way to the server, or reordered (a NACK may still bring them).",
            ),
            nacks_received: counter(
                "huddle_nacks_received_total",
                "NACKs (RTCP generic NACK messages, each naming one or more packets) received from \
                 players; the server answers them from its send buffer. Counted once a second per \
                 connection.",
            ),
            nacks_sent: counter(
                "huddle_nacks_sent_total",
                "NACKs (RTCP generic NACK messages) sent to publishers for packets missing on the way \
                 to the server. Counted once a second per connection.",
            ),
            rtx_sent: counter(
                "huddle_rtx_packets_sent_total",
                "Video packets sent to players again (RTX) in answer to their NACKs. Counted once a \
                 second per connection.",
            ),
        };
        let login_seconds = HistogramVec::new(
            HistogramOpts::new(
                "huddle_login_duration_seconds",
                "From the WebSocket upgrade to login_ok: the server's part of joining a room plus \
                 the client's answer to hello.",
            )
            .buckets(crate::sfu::LATENCY_BUCKETS.to_vec()),
            &["resumed"],
        )
        .expect("a valid histogram");
        registry
            .register(Box::new(login_seconds.clone()))
            .expect("one family per name");
        let webhook_depth = IntGaugeVec::new(
            Opts::new(
                "huddle_webhook_queue_depth",
                "Webhook events of an app not yet delivered to every one of its receivers.",
            ),
            &["app_id"],
        )
        .expect("a valid gauge");
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "huddle_webhook_deliveries_total",
                "Webhook delivery attempts, by result (ok: answered 2xx; failed: retried later).",
            ),
            &["result"],
        )
        .expect("a valid counter");
        let webhook_dropped = IntCounter::new(
            "huddle_webhook_events_dropped_total",
            "Webhook events dropped: the queue to the disk was full, or an app kept too many undelivered.",
        )
        .expect("a valid counter");
        for c in [
            Box::new(webhook_depth.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(webhook_deliveries.clone()),
            Box::new(webhook_dropped.clone()),
        ] {
            registry.register(c).expect("one family per name");
        }
        let recordings =
            IntGauge::new("huddle_recordings", "Streams being recorded.").expect("a valid gauge");
        let record_counts = [
            (
                "huddle_record_packets_written_total",
                "RTP packets written to recordings.",
            ),
            (
                "huddle_record_packets_dropped_total",
                "RTP packets left out of recordings because a recorder's queue was full.",
            ),
            (
                "huddle_record_failures_total",
                "Recordings ended by an error (directory not writable, disk full).",
            ),
        ]
        .map(|(name, help)| IntCounter::new(name, help).expect("a valid counter"));
        registry
            .register(Box::new(recordings.clone()))
            .expect("one family per name");
        for c in &record_counts {
            registry
                .register(Box::new(c.clone()))
                .expect("one family per name");
        }
        let shard_cpu = CounterVec::new(
            Opts::new(
                "huddle_media_shard_cpu_seconds_total",
                "CPU time (user and system) of each media shard's thread, read from the kernel \
                 at each scrape (Linux only).",
            ),
            &["shard"],
        )
        .expect("a valid counter");
        registry
            .register(Box::new(shard_cpu.clone()))
            .expect("one family per name");
        Metrics {
            shard_cpu,
            recordings,
            record_counts,
            registry,
            scrape: Mutex::new(()),
            login_seconds,
            gauges,
            counters,
            webhook_depth,
            webhook_deliveries,
            webhook_dropped,
        }
    }

    /// A login (or resume) was answered `login_ok`, `took` after its connection was upgraded.
    pub(crate) fn observe_login(&self, took: Duration, resumed: bool) {
        self.login_seconds
            .with_label_values(&[if resumed { "true" } else { "false" }])
            .observe(took.as_secs_f64());
    }

    /// The text of a scrape: every family, with the counts of `state` now.
    pub(crate) fn render(&self, state: &ServerState) -> String {
        let _one_moment = self.scrape.lock();
        let stats = state.stats();
        let media = state.media_stats();
        let g = &self.gauges;
        let set = |gauge: &IntGauge, v: usize| gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&g.connections, state.connections());
        set(&g.sessions, stats.sessions);
        set(&g.sessions_detached, stats.detached);
        set(&g.rooms, stats.rooms);
        set(&g.streams, stats.streams);
        let open_pcs = media.pcs_opened.saturating_sub(media.pcs_closed);
        g.peer_connections
            .set(i64::try_from(open_pcs).unwrap_or(i64::MAX));
        let c = &self.counters;
        // The media plane's counts only grow; a counter is set to the count it mirrors.
        for (counter, value) in [
            (&c.datagrams_received, media.datagrams_in),
            (&c.datagrams_dropped_unknown, media.dropped_unknown),
            (&c.datagrams_dropped_invalid, media.dropped_invalid),
            (&c.datagrams_dropped_overload, media.dropped_overload),
            (&c.rtp_received, media.rtp_in),
            (&c.rtp_forwarded, media.rtp_forwarded),
            (&c.rtp_muted, media.rtp_muted),
            (&c.rtp_dropped_stale, media.dropped_stale),
            (&c.transmits_dropped, media.transmits_dropped),
            (&c.keyframe_requests, media.keyframe_requests),
            (&c.peer_connections_opened, media.pcs_opened),
            (&c.peer_connections_connected, media.pcs_connected),
            (&c.peer_connections_closed, media.pcs_closed),
            (&c.rtp_bytes_received, media.rtp_bytes_in),
            (&c.rtp_bytes_forwarded, media.rtp_bytes_forwarded),
            (&c.rtp_lost, media.rtp_lost),
            (&c.nacks_received, media.nacks_in),
            (&c.nacks_sent, media.nacks_out),
            (&c.rtx_sent, media.rtx_sent),
        ] {
            counter.reset();
            counter.inc_by(value);
        }
        if let Some(hooks) = state.webhooks() {
            use std::sync::atomic::Ordering::Relaxed;
            for (app, depth) in hooks.depths() {
                self.webhook_depth
                    .with_label_values(&[app.to_string().as_str()])
                    .set(i64::try_from(depth).unwrap_or(i64::MAX));
            }
            for (result, value) in [
                ("ok", hooks.counts.delivered.load(Relaxed)),
                ("failed", hooks.counts.failed.load(Relaxed)),
            ] {
                let c = self.webhook_deliveries.with_label_values(&[result]);
                c.reset();
                c.inc_by(value);
            }
            self.webhook_dropped.reset();
            self.webhook_dropped.inc_by(hooks.counts.dropped.load(Relaxed));
        }
        {
            use std::sync::atomic::Ordering::Relaxed;
            let counts = state.recorder().counts();
            self.recordings
                .set(i64::try_from(counts.active.load(Relaxed)).unwrap_or(i64::MAX));
            for (counter, value) in self.record_counts.iter().zip([
                counts.packets.load(Relaxed),
                counts.dropped.load(Relaxed),
                counts.failed.load(Relaxed),
            ]) {
                counter.reset();
                counter.inc_by(value);
            }
        }
        self.shard_cpu.reset();
        for (shard, seconds) in shard_cpu_seconds() {
            self.shard_cpu
                .with_label_values(&[shard.to_string().as_str()])
                .inc_by(seconds);
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("the text encoder writes to memory");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

/// The CPU seconds of this process's media shard threads (named `huddle-media-N` by
/// `crate::media`), by shard, read from `/proc/self/task` at a scrape: the shards pay nothing
/// for it. Threads of several servers in one process (the tests) add up by shard. Read here
/// rather than through a crate: no well-kept one reads another thread's CPU clock without
/// unsafe code, and the kernel's files are the documented interface (proc(5)).
fn shard_cpu_seconds() -> Vec<(usize, f64)> {
    let mut out: Vec<(usize, f64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let Some(shard) = comm
            .trim_end()
            .strip_prefix("huddle-media-")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let Some(seconds) = thread_cpu_seconds(&dir) else {
            continue;
        };
        match out.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, total)) => *total += seconds,
            None => out.push((shard, seconds)),
        }
    }
    out.sort_by_key(|(s, _)| *s);
    out
}

/// A thread's CPU seconds: `schedstat`'s nanoseconds on a CPU, else `stat`'s user and system
/// clock ticks (fields 14 and 15; the kernel reports them in USER_HZ, 100 a second).
fn thread_cpu_seconds(dir: &std::path::Path) -> Option<f64> {
    if let Ok(s) = std::fs::read_to_string(dir.join("schedstat"))
        && let Some(ns) = s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok())
    {
        return Some(ns as f64 / 1e9);
    }
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The name (field 2) is in parentheses and may hold spaces: count from the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Whether `Authorization: Bearer <token>` carries the configured token. Compared as SHA-256
/// digests, so that the time taken says nothing about how much of the token matched.
pub(crate) fn token_matches(configured: &str, authorization: Option<&str>) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return false;
    };
    Sha256::digest(given.trim().as_bytes()) == Sha256::digest(configured.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let t = "0123456789abcdef-metrics";
        assert!(token_matches(t, Some("Bearer 0123456789abcdef-metrics")));
        assert!(!token_matches(t, Some("Bearer 0123456789abcdef-metric")));
        assert!(!token_matches(t, Some("Basic 0123456789abcdef-metrics")));
        assert!(!token_matches(t, Some("0123456789abcdef-metrics")));
        assert!(!token_matches(t, None));
    }
}
