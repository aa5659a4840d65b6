//! Forwarding: a publisher's RTP written to every player's PC (rewritten; audio as RED of the
//! SDK's depth for players with RED, plain for the others), keyframe requests passed up, and
//! the written PCs flushed.

use std::cmp::Reverse;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use huddle_proto::{ErrorCode, PeerState, ServerMsg};
use str0m::media::{KeyframeRequestKind, Mid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info};

use crate::recording::{RecPacket, Sent, Track};

use super::pc::{Link, Pc, Playing, Role, TrackOut};
use super::types::{bump, queue_transmit};
use super::{KEYFRAME_REQUEST_INTERVAL, Sfu, StreamKey, padding, red};

/// How long a player's reported loss counts for the publisher's FEC: two of the 5 s receiver
/// report intervals that browsers and str0m use for audio, and some slack.
pub(super) const PLAYER_LOSS_WINDOW: Duration = Duration::from_secs(11);

impl Sfu {
    /// Marks a PC mutated by more than forwarded RTP, to be given the time and drained in full.
    pub(super) fn mark_dirty(&mut self, id: usize) {
        if let Some(pc) = self.pc(id) {
            pc.dirty_full = true;
            if !pc.dirty {
                pc.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Drains every PC mutated from outside its own drive, so that forwarded packets leave in
    /// the same pass as the packet that brought them.
    ///
    /// A PC that was only written RTP takes str0m's fast path, `Rtc::send_written_rtp` (our
    /// patch, vendor/patches/0002-send-fast-path.patch): its packets are protected and queued for the socket
    /// without running its other timers, which keep their schedule. That halves the SFU's own
    /// time per forwarded packet (benches/forward.rs). Otherwise (a keyframe request, or a PC
    /// the fast path does not take) str0m sends what was written when time moves, so the PC is
    /// given the time and drained in full.
    pub(super) fn flush(&mut self, now: Instant) {
        while let Some(id) = self.dirty.pop() {
            let Sfu {
                pcs,
                transmits,
                counters,
                ..
            } = self;
            let Some(pc) = pcs.get_mut(id).and_then(|p| p.as_deref_mut()) else {
                continue;
            };
            if !std::mem::take(&mut pc.dirty_full) && self.fast_path {
                let sent = pc
                    .rtc
                    .send_written_rtp(now, |t| queue_transmit(transmits, counters, t));
                if sent {
                    pc.dirty = false;
                    continue;
                }
            }
            if let Err(e) = pc.rtc.handle_input(Input::Timeout(now)) {
                debug!(error = %e, "media timeout handling failed");
                self.fail_pc(now, id, "the connection failed");
                continue;
            }
            self.drive(id, now);
        }
    }

    /// Drains one PC's output until it returns a timeout.
    pub(super) fn drive(&mut self, id: usize, now: Instant) {
        loop {
            let Some(pc) = self.pc(id) else { return };
            pc.dirty = false;
            if !pc.rtc.is_alive() {
                self.close_pc(now, id, None);
                return;
            }
            match pc.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if pc.scheduled != Some(t) {
                        pc.scheduled = Some(t);
                        self.timers.push(Reverse((t, id)));
                    }
                    return;
                }
                Ok(Output::Transmit(t)) => self.push_transmit(t),
                Ok(Output::Event(e)) => self.on_event(now, id, e),
                Err(e) => {
                    debug!(error = %e, "media output failed");
                    self.fail_pc(now, id, "the connection failed");
                    return;
                }
            }
        }
    }

    pub(super) fn on_event(&mut self, now: Instant, id: usize, event: Event) {
        match event {
            Event::RtpPacket(packet) => self.forward(now, id, &packet),
            Event::KeyframeRequest(req) => {
                if let Some(pc) = self.pc(id)
                    && matches!(pc.role, Role::Play(_))
                {
                    let key = pc.key.clone();
                    self.request_keyframe(now, &key, req.kind);
                }
            }
            Event::Connected => {
                let Some(pc) = self.pc(id) else { return };
                pc.link = Link::Connected;
                let (owner, key, role) = (pc.owner, pc.key.clone(), pc.media_role());
                // A new viewer needs a keyframe to start decoding; so do the players of a relay
                // publisher that (re)connected (they saw the stream stop).
                let has_video = pc.tracks().iter().any(|t| t.kind.is_video())
                    || (pc.relay.is_some()
                        && matches!(&pc.role, Role::Publish(p) if p.mids.iter().any(|(_, k)| k.is_video())));
                bump(&self.counters.pcs_connected);
                info!(session = %owner, stream = %key.1, ?role, "media connected");
                self.signals.push_back((
                    owner,
                    ServerMsg::MediaState {
                        stream_id: key.1.clone(),
                        kind: role,
                        state: PeerState::Connected,
                        code: ErrorCode::OK,
                        message: String::new(),
                    },
                ));
                if has_video {
                    self.request_keyframe(now, &key, KeyframeRequestKind::Pli);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail_pc(now, id, "ICE disconnected (no connectivity checks)");
            }
            Event::Closed => {
                // The client closed it (DTLS close_notify): nothing to tell.
                self.close_pc(now, id, None);
            }
            // Cumulative per media line: the counters get what is new since the last report.
            Event::MediaEgressStats(stats) => {
                self.count_nacks(id, stats.mid, stats.nacks, true);
                self.count_resent(id, stats.mid, stats.packets);
                self.note_player_loss(now, id, stats.mid, stats.loss);
            }
            Event::MediaIngressStats(stats) => {
                self.count_nacks(id, stats.mid, stats.nacks, false);
                // Once a second on a publish PC: players' reports that aged out stop counting.
                if let Some(key) = self.pcs.get(id).and_then(|p| p.as_deref()).map(|p| p.key.clone()) {
                    self.report_players_loss(now, &key);
                }
            }
            _ => {}
        }
    }

    /// A player's receiver reports on its audio (`loss`: str0m's average of the fraction lost
    /// of the reports since its last statistics event). Kept only for players that get the
    /// audio without RED, for whom the publisher's in-band FEC (Opus LBRR) is the only repair.
    fn note_player_loss(&mut self, now: Instant, id: usize, mid: Mid, loss: Option<f32>) {
        let Some(loss) = loss.filter(|l| l.is_finite()) else {
            return;
        };
        let Some(pc) = self.pcs.get_mut(id).and_then(|p| p.as_deref_mut()) else {
            return;
        };
        let key = pc.key.clone();
        let Role::Play(playing) = &mut pc.role else {
            return;
        };
        let Some(track) = playing
            .tracks
            .iter_mut()
            .find(|t| t.mid == mid && t.kind.is_audio() && t.red_pt.is_none())
        else {
            return;
        };
        track.loss = Some((now, loss.clamp(0.0, 1.0)));
        self.report_players_loss(now, &key);
    }

    /// Players' loss upstream: the server's receiver reports on the publisher's audio say at
    /// least the worst loss that a player without RED reported in the last
    /// [`PLAYER_LOSS_WINDOW`] (str0m patch 0005, `StreamRx::set_reported_loss_floor`), as
    /// LiveKit does for audio. A publisher's encoder sizes its in-band FEC from the loss its
    /// receiver reports show (browsers' Opus and the SDK's adapter both read them), so it
    /// covers those players' downlinks too. Players with RED get the publisher's redundancy
    /// and do not count. The loss counters of the reports stay the uplink's: the publisher's
    /// quality events read those.
    pub(super) fn report_players_loss(&mut self, now: Instant, key: &StreamKey) {
        let Some(entry) = self.streams.get(key) else {
            return;
        };
        let worst = entry
            .players
            .iter()
            .filter_map(|&i| self.pcs.get(i)?.as_deref())
            .flat_map(|pc| pc.tracks())
            .filter_map(|t| t.loss)
            .filter(|(at, _)| now.saturating_duration_since(*at) <= PLAYER_LOSS_WINDOW)
            .map(|(_, l)| l)
            .fold(0.0f32, f32::max);
        let Some(publisher) = entry.publisher else {
            return;
        };
        let floor = if self.config.report_players_loss {
            (worst * 256.0).floor().clamp(0.0, 255.0) as u8
        } else {
            0
        };
        let Some(pc) = self.pcs.get_mut(publisher).and_then(|p| p.as_deref_mut()) else {
            return;
        };
        let Role::Publish(publishing) = &mut pc.role else {
            return;
        };
        if publishing.reported_loss_floor == floor {
            return;
        }
        publishing.reported_loss_floor = floor;
        let audio: Vec<Mid> = publishing
            .mids
            .iter()
            .filter(|(_, k)| k.is_audio())
            .map(|(m, _)| *m)
            .collect();
        for mid in audio {
            if let Some(rx) = pc.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.set_reported_loss_floor(floor);
            }
        }
    }

    /// Adds to the NACK counters what a PC's media line reports beyond its last report:
    /// `received` (from a player, egress statistics) or sent (to a publisher, ingress).
    fn count_nacks(&mut self, id: usize, mid: Mid, total: u64, received: bool) {
        let Sfu { pcs, counters, .. } = self;
        let Some(pc) = pcs.get_mut(id).and_then(|p| p.as_deref_mut()) else {
            return;
        };
        let new = match pc.nacks.iter_mut().find(|(m, _)| *m == mid) {
            Some((_, seen)) => {
                let new = total.saturating_sub(*seen);
                *seen = (*seen).max(total);
                new
            }
            None => {
                pc.nacks.push((mid, total));
                total
            }
        };
        if new > 0 {
            let c = if received {
                &counters.nacks_in
            } else {
                &counters.nacks_out
            };
            c.fetch_add(new, Ordering::Relaxed);
        }
    }

    /// Counts the retransmissions of a played track: str0m's count of packets sent on it
    /// (`sent`, retransmissions included) beyond the packets written to it. Packets written
    /// but not yet sent make that short for a moment; the count only grows, so they are
    /// counted at a later report.
    fn count_resent(&mut self, id: usize, mid: Mid, sent: u64) {
        let Sfu { pcs, counters, .. } = self;
        let Some(Pc {
            role: Role::Play(Playing { tracks }),
            ..
        }) = pcs.get_mut(id).and_then(|p| p.as_deref_mut())
        else {
            return;
        };
        let Some(track) = tracks.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        let resent = sent.saturating_sub(track.written);
        if resent > track.resent {
            counters
                .rtx_sent
                .fetch_add(resent - track.resent, Ordering::Relaxed);
            track.resent = resent;
        }
    }

    /// Forwards one packet of a publisher to every player of its stream whose media can leave
    /// (connected, or keyed as its DTLS client: see the loop).
    ///
    /// Audio goes to the players that negotiated RED (RFC 2198) as RED of the depth each
    /// waits for (`red::distances`), on their RED payload type, whatever redundancy the publisher sent (`red::History`); the
    /// others get the primary block alone, as plain Opus, preceded by the frames that were lost
    /// upstream and that the packet's redundant blocks carry (see [`red`]). A browser's
    /// padding-only packets on the audio are dropped and the audio numbered without them (see
    /// [`padding`]).
    pub(super) fn forward(&mut self, now: Instant, from: usize, packet: &RtpPacket) {
        bump(&self.counters.rtp_in);
        let Sfu {
            pcs,
            streams,
            counters,
            dirty,
            ..
        } = self;
        let Some(Pc {
            rtc: src_rtc,
            role: Role::Publish(src),
            key: src_key,
            offered,
            relay,
            ..
        }) = pcs.get_mut(from).and_then(|p| p.as_deref_mut())
        else {
            return;
        };
        counters
            .rtp_bytes_in
            .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
        // A client's publish only: a relay's link between nodes is not a publisher's wait.
        if let Some(at) = offered.take()
            && relay.is_none()
        {
            counters
                .first_packet
                .observe(false, now.saturating_duration_since(at));
        }
        let Some(kind) = src.kind_of(src_rtc, packet.header.ssrc) else {
            return;
        };
        let source = (u64::from(src.epoch) << 32) | u64::from(*packet.header.ssrc);
        let seq = *packet.seq_no;
        let lost = src.count_gap(packet.header.ssrc, seq);
        if lost > 0 {
            counters.rtp_lost.fetch_add(lost, Ordering::Relaxed);
        }
        // Audio is forwarded without a browser's padding-only packets, numbered as if they
        // had never been (see `padding`).
        let seq = if kind.is_audio() {
            if padding::AudioSeq::is_padding(&packet.payload) {
                src.audio_seq.on_padding();
                return;
            }
            match src
                .audio_seq
                .map(packet.header.ssrc, seq, packet.header.timestamp)
            {
                Some(s) => s,
                None => return,
            }
        } else {
            seq
        };
        // The primary's payload type when this is a RED packet.
        let red_primary = match src.red_in {
            Some((red_pt, opus_pt)) if kind.is_audio() && packet.header.payload_type == red_pt => {
                Some(opus_pt)
            }
            _ => None,
        };
        let last_audio_seq = if kind.is_audio() {
            let last = src.last_audio_seq;
            if last.is_none_or(|l| seq > l) {
                src.last_audio_seq = Some(seq);
            }
            last
        } else {
            None
        };
        let ts = packet.header.timestamp;
        // Audio as plain Opus: the primary and the frames lost upstream that its redundancy
        // restores (`None`: malformed RED, not forwarded), into the publisher's history for
        // the players with RED, who get the frames before it at the SDK's distances.
        let (plain, before) = if kind.is_audio() {
            let plain = match red_primary {
                Some(opus_pt) => red::split(&packet.payload, *opus_pt).map(|split| {
                    // Every frame its redundancy carries goes into the history (a frame lost
                    // upstream further back than the gap before this packet comes back here).
                    for (s, t, b) in red::carried(&split, seq, ts) {
                        src.history.push(s, t, Arc::from(b));
                    }
                    PlainAudio {
                        deep: split
                            .redundant
                            .iter()
                            .map(|(offset, _)| u64::from(*offset / red::FRAME_TICKS))
                            .eq(red::DISTANCES.iter().rev().copied()),
                        primary: Arc::from(split.primary),
                        recovered: red::recover(&split, last_audio_seq, seq, ts)
                            .map(|(s, t, b)| (s, t, Arc::from(b)))
                            .collect(),
                    }
                }),
                None => Some(PlainAudio {
                    deep: false,
                    primary: packet.payload.clone(),
                    recovered: Vec::new(),
                }),
            };
            // The frames before it at each depth players are sent (`red::distances`).
            let before =
                [&red::DISTANCES[..], &red::NEAR_DISTANCES[..]].map(|d| (d, src.history.before(seq, ts, d)));
            if let Some(p) = &plain {
                src.history.push(seq, ts, p.primary.clone());
            }
            (plain, before)
        } else {
            (
                None,
                [&red::DISTANCES[..], &red::NEAR_DISTANCES[..]].map(|d| (d, Vec::new())),
            )
        };
        // The RED payload for the players with RED, per payload type of their Opus (the same
        // for all, as a rule) and depth: made once.
        let mut wrapped: Vec<Wrapped> = Vec::new();
        let Some(entry) = streams.get_mut(src_key) else {
            return;
        };
        // A copy for the recorder, never waiting for it (`crate::recording`).
        let mut record_keyframe = None;
        if let Some(tap) = &entry.record {
            let copy = RecPacket {
                track: if kind.is_audio() {
                    Track::Audio
                } else {
                    Track::Video
                },
                source,
                seq,
                ts: packet.header.timestamp,
                marker: packet.header.marker,
                red_primary: red_primary.map(|pt| *pt),
                payload: packet.payload.clone(),
                at: packet.timestamp,
            };
            if tap.send(copy) == Sent::Closed {
                entry.record = None;
            } else if tap.take_keyframe_request() {
                record_keyframe = Some(src_key.clone());
            }
        }
        let entry = &*entry;
        let ext = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            ..ExtensionValues::default()
        };
        let no_ext = ExtensionValues::default();
        let mut forwarded = 0;
        let mut forwarded_bytes = 0;
        let mut muted = 0;
        for &pid in &entry.players {
            // Players whose media can leave now: connected, or with the server as their DTLS
            // client once its Finished is out (its SRTP keys exist then, before `Connected`
            // waits for the player's last flight; the player has its keys once that Finished
            // arrives, and drops what comes before it, as a receiver does SRTP it cannot
            // decrypt yet). Before a nominated pair, str0m sends them along the path its DTLS took
            // (patch 0010), one at a time. Not before the keys: str0m would queue the packets and
            // send them together.
            let Some(Pc {
                rtc,
                role: Role::Play(Playing { tracks }),
                link,
                dirty: queued,
                offered,
                ..
            }) = pcs.get_mut(pid).and_then(|p| p.as_deref_mut())
            else {
                continue;
            };
            if *link != Link::Connected && !rtc.can_send_media() {
                continue;
            }
            let Some(track) = tracks.iter_mut().find(|t| t.kind == kind) else {
                continue;
            };
            if track.muted {
                muted += 1;
                continue;
            }
            let mut sent = 0;
            let mut bytes = 0;
            if kind.is_audio() {
                let Some(plain) = plain.as_ref() else { continue };
                if track.red_pt.is_some() {
                    // RED of the depth the player waits for (`red::distances`), whatever the
                    // publisher sent (`red::History`); as it came when it is that already (an
                    // SDK publisher, an SDK player).
                    let pt = *track.pt;
                    let distances = track.red_distances;
                    let before = before
                        .iter()
                        .find(|(d, _)| *d == distances)
                        .map_or(&[][..], |(_, b)| &b[..]);
                    let in_view = track.rewriter.ticks_in_view(source, ts);
                    let payload = match wrapped.iter().find(|(p, d, _)| *p == pt && *d == distances) {
                        // The player's first packets: only the frames it has been sent before
                        // (`red::in_view`), made for it.
                        _ if in_view < red::deepest_ticks(distances) => {
                            Arc::from(red::wrap(pt, &plain.primary, &red::in_view(before, in_view)))
                        }
                        _ if plain.deep && distances == red::DISTANCES => packet.payload.clone(),
                        Some((_, _, b)) => b.clone(),
                        None => {
                            let b: Arc<[u8]> = Arc::from(red::wrap(pt, &plain.primary, before));
                            wrapped.push((pt, distances, b.clone()));
                            b
                        }
                    };
                    let out = Outgoing {
                        seq,
                        ts,
                        payload,
                        marker: packet.header.marker,
                        red: true,
                    };
                    let n = send_on(rtc, track, source, now, packet.timestamp, out, &ext);
                    sent += u64::from(n.is_some());
                    bytes += n.unwrap_or(0);
                } else {
                    // Plain Opus: the frames restored from the redundancy, then the primary.
                    for (s, t, b) in &plain.recovered {
                        let out = Outgoing {
                            seq: *s,
                            ts: *t,
                            payload: b.clone(),
                            marker: false,
                            red: false,
                        };
                        let n = send_on(rtc, track, source, now, packet.timestamp, out, &no_ext);
                        sent += u64::from(n.is_some());
                        bytes += n.unwrap_or(0);
                    }
                    let out = Outgoing {
                        seq,
                        ts,
                        payload: plain.primary.clone(),
                        marker: packet.header.marker,
                        red: false,
                    };
                    let n = send_on(rtc, track, source, now, packet.timestamp, out, &ext);
                    sent += u64::from(n.is_some());
                    bytes += n.unwrap_or(0);
                }
            } else {
                let out = Outgoing {
                    seq,
                    ts,
                    payload: packet.payload.clone(),
                    marker: packet.header.marker,
                    red: false,
                };
                let n = send_on(rtc, track, source, now, packet.timestamp, out, &ext);
                sent += u64::from(n.is_some());
                bytes += n.unwrap_or(0);
            }
            if sent == 0 {
                continue;
            }
            forwarded += sent;
            forwarded_bytes += bytes as u64;
            if let Some(at) = offered.take() {
                counters
                    .first_packet
                    .observe(true, now.saturating_duration_since(at));
            }
            if !*queued {
                *queued = true;
                dirty.push(pid);
            }
        }
        // Once per packet, not per player: the counters are shared by every shard's thread.
        counters.rtp_forwarded.fetch_add(forwarded, Ordering::Relaxed);
        if forwarded_bytes > 0 {
            counters
                .rtp_bytes_forwarded
                .fetch_add(forwarded_bytes, Ordering::Relaxed);
        }
        if muted > 0 {
            counters.rtp_muted.fetch_add(muted, Ordering::Relaxed);
        }
        if let Some(key) = record_keyframe {
            self.request_keyframe(now, &key, KeyframeRequestKind::Pli);
        }
    }

