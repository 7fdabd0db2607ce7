/**
 * A hostile vhost-user front-end: memory tables, vring set-ups, descriptor
 * chains and file descriptors that no honest VMM sends. For each the back-end
 * answers with an error or drops the connection cleanly, never crashes or
 * hangs, and where it keeps serving it still answers a valid request after.
 * (Cases already pinned by backend.test.ts and virtqueue.test.ts are not repeated.)
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { VhostUserFrontend } from '../../src/guest/frontend';
import { GuestQueue } from '../../src/guest/guest-queue';
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  MFD_CLOEXEC,
  MappedRegion,
  UnixStreamSocket,
  close,
  dup,
  eventfd,
  fcntl,
  ftruncate,
  getNofileLimit,
  memfdCreate,
  setNofileLimit,
  syscall,
} from '../../src/sys';
import { VhostUserBackend } from '../../src/vhost-user/backend';
import { MemoryRegionDesc, MemoryTableHeader, SingleMemoryRegion, U64, VringAddr, VringState, encode } from '../../src/vhost-user/messages';
import { FrontendRequest, MAX_MEM_SLOTS, VHOST_USER_NEED_REPLY_MASK } from '../../src/vhost-user/protocol';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/vhost-user/virtqueue';
import { listenEcho } from './echo-backend';

const pipe2 = syscall<(fds: Int32Array, flags: number) => number>('pipe2', 'int pipe2(_Out_ int32_t *fds, int)');
const O_CLOEXEC = 0o2000000;
/** fcntl(F_SETPIPE_SZ): a one-page pipe fills after 512 eight-byte writes. */
const F_SETPIPE_SZ = 1031;

function pipe(): [number, number] {
  const fds = new Int32Array(2);
  pipe2(fds, O_CLOEXEC);
  return [fds[0], fds[1]];
}

/** The read end of a pipe whose write end is closed. */
function pipeReadEnd(): number {
  const [r, w] = pipe();
  close(w);
  return r;
}

const cleanups: (() => void)[] = [];
afterEach(() =>
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f()),
);

