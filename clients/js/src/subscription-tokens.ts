/**
 * Subscription tokens (proto/PROTOCOL.md 18.4 and 6.7): asking the application's
 * `getSubscriptionToken` for a channel's token, and keeping each held token
 * fresh with `sub_refresh` before it expires, on the schedule of connection
 * tokens. A token's expiry is the ack's `expires_at` where the gateway sends
 * one, else the token's own `exp` claim; it is taken to arrive with its ack.
 */

import { lifetimeOf, refreshDelayMs, remainingMs, type TokenLifetime } from './credentials';
import { ShardcastError, TokenProviderError } from './errors';
import type { AckFrame } from './protocol';
import type { RequestTable } from './requests';
import type { SubscriptionTokenProvider } from './types';

/** The subscription tokens of one client's channels. */
export class SubscriptionTokens {
  /** Per channel: the refresh timer, and the lifetime of the token it refreshes ahead of. */
  private readonly held = new Map<string, { lifetime: TokenLifetime; timer: ReturnType<typeof setTimeout> }>();

  constructor(
    private readonly provider: SubscriptionTokenProvider | undefined,
    private readonly requests: RequestTable,
    private readonly random: () => number,
    /** Reports a failed refresh for a channel (its subscription goes on until the token in use expires). */
    private readonly reportError: (channel: string, error: ShardcastError) => void,
  ) {}

  /** Whether subscribes ask for a token first. */
  get enabled(): boolean {
    return this.provider !== undefined;
  }

  /** The channel's subscription token, or undefined if it needs none; rejects with {@link TokenProviderError}. */
  async fetch(channel: string): Promise<string | undefined> {
    if (!this.provider) return undefined;
    try {
      return (await this.provider(channel)) || undefined;
    } catch (cause) {
      throw new TokenProviderError(`getSubscriptionToken failed for ${channel}`, { cause });
    }
  }

  /** A subscribe with `token` was acknowledged: plans the token's refresh. */
  track(channel: string, token: string, ack: AckFrame): void {
    this.schedule(channel, lifetimeOf({ token, receivedAtMs: Date.now() }, ack.expires_at));
  }

  /** The channel's subscription is over: no more refreshes. */
  forget(channel: string): void {
    const held = this.held.get(channel);
    if (held) clearTimeout(held.timer);
    this.held.delete(channel);
  }

  /** The connection is gone, and every subscription with it. */
  forgetAll(): void {
    for (const channel of Array.from(this.held.keys())) this.forget(channel);
  }

  private schedule(channel: string, lifetime: TokenLifetime | undefined): void {
    this.forget(channel);
    if (lifetime === undefined) return;
    const delayMs = refreshDelayMs(remainingMs(lifetime, Date.now()), this.random);
    const timer = setTimeout(() => void this.refresh(channel, lifetime), delayMs);
    this.held.set(channel, { lifetime, timer });
  }

  /**
   * Sends a `sub_refresh` with a new token. A failure is reported and retried,
   * sooner each time; if the token expires all the same, the gateway ends the
   * subscription with `unsubscribed` (`token_expired`).
   */
  private async refresh(channel: string, lifetime: TokenLifetime): Promise<void> {
    const current = this.held.get(channel);
    try {
      const token = await this.fetch(channel);
      if (this.held.get(channel) !== current) return;
      if (token === undefined) throw new TokenProviderError(`getSubscriptionToken returned no token to refresh ${channel}`);
      const ack = (await this.requests.request({ op: 'sub_refresh', channel, token })) as AckFrame;
      if (this.held.get(channel) !== current) return;
      this.schedule(channel, lifetimeOf({ token, receivedAtMs: Date.now() }, ack.expires_at));
    } catch (error) {
      // Forgotten meanwhile (unsubscribed, reconnected): the failure no longer matters.
      if (this.held.get(channel) !== current) return;
      this.reportError(channel, error instanceof ShardcastError ? error : new ShardcastError('sub_refresh failed', { cause: error }));
      // Past the expiry there is nothing left to save: the gateway's `unsubscribed` follows.
      if (remainingMs(lifetime, Date.now()) > 0) this.schedule(channel, lifetime);
      else this.forget(channel);
    }
  }
}
