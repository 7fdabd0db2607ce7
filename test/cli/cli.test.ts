import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError, parseArgs } from '../../src/cli';
import type { DaemonConfig } from '../../src/config';
import { FuseDriver } from '../../src/guest/fuse-driver';
import { UnixListener } from '../../src/sys';

const REPO = path.resolve(__dirname, '../..');
const CLI = path.join(REPO, 'bin/virtiofsd-ts.js');

let dir: string;
let sock: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-share-'));
  sock = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cli-sock-')), 'vfs.sock');
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(path.dirname(sock), { recursive: true, force: true });
});

function config(...extra: string[]): DaemonConfig {
  const parsed = parseArgs(['--socket-path', sock, '--shared-dir', dir, ...extra]);
  if (parsed.kind !== 'daemon') throw new Error('expected a daemon config');
  return parsed.config;
}
function usageError(...extra: string[]): string {
  try {
    config(...extra);
  } catch (err) {
    if (err instanceof UsageError) return err.message;
    throw err;
  }
  throw new Error(`accepted: ${extra.join(' ')}`);
}

describe('share options', () => {
  it('are off by default, as in the reference daemon', () => {
    const c = config();
    expect(c).toMatchObject({ cache: 'auto', readonly: false, inodeFileHandles: 'never', translateUid: [], translateGid: [] });
    for (const key of [
      'xattr',
      'posixAcl',
      'securityLabel',
      'posixLock',
      'flock',
      'writeback',
      'allowDirectIo',
      'killprivV2',
      'announceSubmounts',
      'preserveNoatime',
    ] as const) {
      expect(c[key], key).toBeFalsy();
    }
    expect(c.readdirplus).toBeUndefined();
    expect(c.daxWindow).toBeUndefined();
    expect(c.daxPolicy).toBeUndefined();
    expect(c.rlimitNofile).toBeUndefined();
  });

  it('each flag sets its field', () => {
    const c = config(
      '--xattr',
      '--posix-acl',
      '--security-label',
      '--posix-lock',
      '--flock',
      '--writeback',
      '--no-readdirplus',
      '--allow-direct-io',
      '--killpriv-v2',
      '--announce-submounts',
      '--preserve-noatime',
      '--inode-file-handles=prefer',
      '--rlimit-nofile',
      '4096',
      '--cache',
      'metadata',
      '--readonly',
    );
    expect(c).toMatchObject({
      xattr: true,
      posixAcl: true,
      securityLabel: true,
      posixLock: true,
      flock: true,
      writeback: true,
      readdirplus: false,
      allowDirectIo: true,
      killprivV2: true,
      announceSubmounts: true,
      preserveNoatime: true,
      inodeFileHandles: 'prefer',
      rlimitNofile: 4096,
      cache: 'metadata',
      readonly: true,
    });
  });

  it('--xattrmap, --translate-uid and --translate-gid are validated and kept', () => {
    const c = config(
      '--xattrmap',
      ':map::user.virtiofs.:',
      '--translate-uid',
      'map:0:100000:65536',
      '--translate-uid',
      'forbid-guest:70000:1',
      '--translate-gid',
      'squash-guest:0:100:65536',
    );
    expect(c.xattrmap).toBe(':map::user.virtiofs.:');
    expect(c.translateUid).toEqual(['map:0:100000:65536', 'forbid-guest:70000:1']);
    expect(c.translateGid).toEqual(['squash-guest:0:100:65536']);
  });

  it('--dax-window takes bytes or K/M/G; --dax-policy defaults to inode (DEFAULT_DAX_POLICY)', () => {
    expect(config('--dax-window', '1G')).toMatchObject({ daxWindow: 1n << 30n, daxPolicy: 'inode' });
    expect(config('--dax-window', '4194304', '--dax-policy', 'inode')).toMatchObject({ daxWindow: 4n << 20n, daxPolicy: 'inode' });
    expect(config('--dax-window', '64M', '--dax-policy', 'never').daxWindow).toBe(64n << 20n);
  });
});

