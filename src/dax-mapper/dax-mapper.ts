import { Errno, close, dup } from '../sys';
import { BackendChannel } from '../vhost-user/backend-channel';
import { ShmemMap, encode } from '../vhost-user/messages';
import { BackendRequest, ProtocolFeature, SHMEM_MAP_FLAG_WRITABLE, bit } from '../vhost-user/protocol';

/** The virtio-fs DAX cache is shared memory region 0 (VIRTIO_FS_SHMCAP_ID_CACHE). */
export const DAX_SHMID = 0;
/** We ask the guest for page-aligned mappings (FUSE_MAP_ALIGNMENT, log2). Linux accepts <= 21. */
export const MAP_ALIGNMENT_LOG2 = 12;
const ALIGN = 1n << BigInt(MAP_ALIGNMENT_LOG2);
const U64_MAX = (1n << 64n) - 1n;

/** One file range mapped in the window. `fd` is our own dup, kept to remap what survives a partial removal. */
interface Mapping {
  moffset: bigint;
  len: bigint;
  foffset: bigint;
  nodeid: bigint;
  writable: boolean;
  fd: number;
}

export interface SetupRequest {
  nodeid: bigint;
  /** An fd of the file open for reading (and writing when `writable`). Not taken over. */
  fd: number;
  foffset: bigint;
  len: bigint;
  moffset: bigint;
  writable: boolean;
}

/**
 * Checks a range of the window (a REMOVEMAPPING entry, or where a SETUPMAPPING
 * goes): non-empty, aligned, inside the window. Returns an errno, or 0.
 */
export function validateWindowRange(windowSize: bigint, moffset: bigint, len: bigint): number {
  if (len === 0n) return Errno.EINVAL;
  if (moffset % ALIGN !== 0n || len % ALIGN !== 0n) return Errno.EINVAL;
  if (moffset > U64_MAX - len || moffset + len > windowSize) return Errno.EINVAL;
  return 0;
}

/**
 * Checks a SETUPMAPPING's numbers against the window: returns an errno, or 0.
 * Every guest-supplied number is checked here before anything is mapped.
 */
export function validateRange(windowSize: bigint, foffset: bigint, len: bigint, moffset: bigint): number {
  const err = validateWindowRange(windowSize, moffset, len);
  if (err) return err;
  if (foffset % ALIGN !== 0n || foffset > U64_MAX - len) return Errno.EINVAL;
  // mmap offsets are signed 64-bit (off_t).
  if (foffset + len > (1n << 63n) - 1n) return Errno.EFBIG;
  return 0;
}

/**
 * Bookkeeping of the DAX window: which window ranges map which file ranges.
 * Turns FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING into VHOST_USER_BACKEND_SHMEM_MAP
 * / SHMEM_UNMAP requests on the back-end channel. SHMEM_UNMAP must name exactly
 * one earlier mapping, so overlaps are resolved here: overlapped mappings are
 * unmapped whole and their surviving parts mapped again.
 */
export class DaxMapper {
  private mappings: Mapping[] = [];
  private channel: BackendChannel | null = null;
  /** Window operations run one at a time: each waits for the front-end's acknowledgements. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Bumped by reset(): an operation that started before a reset must not touch the new state. */
  private generation = 0;

  constructor(
    readonly windowSize: bigint,
    private readonly log: (msg: string) => void = () => undefined,
  ) {}

  get protocolFeatures(): bigint {
    return (
      bit(ProtocolFeature.SHMEM) | bit(ProtocolFeature.BACKEND_REQ) | bit(ProtocolFeature.BACKEND_SEND_FD) | bit(ProtocolFeature.REPLY_ACK)
    );
  }

  shmemRegions(): bigint[] {
    return [this.windowSize];
  }

  setBackendChannel(channel: BackendChannel | null): void {
    this.channel = channel;
  }

  /** The mappings, for tests and diagnostics. */
  list(): { moffset: bigint; len: bigint; foffset: bigint; nodeid: bigint; writable: boolean }[] {
    return this.mappings.map(({ moffset, len, foffset, nodeid, writable }) => ({ moffset, len, foffset, nodeid, writable }));
  }

  /** FUSE_SETUPMAPPING: resolves with 0 or an errno. */
  setup(req: SetupRequest): Promise<number> {
    const err = validateRange(this.windowSize, req.foffset, req.len, req.moffset);
    if (err) return Promise.resolve(err);
    if (!this.channel) return Promise.resolve(Errno.ENOTSUP);
    const m: Mapping = {
      moffset: req.moffset,
      len: req.len,
      foffset: req.foffset,
      nodeid: req.nodeid,
      writable: req.writable,
      fd: dup(req.fd),
    };
    return this.serialize(async () => {
      const removed = await this.unmapRange(req.moffset, req.len);
      if (removed < 0) {
        closeFd(m);
        return -removed;
      }
      const status = await this.map(m);
      if (status !== 0) closeFd(m);
      return status;
    }).catch(() => {
      // The window was reset before this mapping's turn came.
      closeFd(m);
      return Errno.EIO;
    });
  }

