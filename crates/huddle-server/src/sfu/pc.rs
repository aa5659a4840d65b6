//! Peer connections: what one is ([`Pc`]), and their lifecycle in the [`Sfu`] — offers
//! answered, PCs built, registered, closed and failed, streams dropped.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huddle_proto::{ErrorCode, HuddleError, MediaRole, PeerState, ServerMsg, TrackKind};
use rand::Rng;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, TcpType};
use str0m::rtp::{Extension, Ssrc};
use str0m::{Candidate, Output, Rtc, RtcConfig};
use tracing::{debug, info, warn};

use crate::registry::SessionId;

use super::types::{Command, Offer, bump};
use super::{Rewriter, Sfu, StreamKey, shard};

/// How often str0m reports a PC's statistics (cumulative NACK counts).
pub(super) const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Larger sequence number jumps are a restarted source, not counted as loss.
pub(super) const MAX_COUNTED_GAP: u64 = 1000;

/// Play offers waiting for a publisher's media, per stream.
pub(super) const MAX_PENDING_PER_STREAM: usize = 64;

/// The media a publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kinds {
    pub(super) audio: bool,
    pub(super) video: bool,
}

/// A played track: where the server writes one kind of the stream's media.
#[derive(Debug)]
pub(super) struct TrackOut {
    pub(super) kind: MediaKind,
    pub(super) mid: Mid,
    pub(super) pt: Pt,
    /// Audio: the player's RED payload type, when it negotiated RED (RFC 2198) for Opus.
    pub(super) red_pt: Option<Pt>,
    /// With RED: the frames before each one it is sent with (`red::distances` of the offer's
    /// `red_depth`).
    pub(super) red_distances: &'static [u64],
    pub(super) rewriter: Rewriter,
    /// The player muted this track (`mute_play`): nothing of it is forwarded.
    pub(super) muted: bool,
    /// Packets written to str0m for this track.
    pub(super) written: u64,
    /// Retransmissions counted so far: str0m's packets sent beyond those written.
    pub(super) resent: u64,
    /// Audio without RED: the loss the player last reported (RTCP fraction lost) and when;
    /// the worst of these goes to the publisher (`forward`, "players' loss upstream").
    pub(super) loss: Option<(Instant, f32)>,
}

/// One media peer connection.
pub(super) struct Pc {
    pub(super) rtc: Rtc,
    pub(super) owner: SessionId,
    pub(super) key: StreamKey,
    /// Publish or play, with what only that role keeps.
    pub(super) role: Role,
    /// Connecting (until a deadline) or connected.
    pub(super) link: Link,
    /// The server's ICE username fragment of this PC (the `by_ufrag` key).
    pub(super) ufrag: String,
    /// The remote addresses in `by_addr` that lead here.
    pub(super) addrs: Vec<(Protocol, SocketAddr)>,
    /// The str0m timeout that has the live entry in the timer heap.
    pub(super) scheduled: Option<Instant>,
    /// In the dirty list: mutated, to be drained.
    pub(super) dirty: bool,
    /// Mutated by more than forwarded RTP (a keyframe request): the drain must give it the
    /// time and poll it in full, not only send what was written.
    pub(super) dirty_full: bool,
    /// A relay publisher's link to the stream's node (`super::relay`); `None` for a client's PC.
    pub(super) relay: Option<Box<super::relay::RelayLink>>,
    /// When its offer came, until its first packet is forwarded (play) or received (publish):
    /// the first-packet latency histogram's start (`Counters::first_packet`).
    pub(super) offered: Option<Instant>,
    /// NACKs counted so far, per media line, from str0m's cumulative statistics events.
    pub(super) nacks: Vec<(Mid, u64)>,
}

impl Pc {
    /// Publish or play, as signaling names it.
    pub(super) fn media_role(&self) -> MediaRole {
        match self.role {
            Role::Publish(_) => MediaRole::Publish,
            Role::Play(_) => MediaRole::Play,
        }
    }

    /// The tracks a play PC sends (none for a publish PC).
    pub(super) fn tracks(&self) -> &[TrackOut] {
        match &self.role {
            Role::Play(play) => &play.tracks,
            Role::Publish(_) => &[],
        }
    }
}

/// What a PC is for: a publish PC only receives, a play PC only sends.
pub(super) enum Role {
    /// Receives a publisher's media.
    Publish(Publishing),
    /// Sends a stream's media to a player.
    Play(Playing),
}

