// @ts-check
// The debug page: a thin UI over huddle.js. Everything the SDK reports goes to the log, so the page
// doubles as a protocol explorer. `window.huddleApp` exposes the engine and the media for tests.
import { HuddleEngine, HuddleError } from "/sdk/huddle.js";

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
/** @param {string} id */
const input = (id) => /** @type {HTMLInputElement} */ (document.getElementById(id));

const store = {
  /** @param {string} k */
  get: (k) => {
    try {
      return localStorage.getItem(`huddle.${k}`);
    } catch {
      return null;
    }
  },
  /** @param {string} k @param {string} v */
  set: (k, v) => {
    try {
      localStorage.setItem(`huddle.${k}`, v);
    } catch {
      // private mode
    }
  },
};

const app = {
  /** @type {HuddleEngine | null} */
  engine: null,
  /** @type {{ dev_mode: boolean, protocol: number, app_id?: number } | null} */
  info: null,
  /** @type {string | null} */
  roomId: null,
  /** @type {Map<string, { stream: MediaStream, tile: HTMLElement }>} */
  publishing: new Map(),
  /** @type {Map<string, { stream: MediaStream, tile: HTMLElement }>} */
  playing: new Map(),
  /** @type {Map<string, any>} */
  users: new Map(),
  /** @type {Map<string, any>} */
  streams: new Map(),
  /** The room's extra info by key. @type {Map<string, string>} */
  roomExtra: new Map(),
  /** @type {AudioContext | null} */
  audio: null,
  /** The active speakers' stream IDs, loudest first (`activeSpeakersChanged`). @type {string[]} */
  speakers: [],
  /** @type {string[]} */
  logLines: [],
  /** When each stream was asked to play (performance.now()), for the first-frame times. @type {Map<string, number>} */
  playStarted: new Map(),
  /** The last dev token and whom it was minted for (`appId/user/room`). */
  devToken: { token: "", key: "" },
};
// @ts-ignore: for tests and the console
window.huddleApp = app;

// ----- log -----

/**
 * @param {string} text
 * @param {"info" | "event" | "error" | "ok"} [kind]
 */
function log(text, kind = "info") {
  const li = document.createElement("li");
  li.className = kind;
  const t = new Date();
  const time = document.createElement("time");
  time.textContent = `${t.toTimeString().slice(0, 8)}.${String(t.getMilliseconds()).padStart(3, "0")}`;
  li.append(time, document.createTextNode(" " + text));
  const list = $("log");
  list.append(li);
  while (list.children.length > 500) list.firstElementChild?.remove();
  list.scrollTop = list.scrollHeight;
  app.logLines.push(text);
}

/**
 * @param {string} what
 * @param {any} e
 */
function logError(what, e) {
  if (e instanceof HuddleError || (e && typeof e.code === "number")) log(`${what} failed: code ${e.code} — ${e.detail ?? e.message}`, "error");
  else log(`${what} failed: ${e?.message ?? e}`, "error");
}

/** @param {string} ext */
function extText(ext) {
  if (!ext) return "";
  try {
    const v = JSON.parse(ext);
    return v.message ? ` — ${v.message}` : ` ${ext}`;
  } catch {
    return ` ${ext}`;
  }
}

// ----- setup -----

function defaultServer() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host || "127.0.0.1:7880"}`;
}

function httpBase() {
  const s = input("server").value.trim() || defaultServer();
  try {
    const u = new URL(/^[a-z]+:\/\//i.test(s) ? s : `ws://${s}`);
    u.protocol = u.protocol === "wss:" || u.protocol === "https:" ? "https:" : "http:";
    return u.origin;
  } catch {
    return location.origin;
  }
}

