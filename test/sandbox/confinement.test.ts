/**
 * The command's sandbox modes, as a user starts them: the daemon shows its
 * confinement in /proc (its own mount namespace with the share as root, a
 * reduced CapEff, Seccomp: 2), still serves the share, and ends cleanly.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FuseDriver } from '../../src/guest/fuse-driver';
import type { FuseRequestError } from '../../src/guest/fuse-transport';
import { CLI } from '../helpers/backends';

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CREAT = 0o100;

interface Started {
  child: ChildProcess;
  exited: Promise<number | null>;
  stderr: () => string;
}

function start(args: string[], opts: { uid?: number; gid?: number } = {}): Started {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'], uid: opts.uid, gid: opts.gid });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exited, stderr: () => err };
}

async function waitFor<T>(what: string, probe: () => T | null | undefined | false, started: Started, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (started.child.exitCode !== null) throw new Error(`daemon exited (${started.child.exitCode}) before ${what}: ${started.stderr()}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${started.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The process that serves: the launcher's only child in namespace mode, else the process itself. */
function serverPid(pid: number): number {
  try {
    const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
    if (children) return Number(children.split(/\s+/)[0]);
  } catch {
    /* gone */
  }
  return pid;
}

function status(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/** CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD, SETFCAP: what the passthrough needs by default. */
const DEFAULT_CAPS = (1n << 0n) | (1n << 1n) | (1n << 3n) | (1n << 4n) | (1n << 6n) | (1n << 7n) | (1n << 27n) | (1n << 31n);

async function roundTrip(sock: string, share: string): Promise<void> {
  const fuse = await FuseDriver.connect(sock, { timeoutMs: 10_000 });
  try {
    await fuse.init();
    const e = await fuse.lookup(1, 'hello');
    const h = await fuse.open(e.nodeid, O_RDONLY);
    expect((await fuse.read(e.nodeid, h.fh, 0, 100)).toString()).toBe('inside\n');
    await fuse.release(e.nodeid, h.fh);
    const c = await fuse.create(1, 'made-by-guest', O_WRONLY | O_CREAT, 0o644);
    await fuse.write(c.entry.nodeid, c.open.fh, 0, Buffer.from('written\n'));
    await fuse.release(c.entry.nodeid, c.open.fh);
  } finally {
    fuse.close();
  }
  expect(fs.readFileSync(path.join(share, 'made-by-guest'), 'utf8')).toBe('written\n');
}

describe('sandbox modes of the virtiofsd-ts command', () => {
  let base: string;
  let share: string;
  let sock: string;
  let running: Started | null = null;

  beforeEach(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsd-sandbox-'));
    share = path.join(base, 'share');
    fs.mkdirSync(share);
    fs.writeFileSync(path.join(share, 'hello'), 'inside\n');
    fs.writeFileSync(path.join(base, 'outside'), 'secret\n', { mode: 0o600 });
    sock = path.join(base, 'vfsd.sock');
  });
  afterEach(async () => {
    if (running && running.child.exitCode === null) {
      running.child.kill('SIGKILL');
      await running.exited;
    }
    running = null;
    fs.rmSync(base, { recursive: true, force: true });
  });

  it('namespace (the default as root): own mount, pid and net namespaces, the share as root, reduced caps, seccomp', async () => {
    running = start(['--socket-path', sock, '--shared-dir', share, '--log-level', 'error']);
    const pid = await waitFor(
      'the socket',
      () => fs.existsSync(sock) && serverPid(running!.child.pid!) !== running!.child.pid && true,
      running,
    );
    const server = serverPid(running.child.pid!);
    // Seccomp is the last step of start-up; wait for it (the launcher's io_uring filter, then the daemon's).
    await waitFor('seccomp', () => status(server).Seccomp_filters === '2', running);
    expect(pid).toBe(true);
    const st = status(server);
    expect(st.NoNewPrivs).toBe('1');
    expect(BigInt('0x' + st.CapEff)).toBe(DEFAULT_CAPS);
    expect(BigInt('0x' + st.CapPrm)).toBe(DEFAULT_CAPS);
    // Every thread is filtered (TSYNC), and has given up what the launcher did not keep.
    for (const tid of fs.readdirSync(`/proc/${server}/task`)) {
      const t = fs.readFileSync(`/proc/${server}/task/${tid}/status`, 'utf8');
      expect(t).toMatch(/^Seccomp:\s+2$/m);
      expect(BigInt('0x' + /^CapBnd:\s+(\w+)$/m.exec(t)![1]) & ~(DEFAULT_CAPS | (1n << 21n))).toBe(0n);
    }
    for (const ns of ['mnt', 'pid', 'net'])
      expect(fs.readlinkSync(`/proc/${server}/ns/${ns}`)).not.toBe(fs.readlinkSync(`/proc/self/ns/${ns}`));
    // Its root is the share: nothing else of the host is in its mount namespace.
    expect(fs.readdirSync(`/proc/${server}/root`).sort()).toEqual(['hello']);
    expect(fs.readFileSync(`/proc/${server}/mountinfo`, 'utf8').trim().split('\n')).toHaveLength(1);
    await roundTrip(sock, share);
    // One front-end: it has left, the daemon ends with 0 and its socket file is gone.
    expect(await running.exited).toBe(0);
    expect(fs.existsSync(sock)).toBe(false);
  }, 40_000);

  it('namespace: SIGTERM to the launcher stops the daemon cleanly', async () => {
    running = start(['--socket-path', sock, '--shared-dir', share, '--log-level', 'error']);
    const server = await waitFor(
      'the daemon',
      () => fs.existsSync(sock) && serverPid(running!.child.pid!) !== running!.child.pid && serverPid(running!.child.pid!),
      running,
    );
    await waitFor('seccomp', () => status(server).Seccomp_filters === '2', running);
    running.child.kill('SIGTERM');
    expect(await running.exited).toBe(0);
    expect(fs.existsSync(`/proc/${server}`)).toBe(false);
    expect(fs.existsSync(sock)).toBe(false);
  }, 40_000);

  it('namespace: a SIGTERM that arrives while the daemon starts still stops it (pid 1 ignores signals it has no handler for)', async () => {
    for (let round = 0; round < 5; round++) {
      fs.rmSync(sock, { force: true });
      running = start(['--socket-path', sock, '--shared-dir', share, '--log-level', 'error']);
      // The socket file appears mid start-up, before the sandbox is entered and the filter installed.
      for (const end = Date.now() + 10_000; !fs.existsSync(sock) && running.child.exitCode === null && Date.now() < end;) {
        await new Promise((r) => setImmediate(r));
      }
      expect(fs.existsSync(sock), running.stderr()).toBe(true);
      running.child.kill('SIGTERM');
      const code = await Promise.race([running.exited, new Promise((r) => setTimeout(() => r('still running after 10 s'), 10_000))]);
      expect(code, `round ${round}: ${running.stderr()}`).toBe(0);
    }
  }, 90_000);

  it('namespace: a SIGTERM that arrives while Node itself boots (before any handler exists) still stops it', async () => {
    for (let round = 0; round < 3; round++) {
      fs.rmSync(sock, { force: true });
      running = start(['--socket-path', sock, '--shared-dir', share, '--log-level', 'error']);
      const launcher = running.child.pid!;
      // The launcher's child appears: it is execing Node, which has no handlers for a while.
      for (const end = Date.now() + 10_000; serverPid(launcher) === launcher && running.child.exitCode === null && Date.now() < end;) {
        await new Promise((r) => setImmediate(r));
      }
      running.child.kill('SIGTERM');
      const code = await Promise.race([running.exited, new Promise((r) => setTimeout(() => r('still running after 15 s'), 15_000))]);
      expect(code, `round ${round}: ${running.stderr()}`).toBe(0);
    }
  }, 90_000);

  it('chroot: the share as root in the host mount namespace, reduced caps, seccomp', async () => {
    running = start(['--socket-path', sock, '--shared-dir', share, '--sandbox', 'chroot', '--log-level', 'error']);
    // The launcher waits for the daemon (to remove the socket file at the end): the daemon is its child.
    const pid = await waitFor(
      'the daemon',
      () => fs.existsSync(sock) && serverPid(running!.child.pid!) !== running!.child.pid && serverPid(running!.child.pid!),
      running,
    );
    await waitFor('seccomp', () => status(pid).Seccomp_filters === '2', running);
    expect(fs.readlinkSync(`/proc/${pid}/ns/mnt`)).toBe(fs.readlinkSync('/proc/self/ns/mnt'));
    expect(fs.realpathSync(`/proc/${pid}/root`)).toBe(fs.realpathSync(share));
    expect(BigInt('0x' + status(pid).CapEff)).toBe(DEFAULT_CAPS);
    await roundTrip(sock, share);
    expect(await running.exited).toBe(0);
    expect(fs.existsSync(sock)).toBe(false);
  }, 40_000);

  it('none: no root change, but caps and seccomp still apply, and the share is served', async () => {
    running = start(['--socket-path', sock, '--shared-dir', share, '--sandbox', 'none', '--log-level', 'error']);
    const pid = running.child.pid!;
    await waitFor('seccomp', () => fs.existsSync(sock) && status(pid).Seccomp_filters === '2', running);
    expect(fs.realpathSync(`/proc/${pid}/root`)).toBe('/');
    expect(BigInt('0x' + status(pid).CapEff)).toBe(DEFAULT_CAPS);
    await roundTrip(sock, share);
    expect(await running.exited).toBe(0);
  }, 40_000);

  it('--seccomp none and --modcaps change what is applied', async () => {
    running = start([
      '--socket-path',
      sock,
      '--shared-dir',
      share,
      '--sandbox',
      'none',
      '--seccomp',
      'none',
      '--modcaps=-mknod:+sys_admin',
      '--log-level',
      'error',
    ]);
    const pid = running.child.pid!;
    const expected = (DEFAULT_CAPS & ~(1n << 27n)) | (1n << 21n);
    await waitFor('the caps', () => fs.existsSync(sock) && BigInt('0x' + status(pid).CapEff) === expected, running);
    expect(status(pid).Seccomp).toBe('0');
    await roundTrip(sock, share);
    expect(await running.exited).toBe(0);
  }, 40_000);

  it('unprivileged: namespace mode through a user namespace, files created as the user', async () => {
    const nobody = 65534;
    fs.chownSync(base, nobody, nobody);
    fs.chownSync(share, nobody, nobody);
    fs.chownSync(path.join(share, 'hello'), nobody, nobody);
    running = start(['--socket-path', sock, '--shared-dir', share, '--log-level', 'warn'], { uid: nobody, gid: nobody });
    await waitFor('the socket', () => fs.existsSync(sock), running);
    const server = await waitFor(
      'the daemon',
      () => serverPid(running!.child.pid!) !== running!.child.pid && serverPid(running!.child.pid!),
      running,
    );
    await waitFor('seccomp', () => status(server).Seccomp_filters === '2', running);
    expect(fs.readlinkSync(`/proc/${server}/ns/user`)).not.toBe(fs.readlinkSync('/proc/self/ns/user'));
    expect(fs.readFileSync(`/proc/${server}/uid_map`, 'utf8').trim().split(/\s+/)).toEqual(['0', String(nobody), '1']);
    await roundTrip(sock, share);
    expect(fs.statSync(path.join(share, 'made-by-guest')).uid).toBe(nobody);
    expect(await running.exited).toBe(0);
  }, 40_000);

  for (const mode of ['namespace', 'chroot', 'none'] as const) {
    it(`${mode}: escape attempts reach nothing outside the share`, async () => {
      fs.mkdirSync(path.join(share, 'sub'));
      fs.symlinkSync('/etc', path.join(share, 'etc'));
      fs.symlinkSync('../outside', path.join(share, 'rel'));
      fs.symlinkSync('/proc/self/root', path.join(share, 'procroot'));
      running = start(['--socket-path', sock, '--shared-dir', share, '--sandbox', mode, '--log-level', 'error']);
      await waitFor('the socket', () => fs.existsSync(sock), running);
      const before = snapshot(base, share);
      const fuse = await FuseDriver.connect(sock, { timeoutMs: 10_000 });
      const code = (p: Promise<unknown>) =>
        p.then(
          () => 'ok',
          (e: FuseRequestError) => e.code,
        );
      try {
        await fuse.init();
        const sub = await fuse.lookup(1, 'sub');
        // A host process moves the directory the guest holds out of the share.
        fs.renameSync(path.join(share, 'sub'), path.join(base, 'moved'));
        expect(await code(fuse.lookup(sub.nodeid, '..'))).toBe('ENOENT');
        expect(await code(fuse.create(sub.nodeid, 'evil', O_WRONLY | O_CREAT, 0o4755))).toBe('ENOENT');
        expect(await code(fuse.mkdir(sub.nodeid, 'evil-dir', 0o755))).toBe('ENOENT');
        expect(await code(fuse.lookup(1, '..'))).toBe('ok');
        // Symlinks pointing outside are links, never followed.
        for (const name of ['etc', 'rel', 'procroot']) {
          const link = await fuse.lookup(1, name);
          expect(await code(fuse.lookup(link.nodeid, 'hostname'))).toBe('ENOTDIR');
          expect(await code(fuse.open(link.nodeid, O_RDONLY))).not.toBe('ok');
        }
        for (const bad of ['../outside', 'sub/../..', '/etc/hostname', 'a\0b']) {
          expect(await code(fuse.lookup(1, bad))).not.toBe('ok');
          expect(await code(fuse.create(1, bad, O_WRONLY | O_CREAT, 0o644))).not.toBe('ok');
        }
      } finally {
        fuse.close();
      }
      expect(await running.exited).toBe(0);
      // Only the host's own move changed anything, and nothing appeared in the moved directory.
      expect(snapshot(base, share)).toEqual({ ...before, moved: 'dir' });
      expect(fs.readdirSync(path.join(base, 'moved'))).toEqual([]);
      expect(fs.readFileSync(path.join(base, 'outside'), 'utf8')).toBe('secret\n');
    }, 40_000);
  }

  it('never opens the inspector on SIGUSR1 (any local user could run code as the daemon through it)', async () => {
    running = start(['--socket-path', sock, '--shared-dir', share, '--sandbox', 'none', '--seccomp', 'none', '--log-level', 'error']);
    const pid = running.child.pid!;
    await waitFor('the socket', () => fs.existsSync(sock), running);
    const listeningTcp = () =>
      fs
        .readFileSync(`/proc/${pid}/net/tcp`, 'utf8')
        .split('\n')
        .slice(1)
        .filter((l) => l.trim().split(/\s+/)[3] === '0A').length;
    const inspectorSockets = () =>
      fs.readdirSync(`/proc/${pid}/fd`).filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:');
        } catch {
          return false;
        }
      }).length;
    const before = { tcp: listeningTcp(), sockets: inspectorSockets() };
    process.kill(pid, 'SIGUSR1');
    await new Promise((r) => setTimeout(r, 1000));
    expect(running.child.exitCode).toBeNull();
    expect(running.stderr()).not.toMatch(/Debugger listening/);
    expect(listeningTcp()).toBe(before.tcp);
    expect(inspectorSockets()).toBe(before.sockets);
    await roundTrip(sock, share);
    expect(await running.exited).toBe(0);
  }, 40_000);

  it('refuses chroot unprivileged and --uid-map as root, with one clear line', () => {
    fs.chownSync(base, 65534, 65534);
    const asNobody = execFileSyncStatus(['--socket-path', sock, '--shared-dir', share, '--sandbox', 'chroot'], 65534);
    expect(asNobody.status).toBe(1);
    expect(asNobody.stderr).toMatch(/^virtiofsd-ts: --sandbox chroot needs root/);
    const asRoot = execFileSyncStatus(['--socket-path', sock, '--shared-dir', share, '--uid-map', ':0:1000:1:']);
    expect(asRoot.status).toBe(1);
    expect(asRoot.stderr).toMatch(/^virtiofsd-ts: --uid-map\/--gid-map are for an unprivileged daemon/);
  });
});

/** What lies beside the share (the share itself not descended into), with sizes and modes. */
function snapshot(base: string, share: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(base)) {
    const p = path.join(base, name);
    // The socket and its pid file are the daemon's own, gone when it exits.
    if (p === share || name.endsWith('.sock') || name.endsWith('.sock.pid')) continue;
    const st = fs.lstatSync(p);
    out[name] = st.isDirectory() ? 'dir' : `${st.size}:${(st.mode & 0o7777).toString(8)}:${st.mtimeMs}`;
  }
  return out;
}

function execFileSyncStatus(args: string[], uid?: number): { status: number; stderr: string } {
  try {
    execFileSync(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'], uid, gid: uid, timeout: 10_000 });
    return { status: 0, stderr: '' };
  } catch (err) {
    const e = err as { status: number; stderr: Buffer };
    return { status: e.status, stderr: e.stderr.toString() };
  }
}
