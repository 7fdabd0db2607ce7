/** Options of the passthrough file system: the command line's share settings, validated. */
import type { CacheMode } from './cache-policy';
import type { FileHandleMode } from './file-handles';
import type { IdMap } from './id-map';
import type { DaxOptions } from './passthrough-dax';
import type { XattrMap } from './xattr-map';

export interface PassthroughOptions {
  sharedDir: string;
  cache: CacheMode;
  /** Overrides the cache mode's entry/attribute timeout (seconds; `-o timeout=`). */
  timeout?: number;
  /** Extended attributes (`--xattr`); implied by xattrmap, posixAcl and securityLabel. */
  xattr?: boolean;
  xattrmap?: XattrMap | null;
  posixAcl?: boolean;
  securityLabel?: boolean;
  /** POSIX record locks on the host (`-o posix_lock`) and flock(2) (`-o flock`). */
  posixLock?: boolean;
  flock?: boolean;
  writeback?: boolean;
  /** --allow-mmap: FUSE_DIRECT_IO_ALLOW_MMAP, so files opened with direct I/O (--cache never, metadata) can be mmap'd shared. */
  allowMmap?: boolean;
  /** READDIRPLUS (default on, except with cache=never). */
  readdirplus?: boolean;
  /** Pass the guest's O_DIRECT to the host open. */
  allowDirectIo?: boolean;
  killprivV2?: boolean;
  announceSubmounts?: boolean;
  /** Keep the guest's O_NOATIME (by default it is dropped: it fails for files the daemon does not own). */
  preserveNoatime?: boolean;
  /** Hold inodes as file handles (default: never). */
  inodeFileHandles?: FileHandleMode;
  uidMap?: IdMap;
  gidMap?: IdMap;
  dax?: DaxOptions | null;
  /** The share is served read-only (a ReadOnlyFs wraps this one); DAX opens nothing O_RDWR for reads then. */
  readonly?: boolean;
  /**
   * fds the guest's inodes, handles and lock descriptions may hold together;
   * by default the soft RLIMIT_NOFILE at start-up less a reserve for the daemon.
   */
  fdBudget?: number;
  /**
   * `--thread-pool-size`: above 0, READ and WRITE of ASYNC_MIN_BYTES or more
   * run on libuv's thread pool (sized by UV_THREADPOOL_SIZE, which the command
   * sets from it), so a slow host file system stalls no other request. Absent
   * or 0: they run on the event loop, which measures faster on the page cache
   * (docs/benchmarks.md). FSYNC runs on the pool either way.
   */
  threadPoolSize?: number;
  /** An fd on /proc/self/fd, handed over (the sandbox's, once /proc is out of reach); default: opened by path. */
  procSelfFd?: number;
  log?: (level: 'error' | 'warn' | 'info' | 'debug', msg: string) => void;
}
