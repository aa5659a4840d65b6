// @ts-check
/** @module huddle/engine — `HuddleEngine`: rooms, publishing, playing, quality, sound levels. */

import { ErrorCode, RETRIABLE_LOGIN_CODES, DEFAULT_TIMINGS, RETRY_FAST_WINDOW_MS, RETRY_FAST_MAX_MS, HuddleError } from "./errors.js";
import { PROTOCOL_VERSION, REASON_STATE, checkImText, checkStreamId, signalingUrl, extended, userOut, streamOut } from "./protocol.js";
import { tokenExpire } from "./token.js";
import { levelTick } from "./monitor.js";
import { qualityTick, streamStats } from "./stats.js";
import { gathered, preferVp8, closePc, withOpusBitrate, OPUS_SEND_BITRATE } from "./pc.js";
import { LEVEL_NAMES } from "./quality.js";
import { LEVEL_FRAME_MS, ActiveSpeakers } from "./levels.js";

/** @typedef {import("./types.js").RoomState} RoomState */
/** @typedef {import("./types.js").RoomStateChangedReason} RoomStateChangedReason */
/** @typedef {import("./types.js").PublisherState} PublisherState */
/** @typedef {import("./types.js").PlayerState} PlayerState */
/** @typedef {import("./types.js").User} User */
/** @typedef {import("./types.js").ServerResponse} ServerResponse */
/** @typedef {import("./types.js").StreamInfo} StreamInfo */
/** @typedef {import("./types.js").RoomConfig} RoomConfig */
/** @typedef {import("./types.js").StreamSource} StreamSource */
/** @typedef {import("./types.js").StreamStats} StreamStats */
/** @typedef {import("./types.js").SoundLevelConfig} SoundLevelConfig */
/** @typedef {import("./types.js").EngineOptions} EngineOptions */
/** @typedef {import("./types.js").EventMap} EventMap */
/** @typedef {import("./levels.js").LevelMonitor} LevelMonitor */

/**
 * One stream this engine publishes.
 * @typedef {{
 *   streamId: string, stream: MediaStream | null, extraInfo: string, state: PublisherState,
 *   registered: boolean, requested: boolean, pc: RTCPeerConnection | null, mediaUp: boolean,
 *   gen: number, offering: boolean, retryTimer: any, failures: number, stopped: boolean,
 *   waiters: { resolve: (v: any) => void, reject: (e: any) => void }[], last: Map<string, any>,
 *   audioMuted: boolean, videoMuted: boolean, sentStates: { audio: string, video: string },
 * }} Publisher
 */

/**
 * One stream this engine plays.
 * @typedef {{
 *   streamId: string, state: PlayerState, available: boolean, requested: boolean,
 *   pc: RTCPeerConnection | null, mediaUp: boolean, gen: number, offering: boolean,
 *   retryTimer: any, failures: number, stopped: boolean, mediaStream: MediaStream, last: Map<string, any>,
 *   firstFrame: Set<string>, qualityRx?: number, muted: { audio: boolean, video: boolean },
 * }} Player
 */


