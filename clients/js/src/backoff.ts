/**
 * The reconnect delay policy: exponential backoff with full jitter, capped,
 * combined with the gateway's close code and `retry_ms` hint. Pure functions,
 * so the policy is tested without sockets or timers.
 */

import { parseRetryMs, shouldReconnect } from './protocol';

/** How the client spaces its reconnect attempts. */
export interface ReconnectOptions {
  /** Reconnect automatically at all (default true). */
  enabled: boolean;
  /** The backoff ceiling before jitter for the first retry, in milliseconds (default 500). */
  initialDelayMs: number;
  /** The largest delay between attempts, in milliseconds (default 30 000). */
  maxDelayMs: number;
  /** Growth factor of the ceiling per failed attempt (default 2). */
  multiplier: number;
  /** Give up after this many consecutive failed attempts (default: never). */
  maxAttempts: number;
}

/** The defaults of {@link ReconnectOptions}. */
export const DEFAULT_RECONNECT: Readonly<ReconnectOptions> = Object.freeze({
  enabled: true,
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  multiplier: 2,
  maxAttempts: Infinity,
});

/**
 * The backoff delay before retry number `attempt` (1 for the first retry, which
 * the protocol text calls n = 0): "full jitter", a uniform draw from
 * [0, min(max, initial * multiplier^(attempt-1))),
 * which spreads a fleet of clients that lost the same gateway over the whole window.
 */
export function backoffDelay(attempt: number, options: ReconnectOptions, random: () => number = Math.random): number {
  const exponent = Math.max(0, attempt - 1);
  const ceiling = Math.min(options.maxDelayMs, options.initialDelayMs * Math.pow(options.multiplier, exponent));
  return Math.floor(random() * ceiling);
}

/** What to do after a connection closed. */
export type ReconnectDecision =
  | { reconnect: false; why: 'close_code' | 'max_attempts' | 'disabled' }
  | { reconnect: true; delayMs: number; retryHintMs: number | undefined };

/**
 * Decides whether and when to reconnect after a close with `code` and `reason`,
 * for retry number `attempt` (1 for the first retry after a loss), as section 12
 * of proto/PROTOCOL.md describes:
 *
 * - codes where the protocol says not to reconnect (framing, payload, policy,
 *   size: `shouldReconnect` is false) stop;
 * - everything else, a dropped connection or a failed connect included, waits the
 *   full-jitter backoff, and never less than the close reason's `retry_ms` hint
 *   (sent with 1001 "going away" by a draining gateway; accepted on any code).
 */
export function decideReconnect(
  code: number,
  reason: string,
  attempt: number,
  options: ReconnectOptions,
  random: () => number = Math.random,
): ReconnectDecision {
  if (!options.enabled) return { reconnect: false, why: 'disabled' };
  if (!shouldReconnect(code)) return { reconnect: false, why: 'close_code' };
  if (attempt > options.maxAttempts) return { reconnect: false, why: 'max_attempts' };
  const retryHintMs = parseRetryMs(reason);
  const backoff = backoffDelay(attempt, options, random);
  return { reconnect: true, delayMs: Math.max(backoff, retryHintMs ?? 0), retryHintMs };
}
