// Browser tests of the debug page and huddle.js against a real `huddle serve` (dev mode), in a
// real headless chromium. One server and one browser for the file; each page is its own context.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { startServer, launchBrowser, openPage, logText, REPO, waitLog, waitSel } from "./harness.js";

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let chrome;
const ROOM = `room-${process.pid}`;
/** @type {{ page: import("playwright-core").Page, console: string[] }[]} */
const pages = [];

before(async () => {
  server = await startServer();
  chrome = await launchBrowser();
});

after(async () => {
  // HUDDLE_TEST_LOGS=1 prints every page's log (what a person would read on the page).
  if (process.env.HUDDLE_TEST_LOGS) {
    for (const [i, p] of pages.entries()) {
      const lines = await logText(p.page).catch(() => []);
      console.log(`--- page ${i} log ---\n${lines.join("\n")}\n--- page ${i} console ---\n${p.console.join("\n")}`);
    }
  }
  await chrome?.close();
  await server?.stop();
});

/** Opens the debug page. @param {{ width: number, height: number }} [viewport] */
async function open(viewport) {
  const p = await openPage(chrome.browser, `${server.url}/`, viewport);
  pages.push(p);
  return p;
}

/**
 * Fills the room fields and logs in (a dev token is fetched by the page when the token is empty).
 * @param {import("playwright-core").Page} page
 * @param {string} user
 * @param {string} [token]
 */
async function login(page, user, token = "") {
  await page.fill("#roomId", ROOM);
  await page.fill("#userId", user);
  await page.fill("#token", token);
  await page.click("#login");
}

/** @param {import("playwright-core").Page} page @param {string} selector @param {string[]} want */
async function waitList(page, selector, want) {
  await page.waitForFunction(
    ([sel, ids, attr]) => {
      const got = [...document.querySelectorAll(`${sel} li[${attr}]`)].map((li) => li.getAttribute(attr)).sort();
      return JSON.stringify(got) === JSON.stringify([...ids].sort());
    },
    [selector, want, selector === "#users" ? "data-user-id" : "data-stream-id"],
    { timeout: 10_000 },
  );
}

test("the page loads and knows the server's dev mode", async () => {
  const { page, console } = await open();
  assert.equal(await page.title(), "Huddle — debug page");
  for (const id of ["server", "appId", "roomId", "userId", "token", "devToken", "streamId", "login", "logout", "publish", "stopPublish", "play", "stopPlay", "users", "streams", "log"]) {
    assert.equal(await page.locator(`#${id}`).count(), 1, `#${id}`);
  }
  assert.equal(await page.isVisible("#devToken"), true, "the dev token button shows in dev mode");
  assert.equal(await page.inputValue("#appId"), String(server.appId));
  assert.equal(await page.inputValue("#server"), server.wsUrl);
  await waitLog(page, /dev mode \(AppID \d+\)/);
  // The dev token button mints a token for the fields.
  await page.fill("#userId", "carol");
  await page.click("#devToken");
  await page.waitForFunction(() => /** @type {HTMLInputElement} */ (document.getElementById("token")).value.startsWith("04"));
  assert.deepEqual(console.filter((l) => l.startsWith("pageerror")), []);
});

test("two browsers in one room see each other and each other's streams", async () => {
  const a = pages[0].page;
  const { page: b } = await open();
  await login(a, "alice");
  await waitLog(a, /roomStateChanged \S+: LOGINED/);
  await login(b, "bob");
  await waitLog(b, /roomStateChanged \S+: LOGINED/);
  assert.equal(await a.textContent("#roomState"), "connected");
  await waitList(a, "#users", ["bob"]);
  await waitList(b, "#users", ["alice"]);

  // alice publishes (audio only); bob sees the stream, alice does not list her own.
  await a.fill("#streamId", "alice-main");
  await a.check("#mediaAudio");
  await a.click("#publish");
  await waitList(b, "#streams", ["alice-main"]);
  await waitList(a, "#streams", []);
  assert.match(await b.textContent("#streams li[data-stream-id='alice-main']"), /by alice/);
  // and bob's stream the other way.
  await b.fill("#streamId", "bob-main");
  await b.click("#publish");
  await waitList(a, "#streams", ["bob-main"]);
  await waitList(b, "#streams", ["alice-main"]);
  await b.click("#stopPublish");
  await waitList(a, "#streams", []);
  await waitLog(a, /roomStreamUpdate DELETE: bob-main \(bob\)/);
});

