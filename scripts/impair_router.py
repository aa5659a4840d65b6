#!/usr/bin/env python3
"""A userspace netem between network namespaces: random loss and a fixed delay on every link.

usage: impair_router.py CONFIG.json  (run as root inside its own network namespace)

CONFIG: {"links": [{"name": "pub", "netns": "NS", "addr": "10.203.0.2"}, ...],
         "server": {"name": "srv", "netns": "NS", "addr": "10.203.0.1"},
         "prefix": 24, "loss_pct": 10, "delay_ms": 50, "seed": 1}

Makes one TUN device per namespace (the server's and each client's), moves it there, gives it
its address, and carries every IP packet between a client and the server itself: each
direction of each client's leg drops a packet with probability loss_pct and holds the rest
delay_ms (the server's own device adds nothing, so a leg is client <-> server). Everything the
clients send, signaling (TCP) included, goes through it from the first packet; nothing else
exists in those namespaces, so no traffic leaves them.

Why by hand: the kernels of the development machines have no `sch_netem` and no loadable
modules (`tc qdisc ... netem` says "Specified qdisc kind is unknown"), and nothing else there
delays packets (no `fq` for timed departure; docs/quality.md, "Interop under loss"). The devices
are not persistent: they vanish with this process.

With "trace": PATH in CONFIG, every packet is also written there as one JSON line (wall-clock
time in ms, link.way, dropped or not, and what it is: TCP ports, flags, sequence number, payload
length and the `type` of a signaling message it starts; STUN, DTLS record and handshake types,
RTP/RTCP), for breaking a call's setup into its parts (scripts/quality_interop_setup.py).

Signals: SIGHUP re-reads loss_pct and delay_ms from CONFIG, prints the counters since the
previous SIGHUP (one JSON line: sent and dropped packets per link and direction) and zeroes
them; SIGTERM prints them and exits.
"""

import ctypes
import fcntl
import heapq
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


WS_TYPE = re.compile(rb'"type":"([a-z_]+)"')
STUN = {0x0001: "stun-req", 0x0101: "stun-ok", 0x0111: "stun-err", 0x0011: "stun-ind"}


