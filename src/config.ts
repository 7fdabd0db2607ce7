import type { FileHandleMode } from './fuse-server/file-handles';
import type { DaxPolicy } from './fuse-server/passthrough-dax';
import { LogLevel } from './log';

export type CachePolicy = 'never' | 'auto' | 'always' | 'metadata';
export const CACHE_POLICIES: readonly CachePolicy[] = ['never', 'auto', 'always', 'metadata'];

export type InodeFileHandles = FileHandleMode;
export const INODE_FILE_HANDLES: readonly InodeFileHandles[] = ['never', 'prefer', 'mandatory'];

export type { DaxPolicy };
export const DAX_POLICIES: readonly DaxPolicy[] = ['always', 'never', 'inode'];

/**
 * Everything the daemon needs, validated; built by cli.ts only. The share
 * options after `logLevel` are optional: absent means off (or the default
 * named beside them), as in the reference daemon.
 */
export interface DaemonConfig {
  /** Where to listen; exactly one of socketPath / fd is set. */
  socketPath?: string;
  /** An already-listening socket inherited from the parent (libvirt). */
  fd?: number;
  socketGroup?: string;
  sharedDir: string;
  cache: CachePolicy;
  readonly: boolean;
  logLevel: LogLevel;
  /** Entry/attribute timeout in seconds, overriding the cache policy's (`-o timeout=`). */
  timeout?: number;
  xattr?: boolean;
  /** xattr name mapping rules, virtiofsd(1) syntax (implies xattr). */
  xattrmap?: string;
  posixAcl?: boolean;
  securityLabel?: boolean;
  posixLock?: boolean;
  flock?: boolean;
  writeback?: boolean;
  /** Default: on, except with cache=never. */
  readdirplus?: boolean;
  allowDirectIo?: boolean;
  killprivV2?: boolean;
  announceSubmounts?: boolean;
  preserveNoatime?: boolean;
  /** Default: never. */
  inodeFileHandles?: InodeFileHandles;
  /** RLIMIT_NOFILE to set; 0 leaves it alone; absent raises it to min(1000000, fs.nr_open). */
  rlimitNofile?: number;
  translateUid?: string[];
  translateGid?: string[];
  /** Size of the DAX window in bytes; absent: no DAX. */
  daxWindow?: bigint;
  /** Default: always. */
  daxPolicy?: DaxPolicy;
}
