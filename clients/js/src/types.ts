/**
 * The client's public types: its options, its connection states, its events and
 * their payloads, and the subscription objects and handlers of `subscribe()`.
 * Types only, so every other module of the client can use them.
 */

import type { ReconnectOptions } from './backoff';
import type { Unsubscribe } from './emitter';
import type { ShardcastError } from './errors';
import type {
  Encoding,
  GapReason,
  HistoryPublication,
  PresenceMember,
  StreamPosition,
  UnsubscribeCode,
  WelcomeFrame,
} from './protocol';
import type { WebSocketConstructor } from './transport';

/** Where the client is in its life. */
export type ConnectionState =
  /** Created with `autoConnect: false` and `connect()` not called yet. */
  | 'idle'
  /** A WebSocket is being opened (or the token fetched); no welcome yet. */
  | 'connecting'
  /** The gateway's welcome arrived; requests can be sent. */
  | 'connected'
  /** The connection was lost; a timer will start the next attempt. */
  | 'reconnecting'
  /** Stopped: by `close()`, by a close code or HTTP refusal that forbids reconnecting, or after the last attempt. */
  | 'closed';

/** Returns a token, or nothing to go without one; may be async (fetch it from your backend). */
export type TokenProvider = () => string | null | undefined | Promise<string | null | undefined>;

/**
 * Returns the subscription token for a channel (PROTOCOL.md 18.4), or nothing
 * for a channel that needs none (one the connection token already grants).
 */
export type SubscriptionTokenProvider = (channel: string) => string | null | undefined | Promise<string | null | undefined>;

/**
 * Client-side heartbeat, for dead connections the platform has not noticed
 * (browsers cannot see WebSocket pings): after `intervalMs` with nothing received
 * the client sends an application `ping`; after `timeoutMs` more with still
 * nothing received it drops the connection and reconnects.
 */
export interface HeartbeatOptions {
  /** Quiet time before a ping, in milliseconds (default: the welcome's `ping_interval_ms`). */
  intervalMs?: number;
  /** Further quiet time after the ping before giving up, in milliseconds (default: the interval). */
  timeoutMs?: number;
}

/** Options of {@link ShardcastClient}. */
export interface ClientOptions {
  /** The gateway's WebSocket endpoint, e.g. `wss://rt.example.com/ws`. */
  url: string;
  /** Frame encoding (default `json`). */
  encoding?: Encoding;
  /** A WebSocket class to use instead of the platform's global one (required on Node.js before 22: pass the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /**
   * The connection token (a JWT from your backend, PROTOCOL.md 18.2), sent in a
   * `connect` frame, the first frame after the socket opens. A string is used for
   * the first connect (then `getToken`, if set, supplies new ones); a function is
   * called before every connect. Returning nothing connects anonymously.
   */
  token?: string | TokenProvider;
  /**
   * Fetches a new connection token: on connect when no usable token is held, before
   * the token expires (the client sends a `refresh` at 80-90 % of its lifetime, never
   * later than 10 s before expiry), and after the gateway closed with 4002 (token
   * expired), before reconnecting.
   */
  getToken?: TokenProvider;
  /**
   * Called before every subscribe the client sends (the first and each one after a
   * reconnect) and before a subscription token expires (for `sub_refresh`), with the
   * channel; returns that channel's subscription token, or nothing for a channel
   * that needs none.
   */
  getSubscriptionToken?: SubscriptionTokenProvider;
  /**
   * @deprecated Removed: the gateway refuses a token in the query string (HTTP 400),
   * so the token travels in a `connect` frame. Setting it throws a TypeError.
   */
  tokenParam?: string;
  /** Reconnect policy; `false` turns automatic reconnecting off. */
  reconnect?: boolean | Partial<ReconnectOptions>;
  /** Heartbeat settings; `false` turns the client-side heartbeat off. */
  heartbeat?: false | HeartbeatOptions;
  /** How long opening a socket may take until the welcome arrives, in milliseconds (default 10 000). */
  connectTimeoutMs?: number;
  /** How long `publish`, `unsubscribe`, `history`, `presence` and `ping` wait for their reply, in milliseconds (default 10 000). */
  requestTimeoutMs?: number;
  /**
   * The gateway's maximum message size in bytes (default 65 536, the gateway's
   * default). Larger publishes are refused locally: the gateway would close with
   * 1009, after which the client does not reconnect.
   */
  maxMessageBytes?: number;
  /** Connect from the constructor (default true); otherwise call {@link ShardcastClient.connect}. */
  autoConnect?: boolean;
  /** Source of randomness for the backoff jitter (tests pass a fixed one). */
  random?: () => number;
}

