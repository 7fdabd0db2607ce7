import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs, { type Options } from 'yargs';
import {
  CACHE_POLICIES,
  CachePolicy,
  DAX_POLICIES,
  DaemonConfig,
  DaxPolicy,
  INODE_FILE_HANDLES,
  InodeFileHandles,
  SANDBOX_MODES,
  SECCOMP_MODES,
  DEFAULT_DAX_POLICY,
} from './config';
import { IdMap } from './fuse-server/id-map';
import { XattrMap } from './fuse-server/xattr-map';
import { LOG_THRESHOLDS, SEVERITY, enabled, formatLine, stderrIsJournal, type LogThreshold } from './log';
import type { SandboxMode } from './sandbox';
import type { SeccompMode } from './sandbox/seccomp';
import { listenFd } from './systemd';
// koffi (prebuilt for every platform it supports), not the native addon: --help must work without that.
import { SOL_SOCKET, SO_ACCEPTCONN, getsockopt } from './sys/libc';
import { VIRTIO_FS_TAG_SIZE } from './vhost-user/protocol';

// Nothing here loads the native addon or koffi at import time: --help, --version and
// --print-capabilities must work where the addon is missing (an install with scripts blocked).

/** A bad command line: printed as one line on stderr, exit status 1. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/**
 * What `--print-capabilities` prints: the vhost-user back-end JSON (QEMU
 * docs/interop/vhost-user.json). `separate-options` tells libvirt to pass
 * --shared-dir, --cache, --sandbox... rather than one `-o` list;
 * `migrate-precopy` is absent: we cannot migrate the device state.
 */
export const CAPABILITIES = { type: 'fs', features: ['separate-options'] };

/** The reference daemon's `-o cache=none` is our `never`. */
const LEGACY_CACHE: Record<string, CachePolicy> = { none: 'never', never: 'never', auto: 'auto', always: 'always', metadata: 'metadata' };
/** The reference daemons' log level names (C: err/warn/info/debug; Rust: error...trace, off). */
const LEGACY_LOG_LEVEL: Record<string, LogThreshold> = {
  err: 'error',
  error: 'error',
  warn: 'warn',
  info: 'info',
  debug: 'debug',
  trace: 'trace',
  off: 'off',
};

/** Switches the reference daemon takes as `-o NAME` / `-o no_NAME`, and the config field each sets. */
const LEGACY_SWITCHES = {
  xattr: 'xattr',
  posix_acl: 'posixAcl',
  security_label: 'securityLabel',
  posix_lock: 'posixLock',
  flock: 'flock',
  writeback: 'writeback',
  readdirplus: 'readdirplus',
  allow_direct_io: 'allowDirectIo',
  announce_submounts: 'announceSubmounts',
  killpriv_v2: 'killprivV2',
  allow_mmap: 'allowMmap',
  syslog: 'syslog',
} as const satisfies Record<string, keyof DaemonConfig>;
type Switch = (typeof LEGACY_SWITCHES)[keyof typeof LEGACY_SWITCHES];

/** Bytes per unit suffix of `--dax-window`. */
const SIZE_SUFFIX: Record<string, bigint> = { '': 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n };
/** The guest maps the window in 2 MiB ranges (FUSE_DAX_SZ); pages are the mapping alignment. */
const DAX_RANGE = 2n << 20n;
const PAGE = 4096n;

export type ParsedCommand = { kind: 'capabilities' } | { kind: 'help' } | { kind: 'version' } | { kind: 'daemon'; config: DaemonConfig };

/** A section of the options reference (README and --help). */
type Group = 'Socket' | 'Share' | 'Caching and DAX' | 'Identity' | 'Sandbox' | 'Logging and metrics' | 'Compatibility';

/** One option: its yargs definition plus where the reference puts it and what the Rust virtiofsd does differently. */
export interface OptionDef extends Options {
  group: Group;
  /** Where our default or meaning differs from the Rust virtiofsd (README column). */
  rust?: string;
}

/**
 * Every option, in the order --help and the README show them. The README's
 * options reference is generated from this table (scripts/options-reference.ts),
 * and a test fails when they differ.
 */
