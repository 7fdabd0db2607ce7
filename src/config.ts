import type { CacheMode } from './fuse-server/cache-policy';
import type { FileHandleMode } from './fuse-server/file-handles';
import type { DaxPolicy } from './fuse-server/passthrough-dax';
import type { FuseSessionOptions } from './fuse-server/session';
import { LogLevel } from './log';
import type { SandboxMode } from './sandbox';
import type { SeccompMode } from './sandbox/seccomp';

export type CachePolicy = CacheMode;
export const CACHE_POLICIES: readonly CachePolicy[] = ['never', 'auto', 'always', 'metadata'];

export type InodeFileHandles = FileHandleMode;
export const INODE_FILE_HANDLES: readonly InodeFileHandles[] = ['never', 'prefer', 'mandatory'];

export type { DaxPolicy };
export const DAX_POLICIES: readonly DaxPolicy[] = ['always', 'never', 'inode'];

/**
 * Everything the daemon needs, validated; built by cli.ts only. The share's
 * settings are the FUSE session's options (fuse-server/session.ts and
 * passthrough-options.ts document them): the optional ones absent mean off (or
 * the default named there), as in the reference daemon. The DAX mapper and the
 * log sink are built by the daemon from `daxWindow`/`daxPolicy` and `logLevel`.
 */
export interface DaemonConfig extends Omit<FuseSessionOptions, 'dax' | 'log'> {
  /** Where to listen; exactly one of socketPath / fd is set. */
  socketPath?: string;
  /** An already-listening socket inherited from the parent (libvirt). */
  fd?: number;
  socketGroup?: string;
  logLevel: LogLevel;
  /** RLIMIT_NOFILE to set; 0 leaves it alone; absent raises it to min(1000000, fs.nr_open). */
  rlimitNofile?: number;
  /** Size of the DAX window in bytes; absent: no DAX. */
  daxWindow?: bigint;
  /** Default: always. */
  daxPolicy?: DaxPolicy;
  /**
   * Confinement (src/sandbox). The command line's default is namespace (none
   * where that cannot work); absent, as when a program embeds the Daemon
   * (the tests do), means none: the process is not ours to confine.
   */
  sandbox?: SandboxMode;
  /** Whether --sandbox (or -o sandbox=) chose the mode. */
  sandboxExplicit?: boolean;
  /** Absent: none (see `sandbox`). */
  seccomp?: SeccompMode;
  /** --modcaps: capabilities added to or removed from the default set. */
  modcaps?: string;
  /** --uid-map/--gid-map for the user namespace of an unprivileged daemon ("INSIDE:OUTSIDE:COUNT"). */
  uidMapNs?: string[];
  gidMapNs?: string[];
}
