// Interop between a real Chromium (the debug page and huddle.js) and native SDK clients
// (`huddle call` processes) through one `huddle serve` (dev mode): speech both ways, VP8 video both
// ways, and one room's user and stream lists seen alike by browsers and a native client.
//
// Speech: crates/huddle-media/tests/data/speech-16k.wav brought to 48 kHz with 1.5 s of silence
// before it and 0.5 s after (as the SDK's own speech test does), made with numpy/scipy (installed by
// scripts/test.sh for the PESQ scoring). It is Chromium's fake microphone (looped) and the native
// publisher's --source (looped); received speech is scored by crates/huddle/tests/audio_score.py.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, startNativeCall, launchBrowser, openPage, logText, readWav, writePaddedSpeech, REPO, waitLog, waitSel } from "./harness.js";
/** @typedef {import("./harness.js").NativeCall} NativeCall */

const SPEECH_16K = join(REPO, "crates/huddle-media/tests/data/speech-16k.wav");
const AUDIO_SCORE = join(REPO, "crates/huddle/tests/audio_score.py");
const SPEECH_WINDOWS = join(REPO, "web/tests/speech_windows.py");
/** Leading and trailing silence of the padded speech file, in seconds. */
const LEAD_S = 1.5;
const TAIL_S = 0.5;

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let chrome;
/** @type {string} */
let dir;
/** @type {string} */
let speechWav;
/** @type {{ page: import("playwright-core").Page, console: string[] }[]} */
const pages = [];
/** @type {NativeCall[]} */
const calls = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "huddle-interop-"));
  speechWav = join(dir, "speech48k.wav");
  writePaddedSpeech(speechWav, LEAD_S, TAIL_S);
  server = await startServer();
  chrome = await launchBrowser({ audioFile: speechWav });
});

after(async () => {
  for (const c of calls) await c.stop();
  if (process.env.HUDDLE_TEST_LOGS) {
    for (const [i, p] of pages.entries()) {
      const lines = await logText(p.page).catch(() => []);
      console.log(`--- page ${i} log ---\n${lines.join("\n")}\n--- page ${i} console ---\n${p.console.join("\n")}`);
    }
    for (const c of calls) console.log(`--- ${c.name} ---\n${c.lines.join("\n")}\n${c.stderr()}`);
  }
  await chrome?.close();
  await server?.stop();
  // HUDDLE_TEST_KEEP=1 keeps the sent and received media files (their directory is printed).
  if (dir && process.env.HUDDLE_TEST_KEEP) console.log(`media files kept in ${dir}`);
  else if (dir) rmSync(dir, { recursive: true, force: true });
});

// ----- helpers -----

/**
 * Starts a native client (`huddle call`, logged in with a dev token) and keeps it to stop after.
 * @param {string} room
 * @param {string} user
 * @param {string[]} args
 */
async function nativeCall(room, user, args) {
  const call = await startNativeCall(server, room, user, args);
  calls.push(call);
  return call;
}

/** Opens the debug page. */
async function open() {
  const p = await openPage(chrome.browser, `${server.url}/`);
  pages.push(p);
  return p.page;
}

/**
 * Logs the page in to `room` as `user` (the page fetches a dev token).
 * @param {import("playwright-core").Page} page
 * @param {string} room
 * @param {string} user
 */
async function login(page, room, user) {
  await page.fill("#roomId", room);
  await page.fill("#userId", user);
  await page.fill("#token", "");
  await page.click("#login");
  await waitLog(page, /roomStateChanged \S+: LOGINED/);
}

/**
 * Publishes from the page's form: audio only or audio + video, voice processing off (the test
 * audio must arrive unaltered).
 * @param {import("playwright-core").Page} page
 * @param {string} streamId
 * @param {boolean} video
 */
async function publish(page, streamId, video) {
  await page.fill("#streamId", streamId);
  await page.check(video ? "#mediaVideo" : "#mediaAudio");
  await page.uncheck("#audioProcessing");
  await page.click("#publish");
  await waitSel(page, `.tile.publish[data-stream-id='${streamId}'][data-state='PUBLISHING']`);
}

/** The IDs listed in the page's #users or #streams. @param {import("playwright-core").Page} page @param {"#users" | "#streams"} sel */
async function listed(page, sel) {
  const attr = sel === "#users" ? "data-user-id" : "data-stream-id";
  return page.$$eval(`${sel} li[${attr}]`, (lis, a) => lis.map((li) => li.getAttribute(a) ?? "").sort(), attr);
}

