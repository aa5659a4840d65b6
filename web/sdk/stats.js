// @ts-check
/** @module huddle/stats — reading a peer connection's statistics, and the quality tick (functions of the engine). */

import { LEVEL_NAMES, QUALITY, QualityLevel, qualityLevelOf, remoteLevels } from "./quality.js";

/** @typedef {import("./types.js").StreamStats} StreamStats */
/** @typedef {import("./types.js").TrackStats} TrackStats */

/**
 * The shortest span a rate (bitrate, loss rate) is measured over. Several callers read one
 * stream's statistics (the quality tick every second, the app's own timer): a call sooner than
 * this after the sample that `last` holds gives that sample's rates again instead of a rate over
 * a few milliseconds, which Chromium's cached report (the same counters within ~50 ms) turns
 * into 0 kbit/s for as long as two one-second timers keep their phase.
 */
const MIN_RATE_WINDOW_MS = 500;

/**
 * A stream's statistics (`HuddleEngine.getStats`): bitrate, loss, RTT and jitter per kind, since
 * the sample that `last` holds, taken at least `MIN_RATE_WINDOW_MS` before (the first call gives
 * bitrate 0).
 * @param {RTCPeerConnection} pc
 * @param {Map<string, any>} last
 * @param {"publish" | "play"} direction
 * @param {string} streamId
 * @returns {Promise<StreamStats>}
 */
export async function streamStats(pc, last, direction, streamId) {
  const report = await pc.getStats();
  /** @type {Map<string, any>} */
  const byId = new Map();
  report.forEach((r) => byId.set(r.id, r));
  let rttMs = 0;
  for (const r of byId.values()) {
    if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded" && r.currentRoundTripTime !== undefined) {
      rttMs = r.currentRoundTripTime * 1000;
    }
  }
  const now = performance.now();
  /** @type {{audio: TrackStats | null, video: TrackStats | null}} */
  const out = { audio: null, video: null };
  for (const r of byId.values()) {
    const wanted = direction === "publish" ? "outbound-rtp" : "inbound-rtp";
    if (r.type !== wanted || (r.kind !== "audio" && r.kind !== "video")) continue;
    const bytes = direction === "publish" ? r.bytesSent ?? 0 : r.bytesReceived ?? 0;
    const packets = direction === "publish" ? r.packetsSent ?? 0 : r.packetsReceived ?? 0;
    const prev = last.get(r.kind);
    // Too soon after the sample: its rates again, and the sample stays for the next call.
    const reuse = prev && now - prev.t < MIN_RATE_WINDOW_MS;
    const bitrateKbps = reuse ? prev.bitrateKbps : prev && now > prev.t ? ((bytes - prev.bytes) * 8) / (now - prev.t) : 0;
    let packetsLost = 0;
    let lossRate = 0;
    let jitterMs = 0;
    let trackRtt = rttMs;
    if (direction === "play") {
      packetsLost = Math.max(0, r.packetsLost ?? 0);
      jitterMs = (r.jitter ?? 0) * 1000;
      const dLost = packetsLost - (prev?.lost ?? 0);
      const dRecv = packets - (prev?.packets ?? 0);
      lossRate = reuse ? prev.lossRate : dLost + dRecv > 0 ? Math.max(0, dLost) / (dLost + dRecv) : 0;
    } else {
      const remote = r.remoteId ? byId.get(r.remoteId) : undefined;
      if (remote) {
        packetsLost = Math.max(0, remote.packetsLost ?? 0);
        lossRate = remote.fractionLost ?? 0;
        jitterMs = (remote.jitter ?? 0) * 1000;
        if (remote.roundTripTime !== undefined) trackRtt = remote.roundTripTime * 1000;
      }
    }
    if (!reuse) last.set(r.kind, { t: now, bytes, packets, lost: packetsLost, bitrateKbps, lossRate });
    const codec = r.codecId ? byId.get(r.codecId)?.mimeType ?? "" : "";
    /** @type {TrackStats} */
    const ts = { bitrateKbps, packets, packetsLost, lossRate, jitterMs, rttMs: trackRtt, codec };
    if (r.kind === "video") {
      ts.frameWidth = r.frameWidth ?? 0;
      ts.frameHeight = r.frameHeight ?? 0;
      ts.fps = r.framesPerSecond ?? 0;
    }
    out[/** @type {"audio" | "video"} */ (r.kind)] = ts;
  }
  return { streamID: streamId, direction, connectionState: pc.connectionState, ...out };
}