/// What a publish PC keeps.
#[derive(Debug, Default)]
pub(super) struct Publishing {
    /// The source number of this connection (changes when a publisher re-offers).
    pub(super) epoch: u32,
    /// The kind of each received media line.
    pub(super) mids: Vec<(Mid, MediaKind)>,
    /// The kind of each SSRC seen (a cache of `mids` by SSRC).
    pub(super) ssrc_kinds: Vec<(Ssrc, MediaKind)>,
    /// The RED payload type the publisher sends Opus in and Opus's own payload type, when it
    /// negotiated RED.
    pub(super) red_in: Option<(Pt, Pt)>,
    /// The highest extended sequence number of audio received (to tell which frames a RED
    /// packet's redundancy can restore for players without RED).
    pub(super) last_audio_seq: Option<u64>,
    /// The audio's sequence numbers without its padding-only packets (`super::padding`).
    pub(super) audio_seq: super::padding::AudioSeq,
    /// Its last audio frames, for the redundancy sent to players with RED (`red::History`).
    pub(super) history: super::red::History,
    /// The highest extended sequence number received per SSRC (at most 8), for the loss count.
    pub(super) highest_seq: Vec<(Ssrc, u64)>,
    /// The least fraction lost (0–255) the server's receiver reports on the audio now carry:
    /// the worst loss of the players without RED (`forward`, "players' loss upstream").
    pub(super) reported_loss_floor: u8,
}

impl Publishing {
    /// What a publish PC receives once its SDP is negotiated: the media lines of `mids` that it
    /// receives on, and whether Opus comes in RED. Publisher PCs (offers from clients) and relay
    /// publisher PCs (answers from the stream's node) are both read this way.
    pub(super) fn negotiated(rtc: &Rtc, mids: impl IntoIterator<Item = Mid>) -> (Publishing, Kinds) {
        let mut publishing = Publishing::default();
        for mid in mids {
            if let Some(m) = rtc.media(mid)
                && !m.disabled()
                && m.direction().is_receiving()
            {
                publishing.mids.push((mid, m.kind()));
            }
        }
        publishing.red_in = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .and_then(|p| Some((p.red()?, p.pt())));
        let kinds = Kinds {
            audio: publishing.mids.iter().any(|(_, k)| k.is_audio()),
            video: publishing.mids.iter().any(|(_, k)| k.is_video()),
        };
        (publishing, kinds)
    }

    /// Notes sequence number `seq` of `ssrc`; returns how many packets it shows missing (the
    /// numbers skipped since the highest one so far). A jump of more than
    /// [`MAX_COUNTED_GAP`] is a restarted source, not loss.
    pub(super) fn count_gap(&mut self, ssrc: Ssrc, seq: u64) -> u64 {
        match self.highest_seq.iter_mut().find(|(s, _)| *s == ssrc) {
            Some((_, highest)) if seq > *highest => {
                let gap = seq - *highest - 1;
                *highest = seq;
                if gap <= MAX_COUNTED_GAP { gap } else { 0 }
            }
            Some(_) => 0,
            None => {
                if self.highest_seq.len() < 8 {
                    self.highest_seq.push((ssrc, seq));
                }
                0
            }
        }
    }

    /// The kind of the media an SSRC of this PC's `rtc` carries.
    pub(super) fn kind_of(&mut self, rtc: &mut Rtc, ssrc: Ssrc) -> Option<MediaKind> {
        if let Some((_, k)) = self.ssrc_kinds.iter().find(|(s, _)| *s == ssrc) {
            return Some(*k);
        }
        let mid = rtc.direct_api().stream_rx(&ssrc)?.mid();
        let kind = self.mids.iter().find(|(m, _)| *m == mid)?.1;
        if self.ssrc_kinds.len() < 8 {
            self.ssrc_kinds.push((ssrc, kind));
        }
        Some(kind)
    }
}

/// What a play PC keeps.
#[derive(Debug, Default)]
pub(super) struct Playing {
    /// The tracks sent.
    pub(super) tracks: Vec<TrackOut>,
}

/// Whether a PC has connected (ICE and DTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// Not yet; failed if still so at `deadline`.
    Connecting {
        /// When it fails.
        deadline: Instant,
    },
    /// Connected: media flows.
    Connected,
}

/// What a player declared with its play offer (its offer, its login).
#[derive(Debug)]
pub(super) struct PlayOffer {
    pub(super) sdp: String,
    /// [`Offer::red_depth`].
    pub(super) red_depth: u8,
    /// [`Offer::setup_active`].
    pub(super) setup_active: bool,
}

/// A play offer waiting for the publisher's media.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) session: SessionId,
    pub(super) seq: u32,
    pub(super) offer: PlayOffer,
    pub(super) deadline: Instant,
}

/// What the SFU knows of one stream.
#[derive(Debug, Default)]
pub(super) struct StreamEntry {
    /// The session that published media for it (kept while its PC reconnects).
    pub(super) publisher_session: Option<SessionId>,
    pub(super) publisher: Option<usize>,
    /// What the publisher sends (`None` until a publish offer was accepted).
    pub(super) kinds: Option<Kinds>,
    pub(super) players: Vec<usize>,
    pub(super) pending: Vec<Pending>,
    pub(super) last_keyframe_request: Option<Instant>,
    /// The stream's recording, when it is recorded here (`crate::recording`): the shard hands
    /// it a copy of each packet without waiting.
    pub(super) record: Option<crate::recording::Tap>,
}

impl StreamEntry {
    pub(super) fn is_unused(&self) -> bool {
        self.publisher.is_none() && self.players.is_empty() && self.pending.is_empty()
    }
}

