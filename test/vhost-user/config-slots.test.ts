// The device config a generic vhost-user device reads from the back-end
// (QEMU 11.1's vhost-user-test-device-pci needs VHOST_USER_PROTOCOL_F_CONFIG
// and GET_CONFIG), and memory slots as QEMU 11.1 uses them for DAX: one
// ADD_MEM_REG per live window mapping, which may run out.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { VhostUserFrontend } from '../../src/guest/frontend';
import { MFD_CLOEXEC, UnixListener, close, ftruncate, memfdCreate } from '../../src/sys';
import { BackendOptions, VhostUserBackend } from '../../src/vhost-user/backend';
import { ConfigHeader, SingleMemoryRegion, U64, decode, encode, encodeVirtioFsConfig } from '../../src/vhost-user/messages';
import { FrontendRequest, MAX_MEM_SLOTS, ProtocolFeature } from '../../src/vhost-user/protocol';
import { EchoDevice } from './echo-backend';

const cleanups: (() => void)[] = [];
afterEach(() =>
  cleanups
    .splice(0)
    .reverse()
    .forEach((f) => f()),
);

async function start(options: BackendOptions = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vu-config-'));
  const sock = path.join(dir, 'sock');
  const listener = UnixListener.listen(sock);
  const logs: string[] = [];
  let disconnected: { err?: Error } | null = null;
  let backend: VhostUserBackend | null = null;
  listener.watch(() => {
    const s = listener.accept();
    if (!s) return;
    backend = new VhostUserBackend(
      s,
      new EchoDevice(),
      (level, msg) => logs.push(`${level}: ${msg}`),
      (err) => (disconnected = { err }),
      options,
    );
    backend.start();
  });
  const frontend = await VhostUserFrontend.connect(sock, {
    requestQueues: 1,
    ramRegions: [1 << 20, 1 << 20],
  });
  cleanups.push(() => {
    frontend.close();
    (backend as VhostUserBackend | null)?.close();
    listener.close(true);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { frontend, logs, disconnected: () => disconnected };
}

async function echo(frontend: VhostUserFrontend, text: string): Promise<string> {
  const req = frontend.ram.alloc(text.length);
  req.view.write(text);
  const rep = frontend.ram.alloc(64, 1);
  const len = await frontend.queues[1].submit([{ addr: req.addr, len: text.length }], [{ addr: rep.addr, len: 64 }]);
  return rep.view.subarray(0, len).toString();
}

/** GET_CONFIG as QEMU sends it: the header and `size` bytes (zeros). */
function getConfig(frontend: VhostUserFrontend, offset: number, size: number) {
  const payload = Buffer.concat([encode(ConfigHeader, { offset, size, flags: 0 }), Buffer.alloc(size)]);
  return frontend.call(FrontendRequest.GET_CONFIG, payload);
}

function memfd(size = 1 << 16): number {
  const fd = memfdCreate('slot', MFD_CLOEXEC);
  ftruncate(fd, size);
  cleanups.push(() => close(fd));
  return fd;
}
const slot = (i: number) =>
  encode(SingleMemoryRegion, {
    guestPhysAddr: BigInt(0x200000000 + i * 0x100000),
    memorySize: 1n << 16n,
    userspaceAddr: BigInt(0x7f0000000000 + i * 0x100000),
    mmapOffset: 0n,
  });

describe('device config (VHOST_USER_PROTOCOL_F_CONFIG)', () => {
  it('encodes the virtio-fs config: tag NUL-padded to 36 bytes, then le32 num_request_queues', () => {
    const c = encodeVirtioFsConfig('myfs', 1);
    expect(c.length).toBe(40);
    expect(c.subarray(0, 4).toString()).toBe('myfs');
    expect(c.subarray(4, 36).every((b) => b === 0)).toBe(true);
    expect(c.readUInt32LE(36)).toBe(1);
    expect(encodeVirtioFsConfig('x'.repeat(36), 2).subarray(0, 36).toString()).toBe('x'.repeat(36));
    expect(() => encodeVirtioFsConfig('x'.repeat(37), 1)).toThrow(RangeError);
    expect(() => encodeVirtioFsConfig('', 1)).toThrow(RangeError);
  });

  it('is offered with a config and answers GET_CONFIG with exactly the slice asked for', async () => {
    const config = encodeVirtioFsConfig('myfs', 1);
    const { frontend } = await start({ deviceConfig: config });
    expect((frontend.backendProtocolFeatures & (1n << BigInt(ProtocolFeature.CONFIG))) !== 0n).toBe(true);
    const whole = await getConfig(frontend, 0, 40);
    expect(decode(ConfigHeader, whole.payload)).toMatchObject({ offset: 0, size: 40 });
    expect(whole.payload.subarray(ConfigHeader.size)).toEqual(config);
    const tagOnly = await getConfig(frontend, 36, 4);
    expect(tagOnly.payload.subarray(ConfigHeader.size).readUInt32LE(0)).toBe(1);
    // Outside the config: size 0, the protocol's failure, and nothing else.
    for (const [offset, size] of [
      [0, 41],
      [40, 1],
      [0xffffffff, 2],
    ]) {
      const r = await getConfig(frontend, offset, Math.min(size, 64));
      expect(r.payload.length).toBe(ConfigHeader.size);
      expect(decode(ConfigHeader, r.payload).size).toBe(0);
    }
    expect(await echo(frontend, 'still here')).toBe('still here');
  });

  it('is not offered without a config (vhost-user-fs-pci builds its own), GET_CONFIG answers size 0', async () => {
    const { frontend } = await start();
    expect((frontend.backendProtocolFeatures & (1n << BigInt(ProtocolFeature.CONFIG))) !== 0n).toBe(false);
    const r = await getConfig(frontend, 0, 40);
    expect(decode(ConfigHeader, r.payload).size).toBe(0);
  });

  it('refuses SET_CONFIG (virtio-fs config is read-only) and keeps the connection, with or without REPLY_ACK', async () => {
    const payload = Buffer.concat([encode(ConfigHeader, { offset: 0, size: 40, flags: 0 }), Buffer.alloc(40)]);
    const withAck = await start({ deviceConfig: encodeVirtioFsConfig('myfs', 1) });
    await expect(withAck.frontend.send(FrontendRequest.SET_CONFIG, payload)).rejects.toThrow(/status 1/);
    expect(withAck.logs.join('\n')).toMatch(/SET_CONFIG refused: the device config is read-only/);
    expect(await echo(withAck.frontend, 'after SET_CONFIG')).toBe('after SET_CONFIG');
    // Sent without NEED_REPLY: refused all the same, and the connection stays.
    const noAck = await start({ deviceConfig: encodeVirtioFsConfig('myfs', 1) });
    noAck.frontend.raw(FrontendRequest.SET_CONFIG, 0, payload);
    expect(await echo(noAck.frontend, 'after SET_CONFIG')).toBe('after SET_CONFIG');
    expect(noAck.disconnected()).toBeNull();
  });
});

describe('memory slots', () => {
  it(`offers QEMU's ${MAX_MEM_SLOTS} slots`, async () => {
    const { frontend } = await start();
    expect(decode(U64, (await frontend.call(FrontendRequest.GET_MAX_MEM_SLOTS)).payload).value).toBe(512n);
  });

  it('refuses an ADD_MEM_REG past the last slot, and a REM_MEM_REG of that region, without disconnecting a front-end that asked no reply', async () => {
    const { frontend, logs, disconnected } = await start();
    // Two slots hold the RAM regions. The two refused messages are sent without NEED_REPLY,
    // as blindly as a front-end without REPLY_ACK would; the echo after them shows they were handled.
    for (let i = 0; i < MAX_MEM_SLOTS - 2; i++) await frontend.send(FrontendRequest.ADD_MEM_REG, slot(i), [memfd()]);
    frontend.raw(FrontendRequest.ADD_MEM_REG, 0, slot(MAX_MEM_SLOTS), [memfd()]);
    frontend.raw(FrontendRequest.REM_MEM_REG, 0, slot(MAX_MEM_SLOTS), []);
    expect(await echo(frontend, 'slots full')).toBe('slots full');
    expect(disconnected()).toBeNull();
    const text = logs.join('\n');
    expect(text).toMatch(/warn: vhost-user: ADD_MEM_REG refused: no free memory slot \(all 512 in use\)/);
    expect(text).toMatch(/warn: vhost-user: REM_MEM_REG refused: no memory region at 0x220000000/);
    expect(text).not.toMatch(/disconnecting/);
  });
});
