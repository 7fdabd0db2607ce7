// End to end: the POSIX battery (test/e2e/guest/battery.c) in a real Linux
// guest on the daemon's share, with xattrs, POSIX locks and flock enabled.
// The guest runs numbered checks with its own system calls and reports each
// on the console; the locks checks ask the host (this process) to probe the
// host file for the guest's lock. After power-off the host checks what the
// guest left: contents, sizes, the 256 MiB file (byte for byte against the
// pattern, and its hash against the guest's E2E-SUM), owners, modes, times,
// xattrs, link counts, symlink targets, names.
//
// A check that cannot pass against the reference daemon for a documented
// reason is listed in REFERENCE_EXPECTED_FAILURES (RUST_EXPECTED_FAILURES for
// the Rust virtiofsd, E2E_DAEMON=rust): there it must fail (the
// reason is printed), and everything else must pass. Against ours every
// check must pass.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, test } from 'vitest';
import {
  DAEMON_TITLE,
  GuestRun,
  REFERENCE,
  RUST,
  TEST_TIMEOUT,
  expectCleanExit,
  hostBattery,
  runGuest,
  useE2EEnvironment,
} from './harness';
import { describeRun } from './qemu-guest';

/** The checks of battery.c, in order (`battery list-checks`). */
const CHECKS = [
  '01-create-rw',
  '02-pread-pwrite',
  '03-mkdir-rmdir',
  '04-readdir-1000',
  '05-rename',
  '06-renameat2',
  '07-hardlink',
  '08-symlink',
  '09-chmod-chown',
  '10-utimes',
  '11-statfs',
  '12-unlink-open',
  '13-o-excl',
  '14-sparse-seek',
  '15-fallocate',
  '16-xattr',
  '17-flock',
  '18-flock-blocking',
  '19-fcntl-locks',
  '20-ofd-close',
  '21-fcntl-setlkw',
  '22-mkfifo',
  '23-big-file',
  '24-many-files',
  '25-unicode-names',
  '26-fsync',
  '27-copy-file-range',
  '28-mmap-shared',
];

/** Checks QEMU 7.2's C virtiofsd cannot pass, and why. */
const REFERENCE_EXPECTED_FAILURES: Record<string, string> = {
  '18-flock-blocking':
    'the C virtiofsd (lo_flock) answers every flock request without LOCK_NB with EOPNOTSUPP, since a 2022 ' +
    'change (one thread serves the queue, so a blocked flock could deadlock it); the kernel sends even a ' +
    'plain flock(LOCK_UN) that way (as FUSE_SETLKW), so it fails too',
  '20-ofd-close':
    "the C virtiofsd drops a lock owner's host locks only on FUSE_FLUSH of that owner; the kernel flushes " +
    "with the POSIX owner (the process's files), never the OFD owner (the file), and FUSE_RELEASE carries " +
    'no owner unless flock was used, so OFD locks outlive close() on the host and block the next locker',
  '21-fcntl-setlkw':
    'the C virtiofsd answers FUSE_SETLKW (blocking POSIX locks) with EOPNOTSUPP, even uncontended ' +
    '(passthrough_ll.c lo_setlk; /work/shared/notes/reference-daemon.md)',
};

/** Checks the Rust virtiofsd (trixie's 1.13) cannot pass, and why. */
const RUST_EXPECTED_FAILURES: Record<string, string> = {
  '17-flock':
    'the Rust virtiofsd 1.13 has no BSD locks (SETLK/SETLKW answer ENOSYS): the guest kernel then keeps ' +
    'flock() locks to itself, so a host process sees the file unlocked',
  '19-fcntl-locks':
    'the Rust virtiofsd 1.13 has no POSIX locks (GETLK/SETLK answer ENOSYS): the guest kernel then keeps ' +
    'fcntl() locks to itself, so a host process sees the range unlocked',
};

const MiB = 1 << 20;
const BIG_BYTES = 256 * MiB;

