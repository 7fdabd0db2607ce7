/**
 * Fuzzes the vhost-user message decoder and back-end state machine: random
 * and mutated-valid messages, with and without real fds of every kind, go to
 * a VhostUserBackend (serving the real virtio-fs device) over a socketpair.
 * After each case the back-end must still answer GET_FEATURES or have closed
 * the connection cleanly; the process must not crash and must not leak fds.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FuseSession } from '../../src/fuse-server/session';
import { UnixStreamSocket, addon, close, ftruncate, guardedFaultTotal } from '../../src/sys';
import { VhostUserBackend } from '../../src/vhost-user/backend';
import {
  MemoryRegionDesc,
  MemoryTableHeader,
  SingleMemoryRegion,
  U64,
  VringAddr,
  VringState,
  decode,
  encode,
} from '../../src/vhost-user/messages';
import {
  FrontendRequest,
  HEADER_SIZE,
  MAX_PAYLOAD_SIZE,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  VRING_NOFD_MASK,
  bit,
} from '../../src/vhost-user/protocol';
import { VirtioFsDevice } from '../../src/virtio-fs/device';
import { FdPool, fdCount } from './fds';
import { Prng, casesPerSeed, fuzzSeeds, onlyCase, replayHint } from './prng';

/** Cases per run across all seeds (FUZZ_CASES overrides): a few seconds on a loaded 2-core machine. */
const DEFAULT_CASES = 10000;
/** A case whose back-end neither answers nor hangs up within this is a hang. */
const CASE_TIMEOUT_MS = 3000;
/** Open fds may drift by this much over a run (lazily opened handles of Node and the test). */
const FD_SLACK = 16;

const FEATURES =
  bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
const PROTOCOL_FEATURES =
  bit(ProtocolFeature.MQ) |
  bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.BACKEND_REQ) |
  bit(ProtocolFeature.BACKEND_SEND_FD) |
  bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  bit(ProtocolFeature.RESET_DEVICE);

/** Guest RAM of a case: one memfd region at gpa 0, rings in its first pages. */
const RAM_SIZE = 64 * 1024;
const RAM_UVA = 0x7f00_0000_0000;
const DESC_GPA = 0x1000;
const AVAIL_GPA = 0x2000;
const USED_GPA = 0x3000;
const QUEUES = 17;

interface Out {
  request: number;
  flags: number;
  payload: Buffer;
  fds: number[];
  /** Header size field if not payload.length (a lie about the frame). */
  size?: number;
}

type Step =
  | { kind: 'msg'; msg: Out }
  | { kind: 'poke'; fd: number; at: number; bytes: Buffer }
  | { kind: 'kick'; fd: number }
  | { kind: 'shrink'; fd: number; size: number };

/** What a case built: steps to send, and whether a frame was left incomplete on purpose. */
interface Plan {
  steps: Step[];
  truncatedFrame: boolean;
}

const u64 = (v: bigint): Buffer => encode(U64, { value: v });
const state = (index: number, num: number): Buffer => encode(VringState, { index, num });

/** Builds valid messages (and ring contents) the way a front-end would, tracking what it set up. */
class Templates {
  ramFd = -1;
  kickFd = -1;
  queue = 1;
  size = 16;

  constructor(
    private readonly rng: Prng,
    private readonly pool: FdPool,
  ) {}

  private ram(): number {
    if (this.ramFd < 0) this.ramFd = this.pool.memfd(RAM_SIZE);
    return this.ramFd;
  }

  private region(): Buffer {
    return encode(MemoryRegionDesc, { guestPhysAddr: 0n, memorySize: BigInt(RAM_SIZE), userspaceAddr: BigInt(RAM_UVA), mmapOffset: 0n });
  }

