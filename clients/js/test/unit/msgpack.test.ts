// The package's own MessagePack codec, checked against @msgpack/msgpack (a
// widely used implementation, a dev dependency only): both directions on
// boundary values and on random JSON-model values, byte-equal output, the
// refusal of what lies outside the JSON data model, and the code paths for
// engines without TextEncoder/TextDecoder.
import { decode as referenceDecode, encode as referenceEncode } from '@msgpack/msgpack';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { decodeMsgpack, encodeMsgpack, MsgpackError } from '../../src/msgpack';

const integers = [
  0, 1, 127, 128, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 7, Number.MAX_SAFE_INTEGER,
  -1, -31, -32, -33, -127, -128, -129, -32_767, -32_768, -32_769, -(2 ** 31), -(2 ** 31) - 1, -(2 ** 40) - 7,
  Number.MIN_SAFE_INTEGER,
];
const floats = [0.5, -0.25, 1.0825, 1e300, -1e-300, 2 ** 53 + 2, 1e20];
const strings = ['', 'a', 'x'.repeat(31), 'x'.repeat(32), 'y'.repeat(255), 'y'.repeat(256), 'z'.repeat(65_536), 'héllo wörld', '€ and 😀', 'ü'.repeat(100)];

function randomValue(depth: number, random: () => number): unknown {
  const pick = Math.floor(random() * (depth > 3 ? 5 : 7));
  switch (pick) {
    case 0:
      return null;
    case 1:
      return random() < 0.5;
    case 2:
      return random() < 0.5 ? Math.floor((random() - 0.5) * 2 ** Math.floor(random() * 54)) : (random() - 0.5) * 1e6;
    case 3:
    case 4: {
      const chars = ['a', 'Z', '0', ' ', 'é', '€', '😀', '"', '\\'];
      return Array.from({ length: Math.floor(random() * 40) }, () => chars[Math.floor(random() * chars.length)]).join('');
    }
    case 5:
      return Array.from({ length: Math.floor(random() * 20) }, () => randomValue(depth + 1, random));
    default: {
      const out: Record<string, unknown> = {};
      for (let i = Math.floor(random() * 20); i > 0; i--) out[`k${Math.floor(random() * 1000)}`] = randomValue(depth + 1, random);
      return out;
    }
  }
}

