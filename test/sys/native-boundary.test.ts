/**
 * The addon's boundary: arguments of the wrong type are refused with a
 * TypeError (never silently read as 0, which is stdin), and an exception in a
 * watcher callback reaches the watcher's error callback instead of becoming a
 * fatal exception of the process.
 */
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EFD_CLOEXEC, EFD_NONBLOCK, FdWatcher, UnixStreamSocket, addon, close, eventfd } from '../../src/sys';

const asAny = addon as unknown as Record<string, (...args: unknown[]) => unknown>;

describe('native addon arguments', () => {
  it('refuses non-numbers where an fd is expected', () => {
    expect(() => asAny.watch('0', () => undefined)).toThrow(TypeError);
    expect(() => asAny.watch(0, 'not a function')).toThrow(TypeError);
    expect(() => asAny.unwatch({})).toThrow(TypeError);
    expect(() => asAny.sendmsg('3', Buffer.alloc(1), [])).toThrow(TypeError);
    expect(() => asAny.sendmsg(3, 'text', [])).toThrow(TypeError);
    expect(() => asAny.recvmsg(undefined, Buffer.alloc(8), 0, 8)).toThrow(TypeError);
    expect(() => asAny.recvmsg(3, Buffer.alloc(8), -1, 8)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });

  it('asyncIo statx/openat: refuses a path without its NUL, a short statx buffer and non-Buffers, queueing nothing', () => {
    const never = () => {
      throw new Error('no job may run');
    };
    const STATX = 3;
    const OPENAT = 4;
    expect(() => asAny.asyncIo(STATX, -100, 0, 0x7ff, 0, 0, 0, never, Buffer.from('/tmp'), Buffer.alloc(256))).toThrow(
      expect.objectContaining({ code: 'EINVAL' }),
    );
    expect(() => asAny.asyncIo(STATX, -100, 0, 0x7ff, 0, 0, 0, never, Buffer.from('/tmp\0'), Buffer.alloc(255))).toThrow(
      expect.objectContaining({ code: 'EINVAL' }),
    );
    expect(() => asAny.asyncIo(OPENAT, -100, 0, 0, 0, 0, 0, never)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => asAny.asyncIo(OPENAT, -100, 0, 0, 0, 0, 0, never, '/tmp\0')).toThrow(TypeError);
    expect(() => asAny.asyncIo(5, 0, 0, 0, 0, 0, 0, never)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });

  it('refuses an fd list holding something other than numbers, sending nothing', () => {
    const [a, b] = UnixStreamSocket.pair();
    try {
      expect(() => asAny.sendmsg(a.fd, Buffer.from('x'), ['0'])).toThrow(TypeError);
      expect(a.fd).toBeGreaterThan(2);
      const got = Buffer.alloc(4);
      expect(b.receive(got, 0, 4)).toBeNull();
    } finally {
      a.close();
      b.close();
    }
  });
});

describe('FdWatcher', () => {
  it('hands an exception of its callback to the error callback, and keeps watching', async () => {
    const fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    const errors: unknown[] = [];
    let calls = 0;
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    const watcher = new FdWatcher(
      fd,
      () => {
        calls++;
        const drain = Buffer.alloc(8);
        fs.readSync(fd, drain);
        throw new Error(`boom ${calls}`);
      },
      (err) => errors.push(err),
    );
    try {
      for (let i = 0; i < 2; i++) {
        fs.writeSync(fd, one);
        for (let t = 0; t < 100 && errors.length <= i; t++) await new Promise((r) => setTimeout(r, 5));
      }
      expect(errors.map((e) => (e as Error).message)).toEqual(['boom 1', 'boom 2']);
    } finally {
      watcher.close();
      close(fd);
    }
  });
});
