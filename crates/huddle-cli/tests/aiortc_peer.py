#!/usr/bin/env python3
"""A Huddle client on aiortc (PyPI), a WebRTC stack this project did not write, for interop tests.

usage: aiortc_peer.py --url ws://HOST:PORT/ws --app-id N --app-sign HEX --room R --user U
                      (--publish STREAM --source SPEECH.wav | --play STREAM --record OUT.wav)
                      [--duration SECONDS] [--host ADDR] [--record-from-request]

Logs in with the AppSign challenge of docs/protocol.md, then publishes the WAV file (looped) as
Opus, or plays a stream and records what it hears to a WAV file, for `--duration` seconds, and
logs out. One JSON line per step on stdout ({"event": "logined"}, {"event": "media_connected"},
...). Exits 1 with {"event": "error", ...} when the server refuses something.

aiortc's ICE (aioice) leaves 127.0.0.1 out of its host candidates, and asks a public STUN server
by default: both are set here for a loopback-only test (FIELD-NOTES.md). `--host` gives another
address as the only host candidate (a network namespace's, for the impaired interop calls of
`scripts/quality.sh interop`).

`--record-from-request` records, instead of aiortc's MediaRecorder (which starts at the first
frame), `--duration` seconds from the play request: silence until the first frame and where
frames are missing, each frame placed by its RTP timestamp, so that a slow setup shows in the
recording as it would be heard. Every event line has `t_ms`, milliseconds since the start.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import sys
import time
import wave

import aioice.ice
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer, MediaRecorder

HOST = ["127.0.0.1"]
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: HOST
START = time.monotonic()


def say(event, **fields):
    t_ms = round((time.monotonic() - START) * 1000)
    print(json.dumps({"event": event, "t_ms": t_ms, **fields}), flush=True)


class WindowRecorder:
    """Records `seconds` of a received audio track from `t0` (monotonic) to a 48 kHz mono WAV."""

    def __init__(self, path, t0, seconds):
        self.path, self.t0, self.rate = path, t0, 48000
        self.pcm = bytearray(int(seconds * self.rate) * 2)
        self.task = None

    def add_track(self, track):
        self.task = asyncio.ensure_future(self.run(track))

    async def run(self, track):
        import numpy as np

        base = None  # (first frame's pts, its sample offset from t0)
        self.frames = 0
        while True:
            try:
                frame = await track.recv()
            except Exception as e:
                say("track_ended", frames=self.frames, error=repr(e))
                return
            self.frames += 1
            x = frame.to_ndarray()
            channels = len(frame.layout.channels)
            x = x.reshape(-1, channels).mean(axis=1) if x.dtype != np.float32 else x.reshape(-1)
            scale = 32768.0 if frame.format.name in ("flt", "fltp") else 1.0
            pcm = np.clip(np.round(x * scale), -32768, 32767).astype("<i2").tobytes()
            if base is None:
                base = (frame.pts, int((time.monotonic() - self.t0) * self.rate) - len(pcm) // 2)
                say("first_frame")
            at = 2 * (base[1] + int((frame.pts - base[0]) * self.rate * frame.time_base))
            if at >= 0:
                self.pcm[at : at + len(pcm)] = pcm[: max(0, len(self.pcm) - at)]

    async def stop(self):
        say("recorded", frames=getattr(self, "frames", 0))
        if self.task:
            self.task.cancel()
        with wave.open(self.path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate)
            w.writeframes(bytes(self.pcm))


class Signaling:
    def __init__(self, ws):
        self.ws = ws
        self.seq = 0
        self.events = asyncio.Queue()

    async def request(self, msg):
        self.seq += 1
        msg["seq"] = self.seq
        await self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("seq") == self.seq:
                if reply["type"] == "error":
                    say("error", code=reply["code"], message=reply["message"], request=msg["type"])
                    sys.exit(1)
                return reply
            await self.events.put(reply)

    async def wait_event(self, pred, timeout):
        async def wait():
            while True:
                while not self.events.empty():
                    m = self.events.get_nowait()
                    if pred(m):
                        return m
                m = json.loads(await self.ws.recv())
                if pred(m):
                    return m

        return await asyncio.wait_for(wait(), timeout)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--app-id", type=int, required=True)
    p.add_argument("--app-sign", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--publish")
    p.add_argument("--source")
    p.add_argument("--play")
    p.add_argument("--record")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--record-from-request", action="store_true")
    a = p.parse_args()
    HOST[0] = a.host

    async with websockets.connect(a.url) as ws:
        sig = Signaling(ws)
        hello = json.loads(await ws.recv())
        challenge = f"huddle-login-v1\n{a.app_id}\n{a.room}\n{a.user}\n{hello['nonce']}"
        sign = hmac.new(bytes.fromhex(a.app_sign), challenge.encode(), hashlib.sha256).hexdigest()
        await sig.request(
            {
                "type": "login",
                "protocol": 1,
                "app_id": a.app_id,
                "room_id": a.room,
                "user": {"user_id": a.user, "user_name": a.user},
                "auth": {"sign": sign},
                "user_status_notify": False,
                "max_member_count": 0,
            }
        )
        say("logined")

        async def heartbeat():
            # The server drops a connection silent for session_timeout_ms (15 s). Pings use
            # request numbers of their own so that their pongs never answer a request.
            n = 1_000_000
            while True:
                await asyncio.sleep(4)
                n += 1
                await ws.send(json.dumps({"type": "ping", "seq": n}))

        pings = asyncio.ensure_future(heartbeat())

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        recorder = None
        if a.publish:
            stream, kind = a.publish, "publish"
            say("publish_request")
            await sig.request({"type": "publish", "stream_id": stream, "extra_info": ""})
            player = MediaPlayer(a.source, loop=True)
            pc.addTransceiver(player.audio, direction="sendonly")
        else:
            stream, kind = a.play, "play"
            say("play_request")
            t0 = time.monotonic()
            await sig.request({"type": "play", "stream_id": stream})
            await sig.wait_event(lambda m: m.get("type") == "play_update" and m.get("available"), 20)
            pc.addTransceiver("audio", direction="recvonly")
            if a.record_from_request:
                recorder = WindowRecorder(a.record, t0, a.duration)
                recorder.addTrack = recorder.add_track
            else:
                recorder = MediaRecorder(a.record)

            @pc.on("track")
            def on_track(track):
                recorder.addTrack(track)

        await pc.setLocalDescription(await pc.createOffer())
        answer = await sig.request(
            {"type": "media_offer", "stream_id": stream, "kind": kind, "sdp": pc.localDescription.sdp}
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        if recorder and not a.record_from_request:
            await recorder.start()
        await sig.wait_event(lambda m: m.get("type") == "media_state" and m.get("state") == "connected", 20)
        say("media_connected", kind=kind)
        if a.record_from_request:
            await asyncio.sleep(max(0.0, a.duration - (time.monotonic() - t0)))
        else:
            await asyncio.sleep(a.duration)
        if recorder:
            await recorder.stop()
        await pc.close()
        pings.cancel()
        await sig.request({"type": "logout"})
        say("logout")


asyncio.run(main())
