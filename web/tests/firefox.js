// Firefox (Debian's firefox-esr) as an interop stack: the debug page and huddle.js in Firefox,
// driven over WebDriver (geckodriver, `cargo install geckodriver --locked --root target/tools`,
// scripts/test.sh) by plain HTTP from node: the few commands used here (new session, navigate,
// execute script, delete session) need no client library.
//
// Firefox never gathers loopback ICE candidates, so it runs in a network namespace of
// web/tests/impaired.js (a TUN address behind scripts/impair_router.py). geckodriver runs beside it
// in that namespace (it reaches Firefox's Marionette port on the namespace's own loopback), and a
// relay there joins geckodriver's TCP port to a Unix socket in a temporary directory, which node,
// outside the namespace, can reach (a path socket is not tied to a network namespace).
//
// Firefox plays into a PulseAudio server of its own (a null sink: its AudioContext never resumes
// without an output device). Its fake microphone is a tone, not a file, so a publisher's
// getUserMedia gives the sent file, looped, from a WebAudio source in the page; a player records
// what it plays in the page (an AudioWorklet on the remote stream) from its play request.
import { spawn, spawnSync } from "node:child_process";
import { request } from "node:http";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO } from "./harness.js";

/** geckodriver: $GECKODRIVER, else scripts/test.sh's install under $CARGO_TARGET_DIR or target/. */
export function geckodriverBin() {
  if (process.env.GECKODRIVER) return process.env.GECKODRIVER;
  return join(process.env.CARGO_TARGET_DIR || join(REPO, "target"), "tools", "bin", "geckodriver");
}

const FIREFOX = process.env.FIREFOX || "/usr/bin/firefox-esr";