/**
 * The users and streams a native client was told about, folded from its ADD/DELETE events.
 * @param {NativeCall} call
 */
function nativeView(call) {
  const users = new Set();
  const streams = new Set();
  for (const e of call.events) {
    if (e.event === "room_user_update") for (const u of e.users) e.update_type === "Add" ? users.add(u.user_id) : users.delete(u.user_id);
    if (e.event === "room_stream_update") for (const s of e.streams) e.update_type === "Add" ? streams.add(s.stream_id) : streams.delete(s.stream_id);
  }
  return { users: [...users].sort(), streams: [...streams].sort() };
}

/**
 * Parses a Y4M file (4:2:0): its size and each frame's luma plane.
 * @param {string} path
 */
function readY4m(path) {
  const b = readFileSync(path);
  const nl = b.indexOf(0x0a);
  const header = b.toString("ascii", 0, nl);
  assert.match(header, /^YUV4MPEG2 /, "a Y4M header");
  const width = Number(/ W(\d+)/.exec(header)?.[1]);
  const height = Number(/ H(\d+)/.exec(header)?.[1]);
  const ySize = width * height;
  const frameSize = ySize + 2 * Math.ceil(width / 2) * Math.ceil(height / 2);
  /** @type {Buffer[]} */
  const frames = [];
  let off = nl + 1;
  while (off < b.length) {
    const end = b.indexOf(0x0a, off);
    if (end < 0 || b.toString("ascii", off, off + 5) !== "FRAME") break;
    if (end + 1 + frameSize > b.length) break;
    frames.push(b.subarray(end + 1, end + 1 + ySize));
    off = end + 1 + frameSize;
  }
  return { header, width, height, frames };
}

/** Mean and standard deviation of a plane. @param {Uint8Array} p */
function planeStats(p) {
  let s = 0;
  let s2 = 0;
  for (const v of p) {
    s += v;
    s2 += v * v;
  }
  const mean = s / p.length;
  return { mean, std: Math.sqrt(Math.max(0, s2 / p.length - mean * mean)) };
}

/** Mean absolute difference of two planes. @param {Uint8Array} a @param {Uint8Array} b */
function planeDiff(a, b) {
  let d = 0;
  for (let i = 0; i < a.length; i++) d += Math.abs(a[i] - b[i]);
  return d / a.length;
}

/** Pearson correlation. @param {number[]} a @param {number[]} b */
function pearson(a, b) {
  const n = a.length;
  const ma = a.reduce((s, v) => s + v, 0) / n;
  const mb = b.reduce((s, v) => s + v, 0) / n;
  let num = 0;
  let da = 0;
  let db = 0;
  for (let i = 0; i < n; i++) {
    num += (a[i] - ma) * (b[i] - mb);
    da += (a[i] - ma) ** 2;
    db += (b[i] - mb) ** 2;
  }
  return da > 0 && db > 0 ? num / Math.sqrt(da * db) : 0;
}

// ----- tests -----

