// Interop calls through an impaired network, scored as heard: a `huddle serve` in one network
// namespace, the publisher and the player each in their own, every packet between a client and
// the server (media, RTCP, ICE, DTLS, and the signaling's TCP) through scripts/impair_router.py:
// random loss and a fixed one-way delay on both directions of both legs, from the first packet.
// Used by `scripts/quality.sh interop` (scripts/quality_interop.mjs) and impaired.test.js.
//
//   publisher ns ── 10.203.0.2 ─┐                      ┌─ 10.203.0.1 ── server ns (huddle serve --dev)
//                               ├── impair_router.py ──┤
//   player ns ──── 10.203.0.3 ──┘   (its own ns, TUN)
//
// Stacks: "sdk" (`huddle call`), "chromium" (the debug page and huddle.js in Debian's chromium,
// driven by playwright-core), "firefox" (the same in Debian's firefox-esr, web/tests/firefox.js),
// "aiortc" (crates/huddle-cli/tests/aiortc_peer.py). The publisher
// sends the padded speech (2 s of silence, the 3.8 s sample, 4 s of silence, looped); the player
// records from its play request for a fixed window, so a slow setup costs score; the recording is
// scored by crates/huddle/tests/audio_score.py (wideband PESQ, STOI at one alignment).
import { spawn, spawnSync, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { REPO, huddleBin, startServer, launchBrowser, openPage, logText, waitLog, waitSel, scoreSpeech } from "./harness.js";
import { firefoxSides } from "./firefox.js";

export const SPEECH_16K = join(REPO, "crates/huddle-media/tests/data/speech-16k.wav");
const ROUTER = join(REPO, "scripts/impair_router.py");
const AIORTC = join(REPO, "crates/huddle-cli/tests/aiortc_peer.py");
const SERVER_ADDR = "10.203.0.1";
const ADDR = { pub: "10.203.0.2", play: "10.203.0.3" };
/** Seconds of silence before and after the speech in the published file. */
export const LEAD_S = 2;
export const TAIL_S = 4;
/** The player's recording: this long from its play request. */
export const WINDOW_S = 9;

/** Fails (never skips) when this machine cannot build the namespaces. */
export function requireRootAndTools() {
  if (process.env.HUDDLE_IMPAIRED_LOGDIR) mkdirSync(process.env.HUDDLE_IMPAIRED_LOGDIR, { recursive: true });
  if (process.getuid?.() !== 0) throw new Error("the impaired interop calls need root (network namespaces, TUN devices)");
  for (const [cmd, arg] of [["ip", "-V"], ["python3", "--version"]]) {
    const r = spawnSync(cmd, [arg]);
    if (r.status !== 0) throw new Error(`${cmd} is missing (scripts/test.sh installs iproute2 and python3)`);
  }
}

/** The padded speech at 48 kHz (what every publisher sends). @param {string} path */
export function writeSentSpeech(path) {
  execFileSync("python3", [
    "-c",
    `import sys, numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly
rate, x = wavfile.read(sys.argv[1])
y = resample_poly(x.astype(np.float64), 3, 1)
y = np.concatenate([np.zeros(int(48000 * ${LEAD_S})), y, np.zeros(int(48000 * ${TAIL_S}))])
wavfile.write(sys.argv[2], 48000, np.clip(np.round(y), -32768, 32767).astype(np.int16))`,
    SPEECH_16K,
    path,
  ]);
}

/** Writes a 48 kHz mono 16-bit WAV. @param {string} path @param {Float32Array | number[]} x */
function writeWav(path, x) {
  const buf = Buffer.alloc(44 + x.length * 2);
  buf.write("RIFF", 0);
  buf.writeUInt32LE(36 + x.length * 2, 4);
  buf.write("WAVEfmt ", 8);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20);
  buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(48000, 24);
  buf.writeUInt32LE(96000, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write("data", 36);
  buf.writeUInt32LE(x.length * 2, 40);
  for (let i = 0; i < x.length; i++) buf.writeInt16LE(Math.max(-32768, Math.min(32767, Math.round(x[i] * 32768))), 44 + i * 2);
  writeFileSync(path, buf);
}

/** Trims a WAV (16-bit PCM, any rate) to `seconds` from `fromS`, padding with silence. */
function trimWav(/** @type {string} */ src, /** @type {string} */ dst, /** @type {number} */ fromS, /** @type {number} */ seconds) {
  execFileSync("python3", [
    "-c",
    `import sys, numpy as np
from scipy.io import wavfile
rate, x = wavfile.read(sys.argv[1])
if x.ndim > 1: x = x.mean(axis=1).astype(np.int16)
a = int(float(sys.argv[3]) * rate); n = int(float(sys.argv[4]) * rate)
y = np.zeros(n, dtype=np.int16); seg = x[a:a + n]; y[:len(seg)] = seg
wavfile.write(sys.argv[2], rate, y)`,
    src,
    dst,
    String(fromS),
    String(seconds),
  ]);
}

/**
 * The namespaces, the router and the server. `setLoss(pct)` changes the loss of every link and
 * returns the router's counts since the previous change (packets and drops per link and way).
 * `name` tells two nets of one process apart (their namespaces, the router's trace); `bin` is
 * the server's `huddle` binary (HUDDLE_BIN's by default).
 * @param {{ lossPct: number, delayMs?: number, seed?: number, name?: string, bin?: string }} opts
 */
export async function impairedNet(opts) {
  requireRootAndTools();
  const tag = `hq${process.pid}${opts.name ?? ""}`;
  const ns = { rtr: `${tag}-rtr`, srv: `${tag}-srv`, pub: `${tag}-pub`, play: `${tag}-play` };
  const dir = mkdtempSync(join(tmpdir(), "huddle-impaired-"));
  // Everything left in the namespaces is ours (the router, the server, the clients): killed by
  // pid (`ip netns pids`), then the namespaces deleted.
  const delNs = () => {
    for (const n of Object.values(ns)) {
      const pids = spawnSync("ip", ["netns", "pids", n], { encoding: "utf8" }).stdout ?? "";
      for (const pid of pids.split("\n").filter(Boolean)) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          // already gone
        }
      }
      spawnSync("ip", ["netns", "del", n], { stdio: "ignore" });
    }
  };
  delNs();
  const del = () => {
    delNs();
    rmSync(dir, { recursive: true, force: true });
  };
  // Deleted on any exit, a failure or an interrupt included (the TUN devices go with the router).
  process.once("exit", del);
  for (const sig of /** @type {const} */ (["SIGINT", "SIGTERM"])) process.once(sig, () => process.exit(130));
  for (const n of Object.values(ns)) {
    execFileSync("ip", ["netns", "add", n]);
    execFileSync("ip", ["-n", n, "link", "set", "lo", "up"]);
  }
  const conf = join(dir, "router.json");
  const config = {
    server: { name: "srv", netns: ns.srv, addr: SERVER_ADDR },
    links: [
      { name: "pub", netns: ns.pub, addr: ADDR.pub },
      { name: "play", netns: ns.play, addr: ADDR.play },
    ],
    loss_pct: opts.lossPct,
    delay_ms: opts.delayMs ?? 50,
    seed: opts.seed ?? 1,
    // With HUDDLE_IMPAIRED_LOGDIR: every packet the router carries (scripts/quality_interop_setup.py).
    ...(process.env.HUDDLE_IMPAIRED_LOGDIR ? { trace: join(process.env.HUDDLE_IMPAIRED_LOGDIR, `router${opts.name ? `-${opts.name}` : ""}.jsonl`) } : {}),
  };
  writeFileSync(conf, JSON.stringify(config));
  const router = spawn("ip", ["netns", "exec", ns.rtr, "python3", ROUTER, conf], { stdio: ["ignore", "pipe", "pipe"] });
  /** @type {string[]} */
  const lines = [];
  let err = "";
  /** @type {(() => void)[]} */
  const waiting = [];
  let buf = "";
  router.stderr.on("data", (d) => (err += d));
  router.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
      waiting.splice(0).forEach((w) => w());
    }
  });
  const nextLine = (/** @type {number} */ n) =>
    new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`impair_router.py did not answer:\n${lines.join("\n")}\n${err}`)), 10_000);
      const check = () => {
        if (lines.length >= n) {
          clearTimeout(t);
          resolve(JSON.parse(lines[n - 1]));
        } else waiting.push(check);
      };
      check();
    });
  await nextLine(1);
  for (const role of /** @type {const} */ (["pub", "play"])) execFileSync("ip", ["-n", ns[role], "route", "add", "default", "dev", `imp-${role}`]);
  const bin = process.env.HUDDLE_BIN;
  if (opts.bin) process.env.HUDDLE_BIN = opts.bin;
  const server = await startServer({ netns: ns.srv, listen: "0.0.0.0:7880", args: ["--dev"], dataDir: join(dir, "data") }).finally(() => {
    if (bin === undefined) delete process.env.HUDDLE_BIN;
    else process.env.HUDDLE_BIN = bin;
  });
  const appSign = /app_sign:\s+(\S+)/.exec(server.output())?.[1];
  if (!appSign) throw new Error(`no app_sign in the server's banner:\n${server.output()}`);
  let lossPct = opts.lossPct;
  return {
    ns,
    dir,
    lossPct: () => lossPct,
    appId: server.appId,
    appSign,
    url: `http://${SERVER_ADDR}:7880`,
    wsUrl: `ws://${SERVER_ADDR}:7880`,
    /** @param {number} pct */
    setLoss: async (pct) => {
      lossPct = pct;
      // Whole or not at all: the router reads it on SIGHUP.
      writeFileSync(`${conf}.new`, JSON.stringify({ ...config, loss_pct: pct }));
      renameSync(`${conf}.new`, conf);
      const n = lines.length + 1;
      router.kill("SIGHUP");
      return nextLine(n);
    },
    close: async () => {
      await server.stop();
      router.kill("SIGTERM");
      await new Promise((r) => (router.exitCode === null ? router.once("exit", r) : r(null)));
      del();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** @typedef {Awaited<ReturnType<typeof impairedNet>>} Net */

/**
 * A process in a namespace whose stdout is one JSON event per line (`huddle call`,
 * aiortc_peer.py); its events with the host's receive time (`h_ms`, Unix ms: the processes' own
 * `t_ms` count from their own starts).
 * @param {string} netns @param {string} cmd @param {string[]} args
 */
function eventProcess(netns, cmd, args) {
  const child = spawn("ip", ["netns", "exec", netns, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  /** @type {any[]} */
  const events = [];
  let buf = "";
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  child.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      try {
        events.push({ ...JSON.parse(buf.slice(0, i)), h_ms: Date.now() });
      } catch {
        // not an event line
      }
      buf = buf.slice(i + 1);
    }
  });
  /** @type {Promise<number | null>} */
  const exited = new Promise((r) => child.on("exit", (code) => r(code)));
  return {
    events,
    exited,
    stderr: () => err,
    kill: (/** @type {NodeJS.Signals} */ sig = "SIGKILL") => {
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    },
  };
}

/**
 * With HUDDLE_IMPAIRED_LOGDIR set, a process side's events and standard error are kept there
 * (`TAG-STACK-ROLE.events.jsonl`, `.stderr.log`): with `RUST_LOG=...,huddle::media::play=trace`
 * the SDK player's log holds every audio packet it got (seq, ts, length, arrival), for counting
 * what a publisher sent and what the player lost.
 * @param {{ rec: string }} call @param {string} side @param {any[]} events @param {string} stderr
 */
function keepLogs(call, side, events, stderr) {
  const dir = process.env.HUDDLE_IMPAIRED_LOGDIR;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `${basename(call.rec).replace(/-heard\.wav$/, "")}-${side}`);
  writeFileSync(`${base}.events.jsonl`, events.map((e) => JSON.stringify(e)).join("\n") + "\n");
  writeFileSync(`${base}.stderr.log`, stderr);
}

