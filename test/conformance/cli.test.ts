/**
 * The shipped commands as users run them: `node bin/virtiofsd-ts.js` serving a
 * guest session, and `virtiofsd-ts probe` against both back-ends and against
 * sockets that are no vhost-user-fs back-end at all.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { UnixListener } from '../../src/sys';
import { type Backend, CLI, ensureBuilt, oursCli, reference, socketFileExists, startProcess } from '../helpers/backends';
import { openSession } from '../helpers/fuse-session';
import { O_RDWR, ROOT } from './conformance';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], timeoutMs = 20_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: unknown }).code as number | null) : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-cli-'));
  cleanups.push(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Starts a back-end on a fresh share; returns the share and the socket. */
async function serve(backend: Backend): Promise<{ share: string; socketPath: string; exited: Promise<number | null> }> {
  const base = tempDir();
  const share = path.join(base, 'share');
  fs.mkdirSync(share);
  const running = await backend.start(share, path.join(base, 'sock'));
  cleanups.push(() => running.stop());
  return { share, socketPath: running.socketPath, exited: running.exited };
}

describe('virtiofsd-ts CLI', () => {
  beforeAll(() => ensureBuilt(), 180_000);

  it('serves a guest session when started as `node bin/virtiofsd-ts.js`, and exits 0 when the guest leaves', async () => {
    const session = await openSession(oursCli, { populate: (d) => fs.writeFileSync(path.join(d, 'hello'), 'from the host') });
    cleanups.push(() => session.close());
    const { fuse, dir } = session;
    const hello = await fuse.lookup(ROOT, 'hello');
    const h = await fuse.open(hello.nodeid, O_RDWR);
    expect((await fuse.read(hello.nodeid, h.fh, 0, 64)).toString()).toBe('from the host');
    const { entry, open } = await fuse.create(ROOT, 'from-guest', O_RDWR, 0o644);
    await fuse.write(entry.nodeid, open.fh, 0, Buffer.from('written by the guest'));
    expect(fs.readFileSync(path.join(dir, 'from-guest'), 'utf8')).toBe('written by the guest');
    const dh = await fuse.opendir(ROOT);
    expect((await fuse.readdirAll(ROOT, dh.fh)).map((d) => d.name).sort()).toEqual(['.', '..', 'from-guest', 'hello']);
    fuse.close();
    expect(await session.backend.exited).toBe(0);
  });
});

describe('virtiofsd-ts probe', () => {
  beforeAll(() => ensureBuilt(), 180_000);

  it.each([
    ['virtiofsd-ts', oursCli],
    ['the reference C virtiofsd', reference],
  ])('probes %s: features, INIT reply, smoke test; leaves the share clean', async (_name, backend) => {
    const { share, socketPath } = await serve(backend);
    const r = await runCli(['probe', '--socket-path', socketPath]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^virtio features: +0x[0-9a-f]+ .*VERSION_1/m);
    expect(r.stdout).toMatch(/^protocol features: 0x[0-9a-f]+ .*MQ/m);
    expect(r.stdout).toMatch(/^FUSE INIT: protocol 7\.\d+, max_write \d+/m);
    expect(r.stdout).toMatch(/^ {2}flags: 0x[0-9a-f]+ .*ASYNC_READ/m);
    expect(r.stdout).toMatch(/^ {2}map_alignment: /m);
    for (const step of ['mkdir', 'create \\+ write', 'read back \\+ compare', 'readdir', 'unlink', 'rmdir']) {
      expect(r.stdout).toMatch(new RegExp(`^ {2}ok +${step}`, 'm'));
    }
    expect(r.stdout).toMatch(/^summary: ok/m);
    expect(fs.readdirSync(share)).toEqual([]);
  });

  it('exits 1 and names the failing step when the share refuses writes (--readonly)', async () => {
    const readonlyCli: Backend = {
      ...oursCli,
      start: (sharedDir, socketPath) =>
        startProcess(
          process.execPath,
          [CLI, '--socket-path', socketPath, '--shared-dir', sharedDir, '--readonly'],
          socketPath,
          socketFileExists,
        ),
    };
    const { share, socketPath } = await serve(readonlyCli);
    const r = await runCli(['probe', '--socket-path', socketPath]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^FUSE INIT: protocol 7\./m);
    expect(r.stdout).toMatch(/^ {2}FAIL mkdir: FUSE_MKDIR: EROFS$/m);
    expect(r.stdout).toMatch(/^summary: FAILED after 0 steps$/m);
    expect(fs.readdirSync(share)).toEqual([]);
  });

  it('exits 2 with one stderr line when the socket is missing', async () => {
    const r = await runCli(['probe', '--socket-path', path.join(tempDir(), 'absent.sock')]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/no socket at/);
    expect(r.stdout).toBe('');
  });

  it('exits 2 when nothing listens on the socket', async () => {
    // A socket file left behind by a back-end that has gone (as the reference leaves its own).
    const sock = path.join(tempDir(), 'stale.sock');
    UnixListener.listen(sock).close(false);
    expect(fs.statSync(sock).isSocket()).toBe(true);
    const r = await runCli(['probe', '--socket-path', sock]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it.each([
    ['never answers', (_s: net.Socket) => undefined],
    ['answers garbage', (s: net.Socket) => s.write(Buffer.alloc(64, 0xee))],
  ])('exits 2 within the timeout when the peer %s', async (_what, behave) => {
    const sock = path.join(tempDir(), 'not-vhost.sock');
    const peers: net.Socket[] = [];
    const server = net.createServer((s) => {
      peers.push(s);
      s.on('data', () => behave(s));
      s.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    cleanups.push(() => {
      peers.forEach((p) => p.destroy());
      server.close();
    });
    const started = Date.now();
    const r = await runCli(['probe', '--socket-path', sock, '--timeout', '1000']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^virtiofsd-ts probe: /);
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});
