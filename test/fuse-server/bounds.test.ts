/**
 * Bounds on what one request can make the daemon scan, copy or hand to a
 * syscall: fuse_in_header.len against the chain and a per-opcode maximum,
 * names (NAME_MAX), paths (PATH_MAX), xattr names and values, READ/WRITE
 * sizes; and the name checks of every name-taking opcode.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SplitRingDriver, splitRingSizes } from '../../src/guest/split-ring-driver';
import { Reader } from '../../src/fuse-server/chain-io';
import type { FuseError } from '../../src/fuse-server/errors';
import { MAX_WRITE } from '../../src/fuse-server/init';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno, close } from '../../src/sys';
import { O_CREAT, RENAME_NOREPLACE, S_IFREG } from '../../src/sys/fs';
import { SplitVirtqueue, type DescriptorChain } from '../../src/vhost-user/virtqueue';
import { makeGuestMemory } from '../vhost-user/guest-ram';
import { cstr, encode, replyError } from './fuse-driver';
import { Harness, O_RDWR } from './harness';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** Linux's limits (linux/limits.h), spelled out so the tests do not depend on the code they check. */
const NAME_MAX = 255;
const PATH_MAX = 4096;
const XATTR_NAME_MAX = 255;
const XATTR_SIZE_MAX = 65536;

let h: Harness | null = null;
const cleanups: (() => void)[] = [];
afterEach(() => {
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f());
  h?.close();
  h = null;
});

/* ---------------- a chain whose readable descriptors all repeat one block ---------------- */

const UVA = 0x7f00_0000_0000;
const QUEUE_SIZE = 32;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;
const HEAD = 0x10000;
const TAIL = 0x20000;
const REPLY = 0x30000;
const REPLY_SIZE = 4096;
const TABLE = 0x40000;
const BLOCK_GPA = 0x1000_0000;
const BLOCK = 64 * MiB;
/** 16 x 64 MiB: one request of 1 GiB readable bytes. */
const REPEAT = 16;

/**
 * Guest RAM with one 64 MiB block of 'a's, and a queue (indirect table) on
 * which every chain is `head`, the block REPEAT times, then `tail`, then a
 * reply buffer: what a hostile guest builds by listing one address many times.
 */
function repeatingChain(head: Buffer, tail: Buffer): DescriptorChain {
  const { memory, fds } = makeGuestMemory([
    { gpa: 0, size: MiB, uva: UVA },
    { gpa: BLOCK_GPA, size: BLOCK, uva: UVA + BLOCK_GPA },
  ]);
  cleanups.push(() => {
    memory.clear();
    fds.forEach((fd) => close(fd));
  });
  const view = (gpa: number, len: number) => memory.slice(gpa, len)!;
  view(BLOCK_GPA, BLOCK).fill(0x61);
  head.copy(view(HEAD, head.length));
  tail.copy(view(TAIL, tail.length));
  const sizes = splitRingSizes(QUEUE_SIZE);
  const driver = new SplitRingDriver(QUEUE_SIZE, view(DESC, sizes.desc), view(AVAIL, sizes.avail), view(USED, sizes.used), false);
  const device = new SplitVirtqueue(memory, QUEUE_SIZE, false, true);
  device.setAddresses(UVA + DESC, UVA + AVAIL, UVA + USED);
  const readable = [{ addr: HEAD, len: head.length }, ...Array.from({ length: REPEAT }, () => ({ addr: BLOCK_GPA, len: BLOCK }))];
  if (tail.length > 0) readable.push({ addr: TAIL, len: tail.length });
  const parts = readable.length + 1;
  driver.add(readable, [{ addr: REPLY, len: REPLY_SIZE }], { addr: TABLE, view: view(TABLE, 16 * parts) });
  const chain = device.pop();
  if (chain === null || 'error' in chain) throw new Error(`no chain: ${JSON.stringify(chain)}`);
  expect(chain.readableBytes).toBe(head.length + REPEAT * BLOCK + tail.length);
  return chain;
}

function header(opcode: number, nodeid: number, len: number): Buffer {
  return encode(P.fuse_in_header, { len, opcode, unique: 7n, nodeid, uid: 0, gid: 0, pid: 1, total_extlen: 0 });
}

