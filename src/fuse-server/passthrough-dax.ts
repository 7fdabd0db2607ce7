/**
 * The daemon's half of DAX (`--dax-window`): FUSE_SETUPMAPPING and
 * FUSE_REMOVEMAPPING turned into DaxMapper calls, and which files the guest
 * is told to map.
 *
 * The guest's mount option decides whether it uses the window at all
 * (dax=always|never|inode; the default is "inode"). In the per-inode modes it
 * maps exactly the files whose attributes carry FUSE_ATTR_DAX, and that flag
 * is ours to set, by `--dax-policy`:
 * - inode (default): regular files whose every 2 MiB chunk a VMM can map:
 *   a size that is a non-zero multiple of DAX_CHUNK_SIZE, on a writable
 *   share. QEMU 11.1 refuses mappings that reach past the end of the file
 *   and maps everything read-write (docs/dax.md), and Linux neither maps
 *   less than a whole chunk nor falls back to FUSE_READ when a mapping
 *   fails: any other file would read as EIO;
 * - large:  regular files of at least DAX_MIN_FILE_SIZE bytes, for a VMM that
 *   maps any range (the TypeScript guest; small files gain nothing from a
 *   2 MiB window range and would crowd it out);
 * - always: every regular file;
 * - never:  none (a guest mounted with dax=always still maps everything).
 */
import type { DaxMapper } from '../dax-mapper/dax-mapper';
import { MAP_ALIGNMENT_LOG2, validateWindowRange } from '../dax-mapper/dax-mapper';
import { O_CLOEXEC, O_RDONLY, O_RDWR, S_IFMT, S_IFREG, closeQuietly, type Stat } from '../sys/fs';
import { fcntl } from '../sys/libc';
import { Errno, fail } from './errors';
import type { SetupMapping, WindowRange } from './filesystem';
import type { Handle } from './handle-table';
import { FUSE_ATTR_DAX, FUSE_HAS_INODE_DAX_FLAGS2, FUSE_MAP_ALIGNMENT, FUSE_SETUPMAPPING_FLAG_WRITE } from './protocol';

/** fuse_setupmapping_in.fh of a request naming the file by nodeid alone (Linux's fs/fuse/dax.c sends -1). */
export const SETUPMAPPING_NO_FH = 0xffff_ffff_ffff_ffffn;
/** linux/fcntl.h */
const F_DUPFD_CLOEXEC = 1030;

export { DAX_POLICIES, DEFAULT_DAX_POLICY, type DaxPolicy } from './dax-policy';
import type { DaxPolicy } from './dax-policy';

/** Linux maps the window in chunks of this size at chunk-aligned file offsets (FUSE_DAX_SZ). */
export const DAX_CHUNK_SIZE = 2 * 1024 * 1024;
/** Files below this size are not offered for DAX under `--dax-policy large`. */
export const DAX_MIN_FILE_SIZE = 32 * 1024;

/** Why an O_RDWR open of a file the guest only reads may fail; O_RDONLY is tried then. */
const RDWR_REFUSALS = new Set<number>([Errno.EACCES, Errno.EPERM, Errno.EROFS, Errno.ETXTBSY]);

export interface DaxOptions {
  mapper: DaxMapper;
  policy: DaxPolicy;
  /**
   * The share is read-only (`--readonly`): read mappings get O_RDONLY fds,
   * which QEMU 11.1 cannot map (it maps every range writable), so the inode
   * policy offers no file for DAX.
   */
  readonlyShare?: boolean;
}

export class DaxSupport {
  /** FUSE_HAS_INODE_DAX was agreed: attributes carry per-file DAX hints. */
  private inodeDax = false;

  constructor(
    private readonly options: DaxOptions,
    private readonly log: (msg: string) => void,
  ) {}

  get initFlags(): number {
    return FUSE_MAP_ALIGNMENT;
  }

  get initFlags2(): number {
    return this.options.policy === 'never' ? 0 : FUSE_HAS_INODE_DAX_FLAGS2;
  }

  get mapAlignment(): number {
    return MAP_ALIGNMENT_LOG2;
  }

  init(flags2: number): void {
    this.inodeDax = (flags2 & FUSE_HAS_INODE_DAX_FLAGS2) !== 0;
  }

