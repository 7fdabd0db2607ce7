/**
 * One guest session against a back-end: a fresh shared directory, the
 * back-end listening on it, a FuseDriver connected (and, unless asked
 * otherwise, initialised). Tests take one per case so no state leaks.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { it } from 'vitest';
import { FuseDriver, type FuseDriverOptions } from '../../src/guest/fuse-driver';
import type { FrontendOptions } from '../../src/guest/frontend';
import type { Backend, Capability, RunningBackend } from './backends';

export interface SessionOptions extends FuseDriverOptions, FrontendOptions {
  /** Send FUSE_INIT before handing the session over (default true). */
  init?: boolean;
  /** Prepares the shared directory before the back-end starts. */
  populate?: (dir: string) => void;
  /** Ask the back-end for a DAX window of this many bytes. */
  daxWindow?: number;
}

export interface Session {
  fuse: FuseDriver;
  /** Host path of the shared directory. */
  dir: string;
  backend: RunningBackend;
  close(): Promise<void>;
}

/** A per-request timeout, so a back-end that never answers fails the case instead of hanging it. */
export const REQUEST_TIMEOUT_MS = 5000;

export async function openSession(backend: Backend, options: SessionOptions = {}): Promise<Session> {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-conf-'));
  const dir = path.join(base, 'share');
  fs.mkdirSync(dir);
  options.populate?.(dir);
  let running: RunningBackend | null = null;
  let fuse: FuseDriver | null = null;
  const close = async (): Promise<void> => {
    fuse?.close();
    await running?.stop();
    fs.rmSync(base, { recursive: true, force: true });
  };
  try {
    running = await backend.start(dir, path.join(base, 'sock'), { daxWindow: options.daxWindow });
    fuse = await FuseDriver.connect(running.socketPath, {
      ramRegions: [32 << 20, 32 << 20],
      timeoutMs: REQUEST_TIMEOUT_MS,
      ...options,
    });
    if (options.init ?? true) await fuse.init();
    return { fuse, dir, backend: running, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * `it` that skips, with the reason in the test's name, when the back-end lacks
 * `capability`: a skipped case always says why.
 */
export function itIfCan(backend: Backend, capability: Capability, name: string, fn: () => Promise<void>, timeout?: number): void {
  const reason = backend.lacks[capability];
  it.skipIf(reason !== undefined)(reason ? `${name} [skipped: ${reason}]` : name, fn, timeout);
}
