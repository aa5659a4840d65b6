//! The per-stream state the session keeps: the engine's publisher and each player.
//!
//! A stream's reported state is derived from what the signaling says about it. The media plane
//! adds one input per stream (the state of its peer connection) and changes the derivation only:
//! a publisher is `Publishing` when the server registered it *and* its media flows, a player is
//! `Playing` when the stream is available *and* its first frame is decoded. The signaling facts
//! kept here stay as they are.

use std::time::{Duration, Instant};

use huddle_proto::StreamId;

use crate::event::{PlayerState, PublisherState};

/// Where a stream's media peer connection is, as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaLink {
    /// None.
    Idle,
    /// Offered with this request number; no answer yet. An offer goes out with the stream's
    /// `publish` or `play`; the server may hold a play offer until the stream is published.
    Offered { seq: u32 },
    /// Answered: the connection is the media task's business until it reports.
    Answered,
}

/// When a stream's lost media connection is offered again: at once after a connection that
/// lasted, and with a delay that doubles (250 ms up to 8 s) after connections that die young.
/// Without it a path that cannot carry media (a firewall that lets ICE through but not DTLS, a
/// server that fails the connection at once) is re-offered as fast as it fails, until the
/// server's rate limit cuts the signaling connection.
#[derive(Debug, Default)]
pub(crate) struct MediaRetry {
    /// Connections lost in a row, none of which lasted [`MediaRetry::LASTED`].
    failures: u32,
    /// When the current connection started to carry media.
    up_since: Option<Instant>,
    /// The next offer waits until then.
    pub(crate) at: Option<Instant>,
}

impl MediaRetry {
    /// A connection that carried media this long was not a failure of the path.
    const LASTED: Duration = Duration::from_secs(10);
    const FIRST_DELAY: Duration = Duration::from_millis(250);
    const MAX_DELAY: Duration = Duration::from_secs(8);

    /// The current connection carries media (since `now`, if not already).
    pub(crate) fn up(&mut self, now: Instant) {
        self.up_since.get_or_insert(now);
    }

    /// The connection was lost at `now`: the next offer waits until the returned instant
    /// (`now` for an offer at once).
    pub(crate) fn lost(&mut self, now: Instant) -> Instant {
        if self
            .up_since
            .take()
            .is_some_and(|since| now.duration_since(since) >= Self::LASTED)
        {
            self.failures = 0;
        }
        let delay = match self.failures {
            0 => Duration::ZERO,
            n => Self::FIRST_DELAY
                .saturating_mul(1 << (n - 1).min(16))
                .min(Self::MAX_DELAY),
        };
        self.failures = self.failures.saturating_add(1);
        self.at = Some(now + delay).filter(|_| !delay.is_zero());
        now + delay
    }

    /// Whether a waiting offer is due at `now` (then it waits no more).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        let due = self.at.is_some_and(|at| now >= at);
        if due {
            self.at = None;
        }
        due
    }
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
    /// When a lost media connection is offered again.
    pub(crate) retry: MediaRetry,
    /// Publishing again on a fresh server session (another node, after a move or a node's
    /// death): until then, a refusal as "stream ID exists" is the old session's claim that has
    /// not ended yet (its node's lease, or the kick of the older session), and is retried.
    pub(crate) reclaim_until: Option<Instant>,
    /// The next `publish` of such a retry.
    pub(crate) reclaim_at: Option<Instant>,
    /// Retries of the reclaim so far (the delay doubles: 250 ms up to 1 s).
    pub(crate) reclaims: u32,
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
            retry: MediaRetry::default(),
            reclaim_until: None,
            reclaim_at: None,
            reclaims: 0,
        }
    }

    /// The delay before the next `publish` of a reclaim: 250 ms, doubling up to 1 s.
    pub(crate) fn next_reclaim_delay(&mut self) -> Duration {
        let d = Duration::from_millis(250).saturating_mul(1 << self.reclaims.min(2));
        self.reclaims = self.reclaims.saturating_add(1);
        d
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
    /// The tracks the app muted (`[audio, video]`): the server does not send them.
    pub(crate) muted: [bool; 2],
    /// When a lost media connection is offered again.
    pub(crate) retry: MediaRetry,
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
            muted: [false; 2],
            retry: MediaRetry::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_losses_back_off_and_a_lasting_connection_resets() {
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let mut r = MediaRetry::default();
        // Lost before it ever carried media, again and again: 0, 250, 500, … up to 8 s.
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let at = r.lost(now);
            delays.push(at - now);
            assert!(!r.due(now) || at == now);
            now = at;
            assert!(r.at.is_none() || r.due(now));
        }
        assert_eq!(
            delays,
            [
                ms(0),
                ms(250),
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(8000)
            ]
        );
        // Up for a second only: still young.
        r.up(now);
        now += ms(1000);
        assert_eq!(r.lost(now) - now, ms(8000));
        // Up for a minute: the next loss is retried at once, the one after waits again.
        now += ms(8000);
        r.up(now);
        now += Duration::from_secs(60);
        assert_eq!(r.lost(now), now);
        assert!(r.at.is_none());
        assert_eq!(r.lost(now) - now, ms(250));
    }
}