test("browser speech (fake microphone) → native player: the recording is the speech (wideband PESQ)", async () => {
  const room = "interop-speech-up";
  const page = await open();
  await login(page, room, "web-speaker");
  await publish(page, "web-speech", false);
  // The native player records the mix for long enough to hold one whole pass of the looped file
  // wherever the loop stands when the recording starts (two passes: the file is 5.7 s), so the
  // scoring script finds the whole reference in the recording. One call, scored once: Chromium
  // sends a bandwidth probe of RTP padding-only packets on the audio stream every 5 s, which the
  // native jitter buffer used to play as frames of their own (a 40–80 ms delay step, twice a
  // call); it skips them now (docs/media.md), and the call plays with no delay step.
  const rec = join(dir, "browser-speech-heard.wav");
  const native = await nativeCall(room, "native-listener", ["--play", "web-speech", "--record", rec, "--duration", "12.5"]);
  const first = await native.wait("first audio frame", (e) => e.event === "player_recv_audio_first_frame");
  const logined = native.events.find((e) => e.event === "room_state_changed" && e.reason === "Logined");
  assert.equal(await native.exited, 0, `${native.lines.join("\n")}\n${native.stderr()}`);
  const score = spawnSync("python3", [AUDIO_SCORE, speechWav, rec], { encoding: "utf8" });
  assert.equal(score.status, 0, `audio_score.py: ${score.stderr}`);
  const s = JSON.parse(score.stdout);
  const parts = spawnSync("python3", [SPEECH_WINDOWS, speechWav, rec, String(s.lag_ms)], { encoding: "utf8" });
  assert.equal(parts.status, 0, `speech_windows.py: ${parts.stderr}`);
  s.windowsDetail = JSON.parse(parts.stdout);
  s.firstFrameMs = first.t_ms - (logined?.t_ms ?? 0);
  const w = s.windowsDetail;
  console.log(
    `browser → native speech: PESQ ${s.pesq.toFixed(2)}, min 200 ms-window correlation ${w.min_window_corr.toFixed(2)} over ${w.windows} ` +
      `windows (±30 ms; ${w.corr.map((/** @type {number} */ c) => c.toFixed(2)).join(" ")}; shifts ` +
      `${[...new Set(w.shift_ms.map((/** @type {number} */ x) => Math.round(x)))].join("/")} ms); native login → first audio frame ${s.firstFrameMs} ms`,
  );
  assert.ok(w.windows >= 10, `too little speech compared: ${JSON.stringify(s)}`);
  // Nothing missing and no delay step: every 200 ms speech window of the file is in the recording
  // within ±30 ms of where the file was found. A missing or replaced stretch correlates 0.1 or so,
  // and a delay step of 40 ms or more takes every window after it to 0.1–0.6. The threshold is not
  // the SDK test's 0.7 for every window: one window of the file (at 3.6 s, an unvoiced fricative
  // with its energy above 1 kHz, which Chromium's Opus encoder codes as shaped noise) correlates
  // 0.48–0.57 in every call at shift 0, while the others correlate 0.79–0.99 (docs/media.md).
  assert.ok(w.min_window_corr >= 0.4, `a part of the speech is missing, garbled or shifted: ${JSON.stringify(s)}`);
  assert.ok(w.low_windows <= 2, `more than 2 speech windows correlate below 0.7: ${JSON.stringify(s)}`);
  assert.ok(s.pesq >= 3.5, `the speech arrived degraded: ${JSON.stringify(s)}`);
  await page.click("#stopPublish");
});

