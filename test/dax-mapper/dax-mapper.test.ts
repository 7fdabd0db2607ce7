import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DaxMapper, validateRange } from '../../src/dax-mapper/dax-mapper';
import { BackendChannel } from '../../src/vhost-user/backend-channel';
import { Errno } from '../../src/sys';
import { daxPair } from '../helpers/dax-pair';

const MiB = 1n << 20n;
const cleanups: (() => void)[] = [];
afterEach(() =>
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f()),
);

function setup(windowSize = 8 * 1024 * 1024, refuse = false) {
  const { window, mapper, close: closePair } = daxPair(windowSize, { refuse });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dax-'));
  const file = path.join(dir, 'data');
  const content = Buffer.alloc(8 * 1024 * 1024);
  for (let i = 0; i < content.length; i += 4) content.writeUInt32LE(i, i);
  fs.writeFileSync(file, content);
  const fd = fs.openSync(file, 'r+');
  cleanups.push(() => {
    closePair();
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { window, mapper, fd, file, content };
}

describe('validateRange', () => {
  it('accepts an aligned range inside the window and refuses everything else', () => {
    const w = 8n * MiB;
    expect(validateRange(w, 2n * MiB, 2n * MiB, 0n)).toBe(0);
    expect(validateRange(w, 0n, 0n, 0n)).toBe(Errno.EINVAL); // length 0
    expect(validateRange(w, 100n, 4096n, 0n)).toBe(Errno.EINVAL); // misaligned file offset
    expect(validateRange(w, 0n, 4096n, 512n)).toBe(Errno.EINVAL); // misaligned window offset
    expect(validateRange(w, 0n, 4096n, w)).toBe(Errno.EINVAL); // outside the window
    expect(validateRange(w, 0n, (1n << 64n) - 4096n, 8192n)).toBe(Errno.EINVAL); // wraps
    expect(validateRange(w, (1n << 63n) - 4096n, 8192n, 0n)).toBe(Errno.EFBIG); // past off_t
  });
});

describe('DaxMapper with the guest DaxWindow', () => {
  it('maps a file range into the window, coherent both ways', async () => {
    const { window, mapper, fd, file, content } = setup();
    expect(await mapper.setup({ nodeid: 2n, fd, foffset: 2n * MiB, len: 2n * MiB, moffset: 4n * MiB, writable: true })).toBe(0);
    const view = window.view(4 * 1024 * 1024, 2 * 1024 * 1024);
    expect(view.subarray(0, 64)).toEqual(content.subarray(2 * 1024 * 1024, 2 * 1024 * 1024 + 64));
    view.write('from the guest', 16);
    expect(
      fs
        .readFileSync(file)
        .subarray(2 * 1024 * 1024 + 16, 2 * 1024 * 1024 + 30)
        .toString(),
    ).toBe('from the guest');
    fs.writeSync(fd, Buffer.from('from the host'), 0, 13, 2 * 1024 * 1024 + 100);
    expect(view.subarray(100, 113).toString()).toBe('from the host');
    expect(await mapper.remove(4n * MiB, 2n * MiB)).toBe(0);
    expect(window.mappingCount).toBe(0);
    expect(mapper.list()).toEqual([]);
  });

  it('answers bad SETUPMAPPINGs with errors and maps nothing', async () => {
    const { window, mapper, fd } = setup();
    const base = { nodeid: 2n, fd, writable: false };
    expect(await mapper.setup({ ...base, foffset: 0n, len: 0n, moffset: 0n })).toBe(Errno.EINVAL);
    expect(await mapper.setup({ ...base, foffset: 1n, len: 4096n, moffset: 0n })).toBe(Errno.EINVAL);
    expect(await mapper.setup({ ...base, foffset: 0n, len: 4096n, moffset: 8n * MiB })).toBe(Errno.EINVAL);
    expect(await mapper.setup({ ...base, foffset: 0n, len: 1n << 62n, moffset: 0n })).toBe(Errno.EINVAL);
    expect(window.mappingCount).toBe(0);
  });

  it('replaces overlapped mappings, keeping what lies outside the new range', async () => {
    const { window, mapper, fd, content } = setup();
    expect(await mapper.setup({ nodeid: 2n, fd, foffset: 0n, len: 4n * MiB, moffset: 0n, writable: false })).toBe(0);
    expect(await mapper.setup({ nodeid: 3n, fd, foffset: 6n * MiB, len: 1n * MiB, moffset: 1n * MiB, writable: false })).toBe(0);
    expect(mapper.list().map((m) => [m.moffset / MiB, m.len / MiB, m.foffset / MiB])).toEqual([
      [0n, 1n, 0n],
      [2n, 2n, 2n],
      [1n, 1n, 6n],
    ]);
    expect(window.mappingCount).toBe(3);
    const at = (moff: number) => window.view(moff, 4).readUInt32LE(0);
    expect(at(1024 * 1024)).toBe(content.readUInt32LE(6 * 1024 * 1024));
    expect(at(3 * 1024 * 1024)).toBe(content.readUInt32LE(3 * 1024 * 1024));
    // Removing a range inside a mapping splits it.
    expect(await mapper.remove(2n * MiB + 4096n * 4n, 4096n)).toBe(0);
    expect(window.mappingCount).toBe(4);
    await mapper.forgetInode(2n);
    expect(mapper.list().map((m) => m.nodeid)).toEqual([3n]);
    expect(window.mappingCount).toBe(1);
  });

  it('reports a front-end that refuses the map as EIO', async () => {
    const { mapper, fd } = setup(8 * 1024 * 1024, true);
    expect(await mapper.setup({ nodeid: 2n, fd, foffset: 0n, len: 2n * MiB, moffset: 0n, writable: false })).toBe(Errno.EIO);
    expect(mapper.list()).toEqual([]);
  });
});

describe('DaxMapper reset while the front-end is answering', () => {
  it('never closes an fd twice, nor keeps mappings across the reset', async () => {
    const acks: (() => void)[] = [];
    const channel = { request: () => new Promise<void>((resolve) => acks.push(resolve)) };
    const mapper = new DaxMapper(8n * MiB);
    mapper.setBackendChannel(channel as unknown as BackendChannel);
    const fd = fs.openSync('/etc/hostname', 'r');
    const flush = async () => {
      for (let i = 0; i < 20; i++) {
        await new Promise((r) => setImmediate(r));
        acks.splice(0).forEach((ack) => ack());
      }
    };
    const a = mapper.setup({ nodeid: 2n, fd, foffset: 0n, len: 2n * MiB, moffset: 0n, writable: false });
    await flush();
    expect(await a).toBe(0);
    // A removal waits for its acknowledgement; the device is reset meanwhile.
    const removal = mapper.remove(0n, 8n * MiB);
    await new Promise((r) => setImmediate(r));
    const pendingMap = mapper.setup({ nodeid: 3n, fd, foffset: 0n, len: 2n * MiB, moffset: 2n * MiB, writable: false });
    mapper.reset();
    const victim = fs.openSync('/etc/hostname', 'r'); // likely takes a number the mapper just closed
    await flush();
    expect(await removal).toBe(0);
    expect(await pendingMap).toBe(Errno.EIO);
    expect(mapper.list()).toEqual([]);
    expect(() => fs.fstatSync(victim)).not.toThrow();
    fs.closeSync(victim);
    fs.closeSync(fd);
  });
});
