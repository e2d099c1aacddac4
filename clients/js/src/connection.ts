/**
 * The client's logical connection to a gateway, which survives the loss of any
 * particular WebSocket. Owns the connection state machine (idle → connecting →
 * connected → reconnecting … → closed), opening sockets (subprotocol, connect
 * timeout), reading and routing their frames, the reconnect schedule and the
 * heartbeat. Authenticating the sockets is ./authentication's; what replies and
 * publications mean is left to the {@link ConnectionHooks} the client wires in.
 * Behaviour follows proto/PROTOCOL.md, sections 5, 10, 11 and 12.
 */

import { SocketAuthenticator, type AuthenticatedSocket } from './authentication';
import { decideReconnect, type ReconnectOptions } from './backoff';
import type { Codec, FramePayload } from './codec';
import type { TypedEmitter } from './emitter';
import type { ConnectionCredentials, HeldToken } from './credentials';
import { ClientClosedError, ConnectionLostError, HandshakeRejectedError, ProtocolError, ShardcastError } from './errors';
import {
  CloseCode,
  type AckFrame,
  type ClientFrame,
  type GapFrame,
  type JoinFrame,
  type LeaveFrame,
  type MessageFrame,
  type ReplyFrame,
  type ServerFrame,
  type UnsubscribedFrame,
  type WelcomeFrame,
} from './protocol';
import {
  FATAL_HANDSHAKE_STATUSES,
  httpStatusFromError,
  isBlobLike,
  ReadyState,
  type WebSocketConstructor,
  type WebSocketLike,
} from './transport';
import type { ClientEvents, ConnectionState, HeartbeatOptions } from './types';

/** One WebSocket and the state that lives and dies with it. */
export interface SocketSession extends AuthenticatedSocket {
  socket: WebSocketLike;
  codec: Codec;
  welcomedAt: number;
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

/** The client's options as the connection uses them, defaults applied. */
export interface ConnectionSettings {
  url: string;
  codec: Codec;
  WebSocket: WebSocketConstructor;
  credentials: ConnectionCredentials;
  reconnect: ReconnectOptions;
  heartbeat: false | HeartbeatOptions;
  connectTimeoutMs: number;
  random: () => number;
}

/** What the rest of the client does when the connection receives a frame, loses a socket or stops. */
export interface ConnectionHooks {
  /** A welcome arrived: every channel is subscribed on the new socket. */
  welcomed(): void;
  /** A publication arrived. */
  message(frame: MessageFrame): void;
  /** Publications of a channel may have been missed on this connection. */
  gap(frame: GapFrame): void;
  /** A user joined or left a channel with presence (PROTOCOL.md 21). */
  presenceChange(frame: JoinFrame | LeaveFrame): void;
  /** The gateway ended a subscription. */
  unsubscribed(frame: UnsubscribedFrame): void;
  /** Sends a `refresh` with a new connection token on the current socket; resolves with its ack. */
  refresh(token: string): Promise<AckFrame>;
  /** An ack, pong, history, presence or error arrived. */
  reply(frame: ReplyFrame): void;
  /** `session` is gone: the requests sent on it are settled with `error`. */
  lost(session: SocketSession, error: ShardcastError): void;
  /** The next attempt is scheduled: nothing is acknowledged on the connection to come. */
  reconnecting(): void;
  /** The client stops: subscribes still waiting are rejected with `error`. */
  stopped(error: ClientClosedError): void;
  /** An id for a heartbeat ping or a `connect`, unique among the requests in flight. */
  nextId(): number;
  /** Reports an error that no promise carries. */
  reportError(error: ShardcastError): void;
}

/** The state machine of one client's connection. */
export class Connection {
  private currentState: ConnectionState = 'idle';
  private current: SocketSession | undefined;
  private lastWelcome: WelcomeFrame | undefined;
  /** Consecutive failed attempts; reset by a connection that stayed up for the backoff cap. */
  private failures = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** Bumped whenever a connect attempt is superseded, so a late token does not open a stale socket. */
  private generation = 0;
  private readonly onlineListener = (): void => this.reconnectNow();
  private readonly authenticator: SocketAuthenticator<SocketSession>;

