/**
 * GET_VRING_BASE with requests in flight, through the real daemon and the
 * TypeScript guest: the base must come back only once every request the ring
 * handed over is used, or a ring resumed from it would lose them. A SETLKW
 * that could wait for ever is cancelled (EINTR); pool work (FSYNC) is waited
 * for; messages the front-end sends meanwhile are handled after, in order.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { blockPool } from '../helpers/block-pool';
import { afterEach, describe, expect, it } from 'vitest';
import { Daemon } from '../../src/daemon';
import { FUSE_ROOT_ID, FuseDriver, F_WRLCK } from '../../src/guest/fuse-driver';
import { FuseRequestError } from '../../src/guest/fuse-transport';
import { FrontendRequest } from '../../src/vhost-user/protocol';
import { VringState, decode, encode } from '../../src/vhost-user/messages';
import { Errno } from '../../src/sys/errno';

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function served(): Promise<{ fuse: FuseDriver; base: string }> {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'queue-stop-'));
  const share = path.join(base, 'share');
  fs.mkdirSync(share);
  fs.writeFileSync(path.join(share, 'f'), 'data');
  const daemon = new Daemon(
    { socketPath: path.join(base, 'sock'), sharedDir: share, cache: 'auto', readonly: false, posixLock: true, logLevel: 'error' },
    () => undefined,
  );
  daemon.start();
  cleanups.push(async () => {
    await daemon.stop();
    fs.rmSync(base, { recursive: true, force: true });
  });
  const fuse = await FuseDriver.connect(path.join(base, 'sock'), { requestQueues: 1, timeoutMs: 5000 });
  cleanups.push(() => fuse.close());
  await fuse.init();
  return { fuse, base };
}

const settled = <T>(p: Promise<T>): Promise<{ value?: T; error?: unknown }> =>
  p.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('GET_VRING_BASE with requests in flight', () => {
  it('cancels a waiting SETLKW (EINTR) and uses it before the base comes back', async () => {
    const { fuse } = await served();
    const entry = await fuse.lookup(FUSE_ROOT_ID, 'f');
    const { fh } = await fuse.open(entry.nodeid, fs.constants.O_RDWR);
    const whole = { type: F_WRLCK, start: 0n, end: 0x7fffffffffffffffn, pid: 1 };
    await fuse.setlk(entry.nodeid, fh, 1n, whole);
    const waiter = settled(fuse.setlkw(entry.nodeid, fh, 2n, { ...whole, pid: 2 }));
    await sleep(50);
    const queue = fuse.frontend.requestQueues[0];
    const bases = await fuse.frontend.stop();
    // Every request the ring handed over (INIT, LOOKUP, OPEN, SETLK, SETLKW) is counted and used.
    expect(bases[1]).toBe(queue.driver.availIndex);
    const outcome = await waiter;
    expect(outcome.error).toBeInstanceOf(FuseRequestError);
    expect((outcome.error as FuseRequestError).errno).toBe(Errno.EINTR);
    expect(queue.driver.usedIndex).toBe(queue.driver.availIndex);
  });

  it('waits for pool work (FSYNC behind a busy pool) before answering, and handles later messages after it', async () => {
    const { fuse, base } = await served();
    const entry = await fuse.lookup(FUSE_ROOT_ID, 'f');
    const { fh } = await fuse.open(entry.nodeid, fs.constants.O_RDWR);
    const unblock = blockPool(base);
    let unblocked = false;
    cleanups.push(async () => {
      if (!unblocked) await unblock();
    });
    const sync = settled(fuse.fsync(entry.nodeid, fh));
    await sleep(20);
    const order: string[] = [];
    const queue = fuse.frontend.requestQueues[0];
    const stop = fuse.frontend.call(FrontendRequest.GET_VRING_BASE, encode(VringState, { index: queue.index, num: 0 })).then((reply) => {
      order.push('GET_VRING_BASE');
      return decode(VringState, reply.payload).num;
    });
    // Sent while the drain is on: answered only after the base.
    const later = fuse.frontend.call(FrontendRequest.GET_FEATURES).then(() => order.push('GET_FEATURES'));
    await sleep(200);
    expect(order).toEqual([]);
    unblocked = true;
    await unblock();
    const next = await stop;
    await later;
    expect(order).toEqual(['GET_VRING_BASE', 'GET_FEATURES']);
    expect((await sync).error).toBeUndefined();
    expect(next).toBe(queue.driver.availIndex);
    expect(queue.driver.usedIndex).toBe(queue.driver.availIndex);
  });
});