async function loadInfo() {
  try {
    const res = await fetch(`${httpBase()}/api/info`);
    app.info = await res.json();
  } catch (e) {
    app.info = null;
    log(`no server info: ${e}`, "error");
    return;
  }
  const info = app.info;
  if (!info) return;
  $("devToken").hidden = !info.dev_mode;
  if (info.dev_mode && info.app_id && !input("appId").value) input("appId").value = String(info.app_id);
  log(`server: protocol ${info.protocol}${info.dev_mode ? `, dev mode (AppID ${info.app_id})` : ""}`);
}

function devTokenKey() {
  return `${input("appId").value.trim()}/${input("userId").value.trim()}/${input("roomId").value.trim()}`;
}

async function fetchDevToken() {
  const body = { app_id: Number(input("appId").value), user_id: input("userId").value.trim(), room_id: input("roomId").value.trim() };
  const key = devTokenKey();
  const res = await fetch(`${httpBase()}/api/dev-token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new HuddleError(json.code ?? 0, json.message ?? `HTTP ${res.status}`);
  input("token").value = json.token;
  app.devToken = { token: json.token, key };
  log(`dev token for ${body.user_id} in ${body.room_id} (expires ${new Date(json.expire * 1000).toLocaleTimeString()})`, "ok");
  return json.token;
}

function initFields() {
  input("server").value = store.get("server") || defaultServer();
  input("appId").value = store.get("appId") || "";
  input("roomId").value = store.get("roomId") || "room-1";
  input("userId").value = store.get("userId") || `user-${Math.random().toString(36).slice(2, 7)}`;
  input("streamId").value = `${input("userId").value}-main`;
  input("userId").addEventListener("input", () => {
    input("streamId").value = `${input("userId").value.trim()}-main`;
  });
}

function saveFields() {
  for (const k of ["server", "appId", "roomId", "userId"]) store.set(k, input(k).value.trim());
}

/** @param {boolean} on */
function setLoggedIn(on) {
  for (const id of ["logout", "publish", "stopPublish", "play", "stopPlay", "chatSend", "roomExtraSet", "streamExtraSet"]) /** @type {HTMLButtonElement} */ ($(id)).disabled = !on;
  for (const id of ["login", "server", "appId", "roomId", "userId"]) /** @type {HTMLButtonElement} */ ($(id)).disabled = on;
}

/** @param {string} state */
function showRoomState(state) {
  const b = $("roomState");
  b.dataset.state = state;
  b.textContent = state.toLowerCase();
}

// ----- engine events -----

/** @param {HuddleEngine} engine */
function wire(engine) {
  engine.on("roomStateChanged", (roomID, reason, code, ext) => {
    log(`roomStateChanged ${roomID}: ${reason}${code ? ` code ${code}` : ""}${extText(ext)}`, code ? "error" : "event");
  });
  engine.on("roomStateUpdate", (roomID, state, code) => {
    showRoomState(state);
    if (state === "DISCONNECTED") onRoomGone();
    void roomID;
    void code;
  });
  engine.on("roomUserUpdate", (roomID, type, users) => {
    for (const u of users) {
      if (type === "ADD") app.users.set(u.userID, u);
      else app.users.delete(u.userID);
    }
    log(`roomUserUpdate ${type}: ${users.map((u) => u.userID).join(", ")}`, "event");
    renderUsers();
  });
  engine.on("roomStreamUpdate", (roomID, type, streams) => {
    for (const s of streams) {
      if (type === "ADD") app.streams.set(s.streamID, s);
      else app.streams.delete(s.streamID);
    }
    log(`roomStreamUpdate ${type}: ${streams.map((s) => `${s.streamID} (${s.user.userID})`).join(", ")}`, "event");
    renderStreams();
  });
  engine.on("publisherStateUpdate", (r) => {
    log(`publisherStateUpdate ${r.streamID}: ${r.state}${r.errorCode ? ` code ${r.errorCode}` : ""}${extText(r.extendedData)}`, r.errorCode ? "error" : "event");
    const p = app.publishing.get(r.streamID);
    if (p) setTileState(p.tile, r.state);
    if (r.state === "NO_PUBLISH") dropTile(app.publishing, r.streamID, true);
  });
  engine.on("playerStateUpdate", (r) => {
    log(`playerStateUpdate ${r.streamID}: ${r.state}${r.errorCode ? ` code ${r.errorCode}` : ""}${extText(r.extendedData)}`, r.errorCode ? "error" : "event");
    const p = app.playing.get(r.streamID);
    if (p) {
      setTileState(p.tile, r.state);
      if (r.state === "PLAYING") attach(p.tile, p.stream, false);
    }
    if (r.state === "NO_PLAY") dropTile(app.playing, r.streamID, false);
    renderStreams();
  });
  engine.on("roomTokenWillExpire", async (roomID, remain) => {
    log(`roomTokenWillExpire ${roomID}: ${remain} s left`, "event");
    if (app.info?.dev_mode) {
      try {
        const token = await fetchDevToken();
        await engine.renewToken(roomID, token);
        log("token renewed", "ok");
      } catch (e) {
        logError("renewToken", e);
      }
    }
  });
  /** @param {string} kind @param {string} streamID */
  const firstFrame = (kind, streamID) => {
    const t0 = app.playStarted.get(streamID);
    const ms = t0 === undefined ? "" : ` after ${Math.round(performance.now() - t0)} ms`;
    log(`playerRecv${kind}FirstFrame ${streamID}${ms}`, "event");
    const p = app.playing.get(streamID);
    if (p && t0 !== undefined) p.tile.dataset[`first${kind}Ms`] = String(Math.round(performance.now() - t0));
  };
  engine.on("playerRecvAudioFirstFrame", (id) => firstFrame("Audio", id));
  engine.on("playerRecvVideoFirstFrame", (id) => firstFrame("Video", id));
  engine.on("debugError", (code, func, info) => log(`${func}: code ${code} — ${info}`, "error"));
  engine.on("remoteMicStatusUpdate", (id, status) => {
    log(`${id}: publisher's microphone ${status.toLowerCase()}`);
    showRemoteDevice(id, "mic", status);
  });
  engine.on("remoteCameraStatusUpdate", (id, status) => {
    log(`${id}: publisher's camera ${status.toLowerCase()}`);
    showRemoteDevice(id, "camera", status);
  });
  // Levels and voice on the tiles, from the SDK's monitor (every 100 ms), and the active speaker.
  engine.on("soundLevelUpdate", (list) => {
    for (const l of list) {
      const tile = tileOf(l.type === "push" ? "publish" : "play", l.streamID);
      if (!tile) continue;
      const level = Math.round(l.soundLevel);
      /** @type {HTMLMeterElement} */ (tile.querySelector("meter")).value = level;
      tile.dataset.level = String(level);
      tile.dataset.vad = l.vad ? "1" : "0";
      tile.classList.toggle("speaking", l.vad);
    }
  });
  engine.on("activeSpeakersChanged", (ids) => {
    app.speakers = ids;
    log(`activeSpeakersChanged: ${ids.length ? ids.join(", ") : "nobody"}`, "event");
    for (const tile of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll(".tile"))) {
      const rank = ids.indexOf(tile.dataset.streamId ?? "");
      tile.classList.toggle("active-speaker", rank === 0);
      if (rank >= 0) tile.dataset.speakerRank = String(rank);
      else delete tile.dataset.speakerRank;
    }
  });
  // Network quality levels (issue 12's events) on the tiles: each stream's own, and its user's.
  /** @param {string} kind @param {string} id @param {{ level: number }} q */
  const streamQuality = (kind, id, q) => {
    const tile = tileOf(kind, id);
    if (tile) showQuality(tile, "stream", q.level);
  };
  engine.on("publishQualityUpdate", (id, q) => streamQuality("publish", id, q));
  engine.on("playQualityUpdate", (id, q) => streamQuality("play", id, q));
  engine.on("networkQuality", (userID, up, down) => {
    for (const tile of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll(".tile"))) {
      const owner = tile.dataset.kind === "publish" ? "" : app.streams.get(tile.dataset.streamId ?? "")?.user?.userID;
      if (owner === userID) showQuality(tile, "net", Math.max(up, down), `up ${QUALITY_NAMES[up]} · down ${QUALITY_NAMES[down]}`);
    }
  });
  engine.on("IMRecvBroadcastMessage", (roomID, list) => {
    for (const m of list) chatLine(m.fromUser.userID, m.message);
  });
  engine.on("IMRecvBarrageMessage", (roomID, list) => {
    for (const m of list) chatLine(m.fromUser.userID, m.message);
  });
  engine.on("IMRecvCustomCommand", (roomID, from, command) => log(`IMRecvCustomCommand from ${from.userID}: ${command}`, "event"));
  engine.on("roomExtraInfoUpdate", (roomID, list) => {
    for (const i of list) {
      app.roomExtra.set(i.key, i.value);
      log(`roomExtraInfoUpdate ${i.key}=${i.value} by ${i.updateUser.userID}`, "event");
    }
    renderRoomExtra();
  });
  engine.on("streamExtraInfoUpdate", (roomID, streams) => {
    for (const s of streams) {
      app.streams.set(s.streamID, s);
      log(`streamExtraInfoUpdate ${s.streamID}: ${s.extraInfo}`, "event");
    }
    renderStreams();
  });
  engine.on("roomOnlineUserCountUpdate", (roomID, count) => {
    $("onlineCount").textContent = String(count);
  });
  engine.startSoundLevelMonitor({ millisecond: 100, enableVAD: true });
}