  /** The handshake in the order QEMU sends it. */
  handshake(): Out[] {
    const m = (request: FrontendRequest, payload: Buffer = Buffer.alloc(0), fds: number[] = []): Out => ({
      request,
      flags: VHOST_USER_VERSION,
      payload,
      fds,
    });
    this.queue = this.rng.below(QUEUES);
    this.size = 1 << this.rng.int(0, 8);
    this.kickFd = this.pool.eventfd();
    const table = Buffer.concat([encode(MemoryTableHeader, { nregions: 1 }), this.region()]);
    return [
      m(FrontendRequest.GET_FEATURES),
      m(FrontendRequest.SET_FEATURES, u64(FEATURES)),
      m(FrontendRequest.GET_PROTOCOL_FEATURES),
      m(FrontendRequest.SET_PROTOCOL_FEATURES, u64(PROTOCOL_FEATURES)),
      m(FrontendRequest.SET_OWNER),
      m(FrontendRequest.GET_QUEUE_NUM),
      m(FrontendRequest.GET_MAX_MEM_SLOTS),
      m(FrontendRequest.SET_MEM_TABLE, table, [this.ram()]),
      m(FrontendRequest.SET_VRING_NUM, state(this.queue, this.size)),
      m(FrontendRequest.SET_VRING_ADDR, this.vringAddr()),
      m(FrontendRequest.SET_VRING_BASE, state(this.queue, 0)),
      m(FrontendRequest.SET_VRING_CALL, u64(BigInt(this.queue)), [this.pool.eventfd()]),
      m(FrontendRequest.SET_VRING_KICK, u64(BigInt(this.queue)), [this.kickFd]),
      m(FrontendRequest.SET_VRING_ENABLE, state(this.queue, 1)),
    ];
  }

  private vringAddr(): Buffer {
    return encode(VringAddr, {
      index: this.queue,
      flags: 0,
      descUserAddr: BigInt(RAM_UVA + DESC_GPA),
      usedUserAddr: BigInt(RAM_UVA + USED_GPA),
      availUserAddr: BigInt(RAM_UVA + AVAIL_GPA),
      logGuestAddr: 0n,
    });
  }

