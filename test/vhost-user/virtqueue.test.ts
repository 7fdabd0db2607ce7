import { afterEach, describe, expect, it } from 'vitest';
import { SplitRingDriver, splitRingSizes } from '../../src/guest/split-ring-driver';
import { close, dup } from '../../src/sys';
import {
  DescriptorChain,
  SplitVirtqueue,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtqueueError,
} from '../../src/vhost-user/virtqueue';
import { makeGuestMemory } from './guest-ram';

const UVA = 0x7f0000000000;
const SIZE = 8;
// Layout inside region 0 (gpa 0): rings at 0x1000.., data from 0x10000.
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanup.splice(0)) f();
});

function setup(opts: { eventIdx?: boolean; indirect?: boolean; regions?: { gpa: number; size: number }[] } = {}) {
  const regions = opts.regions ?? [{ gpa: 0, size: 1 << 20 }];
  const { memory, fds } = makeGuestMemory(regions.map((r) => ({ ...r, uva: r.gpa + UVA })));
  cleanup.push(() => {
    memory.clear();
    fds.forEach((fd) => close(fd));
  });
  const sizes = splitRingSizes(SIZE);
  const view = (gpa: number, len: number) => memory.slice(gpa, len)!;
  const driver = new SplitRingDriver(SIZE, view(DESC, sizes.desc), view(AVAIL, sizes.avail), view(USED, sizes.used), !!opts.eventIdx);
  const device = new SplitVirtqueue(memory, SIZE, !!opts.eventIdx, opts.indirect ?? true);
  device.setAddresses(UVA + DESC, UVA + AVAIL, UVA + USED);
  return { memory, driver, device, view };
}

function asChain(c: ReturnType<SplitVirtqueue['pop']>): DescriptorChain {
  if (c === null || 'error' in c) throw new Error(`expected a chain, got ${JSON.stringify(c)}`);
  return c;
}

describe('SplitVirtqueue', () => {
  it('pops a chain as views of guest memory and returns it used', () => {
    const { driver, device, view } = setup();
    view(0x10000, 5).write('hello');
    const head = driver.add(
      [
        { addr: 0x10000, len: 3 },
        { addr: 0x10003, len: 2 },
      ],
      [{ addr: 0x20000, len: 16 }],
    )!;
    const chain = asChain(device.pop());
    expect(chain.head).toBe(head);
    expect(Buffer.concat(chain.readable).toString()).toBe('hello');
    expect(chain.readableBytes).toBe(5);
    expect(chain.writableBytes).toBe(16);
    chain.writable[0].write('reply');
    expect(view(0x20000, 5).toString()).toBe('reply');
    expect(device.pop()).toBeNull();
    device.pushUsed(chain.head, 5);
    expect(driver.popUsed()).toEqual({ head, len: 5 });
    expect(driver.freeCount).toBe(SIZE);
  });

  it('follows an indirect descriptor table', () => {
    const { driver, device, view } = setup();
    view(0x10000, 4).write('abcd');
    driver.add(
      [{ addr: 0x10000, len: 4 }],
      [
        { addr: 0x20000, len: 8 },
        { addr: 0x21000, len: 8 },
      ],
      {
        addr: 0x30000,
        view: view(0x30000, 64),
      },
    );
    const chain = asChain(device.pop());
    expect(Buffer.concat(chain.readable).toString()).toBe('abcd');
    expect(chain.writable.length).toBe(2);
  });

  it('refuses indirect descriptors when the feature was not negotiated', () => {
    const { memory, driver, view } = setup();
    const device = new SplitVirtqueue(memory, SIZE, false, false);
    device.setAddresses(UVA + DESC, UVA + AVAIL, UVA + USED);
    driver.add([{ addr: 0x10000, len: 4 }], [], { addr: 0x30000, view: view(0x30000, 16) });
    expect(device.pop()).toMatchObject({ error: expect.stringContaining('VIRTIO_RING_F_INDIRECT_DESC') });
  });

  it('keeps working across the 16-bit index wrap', () => {
    const { driver, device } = setup();
    driver.setIndices(65534, 65534);
    device.setBase(65534);
    for (let round = 0; round < 6; round++) {
      const head = driver.add([{ addr: 0x10000, len: 1 }], [{ addr: 0x20000, len: 1 }])!;
      const chain = asChain(device.pop());
      expect(chain.head).toBe(head);
      device.pushUsed(chain.head, 1);
      expect(driver.popUsed()).toEqual({ head, len: 1 });
    }
    expect(device.lastAvailIdx).toBe(4);
    expect(device.usedIdx).toBe(4);
  });

  it('splits a buffer that crosses from one memory region into the next', () => {
    const { driver, device } = setup({
      regions: [
        { gpa: 0, size: 1 << 20 },
        { gpa: 1 << 20, size: 1 << 20 },
      ],
    });
    driver.add([{ addr: (1 << 20) - 10, len: 20 }], []);
    const chain = asChain(device.pop());
    expect(chain.readable.map((b) => b.length)).toEqual([10, 10]);
  });

  it('returns malformed chains as broken instead of failing', () => {
    const { driver, device } = setup();
    // A loop: 0 -> 1 -> 0.
    driver.addRaw(
      [
        { index: 0, addr: 0x10000, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 1 },
        { index: 1, addr: 0x10000, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 0 },
      ],
      0,
    );
    expect(device.pop()).toMatchObject({ head: 0, error: expect.stringContaining('loops') });
    // Outside guest RAM.
    driver.addRaw([{ index: 2, addr: 0x7fff0000, len: 16, flags: 0, next: 0 }], 2);
    expect(device.pop()).toMatchObject({ head: 2, error: expect.stringContaining('outside guest memory') });
    // Length running past the end of RAM.
    driver.addRaw([{ index: 3, addr: (1 << 20) - 4, len: 16, flags: 0, next: 0 }], 3);
    expect(device.pop()).toMatchObject({ head: 3, error: expect.stringContaining('outside') });
    // Readable after writable.
    driver.addRaw(
      [
        { index: 4, addr: 0x10000, len: 1, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 5 },
        { index: 5, addr: 0x10000, len: 1, flags: 0, next: 0 },
      ],
      4,
    );
    expect(device.pop()).toMatchObject({ head: 4, error: expect.stringContaining('after a writable') });
    // next out of range, head out of range, indirect with a bad length.
    driver.addRaw([{ index: 6, addr: 0x10000, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 99 }], 6);
    expect(device.pop()).toMatchObject({ error: expect.stringContaining('out of range') });
    driver.addRaw([], 1234);
    expect(device.pop()).toMatchObject({ head: 1234, error: expect.stringContaining('out of range') });
    driver.addRaw([{ index: 7, addr: 0x30000, len: 15, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }], 7);
    expect(device.pop()).toMatchObject({ error: expect.stringContaining('indirect table') });
  });

  it('detects a driver that claims more available entries than the ring holds', () => {
    const { device, view } = setup();
    view(AVAIL + 2, 2).writeUInt16LE(SIZE + 1);
    expect(() => device.pop()).toThrow(VirtqueueError);
  });

  it('suppresses signals and kicks as EVENT_IDX asks', () => {
    const { driver, device } = setup({ eventIdx: true });
    // First completion always signals; the driver then asks to hear at used index 2.
    const run = () => {
      driver.add([{ addr: 0x10000, len: 1 }], []);
      const c = asChain(device.pop());
      device.pushUsed(c.head, 0);
    };
    run();
    expect(device.needsSignal()).toBe(true);
    driver.popUsed();
    (driver as unknown as { avail: Buffer }).avail.writeUInt16LE(2, 4 + 2 * SIZE); // used_event = 2
    run(); // used idx 2: used_event (2) not yet passed
    expect(device.needsSignal()).toBe(false);
    run(); // used idx 3: crossed used_event 2
    expect(device.needsSignal()).toBe(true);
    driver.popUsed();
    driver.popUsed();

    // Kick suppression: after armKick the device wants a kick for the next chain only.
    expect(device.armKick()).toBe(false);
    driver.add([{ addr: 0x10000, len: 1 }], []);
    expect(driver.needsKick()).toBe(true);
    driver.add([{ addr: 0x10000, len: 1 }], []);
    expect(driver.needsKick()).toBe(false);
  });

  it('honours VIRTQ_AVAIL_F_NO_INTERRUPT without EVENT_IDX', () => {
    const { driver, device } = setup();
    driver.add([{ addr: 0x10000, len: 1 }], []);
    device.pushUsed(asChain(device.pop()).head, 0);
    expect(device.needsSignal()).toBe(true);
    driver.suppressInterrupts();
    expect(device.needsSignal()).toBe(false);
  });
});

