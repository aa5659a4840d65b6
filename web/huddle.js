// @ts-check
/**
 * huddle.js — the Huddle browser SDK: one ES module, no dependencies, no bundler.
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
 * ends it without retry. Retries go at once, then after 250 ms doubling to 5 s (±25% jitter), each
 * resuming the server session (session_id/resume_key) when the server still holds it; when it does
 * not, the SDK publishes and plays again what it had. A publisher is PUBLISHING once the server
 * accepted the stream and (with media) its peer connection is up; a player is PLAYING while the
 * stream is published and its peer connection is up. Error codes: `docs/errors.md`.
 *
 * @module huddle
 */

/** The signaling protocol version this SDK speaks. */
export const PROTOCOL_VERSION = 1;

/** The error codes this SDK produces or reacts to (the whole table is `docs/errors.md`). */
export const ErrorCode = Object.freeze({
  OK: 0,
  NOT_LOGGED_IN: 1000002,
  INVALID_PARAMETER: 1000006,
  STREAM_ID_TOO_LONG: 1000014,
  STREAM_ID_EMPTY: 1000015,
  STREAM_ID_INVALID_CHARACTER: 1000016,
  ALREADY_LOGGED_IN: 1002001,
  USER_ID_EMPTY: 1002005,
  ROOM_ID_EMPTY: 1002011,
  CONNECT_FAILED: 1002030,
  LOGIN_TIMEOUT: 1002031,
  AUTHENTICATION_FAILED: 1002033,
  KICKED_DUPLICATE_LOGIN: 1002050,
  TEMPORARY_BREAK: 1002051,
  RETRY_TIMEOUT: 1002053,
  KICKED_BY_SERVER: 1002055,
  KICKED_TOKEN_EXPIRED: 1002056,
  TOKEN_FORMAT: 1002074,
  TOKEN_DECRYPT: 1002075,
  TOKEN_EXPIRED: 1002078,
  TOKEN_USER_ID_MISMATCH: 1002079,
  TOKEN_ROOM_FORBIDDEN: 1002080,
  PUBLISH_FORBIDDEN: 1003025,
  PUBLISH_TEMPORARY_BREAK: 1003020,
  STREAM_NOT_FOUND: 1004002,
  PLAY_TEMPORARY_BREAK: 1004020,
  MALFORMED_MESSAGE: 1009001,
  RATE_LIMITED: 1009004,
  SLOW_CONSUMER: 1009005,
  SERVER_BUSY: 1009006,
  MEDIA_OFFER_INVALID: 1009007,
  SERVER_SHUTTING_DOWN: 1009008,
  INTERNAL: 1009099,
});

/** An error with its numbered code (`docs/errors.md`). */
export class HuddleError extends Error {
  /**
   * @param {number} code
   * @param {string} message
   */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "HuddleError";
    /** The numbered code. */
    this.code = code;
    /** What went wrong, without the code. */
    this.detail = message;
  }
}

/**
 * @typedef {"DISCONNECTED" | "CONNECTING" | "CONNECTED"} RoomState
 * @typedef {"LOGINING" | "LOGINED" | "LOGIN_FAILED" | "RECONNECTING" | "RECONNECTED" | "RECONNECT_FAILED" | "KICKOUT" | "LOGOUT" | "LOGOUT_FAILED"} RoomStateChangedReason
 * @typedef {"NO_PUBLISH" | "PUBLISH_REQUESTING" | "PUBLISHING"} PublisherState
 * @typedef {"NO_PLAY" | "PLAY_REQUESTING" | "PLAYING"} PlayerState
 * @typedef {"ADD" | "DELETE"} UpdateType
 * @typedef {{ userID: string, userName?: string }} User
 * @typedef {{ streamID: string, user: { userID: string, userName: string }, extraInfo: string }} StreamInfo
 * @typedef {{ streamID: string, state: PublisherState, errorCode: number, extendedData: string }} PublisherStateResult
 * @typedef {{ streamID: string, state: PlayerState, errorCode: number, extendedData: string }} PlayerStateResult
 * @typedef {{ userUpdate?: boolean, maxMemberCount?: number }} RoomConfig
 * @typedef {{ camera?: { audio?: boolean, video?: boolean, audioProcessing?: boolean, width?: number, height?: number, frameRate?: number } }} StreamSource
 * @typedef {{ bitrateKbps: number, packets: number, packetsLost: number, lossRate: number, jitterMs: number, rttMs: number, codec: string, frameWidth?: number, frameHeight?: number, fps?: number }} TrackStats
 * @typedef {{ streamID: string, direction: "publish" | "play", connectionState: string, audio: TrackStats | null, video: TrackStats | null }} StreamStats
 * @typedef {{ loginTimeoutMs?: number, attemptTimeoutMs?: number, reconnectBudgetMs?: number, retryDelayMinMs?: number, retryDelayMaxMs?: number, tokenWarningMs?: number, logoutTimeoutMs?: number, requestTimeoutMs?: number, iceGatheringTimeoutMs?: number, rtcConfiguration?: RTCConfiguration }} EngineOptions
 */

/**
 * The events of {@link HuddleEngine.on} and their listener arguments.
 * @typedef {{
 *   roomStateChanged: (roomID: string, reason: RoomStateChangedReason, errorCode: number, extendedData: string) => void,
 *   roomStateUpdate: (roomID: string, state: RoomState, errorCode: number, extendedData: string) => void,
 *   roomUserUpdate: (roomID: string, updateType: UpdateType, userList: User[]) => void,
 *   roomStreamUpdate: (roomID: string, updateType: UpdateType, streamList: StreamInfo[], extendedData: string) => void,
 *   publisherStateUpdate: (result: PublisherStateResult) => void,
 *   playerStateUpdate: (result: PlayerStateResult) => void,
 *   roomTokenWillExpire: (roomID: string, remainSecs: number) => void,
 *   playerRecvAudioFirstFrame: (streamID: string) => void,
 *   playerRecvVideoFirstFrame: (streamID: string) => void,
 *   debugError: (errorCode: number, funcName: string, info: string) => void,
 * }} EventMap
 */

const REASON_STATE = /** @type {Record<RoomStateChangedReason, RoomState>} */ ({
  LOGINING: "CONNECTING",
  LOGINED: "CONNECTED",
  LOGIN_FAILED: "DISCONNECTED",
  RECONNECTING: "CONNECTING",
  RECONNECTED: "CONNECTED",
  RECONNECT_FAILED: "DISCONNECTED",
  KICKOUT: "DISCONNECTED",
  LOGOUT: "DISCONNECTED",
  LOGOUT_FAILED: "DISCONNECTED",
});

/** Login refusals worth another attempt while reconnecting (as in the Rust SDK). */
const RETRIABLE_LOGIN_CODES = /** @type {number[]} */ ([
  ErrorCode.SERVER_BUSY,
  ErrorCode.SERVER_SHUTTING_DOWN,
  ErrorCode.RATE_LIMITED,
  ErrorCode.INTERNAL,
  ErrorCode.LOGIN_TIMEOUT,
  ErrorCode.SLOW_CONSUMER,
]);

const STREAM_ID_RE = /^[0-9A-Za-z_-]+$/;

/**
 * Checks a stream ID as the server does (the hosted SDKs' rules).
 * @param {string} streamId
 */
function checkStreamId(streamId) {
  if (typeof streamId !== "string" || streamId.length === 0) {
    throw new HuddleError(ErrorCode.STREAM_ID_EMPTY, "the stream ID is empty");
  }
  if (new TextEncoder().encode(streamId).length > 256) {
    throw new HuddleError(ErrorCode.STREAM_ID_TOO_LONG, "the stream ID is longer than 256 bytes");
  }
  if (!STREAM_ID_RE.test(streamId)) {
    throw new HuddleError(ErrorCode.STREAM_ID_INVALID_CHARACTER, "the stream ID has characters other than [0-9A-Za-z_-]");
  }
}

