/**
 * The client's typed errors. Every error the package throws, rejects with or
 * emits is a {@link ShardcastError}; the subclasses tell the cases apart with
 * `instanceof` and carry the protocol's codes where there is one.
 */

import type { ChannelNameProblem, ErrorCode, UnsubscribeCode } from './protocol';

/** Base class of every error raised by this package. */
export class ShardcastError extends Error {
  override readonly name: string = 'ShardcastError';

  constructor(message: string, options?: { cause?: unknown }) {
    super(message);
    if (options && 'cause' in options) {
      // Assigned by hand because the `cause` option of Error() is ES2022 and the
      // package targets older runtimes too.
      Object.defineProperty(this, 'cause', { value: options.cause, writable: true, configurable: true });
    }
    // Keeps `instanceof` working when compiled to ES5-style classes by a consumer's toolchain.
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

/** The gateway answered a request with an `error` frame. */
export class ServerError extends ShardcastError {
  override readonly name: string = 'ServerError';

  /** The protocol's error code (`forbidden`, `bad_channel`, ...). */
  readonly code: ErrorCode;
  /** The id of the request the error answers, where the gateway echoed one. */
  readonly requestId: number | undefined;
  /** The channel the failed request named, where it named one. */
  readonly channel: string | undefined;

  constructor(code: ErrorCode, message: string, requestId?: number, channel?: string) {
    super(`${code}: ${message}`);
    this.code = code;
    this.requestId = requestId;
    this.channel = channel;
  }
}

/**
 * The gateway's channel rules do not let this connection's identity subscribe to
 * or publish on the channel (`permission_denied`, PROTOCOL.md 18.3), or a
 * subscription token was for another channel or user. Retrying with the same
 * credentials is refused again.
 */
export class PermissionDeniedError extends ServerError {
  override readonly name: string = 'PermissionDeniedError';
}

/**
 * The request needs an identity the connection does not have, or its token was
 * refused (`unauthorized`): a subscription token that is malformed, badly signed
 * or expired, or a `refresh` on an anonymous connection.
 */
export class UnauthorizedError extends ServerError {
  override readonly name: string = 'UnauthorizedError';
}

/** The channel keeps no history (`no_history`, PROTOCOL.md 19.6): the answer to `history()` on such a channel. */
export class NoHistoryError extends ServerError {
  override readonly name: string = 'NoHistoryError';
}

/**
 * The gateway's broker did not answer a publish in time (`timeout`, PROTOCOL.md
 * 14.3): the publication may or may not have been delivered. Retrying with the same
 * idempotency key is safe (PROTOCOL.md 19.9). Not to be confused with
 * {@link RequestTimeoutError}, where the gateway itself did not answer.
 */
export class BrokerTimeoutError extends ServerError {
  override readonly name: string = 'BrokerTimeoutError';
}

/** The {@link ServerError} (or subclass) for an `error` frame's code. */
export function serverError(code: ErrorCode, message: string, requestId?: number, channel?: string): ServerError {
  switch (code) {
    case 'permission_denied':
      return new PermissionDeniedError(code, message, requestId, channel);
    case 'unauthorized':
      return new UnauthorizedError(code, message, requestId, channel);
    case 'no_history':
      return new NoHistoryError(code, message, requestId, channel);
    case 'timeout':
      return new BrokerTimeoutError(code, message, requestId, channel);
    default:
      return new ServerError(code, message, requestId, channel);
  }
}

/**
 * The gateway closed the connection in a way that forbids reconnecting with the
 * same credentials: 4003 (the token is missing or was refused), 4004 (an operator
 * disconnected this user), or 4002 (the token expired) when the client has no
 * `getToken` to fetch a new one. The client is closed; call `connect()` once the
 * cause is fixed.
 */
export class AuthenticationError extends ShardcastError {
  override readonly name: string = 'AuthenticationError';
  /** The WebSocket close code. */
  readonly code: number;
  /** The WebSocket close reason (for 4003, why the token was refused). */
  readonly reason: string;

  constructor(code: number, reason: string, message: string) {
    super(`${message} (close ${code}${reason ? `: ${reason}` : ''})`);
    this.code = code;
    this.reason = reason;
  }
}

/** The gateway ended a subscription (`unsubscribed` frame) before its subscribe was acknowledged. */
export class SubscriptionEndedError extends ShardcastError {
  override readonly name: string = 'SubscriptionEndedError';
  /** The channel. */
  readonly channel: string;
  /** Why: `token_expired`, `permission_denied`, or `unknown`. */
  readonly code: UnsubscribeCode;

  constructor(channel: string, code: UnsubscribeCode, message: string) {
    super(`the gateway ended the subscription to ${channel}: ${code}${message ? ` (${message})` : ''}`);
    this.channel = channel;
    this.code = code;
  }
}

/** A channel name the protocol does not allow; raised before anything is sent. */
export class InvalidChannelError extends ShardcastError {
  override readonly name: string = 'InvalidChannelError';

  /** The refused name. */
  readonly channel: string;
  /** What is wrong with it. */
  readonly problem: ChannelNameProblem;

  constructor(channel: string, problem: ChannelNameProblem) {
    super(`invalid channel name ${JSON.stringify(channel)}: ${problem.replace('_', ' ')}`);
    this.channel = channel;
    this.problem = problem;
  }
}

/** A request got no reply within the request timeout. */
export class RequestTimeoutError extends ShardcastError {
  override readonly name: string = 'RequestTimeoutError';

  /** The operation that timed out. */
  readonly op: string;
  /** How long the client waited, in milliseconds. */
  readonly timeoutMs: number;

  constructor(op: string, timeoutMs: number) {
    super(`no reply to ${op} within ${timeoutMs} ms`);
    this.op = op;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * The operation needs an open connection and there is none (publish and ping
 * are not queued while disconnected, since replaying them later could surprise).
 */
export class NotConnectedError extends ShardcastError {
  override readonly name: string = 'NotConnectedError';

  constructor(op: string) {
    super(`cannot ${op}: not connected`);
  }
}

/** The connection closed while a request was waiting for its reply. */
export class ConnectionLostError extends ShardcastError {
  override readonly name: string = 'ConnectionLostError';

  /** The WebSocket close code. */
  readonly code: number;
  /** The WebSocket close reason. */
  readonly reason: string;

  constructor(code: number, reason: string) {
    super(`connection closed (${code}${reason ? `: ${reason}` : ''})`);
    this.code = code;
    this.reason = reason;
  }
}

/** The client was closed, by `close()` or by a close code that forbids reconnecting. */
export class ClientClosedError extends ShardcastError {
  override readonly name: string = 'ClientClosedError';

  /** The close code that ended the client, or undefined if `close()` did. */
  readonly code: number | undefined;
  /** The close reason that ended the client. */
  readonly reason: string;

  constructor(code?: number, reason = '') {
    super(code === undefined ? 'client closed' : `client closed after close code ${code}${reason ? `: ${reason}` : ''}`);
    this.code = code;
    this.reason = reason;
  }
}

/** The gateway sent a frame this client cannot decode. */
export class ProtocolError extends ShardcastError {
  override readonly name: string = 'ProtocolError';
}

/**
 * A token callback (`token`, `getToken`, `getSubscriptionToken`) threw or
 * rejected, or could not supply a token that was needed. A connect attempt counts
 * as failed and is retried with backoff; a refresh is retried before expiry.
 */
export class TokenProviderError extends ShardcastError {
  override readonly name: string = 'TokenProviderError';
}

/** A subscription handler or event listener threw; the client carries on. */
export class HandlerError extends ShardcastError {
  override readonly name: string = 'HandlerError';
}

/** The subscription was removed (by `unsubscribe`) before the gateway acknowledged it. */
export class SubscriptionCancelledError extends ShardcastError {
  override readonly name: string = 'SubscriptionCancelledError';
  /** The channel. */
  readonly channel: string;

  constructor(channel: string) {
    super(`subscription to ${channel} was cancelled before it was acknowledged`);
    this.channel = channel;
  }
}

/**
 * The gateway answered the WebSocket upgrade with an HTTP error that means the
 * client or its configuration is wrong (400, 404, 405, 426, 431), so retrying
 * would fail the same way. Only seen where the platform reports the status (the
 * `ws` package, React Native); browsers report every failed upgrade alike.
 */
export class HandshakeRejectedError extends ShardcastError {
  override readonly name: string = 'HandshakeRejectedError';
  /** The HTTP status of the refusal. */
  readonly status: number;

  constructor(status: number, detail: string) {
    super(`the gateway refused the WebSocket upgrade with HTTP ${status} (${detail})`);
    this.status = status;
  }
}

/**
 * A frame larger than the gateway's maximum message size; refused before sending,
 * because the gateway would close the connection with 1009 and, as the protocol
 * says, the client must not reconnect after that.
 */
export class MessageTooLargeError extends ShardcastError {
  override readonly name: string = 'MessageTooLargeError';
  /** The encoded frame's size in bytes. */
  readonly size: number;
  /** The limit it exceeds. */
  readonly limit: number;

  constructor(size: number, limit: number) {
    super(`frame of ${size} bytes exceeds the maximum message size of ${limit} bytes`);
    this.size = size;
    this.limit = limit;
  }
}
