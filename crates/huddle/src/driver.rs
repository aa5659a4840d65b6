//! The engine task: drives the room sessions with requests, connection events and time.
//!
//! One task per engine, on the engine's control thread. It is the only place that feeds the
//! [`Session`]s and performs their outputs, so events leave in one order: the order things
//! happened. Connections are tasks of their own ([`crate::conn`]); so is the media plane: a
//! publisher task or a player task per stream (one peer connection each, `media::publish` and
//! `media::play`) and the engine's mixer task, started, fed and watched from here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use huddle_proto::{ClientMsg, MediaRole, StreamId};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::conn::{self, ConnEvent, ConnId, SEND_QUEUE};
use crate::dispatch::EventSink;
use crate::engine::{SharedApi, lock};
use crate::event::Event;
use crate::media::mixer::{self, Mixer};
use crate::media::pc::{self as pc, Pc, PcCommand};
use crate::media::publish::{AudioInput, VideoInput};
use crate::media::{MediaEvent, MediaShared, MediaUpdate, Reporter, play, publish};
use crate::session::{Command, Input, Output, Session, SessionParams, Timing};

/// Media task reports queued for the engine task.
const MEDIA_EVENT_QUEUE: usize = 1024;

/// Connection events queued for the engine task.
const CONN_EVENT_QUEUE: usize = 1024;

/// How long `destroy` waits beyond the logout timeout for the sessions to end.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// A request from the API.
#[derive(Debug)]
pub(crate) enum Request {
    /// Start the session of login number `login`.
    Login { login: u64, params: Box<SessionParams> },
    /// A call for the session of login number `login`.
    Room { login: u64, cmd: Command },
}

/// One room session and its connection.
struct Room {
    login: u64,
    session: Session,
    /// The server (an index into [`Io::urls`]) of the last connection.
    server: usize,
    conn: Option<(ConnId, mpsc::Sender<Vec<String>>)>,
    /// The messages of the current [`drive`] pass, not yet on the connection: they go to it
    /// together, as one write ([`conn::run`]), so that a request and the offer that follows it
    /// share one TCP segment where they fit, and one loss instead of two delays them.
    outbox: Vec<String>,
    wake: Option<Instant>,
    finished: bool,
}

/// What performing outputs needs besides the room.
struct Io {
    /// The servers' signaling URLs, in the order the engine was given them.
    urls: Vec<String>,
    /// The TLS client configuration, for `wss://` URLs.
    tls: Option<Arc<rustls::ClientConfig>>,
    timing: Timing,
    api: SharedApi,
    events: EventSink,
    conn_events: mpsc::Sender<ConnEvent>,
    next_conn: ConnId,
    tasks: JoinSet<()>,
    media: Arc<MediaShared>,
    mixer: Arc<Mixer>,
    media_events: mpsc::Sender<MediaEvent>,
    /// The media connections: (login, kind, stream) → generation and the task's command queue
    /// (dropping it ends the task).
    pcs: HashMap<(u64, MediaRole, StreamId), (u64, mpsc::Sender<PcCommand>)>,
    next_generation: u64,
    /// The local address media sockets bind to (the one that routes to the server), per server.
    local_ips: HashMap<usize, IpAddr>,
}

pub(crate) struct Driver {
    io: Io,
    rooms: Vec<Room>,
    requests: mpsc::Receiver<Request>,
    shutdown: oneshot::Receiver<()>,
    conn_rx: mpsc::Receiver<ConnEvent>,
    media_rx: mpsc::Receiver<MediaEvent>,
    /// The mixer's sound-level events, delivered through `io.events` like every other event
    /// (so the app's slowness costs them as it costs the others, with the same drop report).
    level_tx: Option<mpsc::Sender<Event>>,
    level_rx: mpsc::Receiver<Event>,
}

/// Sound-level events on their way from the mixer to the engine task, at most (the task takes
/// them within a tick; a report that finds this full is dropped, the next follows).
const LEVEL_EVENT_QUEUE: usize = 16;

