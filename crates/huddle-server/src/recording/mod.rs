//! Recording: each recorded stream's audio to Ogg/Opus and its video to WebM/VP8, written inside
//! the server, with no transcoding and no helper process (`docs/operations.md`, "Recording").
//!
//! ```text
//!  shard thread (Sfu::forward)                      huddle-rec-N: one of N writer threads, each
//!                                                   taking many recordings' queues in turn
//!  a copy of each packet ──try_send──► bounded ──► reorder ─► RED to primary ─► Ogg pages   ─► .ogg
//!  (full: dropped, counted)            channel          └──► VP8 pictures ──► libwebm muxer ─► .webm
//! ```
//!
//! - **The shard never waits for the disk.** [`Tap::send`] is a `try_send` on a bounded channel
//!   ([`QUEUE_PACKETS`]); when the recorder is behind, the packet is dropped and counted
//!   (`DroppedPackets` in the API, 1009089 in the stop event), and shows as a gap in the file.
//!   The files are written off the shard threads and off the async runtime by a small pool of
//!   writer threads ([`Recorder::new`]'s `writers`, `record_writers` in the configuration;
//!   default: one per core, at most [`MAX_WRITERS`]), started with the first recording. Each
//!   recording is given to the writer with the fewest, for its whole life; a writer takes each of
//!   its recordings' queues in turn every [`POLL`] (a thread per recording cost a thread, its
//!   stack and a wake-up every [`POLL`] per recording: 1,000 threads for 1,000 recordings).
//!   The files are written a page (Ogg, about a second) or a buffer (WebM, 32 KiB) at a time.
//!   A failed write (disk full, unwritable directory) ends that recording alone, with its
//!   state, a `record_failed` webhook and a numbered code: never the call, never the server,
//!   never the writer's other recordings.
//! - **Timeline.** Time zero of a recording is the arrival of its first packet. Each track is
//!   anchored on it by the arrival of its first packet; after that, positions come from the RTP
//!   timestamps (48 kHz audio, 90 kHz video), so arrival jitter does not move them, and a gap
//!   (loss, a paused publisher) stays a gap. A publisher that reconnects (a new RTP source) is
//!   anchored again by arrival. The Ogg file and the WebM file of a stream share that timeline:
//!   a video frame at 2.000 s in the WebM was captured with the audio at 2.000 s in the Ogg.
//! - **Where recordings come from** ([`Recorder`]): a server API task for a room (`StartRecord`,
//!   every stream of the room, or one), or an app's `auto_record`. The hub of signaling tells
//!   the recorder which room each stream published on this node is in ([`Recorder::observe`]);
//!   the SFU asks for a tap when a publisher's media is set up, or when the API pokes it.

mod ogg;
mod webm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use huddle_proto::{AppId, ErrorCode, RoomId, StreamId};
use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::registry::{ClusterCommand, RoomChange};
use crate::webhooks::WebhookSender;

pub(crate) use self::ogg::{OggOpusWriter, Pushed};
pub(crate) use self::webm::{Depacketizer, WebmVp8Writer};

/// Packets queued from a shard to one recording, at most (about 4 s of audio and video at
/// 1.5 Mbit/s): a disk that stalls longer costs packets, not the call.
pub const QUEUE_PACKETS: usize = 1024;

/// Packets held to put reordered ones back in sequence, per track.
const REORDER_PACKETS: usize = 16;

/// How often a writer takes what its recordings' queues hold (and looks at their stop flags):
/// 50 ms is 6 packets of a video call, far below [`QUEUE_PACKETS`].
const POLL: Duration = Duration::from_millis(50);

/// Writer threads, at most (`record_writers`).
pub const MAX_WRITERS: usize = 64;

/// How often a recording's file list (sizes, durations) is refreshed for the API while it runs.
const STATE_EVERY: Duration = Duration::from_secs(1);

/// The number of writer threads for `record_writers` (0: one per core this process may use, at
/// most 16).
pub fn writer_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16),
        n => n.min(MAX_WRITERS),
    }
}

/// Ended tasks kept for `DescribeRecordStatus`, at most (the oldest are forgotten first).
const MAX_ENDED_TASKS: usize = 1000;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// Opus (perhaps in RED).
    Audio,
    /// VP8.
    Video,
}

/// One RTP packet, as the shard hands it to a recording.
#[derive(Debug, Clone)]
pub struct RecPacket {
    /// Audio or video.
    pub track: Track,
    /// The RTP source (the publisher's connection and SSRC): a new one is anchored again.
    pub source: u64,
    /// The extended sequence number.
    pub seq: u64,
    /// The RTP timestamp.
    pub ts: u32,
    /// The RTP marker bit.
    pub marker: bool,
    /// For RED (RFC 2198) audio: Opus's payload type (the primary block is recorded).
    pub red_primary: Option<u8>,
    /// The payload (shared with the forwarded copies: no copy is made for the recorder).
    pub payload: Arc<[u8]>,
    /// When it arrived.
    pub at: Instant,
}

/// What the API and the webhooks say of one file.
#[derive(Debug, Clone)]
pub(crate) struct FileInfo {
    pub(crate) path: PathBuf,
    pub(crate) track: Track,
    pub(crate) bytes: u64,
    pub(crate) duration_ms: u64,
    /// Unix ms of the recording's time zero.
    pub(crate) begin_unix_ms: u64,
}

impl FileInfo {
    fn json(&self, stream: &StreamId) -> Value {
        json!({
            "StreamId": stream.as_str(),
            "FilePath": self.path.display().to_string(),
            "OutputFileFormat": match self.track { Track::Audio => "ogg", Track::Video => "webm" },
            "MediaTrackType": match self.track { Track::Audio => 1, Track::Video => 2 },
            "FileSize": self.bytes,
            "Duration": self.duration_ms,
            "BeginTimestamp": self.begin_unix_ms,
        })
    }

    fn hook(&self) -> Value {
        json!({
            "file_path": self.path.display().to_string(),
            "format": match self.track { Track::Audio => "ogg", Track::Video => "webm" },
            "duration_ms": self.duration_ms,
            "file_size": self.bytes,
            "begin_timestamp": self.begin_unix_ms,
        })
    }
}

/// The state of one recording, as the API describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Writing.
    Recording,
    /// Ended: the stream ended or the task was stopped.
    Ended,
    /// Ended by an error (its code and message are kept).
    Failed,
}

