/**
 * In-guest benchmark: a Linux 6.12 guest on QEMU 11.1 (TCG) runs dd and
 * daxtool (test/e2e/guest/dax-workload.sh, mode bench) against
 *   - virtiofsd-ts with DAX (-o dax=always, the window mapping the file),
 *   - virtiofsd-ts without DAX (the request queues),
 *   - QEMU's C virtiofsd 7.2 (the request queues),
 *   - the Rust virtiofsd 1.13 from trixie (the request queues),
 * on the same guest kernel and initramfs, in the same run, interleaved
 * (round r starts with daemon r mod 4). Each case reads or writes
 * BENCH_BYTES (default 16 MiB) of a 64 MiB file in the host page cache, after
 * the guest dropped its caches, sequentially (dd) and at random offsets
 * (daxtool rand, pread/pwrite), at 4 KiB, 64 KiB and 1 MiB per request;
 * directread is the sequential read with O_DIRECT (dd iflag=direct): no guest
 * page cache, no readahead, one FUSE_READ per read on the queue path, as in
 * the unikernels the DAX seeds measured.
 *
 * `npx tsx bench/in-guest-dax.ts` runs it and writes
 * docs/benchmarks/in-guest-dax.md, docs/benchmarks/in-guest-dax.svg and the
 * section "In a real guest" of docs/benchmarks.md; `runInGuestBench(opts)`
 * is the same without the files; `--docs-only` writes them again from the
 * last run's docs/benchmarks/in-guest-dax.json. Needs scripts/e2e/setup.sh (which runs
 * scripts/peers/setup.sh) and `npm run build`. Run as root.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DAX_TAG, PEERS_VIRTIOFSD, REPO_ROOT, bootDaxGuest, describeDaxRun, parseDaxConsole } from '../test/e2e/dax-qemu';
import { groupedBarChart } from './svg-chart';

export type InGuestDaemon = 'ours-dax' | 'ours' | 'c' | 'rust';
export const IN_GUEST_DAEMONS: readonly InGuestDaemon[] = ['ours-dax', 'ours', 'c', 'rust'];
const TITLES: Record<InGuestDaemon, string> = {
  'ours-dax': 'virtiofsd-ts, DAX',
  ours: 'virtiofsd-ts, queues',
  c: 'C virtiofsd 7.2',
  rust: 'Rust virtiofsd 1.13',
};
export const OPS = ['seqread', 'directread', 'randread', 'seqwrite', 'randwrite'] as const;
export type Op = (typeof OPS)[number];
export const SIZES = [4096, 65536, 1048576] as const;

const FILE_SIZE = 64 << 20;
const C_DAEMON = '/usr/lib/qemu/virtiofsd';

export interface InGuestOptions {
  /** Rounds over all daemons (default 3); each cell reports the median. */
  rounds?: number;
  /** Bytes per case (default 16 MiB, a multiple of 1 MiB). */
  bytes?: number;
  daemons?: readonly InGuestDaemon[];
  log?: (msg: string) => void;
}

export interface InGuestResult {
  /** MB/s (10^6 bytes per second), median over the rounds, by daemon, op and size. */
  mbps: Record<InGuestDaemon, Record<Op, Record<number, number | null>>>;
  rounds: number;
  bytes: number;
  /** Wall time of each guest boot, ms. */
  bootMs: number[];
  kernel: string;
  qemu: string;
  date: string;
}

function daemonCommand(d: InGuestDaemon, socketPath: string, share: string): string[] {
  const ours = [
    process.execPath,
    path.join(REPO_ROOT, 'bin', 'virtiofsd-ts.js'),
    '--socket-path',
    socketPath,
    '--shared-dir',
    share,
    '--tag',
    DAX_TAG,
    '--cache',
    'auto',
  ];
  switch (d) {
    case 'ours-dax':
      return [...ours, '--dax-window', '256M', '--dax-policy', 'always'];
    case 'ours':
      return ours;
    case 'c':
      return [C_DAEMON, `--socket-path=${socketPath}`, '-o', `source=${share}`, '-o', 'cache=auto'];
    case 'rust':
      return [PEERS_VIRTIOFSD, `--socket-path=${socketPath}`, `--shared-dir=${share}`, `--tag=${DAX_TAG}`, '--cache=auto'];
  }
}

