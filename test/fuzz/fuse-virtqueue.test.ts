/**
 * Fuzzes FUSE requests through a real split virtqueue: random and
 * mutated-valid requests (all opcodes and invalid ones, lying header lengths,
 * hostile node ids and names, random descriptor splits) go from the
 * TypeScript guest to a VhostUserBackend + VirtioFsDevice + FuseSession
 * serving a share inside a parent directory that holds a secret. Afterwards:
 * no crash, every chain came back used (or the connection was dropped
 * cleanly), and nothing outside the share was created, changed or read.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DaxMapper } from '../../src/dax-mapper/dax-mapper';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { FuseSession } from '../../src/fuse-server/session';
import { DaxWindow } from '../../src/guest/dax-window';
import { VhostUserFrontend } from '../../src/guest/frontend';
import { cstr, encode } from '../../src/guest/fuse-driver';
import type { GuestBuffer } from '../../src/guest/split-ring-driver';
import type { RamBlock } from '../../src/guest/guest-ram';
import { UnixListener } from '../../src/sys';
import { VhostUserBackend } from '../../src/vhost-user/backend';
import { VirtioFsDevice } from '../../src/virtio-fs/device';
import { LINUX_FLAGS, LINUX_FLAGS2 } from '../fuse-server/harness';
import { fdCount } from './fds';
import { Prng, casesPerSeed, fuzzSeeds, onlyCase, replayHint } from './prng';

const FILE = 'test/fuzz/fuse-virtqueue.test.ts';
/** Requests per run across all seeds (FUZZ_CASES overrides). */
const DEFAULT_CASES = 10000;
/** Requests in flight at once. */
const BATCH = 16;
const BATCH_TIMEOUT_MS = 5000;
const DAX_WINDOW = 16 << 20;
const FD_SLACK = 32;
const MiB = 1 << 20;

const ALL_OPCODES = Object.values(Opcode).filter((v): v is number => typeof v === 'number');
/** Opcodes that are not FUSE's: gaps in the numbering, CUSE_INIT, beyond the last. */
const INVALID_OPCODES = [0, 7, 19, 53, 54, 4096, 0xffff, 0x7fffffff, 0xffffffff];

interface Snapshot {
  [name: string]: { type: string; size: number; mtimeMs: number; mode: number; content: string | null };
}

/** Everything in `dir` except `skip`, recursively: listing, type, size, mode, mtime and content. */
function snapshot(dir: string, skip: string, into: Snapshot = {}, prefix = ''): Snapshot {
  for (const name of fs.readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    if (full === skip) continue;
    const st = fs.lstatSync(full);
    const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'link' : st.isFile() ? 'file' : 'other';
    into[prefix + name] = {
      type,
      size: st.size,
      mtimeMs: st.mtimeMs,
      mode: st.mode,
      content: type === 'file' ? fs.readFileSync(full, 'hex') : type === 'link' ? fs.readlinkSync(full) : null,
    };
    if (type === 'dir') snapshot(full, skip, into, `${prefix}${name}/`);
  }
  const st = fs.statSync(dir);
  into[`${prefix}.`] = { type: 'dir', size: 0, mtimeMs: st.mtimeMs, mode: st.mode, content: null };
  return into;
}

/** The state requests build on: ids the server handed out, names in use. */
class World {
  nodeids: number[] = [P.FUSE_ROOT_ID];
  fhs: number[] = [0];
  dirFhs: number[] = [0];
  readonly names: string[];

  constructor(readonly prefix: string) {
    this.names = ['a', 'dir', 'out', 'abs', 'secret', 'x', 'y', 'z'].map((n) =>
      ['a', 'dir', 'out', 'abs', 'secret'].includes(n) ? n : prefix + n,
    );
  }

  nodeid(r: Prng): number {
    return r.chance(0.85) ? r.pick(this.nodeids) : r.pick([0, 2, 3, 1000, 2 ** 32, 2 ** 53 - 1, Number.MAX_SAFE_INTEGER, r.u32()]);
  }

