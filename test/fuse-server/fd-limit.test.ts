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
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { getNofileLimit, setNofileLimit } from '../../src/sys/fs';
import { cstr, encode, openFdCount } from './fuse-driver';
import { F_WRLCK, Harness, O_APPEND, O_RDONLY, O_RDWR } from './harness';

let h: Harness | undefined;
afterEach(() => {
  h?.close();
  h = undefined;
});

const BUDGET = 40;

function openRaw(nodeid: number, flags = O_RDONLY): { error: number; fh: number } {
  const r = h!.fuse.request(Opcode.FUSE_OPEN, nodeid, [encode(P.fuse_open_in, { flags, open_flags: 0 })]);
  return { error: r.error, fh: r.error ? 0 : P.fuse_open_out.decode(r.body, 0).fh };
}

function lookupRaw(parent: number, name: string): { error: number; nodeid: number } {
  const r = h!.fuse.request(Opcode.FUSE_LOOKUP, parent, [cstr(name)]);
  return { error: r.error, nodeid: r.error ? 0 : P.fuse_entry_out.decode(r.body, 0).nodeid };
}

/** OPENs `nodeid` until the first error; the handles opened and that error. */
function openUntilError(nodeid: number, flags = O_RDONLY, max = 100_000): { fhs: number[]; error: number } {
  const fhs: number[] = [];
  for (let i = 0; i < max; i++) {
    const r = openRaw(nodeid, flags);
    if (r.error) return { fhs, error: r.error };
    fhs.push(r.fh);
  }
  return { fhs, error: 0 };
}

function healthy(): void {
  expect(h!.getattr(1).mode & 0o170000).toBe(0o040000);
  expect(h!.fuse.request(Opcode.FUSE_STATFS, 1).error).toBe(0);
}

