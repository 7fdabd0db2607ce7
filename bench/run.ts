/**
 * `npm run bench`: virtiofsd-ts, QEMU's C virtiofsd and the Rust virtiofsd
 * side by side, each its own process, driven by the same TypeScript guest
 * (src/guest) from this process.
 *
 * Rows: metadata (LOOKUP+GETATTR of existing names, CREATE+RELEASE+UNLINK,
 * READDIRPLUS of a 10 000-entry directory) and READ/WRITE, sequential and
 * random, 4 KiB / 64 KiB / 1 MiB, with 1, 4 and 16 requests in flight, on 1
 * and 2 request queues (the references serve one: their 2-queue cells are
 * marked). Per daemon also CPU seconds per GiB and per million metadata ops
 * (utime+stime of the daemon's process tree: in namespace mode the serving
 * process is a child of the one we start) and peak RSS (VmHWM), idle and
 * after the load.
 *
 * All daemons are connected at once and measured in turn, cell by cell, so
 * every cell of every daemon sees the same moment of a shared machine; the
 * order rotates each round, and every cell reports the median over the
 * rounds. Knobs (environment):
 *   BENCH_MS       ms per I/O cell (default 200)
 *   BENCH_ROUNDS   rounds (default 3)
 *   BENCH_QUICK=1  a subset of the I/O rows (depth 1 and 16, 4 KiB and 1 MiB)
 *   BENCH_ONLY     comma-separated daemon names (ts,c,rust)
 *   BENCH_TS_CLI   another build of our CLI to measure
 *   BENCH_TS_BASE_CLI  a second build of ours (e.g. the previous commit), measured in the same rounds
 *   BENCH_TS_ARGS, BENCH_TS_NODE_ARGS  extra arguments for our daemon and its node (`--cpu-prof`)
 *   BENCH_FETCH_PEERS=0  do not run scripts/peers/setup.sh when the Rust daemon is missing
 *   BENCH_IN_GUEST=1     also run the in-guest mode (bench/in-guest-dax.ts: a real Linux guest under QEMU)
 *   BENCH_OUT      directory for latest.md/latest.json/io.svg (default docs/benchmarks)
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FUSE_ROOT_ID, FuseDriver } from '../src/guest/fuse-driver';
import { CLI, REFERENCE_DAEMON, type RunningBackend, socketFileExists, startProcess } from '../test/helpers/backends';
import { cpuSeconds, peakRssKiB } from './proc-tree';
import { type Series, groupedBarChart } from './svg-chart';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const REPO = path.resolve(__dirname, '..');
const FILE_SIZE = 64 * MiB;
const MEASURE_MS = Number(process.env.BENCH_MS ?? 200);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const QUICK = process.env.BENCH_QUICK === '1';
const DIR_ENTRIES = 10_000;
/** Metadata rows run this many operations (or MEASURE_MS, whichever ends later). */
const META_OPS = 2000;

type Op = 'read' | 'write';
type Pattern = 'seq' | 'rand';
const SIZES = QUICK ? [4 * KiB, MiB] : [4 * KiB, 64 * KiB, MiB];
const DEPTHS = QUICK ? [1, 16] : [1, 4, 16];
const QUEUES = [1, 2];

interface IoCell {
  op: Op;
  pattern: Pattern;
  size: number;
  depth: number;
  queues: number;
}

const ioCells: IoCell[] = [];
for (const op of ['read', 'write'] as Op[])
  for (const pattern of ['seq', 'rand'] as Pattern[])
    for (const size of SIZES) for (const depth of DEPTHS) for (const queues of QUEUES) ioCells.push({ op, pattern, size, depth, queues });

const META_ROWS = ['lookup+getattr', 'create+release+unlink', 'readdirplus 10k'] as const;
type MetaRow = (typeof META_ROWS)[number];

