/**
 * Tokens as the client handles them (proto/PROTOCOL.md section 18): where the
 * connection token comes from (a fixed string, a provider called before every
 * connect, `getToken`), when a new one must be fetched, when a token is due for
 * refresh (before its expiry, with jitter), and the expiry a JWT states about
 * itself. It never verifies a token: only the gateway can.
 */

import { decodeUtf8 } from './msgpack';
import type { TokenProvider } from './types';

/** A refresh is never scheduled later than this before the token expires (for tokens that live long enough). */
export const REFRESH_MARGIN_MS = 10_000;

/** Nor sooner than this after the last one, so a token that looks already expired (a skewed clock) cannot cause a tight loop. */
export const MIN_REFRESH_DELAY_MS = 1_000;

/**
 * How long to wait before refreshing a token that expires at `expiresAtSec`
 * (seconds since the Unix epoch): 80-90 % of the remaining lifetime, jittered so
 * that clients given tokens at the same moment do not all refresh together, and
 * never later than {@link REFRESH_MARGIN_MS} before expiry. A token that lives
 * less than twice the margin is refreshed at the latest halfway through what is
 * left of it; and never sooner than {@link MIN_REFRESH_DELAY_MS}.
 */
export function refreshDelayMs(expiresAtSec: number, nowMs: number, random: () => number): number {
  const remaining = expiresAtSec * 1000 - nowMs;
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

/**
 * The `exp` claim of a JWT in compact form (seconds since the Unix epoch), read
 * without verifying anything, to schedule its refresh; undefined if the token is
 * not a JWT or states no expiry.
 */
export function tokenExpiry(token: string): number | undefined {
  const payload = token.split('.')[1];
  if (payload === undefined) return undefined;
  const bytes = base64UrlDecode(payload);
  if (!bytes) return undefined;
  try {
    const claims = JSON.parse(decodeUtf8(bytes)) as { exp?: unknown } | null;
    const exp = claims?.exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The connection token's sources and the token in use. `token` (a string, or a
 * provider called before every connect) and `getToken` (called when a token is
 * needed and none is held or the one held is expired or due for refresh, and to
 * refresh it) may be combined: a `token` string is used first, then `getToken`.
 */
export class ConnectionCredentials {
  private current: string | undefined;
  /** Set when the token in hand is known to be expired (close 4002) or about to be. */
  private stale = false;
  private expiresAtSec: number | undefined;

  constructor(
    private readonly token: string | TokenProvider | undefined,
    private readonly getToken: TokenProvider | undefined,
  ) {
    if (typeof token === 'string' && token !== '') this.current = token;
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
  async forConnect(nowMs: number): Promise<string | undefined> {
    // A provider passed as `token` is called before every connect, as it always was.
    if (typeof this.token === 'function') return this.take(await this.token());
    const dueForRefresh = this.expiresAtSec !== undefined && nowMs >= this.expiresAtSec * 1000 - REFRESH_MARGIN_MS;
    if (this.getToken && (this.current === undefined || this.stale || dueForRefresh)) return this.renew();
    return this.current;
  }

  /** A new token from `getToken` (else the provider); undefined if it supplied none. */
  async renew(): Promise<string | undefined> {
    const source = this.getToken ?? (typeof this.token === 'function' ? this.token : undefined);
    if (!source) return this.current;
    return this.take(await source());
  }

  /** The gateway closed with 4002: the token in hand must not be used again. */
  markExpired(): void {
    this.stale = true;
  }

  /** Records when the token in use expires, from the welcome or a refresh's ack. */
  setExpiry(expiresAtSec: number | undefined): void {
    this.expiresAtSec = expiresAtSec;
  }

  private take(token: string | null | undefined): string | undefined {
    this.current = token || undefined;
    this.stale = false;
    this.expiresAtSec = undefined;
    return this.current;
  }
}
