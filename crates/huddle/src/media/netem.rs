//! SDK publisher ↔ SFU ↔ SDK player on virtual time, through seeded impaired links.
//!
//! The harness of the end-to-end quality and outage tests (`docs/quality.md`, "The
//! virtual-time harness"), in the style of str0m's netem tests: the same code as a real call —
//! the SDK's peer connections ([`Pc`] on a [`Wire::Queue`](super::pc::Wire) instead of a
//! socket), its publisher ([`Publisher`]: the Opus encoder and its adapter, RED) and player
//! ([`Player`]: RED recovery, the jitter buffer, `AudioPlayer` decoding and time-stretching,
//! popped every 20 ms as the mixer does), the session's quality monitor
//! ([`Monitor`](crate::session::quality::Monitor)) and the server's sans-IO [`Sfu`] — driven by
//! one loop that hands each of them its datagrams and the time. Every datagram crosses a
//! seeded [`Link`] (loss, delay, jitter, outages), one per client and direction. Nothing reads
//! the clock or sleeps: a seed gives the same call on every run, however busy the machine, and
//! a 10 s call takes well under a second of CPU in a release build.
//!
//! What it leaves out: login and the WebSocket (signaling is modelled as TCP over the same
//! links: a message takes the one-way delay, plus a retransmission timeout for each time the
//! link's loss draw takes it), devices (the publisher reads samples from memory, the player's
//! frames are collected), and the ICE-TCP fallback.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_media::impair::{Impairment, Link};
use huddle_media::{
    AudioFrame, AudioSink as _, AudioSource as _, FRAME_DURATION, Playback, WavRecorder, WavSource,
};
use huddle_proto::{AppId, MediaRole, ServerMsg, StreamId, StreamQualityLevel as Level};
use huddle_server::sfu::{Command, Counters, Offer, Sfu, SfuConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;
use str0m::Event;
use tokio::sync::mpsc;

use super::pc::{Pc, SetupTiming, client_config};
use super::play::Player;
use super::publish::{AudioInput, Publisher};
use super::{MediaEvent, MediaShared, MediaUpdate, Reporter};
use crate::session::quality::Monitor;

/// The speech sample of the media tests (3.7 s, 16 kHz; read as 48 kHz).
pub(crate) const SPEECH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../huddle-media/tests/data/speech-16k.wav"
);

const SERVER: &str = "10.0.0.100:7882";
const PUBLISHER: &str = "10.0.0.1:50000";
const PLAYER: &str = "10.0.0.2:50000";

mod tcp;

/// What a signaling message costs on the wire besides its JSON: a WebSocket frame header (a
/// client's is masked) and a TLS 1.3 record's header, content type and tag.
const SIGNALING_FRAMING: usize = 8 + 22;

/// The server's messages telling the player of the stream, as sent: `stream_update` (the
/// stream added to the room) and `play_update` (available).
fn stream_notice_bytes() -> usize {
    let user_id = huddle_proto::UserId::new("user-1").expect("a user ID");
    let stream = huddle_proto::StreamInfo {
        user_name: huddle_proto::UserName::new(user_id.as_str()).expect("a user name"),
        user_id,
        stream_id: StreamId::new("s").expect("a stream ID"),
        extra_info: String::new(),
        mic_state: Default::default(),
        camera_state: Default::default(),
    };
    message_bytes(&ServerMsg::StreamUpdate {
        room_id: huddle_proto::RoomId::new("room-1").expect("a room ID"),
        update_type: huddle_proto::UpdateType::Add,
        streams: vec![stream],
    }) + play_update_bytes()
}

/// A `play_update` as sent.
fn play_update_bytes() -> usize {
    message_bytes(&ServerMsg::PlayUpdate {
        stream_id: StreamId::new("s").expect("a stream ID"),
        available: true,
    })
}

/// The bytes of a `media_offer` (up) or `media_answer` (down) carrying `sdp`, as the client
/// and the server serialize them, framing included.
fn media_message_bytes(up: bool, sdp: &str) -> usize {
    let stream_id = StreamId::new("s").expect("a stream ID");
    let json = if up {
        serde_json::to_string(&huddle_proto::ClientMsg::MediaOffer {
            seq: 1,
            stream_id,
            kind: MediaRole::Publish,
            sdp: sdp.to_owned(),
            red_depth: 0,
        })
    } else {
        serde_json::to_string(&ServerMsg::MediaAnswer {
            seq: 1,
            stream_id,
            kind: MediaRole::Publish,
            sdp: sdp.to_owned(),
        })
    };
    json.expect("serializable").len() + SIGNALING_FRAMING
}

/// The bytes of a client request or a server reply as sent, framing included (one segment).
fn message_bytes<M: serde::Serialize>(msg: &M) -> usize {
    serde_json::to_string(msg).expect("serializable").len() + SIGNALING_FRAMING
}

/// The server's reply to `publish` (`ok`).
fn publish_reply_bytes() -> usize {
    message_bytes(&ServerMsg::Ok { seq: 2 })
}

/// The server's reply to `play`: `ok`, then `play_update` with the availability.
fn play_reply_bytes() -> usize {
    message_bytes(&ServerMsg::Ok { seq: 2 }) + play_update_bytes()
}

/// How signaling's TCP is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signaling {
    /// Linux's loss recovery on the established connection, segment by segment
    /// ([`tcp::deliver`]: RTO = SRTT + 200 ms, tail loss probe, RACK, doubling RTOs).
    Linux,
    /// The model before: one loss draw per message, 200 ms + RTT doubling per loss.
    Legacy,
}

/// Where setup starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The publisher's `media_offer` at the call's start (already published); the player's
    /// once the server has that offer and has told the player of the stream.
    Offer,
    /// Both apps ask at the call's start (`publish`, `play`), with the session's messages:
    /// `pipelined: false`, the publisher offers on the `ok` to its publish and the player on
    /// hearing the stream is available (the SDK before); `true`, each offer goes with its
    /// request, the server holding the player's until the stream is published (the SDK now).
    Requests { pipelined: bool },
}

/// The setup choices a call runs with (the defaults are the SDK's and the server's own).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    pub(crate) signaling: Signaling,
    /// The clients' ICE pacing and DTLS timers.
    pub(crate) timing: SetupTiming,
    /// The server's receiver reports to the publisher, this often.
    pub(crate) publish_reports: Duration,
    /// The player offers RED (a player that does not, as Firefox and aiortc, gets plain Opus).
    pub(crate) player_red: bool,
    /// The server's reports to the publisher carry its players' loss (SfuConfig).
    pub(crate) report_players_loss: bool,
    /// How the publisher sends its audio: the SDK's own way, or like a stack we did not write.
    pub(crate) publisher: Sender,
    /// Where setup starts.
    pub(crate) start: Start,
    /// The server answers the clients as their DTLS client (SfuConfig::dtls_active; the
    /// harness's clients declare `setup_active`, as the SDK does).
    pub(crate) server_dtls_active: bool,
    /// What each client (publisher, player) declares of `setup_active`: with
    /// `server_dtls_active`, the server is DTLS client of a client that declares it, DTLS
    /// server of one that does not (both declare it, as the SDK does).
    pub(crate) setup_active: [bool; 2],
    /// The socket options of the server's signaling connections (its data to the clients)
    /// and of the clients' (their data to the server). Linux's defaults here, although both
    /// ends now set the thin-stream options ([`tcp::Options::thin_stream`]): the quality
    /// figures of `docs/quality.md` were measured with these, and with the options the
    /// five-seed quality calls meet other loss draws (setup ends earlier); the setup figures
    /// set them.
    pub(crate) server_tcp: tcp::Options,
    pub(crate) client_tcp: tcp::Options,
    /// The clients offer str0m's standard RTP header extensions (the SDK before) rather than
    /// the SDK's own ([`offer_extensions`](super::pc::offer_extensions)).
    pub(crate) standard_extensions: bool,
    /// The player offers video too, as the SDK's player does (it does not know what the
    /// stream carries): its `play` and the answer take two segments each. Off by default: the
    /// quality figures were measured with an audio-only player, and the video section's RTCP
    /// moves their loss draws.
    pub(crate) player_video: bool,
}

/// How a call's publisher sends audio: the SDK's way or another stack's (the same encoder and
/// connection, set up as that stack sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    /// The SDK: RED at distances 1, 3 and 6, 48 kbit/s, adaptive FEC.
    Sdk,
    /// Chromium: RED with one redundant block at distance 1 (its `red/48000/2` PT 63 and Opus
    /// 111, as str0m's), 32 kbit/s (its default for mono Opus), FEC following the reports. Not
    /// its padding-only bandwidth probes on the audio stream (str0m pads only on RTX and probe
    /// SSRCs): the server's `padding_on_the_audio_is_dropped_and_numbered_out` covers those.
    Chromium,
    /// Plain Opus, no RED offered, 48 kbit/s, with or without in-band FEC (Firefox has it on;
    /// aiortc 1.16 encodes through libavcodec's libopus with neither `fec` nor `packet_loss`
    /// set, so none).
    PlainOpus {
        /// In-band FEC, following the reports.
        fec: bool,
    },
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            signaling: Signaling::Linux,
            timing: SetupTiming::Browser,
            publish_reports: SfuConfig::new(SERVER.parse().expect("address")).publish_report_interval,
            player_red: true,
            report_players_loss: true,
            publisher: Sender::Sdk,
            start: Start::Offer,
            server_dtls_active: match std::env::var("HUDDLE_NETEM_DTLS_ACTIVE") {
                // A measurement knob (`docs/quality.md`, "Setup under loss"): the loss curve
                // with the server as DTLS server (0) or client (1, or `publisher` / `player`:
                // of that client alone), the same seeds.
                Ok(v) => v.trim() != "0",
                Err(_) => SfuConfig::new(SERVER.parse().expect("address")).dtls_active,
            },
            setup_active: match std::env::var("HUDDLE_NETEM_DTLS_ACTIVE")
                .as_deref()
                .map(str::trim)
            {
                Ok("publisher") => [true, false],
                Ok("player") => [false, true],
                _ => [true, true],
            },
            // As the server's and the SDK's signaling sockets are (huddle_udp::set_thin_stream).
            server_tcp: tcp::Options::thin_stream(),
            client_tcp: tcp::Options::thin_stream(),
            standard_extensions: false,
            // The SDK's player offers video too.
            player_video: true,
        }
    }
}

/// One client's two links.
#[derive(Debug, Clone, Default)]
pub(crate) struct Leg {
    /// Client to server.
    pub(crate) up: Impairment,
    /// Server to client.
    pub(crate) down: Impairment,
}

impl Leg {
    /// Random loss `loss` and `delay` each way, `jitter` (uniform, 0 to it) on each.
    pub(crate) fn lossy(loss: f64, delay: Duration, jitter: Duration) -> Leg {
        let mut one = Impairment::default();
        one.loss = loss;
        one.delay = delay;
        one.jitter = jitter;
        Leg {
            up: one.clone(),
            down: one,
        }
    }
}

/// The network of one call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Network {
    pub(crate) publisher: Leg,
    pub(crate) player: Leg,
    /// Spans of the call (from its start) when both clients' links carry nothing, both ways.
    pub(crate) outages: Vec<(Duration, Duration)>,
}

