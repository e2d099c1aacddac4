/**
 * The channels the application wants: their handlers and {@link Subscription}
 * objects with their events, subscribing (with a subscription token where the
 * application supplies one) and unsubscribing them on the gateway (an
 * unsubscribe never overtakes an unanswered subscribe of its channel), retrying
 * refusals with `unavailable`, subscribing every channel again on each new
 * connection (with `recover` from the last position delivered, on a channel with
 * history), subscriptions the gateway ends (`unsubscribed`), delivering
 * publications to the handlers once each and in order, and telling them when a
 * channel's stream could not be kept whole (`stale`), and who joins and leaves a
 * channel with presence (`join`, `leave`). Behaviour follows proto/PROTOCOL.md,
 * sections 6, 7.6, 7.7, 12, 18.4, 19.3-19.7 and 21.
 */

import { backoffDelay, type ReconnectOptions } from './backoff';
import type { Connection, SocketSession } from './connection';
import { TypedEmitter } from './emitter';
import {
  ConnectionLostError,
  HandlerError,
  InvalidChannelError,
  NotConnectedError,
  ServerError,
  SubscriptionCancelledError,
  SubscriptionEndedError,
  type ClientClosedError,
  type ShardcastError,
} from './errors';
import {
  validateChannel,
  type AckFrame,
  type GapFrame,
  type GapReason,
  type JoinFrame,
  type LeaveFrame,
  type MessageFrame,
  type StreamPosition,
  type UnsubscribedFrame,
} from './protocol';
import type { RequestTable } from './requests';
import { SubscriptionTokens } from './subscription-tokens';
import type {
  ClientEvents,
  MessageHandler,
  ReceivedMessage,
  StaleEvent,
  SubscribeOptions,
  Subscription,
  SubscriptionEvents,
  SubscriptionTokenProvider,
} from './types';

interface SubscribeWaiter {
  handler: MessageHandler<never>;
  resolve: () => void;
  reject: (error: ShardcastError) => void;
}

/** A channel the application wants, with everything attached to it. */
interface ChannelEntry {
  channel: string;
  /** Each handler with the events of its {@link Subscription}. */
  handlers: Map<MessageHandler<never>, TypedEmitter<SubscriptionEvents>>;
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
  /** Consecutive `unavailable` refusals (and failed subscription-token fetches), for the retry backoff. */
  unavailableCount: number;
  retryTimer?: ReturnType<typeof setTimeout>;
  /** Bumped by every subscribe sent, so the reply to a superseded one (a token fetch that outlived its socket) is ignored. */
  attempt: number;
  /** The subscribe in flight is still waiting for its subscription token. */
  fetchingToken: boolean;
  /** Some handler asked for the channel's latest publication on subscribe (a state channel). */
  latest: boolean;
  /**
   * On a channel with history: where to recover from after a reconnect, the last
   * publication delivered or, before any, the position of the last subscribe's ack.
   */
  position?: StreamPosition;
  /** The last publication with an offset handed to the handlers; older offsets of its epoch are duplicates. */
  delivered?: StreamPosition;
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

/** One client's channels, by name. */
export class ChannelTable {
  private readonly channels = new Map<string, ChannelEntry>();
  /** Unsubscribes that wait for their channel's in-flight subscribe; a new subscribe of the channel waits for them. */
  private readonly drops = new Map<string, Promise<void>>();
  private readonly tokens: SubscriptionTokens;

  constructor(
    private readonly connection: Connection,
    private readonly requests: RequestTable,
    private readonly events: TypedEmitter<ClientEvents>,
    /** The backoff of retries after `unavailable`. */
    private readonly retry: ReconnectOptions,
    private readonly random: () => number,
    private readonly reportError: (error: ShardcastError) => void,
    getSubscriptionToken: SubscriptionTokenProvider | undefined,
  ) {
    this.tokens = new SubscriptionTokens(getSubscriptionToken, requests, random, (channel, error) => {
      const entry = this.channels.get(channel);
      if (entry) this.reportChannelError(entry, error);
      else this.reportError(error);
    });
  }