async function start(options: ConstructorParameters<typeof VhostUserFrontend>[0] = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vu-hostile-'));
  const sock = path.join(dir, 'sock');
  const logs: string[] = [];
  let disconnected: { err?: Error } | null = null;
  let backend: VhostUserBackend | null = null;
  const listener = listenEcho(
    sock,
    (line) => logs.push(line),
    (b, err) => {
      if (b) backend = b;
      else disconnected = { err };
    },
  );
  const frontend = await VhostUserFrontend.connect(sock, { requestQueues: 2, ramRegions: [1 << 20, 1 << 20], ...options });
  cleanups.push(() => {
    frontend.close();
    (backend as VhostUserBackend | null)?.close();
    listener.close(true);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    frontend,
    backend: () => backend!,
    log: () => logs.join('\n'),
    disconnected: () => disconnected,
  };
}

type Frontend = VhostUserFrontend;

async function echo(frontend: Frontend, queue: number, text: string): Promise<string> {
  const req = frontend.ram.alloc(text.length);
  req.view.write(text);
  const rep = frontend.ram.alloc(64, 1);
  const len = await frontend.queues[queue].submit([{ addr: req.addr, len: text.length }], [{ addr: rep.addr, len: 64 }]);
  return rep.view.subarray(0, len).toString();
}

/** Both request queues still serve. */
async function stillServes(frontend: Frontend): Promise<void> {
  expect(await echo(frontend, 1, 'queue 1 still served')).toBe('queue 1 still served');
  expect(await echo(frontend, 2, 'queue 2 still served')).toBe('queue 2 still served');
}

const until = async (cond: () => unknown, ms = 2000) => {
  for (const end = Date.now() + ms; !cond() && Date.now() < end;) await new Promise((r) => setTimeout(r, 5));
};

function region(gpa: bigint, size: bigint, uva: bigint, offset = 0n): Buffer {
  return encode(SingleMemoryRegion, { guestPhysAddr: gpa, memorySize: size, userspaceAddr: uva, mmapOffset: offset });
}

function memTable(regions: { gpa: number; size: number; uva: number; offset: number }[], nregions = regions.length): Buffer {
  const table = Buffer.alloc(MemoryTableHeader.size + 8 * MemoryRegionDesc.size);
  MemoryTableHeader.encode({ nregions }, table, 0);
  regions.forEach((r, i) =>
    MemoryRegionDesc.encode(
      { guestPhysAddr: BigInt(r.gpa), memorySize: BigInt(r.size), userspaceAddr: BigInt(r.uva), mmapOffset: BigInt(r.offset) },
      table,
      MemoryTableHeader.size + i * MemoryRegionDesc.size,
    ),
  );
  return table;
}

/** The front-end's own table, as SET_MEM_TABLE describes it. */
function currentTable(frontend: Frontend) {
  return frontend.ram.regions.map((r) => ({ gpa: r.guestPhysAddr, size: r.size, uva: r.userspaceAddr, offset: 0 }));
}

function smallMemfd(size = 1 << 16): number {
  const fd = memfdCreate('hostile', MFD_CLOEXEC);
  ftruncate(fd, size);
  cleanups.push(() => close(fd));
  return fd;
}

/** An fd of the test's, closed after the test (the front-end sends copies). */
function ours(fd: number): number {
  cleanups.push(() => close(fd));
  return fd;
}

const openFdCount = () => fs.readdirSync('/proc/self/fd').length;

describe('memory tables from a hostile front-end', () => {
  it('refuses a SET_MEM_TABLE that would misalign a running ring; the rings keep running on the old mappings', async () => {
    const { frontend, log, disconnected } = await start();
    const table = currentTable(frontend);
    // Same addresses, but region 0 now starts one byte into its fd: every ring in it would sit
    // at an odd address of our mapping. This used to unmap the old table before finding out.
    table[0] = { ...table[0], offset: 1, size: table[0].size - (1 << 16) };
    await expect(
      frontend.send(
        FrontendRequest.SET_MEM_TABLE,
        memTable(table),
        frontend.ram.regions.map((r) => r.fd),
      ),
    ).rejects.toThrow(/status 1/);
    // Served from the old mappings (this used to be a SIGSEGV: they were already unmapped).
    await stillServes(frontend);
    expect(await echo(frontend, 0, 'hiprio too')).toBe('hiprio too');
    expect(log()).toMatch(/queue 0 would not fit the new memory table: vring misaligned/);
    expect(disconnected()).toBeNull();
  });

  it('checks a running ring against the new table at the size it runs with, not a later SET_VRING_NUM', async () => {
    const { frontend, log } = await start();
    // Queue 1 runs with 128 entries in region 1; its used ring ends at 4096 + 1030 there.
    expect(frontend.queues[1].used.addr - frontend.ram.regions[1].guestPhysAddr).toBe(4096);
    await frontend.send(FrontendRequest.SET_VRING_NUM, encode(VringState, { index: 1, num: 2 }));
    const table = currentTable(frontend);
    table[1] = { ...table[1], size: 4096 + 512 }; // room for 2 entries' rings, not for 128
    await expect(
      frontend.send(
        FrontendRequest.SET_MEM_TABLE,
        memTable(table),
        frontend.ram.regions.map((r) => r.fd),
      ),
    ).rejects.toThrow(/status 1/);
    await stillServes(frontend);
    expect(log()).toMatch(/queue 1 would not fit/);
  });

  it("moves running rings to a new table that holds them, mapped from each region's mmap_offset", async () => {
    const { frontend } = await start();
    const [r0, r1] = currentTable(frontend);
    const half = r0.size / 2;
    // Region 0 split in two at its middle: the upper half is mapped from file offset `half`.
    const table = [{ ...r0, size: half }, { gpa: r0.gpa + half, size: half, uva: r0.uva + half, offset: half }, r1];
    const fds = [frontend.ram.regions[0].fd, frontend.ram.regions[0].fd, frontend.ram.regions[1].fd];
    await frontend.send(FrontendRequest.SET_MEM_TABLE, memTable(table), fds);
    await stillServes(frontend);
    // A buffer in the upper half goes through the region mapped at an offset.
    const upper = frontend.ram.view(r0.gpa + half + 100, 9);
    upper.write('mid-file!');
    const rep = frontend.ram.alloc(64, 1);
    const len = await frontend.queues[1].submit([{ addr: r0.gpa + half + 100, len: 9 }], [{ addr: rep.addr, len: 64 }]);
    expect(rep.view.subarray(0, len).toString()).toBe('mid-file!');
  });

  it('maps only the region of a huge sparse memfd, not the file up to it', async () => {
    const { frontend, backend } = await start();
    const fd = memfdCreate('sparse', MFD_CLOEXEC);
    cleanups.push(() => close(fd));
    const fileSize = 2n ** 45n; // 32 TiB, nothing committed
    const size = 2n << 20n;
    const offset = fileSize - size;
    ftruncate(fd, fileSize);
    const gpa = 0x200000000;
    const began = Date.now();
    await frontend.send(FrontendRequest.ADD_MEM_REG, region(BigInt(gpa), size, 0x7f0000000000n, offset), [fd]);
    expect(Date.now() - began).toBeLessThan(2000); // mapping the whole file took minutes
    // Same bytes on both sides: what we write through our own mapping at that offset, the daemon reads.
    const ours = MappedRegion.mapFd(fd, Number(size), offset);
    cleanups.push(() => ours.unmap());
    ours.slice(Number(size) - 4096, 11)!.write('end of file');
    expect(
      backend()
        .memory.slice(gpa + Number(size) - 4096, 11)!
        .toString(),
    ).toBe('end of file');
    const rep = frontend.ram.alloc(64, 1);
    const len = await frontend.queues[1].submit([{ addr: gpa + Number(size) - 4096, len: 11 }], [{ addr: rep.addr, len: 64 }]);
    expect(rep.view.subarray(0, len).toString()).toBe('end of file');
  });

  const badRegions: [string, (f: Frontend) => [Buffer, number], RegExp][] = [
    ['zero size', () => [region(0x200000000n, 0n, 0x7f0000000000n), smallMemfd()], /empty or wraps/],
    ['guest_phys_addr + size past 2^64', () => [region(2n ** 64n - 4096n, 1n << 16n, 0x7f0000000000n), smallMemfd()], /wraps past 2\^64/],
    ['userspace_addr + size past 2^64', () => [region(0x200000000n, 1n << 16n, 2n ** 64n - 4096n), smallMemfd()], /wraps past 2\^64/],
    [
      'mmap_offset + size past 2^64',
      () => [region(0x200000000n, 1n << 16n, 0x7f0000000000n, 2n ** 64n - 4096n), smallMemfd()],
      /wraps past 2\^64/,
    ],
    ['addresses past 2^53', () => [region(2n ** 60n, 1n << 16n, 0x7f0000000000n), smallMemfd()], /beyond 2\^53/],
    [
      'mmap_offset + size beyond the fd',
      () => [region(0x200000000n, 1n << 16n, 0x7f0000000000n, 4096n), smallMemfd()],
      /needs 69632 bytes of its fd/,
    ],
    [
      'overlapping another region in guest-physical space',
      (f) => [region(BigInt(f.ram.regions[1].guestPhysAddr + 4096), 1n << 16n, 0x7f0000000000n), smallMemfd()],
      /overlaps another in guest-physical space/,
    ],
    [
      "overlapping another region in the front-end's address space only",
      (f) => [region(0x200000000n, 1n << 16n, BigInt(f.ram.regions[0].userspaceAddr + 4096)), smallMemfd()],
      /overlaps another in the front-end's address space/,
    ],
    ['a pipe as its fd', () => [region(0x200000000n, 1n << 16n, 0x7f0000000000n), ours(pipeReadEnd())], /its fd is not a regular file/],
    [
      '/dev/null as its fd',
      () => [region(0x200000000n, 4096n, 0x7f0000000000n), ours(fs.openSync('/dev/null', 'r+'))],
      /its fd is not a regular file/,
    ],
    [
      'a directory as its fd',
      () => [region(0x200000000n, 4096n, 0x7f0000000000n), ours(fs.openSync(os.tmpdir(), 'r'))],
      /its fd is not a regular file/,
    ],
  ];
  it.each(badRegions)('refuses an added region with %s and keeps serving', async (_, make, why) => {
    const { frontend, log, disconnected } = await start();
    const [payload, fd] = make(frontend);
    await expect(frontend.send(FrontendRequest.ADD_MEM_REG, payload, [fd])).rejects.toThrow(/status 1/);
    expect(log()).toMatch(why);
    expect(disconnected()).toBeNull();
    await stillServes(frontend);
  });

  it('drops the connection when guest RAM is shrunk under the daemon, instead of dying of SIGBUS', async () => {
    const { frontend, disconnected, log } = await start();
    await stillServes(frontend);
    // The front-end truncates every region it handed over; the rings' pages are gone.
    for (const r of frontend.ram.regions) ftruncate(r.fd, 0);
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    fs.writeSync(frontend.queues[1].kickFd, one);
    await until(() => disconnected());
    expect(disconnected()?.err?.message).toMatch(/guest memory faulted/);
    expect(log()).toMatch(/guest memory faulted: a region's file was shrunk under the daemon; disconnecting/);
  });

  it('refuses a SET_MEM_TABLE whose regions overlap each other, keeping the old table', async () => {
    const { frontend } = await start();
    const [r0, r1] = currentTable(frontend);
    const table = [r0, { ...r1, gpa: r0.gpa + 4096 }];
    await expect(
      frontend.send(
        FrontendRequest.SET_MEM_TABLE,
        memTable(table),
        frontend.ram.regions.map((r) => r.fd),
      ),
    ).rejects.toThrow(/status 1/);
    await stillServes(frontend);
  });

  it('disconnects cleanly on a SET_MEM_TABLE of more regions than the message holds, or fds that do not match', async () => {
    for (const [nregions, fds, why] of [
      [9, 9, /9 regions/],
      [2, 1, /2 regions but 1 fds/],
    ] as const) {
      const { frontend, disconnected } = await start();
      const table = memTable(currentTable(frontend), nregions);
      const sent = Array.from({ length: fds }, () => frontend.ram.regions[0].fd);
      await expect(frontend.send(FrontendRequest.SET_MEM_TABLE, table, sent)).rejects.toThrow();
      await until(disconnected);
      expect(disconnected()?.err?.message).toMatch(why);
    }
  });

  it('refuses a region past the last memory slot, and frees a slot on REM_MEM_REG', async () => {
    const { frontend, log } = await start();
    const slot = (i: number) => region(BigInt(0x200000000 + i * 0x100000), 1n << 16n, BigInt(0x7f0000000000 + i * 0x100000));
    // The two RAM regions hold two of the slots.
    const free = MAX_MEM_SLOTS - 2;
    for (let i = 0; i < free; i++) await frontend.send(FrontendRequest.ADD_MEM_REG, slot(i), [smallMemfd()]);
    await expect(frontend.send(FrontendRequest.ADD_MEM_REG, slot(free), [smallMemfd()])).rejects.toThrow(/status 1/);
    expect(log()).toMatch(/no free memory slot/);
    await frontend.send(FrontendRequest.REM_MEM_REG, slot(0), []);
    await frontend.send(FrontendRequest.ADD_MEM_REG, slot(free), [smallMemfd()]);
    await expect(frontend.send(FrontendRequest.REM_MEM_REG, slot(free + 1), [])).rejects.toThrow(/status 1/);
    await stillServes(frontend);
  });
});

describe('vring set-up from a hostile front-end', () => {
  it.each([0, 3, 65536])('disconnects cleanly on a queue size of %i', async (num) => {
    const { frontend, disconnected } = await start();
    await expect(frontend.send(FrontendRequest.SET_VRING_NUM, encode(VringState, { index: 1, num }))).rejects.toThrow();
    await until(disconnected);
    expect(disconnected()?.err?.message).toMatch(new RegExp(`bad queue size ${num}`));
  });

  const ringAddr = (f: Frontend, q: GuestQueue, change: Partial<Record<'desc' | 'avail' | 'used', number>>) =>
    encode(VringAddr, {
      index: q.index,
      flags: 0,
      descUserAddr: BigInt(change.desc ?? f.ram.userAddr(q.desc.addr)),
      availUserAddr: BigInt(change.avail ?? f.ram.userAddr(q.avail.addr)),
      usedUserAddr: BigInt(change.used ?? f.ram.userAddr(q.used.addr)),
      logGuestAddr: 0n,
    });

  const badAddrs: [string, (f: Frontend, q: GuestQueue) => Partial<Record<'desc' | 'avail' | 'used', number>>, RegExp][] = [
    ['a descriptor table off 16 bytes', (f, q) => ({ desc: f.ram.userAddr(q.desc.addr) + 8 }), /misaligned vring address/],
    ['an available ring off 2 bytes', (f, q) => ({ avail: f.ram.userAddr(q.avail.addr) + 1 }), /misaligned vring address/],
    ['a used ring off 4 bytes', (f, q) => ({ used: f.ram.userAddr(q.used.addr) + 2 }), /misaligned vring address/],
    ['a used ring outside RAM', () => ({ used: 0x100000 }), /outside guest memory/],
    [
      'a used ring whose tail runs past its region',
      (f) => ({ used: f.ram.regions[1].userspaceAddr + f.ram.regions[1].size - 64 }),
      /outside guest memory/,
    ],
    ['an address past 2^53', () => ({ desc: 2 ** 60 }), /beyond 2\^53/],
  ];
  it.each(badAddrs)('refuses %s on a running ring, which keeps running', async (_, change, why) => {
    const { frontend, log, disconnected } = await start();
    const q = frontend.queues[1];
    await expect(frontend.send(FrontendRequest.SET_VRING_ADDR, ringAddr(frontend, q, change(frontend, q)))).rejects.toThrow(/status 1/);
    expect(log()).toMatch(why);
    expect(disconnected()).toBeNull();
    await stillServes(frontend);
  });

  it('refuses ring addresses that do not hold the whole ring already at SET_VRING_ADDR on a stopped ring', async () => {
    const { frontend } = await start();
    const q = frontend.queues[2];
    await frontend.call(FrontendRequest.GET_VRING_BASE, encode(VringState, { index: 2, num: 0 }));
    const r = frontend.ram.regions[0];
    await expect(
      frontend.send(FrontendRequest.SET_VRING_ADDR, ringAddr(frontend, q, { used: r.userspaceAddr + r.size - 64 })),
    ).rejects.toThrow(/status 1/);
    expect(await echo(frontend, 1, 'other queue')).toBe('other queue');
  });

  it('resumes a running ring where it was when the front-end replaces its kick fd, serving no chain twice', async () => {
    const { frontend } = await start();
    const q = frontend.queues[2];
    expect(await echo(frontend, 2, 'first')).toBe('first');
    const req = frontend.ram.alloc(6);
    req.view.write('second');
    const rep = frontend.ram.alloc(64, 1);
    const len = await q.submit([{ addr: req.addr, len: 6 }], [{ addr: rep.addr, len: 64 }]);
    req.view.write('AGAIN!'); // a chain served again would echo this
    await frontend.send(FrontendRequest.SET_VRING_KICK, encode(U64, { value: 2n }), [q.kickFd]);
    await new Promise((r) => setTimeout(r, 20));
    expect(rep.view.subarray(0, len).toString()).toBe('second');
    expect(await echo(frontend, 2, 'third')).toBe('third');
  });

  it('stops a queue whose driver claims more available chains than the ring holds; the others carry on', async () => {
    const { frontend, log } = await start();
    const q = frontend.queues[2];
    q.avail.view.writeUInt16LE(1000, 2); // avail idx 1000 ahead of 0
    await new Promise((r) => setTimeout(r, 10));
    // Any kick makes the device look.
    fs.writeSync(q.kickFd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]));
    await until(() => /queue 2: .* queue stopped/.test(log()));
    expect(log()).toMatch(/queue 2: available index 1000 is 1000 ahead of 0; queue stopped/);
    expect(await echo(frontend, 1, 'queue 1 unaffected')).toBe('queue 1 unaffected');
  });
});

