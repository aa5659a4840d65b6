// The conformance vectors (conformance/*.json, described in docs/protocol.md) against huddle.js:
// the same files the Rust SDK's session runs (crates/huddle/src/session/conformance.rs). A
// scripted fake WebSocket plays the server; a fake clock gives the vectors' time steps exactly
// (timers fire in order, each at its own instant, as on the Rust side's virtual time).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { HuddleEngine } from "../huddle.js";

const DIR = new URL("../../conformance/", import.meta.url);

// ----- huddle.js's names → the vectors' (the Rust SDK's Event::to_json) -----

/** huddle.js's enum values (room states and reasons, publisher and player states, update types). */
const NAMES = /** @type {Record<string, string>} */ ({
  LOGINING: "Logining",
  LOGINED: "Logined",
  LOGIN_FAILED: "LoginFailed",
  RECONNECTING: "Reconnecting",
  RECONNECTED: "Reconnected",
  RECONNECT_FAILED: "ReconnectFailed",
  KICKOUT: "KickOut",
  LOGOUT: "Logout",
  LOGOUT_FAILED: "LogoutFailed",
  DISCONNECTED: "Disconnected",
  CONNECTING: "Connecting",
  CONNECTED: "Connected",
  NO_PUBLISH: "NoPublish",
  PUBLISH_REQUESTING: "PublishRequesting",
  PUBLISHING: "Publishing",
  NO_PLAY: "NoPlay",
  PLAY_REQUESTING: "PlayRequesting",
  PLAYING: "Playing",
  ADD: "Add",
  DELETE: "Delete",
});
/** @param {string} v */
const name = (v) => NAMES[v] ?? `unmapped:${v}`;
/** API names in debugError's func_name. */
const FUNC_NAMES = /** @type {Record<string, string>} */ ({ renewToken: "renew_token", signaling: "signaling" });
/** @param {string} ext extended_data: left out when empty, as Event::to_json does */
const ext = (ext) => (ext ? { extended_data: ext } : {});
/** @param {any} u */
const user = (u) => ({ user_id: u.userID, user_name: u.userName });

/**
 * The one table: each huddle.js event the vectors cover, and its arguments as the vectors'
 * event object. Quality events (networkQuality, publishQualityUpdate, playQualityUpdate) are
 * outside the vectors, as on the Rust side.
 * @type {Record<string, (...args: any[]) => any>}
 */
const EVENTS = {
  roomStateChanged: (room, reason, code, e) => ({ event: "room_state_changed", room_id: room, reason: name(reason), error_code: code, ...ext(e) }),
  roomStateUpdate: (room, state, code, e) => ({ event: "room_state_update", room_id: room, state: name(state), error_code: code, ...ext(e) }),
  roomUserUpdate: (room, type, users) => ({ event: "room_user_update", room_id: room, update_type: name(type), users: users.map(user) }),
  roomStreamUpdate: (room, type, streams, e) => ({
    event: "room_stream_update",
    room_id: room,
    update_type: name(type),
    streams: streams.map((/** @type {any} */ s) => ({ user_id: s.user.userID, user_name: s.user.userName, stream_id: s.streamID, extra_info: s.extraInfo })),
    ...ext(e),
  }),
  publisherStateUpdate: (r) => ({ event: "publisher_state_update", stream_id: r.streamID, state: name(r.state), error_code: r.errorCode, ...ext(r.extendedData) }),
  playerStateUpdate: (r) => ({ event: "player_state_update", stream_id: r.streamID, state: name(r.state), error_code: r.errorCode, ...ext(r.extendedData) }),
  roomTokenWillExpire: (room, remain) => ({ event: "room_token_will_expire", room_id: room, remain_secs: remain }),
  IMRecvBroadcastMessage: (room, messages) => ({
    event: "im_recv_broadcast_message",
    room_id: room,
    messages: messages.map((/** @type {any} */ m) => ({ message: m.message, message_id: m.messageID, send_time: m.sendTime, from_user: user(m.fromUser) })),
  }),
  debugError: (code, func, info) => ({ event: "debug_error", error_code: code, func_name: FUNC_NAMES[func] ?? `unmapped:${func}`, info }),
};

// ----- matching (as the Rust runner's) -----

/**
 * `"*"` matches anything; `"$name"` binds the first value and must equal it afterwards; objects
 * must have exactly the pattern's keys.
 * @param {any} p @param {any} a @param {Map<string, any>} vars @param {string} path
 */
function match(p, a, vars, path) {
  if (p === "*") return;
  if (typeof p === "string" && p.startsWith("$")) {
    if (!vars.has(p)) return void vars.set(p, a);
    assert.deepEqual(a, vars.get(p), `${path}: ${p}`);
    return;
  }
  if (Array.isArray(p)) {
    assert.ok(Array.isArray(a) && a.length === p.length, `${path}: ${JSON.stringify(a)} has not the ${p.length} entries expected`);
    p.forEach((x, i) => match(x, a[i], vars, `${path}[${i}]`));
    return;
  }
  if (p && typeof p === "object") {
    assert.ok(a && typeof a === "object", `${path}: ${JSON.stringify(a)} is not an object`);
    assert.deepEqual(Object.keys(a).sort(), Object.keys(p).sort(), `${path}: fields`);
    for (const k of Object.keys(p)) match(p[k], a[k], vars, `${path}.${k}`);
    return;
  }
  assert.deepEqual(a, p, path);
}