/** Details of a publication, passed to handlers next to its data. */
export interface ReceivedMessage<T = unknown> {
  /** The channel it was published on. */
  channel: string;
  /**
   * Per channel and gateway instance, +1 for each publication delivered live;
   * unrelated across connections; 0 for one recovered from history.
   */
  seq: number;
  /** On a channel with history: the publication's offset, strictly increasing within an epoch (PROTOCOL.md 19.2). */
  offset?: number;
  /** With `offset`: the channel's epoch. */
  epoch?: string;
  /** The published data. */
  data: T;
}

/**
 * The client could not keep a channel's stream whole: a re-subscribe after a
 * reconnect did not recover what was missed (`recovered: false`), or the gateway
 * sent a `gap`. Publications may have been missed: re-read the channel's state.
 */
export interface StaleEvent {
  /** The channel. */
  channel: string;
  /**
   * Why: `no_history` (the channel keeps none), `epoch_changed` (its history was
   * lost), `too_far` (more was missed than history holds or one recovery returns),
   * `unavailable` (the history store could not be read), `unknown` (a gap without a
   * reason, from a gateway that predates history, or a newer gateway's reason).
   */
  reason: GapReason;
  /** `recover`: a re-subscribe was answered `recovered: false`; `gap`: a `gap` frame on an open connection. */
  source: 'recover' | 'gap';
}

/** Options of {@link ShardcastClient.subscribe}. */
export interface SubscribeOptions {
  /**
   * A state channel: with history on the channel, its latest publication is
   * delivered at once after the subscribe (PROTOCOL.md 19.3). It takes effect when
   * the client sends the channel's subscribe, so not for a handler added to a
   * channel already subscribed; it is ignored when the client recovers instead.
   */
  latest?: boolean;
  /** Called, like the subscription's `stale` event, when publications of the channel may have been missed. */
  onStale?: (event: StaleEvent) => void;
}

/** Options of {@link ShardcastClient.publish}. */
export interface PublishOptions {
  /**
   * Publish at most once per key (PROTOCOL.md 19.9): 1 to 64 characters of
   * `[A-Za-z0-9_.:-]`, unique per publication. A retry with the same key, within the
   * gateway's history TTL, is not published again and resolves with `duplicate: true`.
   */
  idempotencyKey?: string;
}

/** What the gateway's ack of a publish says. */
export interface PublishResult {
  /** On a channel with history: the publication's offset. */
  offset?: number;
  /** With `offset`: the channel's epoch. */
  epoch?: string;
  /** The idempotency key was used already: nothing was published again, and `offset` is the first publish's. */
  duplicate: boolean;
}

/** Options of {@link ShardcastClient.history}. */
export interface HistoryOptions {
  /** Publications after this position (a message's `offset` and `epoch`); without it, the latest ones. */
  since?: StreamPosition;
  /** At most this many publications (the gateway's default and maximum is its `recover_max`). */
  limit?: number;
}

/** A channel's history, as the gateway's `history` frame gives it. */
export interface HistoryResult {
  /** The channel. */
  channel: string;
  /** The channel's top offset: its latest publication's, 0 when it has none. */
  offset: number;
  /** The channel's epoch. A `since` of another epoch returns no publications. */
  epoch: string;
  /** The publications, in offset order. */
  publications: HistoryPublication[];
  /** Whether they reach from `since` (or the oldest retained one) to the top with no hole, within `limit`. */
  complete: boolean;
}

/** A channel's members, as the gateway's `presence` frame gives them (PROTOCOL.md 21). */
export interface PresenceResult {
  /** The channel. */
  channel: string;
  /** How many members it has: exact up to 10 000 (a larger channel reports 10 000), however many `members` lists. */
  count: number;
  /** Its members (users, each once however many connections it has), at most the namespace's `presence_max`, in no particular order. */
  members: PresenceMember[];
}

/**
 * A user became a member of a subscribed channel with presence: its first
 * connection subscribed (PROTOCOL.md 21). Once per change, cluster-wide.
 */
export interface JoinEvent {
  /** The channel. */
  channel: string;
  /** The user id (its token's `sub`). */
  user: string;
  /** What the user's token says of it (the `info` claim), or null. */
  info: unknown;
}

/** A user stopped being a member of a subscribed channel with presence: its last connection left (PROTOCOL.md 21). */
export interface LeaveEvent {
  /** The channel. */
  channel: string;
  /** The user id. */
  user: string;
}

/** Called with every publication on a subscribed channel. */
export type MessageHandler<T = unknown> = (data: T, message: ReceivedMessage<T>) => void;

