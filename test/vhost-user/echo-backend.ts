import { UnixListener } from '../../src/sys';
import { VhostUserBackend } from '../../src/vhost-user/backend';
import { VhostUserDevice } from '../../src/vhost-user/device';
import { Vring } from '../../src/vhost-user/vring';

/** A device that copies each chain's readable bytes into its writable ones; broken chains go back with length 0. */
export class EchoDevice implements VhostUserDevice {
  readonly maxQueues = 3;
  readonly deviceFeatures = 0n;
  readonly deviceProtocolFeatures = 0n;
  /** How many times the back-end reset the device. */
  resets = 0;
  constructor(private readonly log: (msg: string) => void = () => undefined) {}
  processQueue(vring: Vring): void {
    const q = vring.queue!;
    do {
      for (let c = q.pop(); c; c = q.pop()) {
        if ('error' in c) {
          this.log(`queue ${vring.index}: broken chain at ${c.head}: ${c.error}`);
          q.pushUsed(c.head, 0);
          continue;
        }
        const data = Buffer.concat(c.readable);
        let written = 0;
        for (const w of c.writable) written += data.copy(w, 0, written);
        q.pushUsed(c.head, written);
      }
    } while (q.armKick());
    const err = vring.signalIfNeeded();
    if (err) this.log(`queue ${vring.index}: cannot signal: ${err.message}`);
  }
  shmemRegions(): bigint[] {
    return [];
  }
  setBackendChannel(): void {}
  drainQueue(): null {
    return null;
  }
  inflight(): number {
    return 0;
  }
  whenIdle(callback: () => void): void {
    callback();
  }
  reset(): void {
    this.resets++;
  }
}

/** An echo back-end listening on `socketPath` for one front-end at a time. */
export function listenEcho(
  socketPath: string,
  log: (line: string) => void,
  onBackend: (backend: VhostUserBackend | null, err?: Error) => void = () => undefined,
): UnixListener {
  const listener = UnixListener.listen(socketPath);
  listener.watch(() => {
    const s = listener.accept();
    if (!s) return;
    const device = new EchoDevice((m) => log(`device: ${m}`));
    const backend = new VhostUserBackend(
      s,
      device,
      (level, msg) => log(`${level}: ${msg}`),
      (err) => onBackend(null, err),
    );
    backend.start();
    onBackend(backend);
  });
  return listener;
}
