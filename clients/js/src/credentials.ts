/**
 * Tokens as the client handles them (proto/PROTOCOL.md section 18): where the
 * connection token comes from (a fixed string, a provider called before every
 * connect, `getToken`), when a new one must be fetched, when a token is due for
 * refresh (before its expiry, with jitter, reckoned so that a wrong clock on this
 * device does not matter where the token states when it was issued), and what a
 * JWT states about its own lifetime. It never verifies a token: only the gateway can.
 */

import { decodeUtf8 } from './msgpack';
import type { TokenProvider } from './types';

/** A refresh is never scheduled later than this before the token expires (for tokens that live long enough). */
export const REFRESH_MARGIN_MS = 10_000;

/** Nor sooner than this after the last one, so a token that looks already expired (a skewed clock) cannot cause a tight loop. */
export const MIN_REFRESH_DELAY_MS = 1_000;

/** A token in use: when it expires (gateway or token), when it was issued (the token), when this client got it (its clock). */
export interface TokenLifetime {
  /** Expiry, seconds since the Unix epoch (the welcome's or ack's `expires_at`, else the token's `exp`). */
  expiresAt: number;
  /** The token's `iat`, seconds since the Unix epoch, where it states one. */
  issuedAt: number | undefined;
  /** When this client received the token, by its own clock (ms). */
  receivedAtMs: number;
}

/**
 * Milliseconds until a token expires. Where the token states when it was issued,
 * its lifetime (`exp - iat`) less the time since it arrived: both ends of the
 * lifetime come from the backend's clock, so a device whose clock is minutes off
 * still refreshes in time, instead of seeing every token as already expired.
 * Otherwise the expiry against this device's clock.
 */
export function remainingMs(lifetime: TokenLifetime, nowMs: number): number {
  const { expiresAt, issuedAt, receivedAtMs } = lifetime;
  if (issuedAt !== undefined && expiresAt > issuedAt) return (expiresAt - issuedAt) * 1000 - (nowMs - receivedAtMs);
  return expiresAt * 1000 - nowMs;
}

/**
 * How long to wait before refreshing a token with `remaining` milliseconds left:
 * 80-90 % of it, jittered so that clients given tokens at the same moment do not
 * all refresh together, and never later than {@link REFRESH_MARGIN_MS} before
 * expiry. A token that has less than twice the margin left is refreshed at the
 * latest halfway through what is left; and never sooner than
 * {@link MIN_REFRESH_DELAY_MS}.
 */
export function refreshDelayMs(remaining: number, random: () => number): number {
  const jittered = remaining * (0.8 + 0.1 * random());
  const latest = Math.max(remaining - REFRESH_MARGIN_MS, remaining / 2);
  return Math.max(MIN_REFRESH_DELAY_MS, Math.floor(Math.min(jittered, latest)));
}

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Decodes unpadded base64url (RFC 4648 section 5); undefined if it is not. Written out because `atob` is missing on some React Native engines. */
function base64UrlDecode(text: string): Uint8Array | undefined {
  const bytes: number[] = [];
  let buffer = 0;
  let bits = 0;
  for (const char of text.replace(/=+$/, '')) {
    const value = BASE64URL.indexOf(char === '+' ? '-' : char === '/' ? '_' : char);
    if (value < 0) return undefined;
    buffer = (buffer << 6) | value;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((buffer >> bits) & 0xff);
    }
  }
  return Uint8Array.from(bytes);
}

/** What a JWT states about its own lifetime (seconds since the Unix epoch); empty for a token that is not a JWT. */
export interface TokenTimes {
  /** The `exp` claim. */
  expiresAt?: number;
  /** The `iat` claim. */
  issuedAt?: number;
}

/**
 * The `exp` and `iat` claims of a JWT in compact form, read without verifying
 * anything, to schedule its refresh.
 */