/** Milliseconds between the first events matching `a` and `b`, or null. @param {any[]} ev */
function between(ev, /** @type {(e: any) => boolean} */ a, /** @type {(e: any) => boolean} */ b) {
  const x = ev.find(a);
  const y = ev.find(b);
  return x && y ? y.t_ms - x.t_ms : null;
}

/**
 * A native or aiortc side of a call. Returns `{ done: Promise<{...timings, recording?}> }`.
 * @param {Net} net @param {"sdk" | "aiortc"} stack @param {"pub" | "play"} role
 * @param {{ room: string, stream: string, sent: string, rec: string, bin?: string }} call
 */
function processSide(net, stack, role, call) {
  const user = `${stack}-${role}`;
  // A publisher runs until the player is done (it is stopped then).
  const seconds = role === "pub" ? 120 : WINDOW_S;
  if (stack === "sdk") {
    const p = eventProcess(net.ns[role], call.bin || process.env.HUDDLE_BIN || huddleBin(), [
      "call", "--server", net.wsUrl, "--app-id", String(net.appId), "--app-sign", net.appSign, "--room", call.room, "--user", user,
      ...(role === "pub" ? ["--publish", call.stream, "--source", call.sent] : ["--play", call.stream, "--record", `${call.rec}.full.wav`]),
      // The player runs until its window after the play request is over (it is stopped then).
      "--duration", String(role === "pub" ? seconds : seconds + 60),
    ]);
    const done = (async () => {
      if (role === "play") {
        // Stop once the window after the play request has been recorded.
        const deadline = Date.now() + 60_000;
        for (;;) {
          const req = p.events.find((e) => e.event === "player_state_update" && e.state === "PlayRequesting");
          const last = p.events[p.events.length - 1];
          if (req && last && last.t_ms >= req.t_ms + seconds * 1000 + 500) break;
          if (p.events.some((e) => e.event === "room_state_changed" && e.reason === "LoginFailed")) break;
          if (Date.now() > deadline) break;
          await new Promise((r) => setTimeout(r, 200));
        }
        // SIGINT: `huddle call` leaves and completes the WAV file.
        p.kill("SIGINT");
        const t = setTimeout(() => p.kill(), 10_000);
        await p.exited;
        clearTimeout(t);
      }
      await p.exited;
      const ev = p.events;
      keepLogs(call, `sdk-${role}`, ev, p.stderr());
      if (role === "pub") {
        const publishMs = between(ev, (e) => e.event === "publisher_state_update" && e.state === "PublishRequesting", (e) => e.event === "publisher_state_update" && e.state === "Publishing");
        return {
          ok: publishMs !== null,
          publishMs,
          log: publishMs !== null ? undefined : p.stderr().slice(-2000),
        };
      }
      const req = ev.find((e) => e.event === "player_state_update" && e.state === "PlayRequesting");
      if (req) trimWav(`${call.rec}.full.wav`, call.rec, req.t_ms / 1000, seconds);
      return {
        ok: !!req,
        playMs: between(ev, (e) => e === req, (e) => e.event === "player_state_update" && e.state === "Playing"),
        firstAudioMs: between(ev, (e) => e === req, (e) => e.event === "player_recv_audio_first_frame"),
        log: req ? undefined : p.stderr().slice(-2000),
      };
    })();
    return { done, kill: p.kill, requested: requested(p, (e) => e.event === "player_state_update" && e.state === "PlayRequesting") };
  }
  const p = eventProcess(net.ns[role], "python3", [
    AIORTC, "--url", `${net.wsUrl}/ws`, "--app-id", String(net.appId), "--app-sign", net.appSign, "--room", call.room, "--user", user,
    "--host", ADDR[role], "--duration", String(seconds),
    ...(role === "pub" ? ["--publish", call.stream, "--source", call.sent] : ["--play", call.stream, "--record", call.rec, "--record-from-request"]),
  ]);
  const done = (async () => {
    const t = setTimeout(p.kill, (seconds + 60) * 1000);
    const code = await p.exited;
    clearTimeout(t);
    const ev = p.events;
    keepLogs(call, `aiortc-${role}`, ev, p.stderr());
    const publishMs = between(ev, (e) => e.event === "publish_request", (e) => e.event === "media_connected");
    return role === "pub"
      ? { ok: publishMs !== null, publishMs, log: publishMs !== null ? undefined : p.stderr().slice(-2000) }
      : {
          ok: code === 0,
          playMs: between(ev, (e) => e.event === "play_request", (e) => e.event === "media_connected"),
          firstAudioMs: between(ev, (e) => e.event === "play_request", (e) => e.event === "first_frame"),
          log: code === 0 && !process.env.HUDDLE_IMPAIRED_LOGS ? undefined : `${JSON.stringify(ev)}\n${p.stderr().slice(-2000)}`,
        };
  })();
  return { done, kill: p.kill, requested: requested(p, (e) => e.event === "play_request") };
}

