// DAX in a real Linux guest: Linux 6.12 on QEMU 11.1 (scripts/peers/setup.sh)
// maps host files through our daemon's window on vhost-user-test-device-pci,
// no proxy in between. The daemon is the real CLI with its default sandbox
// (namespaces, seccomp kill): QEMU 11.1's ADD_MEM_REG fds for every window
// mapping arrive while it is confined. The guest side is
// test/e2e/guest/dax-workload.sh; docs/dax.md says what is and is not mapped.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { useE2EEnvironment } from './harness';
import { bootGuest, describeRun, guestKernel, parseConsole } from './qemu-guest';
import { DAX_TAG, DaxBootResult, OOPS, PEERS_VIRTIOFSD, bootDaxGuest, describeDaxRun, ourDaxDaemon, parseDaxConsole } from './dax-qemu';

const MiB = 1024 * 1024;
/** 16 chunks of 2 MiB: the 24 files of many/ (and the rest) cannot all stay mapped. */
const WINDOW = '32M';
const MANY = 24;
const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
const shaFile = (f: string) => sha(fs.readFileSync(f));

function ourDaemon(socketPath: string, share: string, policy: string): string[] {
  // vhost-user messages at debug: the test counts the window's ADD/REM_MEM_REG.
  return ourDaxDaemon(socketPath, share, ['--dax-window', WINDOW, '--dax-policy', policy, '--log-level', 'debug']);
}

/** Files of the sizes dax-workload.sh expects; returns their contents. */
function prepareShare(share: string): Record<string, Buffer> {
  const files: Record<string, Buffer> = {
    f2m: crypto.randomBytes(2 * MiB),
    f4m: crypto.randomBytes(4 * MiB),
    f6m: crypto.randomBytes(6 * MiB),
    small: crypto.randomBytes(100 * 1024),
    tail: crypto.randomBytes(3 * MiB),
    w4m: Buffer.alloc(4 * MiB),
    m4m: crypto.randomBytes(4 * MiB),
    h2m: crypto.randomBytes(2 * MiB),
  };
  fs.mkdirSync(path.join(share, 'many'), { recursive: true });
  for (let i = 0; i < MANY; i++) files[`many/${String(i).padStart(2, '0')}`] = crypto.randomBytes(2 * MiB);
  for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(share, name), data);
  return files;
}

function expectCleanGuest(r: DaxBootResult, boots: number, confined = true): ReturnType<typeof parseDaxConsole> {
  const details = describeDaxRun(r);
  const report = parseDaxConsole(r.consoleText);
  expect(r.timedOut, details).toBe(false);
  expect(report.failed, details).toEqual([]);
  expect(report.done, `E2E-DONE per boot\n${details}`).toBe(boots);
  expect(r.qemuExitCode, details).toBe(0);
  expect(r.daemonExitCode, details).toBe(0);
  expect(r.consoleText, details).not.toMatch(OOPS);
  // Served from inside the default sandbox, seccomp filter on.
  if (confined) expect({ seccomp: r.daemonSeccomp, ns: r.ownMountNamespace }, details).toEqual({ seccomp: '2', ns: true });
  expect(r.daemonStderr, details).not.toMatch(/disconnecting|\berror:/);
  return report;
}