  /** Any one valid message, in isolation. */
  any(): Out {
    const r = this.rng;
    const q = r.chance(0.8) ? this.queue : r.below(QUEUES + 2);
    const flags = VHOST_USER_VERSION | (r.chance(0.3) ? VHOST_USER_NEED_REPLY_MASK : 0);
    const m = (request: FrontendRequest, payload: Buffer = Buffer.alloc(0), fds: number[] = []): Out => ({ request, flags, payload, fds });
    switch (r.below(20)) {
      case 0:
        return m(FrontendRequest.GET_FEATURES);
      case 1:
        return m(FrontendRequest.SET_FEATURES, u64(r.chance(0.8) ? FEATURES : r.u64()));
      case 2:
        return m(FrontendRequest.SET_PROTOCOL_FEATURES, u64(r.chance(0.8) ? PROTOCOL_FEATURES : r.u64()));
      case 3: {
        const n = r.int(1, 3);
        const table = Buffer.concat([encode(MemoryTableHeader, { nregions: n }), ...Array.from({ length: n }, () => this.region())]);
        return m(
          FrontendRequest.SET_MEM_TABLE,
          table,
          Array.from({ length: n }, () => this.ram()),
        );
      }
      case 4:
        return m(FrontendRequest.ADD_MEM_REG, encode(SingleMemoryRegion, { ...decode(MemoryRegionDesc, this.region()) }), [this.ram()]);
      case 5:
        return m(FrontendRequest.REM_MEM_REG, encode(SingleMemoryRegion, { ...decode(MemoryRegionDesc, this.region()) }));
      case 6:
        return m(FrontendRequest.SET_VRING_NUM, state(q, r.chance(0.8) ? 1 << r.int(0, 15) : r.u32()));
      case 7:
        return m(FrontendRequest.SET_VRING_ADDR, this.vringAddr());
      case 8:
        return m(FrontendRequest.SET_VRING_BASE, state(q, r.below(0x10000)));
      case 9:
        return m(FrontendRequest.GET_VRING_BASE, state(q, 0));
      case 10: {
        const noFd = r.chance(0.2);
        return m(
          FrontendRequest.SET_VRING_KICK,
          u64(BigInt(q) | (noFd ? BigInt(VRING_NOFD_MASK) : 0n)),
          noFd ? [] : [this.kickFd >= 0 && r.chance(0.5) ? this.kickFd : this.pool.eventfd()],
        );
      }
      case 11: {
        const noFd = r.chance(0.3);
        const which = r.pick([FrontendRequest.SET_VRING_CALL, FrontendRequest.SET_VRING_ERR]);
        return m(which, u64(BigInt(q) | (noFd ? BigInt(VRING_NOFD_MASK) : 0n)), noFd ? [] : [this.pool.eventfd()]);
      }
      case 12:
        return m(FrontendRequest.SET_VRING_ENABLE, state(q, r.below(2)));
      case 13:
        return m(FrontendRequest.SET_BACKEND_REQ_FD, Buffer.alloc(0), [this.pool.make('socket', r)]);
      case 14: {
        const header = Buffer.alloc(12);
        header.writeUInt32LE(r.below(256), 0);
        header.writeUInt32LE(r.below(256), 4);
        return m(FrontendRequest.GET_CONFIG, Buffer.concat([header, Buffer.alloc(header.readUInt32LE(4))]));
      }
      case 15:
        return m(FrontendRequest.GET_SHMEM_CONFIG);
      case 16:
        return m(r.pick([FrontendRequest.RESET_DEVICE, FrontendRequest.RESET_OWNER]));
      case 17:
        return m(FrontendRequest.GET_PROTOCOL_FEATURES);
      case 18:
        return m(FrontendRequest.GET_QUEUE_NUM);
      default:
        return m(FrontendRequest.SET_OWNER);
    }
  }

  /** Ring contents: a descriptor table, avail ring and used ring that are plausible or garbage. */
  ringSteps(): Step[] {
    const r = this.rng;
    const fd = this.ram();
    const desc = Buffer.alloc(16 * this.size);
    for (let i = 0; i < this.size; i++) {
      const inRam = r.chance(0.8);
      desc.writeBigUInt64LE(inRam ? BigInt(r.int(0x4000, RAM_SIZE - 1)) : r.u64(), 16 * i);
      desc.writeUInt32LE(inRam ? r.size(64, 0x4000) : r.u32(), 16 * i + 8);
      desc.writeUInt16LE(r.chance(0.7) ? r.below(8) : r.below(0x10000), 16 * i + 12);
      desc.writeUInt16LE(r.chance(0.9) ? r.below(this.size) : r.below(0x10000), 16 * i + 14);
    }
    const avail = Buffer.alloc(6 + 2 * this.size);
    avail.writeUInt16LE(r.below(2), 0);
    avail.writeUInt16LE(r.chance(0.8) ? r.int(0, this.size) : r.below(0x10000), 2);
    for (let i = 0; i < this.size; i++) avail.writeUInt16LE(r.chance(0.9) ? r.below(this.size) : r.below(0x10000), 4 + 2 * i);
    const steps: Step[] = [
      { kind: 'poke', fd, at: DESC_GPA, bytes: desc },
      { kind: 'poke', fd, at: AVAIL_GPA, bytes: avail },
    ];
    // A request's bytes: a FUSE header with a random opcode, or noise.
    steps.push({ kind: 'poke', fd, at: 0x4000 + r.below(RAM_SIZE - 0x4000 - 256), bytes: r.bytes(r.int(1, 256)) });
    if (r.chance(0.1)) steps.push({ kind: 'shrink', fd, size: r.pick([0, 4096, RAM_SIZE / 2]) });
    if (this.kickFd >= 0) steps.push({ kind: 'kick', fd: this.kickFd });
    return steps;
  }
}

