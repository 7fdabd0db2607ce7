import type { CacheMode } from './fuse-server/cache-policy';
import type { FileHandleMode } from './fuse-server/file-handles';
import type { DaxPolicy } from './fuse-server/dax-policy';
import type { FuseSessionOptions } from './fuse-server/session';
import type { LogThreshold } from './log';
import type { SandboxMode, SeccompMode } from './sandbox/modes';

export type CachePolicy = CacheMode;
export const CACHE_POLICIES: readonly CachePolicy[] = ['never', 'auto', 'always', 'metadata'];

export type InodeFileHandles = FileHandleMode;
export const INODE_FILE_HANDLES: readonly InodeFileHandles[] = ['never', 'prefer', 'mandatory'];

export type { DaxPolicy };
export { DAX_POLICIES, DEFAULT_DAX_POLICY } from './fuse-server/dax-policy';
export { SANDBOX_MODES, SECCOMP_MODES } from './sandbox/modes';

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
  logLevel: LogThreshold;
  /** --syslog: log to syslog (/dev/log) instead of stderr. */
  syslog?: boolean;
  /** --thread-pool-size (libvirt's <thread_pool size>): worker threads for requests; absent: the default. */
  threadPoolSize?: number;
  /** --metrics-socket: a socket that answers each connection with the metrics JSON. */
  metricsSocket?: string;
  /** The pid file beside the socket (SOCKET.pid), locked for as long as the daemon lives. */
  pidFile?: string;
  /**
   * fds the command opened before the sandbox for the daemon (pid file, notify
   * socket, syslog socket, socket-activated listener): kept open across the relaunch.
   */
  inheritFds?: number[];
  /** A datagram socket connected to NOTIFY_SOCKET (systemd readiness), opened before the sandbox. */
  notifyFd?: number;
  /** A datagram socket connected to /dev/log (--syslog), opened before the sandbox. */
  syslogFd?: number;
  /** One line each, logged at start: options accepted for compatibility that change nothing here, deprecations. */
  notices?: string[];
  /** The pid file's open fd (its lock lives as long as the fd). */
  pidFileFd?: number;
  /** RLIMIT_NOFILE to set; 0 leaves it alone; absent raises it to min(1000000, fs.nr_open). */
  rlimitNofile?: number;
  /** Size of the DAX window in bytes; absent: no DAX. */
  daxWindow?: bigint;
  /** Default: inode (DEFAULT_DAX_POLICY). */
  daxPolicy?: DaxPolicy;
  /** --tag: the virtio-fs tag served through GET_CONFIG (VHOST_USER_PROTOCOL_F_CONFIG); absent: no device config. */
  tag?: string;
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
