/**
 * The virtio-fs back-ends tests can run against: our daemon (in-process, or
 * the built CLI as a child process), QEMU's C virtiofsd and the Rust
 * virtiofsd (trixie's build, run from the trixie root of scripts/peers/setup.sh). Each starts on a
 * fresh socket for one front-end connection and says which cases it cannot
 * serve, with the reason shown in the test's name.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Daemon } from '../../src/daemon';

export const REFERENCE_DAEMON = '/usr/lib/qemu/virtiofsd';
const REPO = path.resolve(__dirname, '../..');
export const CLI = path.join(REPO, 'bin/virtiofsd-ts.js');

/** Cases some back-end cannot serve. */
export type Capability =
  | 'dax'
  | 'multiQueue'
  | 'setlkw'
  | 'access'
  | 'checksHeaderLen'
  | 'survivesMalformedChains'
  | 'locks'
  | 'refusesSlashNames'
  | 'dotdotLookup'
  | 'eioBeforeInit'
  | 'answersMalformedRequests'
  | 'destroyReply';

export type Lacks = Partial<Record<Capability, string>>;

export const REFERENCE_LACKS: Lacks = {
  dax: 'C virtiofsd 7.2 has no DAX: no SHMEM protocol feature, SETUPMAPPING answers ENOSYS',
  multiQueue: 'C virtiofsd 7.2 serves exactly one request queue (queue index 2 aborts it)',
  setlkw: 'C virtiofsd 7.2 answers SETLKW with EOPNOTSUPP',
  access: 'C virtiofsd 7.2 answers ACCESS with ENOSYS (the kernel then checks permissions itself)',
  checksHeaderLen: 'C virtiofsd 7.2 ignores fuse_in_header.len and serves the request as if it matched',
  survivesMalformedChains: 'C virtiofsd 7.2 exits on a chain shorter than fuse_in_header',
};

/** The Rust virtiofsd (trixie's 1.13), the daemon users deploy today: scripts/peers/setup.sh. */
export const RUST_DAEMON = path.join(process.env.PEERS_CACHE_DIR ?? path.join(REPO, '.cache', 'peers'), 'bin', 'virtiofsd');

export const RUST_LACKS: Lacks = {
  dax: 'the Rust virtiofsd has no DAX: no SHMEM protocol feature, SETUPMAPPING answers ENOSYS',
  multiQueue: 'the Rust virtiofsd serves one request queue',
  locks: 'the Rust virtiofsd 1.13 has no POSIX or BSD locks: GETLK and SETLK answer ENOSYS',
  setlkw: 'the Rust virtiofsd 1.13 has no locks: SETLKW answers ENOSYS',
  refusesSlashNames: "the Rust virtiofsd 1.13 looks a name holding '/' up as a path beneath the directory (LOOKUP 'sub/f' succeeds)",
  dotdotLookup:
    "the Rust virtiofsd 1.13 answers LOOKUP '..' in a subdirectory with the subdirectory itself (Linux resolves '..' in its dcache and never asks)",
  eioBeforeInit: 'the Rust virtiofsd 1.13 answers requests before INIT with EBADF, not EIO',
  answersMalformedRequests:
    'the Rust virtiofsd 1.13 leaves a request with a truncated argument (GETATTR without fuse_getattr_in) unanswered',
  checksHeaderLen: 'the Rust virtiofsd 1.13 ignores fuse_in_header.len and serves the request as if it matched',
  survivesMalformedChains: 'the Rust virtiofsd 1.13 leaves a chain too short for a header, or without room for a reply, unanswered',
  destroyReply: "the Rust virtiofsd 1.13 returns FUSE_DESTROY's chain with nothing written (used length 0)",
};

export const OURS_LACKS: Lacks = {};

/** A back-end listening on `socketPath`, serving one connection. */
export interface RunningBackend {
  socketPath: string;
  /** The back-end's process id (this process for an in-process back-end). */
  pid: number;
  /** Resolves with the exit status once the back-end has ended (null: killed by a signal). */
  exited: Promise<number | null>;
  /** Whether it is still running. */
  alive(): boolean;
  /** What it logged, for failure messages. */
  log(): string;
  /** Ends it if it has not ended by itself, and removes its socket file. */
  stop(): Promise<void>;
}

/** Per-session choices a back-end may honour. */
export interface BackendOptions {
  /** Offer a DAX window of this many bytes (only back-ends that have DAX). */
  daxWindow?: number;
}

export interface Backend {
  name: string;
  lacks: Lacks;
  start(sharedDir: string, socketPath: string, options?: BackendOptions): Promise<RunningBackend>;
}

/**
 * Polls until something listens at `socketPath` (the file appears at bind(),
 * before listen(), so its existence alone is not enough); fails early if the
 * process has already exited.
 */