/**
 * The expiry (Unix seconds) in a Token04 token's clear-text header: the first 8 bytes after
 * "04", base64-decoded, big-endian. `null` when the token is not in that format.
 * @param {string} token
 * @returns {number | null}
 */
export function tokenExpire(token) {
  if (typeof token !== "string" || !token.startsWith("04") || token.length < 14) return null;
  try {
    // 12 base64 characters decode to 9 bytes: enough for the 8-byte expiry.
    const bin = atob(token.slice(2, 14));
    let v = 0;
    for (let i = 0; i < 8; i++) v = v * 256 + bin.charCodeAt(i);
    return Number.isSafeInteger(v) ? v : null;
  } catch {
    return null;
  }
}

/**
 * The signaling URL for a server address: `ws://host:port/ws` from `host:port`, `http://…`,
 * `ws://…` (with or without the path).
 * @param {string} serverUrl
 */
export function signalingUrl(serverUrl) {
  let s = String(serverUrl).trim();
  if (!/^[a-z]+:\/\//i.test(s)) s = `ws://${s}`;
  const u = new URL(s);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/ws";
  return u.toString();
}

/** @param {string} text */
function extended(text) {
  return text ? JSON.stringify({ message: text }) : "";
}

/** @param {any} u */
function userOut(u) {
  return { userID: u.user_id, userName: u.user_name };
}

/** @param {any} s */
function streamOut(s) {
  return { streamID: s.stream_id, user: { userID: s.user_id, userName: s.user_name }, extraInfo: s.extra_info || "" };
}

/**
 * Waits until the peer connection has gathered its candidates (no trickle), or `ms` passed.
 * Without STUN/TURN servers only host candidates exist, and the server (ICE-lite, UDP) can use
 * only UDP ones: Chromium gathers those at once but its TCP candidates (useless here) only
 * ~120 ms later, so the wait ends `settleMs` after the last UDP host candidate instead.
 * @param {RTCPeerConnection} pc
 * @param {number} ms
 * @param {number | null} settleMs null: wait for the end of gathering
 */
function gathered(pc, ms, settleMs = null) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    /** @type {any} */
    let settle = null;
    const done = () => {
      clearTimeout(timer);
      clearTimeout(settle);
      pc.removeEventListener("icegatheringstatechange", check);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve(undefined);
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    /** @param {RTCPeerConnectionIceEvent} e */
    const onCandidate = (e) => {
      if (!e.candidate) return done();
      if (settleMs !== null && / udp /i.test(` ${e.candidate.candidate} `)) {
        clearTimeout(settle);
        settle = setTimeout(done, settleMs);
      }
    };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
    pc.addEventListener("icecandidate", onCandidate);
    // Candidates gathered before the listener was added count too.
    if (settleMs !== null && / udp /i.test(pc.localDescription?.sdp ?? "")) settle = setTimeout(done, settleMs);
  });
}

/**
 * Puts VP8 first in a video transceiver's codec list (what the server forwards).
 * @param {RTCRtpTransceiver} t
 */
function preferVp8(t) {
  try {
    const caps = RTCRtpReceiver.getCapabilities?.("video") ?? RTCRtpSender.getCapabilities?.("video");
    if (!caps || typeof t.setCodecPreferences !== "function") return;
    const vp8 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === "video/vp8");
    const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== "video/vp8");
    if (vp8.length) t.setCodecPreferences([...vp8, ...rest]);
  } catch {
    // Not fatal: the server answers with what it supports.
  }
}

/** @param {RTCPeerConnection | null} pc */
function closePc(pc) {
  if (!pc) return;
  pc.onconnectionstatechange = null;
  pc.ontrack = null;
  try {
    pc.close();
  } catch {
    // already closed
  }
}

/**
 * One stream this engine publishes.
 * @typedef {{
 *   streamId: string, stream: MediaStream | null, extraInfo: string, state: PublisherState,
 *   registered: boolean, requested: boolean, pc: RTCPeerConnection | null, mediaUp: boolean,
 *   gen: number, offering: boolean, retryTimer: any, failures: number, stopped: boolean,
 *   waiters: { resolve: (v: any) => void, reject: (e: any) => void }[], last: Map<string, any>,
 * }} Publisher
 */

/**
 * One stream this engine plays.
 * @typedef {{
 *   streamId: string, state: PlayerState, available: boolean, requested: boolean,
 *   pc: RTCPeerConnection | null, mediaUp: boolean, gen: number, offering: boolean,
 *   retryTimer: any, failures: number, stopped: boolean, mediaStream: MediaStream, last: Map<string, any>,
 *   firstFrame: Set<string>,
 * }} Player
 */

/** The Huddle engine: one per app in the page. */
export class HuddleEngine {
  /**
   * @param {number} appId The AppID.
   * @param {string} serverUrl The server: `ws://host:port` (or `http://…`, or with `/ws`).
   * @param {EngineOptions} [options] Timings (defaults as in the Rust SDK) and the RTCConfiguration.
   */
  constructor(appId, serverUrl, options = {}) {
    this.appId = Number(appId);
    this.serverUrl = signalingUrl(serverUrl);
    this.options = {
      loginTimeoutMs: 10_000,
      attemptTimeoutMs: 5_000,
      reconnectBudgetMs: 20 * 60_000,
      retryDelayMinMs: 250,
      retryDelayMaxMs: 5_000,
      tokenWarningMs: 30_000,
      logoutTimeoutMs: 1_000,
      requestTimeoutMs: 10_000,
      iceGatheringTimeoutMs: 2_000,
      ...options,
    };
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {any} */
    this._room = null;
    /** @type {Map<string, Publisher>} */
    this._publishers = new Map();
    /** @type {Map<string, Player>} */
    this._players = new Map();
    /** Stopped while the connection was down: to unpublish / stop playing if the server session
     * is resumed (a fresh one has forgotten them anyway). @type {Set<string>} */
    this._unpublishLater = new Set();
    /** @type {Set<string>} */
    this._stopPlayLater = new Set();
    this._destroyed = false;
    /** TURN servers from the last `login_ok`. @type {RTCIceServer[]} */
    this._serverIceServers = [];
  }

  // ----- events -----

  /**
   * Adds a listener.
   * @template {keyof EventMap} K
   * @param {K} event
   * @param {EventMap[K]} fn
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return true;
  }

  /**
   * Removes a listener (all of the event's listeners without `fn`).
   * @template {keyof EventMap} K
   * @param {K} event
   * @param {EventMap[K]} [fn]
   */
  off(event, fn) {
    if (!fn) return this._listeners.delete(event);
    return this._listeners.get(event)?.delete(fn) ?? false;
  }

