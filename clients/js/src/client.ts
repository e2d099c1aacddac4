/**
 * The shardcast client: one logical connection to a gateway that survives the
 * loss of any particular WebSocket. Owns the connection state machine
 * (idle → connecting → connected → reconnecting … → closed), the reconnect
 * schedule, the heartbeat, the request/reply bookkeeping, and the set of
 * channels the application wants, which it re-subscribes on every new
 * connection. Behaviour follows proto/PROTOCOL.md, sections 5, 6, 10 and 12.
 */

import { backoffDelay, DEFAULT_RECONNECT, decideReconnect, type ReconnectOptions } from './backoff';
import { codecFor, type Codec, type FramePayload } from './codec';
import { TypedEmitter, type Unsubscribe } from './emitter';
import {
  ClientClosedError,
  ConnectionLostError,
  HandlerError,
  HandshakeRejectedError,
  InvalidChannelError,
  MessageTooLargeError,
  NotConnectedError,
  ProtocolError,
  RequestTimeoutError,
  ServerError,
  ShardcastError,
  SubscriptionCancelledError,
  TokenProviderError,
} from './errors';
import {
  CloseCode,
  DEFAULT_MAX_MESSAGE_BYTES,
  utf8Length,
  validateChannel,
  type ClientFrame,
  type Encoding,
  type ServerFrame,
  type WelcomeFrame,
} from './protocol';
import {
  FATAL_HANDSHAKE_STATUSES,
  httpStatusFromError,
  isBlobLike,
  ReadyState,
  resolveWebSocket,
  withQueryParam,
  type WebSocketConstructor,
  type WebSocketLike,
} from './transport';

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

/** Returns the token to connect with, or nothing to connect without one. Called before every connect. */
export type TokenProvider = () => string | null | undefined | Promise<string | null | undefined>;

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
   * Supplies a token before every connect; it is sent as the `token` query parameter
   * (see `tokenParam`). The gateway does not check tokens yet: this hook exists so
   * authentication can be turned on later without changing application code.
   */
  token?: TokenProvider;
  /** Name of the query parameter that carries the token (default `token`). */
  tokenParam?: string;
  /** Reconnect policy; `false` turns automatic reconnecting off. */
  reconnect?: boolean | Partial<ReconnectOptions>;
  /** Heartbeat settings; `false` turns the client-side heartbeat off. */
  heartbeat?: false | HeartbeatOptions;
  /** How long opening a socket may take until the welcome arrives, in milliseconds (default 10 000). */
  connectTimeoutMs?: number;
  /** How long `publish`, `unsubscribe` and `ping` wait for their reply, in milliseconds (default 10 000). */
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
  /** Per channel and gateway instance, +1 for each publication delivered; unrelated across connections. */
  seq: number;
  /** The published data. */
  data: T;
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
  subscribed: { channel: string; resubscribed: boolean };
  /**
   * Publications of a subscribed channel may have been missed on this open
   * connection (PROTOCOL.md 9.3): re-read the source of truth if every message matters.
   */
  gap: { channel: string };
  /** Something went wrong that no promise reports: a refused re-subscribe, a bad frame, a throwing handler. */
  error: ShardcastError;
}

/** One application-level subscription, as returned by {@link ShardcastClient.subscribe}. */
export interface Subscription {
  /** The channel. */
  readonly channel: string;
  /** Whether this subscription's handler is still registered (false after `unsubscribe()` or a refused re-subscribe). */
  readonly active: boolean;
  /** Removes this handler; the channel is unsubscribed on the gateway when its last handler goes. */
  unsubscribe(): Promise<void>;
}

interface SubscribeWaiter {
  handler: MessageHandler<never>;
  resolve: () => void;
  reject: (error: ShardcastError) => void;
}

/** A channel the application wants, with everything attached to it. */
interface ChannelEntry {
  channel: string;
  handlers: Set<MessageHandler<never>>;
  /** Acknowledged on the current connection. */
  acked: boolean;
  /** Acknowledged on some connection before; a new ack is a re-subscribe. */
  everAcked: boolean;
  /** subscribe() calls waiting for the ack. */
  waiters: SubscribeWaiter[];
  /** A subscribe for this entry is unanswered on the current connection. */
  inFlight: boolean;
  /** Called with the in-flight subscribe's outcome (true: acked), or false if its connection is lost first. */
  onReply: ((acked: boolean) => void)[];
  /** Consecutive `unavailable` refusals, for the retry backoff. */
  unavailableCount: number;
  retryTimer?: ReturnType<typeof setTimeout>;
}