  constructor(
    private readonly settings: ConnectionSettings,
    private readonly events: TypedEmitter<ClientEvents>,
    private readonly hooks: ConnectionHooks,
  ) {
    this.authenticator = new SocketAuthenticator(settings.credentials, settings.random, {
      send: (session, frame) => this.send(session, frame),
      nextId: () => hooks.nextId(),
      refresh: (token) => hooks.refresh(token),
      welcomed: (session, welcome) => this.handleWelcome(session, welcome),
      refused: (session, reason) => this.abortConnection(session, reason),
      refreshed: (expiresAt) => events.emit('refreshed', { expiresAt }),
      reportError: (error) => hooks.reportError(error),
    });
  }

  /** The current connection state. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The welcome of the current (or last) connection, if any arrived. */
  get welcome(): WelcomeFrame | undefined {
    return this.lastWelcome;
  }

  /** The socket in use, welcomed or not yet. */
  get session(): SocketSession | undefined {
    return this.current;
  }

  /** Whether a welcomed socket is up, so requests can be sent. */
  isConnected(): boolean {
    return this.currentState === 'connected' && this.current !== undefined && this.current.welcomed;
  }

  /** Starts connecting from idle or closed; while waiting to reconnect, skips the rest of the wait. */
  connect(): void {
    if (this.currentState === 'idle' || this.currentState === 'closed') {
      this.failures = 0;
      this.addOnlineListener();
      void this.openConnection();
    } else if (this.currentState === 'reconnecting') {
      this.reconnectNow();
    }
  }

  /** Closes the socket and stops reconnecting; the requests on the socket fail with {@link ClientClosedError}. */
  close(code: number, reason: string): void {
    if (this.currentState === 'closed' || this.currentState === 'idle') {
      this.setState('closed');
      return;
    }
    this.generation++;
    const session = this.current;
    if (session) {
      const wasConnected = session.welcomed;
      this.abandon(session, code, reason);
      this.hooks.lost(session, new ClientClosedError());
      this.events.emit('disconnected', { code, reason, wasConnected, willReconnect: false });
    }
    this.stop(undefined, reason);
  }

  /** Sends a frame (`encoded`, if already encoded); false if the socket cannot take it. */
  send(session: SocketSession, frame: ClientFrame, encoded?: string | Uint8Array): boolean {
    if (session.finished || session.socket.readyState !== ReadyState.OPEN) return false;
    try {
      session.socket.send(encoded ?? session.codec.encodeClient(frame));
      return true;
    } catch (cause) {
      this.hooks.reportError(new ShardcastError(`cannot send ${frame.op}`, { cause }));
      return false;
    }
  }

  // ---- sockets ----

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.events.emit('state', { state, previous });
  }

  private async openConnection(): Promise<void> {
    const { settings } = this;
    const generation = ++this.generation;
    this.setState('connecting');
    this.events.emit('connecting', { attempt: this.failures });
    let token: HeldToken | undefined;
    if (this.authenticator.configured) {
      try {
        token = await this.authenticator.connectToken();
      } catch (error) {
        if (generation !== this.generation) return;
        this.hooks.reportError(error as ShardcastError);
        this.afterLoss(CloseCode.ABNORMAL, 'token provider failed', undefined);
        return;
      }
      // close() or connect() ran while the token was being fetched.
      if (generation !== this.generation) return;
    }
    let socket: WebSocketLike;
    try {
      // Never a token in the URL: the gateway refuses one there (URLs end up in access logs).
      socket = new settings.WebSocket(settings.url, [settings.codec.subprotocol]);
    } catch (cause) {
      // A malformed URL throws synchronously; retrying would fail the same way forever.
      const error = new ShardcastError(`cannot open WebSocket to ${settings.url}`, { cause });
      this.hooks.reportError(error);
      this.events.emit('disconnected', { code: CloseCode.ABNORMAL, reason: error.message, wasConnected: false, willReconnect: false });
      this.stop(CloseCode.ABNORMAL, error.message);
      return;
    }
    const session: SocketSession = {
      socket,
      codec: settings.codec,
      welcomed: false,
      welcomedAt: 0,
      finished: false,
      lastReceivedAt: Date.now(),
      heartbeatPinged: false,
      token,
    };
    this.current = session;
    try {
      socket.binaryType = 'arraybuffer';
    } catch {
      // Platforms without binaryType deliver Blobs, which handleRaw reads asynchronously.
    }
    socket.onopen = () => this.authenticator.opened(session);
    socket.onmessage = (event: { data: unknown }) => this.handleRaw(session, event.data);
    socket.onclose = (event: { code?: number; reason?: string }) =>
      this.handleSocketClosed(session, event?.code ?? CloseCode.ABNORMAL, event?.reason ?? '');
    // Every platform follows an error with a close event; the error is kept because
    // on some platforms its message is the only place an HTTP refusal shows.
    socket.onerror = (event: unknown) => {
      session.lastError = event;
    };
    session.connectTimer = setTimeout(() => this.abortConnection(session, 'connect timeout'), settings.connectTimeoutMs);
  }

