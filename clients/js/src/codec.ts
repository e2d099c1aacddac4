/**
 * Frame encoding and decoding for both of the protocol's encodings: JSON in
 * text frames and MessagePack maps with named fields in binary frames. Owns the
 * canonical field order of client frames (the same as the gateway's, so encoded
 * frames match `proto/vectors/client_frames.json` byte for byte) and the shape
 * checks that turn an undecodable server frame into a {@link ProtocolError}.
 */

import { decodeMsgpack, decodeUtf8, encodeMsgpack } from './msgpack';
import { ProtocolError } from './errors';
import {
  toErrorCode,
  toGapReason,
  SUBPROTOCOLS,
  type AckFrame,
  type ClientFrame,
  type Encoding,
  type HistoryPublication,
  type PresenceMember,
  type MessageFrame,
  type PongFrame,
  type StreamPosition,
  type ServerFrame,
  type WelcomeFrame,
} from './protocol';

/** What a WebSocket message may carry once received: text, or bytes in some container. */
export type FramePayload = string | ArrayBuffer | ArrayBufferView;

/** Encodes client frames and decodes server frames for one encoding. */
export interface Codec {
  /** Which encoding this is. */
  readonly encoding: Encoding;
  /** The WebSocket subprotocol token that selects it. */
  readonly subprotocol: string;
  /** Encodes a client frame: a string (text frame) for JSON, bytes (binary frame) for MessagePack. */
  encodeClient(frame: ClientFrame): string | Uint8Array;
  /**
   * Decodes a server frame; throws {@link ProtocolError} if it is not one. Returns
   * `null` for a well-formed frame whose `type` this client does not know (a newer
   * gateway's), which the protocol says to ignore.
   */
  decodeServer(payload: FramePayload): ServerFrame | null;
}

/** A position as the gateway expects it: offset first, then epoch. */
function canonicalPosition(position: StreamPosition): Record<string, unknown> {
  return { offset: position.offset, epoch: position.epoch };
}

/**
 * Rebuilds a client frame with its fields in the gateway's order (op, id,
 * channel, token, recover, latest, since, limit, data, idempotency_key, name,
 * version) and without absent optional fields, so the encoding does not depend
 * on how the caller built the object.
 */
function canonicalClientFrame(frame: ClientFrame): Record<string, unknown> {
  const out: Record<string, unknown> = { op: frame.op };
  if (frame.id !== undefined) out.id = frame.id;
  switch (frame.op) {
    case 'subscribe':
      out.channel = frame.channel;
      if (frame.token !== undefined) out.token = frame.token;
      if (frame.recover !== undefined) out.recover = canonicalPosition(frame.recover);
      // `false` is the default, so it is left out, as the gateway's encoder does.
      if (frame.latest === true) out.latest = true;
      break;
    case 'history':
      out.channel = frame.channel;
      if (frame.since !== undefined) out.since = canonicalPosition(frame.since);
      if (frame.limit !== undefined) out.limit = frame.limit;
      break;
    case 'unsubscribe':
    case 'presence':
      out.channel = frame.channel;
      break;
    case 'publish':
      out.channel = frame.channel;
      out.data = frame.data;
      if (frame.idempotency_key !== undefined) out.idempotency_key = frame.idempotency_key;
      break;
    case 'sub_refresh':
      out.channel = frame.channel;
      out.token = frame.token;
      break;
    case 'refresh':
      out.token = frame.token;
      break;
    case 'connect':
      out.token = frame.token;
      if (frame.name !== undefined) out.name = frame.name;
      if (frame.version !== undefined) out.version = frame.version;
      break;
    case 'ping':
      break;
  }
  return out;
}

function toBytes(payload: ArrayBuffer | ArrayBufferView): Uint8Array {
  return payload instanceof Uint8Array
    ? payload
    : ArrayBuffer.isView(payload)
      ? new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength)
      : new Uint8Array(payload);
}

let utf8Decoder: TextDecoder | undefined;