impl Driver {
    pub(crate) fn new(
        server: conn::Endpoint,
        timing: Timing,
        api: SharedApi,
        requests: mpsc::Receiver<Request>,
        shutdown: oneshot::Receiver<()>,
        events: EventSink,
        media: Arc<MediaShared>,
    ) -> Driver {
        let (conn_events, conn_rx) = mpsc::channel(CONN_EVENT_QUEUE);
        let (media_events, media_rx) = mpsc::channel(MEDIA_EVENT_QUEUE);
        let (level_tx, level_rx) = mpsc::channel(LEVEL_EVENT_QUEUE);
        Driver {
            io: Io {
                urls: server.urls,
                tls: server.tls,
                timing,
                api,
                events,
                conn_events,
                next_conn: 0,
                tasks: JoinSet::new(),
                mixer: media.mixer.clone(),
                media,
                media_events,
                pcs: HashMap::new(),
                next_generation: 0,
                local_ips: HashMap::new(),
            },
            rooms: Vec::new(),
            requests,
            shutdown,
            conn_rx,
            media_rx,
            level_tx: Some(level_tx),
            level_rx,
        }
    }

    /// Runs until the engine is destroyed and every session has logged out (or the logout
    /// timed out), then closes the connections.
    pub(crate) async fn run(mut self) {
        let (stop_mixer, mixer_stopped) = oneshot::channel();
        let mixer_task = tokio::spawn(mixer::run(
            self.io.mixer.clone(),
            self.io.media.clone(),
            self.level_tx.take().expect("the engine task runs once"),
            mixer_stopped,
        ));
        // Joined when it is dropped, at the end of this function.
        let _video_thread = crate::media::RenderThread::start(self.io.media.clone());
        let mut stop_at: Option<Instant> = None;
        loop {
            self.io.events.flush();
            for room in &mut self.rooms {
                drive(room, &mut self.io);
            }
            self.rooms.retain(|r| !r.finished);
            let rooms = &self.rooms;
            self.io
                .pcs
                .retain(|(login, _, _), _| rooms.iter().any(|r| r.login == *login));
            while self.io.tasks.try_join_next().is_some() {}
            if stop_at.is_some() && self.rooms.is_empty() {
                break;
            }
            let wake = self.rooms.iter().filter_map(|r| r.wake).min();
            tokio::select! {
                _ = &mut self.shutdown, if stop_at.is_none() => {
                    // Sent by destroy, or the engine was dropped: both end the engine.
                    stop_at = Some(Instant::now() + self.io.timing.logout_timeout + SHUTDOWN_GRACE);
                    let now = std::time::Instant::now();
                    for room in &mut self.rooms {
                        room.session.handle_input(Input::Command(Command::Logout), now);
                    }
                }
                req = self.requests.recv(), if stop_at.is_none() => {
                    if let Some(req) = req {
                        self.on_request(req);
                    }
                }
                Some(ev) = self.conn_rx.recv() => self.on_conn_event(ev),
                Some(ev) = self.media_rx.recv() => self.on_media_event(ev),
                Some(ev) = self.level_rx.recv() => self.io.events.deliver(ev),
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    for room in &mut self.rooms {
                        if room.wake.is_some_and(|w| w <= now) {
                            room.session.handle_input(Input::Timeout, now.into_std());
                        }
                    }
                }
                _ = sleep_until(stop_at) => break,
            }
        }
        // Dropping the senders makes each connection close its WebSocket and each media task
        // end; give them a moment.
        self.rooms.clear();
        self.io.pcs.clear();
        let _ = stop_mixer.send(());
        let _ = mixer_task.await;
        self.io.media.finish_sink();
        let tasks = &mut self.io.tasks;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }

    fn on_request(&mut self, req: Request) {
        let now = std::time::Instant::now();
        match req {
            Request::Login { login, params } => {
                let session = Session::new(*params, now, unix_ms(), rand::random());
                self.rooms.push(Room {
                    login,
                    session,
                    server: 0,
                    conn: None,
                    outbox: Vec::new(),
                    wake: None,
                    finished: false,
                });
            }
            Request::Room { login, cmd } => match self.rooms.iter_mut().find(|r| r.login == login) {
                Some(room) => room.session.handle_input(Input::Command(cmd), now),
                None => debug!(login, ?cmd, "request for a session that has ended"),
            },
        }
    }

    fn on_media_event(&mut self, ev: MediaEvent) {
        let key = (ev.login, ev.kind, ev.stream_id.clone());
        match self.io.pcs.get(&key) {
            Some((generation, _)) if *generation == ev.generation => {}
            _ => return, // a connection already replaced or closed
        }
        if matches!(ev.update, MediaUpdate::Lost | MediaUpdate::Closed) {
            self.io.pcs.remove(&key);
        }
        if let Some(room) = self.rooms.iter_mut().find(|r| r.login == ev.login) {
            room.session.handle_input(
                Input::Media {
                    stream_id: ev.stream_id,
                    kind: ev.kind,
                    update: ev.update,
                },
                std::time::Instant::now(),
            );
        }
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        let id = match &ev {
            ConnEvent::Connected(id)
            | ConnEvent::Failed(id, _)
            | ConnEvent::CertificateRejected(id, _)
            | ConnEvent::Message(id, _)
            | ConnEvent::Closed(id, _) => *id,
        };
        let Some(room) = self
            .rooms
            .iter_mut()
            .find(|r| r.conn.as_ref().is_some_and(|c| c.0 == id))
        else {
            return; // a connection the session has already replaced or closed
        };
        let input = match ev {
            ConnEvent::Connected(_) => Input::Connected,
            ConnEvent::Message(_, msg) => Input::Message(msg),
            ConnEvent::Failed(_, why) => {
                room.conn = None;
                Input::ConnectFailed(why)
            }
            ConnEvent::CertificateRejected(_, why) => {
                room.conn = None;
                Input::CertificateRejected(why)
            }
            ConnEvent::Closed(_, why) => {
                room.conn = None;
                Input::Closed(why)
            }
        };
        room.session.handle_input(input, std::time::Instant::now());
    }
}

