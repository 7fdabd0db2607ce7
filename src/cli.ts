import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs from 'yargs';
import { UnixListener } from './sys';
import { CACHE_POLICIES, CachePolicy, DAX_POLICIES, DaemonConfig, DaxPolicy, INODE_FILE_HANDLES, InodeFileHandles } from './config';
import { IdMap } from './fuse-server/id-map';
import { XattrMap } from './fuse-server/xattr-map';
import { LOG_LEVELS, LogLevel } from './log';
import { SANDBOX_MODES, prepareSandbox, type SandboxMode } from './sandbox';
import { SECCOMP_MODES, type SeccompMode } from './sandbox/seccomp';

/** A bad command line: printed as one line on stderr, exit status 1. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** What `--print-capabilities` prints: the vhost-user back-end JSON (QEMU docs/interop/vhost-user.json). */
export const CAPABILITIES = { type: 'fs', features: ['separate-options'] };

/** The reference daemon's `-o cache=none` is our `never`. */
const LEGACY_CACHE: Record<string, CachePolicy> = { none: 'never', auto: 'auto', always: 'always', metadata: 'metadata' };
/** The reference daemon's log level names. */
const LEGACY_LOG_LEVEL: Record<string, LogLevel> = { err: 'error', error: 'error', warn: 'warn', info: 'info', debug: 'debug' };

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
} as const satisfies Record<string, keyof DaemonConfig>;
type Switch = (typeof LEGACY_SWITCHES)[keyof typeof LEGACY_SWITCHES];

/** Bytes per unit suffix of `--dax-window`. */
const SIZE_SUFFIX: Record<string, bigint> = { '': 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n };
/** The guest maps the window in 2 MiB ranges (FUSE_DAX_SZ); pages are the mapping alignment. */
const DAX_RANGE = 2n << 20n;
const PAGE = 4096n;

export type ParsedCommand = { kind: 'capabilities' } | { kind: 'daemon'; config: DaemonConfig };

