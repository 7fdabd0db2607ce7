// Boots a real Linux guest under QEMU (TCG) against a vhost-user-fs back-end
// daemon, for the end-to-end tests. Kernels and initramfs images come from
// scripts/e2e/setup.sh; the guest side is test/e2e/guest/{init,workload.sh}
// and the battery program (battery.c). harness.ts builds the tests' common
// steps on top of this.
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { qemuGuestArgs } from './qemu-args';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const E2E_CACHE_DIR = process.env.E2E_CACHE_DIR ?? path.join(REPO_ROOT, '.cache', 'e2e');

/** Guest kernels prepared by scripts/e2e/setup.sh. */
export type KernelName =
  /** Debian bookworm cloud kernel (6.1): virtio and fuse loaded as modules. */
  | 'bookworm'
  /** bookworm-backports cloud kernel (6.12): all built in, multi-queue virtio-fs. */
  | 'backports';

export interface GuestKernel {
  name: KernelName;
  kernel: string;
  initrd: string;
}

export function guestKernel(name: KernelName): GuestKernel {
  const dir = path.join(E2E_CACHE_DIR, name);
  return { name, kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.gz') };
}

export interface BootOptions {
  /** Back-end command line (argv[0] first); it must listen on socketPath. */
  daemonCommand: string[];
  socketPath: string;
  kernel: GuestKernel;
  /** Workload mode passed as e2e.mode= on the kernel command line. */
  mode: string;
  /** num-request-queues of the vhost-user-fs-pci device (QEMU's default is 1). */
  requestQueues?: number;
  /** Let the guest reboot (drops -no-reboot); a power-off still ends QEMU. */
  allowReboot?: boolean;
  /** Kill QEMU after this long (default 120 s). */
  timeoutMs?: number;
  /** How long the daemon may take to exit once QEMU is gone (default 10 s). */
  daemonExitTimeoutMs?: number;
  /**
   * Boot with the share as the root file system (`root=myfs rootfstype=virtiofs`,
   * no initramfs): the kernel needs virtio-fs built in, and the share its own /init.
   */
  rootFromShare?: boolean;
}

export interface BootResult {
  /** The guest's serial console (QEMU's standard output). */
  consoleText: string;
  /** QEMU's own messages (its standard error). */
  qemuStderr: string;
  qemuExitCode: number | null;
  /** QEMU was killed because it ran past timeoutMs. */
  timedOut: boolean;
  /** null if the daemon did not exit by itself (it was then killed). */
  daemonExitCode: number | null;
  daemonSignal: NodeJS.Signals | null;
  daemonStdout: string;
  daemonStderr: string;
  /** The serving daemon's confinement as /proc showed it while the guest ran. */
  daemonConfinement: Confinement;
  /** Wall time from QEMU's start to its exit. */
  qemuMs: number;
}

const SOCKET_WAIT_MS = 15_000;
/** Output kept per stream: the tail, so a chatty daemon cannot eat memory. */
const MAX_OUTPUT = 4 << 20;

/** Children still running, killed if this process exits before cleaning up. */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

interface Watched {
  child: ChildProcess;
  output: { stdout: string; stderr: string };
  /** Resolves once the process has exited and its output is read. */
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function start(argv: string[], cwd: string): Watched {
  const child = spawn(argv[0], argv.slice(1), { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const output = { stdout: '', stderr: '' };
  for (const stream of ['stdout', 'stderr'] as const) {
    child[stream]!.setEncoding('utf8');
    child[stream]!.on('data', (chunk: string) => {
      output[stream] = (output[stream] + chunk).slice(-MAX_OUTPUT);
    });
  }
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    const finish = () => {
      live.delete(child);
      resolve(exited!);
    };
    child.on('error', (err) => {
      output.stderr += `\n[spawn ${argv[0]} failed: ${err.message}]`;
      exited = { code: null, signal: null };
      finish();
    });
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      // 'close' follows once the pipes are drained; a grandchild that keeps
      // them open must not hang us.
      setTimeout(finish, 2000).unref();
    });
    child.on('close', () => exited && finish());
  });
  return { child, output, done };
}

