/**
 * Requests and their replies: request ids, the requests waiting for their ack,
 * error or pong, the timeouts of those that have one, and settling them all
 * when their socket is lost. Behaviour follows proto/PROTOCOL.md, section 6.
 */

import type { Connection, SocketSession } from './connection';
import {
  ClientClosedError,
  MessageTooLargeError,
  NotConnectedError,
  RequestTimeoutError,
  serverError,
  type ShardcastError,
} from './errors';
import { utf8Length, type AckFrame, type ClientFrame, type ReplyFrame, type ServerFrame, type SubscribeFrame } from './protocol';

/** The requests sent with {@link RequestTable.request}: those with a reply and a timeout. */
export type TimedRequest = ClientFrame & {
  op: 'publish' | 'unsubscribe' | 'ping' | 'refresh' | 'sub_refresh' | 'history' | 'presence';
};

/** A request waiting for its ack, error or pong. */
interface PendingRequest {
  op: ClientFrame['op'];
  session: SocketSession;
  channel?: string;
  timer?: ReturnType<typeof setTimeout>;
  resolve: (frame: ServerFrame) => void;
  reject: (error: ShardcastError) => void;
  /** For subscribe: the socket is gone before the reply. */
  abandon?: () => void;
}

/** The outcome callbacks of a subscribe, which has no timeout. */
export interface SubscribeReply {
  /** The gateway acknowledged. */
  resolve: (ack: AckFrame) => void;
  /** The gateway refused. */
  reject: (error: ShardcastError) => void;
  /** The socket is gone before the reply. */
  abandon: () => void;
}

/** The requests in flight of one client, by id. */
export class RequestTable {
  private nextRequestId = 1;
  private readonly pending = new Map<number, PendingRequest>();

  constructor(
    private readonly connection: Connection,
    private readonly timeoutMs: number,
    private readonly maxMessageBytes: number,
    private readonly reportError: (error: ShardcastError) => void,
  ) {}

  /** A fresh id, unique among the requests in flight. */
  takeId(): number {
    const id = this.nextRequestId;
    // Ids only need to be unique among requests in flight; wrap long before precision runs out.
    this.nextRequestId = id >= Number.MAX_SAFE_INTEGER ? 1 : id + 1;
    return id;
  }

  /** Sends a request that has a reply and a timeout (publish, unsubscribe, ping, refresh, sub_refresh, history, presence). */
  request(frame: TimedRequest): Promise<ServerFrame> {
    const session = this.connection.session;
    if (!session || !this.connection.isConnected()) {
      return Promise.reject(this.connection.state === 'closed' ? new ClientClosedError() : new NotConnectedError(frame.op));
    }
    const id = this.takeId();
    const fullFrame = { ...frame, id };
    let encoded: string | Uint8Array;
    try {
      encoded = session.codec.encodeClient(fullFrame);
    } catch (cause) {
      return Promise.reject(new TypeError(`${frame.op}: cannot encode the frame (${String(cause)})`));
    }
    const size = typeof encoded === 'string' ? utf8Length(encoded) : encoded.length;
    if (size > this.maxMessageBytes) return Promise.reject(new MessageTooLargeError(size, this.maxMessageBytes));
    return new Promise<ServerFrame>((resolve, reject) => {
      const pending: PendingRequest = {
        op: frame.op,
        session,
        channel: frame.op === 'ping' || frame.op === 'refresh' ? undefined : frame.channel,
        resolve,
        reject,
      };
      pending.timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RequestTimeoutError(frame.op, this.timeoutMs));
      }, this.timeoutMs);
      this.pending.set(id, pending);
      if (!this.connection.send(session, fullFrame, encoded)) {
        clearTimeout(pending.timer);
        this.pending.delete(id);
        reject(new NotConnectedError(frame.op));
      }
    });
  }

  /**
   * Sends a subscribe on `session`. No timeout: a connection that stops
   * answering is caught by the heartbeat, and the subscription is sent again on
   * the next one.
   */
  subscribe(session: SocketSession, request: Omit<SubscribeFrame, 'op' | 'id'>, reply: SubscribeReply): void {
    const id = this.takeId();
    this.pending.set(id, {
      op: 'subscribe',
      session,
      channel: request.channel,
      resolve: (frame) => reply.resolve(frame.type === 'ack' ? frame : { type: 'ack', id }),
      reject: reply.reject,
      abandon: reply.abandon,
    });
    // A failed send means the socket is closing; its close handler settles this request.
    this.connection.send(session, { ...request, op: 'subscribe', id });
  }

  /** Settles the request an ack, pong, history, presence or error answers. */
  handleReply(frame: ReplyFrame): void {
    if (frame.id === undefined) {
      if (frame.type === 'error') this.reportError(serverError(frame.code, frame.message));
      return;
    }
    const pending = this.pending.get(frame.id);
    // Heartbeat pongs and replies to timed-out requests have nobody waiting.
    if (!pending) return;
    this.pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (frame.type === 'error') pending.reject(serverError(frame.code, frame.message, frame.id, pending.channel));
    else pending.resolve(frame);
  }

  /**
   * Settles the requests a lost socket leaves behind. Subscribe requests are
   * dropped quietly: the subscription is sent again on the next connection, or,
   * if the client is stopping, the channel table rejects the callers still waiting.
   */
  failPending(session: SocketSession, error: ShardcastError): void {
    for (const [id, pending] of Array.from(this.pending)) {
      if (pending.session !== session) continue;
      this.pending.delete(id);
      clearTimeout(pending.timer);
      if (pending.abandon) pending.abandon();
      else pending.reject(error);
    }
  }
}