  fh(r: Prng, dir = false): number {
    return r.chance(0.85) ? r.pick(dir ? this.dirFhs : this.fhs) : r.pick([0, 1, 2 ** 31, 2 ** 32 + 1, r.u32()]);
  }

  /** A name: usually one of ours, sometimes hostile. */
  name(r: Prng): Buffer {
    if (r.chance(0.7)) return Buffer.from(r.chance(0.5) ? r.pick(this.names) : `${this.prefix}${r.below(16)}`);
    return r.pick([
      Buffer.from('..'),
      Buffer.from('.'),
      Buffer.from(''),
      Buffer.from('../secret'),
      Buffer.from(`../${this.prefix}escaped`),
      Buffer.from(`dir/../../${this.prefix}escaped`),
      Buffer.from('/'),
      Buffer.from('/etc/passwd'),
      Buffer.from(`${this.prefix}a\0b`),
      Buffer.alloc(255, 0x61),
      Buffer.alloc(256, 0x62),
      Buffer.alloc(r.int(257, 70000), 0x63),
      r.bytes(r.int(1, 64)),
    ]);
  }

  target(r: Prng, parent: string): Buffer {
    return Buffer.from(
      r.pick([
        '../secret',
        path.join(parent, 'secret'),
        '/etc/passwd',
        'a',
        '..',
        `../../${this.prefix}t`,
        'x'.repeat(r.pick([1, 4095, 4096, 5000])),
      ]),
    );
  }
}

/** One request and how to cut its chain. */
interface Request {
  opcode: number;
  bytes: Buffer;
  replyRoom: number;
}

function header(opcode: number, nodeid: number, unique: bigint, argLen: number, r: Prng): Buffer {
  return encode(P.fuse_in_header, {
    len: P.fuse_in_header.size + argLen,
    opcode,
    unique,
    nodeid,
    uid: r.chance(0.9) ? process.getuid!() : r.pick([0, 65534, r.u32()]),
    gid: r.chance(0.9) ? process.getgid!() : r.pick([0, 65534, r.u32()]),
    pid: r.u32(),
    total_extlen: 0,
  });
}

