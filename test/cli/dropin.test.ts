/**
 * virtiofsd-ts as a drop-in for the C and Rust virtiofsd: every option
 * libvirt passes (separate-options and legacy -o modes), the Rust daemon's
 * spellings, --help/--version, and the commands that must work without the
 * native addon (libvirt runs --print-capabilities before anything else).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CAPABILITIES, OPTIONS, UsageError, parseArgs } from '../../src/cli';
import { DAX_POLICIES, DEFAULT_DAX_POLICY, type DaemonConfig } from '../../src/config';
import { DEFAULT_INIT_FLAGS, FuseDriver } from '../../src/guest/fuse-driver';
import { FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2, FUSE_INIT_EXT } from '../../src/fuse-server/protocol';
import { UnixListener } from '../../src/sys';
import { listenFd } from '../../src/systemd';
import { ensureBuilt } from '../helpers/backends';

const REPO = path.resolve(__dirname, '../..');
const CLI = path.join(REPO, 'bin/virtiofsd-ts.js');
const VERSION = (JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;

let dir: string;
let sockDir: string;
let sock: string;
beforeAll(() => {
  ensureBuilt();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dropin-share-'));
  sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dropin-sock-'));
  sock = path.join(sockDir, 'vfs.sock');
}, 120_000);
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(sockDir, { recursive: true, force: true });
});

function config(argv: string[], env: NodeJS.ProcessEnv = {}, pid = 4242): DaemonConfig {
  const parsed = parseArgs(argv, env, pid);
  if (parsed.kind !== 'daemon') throw new Error(`expected a daemon config, got ${parsed.kind}`);
  return parsed.config;
}
function usageError(argv: string[]): string {
  try {
    config(argv);
  } catch (err) {
    if (err instanceof UsageError) return err.message;
    throw err;
  }
  throw new Error(`accepted: ${argv.join(' ')}`);
}
function run(args: string[], options: { cwd?: string; cli?: string } = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [options.cli ?? CLI, ...args], { encoding: 'utf8', timeout: 20_000, cwd: options.cwd });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("libvirt's command lines (src/qemu/qemu_virtiofs.c)", () => {
  it('separate-options mode: every argument it can pass is accepted with its meaning', () => {
    const listener = UnixListener.listen(sock);
    try {
      const c = config([
        `--fd=${listener.fd}`,
        '--shared-dir',
        dir,
        '--cache',
        'never',
        '--sandbox',
        'chroot',
        '--xattr',
        '--thread-pool-size=16',
        '--rlimit-nofile=4096',
        '--log-level',
        'debug',
        '--uid-map=:0:1000:1:',
        '--uid-map=:1:100000:65536:',
        '--gid-map=:0:1000:1:',
        '--gid-map=:1:100000:65536:',
      ]);
      expect(c).toMatchObject({
        fd: listener.fd,
        sharedDir: dir,
        cache: 'never',
        sandbox: 'chroot',
        sandboxExplicit: true,
        xattr: true,
        threadPoolSize: 16,
        rlimitNofile: 4096,
        logLevel: 'debug',
        uidMapNs: ['0:1000:1', '1:100000:65536'],
        gidMapNs: ['0:1000:1', '1:100000:65536'],
      });
      // libvirt's `cache=always` and the default (no --cache) as well.
      expect(config([`--fd=${listener.fd}`, '--shared-dir', dir, '--cache', 'always']).cache).toBe('always');
    } finally {
      listener.close(true);
    }
  });

  it('legacy -o mode: source, cache, sandbox, xattr/no_xattr, flock/no_flock, posix_lock/no_posix_lock, -d', () => {
    const listener = UnixListener.listen(sock);
    try {
      const on = config([
        `--fd=${listener.fd}`,
        '-o',
        `source=${dir},cache=none,sandbox=namespace,xattr,flock,posix_lock`,
        '--thread-pool-size=0',
        '-d',
      ]);
      expect(on).toMatchObject({
        sharedDir: dir,
        cache: 'never',
        sandbox: 'namespace',
        xattr: true,
        flock: true,
        posixLock: true,
        threadPoolSize: 0,
        logLevel: 'debug',
      });
      const off = config([`--fd=${listener.fd}`, '-o', `source=${dir},cache=always,sandbox=chroot,no_xattr,no_flock,no_posix_lock`]);
      expect(off).toMatchObject({ cache: 'always', sandbox: 'chroot', xattr: false, flock: false, posixLock: false });
    } finally {
      listener.close(true);
    }
  });

  it('--allow-mmap --cache never offers FUSE_DIRECT_IO_ALLOW_MMAP to a guest that asks for it, and only then', async () => {
    for (const allow of [true, false]) {
      const child = spawn(
        process.execPath,
        [CLI, '--socket-path', sock, '--shared-dir', dir, '--cache', 'never', ...(allow ? ['--allow-mmap'] : [])],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      for (let i = 0; !fs.existsSync(sock); i++) {
        if (i > 500) throw new Error('no socket');
        await new Promise((r) => setTimeout(r, 20));
      }
      const fuse = await FuseDriver.connect(sock, { timeoutMs: 10_000 });
      const reply = await fuse.init({ flags: DEFAULT_INIT_FLAGS | FUSE_INIT_EXT, flags2: FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2 });
      expect((reply.flags2 & FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2) !== 0).toBe(allow);
      fuse.close();
      expect(await exited).toBe(0);
    }
  }, 60_000);

  it('a mock libvirt start (system mode) serves, and probe passes against it', async () => {
    const listener = UnixListener.listen(sock);
    // As libvirt runs it: the chardev's listening socket passed as --fd, every separate option.
    const child = spawn(
      process.execPath,
      [
        CLI,
        '--fd=3',
        '--shared-dir',
        dir,
        '--cache',
        'always',
        '--sandbox',
        'chroot',
        '--xattr',
        '--thread-pool-size=4',
        '--rlimit-nofile=4096',
        '--log-level',
        'debug',
      ],
      { stdio: ['ignore', 'ignore', 'pipe', listener.fd] },
    );
    listener.close();
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const probe = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const p = spawn(process.execPath, [CLI, 'probe', '--socket-path', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      p.stderr.on('data', (d) => (out += d));
      p.on('exit', (code) => resolve({ code, out }));
    });
    expect(probe.out).toMatch(/summary: ok, 6 steps/);
    expect(probe.code).toBe(0);
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/sandbox chroot/);
    fs.rmSync(sock, { force: true });
  }, 60_000);
});

describe("the Rust virtiofsd's spellings", () => {
  it('--socket is --socket-path (with one line saying so); both at once is an error', () => {
    const c = config(['--socket', sock, '--shared-dir', dir]);
    expect(c.socketPath).toBe(sock);
    expect(c.notices).toContain('--socket is deprecated: use --socket-path');
    expect(usageError(['--socket', sock, '--socket-path', sock, '--shared-dir', dir])).toMatch(/give one of them/);
  });

  it('--inode-file-handles alone is prefer, fallback is prefer (with a notice)', () => {
    expect(config(['--socket-path', sock, '--shared-dir', dir, '--inode-file-handles']).inodeFileHandles).toBe('prefer');
    const c = config(['--socket-path', sock, '--shared-dir', dir, '--inode-file-handles=fallback']);
    expect(c.inodeFileHandles).toBe('prefer');
    expect(c.notices!.length).toBe(1);
    expect(usageError(['--socket-path', sock, '--shared-dir', dir, '--inode-file-handles=sometimes'])).toBe(
      '--inode-file-handles sometimes: expected never, prefer or mandatory',
    );
  });

  it('--log-level trace|off, -o loglevel= and -o log_level=, --syslog, --allow-mmap (one line where the cache policy leaves nothing to it)', () => {
    const base = ['--socket-path', sock, '--shared-dir', dir];
    expect(config([...base, '--log-level', 'trace']).logLevel).toBe('trace');
    expect(config([...base, '--log-level', 'off']).logLevel).toBe('off');
    expect(config([...base, '-o', 'loglevel=warn']).logLevel).toBe('warn');
    expect(config([...base, '-o', 'log_level=err']).logLevel).toBe('error');
    expect(config([...base, '--syslog']).syslog).toBe(true);
    const mmap = config([...base, '--allow-mmap']);
    expect(mmap.allowMmap).toBe(true);
    expect(mmap.notices!.filter((n) => n.includes('--allow-mmap')).length).toBe(1);
    expect(config([...base, '-o', 'allow_mmap']).allowMmap).toBe(true);
    for (const cache of ['never', 'metadata']) {
      const direct = config([...base, '--allow-mmap', '--cache', cache]);
      expect(direct.allowMmap).toBe(true);
      expect(direct.notices ?? []).toEqual([]);
    }
  });

  it('a pid file beside the socket; none with --fd', () => {
    expect(config(['--socket-path', sock, '--shared-dir', dir]).pidFile).toBe(`${sock}.pid`);
    const listener = UnixListener.listen(sock);
    try {
      expect(config(['--fd', String(listener.fd), '--shared-dir', dir]).pidFile).toBeUndefined();
    } finally {
      listener.close(true);
    }
  });

  it('socket activation is --fd 3, only for the pid LISTEN_PID names (test/ops runs it for real)', () => {
    expect(listenFd({ LISTEN_FDS: '1', LISTEN_PID: '4242' }, 4242)).toEqual({ fd: 3, extra: 0 });
    expect(listenFd({ LISTEN_FDS: '2', LISTEN_PID: '4242' }, 4242)).toEqual({ fd: 3, extra: 1 });
    expect(listenFd({ LISTEN_FDS: '1', LISTEN_PID: '1' }, 4242)).toBeNull();
    expect(listenFd({ LISTEN_FDS: '0', LISTEN_PID: '4242' }, 4242)).toBeNull();
    // The relaunched daemon (a child of the launcher in namespace mode) takes the first process's word for it.
    expect(listenFd({ VIRTIOFSD_TS_LISTEN_FD: '3' }, 1)).toEqual({ fd: 3, extra: 0 });
    expect(() => config(['--shared-dir', dir], { LISTEN_FDS: '1', LISTEN_PID: '1' }, 4242)).toThrow(/a socket is required/);
  });

  it('errors name each flag once (no camelCase twin)', () => {
    expect(usageError(['--socket-path', sock, '--shared-dir', dir, '--foo-bar'])).toBe('Unknown argument: foo-bar');
    expect(usageError(['--socket-path', sock, '--shared-dir', dir, '--cache', 'x'])).toBe(
      'Invalid values: Argument: cache, Given: "x", Choices: "never", "auto", "always", "metadata"',
    );
  });

  it('offers the DAX policies the file server has', () => {
    expect(OPTIONS['dax-policy'].choices).toEqual(DAX_POLICIES);
    expect(OPTIONS['dax-policy'].choices).toContain(DEFAULT_DAX_POLICY);
  });
});

describe('the built command', () => {
  it('--help and -h print the options and exit 0, whatever else is on the line', () => {
    for (const args of [['--help'], ['-h'], ['--socket-path', sock, '--help']]) {
      const r = run(args);
      expect(r.status, args.join(' ')).toBe(0);
      expect(r.stdout).toContain('--socket-path');
      expect(r.stdout).toContain('--thread-pool-size');
      expect(r.stderr).toBe('');
    }
  });

  it('--version and -V print the version and exit 0', () => {
    for (const flag of ['--version', '-V']) {
      const r = run([flag]);
      expect(r.status).toBe(0);
      expect(r.stdout).toBe(`virtiofsd-ts ${VERSION}\n`);
    }
  });

  it('probe --help exits 0 with its usage', () => {
    const r = run(['probe', '--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('--socket-path');
    expect(r.stderr).toBe('');
  });

  it('--help, --version and --print-capabilities work without the native addon; the daemon says what is missing', () => {
    // An install with scripts blocked: the package's files, its dependencies, no build/ and no prebuilds/.
    const pkg = fs.mkdtempSync(path.join(os.tmpdir(), 'no-addon-'));
    try {
      for (const entry of ['bin', 'dist', 'package.json']) fs.cpSync(path.join(REPO, entry), path.join(pkg, entry), { recursive: true });
      fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(pkg, 'node_modules'));
      const cli = path.join(pkg, 'bin/virtiofsd-ts.js');
      expect(run(['--help'], { cli }).status).toBe(0);
      expect(run(['--version'], { cli }).stdout).toBe(`virtiofsd-ts ${VERSION}\n`);
      const caps = run(['--print-capabilities'], { cli });
      expect(caps.status).toBe(0);
      expect(JSON.parse(caps.stdout)).toEqual(CAPABILITIES);
      const daemon = run(['--socket-path', path.join(pkg, 's.sock'), '--shared-dir', dir, '--sandbox', 'none'], { cli });
      expect(daemon.status).toBe(1);
      expect(daemon.stderr).toMatch(/^virtiofsd-ts: native addon not built/);
    } finally {
      fs.rmSync(pkg, { recursive: true, force: true });
    }
  });
});

describe('--print-capabilities', () => {
  it('claims only what we do: separate options, no migration', () => {
    expect(CAPABILITIES).toEqual({ type: 'fs', features: ['separate-options'] });
    expect(execFileSync(process.execPath, [CLI, '--print-capabilities'], { encoding: 'utf8' })).toBe(JSON.stringify(CAPABILITIES) + '\n');
  });
});