/** Parses and validates the daemon's command line into a DaemonConfig; throws UsageError. */
export function parseArgs(argv: string[]): ParsedCommand {
  const args = yargs(argv)
    .scriptName('virtiofsd-ts')
    .usage('$0 --socket-path PATH --shared-dir DIR [options]\n$0 probe --socket-path PATH')
    .option('socket-path', { type: 'string', describe: 'vhost-user socket to listen on' })
    .option('fd', { type: 'number', describe: 'an already-listening socket fd (as libvirt passes it)' })
    .option('socket-group', { type: 'string', describe: 'group that may connect to the socket (mode 0660)' })
    .option('shared-dir', { type: 'string', describe: 'host directory to share' })
    .option('cache', { choices: CACHE_POLICIES, default: 'auto' as CachePolicy, describe: 'guest cache policy' })
    .option('readonly', { type: 'boolean', default: false, describe: 'share read-only (EROFS on every write)' })
    .option('xattr', { type: 'boolean', describe: 'extended attributes (off by default, as in virtiofsd)' })
    .option('xattrmap', { type: 'string', describe: 'xattr name mapping rules, virtiofsd(1) syntax (implies --xattr)' })
    .option('posix-acl', { type: 'boolean', describe: 'POSIX ACLs (implies --xattr)' })
    .option('security-label', { type: 'boolean', describe: "store the guest LSM's label of new files (implies --xattr)" })
    .option('posix-lock', { type: 'boolean', describe: 'POSIX locks taken on the host (OFD locks)' })
    .option('flock', { type: 'boolean', describe: 'flock(2) locks taken on the host' })
    .option('writeback', { type: 'boolean', describe: 'guest write-back cache' })
    .option('readdirplus', { type: 'boolean', describe: 'READDIRPLUS (default on, off with --cache never)' })
    .option('allow-direct-io', { type: 'boolean', describe: "honour the guest's O_DIRECT on the host" })
    .option('killpriv-v2', { type: 'boolean', describe: 'FUSE_HANDLE_KILLPRIV_V2: the daemon drops set-id bits on write' })
    .option('announce-submounts', { type: 'boolean', describe: 'tell the guest which directories are mount points' })
    .option('preserve-noatime', { type: 'boolean', describe: "keep the guest's O_NOATIME (dropped by default)" })
    .option('inode-file-handles', { choices: INODE_FILE_HANDLES, describe: 'hold inodes as file handles: never (default), prefer, mandatory' })
    .option('rlimit-nofile', { type: 'string', describe: 'RLIMIT_NOFILE to set (0: leave; default min(1000000, fs.nr_open))' })
    .option('translate-uid', { type: 'string', array: true, describe: 'uid translation, e.g. map:GUEST:HOST:COUNT (repeatable)' })
    .option('translate-gid', { type: 'string', array: true, describe: 'gid translation, e.g. map:GUEST:HOST:COUNT (repeatable)' })
    .option('dax-window', { type: 'string', describe: 'DAX window size (bytes, or with a K/M/G suffix); off by default' })
    .option('dax-policy', { choices: DAX_POLICIES, describe: 'files offered for DAX: always (default), never, inode (>= 32 KiB)' })
    .option('sandbox', { choices: SANDBOX_MODES, describe: 'confinement: namespace (default where possible), chroot, none' })
    .option('seccomp', { choices: SECCOMP_MODES, default: 'kill' as SeccompMode, describe: 'syscall filter action: kill (default), log, trap, none' })
    .option('modcaps', { type: 'string', describe: 'capabilities to add/remove, e.g. +sys_admin:-mknod' })
    .option('uid-map', { type: 'string', array: true, describe: 'unprivileged namespace mode: uid map :INSIDE:OUTSIDE:COUNT: (repeatable)' })
    .option('gid-map', { type: 'string', array: true, describe: 'unprivileged namespace mode: gid map :INSIDE:OUTSIDE:COUNT: (repeatable)' })
    .option('log-level', { choices: LOG_LEVELS, default: 'info' as LogLevel })
    .option('print-capabilities', { type: 'boolean', default: false, describe: 'print the back-end capabilities JSON' })
    .option('o', { type: 'string', array: true, describe: 'legacy virtiofsd options, e.g. source=DIR,cache=none,xattr,timeout=N' })
    .option('f', { type: 'boolean', describe: 'foreground (always; accepted for compatibility)' })
    .option('d', { type: 'boolean', describe: 'debug logging (same as --log-level debug)' })
    .strict()
    .help()
    .version(false)
    .exitProcess(false)
    .fail((msg, err) => {
      // yargs spreads some messages over lines; the user gets one.
      throw new UsageError((msg ?? err?.message ?? 'invalid arguments').replace(/\s*\n\s*/g, ' '));
    })
    .parseSync();

  if (args['print-capabilities']) return { kind: 'capabilities' };

  const switches: Partial<Record<Switch, boolean>> = {
    xattr: args.xattr,
    posixAcl: args['posix-acl'],
    securityLabel: args['security-label'],
    posixLock: args['posix-lock'],
    flock: args.flock,
    writeback: args.writeback,
    readdirplus: args.readdirplus,
    allowDirectIo: args['allow-direct-io'],
    killprivV2: args['killpriv-v2'],
    announceSubmounts: args['announce-submounts'],
  };
  let sharedDir = args['shared-dir'];
  let cache = args.cache;
  let logLevel: LogLevel = args.d ? 'debug' : args['log-level'];
  let xattrmap = args.xattrmap;
  let timeout: number | undefined;
  let sandbox = args.sandbox as SandboxMode | undefined;
  let modcaps = args.modcaps;
  for (const group of args.o ?? []) {
    for (const item of splitOptions(group)) {
      const [key, value] = splitOnce(item, '=');
      if (value === undefined && key in LEGACY_SWITCHES) switches[LEGACY_SWITCHES[key as keyof typeof LEGACY_SWITCHES]] = true;
      else if (value === undefined && key.startsWith('no_') && key.slice(3) in LEGACY_SWITCHES) {
        switches[LEGACY_SWITCHES[key.slice(3) as keyof typeof LEGACY_SWITCHES]] = false;
      } else if (key === 'source' && value) sharedDir = value;
      else if (key === 'cache' && value && LEGACY_CACHE[value]) cache = LEGACY_CACHE[value];
      else if (key === 'log_level' && value && LEGACY_LOG_LEVEL[value]) logLevel = LEGACY_LOG_LEVEL[value];
      else if (key === 'debug' && value === undefined) logLevel = 'debug';
      else if (key === 'xattrmap' && value) xattrmap = value;
      else if (key === 'timeout' && value !== undefined) timeout = parseSeconds(value);
      else if (key === 'sandbox' && value && (SANDBOX_MODES as readonly string[]).includes(value)) sandbox = value as SandboxMode;
      else if (key === 'modcaps' && value) modcaps = value;
      else throw new UsageError(`unsupported -o option '${item}'`);
    }
  }

  const socketPath = args['socket-path'];
  const fd = args.fd;
  if ((socketPath === undefined) === (fd === undefined)) throw new UsageError('exactly one of --socket-path or --fd is required');
  if (sharedDir === undefined) throw new UsageError('--shared-dir (or -o source=DIR) is required');

  const resolvedDir = path.resolve(sharedDir);
  let st: fs.Stats;
  try {
    st = fs.statSync(resolvedDir);
  } catch (err) {
    throw new UsageError(`shared directory ${resolvedDir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (!st.isDirectory()) throw new UsageError(`shared directory ${resolvedDir} is not a directory`);

  if (socketPath !== undefined) checkSocketPath(socketPath);
  if (fd !== undefined) checkListeningFd(fd);

  if (xattrmap !== undefined) checkSyntax(() => new XattrMap(xattrmap!), '--xattrmap');
  const translateUid = args['translate-uid'] ?? [];
  const translateGid = args['translate-gid'] ?? [];
  checkSyntax(() => new IdMap(translateUid), '--translate-uid');
  checkSyntax(() => new IdMap(translateGid), '--translate-gid');
  // Translated ids would not match the ids stored inside ACL xattrs.
  if (switches.posixAcl && (translateUid.length > 0 || translateGid.length > 0)) {
    throw new UsageError('--translate-uid/--translate-gid cannot be combined with --posix-acl');
  }
  const uidMapNs = (args['uid-map'] ?? []).map((m) => checkIdMap(m, '--uid-map'));
  const gidMapNs = (args['gid-map'] ?? []).map((m) => checkIdMap(m, '--gid-map'));
  const daxWindow = args['dax-window'] !== undefined ? parseWindowSize(args['dax-window']) : undefined;
  if (args['dax-policy'] !== undefined && daxWindow === undefined) throw new UsageError('--dax-policy needs --dax-window');

  return {
    kind: 'daemon',
    config: {
      socketPath: socketPath !== undefined ? path.resolve(socketPath) : undefined,
      fd,
      socketGroup: args['socket-group'],
      sharedDir: resolvedDir,
      cache,
      readonly: args.readonly,
      logLevel,
      timeout,
      ...definedOnly(switches),
      xattrmap,
      preserveNoatime: args['preserve-noatime'],
      inodeFileHandles: (args['inode-file-handles'] as InodeFileHandles | undefined) ?? 'never',
      rlimitNofile: args['rlimit-nofile'] !== undefined ? parseCount(args['rlimit-nofile'], '--rlimit-nofile') : undefined,
      translateUid,
      translateGid,
      daxWindow,
      daxPolicy: daxWindow !== undefined ? ((args['dax-policy'] as DaxPolicy | undefined) ?? 'always') : undefined,
      sandbox: sandbox ?? 'namespace',
      sandboxExplicit: sandbox !== undefined,
      seccomp: args.seccomp,
      modcaps,
      uidMapNs,
      gidMapNs,
    },
  };
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

function checkSocketPath(socketPath: string): void {
  if (Buffer.byteLength(path.resolve(socketPath)) >= 108) throw new UsageError(`socket path ${socketPath} is too long (108 bytes at most)`);
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

function checkListeningFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new UsageError(`--fd ${fd} is not a file descriptor`);
  try {
    if (!fs.fstatSync(fd).isSocket()) throw new UsageError(`--fd ${fd} is not a socket`);
    if (!UnixListener.isListening(fd)) throw new UsageError(`--fd ${fd} is a socket that is not listening`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--fd ${fd}: ${(err as NodeJS.ErrnoException).code}`);
  }
}

/** Entry point of the `virtiofsd-ts` command. Resolves with the exit status. */
export async function main(argv: string[]): Promise<number> {
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
  const { Daemon } = await import('./daemon');
  const daemon = new Daemon(parsed.config);
  try {
    // Before anything is opened: the sandbox may re-exec this command inside new namespaces.
    parsed.config.sandbox = prepareSandbox(parsed.config, (msg) => process.stderr.write(`virtiofsd-ts: ${msg}\n`));
    daemon.start();
  } catch (err) {
    process.stderr.write(`virtiofsd-ts: ${(err as Error).message}\n`);
    return 1;
  }
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => daemon.stop(0));
  return daemon.done;
}
