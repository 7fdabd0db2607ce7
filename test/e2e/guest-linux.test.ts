// End to end: a real Linux guest under QEMU mounts the daemon's share with
// virtio-fs and works on it (test/e2e/guest/workload.sh); the host checks
// the results byte for byte. Needs root, QEMU and the guest kernels, which
// scripts/e2e/setup.sh installs (beforeAll runs it; it is quick when done).
// E2E_DAEMON=reference runs the same tests against QEMU's C virtiofsd (see
// harness.ts).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, test } from 'vitest';
import {
  DAEMON_TITLE,
  GuestRun,
  GuestRunOptions,
  REFERENCE,
  RUST,
  TEST_TIMEOUT,
  expectCleanRun,
  fileSha256,
  runGuest as runGuestOnShare,
  sha256,
  useE2EEnvironment,
} from './harness';
import { KernelName, describeRun } from './qemu-guest';

const BIG_FILE_BYTES = 64 << 20;
const HOST_DATA_BYTES = 3_000_123; // not a multiple of any page or buffer size

let workDir: () => string;

/** Files the host puts into the share before boot; workload.sh expects them. */
const HOST_FILES = [
  'delete-me.txt',
  'empty-host-dir',
  'hello.txt',
  'host-data.bin',
  'host-data.sha256',
  'host-data.size',
  'hostdir',
  'link-to-hello',
  'rename-me.txt',
];
function prepareShare(share: string): { hostData: Buffer } {
  const hostData = crypto.randomBytes(HOST_DATA_BYTES);
  fs.writeFileSync(path.join(share, 'hello.txt'), 'hello from the host\n');
  fs.writeFileSync(path.join(share, 'host-data.bin'), hostData);
  fs.writeFileSync(path.join(share, 'host-data.sha256'), `${sha256(hostData)}  host-data.bin\n`);
  fs.writeFileSync(path.join(share, 'host-data.size'), `${HOST_DATA_BYTES}\n`);
  fs.mkdirSync(path.join(share, 'hostdir', 'sub'), { recursive: true });
  fs.writeFileSync(path.join(share, 'hostdir', 'sub', 'deep.txt'), 'deep file\n');
  fs.symlinkSync('hello.txt', path.join(share, 'link-to-hello'));
  fs.writeFileSync(path.join(share, 'rename-me.txt'), 'renamed by the guest\n');
  fs.writeFileSync(path.join(share, 'delete-me.txt'), 'deleted by the guest\n');
  fs.mkdirSync(path.join(share, 'empty-host-dir'));
  expect(fs.readdirSync(share).sort()).toEqual(HOST_FILES);
  return { hostData };
}

/** Prepares a share, serves it with the daemon under test and boots a guest. */
async function runGuest(
  kernel: KernelName,
  mode: string,
  extra: Pick<GuestRunOptions, 'requestQueues' | 'allowReboot'> = {},
): Promise<GuestRun & { hostData: Buffer }> {
  const share = path.join(workDir(), 'share');
  fs.mkdirSync(share);
  const { hostData } = prepareShare(share);
  const result = await runGuestOnShare({ workDir: workDir(), share, kernel, mode, daemon: { cache: 'auto' }, ...extra });
  return { ...result, hostData };
}

const read = (share: string, rel: string) => fs.readFileSync(path.join(share, rel), 'utf8');
const exists = (share: string, rel: string) => fs.existsSync(path.join(share, rel));

