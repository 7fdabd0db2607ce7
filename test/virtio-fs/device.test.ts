/**
 * The virtio-fs device with requests that finish later: used elements in the
 * order requests finish, one call signal per turn of the event loop for all
 * of them, nothing published into a ring that was stopped meanwhile, and the
 * queue drain GET_VRING_BASE relies on (cancel the waits, wait for the rest,
 * give up after a bound), and the device-wide idle wait of memory-table changes.
 */
import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { SplitRingDriver, splitRingSizes } from '../../src/guest/split-ring-driver';
import { close, eventfd } from '../../src/sys';
import { type FuseRequestHandler, VirtioFsDevice } from '../../src/virtio-fs/device';
import { SplitVirtqueue } from '../../src/vhost-user/virtqueue';
import { Vring } from '../../src/vhost-user/vring';
import { makeGuestMemory } from '../vhost-user/guest-ram';

const UVA = 0x7f0000000000;
const SIZE = 8;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;
const EFD_NONBLOCK = 0o4000;

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanup.splice(0)) f();
});

/** A FUSE server whose every request finishes when the test says so (by index, with a length). */
class DeferredServer implements FuseRequestHandler {
  readonly finish: ((len: number) => void)[] = [];
  /** Queues whose waits the device cancelled. */
  readonly cancelled: number[] = [];
  handle(): Promise<number> {
    return new Promise((resolve) => this.finish.push(resolve));
  }
  cancelWaits(queue: number): void {
    this.cancelled.push(queue);
  }
  reset(): void {}
}

function setup(drainTimeoutMs?: number) {
  const { memory, fds } = makeGuestMemory([{ gpa: 0, size: 1 << 20, uva: UVA }]);
  const callFd = eventfd(0, EFD_NONBLOCK);
  cleanup.push(() => {
    memory.clear();
    fds.forEach((fd) => close(fd));
  });
  const sizes = splitRingSizes(SIZE);
  const view = (gpa: number, len: number) => memory.slice(gpa, len)!;
  const driver = new SplitRingDriver(SIZE, view(DESC, sizes.desc), view(AVAIL, sizes.avail), view(USED, sizes.used), false);
  const queue = new SplitVirtqueue(memory, SIZE, false, false);
  queue.setAddresses(UVA + DESC, UVA + AVAIL, UVA + USED);
  const vring = new Vring(1);
  vring.replaceFd('callFd', callFd);
  vring.queue = queue;
  cleanup.push(() => vring.reset());
  const server = new DeferredServer();
  const logged: string[] = [];
  const device = new VirtioFsDevice(server, (level, msg) => logged.push(`${level}: ${msg}`), null, drainTimeoutMs);
  /** Signals the driver got since the last call (the eventfd's counter). */
  const signals = (): number => {
    const b = Buffer.alloc(8);
    try {
      fs.readSync(callFd, b, 0, 8, null);
    } catch {
      return 0;
    }
    return Number(b.readBigUInt64LE(0));
  };
  const submit = (i: number) => driver.add([{ addr: 0x10000 + i * 0x100, len: 64 }], [{ addr: 0x20000 + i * 0x100, len: 64 }])!;
  return { driver, queue, vring, server, device, signals, submit, logged };
}

const turn = () => new Promise((r) => setImmediate(r));

describe('VirtioFsDevice with requests that finish later', () => {
  it('returns chains in the order they finish, with one signal for all that finished in one turn', async () => {
    const { driver, vring, server, device, signals, submit } = setup();
    const heads = [0, 1, 2].map(submit);
    device.processQueue(vring);
    expect(server.finish.length).toBe(3);
    expect(device.inflight()).toBe(3);
    expect(signals()).toBe(0);
    // The last first, then the two others in the same turn.
    server.finish[2](30);
    await turn();
    await turn();
    expect(driver.popUsed()).toEqual({ head: heads[2], len: 30 });
    expect(signals()).toBe(1);
    server.finish[0](10);
    server.finish[1](20);
    await turn();
    await turn();
    expect([driver.popUsed(), driver.popUsed()]).toEqual([
      { head: heads[0], len: 10 },
      { head: heads[1], len: 20 },
    ]);
    expect(signals()).toBe(1);
    expect(device.inflight()).toBe(0);
  });

  it('publishes nothing into a ring stopped meanwhile, and lets device waiters go once the work is done', async () => {
    const { driver, vring, server, device, signals, submit } = setup();
    submit(0);
    device.processQueue(vring);
    let deviceIdle = false;
    device.whenIdle(() => (deviceIdle = true));
    // The ring is reset (a disconnect) while the request is still in flight.
    vring.stop();
    await turn();
    expect(deviceIdle).toBe(false);
    server.finish[0](16);
    await turn();
    await turn();
    expect(deviceIdle).toBe(true);
    expect(driver.popUsed()).toBeNull();
    expect(signals()).toBe(0);
  });
});

describe('VirtioFsDevice draining a queue (GET_VRING_BASE)', () => {
  it('cancels the waits of that queue and settles once its requests are used and signalled', async () => {
    const { driver, vring, server, device, signals, submit } = setup();
    const heads = [0, 1].map(submit);
    device.processQueue(vring);
    let drained = false;
    const drain = device.drainQueue(vring)!.then(() => (drained = true));
    expect(server.cancelled).toEqual([vring.index]);
    server.finish[1](8);
    await turn();
    await turn();
    expect(drained).toBe(false);
    server.finish[0](4);
    await drain;
    // Both used and signalled by the time the base may be taken, the ring still the queue's.
    expect([driver.popUsed(), driver.popUsed()]).toEqual([
      { head: heads[1], len: 8 },
      { head: heads[0], len: 4 },
    ]);
    expect(signals()).toBeGreaterThanOrEqual(1);
    expect(device.inflight()).toBe(0);
  });

  it('is nothing to wait for on an idle queue', () => {
    const { vring, device, server } = setup();
    expect(device.drainQueue(vring)).toBeNull();
    expect(server.cancelled).toEqual([vring.index]);
  });

  it('gives up after its timeout with a warning; what finishes later is not published', async () => {
    const { driver, vring, server, device, submit, logged } = setup(30);
    submit(0);
    device.processQueue(vring);
    await device.drainQueue(vring);
    expect(logged.join('\n')).toMatch(/still running after 30 ms/);
    vring.stop();
    server.finish[0](16);
    await turn();
    await turn();
    expect(driver.popUsed()).toBeNull();
    expect(device.inflight()).toBe(0);
  });
});
