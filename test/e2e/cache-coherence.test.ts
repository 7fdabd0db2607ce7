// End to end: what a Linux guest sees of changes the host makes behind its
// back, and what the host sees of the guest's writes, under each cache mode
// (ours: --cache never|auto|always|metadata; the reference: -o cache=none|
// auto|always, it has no metadata mode). One boot per mode, on the 6.1
// guest; the guest side is `battery coherence` (test/e2e/guest/battery.c).
//
// The guest reads the files in coh/ (so its caches hold them), asks the host
// to change them (a request file in the share, see harness.ts), and looks
// again at once and then every 50 ms for 2.5 s, then once more after
// `echo 3 > /proc/sys/vm/drop_caches`. The host, polling the share from this
// process, changes four things at once:
//   same.txt  rewritten in place, same length   (only the data changes)
//   grow.txt  rewritten in place, longer        (data and size change)
//   gone.txt  unlinked                          (a name disappears)
//   new.txt   created                           (a name appears)
//
// What Linux's FUSE client (6.1) does with the daemon's replies, per mode,
// and what the test asserts (COHERENCE below):
// - never (entry/attr timeouts 0, FOPEN_DIRECT_IO): every lookup and stat
//   asks the daemon and reads bypass the page cache, so all four changes
//   are seen on the first look.
// - auto (timeouts 1 s, no FOPEN_KEEP_CACHE): each open drops the file's
//   page cache, so same.txt is fresh on the first look; the cached size
//   (grow.txt, a short read) and the cached name (gone.txt) last until the
//   1 s timeout, so they may be stale at first and must be fresh within
//   1 s + polling slack (AUTO_LIMIT_MS).
// - always (timeouts of a day, FOPEN_KEEP_CACHE): nothing tells the guest
//   (virtio-fs has no invalidation notifications), so same.txt, grow.txt
//   and gone.txt stay stale for the whole window: the guest keeps its page
//   cache, attributes and dentries. Only dropping the caches makes them
//   coherent.
// - metadata (timeouts of a day, FOPEN_DIRECT_IO): data is read through, so
//   same.txt is fresh at once, and so is grow.txt: a direct read is not cut
//   at the cached size (fuse_direct_read_iter reads until the daemon's
//   short reply), although stat would still show the old size. The cached
//   name of gone.txt stays for the whole window.
// - new.txt: a name the guest looked up and did not find is not cached
//   (the daemon answers ENOENT, the kernel then drops the negative dentry
//   at once), so it appears on the first look in every mode.
// After drop_caches every mode sees all four changes. Guest writes reach
// the host by the time write(2) returns in every mode (no writeback cache),
// and certainly after fsync or close: the host reads them while the guest
// waits.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, test } from 'vitest';
import { CacheMode, DAEMON_TITLE, GuestRun, TEST_TIMEOUT, expectCleanRun, hasCacheMode, runGuest, useE2EEnvironment } from './harness';
import { describeRun } from './qemu-guest';

type Item = 'same.txt' | 'grow.txt' | 'gone.txt' | 'new.txt';
const ITEMS: Item[] = ['same.txt', 'grow.txt', 'gone.txt', 'new.txt'];

/** The guest's polling window (COHERENCE_WINDOW_MS in battery.c). */
const WINDOW_MS = 2500;
/** auto: the 1 s entry/attribute timeout plus polling and TCG slack. */
const AUTO_LIMIT_MS = 2000;

/**
 * When each change must be visible:
 *   'immediate'   on the first look after the host's change
 *   'timeout'     within AUTO_LIMIT_MS (the 1 s cache timeout)
 *   'stale'       not during the whole window (only after drop_caches)
 */
type Visibility = 'immediate' | 'timeout' | 'stale';
const COHERENCE: Record<CacheMode, Record<Item, Visibility>> = {
  never: { 'same.txt': 'immediate', 'grow.txt': 'immediate', 'gone.txt': 'immediate', 'new.txt': 'immediate' },
  auto: { 'same.txt': 'immediate', 'grow.txt': 'timeout', 'gone.txt': 'timeout', 'new.txt': 'immediate' },
  always: { 'same.txt': 'stale', 'grow.txt': 'stale', 'gone.txt': 'stale', 'new.txt': 'immediate' },
  metadata: { 'same.txt': 'immediate', 'grow.txt': 'immediate', 'gone.txt': 'stale', 'new.txt': 'immediate' },
};

const OLD: Record<Item, string | null> = {
  'same.txt': 'same length, version 1\n',
  'grow.txt': 'short v1\n',
  'gone.txt': 'deleted by the host\n',
  'new.txt': null,
};
const NEW: Record<Item, string | null> = {
  'same.txt': 'same length, version 2\n',
  'grow.txt': 'a longer version 2 of grow.txt\n',
  'gone.txt': null,
  'new.txt': 'created by the host\n',
};

interface Observation {
  immediate: boolean;
  /** ms after the change the guest first saw it; null: not in the window. */
  freshAfterMs: number | null;
  afterDrop: boolean;
  lines: string[];
}

