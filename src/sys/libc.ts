import koffi from 'koffi';
import { SysError } from './errno';

/** libc through koffi: one line per syscall, all failures thrown as SysError. */
export const libc = koffi.load('libc.so.6');

type Fn = (...args: never[]) => unknown;

/**
 * Declares a libc function whose failure is signalled by returning -1 (or a
 * negative number) and setting errno; the wrapper throws SysError instead.
 */
export function syscall<F extends Fn>(name: string, declaration: string): F {
  const raw = libc.func(declaration) as unknown as (...args: unknown[]) => unknown;
  const wrapped = (...args: unknown[]): unknown => {
    const ret = raw(...args);
    if ((typeof ret === 'number' && ret < 0) || (typeof ret === 'bigint' && ret < 0n)) {
      throw new SysError(name, koffi.errno());
    }
    return ret;
  };
  return wrapped as unknown as F;
}

/**
 * syscall(2) for the calls glibc does not wrap (pivot_root, seccomp): the
 * number, then each argument as a koffi type name and its value.
 */
export const rawSyscall = libc.func('long syscall(long, ...)') as unknown as (nr: number, ...typedArgs: unknown[]) => number;

export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const AF_UNIX = 1;
export const SOL_SOCKET = 1;
export const SO_ACCEPTCONN = 30;
export const F_SETFD = 2;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;

export const close = syscall<(fd: number) => number>('close', 'int close(int)');
export const eventfd = syscall<(initval: number, flags: number) => number>('eventfd', 'int eventfd(unsigned int, int)');

const rawRead = libc.func('intptr_t read(int, _Out_ uint8_t *, size_t)') as unknown as (fd: number, buf: Buffer, n: number) => number;
const rawWrite = libc.func('intptr_t write(int, const uint8_t *, size_t)') as unknown as (fd: number, buf: Buffer, n: number) => number;

/**
 * read(2) of `buf.length` bytes for the per-request eventfd traffic (kicks,
 * calls): the bytes read (0 at end of file), or -errno. No exception and no
 * wrapper on this path (fs.readSync costs ~0.3 µs more per call), and EAGAIN
 * (a spurious wake-up, a full counter) is an answer there, not a failure.
 */
export function readOrErrno(fd: number, buf: Buffer): number {
  const n = rawRead(fd, buf, buf.length);
  return n < 0 ? -koffi.errno() : n;
}

/** write(2) of `buf`, as readOrErrno: the bytes written, or -errno. */
export function writeOrErrno(fd: number, buf: Buffer): number {
  const n = rawWrite(fd, buf, buf.length);
  return n < 0 ? -koffi.errno() : n;
}
export const memfdCreate = syscall<(name: string, flags: number) => number>('memfd_create', 'int memfd_create(const char*, unsigned int)');
export const ftruncate = syscall<(fd: number, length: number | bigint) => number>('ftruncate', 'int ftruncate(int, int64_t)');
export const dup = syscall<(fd: number) => number>('dup', 'int dup(int)');
export const fcntl = syscall<(fd: number, cmd: number, arg: number) => number>('fcntl', 'int fcntl(int, int, int)');
export const socket = syscall<(domain: number, type: number, protocol: number) => number>('socket', 'int socket(int, int, int)');
export const socketpair = syscall<(domain: number, type: number, protocol: number, sv: Int32Array) => number>(
  'socketpair',
  'int socketpair(int, int, int, _Out_ int32_t *sv)',
);
export const bind = syscall<(fd: number, addr: Buffer, len: number) => number>('bind', 'int bind(int, const uint8_t*, uint32_t)');
export const connect = syscall<(fd: number, addr: Buffer, len: number) => number>('connect', 'int connect(int, const uint8_t*, uint32_t)');
export const listen = syscall<(fd: number, backlog: number) => number>('listen', 'int listen(int, int)');
export const accept4 = syscall<(fd: number, addr: null, len: null, flags: number) => number>(
  'accept4',
  'int accept4(int, void*, void*, int)',
);
export const getsockopt = syscall<(fd: number, level: number, name: number, val: Buffer, len: Int32Array) => number>(
  'getsockopt',
  'int getsockopt(int, int, int, _Out_ uint8_t *val, _Inout_ int32_t *len)',
);

/** struct sockaddr_un for a path; throws ENAMETOOLONG past sun_path's 108 bytes. */
export function sockaddrUn(path: string): Buffer {
  const bytes = Buffer.from(path);
  if (bytes.length >= 108) throw new SysError('sockaddr_un', 36 /* ENAMETOOLONG */);
  const addr = Buffer.alloc(2 + 108);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  return addr;
}
