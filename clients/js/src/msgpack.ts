/**
 * MessagePack for the JSON data model, which is all the protocol allows in a
 * frame (proto/PROTOCOL.md section 4.2): maps with string keys, arrays,
 * strings, integers, 64-bit floats, booleans and nil. Written here rather than
 * taken from a library so that the package has no runtime dependency and loads
 * on engines without TextEncoder/TextDecoder (older React Native Hermes builds),
 * which general-purpose MessagePack libraries need at import time.
 *
 * Encoding picks the shortest integer format and float 64 for every other
 * number, as the gateway does, so encoded client frames match the protocol's
 * test vectors byte for byte.
 */

/** A value of the JSON data model as decoded from MessagePack. */
export type MsgpackValue = null | boolean | number | string | MsgpackValue[] | { [key: string]: MsgpackValue };

/** MessagePack input that is malformed or outside the JSON data model (bin, ext, non-string keys). */
export class MsgpackError extends Error {
  override readonly name: string = 'MsgpackError';
}

// ---- UTF-8 ----

const textEncoder: TextEncoder | undefined = typeof TextEncoder === 'function' ? new TextEncoder() : undefined;
const textDecoder: TextDecoder | undefined =
  typeof TextDecoder === 'function' ? new TextDecoder('utf-8', { fatal: false }) : undefined;

/** Below this many bytes a plain loop beats the native decoder's call overhead. */
const NATIVE_DECODE_THRESHOLD = 64;

function utf8Encode(text: string): Uint8Array {
  if (textEncoder) return textEncoder.encode(text);
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    let code = text.charCodeAt(i);
    if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const low = text.charCodeAt(i + 1);
      if (low >= 0xdc00 && low <= 0xdfff) {
        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        i++;
      }
    }
    if (code >= 0xd800 && code <= 0xdfff) code = 0xfffd; // a lone surrogate, as TextEncoder does
    if (code < 0x80) out.push(code);
    else if (code < 0x800) out.push(0xc0 | (code >> 6), 0x80 | (code & 0x3f));
    else if (code < 0x10000) out.push(0xe0 | (code >> 12), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f));
    else
      out.push(
        0xf0 | (code >> 18),
        0x80 | ((code >> 12) & 0x3f),
        0x80 | ((code >> 6) & 0x3f),
        0x80 | (code & 0x3f),
      );
  }
  return Uint8Array.from(out);
}

function utf8Decode(bytes: Uint8Array, start: number, end: number): string {
  if (textDecoder && end - start >= NATIVE_DECODE_THRESHOLD) return textDecoder.decode(bytes.subarray(start, end));
  let result = '';
  const units: number[] = [];
  let i = start;
  while (i < end) {
    const b1 = bytes[i++]!;
    let code: number;
    if (b1 < 0x80) code = b1;
    else if (b1 >= 0xc2 && b1 < 0xe0 && i < end) code = ((b1 & 0x1f) << 6) | (bytes[i++]! & 0x3f);
    else if (b1 >= 0xe0 && b1 < 0xf0 && i + 1 < end) {
      code = ((b1 & 0x0f) << 12) | ((bytes[i]! & 0x3f) << 6) | (bytes[i + 1]! & 0x3f);
      i += 2;
    } else if (b1 >= 0xf0 && b1 < 0xf5 && i + 2 < end) {
      code = ((b1 & 0x07) << 18) | ((bytes[i]! & 0x3f) << 12) | ((bytes[i + 1]! & 0x3f) << 6) | (bytes[i + 2]! & 0x3f);
      i += 3;
    } else code = 0xfffd;
    if (code > 0xffff) {
      code -= 0x10000;
      units.push(0xd800 | (code >> 10), 0xdc00 | (code & 0x3ff));
    } else units.push(code);
    // Flushed in chunks: String.fromCharCode takes its units as call arguments.
    if (units.length >= 4096) {
      result += String.fromCharCode(...units);
      units.length = 0;
    }
  }
  return result + String.fromCharCode(...units);
}

/** Decodes UTF-8 bytes to a string, without needing TextDecoder (invalid sequences become U+FFFD). */
export function decodeUtf8(bytes: Uint8Array): string {
  return utf8Decode(bytes, 0, bytes.length);
}

// ---- encoding ----