/** Quality level names, by number (ZEGO's `ZegoStreamQualityLevel`). */
const QUALITY_NAMES = ["excellent", "good", "medium", "bad", "die", "unknown"];

/**
 * @param {HTMLElement} tile @param {"stream" | "net"} what @param {number} level @param {string} [title]
 */
function showQuality(tile, what, level, title) {
  const el = /** @type {HTMLElement} */ (tile.querySelector(`.quality .${what}`));
  const name = QUALITY_NAMES[level] ?? "unknown";
  el.dataset.level = name;
  el.textContent = `${what === "net" ? "net" : "stream"} ${name}`;
  el.title = title ?? `${what === "net" ? "the user's network" : "this stream"}: ${name}`;
  tile.dataset[what === "net" ? "netQuality" : "quality"] = name;
}

/** @param {string} kind @param {string} streamId */
function tileOf(kind, streamId) {
  return (kind === "publish" ? app.publishing : app.playing).get(streamId)?.tile ?? null;
}

// ----- chat and extra info -----

/**
 * @param {string} from
 * @param {string} text
 */
function chatLine(from, text) {
  const li = document.createElement("li");
  const who = document.createElement("b");
  who.textContent = from;
  li.append(who, document.createTextNode(": " + text));
  const list = $("chat");
  list.append(li);
  while (list.children.length > 200) list.firstElementChild?.remove();
  list.scrollTop = list.scrollHeight;
}