/** A request waiting for its ack, error or pong. */
interface PendingRequest {
  op: ClientFrame['op'];
  connection: Connection;
  channel?: string;
  timer?: ReturnType<typeof setTimeout>;
  resolve: (frame: ServerFrame) => void;
  reject: (error: ShardcastError) => void;
  /** For subscribe: the connection is gone before the reply. */
  abandon?: () => void;
}

/** One WebSocket and the state that lives and dies with it. */
interface Connection {
  socket: WebSocketLike;
  codec: Codec;
  welcomed: boolean;
  welcomedAt: number;
  /** Set once the client stopped listening to this socket. */
  finished: boolean;
  connectTimer?: ReturnType<typeof setTimeout>;
  heartbeatTimer?: ReturnType<typeof setTimeout>;
  /** When a frame last arrived (any frame proves the connection alive). */
  lastReceivedAt: number;
  /** A heartbeat ping went out in the current quiet period. */
  heartbeatPinged: boolean;
  /** The message of the socket's last error event, which on some platforms names an HTTP refusal. */
  lastError?: unknown;
  /** Ordering chain, used only once a Blob payload has to be read asynchronously. */
  inbound?: Promise<void>;
}

/**
 * Marks a promise as handled, so that a caller who fires and forgets a
 * subscribe or unsubscribe does not get an unhandled-rejection crash (Node.js)
 * when the client closes first; a caller who awaits still sees the rejection.
 */
function markHandled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

/**
 * A client of a shardcast gateway.
 *
 * ```ts
 * const client = new ShardcastClient({ url: 'wss://rt.example.com/ws' });
 * const subscription = await client.subscribe('news', (data) => console.log(data));
 * ```
 */
export class ShardcastClient {
  private readonly url: string;
  private readonly codec: Codec;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly tokenProvider: TokenProvider | undefined;
  private readonly tokenParam: string;
  private readonly reconnectOptions: ReconnectOptions;
  private readonly heartbeatOptions: false | HeartbeatOptions;
  private readonly connectTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly maxMessageBytes: number;
  private readonly random: () => number;
  private readonly events: TypedEmitter<ClientEvents>;

  private currentState: ConnectionState = 'idle';
  private connection: Connection | undefined;
  private lastWelcome: WelcomeFrame | undefined;
  /** Consecutive failed attempts; reset by a connection that stayed up for the backoff cap. */
  private failures = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** Bumped whenever a connect attempt is superseded, so a late token does not open a stale socket. */
  private generation = 0;
  private nextRequestId = 1;
  private readonly pending = new Map<number, PendingRequest>();
  private readonly channels = new Map<string, ChannelEntry>();
  /** Unsubscribes that wait for their channel's in-flight subscribe; a new subscribe of the channel waits for them. */
  private readonly drops = new Map<string, Promise<void>>();
  private readonly onlineListener = (): void => this.reconnectNow();

  /**
   * Creates a client and, unless `autoConnect` is false, starts connecting (in a
   * microtask, so listeners added right after construction see every event).
   */
  constructor(options: ClientOptions) {
    if (!options || typeof options.url !== 'string' || options.url === '') {
      throw new TypeError('ShardcastClient: the `url` option is required');
    }
    this.url = options.url;
    this.codec = codecFor(options.encoding ?? 'json');
    this.WebSocketImpl = resolveWebSocket(options.WebSocket);
    this.tokenProvider = options.token;
    this.tokenParam = options.tokenParam ?? 'token';
    const reconnect = options.reconnect ?? true;
    this.reconnectOptions =
      typeof reconnect === 'boolean'
        ? { ...DEFAULT_RECONNECT, enabled: reconnect }
        : { ...DEFAULT_RECONNECT, ...reconnect };
    this.heartbeatOptions = options.heartbeat ?? {};
    this.connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.random = options.random ?? Math.random;
    this.events = new TypedEmitter<ClientEvents>((error, event) => this.reportListenerError(error, String(event)));
    if (options.autoConnect ?? true) {
      // A close() before the microtask runs wins.
      void Promise.resolve().then(() => {
        if (this.currentState === 'idle') this.connect();
      });
    }
  }

  /** The current connection state. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The welcome of the current (or last) connection, if any arrived. */
  get welcome(): WelcomeFrame | undefined {
    return this.lastWelcome;
  }

  /** The encoding this client uses. */
  get encoding(): Encoding {
    return this.codec.encoding;
  }

  /** The channels with at least one handler, subscribed or about to be. */
  get subscribedChannels(): string[] {
    return Array.from(this.channels.keys());
  }

