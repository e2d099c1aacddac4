// The protocol's shared test vectors (proto/vectors/*.json at the repository
// root), run through this package's codecs and protocol helpers: every client
// must pass them, so a drift from the gateway's encoding fails here first.
import { readFileSync } from 'node:fs';
import { decode as msgpackDecode } from '@msgpack/msgpack';
import { describe, expect, it } from 'vitest';
import {
  jsonCodec,
  msgpackCodec,
  ProtocolError,
  shouldReconnect,
  validateChannel,
  type ClientFrame,
} from '../../src/index';

const vectorsDir = new URL('../../../../proto/vectors/', import.meta.url);

function loadVectors<T>(name: string): T {
  return JSON.parse(readFileSync(new URL(name, vectorsDir), 'utf8')) as T;
}

function hexToBytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (byte) => parseInt(byte, 16));
}

function bytesToHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

interface FrameVector {
  name: string;
  json: string;
  msgpack_hex: string;
  value: Record<string, unknown>;
}

const serverFrames = loadVectors<FrameVector[]>('server_frames.json');
const clientFrames = loadVectors<FrameVector[]>('client_frames.json');
const closeCodes = loadVectors<{ code: number; name: string; reconnect: boolean }[]>('close_codes.json');
const channelNames = loadVectors<{ valid: string[]; invalid: string[]; max_len: number }>('channel_names.json');
const invalidClientFrames = loadVectors<{ name: string; encoding: 'json' | 'msgpack'; hex: string }[]>(
  'invalid_client_frames.json',
);

describe('server frame vectors', () => {
  it('has vectors to run', () => {
    expect(serverFrames.length).toBeGreaterThan(0);
  });

  for (const vector of serverFrames) {
    it(`${vector.name}: decodes from JSON text`, () => {
      expect(jsonCodec.decodeServer(vector.json)).toEqual(vector.value);
    });

    it(`${vector.name}: decodes from JSON bytes`, () => {
      expect(jsonCodec.decodeServer(new TextEncoder().encode(vector.json))).toEqual(vector.value);
    });

    it(`${vector.name}: decodes from MessagePack bytes`, () => {
      const bytes = hexToBytes(vector.msgpack_hex);
      expect(msgpackCodec.decodeServer(bytes)).toEqual(vector.value);
      // The same bytes as an ArrayBuffer, the way a browser delivers a binary frame.
      expect(msgpackCodec.decodeServer(bytes.slice().buffer)).toEqual(vector.value);
    });
  }
});

describe('client frame vectors', () => {
  it('has vectors to run', () => {
    expect(clientFrames.length).toBeGreaterThan(0);
  });

  for (const vector of clientFrames) {
    const frame = vector.value as unknown as ClientFrame;

    it(`${vector.name}: JSON encoding decodes to the vector's value`, () => {
      const text = jsonCodec.encodeClient(frame);
      expect(typeof text).toBe('string');
      expect(JSON.parse(text as string)).toEqual(vector.value);
    });

    it(`${vector.name}: JSON encoding matches the gateway's byte for byte`, () => {
      expect(jsonCodec.encodeClient(frame)).toBe(vector.json);
    });

    it(`${vector.name}: MessagePack encoding decodes to the vector's value`, () => {
      const bytes = msgpackCodec.encodeClient(frame);
      expect(bytes).toBeInstanceOf(Uint8Array);
      expect(msgpackDecode(bytes as Uint8Array)).toEqual(vector.value);
    });

    it(`${vector.name}: MessagePack encoding matches the gateway's byte for byte`, () => {
      expect(bytesToHex(msgpackCodec.encodeClient(frame) as Uint8Array)).toBe(vector.msgpack_hex);
    });
  }
});

describe('close code vectors', () => {
  for (const vector of closeCodes) {
    it(`${vector.name} (${vector.code}) reconnect=${vector.reconnect}`, () => {
      expect(shouldReconnect(vector.code)).toBe(vector.reconnect);
    });
  }
});

describe('channel name vectors', () => {
  for (const name of channelNames.valid) {
    it(`accepts ${JSON.stringify(name.length > 20 ? `${name.slice(0, 20)}…(${name.length})` : name)}`, () => {
      expect(validateChannel(name, channelNames.max_len)).toBeUndefined();
    });
  }
  for (const name of channelNames.invalid) {
    it(`refuses ${JSON.stringify(name.length > 20 ? `${name.slice(0, 20)}…(${name.length})` : name)}`, () => {
      expect(validateChannel(name, channelNames.max_len)).toBeDefined();
    });
  }
});

describe('invalid frames are refused as server frames too', () => {
  // These are client frames the gateway must refuse; none is a valid server frame
  // either, so each must come out of the decoder as a ProtocolError, not a crash.
  for (const vector of invalidClientFrames) {
    it(vector.name, () => {
      const bytes = hexToBytes(vector.hex);
      const codec = vector.encoding === 'json' ? jsonCodec : msgpackCodec;
      expect(() => codec.decodeServer(bytes)).toThrow(ProtocolError);
    });
  }
});