function renderRoomExtra() {
  $("roomExtra").textContent = app.roomExtra.size ? [...app.roomExtra].map(([k, v]) => `${k}: ${v}`).join(", ") : "none";
}

async function sendChat() {
  const text = input("chatText").value;
  if (!app.engine || !app.roomId || !text) return;
  try {
    const r = await app.engine.sendBroadcastMessage(app.roomId, text);
    if (r.errorCode === 0) {
      chatLine("me", text);
      input("chatText").value = "";
    } else {
      log(`sendBroadcastMessage: code ${r.errorCode}`, "error");
    }
  } catch (e) {
    logError("sendBroadcastMessage", e);
  }
}

async function setRoomExtra() {
  if (!app.engine || !app.roomId) return;
  const value = input("roomExtraValue").value;
  try {
    const r = await app.engine.setRoomExtraInfo(app.roomId, "topic", value);
    if (r.errorCode === 0) {
      app.roomExtra.set("topic", value);
      renderRoomExtra();
    } else log(`setRoomExtraInfo: code ${r.errorCode} ${r.extendedData}`, "error");
  } catch (e) {
    logError("setRoomExtraInfo", e);
  }
}

async function setStreamExtra() {
  const id = [...app.publishing.keys()][0];
  if (!app.engine || !id) return log("setStreamExtraInfo: publish a stream first", "error");
  try {
    const r = await app.engine.setStreamExtraInfo(id, input("streamExtraValue").value);
    log(`setStreamExtraInfo ${id}: code ${r.errorCode}`, r.errorCode === 0 ? "ok" : "error");
  } catch (e) {
    logError("setStreamExtraInfo", e);
  }
}

