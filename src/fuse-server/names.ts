/**
 * Guest-supplied names. A name handed to the file system is one path
 * component: non-empty, no '/', and '.' or '..' only where the operation
 * allows them. Names are NUL-terminated Buffers (ready for *at syscalls) and
 * never joined into host paths.
 */
import { Errno, fail } from './errors';

const SLASH = 0x2f;
const DOT = 0x2e;

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

/** EINVAL unless `name` (NUL-terminated) is one non-empty path component. */
export function checkComponent(name: Buffer, allowDots: boolean): Buffer {
  const n = body(name);
  if (n <= 0) fail(Errno.EINVAL);
  if (name.includes(SLASH)) fail(Errno.EINVAL);
  if (!allowDots && (isDot(name) || isDotDot(name))) fail(Errno.EINVAL);
  return name;
}
