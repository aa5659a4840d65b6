// @ts-check
/**
 * huddle.js — the Huddle browser SDK: ES modules, no dependencies, no bundler. This file is the
 * entry point; the SDK's parts are in `sdk/` beside it (served under `/sdk/`, see `docs/web.md`).
 *
 * It speaks the signaling protocol of `docs/protocol.md` (JSON over one WebSocket per logged-in
 * room) and standard browser WebRTC (one RTCPeerConnection per stream and direction: the client
 * offers, the server answers; no trickle, so offers wait for ICE gathering). The API follows the
 * hosted web RTC SDKs:
 *
 * ```js
 * import { HuddleEngine } from "/sdk/huddle.js";
 * const engine = new HuddleEngine(appId, "ws://127.0.0.1:7880");
 * engine.on("roomStreamUpdate", (roomID, updateType, streamList) => { … });
 * await engine.loginRoom("room-1", token, { userID: "alice", userName: "Alice" }, { userUpdate: true });
 * const local = await engine.createStream({ camera: { audio: true, video: false } });
 * await engine.startPublishingStream("alice-main", local);
 * const remote = await engine.startPlayingStream("bob-main");   // attach to a <video>/<audio>
 * engine.stopPlayingStream("bob-main");
 * engine.stopPublishingStream("alice-main");
 * await engine.logoutRoom("room-1");
 * ```
 *
 * States and codes mirror the Rust SDK (`crates/huddle/src/lib.rs`): the room goes
 * LOGINING → LOGINED, and on a broken connection RECONNECTING (1002051) → RECONNECTED, or
 * RECONNECT_FAILED (1002053) when the retry budget (20 min) is spent; KICKOUT (1002050/1002055)
 * ends it without retry. Retries go at once, then after 250 ms doubling to 5 s (±25% jitter; at most
 * 400 ms apart in the first 30 s of a break, so that its end is noticed at once), each
 * resuming the server session (session_id/resume_key) when the server still holds it; when it does
 * not, the SDK publishes and plays again what it had. A publisher is PUBLISHING once the server
 * accepted the stream and (with media) its peer connection is up; a player is PLAYING while the
 * stream is published and its peer connection is up. Error codes: `docs/errors.md`.
 *
 * @module huddle
 */

export { PROTOCOL_VERSION, signalingUrl } from "./sdk/protocol.js";
export { ErrorCode, HuddleError } from "./sdk/errors.js";
export { tokenExpire } from "./sdk/token.js";
export { QualityLevel, qualityLevelOf, remoteLevels } from "./sdk/quality.js";
export { levelFromDbfs, VoiceActivity, ActiveSpeakers, SoundLevelMeter } from "./sdk/levels.js";
export { HuddleEngine } from "./sdk/engine.js";

/** @typedef {import("./sdk/types.js").RoomState} RoomState */
/** @typedef {import("./sdk/types.js").RoomStateChangedReason} RoomStateChangedReason */
/** @typedef {import("./sdk/types.js").PublisherState} PublisherState */
/** @typedef {import("./sdk/types.js").PlayerState} PlayerState */
/** @typedef {import("./sdk/types.js").UpdateType} UpdateType */
/** @typedef {import("./sdk/types.js").RemoteDeviceStatus} RemoteDeviceStatus */
/** @typedef {import("./sdk/types.js").User} User */
/** @typedef {import("./sdk/types.js").BroadcastMessageInfo} BroadcastMessageInfo */
/** @typedef {import("./sdk/types.js").BarrageMessageInfo} BarrageMessageInfo */
/** @typedef {import("./sdk/types.js").RoomExtraInfo} RoomExtraInfo */
/** @typedef {import("./sdk/types.js").ServerResponse} ServerResponse */
/** @typedef {import("./sdk/types.js").StreamInfo} StreamInfo */
/** @typedef {import("./sdk/types.js").PublisherStateResult} PublisherStateResult */
/** @typedef {import("./sdk/types.js").PlayerStateResult} PlayerStateResult */
/** @typedef {import("./sdk/types.js").RoomConfig} RoomConfig */
/** @typedef {import("./sdk/types.js").StreamSource} StreamSource */
/** @typedef {import("./sdk/types.js").TrackStats} TrackStats */
/** @typedef {import("./sdk/types.js").StreamStats} StreamStats */
/** @typedef {import("./sdk/types.js").SoundLevelConfig} SoundLevelConfig */
/** @typedef {import("./sdk/types.js").SoundLevelInfo} SoundLevelInfo */
/** @typedef {import("./sdk/types.js").EngineOptions} EngineOptions */
/** @typedef {import("./sdk/types.js").EventMap} EventMap */
