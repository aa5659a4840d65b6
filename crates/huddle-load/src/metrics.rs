//! The measurement math: per-stream loss, duplicates and RFC 3550 jitter, a bounded latency
//! histogram, percentiles, and CPU/RSS samples of a process (or thread) from `/proc`.

use std::time::Instant;

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; `None` when there are none.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[nearest_rank(sorted.len() as u64, p) as usize - 1])
}

/// The 1-based nearest rank of percentile `p` among `n` (≥ 1) ordered samples.
fn nearest_rank(n: u64, p: f64) -> u64 {
    let rank = (p.clamp(0.0, 100.0) / 100.0 * n as f64).ceil() as u64;
    rank.clamp(1, n)
}

/// Sub-buckets per power of two: the histogram's values are within 1/32 (3%) of the truth.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Values are clamped to 2^32 - 1 µs (71 minutes): more buckets would only cost memory.
const MAX_MSB: u32 = 31;
const BUCKETS: usize = SUB * (MAX_MSB - SUB_BITS + 2) as usize;

/// A log-linear histogram of microsecond values with a fixed size (7 KiB), so that a run of any
/// length and rate keeps bounded memory. Values below 32 µs are exact; above, each power of two is
/// split into 32 buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    n: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            n: 0,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("n", &self.n)
            .field("max", &self.max)
            .finish()
    }
}

fn bucket_of(v: u64) -> usize {
    let v = v.min(u64::from(u32::MAX));
    if v < SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = (v >> shift) as usize; // SUB..2*SUB
    SUB * (shift as usize + 1) + (mantissa - SUB)
}

/// The smallest and largest value of a bucket.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64);
    }
    let shift = (i / SUB - 1) as u32;
    let mantissa = (SUB + i % SUB) as u64;
    (mantissa << shift, ((mantissa + 1) << shift) - 1)
}

impl Histogram {
    /// Counts a value.
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
    }

    /// Nearest-rank percentile, as the middle of its bucket (never above the maximum).
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = nearest_rank(self.n, p);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                return Some((lo + (hi - lo) / 2).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// What one receiver measures of one stream: distinct packets, duplicates, and the RFC 3550
/// interarrival jitter computed from the send times carried in the payload.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// Distinct packets received whose send time fell in the measurement window.
    pub received_in_window: u64,
    /// Distinct packets received at all.
    pub received: u64,
    /// Packets received more than once.
    pub duplicates: u64,
    highest: Option<u32>,
    /// Bit i set: `highest - 1 - i` was received.
    seen: u64,
    last_transit_us: Option<i64>,
    /// RFC 3550 jitter estimate in microseconds (J += (|D| - J) / 16).
    jitter_us: f64,
}

impl StreamStats {
    /// Accounts one packet; returns false for a duplicate (which is otherwise ignored).
    pub fn on_packet(&mut self, seq: u32, sent_us: u64, arrival_us: u64, in_window: bool) -> bool {
        if !self.mark(seq) {
            self.duplicates += 1;
            return false;
        }
        self.received += 1;
        if in_window {
            self.received_in_window += 1;
        }
        let transit = arrival_us as i64 - sent_us as i64;
        if let Some(last) = self.last_transit_us {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit_us = Some(transit);
        true
    }

    /// The current jitter estimate in microseconds.
    pub fn jitter_us(&self) -> f64 {
        self.jitter_us
    }

    /// Records `seq` as seen; false if it was seen already. Sequence numbers more than 64 behind
    /// the highest are assumed new (they are rare and the window stays one word).
    fn mark(&mut self, seq: u32) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            return true;
        };
        if seq > highest {
            let ahead = seq - highest;
            self.seen = if ahead > 64 {
                0
            } else {
                // The old highest becomes bit ahead - 1.
                (self.seen << (ahead - 1) << 1) | (1u64 << (ahead - 1))
            };
            self.highest = Some(seq);
            return true;
        }
        if seq == highest {
            return false;
        }
        let behind = highest - seq;
        if behind > 64 {
            return true;
        }
        let bit = 1u64 << (behind - 1);
        let fresh = self.seen & bit == 0;
        self.seen |= bit;
        fresh
    }
}

/// Loss as a ratio of what was expected (0 when nothing was expected).
pub fn loss_ratio(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    expected.saturating_sub(received) as f64 / expected as f64
}

