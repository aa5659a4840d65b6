#!/usr/bin/env python3
"""Summarises the loss-curve runs of scripts/quality.sh: a CSV, an SVG plot and a Markdown table.

usage: quality_plot.py RED.jsonl NORED.jsonl OUT.csv OUT.svg

Each input line is one call's score from `tests/quality.rs::loss_curve` (`loss`, `model`,
`pesq`, `stoi`, `seed`, `applied_loss`, ...). A point is the median over its seeds, with the
minimum and maximum as whiskers. Plain SVG, no plotting library.
"""

import csv
import json
import statistics
import sys
from collections import defaultdict


def load(path, red):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    r = json.loads(line)
                    r["red"] = red
                    rows.append(r)
    except FileNotFoundError:
        pass
    return rows


def summarise(rows):
    groups = defaultdict(list)
    for r in rows:
        groups[(r["red"], r["model"], round(r["loss"] * 100))].append(r)
    out = []
    for (red, model, loss), rs in sorted(groups.items()):
        pesq = [r["pesq"] for r in rs]
        stoi = [r["stoi"] for r in rs if r.get("stoi") is not None]
        out.append(
            {
                "red": red,
                "model": model,
                "loss_pct": loss,
                "runs": len(rs),
                "applied_loss_pct": round(100 * statistics.mean(r["applied_loss"] for r in rs), 1),
                "pesq_median": round(statistics.median(pesq), 2),
                "pesq_min": round(min(pesq), 2),
                "pesq_max": round(max(pesq), 2),
                "stoi_median": round(statistics.median(stoi), 3) if stoi else "",
                "stoi_min": round(min(stoi), 3) if stoi else "",
                "stoi_max": round(max(stoi), 3) if stoi else "",
            }
        )
    return out


SERIES = [
    # (red, model, colour, dash, label)
    (True, "random", "#1f6fd1", "", "RED + FEC, random loss"),
    (True, "bursty", "#1f6fd1", "6,4", "RED + FEC, bursty loss (mean burst 3)"),
    (False, "random", "#d1651f", "", "FEC + PLC only, random loss"),
    (False, "bursty", "#d1651f", "6,4", "FEC + PLC only, bursty loss"),
]


def panel(summary, key, x0, y0, w, h, ymin, ymax, title, target):
    s = []
    s.append(f'<g transform="translate({x0},{y0})">')
    s.append(f'<text x="{w / 2}" y="-12" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>')
    s.append(f'<rect x="0" y="0" width="{w}" height="{h}" fill="none" stroke="#888"/>')

    def px(loss):
        return loss / 70.0 * w

    def py(v):
        return h - (v - ymin) / (ymax - ymin) * h

    for loss in range(0, 71, 10):
        x = px(loss)
        s.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{h}" stroke="#eee"/>')
        s.append(f'<text x="{x}" y="{h + 16}" text-anchor="middle" font-size="11">{loss}</text>')
    steps = 7
    for i in range(steps + 1):
        v = ymin + (ymax - ymin) * i / steps
        y = py(v)
        s.append(f'<line x1="0" y1="{y}" x2="{w}" y2="{y}" stroke="#eee"/>')
        s.append(f'<text x="-6" y="{y + 4}" text-anchor="end" font-size="11">{v:.2f}</text>')
    s.append(f'<text x="{w / 2}" y="{h + 34}" text-anchor="middle" font-size="12">loss on the player\'s downlink (%)</text>')
    tx, tv, tlabel = target
    s.append(
        f'<line x1="{px(tx) - 25}" y1="{py(tv)}" x2="{px(tx) + 25}" y2="{py(tv)}" stroke="#2a2" stroke-width="3"/>'
    )
    s.append(f'<text x="{px(tx)}" y="{py(tv) - 7}" text-anchor="middle" font-size="11" fill="#2a2">{tlabel}</text>')
    for red, model, colour, dash, _ in SERIES:
        pts = [r for r in summary if r["red"] == red and r["model"] == model and r[f"{key}_median"] != ""]
        if not pts:
            continue
        path = " ".join(f"{px(r['loss_pct']):.1f},{py(r[f'{key}_median']):.1f}" for r in pts)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        s.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>')
        for r in pts:
            x = px(r["loss_pct"])
            s.append(
                f'<line x1="{x:.1f}" y1="{py(r[f"{key}_min"]):.1f}" x2="{x:.1f}" y2="{py(r[f"{key}_max"]):.1f}" stroke="{colour}" stroke-width="1"/>'
            )
            s.append(f'<circle cx="{x:.1f}" cy="{py(r[f"{key}_median"]):.1f}" r="3" fill="{colour}"/>')
    s.append("</g>")
    return s


def svg(summary):
    w, h = 420, 280
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="420" font-family="sans-serif">']
    s.append('<rect width="100%" height="100%" fill="white"/>')
    s += panel(summary, "pesq", 60, 40, w, h, 1.0, 4.5, "Wideband PESQ (100 ms RTT)", (30, 3.0, "target 3.0"))
    s += panel(summary, "stoi", 560, 40, w, h, 0.3, 1.0, "STOI (100 ms RTT)", (60, 0.8, "target 0.8"))
    y = 375
    for i, (_, _, colour, dash, label) in enumerate(SERIES):
        x = 60 + (i % 2) * 470
        yy = y + (i // 2) * 18
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        s.append(f'<line x1="{x}" y1="{yy}" x2="{x + 30}" y2="{yy}" stroke="{colour}" stroke-width="2"{dash_attr}/>')
        s.append(f'<text x="{x + 36}" y="{yy + 4}" font-size="12">{label}</text>')
    s.append("</svg>")
    return "\n".join(s) + "\n"


def table(summary):
    lines = [
        "| loss | model | RED + FEC: PESQ | RED + FEC: STOI | FEC + PLC only: PESQ | FEC + PLC only: STOI |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["model"], r["loss_pct"]) for r in summary}, key=lambda k: (k[0] != "random", k[1]))

    def cell(red, model, loss, key):
        for r in summary:
            if r["red"] == red and r["model"] == model and r["loss_pct"] == loss:
                if r[f"{key}_median"] == "":
                    return "–"
                fmt = "{:.2f}" if key == "pesq" else "{:.3f}"
                return f"{fmt.format(r[f'{key}_median'])} ({fmt.format(r[f'{key}_min'])}–{fmt.format(r[f'{key}_max'])})"
        return "–"

    for model, loss in keys:
        lines.append(
            f"| {loss} % | {model} | {cell(True, model, loss, 'pesq')} | {cell(True, model, loss, 'stoi')} | "
            f"{cell(False, model, loss, 'pesq')} | {cell(False, model, loss, 'stoi')} |"
        )
    return "\n".join(lines)


def main():
    red, nored, out_csv, out_svg = sys.argv[1:5]
    summary = summarise(load(red, True) + load(nored, False))
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0].keys()))
        w.writeheader()
        w.writerows(summary)
    with open(out_svg, "w") as f:
        f.write(svg(summary))
    print(table(summary))


if __name__ == "__main__":
    main()