function mutate(rng: Prng, pool: FdPool, msg: Out): Out {
  const out = { ...msg, fds: [...msg.fds] };
  switch (rng.below(6)) {
    case 0:
      out.payload = rng.mutate(out.payload);
      break;
    case 1:
      out.request = rng.chance(0.8) ? rng.below(64) : rng.u32();
      break;
    case 2:
      out.flags = rng.chance(0.5)
        ? out.flags ^ (1 << rng.below(32))
        : rng.pick([0, 2, 3, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, rng.u32()]);
      break;
    case 3:
      if (out.fds.length > 0 && rng.chance(0.5)) out.fds.pop();
      else out.fds.push(pool.random(rng));
      break;
    case 4:
      out.fds = out.fds.map(() => pool.random(rng));
      break;
    default:
      out.payload = rng.mutate(out.payload);
      out.fds = Array.from({ length: rng.below(4) }, () => pool.random(rng));
  }
  return out;
}

function randomMessage(rng: Prng, pool: FdPool): Out {
  return {
    request: rng.chance(0.9) ? rng.below(48) : rng.u32(),
    flags: rng.chance(0.8) ? VHOST_USER_VERSION | (rng.below(4) << 2) : rng.u32(),
    payload: rng.bytes(rng.size(40, MAX_PAYLOAD_SIZE)),
    fds: rng.chance(0.7) ? [] : Array.from({ length: rng.int(1, rng.chance(0.9) ? 3 : 64) }, () => pool.random(rng)),
  };
}

function plan(rng: Prng, pool: FdPool): Plan {
  const t = new Templates(rng, pool);
  const steps: Step[] = [];
  if (rng.chance(0.6)) {
    const hs = t.handshake();
    const n = rng.chance(0.5) ? hs.length : rng.int(1, hs.length);
    for (const msg of hs.slice(0, n)) steps.push({ kind: 'msg', msg: rng.chance(0.1) ? mutate(rng, pool, msg) : msg });
    if (n === hs.length && rng.chance(0.7)) steps.push(...t.ringSteps());
  }
  const more = rng.int(0, 6);
  for (let i = 0; i < more; i++) {
    const roll = rng.below(10);
    if (roll < 3) steps.push({ kind: 'msg', msg: t.any() });
    else if (roll < 7) steps.push({ kind: 'msg', msg: mutate(rng, pool, t.any()) });
    else if (roll < 9) steps.push({ kind: 'msg', msg: randomMessage(rng, pool) });
    else steps.push(...t.ringSteps());
  }
  let truncatedFrame = false;
  const last = [...steps].reverse().find((s) => s.kind === 'msg');
  if (last && last.kind === 'msg' && rng.chance(0.05)) {
    // The frame lies about its size: more than sent (the rest never comes), or more than allowed.
    last.msg.size = rng.chance(0.5) ? last.msg.payload.length + rng.int(1, 64) : MAX_PAYLOAD_SIZE + rng.int(1, 1 << 20);
    truncatedFrame = last.msg.size <= MAX_PAYLOAD_SIZE;
  }
  return { steps, truncatedFrame };
}

function frame(msg: Out): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt32LE(msg.request >>> 0, 0);
  header.writeUInt32LE(msg.flags >>> 0, 4);
  header.writeUInt32LE((msg.size ?? msg.payload.length) >>> 0, 8);
  return Buffer.concat([header, msg.payload]);
}

function describeStep(s: Step): string {
  switch (s.kind) {
    case 'msg':
      return `msg ${FrontendRequest[s.msg.request] ?? s.msg.request} flags 0x${(s.msg.flags >>> 0).toString(16)} size ${s.msg.size ?? s.msg.payload.length} payload ${s.msg.payload.subarray(0, 64).toString('hex')} fds ${s.msg.fds.length}`;
    case 'poke':
      return `poke ${s.bytes.length} bytes at 0x${s.at.toString(16)}`;
    case 'kick':
      return 'kick';
    default:
      return `shrink ram to ${s.size}`;
  }
}