describe('sandbox options', () => {
  it('default to namespace and seccomp kill, and take the forms virtiofsd and libvirt use', () => {
    expect(config()).toMatchObject({ sandbox: 'namespace', sandboxExplicit: false, seccomp: 'kill', uidMapNs: [], gidMapNs: [] });
    expect(config('--sandbox', 'chroot', '--seccomp', 'log')).toMatchObject({ sandbox: 'chroot', sandboxExplicit: true, seccomp: 'log' });
    expect(config('-o', 'sandbox=none,modcaps=+sys_admin:-mknod')).toMatchObject({
      sandbox: 'none',
      sandboxExplicit: true,
      modcaps: '+sys_admin:-mknod',
    });
    expect(config('--modcaps=-fsetid')).toMatchObject({ modcaps: '-fsetid' });
    expect(config('--uid-map=:0:1000:1:', '--gid-map', '0:1000:1')).toMatchObject({ uidMapNs: ['0:1000:1'], gidMapNs: ['0:1000:1'] });
  });
});

describe('legacy -o options', () => {
  it('map onto the same fields', () => {
    const c = parseArgs([
      '--socket-path',
      sock,
      '-o',
      `source=${dir},cache=none,xattr,posix_lock,flock,writeback,no_readdirplus,allow_direct_io,announce_submounts,killpriv_v2,posix_acl,security_label,timeout=2.5,log_level=debug`,
    ]);
    expect(c.kind === 'daemon' && c.config).toMatchObject({
      sharedDir: dir,
      cache: 'never',
      xattr: true,
      posixLock: true,
      flock: true,
      writeback: true,
      readdirplus: false,
      allowDirectIo: true,
      announceSubmounts: true,
      killprivV2: true,
      posixAcl: true,
      securityLabel: true,
      timeout: 2.5,
      logLevel: 'debug',
    });
  });

  it('no_ forms turn options off, later ones win, and xattrmap may hold escaped commas', () => {
    const c = config('--xattr', '-o', 'no_xattr,flock,no_flock,no_killpriv_v2', '-o', 'xattrmap=/ok/all/a\\,b//');
    expect(c).toMatchObject({ xattr: false, flock: false, killprivV2: false, xattrmap: '/ok/all/a,b//' });
  });
});

describe('bad values', () => {
  it('are refused with one clear line', () => {
    const cases: [string[], RegExp][] = [
      [['--cache', 'sometimes'], /cache.*Invalid values|Invalid values.*cache/s],
      [['--inode-file-handles', 'always'], /--inode-file-handles always: expected never, prefer or mandatory/],
      [['--dax-policy', 'inode'], /--dax-policy needs --dax-window/],
      [['--dax-window', 'huge'], /--dax-window huge: expected a size/],
      [['--dax-window', '1M'], /at least one 2 MiB range/],
      [['--dax-window', '2097153'], /whole number of 4 KiB pages/],
      [['--dax-window', '4M', '--dax-policy', 'sometimes'], /Invalid values/],
      [['--rlimit-nofile', '-3'], /--rlimit-nofile -3: expected a whole number/],
      [['--rlimit-nofile', 'many'], /--rlimit-nofile many: expected a whole number/],
      [['--xattrmap', ':frob:all:::'], /--xattrmap: xattrmap: unknown rule type 'frob'/],
      [['--translate-uid', 'map:1:2'], /--translate-uid: 'map:1:2': map takes 3 numbers, got 2/],
      [['--translate-gid', 'map:0:1:5', '--translate-gid', 'map:3:9:1'], /overlaps/],
      [['--translate-uid', 'map:0:1:5', '--posix-acl'], /cannot be combined with --posix-acl/],
      [['-o', 'timeout=soon'], /-o timeout=soon: expected a number of seconds/],
      [['-o', 'sandbox=jail'], /unsupported -o option 'sandbox=jail'/],
      [['--sandbox', 'jail'], /Invalid values/],
      [['--seccomp', 'maybe'], /Invalid values/],
      [['--uid-map', '0:1000'], /--uid-map 0:1000: expected :INSIDE:OUTSIDE:COUNT:/],
      [['--gid-map', ':0:1000:0:'], /--gid-map :0:1000:0:: expected :INSIDE:OUTSIDE:COUNT:/],
      [['-o', 'no_such'], /unsupported -o option 'no_such'/],
      [['--no-such-flag'], /Unknown argument/],
    ];
    for (const [args, why] of cases) {
      const msg = usageError(...args);
      expect(msg, args.join(' ')).toMatch(why);
      expect(msg.includes('\n'), args.join(' ')).toBe(false);
    }
  });
});

