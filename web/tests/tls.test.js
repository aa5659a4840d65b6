// The debug page over HTTPS and signaling over WSS, served by `huddle serve --tls-cert --tls-key`
// itself (rustls), in a real headless chromium. The certificate is made here with the openssl
// command (self-signed, for 127.0.0.1 and localhost); chromium trusts exactly that key through
// --ignore-certificate-errors-spki-list (the base64 SHA-256 of its SubjectPublicKeyInfo), and a
// browser without that flag refuses the page: the certificate check is real.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, launchBrowser, openPage, logText, makeCertificate, spkiHash, waitLog, waitSel } from "./harness.js";

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let chrome;
/** @type {string} */
let certDir;
const ROOM = `tls-room-${process.pid}`;

before(async () => {
  certDir = mkdtempSync(join(tmpdir(), "huddle-web-tls-"));
  const { cert, key } = makeCertificate(certDir, "localhost", "DNS:localhost,IP:127.0.0.1");
  server = await startServer({ args: ["--tls-cert", cert, "--tls-key", key] });
  chrome = await launchBrowser({ args: [`--ignore-certificate-errors-spki-list=${spkiHash(cert)}`] });
});

after(async () => {
  await chrome?.close();
  await server?.stop();
  if (certDir) rmSync(certDir, { recursive: true, force: true });
});

/** @param {import("playwright-core").Page} page @param {string} user */
async function login(page, user) {
  await page.fill("#roomId", ROOM);
  await page.fill("#userId", user);
  await page.fill("#token", "");
  await page.click("#login");
  await waitLog(page, /roomStateChanged \S+: LOGINED/);
}

test("the page over https logs in, publishes and plays over wss", async () => {
  assert.match(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const { page: a, console } = await openPage(chrome.browser, `${server.url}/`);
  assert.deepEqual(await a.evaluate(() => [location.protocol, window.isSecureContext]), ["https:", true]);
  // The page talks to the server it came from: wss:// on the same port.
  assert.equal(await a.inputValue("#server"), server.wsUrl);
  assert.match(server.wsUrl, /^wss:\/\//);
  // /api/info over https: the page learned the dev app.
  await waitLog(a, /dev mode \(AppID \d+\)/);
  assert.equal(await a.inputValue("#appId"), String(server.appId));

  // The dev token comes over https, the login over wss.
  await login(a, "alice");
  await a.fill("#streamId", "alice-tls");
  await a.check("#mediaAudio");
  await a.click("#publish");
  await waitSel(a, ".tile.publish[data-stream-id='alice-tls'][data-state='PUBLISHING']");
  await waitLog(a, /publishing alice-tls/);

  // A second page plays it, and audio packets arrive.
  const { page: b } = await openPage(chrome.browser, `${server.url}/`);
  await login(b, "bob");
  await waitSel(b, "#streams li[data-stream-id='alice-tls']");
  await b.click("#streams li[data-stream-id='alice-tls']");
  await waitSel(b, ".tile.play[data-stream-id='alice-tls'][data-state='PLAYING']");
  await b.waitForFunction(
    // @ts-ignore
    async () => ((await window.huddleApp.engine.getStats("alice-tls"))?.audio?.packets ?? 0) > 20,
    null,
    { timeout: 10_000 },
  );
  assert.deepEqual(console.filter((l) => l.startsWith("pageerror")), []);
});

test("a browser that does not trust the certificate refuses the page", async () => {
  const untrusting = await launchBrowser();
  try {
    const context = await untrusting.browser.newContext();
    const page = await context.newPage();
    await assert.rejects(page.goto(`${server.url}/`), /ERR_CERT_AUTHORITY_INVALID/);
  } finally {
    await untrusting.close();
  }
});
