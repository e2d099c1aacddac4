/**
 * Authenticating the connection's sockets (proto/PROTOCOL.md sections 6.5, 6.6
 * and 18): the token a socket connects with, the `connect` frame and the wait for
 * the welcome that answers it, refreshing the token before it expires, and what
 * the authentication close codes (4002, 4003, 4004) mean for reconnecting. Where
 * tokens come from is ./credentials; the sockets themselves are ./connection's.
 */

import {
  lifetimeOf,
  refreshDelayMs,
  remainingMs,
  type ConnectionCredentials,
  type HeldToken,
  type TokenLifetime,
} from './credentials';
import { AuthenticationError, serverError, ShardcastError, TokenProviderError } from './errors';
import { CloseCode, type AckFrame, type ClientFrame, type ErrorFrame, type ServerFrame, type WelcomeFrame } from './protocol';

/** The client library's name in the `connect` frame, for the gateway's logs. */
const CLIENT_NAME = 'shardcast-js';

// Replaced with package.json's version by the build (tsup.config.ts) and the tests (vitest.config.ts).
declare const __SHARDCAST_CLIENT_VERSION__: string | undefined;
const CLIENT_VERSION = typeof __SHARDCAST_CLIENT_VERSION__ === 'string' ? __SHARDCAST_CLIENT_VERSION__ : undefined;

/** The authentication state of one socket. */
export interface AuthenticatedSocket {
  /** The welcome that lets the socket carry requests arrived. */
  welcomed: boolean;
  /** Set once the client stopped listening to this socket. */
  finished: boolean;
  /** The token this socket authenticates with, sent in a `connect` frame once it opens. */
  token?: HeldToken;
  /** The id of that `connect` frame: the welcome that answers it carries it. */
  connectId?: number;
  /** The anonymous welcome a gateway that allows anonymous connections sends before it reads the `connect`. */
  anonymousWelcome?: WelcomeFrame;
  /** The lifetime of the connection's token, from the welcome or the last refresh. */
  lifetime?: TokenLifetime;
  refreshTimer?: ReturnType<typeof setTimeout>;
}

/** What the authenticator needs of the connection whose sockets it authenticates. */
export interface AuthenticationHooks<S extends AuthenticatedSocket> {
  /** Sends a frame on the socket; false if it cannot take it. */
  send(session: S, frame: ClientFrame): boolean;
  /** An id for a `connect`, unique among the requests in flight. */
  nextId(): number;
  /** Sends a `refresh` with a new connection token on the current socket; resolves with its ack. */
  refresh(token: string): Promise<AckFrame>;
  /** The welcome that lets the socket carry requests arrived. */
  welcomed(session: S, welcome: WelcomeFrame): void;
  /** The gateway refused the `connect`: the socket is given up. */
  refused(session: S, reason: string): void;
  /** A refresh was acknowledged. */
  refreshed(expiresAt: number | undefined): void;
  /** Reports an error that no promise carries. */
  reportError(error: ShardcastError): void;
}

/** The authentication of one client's sockets, one after another. */
export class SocketAuthenticator<S extends AuthenticatedSocket> {
  constructor(
    private readonly credentials: ConnectionCredentials,
    private readonly random: () => number,
    private readonly hooks: AuthenticationHooks<S>,
  ) {}

  /** Whether sockets authenticate at all (they connect anonymously otherwise). */
  get configured(): boolean {
    return this.credentials.configured;
  }

  /** The token for the next socket, undefined to connect anonymously; rejects with {@link TokenProviderError}. */
  async connectToken(): Promise<HeldToken | undefined> {
    try {
      return await this.credentials.forConnect(Date.now());
    } catch (cause) {
      throw new TokenProviderError('token provider failed', { cause });
    }
  }

  /** The socket is open: a token goes in the `connect` frame, which must be the first frame (PROTOCOL.md 6.5). */
  opened(session: S): void {
    if (session.finished || session.token === undefined) return;
    session.connectId = this.hooks.nextId();
    this.hooks.send(session, {
      op: 'connect',
      id: session.connectId,
      token: session.token.token,
      name: CLIENT_NAME,
      ...(CLIENT_VERSION === undefined ? {} : { version: CLIENT_VERSION }),
    });
  }

  /** Whether the socket sent `connect` and still awaits its welcome, so its frames go to {@link beforeIdentified}. */
  awaitsIdentity(session: S): boolean {
    return !session.welcomed && session.connectId !== undefined;
  }