interface Daemon {
  key: string;
  name: string;
  /** Request queues it serves (the guest sets up no more than this). */
  maxQueues: number;
  available(): string | null;
  start(share: string, sock: string): Promise<RunningBackend>;
}

const tsCli = process.env.BENCH_TS_CLI ?? CLI;
/** Extra arguments for our daemon (BENCH_TS_ARGS, e.g. `--thread-pool-size 8`) and for its Node (BENCH_TS_NODE_ARGS, e.g. `--cpu-prof`). */
const tsArgs = process.env.BENCH_TS_ARGS?.split(' ').filter(Boolean) ?? [];
const tsNodeArgs = process.env.BENCH_TS_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
const rustVirtiofsd = process.env.PEERS_VIRTIOFSD ?? path.join(REPO, '.cache/peers/bin/virtiofsd');

const baseCli = process.env.BENCH_TS_BASE_CLI;

const daemons: Daemon[] = [
  {
    key: 'ts',
    name: 'virtiofsd-ts',
    maxQueues: 2,
    available: () => (fs.existsSync(tsCli) ? null : `${tsCli} is missing (npm run build)`),
    // As users run it: the default sandbox, cache=auto.
    start: (share, sock) =>
      startProcess(
        process.execPath,
        [...tsNodeArgs, tsCli, '--socket-path', sock, '--shared-dir', share, '--cache', 'auto', '--log-level', 'warn', ...tsArgs],
        sock,
        socketFileExists,
      ),
  },
  {
    key: 'c',
    name: 'C virtiofsd',
    maxQueues: 1,
    available: () =>
      fs.existsSync(REFERENCE_DAEMON) ? null : `${REFERENCE_DAEMON} is missing (apt-get install qemu-system-x86 on Debian 12)`,
    start: (share, sock) => startProcess(REFERENCE_DAEMON, [`--socket-path=${sock}`, '-o', `source=${share}`, '-o', 'cache=auto'], sock),
  },
  {
    key: 'rust',
    name: 'Rust virtiofsd',
    maxQueues: 1,
    available: () => (fs.existsSync(rustVirtiofsd) ? null : `${rustVirtiofsd} is missing (run scripts/peers/setup.sh as root)`),
    start: (share, sock) => startProcess(rustVirtiofsd, [`--socket-path=${sock}`, `--shared-dir=${share}`, '--cache=auto'], sock),
  },
];
if (baseCli) {
  // Another build of ours, measured in the same rounds (before/after a change); never a reference.
  daemons.push({
    key: 'base',
    name: 'virtiofsd-ts (baseline)',
    maxQueues: 2,
    available: () => (fs.existsSync(baseCli) ? null : `${baseCli} is missing`),
    start: (share, sock) =>
      startProcess(
        process.execPath,
        [...tsNodeArgs, baseCli, '--socket-path', sock, '--shared-dir', share, '--cache', 'auto', '--log-level', 'warn', ...tsArgs],
        sock,
        socketFileExists,
      ),
  });
}

/* ---------------- workloads ---------------- */

function* offsets(pattern: Pattern, size: number): Generator<number> {
  const slots = Math.floor(FILE_SIZE / size);
  let x = 12345;
  for (let i = 0; ; i++) {
    if (pattern === 'seq') yield (i % slots) * size;
    else {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      yield (x % slots) * size;
    }
  }
}

/** Keeps `depth` operations in flight for MEASURE_MS; returns operations per second. */
async function keepInFlight(depth: number, next: () => Promise<void>, minOps = 0): Promise<{ perSec: number; ops: number }> {
  for (let i = 0; i < 4; i++) await next();
  let ops = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(MEASURE_MS * 1e6);
  await Promise.all(
    Array.from({ length: depth }, async () => {
      while (process.hrtime.bigint() < deadline || ops < minOps) {
        await next();
        ops++;
      }
    }),
  );
  return { perSec: ops / (Number(process.hrtime.bigint() - start) / 1e9), ops };
}