function onRoomGone() {
  app.roomId = null;
  app.roomExtra.clear();
  renderRoomExtra();
  $("onlineCount").textContent = "–";
  app.users.clear();
  app.streams.clear();
  for (const id of [...app.publishing.keys()]) dropTile(app.publishing, id, true);
  for (const id of [...app.playing.keys()]) dropTile(app.playing, id, false);
  renderUsers();
  renderStreams();
  setLoggedIn(false);
}

// ----- lists -----

function renderUsers() {
  const ul = $("users");
  ul.replaceChildren();
  for (const u of [...app.users.values()].sort((a, b) => a.userID.localeCompare(b.userID))) {
    const li = document.createElement("li");
    li.dataset.userId = u.userID;
    li.textContent = u.userName && u.userName !== u.userID ? `${u.userID} (${u.userName})` : u.userID;
    ul.append(li);
  }
  if (!ul.children.length) ul.innerHTML = '<li class="empty">nobody else</li>';
  $("userCount").textContent = String(app.users.size);
}

function renderStreams() {
  const ul = $("streams");
  ul.replaceChildren();
  for (const s of [...app.streams.values()].sort((a, b) => a.streamID.localeCompare(b.streamID))) {
    const li = document.createElement("li");
    li.dataset.streamId = s.streamID;
    li.className = "clickable" + (app.playing.has(s.streamID) ? " playing" : "");
    li.title = app.playing.has(s.streamID) ? "playing (click to stop)" : "click to play";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = s.streamID;
    const by = document.createElement("span");
    by.className = "by";
    by.textContent = `by ${s.user.userID}` + (s.extraInfo ? ` — ${s.extraInfo}` : "");
    li.append(name, by);
    li.addEventListener("click", () => {
      input("streamId").value = s.streamID;
      if (app.playing.has(s.streamID)) stopPlay(s.streamID);
      else play(s.streamID);
    });
    ul.append(li);
  }
  if (!ul.children.length) ul.innerHTML = '<li class="empty">no stream</li>';
  $("streamCount").textContent = String(app.streams.size);
}

// ----- tiles -----

function audioContext() {
  if (!app.audio) app.audio = new AudioContext();
  if (app.audio.state === "suspended") app.audio.resume().catch(() => {});
  return app.audio;
}

/**
 * @param {string} streamId
 * @param {"publish" | "play"} kind
 */
function makeTile(streamId, kind) {
  $("tiles").querySelector(".empty")?.remove();
  const tile = document.createElement("figure");
  tile.className = `tile ${kind}`;
  tile.dataset.streamId = streamId;
  tile.dataset.kind = kind;
  tile.innerHTML = `
    <div class="screen"><video autoplay playsinline></video><span class="novideo">audio only</span></div>
    <figcaption>
      <span class="label"></span><span class="state"></span>
      <meter class="level" min="0" max="100" low="10" high="85" optimum="50" value="0"></meter>
      <span class="quality"><span class="stream" data-level="unknown">stream —</span><span class="net" data-level="unknown">net —</span></span>
      <span class="stats">—</span>
      <span class="mutes"><button type="button" class="mute" data-track="audio"></button><button type="button" class="mute" data-track="video"></button></span>
      <span class="remote" title="the publisher's microphone and camera"></span>
    </figcaption>`;
  /** @type {HTMLElement} */ (tile.querySelector(".label")).textContent = `${kind === "publish" ? "▲ local" : "▼ played"} · ${streamId}`;
  for (const b of tile.querySelectorAll("button.mute")) {
    const button = /** @type {HTMLButtonElement} */ (b);
    const track = button.dataset.track === "video" ? "video" : "audio";
    setMuteButton(button, kind, track, false);
    button.addEventListener("click", () => toggleMute(tile, button, kind, track));
  }
  $("tiles").append(tile);
  return tile;
}