test("native speech → browser player: the page hears it (speech-band energy follows the source's envelope)", async () => {
  const room = "interop-speech-down";
  const native = await nativeCall(room, "native-speaker", ["--publish", "native-speech", "--source", speechWav]);
  await native.wait("publishing", (e) => e.event === "publisher_state_update" && e.state === "Publishing");
  const page = await open();
  await login(page, room, "web-listener");
  await waitSel(page, "#streams li[data-stream-id='native-speech']");
  await page.click("#streams li[data-stream-id='native-speech']");
  await waitSel(page, ".tile.play[data-stream-id='native-speech'][data-state='PLAYING']");
  await waitSel(page, ".tile.play[data-stream-id='native-speech'][data-first-audio-ms]");
  const firstMs = Number(await page.getAttribute(".tile.play[data-stream-id='native-speech']", "data-first-audio-ms"));
  await waitLog(page, /playerRecvAudioFirstFrame native-speech after \d+ ms/);

  // The speech band's energy (300–3400 Hz), every ~20 ms for 7 s, from an AnalyserNode on the
  // played MediaStream (headless, the stats' audioLevel stays 0).
  const seconds = 7;
  const env = await page.evaluate(async (secs) => {
    // @ts-ignore
    const stream = window.huddleApp.playing.get("native-speech").stream;
    const ctx = new AudioContext();
    await ctx.resume();
    const an = ctx.createAnalyser();
    an.fftSize = 2048;
    an.smoothingTimeConstant = 0;
    ctx.createMediaStreamSource(stream).connect(an);
    const freq = new Float32Array(an.frequencyBinCount);
    const binHz = ctx.sampleRate / an.fftSize;
    const lo = Math.ceil(300 / binHz);
    const hi = Math.floor(3400 / binHz);
    /** @type {[number, number][]} */
    const out = [];
    const t0 = ctx.currentTime;
    while (ctx.currentTime - t0 < secs) {
      await new Promise((r) => setTimeout(r, 20));
      an.getFloatFrequencyData(freq);
      let e = 0;
      for (let i = lo; i <= hi; i++) e += 10 ** (freq[i] / 10);
      out.push([ctx.currentTime - t0, 10 * Math.log10(e + 1e-20)]);
    }
    await ctx.close();
    return out;
  }, seconds);

  // The received envelope on a 50 ms grid, against the source's (50 ms RMS windows of the looped
  // file, three passes so every phase of the loop is there), at the best lag.
  const STEP = 0.05;
  /** @type {number[]} */
  const got = [];
  let j = 0;
  for (let t = 0.1; t < seconds - 0.05; t += STEP) {
    while (j + 1 < env.length && env[j + 1][0] <= t) j++;
    got.push(env[j][1]);
  }
  const { rate, x } = readWav(speechWav);
  const win = Math.round(rate * STEP);
  /** @type {number[]} */
  const refDb = [];
  for (let pass = 0; pass < 3; pass++) {
    for (let i = 0; i + win <= x.length; i += win) {
      let s = 0;
      for (let k = i; k < i + win; k++) s += x[k] * x[k];
      refDb.push(10 * Math.log10(s / win + 1e-20));
    }
  }
  const period = Math.floor(x.length / win);
  // Both envelopes clamped to 40 dB below their loudest window: silence is silence, whatever its level.
  /** @param {number[]} v */
  const clamp = (v) => {
    const top = Math.max(...v);
    return v.map((d) => Math.max(d, top - 40));
  };
  const gotC = clamp(got);
  let best = { corr: -1, lag: 0 };
  for (let lag = 0; lag < period; lag++) {
    const ref = clamp(refDb.slice(lag, lag + gotC.length));
    const corr = pearson(gotC, ref);
    if (corr > best.corr) best = { corr, lag };
  }
  // Speech and silence where they are clear-cut in the source: its loud windows (within 15 dB of
  // its loudest) are heard (within 30 dB of the loudest received; 80 %: the analyser's 43 ms
  // snapshot can fall between two syllables), its digital silence (the padding) is quiet (35 dB
  // or more below it).
  const refAt = clamp(refDb.slice(best.lag, best.lag + gotC.length));
  const topR = Math.max(...refAt);
  const topG = Math.max(...gotC);
  let speechWindows = 0;
  let speechHeard = 0;
  let silentWindows = 0;
  let silentQuiet = 0;
  for (let i = 0; i < gotC.length; i++) {
    if (refAt[i] > topR - 15) {
      speechWindows++;
      if (gotC[i] > topG - 30) speechHeard++;
    } else if (refAt[i] <= topR - 40) {
      silentWindows++;
      if (gotC[i] <= topG - 35) silentQuiet++;
    }
  }
  if (process.env.HUDDLE_TEST_LOGS) console.log(`got ${gotC.map((v) => (v - topG).toFixed(0)).join(" ")}\nref ${refAt.map((v) => (v - topR).toFixed(0)).join(" ")}`);
  console.log(
    `native → browser speech: first audio frame ${firstMs} ms after play; envelope correlation ${best.corr.toFixed(2)} over ${gotC.length} 50 ms windows; ` +
      `loud source windows heard ${speechHeard}/${speechWindows}, silent ones quiet ${silentQuiet}/${silentWindows}; loudest ${topG.toFixed(1)} dB`,
  );
  assert.ok(speechWindows > 30 && silentWindows > 20, "the compared stretch holds speech and silence");
  assert.ok(best.corr >= 0.8, `the played audio does not follow the speech: correlation ${best.corr}`);
  assert.ok(speechHeard >= 0.8 * speechWindows, `the speech is not all there: ${speechHeard}/${speechWindows}`);
  assert.ok(silentQuiet >= 0.9 * silentWindows, `the silences are not quiet: ${silentQuiet}/${silentWindows}`);
  assert.ok(firstMs > 0 && firstMs < 3000, `first audio frame after ${firstMs} ms`);
  await native.stop();
});

