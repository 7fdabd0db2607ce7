import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { VhostUserFrontend } from '../../src/guest/frontend';
import { UnixListener } from '../../src/sys';
import { VhostUserBackend } from '../../src/vhost-user/backend';
import { VhostUserDevice } from '../../src/vhost-user/device';
import { FrontendRequest, ProtocolFeature, VHOST_USER_NEED_REPLY_MASK } from '../../src/vhost-user/protocol';
import { Vring } from '../../src/vhost-user/vring';

/** A device that copies each chain's readable bytes into its writable ones. */
class EchoDevice implements VhostUserDevice {
  readonly maxQueues = 3;
  readonly deviceFeatures = 0n;
  readonly deviceProtocolFeatures = 0n;
  resets = 0;
  processQueue(vring: Vring): void {
    const q = vring.queue!;
    do {
      for (let c = q.pop(); c; c = q.pop()) {
        if ('error' in c) {
          q.pushUsed(c.head, 0);
          continue;
        }
        const data = Buffer.concat(c.readable);
        let written = 0;
        for (const w of c.writable) written += data.copy(w, 0, written);
        q.pushUsed(c.head, written);
      }
    } while (q.armKick());
    vring.signalIfNeeded();
  }
  shmemRegions(): bigint[] {
    return [];
  }
  setBackendChannel(): void {}
  inflight(): number {
    return 0;
  }
  reset(): void {
    this.resets++;
  }
}

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).reverse().forEach((f) => f()));

async function start(options: ConstructorParameters<typeof VhostUserFrontend>[0] = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vu-backend-'));
  const sock = path.join(dir, 'sock');
  const listener = UnixListener.listen(sock);
  const device = new EchoDevice();
  const logs: string[] = [];
  let disconnected: { err?: Error } | null = null;
  let backend: VhostUserBackend | null = null;
  listener.watch(() => {
    const s = listener.accept();
    if (!s) return;
    backend = new VhostUserBackend(s, device, (level, msg) => logs.push(`${level}: ${msg}`), (err) => (disconnected = { err }));
    backend.start();
  });
  const frontend = await VhostUserFrontend.connect(sock, { requestQueues: 2, ramRegions: [1 << 20, 1 << 20], ...options });
  cleanups.push(() => {
    frontend.close();
    (backend as VhostUserBackend | null)?.close();
    listener.close(true);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { frontend, device, logs, disconnected: () => disconnected };
}

async function echo(frontend: VhostUserFrontend, queue: number, text: string, indirect = false): Promise<string> {
  const req = frontend.ram.alloc(text.length);
  req.view.write(text);
  const rep = frontend.ram.alloc(64, 1);
  const len = await frontend.queues[queue].submit([{ addr: req.addr, len: text.length }], [{ addr: rep.addr, len: 64 }], indirect);
  return rep.view.subarray(0, len).toString();
}

const until = async (cond: () => unknown) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
};

describe('VhostUserBackend with the TypeScript front-end', () => {
  it('negotiates features and serves every queue, direct and indirect', async () => {
    const { frontend } = await start();
    expect(frontend.maxQueues).toBe(3);
    expect(frontend.has(ProtocolFeature.REPLY_ACK)).toBe(true);
    expect(frontend.has(ProtocolFeature.CONFIGURE_MEM_SLOTS)).toBe(true);
    expect(await echo(frontend, 1, 'first queue')).toBe('first queue');
    expect(await echo(frontend, 2, 'second queue', true)).toBe('second queue');
    const many = await Promise.all(Array.from({ length: 300 }, (_, i) => echo(frontend, 1 + (i % 2), `req ${i}`)));
    expect(many[299]).toBe('req 299');
  });

  it('accepts memory announced region by region (ADD_MEM_REG)', async () => {
    const { frontend } = await start({ addMemRegions: true });
    expect(await echo(frontend, 1, 'added regions')).toBe('added regions');
  });

  it('stops rings with GET_VRING_BASE and resumes them after re-attach', async () => {
    const { frontend } = await start();
    await echo(frontend, 1, 'a');
    await echo(frontend, 1, 'b');
    const bases = await frontend.stop();
    expect(bases).toEqual([0, 2, 0]);
  });

  it('answers an unknown request with a failure status and stays connected', async () => {
    const { frontend, logs } = await start();
    await expect(frontend.send(99 as FrontendRequest, Buffer.alloc(0))).rejects.toThrow(/status 1/);
    expect(logs.join('\n')).toMatch(/unsupported request 99/);
    expect(await echo(frontend, 1, 'still here')).toBe('still here');
  });

  it('disconnects cleanly on a malformed message', async () => {
    const { frontend, disconnected, logs } = await start();
    frontend.raw(FrontendRequest.SET_VRING_NUM, VHOST_USER_NEED_REPLY_MASK, Buffer.alloc(3));
    await until(disconnected);
    expect(disconnected()?.err?.message).toMatch(/need 8/);
    expect(logs.join('\n')).toMatch(/SET_VRING_NUM failed/);
  });

  it('returns a chain pointing outside guest RAM unused and keeps serving', async () => {
    const { frontend } = await start();
    const free = frontend.queues[1].driver.freeCount;
    const len = await frontend.queues[1].submitRaw([{ index: 5, addr: 0x7fffffff0000, len: 64, flags: 0, next: 0 }], 5);
    expect(len).toBe(0);
    expect(frontend.queues[1].driver.freeCount).toBe(free);
    expect(await echo(frontend, 1, 'after bad chain')).toBe('after bad chain');
  });
});
