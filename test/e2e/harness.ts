// What the e2e test files share: which daemon is under test (E2E_DAEMON) and
// its command line, the vitest hooks (setup.sh, a temporary directory per
// test), one guest run with the daemon, the check that a run ended cleanly,
// and the host side of the guest's requests (SHARE/.e2e-host, see
// test/e2e/guest/battery.c).
//
// E2E_DAEMON selects the back-end under test:
//   (unset) or "ts"  node bin/virtiofsd-ts.js (this project)
//   "reference"      QEMU's C virtiofsd, /usr/lib/qemu/virtiofsd, to check
//                    the tests themselves
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeAll, beforeEach, expect } from 'vitest';
import {
  BootOptions,
  BootResult,
  E2E_CACHE_DIR,
  GuestReport,
  KernelName,
  REPO_ROOT,
  bootGuest,
  describeRun,
  guestKernel,
  parseConsole,
} from './qemu-guest';
import { RUST_DAEMON } from '../helpers/backends';

const daemonName = process.env.E2E_DAEMON || 'ts';
if (daemonName !== 'ts' && daemonName !== 'reference' && daemonName !== 'rust') {
  throw new Error(`E2E_DAEMON must be "ts", "reference" (QEMU's C virtiofsd) or "rust" (the Rust virtiofsd), not "${daemonName}"`);
}
/** The daemon under test: ours, QEMU's C virtiofsd, or the Rust virtiofsd (scripts/peers/setup.sh). */
export const DAEMON: 'ts' | 'reference' | 'rust' = daemonName;
/** One of the reference daemons, not ours: cases only ours can pass are skipped, saying why. */
export const REFERENCE = DAEMON !== 'ts';
export const RUST = DAEMON === 'rust';
export const DAEMON_TITLE = { ts: 'virtiofsd-ts', reference: 'the reference C virtiofsd', rust: 'the Rust virtiofsd' }[DAEMON];

/** Our --cache modes; the C reference knows all but metadata (none = never); the Rust virtiofsd knows them all. */
export type CacheMode = 'never' | 'auto' | 'always' | 'metadata';
const REFERENCE_CACHE: Record<CacheMode, string | undefined> = {
  never: 'none',
  auto: 'auto',
  always: 'always',
  metadata: undefined,
};

export interface DaemonOptions {
  cache?: CacheMode;
  /** Extended attributes (--xattr / -o xattr). */
  xattr?: boolean;
  /** POSIX locks on the host (--posix-lock / -o posix_lock). */
  posixLock?: boolean;
  /** flock(2) on the host (--flock / -o flock). */
  flock?: boolean;
}

/** The command line of the daemon under test, serving sharedDir on socketPath. */
export function daemonCommand(socketPath: string, sharedDir: string, opts: DaemonOptions = {}): string[] {
  const cache = opts.cache ?? 'auto';
  if (RUST) {
    // Trixie's build through the trixie root's loader; 1.13 has no POSIX or BSD locks to turn on.
    return [
      RUST_DAEMON,
      `--socket-path=${socketPath}`,
      `--shared-dir=${sharedDir}`,
      `--cache=${cache}`,
      ...(opts.xattr ? ['--xattr'] : []),
    ];
  }
  if (REFERENCE) {
    const refCache = REFERENCE_CACHE[cache];
    if (!refCache) throw new Error(`the reference daemon has no cache mode "${cache}"`);
    return [
      '/usr/lib/qemu/virtiofsd',
      `--socket-path=${socketPath}`,
      '-o',
      `source=${sharedDir}`,
      '-o',
      `cache=${refCache}`,
      ...(opts.xattr ? ['-o', 'xattr'] : []),
      ...(opts.posixLock ? ['-o', 'posix_lock'] : []),
      ...(opts.flock ? ['-o', 'flock'] : []),
    ];
  }
  return [
    process.execPath,
    path.join(REPO_ROOT, 'bin', 'virtiofsd-ts.js'),
    '--socket-path',
    socketPath,
    '--shared-dir',
    sharedDir,
    '--cache',
    cache,
    ...(opts.xattr ? ['--xattr'] : []),
    ...(opts.posixLock ? ['--posix-lock'] : []),
    ...(opts.flock ? ['--flock'] : []),
  ];
}