/** Serves the chain; the reply's errno, the time it took and how much memory grew meanwhile. */
function serve(
  session: Harness['session'],
  chain: DescriptorChain,
): { error: number; ms: number; rss: number; arrayBuffers: number; maxRss: number } {
  const before = process.memoryUsage();
  const maxRssBefore = process.resourceUsage().maxRSS * 1024;
  const start = performance.now();
  const used = session.handle(chain.readable, chain.writable);
  const ms = performance.now() - start;
  const after = process.memoryUsage();
  if (typeof used !== 'number') throw new Error('unexpected asynchronous reply');
  const out = P.fuse_out_header.decode(Buffer.concat(chain.writable), 0);
  expect(out.len).toBe(used);
  return {
    error: out.error,
    ms,
    rss: after.rss - before.rss,
    arrayBuffers: after.arrayBuffers - before.arrayBuffers,
    maxRss: process.resourceUsage().maxRSS * 1024 - maxRssBefore,
  };
}

/** A generous bound: the attempt is 1 GiB; a copy of it, even briefly, shows as far more. */
function expectSmall(r: { ms: number; rss: number; arrayBuffers: number; maxRss: number }): void {
  expect(r.arrayBuffers).toBeLessThan(64 * MiB);
  expect(r.rss).toBeLessThan(64 * MiB);
  expect(r.maxRss).toBeLessThan(64 * MiB);
  expect(r.ms).toBeLessThan(1000);
}

describe('one request over a chain that repeats one 64 MiB block (1 GiB readable)', () => {
  it('a LOOKUP whose header claims the whole chain as its name: EINVAL, nothing scanned or copied', async () => {
    h = Harness.create();
    await h.start();
    const len = P.fuse_in_header.size + REPEAT * BLOCK + 1;
    const chain = repeatingChain(header(Opcode.FUSE_LOOKUP, 1, len), Buffer.from([0]));
    const r = serve(h.session, chain);
    expectSmall(r);
    expect(r.error).toBe(-Errno.EINVAL);
  });

  it('a SYMLINK whose target is the whole chain: EINVAL, nothing created', async () => {
    h = Harness.create();
    await h.start();
    const len = P.fuse_in_header.size + 5 + REPEAT * BLOCK + 1;
    const chain = repeatingChain(Buffer.concat([header(Opcode.FUSE_SYMLINK, 1, len), cstr('link')]), Buffer.from([0]));
    const r = serve(h.session, chain);
    expectSmall(r);
    expect(r.error).toBe(-Errno.EINVAL);
    expect(fs.readdirSync(h.dir)).toEqual([]);
  });

  it('a SETXATTR whose value is the whole chain: EINVAL before any copy', async () => {
    h = Harness.create({ xattr: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const f = (await h.client.lookup(1, 'f')).nodeid;
    const size = REPEAT * BLOCK;
    const args = Buffer.concat([encode(P.fuse_setxattr_in, { size, flags: 0, setxattr_flags: 0 }), cstr('user.big')]);
    const chain = repeatingChain(
      Buffer.concat([header(Opcode.FUSE_SETXATTR, f, P.fuse_in_header.size + args.length + size), args]),
      Buffer.alloc(0),
    );
    const r = serve(h.session, chain);
    expectSmall(r);
    expect(r.error).toBe(-Errno.EINVAL);
  });

  it('a request whose len is small reads only len bytes of the chain', async () => {
    h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, 'x'));
    await h.start();
    const name = cstr('f');
    const chain = repeatingChain(
      Buffer.concat([header(Opcode.FUSE_LOOKUP, 1, P.fuse_in_header.size + name.length), name]),
      Buffer.from([0]),
    );
    const r = serve(h.session, chain);
    expect(r.error).toBe(0);
    expectSmall(r);
  });
});