describe('descriptor chains from a hostile driver, through the daemon', () => {
  const writeDesc = (table: Buffer, i: number, d: { addr: number; len: number; flags: number; next: number }) => {
    table.writeBigUInt64LE(BigInt(d.addr), 16 * i);
    table.writeUInt32LE(d.len, 16 * i + 8);
    table.writeUInt16LE(d.flags, 16 * i + 12);
    table.writeUInt16LE(d.next, 16 * i + 14);
  };

  const cases: [string, (f: Frontend) => { index: number; addr: number; len: number; flags: number; next: number }[], RegExp][] = [
    [
      'a loop',
      (f) => {
        const b = f.ram.alloc(16);
        return [
          { index: 3, addr: b.addr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 4 },
          { index: 4, addr: b.addr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 3 },
        ];
      },
      /loops or is too long/,
    ],
    [
      'a descriptor spanning the end of a region into unmapped guest-physical space',
      (f) => [{ index: 3, addr: f.ram.regions[0].size - 8, len: 16, flags: 0, next: 0 }],
      /outside guest memory/,
    ],
    [
      'a length of 4 GiB - 1',
      (f) => [{ index: 3, addr: f.ram.alloc(16).addr, len: 0xffffffff, flags: 0, next: 0 }],
      /outside guest memory/,
    ],
    ['an address past 2^53', () => [{ index: 3, addr: 2 ** 60, len: 16, flags: 0, next: 0 }], /beyond 2\^53/],
    [
      'a nested indirect table',
      (f) => {
        const inner = f.ram.alloc(16);
        const outer = f.ram.alloc(32);
        writeDesc(outer.view, 0, { addr: inner.addr, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
        return [{ index: 3, addr: outer.addr, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }];
      },
      /nested indirect/,
    ],
    [
      'a loop inside an indirect table',
      (f) => {
        const b = f.ram.alloc(16);
        const t = f.ram.alloc(32);
        writeDesc(t.view, 0, { addr: b.addr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 });
        writeDesc(t.view, 1, { addr: b.addr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 0 });
        return [{ index: 3, addr: t.addr, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }];
      },
      /loops or is too long/,
    ],
    [
      'an indirect table whose next runs past the table',
      (f) => {
        const b = f.ram.alloc(16);
        const t = f.ram.alloc(32);
        writeDesc(t.view, 0, { addr: b.addr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 2 });
        return [{ index: 3, addr: t.addr, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }];
      },
      /next index 2 out of range/,
    ],
    [
      'an indirect table of 24 bytes',
      (f) => [{ index: 3, addr: f.ram.alloc(32).addr, len: 24, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }],
      /indirect table of 24 bytes/,
    ],
    [
      'an indirect table outside RAM',
      () => [{ index: 3, addr: 0x100000, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }],
      /indirect table outside/,
    ],
    [
      'an indirect descriptor that also has NEXT',
      (f) => [{ index: 3, addr: f.ram.alloc(32).addr, len: 32, flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, next: 4 }],
      /indirect descriptor with NEXT/,
    ],
    [
      'a readable descriptor after a writable one',
      (f) => {
        const b = f.ram.alloc(16);
        return [
          { index: 3, addr: b.addr, len: 16, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 4 },
          { index: 4, addr: b.addr, len: 16, flags: 0, next: 0 },
        ];
      },
      /readable descriptor after a writable one/,
    ],
  ];
  it.each(cases)('returns %s unused and keeps serving', async (_, make, why) => {
    const { frontend, log } = await start();
    const len = await frontend.queues[1].submitRaw(make(frontend), 3);
    expect(len).toBe(0);
    expect(log()).toMatch(why);
    await stillServes(frontend);
  });

  it('returns a head index beyond the queue unused', async () => {
    const { frontend, log } = await start();
    const q = frontend.queues[1];
    void q.submitRaw([], 5000);
    const usedIdx = () => q.used.view.readUInt16LE(2);
    await until(() => usedIdx() === 1);
    expect(q.used.view.readUInt32LE(4)).toBe(5000);
    expect(log()).toMatch(/head index 5000 out of range/);
    q.collect();
    expect(await echo(frontend, 2, 'after a bad head')).toBe('after a bad head');
  });
});

describe('file descriptors that are not eventfds', () => {
  const kinds: [string, () => number][] = [
    ['a regular file', () => fs.openSync('/etc/hostname', 'r')],
    ['a directory', () => fs.openSync(os.tmpdir(), 'r')],
    ['/dev/null', () => fs.openSync('/dev/null', 'r+')],
  ];

  it.each(kinds)('refuses %s as a kick fd, and takes an eventfd for the ring afterwards', async (_, open) => {
    const { frontend, log, disconnected } = await start();
    const fd = open();
    await expect(frontend.send(FrontendRequest.SET_VRING_KICK, encode(U64, { value: 2n }), [fd])).rejects.toThrow(/status 1/);
    fs.closeSync(fd);
    expect(log()).toMatch(/queue 2: kick fd cannot be polled/);
    expect(disconnected()).toBeNull();
    expect(await echo(frontend, 1, 'other queue')).toBe('other queue');
    await frontend.send(FrontendRequest.SET_VRING_KICK, encode(U64, { value: 2n }), [frontend.queues[2].kickFd]);
    await frontend.send(FrontendRequest.SET_VRING_ENABLE, encode(VringState, { index: 2, num: 1 }));
    expect(await echo(frontend, 2, 'queue 2 back')).toBe('queue 2 back');
  });

  it.each(kinds)('survives %s as a call fd', async (_, open) => {
    const { frontend, disconnected } = await start();
    const fd = open();
    await frontend.send(FrontendRequest.SET_VRING_CALL, encode(U64, { value: 2n }), [fd]);
    fs.closeSync(fd);
    const q = frontend.queues[2];
    const b = frontend.ram.alloc(16);
    void q.submit([{ addr: b.addr, len: 16 }], []);
    await until(() => q.used.view.readUInt16LE(2) === 1);
    expect(q.used.view.readUInt16LE(2)).toBe(1);
    expect(disconnected()).toBeNull();
    expect(await echo(frontend, 1, 'queue 1 unaffected')).toBe('queue 1 unaffected');
  });

  it('never writes to a writable regular file given as a call fd (its writes may wait on its file system): the queue goes without signals', async () => {
    const { frontend, log, disconnected } = await start();
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'callfile-')), 'f');
    const fd = fs.openSync(file, 'w+');
    await frontend.send(FrontendRequest.SET_VRING_CALL, encode(U64, { value: 2n }), [fd]);
    fs.closeSync(fd);
    const q = frontend.queues[2];
    for (let i = 0; i < 3; i++) {
      const b = frontend.ram.alloc(16);
      void q.submit([{ addr: b.addr, len: 16 }], []);
      await until(() => q.used.view.readUInt16LE(2) === i + 1);
    }
    expect(fs.statSync(file).size).toBe(0);
    expect(log()).toMatch(/queue 2: call fd is a regular file .*no signals on this queue/);
    expect(disconnected()).toBeNull();
    expect(await echo(frontend, 1, 'queue 1 unaffected')).toBe('queue 1 unaffected');
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  });

  it.each(kinds)('accepts %s as an err fd (never written) and keeps serving', async (_, open) => {
    const { frontend } = await start();
    const fd = open();
    await frontend.send(FrontendRequest.SET_VRING_ERR, encode(U64, { value: 1n }), [fd]);
    fs.closeSync(fd);
    await stillServes(frontend);
  });

  it.each(kinds)('refuses %s as a log fd or a back-end channel fd without leaking it', async (_, open) => {
    const { frontend, log } = await start();
    const before = openFdCount();
    for (let i = 0; i < 5; i++) {
      const fd = open();
      await expect(frontend.send(FrontendRequest.SET_LOG_FD, Buffer.alloc(0), [fd])).rejects.toThrow(/status 1/);
      await expect(frontend.send(FrontendRequest.SET_BACKEND_REQ_FD, Buffer.alloc(0), [fd])).rejects.toThrow(/status 1/);
      fs.closeSync(fd);
    }
    expect(openFdCount()).toBe(before);
    expect(log()).toMatch(/back-end channel fd unusable/);
    await stillServes(frontend);
  });

  const deadKicks: [string, () => number][] = [
    ["a pipe's read end whose writer is gone (EOF)", pipeReadEnd],
    [
      "a pipe's write end (reads fail)",
      () => {
        const [r, w] = pipe();
        close(r);
        return w;
      },
    ],
    [
      'a socket whose peer is gone (EOF)',
      () => {
        const [a, b] = UnixStreamSocket.pair();
        b.close();
        const fd = dup(a.fd);
        a.close();
        return fd;
      },
    ],
  ];
  it.each(deadKicks)('stops watching %s as a kick fd instead of spinning, and serves the other queues', async (_, open) => {
    const { frontend, log } = await start();
    const fd = open();
    await frontend.send(FrontendRequest.SET_VRING_KICK, encode(U64, { value: 2n }), [fd]);
    close(fd);
    await new Promise((r) => setTimeout(r, 50));
    const cpu = process.cpuUsage();
    const began = process.hrtime.bigint();
    await new Promise((r) => setTimeout(r, 1000));
    const used = process.cpuUsage(cpu);
    const wallUs = Number(process.hrtime.bigint() - began) / 1000;
    // A level-triggered poll on an fd that is readable forever kept one core at 100%.
    expect((used.user + used.system) / wallUs).toBeLessThan(0.2);
    expect(log()).toMatch(/queue 2: kick fd unusable \(.*\); no longer watched/);
    expect(await echo(frontend, 1, 'queue 1 served')).toBe('queue 1 served');
  });

  it('refuses a message whose fds were lost on the way (fd table full) and keeps the connection', async () => {
    const { frontend, log, disconnected } = await start();
    const efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    cleanups.push(() => close(efd));
    const limit = getNofileLimit();
    const highest = Math.max(...fs.readdirSync('/proc/self/fd').map(Number));
    const fillers: number[] = [];
    let refused: unknown = null;
    // Every fd number below the soft limit taken: the kernel cannot install the fd that comes with
    // the next message and truncates its control message (MSG_CTRUNC).
    setNofileLimit({ soft: highest + 16, hard: limit.hard });
    try {
      for (;;) fillers.push(dup(efd));
    } catch {
      // EMFILE: the table is full.
    }
    try {
      await frontend.send(FrontendRequest.SET_VRING_CALL, encode(U64, { value: 1n }), [efd]);
    } catch (err) {
      refused = err;
    } finally {
      fillers.forEach((fd) => close(fd));
      setNofileLimit(limit);
    }
    expect(fillers.length).toBeGreaterThan(0);
    expect(String(refused)).toMatch(/status 1/);
    expect(log()).toMatch(/SET_VRING_CALL refused: file descriptors sent with it were lost \(control message truncated/);
    expect(disconnected()).toBeNull();
    await stillServes(frontend);
  });
});