describe('the built command', () => {
  beforeAll(() => {
    // The installed command runs dist/: build it from these sources.
    execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: REPO, stdio: 'inherit' });
  }, 120_000);

  function run(...args: string[]): { status: number | null; stderr: string; stdout: string } {
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20_000 });
    return { status: r.status, stderr: r.stderr, stdout: r.stdout };
  }

  it('prints one line and exits 1 on a bad flag value', () => {
    const r = run('--socket-path', sock, '--shared-dir', dir, '--dax-window', 'lots');
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('virtiofsd-ts: --dax-window lots: expected a size such as 1G, 512M or 1073741824\n');
  });

  it('fails start-up clearly when mandatory file handles cannot work', () => {
    const r = run('--socket-path', sock, '--shared-dir', '/proc/sys', '--inode-file-handles=mandatory', '--rlimit-nofile', '0');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /^virtiofsd-ts: --inode-file-handles=mandatory: the shared directory's file system cannot use file handles \(\w+\)\n$/,
    );
    expect(fs.existsSync(sock)).toBe(false);
  });

  it('sets RLIMIT_NOFILE as --rlimit-nofile asks, then serves until SIGTERM', async () => {
    const child = spawn(
      process.execPath,
      [CLI, '--socket-path', sock, '--shared-dir', dir, '--rlimit-nofile', '4096', '--log-level', 'error'],
      { stdio: 'ignore' },
    );
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      expect(fs.existsSync(sock)).toBe(true);
      const limits = fs.readFileSync(`/proc/${child.pid}/limits`, 'utf8');
      expect(limits).toMatch(/Max open files\s+4096\s+4096\s+files/);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  }, 30_000);

  it('serves on a listening socket inherited with --fd, as libvirt passes it', async () => {
    const listener = UnixListener.listen(sock);
    const child = spawn(process.execPath, [CLI, '--fd', '3', '--shared-dir', dir, '--log-level', 'error'], {
      stdio: ['ignore', 'ignore', 'pipe', listener.fd],
    });
    listener.close(); // the child holds its own copy
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let fuse: FuseDriver | null = null;
    try {
      fuse = await FuseDriver.connect(sock, { timeoutMs: 5000 });
      const init = await fuse.init();
      expect(init.major).toBe(7);
    } finally {
      fuse?.close();
    }
    // One front-end: the daemon ends when it leaves; the socket file was not ours to remove.
    expect(await exited).toBe(0);
    expect(fs.existsSync(sock)).toBe(true);
    fs.rmSync(sock);
  }, 30_000);

  it('gives the socket to --socket-group with mode 0660', async () => {
    const child = spawn(
      process.execPath,
      [CLI, '--socket-path', sock, '--shared-dir', dir, '--socket-group', 'root', '--log-level', 'error'],
      { stdio: 'ignore' },
    );
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      // The file appears at bind() owner-only; the group and mode follow right after.
      const mode = () => (fs.existsSync(sock) ? fs.statSync(sock).mode & 0o777 : -1);
      for (let i = 0; i < 200 && mode() !== 0o660; i++) await new Promise((r) => setTimeout(r, 25));
      const st = fs.statSync(sock);
      expect(st.gid).toBe(0);
      expect(st.mode & 0o777).toBe(0o660);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    expect(fs.existsSync(sock)).toBe(false); // removed on SIGTERM
  }, 30_000);

  it('creates its socket owner-only without --socket-group', async () => {
    const child = spawn(process.execPath, [CLI, '--socket-path', sock, '--shared-dir', dir, '--log-level', 'error'], { stdio: 'ignore' });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
      expect(fs.statSync(sock).mode & 0o777).toBe(0o600);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  }, 30_000);

  it('refuses an --fd that is not a socket and an unknown --socket-group', () => {
    // spawnSync's stdin is a socketpair: a socket, but not a listening one.
    expect(run('--fd', '0', '--shared-dir', dir).stderr).toBe('virtiofsd-ts: --fd 0 is a socket that is not listening\n');
    expect(run('--fd', '99', '--shared-dir', dir).stderr).toBe('virtiofsd-ts: --fd 99: EBADF\n');
    const r = run('--socket-path', sock, '--shared-dir', dir, '--socket-group', 'no-such-group-here');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/unknown group 'no-such-group-here'/);
  });

  it('prints the capabilities JSON', () => {
    const r = run('--print-capabilities');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ type: 'fs', features: ['separate-options'] });
  });
});
