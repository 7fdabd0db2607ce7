import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { VhostUserFrontend } from '../../src/guest/frontend';
import { UnixListener } from '../../src/sys';
import { VhostUserBackend } from '../../src/vhost-user/backend';
import { FrontendRequest, ProtocolFeature, VHOST_USER_NEED_REPLY_MASK } from '../../src/vhost-user/protocol';
import { MFD_CLOEXEC, close, ftruncate, memfdCreate } from '../../src/sys';
import { MemoryRegionDesc, MemoryTableHeader, SingleMemoryRegion, U64, encode } from '../../src/vhost-user/messages';
import { VIRTQ_DESC_F_INDIRECT } from '../../src/vhost-user/virtqueue';
import { EchoDevice } from './echo-backend';

const cleanups: (() => void)[] = [];
afterEach(() =>
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f()),
);

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
    backend = new VhostUserBackend(
      s,
      device,
      (level, msg) => logs.push(`${level}: ${msg}`),
      (err) => (disconnected = { err }),
    );
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

  it('survives a call fd it cannot write and keeps serving', async () => {
    const { frontend, disconnected } = await start();
    const readOnly = fs.openSync('/etc/hostname', 'r');
    await frontend.send(FrontendRequest.SET_VRING_CALL, encode(U64, { value: 2n }), [readOnly]);
    fs.closeSync(readOnly);
    const b = frontend.ram.alloc(16);
    // No signal can come back on queue 2: look at its used ring instead.
    void frontend.queues[2].submit([{ addr: b.addr, len: 16 }], []);
    const usedIdx = () => frontend.queues[2].used.view.readUInt16LE(2);
    await until(() => usedIdx() === 1);
    expect(usedIdx()).toBe(1); // served, though the driver could not be told
    expect(disconnected()).toBeNull();
    expect(await echo(frontend, 1, 'queue 1 unaffected')).toBe('queue 1 unaffected');
  });

  it('refuses a memory table it cannot use without unmapping the one in use', async () => {
    const { frontend, disconnected, logs } = await start();
    const table = Buffer.alloc(MemoryTableHeader.size + MemoryRegionDesc.size);
    MemoryTableHeader.encode({ nregions: 1 }, table, 0);
    MemoryRegionDesc.encode({ guestPhysAddr: 0n, memorySize: 0n, userspaceAddr: 0n, mmapOffset: 0n }, table, MemoryTableHeader.size);
    await expect(frontend.send(FrontendRequest.SET_MEM_TABLE, table, [frontend.ram.regions[0].fd])).rejects.toThrow(/status 1/);
    expect(logs.join('\n')).toMatch(/unusable region/);
    // Refused with REPLY_ACK: the connection and the old table stay.
    expect(disconnected()).toBeNull();
    expect(await echo(frontend, 1, 'old table')).toBe('old table');
  });

  it('refuses a region whose fd is smaller than the region', async () => {
    const { frontend } = await start();
    const fd = memfdCreate('small', MFD_CLOEXEC);
    ftruncate(fd, 4096);
    const region = encode(SingleMemoryRegion, {
      guestPhysAddr: 0x300000000n,
      memorySize: 1n << 20n,
      userspaceAddr: 0x700000000000n,
      mmapOffset: 0n,
    });
    await expect(frontend.send(FrontendRequest.ADD_MEM_REG, region, [fd])).rejects.toThrow();
    close(fd);
  });

  it('refuses to remove the memory region that holds a running ring', async () => {
    const { frontend, disconnected, logs } = await start();
    const r = frontend.ram.regions[1]; // queue 1's rings live in region 1
    const region = encode(SingleMemoryRegion, {
      guestPhysAddr: BigInt(r.guestPhysAddr),
      memorySize: BigInt(r.size),
      userspaceAddr: BigInt(r.userspaceAddr),
      mmapOffset: 0n,
    });
    await expect(frontend.send(FrontendRequest.REM_MEM_REG, region, [])).rejects.toThrow(/status 1/);
    expect(logs.join('\n')).toMatch(/queue 1 would not fit the new memory table/);
    expect(disconnected()).toBeNull();
    expect(await echo(frontend, 1, 'region kept')).toBe('region kept');
  });

  it('returns an indirect table longer than the queue as a broken chain', async () => {
    const { frontend } = await start();
    const len = await frontend.queues[1].submitRaw([{ index: 0, addr: 0x1000, len: 16 * 1024, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }], 0);
    expect(len).toBe(0);
    expect(await echo(frontend, 1, 'next')).toBe('next');
  });
});