/** A valid request of one of the interesting kinds. */
function validRequest(r: Prng, w: World, unique: bigint, parent: string): Request {
  const node = w.nodeid(r);
  const io = (opcode: Opcode, args: Buffer[], replyRoom = 4096): Request => {
    const body = Buffer.concat(args);
    return { opcode, bytes: Buffer.concat([header(opcode, node, unique, body.length, r), body]), replyRoom };
  };
  const flagsRw = r.pick([
    fs.constants.O_RDONLY,
    fs.constants.O_RDWR,
    fs.constants.O_WRONLY | fs.constants.O_APPEND,
    fs.constants.O_RDWR | fs.constants.O_TRUNC,
  ]);
  switch (r.below(24)) {
    case 0:
    case 1:
      return io(Opcode.FUSE_LOOKUP, [cstr(w.name(r))]);
    case 2:
      return io(Opcode.FUSE_OPEN, [encode(P.fuse_open_in, { flags: flagsRw, open_flags: 0 })]);
    case 3: {
      const size = r.pick([0, 1, 4096, 65536, MiB, r.u32()]);
      return io(
        Opcode.FUSE_READ,
        [
          encode(P.fuse_read_in, {
            fh: w.fh(r),
            offset: BigInt(r.pick([0, 4096, r.u32(), 2 ** 53])),
            size,
            read_flags: 0,
            lock_owner: 0n,
            flags: 0,
          }),
        ],
        Math.min(size, MiB) + 16,
      );
    }
    case 4: {
      const data = Buffer.from(`FZW${r.u32()}`.repeat(r.int(1, 64)));
      return io(Opcode.FUSE_WRITE, [
        encode(P.fuse_write_in, {
          fh: w.fh(r),
          offset: r.pick([0, 100, r.below(MiB)]),
          size: data.length,
          write_flags: 0,
          lock_owner: 0n,
          flags: 0,
        }),
        data,
      ]);
    }
    case 5:
      return io(Opcode.FUSE_CREATE, [
        encode(P.fuse_create_in, { flags: flagsRw | fs.constants.O_CREAT, mode: 0o100644, umask: 0o022, open_flags: 0 }),
        cstr(w.name(r)),
      ]);
    case 6:
      return io(Opcode.FUSE_MKDIR, [encode(P.fuse_mkdir_in, { mode: 0o755, umask: 0 }), cstr(w.name(r))]);
    case 7: {
      const value = r.bytes(r.pick([0, 4, 100, 65536, 65537]));
      const name = r.pick(['user.fz', 'trusted.fz', 'security.capability', 'system.posix_acl_access', 'user.' + 'n'.repeat(300)]);
      return io(Opcode.FUSE_SETXATTR, [encode(P.fuse_setxattr_in, { size: value.length, flags: 0, setxattr_flags: 0 }), cstr(name), value]);
    }
    case 8:
      return io(Opcode.FUSE_RENAME, [encode(P.fuse_rename_in, { newdir: w.nodeid(r) }), cstr(w.name(r)), cstr(w.name(r))]);
    case 9:
      return io(Opcode.FUSE_RENAME2, [
        encode(P.fuse_rename2_in, { newdir: w.nodeid(r), flags: r.pick([0, 1, 2, 4, 7]) }),
        cstr(w.name(r)),
        cstr(w.name(r)),
      ]);
    case 10: {
      const m = {
        fh: BigInt(w.fh(r)),
        foffset: BigInt(r.pick([0, 4096, MiB, r.u32()])),
        len: BigInt(r.pick([4096, 2 * MiB, DAX_WINDOW, r.u32()])),
        flags: BigInt(r.below(4)),
        moffset: BigInt(r.pick([0, 2 * MiB, DAX_WINDOW - 2 * MiB, DAX_WINDOW, r.u32()])),
      };
      return io(Opcode.FUSE_SETUPMAPPING, [encode(P.fuse_setupmapping_in, m)]);
    }
    case 11: {
      const n = r.int(0, 3);
      return io(Opcode.FUSE_REMOVEMAPPING, [
        encode(P.fuse_removemapping_in, { count: r.chance(0.9) ? n : r.u32() }),
        ...Array.from({ length: n }, () =>
          encode(P.fuse_removemapping_one, { moffset: BigInt(r.pick([0, 2 * MiB, r.u32()])), len: BigInt(r.pick([2 * MiB, r.u32()])) }),
        ),
      ]);
    }
    case 12:
      return io(Opcode.FUSE_SYMLINK, [cstr(w.name(r)), cstr(w.target(r, parent))]);
    case 13:
      return io(Opcode.FUSE_LINK, [encode(P.fuse_link_in, { oldnodeid: w.nodeid(r) }), cstr(w.name(r))]);
    case 14:
      return io(r.pick([Opcode.FUSE_UNLINK, Opcode.FUSE_RMDIR]), [cstr(w.name(r))]);
    case 15:
      return io(Opcode.FUSE_OPENDIR, [encode(P.fuse_open_in, { flags: fs.constants.O_RDONLY, open_flags: 0 })]);
    case 16:
      return io(
        r.pick([Opcode.FUSE_READDIR, Opcode.FUSE_READDIRPLUS]),
        [
          encode(P.fuse_read_in, {
            fh: w.fh(r, true),
            offset: BigInt(r.below(8)),
            size: r.pick([0, 80, 4096]),
            read_flags: 0,
            lock_owner: 0n,
            flags: 0,
          }),
        ],
        4096,
      );
    case 17:
      return io(Opcode.FUSE_READLINK, []);
    case 18:
      return io(Opcode.FUSE_GETATTR, [encode(P.fuse_getattr_in, { getattr_flags: r.below(2), fh: w.fh(r) })]);
    case 19:
      return io(Opcode.FUSE_SETATTR, [
        encode(P.fuse_setattr_in, {
          valid: r.u32() & 0xfff & ~(P.FATTR_UID | P.FATTR_GID),
          fh: w.fh(r),
          size: r.pick([0, 10, MiB]),
          lock_owner: 0n,
          atime: 0,
          mtime: 0,
          ctime: 0,
          atimensec: 0,
          mtimensec: 0,
          ctimensec: 0,
          mode: r.pick([0o644, 0o4755, 0o777]),
          uid: 0,
          gid: 0,
        }),
      ]);
    case 20:
      return io(
        r.pick([Opcode.FUSE_GETXATTR, Opcode.FUSE_LISTXATTR]),
        [encode(P.fuse_getxattr_in, { size: r.pick([0, 8, 65536]) }), cstr('user.fz')],
        70000,
      );
    case 21:
      return io(Opcode.FUSE_COPY_FILE_RANGE, [
        encode(P.fuse_copy_file_range_in, {
          fh_in: w.fh(r),
          off_in: 0,
          nodeid_out: w.nodeid(r),
          fh_out: w.fh(r),
          off_out: r.below(4096),
          len: r.pick([1, 4096, 2 ** 40]),
          flags: 0,
        }),
      ]);
    case 22:
      return io(Opcode.FUSE_RELEASE, [encode(P.fuse_release_in, { fh: w.fh(r), flags: 0, release_flags: 0, lock_owner: 0n })]);
    default:
      return io(Opcode.FUSE_MKNOD, [
        encode(P.fuse_mknod_in, { mode: r.pick([0o10644, 0o140644, 0o20644, 0o100644]), rdev: r.u32(), umask: 0 }),
        cstr(w.name(r)),
      ]);
  }
}

