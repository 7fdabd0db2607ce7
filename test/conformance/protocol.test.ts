/**
 * Conformance: the FUSE session itself — INIT negotiation, requests before
 * INIT, unknown opcodes, malformed requests (always an errno, never a hang),
 * many requests in flight, several request queues, indirect descriptors,
 * FORGET/BATCH_FORGET, DESTROY, and DAX mappings.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { DaxWindow } from '../../src/guest/dax-window';
import { DEFAULT_INIT_FLAGS, encode } from '../../src/guest/fuse-driver';
import { Errno } from '../../src/sys/errno';
import { BACKENDS } from '../helpers/backends';
import { itIfCan } from '../helpers/fuse-session';
import { O_RDWR, ROOT, expectErrno, sessions } from './conformance';

describe.each(BACKENDS)('protocol on $name', (backend) => {
  const open = sessions(backend);

  it('negotiates INIT: version 7.31+, max_write, only offered flags', async () => {
    const { fuse } = await open({ init: false });
    const reply = await fuse.init();
    expect(reply.major).toBe(7);
    expect(reply.minor).toBeGreaterThanOrEqual(P.FUSE_MIN_SUPPORTED_MINOR);
    expect(reply.minor).toBeLessThanOrEqual(P.FUSE_KERNEL_MINOR_VERSION);
    expect(reply.max_write).toBeGreaterThanOrEqual(4096);
    expect((reply.flags & ~DEFAULT_INIT_FLAGS) >>> 0).toBe(0);
    expect(reply.flags & P.FUSE_BIG_WRITES).toBe(P.FUSE_BIG_WRITES);
    expect(fuse.maxWrite).toBe(reply.max_write);
  });

  it('accepts an INIT from an older 7.31 guest', async () => {
    const { fuse } = await open({ init: false });
    const reply = await fuse.init({ minor: 31, flags: P.FUSE_ASYNC_READ | P.FUSE_BIG_WRITES });
    expect(reply.major).toBe(7);
    expect((await fuse.getattr(ROOT)).attr.mode & fs.constants.S_IFMT).toBe(fs.constants.S_IFDIR);
  });

  it('answers a newer major with its own version, then takes a 7.x INIT', async () => {
    const { fuse } = await open({ init: false });
    const counter = await fuse.init({ major: 8, minor: 0 });
    expect(counter.major).toBe(7);
    const reply = await fuse.init();
    expect(reply.major).toBe(7);
    await fuse.getattr(ROOT);
  });

  it('refuses a major older than 7 with EPROTO', async () => {
    const { fuse } = await open({ init: false });
    await expectErrno(fuse.init({ major: 6, minor: 0 }), 'EPROTO');
  });

  itIfCan(backend, 'eioBeforeInit', 'answers EIO to requests before INIT', async () => {
    const { fuse } = await open({ init: false });
    await expectErrno(fuse.getattr(ROOT), 'EIO');
    await expectErrno(fuse.lookup(ROOT, 'x'), 'EIO');
    await fuse.init();
    await fuse.getattr(ROOT);
  });

  it('answers ENOSYS to opcodes it does not implement', async () => {
    const { fuse } = await open();
    for (const opcode of [99, 4000, Opcode.FUSE_BMAP]) {
      const r = await fuse.request(opcode, ROOT, Buffer.alloc(64), 64);
      expect(r.error, `opcode ${opcode}`).toBe(-Errno.ENOSYS);
    }
    await fuse.getattr(ROOT);
  });

  itIfCan(backend, 'answersMalformedRequests', 'answers malformed requests with EINVAL or EIO and keeps serving', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'data') });
    const f = await fuse.lookup(ROOT, 'f');
    const h = await fuse.open(f.nodeid, O_RDWR);
    const writeIn = encode(P.fuse_write_in, { fh: h.fh, offset: 0, size: 100, write_flags: 0, lock_owner: 0n, flags: 0 });
    const cases: [string, number, number, Buffer[]][] = [
      ['GETATTR without its argument', Opcode.FUSE_GETATTR, ROOT, [Buffer.alloc(4)]],
      ['SETATTR with half an argument', Opcode.FUSE_SETATTR, f.nodeid, [Buffer.alloc(20)]],
      ['LOOKUP with an empty payload', Opcode.FUSE_LOOKUP, ROOT, []],
      ['LOOKUP with a name lacking its NUL', Opcode.FUSE_LOOKUP, ROOT, [Buffer.from('f')]],
      ['MKDIR without a name', Opcode.FUSE_MKDIR, ROOT, [encode(P.fuse_mkdir_in, { mode: 0o755, umask: 0 })]],
      ['RENAME with only one name', Opcode.FUSE_RENAME, ROOT, [encode(P.fuse_rename_in, { newdir: ROOT }), Buffer.from('f\0')]],
      ['WRITE whose size exceeds its data', Opcode.FUSE_WRITE, f.nodeid, [writeIn, Buffer.from('only ten b')]],
      ['READ with a truncated argument', Opcode.FUSE_READ, f.nodeid, [Buffer.alloc(12)]],
      ['OPEN with no argument', Opcode.FUSE_OPEN, f.nodeid, []],
    ];
    for (const [what, opcode, nodeid, payload] of cases) {
      const r = await fuse.request(opcode, nodeid, payload, 4096);
      expect([-Errno.EINVAL, -Errno.EIO], what).toContain(r.error);
    }
    // Still serving, and the file was not touched by the bad WRITE.
    expect((await fuse.read(f.nodeid, h.fh, 0, 100)).toString()).toBe('data');
  });

  itIfCan(backend, 'checksHeaderLen', 'answers a header whose len disagrees with the chain with EINVAL or EIO', async () => {
    const { fuse } = await open();
    const getattrIn = encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 });
    for (const len of [P.fuse_in_header.size - 1, P.fuse_in_header.size + getattrIn.length + 64]) {
      const r = await fuse.request(Opcode.FUSE_GETATTR, ROOT, getattrIn, 256, { len });
      expect([-Errno.EINVAL, -Errno.EIO], `len ${len}`).toContain(r.error);
    }
    await fuse.getattr(ROOT);
  });

  itIfCan(backend, 'survivesMalformedChains', 'survives chains too short for a header or without room for a reply', async () => {
    const { fuse, backend: running } = await open();
    const { ram, requestQueues } = fuse.frontend;
    const q = requestQueues[0];
    const scrap = ram.alloc(4096);
    // 8 readable bytes: not even a fuse_in_header.
    expect(await q.submit([{ addr: scrap.addr, len: 8 }], [{ addr: scrap.addr + 2048, len: 256 }])).toBe(0);
    // A whole GETATTR but nowhere to write the reply.
    P.fuse_in_header.encode(
      { len: 56, opcode: Opcode.FUSE_GETATTR, unique: 999n, nodeid: ROOT, uid: 0, gid: 0, pid: 0, total_extlen: 0 },
      scrap.view,
      0,
    );
    expect(await q.submit([{ addr: scrap.addr, len: 56 }], [])).toBe(0);
    // A descriptor outside guest RAM.
    expect(await q.submit([{ addr: 0x7000_0000_0000, len: 64 }], [{ addr: scrap.addr, len: 64 }])).toBe(0);
    expect(running.alive(), running.log()).toBe(true);
    await fuse.getattr(ROOT);
  });

  it('serves hundreds of requests in flight at once', async () => {
    const names = Array.from({ length: 100 }, (_, i) => `f${i}`);
    const { fuse } = await open({ populate: (d) => names.forEach((n, i) => fs.writeFileSync(path.join(d, n), `content of ${i}`)) });
    const entries = await Promise.all(names.map((n) => fuse.lookup(ROOT, n)));
    const handles = await Promise.all(entries.map((e) => fuse.open(e.nodeid, O_RDWR)));
    // 400 requests of four kinds, all outstanding together (the ring holds 128: the rest queue up).
    const work = await Promise.all(
      entries.flatMap((e, i) => [
        fuse.read(e.nodeid, handles[i].fh, 0, 64).then((b) => b.toString()),
        fuse.getattr(e.nodeid).then((a) => a.attr.size),
        fuse.lookup(ROOT, names[i]).then((x) => x.nodeid),
        fuse.statfs(ROOT).then((s) => s.bsize > 0),
      ]),
    );
    entries.forEach((e, i) => {
      expect(work[4 * i]).toBe(`content of ${i}`);
      expect(work[4 * i + 1]).toBe(`content of ${i}`.length);
      expect(work[4 * i + 2]).toBe(e.nodeid);
      expect(work[4 * i + 3]).toBe(true);
    });
    expect(fuse.transport.inflight.size).toBe(0);
  });

  it('applies concurrent writes at distinct offsets of one file', async () => {
    const { fuse, dir } = await open();
    const { entry, open: h } = await fuse.create(ROOT, 'f', O_RDWR, 0o644);
    const chunk = 16 * 1024;
    const chunks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(chunk, i + 1));
    const written = await Promise.all(chunks.map((c, i) => fuse.write(entry.nodeid, h.fh, i * chunk, c)));
    expect(written.every((n) => n === chunk)).toBe(true);
    expect(fs.readFileSync(path.join(dir, 'f')).equals(Buffer.concat(chunks))).toBe(true);
  });

  it('serves chains sent through indirect descriptor tables', async () => {
    const { fuse, dir } = await open({ indirectRequests: true });
    const { entry, open: h } = await fuse.create(ROOT, 'f', O_RDWR, 0o644);
    await fuse.write(entry.nodeid, h.fh, 0, Buffer.from('indirect'));
    expect((await fuse.read(entry.nodeid, h.fh, 0, 64)).toString()).toBe('indirect');
    expect(fs.readFileSync(path.join(dir, 'f'), 'utf8')).toBe('indirect');
  });

  itIfCan(backend, 'multiQueue', 'serves two request queues side by side', async () => {
    const { fuse } = await open({ requestQueues: 2, populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'q') });
    expect(fuse.frontend.requestQueues.length).toBe(2);
    const onFirst = await fuse.lookup(ROOT, 'f');
    const both = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        fuse.transport.call(
          {
            opcode: Opcode.FUSE_GETATTR,
            nodeid: onFirst.nodeid,
            args: [encode(P.fuse_getattr_in, { getattr_flags: 0, fh: 0 })],
            replySize: P.fuse_attr_out.size,
          },
          { queue: i % 2 },
        ),
      ),
    );
    expect(both.every((r) => r.error === 0 && P.fuse_attr_out.decode(r.payload, 0).attr.size === 1)).toBe(true);
  });

  it('keeps a nodeid valid until every lookup is forgotten', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'x') });
    const first = await fuse.lookup(ROOT, 'f');
    await fuse.lookup(ROOT, 'f');
    await fuse.lookup(ROOT, 'f');
    await fuse.forget(first.nodeid, 2);
    expect((await fuse.getattr(first.nodeid)).attr.ino).toBe(first.attr.ino);
    await fuse.forget(first.nodeid, 1);
    // Forgotten entirely: a new lookup gives a working nodeid for the same inode.
    const again = await fuse.lookup(ROOT, 'f');
    expect(again.attr.ino).toBe(first.attr.ino);
    expect((await fuse.getattr(again.nodeid)).attr.size).toBe(1);
  });

  it('takes BATCH_FORGET and ignores forgets of unknown nodeids', async () => {
    const names = ['a', 'b', 'c', 'd'];
    const { fuse } = await open({ populate: (d) => names.forEach((n) => fs.writeFileSync(path.join(d, n), n)) });
    const entries = await Promise.all(names.map((n) => fuse.lookup(ROOT, n)));
    await fuse.batchForget(entries.map((e) => ({ nodeid: e.nodeid, nlookup: 1 })));
    await fuse.forget(0x7fff_ffff, 1);
    await fuse.batchForget([{ nodeid: 0x7fff_fff0, nlookup: 3 }]);
    const again = await Promise.all(names.map((n) => fuse.lookup(ROOT, n)));
    again.forEach((e, i) => expect(e.attr.ino).toBe(entries[i].attr.ino));
    expect((await fuse.getattr(again[2].nodeid)).attr.size).toBe(1);
  });

  itIfCan(backend, 'destroyReply', 'ends the session on DESTROY and accepts a new INIT', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'x') });
    await fuse.lookup(ROOT, 'f');
    await fuse.destroy();
    await expectErrno(fuse.getattr(ROOT), 'EIO');
    await fuse.init();
    expect((await fuse.lookup(ROOT, 'f')).attr.size).toBe(1);
  });

  it('answers SETUPMAPPING and REMOVEMAPPING with ENOSYS when it offers no DAX window', async () => {
    const { fuse } = await open({ populate: (d) => fs.writeFileSync(path.join(d, 'f'), 'x') });
    expect(fuse.frontend.shmemSizes).toEqual([]);
    const f = await fuse.lookup(ROOT, 'f');
    const h = await fuse.open(f.nodeid, O_RDWR);
    await expectErrno(
      fuse.setupMapping(f.nodeid, h.fh, { foffset: 0, len: 1 << 21, moffset: 0, flags: P.FUSE_SETUPMAPPING_FLAG_READ }),
      'ENOSYS',
    );
    await expectErrno(fuse.removeMapping(f.nodeid, [{ moffset: 0, len: 1 << 21 }]), 'ENOSYS');
  });

  itIfCan(backend, 'dax', 'maps file ranges into the DAX window and unmaps them', async () => {
    let window: DaxWindow | null = null;
    const { fuse, dir } = await open({
      onBackendRequest: (msg) => window?.handleBackendRequest(msg) ?? 1n,
      daxWindow: 8 << 20,
      populate: (d) => fs.writeFileSync(path.join(d, 'f'), Buffer.alloc(1 << 21, 0x5a)),
    });
    expect(fuse.frontend.shmemSizes.length).toBeGreaterThan(0);
    window = new DaxWindow(Number(fuse.frontend.shmemSizes[0]));
    try {
      expect(fuse.flags & P.FUSE_MAP_ALIGNMENT).toBe(P.FUSE_MAP_ALIGNMENT);
      const f = await fuse.lookup(ROOT, 'f');
      const h = await fuse.open(f.nodeid, O_RDWR);
      const len = 1 << 21;
      await fuse.setupMapping(f.nodeid, h.fh, {
        foffset: 0,
        len,
        moffset: 0,
        flags: P.FUSE_SETUPMAPPING_FLAG_READ | P.FUSE_SETUPMAPPING_FLAG_WRITE,
      });
      expect(window.mappingCount).toBe(1);
      const view = window.view(0, 4096);
      expect(view[0]).toBe(0x5a);
      view.write('through the window');
      expect(fs.readFileSync(path.join(dir, 'f')).subarray(0, 18).toString()).toBe('through the window');
      await fuse.removeMapping(f.nodeid, [{ moffset: 0, len }]);
      expect(window.mappingCount).toBe(0);
    } finally {
      window.close();
    }
  });
});