  /** FUSE_ATTR_DAX for the files the policy picks (see the module comment). */
  attrFlags(st: Stat): number {
    if (!this.inodeDax || (st.mode & S_IFMT) !== S_IFREG) return 0;
    switch (this.options.policy) {
      case 'always':
        return FUSE_ATTR_DAX;
      case 'large':
        return st.size >= DAX_MIN_FILE_SIZE ? FUSE_ATTR_DAX : 0;
      case 'inode':
        return !this.options.readonlyShare && st.size > 0 && st.size % DAX_CHUNK_SIZE === 0 ? FUSE_ATTR_DAX : 0;
      case 'never':
        return 0;
    }
  }

  /**
   * The fd for a mapping that names the file by nodeid (Linux's fh = -1),
   * opened by `reopen(flags)`. Read mappings too are opened O_RDWR where the
   * share and the file allow it: QEMU 11.1 maps every range read-write, and
   * mmap(2) refuses that on an O_RDONLY fd (the guest would read EIO). On a
   * read-only share they stay O_RDONLY, so the guest never holds a writable
   * window onto a share it may not write.
   */
  openForMapping(reopen: (flags: number) => number, writable: boolean): number {
    if (writable || this.options.readonlyShare) return reopen((writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    try {
      return reopen(O_RDWR | O_CLOEXEC);
    } catch (err) {
      if (!RDWR_REFUSALS.has((err as { errno?: number }).errno ?? 0)) throw err;
      return reopen(O_RDONLY | O_CLOEXEC);
    }
  }

  static writable(m: SetupMapping): boolean {
    return (m.flags & BigInt(FUSE_SETUPMAPPING_FLAG_WRITE)) !== 0n;
  }

  /**
   * A duplicate of an open handle's fd for a mapping through it (the guest named
   * fh in SETUPMAPPING). The handle's access mode is what the guest was granted
   * at open: a shared mapping needs it readable, and writable needs O_RDWR, as
   * mmap(2) answers EACCES.
   */
  static handleFd(handle: Handle, writable: boolean): number {
    const readable = handle.access === O_RDONLY || handle.access === O_RDWR;
    if (!readable || (writable && handle.access !== O_RDWR)) fail(Errno.EACCES);
    return fcntl(handle.fd, F_DUPFD_CLOEXEC, 0);
  }

  /**
   * Maps [foffset, foffset+len) of the file open as `fd` at `moffset` of the
   * window. Takes `fd` over: the mapper keeps its own duplicate, ours is
   * closed before this returns.
   */
  async setup(nodeid: number, fd: number, m: SetupMapping): Promise<void> {
    let result: Promise<number>;
    try {
      result = this.options.mapper.setup({
        nodeid: BigInt(nodeid),
        fd,
        foffset: m.foffset,
        len: m.len,
        moffset: m.moffset,
        writable: DaxSupport.writable(m),
      });
    } finally {
      closeQuietly(fd);
    }
    const errno = await result;
    if (errno) fail(errno);
  }

  /**
   * Unmaps every range; all are attempted, the first failure is the answer. A
   * range that is misaligned or outside the window fails the whole request
   * before anything is unmapped.
   */
  async remove(ranges: WindowRange[]): Promise<void> {
    const { windowSize } = this.options.mapper;
    for (const r of ranges) {
      const errno = validateWindowRange(windowSize, r.moffset, r.len);
      if (errno) fail(errno);
    }
    const results = await Promise.all(ranges.map((r) => this.options.mapper.remove(r.moffset, r.len)));
    const errno = results.find((e) => e !== 0);
    if (errno) fail(errno);
  }

  /** The guest forgot an inode: its mappings go too (nobody waits for that). */
  forgetInode(nodeid: number): void {
    this.options.mapper.forgetInode(BigInt(nodeid)).catch((err: Error) => this.log(`DAX: unmapping inode ${nodeid}: ${err.message}`));
  }

  /** DESTROY: the guest unmounted, every mapping of the window goes. */
  destroy(): void {
    this.inodeDax = false;
    const { mapper } = this.options;
    mapper.remove(0n, mapper.windowSize).catch((err: Error) => this.log(`DAX: clearing the window: ${err.message}`));
  }
}