async function waitForSocket(
  socketPath: string,
  exitedEarly: () => string | null,
  ready: (socketPath: string) => boolean,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = exitedEarly();
    if (why) throw new Error(why);
    if (ready(socketPath)) return;
    if (Date.now() > deadline) throw new Error(`nothing listening at ${socketPath} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Whether some socket is listening at `socketPath`, read from /proc/net/unix
 * (flag __SO_ACCEPTCON). Connecting to find out would not do: a back-end that
 * serves one connection would take the probe for its front-end.
 */
function isListening(socketPath: string): boolean {
  const SO_ACCEPTCON = 0x10000;
  return fs
    .readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .slice(1)
    .some((line) => {
      const fields = line.trim().split(/\s+/);
      return fields[7] === socketPath && (parseInt(fields[3], 16) & SO_ACCEPTCON) !== 0;
    });
}

/**
 * Our daemon's socket file is born listening (bound in a private directory,
 * renamed into place after listen()), in whatever network namespace its
 * sandbox put it: the file's existence is the signal.
 */
export function socketFileExists(socketPath: string): boolean {
  try {
    return fs.lstatSync(socketPath).isSocket();
  } catch {
    return false;
  }
}

/** Runs `command` as a child process that creates `socketPath`; `ready` tells when it listens. */
export async function startProcess(
  command: string,
  args: string[],
  socketPath: string,
  ready: (socketPath: string) => boolean = isListening,
): Promise<RunningBackend> {
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  let status: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => {
      status = code;
      resolve(code);
    });
    // A command that cannot be run at all (not installed) never emits 'exit'.
    child.on('error', (err) => {
      output += `cannot run ${command}: ${err.message}\n`;
      status = null;
      resolve(null);
    });
  });
  try {
    await waitForSocket(
      socketPath,
      () => (status !== undefined ? `${path.basename(command)} exited with ${status} before listening:\n${output}` : null),
      ready,
    );
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    socketPath,
    pid: child.pid ?? -1,
    exited,
    alive: () => status === undefined,
    log: () => output,
    async stop() {
      if (status === undefined) {
        child.kill('SIGTERM');
        // The reference ends by itself on disconnect; give either a moment before forcing it.
        const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
        await exited;
        clearTimeout(timer);
      }
      fs.rmSync(socketPath, { force: true });
    },
  };
}

export const reference: Backend = {
  name: 'reference C virtiofsd',
  lacks: REFERENCE_LACKS,
  start: (sharedDir, socketPath) =>
    startProcess(
      REFERENCE_DAEMON,
      [`--socket-path=${socketPath}`, '-o', `source=${sharedDir}`, '-o', 'xattr', '-o', 'posix_lock', '-o', 'flock', '-o', 'cache=auto'],
      socketPath,
    ),
};

/** Our daemon in this process: no build step, and its log is at hand. */
export const ours: Backend = {
  name: 'virtiofsd-ts',
  lacks: OURS_LACKS,
  async start(sharedDir, socketPath, options = {}) {
    const lines: string[] = [];
    // The same features the reference is started with (-o xattr,posix_lock,flock), so cases compare like with like.
    const config = {
      socketPath,
      sharedDir,
      cache: 'auto' as const,
      readonly: false,
      logLevel: 'warn' as const,
      xattr: true,
      posixLock: true,
      flock: true,
      daxWindow: options.daxWindow !== undefined ? BigInt(options.daxWindow) : undefined,
    };
    const daemon = new Daemon(config, (level, msg) => {
      if (level === 'error' || level === 'warn') lines.push(`${level}: ${msg}`);
    });
    daemon.start();
    let status: number | undefined;
    const exited = daemon.done.then((code) => (status = code));
    return {
      socketPath,
      pid: process.pid,
      exited,
      alive: () => status === undefined,
      log: () => lines.join('\n'),
      async stop() {
        daemon.stop(0);
        await exited;
        fs.rmSync(socketPath, { force: true });
      },
    };
  },
};

/** The Rust virtiofsd through trixie's loader, with the features the C daemon is started with where it has them. */
export const rust: Backend = {
  name: 'Rust virtiofsd',
  lacks: RUST_LACKS,
  start: (sharedDir, socketPath) => {
    if (!fs.existsSync(RUST_DAEMON)) throw new Error(`${RUST_DAEMON} is missing: run scripts/peers/setup.sh`);
    return startProcess(
      RUST_DAEMON,
      [`--socket-path=${socketPath}`, `--shared-dir=${sharedDir}`, '--xattr', '--cache=auto', '--log-level=warn'],
      socketPath,
    );
  },
};

export const BACKENDS: Backend[] = [ours, reference, rust];

/**
 * Builds dist/ (npm run build) unless it is newer than every source file, so
 * the CLI under test is the code in the tree.
 */
export function ensureBuilt(): void {
  const built = path.join(REPO, 'dist/cli.js');
  const builtAt = fs.existsSync(built) ? fs.statSync(built).mtimeMs : 0;
  if (newestMtime(path.join(REPO, 'src')) <= builtAt) return;
  execFileSync('npm', ['run', 'build'], { cwd: REPO, stdio: 'pipe' });
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : fs.statSync(p).mtimeMs);
  }
  return newest;
}

/** Our daemon as users run it: `node bin/virtiofsd-ts.js` (call ensureBuilt() first). */
export const oursCli: Backend = {
  name: 'virtiofsd-ts CLI',
  lacks: OURS_LACKS,
  start: (sharedDir, socketPath) =>
    startProcess(
      process.execPath,
      [CLI, '--socket-path', socketPath, '--shared-dir', sharedDir, '--xattr', '--posix-lock', '--flock', '--log-level', 'warn'],
      socketPath,
      socketFileExists,
    ),
};
