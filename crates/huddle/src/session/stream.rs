//! The per-stream state the session keeps: the engine's publisher and each player.
//!
//! A stream's reported state is derived from what the signaling says about it. The media plane
//! adds one input per stream (the state of its peer connection) and changes the derivation only:
//! a publisher is `Publishing` when the server registered it *and* its media flows, a player is
//! `Playing` when the stream is available *and* its first frame is decoded. The signaling facts
//! kept here stay as they are.

use huddle_proto::StreamId;

use crate::event::{PlayerState, PublisherState};

/// The engine's one publishing stream.
#[derive(Debug)]
pub(crate) struct Publisher {
    /// The stream ID.
    pub(crate) stream_id: StreamId,
    /// The API call that started it, so that the API's own record is released only for it.
    pub(crate) ticket: u64,
    /// The state last reported to the app.
    pub(crate) state: PublisherState,
    /// The server session has the stream registered (it answered `ok`).
    pub(crate) registered: bool,
    /// A `publish` went out to the current server session (answered or not).
    pub(crate) requested: bool,
}

impl Publisher {
    pub(crate) fn new(stream_id: StreamId, ticket: u64) -> Self {
        Publisher {
            stream_id,
            ticket,
            state: PublisherState::NoPublish,
            registered: false,
            requested: false,
        }
    }

    /// The state to report now, from the signaling facts.
    pub(crate) fn target_state(&self, online: bool) -> PublisherState {
        if online && self.registered {
            PublisherState::Publishing
        } else {
            PublisherState::PublishRequesting
        }
    }
}

/// One played stream.
#[derive(Debug)]
pub(crate) struct Player {
    /// The state last reported to the app.
    pub(crate) state: PlayerState,
    /// What the server's last `play_update` said.
    pub(crate) available: bool,
    /// A `play` went out to the current server session.
    pub(crate) requested: bool,
}

impl Player {
    pub(crate) fn new() -> Self {
        Player {
            state: PlayerState::NoPlay,
            available: false,
            requested: false,
        }
    }

    /// The state to report now, from the signaling facts.
    pub(crate) fn target_state(&self, online: bool) -> PlayerState {
        if online && self.available {
            PlayerState::Playing
        } else {
            PlayerState::PlayRequesting
        }
    }
}