class Writer {
  private buffer = new Uint8Array(256);
  private view = new DataView(this.buffer.buffer);
  length = 0;

  private reserve(extra: number): void {
    if (this.length + extra <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.length + extra) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buffer.subarray(0, this.length));
    this.buffer = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(value: number): void {
    this.reserve(1);
    this.buffer[this.length++] = value;
  }

  u16(value: number): void {
    this.reserve(2);
    this.view.setUint16(this.length, value);
    this.length += 2;
  }

  u32(value: number): void {
    this.reserve(4);
    this.view.setUint32(this.length, value);
    this.length += 4;
  }

  f64(value: number): void {
    this.reserve(8);
    this.view.setFloat64(this.length, value);
    this.length += 8;
  }

  bytes(data: Uint8Array): void {
    this.reserve(data.length);
    this.buffer.set(data, this.length);
    this.length += data.length;
  }

  result(): Uint8Array {
    return this.buffer.slice(0, this.length);
  }
}

function writeInteger(w: Writer, n: number): void {
  if (n >= 0) {
    if (n < 0x80) w.u8(n);
    else if (n < 0x100) {
      w.u8(0xcc);
      w.u8(n);
    } else if (n < 0x10000) {
      w.u8(0xcd);
      w.u16(n);
    } else if (n < 0x100000000) {
      w.u8(0xce);
      w.u32(n);
    } else {
      w.u8(0xcf);
      w.u32(Math.floor(n / 0x100000000));
      w.u32(n >>> 0);
    }
  } else if (n >= -0x20) w.u8(n & 0xff);
  else if (n >= -0x80) {
    w.u8(0xd0);
    w.u8(n & 0xff);
  } else if (n >= -0x8000) {
    w.u8(0xd1);
    w.u16(n & 0xffff);
  } else if (n >= -0x80000000) {
    w.u8(0xd2);
    w.u32(n >>> 0);
  } else {
    w.u8(0xd3);
    // Two's complement split into 32-bit halves; exact for safe integers.
    const high = Math.floor(n / 0x100000000);
    w.u32(high >>> 0);
    w.u32((n - high * 0x100000000) >>> 0);
  }
}

function writeString(w: Writer, text: string): void {
  const bytes = utf8Encode(text);
  const n = bytes.length;
  if (n < 32) w.u8(0xa0 | n);
  else if (n < 0x100) {
    w.u8(0xd9);
    w.u8(n);
  } else if (n < 0x10000) {
    w.u8(0xda);
    w.u16(n);
  } else {
    w.u8(0xdb);
    w.u32(n);
  }
  w.bytes(bytes);
}

function writeLength(w: Writer, n: number, fix: number, short: number, long: number): void {
  if (n < 16) w.u8(fix | n);
  else if (n < 0x10000) {
    w.u8(short);
    w.u16(n);
  } else {
    w.u8(long);
    w.u32(n);
  }
}

function writeValue(w: Writer, value: unknown, depth: number): void {
  if (depth > 512) throw new MsgpackError('value nested too deeply');
  if (value === null || value === undefined) w.u8(0xc0);
  else if (value === false) w.u8(0xc2);
  else if (value === true) w.u8(0xc3);
  else if (typeof value === 'number') {
    if (Number.isSafeInteger(value)) writeInteger(w, value === 0 ? 0 : value);
    else if (Number.isFinite(value)) {
      w.u8(0xcb);
      w.f64(value);
    } else w.u8(0xc0); // NaN and infinities have no JSON form; the gateway would make them null too
  } else if (typeof value === 'string') writeString(w, value);
  else if (Array.isArray(value)) {
    writeLength(w, value.length, 0x90, 0xdc, 0xdd);
    for (const item of value) writeValue(w, item, depth + 1);
  } else if (typeof value === 'object') {
    // Absent (undefined) members are left out, as JSON.stringify leaves them out.
    const keys = Object.keys(value).filter((k) => (value as Record<string, unknown>)[k] !== undefined);
    writeLength(w, keys.length, 0x80, 0xde, 0xdf);
    for (const key of keys) {
      writeString(w, key);
      writeValue(w, (value as Record<string, unknown>)[key], depth + 1);
    }
  } else {
    throw new MsgpackError(`cannot encode a ${typeof value} in the JSON data model`);
  }
}

