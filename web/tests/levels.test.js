// Sound levels across SDKs: a real Chromium (the debug page and huddle.js) and native clients
// (`huddle call --sound-level-interval`) through one `huddle serve` (dev mode). The speech sample
// with 1.5 s of silence before it and 0.5 s after, looped (5.7 s a pass), is both Chromium's fake
// microphone and the native publisher's source: each side's levels and voice activity must follow
// its speech and silence, both ways, and the active speaker with them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, launchBrowser, openPage, logText, huddleBin, writePaddedSpeech, waitLog, waitSel } from "./harness.js";

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let chrome;
/** @type {string} */
let dir;
/** @type {string} */
let speechWav;
/** @type {import("playwright-core").Page[]} */
const pages = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "huddle-levels-"));
  speechWav = join(dir, "speech48k.wav");
  writePaddedSpeech(speechWav, 1.5, 0.5);
  server = await startServer();
  chrome = await launchBrowser({ audioFile: speechWav });
});

after(async () => {
  if (process.env.HUDDLE_TEST_LOGS) {
    for (const [i, p] of pages.entries()) console.log(`--- page ${i} ---\n${(await logText(p).catch(() => [])).join("\n")}`);
  }
  await chrome?.close();
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * `huddle call` logged in with a dev token, run to its end; its JSON event lines.
 * @param {string} room @param {string} user @param {string[]} args
 * @returns {Promise<any[]>}
 */
async function nativeCall(room, user, args) {
  const r = await fetch(`${server.url}/api/dev-token`, { method: "POST", body: JSON.stringify({ app_id: server.appId, user_id: user, room_id: room }) });
  const { token } = /** @type {{ token: string }} */ (await r.json());
  const child = spawn(huddleBin(), ["call", "--server", server.wsUrl, "--app-id", String(server.appId), "--token", token, "--room", room, "--user", user, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const code = await new Promise((resolve) => child.on("exit", resolve));
  assert.equal(code, 0, `huddle call ${user}: ${err}`);
  return out
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l));
}

/** @param {string} room @param {string} user */
async function openLoggedIn(room, user) {
  const { page } = await openPage(chrome.browser, `${server.url}/`);
  pages.push(page);
  await page.fill("#roomId", room);
  await page.fill("#userId", user);
  await page.fill("#token", "");
  await page.click("#login");
  await waitLog(page, /roomStateChanged \S+: LOGINED/);
  return page;
}

/**
 * Checks that 100 ms reports `[level, vad]` follow the looped file: they alternate between speech
 * (voiced, loud: runs of 2 s or more of the 3.7 s speech) and silence (not voiced, below level 10:
 * runs of 0.8 s or more of the 2 s silence, what the voice hangover leaves of it), at least twice
 * each.
 * @param {string} who @param {[number, boolean][]} reports
 */
function checkFollows(who, reports) {
  const trace = reports.map(([l, v]) => `${Math.round(l)}${v ? "*" : ""}`).join(" ");
  /** @type {{ kind: string, n: number, sum: number }[]} */
  const runs = [];
  for (const [level, vad] of reports) {
    const kind = vad ? "speech" : level < 10 ? "silence" : "other";
    const last = runs[runs.length - 1];
    if (last && last.kind === kind) {
      last.n++;
      last.sum += level;
    } else runs.push({ kind, n: 1, sum: level });
  }
  const long = runs.filter((r) => (r.kind === "speech" && r.n >= 20) || (r.kind === "silence" && r.n >= 8));
  const order = long.map((r) => r.kind).filter((k, i, a) => i === 0 || a[i - 1] !== k);
  const speech = long.filter((r) => r.kind === "speech");
  console.log(`${who}: runs (V voiced, Q quiet, o other) ${runs.map((r) => `${{ speech: "V", silence: "Q", other: "o" }[r.kind]}${r.n}`).join(" ")}`);
  assert.ok(speech.length >= 2 && long.filter((r) => r.kind === "silence").length >= 2, `${who}: no alternation of speech and silence: ${trace}`);
  assert.ok(order.length >= 4, `${who}: speech and silence do not alternate: ${order.join(" ")}: ${trace}`);
  for (const r of speech) assert.ok(r.sum / r.n > 40, `${who}: quiet speech (${r.sum / r.n}): ${trace}`);
  // Speech is voiced for most of its 3.7 s, not in bits: its longest voiced run (between its one
  // long pause, 200 ms, which can outlast the hangover) is 2.5 s or more.
  assert.ok(Math.max(...speech.map((r) => r.n)) >= 25, `${who}: speech voiced in bits: ${trace}`);
}

/**
 * Records the page engine's level events from now on, into `window.levelLog`.
 * @param {import("playwright-core").Page} page
 */
async function recordLevels(page) {
  await page.evaluate(() => {
    // @ts-ignore
    const app = window.huddleApp;
    /** @type {{ captured: [number, boolean][], remote: Record<string, [number, boolean][]>, speakers: string[][] }} */
    const log = { captured: [], remote: {}, speakers: [] };
    // @ts-ignore
    window.levelLog = log;
    app.engine.on("capturedSoundLevelUpdate", (/** @type {number} */ l, /** @type {boolean} */ v) => log.captured.push([l, v]));
    app.engine.on("soundLevelUpdate", (/** @type {any[]} */ list) => {
      for (const s of list) if (s.type === "pull") (log.remote[s.streamID] ??= []).push([s.soundLevel, s.vad]);
    });
    app.engine.on("activeSpeakersChanged", (/** @type {string[]} */ ids) => log.speakers.push(ids));
  });
}

test("browser speech → native: the native player's levels and the page's captured levels follow speech and silence", async () => {
  const room = "levels-up";
  const page = await openLoggedIn(room, "web-speaker");
  await page.fill("#streamId", "web-speech");
  await page.check("#mediaAudio");
  await page.uncheck("#audioProcessing");
  await page.click("#publish");
  await waitSel(page, ".tile.publish[data-stream-id='web-speech'][data-state='PUBLISHING']");
  await recordLevels(page);
  const events = await nativeCall(room, "native-listener", ["--play", "web-speech", "--sound-level-interval", "100", "--duration", "14"]);
  /** @type {[number, boolean][]} */
  const remote = events
    .filter((e) => e.event === "remote_sound_level_update" && e.sound_levels["web-speech"])
    .map((e) => [e.sound_levels["web-speech"].sound_level, e.sound_levels["web-speech"].vad]);
  const first = remote.findIndex(([l]) => l > 0);
  checkFollows("native hears the browser", remote.slice(Math.max(first, 0)));
  const speakers = events.filter((e) => e.event === "active_speakers_changed").map((e) => e.stream_ids);
  assert.ok(speakers.some((s) => s.length === 1 && s[0] === "web-speech"), JSON.stringify(speakers));
  assert.ok(speakers.slice(1).some((s) => s.length === 0), `the speaker never went quiet: ${JSON.stringify(speakers)}`);

  // The page's own capture, measured by huddle.js.
  // @ts-ignore
  const log = await page.evaluate(() => window.levelLog);
  checkFollows("the page's capture", log.captured);
  // The page's tile shows the level and the voice.
  assert.ok(Number(await page.getAttribute(".tile.publish[data-stream-id='web-speech']", "data-level")) >= 0);
  await page.click("#stopPublish");
});

test("native speech → browser: the page's levels follow speech and silence; its tile shows the active speaker and the quality", async () => {
  const room = "levels-down";
  const native = nativeCall(room, "native-speaker", ["--publish", "native-speech", "--source", speechWav, "--sound-level-interval", "100", "--duration", "20"]);
  const page = await openLoggedIn(room, "web-listener");
  await waitSel(page, "#streams li[data-stream-id='native-speech']");
  await recordLevels(page);
  await page.click("#streams li[data-stream-id='native-speech']");
  const tile = ".tile.play[data-stream-id='native-speech']";
  await waitSel(page, `${tile}[data-state='PLAYING']`);
  // The active speaker is highlighted, and the stream's quality level shown (every 3 s).
  await waitSel(page, `${tile}.active-speaker`, 10_000);
  await waitSel(page, `${tile}[data-quality]`, 10_000);
  await page.waitForTimeout(12_000);
  // @ts-ignore
  const log = await page.evaluate(() => window.levelLog);
  const remote = log.remote["native-speech"] ?? [];
  const first = remote.findIndex((/** @type {[number, boolean]} */ [l]) => l > 0);
  checkFollows("the browser hears native", remote.slice(Math.max(first, 0)));
  assert.ok(log.speakers.some((/** @type {string[]} */ s) => s[0] === "native-speech"), JSON.stringify(log.speakers));
  assert.ok(log.speakers.some((/** @type {string[]} */ s) => s.length === 0), JSON.stringify(log.speakers));
  const quality = await page.getAttribute(tile, "data-quality");
  assert.ok(["excellent", "good"].includes(quality ?? ""), `quality ${quality} on a loopback call`);
  // The native publisher's own captured levels follow its file too.
  const events = await native;
  const captured = events.filter((e) => e.event === "captured_sound_level_update").map((e) => /** @type {[number, boolean]} */ ([e.sound_level, e.vad]));
  checkFollows("native capture", captured.slice(Math.max(captured.findIndex(([l]) => l > 0), 0)));
});