/// Which client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    Publisher,
    Player,
}

/// A quality event of a client's session, as the app would get it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Quality {
    /// This user's network levels (up, down): `onNetworkQuality`.
    Network(Level, Level),
    /// The published stream's quality (`onPublisherQualityUpdate`).
    Publish(crate::event::PublishStreamQuality),
    /// The played stream's quality (`onPlayerQualityUpdate`).
    Play(crate::event::PlayStreamQuality),
}

/// A message on a client's signaling connection, due at a time.
struct Signal {
    at: Instant,
    what: Sig,
}

/// What a signaling message is.
enum Sig {
    /// `who`'s `media_offer` reaches the server.
    Offer(Who, String),
    /// The server's `media_answer` reaches `who`.
    Answer(Who, String),
    /// `publish` reaches the server (with the publisher's offer when pipelined).
    Publish(Option<String>),
    /// `play` reaches the server (with the player's offer when pipelined).
    Play(Option<String>),
    /// The publisher hears `ok` for its publish.
    Published,
    /// The player hears that the stream is available (`play_update`).
    Available,
    /// The player hears that the stream is not published yet.
    Unavailable,
}

/// The server's signaling side of [`Start::Requests`].
#[derive(Default)]
struct Server {
    /// The stream is published (the publisher's `publish` was handled).
    published: bool,
    /// The player's `play` was handled.
    playing: bool,
    /// The player's offer, held until the stream is published (pipelined).
    held: Option<String>,
}

/// One client: its peer connection, its media core and its session's quality monitor.
struct Client<C> {
    pc: Pc,
    addr: SocketAddr,
    core: C,
    up: Link<Vec<u8>>,
    down: Link<Vec<u8>>,
    wake: Option<Instant>,
    monitor: Monitor,
    /// Draws the signaling losses of this client's connection.
    signaling: StdRng,
    model: Signaling,
    loss: (f64, f64),
    delay: (Duration, Duration),
    jitter: (Duration, Duration),
    /// When the last message each way (up, down) arrived: TCP delivers in order.
    delivered: (Instant, Instant),
    /// The socket options of the client's side and of the server's.
    tcp: (tcp::Options, tcp::Options),
}

impl<C> Client<C> {
    /// When a signaling message of `bytes` on the wire sent now arrives (`up`: to the server).
    fn signal_arrival(&mut self, now: Instant, up: bool, bytes: usize) -> Instant {
        let path = if up {
            tcp::Path {
                delay: self.delay.0,
                jitter: self.jitter.0,
                loss: self.loss.0,
                ack_delay: self.delay.1,
                ack_jitter: self.jitter.1,
                ack_loss: self.loss.1,
                options: self.tcp.0,
            }
        } else {
            tcp::Path {
                delay: self.delay.1,
                jitter: self.jitter.1,
                loss: self.loss.1,
                ack_delay: self.delay.0,
                ack_jitter: self.jitter.0,
                ack_loss: self.loss.0,
                options: self.tcp.1,
            }
        };
        let at = match self.model {
            Signaling::Linux => {
                let n = tcp::segments(bytes);
                tcp::deliver(now, n, &path, &mut self.signaling)
            }
            Signaling::Legacy => tcp::deliver_legacy(now, &path, &mut self.signaling),
        };
        let last = if up {
            &mut self.delivered.0
        } else {
            &mut self.delivered.1
        };
        *last = at.max(*last);
        *last
    }
}

/// What a call produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The player's audio output, one 20 ms frame per tick from the call's start (silence
    /// before the stream plays).
    pub(crate) heard: Vec<AudioFrame>,
    /// After each tick: frames the player had played from packets so far.
    pub(crate) played: Vec<u64>,
    /// When each client's peer connection reported `Connected`, from the call's start.
    pub(crate) connected: [Option<Duration>; 2],
    /// When the player's peer connection gave its first audio packet, from the call's start.
    pub(crate) first_audio: Option<Duration>,
    /// When each client got the server's answer, from the call's start.
    pub(crate) answered: [Option<Duration>; 2],
    /// When each client sent its `media_offer`, from the call's start.
    pub(crate) offered: [Option<Duration>; 2],
    /// The quality events of both sessions, in order.
    pub(crate) quality: Vec<(Duration, Who, Quality)>,
    /// Datagrams sent and lost on the four links (publisher up, down; player up, down).
    pub(crate) links: [(u64, u64); 4],
    /// The publisher's Opus FEC loss hint (percent) after each tick.
    pub(crate) loss_hint: Vec<u8>,
    /// Each signaling write: whose connection, up (to the server) or down, its bytes on the
    /// wire (WebSocket and TLS framing included).
    pub(crate) signal_writes: Vec<(Who, bool, usize)>,
    /// The SDP of each client's offer and of the server's answer to it.
    pub(crate) offer_sdp: [Option<String>; 2],
    pub(crate) answer_sdp: [Option<String>; 2],
    /// Every datagram sent on a link, in order: when (from the call's start), on which link
    /// (as in [`links`](Outcome::links)) and its size ([`traced_len`]). Where two runs of one
    /// seed part, this says when and on which link.
    pub(crate) trace: Vec<(Duration, u8, usize)>,
}

impl Outcome {
    /// Writes the player's output as a 48 kHz WAV file.
    pub(crate) fn write_wav(&self, path: &Path) {
        let mut w = WavRecorder::create(path).expect("a WAV file");
        for f in &self.heard {
            w.write_frame(f).expect("written");
        }
        w.finish().expect("completed");
    }

    /// The tick index of a time from the call's start.
    pub(crate) fn tick(at: Duration) -> usize {
        (at.as_millis() / FRAME_DURATION.as_millis()) as usize
    }
}

/// A datagram's size in [`Outcome::trace`]: its length, or 0 for DTLS (RFC 7983: first byte
/// 20–63). A handshake flight is a byte or two longer or shorter from one process to another:
/// its ECDSA signatures (and the certificate's own) are DER integers whose length follows the
/// random nonce, and aws-lc signs with a fresh one every time. Nothing draws on a datagram's
/// size (the links' loss and delay do not), so the flights are traced by count and time.
fn traced_len(d: &[u8]) -> usize {
    match d.first() {
        Some(20..=63) => 0,
        _ => d.len(),
    }
}

/// An audio source from memory: `lead_in` of silence, the speech sample (looped when
/// `looped`), then silence.
struct Speech {
    frames: Vec<AudioFrame>,
    at: usize,
    lead_in: usize,
    looped: bool,
}

impl Speech {
    fn new(lead_in: Duration, looped: bool) -> Speech {
        let mut src = WavSource::open(SPEECH, Playback::Once).expect("the speech sample");
        let mut frames = Vec::new();
        while let Some(f) = src.read_frame().expect("readable") {
            frames.push(f);
        }
        Speech {
            frames,
            at: 0,
            lead_in: (lead_in.as_millis() / FRAME_DURATION.as_millis()) as usize,
            looped,
        }
    }
}

impl huddle_media::AudioSource for Speech {
    fn read_frame(&mut self) -> huddle_media::Result<Option<AudioFrame>> {
        let i = self.at;
        self.at += 1;
        let mut frame = AudioFrame::silence(0);
        if i >= self.lead_in {
            let j = i - self.lead_in;
            let n = self.frames.len();
            if self.looped || j < n {
                frame.samples = self.frames[j % n].samples;
            }
        }
        Ok(Some(frame))
    }
}

/// A call: a publisher and a player of stream "s", each on its own leg of `network`.
pub(crate) struct Call {
    t0: Instant,
    now: Instant,
    network: Network,
    sfu: Sfu,
    server: SocketAddr,
    publisher: Client<Publisher>,
    player: Client<Player>,
    reports: mpsc::Receiver<MediaEvent>,
    signals: VecDeque<Signal>,
    /// The clients' offers not sent yet (publisher, player).
    offers: [Option<String>; 2],
    /// Where setup starts.
    start: Start,
    /// What each client declares of `setup_active`.
    setup_active: [bool; 2],
    server_side: Server,
    /// The server's messages to each client (publisher, player) written at this instant, and
    /// their bytes: they leave together (one flight) when the step's signaling is done.
    outbox: [(usize, Vec<Sig>); 2],
    next_tick: Instant,
    outage: bool,
    out: Outcome,
}

/// The reporter of one client's media task (the events go to `tx`).
fn reporter(tx: &mpsc::Sender<MediaEvent>, kind: MediaRole) -> Reporter {
    Reporter {
        events: tx.clone(),
        template: MediaEvent {
            login: 1,
            stream_id: StreamId::new("s").expect("a stream ID"),
            kind,
            generation: 1,
            update: MediaUpdate::Lost,
        },
    }
}

impl Call {
    /// A call on `network` with `seed`; the publisher sends the speech sample after `lead_in`
    /// of silence (once, or looped).
    pub(crate) fn new(network: Network, seed: u64, lead_in: Duration, looped: bool) -> Call {
        Call::with_setup(network, seed, lead_in, looped, Setup::default())
    }

