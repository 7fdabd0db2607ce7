import { afterEach, describe, expect, it } from 'vitest';
import { MFD_CLOEXEC, UnixStreamSocket, close, memfdCreate } from '../../src/sys';
import { Connection } from '../../src/vhost-user/connection';
import {
  MemoryRegionDesc,
  ProtocolError,
  VringAddr,
  decodeHeader,
  ShmemConfig,
  ShmemMap,
  VirtioFsConfig,
  decode,
  decodeShmemConfig,
  encodeHeader,
  encodeMessage,
  encode,
  encodeShmemConfig,
} from '../../src/vhost-user/messages';
import {
  FrontendRequest,
  HEADER_SIZE,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_VERSION,
  VIRTIO_FS_CONFIG_SIZE,
} from '../../src/vhost-user/protocol';

const opened: { close(): void }[] = [];
afterEach(() => opened.splice(0).forEach((s) => s.close()));

describe('vhost-user message codec', () => {
  it('round-trips the header', () => {
    const h = encodeHeader(FrontendRequest.SET_VRING_ADDR, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK, 40);
    expect(h.length).toBe(HEADER_SIZE);
    expect(decodeHeader(h)).toEqual({ request: 9, flags: 0x9, size: 40 });
  });

  it('rejects another protocol version and oversized payloads', () => {
    expect(() => decodeHeader(encodeHeader(1, 0x2, 0))).toThrow(ProtocolError);
    expect(() => decodeHeader(encodeHeader(1, 0x1, 1 << 20))).toThrow(/too large/);
  });

  it('derives struct encode/decode from one layout', () => {
    const addr = { index: 1, flags: 0, descUserAddr: 0x1000n, usedUserAddr: 0x3000n, availUserAddr: 0x2000n, logGuestAddr: 0n };
    const buf = encode(VringAddr, addr);
    expect(buf.length).toBe(40);
    expect(buf.readBigUInt64LE(8)).toBe(0x1000n);
    expect(decode(VringAddr, buf)).toEqual(addr);
    expect(MemoryRegionDesc.size).toBe(32);
    expect(() => decode(VringAddr, Buffer.alloc(39))).toThrow(/need 40/);
  });

  it('packs the 40-byte SHMEM_MAP body with shmid in the first byte', () => {
    const body = { shmid: 0, fdOffset: 0x200000n, shmOffset: 0x400000n, len: 0x200000n, flags: 1n };
    const buf = encode(ShmemMap, { ...body, shmid: 3 });
    expect(buf.length).toBe(40);
    expect(buf[0]).toBe(3);
    expect(buf.subarray(1, 8)).toEqual(Buffer.alloc(7));
    expect(buf.readBigUInt64LE(8)).toBe(0x200000n);
    expect(decode(ShmemMap, encode(ShmemMap, body))).toEqual(body);
    expect(() => decode(ShmemMap, Buffer.alloc(39))).toThrow(ProtocolError);
  });

  it('lays out GET_SHMEM_CONFIG as u32 nregions, u32 padding, u64 sizes[256]', () => {
    const buf = encodeShmemConfig([0x1000n, 1n << 40n]);
    expect(buf.length).toBe(ShmemConfig.size);
    expect(buf.length).toBe(8 + 8 * 256);
    expect(buf.readUInt32LE(0)).toBe(2);
    expect(buf.readBigUInt64LE(8)).toBe(0x1000n);
    expect(buf.readBigUInt64LE(16)).toBe(1n << 40n);
    expect(buf.subarray(24).equals(Buffer.alloc(buf.length - 24))).toBe(true);
    expect(decodeShmemConfig(buf)).toEqual([0x1000n, 1n << 40n]);
    buf.writeUInt32LE(257, 0);
    expect(() => decodeShmemConfig(buf)).toThrow(ProtocolError);
    expect(() => encodeShmemConfig(Array.from({ length: 257 }, () => 0n))).toThrow(RangeError);
  });

  it('declares struct virtio_fs_config as the 40 bytes of the spec', () => {
    expect(VirtioFsConfig.size).toBe(VIRTIO_FS_CONFIG_SIZE);
  });
});

describe('Connection framing', () => {
  it('reassembles messages split across reads and keeps their fds', () => {
    const [a, b] = UnixStreamSocket.pair();
    opened.push(a, b);
    const receiver = new Connection(b);
    const memfd = memfdCreate('fd-passing', MFD_CLOEXEC);
    const msg = encodeMessage(FrontendRequest.SET_VRING_KICK, 0, Buffer.from([0, 0, 0, 0, 0, 0, 0, 0]));
    a.send(msg.subarray(0, 5), [memfd]);
    expect(receiver.receive()).toBeNull();
    a.send(msg.subarray(5));
    const got = receiver.receive();
    expect(got).toMatchObject({ request: FrontendRequest.SET_VRING_KICK, payload: Buffer.alloc(8) });
    const fds = (got as { fds: number[] }).fds;
    expect(fds.length).toBe(1);
    close(memfd);
    close(fds[0]);
    a.close();
    expect(receiver.receive()).toBe('eof');
  });

  it('reports a framing error on a bad header', () => {
    const [a, b] = UnixStreamSocket.pair();
    opened.push(a, b);
    a.send(encodeHeader(1, 0x3, 0));
    expect(() => new Connection(b).receive()).toThrow(ProtocolError);
  });
});