/** Resolves true once `promise` settles, false after `ms`. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function isSocket(p: string): boolean {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

export function qemuArgs(opts: BootOptions): string[] {
  return qemuGuestArgs({
    // One TCG thread for all vCPUs: with multi-threaded TCG, QEMU 7.2 races
    // Linux 6.12's run-time code patching (int3-based static keys) and the
    // guest oopses in early boot now and then. The guest still has 2 vCPUs
    // (and uses 2 request queues); they just share one host thread.
    accel: 'tcg,thread=single',
    // QEMU 7.2's TCG mis-emulates CMPXCHG16B, which Linux 6.12's slab
    // allocator uses on every allocation: the guest dies at boot with double
    // faults most of the time. Without the cx16 CPUID bit the kernel falls
    // back to code that works (6.1 boots either way).
    cpu: 'qemu64,-cx16',
    socketPath: opts.socketPath,
    device: {
      driver: 'vhost-user-fs-pci',
      props: ['tag=myfs', ...(opts.requestQueues === undefined ? [] : [`num-request-queues=${opts.requestQueues}`])],
    },
    kernel: opts.kernel.kernel,
    initrd: opts.rootFromShare ? undefined : opts.kernel.initrd,
    mode: opts.mode,
    append: opts.rootFromShare ? ['root=myfs', 'rootfstype=virtiofs', 'rw', 'init=/init'] : [],
    allowReboot: opts.allowReboot,
  });
}

/**
 * Starts the daemon, waits for its socket, boots the guest and waits for it
 * to power off (or for the timeout), then waits for the daemon to exit.
 * Both processes are always gone when this returns or throws.
 */
export async function bootGuest(opts: BootOptions): Promise<BootResult> {
  for (const file of opts.rootFromShare ? [opts.kernel.kernel] : [opts.kernel.kernel, opts.kernel.initrd]) {
    if (!fs.existsSync(file)) throw new Error(`${file} is missing: run scripts/e2e/setup.sh`);
  }
  const daemon = start(opts.daemonCommand, REPO_ROOT);
  let qemu: Watched | undefined;
  try {
    const deadline = Date.now() + SOCKET_WAIT_MS;
    let daemonGone = false;
    void daemon.done.then(() => (daemonGone = true));
    while (!isSocket(opts.socketPath)) {
      if (daemonGone || Date.now() > deadline) {
        await within(daemon.done, 1000);
        throw new Error(
          `daemon ${daemonGone ? 'exited' : 'did not create its socket'} before QEMU could connect\n` +
            `command: ${opts.daemonCommand.join(' ')}\nstderr:\n${daemon.output.stderr}\nstdout:\n${daemon.output.stdout}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }

    const started = Date.now();
    qemu = start(['qemu-system-x86_64', ...qemuArgs(opts)], REPO_ROOT);
    const daemonConfinement = await confinementOf(daemon.child.pid!);
    const timeoutMs = opts.timeoutMs ?? 120_000;
    const timedOut = !(await within(qemu.done, timeoutMs));
    if (timedOut) {
      qemu.child.kill('SIGKILL');
      console.error(
        `QEMU (${opts.kernel.name}, mode ${opts.mode}) ran past ${timeoutMs} ms and was killed. ` +
          `Console tail:\n${tail(qemu.output.stdout, 40)}\nQEMU stderr tail:\n${tail(qemu.output.stderr, 10)}`,
      );
    }
    const qemuExit = await qemu.done;
    const qemuMs = Date.now() - started;

    const daemonExited = await within(daemon.done, opts.daemonExitTimeoutMs ?? 10_000);
    if (!daemonExited) daemon.child.kill('SIGKILL');
    const daemonExit = await daemon.done;
    return {
      consoleText: qemu.output.stdout,
      qemuStderr: qemu.output.stderr,
      qemuExitCode: qemuExit.code,
      timedOut,
      daemonExitCode: daemonExited ? daemonExit.code : null,
      daemonSignal: daemonExited ? daemonExit.signal : null,
      daemonStdout: daemon.output.stdout,
      daemonStderr: daemon.output.stderr,
      daemonConfinement,
      qemuMs,
    };
  } finally {
    for (const p of [qemu, daemon]) {
      if (p && live.has(p.child)) {
        p.child.kill('SIGKILL');
        await p.done;
      }
    }
  }
}

export interface Confinement {
  /** /proc/PID/status Seccomp: 0 none, 2 filter. */
  seccomp: string;
  /** Whether the serving process has a mount namespace of its own. */
  ownMountNamespace: boolean;
}

/**
 * The confinement of the process serving for `pid`: the launcher's child when
 * the sandbox forked one, else `pid` itself. Waits (briefly) for the filter,
 * the last step of the daemon's start-up; a daemon without one shows 0.
 */
async function confinementOf(pid: number): Promise<Confinement> {
  const read = (): Confinement | null => {
    try {
      const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
      const server = children ? Number(children.split(/\s+/)[0]) : pid;
      const seccomp = /^Seccomp:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${server}/status`, 'utf8'))?.[1] ?? '?';
      const ownMountNamespace = fs.readlinkSync(`/proc/${server}/ns/mnt`) !== fs.readlinkSync('/proc/self/ns/mnt');
      return { seccomp, ownMountNamespace };
    } catch {
      return null;
    }
  };
  let last = read();
  for (const deadline = Date.now() + 3000; last?.seccomp !== '2' && Date.now() < deadline; last = read()) {
    await new Promise((r) => setTimeout(r, 20));
  }
  return last ?? { seccomp: '?', ownMountNamespace: false };
}