/** Reads replies from our end until a GET_FEATURES reply or EOF arrives. */
function awaitOutcome(ours: UnixStreamSocket): Promise<'answered' | 'closed' | 'timeout'> {
  return new Promise((resolve) => {
    const buf = Buffer.alloc(HEADER_SIZE + MAX_PAYLOAD_SIZE);
    let have = 0;
    const finish = (how: 'answered' | 'closed' | 'timeout'): void => {
      clearTimeout(timer);
      ours.unwatch();
      resolve(how);
    };
    const timer = setTimeout(() => finish('timeout'), CASE_TIMEOUT_MS);
    const onReadable = (): void => {
      for (;;) {
        let got;
        try {
          got = ours.receive(buf, have, buf.length - have);
        } catch {
          finish('closed'); // ECONNRESET
          return;
        }
        if (got === null) return;
        for (const fd of got.fds) close(fd);
        if (got.bytes === 0) {
          finish('closed');
          return;
        }
        have += got.bytes;
        while (have >= HEADER_SIZE) {
          const size = buf.readUInt32LE(8);
          if (size > MAX_PAYLOAD_SIZE) throw new Error(`back-end sent a reply of ${size} bytes`);
          if (have < HEADER_SIZE + size) break;
          const request = buf.readUInt32LE(0);
          const flags = buf.readUInt32LE(4);
          if (request === FrontendRequest.GET_FEATURES && flags & VHOST_USER_REPLY_MASK && size === 8) {
            finish('answered');
            return;
          }
          buf.copy(buf, 0, HEADER_SIZE + size, have);
          have -= HEADER_SIZE + size;
        }
      }
    };
    ours.watch(onReadable);
    onReadable();
  });
}

