#!/usr/bin/env python3
"""The setup of SDK -> SDK interop calls under loss, part by part, from the wire and the events.

usage: quality_interop_setup.py INTEROP.jsonl LOGDIR [INTEROP.jsonl LOGDIR ...]  (runs pooled)

INTEROP.jsonl is scripts/quality_interop.mjs's output, LOGDIR the HUDDLE_IMPAIRED_LOGDIR of the
same run: the router's trace of every packet (router.jsonl, scripts/impair_router.py) and each
side's events with their host times (`h_ms`). A call's packets are those of its wall-clock span
(`t0_ms`..`t1_ms`; the calls run one after another). The router sees a packet when its sender
sends it and delivers it `delay` later, so a client gets what the router passed at t + delay.

Per call and side (ms):
  tcp     first SYN -> SYN-ACK at the client, on the connection that carried the WebSocket
          (syn_lost: SYNs and SYN-ACKs dropped; backup: a second connection was tried)
  ws      the upgrade request's first send -> the 101 at the client (hello: -> the server's
          `hello`, which the login waits for)
  login   `login`'s first send -> `login_ok` at the client (login_total: Logining -> Logined)
  pub_sig PublishRequesting -> the `media_answer` at the publisher (a server message reaches
          the client when all its bytes and those before them have: TCP delivers in order)
  pub_media  the answer -> Publishing (ICE and DTLS)
  publish PublishRequesting -> Publishing
  announced  the publisher's PublishRequesting -> the stream at the player (its stream update)
  play_sig   announced -> the player's `media_answer`
  play_media the answer -> the player's first audio frame
  play    the stream announced -> first audio
  pub_to_audio  the publisher's PublishRequesting -> the player's first audio
  first_audio  the play request -> first audio (what the scored window sees; it includes the
          publisher's start and login, which the harness begins after the play request)
Then p50 / p95 / max of each over the calls, per variant (BINS) and loss.
"""

import json
import os
import sys
from collections import defaultdict

DELAY = 50.0


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def first(items, pred):
    return next((x for x in items if pred(x)), None)


class Tcp:
    """When each byte of one direction of a TCP connection reached its receiver: in order, as
    the receiver hands it to the application (a segment after a lost one waits for it)."""

    def __init__(self, packets, isn):
        self.isn = isn
        self.got = []  # (start, end) relative byte ranges received
        self.done = []  # (time, contiguous end) each time the in-order end grew
        end = 1
        for p in sorted((p for p in packets if not p["d"]), key=lambda p: p["t"]):
            a = (p["seq"] - isn) % 2**32
            self.got.append((a, a + p["len"] + (1 if "S" in p["f"] else 0)))
            grown = end
            for x, y in sorted(self.got):
                if x <= grown:
                    grown = max(grown, y)
            if grown > end:
                end = grown
                self.done.append((p["t"] + DELAY, end))

    def delivered(self, p):
        """When all of segment `p` (as first sent) had reached the receiver, or None."""
        want = (p["seq"] - self.isn) % 2**32 + p["len"]
        return next((t for t, end in self.done if end >= want), None)