interface DaemonRun {
  io: Map<string, number>; // cell key -> MiB/s
  meta: Map<MetaRow, number>; // ops/s (readdirplus: entries/s)
  cpuPerGiB: number;
  cpuPerMillionMeta: number;
  rssIdleKiB: number;
  rssPeakKiB: number;
}

const cellKey = (c: IoCell) => `${c.op} ${c.pattern} ${human(c.size)} qd${c.depth} q${c.queues}`;

async function connect(sock: string, queues: number): Promise<FuseDriver> {
  // ADD_MEM_REG where offered: the TypeScript front-end's SET_MEM_TABLE carries all 8 region slots,
  // which the Rust daemon's vhost crate refuses (QEMU sends exactly nregions). A request unanswered
  // for 15 s fails its cell instead of hanging the run.
  const driver = await FuseDriver.connect(sock, {
    ramRegions: [128 * MiB, 128 * MiB],
    addMemRegions: true,
    queueSize: 128,
    requestQueues: queues,
    timeoutMs: 15_000,
  });
  await driver.init();
  return driver;
}

/** One daemon process with its guest connection; restarted after a failed cell. */
interface Session {
  backend: RunningBackend;
  driver: FuseDriver;
  nodeid: number;
  fh: number;
}

async function openSession(d: Daemon, share: string, sock: string, queues: number): Promise<Session> {
  const backend = await d.start(share, sock);
  try {
    const driver = await connect(sock, queues);
    const nodeid = (await driver.lookup(FUSE_ROOT_ID, 'data.bin')).nodeid;
    const { fh } = await driver.open(nodeid, fs.constants.O_RDWR);
    return { backend, driver, nodeid, fh };
  } catch (err) {
    await backend.stop();
    throw err;
  }
}

async function closeSession(s: Session): Promise<void> {
  s.driver.close();
  await s.backend.stop();
}

/**
 * One round: every daemon runs, all connected at once and measured in turn
 * cell by cell (in `order`), so that each cell of every daemon sees the same
 * moment of a shared, noisy machine. A daemon whose cell fails is restarted.
 */
