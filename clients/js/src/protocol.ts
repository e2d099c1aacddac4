/**
 * The shardcast wire protocol as TypeScript types and constants: the frames a
 * client and the gateway exchange, the error codes, the close codes with their
 * reconnect advice, the `retry_ms=<n>` close-reason hint and the channel-name
 * rules. This mirrors `proto/src/lib.rs` and `proto/src/close.rs` in the
 * repository (the executable definition); `proto/vectors/` pins both down and
 * the unit tests run every vector through this package.
 */

/** Protocol version carried by the subprotocol names and the welcome frame. */
export const PROTOCOL_VERSION = 1;

/** How frames are encoded on one connection, chosen once by WebSocket subprotocol. */
export type Encoding = 'json' | 'msgpack';

/** The `Sec-WebSocket-Protocol` token that selects each encoding. */
export const SUBPROTOCOLS: Readonly<Record<Encoding, string>> = Object.freeze({
  json: 'shardcast.v1.json',
  msgpack: 'shardcast.v1.msgpack',
});

/**
 * Machine-readable error codes carried by `error` frames. `unknown` stands for
 * a code this version of the client does not know (sent by a newer gateway).
 */
export type ErrorCode =
  | 'bad_request'
  | 'unknown_op'
  | 'bad_channel'
  | 'too_many_channels'
  | 'not_subscribed'
  | 'forbidden'
  | 'payload_too_large'
  | 'unavailable'
  | 'internal'
  | 'unauthorized'
  | 'permission_denied'
  | 'rate_limited'
  | 'no_history'
  | 'timeout'
  | 'unknown';

/** Every error code this client knows, in the order the protocol lists them. */
export const ERROR_CODES: readonly ErrorCode[] = Object.freeze([
  'bad_request',
  'unknown_op',
  'bad_channel',
  'too_many_channels',
  'not_subscribed',
  'forbidden',
  'payload_too_large',
  'unavailable',
  'internal',
  'unauthorized',
  'permission_denied',
  'rate_limited',
  'no_history',
  'timeout',
  'unknown',
]);

/** Maps a wire error code to a known one; codes from a newer gateway become `unknown`. */
export function toErrorCode(code: unknown): ErrorCode {
  return typeof code === 'string' && (ERROR_CODES as readonly string[]).includes(code)
    ? (code as ErrorCode)
    : 'unknown';
}

/**
 * A place in a channel's history (PROTOCOL.md 19.2): an offset within an epoch.
 * Offsets of different epochs cannot be compared.
 */
export interface StreamPosition {
  /** The offset of a publication; 0 is before the channel's first. */
  offset: number;
  /** The epoch (one unbroken history of the channel) the offset belongs to. */
  epoch: string;
}

/** Start receiving `message` frames of a channel; answered by `ack` or `error`. */
export interface SubscribeFrame {
  op: 'subscribe';
  id?: number;
  channel: string;
  /** A subscription token, for a channel the connection's own token does not grant (PROTOCOL.md 18.4). */
  token?: string;
  /** Recover the publications after this position (PROTOCOL.md 19.3). */
  recover?: StreamPosition;
  /** Deliver the channel's latest publication at once, after the ack (a state channel). */
  latest?: boolean;
}

/** Stop receiving a channel; answered by `ack` or `error`. */
export interface UnsubscribeFrame {
  op: 'unsubscribe';
  id?: number;
  channel: string;
}

/** Publish `data` to a channel, where the gateway allows client publishing. */
export interface PublishFrame {
  op: 'publish';
  id?: number;
  channel: string;
  data: unknown;
  /** Publish at most once per key within the history TTL (PROTOCOL.md 19.9). */
  idempotency_key?: string;
}

/** Reads a channel's history; answered by a `history` frame (PROTOCOL.md 19.6). */
export interface HistoryRequestFrame {
  op: 'history';
  id?: number;
  channel: string;
  /** Publications after this position; without it, the latest ones. */
  since?: StreamPosition;
  /** At most this many publications (the gateway's default and maximum: its `recover_max`). */
  limit?: number;
}

