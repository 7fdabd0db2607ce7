import { BackendChannel } from './backend-channel';
import { Vring } from './vring';

/**
 * What a vhost-user back-end drives: the device behind the queues (as in
 * rust-vmm's vhost-user-backend, the transport knows nothing of the device).
 */
export interface VhostUserDevice {
  /** Most queues the device can serve (GET_QUEUE_NUM). */
  readonly maxQueues: number;
  /** Device-specific virtio feature bits offered on top of the transport's. */
  readonly deviceFeatures: bigint;
  /** Extra protocol features the device wants offered (e.g. SHMEM). */
  readonly deviceProtocolFeatures: bigint;
  /** A started, enabled ring has chains waiting (after a kick). */
  processQueue(vring: Vring): void;
  /** Sizes of the device's shared memory regions, index = shmid (GET_SHMEM_CONFIG). */
  shmemRegions(): bigint[];
  /** The front-end gave (or took away, with null) the back-end channel. */
  setBackendChannel(channel: BackendChannel | null): void;
  /**
   * GET_VRING_BASE: the ring takes no more chains; settles once the requests
   * it has in flight are done (null: none are), so that the base returned
   * leaves none behind.
   */
  drainQueue(vring: Vring): Promise<void> | null;
  /** Requests the device is still working on (memory must stay mapped until 0). */
  inflight(): number;
  /** Runs `callback` once no request is in flight (at once if none is). */
  whenIdle(callback: () => void): void;
  /** Device reset, front-end disconnect: forget all state. */
  reset(): void;
}
