/**
 * A FuseSession on a fresh shared directory with the guest driver's FuseClient
 * (`client`, over a DirectTransport) and the raw shim (`fuse`) in front of it,
 * and the request builders the option and opcode tests share. `init()` offers
 * every flag a Linux 6.x virtio-fs guest offers, so what comes back is what
 * the session chose.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FuseSession, type FuseSessionOptions } from '../../src/fuse-server/session';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { O_CREAT, O_RDWR, S_IFREG } from '../../src/sys/fs';
import type { FuseClient } from '../../src/guest/fuse-driver';
import { type DirectTransport, FuseDriver, type Reply, type RequestOptions, cstr, directClient, encode } from './fuse-driver';

export {
  F_RDLCK,
  F_UNLCK,
  F_WRLCK,
  O_APPEND,
  O_CREAT,
  O_EXCL,
  O_NOATIME,
  O_RDONLY,
  O_RDWR,
  O_TRUNC,
  O_WRONLY,
  S_IFDIR,
  S_IFLNK,
  S_IFREG,
} from '../../src/sys/fs';

/** What a Linux 6.x virtio-fs guest offers in FUSE_INIT. */
export const LINUX_FLAGS =
  P.FUSE_ASYNC_READ |
  P.FUSE_POSIX_LOCKS |
  P.FUSE_ATOMIC_O_TRUNC |
  P.FUSE_EXPORT_SUPPORT |
  P.FUSE_BIG_WRITES |
  P.FUSE_DONT_MASK |
  P.FUSE_FLOCK_LOCKS |
  P.FUSE_HAS_IOCTL_DIR |
  P.FUSE_AUTO_INVAL_DATA |
  P.FUSE_DO_READDIRPLUS |
  P.FUSE_READDIRPLUS_AUTO |
  P.FUSE_ASYNC_DIO |
  P.FUSE_WRITEBACK_CACHE |
  P.FUSE_NO_OPEN_SUPPORT |
  P.FUSE_PARALLEL_DIROPS |
  P.FUSE_HANDLE_KILLPRIV |
  P.FUSE_POSIX_ACL |
  P.FUSE_ABORT_ERROR |
  P.FUSE_MAX_PAGES |
  P.FUSE_CACHE_SYMLINKS |
  P.FUSE_NO_OPENDIR_SUPPORT |
  P.FUSE_EXPLICIT_INVAL_DATA |
  P.FUSE_MAP_ALIGNMENT |
  P.FUSE_SUBMOUNTS |
  P.FUSE_HANDLE_KILLPRIV_V2 |
  P.FUSE_SETXATTR_EXT |
  P.FUSE_INIT_EXT;
export const LINUX_FLAGS2 =
  P.FUSE_SECURITY_CTX_FLAGS2 | P.FUSE_HAS_INODE_DAX_FLAGS2 | P.FUSE_CREATE_SUPP_GROUP_FLAGS2 | P.FUSE_HAS_EXPIRE_ONLY_FLAGS2;

/** A fuse_setattr_in changing `fields` (as `valid` says), every other field 0. */
export function setattrIn(fields: Partial<P.SetattrIn> & { valid: number }): Buffer {
  return encode(P.fuse_setattr_in, fields);
}

export class Harness {
  readonly session: FuseSession;
  /** Raw requests (malformed input, replies inspected as bytes); numbers its requests with `client`. */
  readonly fuse: FuseDriver;
  /** The guest driver's API: decoded replies, error replies thrown as FuseRequestError. */
  readonly client: FuseClient<DirectTransport>;
  private closed = false;

  constructor(
    readonly dir: string,
    options: Partial<FuseSessionOptions> = {},
  ) {
    this.session = new FuseSession({ sharedDir: dir, cache: 'auto', readonly: false, ...options });
    this.client = directClient(this.session);
    this.fuse = new FuseDriver(this.session, this.client.channel);
  }

  /** A harness on a new temporary directory, prepared by `populate`. */
  static create(options: Partial<FuseSessionOptions> = {}, populate?: (dir: string) => void): Harness {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fuse-harness-'));
    populate?.(dir);
    return new Harness(dir, options);
  }

