//! Relay publishers: a stream published on another node of the cluster, pulled once and fanned
//! out here (`docs/cluster.md`, "Playing a stream of another node").
//!
//! A relay publisher is a publish PC like a client's, with two differences: this node *offers*
//! (a full ICE agent, controlling, that receives audio and video with RED, NACK and keyframe
//! requests, as the SDK's players offer), and its datagrams travel on a socket of the link's own
//! ([`Command::PullOffer`]'s `local`), not on the media socket. The stream's node answers it as
//! any play offer, so nothing changes there. Once answered, the relay PC becomes the stream's
//! publisher ([`Sfu::install_publisher`]): this node's players attach to it, its RTP is
//! forwarded to them as a client publisher's is, their keyframe requests go up the link, and the
//! relay PC's own receive side asks the stream's node for what it lost (NACK).
//!
//! Why a socket per link rather than the media socket: the SFU tells PCs apart by the remote
//! address, and so does the stream's node. Two streams pulled from the same node over the one
//! media socket would come from and go to the same pair of addresses, and neither end could tell
//! their packets apart without bundling them into one PC (renegotiation for every stream added).
//! A socket per link gives each link a remote address of its own at the other end.

use std::net::SocketAddr;
use std::time::Instant;

use huddle_proto::{MediaRole, ServerMsg};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, RtcConfig};
use tracing::{debug, info};

use crate::registry::SessionId;

use super::pc::{Publishing, Role, setup_failed};
use super::types::bump;
use super::{Sfu, StreamKey, shard};

/// What a relay publisher's PC keeps of its link.
pub(crate) struct RelayLink {
    /// The media lines offered: audio, then video.
    mids: [Mid; 2],
    /// The offer, until the answer comes.
    pending: Option<SdpPendingOffer>,
}

impl Sfu {
    /// Builds a relay publisher of `key` for the link `session` on `local` and hands its offer to
    /// the link (a `media_answer` to `session` whose `sdp` is the offer). Replaces the link's
    /// earlier relay PC of the stream, if any.
    pub(super) fn pull_offer(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &StreamKey,
        local: SocketAddr,
    ) {
        let mut config = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, true)
            .enable_vp8(true)
            .set_crypto_provider(huddle_dtls::crypto_provider())
            .set_local_ice_credentials(shard::ice_credentials(self.config.shard));
        if let Some(cert) = &self.cert {
            config = config.set_dtls_cert(cert.clone());
        }
        let mut rtc = config.build(now);
        let candidate = match Candidate::host(local, "udp") {
            Ok(c) => c,
            Err(e) => {
                let err = setup_failed("relay candidate refused", e);
                self.signals.push_back((session, ServerMsg::error(None, &err)));
                return;
            }
        };
        rtc.add_local_candidate(candidate);
        let mut api = rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let video = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let Some((offer, pending)) = api.apply() else {
            let err = setup_failed("relay offer", "no change to offer");
            self.signals.push_back((session, ServerMsg::error(None, &err)));
            return;
        };
        let owner_key = (session, key.clone(), MediaRole::Publish);
        if let Some(old) = self.by_owner.get(&owner_key).copied() {
            self.close_pc(now, old, None);
        }
        let id = self.insert(
            now,
            rtc,
            session,
            key.clone(),
            Role::Publish(Publishing::default()),
        );
        if let Some(pc) = self.pc(id) {
            pc.relay = Some(Box::new(RelayLink {
                mids: [audio, video],
                pending: Some(pending),
            }));
        }
        self.by_owner.insert(owner_key, id);
        // The stream has state here from now on (its publisher-to-be), so that the placement
        // table keeps it on this shard until the answer comes: without the entry the offer's
        // command was reported handled with nothing live, the stream was forgotten, and the
        // answer and the link's datagrams could be routed to another shard.
        self.streams.entry(key.clone()).or_default();
        bump(&self.counters.pcs_opened);
        self.signals.push_back((
            session,
            ServerMsg::MediaAnswer {
                seq: 0,
                stream_id: key.1.clone(),
                kind: MediaRole::Publish,
                sdp: offer.to_sdp_string(),
            },
        ));
        self.drive(id, now);
    }

    /// Applies the stream's node's answer to the link's relay PC and makes it the stream's
    /// publisher. A bad answer fails the PC (the link hears `media_state` failed).
    pub(super) fn pull_answer(&mut self, now: Instant, session: SessionId, key: &StreamKey, sdp: &str) {
        let Some(id) = self
            .by_owner
            .get(&(session, key.clone(), MediaRole::Publish))
            .copied()
        else {
            return;
        };
        let epoch = self.next_epoch.wrapping_add(1);
        let Some(pc) = self.pc(id) else { return };
        let Some(link) = pc.relay.as_mut() else { return };
        let Some(pending) = link.pending.take() else {
            return;
        };
        let mids = link.mids;
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "relay answer refused");
                self.fail_pc(now, id, "the stream's node answered with an unreadable SDP");
                return;
            }
        };
        if let Err(e) = pc.rtc.sdp_api().accept_answer(pending, answer) {
            debug!(error = %e, "relay answer not accepted");
            self.fail_pc(
                now,
                id,
                "the stream's node answered with an SDP that does not fit the offer",
            );
            return;
        }
        let (mut publishing, kinds) = Publishing::negotiated(&pc.rtc, mids);
        publishing.epoch = epoch;
        pc.role = Role::Publish(publishing);
        self.next_epoch = epoch;
        if !kinds.audio && !kinds.video {
            self.fail_pc(now, id, "the stream's node sends neither audio nor video");
            return;
        }
        info!(%session, stream = %key.1, "relay link negotiated");
        self.install_publisher(now, id, session, key, kinds);
        self.drive(id, now);
        self.flush(now);
    }

    /// Closes the link's relay PC alone: the stream keeps its players, who get media again when
    /// the next link's relay PC is answered.
    pub(super) fn pull_broken(&mut self, now: Instant, session: SessionId, key: &StreamKey) {
        self.close_owned(now, session, key, MediaRole::Publish);
    }

    /// Handles a datagram that the link `session` of stream `key` received on its socket
    /// (`to`, the socket's address) from `from`: straight to the link's relay PC, since neither
    /// the ICE username (a STUN answer has none) nor the address (the link's own) is in the
    /// demultiplexing tables.
    pub fn handle_relay_input(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &StreamKey,
        from: SocketAddr,
        to: SocketAddr,
        buf: &[u8],
    ) {
        bump(&self.counters.datagrams_in);
        let Some(id) = self
            .by_owner
            .get(&(session, key.clone(), MediaRole::Publish))
            .copied()
        else {
            bump(&self.counters.dropped_unknown);
            return;
        };
        let Ok(receive) = Receive::new(Protocol::Udp, from, to, buf) else {
            bump(&self.counters.dropped_invalid);
            return;
        };
        let Some(pc) = self.pc(id) else { return };
        if pc.relay.is_none() {
            return;
        }
        if let Err(e) = pc.rtc.handle_input(Input::Receive(now, receive)) {
            debug!(error = %e, "relay input refused");
            self.fail_pc(now, id, "the link failed (bad input)");
            return;
        }
        self.drive(id, now);
        self.flush(now);
    }
}
