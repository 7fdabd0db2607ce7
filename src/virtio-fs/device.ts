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
  handle(readable: Buffer[], writable: Buffer[]): number | Promise<number>;
  reset(): void;
}

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
 */
export class VirtioFsDevice implements VhostUserDevice {
  readonly maxQueues = 1 + MAX_REQUEST_QUEUES;
  readonly deviceFeatures = 0n;
  private pending = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly server: FuseRequestHandler,
    private readonly log: Logger,
    private readonly extensions: VirtioFsExtensions | null = null,
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
        const result = this.server.handle(chain.readable, chain.writable);
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
    const done = (len: number): void => {
      try {
        // A ring stopped or reset meanwhile no longer belongs to this request.
        if (vring.queue === queue) {
          queue.pushUsed(head, len);
          this.signal(vring);
        }
      } finally {
        if (--this.pending === 0) for (const waiter of this.idleWaiters.splice(0)) waiter();
      }
    };
    result.then(done, (err: Error) => {
      this.log('error', `queue ${vring.index}: request failed: ${err.message}`);
      done(0);
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