/**
 * @param {HTMLButtonElement} button
 * @param {"publish" | "play"} kind
 * @param {"audio" | "video"} track
 * @param {boolean} muted
 */
function setMuteButton(button, kind, track, muted) {
  const what = kind === "publish" ? (track === "audio" ? "mic" : "camera") : track;
  button.setAttribute("aria-pressed", String(muted));
  button.textContent = `${muted ? "unmute" : "mute"} ${what}`;
}

/**
 * The mute buttons: the local tile mutes the microphone (`muteMicrophone`) and the stream's
 * video (`mutePublishStreamVideo`); a played tile stops receiving its audio or video
 * (`mutePlayStreamAudio` / `mutePlayStreamVideo`).
 * @param {HTMLElement} tile
 * @param {HTMLButtonElement} button
 * @param {"publish" | "play"} kind
 * @param {"audio" | "video"} track
 */
function toggleMute(tile, button, kind, track) {
  const engine = app.engine;
  const streamId = tile.dataset.streamId ?? "";
  if (!engine) return;
  const mute = button.getAttribute("aria-pressed") !== "true";
  let ok;
  if (kind === "publish" && track === "audio") ok = engine.muteMicrophone(mute);
  else if (kind === "publish") ok = engine.mutePublishStreamVideo(streamId, mute);
  else if (track === "audio") ok = engine.mutePlayStreamAudio(streamId, mute);
  else ok = engine.mutePlayStreamVideo(streamId, mute);
  if (!ok) return log(`cannot ${mute ? "mute" : "unmute"} ${track} of ${streamId}`, "error");
  setMuteButton(button, kind, track, mute);
  tile.dataset[track === "audio" ? "mutedAudio" : "mutedVideo"] = String(mute);
  log(`${mute ? "muted" : "unmuted"} ${track} of ${streamId}`);
}

/**
 * Shows a played stream's publisher's microphone or camera state on its tile.
 * @param {string} streamId
 * @param {"mic" | "camera"} device
 * @param {string} status OPEN, MUTE or DISABLE
 */
function showRemoteDevice(streamId, device, status) {
  for (const el of $("tiles").querySelectorAll(".tile.play")) {
    const tile = /** @type {HTMLElement} */ (el);
    if (tile.dataset.streamId !== streamId) continue;
    tile.dataset[device === "mic" ? "remoteMic" : "remoteCamera"] = status;
    const parts = [];
    if (tile.dataset.remoteMic && tile.dataset.remoteMic !== "OPEN") parts.push(`mic ${tile.dataset.remoteMic.toLowerCase()}`);
    if (tile.dataset.remoteCamera && tile.dataset.remoteCamera !== "OPEN") parts.push(`camera ${tile.dataset.remoteCamera.toLowerCase()}`);
    /** @type {HTMLElement} */ (tile.querySelector(".remote")).textContent = parts.length ? `🔇 ${parts.join(", ")}` : "";
  }
}

/**
 * @param {HTMLElement} tile
 * @param {MediaStream} stream
 * @param {boolean} muted
 */
function attach(tile, stream, muted) {
  const video = /** @type {HTMLVideoElement} */ (tile.querySelector("video"));
  video.muted = muted;
  video.srcObject = stream;
  video.play().catch(() => {});
  tile.classList.toggle("has-video", stream.getVideoTracks().length > 0);
}