describe('Reader.readCString', () => {
  const block = Buffer.alloc(BLOCK, 0x61);
  const errnoOf = (f: () => unknown): number => {
    try {
      f();
    } catch (err) {
      return (err as FuseError).errno;
    }
    return 0;
  };

  it('scans no further than its bound: a name without NUL in 1 GiB of request is too long at NAME_MAX', () => {
    const r = new Reader().reset(Array.from({ length: REPEAT }, () => block));
    const start = performance.now();
    expect(errnoOf(() => r.readCString(NAME_MAX + 1, Errno.ENAMETOOLONG))).toBe(Errno.ENAMETOOLONG);
    expect(errnoOf(() => r.readCString(XATTR_NAME_MAX + 1, Errno.ERANGE))).toBe(Errno.ERANGE);
    expect(performance.now() - start).toBeLessThan(50);
    // Nothing was consumed: the cursor stays where the string began.
    expect(r.bytesRead).toBe(0);
  });

  it('ends at the request: a NUL past the limit is no terminator (EINVAL), one at the bound is', () => {
    const tail = Buffer.from('bc\0');
    const r = new Reader().reset([Buffer.from('a'), tail]);
    r.limit(3);
    expect(errnoOf(() => r.readCString(NAME_MAX + 1, Errno.ENAMETOOLONG))).toBe(Errno.EINVAL);
    const exact = new Reader().reset([Buffer.from('n'.repeat(NAME_MAX)), Buffer.from([0])]);
    expect(exact.readCString(NAME_MAX + 1, Errno.ENAMETOOLONG).length).toBe(NAME_MAX + 1);
    const over = new Reader().reset([Buffer.from('n'.repeat(NAME_MAX + 1)), Buffer.from([0])]);
    expect(errnoOf(() => over.readCString(NAME_MAX + 1, Errno.ENAMETOOLONG))).toBe(Errno.ENAMETOOLONG);
  });
});

/* ---------------- header length ---------------- */

describe('fuse_in_header.len', () => {
  it('is EINVAL past the readable bytes, and past the bound of its opcode', async () => {
    h = Harness.create();
    await h.start();
    // A len one byte past what the chain carries: no client frames that.
    expect((await h.raw(Opcode.FUSE_GETATTR, 1, [encode(P.fuse_getattr_in, {})], { len: 40 + 16 + 1 })).error).toBe(-Errno.EINVAL);
    // A LOOKUP of 100 KiB, every byte present: longer than any request but WRITE.
    expect(await replyError(h.client.lookup(1, Buffer.alloc(100 * 1024 - 1, 0x61)))).toBe(-Errno.EINVAL);
  });

  it('admits a WRITE of max_write bytes, and no more: WRITE and READ sizes past it are EINVAL', async () => {
    h = Harness.create();
    await h.start();
    const { fh, entry } = await h.create(1, 'f');
    // max_write bytes go to the thread pool: the reply comes later.
    expect(await h.client.write(entry.nodeid, fh, 0, Buffer.alloc(MAX_WRITE, 1))).toBe(MAX_WRITE);
    expect(await replyError(h.client.write(entry.nodeid, fh, 0, Buffer.alloc(MAX_WRITE + 1, 2)))).toBe(-Errno.EINVAL);
    expect(fs.readFileSync(h.p('f')).equals(Buffer.alloc(MAX_WRITE, 1))).toBe(true);
    expect((await h.client.read(entry.nodeid, fh, 0, MAX_WRITE)).length).toBe(MAX_WRITE);
    expect(await replyError(h.client.read(entry.nodeid, fh, 0, MAX_WRITE + 1))).toBe(-Errno.EINVAL);
  });
});

/* ---------------- strings ---------------- */

