/**
 * `virtiofsd-ts probe --socket-path PATH`: drives any vhost-user-fs back-end
 * as a guest would — handshake, FUSE INIT, then a short smoke test in a scratch
 * directory it creates and removes in the share root — and prints what was
 * negotiated. Exit status: 0 all good, 1 a smoke-test step failed, 2 the
 * socket is missing, refuses, or does not behave like a vhost-user-fs back-end.
 */
import yargs from 'yargs';
import * as P from '../fuse-server/protocol';
import { O_RDWR } from '../sys/fs';
import {
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from '../vhost-user/protocol';
import { VhostUserFrontend } from './frontend';
import { FUSE_ROOT_ID, FuseDriver } from './fuse-driver';

const DEFAULT_TIMEOUT_MS = 3000;

/** Names of virtio feature bits a vhost-user-fs back-end may offer (virtio 1.2, 6; vhost-user.rst). */
const VIRTIO_FEATURE_NAMES: Record<number, string> = {
  24: 'NOTIFY_ON_EMPTY',
  26: 'LOG_ALL',
  27: 'ANY_LAYOUT',
  [VIRTIO_RING_F_INDIRECT_DESC]: 'RING_INDIRECT_DESC',
  [VIRTIO_RING_F_EVENT_IDX]: 'RING_EVENT_IDX',
  [VHOST_USER_F_PROTOCOL_FEATURES]: 'PROTOCOL_FEATURES',
  [VIRTIO_F_VERSION_1]: 'VERSION_1',
  33: 'ACCESS_PLATFORM',
  34: 'RING_PACKED',
  35: 'IN_ORDER',
  36: 'ORDER_PLATFORM',
  37: 'SR_IOV',
  38: 'NOTIFICATION_DATA',
  40: 'RING_RESET',
};

/** FUSE_INIT flag names, bit by bit, as linux/fuse.h spells them without the FUSE_ prefix. */
const INIT_FLAG_NAMES: [number, string][] = [
  [P.FUSE_ASYNC_READ, 'ASYNC_READ'],
  [P.FUSE_POSIX_LOCKS, 'POSIX_LOCKS'],
  [P.FUSE_FILE_OPS, 'FILE_OPS'],
  [P.FUSE_ATOMIC_O_TRUNC, 'ATOMIC_O_TRUNC'],
  [P.FUSE_EXPORT_SUPPORT, 'EXPORT_SUPPORT'],
  [P.FUSE_BIG_WRITES, 'BIG_WRITES'],
  [P.FUSE_DONT_MASK, 'DONT_MASK'],
  [P.FUSE_SPLICE_WRITE, 'SPLICE_WRITE'],
  [P.FUSE_SPLICE_MOVE, 'SPLICE_MOVE'],
  [P.FUSE_SPLICE_READ, 'SPLICE_READ'],
  [P.FUSE_FLOCK_LOCKS, 'FLOCK_LOCKS'],
  [P.FUSE_HAS_IOCTL_DIR, 'HAS_IOCTL_DIR'],
  [P.FUSE_AUTO_INVAL_DATA, 'AUTO_INVAL_DATA'],
  [P.FUSE_DO_READDIRPLUS, 'DO_READDIRPLUS'],
  [P.FUSE_READDIRPLUS_AUTO, 'READDIRPLUS_AUTO'],
  [P.FUSE_ASYNC_DIO, 'ASYNC_DIO'],
  [P.FUSE_WRITEBACK_CACHE, 'WRITEBACK_CACHE'],
  [P.FUSE_NO_OPEN_SUPPORT, 'NO_OPEN_SUPPORT'],
  [P.FUSE_PARALLEL_DIROPS, 'PARALLEL_DIROPS'],
  [P.FUSE_HANDLE_KILLPRIV, 'HANDLE_KILLPRIV'],
  [P.FUSE_POSIX_ACL, 'POSIX_ACL'],
  [P.FUSE_ABORT_ERROR, 'ABORT_ERROR'],
  [P.FUSE_MAX_PAGES, 'MAX_PAGES'],
  [P.FUSE_CACHE_SYMLINKS, 'CACHE_SYMLINKS'],
  [P.FUSE_NO_OPENDIR_SUPPORT, 'NO_OPENDIR_SUPPORT'],
  [P.FUSE_EXPLICIT_INVAL_DATA, 'EXPLICIT_INVAL_DATA'],
  [P.FUSE_MAP_ALIGNMENT, 'MAP_ALIGNMENT'],
  [P.FUSE_SUBMOUNTS, 'SUBMOUNTS'],
  [P.FUSE_HANDLE_KILLPRIV_V2, 'HANDLE_KILLPRIV_V2'],
  [P.FUSE_SETXATTR_EXT, 'SETXATTR_EXT'],
  [P.FUSE_INIT_EXT, 'INIT_EXT'],
  [P.FUSE_INIT_RESERVED, 'INIT_RESERVED'],
];

/** flags2 carries bits 32..63; bit n of flags2 is FUSE flag bit 32+n. */
const INIT_FLAGS2_NAMES: [number, string][] = [
  [P.FUSE_SECURITY_CTX_FLAGS2, 'SECURITY_CTX'],
  [P.FUSE_HAS_INODE_DAX_FLAGS2, 'HAS_INODE_DAX'],
  [P.FUSE_HAS_EXPIRE_ONLY_FLAGS2, 'HAS_EXPIRE_ONLY'],
  [P.FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2, 'DIRECT_IO_ALLOW_MMAP'],
];

/** "0x1234 NAME NAME bit7" for a bit set. */
export function describeBits(value: bigint, name: (bit: number) => string | undefined): string {
  const names: string[] = [];
  for (let i = 0; i < 64; i++) if (value & (1n << BigInt(i))) names.push(name(i) ?? `bit${i}`);
  return `0x${value.toString(16)}${names.length ? ' ' + names.join(' ') : ''}`;
}

export function describeVirtioFeatures(features: bigint): string {
  return describeBits(features, (b) => VIRTIO_FEATURE_NAMES[b]);
}

export function describeProtocolFeatures(features: bigint): string {
  return describeBits(features, (b) => ProtocolFeature[b]);
}

export function describeInitFlags(flags: number, flags2: number): string {
  const all = BigInt(flags >>> 0) | (BigInt(flags2 >>> 0) << 32n);
  const table = new Map<number, string>();
  for (const [v, n] of INIT_FLAG_NAMES) table.set(Math.log2(v >>> 0), n);
  for (const [v, n] of INIT_FLAGS2_NAMES) table.set(32 + Math.log2(v), n);
  return describeBits(all, (b) => table.get(b));
}

/** Why probing could not even start: printed as one line, exit status 2. */
class ProbeUnreachable extends Error {}

function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      onTimeout();
      reject(new ProbeUnreachable(`${what} got no answer within ${ms} ms: not a vhost-user-fs back-end?`));
    }, ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** Connects and handshakes; anything that goes wrong here means "not a usable back-end". */
