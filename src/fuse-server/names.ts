/**
 * Guest-supplied names. A name handed to the file system is one path
 * component: 1..NAME_MAX bytes, no '/', and '.' or '..' only where the
 * operation allows them. Names are NUL-terminated Buffers (ready for *at
 * syscalls) and never joined into host paths.
 *
 * Where '.' or '..' is refused, the answer is the errno Linux gives for the
 * same call on a real directory (mkdir(".") is EEXIST, rmdir("..") ENOTEMPTY
 * ...), so the guest cannot tell the share from a local file system.
 */
import { Errno, fail } from './errors';
import { NAME_MAX } from './protocol';

const SLASH = 0x2f;
const DOT = 0x2e;

/** The errnos an operation answers for '.' and '..'; null where it accepts them (LOOKUP). */
export type DotErrnos = { readonly dot: number; readonly dotDot: number } | null;

/** What Linux answers for '.' / '..' as the last component, per operation (fs/namei.c). */
export const DOTS = {
  /** LOOKUP resolves them (FUSE_EXPORT_SUPPORT); the file system keeps '..' inside the share. */
  lookup: null,
  /** filename_create(): mknod, mkdir, symlink, link. */
  create: { dot: Errno.EEXIST, dotDot: Errno.EEXIST },
  /** open(O_CREAT) of a directory. */
  open: { dot: Errno.EISDIR, dotDot: Errno.EISDIR },
  /** do_unlinkat(). */
  unlink: { dot: Errno.EISDIR, dotDot: Errno.EISDIR },
  /** do_rmdir(). */
  rmdir: { dot: Errno.EINVAL, dotDot: Errno.ENOTEMPTY },
  /** do_renameat2(), either name (RENAME_NOREPLACE makes a bad new name EEXIST). */
  rename: { dot: Errno.EBUSY, dotDot: Errno.EBUSY },
  renameNoReplace: { dot: Errno.EEXIST, dotDot: Errno.EEXIST },
} as const satisfies Record<string, DotErrnos>;

/** The name's bytes without its NUL terminator. */
function body(name: Buffer): number {
  return name.length - 1;
}

export function isDot(name: Buffer): boolean {
  return body(name) === 1 && name[0] === DOT;
}

export function isDotDot(name: Buffer): boolean {
  return body(name) === 2 && name[0] === DOT && name[1] === DOT;
}

/**
 * `name` (NUL-terminated, as Reader.readCString returns it) if it is one path
 * component: EINVAL if it is empty or holds a '/', ENAMETOOLONG past NAME_MAX,
 * and `dots`' errno for '.' and '..' (none: they are allowed).
 */
export function checkName(name: Buffer, dots: DotErrnos): Buffer {
  const n = body(name);
  if (n <= 0) fail(Errno.EINVAL);
  if (n > NAME_MAX) fail(Errno.ENAMETOOLONG);
  if (name.indexOf(SLASH) !== -1) fail(Errno.EINVAL);
  if (dots) {
    if (isDot(name)) fail(dots.dot);
    if (isDotDot(name)) fail(dots.dotDot);
  }
  return name;
}
