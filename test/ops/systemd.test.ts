/**
 * The daemon as systemd runs it, without systemd as PID 1 (docs/operations.md
 * records the manual check under a real one): socket activation through
 * `systemd-socket-activate` and through LISTEN_FDS/LISTEN_PID set by a shell
 * that then execs us (so that LISTEN_PID is right), sd_notify READY=1 and
 * STOPPING=1 read from a NOTIFY_SOCKET of the test's own, journal
 * priorities, the metrics dump, and the pid file. Every daemon runs with its
 * default sandbox (namespace as root), so each fd crossed the relaunch.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import koffi from 'koffi';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FuseDriver } from '../../src/guest/fuse-driver';
import { UnixListener } from '../../src/sys';
import { bind, close, socket, sockaddrUn } from '../../src/sys/libc';
import { ensureBuilt } from '../helpers/backends';

const REPO = path.resolve(__dirname, '../..');
const CLI = path.join(REPO, 'bin/virtiofsd-ts.js');
const hasActivate = spawnSync('systemd-socket-activate', ['--version']).status === 0;

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const recv = koffi.load('libc.so.6').func('long recv(int, _Out_ uint8_t *buf, size_t, int)') as (
  fd: number,
  buf: Buffer,
  n: number,
  flags: number,
) => number;

/** A NOTIFY_SOCKET as systemd binds it: a datagram socket; `messages()` drains what arrived. */
class NotifyListener {
  readonly path: string;
  private readonly fd: number;
  private readonly got: string[] = [];
  constructor(dir: string) {
    this.path = path.join(dir, 'notify');
    this.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    const addr = sockaddrUn(this.path);
    bind(this.fd, addr, addr.length);
  }
  messages(): string[] {
    const buf = Buffer.alloc(4096);
    for (;;) {
      const n = recv(this.fd, buf, buf.length, 0);
      if (n < 0) break;
      this.got.push(buf.subarray(0, n).toString());
    }
    return this.got;
  }
  async waitFor(re: RegExp, ms = 15_000): Promise<string> {
    for (let t = 0; t < ms; t += 50) {
      const hit = this.messages().find((m) => re.test(m));
      if (hit !== undefined) return hit;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no notify message matching ${re}; got ${JSON.stringify(this.got)}`);
  }
  close(): void {
    close(this.fd);
  }
}

let dir: string;
let share: string;
const children: ChildProcess[] = [];
beforeAll(() => ensureBuilt(), 120_000);
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});
function fresh(): void {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ops-'));
  share = path.join(dir, 'share');
  fs.mkdirSync(share);
}
function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => child.on('exit', (code) => resolve(code)));
}
async function waitForFile(p: string): Promise<void> {
  for (let i = 0; i < 300 && !fs.existsSync(p); i++) await new Promise((r) => setTimeout(r, 50));
  expect(fs.existsSync(p), p).toBe(true);
}
async function initOnce(sock: string): Promise<void> {
  const fuse = await FuseDriver.connect(sock, { timeoutMs: 10_000 });
  try {
    expect((await fuse.init()).major).toBe(7);
  } finally {
    fuse.close();
  }
}

describe('under systemd-socket-activate', () => {
  it.skipIf(!hasActivate)(
    `serves the activated socket and notifies READY=1 then STOPPING=1${hasActivate ? '' : ' [skipped: systemd-socket-activate missing]'}`,
    async () => {
      fresh();
      const sock = path.join(dir, 'vfs.sock');
      const notify = new NotifyListener(dir);
      try {
        const child = spawn(
          'systemd-socket-activate',
          ['-l', sock, '-E', `NOTIFY_SOCKET=${notify.path}`, process.execPath, CLI, '--shared-dir', share, '--log-level', 'info'],
          { stdio: ['ignore', 'ignore', 'pipe'] },
        );
        children.push(child);
        let stderr = '';
        child.stderr!.on('data', (d) => (stderr += d));
        const done = exited(child);
        await waitForFile(sock);
        // systemd-socket-activate execs the daemon on the first connection.
        await initOnce(sock);
        expect(await notify.waitFor(/READY=1/)).toMatch(/STATUS=serving /);
        expect(await done).toBe(0);
        await notify.waitFor(/STOPPING=1/);
        const order = notify.messages();
        expect(order.findIndex((m) => m.includes('READY=1'))).toBeLessThan(order.findIndex((m) => m.includes('STOPPING=1')));
        expect(stderr).toMatch(/listening on fd 3/);
      } finally {
        notify.close();
      }
    },
    40_000,
  );
});

describe('LISTEN_FDS/LISTEN_PID', () => {
  /** Runs the daemon as systemd would: the listener as fd 3, LISTEN_PID our pid (the shell's, kept by exec). */
  function activated(listener: UnixListener, extraEnv: Record<string, string> = {}, ...args: string[]): ChildProcess {
    const child = spawn('/bin/sh', ['-c', 'LISTEN_PID=$$ exec "$@"', 'sh', process.execPath, CLI, '--shared-dir', share, ...args], {
      stdio: ['ignore', 'ignore', 'pipe', listener.fd],
      env: { ...process.env, LISTEN_FDS: '1', ...extraEnv },
    });
    children.push(child);
    return child;
  }

  it('are --fd 3; a restart on the same listening socket serves the next front-end (Restart= under systemd)', async () => {
    fresh();
    const sock = path.join(dir, 'vfs.sock');
    const listener = UnixListener.listen(sock);
    try {
      for (let round = 0; round < 2; round++) {
        const child = activated(listener);
        const done = exited(child);
        await initOnce(sock);
        expect(await done).toBe(0);
      }
    } finally {
      listener.close(true);
    }
  }, 40_000);

  it('are ignored when LISTEN_PID names another process', async () => {
    fresh();
    const listener = UnixListener.listen(path.join(dir, 'vfs.sock'));
    try {
      const r = spawnSync(process.execPath, [CLI, '--shared-dir', share], {
        env: { ...process.env, LISTEN_FDS: '1', LISTEN_PID: '1' },
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe', listener.fd],
        timeout: 20_000,
      });
      expect(r.status).toBe(1);
      expect(r.stderr).toBe('virtiofsd-ts: a socket is required: --socket-path PATH, --fd N, or systemd socket activation\n');
    } finally {
      listener.close(true);
    }
  });

  it('with JOURNAL_STREAM naming stderr, lines carry <N> priorities; otherwise timestamps', async () => {
    fresh();
    const sock = path.join(dir, 'vfs.sock');
    const listener = UnixListener.listen(sock);
    const logFile = path.join(dir, 'stderr');
    const out = fs.openSync(logFile, 'w');
    const st = fs.fstatSync(out, { bigint: true });
    try {
      const child = spawn(
        '/bin/sh',
        ['-c', 'LISTEN_PID=$$ exec "$@"', 'sh', process.execPath, CLI, '--shared-dir', share, '--thread-pool-size=2', '--allow-mmap'],
        {
          stdio: ['ignore', 'ignore', out, listener.fd],
          env: { ...process.env, LISTEN_FDS: '1', JOURNAL_STREAM: `${st.dev}:${st.ino}` },
        },
      );
      children.push(child);
      const done = exited(child);
      await initOnce(sock);
      expect(await done).toBe(0);
      const lines = fs.readFileSync(logFile, 'utf8').trim().split('\n');
      expect(lines.length).toBeGreaterThan(1);
      for (const line of lines) expect(line).toMatch(/^<[3-7]>(\[virtiofsd-ts\] (error|warn|info|debug)|virtiofsd-ts): /);
      expect(lines.some((l) => l.startsWith('<6>[virtiofsd-ts] info: listening on fd 3'))).toBe(true);
      // One line for an option accepted but without effect here (--cache auto opens nothing with direct I/O).
      expect(lines.filter((l) => l.includes('--allow-mmap: only files opened with direct I/O')).length).toBe(1);
    } finally {
      fs.closeSync(out);
      listener.close(true);
    }
    // A JOURNAL_STREAM that is not our stderr (a child of a journald-logged parent): plain lines.
    const r = spawnSync(process.execPath, [CLI, '--socket-path', sock, '--shared-dir', '/nonexistent'], {
      env: { ...process.env, JOURNAL_STREAM: '1:1' },
      encoding: 'utf8',
    });
    expect(r.stderr).not.toMatch(/^</);
  }, 40_000);
});

describe('pid file, metrics and signals', () => {
  it('lock SOCKET.pid with the pid to signal, answer --metrics-socket and SIGUSR1, and clean up on SIGHUP', async () => {
    fresh();
    const sock = path.join(dir, 'vfs.sock');
    const metricsSock = path.join(dir, 'metrics.sock');
    const child = spawn(
      process.execPath,
      [CLI, '--socket-path', sock, '--shared-dir', share, '--metrics-socket', metricsSock, '--log-level', 'debug'],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    children.push(child);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const done = exited(child);
    await waitForFile(sock);
    await waitForFile(metricsSock);
    expect(fs.readFileSync(`${sock}.pid`, 'utf8')).toBe(`${child.pid}\n`);

    // A second daemon on the same socket path stops at the pid file, and leaves the first one's socket alone.
    const second = spawnSync(process.execPath, [CLI, '--socket-path', sock, '--shared-dir', share], { encoding: 'utf8', timeout: 20_000 });
    expect(second.status).toBe(1);
    expect(second.stderr).toContain(`another daemon (pid ${child.pid}) holds ${sock}.pid`);
    expect(fs.existsSync(sock)).toBe(true);

    const fuse = await FuseDriver.connect(sock, { timeoutMs: 10_000 });
    await fuse.init();
    await fuse.lookup(1, 'missing').catch(() => undefined);
    const snapshot = await new Promise<string>((resolve, reject) => {
      let text = '';
      net
        .createConnection(metricsSock)
        .on('data', (d) => (text += d))
        .on('end', () => resolve(text))
        .on('error', reject);
    });
    const m = JSON.parse(snapshot);
    expect(m.version).toBe(1);
    expect(m.opcodes.INIT.count).toBe(1);
    expect(m.opcodes.LOOKUP).toMatchObject({ count: 1, errors: 1 });
    expect(m.errnos.ENOENT).toBe(1);
    expect(m.gauges.inodes).toBeGreaterThanOrEqual(1);
    // At debug, one line per request.
    for (let i = 0; i < 100 && !/FUSE LOOKUP unique=\d+ nodeid=1 -> ENOENT [\d.]+us/.test(stderr); i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(stderr).toMatch(/FUSE LOOKUP unique=\d+ nodeid=1 -> ENOENT [\d.]+us/);

    // SIGUSR1 reaches the daemon through the launcher and dumps; it never opens the inspector.
    child.kill('SIGUSR1');
    for (let i = 0; i < 100 && !stderr.includes('info: metrics {'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(JSON.parse(stderr.split('info: metrics ')[1].split('\n')[0]).opcodes.LOOKUP.count).toBe(1);
    expect(stderr).not.toMatch(/Debugger listening/);

    child.kill('SIGHUP');
    expect(await done).toBe(0);
    fuse.close();
    for (const p of [sock, `${sock}.pid`, metricsSock]) expect(fs.existsSync(p), p).toBe(false);
  }, 60_000);

  it('never removes, at stop, a file of the share that sits at the socket path inside the sandbox', async () => {
    // After pivot_root the socket path names a file of the share: the launcher removes our socket, not the daemon.
    fresh();
    const sock = path.join(dir, 'vfs.sock');
    const decoy = path.join(share, sock);
    fs.mkdirSync(path.dirname(decoy), { recursive: true });
    fs.writeFileSync(decoy, 'guest data');
    fs.writeFileSync(`${decoy}.pid`, 'guest data');
    const child = spawn(process.execPath, [CLI, '--socket-path', sock, '--shared-dir', share, '--log-level', 'error'], { stdio: 'ignore' });
    children.push(child);
    const done = exited(child);
    await waitForFile(sock);
    child.kill('SIGTERM');
    expect(await done).toBe(0);
    expect(fs.readFileSync(decoy, 'utf8')).toBe('guest data');
    expect(fs.readFileSync(`${decoy}.pid`, 'utf8')).toBe('guest data');
    expect(fs.existsSync(sock)).toBe(false);
  }, 30_000);
});
