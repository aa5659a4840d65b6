// Test harness: a `huddle serve` in dev mode on 127.0.0.1 (ports picked by the OS) and a headless
// Debian chromium driven by playwright-core, with fake media and loopback ICE (FIELD-NOTES).
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { X509Certificate, createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The `huddle` binary: $HUDDLE_BIN, else $CARGO_TARGET_DIR or target/, debug build. */
export function huddleBin() {
  if (process.env.HUDDLE_BIN) return process.env.HUDDLE_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(REPO, "target");
  return join(target, "debug", "huddle");
}

/**
 * @typedef {{ url: string, wsUrl: string, addr: string, dataDir: string, appId: number, serverSecret: string,
 *   stop: (opts?: { keepData?: boolean }) => Promise<void>, output: () => string }} Server
 */

/**
 * Starts `huddle serve` in dev mode and parses its banner (huddle_server::cli print_banner).
 * `listen` and `dataDir` restart a server where an earlier one was (same address, same dev app);
 * `netns` runs it in that network namespace; `args` are more flags (`--config FILE`; `--tls-cert`,
 * `--tls-key`: then `url` is https:// and `wsUrl` wss://); `tcpPort` is the ICE-TCP port
 * (default "0": off).
 * @param {{ listen?: string, dataDir?: string, netns?: string, args?: string[], tcpPort?: string }} [opts]
 * @returns {Promise<Server>}
 */
export async function startServer(opts = {}) {
  const bin = huddleBin();
  if (!existsSync(bin)) throw new Error(`${bin} not found: run cargo build -p huddle-cli (or set HUDDLE_BIN)`);
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), "huddle-web-test-"));
  const listen = opts.listen ?? "127.0.0.1:0";
  // ICE-TCP off unless asked for (`tcpPort`): its default port is fixed.
  const argv = [bin, "serve", "--listen", listen, "--udp-port", "0", "--tcp-port", opts.tcpPort ?? "0", "--data-dir", dataDir, ...(opts.args ?? [])];
  const [cmd, ...cmdArgs] = opts.netns ? ["ip", "netns", "exec", opts.netns, ...argv] : argv;
  const child = spawn(cmd, cmdArgs, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info" },
  });
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const banner = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`no banner from huddle serve in 20 s:\n${out}\n${err}`)), 20_000);
    child.stdout.on("data", (d) => {
      out += d;
      const addr = out.match(/listening on (\S+)/);
      const app = out.match(/app_id:\s+(\d+)/);
      const secret = out.match(/server_secret:\s+(\S+)/);
      const tls = /signaling: wss:\/\//.test(out);
      if (addr && app && secret) {
        clearTimeout(timer);
        resolvePromise({ addr: addr[1], appId: Number(app[1]), serverSecret: secret[1], tls });
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`huddle serve exited (${code}):\n${out}\n${err}`));
    });
  });
  /** @param {{ keepData?: boolean }} [o] */
  const stop = async (o = {}) => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    }
    if (!o.keepData) rmSync(dataDir, { recursive: true, force: true });
  };
  return {
    url: `${banner.tls ? "https" : "http"}://${banner.addr}`,
    wsUrl: `${banner.tls ? "wss" : "ws"}://${banner.addr}`,
    addr: banner.addr,
    dataDir,
    appId: banner.appId,
    serverSecret: banner.serverSecret,
    stop,
    output: () => out + err,
  };
}

/**
 * A WAV file of a continuous tone (48 kHz, mono, 16 bit) for Chromium's fake microphone.
 * @param {string} path
 * @param {number} freq
 * @param {number} seconds
 * @param {number} amplitude 0–1
 */
export function writeToneWav(path, freq = 440, seconds = 5, amplitude = 0.5) {
  const rate = 48_000;
  const n = rate * seconds;
  const buf = Buffer.alloc(44 + n * 2);
  buf.write("RIFF", 0);
  buf.writeUInt32LE(36 + n * 2, 4);
  buf.write("WAVE", 8);
  buf.write("fmt ", 12);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate * 2, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write("data", 36);
  buf.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) {
    buf.writeInt16LE(Math.round(Math.sin((2 * Math.PI * freq * i) / rate) * amplitude * 32767), 44 + i * 2);
  }
  writeFileSync(path, buf);
}

/**
 * Launches headless chromium with fake media and loopback ICE. The fake microphone plays (and
 * loops) `opts.audioFile`, by default a 440 Hz tone; the fake camera is Chromium's own pattern.
 * `netns` runs the browser in that network namespace (playwright talks to it over a pipe, so it
 * needs no network); `args` are more command-line switches.
 * @param {{ audioFile?: string, netns?: string, args?: string[] }} [opts]
 */
