/**
 * Declarative little-endian struct layouts: a struct is declared once, as its C
 * header spells it, and decode/encode are derived from that declaration.
 *
 * Field kinds:
 * - `u8` `u16` `u32` `i32`: JS numbers.
 * - `u64`: an exact bigint (request ids, directory cookies, lock owners, inode numbers).
 * - `u64n`: a u64 as a JS number. Exact below 2^53; above it the value loses
 *   precision but stays >= 2^53, so ids we issue never match and sizes/offsets
 *   can be range-checked against Number.MAX_SAFE_INTEGER.
 * - `i64n`: an s64 as a JS number (timestamps), exact within +-2^53.
 * - `pad(n)`: n bytes skipped on decode and zeroed on encode (C `padding`/`unused[]`).
 * - another Layout: a nested struct.
 */

type Scalar = 'u8' | 'u16' | 'u32' | 'i32' | 'u64' | 'u64n' | 'i64n';

interface Pad {
  readonly pad: number;
}

export interface Layout<T> {
  readonly name: string;
  readonly size: number;
  /** C alignment: the largest member alignment. */
  readonly align: number;
  /** Decodes `size` bytes at `offset`; the caller guarantees they exist. */
  decode(buf: Buffer, offset: number): T;
  /** Encodes into `size` bytes at `offset`; the caller guarantees they exist. */
  encode(value: T, buf: Buffer, offset: number): void;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Kind = Scalar | Pad | Layout<any>;
type Fields = Record<string, Kind>;

type ValueOf<K> = K extends 'u64' ? bigint : K extends Scalar ? number : K extends Layout<infer T> ? T : never;

/** The JS shape of a struct: every non-padding field. */
export type StructOf<F extends Fields> = { [K in keyof F as F[K] extends Pad ? never : K]: ValueOf<F[K]> };

/** The decoded value type of a layout. */
export type ValueOfLayout<L> = L extends Layout<infer T> ? T : never;

export function pad(bytes: number): Pad {
  return { pad: bytes };
}

const TWO_32 = 0x1_0000_0000;

const SCALAR_SIZE: Record<Scalar, number> = { u8: 1, u16: 2, u32: 4, i32: 4, u64: 8, u64n: 8, i64n: 8 };

interface Op {
  key: string;
  offset: number;
  kind: Kind;
}

function sizeOf(kind: Kind): number {
  if (typeof kind === 'string') return SCALAR_SIZE[kind];
  if ('pad' in kind) return kind.pad;
  return kind.size;
}

/** The natural C alignment of a field, so a declaration that disagrees with the C header fails fast. */
function alignOf(kind: Kind): number {
  if (typeof kind === 'string') return SCALAR_SIZE[kind];
  if ('pad' in kind) return 1;
  return kind.align;
}

function readScalar(kind: Scalar, buf: Buffer, off: number): number | bigint {
  switch (kind) {
    case 'u8':
      return buf[off];
    case 'u16':
      return buf.readUInt16LE(off);
    case 'u32':
      return buf.readUInt32LE(off);
    case 'i32':
      return buf.readInt32LE(off);
    case 'u64':
      return buf.readBigUInt64LE(off);
    case 'u64n':
      return buf.readUInt32LE(off + 4) * TWO_32 + buf.readUInt32LE(off);
    case 'i64n':
      return buf.readInt32LE(off + 4) * TWO_32 + buf.readUInt32LE(off);
  }
}

function writeScalar(kind: Scalar, value: number | bigint, buf: Buffer, off: number): void {
  switch (kind) {
    case 'u8':
      buf[off] = Number(value);
      return;
    case 'u16':
      buf.writeUInt16LE(Number(value) & 0xffff, off);
      return;
    case 'u32':
      buf.writeUInt32LE(Number(value) >>> 0, off);
      return;
    case 'i32':
      buf.writeInt32LE(Number(value) | 0, off);
      return;
    case 'u64':
      buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(value)), off);
      return;
    case 'u64n':
    case 'i64n': {
      const v = Number(value);
      const hi = Math.floor(v / TWO_32);
      buf.writeUInt32LE(v - hi * TWO_32, off);
      buf.writeUInt32LE(hi >>> 0, off + 4);
      return;
    }
  }
}

export function struct<F extends Fields>(name: string, fields: F): Layout<StructOf<F>> {
  const ops: Op[] = [];
  let offset = 0;
  let align = 1;
  for (const [key, kind] of Object.entries(fields)) {
    const a = alignOf(kind);
    if (offset % a !== 0) throw new Error(`${name}.${key}: misaligned at ${offset}`);
    align = Math.max(align, a);
    ops.push({ key, offset, kind });
    offset += sizeOf(kind);
  }
  // The C headers pad every struct explicitly; a tail gap means the declaration is wrong.
  if (offset % align !== 0) throw new Error(`${name}: size ${offset} is not a multiple of ${align}`);
  const size = offset;

  return {
    name,
    size,
    align,
    decode(buf: Buffer, base: number): StructOf<F> {
      const out: Record<string, unknown> = {};
      for (const op of ops) {
        const kind = op.kind;
        if (typeof kind === 'string') out[op.key] = readScalar(kind, buf, base + op.offset);
        else if (!('pad' in kind)) out[op.key] = kind.decode(buf, base + op.offset);
      }
      return out as StructOf<F>;
    },
    encode(value: StructOf<F>, buf: Buffer, base: number): void {
      const v = value as Record<string, unknown>;
      for (const op of ops) {
        const kind = op.kind;
        if (typeof kind === 'string') writeScalar(kind, v[op.key] as number | bigint, buf, base + op.offset);
        else if ('pad' in kind) buf.fill(0, base + op.offset, base + op.offset + kind.pad);
        else kind.encode(v[op.key], buf, base + op.offset);
      }
    },
  };
}
