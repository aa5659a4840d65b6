//! The engine task: drives the room sessions with requests, connection events and time.
//!
//! One task per engine, on the engine's control thread. It is the only place that feeds the
//! [`Session`]s and performs their outputs, so events leave in one order: the order things
//! happened. Connections are tasks of their own ([`crate::conn`]); the media plane will add a
//! publisher task and a player task per stream beside them, fed and watched from here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::debug;

use crate::conn::{self, ConnEvent, ConnId, SEND_QUEUE};
use crate::engine::{SharedApi, lock};
use crate::event::Event;
use crate::session::{Command, Input, Output, Session, SessionParams, Timing};

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
    conn: Option<(ConnId, mpsc::Sender<String>)>,
    wake: Option<Instant>,
    finished: bool,
}

/// What performing outputs needs besides the room.
struct Io {
    url: String,
    timing: Timing,
    api: SharedApi,
    events: mpsc::Sender<Event>,
    conn_events: mpsc::Sender<ConnEvent>,
    next_conn: ConnId,
    tasks: JoinSet<()>,
}

pub(crate) struct Driver {
    io: Io,
    rooms: Vec<Room>,
    requests: mpsc::Receiver<Request>,
    shutdown: oneshot::Receiver<()>,
    conn_rx: mpsc::Receiver<ConnEvent>,
}

impl Driver {
    pub(crate) fn new(
        url: String,
        timing: Timing,
        api: SharedApi,
        requests: mpsc::Receiver<Request>,
        shutdown: oneshot::Receiver<()>,
        events: mpsc::Sender<Event>,
    ) -> Driver {
        let (conn_events, conn_rx) = mpsc::channel(CONN_EVENT_QUEUE);
        Driver {
            io: Io {
                url,
                timing,
                api,
                events,
                conn_events,
                next_conn: 0,
                tasks: JoinSet::new(),
            },
            rooms: Vec::new(),
            requests,
            shutdown,
            conn_rx,
        }
    }

    /// Runs until the engine is destroyed and every session has logged out (or the logout
    /// timed out), then closes the connections.
    pub(crate) async fn run(mut self) {
        let mut stop_at: Option<Instant> = None;
        loop {
            for room in &mut self.rooms {
                drive(room, &mut self.io).await;
            }
            self.rooms.retain(|r| !r.finished);
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
        // Dropping the senders makes each connection close its WebSocket; give them a moment.
        self.rooms.clear();
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
                    conn: None,
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

    fn on_conn_event(&mut self, ev: ConnEvent) {
        let id = match &ev {
            ConnEvent::Connected(id)
            | ConnEvent::Failed(id, _)
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
            ConnEvent::Closed(_, why) => {
                room.conn = None;
                Input::Closed(why)
            }
        };
        room.session.handle_input(input, std::time::Instant::now());
    }
}

/// Performs a room's outputs until it waits for time or input (the session's invariant).
async fn drive(room: &mut Room, io: &mut Io) {
    loop {
        match room.session.poll_output() {
            Output::Connect => {
                let id = io.next_conn;
                io.next_conn += 1;
                let (tx, rx) = mpsc::channel(SEND_QUEUE);
                // Replacing the sender closes the previous connection, if any.
                room.conn = Some((id, tx));
                io.tasks.spawn(conn::run(
                    id,
                    io.url.clone(),
                    io.timing.attempt_timeout,
                    rx,
                    io.conn_events.clone(),
                ));
            }
            Output::Send(msg) => {
                let sent = room
                    .conn
                    .as_ref()
                    .is_some_and(|(_, tx)| tx.try_send(msg.encode()).is_ok());
                if !sent {
                    debug!(room = %room.session.room_id(), "connection gone or stuck; message not sent");
                    if room.conn.take().is_some() {
                        room.session
                            .handle_input(Input::Closed("send queue full".into()), std::time::Instant::now());
                    }
                }
            }
            Output::Close => room.conn = None,
            Output::Release(release) => lock(&io.api).release(room.login, release),
            Output::Event(event) => {
                // Waits while the app's handler is far behind: better than losing events.
                let _ = io.events.send(event).await;
            }
            Output::Timeout(at) => {
                room.wake = at.map(Instant::from_std);
                return;
            }
            Output::Finished => {
                room.finished = true;
                room.wake = None;
                room.conn = None;
                return;
            }
        }
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