/** The last `lines` lines of `text`. */
export function tail(text: string, lines: number): string {
  return text.split(/\r?\n/).slice(-lines).join('\n');
}

/** A result as text for assertion messages: exit codes and output tails. */
export function describeRun(run: BootResult): string {
  return [
    `qemu exit ${run.qemuExitCode}${run.timedOut ? ' (killed: timeout)' : ''} after ${run.qemuMs} ms, ` +
      `daemon exit ${run.daemonExitCode ?? `none (killed)`}${run.daemonSignal ? ` signal ${run.daemonSignal}` : ''}`,
    `--- console tail ---\n${tail(run.consoleText, 40)}`,
    `--- QEMU stderr tail ---\n${tail(run.qemuStderr, 10)}`,
    `--- daemon stderr tail ---\n${tail(run.daemonStderr, 20)}`,
  ].join('\n');
}

export interface GuestReport {
  /** Names of the checks that printed E2E-OK (first word after the marker). */
  ok: string[];
  /** E2E-FAIL lines, without the marker. */
  failed: string[];
  /** E2E-SUM path -> checksum (sha256 hex from workload.sh, "fnv32x2:..." from battery.c). */
  sums: Map<string, string>;
  /** E2E-INFO lines, without the marker. */
  info: string[];
  done: boolean;
}

/** Parses the E2E- marker lines of test/e2e/guest/workload.sh and battery.c. */
export function parseConsole(consoleText: string): GuestReport {
  const report: GuestReport = { ok: [], failed: [], sums: new Map(), info: [], done: false };
  for (const line of consoleText.split(/\r?\n/)) {
    // A marker may follow terminal escapes on the same line.
    const m = /E2E-(OK|FAIL|SUM|INFO|DONE)\b ?(.*)$/.exec(line);
    if (!m) continue;
    const rest = m[2].trim();
    switch (m[1]) {
      case 'OK':
        report.ok.push(rest.split(' ')[0]);
        break;
      case 'FAIL':
        report.failed.push(rest);
        break;
      case 'SUM': {
        const [file, sum] = rest.split(' ');
        report.sums.set(file, sum);
        break;
      }
      case 'INFO':
        report.info.push(rest);
        break;
      case 'DONE':
        report.done = true;
        break;
    }
  }
  return report;
}
