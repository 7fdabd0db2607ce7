import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Reader, Writer } from '../../src/fuse-server/chain-io';
import { FuseError } from '../../src/fuse-server/errors';
import { fuse_in_header, fuse_write_out } from '../../src/fuse-server/protocol';
import { cut, encode } from './fuse-driver';

const header = { len: 99, opcode: 16, unique: 0x1234_5678_9abc_def0n, nodeid: 77, uid: 1, gid: 2, pid: 3, total_extlen: 0 };

describe('Reader', () => {
  it('decodes a struct split at every possible byte, across empty buffers', () => {
    const raw = encode(fuse_in_header, header);
    for (let at = 0; at <= raw.length; at++) {
      const chain = [Buffer.alloc(0), Buffer.from(raw.subarray(0, at)), Buffer.alloc(0), Buffer.from(raw.subarray(at))];
      const r = new Reader().reset(chain);
      expect(r.readStruct(fuse_in_header)).toEqual(header);
      expect(r.remaining).toBe(0);
    }
  });

  it('reads C strings across buffers and copies them out', () => {
    const chain = cut(Buffer.from('ab\0cdefgh\0rest'), [1, 3, 2]);
    const r = new Reader().reset(chain);
    const first = r.readCString();
    expect(first.toString('latin1')).toBe('ab\0');
    chain[0][0] = 0x7a; // the guest rewrites its memory afterwards
    expect(first.toString('latin1')).toBe('ab\0');
    expect(r.readCString().toString('latin1')).toBe('cdefgh\0');
    expect(() => r.readCString()).toThrow(FuseError);
  });

  it('refuses a name whose guest memory changed between the scan for its NUL and the copy (a second vCPU writing)', () => {
    /** Guest memory that another vCPU rewrites just before the copy: `race` runs as the copy starts. */
    const racing = (text: string, race: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(text, 'latin1');
      Object.defineProperty(b, 'copy', {
        value(this: Buffer, ...args: Parameters<Buffer['copy']>) {
          race(this);
          return Buffer.prototype.copy.apply(this, args);
        },
      });
      return b;
    };
    // The terminator overwritten: the copy would end without a NUL, and a syscall would read past it.
    const lost = racing('abc\0../../etc\0', (b) => (b[3] = 0x2f));
    expect(() => new Reader().reset([lost]).readCString()).toThrow(FuseError);
    // A NUL moved earlier: the syscall would see another name than the one bounded and checked.
    const early = racing('abcdef\0', (b) => (b[1] = 0));
    expect(() => new Reader().reset([early]).readCString()).toThrow(FuseError);
    // Untouched memory reads as before.
    expect(
      new Reader()
        .reset([racing('abc\0', () => undefined)])
        .readCString()
        .toString('latin1'),
    ).toBe('abc\0');
  });

  it('finds a name in a long descriptor, looking for its NUL only up to the request end', () => {
    const big = Buffer.alloc(1 << 20, 0x61);
    big.write('name\0', 0, 'latin1');
    expect(new Reader().reset([big]).readCString().toString('latin1')).toBe('name\0');
    // The NUL lies beyond the request's end (the rest of the descriptor is not the request's).
    const noNul = Buffer.alloc(1 << 20, 0x61);
    noNul[noNul.length - 1] = 0;
    const r = new Reader().reset([Buffer.from('ab'), noNul]);
    r.limit(100);
    expect(() => r.readCString()).toThrow(FuseError);
    // Within the request, across descriptors, with a whole-descriptor limit.
    const r2 = new Reader().reset([Buffer.from('ab'), Buffer.from('cd\0zz')]);
    r2.limit(5);
    expect(r2.readCString().toString('latin1')).toBe('abcd\0');
  });

  it('does not read past its limit', () => {
    const r = new Reader().reset([Buffer.from('abc\0')]);
    r.limit(3);
    expect(() => r.readCString()).toThrow(FuseError);
    expect(() => r.readStruct(fuse_write_out)).toThrow(FuseError);
  });

  it('writes to a file straight from the chain', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chain-io-'));
    const fd = fs.openSync(path.join(dir, 'f'), 'w+');
    try {
      const data = Buffer.from('0123456789abcdefghij');
      const r = new Reader().reset(cut(data, [3, 7, 1]));
      r.skip(2);
      expect(r.readToFile(fd, 15, 100)).toBe(15);
      expect(r.remaining).toBe(3);
      const back = Buffer.alloc(15);
      fs.readSync(fd, back, 0, 15, 100);
      expect(back.toString()).toBe('23456789abcdefg');
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true });
    }
  });
});

describe('Writer', () => {
  it('encodes split structs and patches the reserved header', () => {
    const chain = cut(Buffer.alloc(40), [3, 5, 11, 21]);
    const w = new Writer().reset(chain);
    w.skip(16);
    w.writeStruct(fuse_write_out, { size: 0xabcdef });
    w.writeBytes(Buffer.from('xyz'));
    w.writeZeros(5);
    w.patch(0, Buffer.from('HEADER..........'));
    expect(w.bytesWritten).toBe(32);
    const all = Buffer.concat(chain);
    expect(all.subarray(0, 16).toString()).toBe('HEADER..........');
    expect(all.readUInt32LE(16)).toBe(0xabcdef);
    expect(all.subarray(24, 27).toString()).toBe('xyz');
  });

  it('refuses to write past the end of the chain', () => {
    const w = new Writer().reset([Buffer.alloc(4), Buffer.alloc(3)]);
    expect(() => w.writeStruct(fuse_write_out, { size: 1 })).toThrow(FuseError);
    expect(w.bytesWritten).toBe(0);
  });

  it('moves file data through whole descriptors and partial ones alike', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chain-io-'));
    const fd = fs.openSync(path.join(dir, 'f'), 'w+');
    try {
      const data = Buffer.from('0123456789abcdefghijklmnopqrstuv');
      fs.writeSync(fd, data, 0, data.length, 0);
      const chain = [Buffer.alloc(8), Buffer.alloc(16), Buffer.alloc(8)];
      const w = new Writer().reset(chain);
      w.skip(8);
      expect(w.writeFromFile(fd, 20, 0)).toBe(20);
      expect(chain[1].toString()).toBe('0123456789abcdef');
      expect(chain[2].subarray(0, 4).toString()).toBe('ghij');
      const r = new Reader().reset(chain);
      expect(r.readToFile(fd, 32, 100)).toBe(32);
      const back = Buffer.alloc(32);
      fs.readSync(fd, back, 0, 32, 100);
      expect(back.equals(Buffer.concat(chain))).toBe(true);
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('reads a file straight into the chain and stops at end of file', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chain-io-'));
    const file = path.join(dir, 'f');
    fs.writeFileSync(file, 'hello, guest memory');
    const fd = fs.openSync(file, 'r');
    try {
      const chain = cut(Buffer.alloc(64), [2, 9, 4]);
      const w = new Writer().reset(chain);
      w.skip(1);
      expect(w.writeFromFile(fd, 1000, 7)).toBe(12);
      expect(Buffer.concat(chain).subarray(1, 13).toString()).toBe('guest memory');
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true });
    }
  });
});
