#!/usr/bin/env python3
"""The summary of scripts/bench.sh: reads the JSON reports of target/bench/, prints the tables and
ratios, writes target/bench/results.md and SVG plots (no third-party modules). With --publish it also
replaces the part of docs/benchmarks.md between the bench markers and copies the plots to docs/bench/.

    bench_report.py DIR [--publish]     the summary
    bench_report.py --line FILE         one line about one report (the script's progress)
    bench_report.py --ok FILE           exit 0 when the run had <= 0.5% loss and every client joined
    bench_report.py --capacity DIR PREFIX   the largest B1 N of PREFIX at <= 0.5% loss (0: none)
"""
import glob
import json
import os
import re
import shutil
import sys

LOSS_LIMIT = 0.005
BEGIN = "<!-- bench:begin (written by scripts/bench_report.py; do not edit by hand) -->"
END = "<!-- bench:end -->"


def load(path):
    with open(path) as f:
        return json.load(f)


def g(r, *keys):
    for k in keys:
        if r is None:
            return None
        r = r.get(k)
    return r


def f(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def ok(r):
    return r["loss"] <= LOSS_LIMIT and r["play_streams_joined"] == r["play_streams"]


def line(r, name):
    s = r.get("server") or {}
    lat = r.get("latency_ms")
    return (f"   {name}: {r['publishers']}x{r['subscribers']} delivered {r['delivered_pps']:.0f} pkt/s, "
            f"loss {100 * r['loss']:.3f}%, latency p50/p95/p99 "
            f"{f(g(lat, 'p50'))}/{f(g(lat, 'p95'))}/{f(g(lat, 'p99'))} ms (to socket p95 "
            f"{f(g(r, 'latency_socket_ms', 'p95'))}), CPU wait server/generator {waits(r)} s, "
            f"server {f(s.get('cpu_cores'), '.3f')} cores {f(s.get('cpu_us_per_packet'))} us/pkt, "
            f"generator {r['generator_cpu_cores']:.2f} cores")


HANDSHAKE = "DTLS/ICE handshakes (ECDHE, ECDSA, bignum)"


def category(kernel, dso, sym):
    """A perf symbol's share of the work, by what it is for."""
    s = sym.lower()
    if kernel:
        if any(x in s for x in ("task_switch", "schedule", "spin_unlock_irqrestore", "futex", "wake", "epoll", "ep_",
                                "syscall", "entry_", "hrtimer", "clock_", "do_idle")):
            return "kernel: scheduling, wake-ups, syscall entry"
        return "kernel: UDP/IP send and receive (loopback)"
    if any(x in s for x in ("p384", "p256", "x25519", "bignum", "ecp_", "ecdsa", "ec_", "montmul", "rsa", "sha256", "sha384",
                            "sha512", "dimpl", "x509", "hkdf", "prf")):
        return HANDSHAKE
    if any(x in s for x in ("aead", "aes", "gcm", "srtp", "ghash", "gfmul")):
        return "SRTP (AES-GCM seal/open)"
    if "huddle_server" in s:
        return "huddle SFU (demux, forwarding, rewrite)"
    if "str0m" in s or s.startswith("is::") or "is::agent" in s or "rtp" in s:
        return "str0m (RTP/RTCP, timers, pacer, ICE)"
    if "tokio" in s or "mio" in s:
        return "tokio runtime"
    if any(x in s for x in ("malloc", "free", "memmove", "memcpy", "memset", "_int_", "realloc")):
        return "allocation and copies (libc)"
    return "other"


def sock(r):
    d = r.get("latency_socket_ms")
    return f"{f(d['p50'])} / {f(d['p95'])}" if d else "-"


def waits(r):
    s = r.get("server") or {}
    return f"{f(s.get('runq_wait_s'))} / {f(r.get('generator_runq_wait_s'))}"


def ramp(out, prefix):
    runs = [load(p) for p in glob.glob(os.path.join(out, prefix + "-b1-*.json"))]
    return sorted(runs, key=lambda r: r["subscribers"])


def capacity(runs):
    good = [r for r in runs if ok(r)]
    return max(good, key=lambda r: r["subscribers"]) if good else None


# --- SVG -------------------------------------------------------------------------------------

COLORS = {"huddle": "#1f77b4", "janus": "#d62728", "b0": "#2ca02c"}


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_max(v):
    if v <= 0:
        return 1
    p = 10 ** len(str(int(v))) / 10
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * p:
            return m * p
    return 10 * p


def line_chart(title, xlabel, ylabel, series, path, note=""):
    """series: {name: [(x, y), ...]}"""
    w, h, l, r, t, b = 560, 320, 70, 110, 40, 50
    xs = [x for pts in series.values() for x, _ in pts] or [1]
    ys = [y for pts in series.values() for _, y in pts] or [1]
    xmax, ymax = nice_max(max(xs)), nice_max(max(ys))
    sx = lambda x: l + (w - l - r) * x / xmax
    sy = lambda y: h - b - (h - t - b) * y / ymax
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{esc(title)}</text>']
    for i in range(6):
        y = ymax * i / 5
        o.append(f'<line x1="{l}" x2="{w - r}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{l - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        x = xmax * i / 5
        o.append(f'<text x="{sx(x):.1f}" y="{h - b + 16}" text-anchor="middle">{x:g}</text>')
    o.append(f'<line x1="{l}" x2="{w - r}" y1="{h - b}" y2="{h - b}" stroke="black"/>')
    o.append(f'<line x1="{l}" x2="{l}" y1="{t}" y2="{h - b}" stroke="black"/>')
    o.append(f'<text x="{(l + w - r) / 2}" y="{h - 12}" text-anchor="middle">{esc(xlabel)}</text>')
    o.append(f'<text transform="translate(16 {(t + h - b) / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        c = COLORS.get(name.split()[0], "#555")
        if pts:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            o.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
            for x, y in pts:
                o.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>')
        o.append(f'<rect x="{w - r + 10}" y="{t + 18 * i}" width="12" height="12" fill="{c}"/>')
        o.append(f'<text x="{w - r + 26}" y="{t + 18 * i + 10}">{esc(name)}</text>')
    if note:
        o.append(f'<text x="{l}" y="{t - 6}" font-size="10" fill="#555">{esc(note)}</text>')
    o.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(o) + "\n")


def bar_chart(title, ylabel, groups, keys, path, note=""):
    """groups: [(label, {key: value})]; keys: [(key, color)]"""
    w, h, l, r, t, b = 560, 320, 70, 20, 40, 60
    vals = [v for _, d in groups for v in d.values() if v is not None] or [1]
    ymax = nice_max(max(vals))
    sy = lambda y: h - b - (h - t - b) * y / ymax
    gw = (w - l - r) / max(len(groups), 1)
    bw = gw * 0.8 / max(len(keys), 1)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{esc(title)}</text>']
    for i in range(6):
        y = ymax * i / 5
        o.append(f'<line x1="{l}" x2="{w - r}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{l - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    for gi, (label, d) in enumerate(groups):
        x0 = l + gi * gw + gw * 0.1
        for ki, (k, c) in enumerate(keys):
            v = d.get(k)
            if v is None:
                continue
            x = x0 + ki * bw
            o.append(f'<rect x="{x:.1f}" y="{sy(v):.1f}" width="{bw - 2:.1f}" height="{h - b - sy(v):.1f}" fill="{c}"/>')
            o.append(f'<text x="{x + bw / 2:.1f}" y="{sy(v) - 3:.1f}" text-anchor="middle" font-size="10">{v:.3g}</text>')
        o.append(f'<text x="{l + gi * gw + gw / 2:.1f}" y="{h - b + 16}" text-anchor="middle" font-size="11">{esc(label)}</text>')
    for ki, (k, c) in enumerate(keys):
        o.append(f'<rect x="{l + 110 * ki}" y="{h - 22}" width="12" height="12" fill="{c}"/>')
        o.append(f'<text x="{l + 110 * ki + 16}" y="{h - 12}">{esc(k)}</text>')
    o.append(f'<line x1="{l}" x2="{w - r}" y1="{h - b}" y2="{h - b}" stroke="black"/>')
    o.append(f'<text transform="translate(16 {(t + h - b) / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    if note:
        o.append(f'<text x="{l}" y="{t - 6}" font-size="10" fill="#555">{esc(note)}</text>')
    o.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(o) + "\n")


# --- the summary -----------------------------------------------------------------------------

def summary(out):
    meta = load(os.path.join(out, "meta.json")) if os.path.exists(os.path.join(out, "meta.json")) else {}
    get = lambda name: load(os.path.join(out, name + ".json")) if os.path.exists(os.path.join(out, name + ".json")) else None
    md = []
    p = md.append
    busy = f"load average {meta.get('loadavg_before', 0):.2f} on {meta.get('cores', '?')} cores just before"
    p(f"Run: `BENCH_MODE={meta.get('mode', '?')}` ({meta.get('duration', '?'):g} s windows), "
      f"{meta.get('date_utc', '?')} UTC, {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, "
      f"kernel {meta.get('kernel', '?')}; the generator and the servers share the machine's cores "
      f"({busy}), so the numbers are indicative, not a dedicated-hardware benchmark. "
      f"Generator: {meta.get('generator_threads', '?')} runtime threads, on the same 2 cores as the server.")
    p("")
    # A run whose clients hit errors (a refused join, a failed connection) says so here, not only
    # as a "-" in a table below. Loss is not an error: the B1 ramps end on a lossy step by design.
    failed = []
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        name = os.path.basename(path)[:-5]
        if name == "meta":
            continue
        try:
            r = load(path)
        except (OSError, ValueError):
            continue
        errs = r.get("errors") or [] if isinstance(r, dict) else []
        if errs:
            failed.append(f"- `{name}`: {len(errs)} client error(s), first: {errs[0]}")
    if failed:
        p("**Runs with client errors** (their numbers below are incomplete):")
        p("")
        md.extend(failed)
        p("")

    # B0
    b0, b0_1 = get("b0"), get("b0-1x1")
    b0_us = g(b0, "server", "cpu_us_per_packet")
    p("### B0: the ceiling (plain UDP relay, one thread, no SRTP)")
    p("")
    p("| load | delivered pkt/s | loss % | relay CPU µs/pkt | latency p50 / p99 ms |")
    p("|---|---:|---:|---:|---:|")
    for r in (b0, b0_1, get("b0-b3-half")):
        if r:
            p(f"| {r['publishers']}×{r['subscribers']} | {r['delivered_pps']:.0f} | {100 * r['loss']:.3f} | "
              f"{f(g(r, 'server', 'cpu_us_per_packet'))} | {f(g(r, 'latency_ms', 'p50'))} / {f(g(r, 'latency_ms', 'p99'))} |")
    p("")

    # B1
    hr, jr = ramp(out, "huddle"), ramp(out, "janus")
    p(f"### B1: {meta.get('publishers', 10)} publishers × N subscribers, ramped until loss > 0.5 %")
    p("")
    p("| server | N | play streams | delivered pkt/s | loss % | server cores | CPU µs/pkt | RSS KiB/play | latency p50 / p95 / p99 ms | to socket p50 / p95 ms | generator cores | CPU wait s, server / generator |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in (("Huddle", hr), ("Janus", jr)):
        for r in runs:
            s = r.get("server") or {}
            p(f"| {name} | {r['subscribers']} | {r['play_streams_joined']}/{r['play_streams']} | {r['delivered_pps']:.0f} | "
              f"{100 * r['loss']:.3f} | {f(s.get('cpu_cores'), '.3f')} | {f(s.get('cpu_us_per_packet'))} | "
              f"{f(s.get('rss_kib_per_play_stream'), '.1f')} | {f(g(r, 'latency_ms', 'p50'))} / "
              f"{f(g(r, 'latency_ms', 'p95'))} / {f(g(r, 'latency_ms', 'p99'))} | {sock(r)} | {r['generator_cpu_cores']:.2f} | {waits(r)} |")
    p("")
    hc, jc = capacity(hr), capacity(jr)
    steps = meta.get("b1_steps") or []
    cap_txt = lambda c, runs: "none" if c is None else (
        f"N = {c['subscribers']} ({c['delivered_pps']:.0f} pkt/s)" +
        (" — the top of the ramp, not a limit found" if c is runs[-1] and steps and c['subscribers'] == max(steps) else ""))
    p(f"- Largest N at ≤ 0.5 % loss: Huddle {cap_txt(hc, hr)}; Janus {cap_txt(jc, jr) if jr else 'not run'}.")
    if hc and jc:
        p(f"- Delivered packets/s at capacity, Huddle / Janus: **{hc['delivered_pps'] / jc['delivered_pps']:.2f}×**.")
    # CPU per packet at the largest N both carried cleanly.
    both = sorted({r["subscribers"] for r in hr if ok(r)} & {r["subscribers"] for r in jr if ok(r)})
    if both:
        n = both[-1]
        h = next(r for r in hr if r["subscribers"] == n)
        j = next(r for r in jr if r["subscribers"] == n)
        hu, ju = g(h, "server", "cpu_us_per_packet"), g(j, "server", "cpu_us_per_packet")
        if hu and ju:
            p(f"- Server CPU per forwarded packet at {meta.get('publishers', 10)}×{n} (both clean): Huddle {hu:.2f} µs, "
              f"Janus {ju:.2f} µs: Huddle uses **{ju / hu:.2f}× less** CPU per packet, i.e. forwards "
              f"{ju / hu:.2f}× Janus's packets per CPU-second.")
    if hc and b0_us:
        hu = g(hc, "server", "cpu_us_per_packet")
        if hu:
            p(f"- Against B0 ({b0_us:.2f} µs per packet, no SRTP): Huddle at capacity {hu:.2f} µs per packet, "
              f"**{100 * b0_us / hu:.0f} %** of the B0 ceiling in packets per CPU-second.")
    p("")

    # B3
    p("### B3: latency added by forwarding (one-way, sender → receiver, same clock)")
    p("")
    p("| server | load | latency p50 / p95 / p99 ms | to socket p50 / p95 ms | B0 relay at the same load, p50 / p99 ms | added p50 / p99 ms |")
    p("|---|---|---:|---:|---:|---:|")
    b0_half = get("b0-b3-half")
    for name, prefix in (("Huddle", "huddle"), ("Janus", "janus")):
        for case, base in (("1x1", b0_1), ("half", b0_half)):
            r = get(f"{prefix}-b3-{case}")
            if not r:
                continue
            lat = r.get("latency_ms") or {}
            bl = g(base, "latency_ms") or {}
            same = base and base["subscribers"] == r["subscribers"] and base["publishers"] == r["publishers"]
            added = (f"{lat['p50'] - bl['p50']:+.2f} / {lat['p99'] - bl['p99']:+.2f}" if lat and bl and same else "-")
            base_txt = f"{f(bl.get('p50'))} / {f(bl.get('p99'))}" if same else f"(B0 at {base['publishers']}×{base['subscribers']})" if base else "-"
            p(f"| {name} | {r['publishers']}×{r['subscribers']} | {f(lat.get('p50'))} / {f(lat.get('p95'))} / {f(lat.get('p99'))} | "
              f"{sock(r)} | {base_txt} | {added} |")
    p("")

    # B4
    p(f"### B4: login → first audio packet (1 publisher; 1 and {meta.get('b4_joins', 50)} subscribers joining at once)")
    p("")
    p("| server | joins at once | login → first packet p50 / p95 ms | play join (ICE+DTLS) p50 / p95 ms | publish join p50 ms |")
    p("|---|---:|---:|---:|---:|")
    b4 = {}
    for name, prefix in (("Huddle", "huddle"), ("Janus", "janus")):
        for case in ("1", "many"):
            r = get(f"{prefix}-b4-{case}")
            if not r:
                continue
            b4[(name, case)] = r
            lf = r.get("login_first_packet_ms") or {}
            pj = r.get("play_join_ms") or {}
            p(f"| {name} | {r['subscribers']} | {f(lf.get('p50'), '.1f')} / {f(lf.get('p95'), '.1f')} | "
              f"{f(pj.get('p50'), '.1f')} / {f(pj.get('p95'), '.1f')} | {f(g(r, 'publish_join_ms', 'p50'), '.1f')} |")
    for case in ("1", "many"):
        h, j = b4.get(("Huddle", case)), b4.get(("Janus", case))
        if h and j and g(h, "login_first_packet_ms", "p50") and g(j, "login_first_packet_ms", "p50"):
            p(f"- {h['subscribers']} join(s): Janus / Huddle login → first packet p50 "
              f"**{g(j, 'login_first_packet_ms', 'p50') / g(h, 'login_first_packet_ms', 'p50'):.2f}×**.")
    p("")

    # Memory
    p("### Memory per played stream (server RSS: end of window − before the run, / play streams)")
    p("")
    for name, runs in (("Huddle", hr), ("Janus", jr)):
        vals = [(r["play_streams"], g(r, "server", "rss_kib_per_play_stream")) for r in runs if ok(r)]
        vals = [(n, v) for n, v in vals if v is not None]
        if vals:
            p(f"- {name}: " + ", ".join(f"{v:.1f} KiB at {n} streams" for n, v in vals) + ".")
    p("  RSS deltas include allocator slack and memory kept from earlier runs on the same server "
      "process (the ramp reuses one process), so the largest run is the best estimate.")
    p("")

    # Scaling
    s1, s2 = get("huddle-scale-1core"), get(f"huddle-scale-{meta.get('cores', 2)}core")
    p("### 1 → 2 cores (Huddle pinned with `taskset`)")
    p("")
    one = ramp(out, "huddle1core")
    c1run, c2run = capacity(one), capacity(hr)
    if one:
        p("B1's ramp with the server pinned to CPU 0, against B1 on both CPUs (the generator shares "
          "the CPUs in both):")
        p("")
        p("| server CPUs | largest N at ≤ 0.5 % loss | delivered pkt/s | server cores | CPU µs/pkt | server threads (cores) |")
        p("|---|---:|---:|---:|---:|---|")
        for label, r in (("1 (CPU 0)", c1run), ("2 (all)", c2run)):
            if r:
                s = r.get("server") or {}
                th = ", ".join(f"`{t['name']}` {t['cores']:.2f}" for t in s.get("threads") or [])
                p(f"| {label} | {r['subscribers']} | {r['delivered_pps']:.0f} | {f(s.get('cpu_cores'), '.3f')} | "
                  f"{f(s.get('cpu_us_per_packet'))} | {th or '-'} |")
            else:
                p(f"| {label} | none | - | - | - | - |")
        if c1run and c2run:
            p("")
            p(f"- Capacity from 1 to 2 cores: **{c2run['delivered_pps'] / max(c1run['delivered_pps'], 1e-9):.2f}×** "
              f"the delivered packets/s (N = {c1run['subscribers']} → {c2run['subscribers']}).")
        p("")
        p("The same load on 1 core and on 2:")
        p("")
    p("| server CPUs | load | delivered pkt/s | loss % | server cores used | CPU µs/pkt | latency p50 / p95 / p99 ms | to socket p50 / p95 ms | generator cores | CPU wait s, server / generator |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in (("1 (CPU 0)", s1), (f"{meta.get('cores', 2)} (all)", s2)):
        if r:
            s = r.get("server") or {}
            p(f"| {label} | {r['publishers']}×{r['subscribers']} | {r['delivered_pps']:.0f} | {100 * r['loss']:.3f} | "
              f"{f(s.get('cpu_cores'), '.3f')} | {f(s.get('cpu_us_per_packet'))} | {f(g(r, 'latency_ms', 'p50'))} / "
              f"{f(g(r, 'latency_ms', 'p95'))} / {f(g(r, 'latency_ms', 'p99'))} | {sock(r)} | {r['generator_cpu_cores']:.2f} | {waits(r)} |")
    if s1 and s2:
        c1, c2 = g(s1, "server", "cpu_cores"), g(s2, "server", "cpu_cores")
        p("")
        p(f"- Server cores used: {f(c1, '.3f')} pinned to one CPU, {f(c2, '.3f')} with both; delivered "
          f"{s2['delivered_pps'] / max(s1['delivered_pps'], 1e-9):.2f}× as many packets/s with 2 cores.")
        for label, r in (("one CPU", s1), ("both CPUs", s2)):
            threads = (r.get("server") or {}).get("threads") or []
            if threads:
                p(f"- Server threads on {label} (cores): "
                  + ", ".join(f"`{t['name']}` {t['cores']:.3f}" for t in threads) + ".")
    p("")

    # Profile
    prof = os.path.join(out, "huddle-profile.txt")
    if os.path.exists(prof):
        rows = []
        for l in open(prof):
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*)", l)
            if m:
                rows.append((float(m.group(1)), m.group(2), m.group(3) == "k", m.group(4).strip()))
        if rows:
            cats = {}
            for pct, dso, k, sym in rows:
                c = category(k, dso, sym)
                cats[c] = cats.get(c, 0.0) + pct
            total = sum(cats.values())
            hs = cats.get(HANDSHAKE, 0.0)
            p("### Where the server's CPU goes (perf, cpu-clock, 2-core scaling run, joins included)")
            p("")
            p(f"All samples of `huddle serve` through the 2-core scaling run ({total:.0f} % attributed), by "
              f"category; the last column leaves out the DTLS/ICE handshakes of the joins ({hs:.1f} %), "
              f"which are not per-packet work:")
            p("")
            p("| category | % of samples | % without handshakes |")
            p("|---|---:|---:|")
            for c, v in sorted(cats.items(), key=lambda kv: -kv[1]):
                rest = "-" if c == HANDSHAKE else f"{100 * v / max(total - hs, 1e-9):.1f}"
                p(f"| {c} | {v:.1f} | {rest} |")
            p("")
            p("Top symbols:")
            p("")
            p("| % | where | symbol |")
            p("|---:|---|---|")
            for pct, dso, k, sym in rows[:15]:
                sym = sym if len(sym) < 90 else sym[:87] + "..."
                p(f"| {pct:.1f} | {'kernel' if k else dso} | `{sym}` |")
            p("")

    # Plots
    series = {}
    for name, runs in (("huddle", hr), ("janus", jr)):
        if runs:
            series[name] = [(r["subscribers"], r["delivered_pps"]) for r in runs]
            series[name + " expected"] = [(r["subscribers"], r["expected_packets"] / r["window_s"]) for r in runs]
    plots = []
    note = "shared busy 2-core machine; " + f"BENCH_MODE={meta.get('mode', '?')}"
    if series:
        line_chart("B1: delivered packets/s, 10 publishers × N subscribers", "subscribers N",
                   "packets/s", {k: v for k, v in series.items() if not k.endswith("expected")},
                   os.path.join(out, "b1-delivered.svg"), note)
        cpu = {name: [(r["subscribers"], g(r, "server", "cpu_us_per_packet")) for r in runs if g(r, "server", "cpu_us_per_packet")]
               for name, runs in (("huddle", hr), ("janus", jr)) if runs}
        if b0_us:
            cpu["b0 (no SRTP)"] = [(x, b0_us) for x in sorted({r["subscribers"] for r in hr + jr})]
        line_chart("B1: server CPU µs per forwarded packet", "subscribers N", "CPU µs / packet", cpu,
                   os.path.join(out, "b1-cpu.svg"), note)
        plots += ["b1-delivered.svg", "b1-cpu.svg"]
    groups = []
    for name, prefix in (("huddle", "huddle"), ("janus", "janus")):
        for case in ("1x1", "half"):
            r = get(f"{prefix}-b3-{case}")
            if r and r.get("latency_ms"):
                groups.append((f"{name} {r['publishers']}×{r['subscribers']}", {"p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"]}))
    for r in (b0_1, b0_half):
        if r and r.get("latency_ms"):
            groups.append((f"B0 {r['publishers']}×{r['subscribers']}", {"p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"]}))
    if groups:
        bar_chart("B3: one-way latency, ms", "ms", groups, [("p50", "#1f77b4"), ("p99", "#ff7f0e")],
                  os.path.join(out, "b3-latency.svg"), note)
        plots.append("b3-latency.svg")
    groups = [(f"{n} {r['subscribers']} join{'s' if r['subscribers'] > 1 else ''}",
               {"p50": g(r, "login_first_packet_ms", "p50"), "p95": g(r, "login_first_packet_ms", "p95")})
              for (n, _), r in b4.items()]
    if groups:
        bar_chart("B4: login → first audio packet, ms", "ms", groups, [("p50", "#1f77b4"), ("p95", "#ff7f0e")],
                  os.path.join(out, "b4-first-packet.svg"), note)
        plots.append("b4-first-packet.svg")
    if plots:
        p("### Plots")
        p("")
        for name in plots:
            p(f"![{name}](bench/{name})")
        p("")
    return "\n".join(md)


def publish(out, md):
    doc = "docs/benchmarks.md"
    text = open(doc).read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{doc}: no bench markers")
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    open(doc, "w").write(text[:a] + "\n" + md + "\n" + text[b:])
    os.makedirs("docs/bench", exist_ok=True)
    for svg in glob.glob(os.path.join(out, "*.svg")):
        shutil.copy(svg, "docs/bench/")
    print(f"published into {doc} and docs/bench/")


def main(argv):
    if argv[:1] == ["--line"]:
        name = re.sub(r"\.json$", "", os.path.basename(argv[1]))
        print(line(load(argv[1]), name))
    elif argv[:1] == ["--ok"]:
        sys.exit(0 if ok(load(argv[1])) else 1)
    elif argv[:1] == ["--capacity"]:
        c = capacity(ramp(argv[1], argv[2]))
        print(c["subscribers"] if c else 0)
    else:
        pub = "--publish" in argv
        out = [a for a in argv if a != "--publish"][0]
        md = summary(out)
        print(md)
        with open(os.path.join(out, "results.md"), "w") as fh:
            fh.write(md + "\n")
        if pub:
            publish(out, md)


if __name__ == "__main__":
    main(sys.argv[1:])