/**
 * Reads a channel's presence; answered by a `presence` frame (PROTOCOL.md 21; a
 * gateway older than presence answers `unknown_op`).
 */
export interface PresenceRequestFrame {
  op: 'presence';
  id?: number;
  channel: string;
}

/** Application-level heartbeat (browsers cannot see WebSocket pings); answered by `pong`. */
export interface PingFrame {
  op: 'ping';
  id?: number;
}

/** Authenticates the connection; the client's first frame, answered by a `welcome` carrying its `id`. */
export interface ConnectFrame {
  op: 'connect';
  id?: number;
  /** The connection token (a JWT). */
  token: string;
  /** The client library's name, for the gateway's logs. */
  name?: string;
  /** The client library's version, for the gateway's logs. */
  version?: string;
}

/** Replaces the connection's token before it expires; answered by an `ack` with the new `expires_at`. */
export interface RefreshFrame {
  op: 'refresh';
  id?: number;
  token: string;
}

/** Replaces a channel's subscription token before it expires; answered by an `ack` with the new `expires_at`. */
export interface SubRefreshFrame {
  op: 'sub_refresh';
  id?: number;
  channel: string;
  token: string;
}

/** A request from the client to the gateway. */
export type ClientFrame =
  | SubscribeFrame
  | UnsubscribeFrame
  | PublishFrame
  | HistoryRequestFrame
  | PresenceRequestFrame
  | PingFrame
  | ConnectFrame
  | RefreshFrame
  | SubRefreshFrame;

/** First frame on every connection. */
export interface WelcomeFrame {
  type: 'welcome';
  /** Protocol version the gateway speaks on this connection. */
  version: number;
  /** The gateway instance's id (stable for the process's life). */
  node: string;
  /** Which shard (core) of that instance owns this connection. */
  shard: number;
  /** How often the gateway pings, so a client can size its own dead-peer timeout. */
  ping_interval_ms: number;
  /** The `connect` request's id, when this welcome answers one. */
  id?: number;
  /** The connection's user (the token's `sub`); absent for an anonymous connection. */
  user?: string;
  /** When the connection's token expires, in seconds since the Unix epoch; absent when it does not. */
  expires_at?: number;
}

/** A request succeeded. */
export interface AckFrame {
  type: 'ack';
  id?: number;
  /** In the answer to `refresh` and `sub_refresh`: when the new token expires, in seconds since the Unix epoch. */
  expires_at?: number;
  /**
   * On a channel with history: in the answer to `subscribe`, the top offset (the last
   * publication the subscription does not deliver live); to `publish`, the publication's offset.
   */
  offset?: number;
  /** With `offset`: the channel's epoch. */
  epoch?: string;
  /** In the answer to a `subscribe` with `recover`: whether every publication after that position follows. */
  recovered?: boolean;
  /** In the answer to a `publish`: its idempotency key was used already, so nothing was published again. */
  duplicate?: boolean;
}

/** A request failed; the connection stays open. */
export interface ErrorFrame {
  type: 'error';
  id?: number;
  code: ErrorCode;
  message: string;
}

/** Reply to a client `ping`. */
export interface PongFrame {
  type: 'pong';
  id?: number;
}

/** A publication on a subscribed channel. */
export interface MessageFrame {
  type: 'message';
  channel: string;
  /** Per channel and gateway instance, +1 for each publication delivered live; 0 for one delivered from history. */
  seq: number;
  /** On a channel with history: the publication's offset (PROTOCOL.md 19.2). */
  offset?: number;
  /** With `offset`: the channel's epoch. */
  epoch?: string;
  data: unknown;
}

/**
 * Why history could not cover a loss (PROTOCOL.md 19.5): the channel keeps no
 * history, the store lost it (a new epoch), too much was missed, or the store
 * could not be read. `unknown` stands for a newer gateway's reason.
 */
export type GapReason = 'no_history' | 'epoch_changed' | 'too_far' | 'unavailable' | 'unknown';

/** Maps a wire gap reason to a known one; reasons from a newer gateway become `unknown`. */
export function toGapReason(reason: unknown): GapReason {
  return reason === 'no_history' || reason === 'epoch_changed' || reason === 'too_far' || reason === 'unavailable'
    ? reason
    : 'unknown';
}

