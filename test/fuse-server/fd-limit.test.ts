/**
 * The guest's fd allowance: everything the passthrough keeps open per guest
 * action (inode O_PATH fds, open handles and their O_APPEND twins, lock
 * descriptions) stays below a budget under RLIMIT_NOFILE, so a guest that
 * opens or looks up without end gets EMFILE while the daemon keeps fds for
 * itself (the front-end's next message carrying an fd must not be lost).
 */
import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { FD_RESERVE, fdBudgetFor } from '../../src/fuse-server/fd-budget';
import { Errno } from '../../src/sys/errno';
import { getNofileLimit, setNofileLimit } from '../../src/sys/fs';
import { openFdCount, outcome, replyError } from './fuse-driver';
import { F_WRLCK, Harness, O_APPEND, O_RDONLY, O_RDWR } from './harness';

let h: Harness | undefined;
afterEach(() => {
  h?.close();
  h = undefined;
});

const BUDGET = 40;

async function openRaw(nodeid: number, flags = O_RDONLY): Promise<{ error: number; fh: number }> {
  const r = await outcome(h!.client.open(nodeid, flags));
  return { error: r.error, fh: r.value?.fh ?? 0 };
}

async function lookupRaw(parent: number, name: string): Promise<{ error: number; nodeid: number }> {
  const r = await outcome(h!.client.lookup(parent, name));
  return { error: r.error, nodeid: r.value?.nodeid ?? 0 };
}

/** OPENs `nodeid` until the first error; the handles opened and that error. */
async function openUntilError(nodeid: number, flags = O_RDONLY, max = 100_000): Promise<{ fhs: number[]; error: number }> {
  const fhs: number[] = [];
  for (let i = 0; i < max; i++) {
    const r = await openRaw(nodeid, flags);
    if (r.error) return { fhs, error: r.error };
    fhs.push(r.fh);
  }
  return { fhs, error: 0 };
}

async function healthy(): Promise<void> {
  expect((await h!.client.getattr(1)).attr.mode & 0o170000).toBe(0o040000);
  expect(await replyError(h!.client.statfs(1))).toBe(0);
}