describe('call fds nobody reads, with the daemon in a process of its own', () => {
  const children: ChildProcess[] = [];
  afterEach(() => children.splice(0).forEach((c) => c.kill('SIGKILL')));

  async function spawnEcho(): Promise<{ sock: string; child: ChildProcess; exited: Promise<number | null>; output: () => string }> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vu-hostile-child-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const sock = path.join(dir, 'sock');
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'echo-backend-child.ts'), sock], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let output = '';
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
      child.on('exit', (code) => reject(new Error(`echo back-end exited with ${code}: ${output}`)));
    });
    return { sock, child, exited, output: () => output };
  }

  /** One request at a time on `q`, collecting its completion from the used ring (no call signal can reach us). */
  async function request(frontend: Frontend, q: GuestQueue, i: number): Promise<void> {
    const text = `request ${i}`;
    const req = frontend.ram.alloc(text.length);
    req.view.write(text);
    const rep = frontend.ram.alloc(64, 1);
    const done = { len: -1 };
    void q.submit([{ addr: req.addr, len: text.length }], [{ addr: rep.addr, len: 64 }]).then((n) => (done.len = n));
    const deadline = Date.now() + 5000;
    while (done.len < 0) {
      if (Date.now() > deadline) throw new Error(`request ${i} never completed: the daemon's event loop is stuck`);
      await new Promise((r) => setImmediate(r));
      q.collect();
    }
    expect(rep.view.subarray(0, done.len).toString()).toBe(text);
    frontend.ram.free(req);
    frontend.ram.free(rep);
  }

  const sinks: [string, () => [number, () => void]][] = [
    [
      'a one-page pipe',
      () => {
        const [r, w] = pipe();
        fcntl(w, F_SETPIPE_SZ, 4096);
        return [w, () => close(r)];
      },
    ],
    [
      'a socket',
      () => {
        const [a, b] = UnixStreamSocket.pair();
        return [a.fd, () => (a.close(), b.close())];
      },
    ],
  ];
  it.each(sinks)(
    'keeps answering 2000 requests with %s as call fd, and stops on SIGTERM',
    async (_, make) => {
      const { sock, child, exited, output } = await spawnEcho();
      const frontend = await VhostUserFrontend.connect(sock, { requestQueues: 2, ramRegions: [1 << 20, 1 << 20] });
      cleanups.push(() => frontend.close());
      const [callFd, release] = make();
      cleanups.push(release);
      await frontend.send(FrontendRequest.SET_VRING_CALL, encode(U64, { value: 1n }), [callFd]);
      const q = frontend.queues[1];
      for (let i = 0; i < 2000; i++) await request(frontend, q, i);
      expect(await echo(frontend, 2, 'still answering')).toBe('still answering');
      child.kill('SIGTERM');
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('ignored SIGTERM'), 5000))]);
      expect(code, output()).toBe(0);
    },
    60_000,
  );
});

describe('messages of the wrong size', () => {
  it('disconnects cleanly on a payload larger than any message, or a header of another version', async () => {
    for (const [flags, payload, why] of [
      [VHOST_USER_NEED_REPLY_MASK, Buffer.alloc(8192), /too large/],
      [0x2, Buffer.alloc(8), /unsupported vhost-user version/],
    ] as const) {
      const { frontend, disconnected } = await start();
      frontend.raw(FrontendRequest.SET_FEATURES, flags, payload);
      await until(disconnected);
      expect(disconnected()?.err?.message).toMatch(why);
    }
  });

  it('disconnects cleanly on payloads shorter than their layout', async () => {
    for (const request of [
      FrontendRequest.SET_VRING_ADDR,
      FrontendRequest.SET_MEM_TABLE,
      FrontendRequest.ADD_MEM_REG,
      FrontendRequest.SET_VRING_KICK,
    ]) {
      const { frontend, disconnected } = await start();
      frontend.raw(request, VHOST_USER_NEED_REPLY_MASK, Buffer.alloc(4));
      await until(disconnected);
      expect(disconnected()?.err?.message).toMatch(/need/);
    }
  });
});
