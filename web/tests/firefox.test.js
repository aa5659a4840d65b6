// Firefox as an interop stack: the debug page and huddle.js in Debian's firefox-esr, driven over
// WebDriver (web/tests/firefox.js), against native `huddle call` clients through `huddle serve`,
// both directions, on a clean path with 50 ms each way. Firefox gathers no loopback candidates, so
// the calls run in web/tests/impaired.js's network namespaces (at 0 % loss; the lossy points are
// `scripts/quality.sh interop`, PAIRS=firefox:sdk,sdk:firefox). The player records from its play
// request, setup included, and the speech is scored (wideband PESQ, STOI). Needs root, firefox-esr,
// geckodriver under target/tools, pulseaudio: it fails, never skips, without them (scripts/test.sh
// installs them; CI runs as root).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { impairedNet, impairedCall, writeSentSpeech } from "./impaired.js";

/** @type {import("./impaired.js").Net} */
let net;
/** The padded speech every publisher sends. */
let sent = "";

before(async () => {
  net = await impairedNet({ lossPct: 0, delayMs: 50 });
  sent = join(net.dir, "sent.wav");
  writeSentSpeech(sent);
});

after(async () => {
  await net?.close();
});

// Floors: clean calls scored PESQ 3.9–4.1 (STOI 0.96–0.99) at a load average below 10, and
// 2.9–3.3 at 35–45 (late packets); a call that misses its speech scores 1.1–1.3 (STOI ≤ 0.45).
test("Firefox publisher → native player on a clean path: the speech is heard as sent (wideband PESQ, STOI)", async () => {
  const r = await impairedCall(net, "firefox", "sdk", sent, "ff-clean");
  console.log(`Firefox → native, clean: ${JSON.stringify({ ...r, pubStats: undefined })}`);
  assert.ok(r.publishMs !== null, `Firefox never published: ${JSON.stringify(r)}`);
  assert.ok(r.playMs !== null, `the native player never played: ${JSON.stringify(r)}`);
  assert.ok(r.score?.pesq >= 2.5, `the speech arrived degraded: ${JSON.stringify(r.score)}`);
  assert.ok(r.score?.stoi >= 0.7, `the speech arrived degraded: ${JSON.stringify(r.score)}`);
});

test("native publisher → Firefox player on a clean path: the speech is heard as sent (wideband PESQ, STOI)", async () => {
  const r = await impairedCall(net, "sdk", "firefox", sent, "clean-ff");
  console.log(`native → Firefox, clean: ${JSON.stringify({ ...r, playStats: { ...r.playStats, remoteSdp: undefined } })}`);
  assert.ok(r.publishMs !== null, `the native publisher never published: ${JSON.stringify(r)}`);
  assert.ok(r.playMs !== null, `Firefox never played: ${JSON.stringify(r)}`);
  assert.ok(r.score?.pesq >= 2.5, `the speech arrived degraded: ${JSON.stringify(r.score)}`);
  assert.ok(r.score?.stoi >= 0.7, `the speech arrived degraded: ${JSON.stringify(r.score)}`);
});
