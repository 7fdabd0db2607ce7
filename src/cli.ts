import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs from 'yargs';
import { CACHE_POLICIES, CachePolicy, DaemonConfig } from './config';
import { LOG_LEVELS, LogLevel } from './log';

/** A bad command line: printed as one line on stderr, exit status 1. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** What `--print-capabilities` prints: the vhost-user back-end JSON (QEMU docs/interop/vhost-user.json). */
export const CAPABILITIES = { type: 'fs', features: ['separate-options'] };

/** The reference daemon's `-o cache=none` is our `never`. */
const LEGACY_CACHE: Record<string, CachePolicy> = { none: 'never', auto: 'auto', always: 'always', metadata: 'metadata' };

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
    .option('log-level', { choices: LOG_LEVELS, default: 'info' as LogLevel })
    .option('print-capabilities', { type: 'boolean', default: false, describe: 'print the back-end capabilities JSON' })
    .option('o', { type: 'string', array: true, describe: 'legacy virtiofsd options: source=DIR,cache=none|auto|always,log_level=L' })
    .option('f', { type: 'boolean', describe: 'foreground (always; accepted for compatibility)' })
    .option('d', { type: 'boolean', describe: 'debug logging (same as --log-level debug)' })
    .strict()
    .help()
    .version(false)
    .exitProcess(false)
    .fail((msg, err) => {
      throw new UsageError(msg ?? err?.message ?? 'invalid arguments');
    })
    .parseSync();

  if (args['print-capabilities']) return { kind: 'capabilities' };

  let sharedDir = args['shared-dir'];
  let cache = args.cache;
  let logLevel: LogLevel = args.d ? 'debug' : args['log-level'];
  for (const group of args.o ?? []) {
    for (const item of group.split(',').filter(Boolean)) {
      const [key, value] = splitOnce(item, '=');
      if (key === 'source' && value) sharedDir = value;
      else if (key === 'cache' && value && LEGACY_CACHE[value]) cache = LEGACY_CACHE[value];
      else if (key === 'log_level' && value && (LOG_LEVELS as string[]).includes(value)) logLevel = value as LogLevel;
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
    },
  };
}

function splitOnce(s: string, sep: string): [string, string | undefined] {
  const i = s.indexOf(sep);
  return i < 0 ? [s, undefined] : [s.slice(0, i), s.slice(i + 1)];
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
    daemon.start();
  } catch (err) {
    process.stderr.write(`virtiofsd-ts: ${(err as Error).message}\n`);
    return 1;
  }
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => daemon.stop(0));
  return daemon.done;
}
