//! The per-stream state the session keeps: the engine's publisher and each player.
//!
//! A stream's reported state is derived from what the signaling says about it. The media plane
//! adds one input per stream (the state of its peer connection) and changes the derivation only:
//! a publisher is `Publishing` when the server registered it *and* its media flows, a player is
//! `Playing` when the stream is available *and* its first frame is decoded. The signaling facts
//! kept here stay as they are.

use huddle_proto::StreamId;

use crate::event::{PlayerState, PublisherState};

/// Where a stream's media peer connection is, as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaLink {
    /// None.
    Idle,
    /// Offered with this request number; no answer yet.
    Offered { seq: u32 },
    /// Answered: the connection is the media task's business until it reports.
    Answered,
}

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
    /// The media plane is on: `Publishing` waits for media to flow.
    pub(crate) media_required: bool,
    /// The media connection.
    pub(crate) media: MediaLink,
    /// The media connection is up and sending.
    pub(crate) flowing: bool,
}

impl Publisher {
    pub(crate) fn new(stream_id: StreamId, ticket: u64, media_required: bool) -> Self {
        Publisher {
            stream_id,
            ticket,
            state: PublisherState::NoPublish,
            registered: false,
            requested: false,
            media_required,
            media: MediaLink::Idle,
            flowing: false,
        }
    }

    /// The state to report now, from the signaling and media facts.
    pub(crate) fn target_state(&self, online: bool) -> PublisherState {
        if online && self.registered && (self.flowing || !self.media_required) {
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
    /// The media plane is on: `Playing` waits for the first decoded frame.
    pub(crate) media_required: bool,
    /// The media connection.
    pub(crate) media: MediaLink,
    /// A frame was decoded on the current media connection.
    pub(crate) first_frame: bool,
}

impl Player {
    pub(crate) fn new(media_required: bool) -> Self {
        Player {
            state: PlayerState::NoPlay,
            available: false,
            requested: false,
            media_required,
            media: MediaLink::Idle,
            first_frame: false,
        }
    }

    /// The state to report now, from the signaling and media facts.
    pub(crate) fn target_state(&self, online: bool) -> PlayerState {
        if online && self.available && (self.first_frame || !self.media_required) {
            PlayerState::Playing
        } else {
            PlayerState::PlayRequesting
        }
    }
}