async function connect(socketPath: string, timeoutMs: number): Promise<VhostUserFrontend> {
  const frontend = new VhostUserFrontend({ ramRegions: [16 << 20] });
  try {
    await withTimeout(frontend.attach(socketPath), timeoutMs, 'vhost-user handshake', () => frontend.close());
    return frontend;
  } catch (err) {
    frontend.close();
    if (err instanceof ProbeUnreachable) throw err;
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new ProbeUnreachable(`no socket at ${socketPath}`);
    if (e.code === 'ECONNREFUSED') throw new ProbeUnreachable(`${socketPath} refuses connections (no back-end listening)`);
    throw new ProbeUnreachable(`${socketPath}: vhost-user handshake failed: ${e.message}`);
  }
}

interface Out {
  line(s: string): void;
}

/** The smoke test: each step prints a line; the first failure stops it, then cleanup runs. */
async function smokeTest(fuse: FuseDriver, out: Out): Promise<boolean> {
  const scratch = `.virtiofsd-ts-probe-${process.pid}-${Date.now().toString(36)}`;
  const fileName = 'probe-file';
  const data = Buffer.alloc(8192);
  for (let i = 0; i < data.length; i++) data[i] = (i * 131 + 7) & 0xff;
  let dirId = 0;
  let fileId = 0;
  let steps = 0;
  const step = async (what: string, fn: () => Promise<string | void>): Promise<void> => {
    const t = process.hrtime.bigint();
    let detail: string | void;
    try {
      detail = await fn();
    } catch (err) {
      throw new Error(`${what}: ${(err as Error).message}`);
    }
    steps++;
    out.line(`  ok   ${what}${detail ? ` (${detail})` : ''}, ${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(2)} ms`);
  };

  out.line(`smoke test in /${scratch}:`);
  const started = Date.now();
  try {
    await step('mkdir', async () => {
      dirId = (await fuse.mkdir(FUSE_ROOT_ID, scratch, 0o700)).nodeid;
    });
    let fh = 0;
    await step('create + write', async () => {
      const { entry, open } = await fuse.create(dirId, fileName, O_RDWR, 0o600);
      fileId = entry.nodeid;
      fh = open.fh;
      const written = await fuse.write(fileId, fh, 0, data);
      if (written !== data.length) throw new Error(`wrote ${written} of ${data.length} bytes`);
      return `${written} bytes`;
    });
    await step('read back + compare', async () => {
      const back = await fuse.read(fileId, fh, 0, data.length);
      await fuse.release(fileId, fh);
      if (!back.equals(data)) throw new Error(`read back ${back.length} bytes that differ from the ${data.length} written`);
      return 'identical';
    });
    await step('readdir', async () => {
      const h = await fuse.opendir(dirId);
      const names = (await fuse.readdirAll(dirId, h.fh)).map((d) => d.name).filter((n) => n !== '.' && n !== '..');
      await fuse.releasedir(dirId, h.fh);
      if (names.length !== 1 || names[0] !== fileName) throw new Error(`listed [${names.join(', ')}], expected [${fileName}]`);
      return '1 entry';
    });
    await step('unlink', async () => {
      await fuse.unlink(dirId, fileName);
      await fuse.forget(fileId, 1);
      fileId = 0;
    });
    await step('rmdir', async () => {
      await fuse.rmdir(FUSE_ROOT_ID, scratch);
      await fuse.forget(dirId, 1);
      dirId = 0;
    });
    out.line(`summary: ok, ${steps} steps in ${Date.now() - started} ms`);
    return true;
  } catch (err) {
    out.line(`  FAIL ${(err as Error).message}`);
    // Leave the share as we found it if we can.
    if (fileId) await fuse.unlink(dirId, fileName).catch(() => undefined);
    if (dirId) await fuse.rmdir(FUSE_ROOT_ID, scratch).catch(() => undefined);
    out.line(`summary: FAILED after ${steps} steps`);
    return false;
  }
}