test("errors show their codes in the log", async () => {
  const { page } = await open({ width: 390, height: 844 });
  // A tampered token: the GCM tag no longer matches (1002075).
  const res = await page.evaluate(async ([appId]) => {
    const r = await fetch("/api/dev-token", { method: "POST", body: JSON.stringify({ app_id: appId, user_id: "mallory" }) });
    return r.json();
  }, [server.appId]);
  const bin = Buffer.from(res.token.slice(2), "base64");
  bin[bin.length - 5] ^= 0x55;
  const tampered = "04" + bin.toString("base64");
  await login(page, "mallory", tampered);
  await waitLog(page, /LOGIN_FAILED code 1002075/);
  await waitLog(page, /loginRoom failed: code 1002075/);
  assert.equal(await page.textContent("#roomState"), "disconnected");
  assert.equal(await page.isEnabled("#login"), true);
  // Not Token04 at all (1002074).
  await login(page, "mallory", "04nonsense");
  await waitLog(page, /LOGIN_FAILED code 1002074/);
  // A token for another user (1002079).
  const eve = await page.evaluate(async ([appId]) => {
    const r = await fetch("/api/dev-token", { method: "POST", body: JSON.stringify({ app_id: appId, user_id: "eve" }) });
    return (await r.json()).token;
  }, [server.appId]);
  await login(page, "mallory", eve);
  await waitLog(page, /LOGIN_FAILED code 1002079/);
  // Logged in with a good token: a bad stream ID is refused before it is sent (1000016).
  await login(page, "mallory");
  await waitLog(page, /roomStateChanged \S+: LOGINED/);
  // A stream ID another user publishes (1003028).
  await page.fill("#streamId", "alice-main");
  await page.click("#publish");
  await waitLog(page, /startPublishingStream failed: code 1003028/);
  await page.fill("#streamId", "bad id!");
  await page.click("#play");
  await waitLog(page, /startPlayingStream failed: code 1000016/);
  await page.click("#logout");
  await waitLog(page, /roomStateChanged \S+: LOGOUT/);
});

/** @param {import("playwright-core").Page} page @param {string} selector */
function waitSelWithConsole(page, selector, timeout = 15_000) {
  return waitSel(page, selector, timeout, pages.find((x) => x.page === page)?.console);
}

test("a played stream carries the publisher's audio (WebAudio analysis)", async () => {
  const a = pages[0].page;
  const b = pages[1].page;
  // alice publishes the fake microphone (a 440 Hz tone) as alice-main since the earlier test.
  await waitSelWithConsole(a, ".tile.publish[data-state='PUBLISHING']");
  await waitLog(a, /publishing alice-main/);
  await b.click("#streams li[data-stream-id='alice-main']");
  await waitSelWithConsole(b, ".tile.play[data-stream-id='alice-main'][data-state='PLAYING']");
  const result = await b.evaluate(async () => {
    // @ts-ignore
    const stream = window.huddleApp.playing.get("alice-main").stream;
    const ctx = new AudioContext();
    await ctx.resume();
    const src = ctx.createMediaStreamSource(stream);
    const an = ctx.createAnalyser();
    an.fftSize = 4096;
    src.connect(an);
    const time = new Float32Array(an.fftSize);
    const freq = new Float32Array(an.frequencyBinCount);
    let best = { rms: 0, peakHz: 0 };
    const start = performance.now();
    while (performance.now() - start < 8000) {
      await new Promise((r) => setTimeout(r, 100));
      an.getFloatTimeDomainData(time);
      let sum = 0;
      for (const v of time) sum += v * v;
      const rms = Math.sqrt(sum / time.length);
      if (rms > best.rms) {
        an.getFloatFrequencyData(freq);
        let peak = 0;
        for (let i = 1; i < freq.length; i++) if (freq[i] > freq[peak]) peak = i;
        best = { rms, peakHz: (peak * ctx.sampleRate) / an.fftSize };
      }
      if (best.rms > 0.05 && performance.now() - start > 1000) break;
    }
    await ctx.close();
    return best;
  });
  assert.ok(result.rms > 0.05, `the played audio is silent: ${JSON.stringify(result)}`);
  assert.ok(Math.abs(result.peakHz - 440) < 30, `the played audio is not the 440 Hz tone: ${JSON.stringify(result)}`);
  // The page's own meter and stats see it too.
  await b.waitForFunction(() => Number(document.querySelector(".tile.play")?.getAttribute("data-level") ?? 0) > 20, null, { timeout: 5000 });
  await b.waitForFunction(() => (JSON.parse(document.querySelector(".tile.play")?.getAttribute("data-stats") ?? "{}").audio?.bitrateKbps ?? 0) > 8, null, { timeout: 5000 });
});

