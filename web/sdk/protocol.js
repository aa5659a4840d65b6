// @ts-check
/** @module huddle/protocol — the signaling protocol's version, URL, and the SDK's checks and conversions of its messages. */

import { ErrorCode, HuddleError } from "./errors.js";

/** @typedef {import("./types.js").RoomState} RoomState */
/** @typedef {import("./types.js").RoomStateChangedReason} RoomStateChangedReason */

/** The signaling protocol version this SDK speaks. */
export const PROTOCOL_VERSION = 1;

export const REASON_STATE = /** @type {Record<RoomStateChangedReason, RoomState>} */ ({
  LOGINING: "CONNECTING",
  LOGINED: "CONNECTED",
  LOGIN_FAILED: "DISCONNECTED",
  RECONNECTING: "CONNECTING",
  RECONNECTED: "CONNECTED",
  RECONNECT_FAILED: "DISCONNECTED",
  KICKOUT: "DISCONNECTED",
  LOGOUT: "DISCONNECTED",
  LOGOUT_FAILED: "DISCONNECTED",
});

export const STREAM_ID_RE = /^[0-9A-Za-z_-]+$/;

/**
 * Checks a message or custom command as the server does: 1 to 1024 bytes.
 * @param {string} text
 * @returns {string}
 */
export function checkImText(text) {
  const n = new TextEncoder().encode(text).length;
  if (n < 1 || n > 1024) throw new HuddleError(ErrorCode.IM_CONTENT_INVALID, `the text is ${n} bytes; 1 to 1024 are allowed`);
  return text;
}

/**
 * Checks a stream ID as the server does (the hosted SDKs' rules).
 * @param {string} streamId
 */
export function checkStreamId(streamId) {
  if (typeof streamId !== "string" || streamId.length === 0) {
    throw new HuddleError(ErrorCode.STREAM_ID_EMPTY, "the stream ID is empty");
  }
  if (new TextEncoder().encode(streamId).length > 256) {
    throw new HuddleError(ErrorCode.STREAM_ID_TOO_LONG, "the stream ID is longer than 256 bytes");
  }
  if (!STREAM_ID_RE.test(streamId)) {
    throw new HuddleError(ErrorCode.STREAM_ID_INVALID_CHARACTER, "the stream ID has characters other than [0-9A-Za-z_-]");
  }
}
/**
 * The signaling URL for a server address: `ws://host:port/ws` from `host:port`, `http://…`,
 * `ws://…` (with or without the path).
 * @param {string} serverUrl
 */
export function signalingUrl(serverUrl) {
  let s = String(serverUrl).trim();
  if (!/^[a-z]+:\/\//i.test(s)) s = `ws://${s}`;
  const u = new URL(s);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/ws";
  return u.toString();
}

/** @param {string} text */
export function extended(text) {
  return text ? JSON.stringify({ message: text }) : "";
}

/** @param {any} u */
export function userOut(u) {
  return { userID: u.user_id, userName: u.user_name };
}

/** @param {any} s */
export function streamOut(s) {
  return { streamID: s.stream_id, user: { userID: s.user_id, userName: s.user_name }, extraInfo: s.extra_info || "" };
}