    /// As [`Call::new`], with `setup`'s signaling model and client timers.
    pub(crate) fn with_setup(
        network: Network,
        seed: u64,
        lead_in: Duration,
        looped: bool,
        setup: Setup,
    ) -> Call {
        let t0 = Instant::now();
        // str0m draws its non-cryptographic values (SSRCs, first sequence numbers, ICE
        // credentials and transaction IDs, CNAMEs) from fastrand's generator of the calling
        // thread, seeded per process. A call runs on one thread: seeded here, they are the
        // seed's (the server's and both clients' from one sequence, so they do not collide).
        fastrand::seed(seed.wrapping_mul(4) + 2);
        let server: SocketAddr = SERVER.parse().expect("address");
        let mut config = SfuConfig::new(server);
        config.dtls_seed = Some(seed.wrapping_mul(4) + 3);
        config.publish_report_interval = setup.publish_reports;
        config.report_players_loss = setup.report_players_loss;
        config.dtls_active = setup.server_dtls_active;
        let sfu = Sfu::new(config, Arc::new(Counters::default()));
        let (tx, reports) = mpsc::channel(4096);
        let pc_config = |n: u64| {
            let config = client_config(setup.timing).set_crypto_provider(
                huddle_dtls::crypto_provider_seeded(setup.timing.dtls(), seed.wrapping_mul(4) + n),
            );
            if setup.standard_extensions {
                config.set_extension_map(str0m::rtp::ExtensionMap::standard())
            } else {
                config
            }
        };
        let client = |leg: &Leg, n: u64| {
            (
                Link::new(leg.up.clone(), seed.wrapping_mul(8) + 2 * n),
                Link::new(leg.down.clone(), seed.wrapping_mul(8) + 2 * n + 1),
                StdRng::seed_from_u64(seed.wrapping_mul(8) + 4 + n),
                (leg.up.loss, leg.down.loss),
                (leg.up.delay, leg.down.delay),
                (leg.up.jitter, leg.down.jitter),
            )
        };

        let addr: SocketAddr = PUBLISHER.parse().expect("address");
        let mut config = pc_config(0);
        let media = Arc::new(MediaShared::new());
        {
            let audio = &mut media.config().audio_config;
            match setup.publisher {
                Sender::Sdk => {}
                Sender::Chromium => {
                    config = config.set_red_distances(&[1]);
                    audio.bitrate = 32_000;
                }
                Sender::PlainOpus { fec } => {
                    config = config.enable_opus(true, false);
                    audio.red = false;
                    audio.fec = fec;
                    if !fec {
                        audio.loss_hint_percent = 0;
                    }
                }
            }
        }
        let (pc, pub_offer) =
            Pc::queued(config, setup.timing, t0, addr, MediaRole::Publish, false).expect("a publish offer");
        assert_eq!(
            pub_offer.contains("red/48000"),
            !matches!(setup.publisher, Sender::PlainOpus { .. }),
            "the publish offer has RED as asked"
        );
        let audio = AudioInput::Source(Box::new(Speech::new(lead_in, looped)));
        let core = Publisher::new(reporter(&tx, MediaRole::Publish), media, audio, None, 0x1234_5678)
            .expect("an Opus encoder");
        let (up, down, signaling, loss, delay, jitter) = client(&network.publisher, 0);
        let publisher = Client {
            pc,
            addr,
            core,
            up,
            down,
            wake: Some(t0),
            monitor: Monitor::new(),
            signaling,
            model: setup.signaling,
            loss,
            delay,
            jitter,
            delivered: (t0, t0),
            tcp: (setup.client_tcp, setup.server_tcp),
        };

        let addr: SocketAddr = PLAYER.parse().expect("address");
        let mut config = pc_config(1);
        if !setup.player_red {
            config = config.enable_opus(true, false);
        }
        let (pc, play_offer) = Pc::queued(
            config,
            setup.timing,
            t0,
            addr,
            MediaRole::Play,
            setup.player_video,
        )
        .expect("a play offer");
        assert_eq!(
            play_offer.contains("red/48000"),
            setup.player_red,
            "the play offer has RED as asked"
        );
        let core =
            Player::new(reporter(&tx, MediaRole::Play), Arc::new(MediaShared::new())).expect("a decoder");
        let (up, down, signaling, loss, delay, jitter) = client(&network.player, 1);
        let player = Client {
            pc,
            addr,
            core,
            up,
            down,
            wake: Some(t0),
            monitor: Monitor::new(),
            signaling,
            model: setup.signaling,
            loss,
            delay,
            jitter,
            delivered: (t0, t0),
            tcp: (setup.client_tcp, setup.server_tcp),
        };

        let mut call = Call {
            t0,
            now: t0,
            network,
            sfu,
            server,
            publisher,
            player,
            reports,
            signals: VecDeque::new(),
            offers: [Some(pub_offer.clone()), Some(play_offer.clone())],
            start: setup.start,
            setup_active: setup.setup_active,
            server_side: Server::default(),
            outbox: Default::default(),
            next_tick: t0 + FRAME_DURATION,
            outage: false,
            out: Outcome {
                offer_sdp: [Some(pub_offer), Some(play_offer)],
                ..Outcome::default()
            },
        };
        match setup.start {
            Start::Offer => call.send_offer(Who::Publisher, t0),
            Start::Requests { pipelined } => {
                // The requests as the session sends them (`seq` 2: the login's was 1).
                let stream_id = StreamId::new("s").expect("a stream ID");
                let publish = message_bytes(&huddle_proto::ClientMsg::Publish {
                    seq: 2,
                    stream_id: stream_id.clone(),
                    extra_info: String::new(),
                });
                let play = message_bytes(&huddle_proto::ClientMsg::Play { seq: 2, stream_id });
                for (who, bytes) in [(Who::Publisher, publish), (Who::Player, play)] {
                    // Pipelined, the offer is written with its request: one write, one delivery.
                    let offer = if pipelined {
                        call.out.offered[who as usize] = Some(Duration::ZERO);
                        call.offers[who as usize].take()
                    } else {
                        None
                    };
                    let more = offer.as_deref().map_or(0, |s| media_message_bytes(true, s));
                    let at = call.signal_arrival(who, t0, true, bytes + more);
                    let what = match who {
                        Who::Publisher => Sig::Publish(offer),
                        Who::Player => Sig::Play(offer),
                    };
                    call.signals.push_back(Signal { at, what });
                }
            }
        }
        call
    }

    /// When a message of `bytes` that `who`'s connection carries from now arrives (`up`: at
    /// the server).
    fn signal_arrival(&mut self, who: Who, now: Instant, up: bool, bytes: usize) -> Instant {
        self.out.signal_writes.push((who, up, bytes));
        match who {
            Who::Publisher => self.publisher.signal_arrival(now, up, bytes),
            Who::Player => self.player.signal_arrival(now, up, bytes),
        }
    }

    /// `who` sends its `media_offer` at `now` (if it has not yet).
    fn send_offer(&mut self, who: Who, now: Instant) {
        let Some(sdp) = self.offers[who as usize].take() else {
            return;
        };
        self.out.offered[who as usize].get_or_insert(self.since(now));
        let bytes = media_message_bytes(true, &sdp);
        let at = self.signal_arrival(who, now, true, bytes);
        self.signals.push_back(Signal {
            at,
            what: Sig::Offer(who, sdp),
        });
    }

    /// From now on, `loss` on `who`'s uplink (client to server).
    pub(crate) fn set_uplink_loss(&mut self, who: Who, loss: f64) {
        let link = match who {
            Who::Publisher => &mut self.publisher.up,
            Who::Player => &mut self.player.up,
        };
        let mut config = link.config().clone();
        config.loss = loss;
        link.set_config(config);
    }

