import * as fs from 'node:fs';
import { EFD_CLOEXEC, EFD_NONBLOCK, FdWatcher, close, eventfd } from '../sys';
import { GuestBuffer, RawDescriptor, SplitRingDriver, splitRingSizes } from './split-ring-driver';
import { GuestRam, RamBlock } from './guest-ram';

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
const drainBuf = Buffer.alloc(8);

interface Waiting {
  readable: GuestBuffer[];
  writable: GuestBuffer[];
  resolve: (len: number) => void;
  indirect: boolean;
}

/**
 * One virtqueue of the TypeScript guest: rings in guest RAM, a kick eventfd we
 * write and a call eventfd we watch. `submit()` resolves with the used length
 * when the device returns the chain.
 */
export class GuestQueue {
  readonly kickFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  readonly callFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  readonly desc: RamBlock;
  readonly avail: RamBlock;
  readonly used: RamBlock;
  driver: SplitRingDriver;
  private readonly inflight = new Map<number, { resolve: (len: number) => void; table?: RamBlock }>();
  private readonly backlog: Waiting[] = [];
  private watcher: FdWatcher | null = null;
  private kickPending = false;

  constructor(
    readonly index: number,
    readonly size: number,
    private readonly ram: GuestRam,
    private readonly eventIdx: boolean,
    /** Region to place the rings in (tests spread them over regions). */
    ringRegion = 0,
  ) {
    const sizes = splitRingSizes(size);
    this.desc = ram.alloc(sizes.desc, ringRegion);
    this.avail = ram.alloc(sizes.avail, ringRegion);
    this.used = ram.alloc(sizes.used, ringRegion);
    this.desc.view.fill(0);
    this.avail.view.fill(0);
    this.used.view.fill(0);
    this.driver = new SplitRingDriver(size, this.desc.view, this.avail.view, this.used.view, eventIdx);
  }

  get inflightCount(): number {
    return this.inflight.size + this.backlog.length;
  }

  /** Starts collecting completions from the call eventfd. */
  start(): void {
    this.watcher?.close();
    this.watcher = new FdWatcher(this.callFd, () => {
      try {
        fs.readSync(this.callFd, drainBuf, 0, 8, null);
      } catch {
        // EAGAIN: nothing to drain; collect anyway.
      }
      this.collect();
    });
  }

  stop(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  /** Queues a chain; with `indirect`, it takes one ring slot and an indirect table. */
  submit(readable: GuestBuffer[], writable: GuestBuffer[], indirect = false): Promise<number> {
    return new Promise((resolve) => {
      this.backlog.push({ readable, writable, resolve, indirect });
      this.fill();
    });
  }

  /** Publishes hand-written descriptors (tests of malformed chains); resolves with the used length. */
  submitRaw(descriptors: RawDescriptor[], head: number): Promise<number> {
    return new Promise((resolve) => {
      this.driver.addRaw(descriptors, head);
      this.inflight.set(head, { resolve });
      this.kickPending = true;
      queueMicrotask(() => this.kick());
    });
  }

  private fill(): void {
    while (this.backlog.length > 0) {
      const w = this.backlog[0];
      let table: RamBlock | undefined;
      let head: number | null;
      if (w.indirect) {
        table = this.ram.alloc(16 * (w.readable.length + w.writable.length));
        head = this.driver.add(w.readable, w.writable, table);
        if (head === null) this.ram.free(table);
      } else {
        head = this.driver.add(w.readable, w.writable);
      }
      if (head === null) break; // ring full: resumes when chains come back
      this.backlog.shift();
      this.inflight.set(head, { resolve: w.resolve, table });
      this.kickPending = true;
    }
    // One kick for everything added in this turn of the event loop.
    if (this.kickPending) queueMicrotask(() => this.kick());
  }

  private kick(): void {
    if (!this.kickPending) return;
    this.kickPending = false;
    if (this.driver.needsKick()) fs.writeSync(this.kickFd, ONE, 0, 8, null);
  }

  /** Collects every used chain, then re-arms the interrupt and looks once more. */
  collect(): void {
    for (;;) {
      for (let u = this.driver.popUsed(); u !== null; u = this.driver.popUsed()) {
        const entry = this.inflight.get(u.head);
        if (!entry) continue;
        this.inflight.delete(u.head);
        if (entry.table) this.ram.free(entry.table);
        entry.resolve(u.len);
      }
      this.driver.armInterrupt();
      if (this.driver.usedIndex === Atomics.load(new Uint16Array(this.used.view.buffer, this.used.view.byteOffset, 2), 1)) break;
    }
    if (this.backlog.length > 0) this.fill();
  }

  close(): void {
    this.stop();
    close(this.kickFd);
    close(this.callFd);
  }
}