  private handleRaw(session: SocketSession, data: unknown): void {
    if (session.finished) return;
    if (isBlobLike(data) || session.inbound) {
      // Frames after a Blob wait for it, so handlers see them in order.
      session.inbound = (session.inbound ?? Promise.resolve())
        .then(async () => (isBlobLike(data) ? await data.arrayBuffer() : (data as FramePayload)))
        .then((payload) => this.handleFrame(session, payload))
        .catch((cause) => this.hooks.reportError(new ProtocolError('cannot read a binary frame', { cause })));
      return;
    }
    this.handleFrame(session, data as FramePayload);
  }

  private handleFrame(session: SocketSession, payload: FramePayload): void {
    if (session.finished) return;
    // Any frame at all, even one this client cannot use, proves the connection alive.
    session.lastReceivedAt = Date.now();
    session.heartbeatPinged = false;
    let frame: ServerFrame | null;
    try {
      frame = session.codec.decodeServer(payload);
    } catch (error) {
      this.hooks.reportError(error instanceof ShardcastError ? error : new ProtocolError('cannot decode a frame', { cause: error }));
      return;
    }
    // A frame type from a newer protocol revision: the protocol says to ignore it.
    if (frame === null) return;
    if (this.authenticator.awaitsIdentity(session)) {
      this.authenticator.beforeIdentified(session, frame);
      return;
    }
    if (!session.welcomed) {
      if (frame.type !== 'welcome') {
        this.hooks.reportError(new ProtocolError(`expected a welcome frame first, got ${frame.type}`));
        this.abortConnection(session, 'no welcome');
        return;
      }
      this.handleWelcome(session, frame);
      return;
    }
    switch (frame.type) {
      case 'message':
        this.hooks.message(frame);
        return;
      case 'ack':
      case 'pong':
      case 'history':
      case 'presence':
      case 'error':
        this.hooks.reply(frame);
        return;
      case 'join':
      case 'leave':
        this.hooks.presenceChange(frame);
        return;
      case 'gap':
        this.hooks.gap(frame);
        return;
      case 'unsubscribed':
        this.hooks.unsubscribed(frame);
        return;
      case 'welcome':
        // A second welcome is unexpected but harmless.
        return;
    }
  }

  private handleWelcome(session: SocketSession, welcome: WelcomeFrame): void {
    session.welcomed = true;
    session.welcomedAt = Date.now();
    clearTimeout(session.connectTimer);
    this.lastWelcome = welcome;
    this.setState('connected');
    this.events.emit('connected', { welcome, encoding: session.codec.encoding });
    // A 'connected' listener may have closed the client: a heartbeat timer would then
    // keep a finished socket's process alive, and subscribes would go to the next socket.
    if (session.finished) return;
    this.startHeartbeat(session, welcome);
    this.authenticator.welcomed(session, welcome);
    this.hooks.welcomed();
  }

  private handleSocketClosed(session: SocketSession, code: number, reason: string): void {
    if (session.finished) return;
    this.finish(session);
    this.hooks.lost(session, new ConnectionLostError(code, reason));
    if (!session.welcomed) {
      const status = httpStatusFromError(session.lastError);
      if (status !== undefined && FATAL_HANDSHAKE_STATUSES.includes(status)) {
        // The request itself is wrong (path, headers): report it instead of retrying in a loop.
        const error = new HandshakeRejectedError(status, this.settings.url);
        this.hooks.reportError(error);
        this.events.emit('disconnected', { code, reason: error.message, wasConnected: false, willReconnect: false });
        this.stop(code, error.message);
        return;
      }
    }
    this.afterLoss(code, reason, session);
  }

