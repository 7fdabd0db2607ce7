import { type Layout, type ValueOfLayout, bytes, encode, pad, struct } from '../layout';
import {
  HEADER_SIZE,
  MAX_PAYLOAD_SIZE,
  MAX_SHMEM_REGIONS,
  VIRTIO_FS_TAG_SIZE,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
} from './protocol';

/**
 * vhost-user message codec: the 12-byte header and every payload layout the
 * back-end and the TypeScript front-end exchange, declared with the one struct
 * mechanism (src/layout.ts); both directions derive from them.
 */

export interface Message {
  request: number;
  flags: number;
  payload: Buffer;
  /** File descriptors that travelled with the message (SCM_RIGHTS). */
  fds: number[];
}

export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

export function encodeHeader(request: number, flags: number, size: number): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt32LE(request, 0);
  header.writeUInt32LE(flags, 4);
  header.writeUInt32LE(size, 8);
  return header;
}

export function decodeHeader(buf: Buffer): { request: number; flags: number; size: number } {
  const request = buf.readUInt32LE(0);
  const flags = buf.readUInt32LE(4);
  const size = buf.readUInt32LE(8);
  if ((flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION) {
    throw new ProtocolError(`unsupported vhost-user version ${flags & VHOST_USER_VERSION_MASK} (request ${request})`);
  }
  if (size > MAX_PAYLOAD_SIZE) throw new ProtocolError(`payload of ${size} bytes is too large (request ${request})`);
  return { request, flags, size };
}

export function encodeMessage(request: number, flags: number, payload: Buffer): Buffer {
  return Buffer.concat([encodeHeader(request, flags | VHOST_USER_VERSION, payload.length), payload]);
}

export const isReply = (flags: number): boolean => (flags & VHOST_USER_REPLY_MASK) !== 0;
export const needsReply = (flags: number): boolean => (flags & VHOST_USER_NEED_REPLY_MASK) !== 0;

/** Decodes a payload struct; a payload shorter than the layout is the front-end's protocol error. */
export function decode<T>(layout: Layout<T>, buf: Buffer, offset = 0): T {
  if (buf.length - offset < layout.size) {
    throw new ProtocolError(`${layout.name}: payload of ${buf.length - offset} bytes, need ${layout.size}`);
  }
  return layout.decode(buf, offset);
}
export { encode };

/* Payload layouts, named and ordered as vhost-user.rst spells them. */

/** A u64 payload: features, queue numbers, a vring index with its flags, a reply status. */
export const U64 = struct('u64', { value: 'u64' });
/** Vring state description. */
export const VringState = struct('vring state', { index: 'u32', num: 'u32' });
/** Vring address description. */
export const VringAddr = struct('vring address', {
  index: 'u32',
  flags: 'u32',
  descUserAddr: 'u64',
  usedUserAddr: 'u64',
  availUserAddr: 'u64',
  logGuestAddr: 'u64',
});
/** Memory region description. */
export const MemoryRegionDesc = struct('memory region', {
  guestPhysAddr: 'u64',
  memorySize: 'u64',
  userspaceAddr: 'u64',
  mmapOffset: 'u64',
});
export type MemoryRegionDescription = ValueOfLayout<typeof MemoryRegionDesc>;
/** SET_MEM_TABLE: u32 nregions, u32 padding, regions[nregions]. */
export const MemoryTableHeader = struct('memory table', { nregions: 'u32', padding: pad(4) });
/** ADD_MEM_REG / REM_MEM_REG: u64 padding, one region. */
export const SingleMemoryRegion = struct('single memory region', {
  padding: pad(8),
  guestPhysAddr: 'u64',
  memorySize: 'u64',
  userspaceAddr: 'u64',
  mmapOffset: 'u64',
});
/** GET_CONFIG / SET_CONFIG header, followed by `size` bytes of device config. */
export const ConfigHeader = struct('device config', { offset: 'u32', size: 'u32', flags: 'u32' });
/** SHMEM_MAP / SHMEM_UNMAP body (VhostUserMMap): u8 shmid, u8 padding[7], then the mapping. */
export const ShmemMap = struct('shmem map', {
  shmid: 'u8',
  padding: pad(7),
  fdOffset: 'u64',
  shmOffset: 'u64',
  len: 'u64',
  flags: 'u64',
});
/** GET_SHMEM_CONFIG reply: u32 nregions, u32 padding, u64 memory_sizes[MAX_SHMEM_REGIONS] (index = shmid). */
export const ShmemConfig = struct('shmem config', {
  nregions: 'u32',
  padding: pad(4),
  memorySizes: bytes(8 * MAX_SHMEM_REGIONS),
});
/** struct virtio_fs_config (virtio spec 5.11.4): the tag NUL-padded to 36 bytes, then num_request_queues. */
export const VirtioFsConfig = struct('virtio_fs_config', { tag: bytes(VIRTIO_FS_TAG_SIZE), numRequestQueues: 'u32' });

/** The GET_SHMEM_CONFIG reply for regions of these sizes (index = shmid). */
export function encodeShmemConfig(sizes: readonly bigint[]): Buffer {
  if (sizes.length > MAX_SHMEM_REGIONS) throw new RangeError(`${sizes.length} shared memory regions, at most ${MAX_SHMEM_REGIONS}`);
  const memorySizes = Buffer.alloc(8 * sizes.length);
  sizes.forEach((size, i) => memorySizes.writeBigUInt64LE(size, 8 * i));
  return encode(ShmemConfig, { nregions: sizes.length, memorySizes });
}

/** The region sizes of a GET_SHMEM_CONFIG reply; a count above MAX_SHMEM_REGIONS is a protocol error. */
export function decodeShmemConfig(buf: Buffer): bigint[] {
  const c = decode(ShmemConfig, buf);
  if (c.nregions > MAX_SHMEM_REGIONS) throw new ProtocolError(`GET_SHMEM_CONFIG with ${c.nregions} regions`);
  return Array.from({ length: c.nregions }, (_, i) => c.memorySizes.readBigUInt64LE(8 * i));
}

/**
 * The virtio-fs device config a back-end serves through GET_CONFIG (no NUL
 * needed when the tag fills its 36 bytes). Throws for a tag that is empty,
 * longer than 36 bytes or contains a NUL.
 */
export function encodeVirtioFsConfig(tag: string, numRequestQueues: number): Buffer {
  const bytes = Buffer.from(tag, 'utf8');
  if (bytes.length === 0 || bytes.length > VIRTIO_FS_TAG_SIZE)
    throw new RangeError(`virtio-fs tag must be 1 to ${VIRTIO_FS_TAG_SIZE} bytes, not ${bytes.length}`);
  if (bytes.includes(0)) throw new RangeError('virtio-fs tag must not contain NUL');
  return encode(VirtioFsConfig, { tag: bytes, numRequestQueues });
}