/// Performs a room's outputs until it waits for time or input (the session's invariant).
fn drive(room: &mut Room, io: &mut Io) {
    loop {
        match room.session.poll_output() {
            Output::Connect { server } => {
                // What was meant for the connection being replaced still goes to it.
                if !flush(room) {
                    continue;
                }
                room.server = server.min(io.urls.len() - 1);
                let id = io.next_conn;
                io.next_conn += 1;
                let (tx, rx) = mpsc::channel(SEND_QUEUE);
                // Replacing the sender closes the previous connection, if any.
                room.conn = Some((id, tx));
                io.tasks.spawn(conn::run(
                    id,
                    io.urls[room.server].clone(),
                    io.tls.clone(),
                    io.timing.attempt_timeout,
                    rx,
                    io.conn_events.clone(),
                ));
            }
            Output::Send(msg) => send(room, msg),
            Output::MediaOpen { seq, stream_id, kind } => {
                if let Some(sdp) = open_media(room.login, room.server, stream_id.clone(), kind, io) {
                    send(
                        room,
                        ClientMsg::MediaOffer {
                            seq,
                            stream_id,
                            kind,
                            sdp,
                            red_depth: crate::media::pc::red_depth(kind),
                        },
                    );
                }
            }
            Output::MediaAnswer { stream_id, kind, sdp } => {
                if let Some((_, tx)) = io.pcs.get(&(room.login, kind, stream_id)) {
                    let _ = tx.try_send(PcCommand::Answer(sdp));
                }
            }
            Output::MediaClose { stream_id, kind } => {
                io.pcs.remove(&(room.login, kind, stream_id));
            }
            Output::Close => {
                if flush(room) {
                    room.conn = None;
                }
            }
            Output::Release(release) => lock(&io.api).release(room.login, release),
            // Never waits for the app's handler (see `EventSink`).
            Output::Event(event) => io.events.deliver(event),
            Output::Timeout(at) => {
                if !flush(room) {
                    continue;
                }
                room.wake = at.map(Instant::from_std);
                return;
            }
            Output::Finished => {
                // The last words (a logout) still go; the session has nothing more to hear.
                if let Some((_, tx)) = &room.conn {
                    let _ = tx.try_send(std::mem::take(&mut room.outbox));
                }
                room.outbox.clear();
                room.finished = true;
                room.wake = None;
                room.conn = None;
                return;
            }
        }
    }
}