/**
 * Publications of a subscribed channel may have been missed just before this frame,
 * on an open connection (the gateway lost its Redis subscription for a while; see
 * PROTOCOL.md 9.3). A client that must not miss messages re-reads its source of truth.
 */
export interface GapFrame {
  type: 'gap';
  channel: string;
  /** Why history could not cover the loss; absent from gateways without history. */
  reason?: GapReason;
}

/** One publication read from history. */
export interface HistoryPublication {
  /** Its offset. */
  offset: number;
  /** The payload. */
  data: unknown;
}

/** The answer to a `history` request (PROTOCOL.md 19.6). */
export interface HistoryFrame {
  type: 'history';
  id?: number;
  channel: string;
  /** The channel's top offset. */
  offset: number;
  /** The channel's epoch. */
  epoch: string;
  /** The publications, in offset order. */
  publications: HistoryPublication[];
  /** Whether they reach from the requested position (or the oldest retained one) to the top with no hole, within the limit. */
  complete: boolean;
}

/**
 * Why the gateway ended a subscription: its subscription token expired, or the
 * connection may no longer hold the channel. `unknown` stands for a newer gateway's code.
 */
export type UnsubscribeCode = 'token_expired' | 'permission_denied' | 'unknown';

/** The gateway ended one subscription; the connection and its other subscriptions go on. */
export interface UnsubscribedFrame {
  type: 'unsubscribed';
  channel: string;
  code: UnsubscribeCode;
  message: string;
}

/** One member of a channel's presence: a user, however many connections it has (PROTOCOL.md 21). */
export interface PresenceMember {
  /** The user id (its token's `sub`). */
  user: string;
  /** What its connection's token says of it (the `info` claim), or null. */
  info: unknown;
}

/** The answer to a `presence` request (PROTOCOL.md 21). */
export interface PresenceFrame {
  type: 'presence';
  id?: number;
  channel: string;
  /** How many members the channel has. */
  count: number;
  /** Its members, at most the channel's limit. */
  members: PresenceMember[];
}

/** A user became a member of a channel with presence (PROTOCOL.md 21). */
export interface JoinFrame {
  type: 'join';
  channel: string;
  user: string;
  info: unknown;
}

/** A user stopped being a member (PROTOCOL.md 21). */
export interface LeaveFrame {
  type: 'leave';
  channel: string;
  user: string;
}

/** A frame the gateway sends. */
export type ServerFrame =
  | WelcomeFrame
  | AckFrame
  | ErrorFrame
  | PongFrame
  | MessageFrame
  | GapFrame
  | HistoryFrame
  | PresenceFrame
  | JoinFrame
  | LeaveFrame
  | UnsubscribedFrame;

/** The frames that answer a request: `ack`, `pong`, `history`, `presence` or `error`. */
export type ReplyFrame = ServerFrame & { type: 'ack' | 'pong' | 'history' | 'presence' | 'error' };

/** WebSocket close codes the gateway sends (RFC 6455 meanings in 1000-1015, shardcast's own in 4000-4099). */
export const CloseCode = Object.freeze({
  /** Normal closure, after the client's own close. */
  NORMAL: 1000,
  /** The gateway is shutting down or draining: reconnect (to another instance) after the hint. */
  GOING_AWAY: 1001,
  /** The client broke RFC 6455 framing. */
  PROTOCOL_ERROR: 1002,
  /** No status code was present (reported locally, never sent). */
  NO_STATUS: 1005,
  /** The connection dropped without a close frame (reported locally, never sent). */
  ABNORMAL: 1006,
  /** A text frame that is not valid UTF-8. */
  INVALID_PAYLOAD: 1007,
  /** Policy violation (for example an auth failure); do not reconnect without a change. */
  POLICY_VIOLATION: 1008,
  /** A client message above the gateway's maximum message size. */
  MESSAGE_TOO_BIG: 1009,
  /** An unexpected failure on the gateway; reconnect with backoff. */
  INTERNAL_ERROR: 1011,
  /** The gateway is overloaded; reconnect with backoff, no sooner than the hint. */
  TRY_AGAIN_LATER: 1013,
  /** The client did not read fast enough and its outbound queue overflowed. */
  SLOW_CONSUMER: 4000,
  /** Nothing was received from the client within the gateway's idle timeout. */
  IDLE_TIMEOUT: 4001,
  /** The connection's token expired without a `refresh`: reconnect with a new token. */
  TOKEN_EXPIRED: 4002,
  /** No token where one is required, or the token was refused: do not reconnect with the same token. */
  UNAUTHORIZED: 4003,
  /** An operator disconnected this user: do not reconnect. */
  DISCONNECTED: 4004,
  /** The user already holds the maximum number of connections: reconnect with backoff. */
  TOO_MANY_CONNECTIONS: 4005,
} as const);

