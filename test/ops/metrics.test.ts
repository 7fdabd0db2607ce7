import { describe, expect, it } from 'vitest';
import { Opcode } from '../../src/fuse-server/protocol';
import { Metrics } from '../../src/metrics';
import { formatLine, makeLogger } from '../../src/log';

describe('metrics', () => {
  it('count per opcode, errors per errno, bytes by direction, and latency percentiles from log2 buckets', () => {
    const m = new Metrics();
    for (let i = 1; i <= 100; i++) m.request(Opcode.FUSE_READ, BigInt(i), 5, 0, i * 1000, 4096);
    m.request(Opcode.FUSE_WRITE, 101n, 5, 0, 2000, 100);
    m.request(Opcode.FUSE_LOOKUP, 102n, 1, 2 /* ENOENT */, 500, 0);
    m.request(999, 103n, 1, 38 /* ENOSYS */, -5, Number.NaN);
    m.count('replyLost');
    m.set('inFlight', 3);
    m.gauge('fdsHeld', () => 7);
    m.gauge('gone', () => {
      throw new Error('closed');
    });
    const s = m.snapshot();
    expect(s.requests).toEqual({ total: 103, errors: 2, bytesRead: 409600, bytesWritten: 100 });
    expect(s.opcodes.READ.count).toBe(100);
    // p50 of 1..100 us is ~50 us: the bucket [32768, 65536) ns answers its upper bound.
    expect(s.opcodes.READ.latencyNs.p50).toBe(65536);
    expect(s.opcodes.READ.latencyNs.p99).toBe(100_000); // capped by the largest seen
    expect(s.opcodes.READ.latencyNs.max).toBe(100_000);
    expect(s.opcodes.READ.latencyNs.mean).toBe(50_500);
    expect(s.opcodes.LOOKUP).toMatchObject({ count: 1, errors: 1 });
    expect(s.opcodes['opcode 999']).toMatchObject({ count: 1, errors: 1, bytes: 0 });
    expect(s.errnos).toEqual({ ENOENT: 1, ENOSYS: 1 });
    expect(s.counters).toEqual({ replyLost: 1 });
    expect(s.gauges).toEqual({ inFlight: 3, fdsHeld: 7 });
    expect(() => JSON.stringify(s)).not.toThrow();
    m.reset();
    expect(m.snapshot().requests.total).toBe(0);
  });

  it('write one debug line per request only when asked', () => {
    const m = new Metrics();
    const lines: string[] = [];
    m.request(Opcode.FUSE_GETATTR, 7n, 1, 0, 1500, 0);
    expect(lines).toEqual([]);
    m.setRequestLog((l) => lines.push(l));
    m.request(Opcode.FUSE_GETATTR, 8n, 1, 0, 1500, 0);
    m.request(Opcode.FUSE_READ, 9n, 42, 0, 20_000, 4096);
    m.request(Opcode.FUSE_LOOKUP, 10n, 1, 2, 300, 0);
    expect(lines).toEqual([
      'FUSE GETATTR unique=8 nodeid=1 -> OK 1.5us',
      'FUSE READ unique=9 nodeid=42 -> OK 20.0us 4096B',
      'FUSE LOOKUP unique=10 nodeid=1 -> ENOENT 0.3us',
    ]);
  });
});

describe('log lines', () => {
  it('carry journal priorities, syslog PRI (facility daemon), or a timestamp', () => {
    const at = new Date('2025-01-02T03:04:05.678Z');
    expect(formatLine('warn', 'x', { journal: true }, at)).toBe('<4>[virtiofsd-ts] warn: x');
    expect(formatLine('error', 'x', { syslogFd: 9 }, at)).toBe(`<27>virtiofsd-ts[${process.pid}]: error: x`);
    expect(formatLine('info', 'x', {}, at)).toBe('2025-01-02T03:04:05.678Z [virtiofsd-ts] info: x');
  });

  it('honour the threshold, trace and off included', () => {
    const got: string[] = [];
    const write = (l: string) => got.push(l);
    makeLogger('off', { write })('error', 'a');
    makeLogger('info', { write })('debug', 'b');
    makeLogger('trace', { write })('trace', 'c');
    makeLogger('warn', { write })('error', 'd');
    expect(got.map((l) => l.split(': ')[1])).toEqual(['c', 'd']);
  });
});