/**
 * Once a second: every 3 s `publishQualityUpdate` / `playQualityUpdate`, every 2 s
 * `networkQuality` for this user ("" as ZEGO's) and each other user that reports, and this
 * user's levels to the server (`network_quality`). This user's levels are DIE when nothing
 * arrived (signaling, or media on a played stream) for 3 s.
 * @param {import("./engine.js").HuddleEngine} engine
 */
export async function qualityTick(engine) {
  const room = engine._room;
  if (!room || room.phase === "done") {
    clearInterval(engine._qualityTimer);
    engine._qualityTimer = null;
    engine._remoteQuality.clear();
    return;
  }
  engine._qualityTicks++;
  const now = Date.now();
  const streamTick = engine._qualityTicks % (QUALITY.streamIntervalMs / 1000) === 0;
  const networkTick = engine._qualityTicks % (QUALITY.networkIntervalMs / 1000) === 0;
  /** @type {number} */
  let up = QualityLevel.UNKNOWN;
  /** @type {number} */
  let down = QualityLevel.UNKNOWN;
  let lastRx = room.lastRx ?? 0;
  for (const id of engine._publishers.keys()) {
    const s = await engine.getStats(id).catch(() => null);
    const a = s?.audio;
    if (!a) continue;
    const level = qualityLevelOf(a.lossRate ?? 0, a.rttMs ?? 0, a.jitterMs ?? 0);
    up = level;
    if (streamTick) {
      engine._emit("publishQualityUpdate", id, { rtt: a.rttMs ?? 0, packetLostRate: a.lossRate ?? 0, jitter: a.jitterMs ?? 0, audioKBPS: a.bitrateKbps ?? 0, videoKBPS: s.video?.bitrateKbps ?? 0, level });
    }
  }
  for (const [id, p] of engine._players) {
    const s = await engine.getStats(id).catch(() => null);
    const a = s?.audio;
    if (!a) continue;
    if ((a.bitrateKbps ?? 0) > 0) p.qualityRx = now;
    lastRx = Math.max(lastRx, p.qualityRx ?? 0);
    const dead = now - (p.qualityRx ?? now) >= QUALITY.dieAfterMs;
    const level = dead ? QualityLevel.DIE : qualityLevelOf(a.lossRate ?? 0, a.rttMs ?? 0, a.jitterMs ?? 0);
    if (!dead) down = down === QualityLevel.UNKNOWN ? level : Math.max(down, level);
    if (streamTick) {
      engine._emit("playQualityUpdate", id, { rtt: a.rttMs ?? 0, packetLostRate: a.lossRate ?? 0, jitter: a.jitterMs ?? 0, audioKBPS: a.bitrateKbps ?? 0, videoKBPS: s.video?.bitrateKbps ?? 0, level });
    }
  }
  const active = engine._publishers.size > 0 || engine._players.size > 0;
  const dead = active && now - lastRx >= QUALITY.dieAfterMs;
  if (dead) [up, down] = [QualityLevel.DIE, QualityLevel.DIE];
  const changed = dead !== engine._ownDead;
  engine._ownDead = dead;
  if (active && (networkTick || changed)) {
    engine._emit("networkQuality", "", up, down);
    if (!dead && room.phase === "online") {
      engine._request({ type: "network_quality", upstream: LEVEL_NAMES[up], downstream: LEVEL_NAMES[down] }).catch(() => {});
    }
  }
  if (networkTick) {
    for (const [user, r] of [...engine._remoteQuality]) {
      const [u, d] = remoteLevels(r, now);
      engine._emit("networkQuality", user, u, d);
      if (u === QualityLevel.DIE) engine._remoteQuality.delete(user);
    }
  }
}