function bytesToText(bytes: Uint8Array): string {
  // TextDecoder is missing from some React Native engines.
  if (typeof TextDecoder === 'undefined') return decodeUtf8(bytes);
  utf8Decoder ??= new TextDecoder('utf-8');
  return utf8Decoder.decode(bytes);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function optionalId(frame: Record<string, unknown>): number | undefined {
  const id = frame.id;
  if (id === undefined || id === null) return undefined;
  if (typeof id === 'number' && Number.isInteger(id) && id >= 0) return id;
  throw new ProtocolError(`server frame has a bad id: ${String(id)}`);
}

function requireString(frame: Record<string, unknown>, field: string): string {
  const value = frame[field];
  if (typeof value !== 'string') throw new ProtocolError(`server frame lacks string field \`${field}\``);
  return value;
}

function optionalString(frame: Record<string, unknown>, field: string): string | undefined {
  const value = frame[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  throw new ProtocolError(`server frame has a non-string \`${field}\``);
}

function optionalNumber(frame: Record<string, unknown>, field: string): number | undefined {
  const value = frame[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  throw new ProtocolError(`server frame has a non-numeric \`${field}\``);
}

/** Copies the optional fields that are present, so absent ones stay absent rather than `undefined`. */
function withOptional<T extends object>(frame: T, optional: Record<string, unknown>): T {
  for (const [key, value] of Object.entries(optional)) {
    if (value !== undefined) (frame as Record<string, unknown>)[key] = value;
  }
  return frame;
}

function optionalBoolean(frame: Record<string, unknown>, field: string): boolean | undefined {
  const value = frame[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'boolean') return value;
  throw new ProtocolError(`server frame has a non-boolean \`${field}\``);
}

function requireBoolean(frame: Record<string, unknown>, field: string): boolean {
  const value = frame[field];
  if (typeof value === 'boolean') return value;
  throw new ProtocolError(`server frame lacks boolean field \`${field}\``);
}

function toHistoryPublications(value: unknown): HistoryPublication[] {
  if (!Array.isArray(value)) throw new ProtocolError('history frame lacks array field `publications`');
  return value.map((entry: unknown) => {
    if (!isRecord(entry) || !('data' in entry)) throw new ProtocolError('history frame has a malformed publication');
    return { offset: requireNumber(entry, 'offset'), data: entry.data };
  });
}

function toPresenceMembers(value: unknown): PresenceMember[] {
  if (!Array.isArray(value)) throw new ProtocolError('presence frame lacks array field `members`');
  return value.map((entry: unknown) => {
    if (!isRecord(entry)) throw new ProtocolError('presence frame has a malformed member');
    return { user: requireString(entry, 'user'), info: entry.info ?? null };
  });
}

function requireNumber(frame: Record<string, unknown>, field: string): number {
  const value = frame[field];
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  throw new ProtocolError(`server frame lacks numeric field \`${field}\``);
}

/**
 * Checks a decoded value's shape and returns it as a typed server frame, or `null`
 * for a frame type this client does not know. Fields beyond the ones a frame type
 * defines are ignored, as a newer gateway may add some.
 */
export function toServerFrame(value: unknown): ServerFrame | null {
  if (!isRecord(value)) throw new ProtocolError('server frame is not a map');
  switch (value.type) {
    case 'welcome':
      return withOptional<WelcomeFrame>(
        {
          type: 'welcome',
          version: requireNumber(value, 'version'),
          node: requireString(value, 'node'),
          shard: requireNumber(value, 'shard'),
          ping_interval_ms: requireNumber(value, 'ping_interval_ms'),
        },
        { id: optionalId(value), user: optionalString(value, 'user'), expires_at: optionalNumber(value, 'expires_at') },
      );
    case 'ack':
      return withOptional<AckFrame>(
        { type: 'ack' },
        {
          id: optionalId(value),
          expires_at: optionalNumber(value, 'expires_at'),
          offset: optionalNumber(value, 'offset'),
          epoch: optionalString(value, 'epoch'),
          recovered: optionalBoolean(value, 'recovered'),
          duplicate: optionalBoolean(value, 'duplicate'),
        },
      );
    case 'pong':
      return withOptional<PongFrame>({ type: 'pong' }, { id: optionalId(value) });
    case 'error': {
      const id = optionalId(value);
      const code = toErrorCode(value.code);
      const message = typeof value.message === 'string' ? value.message : '';
      return id === undefined ? { type: 'error', code, message } : { type: 'error', id, code, message };
    }
    case 'message':
      if (!('data' in value)) throw new ProtocolError('message frame lacks field `data`');
      return withOptional<MessageFrame>(
        {
          type: 'message',
          channel: requireString(value, 'channel'),
          seq: requireNumber(value, 'seq'),
          data: value.data,
        },
        { offset: optionalNumber(value, 'offset'), epoch: optionalString(value, 'epoch') },
      );
    case 'gap': {
      const channel = requireString(value, 'channel');
      const reason = value.reason;
      return reason === undefined || reason === null
        ? { type: 'gap', channel }
        : { type: 'gap', channel, reason: toGapReason(reason) };
    }
    case 'history':
      return withOptional(
        {
          type: 'history' as const,
          channel: requireString(value, 'channel'),
          offset: requireNumber(value, 'offset'),
          epoch: requireString(value, 'epoch'),
          publications: toHistoryPublications(value.publications),
          complete: requireBoolean(value, 'complete'),
        },
        { id: optionalId(value) },
      );
    case 'presence':
      return withOptional(
        {
          type: 'presence' as const,
          channel: requireString(value, 'channel'),
          count: requireNumber(value, 'count'),
          members: toPresenceMembers(value.members),
        },
        { id: optionalId(value) },
      );
    case 'join':
      return {
        type: 'join',
        channel: requireString(value, 'channel'),
        user: requireString(value, 'user'),
        info: value.info ?? null,
      };
    case 'leave':
      return { type: 'leave', channel: requireString(value, 'channel'), user: requireString(value, 'user') };
    case 'unsubscribed': {
      const code = value.code === 'token_expired' || value.code === 'permission_denied' ? value.code : 'unknown';
      const message = typeof value.message === 'string' ? value.message : '';
      return { type: 'unsubscribed', channel: requireString(value, 'channel'), code, message };
    }
    default:
      if (typeof value.type === 'string') return null;
      throw new ProtocolError('server frame lacks string field `type`');
  }
}

function toJsonModel(data: unknown): unknown {
  if (data === null || typeof data === 'string' || typeof data === 'boolean') return data;
  if (typeof data === 'number') return Number.isFinite(data) ? data : null;
  const text = JSON.stringify(data);
  return text === undefined ? null : JSON.parse(text);
}

/** JSON in text frames; the gateway's default. */
export const jsonCodec: Codec = Object.freeze({
  encoding: 'json' as const,
  subprotocol: SUBPROTOCOLS.json,
  encodeClient(frame: ClientFrame): string {
    return JSON.stringify(canonicalClientFrame(frame));
  },
  decodeServer(payload: FramePayload): ServerFrame | null {
    let value: unknown;
    try {
      value = JSON.parse(typeof payload === 'string' ? payload : bytesToText(toBytes(payload)));
    } catch (cause) {
      throw new ProtocolError('server frame is not valid JSON', { cause });
    }
    return toServerFrame(value);
  },
});

/** MessagePack maps with named fields in binary frames. */
export const msgpackCodec: Codec = Object.freeze({
  encoding: 'msgpack' as const,
  subprotocol: SUBPROTOCOLS.msgpack,
  encodeClient(frame: ClientFrame): Uint8Array {
    const canonical = canonicalClientFrame(frame);
    // Publications pass through the JSON data model on the gateway (proto/PROTOCOL.md
    // section 4.2): a Date, a typed array or a Map would otherwise become a MessagePack
    // ext or bin and be refused, while JSON subscribers would see its toJSON() form.
    if (frame.op === 'publish') canonical.data = toJsonModel(frame.data);
    return encodeMsgpack(canonical);
  },
  decodeServer(payload: FramePayload): ServerFrame | null {
    if (typeof payload === 'string') throw new ProtocolError('expected a binary frame on a MessagePack connection');
    let value: unknown;
    try {
      value = decodeMsgpack(toBytes(payload));
    } catch (cause) {
      throw new ProtocolError('server frame is not valid MessagePack', { cause });
    }
    return toServerFrame(value);
  },
});

/** The codec for an encoding. */
export function codecFor(encoding: Encoding): Codec {
  switch (encoding) {
    case 'json':
      return jsonCodec;
    case 'msgpack':
      return msgpackCodec;
    default:
      throw new TypeError(`unknown encoding ${JSON.stringify(encoding)}`);
  }
}