function observations(result: GuestRun): Map<Item, Observation> {
  const map = new Map<Item, Observation>();
  for (const item of ITEMS) {
    const lines = result.report.info.filter((l) => l.startsWith(`coh ${item} `));
    const field = (key: string) => lines.map((l) => new RegExp(`${key}=(\\S+)`).exec(l)?.[1]).find((v) => v !== undefined);
    const fresh = field('fresh-after-ms');
    map.set(item, {
      immediate: field('immediate') === 'fresh',
      freshAfterMs: fresh === undefined || fresh === 'never' ? null : Number(fresh),
      afterDrop: field('after-drop') === 'fresh',
      lines,
    });
  }
  return map;
}

let workDir: () => string;

async function coherenceRun(mode: CacheMode): Promise<void> {
  const share = path.join(workDir(), 'share');
  const coh = path.join(share, 'coh');
  fs.mkdirSync(coh, { recursive: true });
  for (const item of ITEMS) {
    const old = OLD[item];
    if (old !== null) fs.writeFileSync(path.join(coh, item), old);
  }
  const inodeBefore = fs.statSync(path.join(coh, 'same.txt')).ino;
  const hostReads = new Map<string, string>();

  const result = await runGuest({
    workDir: workDir(),
    share,
    kernel: 'bookworm',
    mode: 'coherence',
    daemon: { cache: mode },
    timeoutMs: 90_000,
    hostHandlers: {
      // The four changes, made in place on the host while the guest waits.
      change: ([dir]) => {
        const at = (item: Item) => path.join(share, dir, item);
        fs.writeFileSync(at('same.txt'), NEW['same.txt']!); // O_TRUNC: same inode
        fs.writeFileSync(at('grow.txt'), NEW['grow.txt']!);
        fs.unlinkSync(at('gone.txt'));
        fs.writeFileSync(at('new.txt'), NEW['new.txt']!);
        return 'changed';
      },
      // What the host reads of a file the guest wrote (newlines as "|").
      read: ([rel]) => {
        const text = fs.readFileSync(path.join(share, rel), 'utf8');
        hostReads.set(rel, text);
        return text.replace(/\n/g, '|');
      },
    },
  });
  const details = describeRun(result.run);
  const seen = observations(result);
  console.log(
    `[e2e] cache ${mode}: ` +
      ITEMS.map((item) => {
        const o = seen.get(item)!;
        return (
          `${item} ${o.immediate ? 'fresh at once' : o.freshAfterMs !== null ? `fresh after ${o.freshAfterMs} ms` : 'stale'}` +
          `${o.afterDrop ? '' : ' (STALE after drop_caches)'}`
        );
      }).join(', '),
  );
  for (const line of result.report.info.filter((l) => l.startsWith('coh held-fd'))) console.log(`[e2e] cache ${mode}: ${line}`);

  expectCleanRun(result, ['coh-initial', 'coh-g2h-fsync', 'coh-g2h-close', 'coh-g2h-plain']);
  expect(fs.statSync(path.join(coh, 'same.txt')).ino, 'the host rewrote same.txt in place').toBe(inodeBefore);

  // Host to guest, per the table.
  const problems: string[] = [];
  for (const item of ITEMS) {
    const o = seen.get(item)!;
    const want = COHERENCE[mode][item];
    const what = `${item}: ${o.lines.join(' / ')}`;
    if (o.lines.length === 0) problems.push(`${item}: the guest reported nothing`);
    else if (want === 'immediate' && !o.immediate) problems.push(`expected fresh at once; ${what}`);
    else if (want === 'timeout' && (o.freshAfterMs === null || o.freshAfterMs > AUTO_LIMIT_MS)) {
      problems.push(`expected fresh within ${AUTO_LIMIT_MS} ms (1 s cache timeout); ${what}`);
    } else if (want === 'stale' && o.freshAfterMs !== null) {
      problems.push(`expected stale for the whole ${WINDOW_MS} ms window (long cache timeouts); ${what}`);
    }
    if (!o.afterDrop) problems.push(`expected fresh after drop_caches; ${what}`);
  }
  expect(problems, `cache=${mode}: host-to-guest coherence\n${details}`).toEqual([]);

  // Guest to host: the host read exactly what the guest wrote.
  expect(Object.fromEntries(hostReads)).toEqual({
    'coh/guest-fsync.txt': 'written by the guest, then fsync\n',
    'coh/guest-close.txt': 'written by the guest, then close\n',
    'coh/guest-plain.txt': 'written by the guest, fd still open\n',
  });
}

describe(`host/guest cache coherence in a Linux guest against ${DAEMON_TITLE}`, () => {
  workDir = useE2EEnvironment();

  const title: Record<CacheMode, string> = {
    never: 'cache never: every change visible at once',
    auto: 'cache auto: changes visible within the 1 s timeout',
    always: 'cache always: stale until drop_caches',
    metadata: 'cache metadata: data read through, names stale until drop_caches',
  };
  for (const mode of ['never', 'auto', 'always', 'metadata'] as const) {
    if (hasCacheMode(mode)) {
      test(`${title[mode]}; guest writes reach the host`, () => coherenceRun(mode), TEST_TIMEOUT);
    } else {
      test.skip(`${title[mode]} (skipped: the reference daemon has no cache=${mode} mode)`, () => {});
    }
  }
});