/** The Huddle engine: one per app in the page. */
export class HuddleEngine {
  /**
   * @param {number} appId The AppID.
   * @param {string | string[]} serverUrl The server: `ws://host:port` (or `http://…`, or with
   *   `/ws`); or several servers of one deployment, the first preferred. As in the Rust SDK
   *   (`EngineProfile::fallback_servers`), a connection stays with a server while it answers;
   *   an attempt that fails, times out or is refused as busy or shutting down moves to the next,
   *   and a connection that was up and broke is retried on its own server first.
   * @param {EngineOptions} [options] Timings (defaults as in the Rust SDK) and the RTCConfiguration.
   */
  constructor(appId, serverUrl, options = {}) {
    this.appId = Number(appId);
    /** The servers' signaling URLs, the first preferred. */
    this.serverUrls = (Array.isArray(serverUrl) ? serverUrl : [serverUrl]).map(signalingUrl);
    if (this.serverUrls.length === 0) throw new HuddleError(ErrorCode.INVALID_PARAMETER, "no server address");
    /** The first (preferred) server's signaling URL. */
    this.serverUrl = this.serverUrls[0];
    this.options = {
      ...DEFAULT_TIMINGS,
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
    /** Other users' last reported levels. @type {Map<string, {up: number, down: number, at: number}>} */
    this._remoteQuality = new Map();
    /** @type {any} */
    this._qualityTimer = null;
    this._qualityTicks = 0;
    this._ownDead = false;
    /** Stopped while the connection was down: to unpublish / stop playing if the server session
     * is resumed (a fresh one has forgotten them anyway). @type {Set<string>} */
    this._unpublishLater = new Set();
    /** @type {Set<string>} */
    this._stopPlayLater = new Set();
    this._destroyed = false;
    /** TURN servers from the last `login_ok`. @type {RTCIceServer[]} */
    this._serverIceServers = [];
    /** `muteMicrophone`: every published stream's audio tracks are disabled (silence). */
    this._micMuted = false;
    /** The sound-level monitor while it runs. @type {LevelMonitor | null} */
    this._levels = null;
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
      /** The index in `serverUrls` of the server connections go to. */
      server: 0,
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

  /**
   * Sends a broadcast message to every other user of the room: reliable, in order; 1 to 1024
   * bytes; at most 2 a second per user and 10 per room. Resolves `{ errorCode, messageID }`:
   * 0 and the message's ID, or the code (1009071, 1009072 over the rates; 1000002 when the room
   * is not connected). The others get `IMRecvBroadcastMessage`.
   * @param {string} roomId
   * @param {string} message
   * @returns {Promise<{ errorCode: number, messageID: number }>}
   */
  async sendBroadcastMessage(roomId, message) {
    const r = await this._im(roomId, { type: "send_broadcast_message", message: checkImText(message) });
    return { errorCode: r.errorCode, messageID: Number(r.reply?.message_id ?? 0) };
  }

  /**
   * Sends a barrage message to every other user of the room: best effort (the server drops it
   * for a recipient whose connection is congested); 1 to 1024 bytes; at most 20 a second per
   * room. Resolves `{ errorCode, messageID }` (the ID as a string, as ZEGO's). The others get
   * `IMRecvBarrageMessage`.
   * @param {string} roomId
   * @param {string} message
   * @returns {Promise<{ errorCode: number, messageID: string }>}
   */
  async sendBarrageMessage(roomId, message) {
    const r = await this._im(roomId, { type: "send_barrage_message", message: checkImText(message) });
    return { errorCode: r.errorCode, messageID: r.errorCode === 0 ? String(r.reply?.message_id ?? "") : "" };
  }

  /**
   * Sends a custom command to the users `toUserList` names (every other user of the room when
   * empty); 1 to 1024 bytes; at most 100 users. Users not in the room are skipped; none left:
   * 1009073. The recipients get `IMRecvCustomCommand`.
   * @param {string} roomId
   * @param {string} command
   * @param {string[]} [toUserList] user IDs
   * @returns {Promise<ServerResponse>}
   */
  async sendCustomCommand(roomId, command, toUserList = []) {
    const r = await this._im(roomId, { type: "send_custom_command", command: checkImText(command), to_users: toUserList });
    return { errorCode: r.errorCode, extendedData: r.message };
  }

  /**
   * Sets the extra info of a stream this engine publishes (at most 1024 bytes); kept and sent
   * again with every publish of it. The room gets `streamExtraInfoUpdate`.
   * @param {string} streamId
   * @param {string} extraInfo
   * @returns {Promise<ServerResponse>}
   */
  async setStreamExtraInfo(streamId, extraInfo) {
    if (new TextEncoder().encode(extraInfo).length > 1024) {
      throw new HuddleError(ErrorCode.EXTRA_INFO_TOO_LONG, "the extra info is longer than 1024 bytes");
    }
    const pub = this._publishers.get(streamId);
    if (!pub) return { errorCode: ErrorCode.STREAM_NOT_FOUND, extendedData: "this engine does not publish the stream" };
    pub.extraInfo = extraInfo;
    if (!pub.registered || !this._ready()) return { errorCode: 0, extendedData: "" };
    const r = await this._im(this._room?.roomId ?? "", { type: "set_stream_extra_info", stream_id: streamId, extra_info: extraInfo });
    return { errorCode: r.errorCode, extendedData: r.message };
  }

  /**
   * Sets the room's extra info `key` (1 to 10 bytes; one key per room) to `value` (at most 128
   * bytes); at most 10 times a second per room. The others, and every later login, get
   * `roomExtraInfoUpdate`.
   * @param {string} roomId
   * @param {string} key
   * @param {string} value
   * @returns {Promise<ServerResponse>}
   */
  async setRoomExtraInfo(roomId, key, value) {
    const bytes = (/** @type {string} */ s) => new TextEncoder().encode(s).length;
    if (bytes(key) < 1 || bytes(key) > 10) {
      throw new HuddleError(ErrorCode.ROOM_EXTRA_INFO_KEY_INVALID, "the key must be 1 to 10 bytes");
    }
    if (bytes(value) > 128) throw new HuddleError(ErrorCode.ROOM_EXTRA_INFO_VALUE_TOO_LONG, "the value is longer than 128 bytes");
    const r = await this._im(roomId, { type: "set_room_extra_info", key, value });
    return { errorCode: r.errorCode, extendedData: r.message };
  }

  /**
   * A message or extra info request: the server's answer, or its refusal as a code (as ZEGO's
   * promises resolve with an error code rather than reject).
   * @param {string} roomId
   * @param {any} msg
   * @returns {Promise<{ errorCode: number, message: string, reply: any }>}
   */
  async _im(roomId, msg) {
    const room = this._room;
    if (!room || roomId !== room.roomId) throw new HuddleError(ErrorCode.NOT_LOGGED_IN, "not logged in to this room");
    if (!this._ready()) return { errorCode: ErrorCode.NOT_LOGGED_IN, message: "the room is not connected", reply: null };
    try {
      return { errorCode: 0, message: "", reply: await this._request(msg) };
    } catch (/** @type {any} */ e) {
      return { errorCode: e.code ?? ErrorCode.INTERNAL, message: e.detail ?? String(e), reply: null };
    }
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
    this.stopSoundLevelMonitor();
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
      audioMuted: false,
      videoMuted: false,
      sentStates: { audio: "open", video: "open" },
    };
    this._publishers.set(streamId, pub);
    this._applyPublishMute(pub);
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

  // ----- mute -----

  /**
   * Mutes or unmutes the microphone: the audio tracks of every published stream are disabled
   * (the browser then sends silence frames, keeping the stream's timing), and the players get
   * `remoteMicStatusUpdate` MUTE. Holds for streams published later.
   * @param {boolean} mute
   * @returns {boolean}
   */
  muteMicrophone(mute) {
    this._micMuted = !!mute;
    for (const pub of this._publishers.values()) this._applyPublishMute(pub);
    return true;
  }

  /** Whether the microphone is muted ({@link muteMicrophone}). */
  isMicrophoneMuted() {
    return this._micMuted;
  }

  /**
   * Stops or resumes sending a published stream's audio (silence is sent; players are told
   * MUTE). As the ZEGO Web SDK, the stream is named by its local MediaStream; its stream ID
   * is taken too. `false` when no published stream matches.
   * @param {MediaStream | string} stream
   * @param {boolean} mute
   */
  mutePublishStreamAudio(stream, mute) {
    return this._mutePublish(stream, "audio", mute);
  }

  /**
   * Stops or resumes sending a published stream's video (the browser sends black frames while
   * the track is disabled; players are told MUTE). See {@link mutePublishStreamAudio}.
   * @param {MediaStream | string} stream
   * @param {boolean} mute
   */
  mutePublishStreamVideo(stream, mute) {
    return this._mutePublish(stream, "video", mute);
  }

  /**
   * @param {MediaStream | string} stream
   * @param {"audio" | "video"} kind
   * @param {boolean} mute
   */
  _mutePublish(stream, kind, mute) {
    let found = false;
    for (const pub of this._publishers.values()) {
      if (pub.streamId !== stream && pub.stream !== stream) continue;
      found = true;
      if (kind === "audio") pub.audioMuted = !!mute;
      else pub.videoMuted = !!mute;
      this._applyPublishMute(pub);
    }
    return found;
  }

  /**
   * Stops or resumes receiving a played stream's audio: the server stops sending it to this
   * page (the downlink is spared) and its track is disabled here; unmuted, it is sent again.
   * `false` when the stream is not played.
   * @param {string} streamID
   * @param {boolean} mute
   */
  mutePlayStreamAudio(streamID, mute) {
    return this._mutePlay(streamID, "audio", mute);
  }

  /**
   * Stops or resumes receiving a played stream's video (resumed at a keyframe the server asks
   * the publisher for). See {@link mutePlayStreamAudio}.
   * @param {string} streamID
   * @param {boolean} mute
   */
  mutePlayStreamVideo(streamID, mute) {
    return this._mutePlay(streamID, "video", mute);
  }

  /**
   * @param {string} streamID
   * @param {"audio" | "video"} kind
   * @param {boolean} mute
   */
  _mutePlay(streamID, kind, mute) {
    const player = this._players.get(streamID);
    if (!player) return false;
    mute = !!mute;
    for (const t of player.mediaStream.getTracks()) if (t.kind === kind) t.enabled = !mute;
    if (player.muted[kind] === mute) return true;
    player.muted[kind] = mute;
    if (player.requested && this._ready()) this._sendMutePlay(player.streamId, kind, mute);
    return true;
  }

  /**
   * @param {string} streamId
   * @param {"audio" | "video"} kind
   * @param {boolean} mute
   */
  _sendMutePlay(streamId, kind, mute) {
    this._request({ type: "mute_play", stream_id: streamId, track: kind, mute }).catch((e) => {
      if (e.code !== ErrorCode.TEMPORARY_BREAK) this._emit("debugError", e.code, "mutePlayStream", e.detail ?? e.message);
    });
  }

  /**
   * Applies the microphone's and the stream's mutes to a publisher's tracks, and tells the
   * server the states that changed (when it knows the stream).
   * @param {Publisher} pub
   */
  _applyPublishMute(pub) {
    const audioMuted = this._micMuted || pub.audioMuted;
    for (const t of pub.stream?.getAudioTracks() ?? []) t.enabled = !audioMuted;
    for (const t of pub.stream?.getVideoTracks() ?? []) t.enabled = !pub.videoMuted;
    if (pub.requested && this._ready()) this._sendDeviceStates(pub);
  }

  /**
   * Sends the publisher's microphone and camera states that differ from the last ones sent.
   * @param {Publisher} pub
   */
  _sendDeviceStates(pub) {
    const want = { audio: this._micMuted || pub.audioMuted ? "mute" : "open", video: pub.videoMuted ? "mute" : "open" };
    for (const kind of /** @type {const} */ (["audio", "video"])) {
      if (pub.sentStates[kind] === want[kind]) continue;
      pub.sentStates[kind] = want[kind];
      this._request({ type: "set_device_state", stream_id: pub.streamId, track: kind, state: want[kind] }).catch((e) => {
        if (e.code !== ErrorCode.TEMPORARY_BREAK) this._emit("debugError", e.code, "muteMicrophone", e.detail ?? e.message);
      });
    }
  }

  /** @param {Publisher} pub */
  _sendPublish(pub) {
    pub.requested = true;
    // A new publish starts from `open` at the server; the states follow it (requests are
    // handled in order).
    pub.sentStates = { audio: "open", video: "open" };
    const published = this._request({ type: "publish", stream_id: pub.streamId, extra_info: pub.extraInfo });
    this._sendDeviceStates(pub);
    // The media offer follows without waiting for the reply: the server handles a connection's
    // requests in order, so it checks the offer once the publish is decided (and refuses it
    // with the publish's own error if the publish was refused; the refusal drops the publisher
    // first).
    if (pub.stream) this._offerPublish(pub);
    published.then(
      () => {
        if (pub.stopped || this._publishers.get(pub.streamId) !== pub) return;
        pub.registered = true;
        pub.failures = 0;
        if (pub.stream && !pub.pc) this._offerPublish(pub);
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
        if (pub.gen !== gen) return;
        if (pc.connectionState === "failed") this._mediaFailed(pub, "publish", ErrorCode.PUBLISH_TEMPORARY_BREAK, "the peer connection failed");
        else if (pc.connectionState === "connected") this._mediaConnected(pub, "publish");
      };
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, this.options.iceGatheringTimeoutMs, this._hostOnly() ? 30 : null);
      if (pub.gen !== gen) return;
      const reply = await this._request({ type: "media_offer", stream_id: pub.streamId, kind: "publish", sdp: pc.localDescription?.sdp ?? "" });
      if (pub.gen !== gen) return;
      // Not offering from the answer on, before it is applied: the server sends a connection's
      // media_state only after its answer (one ordered WebSocket), and as the browser's DTLS
      // client it may be connected before setRemoteDescription resolves; a "connected" dropped
      // then never comes again (the player stayed PLAY_REQUESTING, issue 12).
      pub.offering = false;
      await pc.setRemoteDescription({ type: "answer", sdp: withOpusBitrate(reply.sdp, OPUS_SEND_BITRATE) });
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
      muted: { audio: false, video: false },
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
    const played = this._request({ type: "play", stream_id: player.streamId });
    // A new server session has forgotten the mutes; they follow the play (in order).
    for (const kind of /** @type {const} */ (["audio", "video"])) {
      if (player.muted[kind]) this._sendMutePlay(player.streamId, kind, true);
    }
    // The media offer follows at once, also for a stream not published yet: the server holds it
    // until the stream is there (a resumed session keeps a connection it has).
    if (!player.pc) this._offerPlay(player);
    return played.then(
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
        ev.track.enabled = !player.muted[ev.track.kind === "video" ? "video" : "audio"];
        ms.addTrack(ev.track);
        this._watchFirstFrame(player, gen, ev.track);
      };
      pc.onconnectionstatechange = () => {
        if (player.gen !== gen) return;
        if (pc.connectionState === "failed") this._mediaFailed(player, "play", ErrorCode.PLAY_TEMPORARY_BREAK, "the peer connection failed");
        else if (pc.connectionState === "connected") this._mediaConnected(player, "play");
      };
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, this.options.iceGatheringTimeoutMs, this._hostOnly() ? 30 : null);
      if (player.gen !== gen) return;
      // No timeout: the server holds the offer until the stream is published, which may be
      // minutes away (a connection that breaks rejects it all the same).
      const reply = await this._request({ type: "media_offer", stream_id: player.streamId, kind: "play", sdp: pc.localDescription?.sdp ?? "" }, null);
      if (player.gen !== gen) return;
      // As for a publisher (_offerPublish): not offering from the answer on.
      player.offering = false;
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
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
      if (code === ErrorCode.STREAM_NOT_FOUND && !player.available) {
        // The stream went away meanwhile: play_update brings it back, and a new offer.
        closePc(player.pc);
        player.pc = null;
        return;
      }
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

  // ----- sound levels -----

  /**
   * Starts the sound-level monitor (or changes its configuration), as the Rust SDK's
   * `start_sound_level_monitor`: every `millisecond` (100–3000, default 100)
   * `capturedSoundLevelUpdate(soundLevel, vad)` for the first published stream (0 when none) and
   * `soundLevelUpdate(list)` with every published ("push") and played ("pull") stream, levels
   * 0–100 (-60 dBFS → 0, 0 dBFS → 100, the loudest ~20 ms of the interval); and
   * `activeSpeakersChanged(streamIDs)` when the speakers change (loudest first, at most 3; a
   * Huddle addition). Measured every 20 ms with WebAudio on the streams' tracks. Throws a
   * {@link HuddleError} 1009065 for an interval out of range.
   * @param {SoundLevelConfig} [config]
   */
  startSoundLevelMonitor(config = {}) {
    const millisecond = config.millisecond ?? 100;
    if (!(Number.isInteger(millisecond) && millisecond >= 100 && millisecond <= 3000)) {
      throw new HuddleError(ErrorCode.SOUND_LEVEL_INTERVAL_INVALID, `the sound-level interval is ${millisecond} ms; it must be 100–3000 ms`);
    }
    const enableVAD = config.enableVAD ?? true;
    if (this._levels) {
      this._levels.millisecond = millisecond;
      this._levels.enableVAD = enableVAD;
      return true;
    }
    /** @type {LevelMonitor} */
    const m = { millisecond, enableVAD, context: new AudioContext(), meters: new Map(), elapsed: 0, timer: null, speakers: new ActiveSpeakers() };
    m.context.resume().catch(() => {});
    m.timer = setInterval(() => this._levelTick(), LEVEL_FRAME_MS);
    this._levels = m;
    return true;
  }

  /** Stops the sound-level monitor. */
  stopSoundLevelMonitor() {
    const m = this._levels;
    if (!m) return false;
    this._levels = null;
    clearInterval(m.timer);
    for (const t of m.meters.values()) t.meter.close();
    m.context.close().catch(() => {});
    return true;
  }

  /**
   * ZEGO Web's name: `setSoundLevelDelegate(true, interval)` starts the monitor, `false` stops it.
   * @param {boolean} enable @param {number} [interval]
   */
  setSoundLevelDelegate(enable, interval) {
    return enable ? this.startSoundLevelMonitor({ millisecond: interval ?? 100 }) : this.stopSoundLevelMonitor();
  }

  /** Every 20 ms: each stream's level and voice; the events at the interval (`monitor.js`). */
  _levelTick() {
    levelTick(this);
  }

  // ----- stats -----

  /** Starts the quality tick (once a second) if it is not running. */
  _armQuality() {
    if (this._qualityTimer) return;
    this._qualityTimer = setInterval(() => this._qualityTick().catch(() => {}), 1000);
  }

  /** Once a second: the quality events and this user's levels to the server (`stats.js`). */
  _qualityTick() {
    return qualityTick(this);
  }

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
    return streamStats(s.pc, s.last, direction, streamId);
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

  /**
   * The delay before the next attempt after `failures` in a row: none after the first, then
   * doubling from retryDelayMinMs to retryDelayMaxMs, lowered to `cap`, with ±25% jitter.
   * @param {number} failures
   * @param {number} [cap]
   */
  _backoffDelay(failures, cap = Infinity) {
    if (failures === 0) return 0;
    const base = Math.min(this.options.retryDelayMinMs * 2 ** Math.min(failures - 1, 20), this.options.retryDelayMaxMs, cap);
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
      ws = new WebSocket(this.serverUrls[room.server]);
    } catch (e) {
      room.link = "down";
      this._nextServer(room);
      this._linkDown(room, `cannot connect: ${e}`);
      return;
    }
    let opened = false;
    room.ws = ws;
    room.timer = setTimeout(() => {
      if (room.ws !== ws) return;
      this._closeWs(room);
      this._nextServer(room);
      this._linkDown(room, "the connection attempt timed out");
    }, this.options.attemptTimeoutMs);
    ws.onopen = () => {
      opened = true;
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
      // Never opened: this server is unreachable, the next attempt goes to the next one.
      if (!opened) this._nextServer(room);
      this._linkDown(room, why);
    };
    ws.onerror = () => {};
  }

  /**
   * The current server failed an attempt: the next attempt goes to the next one.
   * @param {any} room
   */
  _nextServer(room) {
    room.server = (room.server + 1) % this.serverUrls.length;
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
   * @param {number | null} [timeoutMs]
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
      // `null`: no timeout (a request the server may hold; the connection's end rejects it).
      const timer = timeoutMs === null ? null : setTimeout(() => {
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
        // The server's clock decides when the token expires: time the warning by it.
        if (room.tokenExpire !== null && !room.tokenWarned) this._armExpiry(room.tokenExpire);
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
          // The server is our DTLS client (the connection is up one flight sooner). Its
          // "connected" may then come before setRemoteDescription resolves: see _offerPublish.
          setup_active: true,
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
      case "message_sent":
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
        if ((msg.seq === undefined || msg.seq === null) && msg.code === ErrorCode.SERVER_SHUTTING_DOWN && this.serverUrls.length > 1 && room.phase === "online" && room.link === "ready") {
          // A node of a cluster drains: move to the next server now, while this one still holds
          // the session (the new login there ends it), as the Rust SDK does.
          this._closeWs(room);
          this._nextServer(room);
          this._linkDown(room, `${msg.code}: ${msg.message}`);
          return;
        }
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
        if (player.available && !player.pc) {
          player.failures = 0;
          // The stream (back) at the server may live on another of its cores than before: the
          // mutes go again, ahead of the offer they apply to.
          if (!was) for (const kind of /** @type {const} */ (["audio", "video"])) if (player.muted[kind]) this._sendMutePlay(player.streamId, kind, true);
          this._offerPlay(player);
        } else if (!player.available && !player.offering) {
          // An offer in flight stays: the server holds it until the stream is back.
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
      case "network_quality": {
        // Another user's levels, relayed by the server; shown at the next 2 s tick.
        const up = LEVEL_NAMES.indexOf(msg.upstream);
        const down = LEVEL_NAMES.indexOf(msg.downstream);
        if (room.phase !== "online" || up < 0 || down < 0 || msg.user_id === room.user?.user_id) return;
        if (this._remoteQuality.size < 1000 || this._remoteQuality.has(msg.user_id)) {
          this._remoteQuality.set(msg.user_id, { up, down, at: Date.now() });
        }
        this._armQuality();
        return;
      }
      case "remote_device_state": {
        // A played stream's publisher muted or unmuted its microphone or camera.
        if (room.phase !== "online" || !this._players.has(msg.stream_id)) return;
        const status = String(msg.state ?? "open").toUpperCase();
        const event = msg.track === "video" ? "remoteCameraStatusUpdate" : "remoteMicStatusUpdate";
        this._emit(event, msg.stream_id, status);
        return;
      }
      case "broadcast_message":
        // Sent by another user of the room, or by the app's server (server API
        // `SendBroadcastMessage`).
        if (room.phase !== "online" || msg.room_id !== room.roomId) return;
        this._emit("IMRecvBroadcastMessage", room.roomId, [
          {
            message: String(msg.message ?? ""),
            messageID: Number(msg.message_id ?? 0),
            sendTime: Number(msg.send_time_ms ?? 0),
            fromUser: { userID: msg.from_user?.user_id ?? "", userName: msg.from_user?.user_name ?? "" },
          },
        ]);
        return;
      case "barrage_message":
        if (room.phase !== "online" || msg.room_id !== room.roomId) return;
        this._emit("IMRecvBarrageMessage", room.roomId, [
          {
            message: String(msg.message ?? ""),
            messageID: String(msg.message_id ?? ""),
            sendTime: Number(msg.send_time_ms ?? 0),
            fromUser: { userID: msg.from_user?.user_id ?? "", userName: msg.from_user?.user_name ?? "" },
          },
        ]);
        return;
      case "custom_command":
        if (room.phase !== "online" || msg.room_id !== room.roomId) return;
        this._emit(
          "IMRecvCustomCommand",
          room.roomId,
          { userID: msg.from_user?.user_id ?? "", userName: msg.from_user?.user_name ?? "" },
          String(msg.command ?? ""),
        );
        return;
      case "stream_extra_info_update": {
        if (room.phase !== "online" || msg.room_id !== room.roomId) return;
        const mine = room.user?.user_id;
        /** @type {any[]} */
        const list = (msg.streams ?? []).filter((/** @type {any} */ s) => s.user_id !== mine);
        for (const s of list) room.streams.set(s.stream_id, s);
        if (list.length) this._emit("streamExtraInfoUpdate", room.roomId, list.map(streamOut));
        return;
      }
      case "room_extra_info_update":
        if (room.phase !== "online" || msg.room_id !== room.roomId) return;
        this._emit(
          "roomExtraInfoUpdate",
          room.roomId,
          (msg.infos ?? []).map((/** @type {any} */ i) => ({
            key: String(i.key ?? ""),
            value: String(i.value ?? ""),
            updateUser: { userID: i.update_user?.user_id ?? "", userName: i.update_user?.user_name ?? "" },
            updateTime: Number(i.update_time_ms ?? 0),
          })),
        );
        return;
      case "room_online_user_count":
        if (room.phase !== "online" || msg.room_id !== room.roomId) return;
        this._emit("roomOnlineUserCountUpdate", room.roomId, Number(msg.count ?? 0));
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
    const stopped = msg.code === ErrorCode.STREAM_STOPPED_BY_SERVER || msg.code === ErrorCode.STREAM_TAKEN_OVER;
    if (msg.kind === "publish" && stopped) {
      // The app's server stopped the stream (server API `DeleteStream`), or another node of
      // the cluster took its ID over: the server already forgot it, so nothing is unpublished.
      this._dropPublisher(/** @type {Publisher} */ (s), msg.code, msg.message);
      return;
    }
    if (msg.state === "connected") {
      this._mediaConnected(s, msg.kind);
      return;
    }
    if (msg.kind === "play" && msg.code === ErrorCode.STREAM_NOT_FOUND) {
      // The publisher stopped: play_update brings the stream back.
      s.mediaUp = false;
      this._refreshPlayer(/** @type {Player} */ (s), msg.code, msg.message);
      return;
    }
    const code = msg.kind === "publish" ? ErrorCode.PUBLISH_TEMPORARY_BREAK : ErrorCode.PLAY_TEMPORARY_BREAK;
    this._mediaFailed(s, msg.kind, msg.code || code, msg.message);
  }

  /**
   * A stream's media connection is up, by the browser's own account (the peer connection's
   * `connected`: ICE and DTLS done) or by the server's (`media_state` `connected`), whichever
   * comes first. The browser's comes at once; the server's crosses the signaling connection,
   * which under loss can take seconds (a page showed PLAYING 8.3 s after its first audio at 30 %
   * loss per link). The Rust SDK, too, takes its own connection's word.
   * @param {Publisher | Player} s @param {"publish" | "play"} kind
   */
  _mediaConnected(s, kind) {
    if (s.stopped || s.mediaUp) return;
    s.mediaUp = true;
    s.failures = 0;
    if (kind === "publish") this._refreshPublisher(/** @type {Publisher} */ (s), 0, "");
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
    room.brokeAt = null;
    room.phase = "online";
    this._armQuality();
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
    if (room.phase === "login" && RETRIABLE_LOGIN_CODES.includes(code) && this.serverUrls.length > 1) {
      // This server is busy or shutting down; another may take the login.
      this._closeWs(room);
      this._nextServer(room);
      this._linkDown(room, message);
    } else if (room.phase === "login") {
      this._leave("LOGIN_FAILED", code, message);
      this._finish(room);
    } else if (room.phase === "reconnecting" && RETRIABLE_LOGIN_CODES.includes(code)) {
      // The server is reachable but busy: the usual backoff, not the quick retries.
      room.brokeAt = null;
      this._closeWs(room);
      this._nextServer(room);
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
        room.brokeAt = Date.now();
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
    // Early in a break, retries are at most RETRY_FAST_MAX_MS apart, so that the end of an
    // outage is noticed within about half a second (as in the Rust SDK).
    const early = room.phase === "reconnecting" && room.brokeAt && Date.now() < room.brokeAt + RETRY_FAST_WINDOW_MS;
    const delay = this._backoffDelay(room.failures++, early ? RETRY_FAST_MAX_MS : Infinity);
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
