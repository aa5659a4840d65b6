// @ts-check
/** @module huddle/levels — sound levels, voice activity and active speakers (the Rust SDK's rules). */

/** The sound-level monitor's state (`startSoundLevelMonitor`). @typedef {{ millisecond: number, enableVAD: boolean, context: AudioContext, elapsed: number, timer: any, speakers: ActiveSpeakers, meters: Map<string, { stream: MediaStream, meter: SoundLevelMeter, vad: VoiceActivity, peak: number, streamID: string, type: "push" | "pull" }> }} LevelMonitor */

/** The monitor's frame: levels and voice are measured every 20 ms, as in the Rust SDK. */
export const LEVEL_FRAME_MS = 20;

/**
 * The level (0–100) of a signal at `dbfs` RMS: -60 dBFS → 0, 0 dBFS → 100, linear in dB (the
 * Rust SDK's `huddle_media::level_from_dbfs`).
 * @param {number} dbfs
 */
export function levelFromDbfs(dbfs) {
  if (!Number.isFinite(dbfs)) return 0;
  return Math.max(0, Math.min(100, ((dbfs + 60) / 60) * 100));
}

/**
 * Voice activity from a 20 ms frame's RMS (dBFS) and the share of its energy in the speech band
 * (300–3400 Hz): the Rust SDK's rules without its neural model (none runs in the page). A frame
 * is voiced when it is above -55 dBFS, holds at least half its energy in the speech band (white
 * noise holds 13 %, a hum or a high tone none) and the last 480 ms rose and fell by 9 dB or more
 * (speech's syllables; a steady noise does not); speech starts after two voiced frames and ends
 * 320 ms after the last.
 */
export class VoiceActivity {
  constructor() {
    /** @type {number[]} */
    this._energies = [];
    this._run = 0;
    this._hangover = 0;
    this.speaking = false;
  }

  /**
   * One frame; returns whether the signal holds voice now.
   * @param {number} dbfs @param {number} speechBand 0–1 @param {number} ms
   */
  push(dbfs, speechBand, ms) {
    this._energies.push(Math.max(dbfs, -100));
    if (this._energies.length > 480 / ms) this._energies.shift();
    const modulated = Math.max(...this._energies) - Math.min(...this._energies) >= 9;
    const voiced = dbfs >= -55 && speechBand >= 0.5 && modulated;
    if (voiced) {
      this._run++;
      if (this._run >= 2 || this.speaking) {
        this.speaking = true;
        this._hangover = 320;
      }
    } else {
      this._run = 0;
      this._hangover = Math.max(0, this._hangover - ms);
      if (this._hangover === 0) this.speaking = false;
    }
    return this.speaking;
  }
}

/**
 * The active speakers, as the Rust SDK's: streams with voice for 200 ms join, 600 ms without
 * leave, loudest first (a speaker overtakes the one before only when louder by 6 points,
 * smoothed over ~400 ms); at most 3. `update` returns the new list when it changed.
 */
export class ActiveSpeakers {
  constructor() {
    /** @type {Map<string, { smoothed: number, voicedMs: number, quietMs: number }>} */
    this._state = new Map();
    /** @type {string[]} */
    this._order = [];
    /** @type {string[]} */
    this._reported = [];
  }