  /** The channels with at least one handler, subscribed or about to be. */
  get names(): string[] {
    return Array.from(this.channels.keys());
  }

  /** Adds a handler to a channel; see `ShardcastClient.subscribe`. */
  subscribe<T>(channel: string, handler: MessageHandler<T>, options: SubscribeOptions = {}): Promise<Subscription> {
    // The gateway's length limit is configurable, so only the charset is checked here.
    const problem = validateChannel(channel, Infinity);
    if (problem) return Promise.reject(new InvalidChannelError(channel, problem));
    if (typeof handler !== 'function') return Promise.reject(new TypeError('subscribe: handler must be a function'));
    const typedHandler = handler as MessageHandler<never>;
    let entry = this.channels.get(channel);
    if (entry?.handlers.has(typedHandler)) {
      return Promise.reject(new TypeError(`subscribe: this handler is already subscribed to ${channel}`));
    }
    const emitter = new TypedEmitter<SubscriptionEvents>((cause, event) =>
      this.reportError(new HandlerError(`listener for the "${String(event)}" event of ${channel} threw`, { cause })),
    );
    if (options.onStale) emitter.on('stale', options.onStale);
    const subscription = this.makeSubscription(channel, typedHandler, emitter);
    if (entry) {
      entry.handlers.set(typedHandler, emitter);
      if (options.latest === true) entry.latest = true;
      if (entry.acked) return Promise.resolve(subscription);
    } else {
      entry = {
        channel,
        handlers: new Map([[typedHandler, emitter]]),
        acked: false,
        everAcked: false,
        waiters: [],
        inFlight: false,
        onReply: [],
        unavailableCount: 0,
        attempt: 0,
        fetchingToken: false,
        latest: options.latest === true,
      };
      this.channels.set(channel, entry);
      if (this.connection.isConnected()) this.sendSubscribe(entry);
    }
    const waitingEntry = entry;
    return markHandled(
      new Promise<Subscription>((resolve, reject) => {
        waitingEntry.waiters.push({ handler: typedHandler, resolve: () => resolve(subscription), reject });
      }),
    );
  }

  /** Removes every handler of a channel; see `ShardcastClient.unsubscribe`. */
  unsubscribe(channel: string): Promise<void> {
    const entry = this.channels.get(channel);
    if (!entry) return Promise.resolve();
    return markHandled(this.dropChannel(entry));
  }

  /** A new connection was welcomed: subscribes every channel on it. */
  subscribeAll(): void {
    for (const entry of this.channels.values()) {
      entry.acked = false;
      this.sendSubscribe(entry);
    }
  }

  /**
   * Calls the handlers of a channel with a publication, unless its offset is at or
   * below the last one delivered in its epoch (a duplicate: PROTOCOL.md 19.7).
   */
  dispatch(frame: MessageFrame): void {
    const { channel, seq, data, offset, epoch } = frame;
    const entry = this.channels.get(channel);
    // A publication can race an unsubscribe; nobody wants it any more.
    if (!entry) return;
    const message: ReceivedMessage<unknown> = { channel, seq, data };
    if (offset !== undefined && epoch !== undefined) {
      const last = entry.delivered;
      if (last !== undefined && last.epoch === epoch && offset <= last.offset) return;
      entry.delivered = { offset, epoch };
      entry.position = entry.delivered;
      message.offset = offset;
      message.epoch = epoch;
    }
    for (const handler of Array.from(entry.handlers.keys())) {
      try {
        (handler as MessageHandler<unknown>)(data, message);
      } catch (cause) {
        this.reportError(new HandlerError(`handler for channel ${channel} threw`, { cause }));
      }
    }
  }

  /** A `gap` frame: the `gap` event, then `stale` for the channel's subscriptions. */
  handleGap(frame: GapFrame): void {
    const { channel, reason } = frame;
    this.events.emit('gap', reason === undefined ? { channel } : { channel, reason });
    const entry = this.channels.get(channel);
    if (entry) this.reportStale(entry, { channel, reason: reason ?? 'unknown', source: 'gap' });
  }