export const OPTIONS: Record<string, OptionDef> = {
  'socket-path': {
    group: 'Socket',
    type: 'string',
    describe: 'vhost-user socket to listen on (a pid file SOCKET.pid is locked beside it)',
  },
  socket: { group: 'Socket', type: 'string', describe: 'deprecated alias of --socket-path' },
  fd: {
    group: 'Socket',
    type: 'number',
    describe: 'an already-listening socket fd (as libvirt passes it); systemd socket activation (LISTEN_FDS) is the same',
  },
  'socket-group': { group: 'Socket', type: 'string', describe: 'group that may connect to the socket (mode 0660)' },
  'shared-dir': { group: 'Share', type: 'string', describe: 'host directory to share' },
  tag: {
    group: 'Share',
    type: 'string',
    describe: 'virtio-fs tag served in the device config (for a generic vhost-user device); 1 to 36 bytes',
  },
  readonly: { group: 'Share', type: 'boolean', default: false, describe: 'share read-only (EROFS on every write)' },
  xattr: { group: 'Share', type: 'boolean', describe: 'extended attributes (off by default, as in virtiofsd)' },
  xattrmap: { group: 'Share', type: 'string', describe: 'xattr name mapping rules, virtiofsd(1) syntax (implies --xattr)' },
  'posix-acl': { group: 'Share', type: 'boolean', describe: 'POSIX ACLs (implies --xattr)' },
  'security-label': { group: 'Share', type: 'boolean', describe: "store the guest LSM's label of new files (implies --xattr)" },
  'posix-lock': {
    group: 'Share',
    type: 'boolean',
    describe: 'POSIX locks taken on the host (OFD locks)',
    rust: 'not in the Rust virtiofsd (its locks stay in the guest)',
  },
  flock: { group: 'Share', type: 'boolean', describe: 'flock(2) locks taken on the host', rust: 'not in the Rust virtiofsd' },
  'killpriv-v2': { group: 'Share', type: 'boolean', describe: 'FUSE_HANDLE_KILLPRIV_V2: the daemon drops set-id bits on write' },
  'announce-submounts': { group: 'Share', type: 'boolean', describe: 'tell the guest which directories are mount points' },
  'preserve-noatime': { group: 'Share', type: 'boolean', describe: "keep the guest's O_NOATIME (dropped by default)" },
  'allow-direct-io': { group: 'Share', type: 'boolean', describe: "honour the guest's O_DIRECT on the host" },
  'inode-file-handles': {
    group: 'Share',
    type: 'string',
    describe: 'hold inodes as file handles: never (default), prefer (also the bare flag; fallback is its old name), mandatory',
  },
  'rlimit-nofile': { group: 'Share', type: 'string', describe: 'RLIMIT_NOFILE to set (0: leave; default min(1000000, fs.nr_open))' },
  'thread-pool-size': {
    group: 'Share',
    type: 'number',
    describe:
      'libuv pool threads (libvirt <thread_pool size>); above 0, LOOKUP, GETATTR, STATX, OPEN and READ/WRITE of 64 KiB and more run there too, for shares on slow file systems',
  },
  cache: { group: 'Caching and DAX', choices: CACHE_POLICIES, default: 'auto' as CachePolicy, describe: 'guest cache policy' },
  writeback: { group: 'Caching and DAX', type: 'boolean', describe: 'guest write-back cache' },
  readdirplus: { group: 'Caching and DAX', type: 'boolean', describe: 'READDIRPLUS (default on, off with --cache never)' },
  'allow-mmap': {
    group: 'Caching and DAX',
    type: 'boolean',
    describe: 'let the guest mmap files opened with direct I/O (--cache never, metadata): FUSE_DIRECT_IO_ALLOW_MMAP, Linux >= 6.6',
  },
  'dax-window': {
    group: 'Caching and DAX',
    type: 'string',
    describe: 'DAX window size (bytes, or with a K/M/G suffix); off by default',
    rust: 'no DAX in the Rust virtiofsd',
  },
  'dax-policy': {
    group: 'Caching and DAX',
    choices: DAX_POLICIES,
    describe: "files offered for DAX: inode (default; the file's own DAX attribute), large (>= 32 KiB), always, never",
  },
  'translate-uid': { group: 'Identity', type: 'string', array: true, describe: 'uid translation, e.g. map:GUEST:HOST:COUNT (repeatable)' },
  'translate-gid': { group: 'Identity', type: 'string', array: true, describe: 'gid translation, e.g. map:GUEST:HOST:COUNT (repeatable)' },
  'uid-map': {
    group: 'Identity',
    type: 'string',
    array: true,
    describe: 'unprivileged namespace mode: uid map :INSIDE:OUTSIDE:COUNT: (repeatable)',
  },
  'gid-map': {
    group: 'Identity',
    type: 'string',
    array: true,
    describe: 'unprivileged namespace mode: gid map :INSIDE:OUTSIDE:COUNT: (repeatable)',
  },
  sandbox: {
    group: 'Sandbox',
    choices: SANDBOX_MODES,
    describe: 'confinement: namespace (default where possible), chroot, none',
    rust: 'Rust: namespace, and an unprivileged start fails without --sandbox none',
  },
  seccomp: {
    group: 'Sandbox',
    choices: SECCOMP_MODES,
    default: 'kill' as SeccompMode,
    describe: 'syscall filter action: kill (default), log, trap, none',
  },
  modcaps: { group: 'Sandbox', type: 'string', describe: 'capabilities to add/remove, e.g. +sys_admin:-mknod' },
  'log-level': {
    group: 'Logging and metrics',
    choices: LOG_THRESHOLDS,
    default: 'info' as LogThreshold,
    describe: 'least severe messages shown; debug adds one line per FUSE request',
  },
  syslog: { group: 'Logging and metrics', type: 'boolean', describe: 'log to syslog (/dev/log, facility daemon) instead of stderr' },
  'metrics-socket': {
    group: 'Logging and metrics',
    type: 'string',
    describe: 'socket that answers each connection with the metrics JSON (also dumped on SIGUSR1)',
  },
  'print-capabilities': {
    group: 'Compatibility',
    type: 'boolean',
    default: false,
    describe: 'print the back-end capabilities JSON and exit',
  },
  o: {
    group: 'Compatibility',
    type: 'string',
    array: true,
    describe: 'legacy virtiofsd options, e.g. source=DIR,cache=none,xattr,sandbox=chroot,log_level=debug',
  },
  f: { group: 'Compatibility', type: 'boolean', describe: 'foreground (always; accepted for compatibility)' },
  d: { group: 'Compatibility', type: 'boolean', describe: 'debug logging (same as --log-level debug)' },
  help: { group: 'Compatibility', alias: 'h', type: 'boolean', describe: 'show this help and exit' },
  version: { group: 'Compatibility', alias: 'V', type: 'boolean', describe: 'print the version and exit' },
};