/** A child process that is ours to stop (by its pid), and its exit. @param {string} cmd @param {string[]} args @param {NodeJS.ProcessEnv} env */
function child(cmd, args, env) {
  const c = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  // Its output (geckodriver logs to stdout), the last 4000 characters, for failures.
  let err = "";
  for (const s of [c.stdout, c.stderr]) s?.on("data", (d) => (err = (err + d).slice(-4000)));
  /** @type {Promise<void>} */
  const exited = new Promise((r) => c.once("exit", () => r()));
  return {
    proc: c,
    exited,
    stderr: () => err,
    stop: async () => {
      if (c.exitCode !== null || c.signalCode !== null) return;
      c.kill("SIGTERM");
      const t = setTimeout(() => c.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Polls `ok` every 50 ms until it holds; fails with `what` after `ms`. @param {() => boolean} ok */
async function until(ok, ms, /** @type {() => string} */ what) {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(what());
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Launches headless Firefox in `netns` with a PulseAudio speaker, and returns a
 * WebDriver session on it: `goto`, `run` (a script's return value; it may await), `waitFor` (until
 * a page expression is truthy), `close`.
 * @param {{ netns: string, secureOrigin?: string }} opts (`secureOrigin`: a host whose plain-http pages count as secure)
 */
export async function launchFirefox(opts) {
  const gecko = geckodriverBin();
  if (!existsSync(gecko)) throw new Error(`${gecko} not found: scripts/test.sh installs it (cargo install geckodriver --locked --root target/tools)`);
  if (!existsSync(FIREFOX)) throw new Error(`${FIREFOX} not found: scripts/test.sh installs it (apt: firefox-esr)`);
  const dir = mkdtempSync(join(tmpdir(), "huddle-firefox-"));
  /** @type {ReturnType<typeof child>[]} */
  const procs = [];
  const pulseEnv = { PULSE_SERVER: `unix:${join(dir, "pulse")}`, HOME: dir, XDG_RUNTIME_DIR: dir, PULSE_RUNTIME_PATH: dir };
  const cleanup = async () => {
    for (const p of procs.reverse()) await p.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const pulse = child(
      "pulseaudio",
      ["--daemonize=no", "-n", "--exit-idle-time=-1", "--use-pid-file=no", "--disable-shm=yes", "--log-target=stderr",
        "-L", `module-native-protocol-unix socket=${join(dir, "pulse")} auth-anonymous=1`,
        "-L", "module-null-sink sink_name=out"],
      pulseEnv,
    );
    procs.push(pulse);
    const pactl = (/** @type {string[]} */ args) => spawnSync("pactl", args, { env: { ...process.env, ...pulseEnv } }).status === 0;
    await until(() => pactl(["info"]), 20_000, () => `pulseaudio did not come up:\n${pulse.stderr()}`);
    if (!pactl(["set-default-sink", "out"])) throw new Error("pactl set-default-sink failed");
    const gd = child(
      "ip",
      ["netns", "exec", opts.netns, gecko, "--host", "127.0.0.1", "--port", "4444", "--binary", FIREFOX],
      { ...pulseEnv, MOZ_HEADLESS: "1" },
    );
    procs.push(gd);
    const sock = join(dir, "webdriver.sock");
    const relay = child(
      "ip",
      ["netns", "exec", opts.netns, process.execPath, "-e",
        `const net = require("node:net");
net.createServer((c) => { const s = net.connect(4444, "127.0.0.1"); c.pipe(s).pipe(c); s.on("error", () => c.destroy()); c.on("error", () => s.destroy()); }).listen(process.argv[1]);`,
        sock],
      {},
    );
    procs.push(relay);
    /** One WebDriver command; its `value`. @param {string} method @param {string} path @param {any} [body] */
    const wd = (method, path, body) =>
      new Promise((resolve, reject) => {
        const data = body === undefined ? undefined : JSON.stringify(body);
        const req = request(
          { socketPath: sock, method, path, headers: { host: "localhost:4444", "content-type": "application/json; charset=utf-8", ...(data ? { "content-length": Buffer.byteLength(data) } : {}) } },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (d) => (text += d));
            res.on("end", () => {
              let v;
              try {
                v = JSON.parse(text).value;
              } catch {
                return reject(new Error(`WebDriver ${method} ${path}: ${res.statusCode} ${text.slice(0, 500)}`));
              }
              if (res.statusCode !== 200) reject(new Error(`WebDriver ${method} ${path}: ${v?.error} ${v?.message}`));
              else resolve(v);
            });
          },
        );
        req.on("error", reject);
        req.end(data);
      });
    // geckodriver answers once it and the relay are up (it accepts only its own Host header).
    await until(() => existsSync(sock), 20_000, () => `the WebDriver relay did not come up:\n${relay.stderr()}`);
    const deadline = Date.now() + 20_000;
    for (;;) {
      const ready = await wd("GET", "/status").catch(() => null);
      if (/** @type {any} */ (ready)?.ready) break;
      if (Date.now() > deadline) throw new Error(`geckodriver did not come up:\n${gd.stderr()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const prefs = {
      // Media without a prompt (the fake devices: a publisher's page replaces getUserMedia);
      // playback without a gesture.
      "media.navigator.permission.disabled": true,
      "media.navigator.streams.fake": true,
      "media.autoplay.default": 0,
      "media.autoplay.blocking_policy": 0,
      // The server's plain-http origin counts as secure (getUserMedia, AudioWorklet).
      ...(opts.secureOrigin ? { "dom.securecontext.allowlist": opts.secureOrigin } : {}),
    };
    const session = /** @type {any} */ (
      await wd("POST", "/session", {
        capabilities: { alwaysMatch: { browserName: "firefox", "moz:firefoxOptions": { binary: FIREFOX, args: ["-headless"], prefs } } },
      })
    );
    const base = `/session/${session.sessionId}`;
    await wd("POST", `${base}/timeouts`, { script: 120_000, pageLoad: 60_000 });
    /**
     * Runs `body` (a function body; `args` are its `arguments`, it may await) in the page and
     * returns its value.
     * @param {string} body @param {any[]} [args]
     */
    const run = (body, args = []) =>
      wd("POST", `${base}/execute/async`, {
        script: `const done = arguments[arguments.length - 1];
(async (...args) => { ${body} })(...Array.prototype.slice.call(arguments, 0, -1)).then((v) => done({ ok: v ?? null }), (e) => done({ err: String(e && e.stack || e) }));`,
        args,
      }).then((/** @type {any} */ r) => {
        if (r && "err" in r) throw new Error(`in Firefox: ${r.err}`);
        return r?.ok;
      });
    return {
      goto: (/** @type {string} */ url) => wd("POST", `${base}/url`, { url }),
      run,
      /**
       * Waits (in the page) until `expr` is truthy; its value, or null after `ms`.
       * @param {string} expr @param {number} ms
       */
      waitFor: (expr, ms) =>
        run(
          `const end = performance.now() + args[0];
for (;;) { const v = (() => ${expr})(); if (v) return v; if (performance.now() > end) return null; await new Promise((r) => setTimeout(r, 20)); }`,
          [ms],
        ),
      close: async () => {
        await wd("DELETE", base).catch(() => {});
        await cleanup();
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** A debug page's log line matching `re` (a page expression). @param {RegExp} re */
const logHas = (re) => `[...document.querySelectorAll("#log li")].some((li) => ${re}.test(li.textContent ?? ""))`;

/** The debug page's last `n` log lines. @param {Awaited<ReturnType<typeof launchFirefox>>} ff */
const logTail = (ff, n = 30) => ff.run(`return [...document.querySelectorAll("#log li")].slice(-${n}).map((li) => li.textContent).join("\\n");`);

/**
 * Firefox's side of one of web/tests/impaired.js's calls, and the other side's (`processSide`,
 * impaired.js's native or aiortc process): Firefox logs in on the debug page and publishes the
 * speech (from PulseAudio) to `to`, or plays `from`'s stream and records `windowS` seconds from its
 * play request into `call.rec` (48 kHz mono WAV). Returns both sides' results, in the shape of
 * impaired.js's sides: `{ pub: { publishMs, ... }, play: { playMs, firstAudioMs, playStats, ... } }`.
 * @param {import("./impaired.js").Net} net @param {string} from @param {string} to
 * @param {{ room: string, stream: string, sent: string, rec: string }} call
 * @param {(net: any, stack: any, role: "pub" | "play", call: any) => { done: Promise<any>, kill: () => void, requested?: Promise<void> }} processSide
 * @param {{ done: Promise<any>, kill: () => void }[]} sides the other side goes here (the caller kills it)
 * @param {number} windowS
 */
export async function firefoxSides(net, from, to, call, processSide, sides, windowS) {
  const role = from === "firefox" ? "pub" : "play";
  const ff = await launchFirefox({ netns: net.ns[role], secureOrigin: new URL(net.url).hostname });
  try {
    // As for Chromium: the page's files load on a clean path, its signaling (the login on) is
    // impaired from its first packet.
    const loss = net.lossPct();
    await net.setLoss(0);
    await ff.goto(`${net.url}/`);
    if (!(await ff.waitFor(`document.body.dataset.ready === "1"`, 10_000))) throw new Error("the debug page did not get ready in Firefox");
    await net.setLoss(loss);
    await ff.run(
      `const set = (id, v) => (document.getElementById(id).value = v);
set("roomId", args[0]); set("userId", args[1]); set("token", "");
document.getElementById("login").click();`,
      [call.room, `firefox-${role}`],
    );
    if (!(await ff.waitFor(logHas(/roomStateChanged \S+: LOGINED/), 60_000))) throw new Error(`Firefox did not log in:\n${await logTail(ff)}`);
    if (role === "pub") {
      const other = processSide(net, to, "play", call);
      sides.push(other);
      await other.requested;
      // The microphone is the sent file, looped, from getUserMedia on (as Chromium's fake
      // microphone): a WebAudio source in the page. A PulseAudio source fed by paplay lost
      // stretches of 0.5-2 s of the speech on this loaded machine (load average 30-45): Firefox
      // drops captured input that its graph is late to take, while a source it renders itself
      // is only sent late.
      await ff.run(
        `const bytes = Uint8Array.from(atob(args[0]), (c) => c.charCodeAt(0));
const ctx = new AudioContext({ sampleRate: 48000 });
const src = ctx.createBufferSource();
src.buffer = await ctx.decodeAudioData(bytes.buffer);
src.loop = true;
const dest = ctx.createMediaStreamDestination();
dest.channelCount = 1;
src.connect(dest);
navigator.mediaDevices.getUserMedia = async () => {
  await ctx.resume();
  src.start();
  return new MediaStream(dest.stream.getAudioTracks());
};`,
        [readFileSync(call.sent).toString("base64")],
      );
      const t0 = Date.now();
      await ff.run(
        `document.getElementById("streamId").value = args[0];
document.getElementById("mediaAudio").checked = true;
document.getElementById("audioProcessing").checked = false;
document.getElementById("publish").click();`,
        [call.stream],
      );
      const ok = await ff.waitFor(`document.querySelector(".tile.publish[data-stream-id='${call.stream}'][data-state='PUBLISHING']")`, 30_000);
      const publishMs = ok ? Date.now() - t0 : null;
      // With HUDDLE_FIREFOX_FEC=1: whether Firefox's Opus frames carry in-band FEC, read from
      // what its encoder hands the packetizer (an RTCRtpScriptTransform on the sender): per
      // 500 ms, frames, SILK or hybrid frames (those that can carry FEC) and those with the LBRR
      // flag (RFC 6716 4.2.3: the bit after the VAD flag of a mono 20 ms frame), as libwebrtc's
      // WebRtcOpus_PacketHasFec reads it; and every frame (RTP timestamp, Opus payload in hex), for
      // scripts/fec_replay.py.
      if (ok && process.env.HUDDLE_FIREFOX_FEC === "1") {
        await ff.run(`const code = 'const t0 = Date.now(); let n = 0, silk = 0, fec = 0;' +
  'onrtctransform = (e) => { const t = e.transformer; t.readable.pipeThrough(new TransformStream({ transform(f, c) {' +
  'const d = new Uint8Array(f.data); n++; if (d.length > 1 && (d[0] >> 3) < 16) { silk++; if (d[1] & 0x40) fec++; }' +
  ' frames.push([f.timestamp ?? null, Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("")]); c.enqueue(f); } })).pipeTo(t.writable); };' +
  'let frames = []; setInterval(() => { postMessage({ t_ms: Date.now() - t0, n, silk, fec, frames }); n = silk = fec = 0; frames = []; }, 500);';
const w = new Worker(URL.createObjectURL(new Blob([code], { type: "application/javascript" })));
window.__ffFec = [];
w.onmessage = (e) => window.__ffFec.push(e.data);
for (const p of window.huddleApp.engine._publishers.values()) for (const s of p.pc?.getSenders() ?? []) if (s.track?.kind === "audio") s.transform = new RTCRtpScriptTransform(w, {});`);
      }
      // What Firefox offered and what the server answered (codecs, FEC, RED) and its sender's
      // counters at the end (with the server's reports: loss, RTT) go into the result.
      const slow = publishMs === null || publishMs > 3000;
      const pub = { ok: !!ok, publishMs, log: slow ? await logTail(ff) : undefined };
      const play = await other.done;
      pub.pubStats = await ff.run(`const out = [];
for (const p of window.huddleApp.engine._publishers.values()) {
  if (!p.pc) continue;
  for (const r of (await p.pc.getStats()).values()) if (r.type === "outbound-rtp" || r.type === "remote-inbound-rtp") out.push(r);
  out.push({ localSdp: p.pc.localDescription?.sdp, remoteSdp: p.pc.remoteDescription?.sdp });
}
if (window.__ffFec) out.push({ fec: window.__ffFec });
return out;`);
      return { pub, play };
    }
    const other = processSide(net, from, "pub", call);
    sides.push(other);
    if (!(await ff.waitFor(`document.querySelector("#streams li[data-stream-id='${call.stream}']")`, 60_000))) throw new Error(`Firefox never saw the stream:\n${await logTail(ff)}`);
    // The recorder runs from before the click; its blocks from the click on are the window.
    await ff.run(`const ctx = new AudioContext({ sampleRate: 48000 });
const code = 'registerProcessor("rec", class extends AudioWorkletProcessor { process(inputs) { const c = inputs[0][0]; this.port.postMessage(c ? c.slice() : new Float32Array(128)); return true; } });';
await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: "application/javascript" })));
await ctx.resume();
const node = new AudioWorkletNode(ctx, "rec", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit" });
const rec = { ctx, node, chunks: [], on: false };
node.port.onmessage = (e) => { if (rec.on) rec.chunks.push(e.data); };
const mute = ctx.createGain();
mute.gain.value = 0;
node.connect(mute).connect(ctx.destination);
window.__ffRec = rec;
if (ctx.state !== "running") throw new Error("AudioContext " + ctx.state);`);
    const t0 = Date.now();
    await ff.run(
      `const rec = window.__ffRec, s = args[0];
rec.on = true;
document.querySelector("#streams li[data-stream-id='" + s + "']").click();
const poll = setInterval(() => {
  const p = window.huddleApp.playing.get(s);
  if (p?.stream?.getAudioTracks().length) { clearInterval(poll); rec.ctx.createMediaStreamSource(p.stream).connect(rec.node); }
}, 10);`,
      [call.stream],
    );
    const tile = `.tile.play[data-stream-id='${call.stream}']`;
    const playing = await ff.waitFor(`document.querySelector("${tile}[data-state='PLAYING']")`, windowS * 1000);
    const playMs = playing ? Date.now() - t0 : null;
    const left = t0 + windowS * 1000 + 300 - Date.now();
    if (left > 0) await new Promise((r) => setTimeout(r, left));
    // The window as a 16-bit WAV, base64 (a few hundred kB over WebDriver).
    const wav = await ff.run(
      `const rec = window.__ffRec, n = args[0];
rec.on = false;
const pcm = new Int16Array(n);
let i = 0;
for (const c of rec.chunks) for (const v of c) if (i < n) pcm[i++] = Math.max(-32768, Math.min(32767, Math.round(v * 32768)));
const head = new DataView(new ArrayBuffer(44));
const str = (o, s) => [...s].forEach((ch, k) => head.setUint8(o + k, ch.charCodeAt(0)));
str(0, "RIFF"); head.setUint32(4, 36 + n * 2, true); str(8, "WAVEfmt "); head.setUint32(16, 16, true);
head.setUint16(20, 1, true); head.setUint16(22, 1, true); head.setUint32(24, 48000, true); head.setUint32(28, 96000, true);
head.setUint16(32, 2, true); head.setUint16(34, 16, true); str(36, "data"); head.setUint32(40, n * 2, true);
const bytes = new Uint8Array(44 + n * 2);
bytes.set(new Uint8Array(head.buffer), 0);
bytes.set(new Uint8Array(pcm.buffer), 44);
let s = "";
for (let k = 0; k < bytes.length; k += 0x8000) s += String.fromCharCode(...bytes.subarray(k, k + 0x8000));
return btoa(s);`,
      [windowS * 48000],
    );
    writeFileSync(call.rec, Buffer.from(/** @type {string} */ (wav), "base64"));
    const first = await ff.run(`return document.querySelector(args[0])?.dataset.firstAudioMs ?? null;`, [tile]);
    // Firefox's receiver over the call (its inbound-rtp: what arrived, was lost, concealed).
    const playStats = await ff.run(`const p = window.huddleApp.engine._players.get(args[0]);
for (const r of p?.pc ? (await p.pc.getStats()).values() : []) if (r.type === "inbound-rtp" && r.kind === "audio") return { ...r, remoteSdp: p.pc.remoteDescription?.sdp };
return null;`, [call.stream]);
    const slow = playMs === null || playMs > 3000;
    const play = { ok: playMs !== null, playMs, firstAudioMs: first === null ? null : Number(first), playStats, log: slow ? await logTail(ff) : undefined };
    other.kill();
    const pub = await other.done;
    return { pub, play };
  } finally {
    await ff.close();
  }
}
