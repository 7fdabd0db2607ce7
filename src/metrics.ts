/**
 * Process-wide request metrics: per-opcode counts, errors, bytes and latency
 * histograms, plus named counters and gauges. The request path calls
 * `metrics.request()` once per answered request (the contract is in
 * /work/tasks/metrics-api.md and docs/operations.md); the daemon dumps
 * `snapshot()` as JSON on SIGUSR1 and over --metrics-socket.
 *
 * Latencies go into log2 buckets (bucket b holds [2^b, 2^(b+1)) ns), so
 * recording costs a few arithmetic operations and no allocation; percentiles
 * are read back as the upper bound of the bucket that holds them.
 */
import { errnoCode } from './sys/errno';
import { Opcode } from './fuse-server/protocol';

const BUCKETS = 48; // 2^47 ns is about 39 hours: anything longer lands in the last bucket.

interface OpcodeStats {
  count: number;
  errors: number;
  bytes: number;
  sumNs: number;
  maxNs: number;
  buckets: Float64Array;
}

export interface LatencySummary {
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export interface MetricsSnapshot {
  version: 1;
  uptimeSeconds: number;
  requests: { total: number; errors: number; bytesRead: number; bytesWritten: number };
  opcodes: Record<string, { count: number; errors: number; bytes: number; latencyNs: LatencySummary }>;
  errnos: Record<string, number>;
  counters: Record<string, number>;
  gauges: Record<string, number>;
}

/** Called per request when the daemon logs at debug: one line per FUSE request. */
export type RequestLog = (line: string) => void;

function opcodeName(opcode: number): string {
  const name = Opcode[opcode];
  return typeof name === 'string' ? name.replace(/^FUSE_/, '') : `opcode ${opcode}`;
}

function bucketOf(ns: number): number {
  if (!(ns >= 1)) return 0;
  const b = Math.floor(Math.log2(ns));
  return b >= BUCKETS ? BUCKETS - 1 : b;
}

function percentile(buckets: Float64Array, count: number, q: number, max: number): number {
  const rank = Math.ceil(count * q);
  let seen = 0;
  for (let b = 0; b < BUCKETS; b++) {
    seen += buckets[b];
    // The bucket's upper bound, but never more than the largest latency seen.
    if (seen >= rank) return Math.min(2 ** (b + 1), max);
  }
  return max;
}

export class Metrics {
  private opcodes = new Map<number, OpcodeStats>();
  private errnos = new Map<number, number>();
  private counters = new Map<string, number>();
  private gauges = new Map<string, number>();
  private pulled = new Map<string, () => number>();
  private started = process.hrtime.bigint();
  private requestLog: RequestLog | null = null;

  /** One answered FUSE request; see the module comment. Never throws. */
  request(opcode: number, unique: bigint, nodeid: number, errno: number, ns: number, bytes: number): void {
    let s = this.opcodes.get(opcode);
    if (s === undefined) {
      s = { count: 0, errors: 0, bytes: 0, sumNs: 0, maxNs: 0, buckets: new Float64Array(BUCKETS) };
      this.opcodes.set(opcode, s);
    }
    const lat = ns > 0 && Number.isFinite(ns) ? ns : 0;
    s.count++;
    s.sumNs += lat;
    if (lat > s.maxNs) s.maxNs = lat;
    s.buckets[bucketOf(lat)]++;
    if (bytes > 0 && Number.isFinite(bytes)) s.bytes += bytes;
    if (errno !== 0) {
      s.errors++;
      this.errnos.set(errno, (this.errnos.get(errno) ?? 0) + 1);
    }
    if (this.requestLog !== null) {
      const result = errno === 0 ? 'OK' : errnoCode(errno);
      this.requestLog(
        `FUSE ${opcodeName(opcode)} unique=${unique} nodeid=${nodeid} -> ${result} ${(lat / 1000).toFixed(1)}us${bytes > 0 ? ` ${bytes}B` : ''}`,
      );
    }
  }

  /** Adds to a monotonic counter. */
  count(name: string, n = 1): void {
    this.counters.set(name, (this.counters.get(name) ?? 0) + n);
  }

  /** Sets a gauge (the last value wins). */
  set(name: string, value: number): void {
    this.gauges.set(name, value);
  }

  /** A gauge read when a snapshot is taken (the daemon's fds held, DAX mappings). */
  gauge(name: string, read: () => number): void {
    this.pulled.set(name, read);
  }

  /** Removes pulled gauges (the session they read has closed). */
  clearGauges(): void {
    this.pulled.clear();
  }

  /** The per-request debug line's sink; null turns it off. */
  setRequestLog(log: RequestLog | null): void {
    this.requestLog = log;
  }

  snapshot(): MetricsSnapshot {
    const opcodes: MetricsSnapshot['opcodes'] = {};
    let total = 0;
    let errors = 0;
    let bytesRead = 0;
    let bytesWritten = 0;
    for (const [opcode, s] of [...this.opcodes].sort((a, b) => a[0] - b[0])) {
      total += s.count;
      errors += s.errors;
      if (opcode === Opcode.FUSE_READ) bytesRead += s.bytes;
      if (opcode === Opcode.FUSE_WRITE) bytesWritten += s.bytes;
      opcodes[opcodeName(opcode)] = {
        count: s.count,
        errors: s.errors,
        bytes: s.bytes,
        latencyNs: {
          p50: percentile(s.buckets, s.count, 0.5, s.maxNs),
          p90: percentile(s.buckets, s.count, 0.9, s.maxNs),
          p99: percentile(s.buckets, s.count, 0.99, s.maxNs),
          max: s.maxNs,
          mean: s.count > 0 ? Math.round(s.sumNs / s.count) : 0,
        },
      };
    }
    const errnos: Record<string, number> = {};
    for (const [errno, n] of this.errnos) errnos[errnoCode(errno)] = n;
    const gauges: Record<string, number> = Object.fromEntries(this.gauges);
    for (const [name, read] of this.pulled) {
      try {
        gauges[name] = read();
      } catch {
        // A gauge whose source has gone is left out rather than breaking the dump.
      }
    }
    return {
      version: 1,
      uptimeSeconds: Math.round(Number(process.hrtime.bigint() - this.started) / 1e6) / 1e3,
      requests: { total, errors, bytesRead, bytesWritten },
      opcodes,
      errnos,
      counters: Object.fromEntries(this.counters),
      gauges,
    };
  }

  /** Forgets everything (tests; a daemon never resets its metrics). */
  reset(): void {
    this.opcodes.clear();
    this.errnos.clear();
    this.counters.clear();
    this.gauges.clear();
    this.pulled.clear();
    this.started = process.hrtime.bigint();
  }
}

export const metrics = new Metrics();
