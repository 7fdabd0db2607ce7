/**
 * The seccomp filter in real processes: each case runs a child `node -e`
 * that installs the filter from dist/ and then does something; the kernel's
 * verdict (exit status, SIGSYS, /proc/<pid>/status, the audit record) is what
 * is asserted. Plus the daemon itself serving a guest session under `kill`.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FuseDriver } from '../../src/guest/fuse-driver';
import { launcherPath } from '../../src/sandbox';
import { ALLOW_LIST, SYSCALLS_X86_64 } from '../../src/sandbox/seccomp-syscalls';
import {
  AUDIT_ARCH_X86_64,
  SECCOMP_RET_KILL_PROCESS,
  SECCOMP_RET_LOG,
  SECCOMP_RET_TRAP,
  buildSeccompFilter,
} from '../../src/sandbox/seccomp';
import { CLI, type Backend, ensureBuilt, oursCli, socketFileExists, startProcess } from '../helpers/backends';
import { openSession } from '../helpers/fuse-session';

const REPO = path.resolve(__dirname, '../..');
const DIST = path.join(REPO, 'dist');
const UNISTD_64 = '/usr/include/x86_64-linux-gnu/asm/unistd_64.h';

interface ChildResult {
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `body` in a child node after `prelude`; `body` may use `seccomp`, `koffi`, `raw` (syscall(2)) and `report()`. */
function runChild(mode: string, body: string): Promise<ChildResult> {
  const script = `
    const fs = require('fs');
    const koffi = require('koffi');
    const seccomp = require(${JSON.stringify(path.join(DIST, 'sandbox/seccomp.js'))});
    const libc = koffi.load('libc.so.6');
    const raw = libc.func('long syscall(long, ...)');
    const status = (p) => Object.fromEntries(fs.readFileSync(p, 'utf8').split('\\n').filter(Boolean).map((l) => l.split(':\\t')));
    const report = (extra) => {
      const tasks = fs.readdirSync('/proc/self/task').map((t) => status('/proc/self/task/' + t + '/status'));
      console.log(JSON.stringify({ self: status('/proc/self/status'), tasks, ...extra }));
    };
    seccomp.installSeccomp(${JSON.stringify(mode)});
    ${body}
  `;
  return new Promise((resolve) => {
    const child = execFile(process.execPath, ['-e', script], { cwd: REPO, timeout: 20_000 }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: unknown; signal?: NodeJS.Signals }) | null;
      resolve({
        pid: child.pid ?? -1,
        code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
        signal: e?.signal ?? null,
        stdout,
        stderr,
      });
    });
  });
}