  /**
   * A `join` or `leave` frame (PROTOCOL.md 21): the event on the channel's
   * subscriptions, then on the client. Like a publication, it can race an
   * unsubscribe, and then nobody wants it.
   */
  handlePresenceChange(frame: JoinFrame | LeaveFrame): void {
    const entry = this.channels.get(frame.channel);
    if (!entry) return;
    const emitters = Array.from(entry.handlers.values());
    if (frame.type === 'join') {
      const event = { channel: frame.channel, user: frame.user, info: frame.info };
      for (const emitter of emitters) emitter.emit('join', event);
      this.events.emit('join', event);
    } else {
      const event = { channel: frame.channel, user: frame.user };
      for (const emitter of emitters) emitter.emit('leave', event);
      this.events.emit('leave', event);
    }
  }

  /**
   * The gateway ended a subscription (`unsubscribed`): the channel is forgotten,
   * its subscriptions become inactive and hear why. The application may subscribe
   * again (with a fresh subscription token where one is needed).
   */
  handleUnsubscribed(frame: UnsubscribedFrame): void {
    const entry = this.channels.get(frame.channel);
    this.tokens.forget(frame.channel);
    this.events.emit('unsubscribed', { channel: frame.channel, code: frame.code, message: frame.message });
    if (!entry) return;
    this.channels.delete(entry.channel);
    if (entry.retryTimer !== undefined) clearTimeout(entry.retryTimer);
    const emitters = Array.from(entry.handlers.values());
    entry.handlers.clear();
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.reject(new SubscriptionEndedError(entry.channel, frame.code, frame.message));
    for (const emitter of emitters) emitter.emit('unsubscribed', { code: frame.code, message: frame.message });
  }

  /** The connection is lost: nothing is acknowledged on the next one, and pending retries are moot. */
  resetForNewConnection(): void {
    this.tokens.forgetAll();
    for (const entry of this.channels.values()) {
      entry.acked = false;
      entry.unavailableCount = 0;
      if (entry.retryTimer !== undefined) {
        clearTimeout(entry.retryTimer);
        entry.retryTimer = undefined;
      }
      if (entry.fetchingToken) {
        // Its socket is gone before the subscribe was even sent.
        entry.attempt++;
        this.settle(entry, false);
      }
    }
  }

  /** The client stops: rejects every subscribe still waiting and forgets unacknowledged subscriptions. */
  stop(error: ClientClosedError): void {
    this.resetForNewConnection();
    for (const entry of Array.from(this.channels.values())) {
      for (const waiter of entry.waiters) {
        // The caller is told subscribe() failed, so its handler must not stay registered.
        entry.handlers.delete(waiter.handler);
        waiter.reject(error);
      }
      entry.waiters = [];
      if (entry.handlers.size === 0) this.channels.delete(entry.channel);
    }
  }

  private makeSubscription(
    channel: string,
    handler: MessageHandler<never>,
    emitter: TypedEmitter<SubscriptionEvents>,
  ): Subscription {
    const entryOf = (): ChannelEntry | undefined => {
      const entry = this.channels.get(channel);
      return entry?.handlers.get(handler) === emitter ? entry : undefined;
    };
    return {
      channel,
      get active() {
        return entryOf() !== undefined;
      },
      get state() {
        const entry = entryOf();
        return entry === undefined ? 'unsubscribed' : entry.acked ? 'subscribed' : 'subscribing';
      },
      get position() {
        const position = entryOf()?.position;
        return position === undefined ? undefined : { ...position };
      },
      on: (event, listener) => emitter.on(event, listener),
      unsubscribe: () => {
        const entry = entryOf();
        if (!entry) return Promise.resolve();
        entry.handlers.delete(handler);
        const cancelled = entry.waiters.filter((w) => w.handler === handler);
        entry.waiters = entry.waiters.filter((w) => w.handler !== handler);
        for (const waiter of cancelled) waiter.reject(new SubscriptionCancelledError(channel));
        if (entry.handlers.size > 0) return Promise.resolve();
        return markHandled(this.dropChannel(entry));
      },
    };
  }