const USAGE = '$0 --socket-path PATH --shared-dir DIR [options]\n$0 --fd N --shared-dir DIR [options]\n$0 probe --socket-path PATH';

/** The daemon's yargs parser, built from OPTIONS. */
export function parser(argv: string[]): ReturnType<typeof yargs> {
  const y = yargs(argv)
    .scriptName('virtiofsd-ts')
    .usage(USAGE)
    // One name per flag in every message ("Unknown argument: fooBar, foo-bar" otherwise).
    .parserConfiguration({ 'camel-case-expansion': false, 'strip-aliased': true })
    .strict()
    .help(false)
    .version(false)
    .wrap(Math.min(110, process.stdout.columns ?? 110))
    .exitProcess(false)
    .fail((msg, err) => {
      // yargs spreads some messages over lines; the user gets one.
      throw new UsageError((msg ?? err?.message ?? 'invalid arguments').replace(/\s*\n\s*/g, ' '));
    });
  for (const [name, def] of Object.entries(OPTIONS)) {
    const { group, rust: _rust, ...options } = def;
    y.option(name, { ...options, group: `${group}:` });
  }
  return y;
}

/** The package's version (package.json sits one level above src/ and dist/). */
export function version(): string {
  return (JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', 'package.json'), 'utf8')) as { version: string }).version;
}

/**
 * Parses and validates the daemon's command line into a DaemonConfig; throws
 * UsageError. `env`/`pid` are where systemd's socket activation is read from.
 */
export function parseArgs(argv: string[], env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): ParsedCommand {
  // --help and --version win over everything else on the line, as in the Rust virtiofsd.
  if (argv.some((a) => a === '--help' || a === '-h')) return { kind: 'help' };
  if (argv.some((a) => a === '--version' || a === '-V')) return { kind: 'version' };
  const args = parser(argv).parseSync() as Record<string, unknown> & {
    [k: string]: unknown;
  };
  const str = (k: string) => args[k] as string | undefined;
  const bool = (k: string) => args[k] as boolean | undefined;
  const list = (k: string) => (args[k] as (string | number)[] | undefined)?.map(String);

  if (args['print-capabilities']) return { kind: 'capabilities' };

  const switches: Partial<Record<Switch, boolean>> = {
    xattr: bool('xattr'),
    posixAcl: bool('posix-acl'),
    securityLabel: bool('security-label'),
    posixLock: bool('posix-lock'),
    flock: bool('flock'),
    writeback: bool('writeback'),
    readdirplus: bool('readdirplus'),
    allowDirectIo: bool('allow-direct-io'),
    killprivV2: bool('killpriv-v2'),
    announceSubmounts: bool('announce-submounts'),
    allowMmap: bool('allow-mmap'),
    syslog: bool('syslog'),
  };
  const notices: string[] = [];
  let sharedDir = str('shared-dir');
  let cache = args.cache as CachePolicy;
  let logLevel: LogThreshold = args.d ? 'debug' : (args['log-level'] as LogThreshold);
  let xattrmap = str('xattrmap');
  let timeout: number | undefined;
  let sandbox = args.sandbox as SandboxMode | undefined;
  let modcaps = str('modcaps');
  let inodeFileHandles = str('inode-file-handles');
  let threadPoolSize = args['thread-pool-size'] as number | undefined;
  for (const group of list('o') ?? []) {
    for (const item of splitOptions(group)) {
      const [key, value] = splitOnce(item, '=');
      if (value === undefined && key in LEGACY_SWITCHES) switches[LEGACY_SWITCHES[key as keyof typeof LEGACY_SWITCHES]] = true;
      else if (value === undefined && key.startsWith('no_') && key.slice(3) in LEGACY_SWITCHES) {
        switches[LEGACY_SWITCHES[key.slice(3) as keyof typeof LEGACY_SWITCHES]] = false;
      } else if (key === 'source' && value) sharedDir = value;
      else if (key === 'cache' && value && LEGACY_CACHE[value]) cache = LEGACY_CACHE[value];
      else if ((key === 'log_level' || key === 'loglevel') && value && LEGACY_LOG_LEVEL[value]) logLevel = LEGACY_LOG_LEVEL[value];
      else if (key === 'debug' && value === undefined) logLevel = 'debug';
      else if (key === 'xattrmap' && value) xattrmap = value;
      else if (key === 'timeout' && value !== undefined) timeout = parseSeconds(value);
      else if (key === 'sandbox' && value && (SANDBOX_MODES as readonly string[]).includes(value)) sandbox = value as SandboxMode;
      else if (key === 'modcaps' && value) modcaps = value;
      else if (key === 'inode_file_handles' && value !== undefined) inodeFileHandles = value;
      else if (key === 'thread_pool_size' && value !== undefined) threadPoolSize = parseCount(value, '-o thread_pool_size');
      else throw new UsageError(`unsupported -o option '${item}'`);
    }
  }

  let socketPath = str('socket-path');
  if (str('socket') !== undefined) {
    if (socketPath !== undefined) throw new UsageError('--socket is the old name of --socket-path: give one of them');
    socketPath = str('socket');
    notices.push('--socket is deprecated: use --socket-path');
  }
  let fd = args.fd as number | undefined;
  if (socketPath !== undefined && fd !== undefined) throw new UsageError('give one of --socket-path or --fd, not both');
  // systemd socket activation (LISTEN_FDS/LISTEN_PID) is --fd 3 when the command line names no socket.
  if (socketPath === undefined && fd === undefined) {
    const activated = listenFd(env, pid);
    if (activated) {
      fd = activated.fd;
      if (activated.extra > 0)
        notices.push(`socket activation passed ${activated.extra + 1} fds: serving fd ${fd}, the others are left alone`);
    }
  }
  if (socketPath === undefined && fd === undefined) {
    throw new UsageError('a socket is required: --socket-path PATH, --fd N, or systemd socket activation');
  }
  if (sharedDir === undefined) throw new UsageError('--shared-dir (or -o source=DIR) is required');

  const resolvedDir = path.resolve(sharedDir);
  let st: fs.Stats;
  try {
    st = fs.statSync(resolvedDir);
  } catch (err) {
    throw new UsageError(`shared directory ${resolvedDir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (!st.isDirectory()) throw new UsageError(`shared directory ${resolvedDir} is not a directory`);

  if (socketPath !== undefined) {
    checkSocketPath(socketPath);
    // Both reference daemons lock SOCKET.pid: its name must fit where the socket's does.
    if (Buffer.byteLength(path.resolve(socketPath) + '.pid') > 4095)
      throw new UsageError(`socket path ${socketPath} is too long for its pid file`);
  }
  if (fd !== undefined) checkListeningFd(fd);
  const metricsSocket = str('metrics-socket');
  if (metricsSocket !== undefined) checkSocketPath(metricsSocket, '--metrics-socket');

  if (xattrmap !== undefined) checkSyntax(() => new XattrMap(xattrmap!), '--xattrmap');
  const translateUid = list('translate-uid') ?? [];
  const translateGid = list('translate-gid') ?? [];
  checkSyntax(() => new IdMap(translateUid), '--translate-uid');
  checkSyntax(() => new IdMap(translateGid), '--translate-gid');
  // Translated ids would not match the ids stored inside ACL xattrs.
  if (switches.posixAcl && (translateUid.length > 0 || translateGid.length > 0)) {
    throw new UsageError('--translate-uid/--translate-gid cannot be combined with --posix-acl');
  }
  const uidMapNs = (list('uid-map') ?? []).map((m) => checkIdMap(m, '--uid-map'));
  const gidMapNs = (list('gid-map') ?? []).map((m) => checkIdMap(m, '--gid-map'));
  const daxWindow = str('dax-window') !== undefined ? parseWindowSize(str('dax-window')!) : undefined;
  if (args['dax-policy'] !== undefined && daxWindow === undefined) throw new UsageError('--dax-policy needs --dax-window');
  const tag = str('tag');

  // The Rust virtiofsd: a bare --inode-file-handles is prefer; fallback is prefer's old name.
  if (inodeFileHandles === '' || inodeFileHandles === 'fallback') {
    if (inodeFileHandles === 'fallback') notices.push('--inode-file-handles=fallback is the old name of prefer');
    inodeFileHandles = 'prefer';
  }
  if (inodeFileHandles !== undefined && !(INODE_FILE_HANDLES as readonly string[]).includes(inodeFileHandles)) {
    throw new UsageError(`--inode-file-handles ${inodeFileHandles}: expected never, prefer or mandatory`);
  }
  if (threadPoolSize !== undefined) {
    if (!Number.isSafeInteger(threadPoolSize) || threadPoolSize < 0)
      throw new UsageError(`--thread-pool-size ${threadPoolSize}: expected a whole number`);
  }
  if (switches.allowMmap && cache !== 'never' && cache !== 'metadata') {
    notices.push(
      `--allow-mmap: only files opened with direct I/O are concerned (--cache never or metadata); with --cache ${cache} it changes nothing`,
    );
  }

  return {
    kind: 'daemon',
    config: {
      socketPath: socketPath !== undefined ? path.resolve(socketPath) : undefined,
      fd,
      socketGroup: str('socket-group'),
      sharedDir: resolvedDir,
      cache,
      readonly: bool('readonly') ?? false,
      logLevel,
      timeout,
      ...definedOnly(switches),
      xattrmap,
      preserveNoatime: bool('preserve-noatime'),
      inodeFileHandles: (inodeFileHandles as InodeFileHandles | undefined) ?? 'never',
      rlimitNofile: str('rlimit-nofile') !== undefined ? parseCount(String(str('rlimit-nofile')), '--rlimit-nofile') : undefined,
      threadPoolSize,
      translateUid,
      translateGid,
      daxWindow,
      daxPolicy: daxWindow !== undefined ? ((args['dax-policy'] as DaxPolicy | undefined) ?? DEFAULT_DAX_POLICY) : undefined,
      tag: tag !== undefined ? checkTag(tag) : undefined,
      sandbox: sandbox ?? 'namespace',
      sandboxExplicit: sandbox !== undefined,
      seccomp: args.seccomp as SeccompMode,
      modcaps,
      uidMapNs,
      gidMapNs,
      metricsSocket: metricsSocket !== undefined ? path.resolve(metricsSocket) : undefined,
      pidFile: socketPath !== undefined ? path.resolve(socketPath) + '.pid' : undefined,
      notices,
    },
  };
}

/** The virtio-fs config holds the tag in 36 bytes (NUL-padded, no NUL needed when full). */
function checkTag(tag: string): string {
  const n = Buffer.byteLength(tag);
  if (n === 0 || n > VIRTIO_FS_TAG_SIZE || tag.includes('\0'))
    throw new UsageError(`--tag must be 1 to ${VIRTIO_FS_TAG_SIZE} bytes without NUL`);
  return tag;
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** `-o` lists are comma-separated; `\,` is a comma inside a value (an xattrmap rule may need one). */
function splitOptions(group: string): string[] {
  return group
    .split(/(?<!\\),/)
    .map((s) => s.replace(/\\,/g, ','))
    .filter(Boolean);
}

function splitOnce(s: string, sep: string): [string, string | undefined] {
  const i = s.indexOf(sep);
  return i < 0 ? [s, undefined] : [s.slice(0, i), s.slice(i + 1)];
}

function checkSyntax(parse: () => unknown, option: string): void {
  try {
    parse();
  } catch (err) {
    throw new UsageError(`${option}: ${(err as Error).message}`);
  }
}

/** A user-namespace map as the Rust virtiofsd and libvirt write it: `:INSIDE:OUTSIDE:COUNT:` (colons at the ends optional). */
function checkIdMap(value: string, option: string): string {
  const m = /^:?(\d+):(\d+):(\d+):?$/.exec(value);
  if (!m || Number(m[3]) === 0) throw new UsageError(`${option} ${value}: expected :INSIDE:OUTSIDE:COUNT:`);
  return `${m[1]}:${m[2]}:${m[3]}`;
}

function parseSeconds(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new UsageError(`-o timeout=${value}: expected a number of seconds`);
  return n;
}

function parseCount(value: string, option: string): number {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) throw new UsageError(`${option} ${value}: expected a whole number`);
  return Number(value);
}

/** "512M", "1G", "2097152": a whole number of pages, at least one 2 MiB DAX range. */
export function parseWindowSize(value: string): bigint {
  const m = /^(\d+)([KMGT]?)i?B?$/i.exec(value.trim());
  if (!m) throw new UsageError(`--dax-window ${value}: expected a size such as 1G, 512M or 1073741824`);
  const bytes = BigInt(m[1]) * SIZE_SUFFIX[m[2].toUpperCase()];
  if (bytes < DAX_RANGE) throw new UsageError(`--dax-window ${value}: the window must hold at least one 2 MiB range`);
  if (bytes % PAGE !== 0n) throw new UsageError(`--dax-window ${value}: the window must be a whole number of 4 KiB pages`);
  return bytes;
}

function checkSocketPath(socketPath: string, option = 'socket path'): void {
  if (Buffer.byteLength(path.resolve(socketPath)) >= 108) throw new UsageError(`${option} ${socketPath} is too long (108 bytes at most)`);
  const dir = path.dirname(path.resolve(socketPath));
  try {
    if (!fs.statSync(dir).isDirectory()) throw new UsageError(`socket directory ${dir} is not a directory`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`socket directory ${dir}: ${(err as NodeJS.ErrnoException).code}`);
  }
  try {
    if (!fs.lstatSync(socketPath).isSocket()) throw new UsageError(`${socketPath} exists and is not a socket`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
  }
}

/** Whether `fd` is a socket in the listening state (SO_ACCEPTCONN), as UnixListener.isListening. */
function isListening(fd: number): boolean {
  const value = Buffer.alloc(4);
  getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, value, Int32Array.of(4));
  return value.readInt32LE(0) !== 0;
}

function checkListeningFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new UsageError(`--fd ${fd} is not a file descriptor`);
  try {
    if (!fs.fstatSync(fd).isSocket()) throw new UsageError(`--fd ${fd} is not a socket`);
    if (!isListening(fd)) throw new UsageError(`--fd ${fd} is a socket that is not listening`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--fd ${fd}: ${(err as NodeJS.ErrnoException).code}`);
  }
}

/** Entry point of the `virtiofsd-ts` command. Resolves with the exit status. */
/** The signals that stop the daemon cleanly. */
const STOP_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

export async function main(argv: string[], launch: { stopEarly?: () => void } = {}): Promise<number> {
  if (argv[0] === 'probe') {
    const { probeMain } = await import('./guest/probe');
    return probeMain(argv.slice(1));
  }
  let parsed: ParsedCommand;
  try {
    parsed = parseArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`virtiofsd-ts: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  if (parsed.kind === 'capabilities') {
    process.stdout.write(JSON.stringify(CAPABILITIES) + '\n');
    return 0;
  }
  if (parsed.kind === 'help') {
    parser([]).showHelp((text) => process.stdout.write(text + '\n'));
    return 0;
  }
  if (parsed.kind === 'version') {
    process.stdout.write(`virtiofsd-ts ${version()}\n`);
    return 0;
  }
  const config = parsed.config;
  // libuv sizes its thread pool (large READ/WRITE, FSYNC) from this when the pool first starts, which
  // is after this line; the sandbox's relaunch inherits it. libuv takes 1..1024; 0 (no pool, for the
  // Rust virtiofsd) becomes 1.
  if (parsed.config.threadPoolSize !== undefined)
    process.env.UV_THREADPOOL_SIZE = String(Math.min(1024, Math.max(1, parsed.config.threadPoolSize)));
  // Lines before the daemon's logger exists: with journal priorities when stderr is the journal.
  const journal = stderrIsJournal();
  const say = (severity: number, msg: string): void => void process.stderr.write(`${journal ? `<${severity}>` : ''}virtiofsd-ts: ${msg}\n`);
  // Warnings before the daemon's logger exists look like its lines (time, level; the journal's
  // priority) and obey --log-level; failures keep the one-line `virtiofsd-ts: ...` of a command.
  const warn = (msg: string): void => {
    if (enabled(config.logLevel ?? 'info', 'warn')) process.stderr.write(`${formatLine('warn', msg, { journal })}\n`);
  };
  // Loaded only now: these need the native addon (and say so clearly when it is missing).
  let sandboxModule: typeof import('./sandbox');
  let daemonModule: typeof import('./daemon');
  try {
    sandboxModule = await import('./sandbox');
    daemonModule = await import('./daemon');
  } catch (err) {
    say(SEVERITY.error, (err as Error).message);
    return 1;
  }
  const { prepareSandbox, INSIDE_ENV } = sandboxModule;
  const { Daemon, openOutside, releasePidFile } = daemonModule;
  const relaunched = process.env[INSIDE_ENV] === '1';
  const explicitFd = argv.some((a) => a === '--fd' || a.startsWith('--fd='));
  let daemon: InstanceType<typeof Daemon> | undefined;
  // Each ends the daemon cleanly (exit 0): waiting requests fail, mappings go, socket and pid file go.
  const onStopSignal = (): void => daemon?.stop(0);
  try {
    // The pid file, the notify and syslog sockets: opened while their paths are reachable.
    openOutside(config, process.env, !explicitFd, warn);
    daemon = new Daemon(config);
    // Before anything is served: the sandbox may re-exec this command inside new namespaces.
    config.sandbox = prepareSandbox(config, warn);
    // From here a stop ends the daemon cleanly; a signal that arrives during start() is handled
    // once it returns (as pid 1 of a pid namespace, a signal without a handler would be ignored).
    for (const signal of STOP_SIGNALS) {
      if (launch.stopEarly) process.off(signal, launch.stopEarly);
      process.once(signal, onStopSignal);
    }
    daemon.start();
  } catch (err) {
    say(SEVERITY.error, (err as Error).message);
    // In the relaunched daemon of a sandbox the path may name a file of the share: the launcher removes it.
    releasePidFile(config, !relaunched || config.sandbox === 'none');
    return 1;
  }
  const code = await daemon.done;
  for (const signal of STOP_SIGNALS) process.off(signal, onStopSignal);
  return code;
}
