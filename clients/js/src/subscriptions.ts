/**
 * The channels the application wants: their handlers and {@link Subscription}
 * objects, subscribing and unsubscribing them on the gateway (an unsubscribe
 * never overtakes an unanswered subscribe of its channel), retrying refusals
 * with `unavailable`, subscribing every channel again on each new connection,
 * and delivering publications to the handlers. Behaviour follows
 * proto/PROTOCOL.md, sections 6 and 12.
 */

import { backoffDelay, type ReconnectOptions } from './backoff';
import type { Connection } from './connection';
import type { TypedEmitter } from './emitter';
import {
  ConnectionLostError,
  HandlerError,
  InvalidChannelError,
  NotConnectedError,
  ServerError,
  SubscriptionCancelledError,
  type ClientClosedError,
  type ShardcastError,
} from './errors';
import { validateChannel } from './protocol';
import type { RequestTable } from './requests';
import type { ClientEvents, MessageHandler, ReceivedMessage, Subscription } from './types';

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

  constructor(
    private readonly connection: Connection,
    private readonly requests: RequestTable,
    private readonly events: TypedEmitter<ClientEvents>,
    /** The backoff of retries after `unavailable`. */
    private readonly retry: ReconnectOptions,
    private readonly random: () => number,
    private readonly reportError: (error: ShardcastError) => void,
  ) {}

  /** The channels with at least one handler, subscribed or about to be. */
  get names(): string[] {
    return Array.from(this.channels.keys());
  }

  /** Adds a handler to a channel; see `ShardcastClient.subscribe`. */
  subscribe<T>(channel: string, handler: MessageHandler<T>): Promise<Subscription> {
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

  /** Calls the handlers of a channel with a publication. */
  dispatch(channel: string, seq: number, data: unknown): void {
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

  /** The connection is lost: nothing is acknowledged on the next one, and pending retries are moot. */
  resetForNewConnection(): void {
    for (const entry of this.channels.values()) {
      entry.acked = false;
      entry.unavailableCount = 0;
      if (entry.retryTimer !== undefined) {
        clearTimeout(entry.retryTimer);
        entry.retryTimer = undefined;
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
    const settle = (acked: boolean): void => {
      entry.inFlight = false;
      const callbacks = entry.onReply;
      entry.onReply = [];
      for (const callback of callbacks) callback(acked);
    };
    entry.inFlight = true;
    this.requests.subscribe(session, entry.channel, {
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
      const delayMs = backoffDelay(entry.unavailableCount, this.retry, this.random);
      entry.retryTimer = setTimeout(() => {
        entry.retryTimer = undefined;
        if (this.channels.get(entry.channel) === entry && this.connection.isConnected() && !entry.acked && !entry.inFlight) {
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