/** Whether a client should reconnect automatically after this close code (`should_reconnect` in proto/src/close.rs). */
export function shouldReconnect(code: number): boolean {
  return !(
    code === CloseCode.POLICY_VIOLATION ||
    code === CloseCode.PROTOCOL_ERROR ||
    code === CloseCode.INVALID_PAYLOAD ||
    code === CloseCode.MESSAGE_TOO_BIG ||
    code === CloseCode.UNAUTHORIZED ||
    code === CloseCode.DISCONNECTED
  );
}

/**
 * Reads the retry hint (`...; retry_ms=<n>`) out of a close reason: the earliest
 * moment, in milliseconds, at which the client should reconnect. `undefined` when
 * the reason carries none.
 */
export function parseRetryMs(reason: string | undefined | null): number | undefined {
  if (!reason) return undefined;
  // Same rule as the gateway's parser: the text after the last `retry_ms=`, trimmed, must be a whole number.
  const at = reason.lastIndexOf('retry_ms=');
  if (at < 0) return undefined;
  const tail = reason.slice(at + 'retry_ms='.length).trim();
  if (!/^\d+$/.test(tail)) return undefined;
  const value = Number(tail);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** The gateway's default maximum size of one client message, in bytes (`--max-message-bytes`). */
export const DEFAULT_MAX_MESSAGE_BYTES = 65_536;

/** Default and recommended maximum channel-name length in bytes. */
export const DEFAULT_MAX_CHANNEL_LENGTH = 128;

/** Why a channel name is refused by {@link validateChannel}. */
export type ChannelNameProblem = 'empty' | 'too_long' | 'bad_character';

// `#` (the user boundary of PROTOCOL.md 18.3) is allowed anywhere but first.
const CHANNEL_CHARSET = /^[A-Za-z0-9_.:@/=+-][A-Za-z0-9_.:@/=+#-]*$/;

/**
 * Checks a channel name against the protocol's charset (`[A-Za-z0-9_.:@/=+#-]`,
 * not starting with `#`) and a length limit in bytes; returns what is wrong, or `undefined` if the
 * name is valid. The gateway's limit is configurable, so the client only
 * enforces a length when asked to.
 */
export function validateChannel(
  name: string,
  maxLength: number = DEFAULT_MAX_CHANNEL_LENGTH,
): ChannelNameProblem | undefined {
  if (name.length === 0) return 'empty';
  // The gateway checks the length first and counts UTF-8 bytes; doing the same makes
  // the reported problem match the gateway's for non-ASCII names too.
  if (utf8Length(name) > maxLength) return 'too_long';
  if (!CHANNEL_CHARSET.test(name)) return 'bad_character';
  return undefined;
}

/** The length of a string in UTF-8 bytes. */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      // A surrogate pair is one code point of four bytes.
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/** The longest idempotency key (PROTOCOL.md 19.9). */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 64;

/** Whether an idempotency key has the shape PROTOCOL.md 19.9 allows: 1 to 64 characters of `[A-Za-z0-9_.:-]`. */
export function isValidIdempotencyKey(key: string): boolean {
  return key.length > 0 && key.length <= MAX_IDEMPOTENCY_KEY_LENGTH && /^[A-Za-z0-9_.:-]+$/.test(key);
}