export function tokenTimes(token: string): TokenTimes {
  const payload = token.split('.')[1];
  if (payload === undefined) return {};
  const bytes = base64UrlDecode(payload);
  if (!bytes) return {};
  let claims: unknown;
  try {
    claims = JSON.parse(decodeUtf8(bytes));
  } catch {
    return {};
  }
  if (typeof claims !== 'object' || claims === null) return {};
  const time = (value: unknown): number | undefined => (typeof value === 'number' && Number.isFinite(value) ? value : undefined);
  const { exp, iat } = claims as { exp?: unknown; iat?: unknown };
  const times: TokenTimes = {};
  if (time(exp) !== undefined) times.expiresAt = time(exp);
  if (time(iat) !== undefined) times.issuedAt = time(iat);
  return times;
}

/** A token and when this client got it. */
export interface HeldToken {
  token: string;
  /** When it arrived, by this device's clock (ms). */
  receivedAtMs: number;
}

/** The lifetime of `held` given its expiry (from the gateway, else its own `exp`); undefined if neither says. */
export function lifetimeOf(held: HeldToken, expiresAt: number | undefined): TokenLifetime | undefined {
  const times = tokenTimes(held.token);
  const expiry = expiresAt ?? times.expiresAt;
  return expiry === undefined ? undefined : { expiresAt: expiry, issuedAt: times.issuedAt, receivedAtMs: held.receivedAtMs };
}

/**
 * The connection token's sources and the token in use. `token` (a string, or a
 * provider called before every connect) and `getToken` (called when a token is
 * needed and none is held or the one held is expired or due for refresh, and to
 * refresh it) may be combined: a `token` string is used first, then `getToken`.
 */
export class ConnectionCredentials {
  private current: HeldToken | undefined;
  /** Set when the token in hand is known to be expired (close 4002). */
  private stale = false;
  /** The lifetime of the token in hand, once the gateway said when it expires. */
  private lifetime: TokenLifetime | undefined;

  constructor(
    private readonly token: string | TokenProvider | undefined,
    private readonly getToken: TokenProvider | undefined,
  ) {
    if (typeof token === 'string' && token !== '') this.current = { token, receivedAtMs: Date.now() };
  }

  /** Whether the client authenticates at all (it connects anonymously otherwise). */
  get configured(): boolean {
    return this.token !== undefined || this.getToken !== undefined;
  }

  /** Whether a new token can be fetched (for a refresh, or after the token expired). */
  get renewable(): boolean {
    return this.getToken !== undefined || typeof this.token === 'function';
  }

  /** The token to connect with, fetching one if needed; undefined to connect anonymously. */
  async forConnect(nowMs: number): Promise<HeldToken | undefined> {
    // A provider passed as `token` is called before every connect, as it always was.
    if (typeof this.token === 'function') return this.take(await this.token());
    const dueForRefresh = this.lifetime !== undefined && remainingMs(this.lifetime, nowMs) <= REFRESH_MARGIN_MS;
    if (this.getToken && (this.current === undefined || this.stale || dueForRefresh)) return this.renew();
    return this.current;
  }

  /** A new token from `getToken` (else the provider); undefined if it supplied none. */
  async renew(): Promise<HeldToken | undefined> {
    const source = this.getToken ?? (typeof this.token === 'function' ? this.token : undefined);
    if (!source) return this.current;
    return this.take(await source());
  }

  /** The gateway closed with 4002: the token in hand must not be used again. */
  markExpired(): void {
    this.stale = true;
  }

  /** Records the lifetime of the token in hand, once the welcome or a refresh's ack said when it expires. */
  setLifetime(lifetime: TokenLifetime | undefined): void {
    this.lifetime = lifetime;
  }

  private take(token: string | null | undefined): HeldToken | undefined {
    this.current = token ? { token, receivedAtMs: Date.now() } : undefined;
    this.stale = false;
    this.lifetime = undefined;
    return this.current;
  }
}
