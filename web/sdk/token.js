// @ts-check
/** @module huddle/token — reading a Token04 token's clear-text header. */


/**
 * The expiry (Unix seconds) in a Token04 token's clear-text header: the first 8 bytes after
 * "04", base64-decoded, big-endian. `null` when the token is not in that format.
 * @param {string} token
 * @returns {number | null}
 */
export function tokenExpire(token) {
  if (typeof token !== "string" || !token.startsWith("04") || token.length < 14) return null;
  try {
    // 12 base64 characters decode to 9 bytes: enough for the 8-byte expiry.
    const bin = atob(token.slice(2, 14));
    let v = 0;
    for (let i = 0; i < 8; i++) v = v * 256 + bin.charCodeAt(i);
    return Number.isSafeInteger(v) ? v : null;
  } catch {
    return null;
  }
}