/** A request: valid, mutated-valid, or noise behind a plausible header. */
function request(r: Prng, w: World, unique: bigint, parent: string): Request {
  const roll = r.below(10);
  if (roll < 4) return validRequest(r, w, unique, parent);
  if (roll < 8) {
    const v = validRequest(r, w, unique, parent);
    const bytes = r.mutate(v.bytes);
    // Often keep the header's len honest after a change of size, so the body is what gets parsed.
    if (bytes.length >= 4 && r.chance(0.5)) bytes.writeUInt32LE(bytes.length, 0);
    if (bytes.length >= 8 && r.chance(0.2)) bytes.writeUInt32LE(r.pick([...ALL_OPCODES, ...INVALID_OPCODES]), 4);
    return { opcode: bytes.length >= 8 ? bytes.readUInt32LE(4) : -1, bytes, replyRoom: r.chance(0.9) ? v.replyRoom : r.size(16, 4096) };
  }
  const opcode = r.chance(0.8) ? r.pick(ALL_OPCODES) : r.pick(INVALID_OPCODES);
  const body = r.bytes(r.size(32, 8192));
  const bytes = Buffer.concat([header(opcode, w.nodeid(r), unique, body.length, r), body]);
  if (r.chance(0.3)) bytes.writeUInt32LE(r.pick([0, 1, 39, 40, bytes.length + 1, 0xffffffff, r.u32()]), 0);
  return { opcode, bytes, replyRoom: r.size(256, 8192) };
}

/** Cuts `total` bytes into 1..n pieces at random points; some pieces may be empty. */
function split(r: Prng, total: number, maxPieces: number): number[] {
  const n = r.int(1, maxPieces);
  const cuts = Array.from({ length: n - 1 }, () => r.below(total + 1)).sort((a, b) => a - b);
  const sizes: number[] = [];
  let prev = 0;
  for (const c of [...cuts, total]) {
    sizes.push(c - prev);
    prev = c;
  }
  return sizes;
}