/** A small deterministic generator, so a failure can be replayed. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1_664_525) + 1_013_904_223) >>> 0;
    return state / 2 ** 32;
  };
}

describe('MessagePack codec', () => {
  it('encodes integers in the shortest form, byte-equal to the reference', () => {
    for (const n of integers) {
      expect(Array.from(encodeMsgpack(n)), `${n}`).toEqual(Array.from(referenceEncode(n)));
      expect(decodeMsgpack(encodeMsgpack(n))).toBe(n);
    }
  });

  it('encodes other numbers as float 64', () => {
    for (const x of floats) {
      const bytes = encodeMsgpack(x);
      expect(bytes[0]).toBe(0xcb);
      expect(decodeMsgpack(bytes)).toBe(x);
      expect(referenceDecode(bytes)).toBe(x);
    }
  });

  it('encodes strings with the right header, byte-equal to the reference', () => {
    for (const text of strings) {
      expect(Buffer.from(encodeMsgpack(text)).equals(Buffer.from(referenceEncode(text))), text.slice(0, 20)).toBe(true);
      expect(decodeMsgpack(referenceEncode(text))).toBe(text);
    }
  });

  it('handles array and map length boundaries', () => {
    for (const n of [0, 15, 16, 65_535, 65_536]) {
      const array = Array.from({ length: n }, (_, i) => i % 3);
      expect(Buffer.from(encodeMsgpack(array)).equals(Buffer.from(referenceEncode(array)))).toBe(true);
      expect(decodeMsgpack(referenceEncode(array))).toEqual(array);
    }
    for (const n of [0, 15, 16, 300]) {
      const map = Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
      expect(decodeMsgpack(encodeMsgpack(map))).toEqual(map);
      expect(decodeMsgpack(referenceEncode(map))).toEqual(map);
    }
  });

  it('agrees with the reference on random JSON-model values, both ways', () => {
    const random = seeded(20_261_123);
    for (let i = 0; i < 500; i++) {
      const value = randomValue(0, random);
      expect(referenceDecode(encodeMsgpack(value)), `case ${i}`).toEqual(value);
      expect(decodeMsgpack(referenceEncode(value)), `case ${i}`).toEqual(value);
    }
  });

  it('reads float 32 and 64-bit integers from other encoders', () => {
    expect(decodeMsgpack(Uint8Array.from([0xca, 0x3f, 0xc0, 0x00, 0x00]))).toBe(1.5);
    expect(decodeMsgpack(Uint8Array.from([0xcf, 0, 0, 0, 0, 0, 0, 0, 5]))).toBe(5);
    expect(decodeMsgpack(Uint8Array.from([0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]))).toBe(-2);
  });

  it('leaves out undefined members and writes NaN as nil, like JSON', () => {
    expect(decodeMsgpack(encodeMsgpack({ a: 1, b: undefined, c: [undefined, NaN] }))).toEqual({ a: 1, c: [null, null] });
  });

  it('keeps a "__proto__" key as an own property', () => {
    const decoded = decodeMsgpack(referenceEncode(JSON.parse('{"__proto__":{"polluted":true}}'))) as Record<string, unknown>;
    expect(Object.getPrototypeOf(decoded)).toBe(Object.prototype);
    expect(Object.keys(decoded)).toEqual(['__proto__']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('refuses what lies outside the JSON data model, and malformed input', () => {
    expect(() => decodeMsgpack(referenceEncode(new Uint8Array([1, 2])))).toThrow(MsgpackError); // bin
    expect(() => decodeMsgpack(referenceEncode(new Date(0)))).toThrow(MsgpackError); // ext (timestamp)
    expect(() => decodeMsgpack(Uint8Array.from([0x81, 0x01, 0x02]))).toThrow(MsgpackError); // integer key
    expect(() => decodeMsgpack(Uint8Array.from([0x83, 0xa2, 0x6f, 0x70]))).toThrow(MsgpackError); // truncated
    expect(() => decodeMsgpack(Uint8Array.from([0xc0, 0xc0]))).toThrow(MsgpackError); // trailing bytes
    expect(() => decodeMsgpack(Uint8Array.from([0xc1]))).toThrow(MsgpackError); // never used
    expect(() => encodeMsgpack(() => undefined)).toThrow(MsgpackError);
    expect(() => encodeMsgpack(BigInt(1))).toThrow(MsgpackError);
  });
});

describe('MessagePack codec without TextEncoder/TextDecoder (older React Native engines)', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    vi.resetModules();
  });

  it('loads and round-trips text', async () => {
    vi.stubGlobal('TextEncoder', undefined);
    vi.stubGlobal('TextDecoder', undefined);
    vi.resetModules();
    const bare = await import('../../src/msgpack');
    const index = await import('../../src/index');
    for (const text of [...strings, 'lone \ud800 surrogate', '\u0000\u007f\u0080\u07ff\u0800\uffff']) {
      const expected = text.replace(/[\ud800-\udfff]/g, (c, i, all) => {
        // A lone surrogate becomes U+FFFD, as TextEncoder makes it.
        const pair = /[\ud800-\udbff][\udc00-\udfff]/.test(all.slice(i, i + 2)) || /[\ud800-\udbff][\udc00-\udfff]/.test(all.slice(i - 1, i + 1));
        return pair ? c : '\ufffd';
      });
      expect(bare.decodeMsgpack(bare.encodeMsgpack(text))).toBe(expected);
      expect(Buffer.from(bare.encodeMsgpack(expected)).equals(Buffer.from(referenceEncode(expected)))).toBe(true);
    }
    expect(index.jsonCodec.decodeServer(new Uint8Array(Buffer.from('{"type":"ack","id":1,"x":"€"}')))).toEqual({ type: 'ack', id: 1 });
  });
});
