/**
 * Security contexts the guest sends with creating requests (FUSE_SECURITY_CTX).
 * Since protocol 7.38 they travel as a request extension at the end of the
 * request (fuse_in_header.total_extlen counts its 8-byte units); kernels
 * speaking 7.36/7.37 append the same structure straight after the name.
 *
 *   fuse_secctx_header { size, nr_secctx }       (as an extension: { size, type <= 31 })
 *   nr_secctx x { fuse_secctx { size, padding }, name\0, value[size] }
 *
 * Everything is bounds-checked: a malformed block is EINVAL, never a read past it.
 */
import { Errno, fail } from './errors';
import type { SecurityContext } from './filesystem';
import { FUSE_MAX_NR_SECCTX, fuse_ext_header, fuse_secctx, fuse_secctx_header } from './protocol';

/** XATTR_NAME_MAX + its NUL. */
const MAX_NAME = 256;

/** The security-context block among the request's extensions, or null. */
export function findSecctxExtension(ext: Buffer): Buffer | null {
  for (let pos = 0; pos < ext.length;) {
    if (ext.length - pos < fuse_ext_header.size) fail(Errno.EINVAL);
    const h = fuse_ext_header.decode(ext, pos);
    if (h.size < fuse_ext_header.size || h.size % 8 !== 0 || h.size > ext.length - pos) fail(Errno.EINVAL);
    if (h.type <= FUSE_MAX_NR_SECCTX) return ext.subarray(pos, pos + h.size);
    // Other extensions (FUSE_EXT_GROUPS) are for features we do not negotiate.
    pos += h.size;
  }
  return null;
}

/** The first context of a fuse_secctx_header block (Linux sends at most one), or null if it has none. */
export function parseSecctx(block: Buffer): SecurityContext | null {
  if (block.length < fuse_secctx_header.size) fail(Errno.EINVAL);
  const h = fuse_secctx_header.decode(block, 0);
  if (h.size < fuse_secctx_header.size || h.size > block.length) fail(Errno.EINVAL);
  if (h.nr_secctx === 0) return null;
  let pos = fuse_secctx_header.size;
  if (h.size - pos < fuse_secctx.size) fail(Errno.EINVAL);
  const ctx = fuse_secctx.decode(block, pos);
  pos += fuse_secctx.size;
  const nul = block.indexOf(0, pos);
  if (nul < 0 || nul >= h.size || nul - pos + 1 > MAX_NAME || nul === pos) fail(Errno.EINVAL);
  const name = Buffer.from(block.subarray(pos, nul + 1));
  pos = nul + 1;
  if (ctx.size > h.size - pos) fail(Errno.EINVAL);
  return { name, value: Buffer.from(block.subarray(pos, pos + ctx.size)) };
}