/** @param {any} v @param {Map<string, any>} vars */
function substitute(v, vars) {
  if (typeof v === "string" && v.startsWith("$")) {
    assert.ok(vars.has(v), `${v} is used before the client sent it`);
    return vars.get(v);
  }
  if (Array.isArray(v)) return v.map((x) => substitute(x, vars));
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, substitute(x, vars)]));
  return v;
}

// ----- the fake clock -----

const real = { setTimeout, clearTimeout, setInterval, clearInterval, dateNow: Date.now, random: Math.random, setImmediate };
const clock = {
  now: 0,
  next: 1,
  /** @type {Map<number, {at: number, every: number | null, fn: () => void}>} */
  timers: new Map(),
};
/** Lets every promise callback that is ready run (real I/O turn; no fake timer fires). */
const flush = () => new Promise((r) => real.setImmediate(r));

function installClock(/** @type {number} */ start) {
  clock.now = start;
  clock.timers.clear();
  /** @param {number | null} every */
  const add = (fn, ms, every, args) => {
    const id = clock.next++;
    clock.timers.set(id, { at: clock.now + Math.max(0, Number(ms) || 0), every, fn: () => fn(...args) });
    return id;
  };
  // @ts-ignore: the fakes take what huddle.js passes
  globalThis.setTimeout = (fn, ms, ...args) => add(fn, ms, null, args);
  // @ts-ignore
  globalThis.setInterval = (fn, ms, ...args) => add(fn, ms, Math.max(1, Number(ms) || 0), args);
  // @ts-ignore
  globalThis.clearTimeout = globalThis.clearInterval = (id) => void clock.timers.delete(id);
  Date.now = () => Math.floor(clock.now);
  // The backoff's jitter factor is then exactly 1 (the Rust side seeds its generator).
  Math.random = () => 0.5;
}

function restoreClock() {
  Object.assign(globalThis, { setTimeout: real.setTimeout, clearTimeout: real.clearTimeout, setInterval: real.setInterval, clearInterval: real.clearInterval });
  Date.now = real.dateNow;
  Math.random = real.random;
}

/** Moves the clock forward by `ms`, firing each timer at its instant, in order. @param {number} ms */
async function advance(ms) {
  const target = clock.now + ms;
  for (;;) {
    await flush();
    let due = null;
    for (const [id, t] of clock.timers) if (t.at <= target && (!due || t.at < due[1].at)) due = [id, t];
    if (!due) break;
    const [id, t] = due;
    clock.now = Math.max(clock.now, t.at);
    if (t.every) t.at += t.every;
    else clock.timers.delete(/** @type {number} */ (id));
    t.fn();
  }
  clock.now = target;
  await flush();
}

// ----- the fake server side -----

/** What one vector's client did that the vector has not checked yet. */
class Run {
  constructor() {
    /** @type {any[]} */ this.sent = [];
    /** @type {any[]} */ this.events = [];
    /** @type {FakeSocket[]} */ this.connects = [];
    /** @type {FakeSocket | null} */ this.ws = null;
    this.closes = 0;
    this.refuse = false;
    this.refused = 0;
    /** @type {Map<string, any>} */ this.vars = new Map();
  }
}
/** @type {Run} */
let run = new Run();

class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  /** @param {string} url */
  constructor(url) {
    this.url = url;
    this.readyState = FakeSocket.CONNECTING;
    /** @type {any} */ this.onopen = null;
    /** @type {any} */ this.onmessage = null;
    /** @type {any} */ this.onclose = null;
    /** @type {any} */ this.onerror = null;
    run.ws = this;
    if (run.refuse) {
      run.refused++;
      // After huddle.js has set its handlers, as a refused socket reports.
      queueMicrotask(() => this.drop());
    } else run.connects.push(this);
  }
  /** @param {string} text */
  send(text) {
    const msg = JSON.parse(text);
    // Quality reports are outside the vectors (the Rust side runs them with quality off): the
    // server's part is played here.
    if (msg.type === "network_quality") return queueMicrotask(() => this.push({ type: "ok", seq: msg.seq }));
    run.sent.push(msg);
  }
  close() {
    if (this.readyState !== FakeSocket.CLOSED) {
      this.readyState = FakeSocket.CLOSED;
      run.closes++;
    }
  }
  /** @param {any} msg */
  push(msg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  drop() {
    if (this.readyState === FakeSocket.CLOSED) return;
    this.readyState = FakeSocket.CLOSED;
    this.onclose?.({ code: 1006, reason: "" });
  }
}
// @ts-ignore: node has no WebSocket (20) or a real one (22); huddle.js needs only this much.
globalThis.WebSocket = FakeSocket;
// The vectors are signaling only (the Rust SDK runs them with its media plane off): a player
// offers its media with its play, so it gets a peer connection whose offer never comes, and no
// media_offer goes out.
// @ts-ignore
globalThis.RTCPeerConnection ??= class {
  addTransceiver() {
    return {};
  }
  createOffer() {
    return new Promise(() => {});
  }
  close() {}
};
// Players hold a MediaStream for the app from the start; no media flows in the vectors.
// @ts-ignore
globalThis.MediaStream ??= class {
  /** @type {any[]} */ tracks = [];
  getTracks() {
    return [...this.tracks];
  }
  /** @param {any} t */ addTrack(t) {
    this.tracks.push(t);
  }
  /** @param {any} t */ removeTrack(t) {
    this.tracks = this.tracks.filter((x) => x !== t);
  }
};

