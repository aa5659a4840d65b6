// Through a firewall that lets only TCP to port 443 out: Chromium publishes through coturn (TURN
// over TLS on 443, credentials handed out by the server with login_ok) and a native player
// (`huddle call`) hears it.
//
// Two network namespaces made here and removed afterwards, joined by a veth pair (traffic never
// leaves them): "server" holds `huddle serve` (signaling on 10.231.0.1:443, media on a UDP port of
// the same address) and coturn (10.231.0.2: TLS on 443, relaying from the same address); "client"
// holds Chromium, whose nftables output chain drops everything but TCP to port 443. So the page
// loads and signaling works, and media has one way out: the relay. Needs root, iproute2, nftables,
// coturn and openssl (scripts/test.sh installs them).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, launchBrowser, huddleBin, readWav } from "./harness.js";

const TAG = String(process.pid % 100000);
const NS_SERVER = `hsrv${TAG}`;
const NS_CLIENT = `hcli${TAG}`;
const SERVER_IP = "10.231.0.1";
const TURN_IP = "10.231.0.2";
const CLIENT_IP = "10.231.0.10";
const TURN_SECRET = `turn-secret-${TAG}-0123456789`;
const ROOM = `turn-${TAG}`;

/** @type {string} */
let dir;
/** @type {import("node:child_process").ChildProcess | null} */
let coturn = null;
let coturnLog = "";
/** @type {Awaited<ReturnType<typeof startServer>> | null} */
let server = null;
/** @type {Awaited<ReturnType<typeof launchBrowser>> | null} */
let chrome = null;

/** Runs a command; fails the test with its output when it fails. @param {string[]} argv */
function run(...argv) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${argv.join(" ")} failed (${r.status ?? r.error}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** @param {string} ns @param {string[]} argv */
const inNs = (ns, ...argv) => run("ip", "netns", "exec", ns, ...argv);

function removeNamespaces() {
  for (const ns of [NS_SERVER, NS_CLIENT]) spawnSync("ip", ["netns", "del", ns]);
}

before(async () => {
  assert.equal(process.getuid?.(), 0, "this test makes network namespaces: run it as root");
  dir = mkdtempSync(join(tmpdir(), "huddle-turn-"));
  removeNamespaces();
  run("ip", "netns", "add", NS_SERVER);
  run("ip", "netns", "add", NS_CLIENT);
  const [vs, vc] = [`hvs${TAG}`, `hvc${TAG}`];
  run("ip", "link", "add", vs, "type", "veth", "peer", "name", vc);
  run("ip", "link", "set", vs, "netns", NS_SERVER);
  run("ip", "link", "set", vc, "netns", NS_CLIENT);
  inNs(NS_SERVER, "ip", "addr", "add", `${SERVER_IP}/24`, "dev", vs);
  inNs(NS_SERVER, "ip", "addr", "add", `${TURN_IP}/24`, "dev", vs);
  inNs(NS_CLIENT, "ip", "addr", "add", `${CLIENT_IP}/24`, "dev", vc);
  for (const [ns, dev] of [[NS_SERVER, vs], [NS_CLIENT, vc]]) {
    inNs(ns, "ip", "link", "set", "lo", "up");
    inNs(ns, "ip", "link", "set", dev, "up");
  }
  // The client's firewall: out, only TCP to port 443 (and the replies to it).
  const rules = join(dir, "client.nft");
  writeFileSync(
    rules,
    `table inet huddle_test {
  chain out {
    type filter hook output priority 0; policy drop;
    oif "lo" accept
    ct state established,related accept
    tcp dport 443 accept
  }
}
`,
  );
  inNs(NS_CLIENT, "nft", "-f", rules);

  // coturn with TLS on 443 and the REST API's shared secret.
  const [cert, key] = [join(dir, "turn-cert.pem"), join(dir, "turn-key.pem")];
  run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
    "-days", "1", "-subj", "/CN=turn.huddle.test", "-addext", `subjectAltName=IP:${TURN_IP}`);
  coturn = spawn("ip", ["netns", "exec", NS_SERVER, "turnserver", "-n", "--listening-ip", TURN_IP, "--relay-ip", TURN_IP,
    "--listening-port", "3478", "--tls-listening-port", "443", "--use-auth-secret", "--static-auth-secret", TURN_SECRET,
    "--realm", "huddle.test", "--cert", cert, "--pkey", key, "--no-cli", "--no-dtls", "--log-file", "stdout", "--simple-log",
    "--pidfile", join(dir, "turnserver.pid"), "--min-port", "49152", "--max-port", "49300", "--allowed-peer-ip", SERVER_IP],
    { stdio: ["ignore", "pipe", "pipe"] });
  coturn.stdout?.on("data", (d) => (coturnLog += d));
  coturn.stderr?.on("data", (d) => (coturnLog += d));

  const config = join(dir, "huddle.toml");
  writeFileSync(
    config,
    `dev = true
[turn]
urls = ["turns:${TURN_IP}:443?transport=tcp"]
secret = "${TURN_SECRET}"
`,
  );
  server = await startServer({ listen: `${SERVER_IP}:443`, netns: NS_SERVER, args: ["--config", config] });
  chrome = await launchBrowser({
    netns: NS_CLIENT,
    args: [`--unsafely-treat-insecure-origin-as-secure=${server.url}`, "--ignore-certificate-errors"],
  });
});

