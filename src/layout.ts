/**
 * Declarative little-endian struct layouts: every wire and ABI struct (FUSE,
 * vhost-user, the syscall structs of src/sys) is declared once, as its C header
 * spells it, and decode/encode are derived from that declaration.
 *
 * Field kinds:
 * - `u8` `u16` `i16` `u32` `i32`: JS numbers.
 * - `u64` `i64`: exact bigints (request ids, directory cookies, lock owners and ranges, inode numbers).
 * - `u64n`: a u64 as a JS number. Exact below 2^53; above it the value loses
 *   precision but stays >= 2^53, so ids we issue never match and sizes/offsets
 *   can be range-checked against Number.MAX_SAFE_INTEGER.
 * - `i64n`: an s64 as a JS number (timestamps), exact within +-2^53.
 * - `pad(n)`: n bytes skipped on decode and zeroed on encode (C `padding`/`unused[]`).
 * - `bytes(n)`: a fixed `u8[n]` array as a Buffer (a copy on decode; shorter
 *   values are zero-filled on encode, longer ones refused).
 * - another Layout: a nested struct.
 *
 * Each layout compiles its decoder and encoder once, into straight-line code
 * with constant offsets over a DataView of the buffer's memory (bounds checked
 * once per call against the Buffer itself): FUSE headers and statx are decoded
 * per request, and DataView loads and stores compile to plain memory accesses.
 * The generated source is built only from the declarations in this repository
 * (field names are JSON-quoted, offsets are numbers), never from input.
 */

type Scalar = 'u8' | 'u16' | 'i16' | 'u32' | 'i32' | 'u64' | 'i64' | 'u64n' | 'i64n';

interface Pad {
  readonly pad: number;
}

interface Bytes {
  readonly bytes: number;
}

/** A value to encode: any field, at any depth, may be left out (it encodes as zeros). */
export type Fill<T> = { [K in keyof T]?: T[K] extends number | bigint | Buffer ? T[K] : Fill<T[K]> };