function prepare(share: string): void {
  fs.mkdirSync(share, { recursive: true });
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  const fd = fs.openSync(path.join(share, 'bench'), 'w');
  for (let off = 0; off < FILE_SIZE; off += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, off);
  fs.closeSync(fd);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? null : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export async function runInGuestBench(opts: InGuestOptions = {}): Promise<InGuestResult> {
  const rounds = opts.rounds ?? 3;
  const bytes = opts.bytes ?? 16 << 20;
  const daemons = opts.daemons ?? IN_GUEST_DAEMONS;
  const log = opts.log ?? ((m: string) => console.log(m));
  const samples = new Map<string, number[]>();
  const bootMs: number[] = [];
  let kernel = '?';
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < daemons.length; k++) {
      const d = daemons[(r + k) % daemons.length];
      const work = fs.mkdtempSync(path.join(os.tmpdir(), 'in-guest-bench-'));
      try {
        const share = path.join(work, 'share');
        prepare(share);
        const socketPath = path.join(work, 'fs.sock');
        const run = await bootDaxGuest({
          daemonCommand: daemonCommand(d, socketPath, share),
          socketPath,
          mode: 'bench',
          dax: d === 'ours-dax' ? 'always' : 'none',
          // QEMU's C daemon serves no device config: QEMU's own vhost-user-fs-pci builds it.
          device: d === 'c' ? 'fs' : 'test',
          timeoutMs: 600_000,
          append: `e2e.bench=${SIZES.map((bs) => `${bs}:${bytes / bs}`).join(',')}`,
        });
        const report = parseDaxConsole(run.consoleText);
        kernel = /Linux version (\S+)/.exec(run.consoleText)?.[1] ?? kernel;
        const cases = report.info.filter((l) => l.startsWith('bench ')).length;
        if (report.failed.length > 0 || report.done !== 1 || run.qemuExitCode !== 0 || cases !== OPS.length * SIZES.length) {
          throw new Error(`in-guest bench with ${TITLES[d]} failed: ${report.failed.join('; ')}\n${describeDaxRun(run)}`);
        }
        bootMs.push(run.qemuMs);
        for (const line of report.info) {
          const m = /^bench (\w+) (\d+) (\d+) (\d+)$/.exec(line);
          if (!m) continue;
          const key = `${d} ${m[1]} ${m[2]}`;
          const us = Math.max(1, Number(m[4]));
          samples.set(key, [...(samples.get(key) ?? []), Number(m[3]) / us]);
        }
        log(`in-guest: round ${r + 1}/${rounds} ${TITLES[d]}: QEMU ran ${run.qemuMs} ms`);
      } finally {
        fs.rmSync(work, { recursive: true, force: true });
      }
    }
  }
  const mbps = {} as InGuestResult['mbps'];
  for (const d of daemons) {
    mbps[d] = {} as Record<Op, Record<number, number | null>>;
    for (const op of OPS) {
      mbps[d][op] = {};
      for (const bs of SIZES) mbps[d][op][bs] = median(samples.get(`${d} ${op} ${bs}`) ?? []);
    }
  }
  const { execFileSync } = await import('node:child_process');
  const { PEERS_QEMU } = await import('../test/e2e/dax-qemu');
  const qemu = execFileSync(PEERS_QEMU, ['--version'], { encoding: 'utf8' }).split('\n')[0];
  return { mbps, rounds, bytes, bootMs, kernel, qemu, date: new Date().toISOString().slice(0, 10) };
}

