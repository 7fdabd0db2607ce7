// Boots a Linux 6.12 guest under QEMU 11.1 (the trixie root of
// scripts/peers/setup.sh) on `vhost-user-test-device-pci` as a virtio-fs
// device with a DAX window, against any vhost-user-fs back-end. The guest is
// .cache/e2e/backports/{vmlinuz,dax-initrd.gz} (scripts/e2e/setup.sh;
// test/e2e/guest/dax-init, dax-workload.sh, daxtool.c). Used by
// test/e2e/dax-guest.test.ts and bench/in-guest-dax.ts.
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { qemuGuestArgs } from './qemu-args';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
const E2E_CACHE = process.env.E2E_CACHE_DIR ?? path.join(REPO_ROOT, '.cache', 'e2e');
const PEERS_CACHE = process.env.PEERS_CACHE_DIR ?? path.join(REPO_ROOT, '.cache', 'peers');
/** QEMU 11.1 and the Rust virtiofsd, run through trixie's loader by the wrappers setup.sh writes. */
export const PEERS_QEMU = path.join(PEERS_CACHE, 'bin', 'qemu-system-x86_64');
export const PEERS_VIRTIOFSD = path.join(PEERS_CACHE, 'bin', 'virtiofsd');
export const DAX_KERNEL = path.join(E2E_CACHE, 'backports', 'vmlinuz');
export const DAX_INITRD = path.join(E2E_CACHE, 'backports', 'dax-initrd.gz');
/** The tag the guest mounts (dax-init). */
export const DAX_TAG = 'myfs';

/** Our daemon's command line serving `share` on `socketPath` under DAX_TAG, with `extra` options after it. */
export function ourDaxDaemon(socketPath: string, share: string, extra: string[] = []): string[] {
  return [
    process.execPath,
    path.join(REPO_ROOT, 'bin', 'virtiofsd-ts.js'),
    '--socket-path',
    socketPath,
    '--shared-dir',
    share,
    '--tag',
    DAX_TAG,
    ...extra,
  ];
}

export interface DaxBootOptions {
  /** Back-end command line (argv[0] first); it must listen on socketPath. */
  daemonCommand: string[];
  socketPath: string;
  /** dax-workload.sh mode. */
  mode: string;
  /** The guest's -o dax= (none: no option). */
  dax: 'always' | 'inode' | 'never' | 'none';
  /**
   * test (default): vhost-user-test-device-pci, config and window from the
   * back-end; fs: QEMU's vhost-user-fs-pci (tag from QEMU, no window), for a
   * back-end that serves no device config (QEMU's C virtiofsd).
   */
  device?: 'test' | 'fs';
  /** Let the guest reboot (the workload asks for it with E2E-REBOOT). */
  allowReboot?: boolean;
  timeoutMs?: number;
  /** More kernel command line words (e.g. e2e.bench=...). */
  append?: string;
  /** Called every 50 ms while QEMU runs (e.g. to answer the guest through the share). */
  poll?: () => void;
}

export interface DaxBootResult {
  consoleText: string;
  qemuStderr: string;
  qemuExitCode: number | null;
  qemuSignal: NodeJS.Signals | null;
  timedOut: boolean;
  daemonExitCode: number | null;
  daemonStderr: string;
  /** /proc/PID/status Seccomp of the serving process while the guest ran (2: filter). */
  daemonSeccomp: string;
  ownMountNamespace: boolean;
  qemuMs: number;
}