describe('GuestMemory', () => {
  it('rejects overlapping regions and addresses outside every region', () => {
    const { memory, fds } = makeGuestMemory([{ gpa: 0, size: 1 << 16 }]);
    const extra = makeGuestMemory([{ gpa: 1 << 30, size: 4096 }]);
    extra.memory.clear();
    cleanup.push(() => {
      memory.clear();
      [...fds, ...extra.fds].forEach((fd) => close(fd));
    });
    const overlapping = { guestPhysAddr: 0x8000n, memorySize: 0x10000n, userspaceAddr: 0n, mmapOffset: 0n };
    expect(() => memory.addRegion(overlapping, dup(extra.fds[0]))).toThrow(/overlaps/);
    expect(memory.views(0xffff, 2, [])).toBe(false);
    expect(memory.slice(0x10000, 1)).toBeNull();
  });

  it('maps a region larger than a Node Buffer (5 GiB) in chunks and translates across them', () => {
    const size = 5 * 1024 * 1024 * 1024; // sparse memfd: nothing is committed
    const { memory, fds } = makeGuestMemory([{ gpa: 0x100000000, size }]);
    cleanup.push(() => {
      memory.clear();
      fds.forEach((fd) => close(fd));
    });
    const at = 0x100000000 + 4 * 1024 * 1024 * 1024 - 8; // straddles the 4 GiB chunk boundary
    const views: Buffer[] = [];
    expect(memory.views(at, 16, views)).toBe(true);
    expect(views.map((v) => v.length)).toEqual([8, 8]);
    views[0].write('straddle');
    views[1].write('boundary');
    const far = memory.slice(0x100000000 + size - 4096, 4096)!;
    far.write('end of a 5 GiB region');
    expect(memory.slice(0x100000000 + size - 4096, 21)!.toString()).toBe('end of a 5 GiB region');
    expect(memory.views(0x100000000 + size - 4, 8, [])).toBe(false);
  });
});