  /**
   * A frame on a socket that sent `connect` and awaits the welcome answering it.
   * Where the gateway allows anonymous connections, an anonymous welcome (without
   * the connect's id) comes first: it is not the answer, only kept in case the
   * gateway turns out not to know `connect` at all.
   */
  beforeIdentified(session: S, frame: ServerFrame): void {
    if (frame.type === 'welcome') {
      if (frame.id === session.connectId) this.hooks.welcomed(session, frame);
      else session.anonymousWelcome ??= frame;
      return;
    }
    if (frame.type === 'error' && frame.id === session.connectId) this.connectRefused(session, frame);
    // Anything else cannot answer a request yet: nothing but the connect has been sent.
  }

  private connectRefused(session: S, frame: ErrorFrame): void {
    if (frame.code === 'unknown_op' && session.anonymousWelcome) {
      // A gateway from before authentication: it checks no tokens, so the anonymous connection is all there is.
      this.hooks.reportError(
        new ShardcastError('the gateway does not know the connect operation (no authentication); connected anonymously'),
      );
      this.hooks.welcomed(session, session.anonymousWelcome);
      return;
    }
    this.hooks.reportError(serverError(frame.code, frame.message, frame.id));
    this.hooks.refused(session, `connect refused: ${frame.code}`);
  }

  /** The socket is welcomed: plans the refresh of its token, if it has one that expires. */
  welcomed(session: S, welcome: WelcomeFrame): void {
    this.scheduleRefresh(session, session.token && lifetimeOf(session.token, welcome.expires_at));
  }

  /** The socket is gone, or its token replaced: no more refreshes of the token it had. */
  stopRefreshing(session: S): void {
    if (session.refreshTimer !== undefined) clearTimeout(session.refreshTimer);
    session.refreshTimer = undefined;
  }

  /**
   * The error that ends the client after an authentication close code, if this is
   * one: 4003 and 4004 never reconnect; 4002 (token expired) reconnects with a new
   * token, so the token in hand is dropped, unless no new one can be fetched.
   */
  closeFailure(code: number, reason: string): AuthenticationError | undefined {
    const { credentials } = this;
    switch (code) {
      case CloseCode.UNAUTHORIZED:
        return new AuthenticationError(code, reason, 'the gateway refused the connection token');
      case CloseCode.DISCONNECTED:
        return new AuthenticationError(code, reason, 'an operator disconnected this user');
      case CloseCode.TOKEN_EXPIRED:
        credentials.markExpired();
        return credentials.renewable
          ? undefined
          : new AuthenticationError(code, reason, 'the connection token expired and there is no getToken to fetch a new one');
      default:
        return undefined;
    }
  }

  /** Plans the refresh of the token with this lifetime (none if it does not expire, or if no new token can be had). */
  private scheduleRefresh(session: S, lifetime: TokenLifetime | undefined): void {
    this.stopRefreshing(session);
    session.lifetime = lifetime;
    const { credentials } = this;
    credentials.setLifetime(lifetime);
    if (lifetime === undefined || !credentials.renewable) return;
    const delayMs = refreshDelayMs(remainingMs(lifetime, Date.now()), this.random);
    session.refreshTimer = setTimeout(() => void this.refresh(session), delayMs);
  }

  /**
   * Fetches a new token and sends it in a `refresh`. On failure it tries again,
   * sooner each time (the schedule halves what is left); if the token expires all
   * the same, the gateway closes with 4002 and the client reconnects with a new one.
   */
  private async refresh(session: S): Promise<void> {
    session.refreshTimer = undefined;
    const retry = (error: ShardcastError): void => {
      if (session.finished) return;
      this.hooks.reportError(error);
      // Past the expiry there is nothing left to save: the gateway's close 4002 follows.
      const { lifetime } = session;
      if (lifetime !== undefined && remainingMs(lifetime, Date.now()) > 0) this.scheduleRefresh(session, lifetime);
    };
    let held: HeldToken | undefined;
    try {
      held = await this.credentials.renew();
    } catch (cause) {
      retry(new TokenProviderError('getToken failed for a refresh', { cause }));
      return;
    }
    if (session.finished) return;
    if (held === undefined) {
      retry(new TokenProviderError('getToken returned no token for a refresh'));
      return;
    }
    let ack: AckFrame;
    try {
      ack = await this.hooks.refresh(held.token);
    } catch (error) {
      retry(error instanceof ShardcastError ? error : new ShardcastError('refresh failed', { cause: error }));
      return;
    }
    if (session.finished) return;
    session.token = held;
    this.scheduleRefresh(session, lifetimeOf(held, ack.expires_at));
    this.hooks.refreshed(ack.expires_at);
  }
}