/** Encodes a JSON-model value (plain objects, arrays, strings, numbers, booleans, null). */
export function encodeMsgpack(value: unknown): Uint8Array {
  const writer = new Writer();
  writeValue(writer, value, 0);
  return writer.result();
}

// ---- decoding ----

class Reader {
  offset = 0;
  private readonly view: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  need(n: number): void {
    if (this.offset + n > this.bytes.length) throw new MsgpackError('truncated MessagePack data');
  }

  u8(): number {
    this.need(1);
    return this.bytes[this.offset++]!;
  }

  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.offset);
    this.offset += 2;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.offset);
    this.offset += 4;
    return v;
  }

  i8(): number {
    this.need(1);
    return this.view.getInt8(this.offset++);
  }

  i16(): number {
    this.need(2);
    const v = this.view.getInt16(this.offset);
    this.offset += 2;
    return v;
  }

  i32(): number {
    this.need(4);
    const v = this.view.getInt32(this.offset);
    this.offset += 4;
    return v;
  }

  u64(): number {
    const high = this.u32();
    return high * 0x100000000 + this.u32();
  }

  i64(): number {
    const high = this.i32();
    return high * 0x100000000 + this.u32();
  }

  f32(): number {
    this.need(4);
    const v = this.view.getFloat32(this.offset);
    this.offset += 4;
    return v;
  }

  f64(): number {
    this.need(8);
    const v = this.view.getFloat64(this.offset);
    this.offset += 8;
    return v;
  }

  str(length: number): string {
    this.need(length);
    const text = utf8Decode(this.bytes, this.offset, this.offset + length);
    this.offset += length;
    return text;
  }
}

function readArray(r: Reader, length: number, depth: number): MsgpackValue[] {
  const out: MsgpackValue[] = [];
  for (let i = 0; i < length; i++) out.push(readValue(r, depth + 1));
  return out;
}

function readMap(r: Reader, length: number, depth: number): { [key: string]: MsgpackValue } {
  const out: { [key: string]: MsgpackValue } = {};
  for (let i = 0; i < length; i++) {
    const key = readValue(r, depth + 1);
    if (typeof key !== 'string') throw new MsgpackError('map key is not a string');
    const value = readValue(r, depth + 1);
    // defineProperty so that a "__proto__" key becomes an own property, as with JSON.parse.
    Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function readValue(r: Reader, depth: number): MsgpackValue {
  if (depth > 512) throw new MsgpackError('MessagePack data nested too deeply');
  const byte = r.u8();
  if (byte < 0x80) return byte;
  if (byte >= 0xe0) return byte - 0x100;
  if (byte >= 0xa0 && byte <= 0xbf) return r.str(byte & 0x1f);
  if (byte >= 0x90 && byte <= 0x9f) return readArray(r, byte & 0x0f, depth);
  if (byte >= 0x80 && byte <= 0x8f) return readMap(r, byte & 0x0f, depth);
  switch (byte) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xca:
      return r.f32();
    case 0xcb:
      return r.f64();
    case 0xcc:
      return r.u8();
    case 0xcd:
      return r.u16();
    case 0xce:
      return r.u32();
    case 0xcf:
      return r.u64();
    case 0xd0:
      return r.i8();
    case 0xd1:
      return r.i16();
    case 0xd2:
      return r.i32();
    case 0xd3:
      return r.i64();
    case 0xd9:
      return r.str(r.u8());
    case 0xda:
      return r.str(r.u16());
    case 0xdb:
      return r.str(r.u32());
    case 0xdc:
      return readArray(r, r.u16(), depth);
    case 0xdd:
      return readArray(r, r.u32(), depth);
    case 0xde:
      return readMap(r, r.u16(), depth);
    case 0xdf:
      return readMap(r, r.u32(), depth);
    default:
      // 0xc4-0xc6 bin, 0xc7-0xc9 and 0xd4-0xd8 ext, 0xc1 never used: outside the JSON data model.
      throw new MsgpackError(`MessagePack type 0x${byte.toString(16)} is outside the JSON data model`);
  }
}

/** Decodes exactly one MessagePack value that fills `bytes`. */
export function decodeMsgpack(bytes: Uint8Array): MsgpackValue {
  const reader = new Reader(bytes);
  const value = readValue(reader, 0);
  if (reader.offset !== bytes.length) throw new MsgpackError('trailing bytes after a MessagePack value');
  return value;
}