async function runRound(order: Daemon[], share: string, progress: (msg: string) => void): Promise<Map<string, DaemonRun>> {
  const results = new Map<string, DaemonRun>(
    order.map((d) => [d.key, { io: new Map(), meta: new Map(), cpuPerGiB: NaN, cpuPerMillionMeta: NaN, rssIdleKiB: 0, rssPeakKiB: 0 }]),
  );
  const payload = Buffer.alloc(MiB, 0x5a);
  for (const queues of QUEUES) {
    const here = order.filter((d) => queues <= d.maxQueues);
    const sock = (d: Daemon) => path.join(share, '..', `${d.key}.sock`);
    // A fresh daemon per queue count: a front-end connection sets its queues once.
    const sessions = new Map<string, Session>();
    try {
      for (const d of here) sessions.set(d.key, await openSession(d, share, sock(d), queues));
      const cpu = new Map<string, number>(here.map((d) => [d.key, 0]));
      const bytes = new Map<string, number>(here.map((d) => [d.key, 0]));
      /** Runs `work` against daemon d, charging it the CPU its process tree used meanwhile; restarts it if `work` fails. */
      const measured = async <T>(d: Daemon, label: string, work: (s: Session) => Promise<T>): Promise<T | null> => {
        const s = sessions.get(d.key)!;
        const c0 = cpuSeconds(s.backend.pid);
        try {
          const value = await work(s);
          cpu.set(d.key, cpu.get(d.key)! + cpuSeconds(s.backend.pid) - c0);
          return value;
        } catch (err) {
          // Recorded as missing (the table shows "-"); the daemon is restarted for the next cell.
          progress(`${d.name}: ${label} FAILED (${(err as Error).message}); restarting it`);
          const r = results.get(d.key)!;
          r.rssPeakKiB = Math.max(r.rssPeakKiB, peakRssKiB(s.backend.pid));
          await closeSession(s);
          sessions.set(d.key, await openSession(d, share, sock(d), queues));
          return null;
        }
      };
      if (queues === 1) {
        await new Promise((r) => setTimeout(r, 50));
        for (const d of here) results.get(d.key)!.rssIdleKiB = peakRssKiB(sessions.get(d.key)!.backend.pid);
        const metaOps = new Map<string, number>(here.map((d) => [d.key, 0]));
        for (const row of META_ROWS) {
          for (const d of here) {
            const m = await measured(d, row, (s) => metaRow(s.driver, row));
            if (!m) continue;
            metaOps.set(d.key, metaOps.get(d.key)! + m.ops);
            results.get(d.key)!.meta.set(row, m.perSec);
            progress(`${d.name}: ${row} ${m.perSec.toFixed(0)}/s`);
          }
        }
        for (const d of here) {
          results.get(d.key)!.cpuPerMillionMeta = (cpu.get(d.key)! / metaOps.get(d.key)!) * 1e6;
          cpu.set(d.key, 0);
        }
      }
      for (const c of ioCells.filter((x) => x.queues === queues)) {
        for (const d of here) {
          const m = await measured(d, cellKey(c), async ({ driver, nodeid, fh }) => {
            const gen = offsets(c.pattern, c.size);
            const maxIo = driver.maxWrite;
            // One guest operation of c.size bytes: as many requests as max_write demands, each checked whole.
            const one = async (): Promise<void> => {
              const off = gen.next().value as number;
              for (let done = 0; done < c.size; done += maxIo) {
                const n = Math.min(maxIo, c.size - done);
                const moved =
                  c.op === 'read'
                    ? (await driver.read(nodeid, fh, off + done, n)).length
                    : await driver.write(nodeid, fh, off + done, payload.subarray(0, n));
                if (moved !== n) throw new Error(`${c.op} of ${n} bytes moved ${moved}`);
              }
            };
            return keepInFlight(c.depth, one);
          });
          if (!m) continue;
          bytes.set(d.key, bytes.get(d.key)! + m.ops * c.size);
          const mibs = (m.perSec * c.size) / MiB;
          results.get(d.key)!.io.set(cellKey(c), mibs);
          progress(`${d.name}: ${cellKey(c)} ${mibs.toFixed(1)} MiB/s`);
        }
      }
      for (const d of here) {
        const r = results.get(d.key)!;
        const s = sessions.get(d.key)!;
        if (queues === 1) r.cpuPerGiB = cpu.get(d.key)! / (bytes.get(d.key)! / GiB);
        r.rssPeakKiB = Math.max(r.rssPeakKiB, peakRssKiB(s.backend.pid));
        await s.driver.release(s.nodeid, s.fh);
      }
    } finally {
      for (const s of sessions.values()) await closeSession(s);
    }
  }
  return results;
}