/// One stream's recording: shared by its tap (the shard), its thread and the API.
#[derive(Debug)]
pub(crate) struct StreamRecording {
    pub(crate) task: String,
    pub(crate) app: AppId,
    pub(crate) room: RoomId,
    pub(crate) stream: StreamId,
    /// Asked to stop (`StopRecord`): the thread finishes the files.
    stop: AtomicBool,
    /// The video writer waits for a keyframe: the shard asks the publisher for one.
    wants_keyframe: AtomicBool,
    /// Packets the shard could not queue (the recorder was behind).
    dropped: AtomicU64,
    state: Mutex<RecState>,
}

#[derive(Debug)]
struct RecState {
    status: Status,
    files: Vec<FileInfo>,
    error: Option<(ErrorCode, String)>,
}

impl StreamRecording {
    fn snapshot(&self) -> (Status, Vec<FileInfo>, Option<(ErrorCode, String)>) {
        let s = self.state.lock();
        (s.status, s.files.clone(), s.error.clone())
    }
}

/// What [`Tap::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued.
    Queued,
    /// The queue was full: dropped and counted.
    Dropped,
    /// The recording ended: drop the tap.
    Closed,
}

/// The shard's end of a recording: a bounded queue to its thread.
#[derive(Debug)]
pub struct Tap {
    tx: SyncSender<RecPacket>,
    rec: Arc<StreamRecording>,
    counts: Arc<RecordCounts>,
}

impl Tap {
    /// Queues a copy of a packet without waiting (see [`Sent`]).
    pub fn send(&self, packet: RecPacket) -> Sent {
        if self.rec.stop.load(Ordering::Relaxed) {
            return Sent::Closed;
        }
        match self.tx.try_send(packet) {
            Ok(()) => Sent::Queued,
            Err(TrySendError::Full(_)) => {
                self.rec.dropped.fetch_add(1, Ordering::Relaxed);
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                Sent::Dropped
            }
            Err(TrySendError::Disconnected(_)) => Sent::Closed,
        }
    }

    /// Whether the recording still takes packets (not stopped, not ended).
    pub fn is_live(&self) -> bool {
        !self.rec.stop.load(Ordering::Relaxed)
    }

    /// Whether the recording waits for a video keyframe (and takes the request: asked once).
    pub fn take_keyframe_request(&self) -> bool {
        self.rec.wants_keyframe.load(Ordering::Relaxed)
            && self.rec.wants_keyframe.swap(false, Ordering::Relaxed)
    }
}

/// A recording task: a room (all its streams, or one) from `StartRecord`, or one stream of an
/// `auto_record` app.
#[derive(Debug)]
struct Task {
    app: AppId,
    room: RoomId,
    stream: Option<StreamId>,
    /// Stopped (`StopRecord`), or an automatic task whose stream ended.
    stopped: bool,
    recordings: Vec<Arc<StreamRecording>>,
    created: u64,
}

#[derive(Default)]
struct Inner {
    auto_apps: HashSet<AppId>,
    tasks: HashMap<String, Task>,
    /// The task recording each room.
    room_tasks: HashMap<(AppId, RoomId), String>,
    /// Streams published on this node, with their room (from [`Recorder::observe`]).
    streams: HashMap<(AppId, StreamId), RoomId>,
    /// Ended tasks, oldest first (to forget the oldest past [`MAX_ENDED_TASKS`]).
    ended: std::collections::VecDeque<String>,
}

/// Counts for the cost and health of recording.
#[derive(Debug, Default)]
pub struct RecordCounts {
    /// Recordings running.
    pub active: AtomicU64,
    /// Packets written to files.
    pub packets: AtomicU64,
    /// Packets the shards dropped because a recorder was behind.
    pub dropped: AtomicU64,
    /// Recordings failed (directory, disk).
    pub failed: AtomicU64,
}

/// Every recording of the server: the tasks, the streams to record, the writer threads.
pub struct Recorder {
    dir: PathBuf,
    hooks: Option<WebhookSender>,
    inner: Mutex<Inner>,
    counts: Arc<RecordCounts>,
    /// Writer threads to start ([`writer_count`]).
    writers: usize,
    /// The writer threads, started with the first recording.
    pool: Mutex<Vec<Writer>>,
}

/// A writer thread's handle: where its new recordings go, and how many it has.
struct Writer {
    tx: std::sync::mpsc::Sender<Job>,
    jobs: Arc<AtomicU64>,
}