/** The events a client emits, with their payloads. */
export interface ClientEvents {
  /** Every state change. */
  state: { state: ConnectionState; previous: ConnectionState };
  /** A connect attempt starts; `attempt` is 0 for the first connect, n for the n-th retry. */
  connecting: { attempt: number };
  /** The gateway's welcome arrived. */
  connected: { welcome: WelcomeFrame; encoding: Encoding };
  /** A socket closed (or failed to open); `wasConnected` tells whether it had been welcomed. */
  disconnected: { code: number; reason: string; wasConnected: boolean; willReconnect: boolean };
  /** The next attempt is scheduled: retry number `attempt`, after `delayMs`. */
  reconnecting: { attempt: number; delayMs: number; code: number; reason: string; retryHintMs: number | undefined };
  /** The client stopped for good (until `connect()` is called again). */
  closed: { code: number | undefined; reason: string };
  /** A channel's subscription was acknowledged, the first time or again after a reconnect. */
  subscribed: {
    channel: string;
    resubscribed: boolean;
    /** Present when the subscribe carried `recover`: whether every missed publication follows (PROTOCOL.md 19.3). */
    recovered?: boolean;
  };
  /**
   * Publications of a subscribed channel may have been missed on this open
   * connection (PROTOCOL.md 9.3): re-read the source of truth if every message
   * matters. A `stale` event follows.
   */
  gap: { channel: string; reason?: GapReason };
  /**
   * Publications of a subscribed channel may have been missed and the client could
   * not recover them: a re-subscribe was answered `recovered: false`, or a `gap`
   * arrived (PROTOCOL.md 19.7). Refetch the channel's state.
   */
  stale: StaleEvent;
  /** The gateway ended a channel's subscription (its subscription token expired, or a permission was withdrawn). */
  unsubscribed: { channel: string; code: UnsubscribeCode; message: string };
  /**
   * A user joined a subscribed channel whose namespace has presence (PROTOCOL.md
   * 21); this connection's own user included. Not recovered after a reconnect:
   * read `presence()` again on the `subscribed` event that follows it.
   */
  join: JoinEvent;
  /** A user left a subscribed channel with presence (its last connection went); see `join`. */
  leave: LeaveEvent;
  /** The connection token was refreshed without reconnecting; `expiresAt` is its new expiry (Unix seconds). */
  refreshed: { expiresAt: number | undefined };
  /** Something went wrong that no promise reports: a refused re-subscribe, a bad frame, a throwing handler. */
  error: ShardcastError;
}

/** Where one {@link Subscription} is. */
export type SubscriptionState =
  /** Waiting for the gateway's ack (after a reconnect, until the channel is subscribed again). */
  | 'subscribing'
  /** Acknowledged on the current connection. */
  | 'subscribed'
  /** Over: unsubscribed by the application, ended by the gateway, or refused on a re-subscribe. */
  | 'unsubscribed';

/** The events of one {@link Subscription}. */
export interface SubscriptionEvents {
  /** The gateway ended the subscription (`unsubscribed` frame); it is inactive now. */
  unsubscribed: { code: UnsubscribeCode; message: string };
  /** Publications of the channel may have been missed and could not be recovered; see `ClientEvents.stale`. */
  stale: StaleEvent;
  /** A user joined the channel (presence, PROTOCOL.md 21); see `ClientEvents.join`. */
  join: JoinEvent;
  /** A user left the channel; see `ClientEvents.leave`. */
  leave: LeaveEvent;
  /**
   * Something failed for this channel: a refused re-subscribe (a
   * `PermissionDeniedError` or `UnauthorizedError`, after which the subscription is
   * inactive), a failed subscription-token refresh, a throwing `getSubscriptionToken`.
   */
  error: ShardcastError;
}

/** One application-level subscription, as returned by {@link ShardcastClient.subscribe}. */
export interface Subscription {
  /** The channel. */
  readonly channel: string;
  /** Whether this subscription's handler is still registered (false after `unsubscribe()`, a refused re-subscribe or an `unsubscribed` frame). */
  readonly active: boolean;
  /** Where the subscription is. */
  readonly state: SubscriptionState;
  /**
   * On a channel with history: the position of the last publication delivered (or,
   * before any, the one the subscribe's ack gave). The client recovers from it after
   * a reconnect by itself; it can be kept to read `history()` since then.
   */
  readonly position: StreamPosition | undefined;
  /** Adds a listener for this subscription's events; returns a function that removes it. */
  on<K extends keyof SubscriptionEvents>(event: K, listener: (payload: SubscriptionEvents[K]) => void): Unsubscribe;
  /** Removes this handler; the channel is unsubscribed on the gateway when its last handler goes. */
  unsubscribe(): Promise<void>;
}
