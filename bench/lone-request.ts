/**
 * `npx tsx bench/lone-request.ts [ts|c|rust] [getattr|read4k] [N]`: the cost of
 * a lone request. N requests, one in flight, against one daemon; prints the
 * round-trip latency and the daemon's CPU per request (utime+stime of its
 * process tree). With STRACE=1 the daemon runs under `strace -c -f` and the
 * syscall counts per request are printed too (the wake-ups: epoll_wait/ppoll,
 * read of the kick eventfd, write of the call eventfd, futex hand-offs).
 * WRAP="perf record -e cpu-clock -g -o FILE --" runs the daemon under another
 * command (a profiler). BENCH_TS_CLI and BENCH_TS_ARGS as in bench/run.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FUSE_ROOT_ID, FuseDriver } from '../src/guest/fuse-driver';
import { cpuSeconds } from './proc-tree';
import { CLI, REFERENCE_DAEMON, type RunningBackend, socketFileExists, startProcess } from '../test/helpers/backends';

const which = process.argv[2] ?? 'ts';
const op = process.argv[3] ?? 'getattr';
const N = Number(process.argv[4] ?? 20000);
const REPO = path.resolve(__dirname, '..');
const tsCli = process.env.BENCH_TS_CLI ?? CLI;
const tsArgs = process.env.BENCH_TS_ARGS?.split(' ').filter(Boolean) ?? [];
const rust = process.env.PEERS_VIRTIOFSD ?? path.join(REPO, '.cache/peers/bin/virtiofsd');
const strace = process.env.STRACE === '1';

async function start(share: string, sock: string, out: string): Promise<RunningBackend> {
  const wrapper = process.env.WRAP?.split(' ').filter(Boolean) ?? [];
  const wrap = (cmd: string, args: string[]): [string, string[]] =>
    strace
      ? ['strace', ['-c', '-f', '-o', out, cmd, ...args]]
      : wrapper.length
        ? [wrapper[0], [...wrapper.slice(1), cmd, ...args]]
        : [cmd, args];
  switch (which) {
    case 'ts':
      return startProcess(
        ...wrap(process.execPath, [
          ...(process.env.BENCH_TS_NODE_ARGS?.split(' ').filter(Boolean) ?? []),
          tsCli,
          '--socket-path',
          sock,
          '--shared-dir',
          share,
          '--cache',
          'auto',
          '--log-level',
          'warn',
          ...tsArgs,
        ]),
        sock,
        socketFileExists,
      );
    case 'c':
      return startProcess(...wrap(REFERENCE_DAEMON, [`--socket-path=${sock}`, '-o', `source=${share}`, '-o', 'cache=auto']), sock);
    default:
      return startProcess(...wrap(rust, [`--socket-path=${sock}`, `--shared-dir=${share}`, '--cache=auto']), sock);
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-lone-'));
  const share = path.join(dir, 'share');
  fs.mkdirSync(share);
  fs.writeFileSync(path.join(share, 'f'), Buffer.alloc(1 << 20, 1));
  const sock = path.join(dir, 'sock');
  const out = path.join(dir, 'strace.txt');
  const backend = await start(share, sock, out);
  const driver = await FuseDriver.connect(sock, {
    ramRegions: [64 << 20, 64 << 20],
    addMemRegions: true,
    queueSize: 128,
    requestQueues: 1,
  });
  await driver.init();
  const e = await driver.lookup(FUSE_ROOT_ID, 'f');
  const { fh } = await driver.open(e.nodeid, fs.constants.O_RDONLY);
  const one = op === 'getattr' ? () => driver.getattr(e.nodeid) : () => driver.read(e.nodeid, fh, 0, 4096);
  for (let i = 0; i < 500; i++) await one();
  const c0 = cpuSeconds(backend.pid);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await one();
  const us = Number(process.hrtime.bigint() - t0) / 1e3 / N;
  const cpuUs = ((cpuSeconds(backend.pid) - c0) / N) * 1e6;
  driver.close();
  await backend.stop();
  process.stdout.write(`${which} ${op}: ${us.toFixed(1)} us per round trip, daemon CPU ${cpuUs.toFixed(1)} us per request\n`);
  if (strace && fs.existsSync(out)) {
    // Counts include start-up; with N large they are per-request figures.
    for (const line of fs.readFileSync(out, 'utf8').split('\n').slice(2)) {
      const f = line.trim().split(/\s+/);
      if (f.length >= 5 && /^\d/.test(f[3]))
        process.stdout.write(`  ${f[f.length - 1].padEnd(18)} ${(Number(f[3]) / N).toFixed(2)} per request\n`);
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