/// One recording as its writer holds it.
struct Job {
    rec: Arc<StreamRecording>,
    rx: Receiver<RecPacket>,
    files: Files,
    core: Core,
    /// `record_started` was sent.
    started: bool,
    /// When the file list was last given to the API.
    state_at: Option<Instant>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A task ID: 16 hex characters (the hosted platform's are 16 bytes too).
fn task_id() -> String {
    format!("{:016x}", rand::thread_rng().r#gen::<u64>())
}

/// Why `start_task` refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartError {
    /// The room has a task already (its ID), or the app records everything already.
    Exists(Option<String>),
}

impl Recorder {
    /// A recorder writing under `dir`, telling `hooks` (if any) of its recordings, recording
    /// every stream of `auto_apps`.
    /// `writers` writer threads ([`writer_count`]) are started with the first recording.
    pub(crate) fn new(
        dir: PathBuf,
        hooks: Option<WebhookSender>,
        auto_apps: impl IntoIterator<Item = AppId>,
        writers: usize,
    ) -> Recorder {
        Recorder {
            dir,
            hooks,
            inner: Mutex::new(Inner {
                auto_apps: auto_apps.into_iter().collect(),
                ..Inner::default()
            }),
            counts: Arc::new(RecordCounts::default()),
            writers: writers.max(1),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Where the files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counts.
    pub fn counts(&self) -> &RecordCounts {
        &self.counts
    }

    /// Learns which room each stream published on this node is in (the hub calls this with
    /// the registry's room changes, in order).
    pub(crate) fn observe(&self, cmd: &ClusterCommand) {
        let ClusterCommand::Change {
            app, room, change, ..
        } = cmd
        else {
            return;
        };
        let mut inner = self.inner.lock();
        match change {
            RoomChange::StreamAdd(info) => {
                inner.streams.insert((*app, info.stream_id.clone()), room.clone());
            }
            RoomChange::StreamDelete(id) => {
                inner.streams.remove(&(*app, id.clone()));
            }
            _ => {}
        }
    }

    /// Checks that the directory can be written: creates it and a probe file. Blocking.
    pub(crate) fn check_dir(&self, app: AppId) -> Result<(), String> {
        let dir = self.dir.join(app.get().to_string());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let probe = dir.join(format!(".probe-{:08x}", rand::thread_rng().r#gen::<u32>()));
        let result = File::create(&probe).and_then(|mut f| f.write_all(b"huddle"));
        let _ = std::fs::remove_file(&probe);
        result.map_err(|e| format!("{}: {e}", dir.display()))
    }

    /// A new task ID (16 hex digits).
    pub(crate) fn new_task_id() -> String {
        task_id()
    }

    /// Starts task `id` recording `room` (every stream, or `stream` alone) from now on; returns
    /// the streams of the room published on this node now (the media plane is to be told of
    /// them: [`crate::sfu::Command::Record`]). In a cluster every node starts the task with the
    /// same ID (`crate::ops`), and records the streams published on it.
    pub(crate) fn start_task_as(
        &self,
        app: AppId,
        room: &RoomId,
        stream: Option<StreamId>,
        id: String,
    ) -> Result<Vec<StreamId>, StartError> {
        let mut inner = self.inner.lock();
        if inner.auto_apps.contains(&app) {
            return Err(StartError::Exists(None));
        }
        if let Some(id) = inner.room_tasks.get(&(app, room.clone())) {
            return Err(StartError::Exists(Some(id.clone())));
        }
        if inner.tasks.contains_key(&id) {
            return Err(StartError::Exists(Some(id)));
        }
        inner.tasks.insert(
            id.clone(),
            Task {
                app,
                room: room.clone(),
                stream: stream.clone(),
                stopped: false,
                recordings: Vec::new(),
                created: unix_ms(),
            },
        );
        inner.room_tasks.insert((app, room.clone()), id.clone());
        let now: Vec<StreamId> = inner
            .streams
            .iter()
            .filter(|((a, s), r)| *a == app && *r == room && stream.as_ref().is_none_or(|x| x == s))
            .map(|((_, s), _)| s.clone())
            .collect();
        info!(%app, room = %room, task = %id, "recording task started");
        Ok(now)
    }

    /// Stops a task: its recordings finish their files. `false` when the app has no such task.
    pub(crate) fn stop_task(&self, app: AppId, id: &str) -> bool {
        let mut inner = self.inner.lock();
        let Some(task) = inner.tasks.get_mut(id).filter(|t| t.app == app) else {
            return false;
        };
        if !task.stopped {
            task.stopped = true;
            for r in &task.recordings {
                r.stop.store(true, Ordering::Relaxed);
            }
            let key = (task.app, task.room.clone());
            if inner.room_tasks.get(&key).is_some_and(|t| t == id) {
                inner.room_tasks.remove(&key);
            }
            inner.ended.push_back(id.to_string());
            forget_old(&mut inner);
        }
        true
    }

    /// `DescribeRecordStatus`: the task's state and files, or `None`.
    pub(crate) fn describe(&self, app: AppId, id: &str) -> Option<Value> {
        let inner = self.inner.lock();
        let task = inner.tasks.get(id).filter(|t| t.app == app)?;
        let mut files = Vec::new();
        let mut recording = false;
        let mut failed = None;
        let mut dropped = 0;
        for r in &task.recordings {
            let (status, list, error) = r.snapshot();
            recording |= status == Status::Recording;
            if let Some(e) = error {
                failed = Some(e);
            }
            dropped += r.dropped.load(Ordering::Relaxed);
            files.extend(list.iter().map(|f| f.json(&r.stream)));
        }
        // As the hosted platform: 1 waiting for a stream, 2 recording, 3 ended, 4 ended by an
        // error.
        let status = if recording {
            2
        } else if failed.is_some() {
            4
        } else if task.stopped {
            3
        } else {
            1
        };
        let mut v = json!({
            "TaskId": id,
            "RoomId": task.room.as_str(),
            "Status": status,
            "CreateTimestamp": task.created,
            "RecordFiles": files,
            "DroppedPackets": dropped,
        });
        if let Some(s) = &task.stream {
            v["StreamId"] = s.as_str().into();
        }
        if let Some((code, message)) = failed {
            v["ErrorCode"] = code.as_u32().into();
            v["ErrorMessage"] = message.into();
        }
        Some(v)
    }

    /// A tap for a stream whose publisher's media is set up here, when it is to be recorded
    /// (and its recording thread started); `None` otherwise. Called by the shard when the
    /// stream's publisher is installed and when the API asks (rarely: never per packet).
    pub fn tap(self: &Arc<Self>, app: AppId, stream: &StreamId) -> Option<Tap> {
        let mut inner = self.inner.lock();
        let room = inner.streams.get(&(app, stream.clone()))?.clone();
        let task_id = match inner.room_tasks.get(&(app, room.clone())) {
            Some(id) => {
                let task = inner.tasks.get(id)?;
                if task.stream.as_ref().is_some_and(|s| s != stream) {
                    return None;
                }
                id.clone()
            }
            None if inner.auto_apps.contains(&app) => {
                let id = task_id();
                inner.tasks.insert(
                    id.clone(),
                    Task {
                        app,
                        room: room.clone(),
                        stream: Some(stream.clone()),
                        stopped: false,
                        recordings: Vec::new(),
                        created: unix_ms(),
                    },
                );
                id
            }
            None => return None,
        };
        let rec = Arc::new(StreamRecording {
            task: task_id.clone(),
            app,
            room,
            stream: stream.clone(),
            stop: AtomicBool::new(false),
            wants_keyframe: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            state: Mutex::new(RecState {
                status: Status::Recording,
                files: Vec::new(),
                error: None,
            }),
        });
        let (tx, rx) = sync_channel(QUEUE_PACKETS);
        if let Err(e) = self.start_job(&rec, rx) {
            warn!(%app, stream = %stream, "no writer thread for the recording: {e}");
            return None;
        }
        if let Some(task) = inner.tasks.get_mut(&task_id) {
            task.recordings.push(rec.clone());
        }
        self.counts.active.fetch_add(1, Ordering::Relaxed);
        Some(Tap {
            tx,
            rec,
            counts: self.counts.clone(),
        })
    }

    fn hook(&self, rec: &StreamRecording, event: &str, extra: Value) {
        let Some(hooks) = &self.hooks else { return };
        let mut body = json!({
            "event": event,
            "room_id": rec.room.as_str(),
            "stream_id": rec.stream.as_str(),
            "task_id": rec.task,
            "timestamp_ms": unix_ms().to_string(),
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        if let Value::Object(m) = body {
            hooks.send(rec.app, m);
        }
    }

    /// Gives a new recording to the writer with the fewest (starting the writers first, with
    /// the first recording).
    fn start_job(self: &Arc<Self>, rec: &Arc<StreamRecording>, rx: Receiver<RecPacket>) -> io::Result<()> {
        let mut pool = self.pool.lock();
        if pool.is_empty() {
            for i in 0..self.writers {
                let (tx, jobs_rx) = std::sync::mpsc::channel();
                let jobs = Arc::new(AtomicU64::new(0));
                let me = Arc::downgrade(self);
                let count = jobs.clone();
                std::thread::Builder::new()
                    .name(format!("huddle-rec-{i}"))
                    .spawn(move || writer(&me, &jobs_rx, &count))?;
                pool.push(Writer { tx, jobs });
            }
            info!(writers = self.writers, "recording writers started");
        }
        let begin = unix_ms();
        let base = self
            .dir
            .join(rec.app.get().to_string())
            .join(rec.room.as_str())
            .join(format!("{}-{begin}", rec.stream.as_str()));
        let job = Job {
            rec: rec.clone(),
            rx,
            files: Files::new(base, begin),
            core: Core::default(),
            started: false,
            state_at: None,
        };
        let w = pool
            .iter()
            .min_by_key(|w| w.jobs.load(Ordering::Relaxed))
            .ok_or_else(|| io::Error::other("no writer"))?;
        w.jobs.fetch_add(1, Ordering::Relaxed);
        w.tx.send(job)
            .map_err(|_| io::Error::other("the writer thread is gone"))
    }

    /// Takes what a recording's queue holds and writes it; `true` when the recording is over
    /// (its stream ended: the tap is gone, it was stopped, or a write failed), its files
    /// finished and its end reported.
    fn step(&self, job: &mut Job) -> bool {
        let rec = &job.rec;
        let mut taken = 0u64;
        let mut ended = false;
        let mut failure = None;
        loop {
            match job.rx.try_recv() {
                Ok(packet) => {
                    taken += 1;
                    if let Err(e) = job.core.push(packet, &mut job.files) {
                        failure = Some(e);
                        break;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        }
        if taken > 0 {
            self.counts.packets.fetch_add(taken, Ordering::Relaxed);
            if !job.started && !job.files.infos().is_empty() {
                job.started = true;
                let list: Vec<Value> = job.files.infos().iter().map(FileInfo::hook).collect();
                self.hook(rec, "record_started", json!({"files": list}));
            }
            if job.core.needs_keyframe() {
                rec.wants_keyframe.store(true, Ordering::Relaxed);
            }
            let now = Instant::now();
            if job.state_at.is_none_or(|t| now.duration_since(t) >= STATE_EVERY) {
                job.state_at = Some(now);
                rec.state.lock().files = job.files.infos();
            }
        }
        if failure.is_none() && !ended && !rec.stop.load(Ordering::Relaxed) {
            return false;
        }
        self.end(job, failure);
        true
    }

    /// Finishes a recording's files and reports its end.
    fn end(&self, job: &mut Job, failure: Option<Failure>) {
        let rec = &job.rec;
        // Stop the shard's queueing at once (it drops its tap when it sees the flag).
        rec.stop.store(true, Ordering::Relaxed);
        let failure = match job.core.finish(&mut job.files) {
            Err(e) if failure.is_none() => Some(e),
            _ => failure,
        };
        let infos = job.files.infos();
        let dropped = rec.dropped.load(Ordering::Relaxed);
        self.counts.active.fetch_sub(1, Ordering::Relaxed);
        let list: Vec<Value> = infos.iter().map(FileInfo::hook).collect();
        {
            let mut s = rec.state.lock();
            s.files = infos;
            match &failure {
                Some((code, message)) => {
                    s.status = Status::Failed;
                    s.error = Some((*code, message.clone()));
                }
                None => s.status = Status::Ended,
            }
        }
        match failure {
            Some((code, message)) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                warn!(app = %rec.app, stream = %rec.stream, code = code.as_u32(), %message, "recording failed");
                self.hook(
                    rec,
                    "record_failed",
                    json!({"code": code.as_u32(), "message": message, "files": list, "dropped_packets": dropped}),
                );
            }
            None => {
                info!(app = %rec.app, stream = %rec.stream, files = list.len(), dropped, "recording ended");
                let mut extra = json!({"files": list, "dropped_packets": dropped});
                if dropped > 0 {
                    extra["code"] = ErrorCode::RECORD_PACKETS_DROPPED.as_u32().into();
                }
                self.hook(rec, "record_stopped", extra);
            }
        }
        // An automatic task ends with its stream.
        let mut inner = self.inner.lock();
        let auto = inner.room_tasks.get(&(rec.app, rec.room.clone())) != Some(&rec.task);
        if auto
            && let Some(task) = inner.tasks.get_mut(&rec.task)
            && !task.stopped
        {
            task.stopped = true;
            inner.ended.push_back(rec.task.clone());
            forget_old(&mut inner);
        }
    }
}

/// A writer thread: takes each of its recordings' queues in turn every [`POLL`] (never
/// sleeping in a queue's `recv`, so a shard's `try_send` never pays for a wake-up), and sleeps
/// on its channel while it has none. It ends when the recorder is gone and its recordings are
/// over.
fn writer(recorder: &std::sync::Weak<Recorder>, new: &std::sync::mpsc::Receiver<Job>, count: &AtomicU64) {
    let mut jobs: Vec<Job> = Vec::new();
    let mut open = true;
    loop {
        if jobs.is_empty() {
            match new.recv() {
                Ok(job) => jobs.push(job),
                Err(_) => return,
            }
        }
        let pass = Instant::now();
        while open {
            match new.try_recv() {
                Ok(job) => jobs.push(job),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        let Some(recorder) = recorder.upgrade() else {
            // The server is gone: finish the files, nobody to tell.
            for mut job in jobs.drain(..) {
                job.rec.stop.store(true, Ordering::Relaxed);
                let _ = job.core.finish(&mut job.files);
            }
            return;
        };
        jobs.retain_mut(|job| {
            let over = recorder.step(job);
            if over {
                count.fetch_sub(1, Ordering::Relaxed);
            }
            !over
        });
        drop(recorder);
        if jobs.is_empty() && !open {
            return;
        }
        if !jobs.is_empty() {
            std::thread::sleep(POLL.saturating_sub(pass.elapsed()));
        }
    }
}

fn forget_old(inner: &mut Inner) {
    while inner.ended.len() > MAX_ENDED_TASKS {
        if let Some(id) = inner.ended.pop_front() {
            inner.tasks.remove(&id);
        }
    }
}

/// A file being written, counting its bytes and keeping its first IO error (libwebm's writer
/// callback reports only success or failure).
struct Out {
    file: BufWriter<File>,
    bytes: Arc<AtomicU64>,
    error: Arc<Mutex<Option<io::Error>>>,
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.write(buf) {
            Ok(n) => {
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => Err(self.keep(e)),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().map_err(|e| self.keep(e))
    }
}

impl Seek for Out {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos).map_err(|e| self.keep(e))
    }
}

impl Out {
    fn keep(&self, e: io::Error) -> io::Error {
        let copy = io::Error::new(e.kind(), e.to_string());
        self.error.lock().get_or_insert(e);
        copy
    }
}

/// The files of one recording, opened when their first packet comes.
struct Files {
    base: PathBuf,
    begin: u64,
    audio: Option<(OggOpusWriter<Out>, FileMeta)>,
    video: Option<(WebmVp8Writer<Out>, FileMeta)>,
    /// The files as finished.
    closed: Option<Vec<FileInfo>>,
}

struct FileMeta {
    path: PathBuf,
    bytes: Arc<AtomicU64>,
    error: Arc<Mutex<Option<io::Error>>>,
}

/// A failure: its code and message.
type Failure = (ErrorCode, String);

fn write_failed(path: &Path, e: &io::Error) -> Failure {
    (
        ErrorCode::RECORD_WRITE_FAILED,
        format!("writing {} failed: {e}", path.display()),
    )
}

impl Files {
    fn new(base: PathBuf, begin: u64) -> Files {
        Files {
            base,
            begin,
            audio: None,
            video: None,
            closed: None,
        }
    }

    fn open(&self, ext: &str) -> Result<(Out, FileMeta), Failure> {
        let path = self.base.with_extension(ext);
        let unwritable = |e: io::Error| {
            (
                ErrorCode::RECORD_DIR_UNWRITABLE,
                format!("{} cannot be created: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(unwritable)?;
        }
        let file = File::create(&path).map_err(unwritable)?;
        let bytes = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let out = Out {
            // Ogg is flushed at each page's end (`ogg.rs`), so its buffer holds at most a
            // page; libwebm writes each frame in small pieces, gathered here.
            file: BufWriter::with_capacity(if ext == "ogg" { 16 * 1024 } else { 32 * 1024 }, file),
            bytes: bytes.clone(),
            error: error.clone(),
        };
        Ok((out, FileMeta { path, bytes, error }))
    }

    fn audio(&mut self) -> Result<&mut OggOpusWriter<Out>, Failure> {
        if self.audio.is_none() {
            let (out, meta) = self.open("ogg")?;
            let serial = rand::thread_rng().r#gen::<u32>();
            self.audio = Some((OggOpusWriter::new(out, serial), meta));
        }
        Ok(&mut self.audio.as_mut().expect("opened above").0)
    }

    fn video(&mut self) -> Result<&mut WebmVp8Writer<Out>, Failure> {
        if self.video.is_none() {
            let (out, meta) = self.open("webm")?;
            self.video = Some((WebmVp8Writer::new(out), meta));
        }
        Ok(&mut self.video.as_mut().expect("opened above").0)
    }

    fn video_error(&self) -> Failure {
        let Some((_, meta)) = &self.video else {
            return (
                ErrorCode::RECORD_WRITE_FAILED,
                "the video file is not open".into(),
            );
        };
        match meta.error.lock().as_ref() {
            Some(e) => write_failed(&meta.path, e),
            None => (
                ErrorCode::RECORD_WRITE_FAILED,
                format!("the WebM muxer refused a frame for {}", meta.path.display()),
            ),
        }
    }

    fn infos(&self) -> Vec<FileInfo> {
        if let Some(closed) = &self.closed {
            return closed.clone();
        }
        let mut v = Vec::new();
        if let Some((w, m)) = &self.audio {
            v.push(FileInfo {
                path: m.path.clone(),
                track: Track::Audio,
                bytes: m.bytes.load(Ordering::Relaxed),
                duration_ms: w.span() * 1000 / ogg::RATE,
                begin_unix_ms: self.begin,
            });
        }
        if let Some((w, m)) = self.video.as_ref().filter(|(w, _)| w.frames > 0) {
            v.push(FileInfo {
                path: m.path.clone(),
                track: Track::Video,
                bytes: m.bytes.load(Ordering::Relaxed),
                duration_ms: w.span_ns() / 1_000_000,
                begin_unix_ms: self.begin,
            });
        }
        v
    }
}

/// Puts a track's packets back in sequence order, within [`REORDER_PACKETS`]. A new source (the
/// publisher reconnected: new sequence numbers) first lets out what the old one left.
#[derive(Debug, Default)]
pub(crate) struct Reorder {
    held: BTreeMap<u64, RecPacket>,
    /// The old source's packets, in order, to go out before the new source's.
    draining: std::collections::VecDeque<RecPacket>,
    source: Option<u64>,
    /// The next sequence number to hand out.
    next: Option<u64>,
    /// Packets that came after their place was passed (or twice).
    pub(crate) late: u64,
}

impl Reorder {
    pub(crate) fn push(&mut self, p: RecPacket) {
        if self.source != Some(p.source) {
            if self.source.is_some() {
                let old = std::mem::take(&mut self.held);
                self.draining.extend(old.into_values());
            }
            self.source = Some(p.source);
            self.next = None;
        }
        if self.next.is_some_and(|n| p.seq < n) {
            self.late += 1;
            return;
        }
        self.held.insert(p.seq, p);
    }

    /// The next packet in order, and whether packets are missing before it. With `all`, the held
    /// packets go out even with holes (the end of the recording).
    pub(crate) fn pop(&mut self, all: bool) -> Option<(RecPacket, bool)> {
        if let Some(p) = self.draining.pop_front() {
            return Some((p, false));
        }
        let (&first, _) = self.held.first_key_value()?;
        let in_order = self.next.is_none_or(|n| first == n);
        if !in_order && !all && self.held.len() <= REORDER_PACKETS {
            return None;
        }
        let hole = !in_order;
        let (_, p) = self.held.pop_first()?;
        self.next = Some(p.seq + 1);
        Some((p, hole))
    }
}

/// A track's clock: RTP timestamps to positions on the recording's timeline, in the track's
/// rate units.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    source: Option<u64>,
    /// The extended timestamp and position of the anchor packet.
    anchor: (i64, u64),
    last: (u32, i64),
}

impl Clock {
    /// The position of a packet of `source` with timestamp `ts`, anchored (for a new source) at
    /// `arrival` (units since time zero), never before `floor` (the end of what was written).
    pub(crate) fn position(&mut self, source: u64, ts: u32, arrival: u64, floor: u64) -> Option<u64> {
        if self.source != Some(source) {
            self.source = Some(source);
            let ext = i64::from(ts);
            self.anchor = (ext, arrival.max(floor));
            self.last = (ts, ext);
        }
        let ext = self.last.1 + i64::from(ts.wrapping_sub(self.last.0) as i32);
        if ext > self.last.1 {
            self.last = (ts, ext);
        }
        let pos = self.anchor.1 as i64 + (ext - self.anchor.0);
        u64::try_from(pos).ok()
    }
}

/// The sans-IO part of a recording: packets in, positioned Opus packets and VP8 pictures out to
/// the files.
#[derive(Default)]
pub(crate) struct Core {
    zero: Option<Instant>,
    audio: Reorder,
    video: Reorder,
    audio_clock: Clock,
    video_clock: Clock,
    depack: Depacketizer,
    /// Packets dropped for their place (late) or form (malformed RED or Opus).
    pub(crate) skipped: u64,
    video_waits: bool,
}

/// Where a recording's tracks go: the Ogg and WebM writers (files in the server; memory in the
/// tests).
pub(crate) trait Sinks {
    type A: Write;
    type V: Write + Seek;
    fn audio(&mut self) -> Result<&mut OggOpusWriter<Self::A>, Failure>;
    fn video(&mut self) -> Result<&mut WebmVp8Writer<Self::V>, Failure>;
    fn audio_failed(&self, e: &io::Error) -> Failure;
    fn video_failed(&self) -> Failure;
}

impl Sinks for Files {
    type A = Out;
    type V = Out;
    fn audio(&mut self) -> Result<&mut OggOpusWriter<Out>, Failure> {
        Files::audio(self)
    }
    fn video(&mut self) -> Result<&mut WebmVp8Writer<Out>, Failure> {
        Files::video(self)
    }
    fn audio_failed(&self, e: &io::Error) -> Failure {
        let path = self
            .audio
            .as_ref()
            .map_or_else(|| self.base.clone(), |(_, m)| m.path.clone());
        write_failed(&path, e)
    }
    fn video_failed(&self) -> Failure {
        self.video_error()
    }
}

fn units_since(zero: Instant, at: Instant, rate: u64) -> u64 {
    let d = at.saturating_duration_since(zero);
    (d.as_nanos() * u128::from(rate) / 1_000_000_000) as u64
}

impl Core {
    /// Whether the video waits for a keyframe (the publisher is to be asked for one).
    pub(crate) fn needs_keyframe(&self) -> bool {
        self.video_waits
    }

    pub(crate) fn push<S: Sinks>(&mut self, p: RecPacket, sinks: &mut S) -> Result<(), Failure> {
        let zero = *self.zero.get_or_insert(p.at);
        match p.track {
            Track::Audio => {
                self.audio.push(p);
                while let Some((p, _)) = self.audio.pop(false) {
                    self.audio_out(zero, &p, sinks)?;
                }
            }
            Track::Video => {
                self.video.push(p);
                while let Some((p, hole)) = self.video.pop(false) {
                    self.video_out(zero, &p, hole, sinks)?;
                }
            }
        }
        Ok(())
    }

    /// Writes what the reorder buffers hold and finishes the files.
    pub(crate) fn finish<S: Sinks + Finish>(&mut self, sinks: &mut S) -> Result<(), Failure> {
        if let Some(zero) = self.zero {
            while let Some((p, _)) = self.audio.pop(true) {
                self.audio_out(zero, &p, sinks)?;
            }
            while let Some((p, hole)) = self.video.pop(true) {
                self.video_out(zero, &p, hole, sinks)?;
            }
        }
        sinks.finish()
    }

    fn audio_out<S: Sinks>(&mut self, zero: Instant, p: &RecPacket, sinks: &mut S) -> Result<(), Failure> {
        let opus: &[u8] = match p.red_primary {
            Some(pt) => match crate::sfu::red::split(&p.payload, pt) {
                // The primary block alone: the redundant ones repeat earlier frames.
                Some(split) => split.primary,
                None => {
                    self.skipped += 1;
                    return Ok(());
                }
            },
            None => &p.payload,
        };
        let arrival = units_since(zero, p.at, ogg::RATE);
        let writer = sinks.audio()?;
        let floor = writer.span_end();
        let Some(pos) = self.audio_clock.position(p.source, p.ts, arrival, floor) else {
            self.skipped += 1;
            return Ok(());
        };
        match writer.push(pos, opus) {
            Ok(Pushed::Written) => Ok(()),
            Ok(_) => {
                self.skipped += 1;
                Ok(())
            }
            Err(e) => Err(sinks.audio_failed(&e)),
        }
    }

    fn video_out<S: Sinks>(
        &mut self,
        zero: Instant,
        p: &RecPacket,
        hole: bool,
        sinks: &mut S,
    ) -> Result<(), Failure> {
        let writer = sinks.video()?;
        if hole {
            writer.lost();
        }
        let arrival = units_since(zero, p.at, 90_000);
        let Some(pos) = self.video_clock.position(p.source, p.ts, arrival, 0) else {
            self.skipped += 1;
            return Ok(());
        };
        if let Some(picture) = self.depack.push(p.seq, pos, p.marker, &p.payload) {
            let ns = picture.rtp_ts * 1_000_000_000 / 90_000;
            match writer.push(ns, &picture) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => self.skipped += 1,
                Err(_) => return Err(sinks.video_failed()),
            }
        } else if self.depack.broken > 0 {
            writer.lost();
            self.depack.broken = 0;
        }
        self.video_waits = writer.needs_keyframe();
        Ok(())
    }
}

/// Finishing a recording's files.
pub(crate) trait Finish {
    fn finish(&mut self) -> Result<(), Failure>;
}

impl Finish for Files {
    fn finish(&mut self) -> Result<(), Failure> {
        let mut infos = self.infos();
        let mut result = Ok(());
        if let Some((w, meta)) = self.audio.take()
            && let Err(e) = w.finish()
        {
            result = Err(write_failed(&meta.path, &e));
        }
        if let Some((w, meta)) = self.video.take() {
            match w.finish() {
                Ok(Some(mut out)) => {
                    if let Err(e) = out.flush() {
                        result = result.and(Err(write_failed(&meta.path, &e)));
                    }
                }
                Ok(None) => {
                    // No keyframe ever came: nothing to keep.
                    let _ = std::fs::remove_file(&meta.path);
                    infos.retain(|f| f.path != meta.path);
                }
                Err(_) => {
                    let failure = match meta.error.lock().as_ref() {
                        Some(e) => write_failed(&meta.path, e),
                        None => (
                            ErrorCode::RECORD_WRITE_FAILED,
                            format!("finishing {} failed", meta.path.display()),
                        ),
                    };
                    result = result.and(Err(failure));
                }
            }
        }
        // The sizes once everything is on disk.
        for f in &mut infos {
            if let Ok(m) = std::fs::metadata(&f.path) {
                f.bytes = m.len();
            }
        }
        self.closed = Some(infos);
        result
    }
}

/// What the recording benchmark (`benches/record.rs`) drives: the shard's side (a tap and the
/// end of its queue) and the recording thread's side (packets to files), without a server.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit {
    use super::*;

    /// A tap whose queue holds `capacity` packets, and the queue's other end.
    pub fn tap(capacity: usize) -> (Tap, Receiver<RecPacket>) {
        let (tx, rx) = sync_channel(capacity);
        let rec = Arc::new(StreamRecording {
            task: "bench".into(),
            app: AppId::new(1).expect("non-zero"),
            room: RoomId::new("bench").expect("valid"),
            stream: StreamId::new("bench").expect("valid"),
            stop: AtomicBool::new(false),
            wants_keyframe: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            state: Mutex::new(RecState {
                status: Status::Recording,
                files: Vec::new(),
                error: None,
            }),
        });
        (
            Tap {
                tx,
                rec,
                counts: Arc::default(),
            },
            rx,
        )
    }

    /// A recorder writing under `dir` with the writer threads `record_writers = writers` gives
    /// ([`writer_count`]), recording every stream of app 1 (`auto_record`).
    pub fn recorder(dir: PathBuf, writers: usize) -> Arc<Recorder> {
        Arc::new(Recorder::new(
            dir,
            None,
            [AppId::new(1).expect("non-zero")],
            writer_count(writers),
        ))
    }

    /// Starts recording the stream `s{n}` of app 1 in the room `bench`, as a shard would when
    /// its publisher's media is set up: its tap.
    pub fn start(recorder: &Arc<Recorder>, n: usize) -> Option<Tap> {
        let app = AppId::new(1).expect("non-zero");
        let stream = StreamId::new(format!("s{n}")).ok()?;
        recorder
            .inner
            .lock()
            .streams
            .insert((app, stream.clone()), RoomId::new("bench").expect("valid"));
        recorder.tap(app, &stream)
    }

    /// Writes `packets` as a recording thread does, to `{base}.ogg` and `{base}.webm`; returns
    /// the files and their sizes.
    pub fn write_files(
        base: &Path,
        packets: impl IntoIterator<Item = RecPacket>,
    ) -> Result<Vec<(PathBuf, u64)>, String> {
        let mut files = Files::new(base.to_path_buf(), 0);
        let mut core = Core::default();
        for p in packets {
            core.push(p, &mut files).map_err(|(_, m)| m)?;
        }
        core.finish(&mut files).map_err(|(_, m)| m)?;
        Ok(files.infos().into_iter().map(|f| (f.path, f.bytes)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// The writers in memory.
    #[derive(Default)]
    struct Mem {
        audio: Option<OggOpusWriter<Vec<u8>>>,
        video: Option<WebmVp8Writer<Cursor<Vec<u8>>>>,
    }

    impl Sinks for Mem {
        type A = Vec<u8>;
        type V = Cursor<Vec<u8>>;
        fn audio(&mut self) -> Result<&mut OggOpusWriter<Vec<u8>>, Failure> {
            Ok(self
                .audio
                .get_or_insert_with(|| OggOpusWriter::new(Vec::new(), 5)))
        }
        fn video(&mut self) -> Result<&mut WebmVp8Writer<Cursor<Vec<u8>>>, Failure> {
            Ok(self
                .video
                .get_or_insert_with(|| WebmVp8Writer::new(Cursor::new(Vec::new()))))
        }
        fn audio_failed(&self, e: &io::Error) -> Failure {
            (ErrorCode::RECORD_WRITE_FAILED, e.to_string())
        }
        fn video_failed(&self) -> Failure {
            (ErrorCode::RECORD_WRITE_FAILED, "video".into())
        }
    }

    /// The writers stay for the test to finish and read.
    impl Finish for Mem {
        fn finish(&mut self) -> Result<(), Failure> {
            Ok(())
        }
    }

    const OPUS: u8 = 111;

    /// A RED payload (RFC 2198) with one redundant block (the previous frame) and the primary:
    /// a 20 ms CELT frame whose second byte is `n`.
    fn red(n: u8) -> Arc<[u8]> {
        let redundant = [0xfc, n.wrapping_sub(1), 0xee];
        let offset: u32 = 960;
        let header = (offset << 10) | redundant.len() as u32;
        let mut p = vec![0x80 | OPUS];
        p.extend_from_slice(&header.to_be_bytes()[1..]);
        p.push(OPUS);
        p.extend_from_slice(&redundant);
        p.extend_from_slice(&[0xfc, n]);
        p.into()
    }

    fn audio(
        zero: Instant,
        source: u64,
        seq: u64,
        ts: u32,
        at_ms: u64,
        payload: Arc<[u8]>,
        red: bool,
    ) -> RecPacket {
        RecPacket {
            track: Track::Audio,
            source,
            seq,
            ts,
            marker: false,
            red_primary: red.then_some(OPUS),
            payload,
            at: zero + Duration::from_millis(at_ms),
        }
    }

    /// The Ogg's audio packets and its pages' granule positions.
    fn read_ogg(bytes: Vec<u8>) -> (Vec<Vec<u8>>, Vec<u64>) {
        let mut reader = ::ogg::PacketReader::new(Cursor::new(bytes));
        let mut packets = Vec::new();
        let mut granules = Vec::new();
        while let Some(p) = reader.read_packet().unwrap() {
            if p.data.starts_with(b"Opus") {
                continue;
            }
            if p.last_in_page() {
                granules.push(p.absgp_page());
            }
            packets.push(p.data);
        }
        (packets, granules)
    }

    #[test]
    fn red_is_stripped_reordering_undone_and_a_loss_kept_as_a_gap() {
        let zero = Instant::now();
        let mut core = Core::default();
        let mut mem = Mem::default();
        // 20 packets, RTP timestamps from a random-looking base that wraps; packet 10 is lost,
        // 4 and 5 come swapped.
        let base: u32 = u32::MAX - 5 * 960;
        let mut order: Vec<u64> = (0..20).filter(|s| *s != 10).collect();
        order.swap(4, 5);
        for s in order {
            let ts = base.wrapping_add((s * 960) as u32);
            let p = audio(zero, 1, 1000 + s, ts, s * 20 + 3, red(s as u8), true);
            core.push(p, &mut mem).unwrap();
        }
        core.finish(&mut mem).unwrap();
        let (packets, granules) = read_ogg(mem.audio.take().unwrap().finish().unwrap());
        // The primaries alone, in order, none made up for the lost one.
        let expect: Vec<Vec<u8>> = (0..20u8).filter(|s| *s != 10).map(|s| vec![0xfc, s]).collect();
        assert_eq!(packets, expect);
        // The page before the loss ends with packet 9; the last page's granule counts packet 10's
        // 960 samples as time that passed.
        assert_eq!(granules, [10 * 960, 20 * 960]);
        assert_eq!(core.skipped, 0);
    }

    #[test]
    fn a_new_source_is_anchored_by_arrival_and_a_late_packet_dropped() {
        let zero = Instant::now();
        let mut core = Core::default();
        let mut mem = Mem::default();
        let frame = |n: u8| -> Arc<[u8]> { vec![0xfc, n].into() };
        for s in 0..5u64 {
            core.push(
                audio(
                    zero,
                    1,
                    s,
                    7_000 + (s * 960) as u32,
                    s * 20,
                    frame(s as u8),
                    false,
                ),
                &mut mem,
            )
            .unwrap();
        }
        // The publisher reconnects: a new source, new sequence and timestamp bases, 2 s later.
        for s in 0..5u64 {
            let p = audio(
                zero,
                2,
                50_000 + s,
                123_456 + (s * 960) as u32,
                2_000 + s * 20,
                frame(100 + s as u8),
                false,
            );
            core.push(p, &mut mem).unwrap();
        }
        // A packet of the new source from before its first one (its place is passed): dropped.
        core.push(
            audio(zero, 2, 49_000, 123_456 - 960, 2_100, frame(99), false),
            &mut mem,
        )
        .unwrap();
        core.finish(&mut mem).unwrap();
        let (packets, granules) = read_ogg(mem.audio.take().unwrap().finish().unwrap());
        assert_eq!(packets.len(), 10);
        // 5 frames, then a gap up to 2 s (96 000 samples), then 5 frames.
        assert_eq!(granules, [5 * 960, 96_000 + 5 * 960]);
    }

    #[test]
    fn the_clock_unwraps_timestamps() {
        let mut c = Clock::default();
        assert_eq!(c.position(1, u32::MAX - 959, 480, 0), Some(480));
        assert_eq!(c.position(1, 0, 999, 0), Some(480 + 960));
        assert_eq!(c.position(1, 960, 999, 0), Some(480 + 1920));
        // Reordered: behind the newest, still placed by its own timestamp.
        assert_eq!(c.position(1, u32::MAX - 959, 999, 0), Some(480));
        // A new source never lands before what was written (`floor`).
        assert_eq!(c.position(2, 5, 100, 5_000), Some(5_000));
    }

    #[test]
    fn video_waits_for_a_keyframe_and_asks_for_one() {
        let zero = Instant::now();
        let mut core = Core::default();
        let mut mem = Mem::default();
        let pkt = |seq: u64, ts: u32, payload: Vec<u8>| RecPacket {
            track: Track::Video,
            source: 9,
            seq,
            ts,
            marker: true,
            red_primary: None,
            payload: payload.into(),
            at: zero,
        };
        // An interframe first: nothing written, a keyframe wanted.
        core.push(pkt(1, 0, vec![0x10, 0x31, 0, 0, 1, 2, 3]), &mut mem)
            .unwrap();
        assert!(core.needs_keyframe());
        let mut key = vec![0x10, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
        key.resize(200, 7);
        core.push(pkt(2, 3000, key), &mut mem).unwrap();
        assert!(!core.needs_keyframe());
        core.push(pkt(3, 6000, vec![0x10, 0x31, 0, 0, 4]), &mut mem)
            .unwrap();
        let v = mem.video.as_ref().unwrap();
        assert_eq!((v.frames, v.keyframes, v.size), (2, 1, Some((320, 240))));
    }

    #[test]
    fn a_few_writers_take_many_recordings_and_a_failing_one_ends_alone() {
        let dir = std::env::temp_dir().join(format!("huddle-rec-pool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The room `blocked` cannot have a directory: a file holds its name.
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::write(dir.join("1").join("blocked"), b"not a directory").unwrap();
        let recorder = testkit::recorder(dir.clone(), 2);
        let app = AppId::new(1).unwrap();
        let start = |n: usize, room: &str| {
            let stream = StreamId::new(format!("s{n}")).unwrap();
            recorder
                .inner
                .lock()
                .streams
                .insert((app, stream.clone()), RoomId::new(room).unwrap());
            recorder.tap(app, &stream).expect("recorded")
        };
        let mut taps: Vec<Tap> = (0..20).map(|n| start(n, "room")).collect();
        taps.push(start(20, "blocked"));
        {
            let pool = recorder.pool.lock();
            assert_eq!(pool.len(), 2, "two writers for 21 recordings");
            let mut jobs: Vec<u64> = pool.iter().map(|w| w.jobs.load(Ordering::Relaxed)).collect();
            jobs.sort_unstable();
            assert_eq!(
                jobs,
                vec![10, 11],
                "each new recording to the writer with the fewest"
            );
        }
        let zero = Instant::now();
        let opus: Arc<[u8]> = vec![0xfc_u8, 1, 2, 3].into();
        for seq in 0..100u64 {
            for t in &taps {
                let p = audio(zero, 1, seq, (seq * 960) as u32, seq * 20, opus.clone(), false);
                // The queue holds them all (100 < QUEUE_PACKETS) unless the recording ended.
                assert_ne!(t.send(p), Sent::Dropped);
            }
        }
        let recs: Vec<Arc<StreamRecording>> = taps.iter().map(|t| t.rec.clone()).collect();
        drop(taps);
        let end = Instant::now() + Duration::from_secs(20);
        while recorder.counts().active.load(Ordering::Relaxed) > 0 {
            assert!(Instant::now() < end, "the recordings never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in &recs[..20] {
            let (status, files, error) = r.snapshot();
            assert_eq!(status, Status::Ended, "{}: {error:?}", r.stream);
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].duration_ms, 2000, "100 packets of 20 ms");
            let bytes = std::fs::read(&files[0].path).unwrap();
            assert_eq!(&bytes[..4], b"OggS");
            assert_eq!(files[0].bytes, bytes.len() as u64);
        }
        let (status, files, error) = recs[20].snapshot();
        assert_eq!(status, Status::Failed);
        assert!(files.is_empty());
        assert_eq!(error.map(|e| e.0), Some(ErrorCode::RECORD_DIR_UNWRITABLE));
        assert_eq!(recorder.counts().failed.load(Ordering::Relaxed), 1);
        assert_eq!(
            recorder.counts().packets.load(Ordering::Relaxed),
            2000 + 1,
            "the failing one took one"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
