// A scripted stand-in for the platform WebSocket: records what the client sends
// and lets a test play the gateway's side (open, welcome, frames, closes) without
// a network, so the client's state machine runs under fake timers.
import { decode as msgpackDecode, encode as msgpackEncode } from '@msgpack/msgpack';
import type { WebSocketLike } from '../../src/index';

export class FakeWebSocket implements WebSocketLike {
  /** Every socket constructed since the last reset, oldest first. */
  static instances: FakeWebSocket[] = [];

  static reset(): void {
    FakeWebSocket.instances = [];
  }

  /** The newest socket. */
  static get last(): FakeWebSocket {
    const socket = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!socket) throw new Error('no socket was opened');
    return socket;
  }

  readyState = 0;
  protocol = '';
  binaryType = 'blob';
  readonly sent: (string | Uint8Array)[] = [];
  closedByClient: { code?: number; reason?: string } | undefined;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeWebSocket.instances.push(this);
  }

  send(data: string | ArrayBuffer | ArrayBufferView): void {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(typeof data === 'string' ? data : new Uint8Array(data as ArrayBuffer));
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 2;
  }

  // ---- the gateway's side ----

  private get binary(): boolean {
    return (Array.isArray(this.protocols) ? this.protocols[0] : this.protocols) === 'shardcast.v1.msgpack';
  }

  /** Completes the handshake, echoing the offered subprotocol. */
  open(): void {
    this.readyState = 1;
    this.protocol = Array.isArray(this.protocols) ? (this.protocols[0] ?? '') : (this.protocols ?? '');
    this.onopen?.({});
  }

  /** Sends a server frame in the connection's encoding. */
  receive(frame: Record<string, unknown>): void {
    const data = this.binary ? msgpackEncode(frame).slice().buffer : JSON.stringify(frame);
    this.onmessage?.({ data });
  }

  /** Opens and sends the welcome. */
  accept(pingIntervalMs = 25_000, node = 'node-1'): void {
    this.open();
    this.receive({ type: 'welcome', version: 1, node, shard: 0, ping_interval_ms: pingIntervalMs });
  }

  /** The gateway (or the network) closes the connection. */
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The frames the client sent, decoded. */
  frames(): Record<string, unknown>[] {
    return this.sent.map((d) => (typeof d === 'string' ? JSON.parse(d) : msgpackDecode(d)) as Record<string, unknown>);
  }

  /** The frames the client sent with the given op. */
  framesWithOp(op: string): Record<string, unknown>[] {
    return this.frames().filter((f) => f.op === op);
  }

  /** Acknowledges every subscribe the client sent that has not been answered yet. */
  ackSubscribes(alreadyAcked = new Set<unknown>()): void {
    for (const frame of this.framesWithOp('subscribe')) {
      if (alreadyAcked.has(frame.id)) continue;
      alreadyAcked.add(frame.id);
      this.receive({ type: 'ack', id: frame.id });
    }
  }
}
