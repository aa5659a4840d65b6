// Mute across the two SDKs, through one `huddle serve` (dev mode): a real Chromium (the debug page
// and huddle.js) and native SDK clients (`huddle call` processes).
//
// - The page mutes its microphone (the local tile's button): the native player gets
//   `remote_mic_state_update` Mute then Open, and its recording is silent in between (energy
//   measured), loud before and after.
// - A native publisher joins muted (`--mute-mic`): the page's tile shows it (remoteMicStatusUpdate
//   MUTE), and the page hears silence from it while it hears an unmuted native publisher's tone;
//   unmuted by its `mute_microphone` command, the page shows OPEN and hears it.
// - The page mutes a played stream's audio (the played tile's button): the server stops sending it
//   (`huddle_rtp_packets_muted_total` grows), and the page hears it again once unmuted.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, startNativeCall, launchBrowser, openPage, logText, readWav, writeToneWav, waitLog, waitSel } from "./harness.js";
/** @typedef {import("./harness.js").NativeCall} NativeCall */

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let chrome;
/** @type {string} */
let dir;
/** @type {string} */
let toneWav;
/** @type {{ page: import("playwright-core").Page, console: string[] }[]} */
const pages = [];
/** @type {NativeCall[]} */
const calls = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "huddle-mute-"));
  toneWav = join(dir, "tone440.wav");
  writeToneWav(toneWav, 440, 5, 0.5);
  server = await startServer();
  chrome = await launchBrowser({ audioFile: toneWav });
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
  if (dir) rmSync(dir, { recursive: true, force: true });
});

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
 * RMS level in dBFS of the recording between `from` and `to` seconds.
 * @param {Float64Array} x @param {number} rate @param {number} from @param {number} to
 */
function dbfs(x, rate, from, to) {
  const a = Math.max(0, Math.round(from * rate));
  const b = Math.min(x.length, Math.round(to * rate));
  assert.ok(b - a > rate / 10, `the recording is too short for ${from}–${to} s (${x.length / rate} s)`);
  let s = 0;
  for (let i = a; i < b; i++) s += x[i] * x[i];
  return 10 * Math.log10(s / (b - a) + 1e-20);
}

/**
 * The level (dB, full scale 0) of a played stream's audio on the page for `ms` milliseconds, from
 * an AnalyserNode (headless, the stats' audioLevel stays 0): the mean of its snapshots' RMS.
 * @param {import("playwright-core").Page} page @param {string} streamId @param {number} ms
 */
async function pageLevel(page, streamId, ms) {
  return page.evaluate(
    async ([id, ms]) => {
      // @ts-ignore
      const stream = window.huddleApp.playing.get(id).stream;
      const ctx = new AudioContext();
      await ctx.resume();
      const an = ctx.createAnalyser();
      an.fftSize = 2048;
      ctx.createMediaStreamSource(stream).connect(an);
      const buf = new Float32Array(an.fftSize);
      let sum = 0;
      let n = 0;
      const t0 = performance.now();
      while (performance.now() - t0 < Number(ms)) {
        await new Promise((r) => setTimeout(r, 40));
        an.getFloatTimeDomainData(buf);
        for (const v of buf) sum += v * v;
        n += buf.length;
      }
      await ctx.close();
      return 10 * Math.log10(sum / Math.max(1, n) + 1e-20);
    },
    [streamId, String(ms)],
  );
}

/** The server's huddle_rtp_packets_muted_total. */
async function mutedPackets() {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const m = /^huddle_rtp_packets_muted_total (\d+)/m.exec(text);
  assert.ok(m, "huddle_rtp_packets_muted_total is exported");
  return Number(m[1]);
}

test("the page mutes its microphone: the native player gets the state and records silence, then the tone again", async () => {
  const room = "mute-up";
  const page = await open();
  await login(page, room, "web-muter");
  await page.fill("#streamId", "web-mute");
  await page.check("#mediaAudio");
  await page.uncheck("#audioProcessing");
  await page.click("#publish");
  await waitSel(page, ".tile.publish[data-stream-id='web-mute'][data-state='PUBLISHING']");
  const rec = join(dir, "web-mute-heard.wav");
  const native = await nativeCall(room, "native-player", ["--play", "web-mute", "--record", rec, "--duration", "9"]);
  await native.wait("first audio frame", (e) => e.event === "player_recv_audio_first_frame");
  await new Promise((r) => setTimeout(r, 1500));
  const micButton = ".tile.publish[data-stream-id='web-mute'] button.mute[data-track='audio']";
  await page.click(micButton);
  const muted = await native.wait("mic Mute", (e) => e.event === "remote_mic_state_update" && e.stream_id === "web-mute" && e.state === "Mute");
  await new Promise((r) => setTimeout(r, 2500));
  await page.click(micButton);
  const opened = await native.wait("mic Open", (e) => e.event === "remote_mic_state_update" && e.stream_id === "web-mute" && e.state === "Open");
  assert.equal(await native.exited, 0, `${native.lines.join("\n")}\n${native.stderr()}`);

  // The recording's clock is the command's (the mixer starts with the engine): the windows keep
  // 0.5 s from each state change for the travel of the last and first packets.
  const { rate, x } = readWav(rec);
  const first = native.events.find((e) => e.event === "player_recv_audio_first_frame").t_ms / 1000;
  const before = dbfs(x, rate, first + 0.3, muted.t_ms / 1000 - 0.5);
  const during = dbfs(x, rate, muted.t_ms / 1000 + 0.5, opened.t_ms / 1000 - 0.5);
  const afterDb = dbfs(x, rate, opened.t_ms / 1000 + 0.7, x.length / rate - 0.3);
  console.log(`native player's level: ${before.toFixed(1)} dBFS before the page mutes, ${during.toFixed(1)} muted, ${afterDb.toFixed(1)} after`);
  assert.ok(before > -20, `the tone is heard before muting (${before.toFixed(1)} dBFS)`);
  assert.ok(during < -60, `silence while muted (${during.toFixed(1)} dBFS)`);
  assert.ok(afterDb > -20, `the tone is heard again after unmuting (${afterDb.toFixed(1)} dBFS)`);
  // The stream kept playing: no player state change while muted.
  const changes = native.events.filter((e) => e.event === "player_state_update" && e.t_ms > muted.t_ms && e.t_ms < opened.t_ms);
  assert.deepEqual(changes, []);
  await page.click("#stopPublish");
});