    fn since(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.t0)
    }

    /// Gives the SFU an offer from `who` (session 1 publishes, session 2 plays).
    fn offer(&mut self, who: Who, sdp: String) {
        let (session, role) = match who {
            Who::Publisher => ("1", MediaRole::Publish),
            Who::Player => ("2", MediaRole::Play),
        };
        self.sfu.handle_command(
            self.now,
            Command::Offer(Offer {
                session: session.parse().expect("a session ID"),
                app: AppId::new(1).expect("app 1"),
                stream_id: StreamId::new("s").expect("a stream ID"),
                role,
                seq: 1,
                sdp,
                setup_active: self.setup_active[who as usize],
                // As the SDK's driver declares it (the player here is the SDK's).
                red_depth: super::pc::red_depth(role),
            }),
        );
        if who == Who::Publisher && self.start == Start::Offer {
            // The player learns of the stream from the server and offers to play it.
            self.reply(Who::Player, stream_notice_bytes(), Sig::Available);
        }
    }

    /// The server writes a message of `bytes` to `who` now.
    fn reply(&mut self, who: Who, bytes: usize, what: Sig) {
        let (n, sigs) = &mut self.outbox[who as usize];
        *n += bytes;
        sigs.push(what);
    }

    /// What the server wrote to each client at this instant goes out, one flight each.
    fn flush_replies(&mut self) {
        let now = self.now;
        for who in [Who::Publisher, Who::Player] {
            let (bytes, sigs) = std::mem::take(&mut self.outbox[who as usize]);
            if sigs.is_empty() {
                continue;
            }
            let at = self.signal_arrival(who, now, false, bytes);
            self.signals
                .extend(sigs.into_iter().map(|what| Signal { at, what }));
        }
    }

    /// The server handles `publish` (and the offer written with it): `ok` to the publisher,
    /// `play_update` to the player if it plays, whose held offer goes to the media plane (the
    /// SFU keeps it until the publisher's media is negotiated, as the server does).
    fn publish_arrived(&mut self, offer: Option<String>) {
        self.server_side.published = true;
        self.reply(Who::Publisher, publish_reply_bytes(), Sig::Published);
        if self.server_side.playing {
            self.reply(Who::Player, stream_notice_bytes(), Sig::Available);
            if let Some(sdp) = self.server_side.held.take() {
                self.offer(Who::Player, sdp);
            }
        }
        if let Some(sdp) = offer {
            self.offer(Who::Publisher, sdp);
        }
    }

    /// The server handles `play` (and the offer written with it): `ok` and `play_update`; the
    /// offer goes to the media plane if the stream is published, else it is held.
    fn play_arrived(&mut self, offer: Option<String>) {
        self.server_side.playing = true;
        // `ok`, and `play_update` saying whether the stream is there.
        let what = if self.server_side.published {
            Sig::Available
        } else {
            Sig::Unavailable
        };
        self.reply(Who::Player, play_reply_bytes(), what);
        if let Some(sdp) = offer {
            if self.server_side.published {
                self.offer(Who::Player, sdp);
            } else {
                self.server_side.held = Some(sdp);
            }
        }
    }

    /// Runs the call until `until` after its start.
    pub(crate) fn run(&mut self, until: Duration) {
        self.run_while(until, |_| true);
    }

    /// Runs the call until `until` after its start, or until both clients are connected and
    /// the player has its first audio packet.
    pub(crate) fn run_until_connected(&mut self, until: Duration) {
        self.run_while(until, |o| {
            o.connected.iter().any(Option::is_none) || o.first_audio.is_none()
        });
    }

    /// Runs the call until `until` after its start while `go` says so.
    fn run_while(&mut self, until: Duration, go: impl Fn(&Outcome) -> bool) {
        let end = self.t0 + until;
        while self.now < end && go(&self.out) {
            self.step();
            let mut next = [
                self.publisher.wake,
                self.player.wake,
                self.publisher.core.next_audio(),
                self.sfu.poll_timeout(),
                self.publisher.up.next_arrival(),
                self.publisher.down.next_arrival(),
                self.player.up.next_arrival(),
                self.player.down.next_arrival(),
                self.publisher.monitor.next_timeout(),
                self.player.monitor.next_timeout(),
                self.signals.iter().map(|s| s.at).min(),
                Some(self.next_tick),
                Some(end),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
            for (a, b) in &self.network.outages {
                for edge in [self.t0 + *a, self.t0 + *b] {
                    if edge > self.now {
                        next = next.min(edge);
                    }
                }
            }
            // Time always moves (str0m paces its own timeouts to at least 1 ms anyway).
            self.now = next.max(self.now + Duration::from_micros(100));
        }
    }

    /// Everything due at `now`.
    fn step(&mut self) {
        let now = self.now;
        // Outages, both clients, both ways.
        let out = self.network.outages.iter().any(|(a, b)| {
            let t = self.since(now);
            t >= *a && t < *b
        });
        if out != self.outage {
            self.outage = out;
            for l in [
                &mut self.publisher.up,
                &mut self.publisher.down,
                &mut self.player.up,
                &mut self.player.down,
            ] {
                l.set_down(out);
            }
        }
        // Signaling.
        while let Some(i) = self.signals.iter().position(|s| s.at <= now) {
            let s = self.signals.remove(i).expect("found");
            match s.what {
                Sig::Offer(who, sdp) => self.offer(who, sdp),
                Sig::Answer(who, sdp) => {
                    let (pc, i) = match who {
                        Who::Publisher => (&mut self.publisher.pc, 0),
                        Who::Player => (&mut self.player.pc, 1),
                    };
                    self.out.answered[i] = Some(now.saturating_duration_since(self.t0));
                    self.out.answer_sdp[i] = Some(sdp.clone());
                    pc.accept_answer(now, &sdp).expect("the server's answer applies");
                }
                Sig::Publish(offer) => self.publish_arrived(offer),
                Sig::Play(offer) => self.play_arrived(offer),
                // A client that has not offered yet does now (else nothing: `offers` is empty).
                Sig::Published => self.send_offer(Who::Publisher, s.at),
                Sig::Available => self.send_offer(Who::Player, s.at),
                Sig::Unavailable => {}
            }
        }
        while let Some((session, msg)) = self.sfu.poll_signal() {
            if let ServerMsg::MediaAnswer { sdp, .. } = msg {
                let to = if session.to_string() == "1" {
                    Who::Publisher
                } else {
                    Who::Player
                };
                let n = media_message_bytes(false, &sdp);
                self.reply(to, n, Sig::Answer(to, sdp));
            }
        }
        self.flush_replies();
        // Datagrams that arrived.
        while let Some(d) = self.publisher.up.recv(now) {
            self.sfu
                .handle_datagram_to(now, self.publisher.addr, self.server, &d);
        }
        while let Some(d) = self.player.up.recv(now) {
            self.sfu
                .handle_datagram_to(now, self.player.addr, self.server, &d);
        }
        while let Some(d) = self.publisher.down.recv(now) {
            self.publisher.core.on_received(now);
            self.publisher.pc.receive(now, self.server, &d);
        }
        while let Some(d) = self.player.down.recv(now) {
            self.player.core.on_received(now);
            self.player.pc.receive(now, self.server, &d);
        }
        // Timers.
        if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.sfu.handle_timeout(now);
        }
        if self.publisher.wake.is_some_and(|t| t <= now) {
            self.publisher.pc.timeout(now);
        }
        if self.player.wake.is_some_and(|t| t <= now) {
            self.player.pc.timeout(now);
        }
        // The publisher's frames due (each at its own deadline, as the engine's pacer sends).
        self.drive_publisher();
        while let Some(due) = self.publisher.core.next_audio().filter(|t| *t <= now) {
            self.publisher.core.audio_tick(&mut self.publisher.pc, due);
            self.drive_publisher();
        }
        self.drive_player();
        // What the SFU sends.
        while let Some(t) = self.sfu.poll_transmit() {
            let since = now - self.t0;
            if t.destination == self.publisher.addr {
                self.out.trace.push((since, 1, traced_len(&t.contents)));
                self.publisher.down.send(t.contents.to_vec(), now);
            } else if t.destination == self.player.addr {
                self.out.trace.push((since, 3, traced_len(&t.contents)));
                self.player.down.send(t.contents.to_vec(), now);
            }
        }
        // The mixer's ticks.
        while self.next_tick <= now {
            let due = self.next_tick;
            let frame = self
                .player
                .core
                .audio
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .tick(due)
                .unwrap_or_else(|| AudioFrame::silence(0));
            self.out.heard.push(frame);
            let played = self.player_stats().jitter.played;
            self.out.played.push(played);
            let hint = self.publisher.core.encoder_settings().packet_loss_percent;
            self.out.loss_hint.push(hint);
            self.next_tick += FRAME_DURATION;
        }
        // Reports to the sessions, and their quality timers.
        while let Ok(e) = self.reports.try_recv() {
            let (who, back) = match e.update {
                MediaUpdate::PublishStats(s) => (
                    Who::Publisher,
                    self.publisher.monitor.publish_sample(&e.stream_id, s, now),
                ),
                MediaUpdate::PlayStats(s) => {
                    (Who::Player, self.player.monitor.play_sample(&e.stream_id, s, now))
                }
                _ => continue,
            };
            if let Some((up, down)) = back {
                let t = self.since(now);
                self.out.quality.push((t, who, Quality::Network(up, down)));
            }
        }
        for who in [Who::Publisher, Who::Player] {
            let monitor = match who {
                Who::Publisher => &mut self.publisher.monitor,
                Who::Player => &mut self.player.monitor,
            };
            if monitor.next_timeout().is_none_or(|t| t > now) {
                continue;
            }
            let due = monitor.poll(now);
            let t = self.since(now);
            if let Some((_, q)) = due.publisher {
                self.out.quality.push((t, who, Quality::Publish(q)));
            }
            for (_, q) in due.players {
                self.out.quality.push((t, who, Quality::Play(q)));
            }
            if let Some((up, down)) = due.own {
                self.out.quality.push((t, who, Quality::Network(up, down)));
            }
        }
    }

    fn drive_publisher(&mut self) {
        let c = &mut self.publisher;
        let core = &mut c.core;
        c.wake = c.pc.drive(|pc, e| {
            if matches!(e, Event::Connected) {
                self.out.connected[0].get_or_insert(self.now.saturating_duration_since(self.t0));
            }
            core.on_event(pc, e);
        });
        c.core.start_when_connected(&c.pc, self.now);
        while let Some((_, d)) = c.pc.take_transmit() {
            self.out.trace.push((self.now - self.t0, 0, traced_len(&d)));
            c.up.send(d, self.now);
        }
    }

    fn drive_player(&mut self) {
        let c = &mut self.player;
        let core = &mut c.core;
        c.wake = c.pc.drive(|pc, e| {
            if matches!(e, Event::Connected) {
                self.out.connected[1].get_or_insert(self.now.saturating_duration_since(self.t0));
            }
            if matches!(&e, Event::MediaData(d) if Some(d.mid) == pc.audio) {
                self.out
                    .first_audio
                    .get_or_insert(self.now.saturating_duration_since(self.t0));
            }
            core.on_event(pc, e);
        });
        c.core.flush_audio();
        while let Some((_, d)) = c.pc.take_transmit() {
            self.out.trace.push((self.now - self.t0, 2, traced_len(&d)));
            c.up.send(d, self.now);
        }
    }

    /// The player's jitter buffer and decoder figures now.
    pub(crate) fn player_stats(&self) -> huddle_media::PlayerStats {
        self.player
            .core
            .audio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .player
            .stats()
    }

    /// What the call produced (the links' counters filled in).
    pub(crate) fn finish(mut self) -> Outcome {
        let links = [
            &self.publisher.up,
            &self.publisher.down,
            &self.player.up,
            &self.player.down,
        ];
        for (i, l) in links.into_iter().enumerate() {
            let s = l.stats();
            self.out.links[i] = (s.sent, s.dropped);
        }
        self.out
    }
}