    /// Asks the stream's publisher for a keyframe, at most once per
    /// [`KEYFRAME_REQUEST_INTERVAL`].
    pub(super) fn request_keyframe(&mut self, now: Instant, key: &StreamKey, kind: KeyframeRequestKind) {
        let Some(entry) = self.streams.get_mut(key) else {
            return;
        };
        if entry
            .last_keyframe_request
            .is_some_and(|t| now < t + KEYFRAME_REQUEST_INTERVAL)
        {
            return;
        }
        let Some(pid) = entry.publisher else { return };
        let Some(Pc {
            rtc,
            role: Role::Publish(publishing),
            ..
        }) = self.pcs.get_mut(pid).and_then(|p| p.as_deref_mut())
        else {
            return;
        };
        let Some(mid) = publishing
            .mids
            .iter()
            .find(|(_, k)| k.is_video())
            .map(|(m, _)| *m)
        else {
            return;
        };
        let mut api = rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, None) else {
            return;
        };
        rx.request_keyframe(kind);
        entry.last_keyframe_request = Some(now);
        bump(&self.counters.keyframe_requests);
        self.mark_dirty(pid);
    }
}

/// A RED payload made once for the players of one Opus payload type and depth: (payload type,
/// `red::distances`, payload).
type Wrapped = (u8, &'static [u64], Arc<[u8]>);

/// A publisher's RED packet made plain Opus for the players without RED.
pub(super) struct PlainAudio {
    /// The publisher's RED carried the frames the SDK's players are sent (`red::DISTANCES`):
    /// forwarded as it came to them.
    pub(super) deep: bool,
    pub(super) primary: Arc<[u8]>,
    /// Frames lost upstream and restored from the redundant blocks: (seq, ts, payload).
    pub(super) recovered: Vec<(u64, u32, Arc<[u8]>)>,
}

/// One packet to write to a played track, in the publisher's sequence and timestamp space.
pub(super) struct Outgoing {
    pub(super) seq: u64,
    pub(super) ts: u32,
    pub(super) payload: Arc<[u8]>,
    pub(super) marker: bool,
    /// A RED payload: sent on the track's RED payload type.
    pub(super) red: bool,
}

/// Writes a packet to a played track, rewritten into the player's sequence and timestamp
/// space; returns its payload's length, or `None` when it predates the player's view of the
/// source or the track has no stream.
pub(super) fn send_on(
    rtc: &mut Rtc,
    track: &mut TrackOut,
    source: u64,
    now: Instant,
    wallclock: Instant,
    out: Outgoing,
    ext: &ExtensionValues,
) -> Option<usize> {
    let (seq, ts) = track.rewriter.map(source, out.seq, out.ts, now)?;
    let pt = match (out.red, track.red_pt) {
        (true, Some(red)) => red,
        _ => track.pt,
    };
    let mut api = rtc.direct_api();
    let tx = api.stream_tx_by_mid(track.mid, None)?;
    let bytes = out.payload.len();
    track.written += 1;
    tx.write_rtp(
        RtpWrite::new(pt, seq.into(), ts, wallclock, out.payload)
            .marker(out.marker)
            .ext_vals(ext.clone())
            // Opus is repaired by RED and in-band FEC, not NACK (browsers do not negotiate NACK
            // for audio, and str0m cannot retransmit a RED packet): only video goes to the send
            // buffer.
            .nackable(track.kind.is_video()),
    );
    Some(bytes)
}
