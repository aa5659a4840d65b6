// `scripts/quality.sh interop`: interop calls through namespaces with loss on both legs and on
// signaling from the first packet (web/tests/impaired.js), every pair of stacks, scored as
// heard from the play request. One JSON object per call to OUT, then a Markdown table.
//
//   LOSSES=0,10,16,30 RUNS=3 PAIRS=sdk:sdk,chromium:sdk,... node scripts/quality_interop.mjs OUT
//
// BINS=base=/tmp/huddle-old,new=target/release/huddle runs every call once with each binary
// (interleaved, same loss), each variant in its own namespaces with its own server and router:
// before and after side by side in one run. Each line has `variant` and the call's wall-clock
// `t0_ms`/`t1_ms`, which scripts/quality_interop_setup.py uses to cut the router's trace
// (router-VARIANT.jsonl in HUDDLE_IMPAIRED_LOGDIR) into calls.
import { appendFileSync, writeFileSync, readFileSync, copyFileSync, mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { impairedNet, impairedCall, writeSentSpeech } from "../web/tests/impaired.js";

const out = process.argv[2] ?? "target/quality/interop.jsonl";
const losses = (process.env.LOSSES ?? "0,10,16,30").split(",").map(Number);
const runs = Number(process.env.RUNS ?? 3);
const pairs = (process.env.PAIRS ?? "sdk:sdk,chromium:sdk,sdk:chromium,aiortc:sdk,sdk:aiortc,chromium:aiortc,aiortc:chromium")
  .split(",")
  .map((p) => /** @type {["sdk" | "chromium" | "firefox" | "aiortc", "sdk" | "chromium" | "firefox" | "aiortc"]} */ (p.split(":")));

const bins = process.env.BINS ? process.env.BINS.split(",").map((b) => /** @type {[string, string]} */ (b.split("=", 2))) : [["", undefined]];

writeFileSync(out, "");
/** @type {Map<string, Awaited<ReturnType<typeof impairedNet>>>} */
const nets = new Map();
for (const [variant, bin] of bins) nets.set(variant, await impairedNet({ lossPct: losses[0], delayMs: 50, name: variant, bin }));
const net = /** @type {Awaited<ReturnType<typeof impairedNet>>} */ (nets.get(bins[0][0]));
const sent = join(net.dir, "sent.wav");
writeSentSpeech(sent);
const started = Date.now();
try {
  for (const loss of losses) {
    for (const n of nets.values()) await n.setLoss(loss);
    for (let run = 1; run <= runs; run++) {
      for (const [from, to] of pairs) for (const [variant, bin] of bins) {
        const t = Date.now();
        const load = readFileSync("/proc/loadavg", "utf8").split(" ")[0];
        const tag = `${from}-${to}-${loss}-${run}${variant ? `-${variant}` : ""}`;
        const callNet = /** @type {Awaited<ReturnType<typeof impairedNet>>} */ (nets.get(variant));
        const r = await impairedCall(callNet, from, to, sent, tag, bin).catch((e) => ({ from, to, error: String(e).slice(0, 500) }));
        const applied = await callNet.setLoss(loss);
        // The recordings are kept beside OUT (OUT without .jsonl, one WAV a call).
        const rec = /** @type {any} */ (r).recording;
        if (rec && existsSync(rec)) {
          mkdirSync(out.replace(/\.jsonl$/, ""), { recursive: true });
          copyFileSync(rec, join(out.replace(/\.jsonl$/, ""), `${tag}.wav`));
        }
        const line = { loss_pct: loss, run, ...(variant ? { variant } : {}), tag, t0_ms: t, t1_ms: Date.now(), ...r, seconds: (Date.now() - t) / 1000, load_before: Number(load), router: applied.links };
        appendFileSync(out, JSON.stringify(line) + "\n");
        const s = /** @type {any} */ (r).score;
        console.log(
          `${loss}% run ${run} ${variant} ${from} -> ${to}: PESQ ${s?.pesq?.toFixed(2) ?? "-"} STOI ${s?.stoi?.toFixed(3) ?? "-"} ` +
            `publish ${/** @type {any} */ (r).publishMs ?? "-"} ms, play ${/** @type {any} */ (r).playMs ?? "-"} ms, ` +
            `first audio ${/** @type {any} */ (r).firstAudioMs ?? "-"} ms (${line.seconds.toFixed(0)} s, load ${load})${/** @type {any} */ (r).error ? ` ERROR ${/** @type {any} */ (r).error}` : ""}`,
        );
      }
    }
  }
} finally {
  for (const n of nets.values()) await n.close();
}
console.log(`${((Date.now() - started) / 60000).toFixed(1)} min`);