impl Sfu {
    /// Applies a command from signaling.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Offer(o) => self.handle_offer(now, o),
            Command::ClosePublish { app, stream_id } => self.close_publish(now, &(app, stream_id)),
            Command::ClosePlay {
                session,
                app,
                stream_id,
            } => self.close_play(now, session, &(app, stream_id)),
            Command::MutePlay {
                session,
                app,
                stream_id,
                track,
                mute,
            } => self.mute_play(now, session, &(app, stream_id), track, mute),
            Command::SessionGone { session } => self.session_gone(now, session),
            Command::PullOffer {
                session,
                app,
                stream_id,
                local,
            } => self.pull_offer(now, session, &(app, stream_id), local),
            Command::PullAnswer {
                session,
                app,
                stream_id,
                sdp,
            } => self.pull_answer(now, session, &(app, stream_id), &sdp),
            Command::PullBroken {
                session,
                app,
                stream_id,
            } => self.pull_broken(now, session, &(app, stream_id)),
            Command::Record { app, stream_id } => self.attach_recording(now, &(app, stream_id)),
        }
        self.flush(now);
    }

    /// Answers a `media_offer` (the answer or an error goes to [`Sfu::poll_signal`]). A play offer
    /// for a stream whose publisher has not negotiated media yet waits for it (at most
    /// [`SfuConfig::play_wait`]).
    pub fn handle_offer(&mut self, now: Instant, o: Offer) {
        let key = (o.app, o.stream_id.clone());
        let result = match o.role {
            MediaRole::Publish => self
                .offer_publish(now, o.session, &key, &o.sdp, o.setup_active)
                .map(Some),
            MediaRole::Play => self.offer_play(
                now,
                o.session,
                &key,
                o.seq,
                PlayOffer {
                    sdp: o.sdp.clone(),
                    red_depth: o.red_depth,
                    setup_active: o.setup_active,
                },
            ),
        };
        match result {
            Ok(Some(sdp)) => self.answer(o.session, o.seq, &key, o.role, sdp),
            Ok(None) => {}
            Err(e) => {
                debug!(session = %o.session, stream = %o.stream_id, code = e.code.0, message = %e.message, "media offer refused");
                self.signals
                    .push_back((o.session, ServerMsg::error(Some(o.seq), &e)));
            }
        }
        self.flush(now);
    }

    pub(super) fn answer(&mut self, to: SessionId, seq: u32, key: &StreamKey, role: MediaRole, sdp: String) {
        self.signals.push_back((
            to,
            ServerMsg::MediaAnswer {
                seq,
                stream_id: key.1.clone(),
                kind: role,
                sdp,
            },
        ));
    }

    /// A new `Rtc` answering `sdp`; returns it with the answer. `setup_active`: the client
    /// starts ICE when answered `a=setup:active` ([`Offer::setup_active`]).
    pub(super) fn build_rtc(
        &self,
        now: Instant,
        sdp: &str,
        role: MediaRole,
        setup_active: bool,
    ) -> Result<(Rtc, String), HuddleError> {
        if self.live >= self.config.max_peer_connections {
            return Err(HuddleError::new(
                ErrorCode::SERVER_BUSY,
                "the media plane is at its peer connection limit",
            ));
        }
        let offer = parse_offer(sdp)?;
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            // An `actpass` offer from a client that starts ICE on such an answer (its login said
            // so) gets the server as DTLS client: its ClientHello leaves with the response to
            // the first check (str0m patch 0006) and the client is up one flight earlier. The
            // server has its SRTP keys once its Finished is out (dimpl's early keys): a
            // publisher's media decrypts from then on, and a player's media flows from then on
            // (`forward`), not after the player's last flight (`docs/quality.md`, "Setup under
            // loss").
            .set_dtls_active_answer(self.config.dtls_active && setup_active)
            .set_rtp_mode(true)
            // str0m's statistics events, once a second per PC: the NACK counts (`forward`).
            .set_stats_interval(Some(STATS_INTERVAL))
            .clear_codecs()
            // RED (RFC 2198) for Opus when the offer has it, as browsers negotiate it: publishers
            // may send redundant audio, players may receive it (see `forward`).
            .enable_opus(true, true)
            .enable_vp8(true);
        if let Some(cert) = &self.cert {
            config = config.set_dtls_cert(cert.clone());
        }
        // One DTLS configuration for every PC: str0m's default validates dimpl's crypto provider
        // again for each one, ~0.65 ms of this shard's thread per offer (`huddle_dtls`).
        let provider = match self.config.dtls_seed {
            Some(seed) => {
                huddle_dtls::crypto_provider_seeded(huddle_dtls::HandshakeTiming::of_process(), seed)
            }
            None => huddle_dtls::crypto_provider(),
        };
        config = config
            .set_crypto_provider(provider)
            .set_local_ice_credentials(shard::ice_credentials(self.config.shard));
        if role == MediaRole::Publish {
            // Receiver reports to the publisher every second rather than every 5 s: its
            // quality events and encoder follow them (one small RTCP packet a second).
            config = config.set_rtcp_report_interval_audio(self.config.publish_report_interval);
        }
        if role == MediaRole::Play {
            // No transport-wide congestion control on what the server sends yet (no bandwidth
            // estimation to feed): without it str0m keeps no history of the last 1000 packets
            // sent, which is most of a play connection's memory. Nor absolute send time: it
            // feeds only a receiver's REMB estimate, which nothing here reads, and stamping it
            // (a wall clock conversion per packet) was 6 % of the SFU's time per forwarded packet.
            config = config
                .clear_extension_map()
                .set_extension(1, Extension::AudioLevel)
                .set_extension(4, Extension::RtpMid)
                .set_extension(10, Extension::RtpStreamId)
                .set_extension(11, Extension::RepairedRtpStreamId)
                .set_extension(13, Extension::VideoOrientation);
        }
        let mut rtc = config.build(now);
        if self.config.candidates.is_empty() {
            return Err(HuddleError::new(
                ErrorCode::INTERNAL,
                "the server has no media candidate",
            ));
        }
        for addr in &self.config.candidates {
            let candidate =
                Candidate::host(*addr, "udp").map_err(|e| setup_failed("server candidate refused", e))?;
            rtc.add_local_candidate(candidate);
        }
        for addr in self.tcp_candidates() {
            // RFC 6544: the server only accepts connections (passive); its type preference puts
            // it below the UDP candidates, so a client that reaches both nominates UDP.
            let tcp = Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| setup_failed("server TCP candidate refused", e))?;
            rtc.add_local_candidate(tcp);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| {
                debug!(error = %e, "SDP offer not answerable");
                invalid("the offer has nothing the server can answer (it takes Opus audio and VP8 video, with ICE and DTLS)")
            })?;
        Ok((rtc, plain_origin(&answer.to_sdp_string())))
    }

    pub(super) fn insert(
        &mut self,
        now: Instant,
        rtc: Rtc,
        owner: SessionId,
        key: StreamKey,
        role: Role,
    ) -> usize {
        let mut rtc = rtc;
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let deadline = now + self.config.connect_timeout;
        let pc = Box::new(Pc {
            rtc,
            owner,
            key,
            role,
            link: Link::Connecting { deadline },
            ufrag,
            addrs: Vec::new(),
            scheduled: None,
            dirty: false,
            dirty_full: false,
            relay: None,
            offered: Some(now),
            nacks: Vec::new(),
        });
        self.live += 1;
        let id = match self.free.pop() {
            Some(i) => {
                self.pcs[i] = Some(pc);
                i
            }
            None => {
                self.pcs.push(Some(pc));
                self.pcs.len() - 1
            }
        };
        self.timers.push(Reverse((deadline, id)));
        id
    }

    /// Makes a newly negotiated PC reachable (ICE username, owner) and replaces the owner's
    /// earlier PC for the same stream and role.
    pub(super) fn register(&mut self, now: Instant, id: usize) {
        let Some(pc) = self.pc(id) else { return };
        let owner_key = (pc.owner, pc.key.clone(), pc.media_role());
        let ufrag = pc.ufrag.clone();
        if let Some(old) = self.by_owner.get(&owner_key).copied() {
            self.close_pc(now, old, None);
        }
        let mutes = (owner_key.2 == MediaRole::Play)
            .then(|| self.play_mutes.get(&(owner_key.0, owner_key.1.clone())).copied())
            .flatten();
        self.by_owner.insert(owner_key, id);
        self.by_ufrag.insert(ufrag, id);
        bump(&self.counters.pcs_opened);
        // A new play connection of a stream the session muted stays muted.
        if let Some(mutes) = mutes
            && let Some(Pc {
                role: Role::Play(playing),
                ..
            }) = self.pc(id)
        {
            for t in &mut playing.tracks {
                t.muted = mutes[usize::from(t.kind.is_video())];
            }
        }
    }

    /// A player stops (`mute`) or resumes receiving one track of a stream: kept for the
    /// session's play connections of the stream, this one and later ones, until it stops
    /// playing. Resuming video asks the publisher for a keyframe, where the player's decoder
    /// starts again.
    pub(super) fn mute_play(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &StreamKey,
        track: TrackKind,
        mute: bool,
    ) {
        let video = track == TrackKind::Video;
        let slot = (session, key.clone());
        let mut mutes = self.play_mutes.get(&slot).copied().unwrap_or_default();
        mutes[usize::from(video)] = mute;
        if mutes == [false, false] {
            self.play_mutes.remove(&slot);
        } else {
            self.play_mutes.insert(slot, mutes);
        }
        let Some(id) = self
            .by_owner
            .get(&(session, key.clone(), MediaRole::Play))
            .copied()
        else {
            return;
        };
        let Some(Pc {
            role: Role::Play(playing),
            ..
        }) = self.pc(id)
        else {
            return;
        };
        let mut resumed_video = false;
        for t in playing.tracks.iter_mut().filter(|t| t.kind.is_video() == video) {
            if t.muted && !mute {
                t.rewriter.resume();
                resumed_video |= video;
            }
            t.muted = mute;
        }
        if resumed_video {
            self.request_keyframe(now, key, KeyframeRequestKind::Pli);
        }
    }

    pub(super) fn offer_publish(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &StreamKey,
        sdp: &str,
        setup_active: bool,
    ) -> Result<String, HuddleError> {
        let (rtc, answer) = self.build_rtc(now, sdp, MediaRole::Publish, setup_active)?;
        let (publishing, kinds) = Publishing::negotiated(&rtc, mids_of(&answer));
        let id = self.insert(now, rtc, session, key.clone(), Role::Publish(publishing));
        if !kinds.audio && !kinds.video {
            self.close_pc(now, id, None);
            return Err(invalid("the offer sends neither Opus audio nor VP8 video"));
        }
        self.register(now, id);
        self.next_epoch = self.next_epoch.wrapping_add(1);
        let epoch = self.next_epoch;
        if let Some(Pc {
            role: Role::Publish(publishing),
            ..
        }) = self.pc(id)
        {
            publishing.epoch = epoch;
        }
        self.install_publisher(now, id, session, key, kinds);
        Ok(answer)
    }

    /// Makes PC `id` (negotiated, registered) the stream's publisher: it replaces the earlier
    /// one, and the play offers that waited for media are answered.
    pub(super) fn install_publisher(
        &mut self,
        now: Instant,
        id: usize,
        session: SessionId,
        key: &StreamKey,
        kinds: Kinds,
    ) {
        let entry = self.streams.entry(key.clone()).or_default();
        let previous = entry.publisher.replace(id);
        entry.publisher_session = Some(session);
        entry.kinds = Some(kinds);
        let pending = std::mem::take(&mut entry.pending);
        if let Some(old) = previous.filter(|old| *old != id) {
            self.close_pc(now, old, None);
        }
        info!(%session, stream = %key.1, audio = kinds.audio, video = kinds.video, "publish media negotiated");
        self.attach_recording(now, key);
        // The play offers that waited for this publisher.
        for p in pending {
            if p.deadline < now {
                self.signals
                    .push_back((p.session, ServerMsg::error(Some(p.seq), &not_started())));
                continue;
            }
            // The wait for the publisher counts in the player's first-packet latency.
            let offered = p.deadline.checked_sub(self.config.play_wait).unwrap_or(now);
            match self.accept_play(now, offered, p.session, key, &p.offer, kinds) {
                Ok(sdp) => self.answer(p.session, p.seq, key, MediaRole::Play, sdp),
                Err(e) => self
                    .signals
                    .push_back((p.session, ServerMsg::error(Some(p.seq), &e))),
            }
        }
    }

    pub(super) fn offer_play(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &StreamKey,
        seq: u32,
        offer: PlayOffer,
    ) -> Result<Option<String>, HuddleError> {
        let kinds = self.streams.get(key).and_then(|e| e.kinds);
        if let Some(kinds) = kinds {
            return self.accept_play(now, now, session, key, &offer, kinds).map(Some);
        }
        // Published, but the publisher has not negotiated its media yet: wait for it.
        parse_offer(&offer.sdp)?;
        let deadline = now + self.config.play_wait;
        let entry = self.streams.entry(key.clone()).or_default();
        if let Some(i) = entry.pending.iter().position(|p| p.session == session) {
            // A newer offer of the same session replaces the older one.
            let old = entry.pending.remove(i);
            let e = HuddleError::new(ErrorCode::MEDIA_OFFER_INVALID, "replaced by a newer offer");
            self.signals
                .push_back((session, ServerMsg::error(Some(old.seq), &e)));
        }
        let entry = self.streams.entry(key.clone()).or_default();
        if entry.pending.len() >= MAX_PENDING_PER_STREAM {
            return Err(HuddleError::new(
                ErrorCode::SERVER_BUSY,
                "too many play offers wait for this stream",
            ));
        }
        entry.pending.push(Pending {
            session,
            seq,
            offer,
            deadline,
        });
        self.pending_deadlines.push(Reverse(deadline));
        Ok(None)
    }

    pub(super) fn accept_play(
        &mut self,
        now: Instant,
        offered: Instant,
        session: SessionId,
        key: &StreamKey,
        offer: &PlayOffer,
        kinds: Kinds,
    ) -> Result<String, HuddleError> {
        let sdp = restrict_offer(&offer.sdp, kinds);
        let (rtc, answer) = self.build_rtc(now, &sdp, MediaRole::Play, offer.setup_active)?;
        let mut rtc = rtc;
        let mut playing = Playing::default();
        for mid in mids_of(&answer) {
            if let Some(m) = rtc.media(mid)
                && !m.disabled()
                && m.direction().is_sending()
            {
                let kind = m.kind();
                add_track(&mut rtc, &mut playing, mid, kind, offer.red_depth);
            }
        }
        let id = self.insert(now, rtc, session, key.clone(), Role::Play(playing));
        if let Some(pc) = self.pc(id) {
            pc.offered = Some(offered);
        }
        if self.pc(id).is_none_or(|pc| pc.tracks().is_empty()) {
            self.close_pc(now, id, None);
            let has = match (kinds.audio, kinds.video) {
                (true, true) => "Opus audio and VP8 video",
                (true, false) => "Opus audio",
                _ => "VP8 video",
            };
            return Err(invalid(format!(
                "the offer receives none of the stream's media (it has {has})"
            )));
        }
        self.register(now, id);
        self.streams.entry(key.clone()).or_default().players.push(id);
        info!(%session, stream = %key.1, "play media negotiated");
        Ok(answer)
    }

    /// Closes a PC. `notify`: tell its owner (`media_state`) why.
    pub(super) fn close_pc(
        &mut self,
        now: Instant,
        id: usize,
        notify: Option<(PeerState, ErrorCode, String)>,
    ) {
        let Some(mut pc) = self.pcs.get_mut(id).and_then(Option::take) else {
            return;
        };
        self.free.push(id);
        self.live -= 1;
        if self.by_ufrag.get(&pc.ufrag) == Some(&id) {
            self.by_ufrag.remove(&pc.ufrag);
        }
        for a in &pc.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        let owner_key = (pc.owner, pc.key.clone(), pc.media_role());
        if self.by_owner.get(&owner_key) == Some(&id) {
            self.by_owner.remove(&owner_key);
            bump(&self.counters.pcs_closed);
        }
        if let Some(entry) = self.streams.get_mut(&pc.key) {
            if entry.publisher == Some(id) {
                entry.publisher = None;
            }
            entry.players.retain(|p| *p != id);
            if entry.is_unused() && entry.publisher_session.is_none() {
                self.drop_stream(&pc.key);
            }
        }
        // Tell the peer (RTCP BYE, DTLS close_notify) and send what that produced.
        if pc.rtc.is_alive() && pc.rtc.close().is_ok() {
            for _ in 0..32 {
                match pc.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => self.push_transmit(t),
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
                if !pc.rtc.is_alive() {
                    break;
                }
            }
        }
        let _ = now;
        if let Some((state, code, message)) = notify {
            self.signals.push_back((
                pc.owner,
                ServerMsg::MediaState {
                    stream_id: pc.key.1.clone(),
                    kind: pc.media_role(),
                    state,
                    code,
                    message,
                },
            ));
        }
    }

    pub(super) fn fail_pc(&mut self, now: Instant, id: usize, why: &str) {
        let Some(pc) = self.pc(id) else { return };
        let role = pc.media_role();
        let code = failure_code(role);
        info!(session = %pc.owner, stream = %pc.key.1, ?role, why, "media connection failed");
        self.close_pc(now, id, Some((PeerState::Failed, code, why.to_string())));
    }

    /// The stream is no longer published.
    pub(super) fn close_publish(&mut self, now: Instant, key: &StreamKey) {
        let Some(mut entry) = self.streams.remove(key) else {
            return;
        };
        entry.publisher_session = None;
        let publisher = entry.publisher.take();
        let players = std::mem::take(&mut entry.players);
        let pending = std::mem::take(&mut entry.pending);
        // Put it back empty so that close_pc finds consistent state; it is removed below.
        self.streams.insert(key.clone(), entry);
        if let Some(p) = publisher {
            self.close_pc(now, p, None);
        }
        for p in players {
            self.close_pc(
                now,
                p,
                Some((
                    PeerState::Closed,
                    ErrorCode::STREAM_NOT_FOUND,
                    "the stream's publisher stopped".into(),
                )),
            );
        }
        for p in pending {
            self.signals
                .push_back((p.session, ServerMsg::error(Some(p.seq), &not_started())));
        }
        if self.streams.get(key).is_some_and(StreamEntry::is_unused) {
            self.drop_stream(key);
        }
    }

    /// Closes the PC that `session` has for `key` in `role`, if any.
    pub(super) fn close_owned(&mut self, now: Instant, session: SessionId, key: &StreamKey, role: MediaRole) {
        if let Some(id) = self.by_owner.get(&(session, key.clone(), role)).copied() {
            self.close_pc(now, id, None);
        }
    }

    pub(super) fn close_play(&mut self, now: Instant, session: SessionId, key: &StreamKey) {
        self.close_owned(now, session, key, MediaRole::Play);
        self.play_mutes.remove(&(session, key.clone()));
        if let Some(entry) = self.streams.get_mut(key) {
            entry.pending.retain(|p| p.session != session);
            if entry.is_unused() && entry.publisher_session.is_none() {
                self.drop_stream(key);
            }
        }
    }

    pub(super) fn session_gone(&mut self, now: Instant, session: SessionId) {
        self.play_mutes.retain(|(s, _), _| *s != session);
        let published: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, e)| e.publisher_session == Some(session))
            .map(|(k, _)| k.clone())
            .collect();
        for key in published {
            self.close_publish(now, &key);
        }
        let owned: Vec<usize> = self
            .by_owner
            .iter()
            .filter(|((s, _, _), _)| *s == session)
            .map(|(_, id)| *id)
            .collect();
        for id in owned {
            self.close_pc(now, id, None);
        }
        let mut empty = Vec::new();
        for (key, entry) in &mut self.streams {
            entry.pending.retain(|p| p.session != session);
            if entry.is_unused() && entry.publisher_session.is_none() {
                empty.push(key.clone());
            }
        }
        for key in empty {
            self.drop_stream(&key);
        }
    }

    /// Gives the stream a recording tap when the recorder wants it recorded, its publisher is a
    /// client of this node (a relay's stream is recorded on the publisher's node) and it has
    /// no running tap; asks the publisher for a keyframe so that the video starts at once.
    pub(super) fn attach_recording(&mut self, now: Instant, key: &StreamKey) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        let Some(entry) = self.streams.get(key) else {
            return;
        };
        let Some(pid) = entry.publisher else { return };
        if entry.record.as_ref().is_some_and(crate::recording::Tap::is_live) {
            return;
        }
        if self
            .pcs
            .get(pid)
            .and_then(|p| p.as_deref())
            .is_none_or(|p| p.relay.is_some())
        {
            return;
        }
        let Some(tap) = recorder.tap(key.0, &key.1) else {
            return;
        };
        if let Some(entry) = self.streams.get_mut(key) {
            entry.record = Some(tap);
        }
        self.request_keyframe(now, key, KeyframeRequestKind::Pli);
    }

    /// Removes a stream's entry, reporting it through [`Sfu::poll_released`].
    pub(super) fn drop_stream(&mut self, key: &StreamKey) {
        if self.streams.remove(key).is_some() {
            self.released.push(key.clone());
        }
    }

    /// The ICE-TCP candidates: each candidate's IP with the TCP port.
    pub(super) fn tcp_candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.config.tcp_port.into_iter().flat_map(|port| {
            self.config
                .candidates
                .iter()
                .map(move |c| SocketAddr::new(c.ip(), port))
        })
    }
}