after(async () => {
  if (process.env.HUDDLE_TEST_LOGS) console.log(`--- coturn ---\n${coturnLog}\n--- huddle serve ---\n${server?.output()}`);
  await chrome?.close();
  await server?.stop();
  if (coturn && coturn.exitCode === null) {
    const exited = new Promise((r) => coturn?.once("exit", r));
    coturn.kill("SIGTERM");
    await exited;
  }
  removeNamespaces();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The share of the signal's power at `freq` (Goertzel over the whole signal). */
function toneShare(/** @type {Float64Array} */ x, /** @type {number} */ rate, /** @type {number} */ freq) {
  const w = (2 * Math.PI * freq) / rate;
  const coeff = 2 * Math.cos(w);
  let [s1, s2, energy] = [0, 0, 0];
  for (const v of x) {
    const s0 = v + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
    energy += v * v;
  }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return energy > 0 ? (2 * power) / (x.length * energy) : 0;
}

test("Chromium behind a TCP-443-only firewall publishes through coturn (TURN/TLS) and a native player hears it", async () => {
  assert.ok(server && chrome);
  // The firewall holds: UDP from the client namespace does not get out (nftables drops it, so the
  // send fails), while TCP to the page's port 443 does (the page loads below).
  const udp = spawnSync("ip", ["netns", "exec", NS_CLIENT, "bash", "-c", `echo probe > /dev/udp/${SERVER_IP}/9`], { encoding: "utf8" });
  assert.notEqual(udp.status, 0, "UDP from the client namespace got out: the firewall is not in place");
  const { page } = await (async () => {
    const context = await chrome.browser.newContext();
    const p = await context.newPage();
    await p.goto(`${server.url}/`);
    return { page: p };
  })();
  const streamId = `turn-pub-${TAG}`;
  const result = await page.evaluate(
    async ({ appId, url, room, streamId }) => {
      const { HuddleEngine } = await import("/sdk/huddle.js");
      const engine = new HuddleEngine(appId, url, { rtcConfiguration: { iceTransportPolicy: "relay" }, iceGatheringTimeoutMs: 5000 });
      // @ts-ignore: kept for the stats below
      window.turnEngine = engine;
      const r = await fetch("/api/dev-token", { method: "POST", body: JSON.stringify({ app_id: appId, user_id: "alice", room_id: room }) });
      const { token } = await r.json();
      await engine.loginRoom(room, token, { userID: "alice", userName: "alice" });
      const iceServers = engine._rtcConfig().iceServers;
      const stream = await engine.createStream({ camera: { audio: true, video: false, audioProcessing: false } });
      const t0 = performance.now();
      await engine.startPublishingStream(streamId, stream);
      const publishMs = performance.now() - t0;
      const pc = engine._publishers.get(streamId).pc;
      const stats = [...(await pc.getStats()).values()];
      const pair = stats.find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
      const local = stats.find((s) => s.id === pair?.localCandidateId);
      return { iceServers, publishMs, local: local && { type: local.candidateType, relayProtocol: local.relayProtocol } };
    },
    { appId: server.appId, url: server.wsUrl, room: ROOM, streamId },
  );
  // The server handed out TURN credentials in the REST API scheme.
  assert.equal(result.iceServers.length, 1, JSON.stringify(result.iceServers));
  assert.deepEqual(result.iceServers[0].urls, [`turns:${TURN_IP}:443?transport=tcp`]);
  assert.match(result.iceServers[0].username, /^\d+:\d+\.alice$/);
  // Media goes through the relay, over TLS.
  assert.deepEqual(result.local, { type: "relay", relayProtocol: "tls" }, `selected local candidate: ${JSON.stringify(result.local)}\n${coturnLog}`);
  console.log(`# publish through TURN/TLS: PUBLISHING ${result.publishMs.toFixed(0)} ms after the request`);

  // A native player (no firewall) hears the page's tone: Chromium -> coturn -> SFU -> player.
  // The test process is outside both namespaces: bob's token comes through the page.
  const bobToken = await page.evaluate(async ({ appId, room }) => {
    const r = await fetch("/api/dev-token", { method: "POST", body: JSON.stringify({ app_id: appId, user_id: "bob", room_id: room }) });
    return (await r.json()).token;
  }, { appId: server.appId, room: ROOM });
  const wav = join(dir, "heard.wav");
  const player = spawnSync(
    "ip",
    ["netns", "exec", NS_SERVER, huddleBin(), "call", "--server", server.wsUrl, "--app-id", String(server.appId), "--token", bobToken,
      "--room", ROOM, "--user", "bob", "--play", streamId, "--duration", "5", "--record", wav],
    { encoding: "utf8", timeout: 30_000 },
  );
  assert.equal(player.status, 0, `huddle call: ${player.stdout}\n${player.stderr}`);
  const events = player.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  const playing = events.find((e) => e.event === "player_state_update" && e.state === "Playing");
  assert.ok(playing, player.stdout);
  const { x: samples, rate } = readWav(wav);
  // The last 3 s: the tone is there, loud and clean.
  const tail = samples.subarray(Math.max(0, samples.length - 3 * rate));
  const rms = Math.sqrt(tail.reduce((a, v) => a + v * v, 0) / tail.length);
  const share = toneShare(tail, rate, 440);
  console.log(`# heard through TURN: rms ${rms.toFixed(3)}, 440 Hz share ${share.toFixed(3)}`);
  assert.ok(rms > 0.1, `the player heard almost nothing (rms ${rms})`);
  assert.ok(share > 0.8, `the player did not hear a clean 440 Hz tone (share ${share})`);
  await page.evaluate(async () => {
    // @ts-ignore
    window.turnEngine.destroy();
  });
});