  /** Gives up on a socket the client no longer trusts (no welcome in time, heartbeat lost). */
  private abortConnection(session: SocketSession, reason: string): void {
    if (session.finished) return;
    const { socket } = session as { socket: WebSocketLike & { terminate?: () => void } };
    if (typeof socket.terminate === 'function') {
      // The `ws` package would otherwise wait up to 30 s for a close frame from a peer that is gone.
      this.finish(session);
      try {
        socket.terminate();
      } catch {
        // Dropping it is all that was wanted.
      }
    } else {
      this.abandon(session, CloseCode.NORMAL, reason);
    }
    // Reported as 1006 (no close frame received), as when the platform notices a dead peer itself.
    this.hooks.lost(session, new ConnectionLostError(CloseCode.ABNORMAL, reason));
    this.afterLoss(CloseCode.ABNORMAL, reason, session);
  }

  /** Stops listening to a socket and closes it without waiting for the close handshake. */
  private abandon(session: SocketSession, code: number, reason: string): void {
    this.finish(session);
    const { socket } = session;
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

  private finish(session: SocketSession): void {
    session.finished = true;
    clearTimeout(session.connectTimer);
    if (session.heartbeatTimer !== undefined) clearTimeout(session.heartbeatTimer);
    this.authenticator.stopRefreshing(session);
    const { socket } = session;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    socket.onerror = null;
    if (this.current === session) this.current = undefined;
  }

  // ---- reconnecting ----

  /**
   * After a socket is gone (or could not even be attempted): schedule the next
   * attempt, or stop for good. `session` is the lost socket, if there was one.
   */
  private afterLoss(code: number, reason: string, session: SocketSession | undefined): void {
    const { reconnect } = this.settings;
    const wasConnected = session?.welcomed ?? false;
    // A connection that stayed up for the backoff cap resets the backoff; one that is
    // accepted and dropped at once (a slow consumer, a crashing gateway) keeps backing off.
    if (session?.welcomed && Date.now() - session.welcomedAt >= reconnect.maxDelayMs) {
      this.failures = 0;
    }
    this.failures++;
    const authError = this.authenticator.closeFailure(code, reason);
    const decision = authError
      ? ({ reconnect: false } as const)
      : decideReconnect(code, reason, this.failures, reconnect, this.settings.random);
    this.events.emit('disconnected', { code, reason, wasConnected, willReconnect: decision.reconnect });
    if (authError) this.hooks.reportError(authError);
    if (!decision.reconnect) {
      this.stop(code, reason);
      return;
    }
    this.hooks.reconnecting();
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

  /** Enters the closed state; the hooks reject everything still waiting. */
  private stop(code: number | undefined, reason: string): void {
    this.removeOnlineListener();
    this.clearReconnectTimer();
    this.hooks.stopped(new ClientClosedError(code, reason));
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
   * One timer per socket, re-armed on each expiry rather than on each frame,
   * so a busy connection costs nothing: it checks how long the connection has
   * been quiet, pings once per quiet period, and gives up after the timeout.
   */
  private startHeartbeat(session: SocketSession, welcome: WelcomeFrame): void {
    const { heartbeat } = this.settings;
    if (heartbeat === false) return;
    const intervalMs = heartbeat.intervalMs ?? welcome.ping_interval_ms;
    if (!(intervalMs > 0)) return;
    const timeoutMs = heartbeat.timeoutMs ?? intervalMs;
    const check = (): void => {
      session.heartbeatTimer = undefined;
      if (session.finished) return;
      const quietMs = Date.now() - session.lastReceivedAt;
      if (!session.heartbeatPinged) {
        if (quietMs >= intervalMs) {
          // The pong itself is not awaited: any frame that arrives clears heartbeatPinged.
          session.heartbeatPinged = true;
          this.send(session, { op: 'ping', id: this.hooks.nextId() });
          session.heartbeatTimer = setTimeout(check, timeoutMs);
        } else {
          session.heartbeatTimer = setTimeout(check, intervalMs - quietMs);
        }
        return;
      }
      if (quietMs >= intervalMs + timeoutMs) {
        this.abortConnection(session, 'heartbeat timeout');
        return;
      }
      session.heartbeatTimer = setTimeout(check, intervalMs + timeoutMs - quietMs);
    };
    session.heartbeatTimer = setTimeout(check, intervalMs);
  }
}