export interface Layout<T> {
  readonly name: string;
  readonly size: number;
  /** C alignment: the largest member alignment. */
  readonly align: number;
  /** Decodes `size` bytes at `offset`; the caller guarantees they exist. */
  decode(buf: Buffer, offset: number): T;
  /**
   * Encodes into `size` bytes at `offset`; the caller guarantees they exist.
   * Absent (undefined) fields are written as zeros.
   */
  encode(value: Fill<T>, buf: Buffer, offset: number): void;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Kind = Scalar | Pad | Bytes | Layout<any>;
type Fields = Record<string, Kind>;

type ValueOf<K> = K extends 'u64' | 'i64'
  ? bigint
  : K extends Scalar
    ? number
    : K extends Bytes
      ? Buffer
      : K extends Layout<infer T>
        ? T
        : never;

/** The JS shape of a struct: every non-padding field. */
export type StructOf<F extends Fields> = { [K in keyof F as F[K] extends Pad ? never : K]: ValueOf<F[K]> };

/** The decoded value type of a layout. */
export type ValueOfLayout<L> = L extends Layout<infer T> ? T : never;

export function pad(bytes: number): Pad {
  return { pad: bytes };
}

export function bytes(length: number): Bytes {
  return { bytes: length };
}

const SCALAR_SIZE: Record<Scalar, number> = { u8: 1, u16: 2, i16: 2, u32: 4, i32: 4, u64: 8, i64: 8, u64n: 8, i64n: 8 };

function sizeOf(kind: Kind): number {
  if (typeof kind === 'string') return SCALAR_SIZE[kind];
  if ('pad' in kind) return kind.pad;
  if ('bytes' in kind) return kind.bytes;
  return kind.size;
}

/** The natural C alignment of a field, so a declaration that disagrees with the C header fails fast. */
function alignOf(kind: Kind): number {
  if (typeof kind === 'string') return SCALAR_SIZE[kind];
  if ('pad' in kind || 'bytes' in kind) return 1;
  return kind.align;
}

/**
 * The read expression of a scalar at byte `o` of the struct, through the
 * DataView `d` of the Buffer's memory, the struct starting at byte `at` of it.
 * DataView accessors are compiled to plain loads; Buffer's readUInt32LE and
 * friends are library functions (readBigUInt64LE builds its bigint in steps).
 */
function readExpr(kind: Scalar, o: number): string {
  const at = `at + ${o}`;
  switch (kind) {
    case 'u8':
      return `d.getUint8(${at})`;
    case 'u16':
      return `d.getUint16(${at}, true)`;
    case 'i16':
      return `d.getInt16(${at}, true)`;
    case 'u32':
      return `d.getUint32(${at}, true)`;
    case 'i32':
      return `d.getInt32(${at}, true)`;
    case 'u64':
      return `d.getBigUint64(${at}, true)`;
    case 'i64':
      return `d.getBigInt64(${at}, true)`;
    case 'u64n':
      return `d.getUint32(at + ${o + 4}, true) * 4294967296 + d.getUint32(${at}, true)`;
    case 'i64n':
      return `d.getInt32(at + ${o + 4}, true) * 4294967296 + d.getUint32(${at}, true)`;
  }
}

/** Statements writing `x` (already defaulted) as a scalar at byte `o` (see readExpr). */
function writeStmt(kind: Scalar, o: number): string {
  const at = `at + ${o}`;
  switch (kind) {
    case 'u8':
      return `d.setUint8(${at}, x);`;
    case 'u16':
      return `d.setUint16(${at}, x & 0xffff, true);`;
    case 'i16':
      return `d.setInt16(${at}, x, true);`;
    case 'u32':
      return `d.setUint32(${at}, x >>> 0, true);`;
    case 'i32':
      return `d.setInt32(${at}, x | 0, true);`;
    case 'u64':
      return `d.setBigUint64(${at}, BigInt.asUintN(64, BigInt(x)), true);`;
    case 'i64':
      return `d.setBigInt64(${at}, BigInt.asIntN(64, BigInt(x)), true);`;
    case 'u64n':
    case 'i64n':
      return `{ const v = Number(x); const hi = Math.floor(v / 4294967296); d.setUint32(${at}, v - hi * 4294967296, true); d.setUint32(at + ${o + 4}, hi >>> 0, true); }`;
  }
}

/** Zeroes `n` bytes at byte `o` of the struct: word stores for the small gaps C structs have. */
function zeroStmt(o: number, n: number): string {
  if (n > 16) return `b.fill(0, base + ${o}, base + ${o + n});`;
  const parts: string[] = [];
  let i = 0;
  for (; i + 4 <= n; i += 4) parts.push(`d.setUint32(at + ${o + i}, 0);`);
  for (; i < n; i++) parts.push(`d.setUint8(at + ${o + i}, 0);`);
  return parts.join(' ');
}

/**
 * The DataView of a Buffer's whole ArrayBuffer (index it at b.byteOffset + i,
 * within b's own bounds): DataView accessors compile to plain memory accesses.
 * The last few ArrayBuffers' views are kept: guest RAM chunks and the
 * long-lived scratch buffers are nearly every decode and encode. A buffer
 * outside them gets a new view, which then replaces the oldest (a WeakMap
 * per fresh buffer would cost more than the access it speeds up).
 */
const VIEW_CACHE = 4;
const cachedMemory: (ArrayBufferLike | null)[] = new Array(VIEW_CACHE).fill(null);
const cachedView: DataView[] = new Array(VIEW_CACHE).fill(new DataView(new ArrayBuffer(0)));
let nextSlot = 0;
let lastMemory: ArrayBufferLike | null = null;
let lastView = cachedView[0];
export function dataViewOf(b: Buffer): DataView {
  const memory = b.buffer;
  if (memory === lastMemory) return lastView;
  let view: DataView | null = null;
  for (let i = 0; i < VIEW_CACHE; i++) {
    if (cachedMemory[i] === memory) {
      view = cachedView[i];
      break;
    }
  }
  if (view === null) {
    view = new DataView(memory);
    cachedMemory[nextSlot] = memory;
    cachedView[nextSlot] = view;
    nextSlot = (nextSlot + 1) % VIEW_CACHE;
  }
  lastMemory = memory;
  lastView = view;
  return view;
}

/** The bounds a Buffer method would have checked: the DataView spans the whole ArrayBuffer, not the Buffer. */
function outOfRange(name: string, b: Buffer, base: number, size: number): never {
  throw new RangeError(`${name}: ${size} bytes at offset ${base} outside a buffer of ${b.length}`);
}

type Decoder<T> = (b: Buffer, base: number) => T;
type Encoder<T> = (value: Fill<T>, b: Buffer, base: number) => void;

export interface StructOptions {
  /**
   * The struct ends in a C flexible array member (`char d_name[]`): the
   * declared fields are its fixed part, the array starts right after them,
   * with no tail padding.
   */
  readonly flexibleTail?: boolean;
}

export function struct<F extends Fields>(name: string, fields: F, options: StructOptions = {}): Layout<StructOf<F>> {
  let offset = 0;
  let align = 1;
  const decodeParts: string[] = [];
  const encodeParts: string[] = [];
  // Nested layouts and byte-array helpers are passed to the generated code as arguments.
  const nested: Layout<unknown>[] = [];
  for (const [key, kind] of Object.entries(fields)) {
    const a = alignOf(kind);
    if (offset % a !== 0) throw new Error(`${name}.${key}: misaligned at ${offset}`);
    align = Math.max(align, a);
    const k = JSON.stringify(key);
    const o = offset;
    if (typeof kind === 'string') {
      decodeParts.push(`${k}: ${readExpr(kind, o)}`);
      const zero = kind === 'u64' || kind === 'i64' ? '0n' : '0';
      encodeParts.push(`x = v[${k}]; if (x === undefined) x = ${zero}; ${writeStmt(kind, o)}`);
    } else if ('pad' in kind) {
      encodeParts.push(zeroStmt(o, kind.pad));
    } else if ('bytes' in kind) {
      decodeParts.push(`${k}: Buffer.from(b.subarray(base + ${o}, base + ${o + kind.bytes}))`);
      encodeParts.push(
        `x = v[${k}]; if (x === undefined) { b.fill(0, base + ${o}, base + ${o + kind.bytes}); } else { ` +
          `if (x.length > ${kind.bytes}) throw new RangeError(${JSON.stringify(`${name}.${key}: more than ${kind.bytes} bytes`)} + ' (' + x.length + ')'); ` +
          `x.copy(b, base + ${o}); b.fill(0, base + ${o} + x.length, base + ${o + kind.bytes}); }`,
      );
    } else {
      const i = nested.push(kind) - 1;
      decodeParts.push(`${k}: n[${i}].decode(b, base + ${o})`);
      encodeParts.push(`x = v[${k}]; n[${i}].encode(x === undefined ? {} : x, b, base + ${o});`);
    }
    offset += sizeOf(kind);
  }
  // The C headers pad every struct explicitly; a tail gap means the declaration is wrong.
  if (!options.flexibleTail && offset % align !== 0) throw new Error(`${name}: size ${offset} is not a multiple of ${align}`);

  // One object literal per decode: every decoded value of a layout shares one hidden class.
  const size = offset;
  const check = `if (!(base >= 0 && base + ${size} <= b.length)) outOfRange(${JSON.stringify(name)}, b, base, ${size});`;
  const prologue = `${check} const d = dataViewOf(b); const at = b.byteOffset + base;`;
  const decode = new Function(
    'n',
    'Buffer',
    'dataViewOf',
    'outOfRange',
    `return function decode(b, base) { ${prologue} return { ${decodeParts.join(', ')} }; };`,
  )(nested, Buffer, dataViewOf, outOfRange) as Decoder<StructOf<F>>;
  const encode = new Function(
    'n',
    'dataViewOf',
    'outOfRange',
    `return function encode(v, b, base) { ${prologue} let x; ${encodeParts.join(' ')} };`,
  )(nested, dataViewOf, outOfRange) as Encoder<StructOf<F>>;
  return { name, size, align, decode, encode };
}

/** `value` encoded as `layout` in a Buffer of its own; absent fields are zeros. */
export function encode<T>(layout: Layout<T>, value: Fill<T>): Buffer {
  // Every byte of a layout is written (fields are contiguous; padding is zeroed), so the
  // unzeroed pool slice is safe, and its pooled memory keeps the DataView cache warm.
  const b = Buffer.allocUnsafe(layout.size);
  layout.encode(value, b, 0);
  return b;
}
