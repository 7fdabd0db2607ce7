/**
 * FUSE_INIT negotiation: protocol version and the feature flags both sides
 * enable. Pure functions of the kernel's offer and what we can serve.
 */
import { Errno, fail } from './errors';
import type { Capabilities } from './filesystem';
import {
  FUSE_INIT_EXT,
  FUSE_MAP_ALIGNMENT,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_MAX_PAGES,
  FUSE_MIN_SUPPORTED_MINOR,
  type InitIn,
  type InitOut,
} from './protocol';

/** Largest WRITE payload (and READ reply) we accept: max_write, and max_pages pages. */
export const MAX_WRITE = 1024 * 1024;
export const PAGE_SIZE = 4096;
/** max_pages as INIT answers it: READ and READDIR replies of up to MAX_WRITE bytes. */
export const MAX_PAGES = MAX_WRITE / PAGE_SIZE;

export type InitResult =
  /** Versions agree: the session is initialised with these settings. */
  | { kind: 'ready'; reply: InitOut; minor: number; flags: number; flags2: number }
  /** The kernel speaks a newer major: tell it ours and wait for another INIT. */
  | { kind: 'retry'; reply: InitOut };

function emptyReply(): InitOut {
  return {
    major: FUSE_KERNEL_VERSION,
    minor: FUSE_KERNEL_MINOR_VERSION,
    max_readahead: 0,
    flags: 0,
    max_background: 0,
    congestion_threshold: 0,
    max_write: 0,
    time_gran: 0,
    max_pages: 0,
    map_alignment: 0,
    flags2: 0,
  };
}

/**
 * Answers an INIT offer. `supported` are the FUSE_* flags the file system and
 * transport can serve; each side's flags are enabled only if the kernel
 * offered them too. flags2 needs FUSE_INIT_EXT (the caller zeroes it in
 * offers without). EPROTO for a major below 7 or a minor older than any
 * virtio-fs guest.
 */
export function negotiateInit(offer: InitIn, supported: Capabilities): InitResult {
  if (offer.major > FUSE_KERNEL_VERSION) return { kind: 'retry', reply: emptyReply() };
  if (offer.major < FUSE_KERNEL_VERSION || offer.minor < FUSE_MIN_SUPPORTED_MINOR) fail(Errno.EPROTO);

  const minor = Math.min(offer.minor, FUSE_KERNEL_MINOR_VERSION);
  // FUSE_INIT_EXT is echoed when offered so the kernel reads our flags2.
  const flags = (offer.flags & (supported.flags | FUSE_MAX_PAGES | FUSE_INIT_EXT)) >>> 0;
  const flags2 = flags & FUSE_INIT_EXT ? (offer.flags2 & supported.flags2) >>> 0 : 0;
  const reply: InitOut = {
    ...emptyReply(),
    minor,
    max_readahead: offer.max_readahead,
    flags,
    max_write: MAX_WRITE,
    // Timestamps pass through with nanosecond precision.
    time_gran: 1,
    max_pages: MAX_PAGES,
    map_alignment: flags & FUSE_MAP_ALIGNMENT ? supported.mapAlignment : 0,
    flags2,
  };
  return { kind: 'ready', reply, minor, flags, flags2 };
}
