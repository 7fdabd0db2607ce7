import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MappedRegion,
  PROT_NONE,
  addon,
  close,
  dup,
  fcntl,
  fdSeals,
  ftruncate,
  guardedFaultTotal,
  memfdCreate,
} from '../../src/sys';
import { GuestMemory } from '../../src/vhost-user/guest-memory';

const MiB = 1024 * 1024;
const PAGE = 4096;
const F_ADD_SEALS = 1033;
const ADDON = path.resolve(__dirname, '..', '..', 'build', 'Release', 'sys_addon.node');

const cleanups: (() => void)[] = [];
afterEach(() =>
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f()),
);

function memfd(size: number, flags = MFD_CLOEXEC): number {
  const fd = memfdCreate('shrunk-memfd-test', flags);
  ftruncate(fd, size);
  cleanups.push(() => close(fd));
  return fd;
}

function pattern(view: Buffer): void {
  for (let i = 0; i + 4 <= view.length; i += 4) view.writeUInt32LE((i * 2654435761) >>> 0, i);
}

/** Runs a plain-JS script in a child node with the addon as `addon`; returns how it ended. */
function child(script: string): { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['-e', `const addon = require(${JSON.stringify(ADDON)});\n${script}`], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

describe('a guest-RAM memfd shrunk under its mapping', () => {
  it("reads as zeros through the daemon's GuestMemory, and the mapping reports the fault", () => {
    const fd = memfd(2 * MiB);
    const memory = new GuestMemory();
    cleanups.push(() => memory.clear());
    // GuestMemory takes ownership of the fd it is given; keep ours to shrink it.
    memory.addRegion({ guestPhysAddr: 0x10000n, memorySize: BigInt(2 * MiB), userspaceAddr: 0x7f0000000000n, mmapOffset: 0n }, dup(fd));
    const whole = memory.slice(0x10000, 2 * MiB)!;
    pattern(whole);
    const before = Buffer.from(whole);
    const region = memory.detachRegion(0x10000n, BigInt(2 * MiB))!;
    memory.reattachRegion(region);
    expect(region.mapping.faulted()).toBe(false);
    const total = guardedFaultTotal();

    ftruncate(fd, 0);

    // Reads through every path the daemon takes: Buffer methods, a copy, Atomics on a ring-like view.
    const ring = memory.slice(0x10000 + MiB, 64)!;
    expect(Atomics.load(new Uint16Array(ring.buffer, ring.byteOffset, 2), 1)).toBe(0);
    expect(memory.slice(0x10000, 8)!.readBigUInt64LE(0)).toBe(0n);
    const after = Buffer.from(memory.slice(0x10000, 2 * MiB)!);
    expect(after.equals(Buffer.alloc(2 * MiB))).toBe(true);
    expect(before.equals(after)).toBe(false);
    expect(region.mapping.faulted()).toBe(true);
    // One fault per 4 KiB page touched, each page then stays a zero page.
    expect(region.mapping.faultCount()).toBe((2 * MiB) / PAGE);
    expect(guardedFaultTotal() - total).toBe((2 * MiB) / PAGE);
    expect(memory.slice(0x10000, 2 * MiB)!.every((b) => b === 0)).toBe(true);
    expect(region.mapping.faultCount()).toBe((2 * MiB) / PAGE);
  });

  it('keeps the bytes still backed by the file and absorbs writes past its new end', () => {
    const fd = memfd(2 * MiB);
    const m = MappedRegion.mapFd(fd, 2 * MiB);
    cleanups.push(() => m.unmap());
    pattern(m.chunks[0]);
    const head = Buffer.from(m.chunks[0].subarray(0, MiB));
    ftruncate(fd, MiB);
    expect(m.chunks[0].subarray(0, MiB).equals(head)).toBe(true);
    expect(m.faulted()).toBe(false);
    // A write past the end lands in the zero page that replaced the file's page, not in the file.
    m.chunks[0].writeUInt32LE(0xdeadbeef, MiB + 16);
    expect(m.faultCount()).toBe(1);
    expect(m.chunks[0].readUInt32LE(MiB + 16)).toBe(0xdeadbeef);
    expect(fs.fstatSync(fd).size).toBe(MiB);
    expect(m.chunks[0].subarray(MiB + PAGE, 2 * MiB).every((b) => b === 0)).toBe(true);
    expect(m.faultCount()).toBe(MiB / PAGE);
  });

  it('stops guarding a range once unmapped, and refuses bad ranges', () => {
    const fd = memfd(PAGE);
    const m = MappedRegion.mapFd(fd, PAGE);
    m.unmap();
    expect(m.faulted()).toBe(false);
    expect(() => addon.guardRange(0x1001n, PAGE)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => addon.guardRange(0x1000n, 0)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => addon.unguardRange(-1)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => addon.guardFaults(1 << 20)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    // Arguments of the wrong type are errors, not garbage addresses.
    expect(() => addon.mmap('x' as unknown as bigint, PAGE, 0, 0, -1, 0)).toThrow(TypeError);
    expect(() => addon.munmap(0n, -1)).toThrow(TypeError);
    expect(() => addon.view(0n, Number.NaN)).toThrow(TypeError);
  });

  it('an unguarded mapping of a shrunk file still dies of SIGBUS, as before the guard existed', () => {
    // The same reads as above without guardRange: this is what killed the daemon.
    const r = child(`
      const fs = require('fs');
      const file = ${JSON.stringify(path.join(os.tmpdir(), `unguarded-${process.pid}`))};
      const fd = fs.openSync(file, 'w+');
      fs.unlinkSync(file);
      fs.ftruncateSync(fd, 8192);
      const addr = addon.mmap(0n, 8192, 1, 1, fd, 0);
      addon.copyGuarded(Buffer.alloc(1), Buffer.alloc(1)); // handlers installed, nothing guarded
      fs.ftruncateSync(fd, 0);
      const view = Buffer.from(addon.view(addr, 8192));
      console.log('read', view[4096]);
    `);
    expect(r.stdout).not.toContain('read');
    expect(r.signal).toBe('SIGBUS');
  });
});

describe('faults outside guarded ranges', () => {
  it('a bad access to unguarded memory still kills with SIGSEGV', () => {
    const r = child(`
      const guarded = addon.mmap(0n, 4096, 3, ${MAP_PRIVATE | MAP_ANONYMOUS}, -1, 0);
      addon.guardRange(guarded, 4096);
      const addr = addon.mmap(0n, 4096, ${PROT_NONE}, ${MAP_PRIVATE | MAP_ANONYMOUS}, -1, 0);
      const view = Buffer.from(addon.view(addr, 4096));
      console.log('read', view[0]);
    `);
    expect(r.stdout).not.toContain('read');
    expect(r.signal).toBe('SIGSEGV');
  });

  it('a SIGSEGV sent by kill() still kills, whatever its si_addr', () => {
    const r = child(`
      const guarded = addon.mmap(0n, 4096, 3, ${MAP_PRIVATE | MAP_ANONYMOUS}, -1, 0);
      addon.guardRange(guarded, 4096);
      process.kill(process.pid, 'SIGSEGV');
      setTimeout(() => console.log('survived'), 500);
    `);
    expect(r.stdout).not.toContain('survived');
    expect(r.signal).toBe('SIGSEGV');
  });

  it("copyGuarded reports SIGBUS past a file's end and SIGSEGV on inaccessible memory", () => {
    const fd = memfd(2 * PAGE);
    const m = MappedRegion.mapFd(fd, 2 * PAGE, 0, true, false);
    cleanups.push(() => m.unmap());
    m.chunks[0].fill(7);
    const dst = Buffer.alloc(2 * PAGE);
    expect(addon.copyGuarded(dst, m.chunks[0])).toBe(2 * PAGE);
    ftruncate(fd, PAGE);
    expect(addon.copyGuarded(dst, m.chunks[0])).toBe(-1);
    expect(m.faulted()).toBe(false);
    expect(addon.copyGuarded(dst.subarray(0, PAGE), m.chunks[0])).toBe(PAGE);
    expect(dst.subarray(0, PAGE).every((b) => b === 7)).toBe(true);

    const addr = addon.mmap(0n, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cleanups.push(() => addon.munmap(addr, PAGE));
    expect(addon.copyGuarded(dst, Buffer.from(addon.view(addr, PAGE)))).toBe(-1);
  });
});

describe('fdSeals', () => {
  it('reports F_SEAL_SHRINK, F_SEAL_SEAL of an unsealable memfd, and null for other files', () => {
    const sealable = memfd(PAGE, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    expect(fdSeals(sealable)).toBe(0);
    fcntl(sealable, F_ADD_SEALS, F_SEAL_SHRINK);
    expect(fdSeals(sealable)).toBe(F_SEAL_SHRINK);
    const m = MappedRegion.mapFd(sealable, PAGE);
    cleanups.push(() => m.unmap());
    expect(m.shrinkSealed).toBe(true);
    expect(() => ftruncate(sealable, 0)).toThrow(expect.objectContaining({ code: 'EPERM' }));

    // Without MFD_ALLOW_SEALING a memfd is born with F_SEAL_SEAL: shrinkable, and no seal can be added.
    const plain = memfd(PAGE);
    expect(fdSeals(plain)).toBe(F_SEAL_SEAL);
    const p = MappedRegion.mapFd(plain, PAGE);
    cleanups.push(() => p.unmap());
    expect(p.shrinkSealed).toBe(false);

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'seals-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = fs.openSync(path.join(dir, 'f'), 'w+');
    cleanups.push(() => fs.closeSync(file));
    expect(fdSeals(file)).toBeNull();
    expect(() => fdSeals(1 << 20)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });
});