/// One reading of a process's (or one thread's) CPU time and the process's resident memory.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// User + system CPU time, microseconds.
    pub cpu_us: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Time the threads were runnable but waited for a CPU (schedstat's run-queue wait),
    /// microseconds; 0 where the kernel does not say.
    pub runq_wait_us: u64,
}

/// What to sample: a process, or one thread of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcTarget {
    /// The process ID.
    pub pid: u32,
    /// A thread ID to count only that thread's CPU time.
    pub tid: Option<u32>,
}

impl ProcTarget {
    /// A whole process.
    pub fn process(pid: u32) -> Self {
        ProcTarget { pid, tid: None }
    }

    /// The calling process.
    pub fn this_process() -> Self {
        ProcTarget::process(std::process::id())
    }

    /// The calling thread (Linux thread ID).
    pub fn this_thread() -> Self {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        ProcTarget {
            pid: std::process::id(),
            tid: Some(tid),
        }
    }

    /// Reads the CPU time and `/proc/PID/status`. CPU time comes from `schedstat` (nanoseconds,
    /// summed over the process's live threads) where the kernel has it, else from `stat` (clock
    /// ticks, 10 ms). schedstat misses the time of threads that ended in between; the servers we
    /// measure keep their threads for the run.
    pub fn sample(&self) -> std::io::Result<ProcSample> {
        let at = Instant::now();
        let sched = self.schedstat_ns();
        let runq_wait_us = sched.map_or(0, |(_, wait)| wait / 1_000);
        let cpu_us = match sched {
            Some((ns, _)) => ns / 1_000,
            None => {
                let stat_path = match self.tid {
                    Some(tid) => format!("/proc/{}/task/{tid}/stat", self.pid),
                    None => format!("/proc/{}/stat", self.pid),
                };
                let stat = std::fs::read_to_string(stat_path)?;
                let ticks = parse_stat_cpu_ticks(&stat)
                    .ok_or_else(|| std::io::Error::other(format!("unreadable /proc stat of {}", self.pid)))?;
                ticks * 1_000_000 / clock_ticks_per_second()
            }
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let rss_kib = parse_status_rss_kib(&status).unwrap_or(0);
        Ok(ProcSample {
            at,
            cpu_us,
            rss_kib,
            runq_wait_us,
        })
    }

    /// CPU and run-queue wait nanoseconds from `/proc/PID/task/*/schedstat` (or one task's).
    fn schedstat_ns(&self) -> Option<(u64, u64)> {
        let read = |tid: &str| -> Option<(u64, u64)> {
            let s = std::fs::read_to_string(format!("/proc/{}/task/{tid}/schedstat", self.pid)).ok()?;
            let mut f = s.split_whitespace();
            let cpu = f.next()?.parse().ok()?;
            Some((cpu, f.next().and_then(|w| w.parse().ok()).unwrap_or(0)))
        };
        match self.tid {
            Some(tid) => read(&tid.to_string()),
            None => {
                let (mut cpu, mut wait) = (0, 0);
                for entry in std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()? {
                    let name = entry.ok()?.file_name();
                    // A thread may end between the listing and the read: count what is there.
                    let (c, w) = read(name.to_str()?).unwrap_or((0, 0));
                    cpu += c;
                    wait += w;
                }
                Some((cpu, wait))
            }
        }
    }
}

/// CPU time of each thread of process `pid` by thread name (`/proc/PID/task/*/comm`: the media
/// threads are `huddle-media-N`; a pool's threads share a name and are summed), microseconds,
/// from `schedstat`. Empty where the kernel has no schedstat.
pub fn thread_cpu_us(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in tasks.flatten() {
        let dir = entry.path();
        // A thread may end between the listing and the reads: skip it.
        let (Ok(comm), Ok(sched)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        *out.entry(comm.trim().to_string()).or_default() += ns / 1_000;
    }
    out
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime (fields 14 and 15) of a `/proc/.../stat` line, in clock ticks. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of a `/proc/PID/status`, KiB.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 95.0), Some(95.0));
        assert_eq!(percentile(&s, 100.0), Some(100.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0, 3.0, 5.0], 50.0), Some(5.0));
        assert_eq!(percentile(&[4.0], 95.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn histogram_buckets_are_contiguous() {
        let mut expected_lo = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_range(i);
            assert_eq!(lo, expected_lo, "bucket {i}");
            assert!(hi >= lo);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
            expected_lo = hi + 1;
        }
        assert_eq!(expected_lo, 1 << 32);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn histogram_percentiles_are_within_three_percent() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        assert_eq!(h.len(), 10_000);
        for (p, truth) in [(50.0, 5_000.0), (95.0, 9_500.0), (99.0, 9_900.0)] {
            let got = h.percentile(p).unwrap() as f64;
            assert!((got - truth).abs() / truth < 0.035, "p{p}: {got} vs {truth}");
        }
        assert_eq!(h.percentile(100.0), Some(10_000));
        let mut small = Histogram::default();
        small.record(3);
        small.record(17);
        assert_eq!(small.percentile(50.0), Some(3));
        assert_eq!(small.percentile(95.0), Some(17));
        let mut merged = Histogram::default();
        merged.merge(&h);
        merged.merge(&small);
        assert_eq!(merged.len(), 10_002);
        assert_eq!(Histogram::default().percentile(50.0), None);
    }

    #[test]
    fn loss_counts_distinct_packets() {
        let mut s = StreamStats::default();
        for seq in [0, 1, 2, 4, 5, 2, 3, 9] {
            s.on_packet(seq, 0, 0, true);
        }
        assert_eq!(s.received, 7);
        assert_eq!(s.duplicates, 1);
        // 10 sent (0..=9), 7 distinct received.
        assert!((loss_ratio(10, s.received) - 0.3).abs() < 1e-12);
        assert_eq!(loss_ratio(0, 0), 0.0);
        assert_eq!(loss_ratio(5, 9), 0.0);
    }

    #[test]
    fn duplicate_window_survives_big_jumps() {
        let mut s = StreamStats::default();
        assert!(s.mark(10));
        assert!(s.mark(200)); // jump of more than 64
        assert!(!s.mark(200));
        assert!(s.mark(199));
        assert!(!s.mark(199));
        assert!(s.mark(264)); // exactly 64 ahead: 200 becomes the oldest bit
        assert!(!s.mark(200));
        assert!(s.mark(100)); // far behind: assumed new
    }

    #[test]
    fn jitter_follows_rfc3550() {
        // Perfectly paced arrivals: no jitter.
        let mut s = StreamStats::default();
        for i in 0..100u32 {
            let t = u64::from(i) * 20_000;
            s.on_packet(i, t, t + 500, true);
        }
        assert_eq!(s.jitter_us(), 0.0);
        // Transit alternating 0 / 1000 µs: |D| = 1000 each time, J converges to 1000.
        let mut s = StreamStats::default();
        for i in 0..1000u32 {
            let t = u64::from(i) * 20_000;
            s.on_packet(i, t, t + if i % 2 == 0 { 0 } else { 1000 }, true);
        }
        assert!((s.jitter_us() - 1000.0).abs() < 1.0, "{}", s.jitter_us());
        // One step: J = |D| / 16 after the first difference.
        let mut s = StreamStats::default();
        s.on_packet(0, 0, 100, true);
        s.on_packet(1, 20_000, 21_700, true);
        assert!((s.jitter_us() - 1600.0 / 16.0).abs() < 1e-9);
    }

    #[test]
    fn window_counts_only_window_packets() {
        let mut s = StreamStats::default();
        s.on_packet(0, 0, 0, false);
        s.on_packet(1, 0, 0, true);
        assert_eq!((s.received, s.received_in_window), (2, 1));
    }

    #[test]
    fn proc_stat_parsing() {
        let stat = "1234 (janus (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 42 \
                    1000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        let status = "Name:\tjanus\nVmPeak:\t  9000 kB\nVmRSS:\t   4321 kB\nThreads:\t9\n";
        assert_eq!(parse_status_rss_kib(status), Some(4321));
        let me = ProcTarget::this_process().sample().unwrap();
        assert!(me.rss_kib > 0);
        let thread = ProcTarget::this_thread().sample().unwrap();
        assert!(thread.rss_kib > 0);
        // Burn some CPU: both readings see it, the thread's no more than the process's.
        let t0 = ProcTarget::this_thread().sample().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let t1 = ProcTarget::this_thread().sample().unwrap();
        assert!(t1.cpu_us > t0.cpu_us, "{} {}", t0.cpu_us, t1.cpu_us);
        assert!(ProcTarget::this_process().sample().unwrap().cpu_us >= t1.cpu_us);
    }
}