async function metaRow(driver: FuseDriver, row: MetaRow): Promise<{ perSec: number; ops: number }> {
  switch (row) {
    case 'lookup+getattr': {
      // Existing names; each lookup's reference is given back (as the guest's dcache eviction would).
      let i = 0;
      const r = await keepInFlight(
        1,
        async () => {
          const e = await driver.lookup(FUSE_ROOT_ID, `f${i++ % 100}`);
          await driver.getattr(e.nodeid);
          await driver.forget(e.nodeid, 1);
        },
        META_OPS,
      );
      return { perSec: r.perSec, ops: r.ops * 2 };
    }
    case 'create+release+unlink': {
      let i = 0;
      const r = await keepInFlight(
        1,
        async () => {
          const name = `new-${process.pid}-${i++}`;
          const c = await driver.create(FUSE_ROOT_ID, name, fs.constants.O_RDWR, 0o644);
          await driver.release(c.entry.nodeid, c.open.fh);
          await driver.unlink(FUSE_ROOT_ID, name);
          await driver.forget(c.entry.nodeid, 1);
        },
        META_OPS / 4,
      );
      return { perSec: r.perSec, ops: r.ops * 3 };
    }
    case 'readdirplus 10k': {
      const dir = await driver.lookup(FUSE_ROOT_ID, 'dir10k');
      let entries = 0;
      const start = process.hrtime.bigint();
      const deadline = start + BigInt(MEASURE_MS * 1e6);
      do {
        const { fh } = await driver.opendir(dir.nodeid);
        let cookie = 0n;
        const forgets: { nodeid: number; nlookup: number }[] = [];
        for (;;) {
          const batch = await driver.readdirplus(dir.nodeid, fh, cookie, 64 * KiB);
          if (batch.length === 0) break;
          entries += batch.length;
          for (const e of batch) if (e.entry.nodeid !== 0) forgets.push({ nodeid: e.entry.nodeid, nlookup: 1 });
          cookie = batch[batch.length - 1].off;
        }
        await driver.releasedir(dir.nodeid, fh);
        for (let i = 0; i < forgets.length; i += 512) await driver.batchForget(forgets.slice(i, i + 512));
      } while (process.hrtime.bigint() < deadline);
      await driver.forget(dir.nodeid, 1);
      return { perSec: entries / (Number(process.hrtime.bigint() - start) / 1e9), ops: entries };
    }
  }
}

/* ---------------- report ---------------- */