describe('the guest fd budget', () => {
  it('OPEN of one file until EMFILE; a RELEASE makes room again', async () => {
    h = Harness.create({ fdBudget: BUDGET }, (d) => fs.writeFileSync(`${d}/f`, 'data'));
    await h.start();
    const f = (await h.client.lookup(1, 'f')).nodeid;
    const fds = openFdCount();
    const { fhs, error } = await openUntilError(f);
    expect(error).toBe(-Errno.EMFILE);
    // The root's fd and f's O_PATH fd count too.
    expect(fhs.length).toBe(BUDGET - 2);
    expect(openFdCount()).toBe(fds + fhs.length);
    // Refused without opening anything, every time.
    expect((await openRaw(f)).error).toBe(-Errno.EMFILE);
    expect(openFdCount()).toBe(fds + fhs.length);
    await healthy();
    await h.client.release(f, fhs.pop()!);
    const again = await openRaw(f);
    expect(again.error).toBe(0);
    expect((await h.client.read(f, again.fh, 0, 4)).toString()).toBe('data');
    for (const fh of [...fhs, again.fh]) await h.client.release(f, fh);
    expect(openFdCount()).toBe(fds);
  });

  it('LOOKUPs of many names hit the budget too; a FORGET makes room', async () => {
    const n = BUDGET + 20;
    h = Harness.create({ fdBudget: BUDGET }, (d) => {
      for (let i = 0; i < n; i++) fs.writeFileSync(`${d}/f${i}`, '');
    });
    await h.start();
    const fds = openFdCount();
    const ids: number[] = [];
    let error = 0;
    for (let i = 0; i < n && !error; i++) {
      const r = await lookupRaw(1, `f${i}`);
      if (r.error) error = r.error;
      else ids.push(r.nodeid);
    }
    expect(error).toBe(-Errno.EMFILE);
    expect(ids.length).toBe(BUDGET - 1);
    expect(openFdCount()).toBe(fds + ids.length);
    // Every opcode that would keep one more fd answers EMFILE before it makes or opens anything.
    expect(await replyError(h.client.mkdir(1, 'newdir', 0o755))).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('newdir'))).toBe(false);
    expect(await replyError(h.create(1, 'newfile'))).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('newfile'))).toBe(false);
    expect(await replyError(h.client.opendir(1))).toBe(-Errno.EMFILE);
    expect(await replyError(h.client.link(ids[0], 1, 'newlink'))).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('newlink'))).toBe(false);
    expect(await replyError(h.client.symlink(1, 'newsym', 'f0'))).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('newsym'))).toBe(false);
    expect(openFdCount()).toBe(fds + ids.length);
    await healthy();
    await h.client.forget(ids.pop()!, 1);
    expect((await lookupRaw(1, `f${n - 1}`)).error).toBe(0);
  });

  it('O_APPEND twins and lock descriptions count', async () => {
    h = Harness.create({ fdBudget: BUDGET, posixLock: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const f = (await h.client.lookup(1, 'f')).nodeid;
    const fh = await h.open(f, O_RDWR | O_APPEND);
    // Root, f, the handle: the first appending write opens the handle's O_APPEND twin.
    expect(await h.client.write(f, fh, 0, Buffer.from('x'), 0, O_APPEND)).toBe(1);
    let owner = 1n;
    let error = 0;
    for (; owner < 1000n && !error; owner++) {
      error = await replyError(h.client.setlk(f, fh, owner, { type: F_WRLCK, start: owner * 10n, end: owner * 10n + 1n }));
    }
    expect(error).toBe(-Errno.EMFILE);
    expect(Number(owner - 2n)).toBe(BUDGET - 4);
    expect(h.session.stats.lockFds).toBe(BUDGET - 4);
    expect((await openRaw(f)).error).toBe(-Errno.EMFILE);
    // Releasing the handle closes its twin and its owners' descriptions.
    await h.client.release(f, fh);
    expect(h.session.stats.lockFds).toBe(0);
    expect((await openRaw(f)).error).toBe(0);
    await healthy();
  });

  it('is the soft RLIMIT_NOFILE at session start less the daemon reserve', async () => {
    expect(fdBudgetFor(1_048_576)).toBe(1_048_576 - FD_RESERVE);
    expect(fdBudgetFor(1024)).toBe(1024 - FD_RESERVE);
    // A small limit still leaves the daemon half.
    expect(fdBudgetFor(256)).toBe(128);
    const saved = getNofileLimit();
    const soft = Math.max(1024, openFdCount() + 700);
    if (soft > saved.hard) return expect.fail(`hard RLIMIT_NOFILE ${saved.hard} is below ${soft}`);
    setNofileLimit({ soft, hard: saved.hard });
    try {
      h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, ''));
    } finally {
      setNofileLimit(saved);
    }
    await h.start();
    const f = (await h.client.lookup(1, 'f')).nodeid;
    const { fhs, error } = await openUntilError(f);
    expect(error).toBe(-Errno.EMFILE);
    expect(fhs.length).toBe(soft - FD_RESERVE - 2);
  });

  it("the kernel's own EMFILE is answered as EMFILE, and the daemon carries on", async () => {
    h = Harness.create({ fdBudget: 1_000_000 }, (d) => fs.writeFileSync(`${d}/f`, 'data'));
    await h.start();
    const f = (await h.client.lookup(1, 'f')).nodeid;
    const saved = getNofileLimit();
    let result: Awaited<ReturnType<typeof openUntilError>>;
    let lookup: number;
    let create: number;
    // Only requests the session answers at once while the limit is low: the event loop does not run meanwhile.
    setNofileLimit({ soft: openFdCount() + 8, hard: saved.hard });
    try {
      result = await openUntilError(f, O_RDONLY, 64);
      lookup = (await lookupRaw(1, 'f')).error;
      create = await replyError(h.create(1, 'g'));
    } finally {
      setNofileLimit(saved);
    }
    expect(result.error).toBe(-Errno.EMFILE);
    expect(result.fhs.length).toBeGreaterThan(0);
    expect(lookup).toBe(-Errno.EMFILE);
    expect(create).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('g'))).toBe(false);
    await healthy();
    for (const fh of result.fhs) await h.client.release(f, fh);
    const again = await openRaw(f);
    expect(again.error).toBe(0);
    expect((await h.client.read(f, again.fh, 0, 4)).toString()).toBe('data');
  });
});
