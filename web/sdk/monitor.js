// @ts-check
/** @module huddle/monitor — the sound-level monitor's tick (`startSoundLevelMonitor`), a function of the engine. */

import { LEVEL_FRAME_MS, SoundLevelMeter, VoiceActivity } from "./levels.js";

/** @typedef {import("./types.js").SoundLevelInfo} SoundLevelInfo */

/**
 * Every 20 ms: each stream's level and voice; the events at the interval.
 * @param {import("./engine.js").HuddleEngine} engine
 */
export function levelTick(engine) {
  const m = engine._levels;
  if (!m) return;
  /** @type {[string, "push" | "pull", MediaStream][]} */
  const streams = [];
  for (const [id, pub] of engine._publishers) if (pub.stream?.getAudioTracks().length) streams.push([id, "push", pub.stream]);
  for (const [id, p] of engine._players) if (p.state === "PLAYING" && p.mediaStream.getAudioTracks().length) streams.push([id, "pull", p.mediaStream]);
  const keys = new Set(streams.map(([id, type]) => `${type}:${id}`));
  for (const [key, t] of m.meters) {
    if (!keys.has(key)) {
      t.meter.close();
      m.meters.delete(key);
    }
  }
  /** @type {[string, number, boolean][]} */
  const heard = [];
  for (const [id, type, stream] of streams) {
    const key = `${type}:${id}`;
    let t = m.meters.get(key);
    if (t && t.stream !== stream) {
      t.meter.close();
      t = undefined;
    }
    if (!t) {
      try {
        t = { stream, meter: new SoundLevelMeter(stream, m.context, type === "pull"), vad: new VoiceActivity(), peak: 0, streamID: id, type };
      } catch {
        continue;
      }
      m.meters.set(key, t);
    }
    const s = t.meter.sample();
    t.peak = Math.max(t.peak, s.level);
    const voiced = t.vad.push(s.dbfs, s.speechBand, LEVEL_FRAME_MS);
    heard.push([id, s.level, voiced]);
  }
  const speakers = m.speakers.update(heard, LEVEL_FRAME_MS);
  if (speakers) engine._emit("activeSpeakersChanged", speakers);
  m.elapsed += LEVEL_FRAME_MS;
  if (m.elapsed + LEVEL_FRAME_MS / 2 < m.millisecond) return;
  m.elapsed = Math.max(0, m.elapsed - m.millisecond);
  /** @type {SoundLevelInfo[]} */
  const list = [];
  for (const t of m.meters.values()) {
    list.push({ streamID: t.streamID, soundLevel: Math.round(t.peak * 10) / 10, type: t.type, vad: m.enableVAD && t.vad.speaking });
    t.peak = 0;
  }
  const captured = list.find((l) => l.type === "push");
  engine._emit("capturedSoundLevelUpdate", captured?.soundLevel ?? 0, captured?.vad ?? false);
  engine._emit("soundLevelUpdate", list);
}