test("a native publisher joined muted: the page shows MUTE and hears silence; a played stream's audio muted on the page is not sent", async () => {
  const room = "mute-down";
  const quiet = await nativeCall(room, "native-quiet", ["--publish", "native-quiet", "--source", toneWav, "--mute-mic"]);
  const loud = await nativeCall(room, "native-loud", ["--publish", "native-loud", "--source", toneWav]);
  for (const c of [quiet, loud]) await c.wait("publishing", (e) => e.event === "publisher_state_update" && e.state === "Publishing");
  const page = await open();
  await login(page, room, "web-listener");
  for (const id of ["native-quiet", "native-loud"]) {
    await waitSel(page, `#streams li[data-stream-id='${id}']`);
    await page.click(`#streams li[data-stream-id='${id}']`);
    await waitSel(page, `.tile.play[data-stream-id='${id}'][data-state='PLAYING']`);
    await waitSel(page, `.tile.play[data-stream-id='${id}'][data-first-audio-ms]`);
  }
  // The state of a stream muted before it was played arrives with the play.
  await waitSel(page, ".tile.play[data-stream-id='native-quiet'][data-remote-mic='MUTE']");
  assert.match((await page.textContent(".tile.play[data-stream-id='native-quiet'] .remote")) ?? "", /mic mute/);
  assert.equal(await page.getAttribute(".tile.play[data-stream-id='native-loud']", "data-remote-mic"), null);
  const quietDb = await pageLevel(page, "native-quiet", 1500);
  const loudDb = await pageLevel(page, "native-loud", 1500);
  console.log(`page's level: muted native publisher ${quietDb.toFixed(1)} dB, unmuted ${loudDb.toFixed(1)} dB`);
  assert.ok(loudDb > -25, `the unmuted tone is heard (${loudDb.toFixed(1)} dB)`);
  assert.ok(quietDb < -70, `the muted publisher is silent (${quietDb.toFixed(1)} dB)`);
  // Unmuted by a command on its standard input: the page sees OPEN and hears the tone.
  quiet.command({ cmd: "mute_microphone", mute: false, id: 1 });
  const result = await quiet.wait("the command's result", (e) => e.result === "mute_microphone" && e.id === 1);
  assert.equal(result.error_code, 0);
  await waitSel(page, ".tile.play[data-stream-id='native-quiet'][data-remote-mic='OPEN']");
  assert.equal((await page.textContent(".tile.play[data-stream-id='native-quiet'] .remote")) ?? "", "");
  await new Promise((r) => setTimeout(r, 300));
  const unmutedDb = await pageLevel(page, "native-quiet", 1000);
  console.log(`page's level after the native publisher's unmute command: ${unmutedDb.toFixed(1)} dB`);
  assert.ok(unmutedDb > -25, `the unmuted publisher is heard (${unmutedDb.toFixed(1)} dB)`);

  // The page stops receiving the loud stream's audio: the server holds its packets back.
  const audioButton = ".tile.play[data-stream-id='native-loud'] button.mute[data-track='audio']";
  await page.click(audioButton);
  await waitLog(page, /muted audio of native-loud/);
  await new Promise((r) => setTimeout(r, 300));
  const m0 = await mutedPackets();
  const mutedDb = await pageLevel(page, "native-loud", 1000);
  const held = (await mutedPackets()) - m0;
  console.log(`page's play mute: ${held} packets held back by the server in ~1 s; level ${mutedDb.toFixed(1)} dB`);
  assert.ok(held >= 30, `the server held back only ${held} packets`);
  assert.ok(mutedDb < -70, `nothing is heard of the muted stream (${mutedDb.toFixed(1)} dB)`);
  await page.click(audioButton);
  await new Promise((r) => setTimeout(r, 500));
  const backDb = await pageLevel(page, "native-loud", 1000);
  assert.ok(backDb > -25, `the stream is heard again after unmuting (${backDb.toFixed(1)} dB)`);
});
