// @ts-check
/**
 * @module huddle/types — the public types of the SDK (JSDoc only: this module has no code).
 */

/**
 * @typedef {"DISCONNECTED" | "CONNECTING" | "CONNECTED"} RoomState
 * @typedef {"LOGINING" | "LOGINED" | "LOGIN_FAILED" | "RECONNECTING" | "RECONNECTED" | "RECONNECT_FAILED" | "KICKOUT" | "LOGOUT" | "LOGOUT_FAILED"} RoomStateChangedReason
 * @typedef {"NO_PUBLISH" | "PUBLISH_REQUESTING" | "PUBLISHING"} PublisherState
 * @typedef {"NO_PLAY" | "PLAY_REQUESTING" | "PLAYING"} PlayerState
 * @typedef {"ADD" | "DELETE"} UpdateType
 * @typedef {"OPEN" | "DISABLE" | "MUTE"} RemoteDeviceStatus
 * @typedef {{ userID: string, userName?: string }} User
 * @typedef {{ message: string, messageID: number, sendTime: number, fromUser: User }} BroadcastMessageInfo
 * @typedef {{ message: string, messageID: string, sendTime: number, fromUser: User }} BarrageMessageInfo
 * @typedef {{ key: string, value: string, updateUser: User, updateTime: number }} RoomExtraInfo
 * @typedef {{ errorCode: number, extendedData: string }} ServerResponse
 * @typedef {{ streamID: string, user: { userID: string, userName: string }, extraInfo: string }} StreamInfo
 * @typedef {{ streamID: string, state: PublisherState, errorCode: number, extendedData: string }} PublisherStateResult
 * @typedef {{ streamID: string, state: PlayerState, errorCode: number, extendedData: string }} PlayerStateResult
 * @typedef {{ userUpdate?: boolean, maxMemberCount?: number }} RoomConfig
 * @typedef {{ camera?: { audio?: boolean, video?: boolean, audioProcessing?: boolean, width?: number, height?: number, frameRate?: number } }} StreamSource
 * @typedef {{ bitrateKbps: number, packets: number, packetsLost: number, lossRate: number, jitterMs: number, rttMs: number, codec: string, frameWidth?: number, frameHeight?: number, fps?: number }} TrackStats
 * @typedef {{ streamID: string, direction: "publish" | "play", connectionState: string, audio: TrackStats | null, video: TrackStats | null }} StreamStats
 * @typedef {{ millisecond?: number, enableVAD?: boolean }} SoundLevelConfig
 * @typedef {{ streamID: string, soundLevel: number, type: "push" | "pull", vad: boolean }} SoundLevelInfo
 * @typedef {{ loginTimeoutMs?: number, attemptTimeoutMs?: number, reconnectBudgetMs?: number, retryDelayMinMs?: number, retryDelayMaxMs?: number, tokenWarningMs?: number, logoutTimeoutMs?: number, requestTimeoutMs?: number, iceGatheringTimeoutMs?: number, rtcConfiguration?: RTCConfiguration }} EngineOptions
 */

/**
 * The events of {@link HuddleEngine.on} and their listener arguments.
 * @typedef {{
 *   roomStateChanged: (roomID: string, reason: RoomStateChangedReason, errorCode: number, extendedData: string) => void,
 *   roomStateUpdate: (roomID: string, state: RoomState, errorCode: number, extendedData: string) => void,
 *   roomUserUpdate: (roomID: string, updateType: UpdateType, userList: User[]) => void,
 *   roomStreamUpdate: (roomID: string, updateType: UpdateType, streamList: StreamInfo[], extendedData: string) => void,
 *   publisherStateUpdate: (result: PublisherStateResult) => void,
 *   playerStateUpdate: (result: PlayerStateResult) => void,
 *   roomTokenWillExpire: (roomID: string, remainSecs: number) => void,
 *   IMRecvBroadcastMessage: (roomID: string, messageList: BroadcastMessageInfo[]) => void,
 *   IMRecvBarrageMessage: (roomID: string, messageList: BarrageMessageInfo[]) => void,
 *   IMRecvCustomCommand: (roomID: string, fromUser: User, command: string) => void,
 *   streamExtraInfoUpdate: (roomID: string, streamList: StreamInfo[]) => void,
 *   roomExtraInfoUpdate: (roomID: string, roomExtraInfoList: RoomExtraInfo[]) => void,
 *   roomOnlineUserCountUpdate: (roomID: string, count: number) => void,
 *   playerRecvAudioFirstFrame: (streamID: string) => void,
 *   playerRecvVideoFirstFrame: (streamID: string) => void,
 *   debugError: (errorCode: number, funcName: string, info: string) => void,
 *   remoteMicStatusUpdate: (streamID: string, status: RemoteDeviceStatus) => void,
 *   remoteCameraStatusUpdate: (streamID: string, status: RemoteDeviceStatus) => void,
 *   capturedSoundLevelUpdate: (soundLevel: number, vad: boolean) => void,
 *   soundLevelUpdate: (soundLevelList: SoundLevelInfo[]) => void,
 *   activeSpeakersChanged: (streamIDs: string[]) => void,
 *   publishQualityUpdate: (streamID: string, stats: { rtt: number, packetLostRate: number, jitter: number, audioKBPS: number, videoKBPS: number, level: number }) => void,
 *   playQualityUpdate: (streamID: string, stats: { rtt: number, packetLostRate: number, jitter: number, audioKBPS: number, videoKBPS: number, level: number }) => void,
 *   networkQuality: (userID: string, upstreamQuality: number, downstreamQuality: number) => void,
 * }} EventMap
 */

export {};