function human(size: number): string {
  return size >= MiB ? `${size / MiB} MiB` : `${size / KiB} KiB`;
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const fmt = (v: number | null | undefined, digits = 1) =>
  v === null || v === undefined ? '-' : v >= 100 ? v.toFixed(0) : v.toFixed(digits);
const ratio = (a: number | null, b: number | null) => (a !== null && b !== null && b > 0 ? (a / b).toFixed(2) : '-');

function ensureRustDaemon(): void {
  if (fs.existsSync(rustVirtiofsd) || process.env.PEERS_VIRTIOFSD || process.env.BENCH_FETCH_PEERS === '0') return;
  const setup = path.join(REPO, 'scripts/peers/setup.sh');
  if (!fs.existsSync(setup) || process.getuid?.() !== 0) return;
  process.stderr.write('bench: fetching the Rust virtiofsd (scripts/peers/setup.sh, about a minute on a fresh machine)...\n');
  try {
    execFileSync(setup, { stdio: ['ignore', 'ignore', 'inherit'] });
  } catch (err) {
    process.stderr.write(`bench: scripts/peers/setup.sh failed (${(err as Error).message}); the Rust column stays empty\n`);
  }
}

async function main(): Promise<void> {
  ensureRustDaemon();
  const only = process.env.BENCH_ONLY?.split(',');
  const chosen = daemons.filter((d) => {
    if (only && !only.includes(d.key)) return false;
    const why = d.available();
    if (why) process.stderr.write(`bench: skipping ${d.name}: ${why}\n`);
    return why === null;
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-bench-'));
  const share = path.join(dir, 'share');
  fs.mkdirSync(share);
  const data = Buffer.alloc(FILE_SIZE);
  for (let i = 0; i < FILE_SIZE; i += 4) data.writeUInt32LE(i, i);
  fs.writeFileSync(path.join(share, 'data.bin'), data);
  for (let i = 0; i < 100; i++) fs.writeFileSync(path.join(share, `f${i}`), 'x');
  fs.mkdirSync(path.join(share, 'dir10k'));
  for (let i = 0; i < DIR_ENTRIES; i++) fs.writeFileSync(path.join(share, 'dir10k', `entry-${String(i).padStart(5, '0')}`), '');

  const runs = new Map<string, DaemonRun[]>(chosen.map((d) => [d.key, []]));
  const cellsPerRun = chosen.reduce((n, d) => n + META_ROWS.length + ioCells.filter((c) => c.queues <= d.maxQueues).length, 0);
  const total = cellsPerRun * ROUNDS;
  let done = 0;
  const t0 = Date.now();
  for (let round = 0; round < ROUNDS; round++) {
    // Rotated order: each daemon runs first, middle and last once over three rounds.
    const order = chosen.map((_, i) => chosen[(i + round) % chosen.length]);
    const round_ = await runRound(order, share, (msg) => {
      done++;
      const eta = ((Date.now() - t0) / done) * (total - done);
      process.stderr.write(`[${done}/${total} round ${round + 1}/${ROUNDS}, ~${Math.ceil(eta / 1000)} s left] ${msg}\n`);
    });
    for (const [key, run] of round_) runs.get(key)!.push(run);
  }
  fs.rmSync(dir, { recursive: true, force: true });

  const med = (key: string, pick: (r: DaemonRun) => number | undefined) =>
    median((runs.get(key) ?? []).map(pick).filter((v): v is number => v !== undefined && Number.isFinite(v)));
  const names = chosen.map((d) => d.name);
  const refs = chosen.filter((d) => d.key !== 'ts' && d.key !== 'base');
  /** A reference's figure for a cell: its own queue count, or its 1-queue figure for the cells it cannot serve. */
  const refIo = (d: Daemon, c: IoCell) => med(d.key, (r) => r.io.get(cellKey({ ...c, queues: Math.min(c.queues, d.maxQueues) })));

  const lines: string[] = [];
  lines.push(
    `Run on ${new Date().toISOString().slice(0, 10)}: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown CPU'}), ${(os.totalmem() / GiB).toFixed(1)} GiB, Linux ${os.release()}, Node ${process.version}.`,
    `Command: \`BENCH_MS=${MEASURE_MS} BENCH_ROUNDS=${ROUNDS}${QUICK ? ' BENCH_QUICK=1' : ''} npm run bench\`; ${ROUNDS} rounds, the daemons measured in turn cell by cell (order rotated each round), medians; the guest is the TypeScript driver (one thread), the daemons are ${names.join(', ')} with their default sandboxes and thread pools, cache=auto. File of ${FILE_SIZE / MiB} MiB in the host page cache.`,
    '',
    '### Metadata (operations per second; READDIRPLUS: entries per second)',
    '',
    `| row | ${names.join(' | ')} | ${refs.map((r) => `ts/${r.key}`).join(' | ')} |`,
    `|---|${names.map(() => '---').join('|')}|${refs.map(() => '---').join('|')}|`,
  );
  for (const row of META_ROWS) {
    const ts = med('ts', (r) => r.meta.get(row));
    lines.push(
      `| ${row} | ${chosen
        .map((d) =>
          fmt(
            med(d.key, (r) => r.meta.get(row)),
            0,
          ),
        )
        .join(' | ')} | ${refs
        .map((r) =>
          ratio(
            ts,
            med(r.key, (x) => x.meta.get(row)),
          ),
        )
        .join(' | ')} |`,
    );
  }
  lines.push(
    '',
    '### READ and WRITE (MiB/s; qd = requests in flight, q = request queues; the references serve one queue, so their q2 cells repeat their q1 figure in *italics*)',
    '',
    `| cell | ${names.join(' | ')} | ${refs.map((r) => `ts/${r.key}`).join(' | ')} | ts/best |`,
    `|---|${names.map(() => '---').join('|')}|${refs.map(() => '---').join('|')}|---|`,
  );
  const ratios: { cell: string; value: number }[] = [];
  for (const c of ioCells) {
    const ts = med('ts', (r) => r.io.get(cellKey(c)));
    const cols = chosen.map((d) => {
      const v = refIo(d, c);
      return c.queues > d.maxQueues ? `*${fmt(v)}*` : fmt(v);
    });
    const refVals = refs.map((d) => refIo(d, c)).filter((v): v is number => v !== null);
    const best = refVals.length ? Math.max(...refVals) : null;
    if (ts !== null && best) ratios.push({ cell: cellKey(c), value: ts / best });
    lines.push(`| ${cellKey(c)} | ${cols.join(' | ')} | ${refs.map((d) => ratio(ts, refIo(d, c))).join(' | ')} | ${ratio(ts, best)} |`);
  }
  lines.push(
    '',
    '### Daemon cost',
    '',
    `| | ${names.join(' | ')} |`,
    `|---|${names.map(() => '---').join('|')}|`,
    `| CPU s per GiB (I/O rows, 1 queue) | ${chosen
      .map((d) =>
        fmt(
          med(d.key, (r) => r.cpuPerGiB),
          2,
        ),
      )
      .join(' | ')} |`,
    `| CPU s per million metadata ops | ${chosen
      .map((d) =>
        fmt(
          med(d.key, (r) => r.cpuPerMillionMeta),
          1,
        ),
      )
      .join(' | ')} |`,
    `| peak RSS idle (MiB) | ${chosen.map((d) => fmt((med(d.key, (r) => r.rssIdleKiB) ?? 0) / 1024)).join(' | ')} |`,
    `| peak RSS after the load (MiB) | ${chosen.map((d) => fmt((med(d.key, (r) => r.rssPeakKiB) ?? 0) / 1024)).join(' | ')} |`,
  );
  if (ratios.length) {
    const geo = Math.exp(ratios.reduce((s, r) => s + Math.log(r.value), 0) / ratios.length);
    const below = ratios.filter((r) => r.value < 1).length;
    lines.push('', `I/O cells: geometric mean ts/best reference ${geo.toFixed(2)}; ${below} of ${ratios.length} cells below 1.0.`);
  }

  let inGuest = '';
  if (process.env.BENCH_IN_GUEST === '1') {
    // The real-Linux-guest mode (bench/in-guest-dax.ts): QEMU, a Linux guest's own I/O, every daemon.
    const mod = await import('./in-guest-dax');
    const res = await mod.runInGuestBench({ rounds: ROUNDS, log: (msg) => process.stderr.write(`[in-guest] ${msg}\n`) });
    inGuest = mod.markdownTable(res);
  }
  if (inGuest) lines.push('', '### In a real Linux guest', '', inGuest);

  const table = lines.join('\n');
  process.stdout.write(table + '\n');
  const out = process.env.BENCH_OUT ?? path.join(REPO, 'docs', 'benchmarks');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'latest.md'), table + '\n');
  const json = Object.fromEntries(
    [...runs].map(([k, rs]) => [k, rs.map((r) => ({ ...r, io: Object.fromEntries(r.io), meta: Object.fromEntries(r.meta) }))]),
  );
  fs.writeFileSync(
    path.join(out, 'latest.json'),
    JSON.stringify({ date: new Date().toISOString(), measureMs: MEASURE_MS, rounds: ROUNDS, runs: json }, null, 1) + '\n',
  );
  const plotted = ioCells.filter((c) => c.queues === 1 && (c.depth === 1 || c.depth === 16));
  const series: Series[] = chosen.map((d) => ({ name: d.name, values: plotted.map((c) => refIo(d, c)) }));
  if (chosen.some((d) => d.key === 'ts'))
    series.push({ name: 'virtiofsd-ts, 2 queues', values: plotted.map((c) => med('ts', (r) => r.io.get(cellKey({ ...c, queues: 2 })))) });
  fs.writeFileSync(
    path.join(out, 'io.svg'),
    groupedBarChart(
      'READ/WRITE throughput, 1 and 16 requests in flight (log scale)',
      plotted.map((c) => `${c.op} ${c.pattern} ${human(c.size)} qd${c.depth}`),
      series,
      'MiB/s',
    ),
  );
  process.stderr.write(`wrote ${path.join(out, 'latest.md')}, latest.json and io.svg\n`);
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
