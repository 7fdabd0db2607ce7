import { describe, expect, it } from 'vitest';
import { bytes, encode, pad, struct } from '../src/layout';

describe('struct layouts', () => {
  const t = struct('t', { a: 'u8', p: pad(1), s: 'i16', tag: bytes(4), n: 'u32', p2: pad(4), big: 'i64', num: 'u64n' });

  it('places u8, padding, i16 and byte arrays at their C offsets', () => {
    expect(t.size).toBe(32);
    const b = encode(t, { a: 0xab, s: -2, tag: Buffer.from('xy'), n: 7, big: -3n, num: 2 ** 40 });
    expect(b[0]).toBe(0xab);
    expect(b.readInt16LE(2)).toBe(-2);
    expect(b.subarray(4, 8)).toEqual(Buffer.from([0x78, 0x79, 0, 0]));
    expect(b.readUInt32LE(8)).toBe(7);
    expect(b.readBigInt64LE(16)).toBe(-3n);
    expect(b.readUInt32LE(28) * 2 ** 32 + b.readUInt32LE(24)).toBe(2 ** 40);
    expect(t.decode(b, 0)).toEqual({ a: 0xab, s: -2, tag: Buffer.from([0x78, 0x79, 0, 0]), n: 7, big: -3n, num: 2 ** 40 });
  });

  it('writes absent fields, padding and the tail of short byte arrays as zeros over a dirty buffer', () => {
    const b = Buffer.alloc(t.size + 4, 0xff);
    t.encode({ n: 1, tag: Buffer.from('q') }, b, 4);
    expect(b.subarray(0, 4)).toEqual(Buffer.alloc(4, 0xff));
    const expected = Buffer.alloc(t.size);
    expected.write('q', 4);
    expected.writeUInt32LE(1, 8);
    expect(b.subarray(4)).toEqual(expected);
  });

  it('refuses a byte array longer than its field', () => {
    expect(() => encode(t, { tag: Buffer.from('12345') })).toThrow(RangeError);
  });

  it('decodes byte arrays as copies, not views of a reused buffer', () => {
    const b = encode(t, { tag: Buffer.from('abcd') });
    const v = t.decode(b, 0);
    b.fill(0);
    expect(v.tag.toString()).toBe('abcd');
  });

  it('fills absent fields of nested structs with zeros', () => {
    const outer = struct('outer', { x: 'u64', inner: struct('inner', { y: 'u32', z: 'u32' }) });
    expect(outer.decode(encode(outer, { inner: { y: 5 } }), 0)).toEqual({ x: 0n, inner: { y: 5, z: 0 } });
    expect(outer.decode(encode(outer, {}), 0)).toEqual({ x: 0n, inner: { y: 0, z: 0 } });
  });

  it('reads and writes only inside the Buffer it is given, never the rest of its memory', () => {
    // A view in the middle of a larger ArrayBuffer (as guest RAM is): its neighbours must stay out of reach.
    const memory = Buffer.alloc(3 * t.size, 0x5a);
    const view = memory.subarray(t.size, 2 * t.size - 1);
    expect(() => t.decode(view, 0)).toThrow(RangeError);
    expect(() => t.encode({}, view, 0)).toThrow(RangeError);
    expect(() => t.decode(memory.subarray(t.size, 2 * t.size), 1)).toThrow(RangeError);
    expect(() => t.decode(memory.subarray(t.size), -1)).toThrow(RangeError);
    expect(memory.equals(Buffer.alloc(3 * t.size, 0x5a))).toBe(true);
    // In range, at an odd byte offset of the memory: the same values as through Buffer's own readers.
    const odd = Buffer.alloc(t.size + 3).subarray(3);
    t.encode({ s: -7, n: 0xdeadbeef, big: -(2n ** 62n), num: 2 ** 52 + 1 }, odd, 0);
    expect([odd.readInt16LE(2), odd.readUInt32LE(8), odd.readBigInt64LE(16)]).toEqual([-7, 0xdeadbeef, -(2n ** 62n)]);
    expect(t.decode(odd, 0)).toMatchObject({ s: -7, n: 0xdeadbeef, big: -(2n ** 62n), num: 2 ** 52 + 1 });
  });
});