/** @param {any} v the vector */
async function runVector(v) {
  run = new Run();
  installClock(v.start_unix_ms);
  /** @type {HuddleEngine | null} */
  let engine = null;
  let roomId = "";
  const ignore = () => {};
  try {
    for (const [i, step] of v.steps.entries()) {
      const at = `${v.name} step ${i} ${JSON.stringify(step)}`;
      if ("call" in step) {
        if (step.call === "login_room") {
          engine = new HuddleEngine(v.app_id, "127.0.0.1:1");
          for (const [ev, f] of Object.entries(EVENTS)) engine.on(/** @type {any} */ (ev), (/** @type {any[]} */ ...args) => run.events.push(f(...args)));
          roomId = step.room_id;
          engine.loginRoom(step.room_id, step.token, { userID: step.user.user_id, userName: step.user.user_name }, { userUpdate: !!step.user_status_notify }).catch(ignore);
        } else {
          const e = /** @type {HuddleEngine} */ (engine);
          if (step.call === "start_publishing_stream") e.startPublishingStream(step.stream_id, null).catch(ignore);
          else if (step.call === "stop_publishing_stream") e.stopPublishingStream(step.stream_id);
          else if (step.call === "start_playing_stream") e.startPlayingStream(step.stream_id).catch(ignore);
          else if (step.call === "stop_playing_stream") e.stopPlayingStream(step.stream_id);
          else if (step.call === "renew_token") e.renewToken(roomId, step.token).catch(ignore);
          else if (step.call === "logout_room") e.logoutRoom(roomId).catch(ignore);
          else assert.fail(`${at}: unknown call`);
        }
        await flush();
      } else if ("connect" in step) {
        const ws = run.connects.shift();
        assert.ok(ws, `${at}: no connection attempt`);
        assert.equal(ws.url, "ws://127.0.0.1:1/ws", at);
      } else if ("transport" in step) {
        const ws = /** @type {FakeSocket} */ (run.ws);
        if (step.transport === "open") {
          ws.readyState = FakeSocket.OPEN;
          ws.onopen?.();
        } else ws.drop();
        await flush();
      } else if ("transport_mode" in step) {
        run.refuse = step.transport_mode === "refuse";
      } else if ("server" in step) {
        /** @type {FakeSocket} */ (run.ws).push(substitute(step.server, run.vars));
        await flush();
      } else if ("client" in step) {
        const got = run.sent.shift();
        assert.ok(got, `${at}: the client sent nothing`);
        match(step.client, got, run.vars, `${at}: client`);
      } else if ("advance_ms" in step) {
        await advance(step.advance_ms);
      } else if ("events" in step) {
        const got = run.events.splice(0);
        match(step.events, got, run.vars, `${at}: events ${JSON.stringify(got)}`);
      } else if ("closed" in step) {
        assert.ok(run.closes > 0, `${at}: the client did not close its connection`);
        run.closes--;
      } else if ("refused_connects" in step) {
        const [lo, hi] = step.refused_connects;
        const n = run.refused;
        run.refused = 0;
        assert.ok(n >= lo && n <= hi, `${at}: ${n} connection attempts`);
      } else assert.fail(`${at}: unknown step`);
    }
    assert.deepEqual(run.sent, [], `${v.name}: sent but not in the vector`);
    assert.deepEqual(run.events, [], `${v.name}: events not in the vector`);
    assert.equal(run.connects.length, 0, `${v.name}: connections not in the vector`);
    assert.equal(run.closes, 0, `${v.name}: closes not in the vector`);
  } finally {
    engine?.destroy();
    restoreClock();
  }
}

const files = readdirSync(DIR).filter((f) => f.endsWith(".json")).sort();

test("the conformance directory holds the vectors", () => {
  assert.ok(files.length >= 10, `only ${files.length} vectors`);
});

for (const file of files) {
  const v = JSON.parse(readFileSync(new URL(file, DIR), "utf8"));
  test(`conformance: ${v.name}`, async () => {
    assert.equal(`${v.name}.json`, file);
    await runVector(v);
  });
}