describe('DAX in a Linux 6.12 guest on QEMU 11.1 (vhost-user-test-device-pci)', () => {
  const workDir = useE2EEnvironment();

  it('-o dax=always: reads, writes, mmap stores, host changes, reclaim, unmount and reboot', async () => {
    const share = path.join(workDir(), 'share');
    fs.mkdirSync(share);
    const files = prepareShare(share);
    const socketPath = path.join(workDir(), 'fs.sock');
    // The host side of the host-change check: change h2m in place once the guest has it mapped.
    const hostPage = Buffer.alloc(4096, 'H');
    const poll = () => {
      if (fs.existsSync(path.join(share, '.req-host-change')) && !fs.existsSync(path.join(share, '.host-changed'))) {
        const fd = fs.openSync(path.join(share, 'h2m'), 'r+');
        fs.writeSync(fd, hostPage, 0, hostPage.length, MiB);
        fs.closeSync(fd);
        fs.writeFileSync(path.join(share, '.host-changed'), 'done\n');
      }
    };
    const r = await bootDaxGuest({
      daemonCommand: ourDaemon(socketPath, share, 'always'),
      socketPath,
      mode: 'always',
      dax: 'always',
      allowReboot: true,
      poll,
    });
    console.log(`[e2e] DAX guest (dax=always, reboot): QEMU ran ${r.qemuMs} ms`);
    const report = expectCleanGuest(r, 2);
    const details = describeDaxRun(r);
    for (const name of [
      'mount-options',
      'isdax',
      'write-window',
      'mmap-store-1',
      'mmap-store-2',
      'umount',
      'remount',
      'umount-before-reboot',
      'reboot',
      'isdax-after-reboot',
    ]) {
      expect(report.ok, `${name}\n${details}`).toContain(name);
    }
    // Reads through the window, before and after unmount and reboot.
    for (const f of ['f2m', 'f4m', 'f6m']) expect(report.sums.get(`read/${f}`), f).toBe(sha(files[f]));
    expect(report.sums.get('remount/f4m')).toBe(sha(files.f4m));
    expect(report.sums.get('reboot/f6m')).toBe(sha(files.f6m));
    // Window stores: the guest's view and the host's agree, and hold what was copied.
    expect(report.sums.get('write/w4m')).toBe(sha(files.f4m));
    expect(shaFile(path.join(share, 'w4m'))).toBe(sha(files.f4m));
    expect(report.sums.get('reboot/w4m')).toBe(sha(files.f4m));
    // The guest's mmap stores reached the host file, and nothing else changed.
    const m = Buffer.from(files.m4m);
    m.fill(171, MiB, MiB + 4096);
    m.fill(85, 3145828, 3145828 + 50);
    expect(shaFile(path.join(share, 'm4m'))).toBe(sha(m));
    // The host's in-place change was seen through the mapped window.
    const h = Buffer.from(files.h2m);
    hostPage.copy(h, MiB);
    expect(report.sums.get('host-before/h2m')).toBe(sha(files.h2m));
    expect(report.sums.get('host-after/h2m')).toBe(sha(h));
    // More files than chunks: each read right, twice, so mappings were reclaimed.
    for (let i = 0; i < MANY; i++) {
      const name = `many/${String(i).padStart(2, '0')}`;
      expect(report.sums.get(name), name).toBe(sha(files[name]));
      expect(report.sums.get(`many-again/${name.slice(5)}`), name).toBe(sha(files[name]));
    }
    const adds = (r.daemonStderr.match(/vhost-user: ADD_MEM_REG/g) ?? []).length;
    const rems = (r.daemonStderr.match(/vhost-user: REM_MEM_REG/g) ?? []).length;
    // 48 reads of 2 MiB files through 16 chunks: well over 16 mappings made, most removed again.
    expect(adds, details).toBeGreaterThan(2 * MANY);
    expect(rems, details).toBeGreaterThan(2 * MANY - 16);
    // What QEMU 11.1 cannot map (docs/dax.md): under dax=always a file under 2 MiB and a
    // file's last partial chunk read EIO (QEMU's "backing store size ... too small").
    expect(report.info, details).toContain('always-small Input/output_error');
    expect(report.info, details).toContain('always-tail Input/output_error');
    expect(report.info).toContain(`always-tail-head ${sha(files.tail.subarray(0, 2 * MiB))}`);
    expect(r.qemuStderr).toMatch(/backing store size 0x19000 is too small/);
  }, 300_000);

  it('-o dax=inode with --dax-policy inode: DAX where QEMU can map every chunk, the queues elsewhere, never EIO', async () => {
    const share = path.join(workDir(), 'share');
    fs.mkdirSync(share);
    const files = prepareShare(share);
    const socketPath = path.join(workDir(), 'fs.sock');
    const r = await bootDaxGuest({ daemonCommand: ourDaemon(socketPath, share, 'inode'), socketPath, mode: 'inode', dax: 'inode' });
    console.log(`[e2e] DAX guest (dax=inode): QEMU ran ${r.qemuMs} ms`);
    const report = expectCleanGuest(r, 1);
    const details = describeDaxRun(r);
    for (const f of ['f2m', 'f4m', 'f6m']) expect(report.info, details).toContain(`isdax ${f} 1`);
    for (const f of ['small', 'tail']) expect(report.info, details).toContain(`isdax ${f} 0`);
    for (const f of ['f2m', 'f4m', 'f6m', 'small', 'tail']) {
      expect(report.info, details).toContain(`read ${f} ok`);
      expect(report.sums.get(`read/${f}`), f).toBe(sha(files[f]));
    }
    const w = Buffer.alloc(4 * MiB);
    files.f2m.copy(w);
    expect(report.sums.get('write/w4m')).toBe(sha(w));
    expect(shaFile(path.join(share, 'w4m'))).toBe(sha(w));
    const s = Buffer.from(files.small);
    files.f2m.copy(s, 0, 0, 4 * 4096);
    expect(report.sums.get('write/small')).toBe(sha(s));
    expect(shaFile(path.join(share, 'small'))).toBe(sha(s));
    expect(r.qemuStderr, details).not.toMatch(/too small/);
    expect(r.daemonStderr, details).not.toMatch(/refused SHMEM_MAP/);
  }, 200_000);

  it('--cache never --allow-mmap: a shared mmap of a file opened with direct I/O works (FUSE_DIRECT_IO_ALLOW_MMAP), and without it ENODEV', async () => {
    for (const allow of [true, false]) {
      const share = path.join(workDir(), `share-${allow}`);
      fs.mkdirSync(share);
      fs.writeFileSync(path.join(share, 'mm'), Buffer.alloc(8192));
      const socketPath = path.join(workDir(), `fs-${allow}.sock`);
      const daemonCommand = ourDaxDaemon(socketPath, share, ['--cache', 'never', ...(allow ? ['--allow-mmap'] : [])]);
      const r = await bootDaxGuest({ daemonCommand, socketPath, mode: 'mmap', dax: 'none' });
      console.log(`[e2e] mmap under --cache never${allow ? ' --allow-mmap' : ''}: QEMU ran ${r.qemuMs} ms`);
      const report = expectCleanGuest(r, 1);
      const expected = Buffer.alloc(8192);
      if (allow) expected.fill(65, 4096, 4196);
      expect(report.info, describeDaxRun(r)).toContain(allow ? 'mmap-store ok' : 'mmap-store No_such_device');
      expect(fs.readFileSync(path.join(share, 'mm')).equals(expected)).toBe(true);
    }
  }, 200_000);

  it('the Rust virtiofsd on the same device, through the queues (it has no DAX): the same files read and written', async () => {
    const share = path.join(workDir(), 'share');
    fs.mkdirSync(share);
    const files = prepareShare(share);
    const socketPath = path.join(workDir(), 'fs.sock');
    const daemonCommand = [PEERS_VIRTIOFSD, `--socket-path=${socketPath}`, `--shared-dir=${share}`, `--tag=${DAX_TAG}`, '--cache=auto'];
    const r = await bootDaxGuest({ daemonCommand, socketPath, mode: 'inode', dax: 'none' });
    console.log(`[e2e] Rust virtiofsd guest on QEMU 11.1: QEMU ran ${r.qemuMs} ms`);
    // Its own sandbox (namespaces; seccomp it leaves to the caller's --seccomp) is not ours to check.
    const report = expectCleanGuest(r, 1, false);
    for (const f of ['f2m', 'f4m', 'f6m', 'small', 'tail']) {
      expect(report.info).toContain(`isdax ${f} 0`);
      expect(report.sums.get(`read/${f}`), f).toBe(sha(files[f]));
    }
    const w = Buffer.alloc(4 * MiB);
    files.f2m.copy(w);
    expect(shaFile(path.join(share, 'w4m'))).toBe(sha(w));
  }, 200_000);

  it("QEMU 7.2's vhost-user-fs-pci still serves with --tag and --dax-window (it builds its own config and has no window)", async () => {
    const share = path.join(workDir(), 'share');
    fs.mkdirSync(share);
    // What workload.sh's basic mode expects of the share (as guest-linux.test.ts prepares it).
    const hostData = crypto.randomBytes(1 << 20);
    fs.writeFileSync(path.join(share, 'hello.txt'), 'hello from the host\n');
    fs.writeFileSync(path.join(share, 'host-data.bin'), hostData);
    fs.writeFileSync(path.join(share, 'host-data.sha256'), `${sha(hostData)}  host-data.bin\n`);
    fs.writeFileSync(path.join(share, 'host-data.size'), `${hostData.length}\n`);
    fs.mkdirSync(path.join(share, 'hostdir', 'sub'), { recursive: true });
    fs.writeFileSync(path.join(share, 'hostdir', 'sub', 'deep.txt'), 'deep file\n');
    fs.symlinkSync('hello.txt', path.join(share, 'link-to-hello'));
    fs.writeFileSync(path.join(share, 'rename-me.txt'), 'renamed by the guest\n');
    fs.writeFileSync(path.join(share, 'delete-me.txt'), 'deleted by the guest\n');
    fs.mkdirSync(path.join(share, 'empty-host-dir'));
    const socketPath = path.join(workDir(), 'fs.sock');
    const run = await bootGuest({
      daemonCommand: ourDaemon(socketPath, share, 'inode'),
      socketPath,
      kernel: guestKernel('backports'),
      mode: 'basic',
    });
    const report = parseConsole(run.consoleText);
    const details = describeRun(run);
    expect(report.failed, details).toEqual([]);
    expect(report.done, details).toBe(true);
    expect(report.ok, details).toEqual(expect.arrayContaining(['mount', 'read-host-file', 'write-many', 'big-file']));
    expect(report.sums.get('host-data.bin')).toBe(sha(hostData));
    expect(run.qemuExitCode, details).toBe(0);
    expect(run.daemonExitCode, details).toBe(0);
    expect(run.daemonConfinement, details).toEqual({ seccomp: '2', ownMountNamespace: true });
    // QEMU 7.2 did not take the CONFIG feature, so it never asked for the config.
    expect(run.daemonStderr).not.toMatch(/vhost-user: GET_CONFIG/);
  }, 200_000);
});