/** Does the daemon under test have this cache mode? */
export function hasCacheMode(mode: CacheMode): boolean {
  return !REFERENCE || RUST || REFERENCE_CACHE[mode] !== undefined;
}

/** A generous per-test limit: a guest boot under TCG takes seconds. */
export const TEST_TIMEOUT = 180_000;

export const sha256 = (data: Buffer | string) => crypto.createHash('sha256').update(data).digest('hex');
export const fileSha256 = (file: string) => sha256(fs.readFileSync(file));

/**
 * Registers the hooks every e2e file needs, inside its describe(): setup.sh
 * once (installs QEMU, builds the guests and the battery if missing; quick
 * when done; a failure fails every test), and a fresh temporary directory
 * per test for the share and the socket. Returns that directory's getter.
 */
export function useE2EEnvironment(): () => string {
  let workDir: string | undefined;
  beforeAll(() => {
    const setup = spawnSync('bash', [path.join(REPO_ROOT, 'scripts/e2e/setup.sh')], { encoding: 'utf8' });
    if (setup.status !== 0) {
      throw new Error(`scripts/e2e/setup.sh failed (${setup.status}):\n${setup.stdout}\n${setup.stderr}`);
    }
  }, 900_000);
  beforeEach(() => {
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtiofsd-e2e-'));
  });
  afterEach(() => {
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
    workDir = undefined;
  });
  return () => {
    if (!workDir) throw new Error('no e2e work directory outside a test');
    return workDir;
  };
}

/** Answers one guest request: the words after the verb; returns the reply line. */
export type HostHandler = (args: string[]) => string | Promise<string>;

export interface HostRequest {
  name: string;
  request: string;
  reply: string;
}

/** The directory (in the share) the guest writes its requests into. */
export const HOST_REQUEST_DIR = '.e2e-host';

/**
 * Serves the guest's requests while it runs: polls SHARE/.e2e-host for
 * NAME.req (one line: verb and arguments), answers each once through
 * NAME.reply (written whole, then renamed into place) with what the verb's
 * handler returns ("error ..." for an unknown verb or a handler that threw).
 */
export class HostRequestServer {
  readonly log: HostRequest[] = [];
  private readonly answered = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private busy = false;

  constructor(
    private readonly share: string,
    private readonly handlers: Record<string, HostHandler>,
  ) {}

  start(): this {
    this.timer = setInterval(() => void this.poll(), 20);
    return this;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    while (this.busy) await new Promise((r) => setTimeout(r, 10));
  }

  private async poll(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const dir = path.join(this.share, HOST_REQUEST_DIR);
      let names: string[];
      try {
        names = fs.readdirSync(dir);
      } catch {
        return; // the guest made no request yet
      }
      for (const file of names.filter((n) => n.endsWith('.req')).sort()) {
        const name = file.slice(0, -'.req'.length);
        if (this.answered.has(name)) continue;
        this.answered.add(name);
        const request = fs.readFileSync(path.join(dir, file), 'utf8').trim();
        const [verb, ...args] = request.split(' ');
        let reply: string;
        try {
          const handler = this.handlers[verb];
          reply = handler ? await handler(args) : `error unknown request verb "${verb}"`;
        } catch (err) {
          reply = `error ${(err as Error).message}`.replace(/\n/g, ' ');
        }
        this.log.push({ name, request, reply });
        fs.writeFileSync(path.join(dir, `${name}.reply.tmp`), `${reply}\n`);
        fs.renameSync(path.join(dir, `${name}.reply.tmp`), path.join(dir, `${name}.reply`));
      }
    } finally {
      this.busy = false;
    }
  }
}

/** The battery program (test/e2e/guest/battery.c) built for the host by setup.sh. */
export const BATTERY_BIN = path.join(E2E_CACHE_DIR, 'battery');

/** Runs `battery ARGS...` on the host; its standard output, trimmed. */
export function hostBattery(...args: string[]): string {
  const r = spawnSync(BATTERY_BIN, args, { encoding: 'utf8' });
  if (r.error) throw r.error;
  return r.stdout.trim();
}