/** The guest's `basic` workload on the given kernel, and everything it left. */
async function basicWorkload(kernel: KernelName, extra: Pick<GuestRunOptions, 'requestQueues'> = {}): Promise<void> {
  const result = await runGuest(kernel, 'basic', extra);
  expectCleanRun(result, [
    'mount',
    'list-share',
    'read-small-file',
    'read-host-file',
    'read-nested-file',
    'read-symlink',
    'stat-size',
    'mkdir-nested',
    'write-small',
    'write-many',
    'append',
    'truncate',
    'chmod',
    'symlink',
    'rename-file',
    'rename-dir',
    'rename-host-file',
    'remove-file',
    'remove-tree',
    'remove-host-file',
    'remove-host-dir',
    'big-file',
  ]);
  const { share, hostData, report } = result;

  // What the guest listed and read is what the host wrote.
  expect(report.info).toContain(`ls ${HOST_FILES.join(' ')}`);
  expect(report.sums.get('host-data.bin')).toBe(sha256(hostData));
  expect(fs.readFileSync(path.join(share, 'host-data.bin')).equals(hostData)).toBe(true);

  // What the guest wrote, byte for byte.
  expect(read(share, 'guest/a/b/c/file.txt')).toBe('written by the guest\n');
  expect(fs.statSync(path.join(share, 'guest/a/b/c/file.txt')).mode & 0o777).toBe(0o640);
  for (let i = 0; i < 50; i++) expect(read(share, `guest/many-${i}.txt`)).toBe(`file ${i}\n`);
  expect(read(share, 'guest/append.txt')).toBe('line1\nline2\n');
  expect(fs.readFileSync(path.join(share, 'guest/trunc.bin')).equals(Buffer.alloc(5000))).toBe(true);
  expect(fs.readlinkSync(path.join(share, 'guest/link'))).toBe('a/b/c/file.txt');

  // Renames and removals.
  expect(read(share, 'guest/new-name.txt')).toBe('moving\n');
  expect(read(share, 'guest/dir-new/inner/f.txt')).toBe('inside\n');
  expect(read(share, 'renamed-by-guest.txt')).toBe('renamed by the guest\n');
  for (const gone of [
    'guest/old-name.txt',
    'guest/dir-old',
    'guest/gone.txt',
    'guest/tree',
    'rename-me.txt',
    'delete-me.txt',
    'empty-host-dir',
  ]) {
    expect(exists(share, gone), `${gone} should be gone`).toBe(false);
  }
  const many = Array.from({ length: 50 }, (_, i) => `many-${i}.txt`);
  expect(fs.readdirSync(path.join(share, 'guest')).sort()).toEqual(
    ['a', 'append.txt', 'dir-new', 'link', 'new-name.txt', 'trunc.bin', ...many].sort(),
  );

  // The 64 MiB file: the guest's checksum (written, then re-read past its
  // page cache) matches the host's.
  const big = path.join(share, 'big.bin');
  expect(fs.statSync(big).size).toBe(BIG_FILE_BYTES);
  expect(report.sums.get('big.bin')).toMatch(/^[0-9a-f]{64}$/);
  expect(fileSha256(big)).toBe(report.sums.get('big.bin'));
}

describe(`Linux guest against ${DAEMON_TITLE}`, () => {
  workDir = useE2EEnvironment();

  test(
    '6.1 guest (modules): list, read, write, rename, remove, 64 MiB round trip',
    async () => {
      await basicWorkload('bookworm');
    },
    TEST_TIMEOUT,
  );

  test(
    '6.12 guest (built in), one request queue: same workload',
    async () => {
      await basicWorkload('backports', { requestQueues: 1 });
    },
    TEST_TIMEOUT,
  );

  test(
    'umount + mount, then a guest reboot, against one daemon process',
    async () => {
      const result = await runGuest('bookworm', 'reboot', { allowReboot: true });
      expectCleanRun(result, ['persist-write', 'umount', 'remount', 'after-remount', 'after-reboot']);
      const { share, report } = result;
      // Two boots, each mounted the share, and the second saw the first's data.
      expect(report.ok.filter((c) => c === 'mount')).toHaveLength(2);
      expect(report.info).toEqual(expect.arrayContaining(['boot 1', 'rebooting', 'boot 2']));
      expect(read(share, 'boot-marker')).toBe('2\n');
      expect(read(share, 'persist.txt')).toBe('survives remounts\n');
      const persisted = fs.readFileSync(path.join(share, 'persist.bin'));
      expect(persisted.length).toBe(4 << 20);
      expect(read(share, 'persist.sha256').split(' ')[0]).toBe(sha256(persisted));
    },
    TEST_TIMEOUT,
  );

  test.skipIf(REFERENCE)(
    `6.12 guest, 2 request queues, 2 vCPUs: parallel I/O${
      RUST
        ? ' (skipped for the Rust virtiofsd: it serves one request queue)'
        : REFERENCE
          ? ' (skipped for the reference daemon: it serves one request queue and aborts with "Invalid queue index: 2")'
          : ''
    }`,
    async () => {
      const result = await runGuest('backports', 'parallel', { requestQueues: 2 });
      expectCleanRun(result, ['mount', 'parallel-io']);
      const { share, report } = result;
      const written = [...report.sums].filter(([file]) => file.startsWith('par/'));
      expect(written).toHaveLength(8);
      for (const [file, sum] of written) expect(fileSha256(path.join(share, file)), file).toBe(sum);
      // Both request queues carried requests: each one's interrupt count.
      const irqs = new Map(
        report.info
          .filter((l) => l.startsWith('irq '))
          .map((l) => {
            const [, name, count] = l.split(' ');
            return [name.replace(/^virtio\d+-/, ''), Number(count)];
          }),
      );
      console.log(`[e2e] interrupts per request queue: ${[...irqs].map(([q, n]) => `${q}=${n}`).join(' ')}`);
      expect([...irqs.keys()].sort(), describeRun(result.run)).toEqual(['requests.0', 'requests.1']);
      for (const [queue, count] of irqs) expect(count, `interrupts on ${queue}`).toBeGreaterThan(0);
    },
    TEST_TIMEOUT,
  );
});
