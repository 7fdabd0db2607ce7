import { BackendChannel } from '../vhost-user/backend-channel';
import { Logger } from '../vhost-user/backend';
import { VhostUserDevice } from '../vhost-user/device';
import { SplitVirtqueue } from '../vhost-user/virtqueue';
import { Vring } from '../vhost-user/vring';

/** virtio-fs queue layout (virtio 1.2, 5.11.2): queue 0 is hiprio, 1..N are request queues. */
export const HIPRIO_QUEUE = 0;
/** Request queues we can serve; QEMU's num-request-queues must not exceed this. */
export const MAX_REQUEST_QUEUES = 16;

/** Handles one FUSE request from a chain: returns the reply length, or a promise of it. */
export interface FuseRequestHandler {
  handle(readable: Buffer[], writable: Buffer[], queue: number): number | Promise<number>;
  /** Requests of `queue` that wait (SETLKW) give up now (the queue is being stopped). */
  cancelWaits(queue: number): void;
  reset(): void;
}

/**
 * How long GET_VRING_BASE waits for a stopping queue's requests (pool I/O on
 * a slow host file system) before it answers anyway; what finishes later is
 * then never published.
 */
export const QUEUE_DRAIN_TIMEOUT_MS = 10_000;

/** Extra capabilities the device offers (the DAX window hooks in here). */
export interface VirtioFsExtensions {
  protocolFeatures: bigint;
  shmemRegions(): bigint[];
  setBackendChannel(channel: BackendChannel | null): void;
  reset(): void;
}

/**
 * The virtio-fs device: every queue feeds its chains to the FUSE server and
 * returns them used, with one call signal per batch as EVENT_IDX allows.
 * Requests that finish later (thread-pool I/O, waits) are returned in the
 * order they finish (split rings allow any order); their used elements are
 * published as each completes, and the queue's signal for all that completed
 * in one turn of the event loop is sent once, after them.
 */
export class VirtioFsDevice implements VhostUserDevice {
  readonly maxQueues = 1 + MAX_REQUEST_QUEUES;
  readonly deviceFeatures = 0n;
  private pending = 0;
  private idleWaiters: (() => void)[] = [];
  /** Requests in flight per queue index, and who waits for a queue to drain. */
  private readonly pendingOn = new Map<number, number>();
  private readonly queueWaiters = new Map<number, (() => void)[]>();
  /** Queues with completions published but not yet signalled. */
  private readonly unsignalled = new Set<Vring>();
  private flushScheduled = false;

  constructor(
    private readonly server: FuseRequestHandler,
    private readonly log: Logger,
    private readonly extensions: VirtioFsExtensions | null = null,
    private readonly drainTimeoutMs = QUEUE_DRAIN_TIMEOUT_MS,
  ) {}

  get deviceProtocolFeatures(): bigint {
    return this.extensions?.protocolFeatures ?? 0n;
  }

  processQueue(vring: Vring): void {
    const queue = vring.queue!;
    let used = 0;
    do {
      for (let chain = queue.pop(); chain !== null; chain = queue.pop()) {
        if ('error' in chain) {
          this.log('error', `queue ${vring.index}: bad descriptor chain at head ${chain.head}: ${chain.error}`);
          queue.pushUsed(chain.head, 0);
          used++;
          continue;
        }
        const result = this.server.handle(chain.readable, chain.writable, vring.index);
        if (typeof result === 'number') {
          queue.pushUsed(chain.head, result);
          used++;
        } else {
          this.completeLater(vring, queue, chain.head, result);
        }
      }
    } while (queue.armKick());
    if (used > 0) this.signal(vring);
  }

  private signal(vring: Vring): void {
    const err = vring.signalIfNeeded();
    if (err) this.log('error', `queue ${vring.index}: cannot signal the driver (${err.message}); no more signals on this queue`);
  }

  private completeLater(vring: Vring, queue: SplitVirtqueue, head: number, result: Promise<number>): void {
    this.pending++;
    const index = vring.index;
    this.pendingOn.set(index, (this.pendingOn.get(index) ?? 0) + 1);
    const done = (len: number): void => {
      try {
        // A ring stopped or reset meanwhile no longer belongs to this request.
        if (vring.queue === queue) {
          queue.pushUsed(head, len);
          this.signalSoon(vring);
        }
      } finally {
        const left = this.pendingOn.get(index)! - 1;
        if (left === 0) {
          this.pendingOn.delete(index);
          for (const waiter of this.queueWaiters.get(index)?.splice(0) ?? []) waiter();
          this.queueWaiters.delete(index);
        } else this.pendingOn.set(index, left);
        if (--this.pending === 0) for (const waiter of this.idleWaiters.splice(0)) waiter();
      }
    };
    result.then(done, (err: Error) => {
      this.log('error', `queue ${vring.index}: request failed: ${err.message}`);
      done(0);
    });
  }

  /**
   * One signal for every completion of this turn of the event loop: pool
   * completions arrive one callback each, and the driver needs to hear of
   * them once (EVENT_IDX then decides whether it wants to at all).
   */
  private signalSoon(vring: Vring): void {
    this.unsignalled.add(vring);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      for (const v of this.unsignalled) if (v.queue) this.signal(v);
      this.unsignalled.clear();
    });
  }

  /**
   * GET_VRING_BASE: the ring takes no more chains (the back-end stopped
   * kicking it), its waiting requests are cancelled, and the promise settles
   * once every request it had in flight is published and signalled, so the
   * base the front-end gets back leaves nothing behind. Null when nothing is
   * in flight. After `drainTimeoutMs` it settles anyway (a request stuck in
   * the host kernel must not stop the VM for ever), with a warning.
   */
  drainQueue(vring: Vring): Promise<void> | null {
    const index = vring.index;
    this.server.cancelWaits(index);
    if (!this.pendingOn.has(index)) return null;
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | null = null;
      const drained = (): void => {
        if (timer === null) return;
        clearTimeout(timer);
        timer = null;
        // What completed during the drain is signalled now, while the ring is still ours.
        if (this.unsignalled.delete(vring) && vring.queue) this.signal(vring);
        resolve();
      };
      timer = setTimeout(() => {
        this.log(
          'warn',
          `queue ${index}: ${this.pendingOn.get(index) ?? 0} request(s) still running after ${this.drainTimeoutMs} ms; stopping the queue without them (their replies are lost)`,
        );
        drained();
      }, this.drainTimeoutMs);
      const list = this.queueWaiters.get(index) ?? [];
      list.push(drained);
      this.queueWaiters.set(index, list);
    });
  }

  inflight(): number {
    return this.pending;
  }

  whenIdle(callback: () => void): void {
    if (this.pending === 0) callback();
    else this.idleWaiters.push(callback);
  }

  shmemRegions(): bigint[] {
    return this.extensions?.shmemRegions() ?? [];
  }

  setBackendChannel(channel: BackendChannel | null): void {
    this.extensions?.setBackendChannel(channel);
  }

  reset(): void {
    this.server.reset();
    this.extensions?.reset();
  }
}
