/**
 * The shardcast client: the public {@link ShardcastClient} class. It reads the
 * options and puts together the modules that do the work: the connection state
 * machine with reconnects and heartbeat (./connection), requests and their
 * replies (./requests) and the channels with their handlers (./subscriptions).
 * It also decides where errors that no promise carries go.
 */

import { DEFAULT_RECONNECT, type ReconnectOptions } from './backoff';
import { codecFor, type Codec } from './codec';
import { TypedEmitter, type Unsubscribe } from './emitter';
import { Connection } from './connection';
import { ConnectionCredentials } from './credentials';
import { HandlerError, InvalidChannelError, ServerError, ShardcastError } from './errors';
import {
  CloseCode,
  DEFAULT_MAX_MESSAGE_BYTES,
  isValidIdempotencyKey,
  validateChannel,
  type AckFrame,
  type Encoding,
  type HistoryFrame,
  type PresenceFrame,
  type WelcomeFrame,
} from './protocol';
import { RequestTable } from './requests';
import { ChannelTable } from './subscriptions';
import { resolveWebSocket } from './transport';
import type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  HistoryOptions,
  HistoryResult,
  MessageHandler,
  PresenceResult,
  PublishOptions,
  PublishResult,
  SubscribeOptions,
  Subscription,
} from './types';

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

/**
 * A client of a shardcast gateway.
 *
 * ```ts
 * const client = new ShardcastClient({ url: 'ws://localhost:8000/ws' });
 * const subscription = await client.subscribe('news', (data) => console.log(data));
 * ```
 */
export class ShardcastClient {
  private readonly codec: Codec;
  private readonly events: TypedEmitter<ClientEvents>;
  private readonly connection: Connection;
  private readonly requests: RequestTable;
  private readonly channels: ChannelTable;

  /**
   * Creates a client and, unless `autoConnect` is false, starts connecting (in a
   * microtask, so listeners added right after construction see every event).
   */
  constructor(options: ClientOptions) {
    if (!options || typeof options.url !== 'string' || options.url === '') {
      throw new TypeError('ShardcastClient: the `url` option is required');
    }
    if (options.tokenParam !== undefined) {
      throw new TypeError(
        'ShardcastClient: the `tokenParam` option was removed: the gateway refuses a token in the query string ' +
          '(HTTP 400), so the token now travels in a connect frame; pass `token` and/or `getToken` and drop `tokenParam`',
      );
    }
    this.codec = codecFor(options.encoding ?? 'json');
    const WebSocket = resolveWebSocket(options.WebSocket);
    const reconnect = options.reconnect ?? true;
    const reconnectOptions: ReconnectOptions =
      typeof reconnect === 'boolean' ? { ...DEFAULT_RECONNECT, enabled: reconnect } : { ...DEFAULT_RECONNECT, ...reconnect };
    const random = options.random ?? Math.random;
    const reportError = (error: ShardcastError): void => this.reportError(error);
    this.events = new TypedEmitter<ClientEvents>((error, event) => this.reportListenerError(error, String(event)));
    // The hooks run only once a socket exists, by when every table below is built.
    this.connection = new Connection(
      {
        url: options.url,
        codec: this.codec,
        WebSocket,
        credentials: new ConnectionCredentials(options.token, options.getToken),
        reconnect: reconnectOptions,
        heartbeat: options.heartbeat ?? {},
        connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
        random,
      },
      this.events,
      {
        welcomed: () => this.channels.subscribeAll(),
        message: (frame) => this.channels.dispatch(frame),
        gap: (frame) => this.channels.handleGap(frame),
        presenceChange: (frame) => this.channels.handlePresenceChange(frame),
        unsubscribed: (frame) => this.channels.handleUnsubscribed(frame),
        refresh: (token) => this.requests.request({ op: 'refresh', token }).then((frame) => frame as AckFrame),
        reply: (frame) => this.requests.handleReply(frame),
        lost: (session, error) => this.requests.failPending(session, error),
        reconnecting: () => this.channels.resetForNewConnection(),
        stopped: (error) => this.channels.stop(error),
        nextId: () => this.requests.takeId(),
        reportError,
      },
    );
    this.requests = new RequestTable(
      this.connection,
      options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      reportError,
    );
    this.channels = new ChannelTable(
      this.connection,
      this.requests,
      this.events,
      reconnectOptions,
      random,
      reportError,
      options.getSubscriptionToken,
    );
    if (options.autoConnect ?? true) {
      // A close() before the microtask runs wins.
      void Promise.resolve().then(() => {
        if (this.connection.state === 'idle') this.connect();
      });
    }
  }