test("a played stream carries the publisher's video (VP8 decoded)", async () => {
  const a = pages[0].page;
  const b = pages[1].page;
  await b.fill("#streamId", "bob-cam");
  await b.check("#mediaVideo");
  await b.click("#publish");
  await waitSelWithConsole(b, ".tile.publish[data-stream-id='bob-cam'][data-state='PUBLISHING']");
  await a.click("#streams li[data-stream-id='bob-cam']");
  await waitSelWithConsole(a, ".tile.play[data-stream-id='bob-cam'][data-state='PLAYING']");
  await a.waitForFunction(
    () => {
      const v = /** @type {HTMLVideoElement | null} */ (document.querySelector(".tile.play[data-stream-id='bob-cam'] video"));
      return !!v && v.videoWidth > 0 && v.currentTime > 0.5;
    },
    null,
    { timeout: 15_000 },
  );
  const stats = await a.evaluate(async () => {
    // @ts-ignore
    const s = await window.huddleApp.engine.getStats("bob-cam");
    return s;
  });
  assert.ok(stats?.video?.codec.toLowerCase().includes("vp8"), JSON.stringify(stats));
  assert.ok(stats.video.frameWidth > 0 && stats.video.packets > 0, JSON.stringify(stats));
  // Let the stats and the level meters run once more, then keep a picture of the page. (15 s, as
  // the waits above: a check that the tile shows the video's bitrate, not a speed target. It
  // failed twice in CI with the video decoded and every rate 0: the page's stats timer read the
  // stream a few milliseconds after the quality tick, inside Chromium's cached report, and got a
  // rate over no new bytes; `streamStats` now measures over at least 500 ms, sdk.test.js.)
  const tileStats = () => a.evaluate(() => document.querySelector(".tile.play[data-stream-id='bob-cam']")?.getAttribute("data-stats"));
  await a
    .waitForFunction(
      () => (JSON.parse(document.querySelector(".tile.play[data-stream-id='bob-cam']")?.getAttribute("data-stats") ?? "{}").video?.bitrateKbps ?? 0) > 20,
      null,
      { timeout: 15_000 },
    )
    .catch(async (e) => {
      throw new Error(`the played tile's video bitrate stayed at or below 20 kbit/s: ${await tileStats()} (${e})`);
    });
  mkdirSync(join(REPO, "target"), { recursive: true });
  await a.screenshot({ path: join(REPO, "target", "web-screenshot.png"), fullPage: true });
  await b.setViewportSize({ width: 390, height: 844 });
  await b.screenshot({ path: join(REPO, "target", "web-screenshot-phone.png"), fullPage: true });
  await b.setViewportSize({ width: 1100, height: 1200 });
});

test("a broken signaling connection resumes and the media goes on", async () => {
  const a = pages[0].page;
  const b = pages[1].page;
  // A second stream of alice (signaling only), stopped while the connection is down.
  await a.evaluate(() => window.huddleApp.engine.startPublishingStream("alice-extra", null));
  await waitList(b, "#streams", ["alice-main", "alice-extra"]);
  // Cut alice's WebSocket as a network break would (no logout), and stop alice-extra meanwhile.
  await a.evaluate(() => {
    const engine = window.huddleApp.engine;
    engine._room.ws.close();
    engine.stopPublishingStream("alice-extra");
  });
  await waitLog(a, /RECONNECTING code 1002051/);
  await waitLog(a, /roomStateChanged \S+: RECONNECTED/);
  assert.equal(await a.textContent("#roomState"), "connected");
  // The resumed session finishes the stop; bob saw nothing else of the break: alice is still
  // there, her main stream was never deleted.
  await waitList(b, "#streams", ["alice-main"]);
  const bobLog = (await logText(b)).join("\n");
  assert.doesNotMatch(bobLog, /roomUserUpdate DELETE: alice|roomStreamUpdate DELETE: alice-main/);
  await waitList(b, "#users", ["alice"]);
  await waitSelWithConsole(a, ".tile.publish[data-stream-id='alice-main'][data-state='PUBLISHING']");
  await waitSelWithConsole(b, ".tile.play[data-stream-id='alice-main'][data-state='PLAYING']");
  // The played audio still flows: bytes keep arriving after the break.
  const before = await b.evaluate(async () => (await window.huddleApp.engine.getStats("alice-main")).audio.packets);
  await b.waitForFunction(
    async (n) => (await window.huddleApp.engine.getStats("alice-main")).audio.packets > n + 20,
    before,
    { timeout: 5000 },
  );
});