/** QEMU's command line: the note in docs/dax.md "A real Linux guest". */
export function daxQemuArgs(opts: Pick<DaxBootOptions, 'socketPath' | 'mode' | 'dax' | 'allowReboot' | 'device' | 'append'>): string[] {
  const device =
    opts.device === 'fs'
      ? { driver: 'vhost-user-fs-pci', props: [`tag=${DAX_TAG}`] }
      : // virtio-id 26 is virtio-fs; the window size is the back-end's GET_SHMEM_CONFIG answer.
        { driver: 'vhost-user-test-device-pci', props: ['virtio-id=26', 'num_vqs=2', 'config_size=40'] };
  return qemuGuestArgs({
    accel: 'tcg',
    cpu: 'max',
    socketPath: opts.socketPath,
    device,
    kernel: DAX_KERNEL,
    initrd: DAX_INITRD,
    mode: opts.mode,
    append: [`e2e.dax=${opts.dax}`, ...(opts.append ? [opts.append] : [])],
    allowReboot: opts.allowReboot,
  });
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

function start(argv: string[]) {
  const child = spawn(argv[0], argv.slice(1), { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const out = { stdout: '', stderr: '' };
  for (const s of ['stdout', 'stderr'] as const) {
    child[s]!.setEncoding('utf8');
    child[s]!.on('data', (c: string) => (out[s] = (out[s] + c).slice(-(8 << 20))));
  }
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('error', (err) => {
      out.stderr += `\n[spawn ${argv[0]}: ${err.message}]`;
      live.delete(child);
      resolve({ code: null, signal: null });
    });
    child.on('close', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  return { child, out, done };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function within<T>(p: Promise<T>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true as const), t]);
  } finally {
    clearTimeout(timer);
  }
}

/** Seccomp mode and mount namespace of the process serving for `pid` (the launcher's child if any). */
async function confinementOf(pid: number): Promise<{ seccomp: string; ownMountNamespace: boolean }> {
  let last = { seccomp: '?', ownMountNamespace: false };
  for (const deadline = Date.now() + 3000; Date.now() < deadline; await sleep(20)) {
    try {
      const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
      const server = children ? Number(children.split(/\s+/)[0]) : pid;
      const seccomp = /^Seccomp:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${server}/status`, 'utf8'))?.[1] ?? '?';
      last = { seccomp, ownMountNamespace: fs.readlinkSync(`/proc/${server}/ns/mnt`) !== fs.readlinkSync('/proc/self/ns/mnt') };
      if (seccomp === '2') break;
    } catch {
      // not started yet, or gone
    }
  }
  return last;
}

/** Starts the daemon, boots the guest, waits for both; both are gone when this returns. */
export async function bootDaxGuest(opts: DaxBootOptions): Promise<DaxBootResult> {
  for (const f of [PEERS_QEMU, DAX_KERNEL, DAX_INITRD]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: run scripts/e2e/setup.sh`);
  }
  const daemon = start(opts.daemonCommand);
  let qemu: ReturnType<typeof start> | undefined;
  try {
    let gone = false;
    void daemon.done.then(() => (gone = true));
    for (const deadline = Date.now() + 15_000; !isSocket(opts.socketPath); await sleep(20)) {
      if (gone || Date.now() > deadline) {
        throw new Error(`daemon ${gone ? 'exited' : 'made no socket'}: ${opts.daemonCommand.join(' ')}\n${daemon.out.stderr}`);
      }
    }
    const started = Date.now();
    qemu = start([PEERS_QEMU, ...daxQemuArgs(opts)]);
    const confinement = await confinementOf(daemon.child.pid!);
    const timer = opts.poll ? setInterval(opts.poll, 50) : undefined;
    const timedOut = !(await within(qemu.done, opts.timeoutMs ?? 150_000));
    clearInterval(timer);
    if (timedOut) qemu.child.kill('SIGKILL');
    const q = await qemu.done;
    const qemuMs = Date.now() - started;
    const exited = await within(daemon.done, 10_000);
    if (!exited) daemon.child.kill('SIGKILL');
    const d = await daemon.done;
    return {
      consoleText: qemu.out.stdout,
      qemuStderr: qemu.out.stderr,
      qemuExitCode: q.code,
      qemuSignal: q.signal,
      timedOut,
      daemonExitCode: exited ? d.code : null,
      daemonStderr: daemon.out.stderr,
      daemonSeccomp: confinement.seccomp,
      ownMountNamespace: confinement.ownMountNamespace,
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

function isSocket(p: string): boolean {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

const tail = (t: string, n: number) => t.split(/\r?\n/).slice(-n).join('\n');

export function describeDaxRun(r: DaxBootResult): string {
  return [
    `qemu exit ${r.qemuExitCode}${r.qemuSignal ? ` signal ${r.qemuSignal}` : ''}${r.timedOut ? ' (timeout)' : ''} after ${r.qemuMs} ms, daemon exit ${r.daemonExitCode ?? 'none (killed)'}`,
    `--- console tail ---\n${tail(r.consoleText, 40)}`,
    `--- QEMU stderr tail ---\n${tail(r.qemuStderr, 10)}`,
    `--- daemon stderr tail (debug lines left out) ---\n${tail(
      r.daemonStderr
        .split('\n')
        .filter((l) => !/ debug: /.test(l))
        .join('\n'),
      20,
    )}`,
  ].join('\n');
}

/** E2E-SUM lines (the last one per name), E2E-INFO lines, E2E-OK names, E2E-FAIL lines. */
export function parseDaxConsole(text: string) {
  const sums = new Map<string, string>();
  const info: string[] = [];
  const ok: string[] = [];
  const failed: string[] = [];
  let done = 0;
  for (const line of text.split(/\r?\n/)) {
    const m = /E2E-(OK|FAIL|SUM|INFO|DONE)\b ?(.*)$/.exec(line);
    if (!m) continue;
    const rest = m[2].trim();
    if (m[1] === 'OK') ok.push(rest.split(' ')[0]);
    else if (m[1] === 'FAIL') failed.push(rest);
    else if (m[1] === 'INFO') info.push(rest);
    else if (m[1] === 'DONE') done++;
    else {
      const [name, sum] = rest.split(' ');
      sums.set(name, sum);
    }
  }
  return { sums, info, ok, failed, done };
}

/** Kernel trouble on the console: oopses, BUGs, warnings with a trace. */
export const OOPS = /\b(Oops|BUG:|WARNING:|Call Trace:|general protection fault|Kernel panic)/;