  /** Adds an event listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): Unsubscribe {
    return this.events.on(event, listener);
  }

  /** Adds an event listener that is removed after its first call. */
  once<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): Unsubscribe {
    return this.events.once(event, listener);
  }

  /** Removes an event listener. */
  off<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): void {
    this.events.off(event, listener);
  }

  /**
   * Starts connecting: after construction with `autoConnect: false`, or after the
   * client closed (subscriptions that were acknowledged are restored). While
   * waiting to reconnect, it skips the rest of the wait. Otherwise it does nothing.
   */
  connect(): void {
    if (this.currentState === 'idle' || this.currentState === 'closed') {
      this.failures = 0;
      this.addOnlineListener();
      void this.openConnection();
    } else if (this.currentState === 'reconnecting') {
      this.reconnectNow();
    }
  }

  /**
   * Closes the connection and stops reconnecting. Pending requests reject with
   * {@link ClientClosedError}; subscriptions whose ack had arrived stay registered
   * and are restored by a later `connect()`.
   */
  close(code: number = CloseCode.NORMAL, reason = 'client closed'): void {
    if (this.currentState === 'closed' || this.currentState === 'idle') {
      this.setState('closed');
      return;
    }
    this.generation++;
    const connection = this.connection;
    if (connection) {
      const wasConnected = connection.welcomed;
      this.abandon(connection, code, reason);
      this.failPending(connection, new ClientClosedError());
      this.events.emit('disconnected', { code, reason, wasConnected, willReconnect: false });
    }
    this.stop(undefined, reason);
  }

  /**
   * Subscribes `handler` to a channel. Resolves once the gateway acknowledged the
   * subscription (every publication accepted after that is delivered); while
   * disconnected it waits for the next connection. Several handlers may share a
   * channel: the gateway is asked once, and told to unsubscribe when the last goes.
   * After a reconnect the channel is subscribed again automatically.
   *
   * Rejects with {@link InvalidChannelError} for a name the protocol forbids,
   * {@link ServerError} if the gateway refuses (e.g. `too_many_channels`),
   * {@link SubscriptionCancelledError} if unsubscribed before the ack, and
   * {@link ClientClosedError} if the client closes first.
   */
  subscribe<T = unknown>(channel: string, handler: MessageHandler<T>): Promise<Subscription> {
    // The gateway's length limit is configurable, so only the charset is checked here.
    const problem = validateChannel(channel, Infinity);
    if (problem) return Promise.reject(new InvalidChannelError(channel, problem));
    if (typeof handler !== 'function') return Promise.reject(new TypeError('subscribe: handler must be a function'));
    const typedHandler = handler as MessageHandler<never>;
    let entry = this.channels.get(channel);
    if (entry?.handlers.has(typedHandler)) {
      return Promise.reject(new TypeError(`subscribe: this handler is already subscribed to ${channel}`));
    }
    const subscription = this.makeSubscription(channel, typedHandler);
    if (entry) {
      entry.handlers.add(typedHandler);
      if (entry.acked) return Promise.resolve(subscription);
    } else {
      entry = {
        channel,
        handlers: new Set([typedHandler]),
        acked: false,
        everAcked: false,
        waiters: [],
        inFlight: false,
        onReply: [],
        unavailableCount: 0,
      };
      this.channels.set(channel, entry);
      if (this.isConnected()) this.sendSubscribe(entry);
    }
    const waitingEntry = entry;
    return markHandled(
      new Promise<Subscription>((resolve, reject) => {
        waitingEntry.waiters.push({ handler: typedHandler, resolve: () => resolve(subscription), reject });
      }),
    );
  }

  /**
   * Removes every handler of a channel and unsubscribes it on the gateway.
   * Resolves when the gateway acknowledged, or at once when disconnected.
   */
  unsubscribe(channel: string): Promise<void> {
    const entry = this.channels.get(channel);
    if (!entry) return Promise.resolve();
    return markHandled(this.dropChannel(entry));
  }

  /**
   * Publishes `data` (any JSON value but `null`) on a channel through the
   * WebSocket. The gateway allows this only when started with
   * `--allow-client-publish` (otherwise this rejects with a {@link ServerError}
   * whose code is `forbidden`); the usual way to publish is the gateway's HTTP
   * API. Not queued while disconnected: rejects with {@link NotConnectedError}.
   */
  publish(channel: string, data: unknown): Promise<void> {
    const problem = validateChannel(channel, Infinity);
    if (problem) return Promise.reject(new InvalidChannelError(channel, problem));
    if (data === null || data === undefined) {
      // The protocol reads a null `data` as missing; only the HTTP API can publish null.
      return Promise.reject(new TypeError('publish: data must not be null or undefined'));
    }
    return this.request({ op: 'publish', channel, data }).then(() => undefined);
  }

  /** Sends an application ping and resolves with the round-trip time in milliseconds. */
  ping(): Promise<number> {
    const started = Date.now();
    return this.request({ op: 'ping' }).then(() => Date.now() - started);
  }

  // ---- connection lifecycle ----

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.events.emit('state', { state, previous });
  }

  private isConnected(): boolean {
    return this.currentState === 'connected' && this.connection !== undefined && this.connection.welcomed;
  }

  private async openConnection(): Promise<void> {
    const generation = ++this.generation;
    this.setState('connecting');
    this.events.emit('connecting', { attempt: this.failures });
    let url = this.url;
    if (this.tokenProvider) {
      let token: string | null | undefined;
      try {
        token = await this.tokenProvider();
      } catch (cause) {
        if (generation !== this.generation) return;
        this.reportError(new TokenProviderError('token provider failed', { cause }));
        this.afterLoss(CloseCode.ABNORMAL, 'token provider failed', undefined);
        return;
      }
      // close() or connect() ran while the token was being fetched.
      if (generation !== this.generation) return;
      if (token) url = withQueryParam(url, this.tokenParam, token);
    }
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(url, [this.codec.subprotocol]);
    } catch (cause) {
      // A malformed URL throws synchronously; retrying would fail the same way forever.
      const error = new ShardcastError(`cannot open WebSocket to ${this.url}`, { cause });
      this.reportError(error);
      this.events.emit('disconnected', { code: CloseCode.ABNORMAL, reason: error.message, wasConnected: false, willReconnect: false });
      this.stop(CloseCode.ABNORMAL, error.message);
      return;
    }
    const connection: Connection = {
      socket,
      codec: this.codec,
      welcomed: false,
      welcomedAt: 0,
      finished: false,
      lastReceivedAt: Date.now(),
      heartbeatPinged: false,
    };
    this.connection = connection;
    try {
      socket.binaryType = 'arraybuffer';
    } catch {
      // Platforms without binaryType deliver Blobs, which handleRaw reads asynchronously.
    }
    socket.onmessage = (event: { data: unknown }) => this.handleRaw(connection, event.data);
    socket.onclose = (event: { code?: number; reason?: string }) =>
      this.handleSocketClosed(connection, event?.code ?? CloseCode.ABNORMAL, event?.reason ?? '');
    // Every platform follows an error with a close event; the error is kept because
    // on some platforms its message is the only place an HTTP refusal shows.
    socket.onerror = (event: unknown) => {
      connection.lastError = event;
    };
    connection.connectTimer = setTimeout(() => this.abortConnection(connection, 'connect timeout'), this.connectTimeoutMs);
  }

  private handleRaw(connection: Connection, data: unknown): void {
    if (connection.finished) return;
    if (isBlobLike(data) || connection.inbound) {
      // Frames after a Blob wait for it, so handlers see them in order.
      connection.inbound = (connection.inbound ?? Promise.resolve())
        .then(async () => (isBlobLike(data) ? await data.arrayBuffer() : (data as FramePayload)))
        .then((payload) => this.handleFrame(connection, payload))
        .catch((cause) => this.reportError(new ProtocolError('cannot read a binary frame', { cause })));
      return;
    }
    this.handleFrame(connection, data as FramePayload);
  }

  private handleFrame(connection: Connection, payload: FramePayload): void {
    if (connection.finished) return;
    // Any frame at all, even one this client cannot use, proves the connection alive.
    connection.lastReceivedAt = Date.now();
    connection.heartbeatPinged = false;
    let frame: ServerFrame | null;
    try {
      frame = connection.codec.decodeServer(payload);
    } catch (error) {
      this.reportError(error instanceof ShardcastError ? error : new ProtocolError('cannot decode a frame', { cause: error }));
      return;
    }
    // A frame type from a newer protocol revision: the protocol says to ignore it.
    if (frame === null) return;
    if (!connection.welcomed) {
      if (frame.type !== 'welcome') {
        this.reportError(new ProtocolError(`expected a welcome frame first, got ${frame.type}`));
        this.abortConnection(connection, 'no welcome');
        return;
      }
      this.handleWelcome(connection, frame);
      return;
    }
    switch (frame.type) {
      case 'message':
        this.dispatch(frame.channel, frame.seq, frame.data);
        return;
      case 'ack':
      case 'pong':
      case 'error':
        this.handleReply(frame);
        return;
      case 'gap':
        this.events.emit('gap', { channel: frame.channel });
        return;
      case 'welcome':
        // A second welcome is unexpected but harmless.
        return;
    }
  }

  private handleWelcome(connection: Connection, welcome: WelcomeFrame): void {
    connection.welcomed = true;
    connection.welcomedAt = Date.now();
    clearTimeout(connection.connectTimer);
    this.lastWelcome = welcome;
    this.setState('connected');
    this.events.emit('connected', { welcome, encoding: connection.codec.encoding });
    this.startHeartbeat(connection, welcome);
    for (const entry of this.channels.values()) {
      entry.acked = false;
      this.sendSubscribe(entry);
    }
  }

  private handleSocketClosed(connection: Connection, code: number, reason: string): void {
    if (connection.finished) return;
    this.finish(connection);
    this.failPending(connection, new ConnectionLostError(code, reason));
    if (!connection.welcomed) {
      const status = httpStatusFromError(connection.lastError);
      if (status !== undefined && FATAL_HANDSHAKE_STATUSES.includes(status)) {
        // The request itself is wrong (path, headers): report it instead of retrying in a loop.
        const error = new HandshakeRejectedError(status, this.url);
        this.reportError(error);
        this.events.emit('disconnected', { code, reason: error.message, wasConnected: false, willReconnect: false });
        this.stop(code, error.message);
        return;
      }
    }
    this.afterLoss(code, reason, connection);
  }

  /** Gives up on a socket the client no longer trusts (no welcome in time, heartbeat lost). */
  private abortConnection(connection: Connection, reason: string): void {
    if (connection.finished) return;
    const { socket } = connection as { socket: WebSocketLike & { terminate?: () => void } };
    if (typeof socket.terminate === 'function') {
      // The `ws` package would otherwise wait up to 30 s for a close frame from a peer that is gone.
      this.finish(connection);
      try {
        socket.terminate();
      } catch {
        // Dropping it is all that was wanted.
      }
    } else {
      this.abandon(connection, CloseCode.NORMAL, reason);
    }
    // Reported as 1006 (no close frame received), as when the platform notices a dead peer itself.
    this.failPending(connection, new ConnectionLostError(CloseCode.ABNORMAL, reason));
    this.afterLoss(CloseCode.ABNORMAL, reason, connection);
  }

  /** Stops listening to a socket and closes it without waiting for the close handshake. */
  private abandon(connection: Connection, code: number, reason: string): void {
    this.finish(connection);
    const { socket } = connection;
    if (socket.readyState === ReadyState.CONNECTING || socket.readyState === ReadyState.OPEN) {
      try {
        socket.close(code, reason);
      } catch {
        // Some platforms refuse codes or reasons on close(); the socket is being dropped either way.
        try {
          socket.close();
        } catch {
          // Nothing more to do for a socket that cannot even be closed.
        }
      }
    }
  }

  private finish(connection: Connection): void {
    connection.finished = true;
    clearTimeout(connection.connectTimer);
    if (connection.heartbeatTimer !== undefined) clearTimeout(connection.heartbeatTimer);
    const { socket } = connection;
    socket.onmessage = null;
    socket.onclose = null;
    socket.onerror = null;
    if (this.connection === connection) this.connection = undefined;
  }

  /**
   * After a socket is gone (or could not even be attempted): schedule the next
   * attempt, or stop for good. `connection` is the lost socket, if there was one.
   */
  private afterLoss(code: number, reason: string, connection: Connection | undefined): void {
    const wasConnected = connection?.welcomed ?? false;
    // A connection that stayed up for the backoff cap resets the backoff; one that is
    // accepted and dropped at once (a slow consumer, a crashing gateway) keeps backing off.
    if (connection?.welcomed && Date.now() - connection.welcomedAt >= this.reconnectOptions.maxDelayMs) {
      this.failures = 0;
    }
    this.failures++;
    const decision = decideReconnect(code, reason, this.failures, this.reconnectOptions, this.random);
    this.events.emit('disconnected', { code, reason, wasConnected, willReconnect: decision.reconnect });
    if (!decision.reconnect) {
      this.stop(code, reason);
      return;
    }
    this.resetChannelsForNewConnection();
    this.setState('reconnecting');
    this.events.emit('reconnecting', {
      attempt: this.failures,
      delayMs: decision.delayMs,
      code,
      reason,
      retryHintMs: decision.retryHintMs,
    });
    this.clearReconnectTimer();
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.openConnection();
    }, decision.delayMs);
  }

  private resetChannelsForNewConnection(): void {
    for (const entry of this.channels.values()) {
      entry.acked = false;
      entry.unavailableCount = 0;
      if (entry.retryTimer !== undefined) {
        clearTimeout(entry.retryTimer);
        entry.retryTimer = undefined;
      }
    }
  }

  /** Enters the closed state: rejects everything still waiting and forgets unacknowledged subscriptions. */
  private stop(code: number | undefined, reason: string): void {
    this.removeOnlineListener();
    this.clearReconnectTimer();
    this.resetChannelsForNewConnection();
    const error = new ClientClosedError(code, reason);
    for (const entry of Array.from(this.channels.values())) {
      for (const waiter of entry.waiters) {
        // The caller is told subscribe() failed, so its handler must not stay registered.
        entry.handlers.delete(waiter.handler);
        waiter.reject(error);
      }
      entry.waiters = [];
      if (entry.handlers.size === 0) this.channels.delete(entry.channel);
    }
    this.setState('closed');
    this.events.emit('closed', { code, reason });
  }

  private reconnectNow(): void {
    if (this.currentState !== 'reconnecting') return;
    this.clearReconnectTimer();
    void this.openConnection();
  }

  private clearReconnectTimer(): void {
    if (this.reconnectTimer !== undefined) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
    }
  }

  // Browsers tell when the network comes back; waiting out a long backoff then would only delay recovery.
  private addOnlineListener(): void {
    const target = globalThis as { addEventListener?: (type: string, listener: () => void) => void };
    if (typeof target.addEventListener === 'function' && typeof (globalThis as { window?: unknown }).window === 'object') {
      target.addEventListener('online', this.onlineListener);
    }
  }

  private removeOnlineListener(): void {
    const target = globalThis as { removeEventListener?: (type: string, listener: () => void) => void };
    if (typeof target.removeEventListener === 'function') target.removeEventListener('online', this.onlineListener);
  }

  // ---- heartbeat ----

  /**
   * One timer per connection, re-armed on each expiry rather than on each frame,
   * so a busy connection costs nothing: it checks how long the connection has
   * been quiet, pings once per quiet period, and gives up after the timeout.
   */
  private startHeartbeat(connection: Connection, welcome: WelcomeFrame): void {
    if (this.heartbeatOptions === false) return;
    const intervalMs = this.heartbeatOptions.intervalMs ?? welcome.ping_interval_ms;
    if (!(intervalMs > 0)) return;
    const timeoutMs = this.heartbeatOptions.timeoutMs ?? intervalMs;
    const check = (): void => {
      connection.heartbeatTimer = undefined;
      if (connection.finished) return;
      const quietMs = Date.now() - connection.lastReceivedAt;
      if (!connection.heartbeatPinged) {
        if (quietMs >= intervalMs) {
          // The pong itself is not awaited: any frame that arrives clears heartbeatPinged.
          connection.heartbeatPinged = true;
          this.sendFrame(connection, { op: 'ping', id: this.takeRequestId() });
          connection.heartbeatTimer = setTimeout(check, timeoutMs);
        } else {
          connection.heartbeatTimer = setTimeout(check, intervalMs - quietMs);
        }
        return;
      }
      if (quietMs >= intervalMs + timeoutMs) {
        this.abortConnection(connection, 'heartbeat timeout');
        return;
      }
      connection.heartbeatTimer = setTimeout(check, intervalMs + timeoutMs - quietMs);
    };
    connection.heartbeatTimer = setTimeout(check, intervalMs);
  }

  // ---- requests and replies ----

  private takeRequestId(): number {
    const id = this.nextRequestId;
    // Ids only need to be unique among requests in flight; wrap long before precision runs out.
    this.nextRequestId = id >= Number.MAX_SAFE_INTEGER ? 1 : id + 1;
    return id;
  }

  private sendFrame(connection: Connection, frame: ClientFrame, encoded?: string | Uint8Array): boolean {
    if (connection.finished || connection.socket.readyState !== ReadyState.OPEN) return false;
    try {
      connection.socket.send(encoded ?? connection.codec.encodeClient(frame));
      return true;
    } catch (cause) {
      this.reportError(new ShardcastError(`cannot send ${frame.op}`, { cause }));
      return false;
    }
  }

  /** Sends a request that has a reply and a timeout (publish, unsubscribe, ping). */
  private request(frame: ClientFrame & { op: 'publish' | 'unsubscribe' | 'ping' }): Promise<ServerFrame> {
    const connection = this.connection;
    if (!connection || !this.isConnected()) {
      return Promise.reject(this.currentState === 'closed' ? new ClientClosedError() : new NotConnectedError(frame.op));
    }
    const id = this.takeRequestId();
    const fullFrame = { ...frame, id };
    let encoded: string | Uint8Array;
    try {
      encoded = connection.codec.encodeClient(fullFrame);
    } catch (cause) {
      return Promise.reject(new TypeError(`${frame.op}: cannot encode the frame (${String(cause)})`));
    }
    const size = typeof encoded === 'string' ? utf8Length(encoded) : encoded.length;
    if (size > this.maxMessageBytes) return Promise.reject(new MessageTooLargeError(size, this.maxMessageBytes));
    return new Promise<ServerFrame>((resolve, reject) => {
      const pending: PendingRequest = {
        op: frame.op,
        connection,
        channel: frame.op === 'ping' ? undefined : frame.channel,
        resolve,
        reject,
      };
      pending.timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RequestTimeoutError(frame.op, this.requestTimeoutMs));
      }, this.requestTimeoutMs);
      this.pending.set(id, pending);
      if (!this.sendFrame(connection, fullFrame, encoded)) {
        clearTimeout(pending.timer);
        this.pending.delete(id);
        reject(new NotConnectedError(frame.op));
      }
    });
  }

  /**
   * Sends a subscribe for an entry on the current connection. No timeout: a
   * connection that stops answering is caught by the heartbeat, and the
   * subscription is sent again on the next one.
   */
  private sendSubscribe(entry: ChannelEntry): void {
    const connection = this.connection;
    if (!connection) return;
    const drop = this.drops.get(entry.channel);
    if (drop) {
      // Sent now, this subscribe would reach the gateway before the pending unsubscribe
      // of the same channel and be undone by it.
      const resume = (): void => {
        if (this.channels.get(entry.channel) === entry && this.isConnected() && !entry.acked && !entry.inFlight) {
          this.sendSubscribe(entry);
        }
      };
      drop.then(resume, resume);
      return;
    }
    const id = this.takeRequestId();
    const settle = (acked: boolean): void => {
      entry.inFlight = false;
      const callbacks = entry.onReply;
      entry.onReply = [];
      for (const callback of callbacks) callback(acked);
    };
    entry.inFlight = true;
    this.pending.set(id, {
      op: 'subscribe',
      connection,
      channel: entry.channel,
      resolve: () => {
        settle(true);
        this.handleSubscribeAck(entry);
      },
      reject: (error) => {
        settle(false);
        this.handleSubscribeRefused(entry, error);
      },
      abandon: () => settle(false),
    });
    // A failed send means the socket is closing; its close handler settles this request.
    this.sendFrame(connection, { op: 'subscribe', id, channel: entry.channel });
  }

  private handleReply(frame: ServerFrame & { type: 'ack' | 'pong' | 'error' }): void {
    if (frame.id === undefined) {
      if (frame.type === 'error') this.reportError(new ServerError(frame.code, frame.message));
      return;
    }
    const pending = this.pending.get(frame.id);
    // Heartbeat pongs and replies to timed-out requests have nobody waiting.
    if (!pending) return;
    this.pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (frame.type === 'error') pending.reject(new ServerError(frame.code, frame.message, frame.id, pending.channel));
    else pending.resolve(frame);
  }

  private handleSubscribeAck(entry: ChannelEntry): void {
    // The entry may have been dropped (or replaced by a new subscribe) since the request went out.
    if (this.channels.get(entry.channel) !== entry) return;
    const resubscribed = entry.everAcked;
    entry.acked = true;
    entry.everAcked = true;
    entry.unavailableCount = 0;
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.resolve();
    this.events.emit('subscribed', { channel: entry.channel, resubscribed });
  }

  private handleSubscribeRefused(entry: ChannelEntry, error: ShardcastError): void {
    if (this.channels.get(entry.channel) !== entry) return;
    if (error instanceof ServerError && error.code === 'unavailable') {
      // The gateway's broker is struggling: retry this subscription with backoff (section 12).
      entry.unavailableCount++;
      const delayMs = backoffDelay(entry.unavailableCount, this.reconnectOptions, this.random);
      entry.retryTimer = setTimeout(() => {
        entry.retryTimer = undefined;
        if (this.channels.get(entry.channel) === entry && this.isConnected() && !entry.acked && !entry.inFlight) {
          this.sendSubscribe(entry);
        }
      }, delayMs);
      return;
    }
    // Any other refusal is final for this channel (bad name, too many channels): retrying would be refused again.
    this.channels.delete(entry.channel);
    entry.handlers.clear();
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.reject(error);
    if (waiters.length === 0) this.reportError(error);
  }

  /**
   * Settles the requests a lost connection leaves behind. Subscribe requests are
   * dropped quietly: the subscription is sent again on the next connection, or,
   * if the client is stopping, `stop()` rejects the callers still waiting.
   */
  private failPending(connection: Connection, error: ShardcastError): void {
    for (const [id, pending] of Array.from(this.pending)) {
      if (pending.connection !== connection) continue;
      this.pending.delete(id);
      clearTimeout(pending.timer);
      if (pending.abandon) pending.abandon();
      else pending.reject(error);
    }
  }

  // ---- subscriptions ----

  private makeSubscription(channel: string, handler: MessageHandler<never>): Subscription {
    const isActive = (): boolean => this.channels.get(channel)?.handlers.has(handler) ?? false;
    return {
      channel,
      get active() {
        return isActive();
      },
      unsubscribe: () => {
        const entry = this.channels.get(channel);
        if (!entry || !entry.handlers.has(handler)) return Promise.resolve();
        entry.handlers.delete(handler);
        const cancelled = entry.waiters.filter((w) => w.handler === handler);
        entry.waiters = entry.waiters.filter((w) => w.handler !== handler);
        for (const waiter of cancelled) waiter.reject(new SubscriptionCancelledError(channel));
        if (entry.handlers.size > 0) return Promise.resolve();
        return markHandled(this.dropChannel(entry));
      },
    };
  }

  private dropChannel(entry: ChannelEntry): Promise<void> {
    this.channels.delete(entry.channel);
    entry.handlers.clear();
    if (entry.retryTimer !== undefined) clearTimeout(entry.retryTimer);
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.reject(new SubscriptionCancelledError(entry.channel));
    if (entry.inFlight) {
      // The protocol advises against unsubscribing while the subscribe is unanswered
      // (its reply could go missing or come late), so wait for that reply first.
      const done: Promise<void> = new Promise<void>((resolve, reject) => {
        entry.onReply.push((acked) => {
          const unsubscribed = acked ? this.sendUnsubscribe(entry.channel) : Promise.resolve();
          // Forgotten synchronously once the wire is settled, so a subscribe sent
          // after this point is not held back by a finished drop.
          const forget = (): void => {
            if (this.drops.get(entry.channel) === done) this.drops.delete(entry.channel);
          };
          if (!acked) forget();
          unsubscribed.then(
            () => {
              forget();
              resolve();
            },
            (error: unknown) => {
              forget();
              reject(error);
            },
          );
        });
      });
      this.drops.set(entry.channel, done);
      return done;
    }
    return entry.acked ? this.sendUnsubscribe(entry.channel) : Promise.resolve();
  }

  private sendUnsubscribe(channel: string): Promise<void> {
    // Disconnected: the next connection simply does not subscribe it.
    if (!this.isConnected()) return Promise.resolve();
    return this.request({ op: 'unsubscribe', channel }).then(
      () => undefined,
      (error: unknown) => {
        // Already gone on the gateway, or the connection dropped (which unsubscribes everything): done either way.
        if (error instanceof ServerError && error.code === 'not_subscribed') return;
        if (error instanceof ConnectionLostError || error instanceof NotConnectedError) return;
        throw error;
      },
    );
  }

  private dispatch(channel: string, seq: number, data: unknown): void {
    const entry = this.channels.get(channel);
    // A publication can race an unsubscribe; nobody wants it any more.
    if (!entry) return;
    const message: ReceivedMessage<unknown> = { channel, seq, data };
    for (const handler of Array.from(entry.handlers)) {
      try {
        (handler as MessageHandler<unknown>)(data, message);
      } catch (cause) {
        this.reportError(new HandlerError(`handler for channel ${channel} threw`, { cause }));
      }
    }
  }

  // ---- error reporting ----

  private reportError(error: ShardcastError): void {
    if (this.events.hasListeners('error')) {
      this.events.emit('error', error);
    } else {
      // With nobody listening, a console line is better than an error that vanishes.
      globalThis.console?.error?.('[shardcast]', error);
    }
  }

  private reportListenerError(error: unknown, event: string): void {
    if (event === 'error') {
      globalThis.console?.error?.('[shardcast] error listener threw', error);
      return;
    }
    this.reportError(new HandlerError(`listener for "${event}" threw`, { cause: error }));
  }
}
