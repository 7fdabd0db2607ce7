import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Daemon } from '../../src/daemon';
import { DaxClient } from '../../src/guest/dax-client';
import { FUSE_ROOT_ID, FuseDriver } from '../../src/guest/fuse-driver';

const MiB = 1024 * 1024;
const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** Our daemon with an 8 MiB DAX window, a guest with DaxClient, and a 3 MiB file open read-write. */
async function setup() {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'dax-client-'));
  const share = path.join(base, 'share');
  fs.mkdirSync(share);
  const file = path.join(share, 'data');
  const content = Buffer.alloc(3 * MiB);
  for (let i = 0; i < content.length; i += 4) content.writeUInt32LE(i, i);
  fs.writeFileSync(file, content);
  const sock = path.join(base, 'sock');
  const daemon = new Daemon(
    { socketPath: sock, sharedDir: share, cache: 'auto', readonly: false, logLevel: 'error', daxWindow: BigInt(8 * MiB) },
    () => undefined,
  );
  daemon.start();
  const fuse = await FuseDriver.connect(sock, { timeoutMs: 5000 });
  const dax = DaxClient.enable(fuse);
  cleanups.push(() => fs.rmSync(base, { recursive: true, force: true }));
  cleanups.push(() => daemon.stop());
  cleanups.push(() => fuse.close());
  cleanups.push(() => dax.close());
  await fuse.init();
  const entry = await fuse.lookup(FUSE_ROOT_ID, 'data');
  const { fh } = await fuse.open(entry.nodeid, fs.constants.O_RDWR);
  return { fuse, dax, file, content, nodeid: entry.nodeid, fh };
}

describe('DaxClient against virtiofsd-ts', () => {
  it('reads through the window, and past the known size through FUSE_READ', async () => {
    const { dax, content, nodeid, fh, file } = await setup();
    const got = await dax.readFile(nodeid, fh, MiB - 8, 2 * MiB, content.length);
    expect(got.equals(content.subarray(MiB - 8, 3 * MiB - 8))).toBe(true);
    expect(dax.window.mappingCount).toBe(2);
    // The file grew on the host: the part beyond the size we knew comes through the queue.
    fs.appendFileSync(file, 'tail');
    const tail = await dax.readFile(nodeid, fh, content.length - 4, 64, content.length);
    expect(tail.subarray(4).toString()).toBe('tail');
  });

  it('writes within the file through the window and extends it with FUSE_WRITE', async () => {
    const { dax, content, nodeid, fh, file } = await setup();
    expect(await dax.writeFile(nodeid, fh, 10, Buffer.from('in place'), content.length)).toBe(8);
    expect(dax.window.mappingCount).toBe(1);
    expect(await dax.writeFile(nodeid, fh, content.length, Buffer.from('appended'), content.length)).toBe(8);
    const host = fs.readFileSync(file);
    expect(host.subarray(10, 18).toString()).toBe('in place');
    expect(host.subarray(content.length).toString()).toBe('appended');
  });

  it('falls back to FUSE_READ when the host truncated a mapped file', async () => {
    const { dax, content, nodeid, fh, file } = await setup();
    await dax.readFile(nodeid, fh, 0, 4096, content.length);
    fs.truncateSync(file, 100);
    // We still believe the file is 3 MiB: the window faults, the queue answers the truth.
    const got = await dax.readFile(nodeid, fh, 0, MiB, content.length);
    expect(got.length).toBe(100);
    expect(got.equals(content.subarray(0, 100))).toBe(true);
    expect(dax.window.mappingCount).toBe(0);
  });
});

describe('bad SETUPMAPPINGs through the whole stack', () => {
  it('answers each with an error and maps nothing', async () => {
    const { fuse, dax, nodeid, fh } = await setup();
    const READ = 2;
    const bad: [string, Promise<void>, string[]][] = [
      ['misaligned', fuse.setupMapping(nodeid, fh, { foffset: 100, len: 2 * MiB, moffset: 0, flags: READ }), ['EINVAL']],
      ['outside the window', fuse.setupMapping(nodeid, fh, { foffset: 0, len: 2 * MiB, moffset: 8 * MiB, flags: READ }), ['EINVAL']],
      ['length 0', fuse.setupMapping(nodeid, fh, { foffset: 0, len: 0, moffset: 0, flags: READ }), ['EINVAL']],
      ['huge', fuse.setupMapping(nodeid, fh, { foffset: 0, len: 2 ** 52, moffset: 0, flags: READ }), ['EINVAL']],
      [
        'unknown nodeid',
        fuse.setupMapping(123456, -1, { foffset: 0, len: 2 * MiB, moffset: 0, flags: READ }),
        ['EBADF', 'ENOENT', 'ESTALE'],
      ],
    ];
    for (const [what, p, codes] of bad) {
      const err = await p.then(
        () => null,
        (e: { code?: string }) => e,
      );
      expect(codes, what).toContain(err?.code);
    }
    expect(dax.window.mappingCount).toBe(0);
  });
});