const sizeName = (bs: number) => (bs >= 1 << 20 ? `${bs >> 20} MiB` : `${bs >> 10} KiB`);
const fmt = (v: number | null) => (v === null ? '–' : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/** The best queue-path daemon's MB/s for one cell, and which it is. */
export function bestQueuePath(res: InGuestResult, op: Op, bs: number): { daemon: InGuestDaemon; mbps: number } | null {
  let best: { daemon: InGuestDaemon; mbps: number } | null = null;
  for (const d of ['ours', 'c', 'rust'] as const) {
    const v = res.mbps[d]?.[op][bs];
    if (v != null && (!best || v > best.mbps)) best = { daemon: d, mbps: v };
  }
  return best;
}

export function markdownTable(res: InGuestResult): string {
  const daemons = Object.keys(res.mbps) as InGuestDaemon[];
  const lines = [
    `| operation | size | ${daemons.map((d) => TITLES[d]).join(' | ')} | DAX / best queue path |`,
    `|---|---|${daemons.map(() => '---:').join('|')}|---:|`,
  ];
  for (const op of OPS) {
    for (const bs of SIZES) {
      const best = bestQueuePath(res, op, bs);
      const dax = res.mbps['ours-dax']?.[op][bs];
      const ratio = best && dax != null ? `${(dax / best.mbps).toFixed(1)}x` : '–';
      lines.push(`| ${op} | ${sizeName(bs)} | ${daemons.map((d) => fmt(res.mbps[d][op][bs])).join(' | ')} | ${ratio} |`);
    }
  }
  return lines.join('\n');
}

export function chart(res: InGuestResult): string {
  const daemons = Object.keys(res.mbps) as InGuestDaemon[];
  const categories = OPS.flatMap((op) => SIZES.map((bs) => `${op} ${sizeName(bs)}`));
  const series = daemons.map((d) => ({ name: TITLES[d], values: OPS.flatMap((op) => SIZES.map((bs) => res.mbps[d][op][bs])) }));
  return groupedBarChart('In a Linux 6.12 guest on QEMU 11.1 (TCG): throughput by request size', categories, series, 'MB/s (log scale)');
}

const SECTION = '## In a real guest: DAX against the queue path (QEMU 11.1, Linux 6.12, TCG)';

export function writeDocs(res: InGuestResult): void {
  const docs = path.join(REPO_ROOT, 'docs');
  const seq4k = bestQueuePath(res, 'seqread', 4096);
  const dax4k = res.mbps['ours-dax']?.seqread[4096] ?? null;
  const target =
    seq4k && dax4k != null
      ? `${(dax4k / seq4k.mbps).toFixed(1)}x (${fmt(dax4k)} MB/s against ${fmt(seq4k.mbps)} MB/s for ${TITLES[seq4k.daemon]})`
      : 'not measured';
  const met = seq4k !== null && dax4k !== null && dax4k >= 10 * seq4k.mbps;
  const d4k = bestQueuePath(res, 'directread', 4096);
  const dd4k = res.mbps['ours-dax']?.directread?.[4096] ?? null;
  const direct = d4k && dd4k != null ? `${(dd4k / d4k.mbps).toFixed(1)}x (${fmt(dd4k)} against ${fmt(d4k.mbps)} MB/s)` : 'not measured';
  const table = markdownTable(res);
  const detail = [
    `# In-guest benchmark, ${res.date}`,
    '',
    `${res.qemu}, guest kernel ${res.kernel}, TCG, 2 vCPUs, 512 MiB; ${res.rounds} rounds interleaved, median MB/s; ${res.bytes >> 20} MiB per case on a 64 MiB file.`,
    `Boots took ${Math.min(...res.bootMs)}..${Math.max(...res.bootMs)} ms each.`,
    '',
    table,
    '',
  ].join('\n');
  fs.mkdirSync(path.join(docs, 'benchmarks'), { recursive: true });
  fs.writeFileSync(path.join(docs, 'benchmarks', 'in-guest-dax.md'), detail);
  fs.writeFileSync(path.join(docs, 'benchmarks', 'in-guest-dax.svg'), chart(res));
  fs.writeFileSync(path.join(docs, 'benchmarks', 'in-guest-dax.json'), `${JSON.stringify(res, null, 1)}\n`);
  const section = [
    SECTION,
    '',
    '`npx tsx bench/in-guest-dax.ts` (also callable as `runInGuestBench()`) boots a Linux 6.12 guest on',
    'QEMU 11.1 under TCG once per daemon and round, and runs `dd` (sequential) and `daxtool rand`',
    "(pread/pwrite at random aligned offsets) in it on a 64 MiB file, after dropping the guest's caches:",
    "virtiofsd-ts with DAX (`-o dax=always`, window 256 MiB), virtiofsd-ts without DAX, QEMU's C",
    "virtiofsd 7.2 (on QEMU 11.1's `vhost-user-fs-pci`: it serves no device config) and the Rust",
    'virtiofsd 1.13 (both on `vhost-user-test-device-pci` otherwise), interleaved. Guest time is',
    'TCG time: every guest instruction is emulated, so absolute figures are low and the ratios are',
    'what to read. Writes stay in place (`conv=notrunc`): extending writes are FUSE_WRITEs even with DAX.',
    '',
    `Run of ${res.date}: ${res.qemu}, guest ${res.kernel}, ${res.rounds} rounds, median MB/s`,
    `([full table](benchmarks/in-guest-dax.md)). **DAX 4 KiB sequential read: ${target}**;`,
    `the target was 10x${met ? ' (met)' : ' (not met)'}. With O_DIRECT (directread, 4 KiB): ${direct}.`,
    '',
    "Why the page-cached sequential read gains little here: under TCG the guest's own instructions",
    '(the copy to user space, the syscall path) are emulated and dominate, while the daemons run',
    'natively; with the guest page cache and readahead the queue path sends one FUSE_READ per',
    '128 KiB or more, so its round trips are amortized. Where each 4 KiB costs a request (O_DIRECT,',
    'random reads, in-place 4 KiB writes) the window wins 5-8x. Under KVM the guest copy is native',
    'and a queue round trip costs VM exits, which is the setting the DAX seeds (OSv, Unikraft) measured in;',
    'this machine has no hardware virtualization to check that.',
    '',
    table,
    '',
    '![in-guest throughput by request size](benchmarks/in-guest-dax.svg)',
    '',
  ].join('\n');
  const file = path.join(docs, 'benchmarks.md');
  const text = fs.readFileSync(file, 'utf8');
  const start = text.indexOf(SECTION);
  let out: string;
  if (start < 0) out = `${text.trimEnd()}\n\n${section}`;
  else {
    const next = text.indexOf('\n## ', start + SECTION.length);
    out = text.slice(0, start) + section + (next < 0 ? '' : text.slice(next + 1));
  }
  fs.writeFileSync(file, out);
}

if (require.main === module && process.argv[2] === '--docs-only') {
  // Writes the docs again from the last run's docs/benchmarks/in-guest-dax.json (e.g. after
  // docs/benchmarks.md was rewritten without its section).
  writeDocs(JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'docs', 'benchmarks', 'in-guest-dax.json'), 'utf8')) as InGuestResult);
} else if (require.main === module) {
  const rounds = process.env.BENCH_ROUNDS ? Number(process.env.BENCH_ROUNDS) : undefined;
  const bytes = process.env.BENCH_BYTES ? Number(process.env.BENCH_BYTES) : undefined;
  runInGuestBench({ rounds, bytes })
    .then((res) => {
      console.log(markdownTable(res));
      if (process.env.BENCH_NO_DOCS !== '1') writeDocs(res);
    })
    .catch((err) => {
      console.error(err);
      process.exit(1);
    });
}
