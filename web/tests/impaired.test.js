// One impaired interop call in the suite (the rest is `scripts/quality.sh interop`): Chromium
// publishes the speech to a native `huddle call` player with 10 % random loss on both directions
// of both legs and 50 ms each way (100 ms RTT), signaling included, from the first packet
// (web/tests/impaired.js: network namespaces joined by scripts/impair_router.py). The player
// records from its play request, so setup is in the score. Needs root, iproute2, python3 with the
// scoring packages and /dev/net/tun: it fails, never skips, without them (scripts/test.sh installs
// them; CI runs as root).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { impairedNet, impairedCall, writeSentSpeech } from "./impaired.js";

/** @type {import("./impaired.js").Net | undefined} */
let net;

after(async () => {
  await net?.close();
});

test("Chromium → native player at 10 % loss on every link, from the first packet: the speech is heard (wideband PESQ)", async () => {
  net = await impairedNet({ lossPct: 10, delayMs: 50 });
  const sent = join(net.dir, "sent.wav");
  writeSentSpeech(sent);
  const r = await impairedCall(net, "chromium", "sdk", sent, "test");
  const links = await net.setLoss(10);
  console.log(`Chromium → native at 10 % per link: ${JSON.stringify({ ...r, router: links.links })}`);
  assert.ok(r.publishMs !== null, `Chromium never published: ${JSON.stringify(r)}`);
  assert.ok(r.playMs !== null, `the native player never played: ${JSON.stringify(r)}`);
  // The links really lost packets both ways (the router's counts over the call).
  const up = links.links["pub.up"];
  const down = links.links["play.down"];
  assert.ok(up?.dropped > 0 && down?.dropped > 0, `no loss applied: ${JSON.stringify(links)}`);
  // Calls at this point score 3.1–3.9 (docs/quality.md, "Interop under loss"); a call whose
  // speech is missing or garbled for a second scores below 2.
  assert.ok(r.score?.pesq >= 2.3, `the speech arrived degraded: ${JSON.stringify(r)}`);
});
