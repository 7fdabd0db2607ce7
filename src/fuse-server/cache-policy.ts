/**
 * How long the guest may cache names, attributes and file data, per --cache
 * mode, following virtiofsd:
 * - never:    timeouts 0, file data always read through (FOPEN_DIRECT_IO)
 * - metadata: names and attributes cached for a day, file data read through
 * - auto:     1 s timeouts; page cache dropped on each open (no KEEP_CACHE)
 * - always:   timeouts of a day; page cache and directory listings kept across opens
 */
import { FOPEN_CACHE_DIR, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE } from './protocol';

export type CacheMode = 'never' | 'auto' | 'always' | 'metadata';

export interface CachePolicy {
  /** Seconds for entry_valid and attr_valid. */
  readonly timeout: number;
  /** FOPEN_* flags for OPEN and CREATE replies. */
  readonly fileOpenFlags: number;
  /** FOPEN_* flags for OPENDIR replies. */
  readonly dirOpenFlags: number;
}

const DAY = 86400;

const POLICIES: Record<CacheMode, CachePolicy> = {
  never: { timeout: 0, fileOpenFlags: FOPEN_DIRECT_IO, dirOpenFlags: 0 },
  metadata: { timeout: DAY, fileOpenFlags: FOPEN_DIRECT_IO, dirOpenFlags: 0 },
  auto: { timeout: 1, fileOpenFlags: 0, dirOpenFlags: 0 },
  always: { timeout: DAY, fileOpenFlags: FOPEN_KEEP_CACHE, dirOpenFlags: FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR },
};

/** The policy for `mode`; `timeout` (seconds, `-o timeout=`) overrides its entry/attribute timeout. */
export function cachePolicy(mode: CacheMode, timeout?: number): CachePolicy {
  return timeout === undefined ? POLICIES[mode] : { ...POLICIES[mode], timeout };
}
