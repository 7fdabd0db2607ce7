/**
 * Shared pieces of the conformance suite: the per-case session lifecycle and
 * assertions on FUSE errors.
 */
import { constants } from 'node:fs';
import { afterEach, expect } from 'vitest';
import { FuseRequestError } from '../../src/guest/fuse-driver';
import type { Backend } from '../helpers/backends';
import { type Session, type SessionOptions, openSession } from '../helpers/fuse-session';

export const ROOT = 1;
export const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND, S_IFMT, S_IFREG, S_IFDIR, S_IFLNK, S_IFIFO } = constants;

/** Opens sessions for the cases of one describe block and closes them after each case. */
export function sessions(backend: Backend): (options?: SessionOptions) => Promise<Session> {
  const open: Session[] = [];
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close();
  });
  return async (options) => {
    const s = await openSession(backend, options);
    open.push(s);
    return s;
  };
}

/** Expects `p` to reject with a FUSE error reply of one of `codes`. */
export async function expectErrno(p: Promise<unknown>, ...codes: string[]): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `expected ${codes.join(' or ')}, got success`).toBeInstanceOf(FuseRequestError);
  const fe = err as FuseRequestError;
  expect(fe.kind, fe.message).toBe('reply');
  expect(codes, fe.message).toContain(fe.code);
}