  /** Sends a subscribe for an entry on the current socket, once no unsubscribe of its channel is pending. */
  private sendSubscribe(entry: ChannelEntry): void {
    const session = this.connection.session;
    if (!session) return;
    const drop = this.drops.get(entry.channel);
    if (drop) {
      // Sent now, this subscribe would reach the gateway before the pending unsubscribe
      // of the same channel and be undone by it.
      const resume = (): void => {
        if (this.channels.get(entry.channel) === entry && this.connection.isConnected() && !entry.acked && !entry.inFlight) {
          this.sendSubscribe(entry);
        }
      };
      drop.then(resume, resume);
      return;
    }
    entry.inFlight = true;
    const attempt = ++entry.attempt;
    if (!this.tokens.enabled) {
      this.sendSubscribeFrame(session, entry, attempt, undefined);
      return;
    }
    entry.fetchingToken = true;
    this.tokens.fetch(entry.channel).then(
      (token) => {
        if (entry.attempt !== attempt) return;
        entry.fetchingToken = false;
        if (this.channels.get(entry.channel) !== entry || this.connection.session !== session || !this.connection.isConnected()) {
          // Dropped, or its socket is gone: the next connection subscribes the channel again.
          this.settle(entry, false);
          return;
        }
        this.sendSubscribeFrame(session, entry, attempt, token);
      },
      (error: ShardcastError) => {
        if (entry.attempt !== attempt) return;
        entry.fetchingToken = false;
        this.settle(entry, false);
        if (this.channels.get(entry.channel) !== entry) return;
        // Likely the application's backend is briefly unreachable: report it and retry like `unavailable`.
        this.reportChannelError(entry, error);
        this.retryLater(entry);
      },
    );
  }

  private sendSubscribeFrame(session: SocketSession, entry: ChannelEntry, attempt: number, token: string | undefined): void {
    const current = (): boolean => entry.attempt === attempt;
    // Only a channel that had a position (so history) on an earlier connection recovers.
    const recover = entry.position === undefined ? undefined : { ...entry.position };
    const latest = recover === undefined && entry.latest;
    const request = { channel: entry.channel, token, recover, latest: latest || undefined };
    this.requests.subscribe(session, request, {
      resolve: (ack) => {
        if (!current()) return;
        this.settle(entry, true);
        this.handleSubscribeAck(entry, ack, token, recover, latest);
      },
      reject: (error) => {
        if (!current()) return;
        this.settle(entry, false);
        this.handleSubscribeRefused(entry, error);
      },
      abandon: () => {
        if (current()) this.settle(entry, false);
      },
    });
  }

  /** The in-flight subscribe has its outcome (true: acked), or is gone without one. */
  private settle(entry: ChannelEntry, acked: boolean): void {
    entry.inFlight = false;
    const callbacks = entry.onReply;
    entry.onReply = [];
    for (const callback of callbacks) callback(acked);
  }

  private handleSubscribeAck(
    entry: ChannelEntry,
    ack: AckFrame,
    token: string | undefined,
    recover: StreamPosition | undefined,
    latest: boolean,
  ): void {
    // The entry may have been dropped (or replaced by a new subscribe) since the request went out.
    if (this.channels.get(entry.channel) !== entry) return;
    if (token !== undefined) this.tokens.track(entry.channel, token, ack);
    const resubscribed = entry.everAcked;
    entry.acked = true;
    entry.everAcked = true;
    entry.unavailableCount = 0;
    const recovered = recover === undefined ? undefined : ack.recovered === true;
    // Recovered: the publications after `recover` follow, and advance the position as they are delivered.
    if (recovered !== true) entry.position = this.ackPosition(ack, latest);
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.resolve();
    const { channel } = entry;
    this.events.emit('subscribed', recovered === undefined ? { channel, resubscribed } : { channel, resubscribed, recovered });
    if (recover !== undefined && recovered === false) {
      this.reportStale(entry, { channel, reason: notRecoveredReason(ack, recover), source: 'recover' });
    }
  }