/** Learns node ids and handles from a successful reply. */
function learn(w: World, opcode: number, reply: Buffer): void {
  if (reply.length < 16 || reply.readInt32LE(4) !== 0) return;
  const entry = [
    Opcode.FUSE_LOOKUP,
    Opcode.FUSE_MKDIR,
    Opcode.FUSE_MKNOD,
    Opcode.FUSE_SYMLINK,
    Opcode.FUSE_LINK,
    Opcode.FUSE_CREATE,
  ].includes(opcode);
  if (entry && reply.length >= 24) {
    const id = Number(reply.readBigUInt64LE(16));
    if (id !== 0 && !w.nodeids.includes(id)) w.nodeids.push(id);
  }
  if (opcode === Opcode.FUSE_CREATE && reply.length >= 16 + P.fuse_entry_out.size + 8)
    w.fhs.push(Number(reply.readBigUInt64LE(16 + P.fuse_entry_out.size)));
  if (opcode === Opcode.FUSE_OPEN && reply.length >= 24) w.fhs.push(Number(reply.readBigUInt64LE(16)));
  if (opcode === Opcode.FUSE_OPENDIR && reply.length >= 24) w.dirFhs.push(Number(reply.readBigUInt64LE(16)));
  // Keep the pools small, so requests keep hitting live ids.
  for (const pool of [w.nodeids, w.fhs, w.dirFhs]) if (pool.length > 64) pool.splice(1, pool.length - 64);
}

interface Link {
  frontend: VhostUserFrontend;
  backend: () => VhostUserBackend | null;
  dropped: () => Error | null | undefined;
  close(): void;
}