  /**
   * @param {[string, number, boolean][]} heard Each stream's frame: ID, level, voice.
   * @param {number} ms
   * @returns {string[] | null}
   */
  update(heard, ms) {
    const ids = new Set(heard.map((h) => h[0]));
    for (const id of [...this._state.keys()]) if (!ids.has(id)) this._state.delete(id);
    for (const [id, level, vad] of heard) {
      let s = this._state.get(id);
      if (!s) this._state.set(id, (s = { smoothed: 0, voicedMs: 0, quietMs: 0 }));
      s.smoothed += (level - s.smoothed) * (ms / 400);
      if (vad) {
        s.voicedMs += ms;
        s.quietMs = 0;
      } else {
        s.quietMs += ms;
        if (s.quietMs >= 600) s.voicedMs = 0;
      }
    }
    this._order = this._order.filter((id) => (this._state.get(id)?.quietMs ?? Infinity) < 600);
    const joining = [...this._state].filter(([id, s]) => s.voicedMs >= 200 && s.quietMs === 0 && !this._order.includes(id)).map(([id]) => id);
    this._order.push(...joining.sort());
    /** @param {string} id */
    const level = (id) => this._state.get(id)?.smoothed ?? 0;
    for (let pass = 0; pass < this._order.length; pass++) {
      let swapped = false;
      for (let i = 1; i < this._order.length; i++) {
        if (level(this._order[i]) > level(this._order[i - 1]) + 6) {
          [this._order[i - 1], this._order[i]] = [this._order[i], this._order[i - 1]];
          swapped = true;
        }
      }
      if (!swapped) break;
    }
    const now = this._order.slice(0, 3);
    if (now.length === this._reported.length && now.every((id, i) => id === this._reported[i])) return null;
    this._reported = now;
    return [...now];
  }
}

/**
 * The sound level of a MediaStream's audio, 0–100, from a WebAudio AnalyserNode (RMS over the
 * last ~20 ms, on a log scale: -60 dBFS → 0, 0 dBFS → 100). Remote streams must also be attached
 * to a media element (muted is enough) for Chromium to feed WebAudio: with `attach` the meter
 * does so itself.
 */
export class SoundLevelMeter {
  /**
   * @param {MediaStream} stream
   * @param {AudioContext} [context] A shared AudioContext (one is made otherwise).
   * @param {boolean} [attach] Attach the stream to a muted media element of the meter's own.
   */
  constructor(stream, context, attach = false) {
    this.context = context ?? new AudioContext();
    this._own = !context;
    this.source = this.context.createMediaStreamSource(stream);
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.analyser.smoothingTimeConstant = 0;
    this.source.connect(this.analyser);
    this._buf = new Float32Array(this.analyser.fftSize);
    this._freq = new Float32Array(this.analyser.frequencyBinCount);
    /** @type {HTMLAudioElement | null} */
    this._element = null;
    if (attach) {
      this._element = new Audio();
      this._element.muted = true;
      this._element.srcObject = stream;
      this._element.play().catch(() => {});
    }
  }

  /**
   * The last ~20 ms: level (0–100), RMS in dBFS and the share of the energy in the speech band
   * (300–3400 Hz).
   */
  sample() {
    this.analyser.getFloatTimeDomainData(this._buf);
    let sum = 0;
    for (const v of this._buf) sum += v * v;
    const dbfs = 10 * Math.log10(sum / this._buf.length + 1e-12);
    this.analyser.getFloatFrequencyData(this._freq);
    const binHz = this.context.sampleRate / this.analyser.fftSize;
    let band = 0;
    let total = 0;
    for (let i = 1; i < this._freq.length; i++) {
      const e = 10 ** (this._freq[i] / 10);
      total += e;
      if (i * binHz >= 300 && i * binHz <= 3400) band += e;
    }
    return { level: levelFromDbfs(dbfs), dbfs, speechBand: total > 0 ? band / total : 0 };
  }

  /** The RMS of the last block, linear (0–1). */
  rms() {
    this.analyser.getFloatTimeDomainData(this._buf);
    let sum = 0;
    for (const v of this._buf) sum += v * v;
    return Math.sqrt(sum / this._buf.length);
  }

  /** The level, 0–100. */
  level() {
    const rms = this.rms();
    if (rms <= 0) return 0;
    const db = 20 * Math.log10(rms);
    return Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  }

  close() {
    try {
      this.source.disconnect();
    } catch {
      // already disconnected
    }
    if (this._element) this._element.srcObject = null;
    if (this._own) this.context.close().catch(() => {});
  }
}