  /**
   * Where a subscription starts, from its ack: the top offset it does not deliver
   * live, or the one before it when the latest publication (the top) was asked to follow.
   */
  private ackPosition(ack: AckFrame, latest: boolean): StreamPosition | undefined {
    if (ack.offset === undefined || ack.epoch === undefined) return undefined;
    return { offset: latest && ack.offset > 0 ? ack.offset - 1 : ack.offset, epoch: ack.epoch };
  }

  /** Tells the channel's subscriptions and the client that the channel's stream has a hole. */
  private reportStale(entry: ChannelEntry, event: StaleEvent): void {
    for (const emitter of Array.from(entry.handlers.values())) emitter.emit('stale', event);
    this.events.emit('stale', event);
  }

  private handleSubscribeRefused(entry: ChannelEntry, error: ShardcastError): void {
    if (this.channels.get(entry.channel) !== entry) return;
    if (error instanceof ServerError && error.code === 'unavailable') {
      // The gateway's broker is struggling: retry this subscription with backoff (section 12).
      this.retryLater(entry);
      return;
    }
    // Any other refusal is final for this channel (bad name, too many channels, permission denied):
    // retrying would be refused again.
    this.channels.delete(entry.channel);
    const waiters = entry.waiters;
    entry.waiters = [];
    // Subscriptions handed out earlier (this was a re-subscribe) hear it on their own events.
    const waiting = new Set(waiters.map((waiter) => waiter.handler));
    const emitters = Array.from(entry.handlers).flatMap(([handler, emitter]) => (waiting.has(handler) ? [] : [emitter]));
    entry.handlers.clear();
    for (const waiter of waiters) waiter.reject(error);
    for (const emitter of emitters) emitter.emit('error', error);
    // A re-subscribe nobody awaits: the client hears it too.
    if (waiters.length === 0) this.reportError(error);
  }

  /** Sends the entry's subscribe again after a backoff delay (after `unavailable`, or a failed token fetch). */
  private retryLater(entry: ChannelEntry): void {
    entry.unavailableCount++;
    const delayMs = backoffDelay(entry.unavailableCount, this.retry, this.random);
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = undefined;
      if (this.channels.get(entry.channel) === entry && this.connection.isConnected() && !entry.acked && !entry.inFlight) {
        this.sendSubscribe(entry);
      }
    }, delayMs);
  }

  /** Reports an error about a channel on its subscriptions and to the client. */
  private reportChannelError(entry: ChannelEntry, error: ShardcastError): void {
    for (const emitter of Array.from(entry.handlers.values())) emitter.emit('error', error);
    this.reportError(error);
  }

  private dropChannel(entry: ChannelEntry): Promise<void> {
    this.channels.delete(entry.channel);
    this.tokens.forget(entry.channel);
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
    if (!this.connection.isConnected()) return Promise.resolve();
    return this.requests.request({ op: 'unsubscribe', channel }).then(
      () => undefined,
      (error: unknown) => {
        // Already gone on the gateway, or the connection dropped (which unsubscribes everything): done either way.
        if (error instanceof ServerError && error.code === 'not_subscribed') return;
        if (error instanceof ConnectionLostError || error instanceof NotConnectedError) return;
        throw error;
      },
    );
  }
}

/** Why a `subscribe` with `recover` was answered `recovered: false`, which the ack itself does not say. */
function notRecoveredReason(ack: AckFrame, recover: StreamPosition): GapReason {
  if (ack.offset === undefined || ack.epoch === undefined) return 'no_history';
  return ack.epoch === recover.epoch ? 'too_far' : 'epoch_changed';
}