test("browser video → native VP8 decode; native test pattern → browser renders it", async () => {
  const room = "interop-video";
  const page = await open();
  await login(page, room, "web-cam");
  await publish(page, "web-cam", true);
  const y4m = join(dir, "browser-cam.y4m");
  const native = await nativeCall(room, "native-viewer", ["--play", "web-cam", "--record-video", y4m, "--duration", "5"]);
  await native.wait("first video frame", (e) => e.event === "player_recv_video_first_frame");
  assert.equal(await native.exited, 0, `${native.lines.join("\n")}\n${native.stderr()}`);
  // What the browser sends (the page's stats, refreshed every second).
  const sent = JSON.parse((await page.getAttribute(".tile.publish[data-stream-id='web-cam']", "data-stats")) ?? "{}").video;
  const v = readY4m(y4m);
  const stats = v.frames.map(planeStats);
  const diffs = v.frames.slice(10).map((f, i) => planeDiff(v.frames[i], f));
  if (process.env.HUDDLE_TEST_LOGS) console.log(stats.map((s) => `${s.mean.toFixed(0)}/${s.std.toFixed(0)}`).join(" "));
  console.log(
    `browser → native video: ${v.frames.length} frames ${v.width}x${v.height} (the browser sent ${sent?.frameWidth}x${sent?.frameHeight}); ` +
      `luma mean ${stats[stats.length - 1]?.mean.toFixed(0)}, std ${stats[stats.length - 1]?.std.toFixed(0)}; ` +
      `mean change over 10 frames ${Math.max(...diffs).toFixed(1)} (max)`,
  );
  // Chromium's fake camera at the page's 640x360 (it may scale down under load: then a size of the same ratio).
  assert.ok(v.frames.length >= 20, `only ${v.frames.length} frames decoded`);
  assert.ok(v.width * 9 === v.height * 16 && v.width >= 320, `unexpected size ${v.width}x${v.height}`);
  // Chromium's fake camera paints a white pie growing on black into the luma plane (its chroma is
  // 0, so a person sees light green on dark green): every frame has bright pixels and contrast, and
  // over the pie's cycle the picture is clearly not black.
  for (const [i, f] of v.frames.entries()) {
    assert.ok(f.reduce((m, x) => Math.max(m, x), 0) >= 128 && stats[i].std > 10, `frame ${i} is black or uniform: ${JSON.stringify(stats[i])}`);
  }
  assert.ok(stats.reduce((s, x) => s + x.mean, 0) / stats.length > 16, "the video is (nearly) black");
  assert.ok(Math.max(...diffs) > 1, "the frames do not change over time");

  // The other way: a native test pattern (320x240), rendered by the page.
  const cam = await nativeCall(room, "native-cam", ["--publish", "native-cam", "--camera", "testsrc", "--source", "tone:440"]);
  await cam.wait("publishing", (e) => e.event === "publisher_state_update" && e.state === "Publishing");
  await waitSel(page, "#streams li[data-stream-id='native-cam']");
  await page.click("#streams li[data-stream-id='native-cam']");
  const tile = ".tile.play[data-stream-id='native-cam']";
  await waitSel(page, `${tile}[data-state='PLAYING']`);
  await page.waitForFunction(
    (sel) => {
      const el = /** @type {HTMLVideoElement | null} */ (document.querySelector(`${sel} video`));
      return !!el && el.videoWidth > 0 && el.currentTime > 0.5;
    },
    tile,
    { timeout: 15_000 },
  );
  /** Samples the tile's video through a canvas. */
  const sample = () =>
    page.evaluate((sel) => {
      const el = /** @type {HTMLVideoElement} */ (document.querySelector(`${sel} video`));
      const c = document.createElement("canvas");
      c.width = el.videoWidth;
      c.height = el.videoHeight;
      const g = /** @type {CanvasRenderingContext2D} */ (c.getContext("2d"));
      g.drawImage(el, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      const luma = [];
      for (let i = 0; i < d.length; i += 4) luma.push(Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]));
      return { width: el.videoWidth, height: el.videoHeight, luma };
    }, tile);
  const a = await sample();
  await page.waitForTimeout(500);
  const b = await sample();
  const sa = planeStats(Uint8Array.from(a.luma));
  const change = planeDiff(Uint8Array.from(a.luma), Uint8Array.from(b.luma));
  const firstVideo = await page.getAttribute(tile, "data-first-video-ms");
  console.log(
    `native → browser video: <video> ${b.width}x${b.height}, luma mean ${sa.mean.toFixed(0)} std ${sa.std.toFixed(0)}, ` +
      `change over 0.5 s ${change.toFixed(1)}; first video frame ${firstVideo} ms after play`,
  );
  assert.deepEqual([a.width, a.height], [320, 240], "the test pattern's size");
  assert.ok(sa.mean > 16 && sa.std > 10, `the rendered frame is black or uniform: ${JSON.stringify(sa)}`);
  assert.ok(change > 0.5, "the rendered video does not move");

  // What a person sees: the page with the native test pattern playing.
  await page.waitForFunction((sel) => (JSON.parse(document.querySelector(sel)?.getAttribute("data-stats") ?? "{}").video?.bitrateKbps ?? 0) > 20, tile, { timeout: 5000 });
  mkdirSync(join(REPO, "target"), { recursive: true });
  await page.screenshot({ path: join(REPO, "target", "web-screenshot-native.png"), fullPage: true });
  await cam.stop();
  await page.click("#stopPublish");
});