export async function launchBrowser(opts = {}) {
  const dir = mkdtempSync(join(tmpdir(), "huddle-web-browser-"));
  let wav = opts.audioFile;
  if (!wav) {
    wav = join(dir, "tone.wav");
    writeToneWav(wav, 440, 5, 0.5);
  }
  let executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (opts.netns) {
    const wrapper = join(dir, "chromium-in-netns");
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${opts.netns} ${executablePath} "$@"\n`, { mode: 0o755 });
    executablePath = wrapper;
  }
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      `--use-file-for-fake-audio-capture=${wav}`,
      "--autoplay-policy=no-user-gesture-required",
      "--allow-loopback-in-peer-connection",
      ...(opts.args ?? []),
    ],
  });
  return {
    browser,
    close: async () => {
      await browser.close().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A new page (its own context: cookies, storage) on the debug page, with its console kept.
 * @param {import("playwright-core").Browser} browser
 * @param {string} url
 * @param {{ width: number, height: number }} [viewport]
 */
export async function openPage(browser, url, viewport = { width: 1100, height: 1200 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  /** @type {string[]} */
  const console = [];
  page.on("console", (m) => console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector("body[data-ready='1']", { timeout: 10_000 });
  return { page, context, console };
}

/**
 * The debug page's log as text lines.
 * @param {import("playwright-core").Page} page
 */
export async function logText(page) {
  return page.$$eval("#log li", (lis) => lis.map((li) => li.textContent ?? ""));
}

/**
 * Reads a 16-bit PCM WAV (mono or the channels' mean) as floats in [-1, 1].
 * @param {string} path
 */
export function readWav(path) {
  const b = readFileSync(path);
  let off = 12;
  let channels = 1;
  let rate = 0;
  while (off + 8 <= b.length) {
    const id = b.toString("ascii", off, off + 4);
    const size = b.readUInt32LE(off + 4);
    if (id === "fmt ") {
      channels = b.readUInt16LE(off + 10);
      rate = b.readUInt32LE(off + 12);
      if (b.readUInt16LE(off + 22) !== 16) throw new Error(`${path}: not 16-bit PCM`);
    } else if (id === "data") {
      const n = Math.floor(Math.min(size, b.length - off - 8) / 2 / channels);
      const x = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        let v = 0;
        for (let c = 0; c < channels; c++) v += b.readInt16LE(off + 8 + (i * channels + c) * 2);
        x[i] = v / channels / 32768;
      }
      return { rate, x };
    }
    off += 8 + size + (size & 1);
  }
  throw new Error(`${path}: no data chunk`);
}

/**
 * Writes the speech sample (crates/huddle-media/tests/data/speech-16k.wav) at 48 kHz with `leadS`
 * seconds of silence before it and `tailS` after, to `path` (numpy/scipy, installed by
 * scripts/test.sh for the scoring): Chromium's fake microphone and `huddle call --source` loop it,
 * and `crates/huddle/tests/audio_score.py` finds one whole pass in a recording and scores it.
 * @param {string} path @param {number} leadS @param {number} tailS
 */
export function writePaddedSpeech(path, leadS = 1.5, tailS = 0.5) {
  const py = spawnSync(
    "python3",
    [
      "-c",
      `import sys, numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly
rate, x = wavfile.read(sys.argv[1])
assert rate == 16000, rate
y = resample_poly(x.astype(np.float64), 3, 1)
y = np.concatenate([np.zeros(int(48000 * ${leadS})), y, np.zeros(int(48000 * ${tailS}))])
wavfile.write(sys.argv[2], 48000, np.clip(np.round(y), -32768, 32767).astype(np.int16))`,
      join(REPO, "crates/huddle-media/tests/data/speech-16k.wav"),
      path,
    ],
    { encoding: "utf8" },
  );
  if (py.status !== 0) throw new Error(`making the 48 kHz speech file: ${py.stderr}`);
}

/**
 * Scores a recording of the padded speech against it (`crates/huddle/tests/audio_score.py`:
 * aligned wideband PESQ, STOI, windows); the parsed JSON.
 * @param {string} reference @param {string} recording
 */
export function scoreSpeech(reference, recording) {
  const r = spawnSync("python3", [join(REPO, "crates/huddle/tests/audio_score.py"), reference, recording], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`audio_score.py: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/**
 * A server certificate for `subjectAltName` (e.g. `DNS:localhost,IP:127.0.0.1`) signed by a test
 * CA made with it, both P-256, made with the openssl command into `dir`; returns the file paths.
 * Chromium trusts exactly the server's key with `--ignore-certificate-errors-spki-list=`
 * {@link spkiHash}, a native client the CA with `huddle call --ca-file`.
 * @param {string} dir @param {string} name @param {string} subjectAltName
 */
export function makeCertificate(dir, name, subjectAltName) {
  const f = (/** @type {string} */ what) => join(dir, `${name}-${what}`);
  const openssl = (/** @type {string[]} */ args) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  const p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(["req", "-x509", ...p256, "-keyout", f("ca-key.pem"), "-out", f("ca.pem"), "-days", "2", "-subj", `/CN=${name} test CA`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
  openssl(["req", ...p256, "-keyout", f("key.pem"), "-out", f("csr.pem"), "-subj", `/CN=${name}`]);
  writeFileSync(f("ext.cnf"), `subjectAltName=${subjectAltName}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
  openssl(["x509", "-req", "-in", f("csr.pem"), "-CA", f("ca.pem"), "-CAkey", f("ca-key.pem"), "-CAcreateserial",
    "-out", f("cert.pem"), "-days", "2", "-extfile", f("ext.cnf")]);
  return { cert: f("cert.pem"), key: f("key.pem"), ca: f("ca.pem") };
}

/** The base64 SHA-256 of the certificate's SubjectPublicKeyInfo (what chromium pins). @param {string} certFile */
export function spkiHash(certFile) {
  const spki = new X509Certificate(readFileSync(certFile)).publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

/**
 * Waits until a line of the debug page's log matches `re`; fails with the log.
 * @param {import("playwright-core").Page} page @param {RegExp} re
 */
export async function waitLog(page, re, timeout = 15_000) {
  await page
    .waitForFunction(([s, f]) => [...document.querySelectorAll("#log li")].some((li) => new RegExp(s, f).test(li.textContent ?? "")), [re.source, re.flags], { timeout })
    .catch(async (e) => {
      throw new Error(`${e.message}\nlog:\n${(await logText(page)).join("\n")}`);
    });
}

/**
 * Waits for `selector` on the page; fails with the page's log (and `console`, when given).
 * @param {import("playwright-core").Page} page @param {string} selector @param {string[]} [console]
 */
export async function waitSel(page, selector, timeout = 15_000, console = []) {
  await page.waitForSelector(selector, { timeout }).catch(async (e) => {
    throw new Error(`${e.message}\nlog:\n${(await logText(page)).join("\n")}\nconsole:\n${console.join("\n")}`);
  });
}

/**
 * A dev token (POST /api/dev-token) for a user in a room of `server` (startServer's).
 * @param {{ url: string, appId: number }} server
 * @param {string} user
 * @param {string} room
 */
export async function devToken(server, user, room) {
  const r = await fetch(`${server.url}/api/dev-token`, {
    method: "POST",
    body: JSON.stringify({ app_id: server.appId, user_id: user, room_id: room }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return /** @type {{ token: string }} */ (await r.json()).token;
}

/**
 * A native client: `huddle call`'s event lines, a wait for one, its standard-input commands
 * (`command`, one JSON object per line), and its end.
 * @typedef {{ name: string, events: any[], lines: string[], stderr: () => string,
 *   wait: (what: string, pred: (e: any) => boolean, timeout?: number) => Promise<any>,
 *   exited: Promise<number | null>, command: (cmd: object) => void, stop: () => Promise<void> }} NativeCall
 */

/**
 * Starts a native client: `huddle call` logged in with a dev token on `server` (startServer's);
 * its JSON event lines are kept. The caller stops it (`stop`).
 * @param {{ url: string, wsUrl: string, appId: number }} server
 * @param {string} room
 * @param {string} user
 * @param {string[]} args
 * @returns {Promise<NativeCall>}
 */
export async function startNativeCall(server, room, user, args) {
  const token = await devToken(server, user, room);
  const child = spawn(
    huddleBin(),
    ["call", "--server", server.wsUrl, "--app-id", String(server.appId), "--token", token, "--room", room, "--user", user, ...args],
    { stdio: ["pipe", "pipe", "pipe"] },
  );
  /** @type {any[]} */
  const events = [];
  /** @type {string[]} */
  const lines = [];
  /** @type {Set<() => void>} */
  const waiters = new Set();
  let buf = "";
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  child.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      try {
        events.push(JSON.parse(line));
      } catch {
        // not an event line
      }
    }
    for (const w of [...waiters]) w();
  });
  /** @type {Promise<number | null>} */
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  /** @type {NativeCall} */
  const call = {
    name: `huddle call ${user} ${args.join(" ")}`,
    events,
    lines,
    stderr: () => err,
    wait: (what, pred, timeout = 15_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const e = events.find(pred);
          if (e) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(e);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`${call.name}: no ${what} in ${timeout} ms:\n${lines.join("\n")}\n${err}`));
        }, timeout);
        waiters.add(check);
        check();
      }),
    exited,
    command: (cmd) => child.stdin.write(JSON.stringify(cmd) + "\n"),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGINT");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
  return call;
}
