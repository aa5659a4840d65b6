//! The cost of recording a stream (`src/recording/`), on both sides of the queue:
//!
//! - **shard**: what a shard thread spends per recorded packet (`Tap::send`: the packet's
//!   header fields and a reference to its payload into a bounded channel), with a thread at the
//!   other end draining it without sleeping in `recv`, as the recording thread polls (so no
//!   send pays for waking it);
//! - **writer**: what the recording thread spends per packet (reordering, RED/VP8 handling, Ogg
//!   pages, libwebm's muxing, the writes into the page cache) for a voice stream (Opus, 20 ms
//!   packets of 80 bytes: about 32 kbit/s) and a video call stream (the same audio and VP8 at
//!   15 frames/s, 4 KB a frame in 1,100-byte packets, a 12 KB keyframe every 3 s: about
//!   500 kbit/s).
//!
//! CPU time is the thread's own (`CLOCK_THREAD_CPUTIME_ID`, user and system), the median over
//! rounds; per stream-hour = per packet × the stream's packets in an hour. Bytes per minute are
//! the files' sizes for a minute of media (container overhead included).
//!
//! - **many**: `HUDDLE_RECORD_MANY` voice recordings at once (default 2,000; 0 skips it) through
//!   the server's recorder (its writer threads, files in the temporary directory), fed for
//!   `HUDDLE_RECORD_MANY_SECONDS` (default 10) by one thread standing for the shards (a 20 ms
//!   Opus packet to each recording every 20 ms): the process's threads and resident memory
//!   before and while they run, the writer threads' CPU (`huddle-rec*`, from the kernel's
//!   per-thread `schedstat`) per second and per packet, and what was dropped.
//!
//! ```sh
//! cargo bench -p huddle-server --features testkit --bench record
//! HUDDLE_RECORD_MINUTES=5 HUDDLE_RECORD_ROUNDS=7 cargo bench -p huddle-server --features testkit --bench record
//! HUDDLE_RECORD_MANY=2000 HUDDLE_RECORD_WRITERS=2 cargo bench -p huddle-server --features testkit --bench record
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_server::recording::testkit::{recorder, start, tap, write_files};
use huddle_server::recording::{RecPacket, Sent, Track};