/**
 * Resolves once a player process has asked to play (or ended, or after 60 s): the publisher
 * starts then, so that the player's login is not in the call.
 * @param {ReturnType<typeof eventProcess>} p @param {(e: any) => boolean} pred
 */
async function requested(p, pred) {
  const deadline = Date.now() + 60_000;
  let ended = false;
  p.exited.then(() => (ended = true));
  while (!ended && Date.now() < deadline && !p.events.some(pred)) await new Promise((r) => setTimeout(r, 20));
}

/**
 * One call: `from` publishes the speech in the publisher's namespace, `to` plays and records it
 * in the player's; returns the score and the setup times (ms: publish request → publishing,
 * play request → playing and → first audio frame; null when it never came).
 * @param {Net} net @param {"sdk" | "chromium" | "firefox" | "aiortc"} from @param {"sdk" | "chromium" | "firefox" | "aiortc"} to
 * @param {string} sent the padded speech (writeSentSpeech) @param {string} tag a name for the call's files
 * @param {string} [bin] the `huddle` binary of the SDK sides (HUDDLE_BIN's by default)
 */
export async function impairedCall(net, from, to, sent, tag, bin) {
  const room = `q-${tag}`;
  const stream = `s-${tag}`;
  const rec = join(net.dir, `${tag}-heard.wav`);
  const call = { room, stream, sent, rec, bin };
  /** @type {Awaited<ReturnType<typeof launchBrowser>> | null} */
  let chrome = null;
  /** @type {{ done: Promise<any>, kill: () => void }[]} */
  const sides = [];
  try {
    /** @type {any} */
    let pub;
    /** @type {any} */
    let play;
    if (from === "firefox" || to === "firefox") {
      ({ pub, play } = await firefoxSides(net, from, to, call, processSide, sides, WINDOW_S));
    } else if (from === "chromium" || to === "chromium") {
      const role = from === "chromium" ? "pub" : "play";
      chrome = await launchBrowser({
        netns: net.ns[role],
        audioFile: sent,
        args: [`--unsafely-treat-insecure-origin-as-secure=${net.url}`],
      });
      // The page's files load before the loss is applied (at 30 % per link, loading its modules
      // over TCP took longer than 30 s); its signaling (the login on) is impaired from its first
      // packet. The login is before the call starts, as for the native clients.
      const loss = net.lossPct();
      await net.setLoss(0);
      const { page } = await openPage(chrome.browser, `${net.url}/`);
      await net.setLoss(loss);
      await page.fill("#roomId", room);
      await page.fill("#userId", `chromium-${role}`);
      await page.fill("#token", "");
      await page.click("#login");
      await waitLog(page, /roomStateChanged \S+: LOGINED/, 60_000);
      if (role === "pub") {
        const other = processSide(net, /** @type {"sdk" | "aiortc"} */ (to), "play", call);
        sides.push(other);
        await other.requested;
        await page.fill("#streamId", stream);
        await page.check("#mediaAudio");
        await page.uncheck("#audioProcessing");
        // With HUDDLE_IMPAIRED_LOGDIR: the publisher's outbound audio every 500 ms (Chromium's
        // own counters: what its encoder and RED send under the loss its reports show).
        if (process.env.HUDDLE_IMPAIRED_LOGDIR) {
          await page.evaluate(() => {
            const w = /** @type {any} */ (window);
            w.__pubStats = [];
            const t0 = performance.now();
            setInterval(async () => {
              for (const pub of w.huddleApp.engine._publishers.values()) {
                if (!pub.pc) continue;
                for (const r of (await pub.pc.getStats()).values()) {
                  if ((r.type === "outbound-rtp" && r.kind === "audio") || r.type === "remote-inbound-rtp" || r.type === "candidate-pair" && r.nominated) {
                    w.__pubStats.push({ t_ms: Math.round(performance.now() - t0), ...r });
                  }
                }
              }
            }, 500);
          });
        }
        const t0 = Date.now();
        await page.click("#publish");
        let publishMs = null;
        await waitSel(page, `.tile.publish[data-stream-id='${stream}'][data-state='PUBLISHING']`, 30_000)
          .then(() => (publishMs = Date.now() - t0))
          .catch(() => {});
        // A slow or failed publish keeps the page's log (timestamped) to tell signaling from
        // the media connection.
        const slow = publishMs === null || publishMs > 3000;
        pub = { ok: publishMs !== null, publishMs, log: slow ? (await logText(page)).slice(-30).join("\n") : undefined };
        play = await other.done;
        // Chromium's encoder at the end of the call (outbound-rtp): the bitrate it took from the
        // answer, and what it sent.
        pub.pubStats = await page.evaluate(async () => {
          for (const pub of /** @type {any} */ (window).huddleApp.engine._publishers.values()) {
            for (const r of pub.pc ? (await pub.pc.getStats()).values() : []) {
              if (r.type === "outbound-rtp" && r.kind === "audio") return { targetBitrate: r.targetBitrate, packetsSent: r.packetsSent, bytesSent: r.bytesSent };
            }
          }
          return null;
        });
        if (process.env.HUDDLE_IMPAIRED_LOGDIR) {
          const stats = await page.evaluate(() => /** @type {any} */ (window).__pubStats);
          keepLogs(call, "chromium-pub", stats, "");
        }
      } else {
        const other = processSide(net, /** @type {"sdk" | "aiortc"} */ (from), "pub", call);
        sides.push(other);
        await waitSel(page, `#streams li[data-stream-id='${stream}']`, 60_000);
        // The recorder runs from before the click: its samples from the click on are the window.
        // An AudioWorklet (on the audio thread: a ScriptProcessor on the page's busy main thread
        // dropped blocks on the loaded machine) posts its blocks to the page.
        await page.evaluate(async () => {
          const ctx = new AudioContext({ sampleRate: 48000 });
          const code = `registerProcessor("rec", class extends AudioWorkletProcessor {
            process(inputs) { const c = inputs[0][0]; this.port.postMessage(c ? c.slice() : new Float32Array(128)); return true; }
          });`;
          await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: "application/javascript" })));
          await ctx.resume();
          const proc = new AudioWorkletNode(ctx, "rec", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit" });
          /** @type {Float32Array[]} */
          const chunks = [];
          const w = /** @type {any} */ (window);
          w.__rec = { ctx, chunks, on: false, proc };
          proc.port.onmessage = (e) => {
            if (w.__rec.on) chunks.push(e.data);
          };
          const mute = ctx.createGain();
          mute.gain.value = 0;
          proc.connect(mute).connect(ctx.destination);
        });
        const t0 = Date.now();
        await page.evaluate(([s, logStats]) => {
          const w = /** @type {any} */ (window);
          w.__rec.on = true;
          w.__rec.series = [];
          const t0 = performance.now();
          /** @type {HTMLElement} */ (document.querySelector(`#streams li[data-stream-id='${s}']`)).click();
          const poll = setInterval(() => {
            const p = w.huddleApp.playing.get(s);
            if (p?.stream?.getAudioTracks().length) {
              clearInterval(poll);
              w.__rec.ctx.createMediaStreamSource(p.stream).connect(w.__rec.proc);
            }
          }, 10);
          // With HUDDLE_IMPAIRED_LOGDIR: the player's jitter buffer every 50 ms (NetEq's own
          // counters: its delay, target, and what it accelerated, decelerated and concealed).
          if (logStats) {
            const statPoll = setInterval(async () => {
              if (!w.__rec.on) return clearInterval(statPoll);
              const pc = w.huddleApp.engine._players.get(s)?.pc;
              for (const r of pc ? (await pc.getStats()).values() : []) {
                if (r.type === "inbound-rtp" && r.kind === "audio") w.__rec.series.push({ t_ms: Math.round(performance.now() - t0), ...r });
              }
            }, 50);
          }
        }, [stream, !!process.env.HUDDLE_IMPAIRED_LOGDIR]);
        const tile = `.tile.play[data-stream-id='${stream}']`;
        let playMs = null;
        await waitSel(page, `${tile}[data-state='PLAYING']`, WINDOW_S * 1000)
          .then(() => (playMs = Date.now() - t0))
          .catch(() => {});
        const left = t0 + WINDOW_S * 1000 + 300 - Date.now();
        if (left > 0) await page.waitForTimeout(left);
        const first = await page.getAttribute(tile, "data-first-audio-ms").catch(() => null);
        const samples = await page.evaluate((n) => {
          const w = /** @type {any} */ (window);
          w.__rec.on = false;
          const out = [];
          for (const c of w.__rec.chunks) for (const v of c) if (out.length < n) out.push(v);
          return out;
        }, WINDOW_S * 48000);
        writeWav(rec, samples);
        // The player's jitter buffer over the call (Chromium's inbound-rtp): what its NetEq
        // concealed, and stretched to reach its target delay.
        const playStats = await page.evaluate(async (s) => {
          const pc = /** @type {any} */ (window).huddleApp.engine._players.get(s)?.pc;
          for (const r of pc ? (await pc.getStats()).values() : []) {
            if (r.type === "inbound-rtp" && r.kind === "audio") {
              const n = r.jitterBufferEmittedCount || 1;
              return {
                packetsReceived: r.packetsReceived,
                concealedSamples: r.concealedSamples,
                silentConcealedSamples: r.silentConcealedSamples,
                removedSamplesForAcceleration: r.removedSamplesForAcceleration,
                insertedSamplesForDeceleration: r.insertedSamplesForDeceleration,
                meanDelayMs: Math.round((r.jitterBufferDelay / n) * 1000),
                meanTargetMs: Math.round((r.jitterBufferTargetDelay / n) * 1000),
              };
            }
          }
          return null;
        }, stream);
        if (process.env.HUDDLE_IMPAIRED_LOGDIR) keepLogs(call, "chromium-play", await page.evaluate(() => /** @type {any} */ (window).__rec.series), "");
        const slow = playMs === null || playMs > 3000;
        play = { ok: playMs !== null, playMs, firstAudioMs: first === null ? null : Number(first), playStats, log: slow ? (await logText(page)).slice(-30).join("\n") : undefined };
        other.kill();
        pub = await other.done;
      }
    } else {
      const player = processSide(net, /** @type {"sdk" | "aiortc"} */ (to), "play", call);
      sides.push(player);
      await player.requested;
      const publisher = processSide(net, /** @type {"sdk" | "aiortc"} */ (from), "pub", call);
      sides.push(publisher);
      play = await player.done;
      publisher.kill();
      pub = await publisher.done;
    }
    let score = null;
    try {
      score = scoreSpeech(SPEECH_16K, rec);
    } catch (e) {
      score = { error: String(e).slice(0, 300) };
    }
    return { from, to, recording: rec, publishMs: pub?.publishMs ?? null, playMs: play?.playMs ?? null, firstAudioMs: play?.firstAudioMs ?? null, score, playStats: play?.playStats, pubStats: pub?.pubStats, pubLog: pub?.log, playLog: play?.log };
  } finally {
    for (const s of sides) s.kill();
    await chrome?.close();
  }
}