function parseReport(r: ChildResult): { self: Record<string, string>; tasks: Record<string, string>[]; [k: string]: unknown } {
  expect(r.signal, r.stderr).toBeNull();
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

beforeAll(() => ensureBuilt(), 180_000);

describe('the filter program', () => {
  it('checks the architecture first, refuses x32 numbers, and ends with the mode action', () => {
    for (const [mode, action] of [
      ['kill', SECCOMP_RET_KILL_PROCESS],
      ['log', SECCOMP_RET_LOG],
      ['trap', SECCOMP_RET_TRAP],
    ] as const) {
      const prog = buildSeccompFilter(mode);
      expect(prog.length % 8).toBe(0);
      // ld [4] (arch); jeq AUDIT_ARCH_X86_64 +1; ret KILL_PROCESS
      expect([prog.readUInt16LE(0), prog.readUInt32LE(4)]).toEqual([0x20, 4]);
      expect([prog.readUInt16LE(8), prog[10], prog[11], prog.readUInt32LE(12)]).toEqual([0x15, 1, 0, AUDIT_ARCH_X86_64]);
      expect(prog.readUInt32LE(20)).toBe(SECCOMP_RET_KILL_PROCESS);
      // ld [0] (nr); jge 0x40000000 -> ret action
      expect([prog.readUInt16LE(32), prog.readUInt32LE(36)]).toEqual([0x35, 0x40000000]);
      expect(prog.readUInt32LE(44)).toBe(action);
      expect([prog.readUInt16LE(prog.length - 8), prog.readUInt32LE(prog.length - 4)]).toEqual([0x06, action]);
    }
  });

  it('names only real syscalls, each once', () => {
    const names = ALLOW_LIST.map((r) => r.name);
    expect(new Set(names).size).toBe(names.length);
    for (const n of names) expect(SYSCALLS_X86_64[n], n).toBeTypeOf('number');
    expect(() => buildSeccompFilter('kill', { extra: ['no_such_call' as never] })).toThrow(/unknown x86_64 syscall 'no_such_call'/);
  });

  it.skipIf(!fs.existsSync(UNISTD_64))(
    `has the numbers of the kernel headers${fs.existsSync(UNISTD_64) ? '' : ` [skipped: no ${UNISTD_64}]`}`,
    () => {
      const header = new Map(
        [...fs.readFileSync(UNISTD_64, 'utf8').matchAll(/^#define __NR_(\w+) (\d+)$/gm)].map((m) => [m[1], Number(m[2])]),
      );
      expect(header.size).toBeGreaterThan(300);
      for (const [name, nr] of header) expect((SYSCALLS_X86_64 as Record<string, number>)[name], name).toBe(nr);
    },
  );
});

describe('seccomp in a child process', () => {
  it('kill: a normal workload runs, on every thread, with libuv pool work and a Worker started after the filter', async () => {
    const r = await runChild(
      'kill',
      `
      const { Worker } = require('worker_threads');
      fs.writeFileSync('/tmp/.seccomp-test-' + process.pid, 'payload');
      const sync = fs.readFileSync('/tmp/.seccomp-test-' + process.pid, 'utf8') + ':' + fs.statSync('/tmp').isDirectory();
      fs.promises.readFile('/tmp/.seccomp-test-' + process.pid, 'utf8').then((pooled) => {
        fs.unlinkSync('/tmp/.seccomp-test-' + process.pid);
        const w = new Worker("require('worker_threads').parentPort.postMessage(require('fs').readdirSync('/proc/self').includes('status'))", { eval: true });
        w.on('message', (fromWorker) => { report({ sync, pooled, fromWorker }); w.terminate(); });
      });
      `,
    );
    const rep = parseReport(r);
    expect([rep.sync, rep.pooled, rep.fromWorker]).toEqual(['payload:true', 'payload', true]);
    expect(rep.self.Seccomp).toBe('2');
    expect(rep.self.Seccomp_filters).toBe('1');
    expect(rep.self.NoNewPrivs).toBe('1');
    // Node's own threads, V8's workers, libuv's pool (started after the filter) and the Worker's.
    expect(rep.tasks.length).toBeGreaterThan(5);
    for (const t of rep.tasks) expect([t.Name, t.Seccomp, t.Seccomp_filters, t.NoNewPrivs]).toEqual([t.Name, '2', '1', '1']);
  });

  it('kill: a syscall off the list (socket(AF_INET) from net.listen) kills the process with SIGSYS', async () => {
    const r = await runChild('kill', `require('net').createServer().listen(0, () => console.log('listening'));`);
    expect(r.signal).toBe('SIGSYS');
    expect(r.stdout).not.toContain('listening');
  });

  it('kill: clone only makes threads: a fork, or a clone into new namespaces, kills the process; clone3 answers ENOSYS', async () => {
    // clone(CLONE_NEWNS|CLONE_NEWNET|SIGCHLD): what a thread still holding CAP_SYS_ADMIN could try.
    const ns = await runChild(
      'kill',
      `raw(56, 'long', 0x20000 | 0x40000000 | 17, 'long', 0, 'long', 0, 'long', 0, 'long', 0); console.log('survived');`,
    );
    expect(ns.signal).toBe('SIGSYS');
    expect(ns.stdout).toBe('');
    const spawned = await runChild('kill', `require('child_process').spawnSync('/bin/true'); console.log('survived');`);
    expect(spawned.signal).toBe('SIGSYS');
    const clone3 = await runChild('kill', `console.log(JSON.stringify({ ret: raw(435, 'long', 0, 'long', 0), errno: koffi.errno() }));`);
    expect(JSON.parse(clone3.stdout.trim())).toEqual({ ret: -1, errno: 38 });
  });

  it('kill: mount(2) through syscall(2) kills the process, before it reaches the kernel', async () => {
    const r = await runChild('kill', `raw(165, 'long', 0, 'long', 0, 'long', 0, 'long', 0, 'long', 0); console.log('survived');`);
    expect(r.signal).toBe('SIGSYS');
    expect(r.stdout).toBe('');
  });

  it('kill: an x32 syscall number is refused even for a call on the list (getpid | 0x40000000)', async () => {
    const ok = await runChild('kill', `console.log(raw(39) === process.pid ? 'same' : 'different');`);
    expect(ok.stdout.trim()).toBe('same');
    const r = await runChild('kill', `raw(0x40000000 + 39); console.log('survived');`);
    expect(r.signal).toBe('SIGSYS');
  });

  it('kill: ioctl and prlimit64 are allowed only with the arguments on the list', async () => {
    // FIONBIO on stdin and getrlimit-style prlimit64 (new limit NULL) pass.
    const ok = await runChild(
      'kill',
      `const one = Buffer.alloc(4); one.writeInt32LE(0);
       const a = raw(16, 'int', 0, 'unsigned long', 0x5421, 'uint8_t *', one);
       const old = Buffer.alloc(16);
       const b = raw(302, 'int', 0, 'int', 7, 'uint8_t *', null, 'uint8_t *', old);
       console.log(a, b, old.readBigUInt64LE(0) > 0n);`,
    );
    expect(ok.signal, ok.stderr).toBeNull();
    expect(ok.stdout.trim()).toBe('0 0 true');
    // FIONREAD is no request the runtime makes.
    const ioctl = await runChild(
      'kill',
      `raw(16, 'int', 0, 'unsigned long', 0x541b, 'uint8_t *', Buffer.alloc(4)); console.log('survived');`,
    );
    expect(ioctl.signal).toBe('SIGSYS');
    // Setting a limit, or reading another process's, is off the list.
    const set = await runChild(
      'kill',
      `const l = Buffer.alloc(16); l.writeBigUInt64LE(64n, 0); l.writeBigUInt64LE(64n, 8);
       raw(302, 'int', 0, 'int', 7, 'uint8_t *', l, 'uint8_t *', null); console.log('survived');`,
    );
    expect(set.signal).toBe('SIGSYS');
    const other = await runChild(
      'kill',
      `raw(302, 'int', 1, 'int', 7, 'uint8_t *', null, 'uint8_t *', Buffer.alloc(16)); console.log('survived');`,
    );
    expect(other.signal).toBe('SIGSYS');
  });

  it('trap: a syscall off the list raises SIGSYS, which Node does not handle: the process dies of it', async () => {
    const r = await runChild(
      'trap',
      `report({}); raw(165, 'long', 0, 'long', 0, 'long', 0, 'long', 0, 'long', 0); console.log('survived');`,
    );
    expect(r.signal).toBe('SIGSYS');
    expect(r.stdout).not.toContain('survived');
    const rep = JSON.parse(r.stdout.trim().split('\n')[0]) as { self: Record<string, string> };
    expect([rep.self.Seccomp, rep.self.Seccomp_filters]).toEqual(['2', '1']);
  });

  it('log: a syscall off the list runs (mount with NULL arguments fails in the kernel) and leaves an audit record', async () => {
    const logged = async (): Promise<{ r: ChildResult; kmsg: string | null }> => {
      const r = await runChild(
        'log',
        `const ret = raw(165, 'long', 0, 'long', 0, 'long', 0, 'long', 0, 'long', 0);
         console.log(ret, koffi.errno());`,
      );
      expect(r.signal, r.stderr).toBeNull();
      const [ret, errno] = r.stdout.trim().split(' ').map(Number);
      expect(ret).toBe(-1);
      // EFAULT (NULL names) or EPERM without CAP_SYS_ADMIN: either way the kernel, not the filter, answered.
      expect([14, 1]).toContain(errno);
      try {
        return { r, kmsg: execFileSync('dmesg', [], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }) };
      } catch {
        return { r, kmsg: null };
      }
    };
    // type=1326 (AUDIT_SECCOMP) ... pid=<child> ... syscall=165 ... code=0x7ffc0000 (SECCOMP_RET_LOG)
    const record = (pid: number) => new RegExp(`type=1326 .*pid=${pid} .*syscall=165 .*code=0x7ffc0000`);
    let { r, kmsg } = await logged();
    if (kmsg === null) return; // No access to the kernel log here: the call having run is the part we can see.
    if (!record(r.pid).test(kmsg)) {
      // The kernel rate-limits audit printks (10 per 5 s): the kill cases' records may have used them up.
      await new Promise((done) => setTimeout(done, 5500));
      ({ r, kmsg } = await logged());
    }
    expect(kmsg).toMatch(record(r.pid));
  }, 20_000);
});

describe('the daemon under seccomp kill', () => {
  it('serves a guest session (files, directories, links, xattrs, locks, copy, sync) and exits 0 when the guest leaves', async () => {
    const { fuse, dir, backend, close } = await openSession(oursCli, {
      populate: (d) => fs.writeFileSync(path.join(d, 'seed'), 'seed data'),
    });
    try {
      const O_RDWR = 2;
      const O_CREAT = 0o100;
      const ROOT = 1;
      const seed = await fuse.lookup(ROOT, 'seed');
      const seedH = await fuse.open(Number(seed.nodeid), O_RDWR);
      expect((await fuse.read(Number(seed.nodeid), seedH.fh, 0, 100)).toString()).toBe('seed data');
      const sub = await fuse.mkdir(ROOT, 'sub', 0o755);
      const c = await fuse.create(Number(sub.nodeid), 'f', O_RDWR | O_CREAT, 0o644);
      const f = Number(c.entry.nodeid);
      expect(await fuse.write(f, c.open.fh, 0, Buffer.from('hello seccomp'))).toBe(13);
      await fuse.fsync(f, c.open.fh);
      await fuse.fallocate(f, c.open.fh, 0, 8192);
      await fuse.setattr(f, { fh: c.open.fh, size: 5, mode: 0o600, mtime: 'now' });
      expect(
        await fuse.copyFileRange({ nodeid: f, fh: c.open.fh, offset: 0 }, { nodeid: Number(seed.nodeid), fh: seedH.fh, offset: 0 }, 5),
      ).toBe(5);
      await fuse.setxattr(f, 'user.k', 'v');
      expect((await fuse.getxattr(f, 'user.k')).toString()).toBe('v');
      expect(await fuse.listxattr(f)).toContain('user.k');
      await fuse.removexattr(f, 'user.k');
      await fuse.setlk(f, c.open.fh, 1n, { start: 0n, end: 9n, type: 1 /* F_WRLCK */ });
      await fuse.setlk(f, c.open.fh, 1n, { start: 0n, end: 9n, type: 2 /* F_UNLCK */ });
      await fuse.setlk(f, c.open.fh, 1n, { start: 0n, end: 0n, type: 1 }, true);
      await fuse.symlink(Number(sub.nodeid), 'ln', 'f');
      await fuse.link(f, ROOT, 'hard');
      await fuse.rename(Number(sub.nodeid), 'f', ROOT, 'moved');
      const dh = await fuse.opendir(Number(sub.nodeid));
      expect((await fuse.readdirAll(Number(sub.nodeid), dh.fh)).map((e) => e.name).sort()).toEqual(['.', '..', 'ln']);
      await fuse.releasedir(Number(sub.nodeid), dh.fh);
      await fuse.statfs();
      await fuse.release(f, c.open.fh);
      await fuse.release(Number(seed.nodeid), seedH.fh);
      await fuse.unlink(Number(sub.nodeid), 'ln');
      await fuse.rmdir(ROOT, 'sub');
      expect(fs.readFileSync(path.join(dir, 'moved'), 'utf8')).toBe('hello');
      expect(fs.readFileSync(path.join(dir, 'seed'), 'utf8')).toBe('hellodata');
      fuse.close();
      // null would mean a signal: SIGSYS if the session needed a syscall off the list.
      expect(await backend.exited, backend.log()).toBe(0);
    } finally {
      await close();
    }
  }, 30_000);
});

describe('the daemon under seccomp kill, with --thread-pool-size', () => {
  // READ and WRITE of 64 KiB and more, FSYNC and FDATASYNC, on libuv's pool threads (started after
  // the filter): preadv, pwritev, fsync, fdatasync, dup and close there must all be on the list.
  const pooled: Backend = {
    ...oursCli,
    name: 'virtiofsd-ts CLI --thread-pool-size 2',
    start: (sharedDir, socketPath) =>
      startProcess(
        process.execPath,
        [CLI, '--socket-path', socketPath, '--shared-dir', sharedDir, '--thread-pool-size', '2', '--log-level', 'warn'],
        socketPath,
        socketFileExists,
      ),
  };

  it('serves large READs and WRITEs, syncs, lookups, stats and opens from the pool, and exits 0 when the guest leaves', async () => {
    const { fuse, dir, backend, close } = await openSession(pooled);
    try {
      const data = Buffer.alloc(1 << 20);
      for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
      const c = await fuse.create(1, 'big', 2 /* O_RDWR */, 0o644);
      const f = Number(c.entry.nodeid);
      const parts = await Promise.all(
        [0, 1, 2, 3].map((i) => fuse.write(f, c.open.fh, i * 262144, data.subarray(i * 262144, (i + 1) * 262144))),
      );
      expect(parts).toEqual([262144, 262144, 262144, 262144]);
      await Promise.all([fuse.fsync(f, c.open.fh), fuse.fsync(f, c.open.fh, true)]);
      const back = await Promise.all([0, 1].map((i) => fuse.read(f, c.open.fh, i * 524288, 524288)));
      expect(Buffer.concat(back).equals(data)).toBe(true);
      await fuse.release(f, c.open.fh);
      expect(fs.readFileSync(path.join(dir, 'big')).equals(data)).toBe(true);
      // LOOKUP, GETATTR and OPEN on the pool as well (openat through the kept /proc/self/fd).
      const e = await fuse.lookup(1, 'big');
      expect(Number((await fuse.getattr(e.nodeid)).attr.size)).toBe(data.length);
      const o = await fuse.open(e.nodeid, 0 /* O_RDONLY */);
      expect((await fuse.read(e.nodeid, o.fh, 0, 4)).equals(data.subarray(0, 4))).toBe(true);
      await fuse.release(e.nodeid, o.fh);
      fuse.close();
      expect(await backend.exited, backend.log()).toBe(0);
    } finally {
      await close();
    }
  }, 30_000);
});

describe('a Node whose libuv uses io_uring (Debian nodejs, libuv 1.50)', () => {
  // What such a libuv does, done by a preload: set a ring up at start-up (before any JavaScript of
  // ours) and enter it from time to time later. The ring would be entered past the filter, which
  // kills the process for it: the daemon must start Node with io_uring off (the launcher) instead.
  const preload = path.join(REPO, 'test/sandbox/fixtures/io-uring-libuv.js');
  const asDebianNode = (sandbox: string[]): Backend => ({
    ...oursCli,
    name: `virtiofsd-ts CLI under an io_uring libuv ${sandbox.join(' ')}`,
    start: (sharedDir, socketPath) =>
      startProcess(
        process.execPath,
        ['-r', preload, CLI, '--socket-path', socketPath, '--shared-dir', sharedDir, '--log-level', 'warn', ...sandbox],
        socketPath,
        socketFileExists,
      ),
  });

  for (const sandbox of [[], ['--sandbox', 'chroot']]) {
    it(`serves with seccomp kill ${sandbox.join(' ') || '(default sandbox)'}: Node runs with io_uring answering ENOSYS`, async () => {
      const { fuse, dir, backend, close } = await openSession(asDebianNode(sandbox));
      try {
        fs.writeFileSync(path.join(dir, 'f'), 'x');
        const e = await fuse.lookup(1, 'f');
        // Long enough for the preload to have entered a ring a few times, had it got one.
        await new Promise((r) => setTimeout(r, 300));
        expect(Number((await fuse.getattr(e.nodeid)).attr.size)).toBe(1);
        // The first Node (before the relaunch) got a ring; the one that serves did not.
        expect(backend.log()).toMatch(/io_uring_setup: fd \d+\n(.*\n)*io_uring_setup: refused/);
        fuse.close();
        expect(await backend.exited, backend.log()).toBe(0);
      } finally {
        await close();
      }
    }, 30_000);
  }

  it('unprivileged with --sandbox none (no launcher otherwise): the rings are seen and Node is started again without them', async () => {
    const nobody = 65534;
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'io-uring-nobody-'));
    const share = path.join(base, 'share');
    fs.mkdirSync(share);
    fs.writeFileSync(path.join(share, 'f'), 'x');
    for (const p of [base, share, path.join(share, 'f')]) fs.chownSync(p, nobody, nobody);
    const sock = path.join(base, 'sock');
    const child = spawn(
      process.execPath,
      ['-r', preload, CLI, '--socket-path', sock, '--shared-dir', share, '--sandbox', 'none', '--log-level', 'warn'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        uid: nobody,
        gid: nobody,
      },
    );
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      for (let i = 0; !socketFileExists(sock); i++) {
        if (i > 750 || child.exitCode !== null) throw new Error(`no socket: ${out}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      const fuse = await FuseDriver.connect(sock, { timeoutMs: 10_000 });
      await fuse.init();
      const e = await fuse.lookup(1, 'f');
      await new Promise((r) => setTimeout(r, 300));
      expect(Number((await fuse.getattr(e.nodeid)).attr.size)).toBe(1);
      fuse.close();
      expect(await exited, out).toBe(0);
      expect(out).toMatch(/io_uring_setup: fd \d+\n(.*\n)*io_uring_setup: refused/);
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(base, { recursive: true, force: true });
    }
  }, 30_000);

  it('the launcher runs its program with io_uring_setup answering ENOSYS (--no-io-uring, given when seccomp is on)', () => {
    const probe =
      'import ctypes; libc = ctypes.CDLL(None, use_errno=True); r = libc.syscall(425, 1, ctypes.create_string_buffer(120)); print(r, ctypes.get_errno())';
    expect(execFileSync('python3', ['-c', probe], { encoding: 'utf8' }).trim()).toMatch(/^\d+ 0$/);
    expect(execFileSync(launcherPath(), ['--no-io-uring', '--', '/usr/bin/python3', '-c', probe], { encoding: 'utf8' }).trim()).toBe(
      '-1 38',
    );
  });

  it('a ring already open when the filter would go in is refused with a clear error (no SIGSYS later)', async () => {
    const script = `
      require(${JSON.stringify(preload)});
      const { Daemon } = require(${JSON.stringify(path.join(DIST, 'daemon.js'))});
      const d = new Daemon({ socketPath: process.argv[1], sharedDir: process.argv[2], cache: 'auto', readonly: false, seccomp: 'kill' }, () => {});
      try { d.start(); console.log('started'); } catch (err) { console.log('refused: ' + err.message); }
      process.exit(0);
    `;
    const dir = fs.mkdtempSync(path.join(REPO, '.cache', 'io-uring-'));
    try {
      const out = execFileSync(process.execPath, ['-e', script, path.join(dir, 'sock'), dir], { encoding: 'utf8', timeout: 20_000 });
      expect(out).toMatch(/io_uring_setup: fd \d+/);
      expect(out).toMatch(/refused: seccomp: this Node's libuv uses io_uring/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