  /** Closes the session, leaving the directory (a test may still have to unmount something in it). */
  shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    this.session.close();
  }

  /** Closes the session and removes the directory. */
  close(): void {
    this.shutdown();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** INIT with the Linux offer (or `flags`/`flags2`); returns the decoded reply. */
  init(flags = LINUX_FLAGS, flags2 = LINUX_FLAGS2, minor = 38): P.InitOut {
    return P.fuse_init_out.decode(this.fuse.init(minor, flags, flags2), 0);
  }

  /** INIT through `client` (which then knows what was agreed, as the kernel does); the decoded reply. */
  start(flags = LINUX_FLAGS, flags2 = LINUX_FLAGS2, minor = 38): Promise<P.InitOut> {
    return this.client.init({ flags, flags2, minor });
  }

  p(name: string): string {
    return path.join(this.dir, name);
  }

  /* ---------------- requests ---------------- */

  lookup(parent: number, name: string): P.EntryOut {
    return this.fuse.lookup(parent, name);
  }

  getattr(nodeid: number, fh?: number): P.FuseAttr {
    const body = this.fuse.ok(Opcode.FUSE_GETATTR, nodeid, [
      encode(P.fuse_getattr_in, { getattr_flags: fh === undefined ? 0 : P.FUSE_GETATTR_FH, fh: fh ?? 0 }),
    ]);
    return P.fuse_attr_out.decode(body, 0).attr;
  }

  create(
    parent: number,
    name: string,
    opts: { flags?: number; mode?: number; uid?: number; gid?: number; umask?: number; extensions?: Buffer } = {},
  ): { entry: P.EntryOut; fh: number; openFlags: number } {
    const r = this.createRaw(parent, name, opts);
    if (r.error) throw new Error(`CREATE ${name}: error ${r.error}`);
    const open = P.fuse_open_out.decode(r.body, P.fuse_entry_out.size);
    return { entry: P.fuse_entry_out.decode(r.body, 0), fh: open.fh, openFlags: open.open_flags };
  }

  createRaw(
    parent: number,
    name: string,
    opts: { flags?: number; mode?: number; uid?: number; gid?: number; umask?: number; extensions?: Buffer } = {},
  ): Reply {
    const a = encode(P.fuse_create_in, {
      flags: (opts.flags ?? O_RDWR) | O_CREAT,
      mode: S_IFREG | (opts.mode ?? 0o644),
      umask: opts.umask ?? 0o022,
      open_flags: 0,
    });
    return this.fuse.request(Opcode.FUSE_CREATE, parent, [a, cstr(name)], { uid: opts.uid, gid: opts.gid, extensions: opts.extensions });
  }

  open(nodeid: number, flags: number, openFlags = 0): number {
    return P.fuse_open_out.decode(this.fuse.ok(Opcode.FUSE_OPEN, nodeid, [encode(P.fuse_open_in, { flags, open_flags: openFlags })]), 0).fh;
  }

  mkdir(parent: number, name: string, mode = 0o755, opts: RequestOptions & { umask?: number } = {}): P.EntryOut {
    const body = this.fuse.ok(Opcode.FUSE_MKDIR, parent, [encode(P.fuse_mkdir_in, { mode, umask: opts.umask ?? 0 }), cstr(name)], opts);
    return P.fuse_entry_out.decode(body, 0);
  }

  write(nodeid: number, fh: number, offset: number, data: Buffer | string, writeFlags = 0, fileFlags = 0): Reply {
    const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data);
    const a = encode(P.fuse_write_in, { fh, offset, size: bytes.length, write_flags: writeFlags, lock_owner: 0n, flags: fileFlags });
    return this.fuse.request(Opcode.FUSE_WRITE, nodeid, [a, bytes]);
  }

  read(nodeid: number, fh: number, offset: number, size: number): Buffer {
    const a = encode(P.fuse_read_in, { fh, offset, size, read_flags: 0, lock_owner: 0n, flags: 0 });
    return this.fuse.ok(Opcode.FUSE_READ, nodeid, [a]);
  }

  release(nodeid: number, fh: number, lockOwner = 0n, releaseFlags = 0): void {
    this.fuse.ok(Opcode.FUSE_RELEASE, nodeid, [
      encode(P.fuse_release_in, { fh, flags: 0, release_flags: releaseFlags, lock_owner: lockOwner }),
    ]);
  }

  flush(nodeid: number, fh: number, lockOwner: bigint): void {
    this.fuse.ok(Opcode.FUSE_FLUSH, nodeid, [encode(P.fuse_flush_in, { fh, lock_owner: lockOwner })]);
  }

  forget(nodeid: number, nlookup: number): void {
    this.fuse.request(Opcode.FUSE_FORGET, nodeid, [encode(P.fuse_forget_in, { nlookup })]);
  }

  setattr(nodeid: number, fields: Partial<P.SetattrIn> & { valid: number }): Reply {
    return this.fuse.request(Opcode.FUSE_SETATTR, nodeid, [setattrIn(fields)]);
  }

  setxattr(nodeid: number, name: string, value: Buffer | string, flags = 0, setxattrFlags = 0, ext = true): Reply {
    const v = Buffer.isBuffer(value) ? value : Buffer.from(value);
    const a = ext
      ? encode(P.fuse_setxattr_in, { size: v.length, flags, setxattr_flags: setxattrFlags })
      : encode(P.fuse_setxattr_in_compat, { size: v.length, flags });
    return this.fuse.request(Opcode.FUSE_SETXATTR, nodeid, [a, cstr(name), v]);
  }

  getxattr(nodeid: number, name: string, size: number): Reply {
    return this.fuse.request(Opcode.FUSE_GETXATTR, nodeid, [encode(P.fuse_getxattr_in, { size }), cstr(name)]);
  }

  listxattr(nodeid: number, size: number): Reply {
    return this.fuse.request(Opcode.FUSE_LISTXATTR, nodeid, [encode(P.fuse_getxattr_in, { size })]);
  }

  removexattr(nodeid: number, name: string): Reply {
    return this.fuse.request(Opcode.FUSE_REMOVEXATTR, nodeid, [cstr(name)]);
  }

  lkIn(fh: number, owner: bigint, type: number, start: bigint, end: bigint, flock = false): Buffer {
    return encode(P.fuse_lk_in, { fh, owner, lk: { start, end, type, pid: 0 }, lk_flags: flock ? P.FUSE_LK_FLOCK : 0 });
  }
}
