// @ts-check
/** @module huddle/pc — peer-connection helpers: ICE gathering without trickle, codec preference, closing. */


/**
 * Waits until the peer connection has gathered its candidates (no trickle), or `ms` passed.
 * Without STUN/TURN servers only host candidates exist, and the server (ICE-lite, UDP) can use
 * only UDP ones: Chromium gathers those at once but its TCP candidates (useless here) only
 * ~120 ms later, so the wait ends `settleMs` after the last UDP host candidate instead.
 * @param {RTCPeerConnection} pc
 * @param {number} ms
 * @param {number | null} settleMs null: wait for the end of gathering
 */
export function gathered(pc, ms, settleMs = null) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    /** @type {any} */
    let settle = null;
    const done = () => {
      clearTimeout(timer);
      clearTimeout(settle);
      pc.removeEventListener("icegatheringstatechange", check);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve(undefined);
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    /** @param {RTCPeerConnectionIceEvent} e */
    const onCandidate = (e) => {
      if (!e.candidate) return done();
      if (settleMs !== null && / udp /i.test(` ${e.candidate.candidate} `)) {
        clearTimeout(settle);
        settle = setTimeout(done, settleMs);
      }
    };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
    pc.addEventListener("icecandidate", onCandidate);
    // Candidates gathered before the listener was added count too.
    if (settleMs !== null && / udp /i.test(pc.localDescription?.sdp ?? "")) settle = setTimeout(done, settleMs);
  });
}

/**
 * Puts VP8 first in a video transceiver's codec list (what the server forwards).
 * @param {RTCRtpTransceiver} t
 */
export function preferVp8(t) {
  try {
    const caps = RTCRtpReceiver.getCapabilities?.("video") ?? RTCRtpSender.getCapabilities?.("video");
    if (!caps || typeof t.setCodecPreferences !== "function") return;
    const vp8 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === "video/vp8");
    const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== "video/vp8");
    if (vp8.length) t.setCodecPreferences([...vp8, ...rest]);
  } catch {
    // Not fatal: the server answers with what it supports.
  }
}

/**
 * The Opus bitrate a browser publisher sends at: the Rust SDK's default preset
 * (`AudioConfigPreset::StandardQuality`, crates/huddle-media/src/adapt.rs), as the hosted SDKs'
 * voice presets. Chromium's encoder otherwise sends 32 kbit/s, and under loss it spends part of
 * that on Opus in-band FEC (its loss hint follows the server's receiver reports): offline, the
 * interop speech scores wideband PESQ 3.17 at 32 kbit/s with a 20 % hint, 3.76 at 48 kbit/s
 * (docs/quality.md, "Chromium's encoder under loss").
 */
export const OPUS_SEND_BITRATE = 48000;

/**
 * The server's answer to a publish offer with Opus's `maxaveragebitrate` (RFC 7587) set to
 * `bps` in every audio section, unless the answer sets one: libwebrtc takes the send
 * encoder's bitrate from the answer's Opus format parameters (there is no API for it: an
 * encoding's `maxBitrate` only lowers it).
 * @param {string} sdp
 * @param {number} bps
 */
export function withOpusBitrate(sdp, bps) {
  // Payload types are per media section: each section on its own.
  return sdp
    .split(/(?=^m=)/m)
    .map((section) => {
      const opus = new Set([...section.matchAll(/^a=rtpmap:(\d+) opus\/48000\/2\r?$/gim)].map((m) => m[1]));
      return section.replace(/^(a=fmtp:(\d+) )(.*?)(\r?)$/gm, (line, head, pt, params, cr) =>
        opus.has(pt) && !/maxaveragebitrate=/i.test(params) ? `${head}${params};maxaveragebitrate=${bps}${cr}` : line,
      );
    })
    .join("");
}

/** @param {RTCPeerConnection | null} pc */
export function closePc(pc) {
  if (!pc) return;
  pc.onconnectionstatechange = null;
  pc.ontrack = null;
  try {
    pc.close();
  } catch {
    // already closed
  }
}
