// huddle.js in a real browser against a real `huddle serve`: the token warning, a refused and a
// good renewal, and a token left to expire, which ends the room with KICKOUT 1002056
// (docs/protocol.md). Tokens live 3–4 s, so the 30 s warning comes at once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser } from "./harness.js";

/** @type {import("./harness.js").Server} */
let server;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("a token warns, renews, and ends the room when left to expire", async () => {
  const context = await browser.browser.newContext();
  const page = await context.newPage();
  await page.goto(server.url);
  // Three engines in the page: a watcher, tina (never renews), rita (renews in time).
  await page.evaluate(async (appId) => {
    const { HuddleEngine } = await import("/sdk/huddle.js");
    /** @param {string} user @param {number} secs */
    const mint = async (user, secs) => {
      const r = await fetch("/api/dev-token", { method: "POST", body: JSON.stringify({ app_id: appId, user_id: user, effective_secs: secs }) });
      return (await r.json()).token;
    };
    /** @type {any} */
    const w = window;
    w.mint = mint;
    w.log = [];
    w.engines = {};
    w.tokens = {};
    for (const [user, secs] of [["watcher", 3600], ["tina", 3], ["rita", 4]]) {
      const e = new HuddleEngine(appId, location.host);
      e.on("roomStateChanged", (_r, reason, code) => w.log.push(`${user} room ${reason} ${code}`));
      e.on("roomTokenWillExpire", (_r, remain) => w.log.push(`${user} token ${remain}`));
      e.on("roomUserUpdate", (_r, type, users) => w.log.push(`${user} users ${type} ${users.map((u) => u.userID).join(",")}`));
      w.engines[user] = e;
      w.tokens[user] = await mint(user, secs);
      await e.loginRoom("expiry-room", w.tokens[user], { userID: user }, { userUpdate: user === "watcher" });
    }
  }, server.appId);
  /** @param {RegExp} re @param {number} [timeout] */
  const waitLog = (re, timeout = 8000) =>
    page.waitForFunction((src) => /** @type {any} */ (window).log.some((/** @type {string} */ l) => new RegExp(src).test(l)), re.source, { timeout });

  // Both short tokens are warned about at once.
  await waitLog(/^tina token [0-3]$/);
  await waitLog(/^rita token [0-4]$/);
  // A token of another user is refused (1002079) and the room goes on; a good one is taken.
  const refused = await page.evaluate(async () => {
    /** @type {any} */
    const w = window;
    try {
      await w.engines.rita.renewToken("expiry-room", await w.mint("mallory", 3600));
      return 0;
    } catch (/** @type {any} */ e) {
      return e.code;
    }
  });
  assert.equal(refused, 1002079);
  // The refused token does not replace the one in force (the next login would use it).
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).engines.rita._room.token === /** @type {any} */ (window).tokens.rita), true);
  assert.equal(await page.evaluate(async () => /** @type {any} */ (window).engines.rita.renewToken("expiry-room", await /** @type {any} */ (window).mint("rita", 3600))), true);

  // tina's token expires unrenewed: kicked with 1002056; the watcher sees her leave.
  await waitLog(/^tina room KICKOUT 1002056$/);
  await waitLog(/^watcher users DELETE tina$/);
  // rita, renewed, is still in the room after her first token's expiry.
  await page.evaluate(async () => {
    const { tokenExpire } = await import("/sdk/huddle.js");
    const until = (tokenExpire(/** @type {any} */ (window).tokens.rita) ?? 0) * 1000 + 700;
    while (Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  });
  const log = await page.evaluate(() => /** @type {any} */ (window).log);
  assert.ok(!log.some((/** @type {string} */ l) => l.startsWith("rita room KICKOUT")), log.join("\n"));
  assert.ok(!log.some((/** @type {string} */ l) => /users DELETE .*rita/.test(l)), log.join("\n"));
  assert.equal(log.filter((/** @type {string} */ l) => l.startsWith("tina token")).length, 1, log.join("\n"));
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).engines.rita.getRoomState()), "CONNECTED");
  await context.close();
});