mod util;
use util::median;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the clock ID is a constant Linux supports.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A field of `/proc/self/status` (`Threads`, `VmRSS` in kB).
fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The CPU time, in ns, of this process's threads whose name starts with `prefix`.
fn threads_cpu_ns(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim().starts_with(prefix))
        })
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `n` voice recordings at once for `secs`, fed as the shards would (see the module docs).
fn many(dir: &std::path::Path, n: usize, secs: u64) {
    let writers = env("HUDDLE_RECORD_WRITERS", 0) as usize;
    let rec = recorder(dir.join("many"), writers);
    let (threads0, rss0) = (status("Threads"), status("VmRSS"));
    let taps: Vec<_> = (0..n)
        .map(|i| start(&rec, i).expect("the recording starts"))
        .collect();
    let opus: Arc<[u8]> = {
        let mut p = vec![0xfc_u8];
        p.resize(80, 0x5a);
        p.into()
    };
    let t0 = Instant::now();
    let (mut sent, mut dropped) = (0u64, 0u64);
    let (mut cpu_start, mut feed_cpu) = (0, Duration::ZERO);
    let (mut threads, mut rss) = (0, 0);
    let ticks = secs * 50;
    for tick in 0..ticks {
        if tick == 50 {
            // One second in: the writers have started and the files are open.
            cpu_start = threads_cpu_ns("huddle-rec");
        }
        let c0 = thread_cpu();
        for t in &taps {
            let p = RecPacket {
                track: Track::Audio,
                source: 1,
                seq: tick,
                ts: (tick * 960) as u32,
                marker: false,
                red_primary: None,
                payload: opus.clone(),
                at: Instant::now(),
            };
            match t.send(p) {
                Sent::Queued => sent += 1,
                Sent::Dropped | Sent::Closed => dropped += 1,
            }
        }
        if tick >= 50 {
            feed_cpu += thread_cpu() - c0;
        }
        if tick == ticks - 1 {
            threads = status("Threads");
            rss = status("VmRSS");
        }
        let next = t0 + Duration::from_millis(20 * (tick + 1));
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let writer_ns = threads_cpu_ns("huddle-rec").saturating_sub(cpu_start);
    let measured = (ticks - 50) as f64 * n as f64;
    let secs_measured = (ticks - 50) as f64 / 50.0;
    println!(
        "many    {n} voice recordings for {secs} s: threads {threads0} before, {threads} while recording; \
         resident memory {:.1} MiB before, {:.1} MiB while recording ({:.1} KiB per recording)",
        rss0 as f64 / 1024.0,
        rss as f64 / 1024.0,
        (rss.saturating_sub(rss0)) as f64 / n as f64,
    );
    println!(
        "        writer threads' CPU {:.1} % of a core ({:.0} ns per packet); shard side {:.0} ns per packet; \
         {sent} packets queued, {dropped} dropped",
        writer_ns as f64 / 1e9 / secs_measured * 100.0,
        writer_ns as f64 / measured,
        feed_cpu.as_nanos() as f64 / measured,
    );
    drop(taps);
    let end = Instant::now() + Duration::from_secs(60);
    while rec.counts().active.load(std::sync::atomic::Ordering::Relaxed) > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(dir.join("many"));
}

/// `minutes` of a stream's packets: Opus every 20 ms, and with `video` VP8 at 15 frames/s.
fn stream(minutes: u64, video: bool) -> Vec<RecPacket> {
    let t0 = Instant::now();
    let opus: Arc<[u8]> = {
        let mut p = vec![0xfc_u8]; // TOC: CELT fullband 20 ms, mono, one frame
        p.resize(80, 0x5a);
        p.into()
    };
    let mut out = Vec::new();
    let mut vseq = 0u64;
    let frames = minutes * 60 * 15;
    let audio = minutes * 60 * 50;
    let (mut a, mut v) = (0u64, 0u64);
    while a < audio || (video && v < frames) {
        // Interleave by time: audio at a × 20 ms, video at v × 66.7 ms.
        let audio_next = a * 20_000;
        let video_next = v * 1_000_000 / 15;
        if a < audio && (!video || v >= frames || audio_next <= video_next) {
            out.push(RecPacket {
                track: Track::Audio,
                source: 1,
                seq: a,
                ts: (a * 960) as u32,
                marker: false,
                red_primary: None,
                payload: opus.clone(),
                at: t0 + Duration::from_micros(audio_next),
            });
            a += 1;
        } else {
            let key = v % 45 == 0;
            let size = if key { 12_000 } else { 4_000 };
            let mut frame = vec![0u8; size];
            if key {
                frame[..10].copy_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
            } else {
                frame[0] = 0x31;
            }
            let chunks: Vec<&[u8]> = frame.chunks(1_100).collect();
            let n = chunks.len();
            for (i, c) in chunks.into_iter().enumerate() {
                let mut p = vec![
                    if i == 0 { 0x90 } else { 0x80 },
                    0x80,
                    0x80 | ((v >> 8) as u8 & 0x7f),
                    v as u8,
                ];
                p.extend_from_slice(c);
                out.push(RecPacket {
                    track: Track::Video,
                    source: 2,
                    seq: vseq,
                    ts: (v * 6_000) as u32,
                    marker: i == n - 1,
                    red_primary: None,
                    payload: p.into(),
                    at: t0 + Duration::from_micros(video_next),
                });
                vseq += 1;
            }
            v += 1;
        }
    }
    out
}

fn main() {
    let minutes = env("HUDDLE_RECORD_MINUTES", 2);
    let rounds = env("HUDDLE_RECORD_ROUNDS", 5) as usize;
    let dir = std::env::temp_dir().join(format!("huddle-record-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    println!("recording cost, {minutes} min of media per round, median of {rounds} rounds");

    // The shard's side: Tap::send with a thread draining the queue.
    let packets = stream(minutes, true);
    let mut per_packet = Vec::new();
    for _ in 0..rounds {
        let (t, rx) = tap(huddle_server::recording::QUEUE_PACKETS);
        // The other end drains without sleeping in `recv`, as the recording thread does (it
        // polls): a send never has a sleeping receiver to wake.
        let drain = std::thread::spawn(move || {
            let mut n = 0;
            loop {
                match rx.try_recv() {
                    Ok(_) => n += 1,
                    Err(std::sync::mpsc::TryRecvError::Empty) => std::thread::yield_now(),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return n,
                }
            }
        });
        let copies: Vec<RecPacket> = packets.clone();
        let n = copies.len();
        let mut dropped = 0;
        let c0 = thread_cpu();
        for p in copies {
            if t.send(p) == Sent::Dropped {
                dropped += 1;
            }
        }
        let cpu = thread_cpu() - c0;
        drop(t);
        let got = drain.join().expect("drain thread");
        assert_eq!(got + dropped, n);
        per_packet.push(cpu.as_nanos() as f64 / n as f64);
    }
    let shard_ns = median(&mut per_packet);
    println!("shard   Tap::send: {shard_ns:.0} ns of the shard thread per recorded packet");

    // A writer's polling (every 50 ms, whatever the traffic): its own CPU for 2 s of empty
    // polls. A writer takes many recordings, so this is per writer thread, not per stream.
    let poll = std::thread::spawn(|| {
        let (_t, rx) = tap(16);
        let c0 = thread_cpu();
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            let _ = rx.try_recv();
            std::thread::sleep(Duration::from_millis(50));
        }
        (thread_cpu() - c0).as_secs_f64() / 2.0
    })
    .join()
    .expect("poll thread");
    println!(
        "writer  polling every 50 ms: {:.2} CPU-s per writer-hour (per writer thread, not per stream)",
        poll * 3600.0
    );

    for (name, video) in [("voice", false), ("video call", true)] {
        let packets = stream(minutes, video);
        let n = packets.len();
        let mut per_packet = Vec::new();
        let mut sizes = Vec::new();
        for r in 0..rounds {
            let copies = packets.clone();
            let base = dir.join(format!("{}-{r}", name.replace(' ', "-")));
            let c0 = thread_cpu();
            let files = write_files(&base, copies).expect("the recording is written");
            let cpu = thread_cpu() - c0;
            per_packet.push(cpu.as_nanos() as f64 / n as f64);
            sizes = files;
            for (path, _) in &sizes {
                let _ = std::fs::remove_file(path);
            }
        }
        let ns = median(&mut per_packet);
        let per_hour = n as f64 / minutes as f64 * 60.0;
        let cpu_hour = ns * per_hour / 1e9;
        println!(
            "writer  {name}: {ns:.0} ns per packet, {:.0} packets/s, {cpu_hour:.2} CPU-s per stream-hour ({:.3}% of a core), shard side {:.2} CPU-s per stream-hour",
            per_hour / 3600.0,
            cpu_hour / 36.0,
            shard_ns * per_hour / 1e9,
        );
        for (path, bytes) in sizes {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("?")
                .to_string();
            println!(
                "        {ext}: {:.0} KB per minute",
                bytes as f64 / minutes as f64 / 1000.0
            );
        }
    }
    let n = env("HUDDLE_RECORD_MANY", 2000) as usize;
    if n > 0 {
        many(&dir, n, env("HUDDLE_RECORD_MANY_SECONDS", 10).max(2));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