  /**
   * @param {string} event
   * @param {...any} args
   */
  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (e) {
        console.error(`huddle: a "${event}" listener threw`, e);
      }
    }
  }

  // ----- room -----

  /**
   * Logs in to a room with a Token04 token (browsers log in with tokens only). Resolves `true`
   * once logged in; rejects with a {@link HuddleError} when the login fails (the
   * `roomStateChanged` LOGIN_FAILED event carries the same code).
   * @param {string} roomId
   * @param {string} token
   * @param {User} user
   * @param {RoomConfig} [config]
   * @returns {Promise<boolean>}
   */
  loginRoom(roomId, token, user, config = {}) {
    if (this._destroyed) return Promise.reject(new HuddleError(1000001, "the engine was destroyed"));
    if (this._room) {
      return Promise.reject(new HuddleError(ErrorCode.ALREADY_LOGGED_IN, "already logged in to a room: log out first"));
    }
    if (!roomId) return Promise.reject(new HuddleError(ErrorCode.ROOM_ID_EMPTY, "the room ID is empty"));
    if (!user || !user.userID) return Promise.reject(new HuddleError(ErrorCode.USER_ID_EMPTY, "the user ID is empty"));
    if (!token) return Promise.reject(new HuddleError(ErrorCode.AUTHENTICATION_FAILED, "a token is needed to log in"));
    const now = Date.now();
    const room = {
      roomId,
      token,
      user: { user_id: String(user.userID), user_name: String(user.userName || user.userID) },
      userUpdate: !!config.userUpdate,
      maxMemberCount: config.maxMemberCount ?? 0,
      phase: "login",
      deadline: now + this.options.loginTimeoutMs,
      /** @type {WebSocket | null} */
      ws: null,
      link: "down",
      loginSeq: 0,
      everConnected: false,
      seq: 1,
      /** @type {Map<number, any>} */
      pending: new Map(),
      /** @type {{session_id: string, resume_key: string} | null} */
      resume: null,
      heartbeatMs: 5000,
      sessionTimeoutMs: 15000,
      lastRx: 0,
      failures: 0,
      /** @type {any} */ timer: null,
      /** @type {any} */ deadlineTimer: null,
      /** @type {any} */ pingTimer: null,
      /** @type {any} */ tokenTimer: null,
      /** `roomTokenWillExpire` was emitted for the current token (local timer or server). */
      tokenWarned: false,
      clockOffsetMs: 0,
      closeReason: "",
      /** @type {Map<string, any>} */ users: new Map(),
      /** @type {Map<string, any>} */ streams: new Map(),
      /** @type {any} */ waiter: null,
    };
    this._room = room;
    const promise = new Promise((resolve, reject) => {
      room.waiter = { resolve, reject };
    });
    this._armToken();
    this._roomEvent("LOGINING", 0, "");
    room.failures = 1; // the first attempt used the immediate retry
    room.deadlineTimer = setTimeout(() => this._onDeadline(room), this.options.loginTimeoutMs);
    this._connect();
    return promise;
  }

  /**
   * Logs out (answered by the server, or given up after a second) and stops every publisher
   * and player.
   * @param {string} [roomId]
   */
  async logoutRoom(roomId) {
    const room = this._room;
    if (!room || (roomId && roomId !== room.roomId)) return;
    const ready = room.phase === "online" && room.link === "ready";
    this._leave("LOGOUT", 0, "");
    if (ready) {
      room.phase = "loggingout";
      const done = this._request({ type: "logout" }, this.options.logoutTimeoutMs).catch(() => {});
      await done;
    }
    this._finish(room);
  }

  /**
   * Replaces the session's token (before it expires: see `roomTokenWillExpire`).
   * @param {string} roomId
   * @param {string} token
   */
  async renewToken(roomId, token) {
    const room = this._room;
    if (!room || roomId !== room.roomId) throw new HuddleError(ErrorCode.NOT_LOGGED_IN, "not logged in to this room");
    const adopt = () => {
      if (this._room !== room) return;
      room.token = token;
      this._armToken();
    };
    if (room.phase === "online" && room.link === "ready") {
      try {
        await this._request({ type: "renew_token", token });
      } catch (/** @type {any} */ e) {
        // A refused token does not replace the one in force (nor serve the next login); one
        // whose answer was lost with the connection may have been taken: the next login checks it.
        if (e.code === ErrorCode.TEMPORARY_BREAK) adopt();
        this._emit("debugError", e.code ?? ErrorCode.INTERNAL, "renewToken", e.detail ?? String(e));
        throw e;
      }
    }
    // Accepted (or not sent while the connection is down: the next login uses and checks it).
    adopt();
    return true;
  }

  /** The room's state now. @returns {RoomState} */
  getRoomState() {
    const r = this._room;
    if (!r) return "DISCONNECTED";
    return r.phase === "online" ? "CONNECTED" : "CONNECTING";
  }

  /** The other users the app has been told about. @returns {User[]} */
  getUsers() {
    return this._room ? [...this._room.users.values()].map(userOut) : [];
  }

  /** The streams of others the app has been told about. @returns {StreamInfo[]} */
  getStreams() {
    return this._room ? [...this._room.streams.values()].map(streamOut) : [];
  }

  /** Logs out, stops everything; the engine cannot be used afterwards. */
  destroy() {
    if (this._room) this.logoutRoom(this._room.roomId);
    this._destroyed = true;
    this._listeners.clear();
  }

  // ----- local media -----

  /**
   * The microphone and/or camera as a MediaStream. `audioProcessing: false` turns echo
   * cancellation, noise suppression and auto gain off (for tests with a tone or speech file).
   * @param {StreamSource} [source]
   * @returns {Promise<MediaStream>}
   */
  async createStream(source = { camera: { audio: true, video: true } }) {
    const cam = source.camera ?? { audio: true, video: true };
    const processing = cam.audioProcessing !== false;
    const audio = cam.audio === false ? false : { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing };
    const video =
      cam.video === false || cam.video === undefined
        ? false
        : { width: { ideal: cam.width ?? 640 }, height: { ideal: cam.height ?? 360 }, frameRate: { ideal: cam.frameRate ?? 15 } };
    if (!audio && !video) throw new HuddleError(ErrorCode.INVALID_PARAMETER, "neither audio nor video asked for");
    try {
      return await navigator.mediaDevices.getUserMedia({ audio, video });
    } catch (/** @type {any} */ e) {
      throw new HuddleError(ErrorCode.INVALID_PARAMETER, `no media: ${e?.name ?? ""} ${e?.message ?? e}`.trim());
    }
  }

  /** Stops a stream's tracks (the camera light goes off). @param {MediaStream} stream */
  destroyStream(stream) {
    stream?.getTracks().forEach((t) => t.stop());
  }

  // ----- publishing -----

  /**
   * Publishes `stream` under `streamId`: registers the stream (others see it in
   * `roomStreamUpdate`), then sends its media on a sendonly peer connection. Resolves once
   * PUBLISHING (`true`), or `false` if the app stops it first; rejects with a {@link HuddleError}
   * if the server refuses it or the room ends. Without a stream, only the signaling part is done.
   * @param {string} streamId
   * @param {MediaStream | null} [stream]
   * @param {{ extraInfo?: string }} [config]
   */
  startPublishingStream(streamId, stream = null, config = {}) {
    try {
      checkStreamId(streamId);
    } catch (e) {
      return Promise.reject(e);
    }
    const room = this._room;
    if (!room) return Promise.reject(new HuddleError(ErrorCode.NOT_LOGGED_IN, "log in first"));
    const existing = this._publishers.get(streamId);
    if (existing) {
      return existing.state === "PUBLISHING" ? Promise.resolve(true) : new Promise((resolve, reject) => existing.waiters.push({ resolve, reject }));
    }
    /** @type {Publisher} */
    const pub = {
      streamId,
      stream,
      extraInfo: config.extraInfo ?? "",
      state: "NO_PUBLISH",
      registered: false,
      requested: false,
      pc: null,
      mediaUp: false,
      gen: 0,
      offering: false,
      retryTimer: null,
      failures: 0,
      stopped: false,
      waiters: [],
      last: new Map(),
    };
    this._publishers.set(streamId, pub);
    this._unpublishLater.delete(streamId);
    const promise = new Promise((resolve, reject) => pub.waiters.push({ resolve, reject }));
    this._refreshPublisher(pub, 0, "");
    if (this._ready()) this._sendPublish(pub);
    return promise;
  }

  /**
   * Stops publishing (the local stream's tracks keep running: {@link destroyStream} stops them).
   * @param {string} streamId
   */
  stopPublishingStream(streamId) {
    const pub = this._publishers.get(streamId);
    if (!pub) return false;
    this._dropPublisher(pub, 0, "");
    if (pub.registered || pub.requested) {
      if (this._ready()) this._request({ type: "unpublish", stream_id: streamId }).catch(() => {});
      else this._unpublishLater.add(streamId);
    }
    return true;
  }

  /** @param {Publisher} pub */
  _sendPublish(pub) {
    pub.requested = true;
    this._request({ type: "publish", stream_id: pub.streamId, extra_info: pub.extraInfo }).then(
      () => {
        if (pub.stopped || this._publishers.get(pub.streamId) !== pub) return;
        pub.registered = true;
        pub.failures = 0;
        if (pub.stream) this._offerPublish(pub);
        this._refreshPublisher(pub, 0, "");
      },
      (e) => {
        if (pub.stopped || this._publishers.get(pub.streamId) !== pub) return;
        if (e.code === ErrorCode.TEMPORARY_BREAK) return; // the re-login publishes again
        this._dropPublisher(pub, e.code, e.detail);
      },
    );
  }

  /**
   * @param {Publisher} pub
   * @param {number} code
   * @param {string} message
   */
  _dropPublisher(pub, code, message) {
    pub.stopped = true;
    clearTimeout(pub.retryTimer);
    pub.gen++;
    closePc(pub.pc);
    pub.pc = null;
    this._publishers.delete(pub.streamId);
    // Stopped by the app: the pending start resolves `false`; stopped by an error: it rejects.
    const err = code ? new HuddleError(code, message || "publishing stopped") : null;
    for (const w of pub.waiters.splice(0)) err ? w.reject(err) : w.resolve(false);
    if (pub.state !== "NO_PUBLISH") {
      pub.state = "NO_PUBLISH";
      this._emit("publisherStateUpdate", { streamID: pub.streamId, state: "NO_PUBLISH", errorCode: code, extendedData: extended(message) });
    }
  }

  /**
   * @param {Publisher} pub
   * @param {number} code
   * @param {string} message
   */
  _refreshPublisher(pub, code, message) {
    const online = this._room?.phase === "online";
    /** @type {PublisherState} */
    const state = online && pub.registered && (!pub.stream || pub.mediaUp) ? "PUBLISHING" : "PUBLISH_REQUESTING";
    if (state !== pub.state) {
      pub.state = state;
      this._emit("publisherStateUpdate", { streamID: pub.streamId, state, errorCode: code, extendedData: extended(message) });
    }
    if (state === "PUBLISHING") for (const w of pub.waiters.splice(0)) w.resolve(true);
  }

  /** @param {Publisher} pub */
  async _offerPublish(pub) {
    const stream = pub.stream;
    if (!stream) return;
    const gen = ++pub.gen;
    clearTimeout(pub.retryTimer);
    closePc(pub.pc);
    pub.mediaUp = false;
    pub.offering = true;
    pub.last.clear();
    const pc = new RTCPeerConnection(this._rtcConfig());
    pub.pc = pc;
    try {
      for (const track of stream.getTracks()) {
        const t = pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
        if (track.kind === "video") preferVp8(t);
      }
      pc.onconnectionstatechange = () => {
        if (pub.gen === gen && pc.connectionState === "failed") this._mediaFailed(pub, "publish", ErrorCode.PUBLISH_TEMPORARY_BREAK, "the peer connection failed");
      };
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, this.options.iceGatheringTimeoutMs, this._hostOnly() ? 30 : null);
      if (pub.gen !== gen) return;
      const reply = await this._request({ type: "media_offer", stream_id: pub.streamId, kind: "publish", sdp: pc.localDescription?.sdp ?? "" });
      if (pub.gen !== gen) return;
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
      pub.offering = false;
    } catch (/** @type {any} */ e) {
      if (pub.gen !== gen) return;
      pub.offering = false;
      const code = e?.code ?? ErrorCode.PUBLISH_TEMPORARY_BREAK;
      if (code === ErrorCode.TEMPORARY_BREAK) {
        // The signaling connection broke mid-offer: the next login offers again.
        closePc(pub.pc);
        pub.pc = null;
        pub.mediaUp = false;
        return;
      }
      if (code === ErrorCode.MEDIA_OFFER_INVALID) {
        this.stopPublishingStream(pub.streamId);
        this._emit("publisherStateUpdate", { streamID: pub.streamId, state: "NO_PUBLISH", errorCode: code, extendedData: extended(e.detail ?? String(e)) });
        return;
      }
      this._mediaFailed(pub, "publish", ErrorCode.PUBLISH_TEMPORARY_BREAK, e?.detail ?? String(e));
    }
  }

  // ----- playing -----

  /**
   * Plays a stream of this AppID (published now or later). Resolves with the MediaStream that
   * will carry its audio and video (attach it to a media element at once: tracks are added when
   * the peer connection comes up, and replaced when the stream comes back after a break);
   * rejects with a {@link HuddleError} if the server refuses to play it.
   * @param {string} streamId
   * @returns {Promise<MediaStream>}
   */
  startPlayingStream(streamId) {
    try {
      checkStreamId(streamId);
    } catch (e) {
      return Promise.reject(e);
    }
    if (!this._room) return Promise.reject(new HuddleError(ErrorCode.NOT_LOGGED_IN, "log in first"));
    const existing = this._players.get(streamId);
    if (existing) return Promise.resolve(existing.mediaStream);
    /** @type {Player} */
    const player = {
      streamId,
      state: "NO_PLAY",
      available: false,
      requested: false,
      pc: null,
      mediaUp: false,
      gen: 0,
      offering: false,
      retryTimer: null,
      failures: 0,
      stopped: false,
      mediaStream: new MediaStream(),
      last: new Map(),
      firstFrame: new Set(),
    };
    this._players.set(streamId, player);
    this._stopPlayLater.delete(streamId);
    this._refreshPlayer(player, 0, "");
    if (!this._ready()) return Promise.resolve(player.mediaStream);
    return this._sendPlay(player).then(() => player.mediaStream);
  }

  /** @param {string} streamId */
  stopPlayingStream(streamId) {
    const player = this._players.get(streamId);
    if (!player) return false;
    this._dropPlayer(player, 0, "");
    if (this._ready()) this._request({ type: "stop_play", stream_id: streamId }).catch(() => {});
    else if (player.requested) this._stopPlayLater.add(streamId);
    return true;
  }

  /**
   * @param {Player} player
   * @returns {Promise<void>}
   */
  _sendPlay(player) {
    player.requested = true;
    return this._request({ type: "play", stream_id: player.streamId }).then(
      () => {},
      (e) => {
        if (player.stopped) return;
        if (e.code === ErrorCode.TEMPORARY_BREAK) return;
        this._dropPlayer(player, e.code, e.detail);
        throw e;
      },
    );
  }

  /**
   * @param {Player} player
   * @param {number} code
   * @param {string} message
   */
  _dropPlayer(player, code, message) {
    player.stopped = true;
    clearTimeout(player.retryTimer);
    player.gen++;
    closePc(player.pc);
    player.pc = null;
    for (const t of player.mediaStream.getTracks()) player.mediaStream.removeTrack(t);
    this._players.delete(player.streamId);
    if (player.state !== "NO_PLAY") {
      player.state = "NO_PLAY";
      this._emit("playerStateUpdate", { streamID: player.streamId, state: "NO_PLAY", errorCode: code, extendedData: extended(message) });
    }
  }

  /**
   * @param {Player} player
   * @param {number} code
   * @param {string} message
   */
  _refreshPlayer(player, code, message) {
    const online = this._room?.phase === "online";
    /** @type {PlayerState} */
    const state = online && player.available && player.mediaUp ? "PLAYING" : "PLAY_REQUESTING";
    if (state !== player.state) {
      player.state = state;
      this._emit("playerStateUpdate", { streamID: player.streamId, state, errorCode: code, extendedData: extended(message) });
    }
  }

  /** @param {Player} player */
  async _offerPlay(player) {
    const gen = ++player.gen;
    clearTimeout(player.retryTimer);
    closePc(player.pc);
    player.mediaUp = false;
    player.offering = true;
    player.last.clear();
    const pc = new RTCPeerConnection(this._rtcConfig());
    player.pc = pc;
    try {
      pc.addTransceiver("audio", { direction: "recvonly" });
      preferVp8(pc.addTransceiver("video", { direction: "recvonly" }));
      pc.ontrack = (ev) => {
        if (player.gen !== gen) return;
        const ms = player.mediaStream;
        for (const old of ms.getTracks().filter((t) => t.kind === ev.track.kind)) ms.removeTrack(old);
        ms.addTrack(ev.track);
        this._watchFirstFrame(player, gen, ev.track);
      };
      pc.onconnectionstatechange = () => {
        if (player.gen === gen && pc.connectionState === "failed") this._mediaFailed(player, "play", ErrorCode.PLAY_TEMPORARY_BREAK, "the peer connection failed");
      };
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, this.options.iceGatheringTimeoutMs, this._hostOnly() ? 30 : null);
      if (player.gen !== gen) return;
      const reply = await this._request({ type: "media_offer", stream_id: player.streamId, kind: "play", sdp: pc.localDescription?.sdp ?? "" });
      if (player.gen !== gen) return;
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
      player.offering = false;
    } catch (/** @type {any} */ e) {
      if (player.gen !== gen) return;
      player.offering = false;
      const code = e?.code ?? ErrorCode.PLAY_TEMPORARY_BREAK;
      if (code === ErrorCode.TEMPORARY_BREAK) {
        // The signaling connection broke mid-offer: the play_update after the next login offers again.
        closePc(player.pc);
        player.pc = null;
        player.mediaUp = false;
        return;
      }
      if (code === ErrorCode.STREAM_NOT_FOUND && !player.available) return; // play_update brings it back
      this._mediaFailed(player, "play", ErrorCode.PLAY_TEMPORARY_BREAK, e?.detail ?? String(e));
    }
  }

  /**
   * `playerRecvAudioFirstFrame` / `playerRecvVideoFirstFrame`, once per kind and
   * startPlayingStream (as in the Rust SDK): when the first media of that kind arrives. A remote
   * track starts muted and is unmuted by its first RTP packet; the receiver's stats then confirm
   * it (audio: a packet received, whether or not the stream is rendered yet; video: a frame
   * decoded), polled every 10 ms for at most 10 s.
   * @param {Player} player
   * @param {number} gen
   * @param {MediaStreamTrack} track
   */
  _watchFirstFrame(player, gen, track) {
    const kind = track.kind;
    if (player.firstFrame.has(kind) || (kind !== "audio" && kind !== "video")) return;
    const pc = player.pc;
    const live = () => !player.stopped && player.gen === gen && !player.firstFrame.has(kind);
    const fire = () => {
      if (!live()) return;
      player.firstFrame.add(kind);
      this._emit(kind === "audio" ? "playerRecvAudioFirstFrame" : "playerRecvVideoFirstFrame", player.streamId);
    };
    const deadline = Date.now() + 10_000;
    const poll = async () => {
      if (!live() || !pc) return;
      try {
        const report = await pc.getStats(track);
        let decoded = false;
        report.forEach((r) => {
          if (r.type !== "inbound-rtp") return;
          if (kind === "audio" && ((r.packetsReceived ?? 0) > 0 || (r.totalSamplesReceived ?? 0) > 0)) decoded = true;
          if (kind === "video" && (r.framesDecoded ?? 0) > 0) decoded = true;
        });
        if (decoded) return fire();
      } catch {
        return; // the connection closed meanwhile
      }
      if (Date.now() < deadline) setTimeout(poll, 10);
    };
    if (track.muted) track.addEventListener("unmute", () => poll(), { once: true });
    else poll();
  }

  /**
   * A stream's media connection failed: report it and offer again after a backoff delay.
   * @param {Publisher | Player} s
   * @param {"publish" | "play"} kind
   * @param {number} code
   * @param {string} message
   */
  _mediaFailed(s, kind, code, message) {
    if (s.stopped) return;
    s.gen++;
    closePc(s.pc);
    s.pc = null;
    s.mediaUp = false;
    s.offering = false;
    if (kind === "publish") this._refreshPublisher(/** @type {Publisher} */ (s), code, message);
    else this._refreshPlayer(/** @type {Player} */ (s), code, message);
    clearTimeout(s.retryTimer);
    const delay = this._backoffDelay(s.failures++);
    s.retryTimer = setTimeout(() => {
      if (s.stopped || !this._ready()) return;
      if (kind === "publish") {
        const pub = /** @type {Publisher} */ (s);
        if (pub.registered) this._offerPublish(pub);
      } else {
        const player = /** @type {Player} */ (s);
        if (player.available) this._offerPlay(player);
      }
    }, Math.max(delay, 200));
  }

  // ----- stats -----

  /**
   * Statistics of a published or played stream: bitrate, loss, RTT and jitter per kind, computed
   * since the previous call (the first call gives bitrate 0).
   * @param {string} streamId
   * @returns {Promise<StreamStats | null>}
   */
  async getStats(streamId) {
    /** @type {Publisher | Player | undefined} */
    const s = this._publishers.get(streamId) ?? this._players.get(streamId);
    if (!s || !s.pc) return null;
    const direction = this._publishers.get(streamId) === s ? "publish" : "play";
    const report = await s.pc.getStats();
    /** @type {Map<string, any>} */
    const byId = new Map();
    report.forEach((r) => byId.set(r.id, r));
    let rttMs = 0;
    for (const r of byId.values()) {
      if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded" && r.currentRoundTripTime !== undefined) {
        rttMs = r.currentRoundTripTime * 1000;
      }
    }
    const now = performance.now();
    /** @type {{audio: TrackStats | null, video: TrackStats | null}} */
    const out = { audio: null, video: null };
    for (const r of byId.values()) {
      const wanted = direction === "publish" ? "outbound-rtp" : "inbound-rtp";
      if (r.type !== wanted || (r.kind !== "audio" && r.kind !== "video")) continue;
      const bytes = direction === "publish" ? r.bytesSent ?? 0 : r.bytesReceived ?? 0;
      const packets = direction === "publish" ? r.packetsSent ?? 0 : r.packetsReceived ?? 0;
      const prev = s.last.get(r.kind);
      const bitrateKbps = prev && now > prev.t ? ((bytes - prev.bytes) * 8) / (now - prev.t) : 0;
      let packetsLost = 0;
      let lossRate = 0;
      let jitterMs = 0;
      let trackRtt = rttMs;
      if (direction === "play") {
        packetsLost = Math.max(0, r.packetsLost ?? 0);
        jitterMs = (r.jitter ?? 0) * 1000;
        const dLost = packetsLost - (prev?.lost ?? 0);
        const dRecv = packets - (prev?.packets ?? 0);
        lossRate = dLost + dRecv > 0 ? Math.max(0, dLost) / (dLost + dRecv) : 0;
      } else {
        const remote = r.remoteId ? byId.get(r.remoteId) : undefined;
        if (remote) {
          packetsLost = Math.max(0, remote.packetsLost ?? 0);
          lossRate = remote.fractionLost ?? 0;
          jitterMs = (remote.jitter ?? 0) * 1000;
          if (remote.roundTripTime !== undefined) trackRtt = remote.roundTripTime * 1000;
        }
      }
      s.last.set(r.kind, { t: now, bytes, packets, lost: packetsLost });
      const codec = r.codecId ? byId.get(r.codecId)?.mimeType ?? "" : "";
      /** @type {TrackStats} */
      const ts = { bitrateKbps, packets, packetsLost, lossRate, jitterMs, rttMs: trackRtt, codec };
      if (r.kind === "video") {
        ts.frameWidth = r.frameWidth ?? 0;
        ts.frameHeight = r.frameHeight ?? 0;
        ts.fps = r.framesPerSecond ?? 0;
      }
      out[/** @type {"audio" | "video"} */ (r.kind)] = ts;
    }
    return { streamID: streamId, direction, connectionState: s.pc.connectionState, ...out };
  }

  // ----- signaling connection -----

  /** No STUN/TURN server configured: host candidates only. */
  _hostOnly() {
    const servers = this._rtcConfig().iceServers ?? [];
    return servers.length === 0;
  }

  /**
   * The peer connections' configuration: the TURN servers of the last `login_ok` (the server's
   * `[turn]`), then `options.rtcConfiguration` over it (its own `iceServers` replace the server's;
   * `iceTransportPolicy: "relay"` forces TURN).
   * @returns {RTCConfiguration}
   */
  _rtcConfig() {
    return {
      iceServers: this._serverIceServers ?? [],
      bundlePolicy: "max-bundle",
      rtcpMuxPolicy: "require",
      ...(this.options.rtcConfiguration ?? {}),
    };
  }

  _ready() {
    const r = this._room;
    return !!r && r.phase === "online" && r.link === "ready" && r.ws?.readyState === WebSocket.OPEN;
  }

  /** @param {number} failures */
  _backoffDelay(failures) {
    if (failures === 0) return 0;
    const base = Math.min(this.options.retryDelayMinMs * 2 ** Math.min(failures - 1, 20), this.options.retryDelayMaxMs);
    return base * (0.75 + Math.random() * 0.5);
  }

  _connect() {
    const room = this._room;
    if (!room) return;
    this._closeWs(room);
    clearTimeout(room.timer);
    room.link = "opening";
    room.loginSeq = 0;
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new WebSocket(this.serverUrl);
    } catch (e) {
      room.link = "down";
      this._linkDown(room, `cannot connect: ${e}`);
      return;
    }
    room.ws = ws;
    room.timer = setTimeout(() => {
      if (room.ws !== ws) return;
      this._closeWs(room);
      this._linkDown(room, "the connection attempt timed out");
    }, this.options.attemptTimeoutMs);
    ws.onopen = () => {
      room.everConnected = true;
    };
    ws.onmessage = (ev) => {
      if (room.ws !== ws || this._room !== room) return;
      let msg;
      try {
        msg = JSON.parse(String(ev.data));
      } catch {
        return;
      }
      this._onMessage(room, msg);
    };
    ws.onclose = (ev) => {
      if (room.ws !== ws) return;
      room.ws = null;
      const why = room.closeReason || `the connection closed (${ev.code}${ev.reason ? " " + ev.reason : ""})`;
      room.closeReason = "";
      this._linkDown(room, why);
    };
    ws.onerror = () => {};
  }

  /** @param {any} room */
  _closeWs(room) {
    const ws = room.ws;
    room.ws = null;
    clearInterval(room.pingTimer);
    room.pingTimer = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closed
      }
    }
  }

  /**
   * Sends a request and waits for its reply (`ok`, `pong`, `media_answer`, …).
   * @param {any} msg
   * @param {number} [timeoutMs]
   * @returns {Promise<any>}
   */
  _request(msg, timeoutMs = this.options.requestTimeoutMs) {
    const room = this._room;
    if (!room || !room.ws || room.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new HuddleError(ErrorCode.TEMPORARY_BREAK, "not connected"));
    }
    const seq = room.seq++;
    const ws = room.ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        room.pending.delete(seq);
        const why = `no answer to ${msg.type} in ${timeoutMs} ms`;
        reject(new HuddleError(ErrorCode.TEMPORARY_BREAK, why));
        // A server that does not answer is as good as gone: reconnect (or finish a logout).
        if (room.ws === ws && this._room === room) {
          this._closeWs(room);
          this._linkDown(room, why);
        }
      }, timeoutMs);
      room.pending.set(seq, { resolve, reject, timer, type: msg.type });
      room.ws.send(JSON.stringify({ ...msg, seq }));
    });
  }

  /**
   * @param {any} room
   * @param {any} msg
   */
  _onMessage(room, msg) {
    room.lastRx = Date.now();
    switch (msg.type) {
      case "hello": {
        room.clockOffsetMs = (msg.server_time_ms ?? Date.now()) - Date.now();
        if (room.link !== "opening" || room.loginSeq) return;
        const seq = room.seq++;
        room.loginSeq = seq;
        /** @type {any} */
        const login = {
          type: "login",
          seq,
          protocol: PROTOCOL_VERSION,
          app_id: this.appId,
          room_id: room.roomId,
          user: room.user,
          auth: { token: room.token },
          user_status_notify: room.userUpdate,
          max_member_count: room.maxMemberCount,
        };
        if (room.phase === "reconnecting" && room.resume) login.resume = room.resume;
        room.ws.send(JSON.stringify(login));
        return;
      }
      case "login_ok":
        if (room.link === "opening" && msg.seq === room.loginSeq) this._onLoginOk(room, msg);
        return;
      case "ok":
      case "pong":
      case "media_answer": {
        const p = room.pending.get(msg.seq);
        if (p) {
          room.pending.delete(msg.seq);
          clearTimeout(p.timer);
          p.resolve(msg);
        }
        return;
      }
      case "error": {
        if (msg.seq === undefined || msg.seq === null) {
          // The server closes the connection after this; the close drives what follows.
          room.closeReason = `${msg.code}: ${msg.message}`;
          this._emit("debugError", msg.code, "signaling", msg.message);
          return;
        }
        if (room.link === "opening" && msg.seq === room.loginSeq) {
          this._onLoginError(room, msg.code, msg.message);
          return;
        }
        const p = room.pending.get(msg.seq);
        if (p) {
          room.pending.delete(msg.seq);
          clearTimeout(p.timer);
          p.reject(new HuddleError(msg.code, msg.message));
        }
        return;
      }
      case "user_update":
        if (msg.room_id === room.roomId && room.phase === "online" && room.userUpdate) this._applyUsers(room, msg.update_type, msg.users);
        return;
      case "stream_update":
        if (msg.room_id === room.roomId && room.phase === "online") this._applyStreams(room, msg.update_type, msg.streams);
        return;
      case "play_update": {
        if (room.phase !== "online") return;
        const player = this._players.get(msg.stream_id);
        if (!player) return;
        const was = player.available;
        player.available = !!msg.available;
        if (player.available && (!was || !player.pc)) {
          player.failures = 0;
          this._offerPlay(player);
        } else if (!player.available) {
          player.gen++;
          clearTimeout(player.retryTimer);
          closePc(player.pc);
          player.pc = null;
          player.mediaUp = false;
          player.offering = false;
        }
        this._refreshPlayer(player, 0, "");
        return;
      }
      case "media_state":
        this._onMediaState(msg);
        return;
      case "token_will_expire":
        // The server's clock decides the expiry: its warning stands in for the local timer when
        // it comes first; one for a token already replaced is stale.
        if (room.phase !== "online" || room.tokenWarned) return;
        if (room.tokenExpire !== null && room.tokenExpire !== msg.expire) return;
        clearTimeout(room.tokenTimer);
        room.tokenTimer = null;
        room.tokenWarned = true;
        this._emit("roomTokenWillExpire", room.roomId, Math.max(0, msg.remain_secs ?? 0));
        return;
      case "kicked":
        // Also the end of a session whose token expired unrenewed (1002056).
        if (room.phase === "done" || room.phase === "loggingout") return;
        this._leave("KICKOUT", msg.code, msg.message);
        this._finish(room);
        return;
      default:
        return;
    }
  }

  /** @param {any} msg */
  _onMediaState(msg) {
    const s = msg.kind === "publish" ? this._publishers.get(msg.stream_id) : this._players.get(msg.stream_id);
    if (!s || s.stopped || s.offering) return;
    if (msg.state === "connected") {
      s.mediaUp = true;
      s.failures = 0;
    } else {
      if (msg.kind === "play" && msg.code === ErrorCode.STREAM_NOT_FOUND) {
        // The publisher stopped: play_update brings the stream back.
        s.mediaUp = false;
        this._refreshPlayer(/** @type {Player} */ (s), msg.code, msg.message);
        return;
      }
      const code = msg.kind === "publish" ? ErrorCode.PUBLISH_TEMPORARY_BREAK : ErrorCode.PLAY_TEMPORARY_BREAK;
      this._mediaFailed(s, msg.kind, msg.code || code, msg.message);
      return;
    }
    if (msg.kind === "publish") this._refreshPublisher(/** @type {Publisher} */ (s), 0, "");
    else this._refreshPlayer(/** @type {Player} */ (s), 0, "");
  }

  /**
   * @param {any} room
   * @param {any} ok
   */
  _onLoginOk(room, ok) {
    const first = room.phase === "login";
    const resumed = !!ok.resumed && !first;
    clearTimeout(room.timer);
    clearTimeout(room.deadlineTimer);
    room.link = "ready";
    room.heartbeatMs = Math.max(100, ok.heartbeat_ms ?? 5000);
    room.sessionTimeoutMs = Math.max(ok.session_timeout_ms ?? 15000, room.heartbeatMs * 2);
    room.resume = { session_id: ok.session_id, resume_key: ok.resume_key };
    // TURN servers with fresh short-lived credentials (a server with `[turn]`); used by every
    // peer connection made from now on.
    this._serverIceServers = Array.isArray(ok.ice_servers) ? ok.ice_servers : [];
    room.failures = 0;
    room.phase = "online";
    room.lastRx = Date.now();
    clearInterval(room.pingTimer);
    const ws = room.ws;
    room.pingTimer = setInterval(() => this._heartbeat(room, ws), Math.min(room.heartbeatMs, 1000));
    room.nextPing = Date.now() + room.heartbeatMs;
    if (room.tokenExpire === null && ok.token_expire) this._armExpiry(ok.token_expire);

    this._roomEvent(first ? "LOGINED" : "RECONNECTED", 0, "");
    this._syncLists(room, ok.users ?? [], ok.streams ?? []);
    if (first && room.waiter) {
      room.waiter.resolve(true);
      room.waiter = null;
    }
    if (resumed) {
      // The server session is the one we had: finish what was stopped during the break.
      for (const id of this._unpublishLater) this._request({ type: "unpublish", stream_id: id }).catch(() => {});
      for (const id of this._stopPlayLater) this._request({ type: "stop_play", stream_id: id }).catch(() => {});
    }
    this._unpublishLater.clear();
    this._stopPlayLater.clear();
    if (!resumed) {
      // A fresh server session knows nothing of ours: publish and play again.
      for (const pub of this._publishers.values()) {
        pub.registered = false;
        pub.requested = false;
        pub.gen++;
        closePc(pub.pc);
        pub.pc = null;
        pub.mediaUp = false;
        pub.offering = false;
      }
      for (const player of this._players.values()) {
        player.requested = false;
        player.available = false;
        player.gen++;
        closePc(player.pc);
        player.pc = null;
        player.mediaUp = false;
        player.offering = false;
      }
    }
    for (const pub of this._publishers.values()) {
      if (pub.registered) {
        // The server kept the session and its media connections.
        if (pub.stream && !pub.pc) this._offerPublish(pub);
        this._refreshPublisher(pub, 0, "");
      } else this._sendPublish(pub);
    }
    // Play again even on a resumed session: the play_update that follows tells the availability now.
    for (const player of this._players.values()) this._sendPlay(player).catch(() => {});
  }

  /**
   * @param {any} room
   * @param {number} code
   * @param {string} message
   */
  _onLoginError(room, code, message) {
    if (room.phase === "login") {
      this._leave("LOGIN_FAILED", code, message);
      this._finish(room);
    } else if (room.phase === "reconnecting" && RETRIABLE_LOGIN_CODES.includes(code)) {
      this._closeWs(room);
      this._linkDown(room, message);
    } else if (room.phase === "reconnecting") {
      this._leave("RECONNECT_FAILED", code, message);
      this._finish(room);
    }
  }

  /**
   * @param {any} room
   * @param {WebSocket} ws
   */
  _heartbeat(room, ws) {
    if (this._room !== room || room.ws !== ws || room.link !== "ready") return;
    const now = Date.now();
    if (now >= room.lastRx + room.sessionTimeoutMs) {
      this._closeWs(room);
      this._linkDown(room, "nothing heard from the server");
      return;
    }
    if (now >= room.nextPing) {
      room.nextPing = now + room.heartbeatMs;
      this._request({ type: "ping" }, room.sessionTimeoutMs).catch(() => {});
    }
  }

  /**
   * The current connection is gone (closed, failed or given up).
   * @param {any} room
   * @param {string} why
   */
  _linkDown(room, why) {
    if (this._room !== room) return;
    clearTimeout(room.timer);
    clearInterval(room.pingTimer);
    room.pingTimer = null;
    room.link = "down";
    for (const p of room.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new HuddleError(ErrorCode.TEMPORARY_BREAK, why));
    }
    room.pending.clear();
    switch (room.phase) {
      case "done":
        return;
      case "loggingout":
        this._finish(room);
        return;
      case "online":
        room.phase = "reconnecting";
        room.deadline = Date.now() + this.options.reconnectBudgetMs;
        clearTimeout(room.deadlineTimer);
        room.deadlineTimer = setTimeout(() => this._onDeadline(room), this.options.reconnectBudgetMs);
        this._roomEvent("RECONNECTING", ErrorCode.TEMPORARY_BREAK, why);
        for (const pub of this._publishers.values()) this._refreshPublisher(pub, ErrorCode.PUBLISH_TEMPORARY_BREAK, why);
        for (const player of this._players.values()) this._refreshPlayer(player, ErrorCode.PLAY_TEMPORARY_BREAK, why);
        break;
      default:
        break;
    }
    const delay = this._backoffDelay(room.failures++);
    if (delay === 0) this._connect();
    else room.timer = setTimeout(() => this._connect(), delay);
  }

  /** @param {any} room */
  _onDeadline(room) {
    if (this._room !== room) return;
    if (room.phase === "login") {
      const [code, why] = room.everConnected
        ? [ErrorCode.LOGIN_TIMEOUT, "the server did not answer the login in time"]
        : [ErrorCode.CONNECT_FAILED, "could not connect to the server"];
      this._leave("LOGIN_FAILED", code, why);
      this._finish(room);
    } else if (room.phase === "reconnecting") {
      this._leave("RECONNECT_FAILED", ErrorCode.RETRY_TIMEOUT, "could not reconnect within the retry budget");
      this._finish(room);
    }
  }

  /**
   * Ends the room for the app: reports the room state, then every publisher and player as
   * stopped with the same code.
   * @param {RoomStateChangedReason} reason
   * @param {number} code
   * @param {string} message
   */
  _leave(reason, code, message) {
    const room = this._room;
    if (!room) return;
    this._roomEvent(reason, code, message);
    if (room.waiter) {
      room.waiter.reject(new HuddleError(code || ErrorCode.NOT_LOGGED_IN, message || `the login ended: ${reason}`));
      room.waiter = null;
    }
    for (const pub of [...this._publishers.values()]) this._dropPublisher(pub, code, message);
    for (const player of [...this._players.values()]) this._dropPlayer(player, code, message);
    clearTimeout(room.tokenTimer);
    room.tokenTimer = null;
  }

  /** @param {any} room */
  _finish(room) {
    room.phase = "done";
    this._unpublishLater.clear();
    this._stopPlayLater.clear();
    clearTimeout(room.timer);
    clearTimeout(room.deadlineTimer);
    clearTimeout(room.tokenTimer);
    for (const p of room.pending.values()) clearTimeout(p.timer);
    room.pending.clear();
    this._closeWs(room);
    room.link = "down";
    if (this._room === room) this._room = null;
  }

  /**
   * @param {RoomStateChangedReason} reason
   * @param {number} code
   * @param {string} message
   */
  _roomEvent(reason, code, message) {
    const room = this._room;
    if (!room) return;
    const ext = extended(message);
    this._emit("roomStateChanged", room.roomId, reason, code, ext);
    this._emit("roomStateUpdate", room.roomId, REASON_STATE[reason], code, ext);
  }

  // ----- users and streams the app sees -----

  /**
   * Reports the differences between what the app was told and the room as the server describes it.
   * @param {any} room
   * @param {any[]} users
   * @param {any[]} streams
   */
  _syncLists(room, users, streams) {
    const me = room.user.user_id;
    if (room.userUpdate) {
      const now = new Map(users.filter((u) => u.user_id !== me).map((u) => [u.user_id, u]));
      const gone = [...room.users.values()].filter((u) => !now.has(u.user_id));
      const added = [...now.values()].filter((u) => !room.users.has(u.user_id));
      room.users = now;
      if (gone.length) this._emit("roomUserUpdate", room.roomId, "DELETE", gone.map(userOut));
      if (added.length) this._emit("roomUserUpdate", room.roomId, "ADD", added.map(userOut));
    }
    const same = (/** @type {any} */ a, /** @type {any} */ b) => !!a && !!b && JSON.stringify(a) === JSON.stringify(b);
    const now = new Map(streams.filter((s) => s.user_id !== me).map((s) => [s.stream_id, s]));
    const gone = [...room.streams.entries()].filter(([id, s]) => !same(now.get(id), s)).map(([, s]) => s);
    const added = [...now.entries()].filter(([id, s]) => !same(room.streams.get(id), s)).map(([, s]) => s);
    room.streams = now;
    if (gone.length) this._emit("roomStreamUpdate", room.roomId, "DELETE", gone.map(streamOut), "");
    if (added.length) this._emit("roomStreamUpdate", room.roomId, "ADD", added.map(streamOut), "");
  }

  /**
   * @param {any} room
   * @param {"Add" | "Delete"} type
   * @param {any[]} users
   */
  _applyUsers(room, type, users) {
    const changed = [];
    for (const u of users) {
      if (u.user_id === room.user.user_id) continue;
      if (type === "Add" ? !room.users.has(u.user_id) : room.users.has(u.user_id)) changed.push(u);
      if (type === "Add") room.users.set(u.user_id, u);
      else room.users.delete(u.user_id);
    }
    if (changed.length) this._emit("roomUserUpdate", room.roomId, type === "Add" ? "ADD" : "DELETE", changed.map(userOut));
  }

  /**
   * @param {any} room
   * @param {"Add" | "Delete"} type
   * @param {any[]} streams
   */
  _applyStreams(room, type, streams) {
    const changed = [];
    for (const s of streams) {
      if (s.user_id === room.user.user_id) continue;
      if (type === "Add") {
        const old = room.streams.get(s.stream_id);
        if (!old || JSON.stringify(old) !== JSON.stringify(s)) changed.push(s);
        room.streams.set(s.stream_id, s);
      } else if (room.streams.delete(s.stream_id)) changed.push(s);
    }
    if (changed.length) this._emit("roomStreamUpdate", room.roomId, type === "Add" ? "ADD" : "DELETE", changed.map(streamOut), "");
  }

  // ----- tokens -----

  _armToken() {
    const room = this._room;
    if (!room) return;
    clearTimeout(room.tokenTimer);
    room.tokenTimer = null;
    room.tokenExpire = null;
    room.tokenWarned = false;
    const expire = tokenExpire(room.token);
    if (expire !== null) this._armExpiry(expire);
  }

  /**
   * Fires `roomTokenWillExpire` `tokenWarningMs` before `expire` (Unix seconds, server clock).
   * @param {number} expire
   */
  _armExpiry(expire) {
    const room = this._room;
    if (!room) return;
    room.tokenExpire = expire;
    clearTimeout(room.tokenTimer);
    const serverNow = Date.now() + room.clockOffsetMs;
    const delay = Math.max(0, expire * 1000 - this.options.tokenWarningMs - serverNow);
    // setTimeout holds at most 2^31-1 ms (~24.8 days); re-arm for longer tokens.
    const step = Math.min(delay, 2 ** 31 - 1);
    room.tokenTimer = setTimeout(() => {
      if (this._room !== room || room.tokenExpire !== expire) return;
      if (step < delay) return this._armExpiry(expire);
      if (room.phase !== "online" && room.phase !== "reconnecting") return;
      if (room.tokenWarned) return;
      room.tokenWarned = true;
      const remain = Math.max(0, Math.floor((expire * 1000 - (Date.now() + room.clockOffsetMs)) / 1000));
      this._emit("roomTokenWillExpire", room.roomId, remain);
    }, step);
  }
}

