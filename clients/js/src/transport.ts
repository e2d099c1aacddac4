/**
 * The platform WebSocket as the client sees it: the small structural interface
 * that the browser's WebSocket, React Native's and the `ws` package for Node.js
 * all satisfy, how an implementation is found (injected, else the global), and
 * what a refused upgrade's error says.
 */

import { ShardcastError } from './errors';

/** WebSocket.readyState values (the same on every platform). */
export const ReadyState = Object.freeze({ CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 } as const);

/**
 * The part of a WebSocket the client uses. The handler properties take `any`
 * events so that the DOM's, React Native's and the `ws` package's classes are all
 * assignable without casts; the client reads only `data`, `code` and `reason`.
 */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol?: string;
  binaryType: string;
  send(data: string | ArrayBuffer | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onopen: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onerror: ((event: any) => void) | null;
}

/** A WebSocket class: `new WebSocket(url, protocols)`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** No WebSocket implementation was injected and the platform has none (Node.js before 22). */
export class NoWebSocketError extends ShardcastError {
  override readonly name: string = 'NoWebSocketError';

  constructor() {
    super(
      'no WebSocket implementation: this platform has no global WebSocket; pass one as the `WebSocket` option ' +
        "(for example `import WebSocket from 'ws'` on Node.js)",
    );
  }
}

/** The injected WebSocket class, else the platform's global one. */
export function resolveWebSocket(injected: WebSocketConstructor | undefined): WebSocketConstructor {
  if (injected) return injected;
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (typeof global !== 'function') throw new NoWebSocketError();
  return global;
}

/** A received frame's payload that still has to be read: a Blob, where the platform ignored `binaryType`. */
export interface BlobLike {
  arrayBuffer(): Promise<ArrayBuffer>;
}

/** Whether a received `data` is a Blob-like object rather than text or bytes. */
export function isBlobLike(data: unknown): data is BlobLike {
  return (
    typeof data === 'object' &&
    data !== null &&
    !(data instanceof ArrayBuffer) &&
    !ArrayBuffer.isView(data) &&
    typeof (data as BlobLike).arrayBuffer === 'function'
  );
}

/** HTTP statuses of a refused upgrade after which the protocol says not to retry: the request itself is wrong. */
export const FATAL_HANDSHAKE_STATUSES: readonly number[] = Object.freeze([400, 404, 405, 426, 431]);

/**
 * The HTTP status of a refused upgrade, read from a WebSocket error event's
 * message where the platform puts it there: the `ws` package ("Unexpected server
 * response: 404"), React Native on Android ("Expected HTTP 101 response but was
 * '404 Not Found'") and on iOS ("Received bad response code from server: 404.").
 * Browsers give no detail, so this is `undefined` there.
 */
export function httpStatusFromError(event: unknown): number | undefined {
  const message =
    typeof event === 'object' && event !== null
      ? ((event as { message?: unknown }).message ?? (event as { error?: { message?: unknown } }).error?.message)
      : undefined;
  if (typeof message !== 'string') return undefined;
  const match =
    /Unexpected server response: (\d{3})/.exec(message) ??
    /Expected HTTP 101 response but was '(\d{3})/.exec(message) ??
    /bad response code from server: (\d{3})/i.exec(message);
  return match ? Number(match[1]) : undefined;
}