/// Scores recordings of the player's output against the speech sample with
/// `tests/audio_score.py` (aligned wideband PESQ, STOI), one process each, all at once; needs
/// the tests' Python packages (`scripts/test.sh` installs them).
pub(crate) fn score_all(heard: &[std::path::PathBuf]) -> Vec<serde_json::Value> {
    let children: Vec<_> = heard
        .iter()
        .map(|path| {
            std::process::Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/audio_score.py"))
                .arg(SPEECH)
                .arg(path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run python3 audio_score.py")
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("audio_score.py ran");
            assert!(
                out.status.success(),
                "audio_score.py failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).expect("one JSON object")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    /// A path for a test's WAV file, in a directory of this test process.
    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("huddle-netem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir.join(name)
    }

    /// The same seed gives the same call, sample for sample and event for event: nothing in the
    /// harness reads the clock or depends on the machine.
    #[test]
    fn a_seeded_call_comes_out_the_same_on_every_run() {
        let network = Network {
            publisher: Leg::lossy(0.1, Duration::from_millis(30), Duration::from_millis(10)),
            player: Leg::lossy(0.1, Duration::from_millis(30), Duration::from_millis(10)),
            outages: vec![],
        };
        let run = || {
            let mut call = Call::new(network.clone(), 7, Duration::from_millis(500), true);
            call.run(Duration::from_secs(4));
            call.finish()
        };
        let (a, b) = (run(), run());
        assert!(a.connected.iter().all(Option::is_some), "{:?}", a.connected);
        assert!(
            *a.played.last().expect("ticks") > 50,
            "the player played the speech: {:?}",
            a.played.last()
        );
        assert_eq!(a.connected, b.connected);
        assert_eq!(a.links, b.links);
        assert_eq!(a.played, b.played);
        assert_eq!(a.quality, b.quality);
        assert!(
            a.heard.iter().zip(&b.heard).all(|(x, y)| x.samples == y.samples),
            "the same audio"
        );
        // And the links lost what they were told to (about 10 % of each direction).
        for (sent, lost) in a.links {
            assert!(sent > 0 && lost > 0 && lost * 4 < sent, "{:?}", a.links);
        }
    }

    /// Where a child process of [`a_seeded_call_comes_out_the_same_in_another_process`] writes
    /// its calls (their text and the last one's recording); unset in the parent.
    const REPLAY_TO: &str = "HUDDLE_NETEM_REPLAY_TO";
    /// Set in the child that runs other calls before and beside its own.
    const REPLAY_BESIDE: &str = "HUDDLE_NETEM_REPLAY_BESIDE";

    /// A call of [`a_seeded_call_comes_out_the_same_in_another_process`]: the curve's 16 %
    /// point (loss on every link from the start, 100 ms RTT, 5 ms jitter), 1 s of lead-in.
    fn replayed_call(seed: u64) -> Outcome {
        let leg = Leg::lossy(0.16, Duration::from_millis(50), Duration::from_millis(5));
        let network = Network {
            publisher: leg.clone(),
            player: leg,
            outages: vec![],
        };
        let mut call = Call::new(network, seed, Duration::from_secs(1), false);
        call.run(Duration::from_secs(6));
        call.finish()
    }

    /// The seeds of [`a_seeded_call_comes_out_the_same_in_another_process`].
    const REPLAYED: [u64; 2] = [1, 2];

    /// Calls as text, line by line: every datagram on the links, then what the sessions and
    /// the player saw (the audio as a hash of its samples).
    fn call_text(o: &Outcome) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        for (t, link, len) in &o.trace {
            writeln!(s, "datagram {} us link {link} {len} bytes", t.as_micros()).expect("written");
        }
        for q in &o.quality {
            writeln!(s, "quality {q:?}").expect("written");
        }
        writeln!(s, "connected {:?}", o.connected).expect("written");
        writeln!(s, "links {:?}", o.links).expect("written");
        writeln!(s, "played {:?}", o.played).expect("written");
        writeln!(s, "loss hint {:?}", o.loss_hint).expect("written");
        // FNV-1a over the samples.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for x in o.heard.iter().flat_map(|f| f.samples.iter()) {
            h = (h ^ u64::from(*x as u16)).wrapping_mul(0x100_0000_01b3);
        }
        writeln!(s, "heard {h:x}").expect("written");
        s
    }

    /// The calls of [`REPLAYED`] as text, and the last one.
    fn replayed_calls() -> (String, Outcome) {
        let mut text = String::new();
        let mut last = Outcome::default();
        for seed in REPLAYED {
            last = replayed_call(seed);
            text += &format!("seed {seed}\n{}", call_text(&last));
        }
        (text, last)
    }

    /// The same seeds give the same calls in another process, datagram for datagram, event for
    /// event and sample for sample, whatever ran in the process before or beside them: nothing
    /// in the SDK, the server, str0m or dimpl draws from a source the seed does not set or
    /// reads the clock. The calls run in two child processes of this test binary: one alone,
    /// one after another call and a pause (str0m fixes its `Instant` → NTP mapping once per
    /// process) with a third call on another thread beside them. Each writes its calls' text
    /// and the last call's recording.
    #[test]
    fn a_seeded_call_comes_out_the_same_in_another_process() {
        if let Ok(dir) = std::env::var(REPLAY_TO) {
            let dir = std::path::PathBuf::from(dir);
            let beside = std::env::var_os(REPLAY_BESIDE).map(|_| {
                let _ = replayed_call(9);
                std::thread::sleep(Duration::from_millis(300));
                std::thread::spawn(|| replayed_call(8).heard.len())
            });
            let (text, last) = replayed_calls();
            std::fs::write(dir.join("calls.txt"), text).expect("written");
            last.write_wav(&dir.join("heard.wav"));
            if let Some(t) = beside {
                assert!(t.join().expect("the call beside") > 0);
            }
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let name = "media::netem::tests::a_seeded_call_comes_out_the_same_in_another_process";
        let runs: Vec<_> = [false, true]
            .into_iter()
            .map(|beside| {
                let dir = tmp(if beside { "replay-beside" } else { "replay-alone" });
                std::fs::create_dir_all(&dir).expect("a directory");
                let mut cmd = std::process::Command::new(&exe);
                cmd.args([name, "--exact", "--test-threads", "1"])
                    .env(REPLAY_TO, &dir);
                if beside {
                    cmd.env(REPLAY_BESIDE, "1");
                }
                let out = cmd.output().expect("the test binary runs");
                assert!(
                    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                    "the child: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = std::fs::read_to_string(dir.join("calls.txt")).expect("the calls' text");
                let wav = std::fs::read(dir.join("heard.wav")).expect("the recording");
                (text, wav)
            })
            .collect();
        let ((a, a_wav), (b, b_wav)) = (&runs[0], &runs[1]);
        assert!(
            a.contains("link 3") && a.contains("played"),
            "the calls reached the player"
        );
        if let Some((i, (x, y))) = a.lines().zip(b.lines()).enumerate().find(|(_, (x, y))| x != y) {
            panic!("the processes part at line {}: {x:?} / {y:?}", i + 1);
        }
        assert_eq!(a, b, "the same datagrams and events");
        assert!(a_wav == b_wav, "the same recording, byte for byte");
        // And in this process, beside whatever else runs in it.
        assert_eq!(&replayed_calls().0, a, "the same calls in this process");
    }

    /// The first event of `who` at or after `from` that matches `f`.
    fn first(o: &Outcome, who: Who, from: Duration, f: impl Fn(&Quality) -> bool) -> Option<Duration> {
        o.quality
            .iter()
            .find(|(t, w, q)| *w == who && *t >= from && f(q))
            .map(|(t, _, _)| *t)
    }

    /// A 5 s outage of both clients (all four links) in the middle of a call on a clean 100 ms
    /// RTT path: both sessions report network quality `Die` within 3 s of its start, and
    /// within 1 s of its end the player plays the publisher's audio again and both sessions
    /// report their levels back (issue 12, "Trouble is reported in time").
    #[test]
    fn a_five_second_outage_is_reported_and_audio_comes_back_within_a_second() {
        let (start, end) = (Duration::from_secs(4), Duration::from_secs(9));
        let network = Network {
            publisher: Leg::lossy(0.0, Duration::from_millis(50), Duration::from_millis(5)),
            player: Leg::lossy(0.0, Duration::from_millis(50), Duration::from_millis(5)),
            outages: vec![(start, end)],
        };
        let mut call = Call::new(network, 1, Duration::ZERO, true);
        call.run(Duration::from_secs(12));
        let o = call.finish();
        let die = |q: &Quality| matches!(q, Quality::Network(Level::Die, Level::Die));
        let alive =
            |q: &Quality| matches!(q, Quality::Network(up, down) if *up != Level::Die || *down != Level::Die);
        // Played frames per tick: the audio is back when the count moves again after the outage.
        let at_end = o.played[Outcome::tick(end)];
        let back = o.played[Outcome::tick(end)..]
            .iter()
            .position(|p| *p > at_end)
            .map(|i| FRAME_DURATION * i as u32);
        println!(
            "OUTAGE connected {:?}, audio back {:?} after the network",
            o.connected,
            back.map(ms)
        );
        let mut found = Vec::new();
        for who in [Who::Publisher, Who::Player] {
            let before = first(&o, who, Duration::ZERO, die);
            let dead = first(&o, who, start, die);
            let again = first(&o, who, end, alive);
            println!(
                "OUTAGE {who:?}: die {:?} ms after the outage began, levels back {:?} ms after it ended",
                dead.map(|t| ms(t - start)),
                again.map(|t| ms(t - end))
            );
            found.push((who, before, dead, again));
        }
        // `Die` is "nothing received for 3 s": counted from the last datagram delivered, which
        // was in flight when the outage began (one way: 50 to 55 ms).
        let in_flight = Duration::from_millis(55);
        for (who, before, dead, again) in found {
            assert_eq!(before, dead, "{who:?}: no Die before the outage: {:?}", o.quality);
            let dead = dead.unwrap_or_else(|| panic!("{who:?} reported no Die: {:?}", o.quality));
            assert!(
                dead - start <= Duration::from_secs(3) + in_flight,
                "{who:?}: Die {:?} in",
                dead - start
            );
            let again = again.unwrap_or_else(|| panic!("{who:?}: levels never back: {:?}", o.quality));
            assert!(
                again - end <= Duration::from_secs(1),
                "{who:?}: back {:?} after",
                again - end
            );
        }
        let back = back.expect("the player plays again");
        assert!(
            back <= Duration::from_secs(1),
            "audio back {back:?} after the network"
        );
    }

    /// `seeds` seeded calls with `per_leg` random loss on every link (both clients, both ways,
    /// signaling included) from the first packet, 100 ms RTT to the server and 5 ms of jitter:
    /// the publisher sends the speech sample after `lead_in` of silence. PESQ and STOI of each;
    /// asserts that no call made a 20 ms step (a whole frame inserted or dropped) while its
    /// audio was speech, the delay moves by stretching there; but at ≈ 60 % end to end
    /// (`per_leg` > 0.35), where one call in ten may make one: seed 10's player connects 2.7 s
    /// into the call, after the speech began, and its buffer's first growth under that loss
    /// lands in a word (a single 20 ms insert; the same call made one as DTLS server before).
    fn lossy_calls(per_leg: f64, lead_in: Duration, seeds: u64) -> Vec<(f64, f64)> {
        let r = calls_seeded(
            per_leg,
            Duration::from_millis(5),
            lead_in,
            Setup::default(),
            seeds,
        );
        let steps: Vec<u64> = r.iter().map(|x| x.2).collect();
        let allowed = if per_leg > 0.35 { seeds / 10 } else { 0 };
        assert!(
            steps.iter().sum::<u64>() <= allowed && steps.iter().all(|&n| n <= 1),
            "{per_leg}: steps in speech per seed {steps:?}"
        );
        r.iter().map(|&(pesq, stoi, _)| (pesq, stoi)).collect()
    }

    /// As [`lossy_calls`], with `jitter` (uniform, 0 to it) on every link; with each call's
    /// count of 20 ms steps made in speech (see `PlayerStats::speech_inserts`).
    fn calls(per_leg: f64, jitter: Duration, lead_in: Duration) -> Vec<(f64, f64, u64)> {
        calls_with(per_leg, jitter, lead_in, Setup::default())
    }

    /// As [`calls`], with `setup`: five seeds.
    fn calls_with(per_leg: f64, jitter: Duration, lead_in: Duration, setup: Setup) -> Vec<(f64, f64, u64)> {
        calls_seeded(per_leg, jitter, lead_in, setup, 5)
    }

    /// As [`calls_with`], seeds 1 to `seeds`, or to `HUDDLE_NETEM_SEEDS` when set (a
    /// measurement knob: more seeds tell a reshuffle of the seeds' outcomes from a real loss;
    /// the floors are set for the tests' own counts).
    fn calls_seeded(
        per_leg: f64,
        jitter: Duration,
        lead_in: Duration,
        setup: Setup,
        seeds: u64,
    ) -> Vec<(f64, f64, u64)> {
        let seeds = std::env::var("HUDDLE_NETEM_SEEDS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(seeds);
        let paths: Vec<_> = (1..=seeds)
            .map(|seed| {
                let leg = Leg::lossy(per_leg, Duration::from_millis(50), jitter);
                let network = Network {
                    publisher: leg.clone(),
                    player: leg,
                    outages: vec![],
                };
                let cpu = std::time::Instant::now();
                let mut call = Call::with_setup(network, seed, lead_in, false, setup);
                let length = lead_in + Duration::from_secs(7);
                call.run(length);
                let p = call.player_stats();
                let steps = p.speech_inserts + p.speech_drops;
                println!(
                    "STEPS {:.1}% per leg, jitter {} ms, seed {seed}: in speech {} inserted, {} dropped; stretched {} ({} ms), accelerated {} ({} ms); delay {} ms (target {} ms); lost {}, late {}, concealed {}, FEC {}, duplicates {}",
                    per_leg * 100.0,
                    jitter.as_millis(),
                    p.speech_inserts,
                    p.speech_drops,
                    p.stretched,
                    ms(p.stretched_time),
                    p.accelerated,
                    ms(p.accelerated_time),
                    ms(p.added_delay),
                    ms(p.jitter.target_delay),
                    p.jitter.lost,
                    p.jitter.late,
                    p.jitter.concealed,
                    p.jitter.fec_recovered,
                    p.jitter.duplicates,
                );
                let o = call.finish();
                println!(
                    "LOSS {:.1}% per leg, lead-in {} ms, seed {seed}: connected {:?} ms, links (sent, lost) {:?}; {} ms of call simulated in {} ms",
                    per_leg * 100.0,
                    lead_in.as_millis(),
                    o.connected.map(|c| c.map(ms)),
                    o.links,
                    ms(length),
                    ms(cpu.elapsed()),
                );
                let path = tmp(&format!(
                    "loss-{per_leg}-{}-{}-{seed}.wav",
                    jitter.as_millis(),
                    lead_in.as_millis()
                ));
                o.write_wav(&path);
                (path, steps)
            })
            .collect();
        let (paths, steps): (Vec<_>, Vec<_>) = paths.into_iter().unzip();
        let scores = score_all(&paths);
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        scores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let pesq = s["pesq"].as_f64().expect("a PESQ figure");
                let stoi = s["stoi"].as_f64().expect("a STOI figure (pystoi)");
                println!(
                    "LOSS {:.1}% per leg, seed {}: PESQ {pesq:.2} STOI {stoi:.2}",
                    per_leg * 100.0,
                    i + 1
                );
                (pesq, stoi, steps[i])
            })
            .collect()
    }

    /// (median, min) of `v`.
    fn median_min(mut v: Vec<f64>) -> (f64, f64) {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0])
    }

    /// The loss curve of `docs/quality.md` ("The virtual-time harness"): loss on both legs from
    /// the start of the call, setup included, ten seeds a point. 16 % per link is the issue's
    /// condition, ≈ 30 % end to end; 30 % per link is ≈ 50 % end to end, 36.8 % ≈ 60 %. The floors are below
    /// the figures measured (the same on every run: the calls are seeded), so that a change
    /// that costs quality fails here rather than in a listening test.
    #[test]
    fn the_loss_curve_from_the_start_of_the_call() {
        let lead_in = Duration::from_secs(2);
        // (loss per link, floors of the median and the lowest PESQ, of the lowest STOI)
        // Measured over seeds 1-10, the server as DTLS client (docs/quality.md, "Setup under
        // loss"): 4.07 (4.07) STOI 1.00; 4.04 (3.26) 0.83; 4.07 (3.96) 0.96; 4.04 (3.76) 0.96;
        // 3.62 (2.54) 0.91; 2.60 (1.39) 0.64. Five seeds were too few: the DTLS role moves
        // setup's packets, so each seed's loss falls on other speech packets, and seeds 1-5
        // alone then read 2.74 at 30 % and 1.41 / 0.76 at 36.8 %; over 20 seeds both roles
        // have the same medians (3.46 / 3.38 at 30 %, 2.36 / 2.53 at 36.8 %).
        let points = [
            (0.0, 3.9, 3.9, 0.95),
            (0.05, 3.6, 3.2, 0.75),
            (0.105, 3.9, 3.8, 0.95),
            (0.16, 3.85, 3.0, 0.9),
            (0.30, 2.9, 2.0, 0.8),
            // ≈ 60 % end to end: the issue asks for STOI ≥ 0.8 there, met by the median (0.97)
            // and not by the lowest of ten seeds (seed 8: every concealed frame lost all four
            // copies); seed 10's player connects 2.7 s into the call, after the speech starts,
            // and makes the one step in speech that `lossy_calls` allows here.
            (0.368, 1.95, 1.3, 0.6),
        ];
        let mut figures = Vec::new();
        for (per_leg, median_floor, min_floor, stoi_floor) in points {
            let r = lossy_calls(per_leg, lead_in, 10);
            let (median, min) = median_min(r.iter().map(|x| x.0).collect());
            let (stoi, stoi_min) = median_min(r.iter().map(|x| x.1).collect());
            let end_to_end = 1.0 - (1.0 - per_leg) * (1.0 - per_leg);
            println!(
                "CURVE {:>4.1}% per link ({:>4.1}% end to end): PESQ median {median:.2} min {min:.2}, STOI median {stoi:.2} min {stoi_min:.2}",
                per_leg * 100.0,
                end_to_end * 100.0
            );
            figures.push((
                per_leg,
                median,
                min,
                stoi_min,
                median_floor,
                min_floor,
                stoi_floor,
            ));
        }
        for (per_leg, median, min, stoi_min, median_floor, min_floor, stoi_floor) in figures {
            assert!(median >= median_floor, "{per_leg}: median PESQ {median:.2}");
            assert!(min >= min_floor, "{per_leg}: lowest PESQ {min:.2}");
            assert!(stoi_min >= stoi_floor, "{per_leg}: lowest STOI {stoi_min:.2}");
        }
    }

    /// The same condition as the curve's 16 % point, with 1 s of silence before the speech
    /// instead of 2: setup and the player's first second under loss land closer to the speech
    /// (printed beside the curve's figures in `docs/quality.md`). Ten seeds.
    #[test]
    fn thirty_percent_loss_with_a_short_lead_in() {
        let r = lossy_calls(0.16, Duration::from_secs(1), 10);
        let (median, min) = median_min(r.iter().map(|x| x.0).collect());
        println!("SHORT LEAD-IN 16% per link: PESQ median {median:.2} min {min:.2}");
        // Measured over seeds 1-10, the server as DTLS client: 4.02 and 2.64 (the server as
        // DTLS server: 4.04 and 2.65, seed 8; over seeds 1-5 alone 4.04 and 3.14, which the
        // floor of 3.1 was set on: docs/quality.md, "Setup under loss").
        assert!(
            median >= 3.85 && min >= 2.6,
            "median {median:.2}, lowest {min:.2}"
        );
    }

    /// The `q`-quantile (0..=1) of `v` (sorted), the nearest rank.
    fn quantile(v: &[Duration], q: f64) -> Duration {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    /// p95 of setup over 100 seeds with `per_leg` loss on every link, to each client's
    /// `Connected` (publisher, player): from the call's start (the publisher's offer, or both
    /// apps' requests: [`Setup::start`]), from the client's own offer, from its answer; the
    /// signaling part of setup, from the start to the answer; and the player's first audio
    /// packet from the start and from its answer.
    fn setup_p95(per_leg: f64, setup: Setup, label: &str) -> ([[Duration; 2]; 4], [Duration; 2]) {
        // From the start, from the offer, from the answer, the start to the answer; publisher
        // and player.
        let mut times: [[Vec<Duration>; 2]; 4] = Default::default();
        let mut audio: [Vec<Duration>; 2] = Default::default();
        for seed in 1..=100 {
            let leg = Leg::lossy(per_leg, Duration::from_millis(50), Duration::from_millis(5));
            let network = Network {
                publisher: leg.clone(),
                player: leg,
                outages: vec![],
            };
            let mut call = Call::with_setup(network, seed, Duration::ZERO, true, setup);
            call.run_until_connected(Duration::from_secs(40));
            let o = call.finish();
            for (i, c) in o.connected.iter().enumerate() {
                let c = c.unwrap_or_else(|| panic!("seed {seed}: {:?} not connected in 40 s", o.connected));
                times[0][i].push(c);
                times[1][i].push(c - o.offered[i].expect("offered before connected"));
                let answered = o.answered[i].expect("answered before connected");
                times[2][i].push(c - answered);
                times[3][i].push(answered);
            }
            let a = o
                .first_audio
                .unwrap_or_else(|| panic!("seed {seed}: the player had no audio in 40 s"));
            audio[0].push(a);
            audio[1].push(a - o.answered[1].expect("answered before its audio"));
        }
        let mut p95 = [[Duration::ZERO; 2]; 4];
        for (i, who) in ["publisher", "player"].iter().enumerate() {
            let mut line = format!("SETUP {:.0}% per link, {label}, {who}:", per_leg * 100.0);
            for (k, from) in [
                "from the start",
                "from the offer",
                "from the answer",
                "signaling (start to answer)",
            ]
            .iter()
            .enumerate()
            {
                let t = &mut times[k][i];
                t.sort();
                p95[k][i] = quantile(t, 0.95);
                line += &format!(
                    " {from} p50 {} / p95 {} / max {} ms;",
                    ms(quantile(t, 0.5)),
                    ms(p95[k][i]),
                    ms(quantile(t, 1.0))
                );
            }
            println!("{}", line.trim_end_matches(';'));
        }
        let mut audio_p95 = [Duration::ZERO; 2];
        let mut line = format!(
            "SETUP {:.0}% per link, {label}, player's first audio:",
            per_leg * 100.0
        );
        for (k, from) in ["from the start", "from the answer"].iter().enumerate() {
            let t = &mut audio[k];
            t.sort();
            audio_p95[k] = quantile(t, 0.95);
            line += &format!(
                " {from} p50 {} / p95 {} / max {} ms;",
                ms(quantile(t, 0.5)),
                ms(audio_p95[k]),
                ms(quantile(t, 1.0))
            );
        }
        println!("{}", line.trim_end_matches(';'));
        (p95, audio_p95)
    }

    /// Setup through the whole stack (signaling modelled, the SFU, both clients' ICE and DTLS)
    /// over 100 seeds at ≈ 30 % loss end to end (16 % on every link) and at 30 % on every link,
    /// to each client's `Connected`, before and after in one run: from the publisher's offer
    /// with the harness's old signaling model and ICE checks doubling from 50 to 400 ms, with
    /// Linux's TCP ([`tcp`]) and the same checks, and with the checks paced every 50 ms
    /// (the stream published already: the figures before setup was measured from the apps'
    /// requests); from both apps' `publish` and `play` at the call's start, each offer waiting
    /// for the reply to its request (the player's for the stream to be available), as the SDK
    /// did; and the same with each offer sent with its request (the SDK now), with the server
    /// as DTLS server (as before) and as DTLS client (the default since: `SfuConfig::dtls_active`,
    /// both roles), with the player's first audio packet beside. `setup_sim` measures one
    /// connection alone; this adds signaling, the SFU and the player's wait for the stream. The
    /// quantiles are printed for `docs/quality.md`.
    #[test]
    fn setup_through_the_whole_stack_under_loss() {
        // The rows measured before the signaling sockets were thin streams: Linux's defaults,
        // and a player offering audio only (as the harness's did).
        let linux = Setup {
            server_tcp: tcp::Options::default(),
            client_tcp: tcp::Options::default(),
            player_video: false,
            ..Setup::default()
        };
        let configs = [
            (
                "old TCP model, doubling ICE, from the offer",
                Setup {
                    signaling: Signaling::Legacy,
                    timing: SetupTiming::Doubling,
                    server_dtls_active: false,
                    ..linux
                },
            ),
            (
                "Linux TCP, doubling ICE, from the offer",
                Setup {
                    timing: SetupTiming::Doubling,
                    server_dtls_active: false,
                    ..linux
                },
            ),
            (
                "from the offer",
                Setup {
                    server_dtls_active: false,
                    ..linux
                },
            ),
            (
                "from the requests, offers after the replies",
                Setup {
                    start: Start::Requests { pipelined: false },
                    server_dtls_active: false,
                    ..linux
                },
            ),
            (
                "from the requests, offers with them, server DTLS server",
                Setup {
                    start: Start::Requests { pipelined: true },
                    server_dtls_active: false,
                    ..linux
                },
            ),
            (
                "from the requests, offers with them, server DTLS client (the default)",
                Setup {
                    start: Start::Requests { pipelined: true },
                    ..linux
                },
            ),
            (
                "the same, signaling as before (str0m's header extensions)",
                Setup {
                    start: Start::Requests { pipelined: true },
                    server_dtls_active: true,
                    standard_extensions: true,
                    ..linux
                },
            ),
            (
                "the same, thin-stream TCP options at both ends",
                Setup {
                    start: Start::Requests { pipelined: true },
                    server_dtls_active: true,
                    server_tcp: tcp::Options::thin_stream(),
                    client_tcp: tcp::Options::thin_stream(),
                    ..linux
                },
            ),
            (
                "the same, thin-stream TCP options at the server only (a browser's client)",
                Setup {
                    start: Start::Requests { pipelined: true },
                    server_dtls_active: true,
                    server_tcp: tcp::Options::thin_stream(),
                    ..linux
                },
            ),
            (
                "the player offering video (as the SDK's), thin-stream options",
                Setup {
                    start: Start::Requests { pipelined: true },
                    server_dtls_active: true,
                    player_video: true,
                    server_tcp: tcp::Options::thin_stream(),
                    client_tcp: tcp::Options::thin_stream(),
                    ..Setup::default()
                },
            ),
            (
                "the player offering video, signaling as before",
                Setup {
                    start: Start::Requests { pipelined: true },
                    server_dtls_active: true,
                    player_video: true,
                    standard_extensions: true,
                    server_tcp: tcp::Options::default(),
                    client_tcp: tcp::Options::default(),
                    ..Setup::default()
                },
            ),
        ];
        let mut figures = Vec::new();
        for per_leg in [0.16, 0.30] {
            for (label, setup) in configs {
                figures.push((per_leg, label, setup_p95(per_leg, setup, label)));
            }
        }
        let p95 = |per_leg: f64, label: &str| {
            figures
                .iter()
                .find(|(p, l, _)| *p == per_leg && *l == label)
                .map(|(_, _, f)| *f)
                .expect("measured")
        };
        // Measured: see docs/quality.md (virtual, the same on every run). From the requests at
        // 16 % per link, p95: publisher 1579 ms before, 1140 ms with the offers sent with the
        // requests; player 1856 and 1471 ms; from the answer 709 and 816 ms.
        let ([before, _, _, _], _) = p95(0.16, configs[3].0);
        let ([start, _, answer, _], passive_audio) = p95(0.16, configs[4].0);
        assert!(start[0] <= Duration::from_millis(1200), "{start:?}");
        assert!(start[1] <= Duration::from_millis(1550), "{start:?}");
        assert!(
            answer.iter().all(|a| *a <= Duration::from_millis(850)),
            "{answer:?}"
        );
        for who in 0..2 {
            assert!(start[who] < before[who], "{start:?} {before:?}");
            assert!(
                p95(0.30, configs[4].0).0[0][who] < p95(0.30, configs[3].0).0[0][who],
                "30 %: {figures:?}"
            );
        }
        // The server as DTLS client (the default): its ClientHello leaves with its first ICE
        // answer, one flight earlier, and a player's media flows once its Finished is out.
        // Measured at 16 % per link, p95 from the answer: publisher 709 → 328 ms, player
        // 816 → 309 ms; the player's first audio 935 → 740 ms (1660 → 1349 from the start).
        let ([active, _, active_answer, _], active_audio) = p95(0.16, configs[5].0);
        for who in 0..2 {
            assert!(active[who] < start[who], "{active:?} {start:?}");
            assert!(
                active_answer[who] <= Duration::from_millis(400),
                "{active_answer:?}"
            );
            assert!(
                active_audio[who] < passive_audio[who],
                "{active_audio:?} {passive_audio:?}"
            );
            assert!(
                p95(0.30, configs[5].0).0[2][who] < p95(0.30, configs[4].0).0[2][who],
                "30 %: {figures:?}"
            );
        }
        // The signaling leg (docs/quality.md, setup): the SDK's offers without the header
        // extensions nothing reads (`publish` with its voice offer in one TCP segment), then
        // the thin-stream TCP options on both ends. Measured at 16 %, p95 from the requests:
        // publisher 1027 ms before, 922 with the smaller offers, 624 with the options too (its
        // signaling 725 → 414 ms); player 1520, 1520 and 1273 ms (927 → 517 ms).
        let ([old_start, _, _, old_signaling], _) = p95(0.16, configs[6].0);
        let ([now, _, _, now_signaling], _) = p95(0.16, configs[7].0);
        let ([browser, _, _, _], _) = p95(0.16, configs[8].0);
        assert!(active[0] < old_start[0], "{active:?} {old_start:?}");
        assert!(now[0] < Duration::from_secs(1), "{now:?}");
        for who in 0..2 {
            assert!(
                now_signaling[who] < old_signaling[who],
                "{now_signaling:?} {old_signaling:?}"
            );
            assert!(now[who] < old_start[who], "{now:?} {old_start:?}");
            assert!(browser[who] <= old_start[who], "{browser:?} {old_start:?}");
            assert!(
                p95(0.30, configs[7].0).0[0][who] < p95(0.30, configs[6].0).0[0][who],
                "30 %: {figures:?}"
            );
        }
        // A player offering video (two segments each way): faster with the options too.
        for per_leg in [0.16, 0.30] {
            let ([now, _, _, now_signaling], _) = p95(per_leg, configs[9].0);
            let ([old, _, _, old_signaling], _) = p95(per_leg, configs[10].0);
            assert!(now[1] < old[1], "{per_leg}: {now:?} {old:?}");
            assert!(
                now_signaling[1] < old_signaling[1],
                "{per_leg}: {now_signaling:?} {old_signaling:?}"
            );
        }
    }

    /// The signaling messages of setup on the wire (JSON, WebSocket and TLS framing) and the
    /// TCP segments each takes: the publisher's `publish` with its offer, the player's `play`
    /// with its offer (audio and video, as the SDK's player offers), the server's replies and
    /// answers; and the SDK's offers alone (voice only, and with video) beside the server's
    /// answers; before (str0m's standard header extensions) and now (the SDK's own). Printed
    /// for `docs/quality.md`.
    #[test]
    fn signaling_message_sizes() {
        let mut writes = [Vec::new(), Vec::new()];
        for (i, (label, standard_extensions)) in [("before", true), ("now", false)].into_iter().enumerate() {
            let setup = Setup {
                start: Start::Requests { pipelined: true },
                standard_extensions,
                player_video: true,
                ..Setup::default()
            };
            let mut call = Call::with_setup(Network::default(), 1, Duration::ZERO, true, setup);
            call.run_until_connected(Duration::from_secs(5));
            let o = call.finish();
            for (who, up, bytes) in &o.signal_writes {
                let dir = if *up { "up" } else { "down" };
                println!(
                    "SIGNALING {label}, {who:?} {dir}: {bytes} bytes, {} segment(s)",
                    tcp::segments(*bytes)
                );
                writes[i].push((*who, *up, *bytes));
            }
            let mut config = client_config(SetupTiming::Browser);
            if standard_extensions {
                config = config.set_extension_map(str0m::rtp::ExtensionMap::standard());
            }
            let (_, av) = Pc::queued(
                config,
                SetupTiming::Browser,
                Instant::now(),
                PUBLISHER.parse().expect("address"),
                MediaRole::Publish,
                true,
            )
            .expect("an offer with video");
            let sdps = [
                ("publisher's offer (voice)", o.offer_sdp[0].clone()),
                ("publisher's offer (voice and video)", Some(av)),
                ("server's answer to the publisher", o.answer_sdp[0].clone()),
                ("player's offer (audio and video)", o.offer_sdp[1].clone()),
                ("server's answer to the player", o.answer_sdp[1].clone()),
            ];
            for (what, sdp) in &sdps {
                let sdp = sdp.as_deref().expect("exchanged");
                let bytes = media_message_bytes(true, sdp);
                println!(
                    "SDP {label}, {what}: {} bytes of SDP, {bytes} bytes as a message, {} segment(s)\n{sdp}",
                    sdp.len(),
                    tcp::segments(bytes)
                );
            }
        }
        // The same writes, each shorter now; the publisher's `publish` with its voice offer
        // took two segments and takes one.
        assert_eq!(
            writes[0].iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
            writes[1].iter().map(|w| (w.0, w.1)).collect::<Vec<_>>()
        );
        assert!(
            writes[0].iter().zip(&writes[1]).all(|(a, b)| b.2 < a.2),
            "{writes:?}"
        );
        let publish = |w: &Vec<(Who, bool, usize)>| {
            w.iter()
                .find(|x| x.0 == Who::Publisher && x.1)
                .map(|x| tcp::segments(x.2))
        };
        assert_eq!((publish(&writes[0]), publish(&writes[1])), (Some(2), Some(1)));
    }

    /// A clean path with 0–40 ms of jitter on every link (±20 ms around its mean; the player's
    /// leg adds its own, so up to 80 ms end to end): five seeds, scored at a single alignment.
    #[test]
    fn a_clean_call_with_jitter_is_scored() {
        let r = calls(0.0, Duration::from_millis(40), Duration::from_secs(2));
        let steps: Vec<u64> = r.iter().map(|x| x.2).collect();
        assert!(
            steps.iter().all(|&n| n == 0),
            "steps in speech per seed {steps:?}"
        );
        let (pesq, pesq_min) = median_min(r.iter().map(|x| x.0).collect());
        let (stoi, stoi_min) = median_min(r.iter().map(|x| x.1).collect());
        println!(
            "JITTER 0-40 ms per link: PESQ median {pesq:.2} min {pesq_min:.2}, STOI median {stoi:.3} min {stoi_min:.3}"
        );
        // Measured: PESQ 4.07 for all five; STOI 0.995 for all five (lowest 0.975 since the SDK's
        // offers are smaller: the jitter draws move); no 20 ms step in speech.
        assert!(
            pesq_min >= 3.9 && stoi_min >= 0.97,
            "PESQ {pesq_min:.2}, STOI {stoi_min:.3}"
        );
    }

    /// The stream quality events say what the network does: on a clean path the published
    /// and played streams are Excellent or Good with a high MOS; with 16 % loss on every link
    /// the publisher reports about that loss on its uplink, the player about 30 % on the wire
    /// (before RED), both streams Medium or Bad, while the player's MOS (what is heard after
    /// RED and FEC) stays high.
    #[test]
    fn the_quality_events_report_the_loss() {
        let mut figures = Vec::new();
        for per_leg in [0.0, 0.16] {
            let leg = Leg::lossy(per_leg, Duration::from_millis(50), Duration::from_millis(5));
            let network = Network {
                publisher: leg.clone(),
                player: leg,
                outages: vec![],
            };
            let mut call = Call::new(network, 3, Duration::ZERO, true);
            call.run(Duration::from_secs(15));
            let o = call.finish();
            // The events of the second half of the call (the windows full, RED's delay settled).
            let late = |(t, _, _): &&(Duration, Who, Quality)| *t >= Duration::from_secs(7);
            let publish: Vec<_> = o
                .quality
                .iter()
                .filter(late)
                .filter_map(|(_, _, q)| match q {
                    Quality::Publish(q) => Some(*q),
                    _ => None,
                })
                .collect();
            let play: Vec<_> = o
                .quality
                .iter()
                .filter(late)
                .filter_map(|(_, _, q)| match q {
                    Quality::Play(q) => Some(*q),
                    _ => None,
                })
                .collect();
            assert!(!publish.is_empty() && !play.is_empty(), "{:?}", o.quality);
            let times: Vec<u128> = o
                .quality
                .iter()
                .filter(|(_, _, q)| matches!(q, Quality::Publish(_)))
                .map(|(t, _, _)| ms(*t))
                .collect();
            println!(
                "EVENTS {:.0}% per link, publisher events at {times:?} ms",
                per_leg * 100.0
            );
            for q in &publish {
                println!(
                    "EVENTS {:.0}% per link, publisher: level {:?}, loss {:.3}, rtt {} ms, mos {:.2}, {:.0} kbit/s",
                    per_leg * 100.0,
                    q.level,
                    q.packet_lost_rate,
                    q.rtt,
                    q.mos,
                    q.audio_kbps
                );
            }
            for q in &play {
                println!(
                    "EVENTS {:.0}% per link, player: level {:?}, loss {:.3}, concealed {:.3}, delay {} ms, mos {:.2}",
                    per_leg * 100.0,
                    q.level,
                    q.packet_lost_rate,
                    q.audio_concealed_rate,
                    q.delay,
                    q.mos
                );
            }
            figures.push((per_leg, publish, play));
        }
        for (per_leg, publish, play) in figures {
            let good = |l: Level| matches!(l, Level::Excellent | Level::Good);
            let poor = |l: Level| matches!(l, Level::Medium | Level::Bad);
            let last = publish.last().expect("a publisher event");
            if per_leg == 0.0 {
                // (Unknown while no new receiver report from the server came in the window.)
                assert!(
                    publish
                        .iter()
                        .all(|q| !poor(q.level) && q.packet_lost_rate == 0.0)
                );
                assert!(good(last.level));
                assert!(play.iter().all(|q| good(q.level) && q.mos >= 4.0));
            } else {
                // The publisher learns its uplink's loss from the server's receiver reports,
                // seconds apart: the last event of the call has it.
                assert!(poor(last.level) && last.packet_lost_rate > 0.1, "{last:?}");
                // The player's loss is the wire's, before RED: Bad; what is heard (MOS, from
                // the frames concealed after RED and FEC) stays good.
                assert!(
                    play.iter()
                        .all(|q| poor(q.level) && q.packet_lost_rate > 0.15 && q.mos >= 3.5)
                );
            }
        }
    }

    /// How late the publisher's quality events follow its uplink: a call on a clean 100 ms RTT
    /// path; from 8 s to 20 s 20 % loss on the publisher's uplink; from 26 s to 31 s an outage
    /// of every link. Measured from each change to the first `on_publisher_quality_update`
    /// that reports it (loss: level Medium or worse; loss gone: Excellent or Good; outage:
    /// Die; back: a level again), with the server's receiver reports every 5 s (str0m's
    /// default, before) and every second (now), in one run.
    #[test]
    fn the_publisher_quality_events_follow_the_uplink() {
        let (lossy, clean) = (Duration::from_secs(8), Duration::from_secs(20));
        let (out, back) = (Duration::from_secs(26), Duration::from_secs(31));
        let mut figures = Vec::new();
        for (label, every) in [("reports every 5 s", 5), ("reports every 1 s", 1)] {
            let network = Network {
                publisher: Leg::lossy(0.0, Duration::from_millis(50), Duration::from_millis(5)),
                player: Leg::lossy(0.0, Duration::from_millis(50), Duration::from_millis(5)),
                outages: vec![(out, back)],
            };
            let setup = Setup {
                publish_reports: Duration::from_secs(every),
                ..Setup::default()
            };
            let mut call = Call::with_setup(network, 5, Duration::ZERO, true, setup);
            call.run(lossy);
            call.set_uplink_loss(Who::Publisher, 0.2);
            call.run(clean);
            call.set_uplink_loss(Who::Publisher, 0.0);
            call.run(back + Duration::from_secs(8));
            let o = call.finish();
            let publish = |q: &Quality, f: &dyn Fn(&crate::event::PublishStreamQuality) -> bool| matches!(q, Quality::Publish(p) if f(p));
            let poor = |p: &crate::event::PublishStreamQuality| matches!(p.level, Level::Medium | Level::Bad);
            let good =
                |p: &crate::event::PublishStreamQuality| matches!(p.level, Level::Excellent | Level::Good);
            let die = |p: &crate::event::PublishStreamQuality| p.level == Level::Die;
            let alive =
                |p: &crate::event::PublishStreamQuality| !matches!(p.level, Level::Die | Level::Unknown);
            let after = |from: Duration, f: &dyn Fn(&crate::event::PublishStreamQuality) -> bool| {
                first(&o, Who::Publisher, from, |q| publish(q, f)).map(|t| t - from)
            };
            let row = [
                after(lossy, &poor),
                after(clean, &good),
                after(out, &die),
                after(back, &alive),
            ];
            let times: Vec<(u128, String)> = o
                .quality
                .iter()
                .filter_map(|(t, w, q)| match (w, q) {
                    (Who::Publisher, Quality::Publish(p)) => {
                        Some((ms(*t), format!("{:?} {:.3}", p.level, p.packet_lost_rate)))
                    }
                    _ => None,
                })
                .collect();
            println!("EVENTS publisher, {label}: {times:?}");
            println!(
                "EVENTS publisher, {label}: loss shown {:?} ms after it began, gone {:?} ms after it ended; outage Die {:?} ms after it began, levels {:?} ms after it ended",
                row[0].map(ms),
                row[1].map(ms),
                row[2].map(ms),
                row[3].map(ms)
            );
            figures.push((every, row));
        }
        for (every, row) in figures {
            if every == 1 {
                // Measured 2 s, 5 s (the 3 s window still holds lossy reports at the first
                // event after), 3025 ms (3 s from the last datagram, in flight when the outage
                // began) and 110 ms (an event at once with the first arrival).
                let [loss, gone, die, alive] = row.map(|t| t.expect("reported"));
                assert!(loss <= Duration::from_secs(3), "{loss:?}");
                assert!(gone <= Duration::from_secs(6), "{gone:?}");
                assert!(die <= Duration::from_millis(3100), "{die:?}");
                assert!(alive <= Duration::from_secs(1), "{alive:?}");
            }
        }
    }

    /// FEC for a player without RED (Firefox, aiortc): the player's downlink loses 15 % from
    /// the start (100 ms RTT, the publisher's links clean), the player offers no RED, so the
    /// publisher's in-band FEC (Opus LBRR, decoded by the player from the next packet) is the
    /// only repair. Five seeds, with the server's reports carrying the player's loss to the
    /// publisher and without (before), in one run: the publisher's loss hint, the frames the
    /// player restored from FEC and concealed, PESQ and STOI.
    #[test]
    fn fec_follows_the_loss_of_a_player_without_red() {
        let lead_in = Duration::from_secs(2);
        let mut figures = Vec::new();
        for (label, forward) in [("without the players' loss upstream", false), ("with it", true)] {
            let mut paths = Vec::new();
            let mut rows = Vec::new();
            for seed in 1..=5 {
                let mut player = Leg::lossy(0.0, Duration::from_millis(50), Duration::from_millis(5));
                player.down.loss = 0.15;
                let network = Network {
                    publisher: Leg::lossy(0.0, Duration::from_millis(50), Duration::from_millis(5)),
                    player,
                    outages: vec![],
                };
                let setup = Setup {
                    player_red: false,
                    report_players_loss: forward,
                    ..Setup::default()
                };
                let mut call = Call::with_setup(network, seed, lead_in, false, setup);
                call.run(lead_in + Duration::from_secs(7));
                let stats = call.player_stats();
                let o = call.finish();
                // When the hint first reached 10 %, and its highest.
                let raised = o
                    .loss_hint
                    .iter()
                    .position(|h| *h >= 10)
                    .map(|i| FRAME_DURATION * (i as u32 + 1));
                let max = o.loss_hint.iter().copied().max().unwrap_or(0);
                let connected = o.connected[1];
                let path = tmp(&format!("nored-{forward}-{seed}.wav"));
                o.write_wav(&path);
                paths.push(path);
                rows.push((raised, connected, max, stats.jitter.concealed));
            }
            let scores = score_all(&paths);
            for p in &paths {
                let _ = std::fs::remove_file(p);
            }
            let mut pesq = Vec::new();
            for ((raised, connected, max, concealed), s) in rows.iter().zip(&scores) {
                let (p, st) = (
                    s["pesq"].as_f64().expect("PESQ"),
                    s["stoi"].as_f64().expect("STOI"),
                );
                println!(
                    "NORED {label}: player connected at {:?} ms, loss hint >= 10 % at {:?} ms (max {max} %), frames not played from a packet {concealed}, PESQ {p:.2} STOI {st:.3}",
                    connected.map(ms),
                    raised.map(ms)
                );
                pesq.push(p);
            }
            let (median, min) = median_min(pesq);
            println!("NORED {label}: PESQ median {median:.2} min {min:.2}");
            figures.push((forward, rows, median));
        }
        let (_, before, before_pesq) = &figures[0];
        let (_, after, after_pesq) = &figures[1];
        // The publisher's FEC follows the player's 15 %: its hint rises within a few seconds
        // of the player's connection (a report from the player, the server's statistics
        // event, a report to the publisher, the publisher's statistics event: each once a
        // second), where it stayed at the clean-network 2 % before; the calls score better.
        // (The frames decoded from the next packet's FEC are the same in both: the jitter
        // buffer's timing decides which, the encoder what they hold.)
        assert!(before.iter().all(|r| r.2 <= 2), "{before:?}");
        for (raised, connected, _, _) in after {
            let (raised, connected) = (raised.expect("the hint rose"), connected.expect("connected"));
            assert!(raised - connected <= Duration::from_secs(5), "{after:?}");
        }
        assert!(
            after_pesq > before_pesq,
            "PESQ {before_pesq:.2} -> {after_pesq:.2}"
        );
    }
    /// Publishers that are not the SDK (docs/quality.md, "Interop under loss"): Chromium's RED
    /// (one block at distance 1), plain Opus with in-band FEC (Firefox) and without (aiortc),
    /// through the SFU to the SDK's player (which offers RED), 10 % loss on every link from the
    /// start, ten seeds each, beside the SDK's own publisher. Prints the player's counts
    /// (`STEPS` lines) and the scores; floors below the figures measured. The SFU sends the
    /// player RED of the SDK's depth whatever the publisher sent (`red::History`); when it
    /// forwarded the publisher's own redundancy: Chromium 3.10 (2.60), plain Opus with FEC 1.83
    /// (1.55), without 1.29 (1.28); now 3.69 (3.55), 3.37 (2.16), 1.85 (1.42). The SDK's own
    /// RED, as deep already, is forwarded as it came: 4.07 (3.98) before and after.
    #[test]
    fn foreign_publishers_under_loss() {
        let lead_in = Duration::from_secs(2);
        let mut figures = Vec::new();
        for (name, publisher) in [
            ("sdk", Sender::Sdk),
            ("chromium", Sender::Chromium),
            ("plain opus with FEC", Sender::PlainOpus { fec: true }),
            ("plain opus without FEC", Sender::PlainOpus { fec: false }),
        ] {
            let setup = Setup {
                publisher,
                ..Setup::default()
            };
            println!("FOREIGN {name}:");
            let r = calls_seeded(0.10, Duration::from_millis(5), lead_in, setup, 10);
            let (median, min) = median_min(r.iter().map(|x| x.0).collect());
            let (stoi, stoi_min) = median_min(r.iter().map(|x| x.1).collect());
            println!(
                "FOREIGN {name} at 10 % per link: PESQ median {median:.2} min {min:.2}, STOI median {stoi:.2} min {stoi_min:.2}"
            );
            figures.push((name, median, min));
        }
        for (name, median, min) in &figures {
            println!("FOREIGN {name}: {median:.2} ({min:.2})");
        }
        // (median, lowest) floors per publisher, in the order above. Ten seeds, the server as
        // DTLS client: 4.07 (3.96), 3.68 (2.53), 3.14 (2.26), 1.64 (1.28); as DTLS server 4.07
        // (3.98), 3.69 (3.06), 3.53 (2.16), 1.85 (1.42). The lowest floors were set on five
        // seeds (Chromium's 3.3 breaks in either role over ten); the plain Opus publishers
        // lean lower with the server as DTLS client over twenty seeds (docs/quality.md, "Setup
        // under loss": not settled).
        let floors = [(3.9, 3.75), (3.5, 2.5), (3.1, 1.9), (1.6, 1.25)];
        for ((name, median, min), (median_floor, min_floor)) in figures.iter().zip(floors) {
            assert!(
                *median >= median_floor && *min >= min_floor,
                "{name}: PESQ median {median:.2}, lowest {min:.2}"
            );
        }
    }
}