/// Queues a message for the room's connection (sent by [`flush`]).
fn send(room: &mut Room, msg: ClientMsg) {
    room.outbox.push(msg.encode());
}

/// Hands the queued messages to the connection, as one batch; a gone or stuck connection counts
/// as closed. Returns false when the session was told so (it has outputs again).
fn flush(room: &mut Room) -> bool {
    if room.outbox.is_empty() {
        return true;
    }
    let batch = std::mem::take(&mut room.outbox);
    let sent = room
        .conn
        .as_ref()
        .is_some_and(|(_, tx)| tx.try_send(batch).is_ok());
    if !sent {
        debug!(room = %room.session.room_id(), "connection gone or stuck; message not sent");
        if room.conn.take().is_some() {
            room.session
                .handle_input(Input::Closed("send queue full".into()), std::time::Instant::now());
            return false;
        }
    }
    true
}

/// Starts the media connection of a stream (replacing the previous one of the same stream and
/// kind) and returns its SDP offer; `None` when it cannot start (logged).
fn open_media(
    login: u64,
    server: usize,
    stream_id: StreamId,
    kind: MediaRole,
    io: &mut Io,
) -> Option<String> {
    let key = (login, kind, stream_id.clone());
    io.pcs.remove(&key);
    let ip = *io
        .local_ips
        .entry(server)
        .or_insert_with(|| pc::local_ip_towards(&url_host(&io.urls[server])));
    let (audio, video) = match kind {
        MediaRole::Publish => {
            let (audio_spec, video_spec, mic) = {
                let c = io.media.config();
                (
                    c.audio_source.clone(),
                    c.video_source.clone(),
                    c.input_device.clone(),
                )
            };
            let audio = AudioInput::open(&audio_spec, mic.as_deref()).unwrap_or_else(|e| {
                warn!(error = %e.message, "cannot open the audio source; sending silence");
                AudioInput::Silence
            });
            let video = if io.media.camera.load(Ordering::Relaxed) {
                VideoInput::open(&video_spec)
                    .map_err(|e| warn!(error = %e.message, "cannot open the video source; audio only"))
                    .ok()
            } else {
                None
            };
            (Some(audio), video)
        }
        MediaRole::Play => (None, None),
    };
    let with_video = match kind {
        MediaRole::Publish => video.is_some(),
        MediaRole::Play => true,
    };
    let (pc, sdp) = match Pc::new(ip, kind, with_video) {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, %stream_id, "cannot create a media connection");
            return None;
        }
    };
    io.next_generation += 1;
    let generation = io.next_generation;
    let (tx, rx) = mpsc::channel(4);
    let reporter = Reporter {
        events: io.media_events.clone(),
        template: MediaEvent {
            login,
            stream_id,
            kind,
            generation,
            update: MediaUpdate::Lost,
        },
    };
    let media = io.media.clone();
    match audio {
        Some(audio) => io
            .tasks
            .spawn(publish::run(pc, rx, reporter, media, audio, video)),
        None => io
            .tasks
            .spawn(play::run(pc, rx, reporter, media, io.mixer.clone())),
    };
    io.pcs.insert(key, (generation, tx));
    Some(sdp)
}

/// The host of a `ws://host:port/path` URL.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6).to_string(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