/**
 * The sound level of a MediaStream's audio, 0–100, from a WebAudio AnalyserNode (RMS over the
 * last ~20 ms, on a log scale: -60 dBFS → 0, 0 dBFS → 100). Remote streams must also be attached
 * to a media element (muted is enough) for Chromium to feed WebAudio.
 */
export class SoundLevelMeter {
  /**
   * @param {MediaStream} stream
   * @param {AudioContext} [context] A shared AudioContext (one is made otherwise).
   */
  constructor(stream, context) {
    this.context = context ?? new AudioContext();
    this._own = !context;
    this.source = this.context.createMediaStreamSource(stream);
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.source.connect(this.analyser);
    this._buf = new Float32Array(this.analyser.fftSize);
  }

  /** The RMS of the last block, linear (0–1). */
  rms() {
    this.analyser.getFloatTimeDomainData(this._buf);
    let sum = 0;
    for (const v of this._buf) sum += v * v;
    return Math.sqrt(sum / this._buf.length);
  }

  /** The level, 0–100. */
  level() {
    const rms = this.rms();
    if (rms <= 0) return 0;
    const db = 20 * Math.log10(rms);
    return Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  }

  close() {
    try {
      this.source.disconnect();
    } catch {
      // already disconnected
    }
    if (this._own) this.context.close().catch(() => {});
  }
}