  /** FUSE_REMOVEMAPPING of one range: resolves with 0 or an errno. */
  remove(moffset: bigint, len: bigint): Promise<number> {
    const err = validateWindowRange(this.windowSize, moffset, len);
    if (err) return Promise.resolve(err);
    return this.serialize(async () => {
      const r = await this.unmapRange(moffset, len);
      return r < 0 ? -r : 0;
    }).catch(() => 0); // reset meanwhile: nothing is mapped any more
  }

  /** The guest forgot an inode: its mappings go too. */
  forgetInode(nodeid: bigint): Promise<void> {
    return this.serialize(async () => {
      for (const m of this.mappings.filter((x) => x.nodeid === nodeid)) await this.unmapOne(m);
    }).catch(() => undefined); // reset meanwhile: nothing is mapped any more
  }

  /**
   * Device reset or disconnect: the front-end drops its window; we drop our
   * records. Operations still waiting for an acknowledgement find out through
   * the generation and leave the new state alone.
   */
  reset(): void {
    this.generation++;
    for (const m of this.mappings) closeFd(m);
    this.mappings = [];
  }

  private serialize<T>(op: () => Promise<T>): Promise<T> {
    const generation = this.generation;
    const guarded = (): Promise<T> => (generation === this.generation ? op() : Promise.reject(new Error('DAX window reset')));
    const run = this.queue.then(guarded, guarded);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async map(m: Mapping): Promise<number> {
    if (!this.channel || m.fd < 0) return Errno.ENOTSUP;
    const generation = this.generation;
    const body = encode(ShmemMap, {
      shmid: DAX_SHMID,
      fdOffset: m.foffset,
      shmOffset: m.moffset,
      len: m.len,
      flags: m.writable ? SHMEM_MAP_FLAG_WRITABLE : 0n,
    });
    try {
      await this.channel.request(BackendRequest.SHMEM_MAP, body, [m.fd]);
    } catch (err) {
      this.log(`DAX: mapping 0x${m.moffset.toString(16)}+0x${m.len.toString(16)} refused: ${(err as Error).message}`);
      return Errno.EIO;
    }
    // Reset while the front-end was answering: the new window does not have this mapping.
    if (generation !== this.generation) return Errno.EIO;
    this.mappings.push(m);
    return 0;
  }

  private async unmapOne(m: Mapping): Promise<number> {
    this.mappings = this.mappings.filter((x) => x !== m);
    let status = 0;
    if (this.channel) {
      const body = encode(ShmemMap, { shmid: DAX_SHMID, fdOffset: 0n, shmOffset: m.moffset, len: m.len, flags: 0n });
      try {
        await this.channel.request(BackendRequest.SHMEM_UNMAP, body);
      } catch (err) {
        this.log(`DAX: unmapping 0x${m.moffset.toString(16)} refused: ${(err as Error).message}`);
        status = Errno.EIO;
      }
    }
    closeFd(m);
    return status;
  }

  /**
   * Unmaps [moffset, moffset+len): every overlapping mapping is unmapped and
   * the parts of it outside the range are mapped again. Returns 0 or -errno.
   */
  private async unmapRange(moffset: bigint, len: bigint): Promise<number> {
    const end = moffset + len;
    const hit = this.mappings.filter((m) => m.moffset < end && moffset < m.moffset + m.len);
    for (const m of hit) {
      const keep: Mapping[] = [];
      if (m.fd < 0) continue; // already dropped by a reset
      if (m.moffset < moffset) keep.push({ ...m, len: moffset - m.moffset, fd: dup(m.fd) });
      if (m.moffset + m.len > end) {
        const cut = end - m.moffset;
        keep.push({ ...m, moffset: end, foffset: m.foffset + cut, len: m.len - cut, fd: dup(m.fd) });
      }
      const status = await this.unmapOne(m);
      for (const k of keep) {
        if ((await this.map(k)) !== 0) closeFd(k);
      }
      if (status) return -status;
    }
    return 0;
  }
}

/** Closes a mapping's own fd once, however many paths reach it. */
function closeFd(m: Mapping): void {
  if (m.fd >= 0) close(m.fd);
  m.fd = -1;
}