export async function probeMain(argv: string[]): Promise<number> {
  let socketPath: string;
  let timeoutMs: number;
  try {
    const args = yargs(argv)
      .scriptName('virtiofsd-ts probe')
      .usage('$0 --socket-path PATH')
      .option('socket-path', { type: 'string', demandOption: true, describe: 'vhost-user socket of the back-end to probe' })
      .option('timeout', { type: 'number', default: DEFAULT_TIMEOUT_MS, describe: 'ms to wait for each answer' })
      .strict()
      .help()
      .alias('help', 'h')
      .version(false)
      .exitProcess(false)
      .fail((msg, err) => {
        throw new ProbeUnreachable(msg ?? err?.message ?? 'invalid arguments');
      })
      .parseSync();
    // yargs printed the help (exitProcess is off): nothing to probe.
    if (args.help) return 0;
    socketPath = args['socket-path'];
    timeoutMs = args.timeout;
  } catch (err) {
    process.stderr.write(`virtiofsd-ts probe: ${(err as Error).message}\n`);
    return 2;
  }

  const out: Out = { line: (s) => process.stdout.write(s + '\n') };
  let fuse: FuseDriver | null = null;
  try {
    const frontend = await connect(socketPath, timeoutMs);
    fuse = new FuseDriver(frontend, { timeoutMs });
    out.line(`back-end: ${socketPath}`);
    out.line(`virtio features:   ${describeVirtioFeatures(frontend.features)}`);
    out.line(`  offered:         ${describeVirtioFeatures(frontend.backendFeatures)}`);
    out.line(`protocol features: ${describeProtocolFeatures(frontend.protocolFeatures)}`);
    out.line(`  offered:         ${describeProtocolFeatures(frontend.backendProtocolFeatures)}`);
    out.line(`queues: ${frontend.maxQueues} (1 hiprio + ${frontend.maxQueues - 1} request)`);
    if (frontend.shmemSizes.length > 0)
      out.line(`shared memory regions: ${frontend.shmemSizes.map((s) => `0x${s.toString(16)}`).join(', ')}`);

    const init = await fuse.init().catch((err: Error & { kind?: string }) => {
      // A back-end that answers the handshake but not a FUSE INIT is no virtio-fs device.
      if (err.kind === 'timeout' || err.kind === 'protocol') throw new ProbeUnreachable(`FUSE INIT: ${err.message}`);
      throw err;
    });
    out.line(
      `FUSE INIT: protocol ${init.major}.${init.minor}, max_write ${init.max_write}, max_readahead ${init.max_readahead}, max_pages ${init.max_pages}, time_gran ${init.time_gran}`,
    );
    out.line(`  flags: ${describeInitFlags(init.flags, init.flags & P.FUSE_INIT_EXT ? init.flags2 : 0)}`);
    out.line(
      `  map_alignment: ${init.flags & P.FUSE_MAP_ALIGNMENT ? `${init.map_alignment} (DAX mappings aligned to ${2 ** init.map_alignment} bytes)` : 'not announced (no DAX)'}`,
    );
    if (init.major !== P.FUSE_KERNEL_VERSION) {
      out.line(`summary: FAILED, the back-end speaks FUSE major ${init.major}`);
      return 1;
    }
    return (await smokeTest(fuse, out)) ? 0 : 1;
  } catch (err) {
    if (err instanceof ProbeUnreachable) {
      process.stderr.write(`virtiofsd-ts probe: ${err.message}\n`);
      return 2;
    }
    out.line(`summary: FAILED: ${(err as Error).message}`);
    return 1;
  } finally {
    fuse?.frontend.close();
  }
}