pub(super) fn invalid(why: impl std::fmt::Display) -> HuddleError {
    HuddleError::new(ErrorCode::MEDIA_OFFER_INVALID, why.to_string())
}

/// Parses a client's SDP offer. The parser's own message (positions, pointers, its internals) is
/// logged, never answered: the client gets the project's words.
pub(super) fn parse_offer(sdp: &str) -> Result<SdpOffer, HuddleError> {
    SdpOffer::from_sdp_string(sdp).map_err(|e| {
        debug!(error = %e, "SDP offer refused");
        invalid("the SDP offer could not be parsed")
    })
}

/// The answer with the user name of its origin line (`o=`) replaced by `-`: str0m writes its name
/// and version there, which tells a stranger which library (and which of its bugs) to aim at.
pub(super) fn plain_origin(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut done = false;
    for line in sdp.split_inclusive('\n') {
        match line.strip_prefix("o=").and_then(|rest| rest.split_once(' ')) {
            Some((_, rest)) if !done => {
                done = true;
                out.push_str("o=- ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// A server-side failure to set up a PC: logged with its cause, answered as internal.
pub(super) fn setup_failed(what: &str, e: impl std::fmt::Display) -> HuddleError {
    warn!(error = %e, "{what}");
    HuddleError::new(
        ErrorCode::INTERNAL,
        "the media plane could not set up the connection",
    )
}

pub(super) fn failure_code(role: MediaRole) -> ErrorCode {
    match role {
        MediaRole::Publish => ErrorCode::PUBLISH_TEMPORARY_BREAK,
        MediaRole::Play => ErrorCode::PLAY_TEMPORARY_BREAK,
    }
}

/// The offer with the media lines of kinds the publisher does not send made inactive, so that the
/// answer declines them (`a=inactive`) instead of promising media that never comes.
pub(super) fn restrict_offer(sdp: &str, kinds: Kinds) -> String {
    let mut out = String::with_capacity(sdp.len() + 16);
    let mut reject = false;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if let Some(m) = bare.strip_prefix("m=") {
            reject = (m.starts_with("audio") && !kinds.audio) || (m.starts_with("video") && !kinds.video);
        }
        if reject && matches!(bare, "a=sendrecv" | "a=recvonly" | "a=sendonly") {
            out.push_str("a=inactive");
            out.push_str(&line[bare.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The media line IDs of an SDP (its `a=mid:` lines).
pub(super) fn mids_of(sdp: &str) -> Vec<Mid> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(Mid::from)
        .collect()
}

pub(super) fn not_started() -> HuddleError {
    HuddleError::new(
        ErrorCode::STREAM_NOT_FOUND,
        "the stream's publisher has not started its media",
    )
}

/// Sets up a played track for `mid` if `rtc` can send `kind` with our codec.
pub(super) fn add_track(rtc: &mut Rtc, playing: &mut Playing, mid: Mid, kind: MediaKind, red_depth: u8) {
    let (codec, clock_rate) = if kind.is_audio() {
        (Codec::Opus, 48_000)
    } else {
        (Codec::Vp8, 90_000)
    };
    let Some(media) = rtc.media(mid) else { return };
    let remote = media.remote_pts();
    let Some((pt, red_pt)) = rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
        .map(|p| (p.pt(), p.red()))
    else {
        return;
    };
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return;
    };
    if kind.is_video() {
        // str0m's default send buffer (1000 packets, 3 s), without its cap on the share of
        // retransmissions (15 %): on a lossy downlink the cap dropped the queued answers to a
        // player's NACKs, and the player then waited for its five NACKs to run out (about 0.9 s
        // at 100 ms RTT) before asking for a keyframe. The retransmissions are what the player
        // lost, no more.
        tx.set_rtx_cache(1000, Duration::from_secs(3), None);
    }
    let mut rng = rand::thread_rng();
    playing.tracks.push(TrackOut {
        kind,
        mid,
        pt,
        red_pt,
        red_distances: super::red::distances(red_depth),
        rewriter: Rewriter::new(clock_rate, rng.gen_range(1..0x4000), rng.r#gen()),
        muted: false,
        written: 0,
        resent: 0,
        loss: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_as_loss_but_not_reordering_or_restarts() {
        let mut p = Publishing::default();
        let (a, b) = (Ssrc::from(1), Ssrc::from(2));
        assert_eq!(p.count_gap(a, 100), 0);
        assert_eq!(p.count_gap(a, 101), 0);
        assert_eq!(p.count_gap(a, 104), 2);
        // Late (reordered or retransmitted) packets are not counted again.
        assert_eq!(p.count_gap(a, 102), 0);
        assert_eq!(p.count_gap(a, 104), 0);
        // Another SSRC has its own numbers.
        assert_eq!(p.count_gap(b, 7), 0);
        assert_eq!(p.count_gap(b, 9), 1);
        // A jump beyond MAX_COUNTED_GAP is a restarted source.
        assert_eq!(p.count_gap(a, 105 + MAX_COUNTED_GAP + 1), 0);
        assert_eq!(p.count_gap(a, 106 + MAX_COUNTED_GAP + 1), 0);
    }

    /// The server answers `actpass` as the DTLS client for a client whose login said it starts
    /// ICE on such an answer (`setup_active`: the SDK), publisher or player; a client
    /// that did not say so (an older SDK, a relay link) gets `passive` as before, as does every
    /// client when the server's `dtls_active` is off; an offer that names its role gets the
    /// other one.
    #[test]
    fn the_answer_takes_the_dtls_client_role_unless_the_offer_took_it() {
        use std::sync::Arc;

        use super::super::{Counters, SfuConfig};

        let now = Instant::now();
        let mut client = RtcConfig::new().build(now);
        client.add_local_candidate(Candidate::host("10.0.0.1:5000".parse().unwrap(), "udp").unwrap());
        let mut api = client.sdp_api();
        api.add_media(
            str0m::media::MediaKind::Audio,
            str0m::media::Direction::SendOnly,
            None,
            None,
            None,
        );
        let offer = api.apply().unwrap().0.to_sdp_string();
        assert!(offer.contains("a=setup:actpass"), "{offer}");
        // (server's dtls_active, client's setup_active, offered, answered)
        for (dtls_active, setup_active, offered, answered) in [
            (true, true, "actpass", "active"),
            (true, false, "actpass", "passive"),
            (false, true, "actpass", "passive"),
            (false, false, "actpass", "passive"),
            (true, true, "active", "passive"),
            (true, false, "active", "passive"),
            (true, true, "passive", "active"),
            (true, false, "passive", "active"),
            (false, false, "passive", "active"),
        ] {
            let mut config = SfuConfig::new("127.0.0.1:7882".parse().unwrap());
            config.dtls_active = dtls_active;
            let sfu = Sfu::new(config, Arc::new(Counters::default()));
            let publish = offer.replace("a=setup:actpass", &format!("a=setup:{offered}"));
            let play = publish.replace("a=sendonly", "a=recvonly");
            for (role, sdp) in [(MediaRole::Publish, publish), (MediaRole::Play, play)] {
                let (_, answer) = sfu.build_rtc(now, &sdp, role, setup_active).unwrap();
                assert!(
                    answer.contains(&format!("a=setup:{answered}\r\n")),
                    "dtls_active {dtls_active}, setup_active {setup_active}, {role:?}, offered {offered}: {answer}"
                );
            }
        }
    }

    #[test]
    pub(super) fn the_answer_origin_names_no_library() {
        let sdp = "v=0\r\no=str0m-0.25.0 123 2 IN IP4 0.0.0.0\r\ns=-\r\n";
        assert_eq!(
            super::plain_origin(sdp),
            "v=0\r\no=- 123 2 IN IP4 0.0.0.0\r\ns=-\r\n"
        );
        assert_eq!(super::plain_origin("v=0\r\n"), "v=0\r\n");
    }

    #[test]
    pub(super) fn restrict_offer_makes_missing_kinds_inactive() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n";
        let audio_only = restrict_offer(
            sdp,
            Kinds {
                audio: true,
                video: false,
            },
        );
        assert_eq!(
            audio_only,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=inactive\r\n"
        );
        let both = Kinds {
            audio: true,
            video: true,
        };
        assert_eq!(restrict_offer(sdp, both), sdp);
    }
}