describe('the guest fd budget', () => {
  it('OPEN of one file until EMFILE; a RELEASE makes room again', () => {
    h = Harness.create({ fdBudget: BUDGET }, (d) => fs.writeFileSync(`${d}/f`, 'data'));
    h.init();
    const f = h.lookup(1, 'f').nodeid;
    const fds = openFdCount();
    const { fhs, error } = openUntilError(f);
    expect(error).toBe(-Errno.EMFILE);
    // The root's fd and f's O_PATH fd count too.
    expect(fhs.length).toBe(BUDGET - 2);
    expect(openFdCount()).toBe(fds + fhs.length);
    // Refused without opening anything, every time.
    expect(openRaw(f).error).toBe(-Errno.EMFILE);
    expect(openFdCount()).toBe(fds + fhs.length);
    healthy();
    h.release(f, fhs.pop()!);
    const again = openRaw(f);
    expect(again.error).toBe(0);
    expect(h.read(f, again.fh, 0, 4).toString()).toBe('data');
    for (const fh of [...fhs, again.fh]) h.release(f, fh);
    expect(openFdCount()).toBe(fds);
  });

  it('LOOKUPs of many names hit the budget too; a FORGET makes room', () => {
    const n = BUDGET + 20;
    h = Harness.create({ fdBudget: BUDGET }, (d) => {
      for (let i = 0; i < n; i++) fs.writeFileSync(`${d}/f${i}`, '');
    });
    h.init();
    const fds = openFdCount();
    const ids: number[] = [];
    let error = 0;
    for (let i = 0; i < n && !error; i++) {
      const r = lookupRaw(1, `f${i}`);
      if (r.error) error = r.error;
      else ids.push(r.nodeid);
    }
    expect(error).toBe(-Errno.EMFILE);
    expect(ids.length).toBe(BUDGET - 1);
    expect(openFdCount()).toBe(fds + ids.length);
    // Every opcode that would keep one more fd answers EMFILE before it makes or opens anything.
    const mk = h.fuse.request(Opcode.FUSE_MKDIR, 1, [encode(P.fuse_mkdir_in, { mode: 0o755, umask: 0 }), cstr('newdir')]);
    expect(mk.error).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('newdir'))).toBe(false);
    const cr = h.createRaw(1, 'newfile');
    expect(cr.error).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('newfile'))).toBe(false);
    expect(h.fuse.request(Opcode.FUSE_OPENDIR, 1, [encode(P.fuse_open_in, { flags: 0, open_flags: 0 })]).error).toBe(-Errno.EMFILE);
    const link = h.fuse.request(Opcode.FUSE_LINK, 1, [encode(P.fuse_link_in, { oldnodeid: ids[0] }), cstr('newlink')]);
    expect(link.error).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('newlink'))).toBe(false);
    const sym = h.fuse.request(Opcode.FUSE_SYMLINK, 1, [cstr('newsym'), cstr('f0')]);
    expect(sym.error).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('newsym'))).toBe(false);
    expect(openFdCount()).toBe(fds + ids.length);
    healthy();
    h.forget(ids.pop()!, 1);
    expect(lookupRaw(1, `f${n - 1}`).error).toBe(0);
  });

  it('O_APPEND twins and lock descriptions count', () => {
    h = Harness.create({ fdBudget: BUDGET, posixLock: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    const f = h.lookup(1, 'f').nodeid;
    const fh = h.open(f, O_RDWR | O_APPEND);
    // Root, f, the handle: the first appending write opens the handle's O_APPEND twin.
    expect(h.write(f, fh, 0, 'x', 0, O_APPEND).error).toBe(0);
    let owner = 1n;
    let error = 0;
    for (; owner < 1000n && !error; owner++) {
      error = h.fuse.request(Opcode.FUSE_SETLK, f, [h.lkIn(fh, owner, F_WRLCK, owner * 10n, owner * 10n + 1n)]).error;
    }
    expect(error).toBe(-Errno.EMFILE);
    expect(Number(owner - 2n)).toBe(BUDGET - 4);
    expect(h.session.stats.lockFds).toBe(BUDGET - 4);
    expect(openRaw(f).error).toBe(-Errno.EMFILE);
    // Releasing the handle closes its twin and its owners' descriptions.
    h.release(f, fh);
    expect(h.session.stats.lockFds).toBe(0);
    expect(openRaw(f).error).toBe(0);
    healthy();
  });

  it('is the soft RLIMIT_NOFILE at session start less the daemon reserve', () => {
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
    h.init();
    const f = h.lookup(1, 'f').nodeid;
    const { fhs, error } = openUntilError(f);
    expect(error).toBe(-Errno.EMFILE);
    expect(fhs.length).toBe(soft - FD_RESERVE - 2);
  });

  it("the kernel's own EMFILE is answered as EMFILE, and the daemon carries on", () => {
    h = Harness.create({ fdBudget: 1_000_000 }, (d) => fs.writeFileSync(`${d}/f`, 'data'));
    h.init();
    const f = h.lookup(1, 'f').nodeid;
    const saved = getNofileLimit();
    let result: ReturnType<typeof openUntilError>;
    let lookup: number;
    let create: number;
    // Only synchronous requests while the limit is low: nothing else of this process runs meanwhile.
    setNofileLimit({ soft: openFdCount() + 8, hard: saved.hard });
    try {
      result = openUntilError(f, O_RDONLY, 64);
      lookup = lookupRaw(1, 'f').error;
      create = h.createRaw(1, 'g').error;
    } finally {
      setNofileLimit(saved);
    }
    expect(result.error).toBe(-Errno.EMFILE);
    expect(result.fhs.length).toBeGreaterThan(0);
    expect(lookup).toBe(-Errno.EMFILE);
    expect(create).toBe(-Errno.EMFILE);
    expect(fs.existsSync(h.p('g'))).toBe(false);
    healthy();
    for (const fh of result.fhs) h.release(f, fh);
    const again = openRaw(f);
    expect(again.error).toBe(0);
    expect(h.read(f, again.fh, 0, 4).toString()).toBe('data');
  });
});