export interface GuestRunOptions extends Pick<BootOptions, 'requestQueues' | 'allowReboot' | 'timeoutMs'> {
  /** The test's temporary directory (socket goes there). */
  workDir: string;
  /** The host directory to share, already prepared. */
  share: string;
  kernel: KernelName;
  /** Workload mode (test/e2e/guest/workload.sh). */
  mode: string;
  daemon?: DaemonOptions;
  /** Handlers for the guest's requests, by verb (see HostRequestServer). */
  hostHandlers?: Record<string, HostHandler>;
}

export interface GuestRun {
  share: string;
  run: BootResult;
  report: GuestReport;
  /** The guest's requests and the host's replies, in order. */
  hostRequests: HostRequest[];
}

async function bootOnce(opts: GuestRunOptions, socketPath: string): Promise<{ run: BootResult; hostRequests: HostRequest[] }> {
  const server = new HostRequestServer(opts.share, opts.hostHandlers ?? {}).start();
  try {
    const run = await bootGuest({
      daemonCommand: daemonCommand(socketPath, opts.share, opts.daemon),
      socketPath,
      kernel: guestKernel(opts.kernel),
      mode: opts.mode,
      requestQueues: opts.requestQueues,
      allowReboot: opts.allowReboot,
      timeoutMs: opts.timeoutMs,
    });
    return { run, hostRequests: server.log };
  } finally {
    await server.stop();
  }
}

/**
 * A boot that timed out inside the kernel, before it started /init: nothing
 * of the share (no mount, no FUSE request) was involved yet.
 */
function hungBeforeMount(run: BootResult): boolean {
  if (!run.timedOut || /Run \/init as init process|E2E-/.test(run.consoleText)) return false;
  return DAEMON === 'reference' || !/FUSE [\d.]+ initialised/.test(run.daemonStderr);
}

/** Serves the share with the daemon under test and boots a guest on it. */
export async function runGuest(opts: GuestRunOptions): Promise<GuestRun> {
  const socketPath = path.join(opts.workDir, 'vhost-fs.sock');
  let { run, hostRequests } = await bootOnce(opts, socketPath);
  if (hungBeforeMount(run)) {
    // Seen about once in a few dozen boots under TCG: the kernel stalls in early
    // boot, before it runs /init (so before any mount or FUSE request): nothing
    // of ours was involved yet. Boot once more, visibly.
    console.log(`[e2e] the guest hung before mounting the share; booting it once more\n${describeRun(run)}`);
    ({ run, hostRequests } = await bootOnce(opts, socketPath));
  }
  const cache = opts.daemon?.cache ? `, cache ${opts.daemon.cache}` : '';
  console.log(`[e2e] ${DAEMON} daemon, ${opts.kernel} kernel, mode ${opts.mode}${cache}: QEMU ran ${run.qemuMs} ms`);
  return { share: opts.share, run, report: parseConsole(run.consoleText), hostRequests };
}

/** QEMU powered off by itself after the guest reached E2E-DONE, and the
 *  daemon then exited 0 by itself. */
export function expectCleanExit({ run, report }: GuestRun): void {
  const details = describeRun(run);
  expect(run.timedOut, details).toBe(false);
  expect(report.done, `guest did not reach E2E-DONE\n${details}`).toBe(true);
  expect(run.qemuExitCode, details).toBe(0);
  expect(run.daemonExitCode, `daemon must exit 0 after QEMU powered off\n${details}`).toBe(0);
  // Ours served the guest from inside its default sandbox: namespaces (share as root) and seccomp kill.
  if (!REFERENCE) expect(run.daemonConfinement, details).toEqual({ seccomp: '2', ownMountNamespace: true });
}

/** A clean exit, no failed check, and each of expectedChecks passed. */
export function expectCleanRun(result: GuestRun, expectedChecks: string[]): void {
  const details = describeRun(result.run);
  expect(result.report.failed, details).toEqual([]);
  expectCleanExit(result);
  for (const check of expectedChecks) expect(result.report.ok, `check ${check}\n${details}`).toContain(check);
}