test("a duplicate login kicks the older session out (1002050)", async () => {
  const a = pages[0].page;
  const b = pages[1].page;
  const { page: a2 } = await open();
  await login(a2, "alice");
  await waitLog(a2, /roomStateChanged \S+: LOGINED/);
  await waitLog(a, /KICKOUT code 1002050/);
  await waitLog(a, /publisherStateUpdate alice-main: NO_PUBLISH code 1002050/);
  assert.equal(await a.textContent("#roomState"), "disconnected");
  // The kicked session's stream is gone for bob; alice (the new session) is still in the room.
  await waitList(b, "#streams", []);
  await waitList(b, "#users", ["alice"]);
  await waitSelWithConsole(b, ".tile.play[data-stream-id='alice-main'][data-state='PLAY_REQUESTING']");
  // The stream comes back from the new session: bob's player offers again and plays it.
  await a2.fill("#streamId", "alice-main");
  await a2.click("#publish");
  await waitList(b, "#streams", ["alice-main"]);
  await waitSelWithConsole(b, ".tile.play[data-stream-id='alice-main'][data-state='PLAYING']");
  await b.waitForFunction(
    async () => ((await window.huddleApp.engine.getStats("alice-main"))?.audio?.packets ?? 0) > 20,
    null,
    { timeout: 5000 },
  );
  await a2.click("#logout");
  await waitList(b, "#users", []);
});

test("the token warning comes 30 s before expiry and the page renews it", async () => {
  const page = pages[2].page;
  const token = await page.evaluate(async ([appId]) => {
    const r = await fetch("/api/dev-token", { method: "POST", body: JSON.stringify({ app_id: appId, user_id: "tina", effective_secs: 32 }) });
    return (await r.json()).token;
  }, [server.appId]);
  await login(page, "tina", token);
  await waitLog(page, /roomStateChanged \S+: LOGINED/);
  await waitLog(page, /roomTokenWillExpire \S+: (29|30) s left/, 8000);
  await waitLog(page, /token renewed/);
  await page.click("#logout");
  await waitLog(page, /roomStateChanged \S+: LOGOUT/);
});

test("after a server restart the pages log in again, publish and play again", async () => {
  const a = pages[0].page;
  const b = pages[1].page;
  // alice (kicked earlier) comes back and publishes; bob plays her stream again.
  await login(a, "alice");
  await waitLog(a, /roomStateChanged \S+: LOGINED/);
  await a.fill("#streamId", "alice-main");
  await a.check("#mediaAudio");
  await a.click("#publish");
  await waitSelWithConsole(b, ".tile.play[data-stream-id='alice-main'][data-state='PLAYING']");

  // The server restarts on the same address: its sessions are gone, so no resume.
  const { addr, dataDir } = server;
  await server.stop({ keepData: true });
  await waitLog(a, /RECONNECTING code 1002051/);
  await waitLog(b, /RECONNECTING code 1002051/);
  await waitSelWithConsole(b, ".tile.play[data-stream-id='alice-main'][data-state='PLAY_REQUESTING']");
  server = await startServer({ listen: addr, dataDir });
  await waitLog(a, /roomStateChanged \S+: RECONNECTED/, 15_000);
  await waitLog(b, /roomStateChanged \S+: RECONNECTED/, 15_000);
  // Published and played again through new peer connections; the audio flows.
  await waitSelWithConsole(a, ".tile.publish[data-stream-id='alice-main'][data-state='PUBLISHING']");
  await waitSelWithConsole(b, ".tile.play[data-stream-id='alice-main'][data-state='PLAYING']");
  await waitList(b, "#streams", ["alice-main"]);
  await waitList(a, "#streams", ["bob-cam"]);
  await waitList(b, "#users", ["alice"]);
  await b.waitForFunction(
    async () => ((await window.huddleApp.engine.getStats("alice-main"))?.audio?.packets ?? 0) > 20,
    null,
    { timeout: 5000 },
  );
});