  /** The current connection state. */
  get state(): ConnectionState {
    return this.connection.state;
  }

  /** The welcome of the current (or last) connection, if any arrived. */
  get welcome(): WelcomeFrame | undefined {
    return this.connection.welcome;
  }

  /** The encoding this client uses. */
  get encoding(): Encoding {
    return this.codec.encoding;
  }

  /** The channels with at least one handler, subscribed or about to be. */
  get subscribedChannels(): string[] {
    return this.channels.names;
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
    this.connection.connect();
  }

  /**
   * Closes the connection and stops reconnecting. Pending requests reject with
   * {@link ClientClosedError}; subscriptions whose ack had arrived stay registered
   * and are restored by a later `connect()`.
   */
  close(code: number = CloseCode.NORMAL, reason = 'client closed'): void {
    this.connection.close(code, reason);
  }

  /**
   * Subscribes `handler` to a channel. Resolves once the gateway acknowledged the
   * subscription (every publication accepted after that is delivered); while
   * disconnected it waits for the next connection. Several handlers may share a
   * channel: the gateway is asked once, and told to unsubscribe when the last goes.
   * After a reconnect the channel is subscribed again automatically.
   *
   * On a channel with history (PROTOCOL.md 19), the client keeps the position of
   * the last publication delivered and, after a reconnect, asks the gateway to
   * `recover` from it: the publications missed meanwhile reach `handler` first, in
   * order, each once, then the live ones. When they cannot be recovered (or a `gap`
   * arrives), the subscription's `stale` event (and `options.onStale`, and the
   * client's `stale` event) fires: refetch the channel's state then. `options.latest`
   * asks for the channel's latest publication at once (a state channel).
   *
   * With `getSubscriptionToken` set, it is asked for the channel's subscription
   * token first. Rejects with {@link InvalidChannelError} for a name the protocol
   * forbids, {@link PermissionDeniedError} if the channel rules refuse this
   * connection the channel, {@link UnauthorizedError} if its subscription token
   * is refused, another {@link ServerError} if the gateway refuses otherwise (e.g. `too_many_channels`),
   * {@link SubscriptionCancelledError} if unsubscribed before the ack, and
   * {@link ClientClosedError} if the client closes first.
   */
  subscribe<T = unknown>(channel: string, handler: MessageHandler<T>, options?: SubscribeOptions): Promise<Subscription> {
    return this.channels.subscribe(channel, handler, options);
  }

  /**
   * Removes every handler of a channel and unsubscribes it on the gateway.
   * Resolves when the gateway acknowledged, or at once when disconnected.
   */
  unsubscribe(channel: string): Promise<void> {
    return this.channels.unsubscribe(channel);
  }

