/**
 * A FuseSession on a fresh shared directory with the guest driver's FuseClient
 * (`client`, over a DirectTransport) in front of it, and the few helpers the
 * tests share. `start()` offers every flag a Linux 6.x virtio-fs guest offers,
 * so what comes back is what the session chose.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FuseSession, type FuseSessionOptions } from '../../src/fuse-server/session';
import * as P from '../../src/fuse-server/protocol';
import { O_CREAT, O_RDWR } from '../../src/sys/fs';
import type { CreateOut, FuseClient } from '../../src/guest/fuse-driver';
import { type DirectTransport, type RawOptions, type RawReply, directClient } from './fuse-driver';

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
  P.FUSE_SECURITY_CTX_FLAGS2 |
  P.FUSE_HAS_INODE_DAX_FLAGS2 |
  P.FUSE_CREATE_SUPP_GROUP_FLAGS2 |
  P.FUSE_HAS_EXPIRE_ONLY_FLAGS2 |
  P.FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2;

export class Harness {
  readonly session: FuseSession;
  /** The guest driver's API: decoded replies, error replies thrown as FuseRequestError. */
  readonly client: FuseClient<DirectTransport>;
  private closed = false;

  constructor(
    readonly dir: string,
    options: Partial<FuseSessionOptions> = {},
  ) {
    this.session = new FuseSession({ sharedDir: dir, cache: 'auto', readonly: false, ...options });
    this.client = directClient(this.session);
  }

  /** The client's channel: raw requests, and what it saw of the session's timing. */
  get transport(): DirectTransport {
    return this.client.channel;
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

  /** INIT through `client` with the Linux offer (or `flags`/`flags2`); the client then knows what was agreed, as the kernel does. */
  start(flags = LINUX_FLAGS, flags2 = LINUX_FLAGS2, minor = 38): Promise<P.InitOut> {
    return this.client.init({ flags, flags2, minor });
  }

  p(name: string): string {
    return path.join(this.dir, name);
  }

  /* ---------------- requests ---------------- */

  /**
   * A request with arguments the client would not encode (short, long, lying
   * structs, names without NUL): the transport's raw entry, framed with a
   * fresh unique; the reply as it came, error replies and no reply included.
   */
  raw(opcode: number, nodeid: number, args: Buffer[] = [], opts: RawOptions = {}): Promise<RawReply> {
    return this.transport.raw({ opcode, nodeid, args }, opts);
  }

  /** CREATE read-write (or `flags`) of a regular file 0644 under umask 022 unless told otherwise. */
  async create(
    parent: number,
    name: string,
    opts: { flags?: number; mode?: number; uid?: number; gid?: number; umask?: number; extensions?: Buffer } = {},
  ): Promise<{ entry: P.EntryOut; fh: number; openFlags: number }> {
    const out: CreateOut = await this.client.create(
      parent,
      name,
      (opts.flags ?? O_RDWR) | O_CREAT,
      opts.mode ?? 0o644,
      opts.umask ?? 0o022,
      {
        uid: opts.uid,
        gid: opts.gid,
        extensions: opts.extensions,
      },
    );
    return { entry: out.entry, fh: out.open.fh, openFlags: out.open.open_flags };
  }

  /** OPEN; the handle. */
  async open(nodeid: number, flags: number, openFlags = 0): Promise<number> {
    return (await this.client.open(nodeid, flags, openFlags)).fh;
  }
}
