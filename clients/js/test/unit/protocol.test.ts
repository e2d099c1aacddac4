// Protocol helpers beyond the shared vectors: the retry hint parser, channel
// names the vectors do not cover, error-code mapping and frame shape checks.
import { decode as msgpackDecode } from '@msgpack/msgpack';
import { describe, expect, it } from 'vitest';
import { jsonCodec, msgpackCodec, parseRetryMs, ProtocolError, toErrorCode, validateChannel } from '../../src/index';

describe('parseRetryMs', () => {
  it('reads the hint at the end of a close reason', () => {
    expect(parseRetryMs('going away; retry_ms=123')).toBe(123);
    expect(parseRetryMs('retry_ms=0')).toBe(0);
    expect(parseRetryMs('overloaded; retry_ms=1500  ')).toBe(1500);
  });

  it('uses the last occurrence, like the gateway', () => {
    expect(parseRetryMs('retry_ms=1; retry_ms=2')).toBe(2);
  });

  it('returns undefined without a well-formed hint', () => {
    expect(parseRetryMs('')).toBeUndefined();
    expect(parseRetryMs(undefined)).toBeUndefined();
    expect(parseRetryMs('going away')).toBeUndefined();
    expect(parseRetryMs('retry_ms=')).toBeUndefined();
    expect(parseRetryMs('retry_ms=-5')).toBeUndefined();
    expect(parseRetryMs('retry_ms=12ms')).toBeUndefined();
  });
});

describe('validateChannel', () => {
  it('names the problem', () => {
    expect(validateChannel('')).toBe('empty');
    expect(validateChannel('a b')).toBe('bad_character');
    expect(validateChannel('x'.repeat(129))).toBe('too_long');
    expect(validateChannel('x'.repeat(129), Infinity)).toBeUndefined();
  });

  it('counts UTF-8 bytes, as the gateway does', () => {
    // 43 three-byte characters: 43 UTF-16 units but 129 bytes.
    expect(validateChannel('€'.repeat(43))).toBe('too_long');
    expect(validateChannel('€'.repeat(42))).toBe('bad_character');
  });
});

describe('toErrorCode', () => {
  it('keeps known codes and maps the rest to unknown', () => {
    expect(toErrorCode('forbidden')).toBe('forbidden');
    expect(toErrorCode('quota_exceeded')).toBe('unknown');
    expect(toErrorCode(7)).toBe('unknown');
  });
});

describe('server frame shape checks', () => {
  it('ignores fields a newer gateway may add', () => {
    expect(jsonCodec.decodeServer('{"type":"ack","id":3,"extra":true}')).toEqual({ type: 'ack', id: 3 });
  });

  it('maps an unknown error code to unknown', () => {
    expect(jsonCodec.decodeServer('{"type":"error","code":"new_code","message":"m"}')).toEqual({
      type: 'error',
      code: 'unknown',
      message: 'm',
    });
  });

  it('returns null for a frame type this client does not know', () => {
    expect(jsonCodec.decodeServer('{"type":"teleport","to":"mars"}')).toBeNull();
  });

  it('refuses malformed frames and missing fields', () => {
    expect(() => jsonCodec.decodeServer('{"id":1}')).toThrow(ProtocolError);
    expect(() => jsonCodec.decodeServer('{"type":7}')).toThrow(ProtocolError);
    expect(() => jsonCodec.decodeServer('{"type":"message","channel":"a","seq":1}')).toThrow(ProtocolError);
    expect(() => jsonCodec.decodeServer('{"type":"welcome","version":1}')).toThrow(ProtocolError);
    expect(() => jsonCodec.decodeServer('null')).toThrow(ProtocolError);
  });
});

describe('MessagePack publish data', () => {
  it('goes through the JSON data model, like every publication', () => {
    const when = new Date(Date.UTC(2026, 0, 2, 3, 4, 5));
    const bytes = msgpackCodec.encodeClient({ op: 'publish', id: 1, channel: 'c', data: { when, nan: NaN, list: [1, undefined] } });
    expect(msgpackDecode(bytes as Uint8Array)).toEqual({
      op: 'publish',
      id: 1,
      channel: 'c',
      data: { when: '2026-01-02T03:04:05.000Z', nan: null, list: [1, null] },
    });
  });
});