def describe(pkt):
    """What an IPv4 packet is, for the trace: a dict of short fields."""
    ihl = (pkt[0] & 15) * 4
    proto = pkt[9]
    body = pkt[ihl:]
    if proto == 6 and len(body) >= 20:
        sport, dport, seq = struct.unpack("!HHI", body[:8])
        off = (body[12] >> 4) * 4
        flags = body[13]
        data = body[off:]
        d = {"tcp": [sport, dport], "f": "".join(c for c, b in zip("FSRPAU", range(6)) if flags >> b & 1), "seq": seq, "len": len(data)}
        if data.startswith(b"GET "):
            d["ws"] = "upgrade"
        elif data.startswith(b"HTTP/1.1 101"):
            d["ws"] = "switching"
        else:
            # WebSocket text frames that start in this segment: their messages' types (a
            # client's frames unmasked).
            types, i = [], 0
            while i + 2 <= len(data) and data[i] & 0x70 == 0 and data[i] & 0x0F in (0, 1, 2, 8, 9, 10):
                n, masked, i = data[i + 1] & 0x7F, data[i + 1] & 0x80, i + 2
                if n >= 126:
                    w = 2 if n == 126 else 8
                    n, i = int.from_bytes(data[i:i + w], "big"), i + w
                key = data[i:i + 4] if masked else None
                i += 4 if masked else 0
                text = data[i:i + min(n, 120)]
                if key and len(key) == 4:
                    text = bytes(b ^ key[j & 3] for j, b in enumerate(text))
                m = WS_TYPE.search(text)
                if m:
                    types.append(m.group(1).decode())
                i += n
            if types:
                d["ws"] = ",".join(types)
        return d
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack("!HH", body[:4])
        data = body[8:]
        kind = "udp"
        if data:
            b0 = data[0]
            if b0 < 4 and len(data) >= 20:
                kind = STUN.get(struct.unpack("!H", data[:2])[0], "stun")
            elif 20 <= b0 < 64:
                kind = f"dtls-{b0}" + (f"-{data[13]}" if b0 == 22 and len(data) > 13 else "")
            elif 128 <= b0 < 192 and len(data) > 1:
                kind = "rtcp" if 192 <= data[1] <= 223 else "rtp"
        return {"udp": [sport, dport], "k": kind, "len": len(data)}
    return {"proto": proto}


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def main():
    # Ends with the process that started it, however that one ends.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    path = sys.argv[1]
    conf = json.load(open(path))
    prefix = conf.get("prefix", 24)
    ends = [conf["server"], *conf["links"]]
    fds = {}
    for end in ends:
        dev = f"imp-{end['name']}"[:15]
        fds[end["name"]] = tun(dev)
        ip("link", "set", dev, "netns", end["netns"])
        ip("-n", end["netns"], "addr", "add", f"{end['addr']}/{prefix}", "dev", dev)
        ip("-n", end["netns"], "link", "set", dev, "up")
    by_addr = {bytes(int(x) for x in e["addr"].split(".")): e["name"] for e in conf["links"]}
    server = conf["server"]["name"]
    names = {fd: name for name, fd in fds.items()}

    state = {"loss": conf["loss_pct"] / 100.0, "delay": conf["delay_ms"] / 1000.0}
    rng = random.Random(conf.get("seed", 1))
    counts = {}
    trace = open(conf["trace"], "a", buffering=1) if conf.get("trace") else None

    def report():
        print(json.dumps({"loss_pct": state["loss"] * 100, "delay_ms": state["delay"] * 1000, "links": counts}), flush=True)
        counts.clear()

    def reload(*_):
        # Read before answering: the answer lets the writer go on, and a second quick change
        # would otherwise truncate the file under this read (an empty read, a crash).
        with open(path) as f:
            c = json.load(f)
        report()
        state["loss"], state["delay"] = c["loss_pct"] / 100.0, c["delay_ms"] / 1000.0

    # HUDDLE_ROUTER_TRACE=FILE: one line per packet, at arrival ("in", with "drop" when the
    # link loses it) and at delivery ("out"): wall-clock seconds, link, size, and for UDP the
    # kind (rtp/rtcp with ssrc, seq, timestamp; dtls with its content type; stun).
    trace_path = os.environ.get("HUDDLE_ROUTER_TRACE")
    trace = open(trace_path, "a", buffering=1 << 16) if trace_path else None

    def describe(pkt):
        ihl = (pkt[0] & 15) * 4
        if pkt[9] != 17 or len(pkt) < ihl + 9:
            return f"proto{pkt[9]}"
        u = pkt[ihl + 8 :]
        if len(u) >= 13 and 20 <= u[0] <= 63:
            return f"dtls ct{u[0]}"
        if len(u) >= 12 and u[0] >> 6 == 2:
            pt = u[1] & 0x7F
            if 64 <= pt <= 95:
                return f"rtcp pt{u[1]}"
            seq, ts, ssrc = struct.unpack("!HII", u[2:12])
            return f"rtp pt{pt} ssrc{ssrc} seq{seq} ts{ts}"
        return "stun" if len(u) >= 20 and u[0] < 2 else "udp"

    def log(what, key, pkt):
        if trace:
            trace.write(f"{time.time():.4f} {what} {key} {len(pkt)} {describe(pkt)}\n")

    stop = []
    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print(json.dumps({"ready": True}), flush=True)

    queue = []  # (due, n, fd, packet): delivered in order, the delay being the same for all
    n = 0
    poll = select.poll()
    for fd in fds.values():
        poll.register(fd, select.POLLIN)
    while not stop:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, fd, pkt, key = heapq.heappop(queue)
            log("out", key, pkt)
            try:
                os.write(fd, pkt)
            except OSError:
                pass  # the namespace's side is gone or full: the packet is lost like any other
        wait = max(0, int((queue[0][0] - now) * 1000) + 1) if queue else 200
        try:
            ready = poll.poll(wait)
        except InterruptedError:
            continue
        for fd, _ in ready:
            while True:
                try:
                    pkt = os.read(fd, 65535)
                except BlockingIOError:
                    break
                if len(pkt) < 20 or pkt[0] >> 4 != 4:
                    continue  # IPv4 only (the namespaces have no IPv6 address on these devices)
                src = names[fd]
                if src == server:
                    dst = by_addr.get(pkt[16:20])
                    if dst is None:
                        continue
                    key = f"{dst}.down"
                else:
                    if pkt[16:20] != bytes(int(x) for x in conf["server"]["addr"].split(".")):
                        continue  # clients reach the server only
                    dst = server
                    key = f"{src}.up"
                c = counts.setdefault(key, {"packets": 0, "dropped": 0})
                c["packets"] += 1
                drop = rng.random() < state["loss"]
                if trace:
                    trace.write(json.dumps({"t": round(time.time() * 1000, 1), "l": key, "d": int(drop), **describe(pkt)}, separators=(",", ":")) + "\n")
                if drop:
                    c["dropped"] += 1
                    log("drop", key, pkt)
                    continue
                log("in", key, pkt)
                n += 1
                heapq.heappush(queue, (time.monotonic() + state["delay"], n, fds[dst], pkt, key))
    report()
    if trace:
        trace.close()


if __name__ == "__main__":
    main()