test("two browsers and a native client in one room agree on users and streams", async () => {
  const room = "interop-lists";
  const c = await open();
  const d = await open();
  const native = await nativeCall(room, "native-4", ["--user-status-notify", "--publish", "native-4-main", "--source", "tone:440"]);
  await native.wait("publishing", (e) => e.event === "publisher_state_update" && e.state === "Publishing");
  await login(c, room, "web-c");
  await publish(c, "web-c-main", false);
  await login(d, room, "web-d");
  await publish(d, "web-d-main", false);

  /** What each side should list: everyone and every stream but its own. */
  const everyone = { users: ["native-4", "web-c", "web-d"], streams: ["native-4-main", "web-c-main", "web-d-main"] };
  /** @param {typeof everyone} want @param {string} self @param {string} own */
  const without = (want, self, own) => ({ users: want.users.filter((u) => u !== self), streams: want.streams.filter((s) => s !== own) });
  const agree = async (/** @type {typeof everyone} */ want, /** @type {[import("playwright-core").Page, string, string][]} */ browsers) => {
    const nativeWant = without(want, "native-4", "native-4-main");
    const deadline = Date.now() + 10_000;
    for (;;) {
      const views = [];
      for (const [page, self, own] of browsers) {
        views.push({ who: self, got: { users: await listed(page, "#users"), streams: await listed(page, "#streams") }, want: without(want, self, own) });
      }
      views.push({ who: "native-4", got: nativeView(native), want: nativeWant });
      if (views.every((v) => JSON.stringify(v.got) === JSON.stringify(v.want))) return views;
      if (Date.now() > deadline) assert.fail(`the lists disagree: ${JSON.stringify(views, null, 1)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const views = await agree(everyone, [
    [c, "web-c", "web-c-main"],
    [d, "web-d", "web-d-main"],
  ]);
  console.log(`one room, three clients: ${views.map((v) => `${v.who} sees users [${v.got.users}] streams [${v.got.streams}]`).join("; ")}`);

  // web-d leaves: the native client and web-c agree again.
  await d.click("#logout");
  await waitLog(d, /roomStateChanged \S+: LOGOUT/);
  const left = { users: ["native-4", "web-c"], streams: ["native-4-main", "web-c-main"] };
  await agree(left, [[c, "web-c", "web-c-main"]]);
  await native.stop();
  await waitSel(c, "#users li.empty");
});

test("broadcast messages go both ways between the page and a native client, with room and stream extra info", async () => {
  const room = "im-room";
  const page = await open();
  await login(page, room, "web-user");
  // The native client publishes with extra info and says hello, with its standard-input commands.
  const native = await nativeCall(room, "native-user", ["--publish", "native-im", "--source", "tone:440"]);
  await native.wait("login", (e) => e.event === "room_state_changed" && e.reason === "Logined");
  native.command({ cmd: "set_stream_extra_info", extra_info: "from rust" });
  native.command({ cmd: "send_broadcast_message", message: "hello from rust" });
  const accepted = await native.wait("result line", (e) => e.result === "send_broadcast_message");
  assert.equal(accepted.error_code, 0);
  const sent = await native.wait("send result", (e) => e.event === "im_send_broadcast_message_result" && e.seq === accepted.seq);
  assert.equal(sent.error_code, 0);
  assert.ok(sent.message_id > 0);
  await waitSel(page, "#chat li:has-text('hello from rust')");
  await waitSel(page, "#streams li[data-stream-id='native-im']:has-text('from rust')");
  const count = await native.wait("online count", (e) => e.event === "room_online_user_count_update");
  assert.equal(count.count, 2);

  // The page's chat box to the native client.
  await page.fill("#chatText", "hello from the browser");
  await page.click("#chatSend");
  const got = await native.wait("broadcast message", (e) => e.event === "im_recv_broadcast_message");
  assert.equal(got.messages[0].message, "hello from the browser");
  assert.equal(got.messages[0].from_user.user_id, "web-user");
  await waitSel(page, "#chat li:has-text('hello from the browser')");

  // Room extra info set on the page reaches the native client.
  await page.fill("#roomExtraValue", "interop");
  await page.click("#roomExtraSet");
  const extra = await native.wait("room extra info", (e) => e.event === "room_extra_info_update");
  assert.deepEqual(
    extra.room_extra_info_list.map((/** @type {any} */ i) => [i.key, i.value, i.update_user.user_id]),
    [["topic", "interop", "web-user"]],
  );
  await native.stop();
});