describe('guest strings are bounded as Linux bounds them', () => {
  it("the server's limits are Linux's", () => {
    expect([P.NAME_MAX, P.PATH_MAX, P.XATTR_NAME_MAX, P.XATTR_SIZE_MAX, P.XATTR_LIST_MAX]).toEqual([
      NAME_MAX,
      PATH_MAX,
      XATTR_NAME_MAX,
      XATTR_SIZE_MAX,
      65536,
    ]);
  });

  it('names past NAME_MAX are ENAMETOOLONG; NAME_MAX itself is served', async () => {
    h = Harness.create();
    await h.start();
    const long = 'n'.repeat(NAME_MAX + 1);
    expect(await replyError(h.client.mkdir(1, long, 0o755))).toBe(-Errno.ENAMETOOLONG);
    expect(await replyError(h.client.lookup(1, long))).toBe(-Errno.ENAMETOOLONG);
    // A "name" of 60 KiB without any NUL within NAME_MAX is refused at NAME_MAX, whatever follows.
    expect(await replyError(h.client.lookup(1, 'n'.repeat(60_000)))).toBe(-Errno.ENAMETOOLONG);
    expect((await h.client.mkdir(1, 'n'.repeat(NAME_MAX), 0o755)).nodeid).toBeGreaterThan(1);
  });

  it('a symlink target is a path: up to PATH_MAX with its NUL, empty is ENOENT', async () => {
    h = Harness.create();
    await h.start();
    const symlink = (name: string, target: string) => replyError(h!.client.symlink(1, name, target));
    expect(await symlink('a', 'x/'.repeat(PATH_MAX / 2))).toBe(-Errno.ENAMETOOLONG);
    expect(await symlink('b', '')).toBe(-Errno.ENOENT);
    const longest = 'y/'.repeat(PATH_MAX / 2 - 1) + 'z';
    expect(await symlink('c', longest)).toBe(0);
    expect(fs.readlinkSync(h.p('c'))).toBe(longest);
    expect(fs.readdirSync(h.dir)).toEqual(['c']);
  });

  it('xattr names past XATTR_NAME_MAX or empty are ERANGE, values past XATTR_SIZE_MAX E2BIG, sizes asked for are cut to the limit', async () => {
    h = Harness.create({ xattr: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const c = h.client;
    const f = (await c.lookup(1, 'f')).nodeid;
    const long = 'user.' + 'x'.repeat(XATTR_NAME_MAX);
    expect(await replyError(c.setxattr(f, long, 'v'))).toBe(-Errno.ERANGE);
    expect(await replyError(c.setxattr(f, '', 'v'))).toBe(-Errno.ERANGE);
    expect(await replyError(c.getxattrSize(f, long))).toBe(-Errno.ERANGE);
    expect(await replyError(c.removexattr(f, long))).toBe(-Errno.ERANGE);
    expect(await replyError(c.setxattr(f, 'user.v', Buffer.alloc(XATTR_SIZE_MAX + 1)))).toBe(-Errno.E2BIG);
    expect(await replyError(c.setxattr(f, 'user.v', 'value'))).toBe(0);
    // A buffer of 4 GiB - 1 asked for is a buffer of XATTR_SIZE_MAX, as getxattr(2) has it (raw: 64 KiB of room, not the 4 GiB claimed).
    const huge = encode(P.fuse_getxattr_in, { size: 4 * GiB - 1 });
    expect((await h.raw(Opcode.FUSE_GETXATTR, f, [huge, cstr('user.v')])).body.toString()).toBe('value');
    expect((await h.raw(Opcode.FUSE_LISTXATTR, f, [huge])).body.toString('latin1')).toContain('user.v\0');
  });
});

/* ---------------- name checks of every name-taking opcode ---------------- */

/** Sends a request with `name` in the slot under test; the errno it answers. */
type Send = (name: Buffer) => Promise<number>;
const createIn = () => encode(P.fuse_create_in, { flags: O_RDWR | O_CREAT, mode: S_IFREG | 0o644 });
/** The raw bytes of a name, without its NUL (the client adds it). */
const raw = (text: string) => Buffer.from(text, 'latin1');

/** The bad names every op refuses with EINVAL: '/', empty, a NUL inside (bytes after the terminator). */
const INVALID = [raw('a/b'), raw('/'), raw(''), raw('ok\0tail'), raw('dir\0')];

describe('every name-taking opcode checks its names before any syscall', () => {
  async function share(): Promise<{ h: Harness; dir: number; file: number; snapshot: () => string[] }> {
    const harness = Harness.create({}, (d) => {
      fs.mkdirSync(`${d}/dir`);
      fs.writeFileSync(`${d}/file`, 'x');
    });
    h = harness;
    await harness.start();
    const snapshot = () => {
      const list: string[] = [];
      const walk = (p: string) => {
        for (const e of fs.readdirSync(p, { withFileTypes: true })) {
          list.push(path.relative(harness.dir, path.join(p, e.name)));
          if (e.isDirectory()) walk(path.join(p, e.name));
        }
      };
      walk(harness.dir);
      // Nothing may appear beside the share either.
      list.push(...fs.readdirSync(path.dirname(harness.dir)).filter((n) => n === 'tail' || n === 'ok'));
      return list.sort();
    };
    const dir = (await harness.client.lookup(1, 'dir')).nodeid;
    const file = (await harness.client.lookup(1, 'file')).nodeid;
    return { h: harness, dir, file, snapshot };
  }

  const cases: { op: string; dot: number; dotDot: number; send: (s: Awaited<ReturnType<typeof share>>) => Send }[] = [
    {
      op: 'MKNOD',
      dot: Errno.EEXIST,
      dotDot: Errno.EEXIST,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.mknod(1, n, S_IFREG | 0o644)),
    },
    {
      op: 'MKDIR',
      dot: Errno.EEXIST,
      dotDot: Errno.EEXIST,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.mkdir(1, n, 0o755)),
    },
    {
      op: 'SYMLINK',
      dot: Errno.EEXIST,
      dotDot: Errno.EEXIST,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.symlink(1, n, 'target')),
    },
    {
      op: 'LINK',
      dot: Errno.EEXIST,
      dotDot: Errno.EEXIST,
      send:
        ({ h, file }) =>
        (n) =>
          replyError(h.client.link(file, 1, n)),
    },
    {
      op: 'CREATE',
      dot: Errno.EISDIR,
      dotDot: Errno.EISDIR,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.create(1, n, O_RDWR | O_CREAT, 0o644)),
    },
    {
      op: 'UNLINK',
      dot: Errno.EISDIR,
      dotDot: Errno.EISDIR,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.unlink(1, n)),
    },
    {
      op: 'RMDIR',
      dot: Errno.EINVAL,
      dotDot: Errno.ENOTEMPTY,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.rmdir(1, n)),
    },
    {
      op: 'RENAME (old name)',
      dot: Errno.EBUSY,
      dotDot: Errno.EBUSY,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.rename(1, n, 1, 'moved')),
    },
    {
      op: 'RENAME (new name)',
      dot: Errno.EBUSY,
      dotDot: Errno.EBUSY,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.rename(1, 'file', 1, n)),
    },
    {
      // RENAME2 without flags: Linux sends RENAME for that, so no client does; raw.
      op: 'RENAME2 (old name)',
      dot: Errno.EBUSY,
      dotDot: Errno.EBUSY,
      send:
        ({ h }) =>
        async (n) =>
          (await h.raw(Opcode.FUSE_RENAME2, 1, [encode(P.fuse_rename2_in, { newdir: 1 }), cstr(n), cstr('moved')])).error,
    },
    {
      op: 'RENAME2 NOREPLACE (new name)',
      dot: Errno.EEXIST,
      dotDot: Errno.EEXIST,
      send:
        ({ h }) =>
        (n) =>
          replyError(h.client.rename(1, 'file', 1, n, RENAME_NOREPLACE)),
    },
  ];

  for (const c of cases) {
    it(`${c.op}: '/', empty and NUL-holding names are EINVAL, '.' and '..' what Linux answers, too long ENAMETOOLONG; the host is untouched`, async () => {
      const s = await share();
      const send = c.send(s);
      const before = s.snapshot();
      for (const name of INVALID) expect(await send(name), JSON.stringify(name.toString('latin1'))).toBe(-Errno.EINVAL);
      expect(await send(raw('.'))).toBe(-c.dot);
      expect(await send(raw('..'))).toBe(-c.dotDot);
      expect(await send(raw('n'.repeat(NAME_MAX + 1)))).toBe(-Errno.ENAMETOOLONG);
      expect(s.snapshot()).toEqual(before);
    });
  }

  it("LOOKUP: '/', empty and NUL-holding names are EINVAL, too long ENAMETOOLONG; '.' and '..' are resolved", async () => {
    const s = await share();
    for (const name of INVALID) expect(await replyError(s.h.client.lookup(1, name))).toBe(-Errno.EINVAL);
    expect(await replyError(s.h.client.lookup(1, raw('n'.repeat(NAME_MAX + 1))))).toBe(-Errno.ENAMETOOLONG);
    expect(await replyError(s.h.client.lookup(s.dir, raw('..')))).toBe(0);
  });

  it('TMPFILE: its placeholder name is bounded and must be the last argument', async () => {
    const s = await share();
    const before = s.snapshot();
    // The client always names "/": other placeholders are raw.
    const tmpfile = async (n: Buffer) => (await s.h.raw(Opcode.FUSE_TMPFILE, 1, [createIn(), cstr(n)])).error;
    expect(await tmpfile(raw('n'.repeat(NAME_MAX + 1)))).toBe(-Errno.ENAMETOOLONG);
    expect(await tmpfile(raw('/\0tail'))).toBe(-Errno.EINVAL);
    expect(s.snapshot()).toEqual(before);
  });

  it('names that pass are served: the checks refuse only what Linux never sends', async () => {
    const s = await share();
    expect(await replyError(s.h.client.mkdir(1, raw('new'), 0o755))).toBe(0);
    expect(await replyError(s.h.client.rename(1, raw('new'), s.dir, raw('moved'), RENAME_NOREPLACE))).toBe(0);
    expect(await replyError(s.h.client.unlink(1, raw('file')))).toBe(0);
    expect(s.snapshot()).toEqual(['dir', 'dir/moved']);
  });
});