describe('vhost-user back-end under random and mutated messages', () => {
  let base: string;
  let session: FuseSession;
  let device: VirtioFsDevice;
  /** Where the shared device and session log: the running case's lines. */
  let caseLog: string[] = [];
  beforeAll(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-vu-'));
    fs.mkdirSync(path.join(base, 'share'));
    fs.mkdirSync(path.join(base, 'scratch'));
    session = new FuseSession({
      sharedDir: path.join(base, 'share'),
      cache: 'auto',
      readonly: false,
      log: (level, msg) => caseLog.push(`${level}: ${msg}`),
    });
    device = new VirtioFsDevice(session, (level, msg) => caseLog.push(`${level}: ${msg}`));
  });
  afterAll(() => {
    session.close();
    fs.rmSync(base, { recursive: true, force: true });
  });

  const seeds = fuzzSeeds();
  const perSeed = casesPerSeed(DEFAULT_CASES, seeds.length);
  for (const seed of seeds) {
    it(`answers GET_FEATURES or hangs up cleanly after every case (seed ${seed}, ${perSeed} cases)`, async () => {
      const only = onlyCase();
      const fdsBefore = fdCount();
      const faultsBefore = guardedFaultTotal();
      const outcomes = { answered: 0, closed: 0 };
      // FUZZ_STATS=1 prints what the back-end logged, to see which paths the cases reach.
      const stats = process.env.FUZZ_STATS ? new Map<string, number>() : null;
      for (let i = only ?? 0; i < (only === null ? perSeed : only + 1); i++) {
        const rng = Prng.forCase(seed, i);
        const pool = new FdPool(path.join(base, 'scratch'));
        const [ours, theirs] = UnixStreamSocket.pair();
        const logs: string[] = [];
        caseLog = logs;
        let ended: { err?: Error } | null = null;
        const backend = new VhostUserBackend(
          theirs,
          device,
          (level, msg) => logs.push(`${level}: ${msg}`),
          (err) => (ended = { err }),
        );
        let steps: Step[] = [];
        try {
          backend.start();
          const p = plan(rng, pool);
          steps = p.steps;
          let peerGone = false;
          for (const s of p.steps) {
            if (s.kind === 'msg') {
              if (peerGone) continue;
              try {
                addon.sendmsg(ours.fd, frame(s.msg), s.msg.fds);
              } catch (err) {
                // The back-end hung up (EPIPE/ECONNRESET): what follows is not delivered.
                if (!['EPIPE', 'ECONNRESET'].includes((err as { code?: string }).code ?? '')) throw err;
                peerGone = true;
              }
            } else if (s.kind === 'poke') {
              fs.writeSync(s.fd, s.bytes, 0, s.bytes.length, s.at);
            } else if (s.kind === 'kick') {
              fs.writeSync(s.fd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]));
            } else {
              ftruncate(s.fd, s.size);
            }
            // Let the back-end read as a real front-end's messages arrive: one by one or in bursts.
            if (rng.chance(0.3)) await new Promise((r) => setImmediate(r));
          }
          let outcome: 'answered' | 'closed' | 'timeout';
          if (p.truncatedFrame) {
            // The rest of the frame never comes: the front-end leaves; the back-end must notice.
            ours.close();
            for (let t = 0; t < 300 && !ended; t++) await new Promise((r) => setTimeout(r, t < 10 ? 0 : 10));
            outcome = ended ? 'closed' : 'timeout';
          } else {
            if (!peerGone) {
              try {
                addon.sendmsg(
                  ours.fd,
                  frame({ request: FrontendRequest.GET_FEATURES, flags: VHOST_USER_VERSION, payload: Buffer.alloc(0), fds: [] }),
                  [],
                );
              } catch {
                // Hung up already: awaitOutcome sees the EOF.
              }
            }
            outcome = await awaitOutcome(ours);
            if (outcome === 'closed') {
              // A hang-up must be the back-end's clean teardown, reported once.
              for (let t = 0; t < 100 && !ended; t++) await new Promise((r) => setTimeout(r, 1));
              if (!ended) outcome = 'timeout';
            }
          }
          if (outcome === 'timeout') throw new Error('the back-end neither answered GET_FEATURES nor hung up');
          outcomes[outcome]++;
        } catch (err) {
          const detail = [
            `${replayHint(seed, i, 'test/fuzz/vhost-user.test.ts')}: ${(err as Error).stack ?? err}`,
            'steps:',
            ...steps.map(describeStep),
            'log:',
            ...logs.slice(-10),
          ];
          throw new Error(detail.join('\n  '));
        } finally {
          ours.close();
          backend.close();
          pool.closeAll();
          if (stats)
            for (const l of logs)
              if (process.env.FUZZ_STATS === 'all' || !l.startsWith('debug'))
                stats.set(l.replace(/0x[0-9a-f]+|\d+/g, 'N'), (stats.get(l.replace(/0x[0-9a-f]+|\d+/g, 'N')) ?? 0) + 1);
        }
      }
      // Both outcomes must occur, or the fuzzer is not reaching the state machine.
      if (only === null && perSeed >= 200) {
        expect(outcomes.answered).toBeGreaterThan(perSeed / 10);
        expect(outcomes.closed).toBeGreaterThan(perSeed / 20);
      }
      if (stats)
        console.log(
          [...stats]
            .sort((a, b) => b[1] - a[1])
            .map(([k, n]) => `${n}\t${k}`)
            .join('\n'),
        );
      console.log(
        `vhost-user fuzz seed ${seed}: ${JSON.stringify(outcomes)}, shrunk guest-RAM pages absorbed ${guardedFaultTotal() - faultsBefore}, fds ${fdsBefore} -> ${fdCount()}`,
      );
      expect(fdCount() - fdsBefore).toBeLessThanOrEqual(FD_SLACK);
    }, 120_000);
  }
});