/** The big file's content at `offset` (a multiple of 1 MiB): see pattern_chunk in battery.c. */
function patternChunk(base: Buffer, offset: number): Buffer {
  const chunk = Buffer.from(base);
  for (let page = 0; page < MiB; page += 4096) chunk.writeBigUInt64LE(BigInt(offset + page), page);
  return chunk;
}
function patternBase(): Buffer {
  const base = Buffer.alloc(MiB);
  let x = 0x9e3779b9;
  for (let i = 0; i < MiB / 4; i++) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    base.writeUInt32LE(x, 4 * i);
  }
  return base;
}

/**
 * The file's "fnv32x2" hash, as battery.c prints it in E2E-SUM (two FNV-1a
 * lanes over the even and odd 32-bit little-endian words; the guest uses it
 * instead of sha256, which took 9 s for 256 MiB under TCG), and the first
 * 1 MiB chunk that differs from the pattern (-1: none).
 */
function checkBigFile(file: string): { hash: string; firstBadChunk: number } {
  const base = patternBase();
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(MiB);
  const words = new Uint32Array(buf.buffer, buf.byteOffset, MiB / 4);
  let a = 0x811c9dc5;
  let b = 0x811c9dc5;
  let firstBadChunk = -1;
  try {
    for (let off = 0; off < BIG_BYTES; off += MiB) {
      const n = fs.readSync(fd, buf, 0, MiB, off);
      if (firstBadChunk < 0 && (n !== MiB || !buf.equals(patternChunk(base, off)))) firstBadChunk = off / MiB;
      for (let i = 0; i < n / 4; i += 2) {
        a = Math.imul(a ^ words[i], 0x01000193);
        b = Math.imul(b ^ words[i + 1], 0x01000193);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  const hex = (x: number) => (x >>> 0).toString(16).padStart(8, '0');
  return { hash: `fnv32x2:${hex(a)}${hex(b)}`, firstBadChunk };
}

let workDir: () => string;

/** The results per check: "ok", or the guest's failure reason. */
function checkResults(result: GuestRun): Map<string, string> {
  const results = new Map<string, string>();
  for (const name of result.report.ok) if (CHECKS.includes(name)) results.set(name, 'ok');
  for (const line of result.report.failed) {
    const [name, ...why] = line.split(' ');
    results.set(name, why.join(' '));
  }
  return results;
}

/**
 * What the host finds in the share, per check (only for checks the guest
 * passed: a failed one is reported already). Returns the problems found.
 */
function hostChecks(dir: string, result: GuestRun, passed: (check: string) => boolean): string[] {
  const problems: string[] = [];
  const at = (check: string, rel = '') => path.join(dir, check, rel);
  const want = (check: string, what: string, got: unknown, expected: unknown) => {
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      problems.push(`${check}: host sees ${what} = ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`);
    }
  };
  const content = (check: string, rel: string) => {
    try {
      return fs.readFileSync(at(check, rel), 'utf8');
    } catch (err) {
      return `<${(err as NodeJS.ErrnoException).code}>`;
    }
  };
  const lstat = (check: string, rel: string) => fs.lstatSync(at(check, rel), { bigint: true });
  const has = (check: string, rel: string) => fs.existsSync(at(check, rel));
  const run = (check: string, body: () => void) => {
    if (!passed(check)) return;
    try {
      body();
    } catch (err) {
      problems.push(`${check}: host check threw ${(err as Error).message}`);
    }
  };

  run('01-create-rw', () => {
    want('01-create-rw', 'rw.txt', content('01-create-rw', 'rw.txt'), 'final content\n');
    const st = lstat('01-create-rw', 'empty');
    want('01-create-rw', 'empty size/mode', [Number(st.size), Number(st.mode) & 0o7777], [0, 0o600]);
  });
  run('02-pread-pwrite', () => {
    const data = fs.readFileSync(at('02-pread-pwrite', 'pp.bin'));
    want('02-pread-pwrite', 'pp.bin size', data.length, MiB + 3);
    want(
      '02-pread-pwrite',
      'pp.bin pieces',
      [data.subarray(0, 1), data.subarray(4092, 4100), data.subarray(65534, 65538), data.subarray(MiB)].map(String),
      ['S', 'ABCDEFGH', 'tail', 'far'],
    );
    want('02-pread-pwrite', 'pp.bin hole at 500000', data.subarray(500000, 500016).equals(Buffer.alloc(16)), true);
  });
  run('03-mkdir-rmdir', () => {
    want('03-mkdir-rmdir', 'a/ listing', fs.readdirSync(at('03-mkdir-rmdir', 'a')), ['x']);
  });
  run('04-readdir-1000', () => {
    const names = fs.readdirSync(at('04-readdir-1000', 'dir')).sort();
    const expected = Array.from({ length: 1000 }, (_, i) => `entry-${String(i).padStart(4, '0')}`);
    want('04-readdir-1000', 'dir/ names', names.length === 1000 && names.every((n, i) => n === expected[i]), true);
  });
  run('05-rename', () => {
    want('05-rename', 'listing', fs.readdirSync(at('05-rename')).sort(), ['d2', 'd3']);
    want('05-rename', 'd2/ contents', [content('05-rename', 'd2/moved'), content('05-rename', 'd2/inner')], ['source', 'inner']);
  });
  run('06-renameat2', () => {
    want(
      '06-renameat2',
      'y, dir, z/in',
      [content('06-renameat2', 'y'), content('06-renameat2', 'dir'), content('06-renameat2', 'z/in')],
      ['x-data', 'y-data', 'in'],
    );
  });
  run('07-hardlink', () => {
    const f = lstat('07-hardlink', 'f');
    const h = lstat('07-hardlink', 'h');
    want('07-hardlink', 'f/h nlink', [Number(f.nlink), Number(h.nlink)], [2, 2]);
    want('07-hardlink', 'f and h share an inode', f.ino === h.ino, true);
    want('07-hardlink', 'f content', content('07-hardlink', 'f'), 'linked!');
    want('07-hardlink', 'g exists', has('07-hardlink', 'g'), false);
  });
  run('08-symlink', () => {
    const targets = ['rel', 'abs', 'good', 'dirlink'].map((l) => fs.readlinkSync(at('08-symlink', l)));
    want('08-symlink', 'targets', targets, ['some/relative/../target', '/absolute/path/nowhere', 'target.txt', 'dir']);
    want('08-symlink', 'long target length', fs.readlinkSync(at('08-symlink', 'long')).length, 2000);
  });
  run('09-chmod-chown', () => {
    const owner = (rel: string) => {
      const st = lstat('09-chmod-chown', rel);
      return `${st.uid}:${st.gid}`;
    };
    want('09-chmod-chown', 'owners of f, d, g, sl, d/made-by-1000', ['f', 'd', 'g', 'sl', 'd/made-by-1000'].map(owner), [
      '1000:1000',
      '1000:1000',
      '0:1234',
      '1001:1002',
      '1000:1000',
    ]);
    want('09-chmod-chown', 'mode of f', (Number(lstat('09-chmod-chown', 'f').mode) & 0o7777).toString(8), '640');
  });
  run('10-utimes', () => {
    const fixed = lstat('10-utimes', 'fixed');
    want(
      '10-utimes',
      'fixed atime/mtime (ns)',
      [fixed.atimeNs.toString(), fixed.mtimeNs.toString()],
      ['1000000000123456789', '1234567890987654321'],
    );
    want('10-utimes', 'sl (the link itself) mtime (ns)', lstat('10-utimes', 'sl').mtimeNs.toString(), '1222222222000000002');
    want('10-utimes', 'd mtime (ns)', lstat('10-utimes', 'd').mtimeNs.toString(), '1222222222000000002');
  });
  run('11-statfs', () => {
    const line = result.report.info.find((l) => l.startsWith('statfs '));
    const guestTotal = line && /total=(\d+)/.exec(line)?.[1];
    const host = fs.statfsSync(dir, { bigint: true });
    want('11-statfs', 'total bytes (guest f_blocks*f_frsize vs host)', guestTotal, (host.blocks * host.bsize).toString());
  });
  run('12-unlink-open', () => {
    want('12-unlink-open', 'listing', fs.readdirSync(at('12-unlink-open')), ['f']);
    want('12-unlink-open', 'f', content('12-unlink-open', 'f'), 'new file');
  });
  run('14-sparse-seek', () => {
    const st = lstat('14-sparse-seek', 'sparse');
    want('14-sparse-seek', 'sparse size', Number(st.size), 4 * MiB);
    want('14-sparse-seek', 'sparse allocated under 1 MiB', Number(st.blocks) * 512 < MiB, true);
  });
  run('15-fallocate', () => {
    const data = fs.readFileSync(at('15-fallocate', 'falloc'));
    const expected = Buffer.alloc(MiB, 0xaa).fill(0, 256 * 1024, 512 * 1024);
    want('15-fallocate', 'falloc size', data.length, MiB);
    want('15-fallocate', 'falloc content (0xaa, hole at [256 KiB, 512 KiB))', data.equals(expected), true);
    want('15-fallocate', 'grow size', Number(lstat('15-fallocate', 'grow').size), 1100);
  });
  run('16-xattr', () => {
    const f = at('16-xattr', 'f');
    want('16-xattr', 'user.* names of f', hostBattery('xattr-list', f).split('\n'), ['user.bin', 'user.empty', 'user.large', 'user.test']);
    want(
      '16-xattr',
      'user.test, user.bin, user.empty of f',
      ['user.test', 'user.bin', 'user.empty'].map((n) => hostBattery('xattr-get', f, n)),
      [Buffer.from('value1').toString('hex'), '610062ff', ''],
    );
    want('16-xattr', 'user.dir of d', hostBattery('xattr-get', at('16-xattr', 'd'), 'user.dir'), Buffer.from('on a dir').toString('hex'));
  });
  for (const [check, probes] of [
    ['17-flock', ['flock-held busy', 'flock-released free']],
    ['19-fcntl-locks', ['posix-held F_WRLCK 0 100', 'posix-released unlocked']],
    ['20-ofd-close', ['ofd-closed unlocked']],
  ] as const) {
    run(check, () => {
      // The guest got the answers it wanted; the log shows the host's side.
      for (const probe of probes) {
        const [name, ...answer] = probe.split(' ');
        const answers = result.hostRequests.filter((r) => r.name.startsWith(`${name}-`)).map((r) => r.reply);
        want(check, `host probe ${name} (last answer)`, answers.at(-1), answer.join(' '));
      }
    });
  }
  run('22-mkfifo', () => {
    const st = fs.lstatSync(at('22-mkfifo', 'fifo'));
    want('22-mkfifo', 'fifo type/mode', [st.isFIFO(), (st.mode & 0o7777).toString(8)], [true, '640']);
  });
  run('23-big-file', () => {
    const file = at('23-big-file', 'big.bin');
    want('23-big-file', 'big.bin size', fs.statSync(file).size, BIG_BYTES);
    const { hash, firstBadChunk } = checkBigFile(file);
    want('23-big-file', 'first MiB differing from the pattern', firstBadChunk, -1);
    want('23-big-file', "hash (host vs the guest's E2E-SUM)", hash, result.report.sums.get('battery/23-big-file/big.bin'));
  });
  run('24-many-files', () => {
    const small = at('24-many-files', 'small');
    const names = fs.readdirSync(small);
    want('24-many-files', 'file count', names.length, 2000);
    const bad = [];
    for (let i = 0; i < 2000; i++) {
      const name = `f-${String(i).padStart(4, '0')}`;
      const body = `small file ${i} ${'.'.repeat(i % 40)}\n`;
      if (content('24-many-files', `small/${name}`) !== body) bad.push(name);
    }
    want('24-many-files', 'files with wrong content', bad.slice(0, 5), []);
  });
  run('25-unicode-names', () => {
    const names = fs
      .readdirSync(at('25-unicode-names'), { encoding: 'buffer' })
      .map((b) => b.toString('utf8'))
      .sort();
    const expected = [
      'héllo wörld.txt',
      '日本語のファイル名.txt',
      'emoji 🎉🚀 name',
      ' leading space',
      'trailing space ',
      'multiple   spaces  inside',
      'tab\there',
      'quote\'s "double"',
      'Ωμέγα renamed ✓',
      'n'.repeat(255),
      'dïr with spaces',
    ].sort();
    want('25-unicode-names', 'names', names, expected);
    want('25-unicode-names', 'héllo wörld.txt', content('25-unicode-names', 'héllo wörld.txt'), 'héllo wörld.txt');
    want('25-unicode-names', 'nested', content('25-unicode-names', 'dïr with spaces/ファイル'), 'nested');
  });
  run('26-fsync', () => {
    want('26-fsync', 'synced size', Number(lstat('26-fsync', 'synced').size), 128 * 1024);
    want('26-fsync', 'osync, odsync', [content('26-fsync', 'osync'), content('26-fsync', 'odsync')], ['O_SYNC\n', 'O_DSYNC\n']);
  });
  run('27-copy-file-range', () => {
    const src = fs.readFileSync(at('27-copy-file-range', 'src'));
    const dst = fs.readFileSync(at('27-copy-file-range', 'dst'));
    const expected = Buffer.from(src.subarray(100, 500100));
    src.copy(expected, 1000, 0, 10);
    want('27-copy-file-range', 'dst', [dst.length, dst.equals(expected)], [500000, true]);
  });
  run('28-mmap-shared', () => {
    const data = fs.readFileSync(at('28-mmap-shared', 'mapped'));
    const expected = Buffer.alloc(65536);
    for (let i = 0; i < 65536; i++) expected[i] = 0x61 + (i % 26);
    want('28-mmap-shared', 'mapped', data.equals(expected), true);
  });
  return problems;
}

describe(`POSIX battery in a Linux guest against ${DAEMON_TITLE}`, () => {
  workDir = useE2EEnvironment();

  test(
    `6.1 guest, cache auto, xattr + posix_lock + flock: ${CHECKS.length} checks, then the host inspects the share`,
    async () => {
      expect(hostBattery('list-checks').split('\n'), 'CHECKS must list the checks of battery.c').toEqual(CHECKS);
      const share = path.join(workDir(), 'share');
      fs.mkdirSync(share);
      const result = await runGuest({
        workDir: workDir(),
        share,
        kernel: 'bookworm',
        mode: 'battery',
        daemon: { cache: 'auto', xattr: true, posixLock: true, flock: true },
        timeoutMs: 150_000, // under TEST_TIMEOUT, so a hung guest still shows its console
        hostHandlers: {
          // `battery probe-* SHARE/REL ARGS`: the host's view of a guest lock.
          'probe-flock': ([rel]) => hostBattery('probe-flock', path.join(share, rel)),
          'probe-posix': ([rel, start, len]) => hostBattery('probe-posix', path.join(share, rel), start, len),
        },
      });
      const details = describeRun(result.run);
      const times = result.report.info.filter((l) => l.startsWith('time ')).map((l) => l.split(' ').slice(1, 3).join(' '));
      console.log(`[e2e] battery check times (ms): ${times.join(', ')}`);
      for (const line of result.report.info.filter((l) => /^(big-file|many-files|battery done|fcntl-locks|mkfifo|statfs)/.test(l))) {
        console.log(`[e2e] battery: ${line}`);
      }

      const results = checkResults(result);
      const missing = CHECKS.filter((c) => !results.has(c));
      const unexpected: string[] = [];
      for (const check of CHECKS) {
        const outcome = results.get(check);
        if (outcome === undefined) continue;
        const expectedFailure = RUST ? RUST_EXPECTED_FAILURES[check] : REFERENCE ? REFERENCE_EXPECTED_FAILURES[check] : undefined;
        if (expectedFailure !== undefined) {
          if (outcome === 'ok') {
            unexpected.push(`${check}: passed, but is listed as an expected failure on ${DAEMON_TITLE} (${expectedFailure})`);
          } else {
            console.log(`[e2e] EXPECTED FAILURE on ${DAEMON_TITLE}: ${check}: ${outcome}\n      why: ${expectedFailure}`);
          }
        } else if (outcome !== 'ok') {
          unexpected.push(`${check}: ${outcome}`);
        }
      }
      const problems = hostChecks(path.join(share, 'battery'), result, (c) => results.get(c) === 'ok');
      expect(missing, `checks that reported nothing (hung or crashed?)\n${details}`).toEqual([]);
      expect(unexpected, `failed battery checks\n${details}`).toEqual([]);
      expect(problems, 'what the host found in the share').toEqual([]);
      expect(
        result.report.failed.filter((l) => !CHECKS.includes(l.split(' ')[0])),
        details,
      ).toEqual([]);
      expectCleanExit(result);
    },
    TEST_TIMEOUT,
  );
});