/**
 * @param {HTMLElement} tile
 * @param {string} state
 */
function setTileState(tile, state) {
  tile.dataset.state = state;
  /** @type {HTMLElement} */ (tile.querySelector(".state")).textContent = state.toLowerCase().replace("_", " ");
}

/**
 * @param {Map<string, { stream: MediaStream, tile: HTMLElement }>} map
 * @param {string} streamId
 * @param {boolean} stopTracks
 */
function dropTile(map, streamId, stopTracks) {
  const p = map.get(streamId);
  if (!p) return;
  map.delete(streamId);
  p.tile.remove();
  if (stopTracks) p.stream.getTracks().forEach((t) => t.stop());
  restorePlaceholder();
}

function restorePlaceholder() {
  if (!$("tiles").children.length) $("tiles").innerHTML = '<p class="empty">Publish or play a stream to see it here.</p>';
}

/**
 * One line of stats; each figure stays whole when the line wraps.
 * @param {string} kind
 * @param {any} t
 */
function statsLine(kind, t) {
  const div = document.createElement("div");
  div.className = "statline";
  for (const part of [kind, ...statsText(t).split(" · ")]) {
    const span = document.createElement("span");
    span.textContent = part;
    div.append(span);
  }
  return div;
}

/** @param {any} t */
function statsText(t) {
  if (!t) return "";
  /** @param {number} ms */
  const millis = (ms) => `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  const parts = [`${t.bitrateKbps.toFixed(0)} kbps`, `loss ${(t.lossRate * 100).toFixed(1)}%`, `rtt ${millis(t.rttMs)}`, `jitter ${millis(t.jitterMs)}`];
  if (t.frameWidth) parts.push(`${t.frameWidth}×${t.frameHeight}@${(t.fps ?? 0).toFixed(0)}`);
  return parts.join(" · ");
}

async function tickStats() {
  const engine = app.engine;
  if (!engine) return;
  for (const [id, p] of [...app.publishing, ...app.playing]) {
    try {
      const s = await engine.getStats(id);
      const el = /** @type {HTMLElement} */ (p.tile.querySelector(".stats"));
      if (!s) {
        el.textContent = "—";
        continue;
      }
      const lines = [];
      if (s.audio) lines.push(statsLine("audio", s.audio));
      if (s.video) lines.push(statsLine("video", s.video));
      if (lines.length) el.replaceChildren(...lines);
      else el.textContent = s.connectionState;
      p.tile.dataset.stats = JSON.stringify(s);
    } catch {
      // the connection went away meanwhile
    }
  }
}

// ----- actions -----

async function login() {
  saveFields();
  const server = input("server").value.trim();
  const appId = Number(input("appId").value);
  const roomId = input("roomId").value.trim();
  const userId = input("userId").value.trim();
  let token = input("token").value.trim();
  // In dev mode an empty token field, or a dev token minted for other fields, gets a fresh one.
  const stale = token && token === app.devToken.token && app.devToken.key !== devTokenKey();
  if ((!token || stale) && app.info?.dev_mode) {
    try {
      token = await fetchDevToken();
    } catch (e) {
      return logError("dev token", e);
    }
  }
  if (!app.engine || app.engine.serverUrl !== new HuddleEngine(appId, server).serverUrl || app.engine.appId !== appId) {
    app.engine?.destroy();
    app.engine = new HuddleEngine(appId, server);
    wire(app.engine);
  }
  app.users.clear();
  app.streams.clear();
  renderUsers();
  renderStreams();
  /** @type {HTMLButtonElement} */ ($("login")).disabled = true;
  log(`loginRoom ${roomId} as ${userId} on ${app.engine.serverUrl}`);
  try {
    await app.engine.loginRoom(roomId, token, { userID: userId, userName: userId }, { userUpdate: true });
    app.roomId = roomId;
    setLoggedIn(true);
  } catch (e) {
    logError("loginRoom", e);
    setLoggedIn(false);
  }
}

async function logout() {
  if (!app.engine || !app.roomId) return;
  log(`logoutRoom ${app.roomId}`);
  await app.engine.logoutRoom(app.roomId);
}

async function publish() {
  const engine = app.engine;
  if (!engine) return;
  const streamId = input("streamId").value.trim();
  if (app.publishing.has(streamId)) return log(`already publishing ${streamId}`);
  const video = input("mediaVideo").checked;
  audioContext();
  let stream;
  try {
    stream = await engine.createStream({ camera: { audio: true, video, audioProcessing: input("audioProcessing").checked } });
  } catch (e) {
    return logError("createStream", e);
  }
  const tile = makeTile(streamId, "publish");
  app.publishing.set(streamId, { stream, tile });
  attach(tile, stream, true);
  setTileState(tile, "PUBLISH_REQUESTING");
  log(`startPublishingStream ${streamId} (${video ? "audio + video" : "audio only"})`);
  try {
    if (await engine.startPublishingStream(streamId, stream)) log(`publishing ${streamId}`, "ok");
  } catch (e) {
    logError("startPublishingStream", e);
    dropTile(app.publishing, streamId, true);
  }
}

function stopPublish() {
  const streamId = input("streamId").value.trim();
  const id = app.publishing.has(streamId) ? streamId : [...app.publishing.keys()][0];
  if (!id || !app.engine) return log("nothing published");
  log(`stopPublishingStream ${id}`);
  app.engine.stopPublishingStream(id);
  dropTile(app.publishing, id, true);
}

/** @param {string} [id] */
async function play(id) {
  const engine = app.engine;
  if (!engine) return;
  const streamId = id ?? input("streamId").value.trim();
  if (app.playing.has(streamId)) return log(`already playing ${streamId}`);
  audioContext();
  log(`startPlayingStream ${streamId}`);
  app.playStarted.set(streamId, performance.now());
  const tile = makeTile(streamId, "play");
  setTileState(tile, "PLAY_REQUESTING");
  try {
    const stream = await engine.startPlayingStream(streamId);
    if (!tile.isConnected) return;
    app.playing.set(streamId, { stream, tile });
    attach(tile, stream, false);
  } catch (e) {
    logError("startPlayingStream", e);
    tile.remove();
    restorePlaceholder();
  }
  renderStreams();
}

/** @param {string} [id] */
function stopPlay(id) {
  const streamId = id ?? input("streamId").value.trim();
  if (!app.engine || !app.playing.has(streamId)) return log(`not playing ${streamId}`);
  log(`stopPlayingStream ${streamId}`);
  app.engine.stopPlayingStream(streamId);
  dropTile(app.playing, streamId, false);
  renderStreams();
}

// ----- start -----

initFields();
$("login").addEventListener("click", login);
$("logout").addEventListener("click", logout);
$("devToken").addEventListener("click", () => fetchDevToken().catch((e) => logError("dev token", e)));
$("publish").addEventListener("click", publish);
$("stopPublish").addEventListener("click", stopPublish);
$("play").addEventListener("click", () => play());
$("stopPlay").addEventListener("click", () => stopPlay());
$("clearLog").addEventListener("click", () => $("log").replaceChildren());
$("chatSend").addEventListener("click", sendChat);
$("chatText").addEventListener("keydown", (e) => {
  if (e.key === "Enter") sendChat();
});
$("roomExtraSet").addEventListener("click", setRoomExtra);
$("streamExtraSet").addEventListener("click", setStreamExtra);
input("server").addEventListener("change", loadInfo);
// Leaving the page logs out at once (otherwise the others see us go only after the server's grace).
window.addEventListener("pagehide", () => {
  if (app.engine && app.roomId) app.engine.logoutRoom(app.roomId);
});
setInterval(tickStats, 1000);
loadInfo().then(() => {
  document.body.dataset.ready = "1";
});
