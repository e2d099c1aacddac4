// Compile-time checks (run by `npm run typecheck`, never executed): the WebSocket
// classes users pass in are accepted without casts, as the README shows.
import WebSocket from 'ws';
import { ShardcastClient, type WebSocketConstructor } from '../../src/index';

// The `ws` package, for Node.js.
export const fromWs = (): ShardcastClient => new ShardcastClient({ url: 'ws://127.0.0.1:8000/ws', WebSocket });

// The DOM's WebSocket class, as in browsers and React Native.
declare const domWebSocket: typeof globalThis.WebSocket;
export const fromDom: WebSocketConstructor = domWebSocket;
