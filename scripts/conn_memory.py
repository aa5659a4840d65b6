#!/usr/bin/env python3
"""Server memory per WebSocket connection that never logs in (docs/security.md).

usage: scripts/conn_memory.py [SERVER_BINARY] [N]   (default target/release/huddle-server, 400)

Starts the server (dev mode, 127.0.0.1, free ports; `huddle-server`, or `huddle` with `serve`),
opens N WebSocket connections that only receive `hello`, and prints the server's RSS before, with
them open, just after they close (glibc keeps freed memory in its arenas) and once the server has
given the free memory back (`src/memory.rs`, within about 5 s). N stays within the per-address
connection burst (500) so that every connection is admitted.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/huddle-server"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
data = tempfile.mkdtemp(prefix="huddle-conn-memory-")
server = subprocess.Popen(
    [binary, *(["serve"] if os.path.basename(binary) == "huddle" else []), "--listen", "127.0.0.1:0", "--udp-port", "0", "--tcp-port", "0", "--data-dir", data],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
)
try:
    port = None
    for line in server.stdout:
        m = re.match(r"huddle server listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    assert port, "no banner"

    def rss():
        return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{server.pid}/status").read()).group(1))

    request = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    time.sleep(0.5)
    before = rss()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        got = b""
        while b"hello" not in got:
            chunk = s.recv(4096)
            assert chunk, "a connection was refused"
            got += chunk
    time.sleep(0.5)
    during = rss()
    for s in socks:
        s.close()
    time.sleep(1.5)
    after = rss()
    time.sleep(10)
    trimmed = rss()
    print(
        f"server RSS: {before} KiB idle, {during} KiB with {n} connections "
        f"({(during - before) / n:.1f} KiB each), {after} KiB just after they closed, "
        f"{trimmed} KiB 10 s later"
    )
finally:
    server.terminate()
    server.wait(timeout=10)