  /**
   * Publishes `data` (any JSON value but `null`) on a channel through the
   * WebSocket. The gateway allows this only when started with
   * `--allow-client-publish` (otherwise this rejects with a {@link ServerError}
   * whose code is `forbidden`); the usual way to publish is the gateway's HTTP
   * API. Not queued while disconnected: rejects with {@link NotConnectedError}.
   *
   * With `options.idempotencyKey`, a retry with the same key is not published twice
   * (PROTOCOL.md 19.9): retry after a {@link BrokerTimeoutError} (the outcome is
   * unknown), a {@link RequestTimeoutError} or a {@link ConnectionLostError}.
   * Resolves with the publication's offset and epoch on a channel with history, and
   * `duplicate: true` when the key was used already; with `undefined` when the ack
   * says nothing of the kind (a channel without history, a gateway before history).
   */
  publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult | undefined> {
    const problem = validateChannel(channel, Infinity);
    if (problem) return Promise.reject(new InvalidChannelError(channel, problem));
    if (data === null || data === undefined) {
      // The protocol reads a null `data` as missing; only the HTTP API can publish null.
      return Promise.reject(new TypeError('publish: data must not be null or undefined'));
    }
    const key = options.idempotencyKey;
    if (key !== undefined && !isValidIdempotencyKey(key)) {
      return Promise.reject(new TypeError('publish: an idempotency key is 1 to 64 characters of [A-Za-z0-9_.:-]'));
    }
    return this.requests.request({ op: 'publish', channel, data, idempotency_key: key }).then((frame) => {
      const ack = frame as AckFrame;
      if (ack.offset === undefined && ack.duplicate === undefined) return undefined;
      const result: PublishResult = { duplicate: ack.duplicate === true };
      if (ack.offset !== undefined && ack.epoch !== undefined) {
        result.offset = ack.offset;
        result.epoch = ack.epoch;
      }
      return result;
    });
  }

  /**
   * Reads a channel's history (PROTOCOL.md 19.6): the publications after
   * `options.since` (a position from a message or {@link Subscription.position}),
   * or the latest ones, at most `options.limit`. Rejects with {@link NoHistoryError}
   * for a channel that keeps none, {@link PermissionDeniedError} for one this
   * connection may not subscribe to, {@link NotConnectedError} while disconnected.
   */
  history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const problem = validateChannel(channel, Infinity);
    if (problem) return Promise.reject(new InvalidChannelError(channel, problem));
    const { since, limit } = options;
    if (limit !== undefined && !(Number.isSafeInteger(limit) && limit >= 0)) {
      return Promise.reject(new TypeError('history: limit must be a non-negative integer'));
    }
    const request = { op: 'history' as const, channel, since: since && { offset: since.offset, epoch: since.epoch }, limit };
    return this.requests.request(request).then((frame) => {
      const { channel: name, offset, epoch, publications, complete } = frame as HistoryFrame;
      return { channel: name, offset, epoch, publications, complete };
    });
  }

  /**
   * Reads who is on a channel whose namespace has presence (PROTOCOL.md 21): its
   * members (users, each once however many connections it has, with their token's
   * `info`; at most the namespace's `presence_max` of them) and their exact count.
   * The connection need not be subscribed; the permission is a subscribe's. To
   * follow the changes, subscribe and listen to the `join` and `leave` events.
   *
   * Rejects with {@link PermissionDeniedError} for a channel this connection may not
   * subscribe to, a {@link ServerError} with code `bad_channel` for a channel whose
   * namespace has no presence, one with code `unknown_op` from a gateway older than
   * presence, {@link NotConnectedError} while disconnected.
   */
  presence(channel: string): Promise<PresenceResult> {
    const problem = validateChannel(channel, Infinity);
    if (problem) return Promise.reject(new InvalidChannelError(channel, problem));
    return this.requests.request({ op: 'presence', channel }).then(
      (frame) => {
        const { channel: name, count, members } = frame as PresenceFrame;
        return { channel: name, count, members };
      },
      (error: unknown) => {
        if (error instanceof ServerError && error.code === 'unknown_op') {
          // The gateway's own message only names the op; say what it means.
          throw new ServerError('unknown_op', 'this gateway predates presence (PROTOCOL.md 21)', error.requestId, channel);
        }
        throw error;
      },
    );
  }

  /** Sends an application ping and resolves with the round-trip time in milliseconds. */
  ping(): Promise<number> {
    const started = Date.now();
    return this.requests.request({ op: 'ping' }).then(() => Date.now() - started);
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