describe('FUSE requests through a virtqueue, fuzzed', () => {
  let parent: string;
  let share: string;
  let sockDir: string;
  let token: string;
  let session: FuseSession;
  let mapper: DaxMapper;
  let window: DaxWindow;
  let listener: UnixListener;
  const logs: string[] = [];
  const log = (level: string, msg: string): void => {
    if (level !== 'debug') logs.push(`${level}: ${msg}`);
    if (logs.length > 200) logs.splice(0, 100);
  };

  beforeAll(() => {
    parent = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-fuse-'));
    sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-fuse-sock-'));
    share = path.join(parent, 'share');
    token = `SECRET-${Math.random().toString(36).slice(2)}-${process.pid}`;
    fs.writeFileSync(path.join(parent, 'secret'), token.repeat(100));
    fs.writeFileSync(path.join(parent, 'sentinel'), 'do not touch');
    fs.mkdirSync(path.join(parent, 'outside-dir'));
    fs.writeFileSync(path.join(parent, 'outside-dir', 'inner'), 'inner');
    fs.mkdirSync(share);
    fs.writeFileSync(path.join(share, 'a'), Buffer.alloc(3 * MiB, 'a'));
    fs.mkdirSync(path.join(share, 'dir'));
    fs.writeFileSync(path.join(share, 'dir', 'b'), 'bee');
    fs.symlinkSync('../secret', path.join(share, 'out'));
    fs.symlinkSync(path.join(parent, 'secret'), path.join(share, 'abs'));
    mapper = new DaxMapper(BigInt(DAX_WINDOW), (m) => log('warn', m));
    session = new FuseSession({ sharedDir: share, cache: 'auto', readonly: false, dax: { mapper, policy: 'always' }, log });
    window = new DaxWindow(DAX_WINDOW);
    listener = UnixListener.listen(path.join(sockDir, 'sock'));
  });
  afterAll(() => {
    listener.close(true);
    session.close();
    window.close();
    fs.rmSync(parent, { recursive: true, force: true });
    fs.rmSync(sockDir, { recursive: true, force: true });
  });

  async function connect(): Promise<Link> {
    let backend: VhostUserBackend | null = null;
    let dropped: Error | null | undefined;
    listener.watch(() => {
      const s = listener.accept();
      if (!s) return;
      listener.unwatch();
      backend = new VhostUserBackend(s, new VirtioFsDevice(session, log, mapper), log, (err) => (dropped = err ?? null));
      backend.start();
    });
    const frontend = await VhostUserFrontend.connect(path.join(sockDir, 'sock'), {
      requestQueues: 2,
      ramRegions: [8 * MiB, 8 * MiB],
      queueSize: 64,
      onBackendRequest: (msg) => window.handleBackendRequest(msg),
    });
    return {
      frontend,
      backend: () => backend,
      dropped: () => dropped,
      close() {
        frontend.close();
        (backend as VhostUserBackend | null)?.close();
      },
    };
  }

  /** Puts one request in a chain cut at random points; resolves with the reply bytes (or null: not answered in time). */
  function submit(link: Link, r: Prng, req: Request): { done: Promise<Buffer | null>; blocks: RamBlock[] } {
    const ram = link.frontend.ram;
    const blocks: RamBlock[] = [];
    const readable: GuestBuffer[] = [];
    const writable: GuestBuffer[] = [];
    let pos = 0;
    for (const n of split(r, req.bytes.length, 6)) {
      const b = ram.alloc(Math.max(1, n));
      req.bytes.copy(b.view, 0, pos, pos + n);
      blocks.push(b);
      readable.push({ addr: b.addr, len: n });
      pos += n;
    }
    const replyBlocks: RamBlock[] = [];
    for (const n of split(r, req.replyRoom, 4)) {
      const b = ram.alloc(Math.max(1, n));
      b.view.fill(0);
      blocks.push(b);
      replyBlocks.push(b);
      writable.push({ addr: b.addr, len: n });
    }
    // A chain needs at least one descriptor: an empty request still gets one, of length 0.
    if (readable.length === 0 && writable.length === 0) readable.push({ addr: blocks[0]?.addr ?? ram.alloc(1).addr, len: 0 });
    const queue = link.frontend.queues[r.int(1, 2)];
    const used = queue.submit(readable, writable, r.chance(0.3));
    const done = used.then((len) => {
      const reply = Buffer.concat(replyBlocks.map((b, i) => b.view.subarray(0, writable[i].len)));
      return reply.subarray(0, Math.min(len, reply.length));
    });
    return { done, blocks };
  }

  const seeds = fuzzSeeds();
  const perSeed = casesPerSeed(DEFAULT_CASES, seeds.length);
  for (const seed of seeds) {
    it(`answers every chain and touches nothing outside the share (seed ${seed}, ${perSeed} requests)`, async () => {
      const only = onlyCase();
      const world = new World(`fz${seed % 100000}-`);
      const before = snapshot(parent, share);
      const fdsBefore = fdCount();
      let link = await connect();
      let unique = 1n;
      const init = Buffer.concat([
        encode(P.fuse_in_header, {
          len: 40 + P.fuse_init_in.size,
          opcode: Opcode.FUSE_INIT,
          unique: unique++,
          nodeid: 0,
          uid: 0,
          gid: 0,
          pid: 0,
          total_extlen: 0,
        }),
        encode(P.fuse_init_in, { major: 7, minor: 38, max_readahead: 1 << 17, flags: LINUX_FLAGS, flags2: LINUX_FLAGS2 }),
      ]);
      const initReply = await submit(link, new Prng(seed), { opcode: Opcode.FUSE_INIT, bytes: init, replyRoom: 256 }).done;
      expect(initReply!.readInt32LE(4)).toBe(0);
      // FUZZ_STATS=1 prints replies by opcode and errno, to see which paths the requests reach.
      const histogram = process.env.FUZZ_STATS ? new Map<string, number>() : null;
      const stats = { answered: 0, errors: 0, ok: 0, waiting: 0, drops: 0 };
      const first = only ?? 0;
      const end = only === null ? perSeed : only + 1;
      try {
        for (let i = first; i < end; i += BATCH) {
          const batch: { req: Request; index: number; sent: ReturnType<typeof submit> }[] = [];
          for (let j = i; j < Math.min(end, i + BATCH); j++) {
            const r = Prng.forCase(seed, j);
            let req = request(r, world, unique++, parent);
            // INIT and DESTROY start the session over: rare, and followed by a valid INIT.
            if ((req.opcode === Opcode.FUSE_DESTROY || req.opcode === Opcode.FUSE_INIT) && r.chance(0.9))
              req = validRequest(r, world, unique++, parent);
            batch.push({ req, index: j, sent: submit(link, r, req) });
          }
          let timer: NodeJS.Timeout | undefined;
          const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), BATCH_TIMEOUT_MS)));
          const results = await Promise.all(batch.map((b) => Promise.race([b.sent.done, timeout])));
          clearTimeout(timer);
          const unanswered = batch.filter((_, k) => results[k] === 'timeout');
          for (const [k, b] of batch.entries()) {
            const reply = results[k];
            if (reply === 'timeout' || reply === null) continue;
            stats.answered++;
            if (reply.includes(token))
              throw new Error(
                `${replayHint(seed, b.index, FILE, true)}: a reply carries the secret outside the share: opcode ${b.req.opcode}`,
              );
            if (reply.length >= 16) {
              if (reply.readInt32LE(4) === 0) stats.ok++;
              else stats.errors++;
              const key = `${Opcode[b.req.opcode] ?? b.req.opcode} ${reply.readInt32LE(4)}`;
              histogram?.set(key, (histogram.get(key) ?? 0) + 1);
            }
            learn(world, b.req.opcode, reply);
          }
          if (batch.some((b) => b.req.opcode === Opcode.FUSE_DESTROY || b.req.opcode === Opcode.FUSE_INIT)) {
            const again = await submit(link, Prng.forCase(seed, i), { opcode: Opcode.FUSE_INIT, bytes: init, replyRoom: 256 }).done;
            expect(again!.readInt32LE(4)).toBe(0);
            // The old session's ids are void.
            world.nodeids.splice(1);
            world.fhs.splice(1);
            world.dirFhs.splice(1);
          }
          if (unanswered.length > 0) {
            // Acceptable only if the back-end dropped the connection cleanly, or for a lock wait (SETLKW).
            const stuck = unanswered.filter((b) => b.req.opcode !== Opcode.FUSE_SETLKW);
            if (link.dropped() === undefined && stuck.length > 0) {
              throw new Error(
                `${stuck.map((b) => replayHint(seed, b.index, FILE, true)).join('; ')}: chains never came back used: opcodes ${stuck.map((b) => b.req.opcode)}, first bytes ${stuck[0].req.bytes.subarray(0, 64).toString('hex')}\nlog: ${logs.slice(-10).join('\n')}`,
              );
            }
            stats.waiting += unanswered.length - stuck.length;
            if (link.dropped() !== undefined) stats.drops++;
            // Start over on a fresh connection (the waiting chains go with the old one).
            link.close();
            link = await connect();
            await submit(link, new Prng(seed), { opcode: Opcode.FUSE_INIT, bytes: init, replyRoom: 256 }).done;
          } else {
            for (const b of batch) for (const block of b.sent.blocks) link.frontend.ram.free(block);
          }
          if (link.dropped() !== undefined) {
            stats.drops++;
            link.close();
            link = await connect();
            await submit(link, new Prng(seed), { opcode: Opcode.FUSE_INIT, bytes: init, replyRoom: 256 }).done;
          }
        }
      } finally {
        link.close();
        mapper.reset();
      }
      if (histogram)
        console.log(
          [...histogram]
            .sort((a, b) => b[1] - a[1])
            .map(([k, n]) => `${n}\t${k}`)
            .join('\n'),
        );
      console.log(`FUSE fuzz seed ${seed}: ${JSON.stringify(stats)}, fds ${fdsBefore} -> ${fdCount()}`);
      // Nothing outside the share changed: listing, sizes, modes, mtimes, contents (and the parent's own mtime).
      expect(snapshot(parent, share)).toEqual(before);
      // Nothing with our prefix appeared where an escaping path would land.
      for (const dir of [os.tmpdir(), parent, process.cwd(), '/']) {
        expect(fs.readdirSync(dir).filter((n) => n.startsWith(world.prefix))).toEqual([]);
      }
      expect(stats.answered).toBeGreaterThan((end - first) * 0.5);
      if (only === null && end - first >= 500) expect(stats.ok).toBeGreaterThan((end - first) / 50);
      expect(fdCount() - fdsBefore).toBeLessThanOrEqual(FD_SLACK);
    }, 300_000);
  }
});