def side(events, trace, link, call):
    """The setup parts of one side (`link`: pub or play) of one call."""
    r = {}
    ev = lambda name, **kv: first(events, lambda e: e.get("event") == name and all(e.get(k) == v for k, v in kv.items()))
    up = [p for p in trace if p["l"] == f"{link}.up"]
    down = [p for p in trace if p["l"] == f"{link}.down"]
    logining = ev("room_state_changed", reason="Logining")
    logined = ev("room_state_changed", reason="Logined")
    if logining and logined:
        r["login_total"] = logined["h_ms"] - logining["h_ms"]
    # The signaling connection: the one whose upgrade went through.
    get = first(up, lambda p: p.get("ws") == "upgrade")
    syns = [p for p in up if p.get("f") == "S"]
    recv = None
    if get:
        port = get["tcp"][0]
        conn_up = [p for p in up if "tcp" in p and p["tcp"][0] == port]
        conn_down = [p for p in down if "tcp" in p and p["tcp"][1] == port]
        syn = first(conn_up, lambda p: p["f"] == "S")
        synack = first(conn_down, lambda p: p["f"] == "SA")
        r["syn_lost"] = sum(p["d"] for p in syns) + sum(p["d"] for p in down if p.get("f") == "SA")
        r["backup"] = int(len({p["tcp"][0] for p in syns}) > 1)
        if syn and synack:
            recv = Tcp(conn_down, synack["seq"])
            acked = first(conn_down, lambda p: p["f"] == "SA" and not p["d"])
            if acked:
                r["tcp"] = acked["t"] + DELAY - syns[0]["t"]
        msg = lambda name: first(conn_down, lambda p: name in p.get("ws", "").split(","))
        sw, hello, ok = msg("switching"), msg("hello"), msg("login_ok")
        if recv and sw and recv.delivered(sw):
            r["ws"] = recv.delivered(sw) - get["t"]
        if recv and hello and recv.delivered(hello):
            r["hello"] = recv.delivered(hello) - get["t"]
        login = first(conn_up, lambda p: p.get("ws", "").startswith("login"))
        if recv and login and ok and recv.delivered(ok):
            r["login"] = recv.delivered(ok) - login["t"]
    # When a server message (its first send) reached the client.
    at = lambda name, since=0: next(
        (recv.delivered(p) for p in down if "tcp" in p and name in p.get("ws", "").split(",") and p["t"] >= since and recv.delivered(p)), None
    ) if recv else None
    if link == "pub":
        req = ev("publisher_state_update", state="PublishRequesting")
        done = ev("publisher_state_update", state="Publishing")
        if req:
            call["pub_req"] = req["h_ms"]
            ans = at("media_answer", req["h_ms"] - DELAY)
            if ans:
                r["pub_sig"] = ans - req["h_ms"]
                if done:
                    r["pub_media"] = done["h_ms"] - ans
            if done:
                r["publish"] = done["h_ms"] - req["h_ms"]
    else:
        req = ev("player_state_update", state="PlayRequesting")
        audio = ev("player_recv_audio_first_frame")
        # The stream becomes available: the player's stream update (Add).
        ann = ev("room_stream_update", update_type="Add")
        pub_req = call.get("pub_req")
        ans = at("media_answer", pub_req - DELAY) if pub_req else None
        if ann and pub_req:
            r["announced"] = ann["h_ms"] - pub_req
            if ans:
                r["play_sig"] = ans - ann["h_ms"]
            if audio:
                r["play"] = audio["h_ms"] - ann["h_ms"]
        if ans and audio:
            r["play_media"] = audio["h_ms"] - ans
        if req and audio:
            r["first_audio"] = audio["h_ms"] - req["h_ms"]
        if pub_req and audio:
            r["pub_to_audio"] = audio["h_ms"] - pub_req
    return r


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def calls_of(calls, logdir):
    """The setup parts of every call of one run."""
    traces = {}
    rows = []
    for c in calls:
        if "t0_ms" not in c:
            continue
        v = c.get("variant", "")
        if v not in traces:
            traces[v] = load(os.path.join(logdir, f"router-{v}.jsonl" if v else "router.jsonl"))
        tr = [p for p in traces[v] if c["t0_ms"] <= p["t"] <= c["t1_ms"]]
        row = {"tag": c["tag"], "variant": c.get("variant", ""), "loss": c["loss_pct"], "pesq": (c.get("score") or {}).get("pesq")}
        for role in ("pub", "play"):
            path = os.path.join(logdir, f"{c['tag']}-sdk-{role}.events.jsonl")
            if not os.path.exists(path):
                continue
            for k, v in side(load(path), tr, role, row).items():
                row[f"{role}.{k}" if k in ("tcp", "ws", "hello", "login", "login_total", "syn_lost", "backup") else k] = v
        row.pop("pub_req", None)
        rows.append(row)
        print(json.dumps({k: round(v) if isinstance(v, float) and k != "pesq" else v for k, v in row.items()}))
    return rows


def main():
    rows = []
    for jsonl, logdir in zip(sys.argv[1::2], sys.argv[2::2]):
        rows += calls_of(load(jsonl), logdir)
    keys = ["pub.tcp", "pub.ws", "pub.hello", "pub.login", "pub.login_total", "pub_sig", "pub_media", "publish",
            "play.tcp", "play.ws", "play.hello", "play.login", "play.login_total", "announced", "play_sig", "play_media", "play", "pub_to_audio", "first_audio", "pesq"]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["loss"], r["variant"])].append(r)
    print()
    print("| loss | variant | calls | part | p50 | p95 | max |")
    print("|---|---|---|---|---|---|---|")
    for (loss, variant), rs in sorted(groups.items()):
        for k in keys:
            xs = [r[k] for r in rs if r.get(k) is not None]
            if not xs:
                continue
            f = (lambda x: f"{x:.2f}") if k == "pesq" else (lambda x: f"{x:.0f}")
            print(f"| {loss} % | {variant} | {len(xs)}/{len(rs)} | {k} | {f(pct(xs, 0.5))} | {f(pct(xs, 0.95))} | {f(max(xs) if k != 'pesq' else min(xs))} |")
        for k in ("pub.backup", "play.backup", "pub.syn_lost", "play.syn_lost"):
            print(f"| {loss} % | {variant} | {len(rs)} | {k} (calls) | {sum(1 for r in rs if r.get(k))} | | |")


if __name__ == "__main__":
    main()
