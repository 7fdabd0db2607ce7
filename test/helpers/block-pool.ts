import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** More blockers than any pool size libuv would start with here (UV_THREADPOOL_SIZE, default 4). */
export const POOL_BLOCKERS = 32;

/**
 * Occupies every thread of this process's libuv pool (an in-process daemon's
 * too) with reads of FIFOs made in `dir`, until the returned function is
 * called (and awaited): what is queued behind them is "in flight" for as long
 * as the test wants.
 */
export function blockPool(dir: string, blockers = POOL_BLOCKERS): () => Promise<void> {
  const fds: number[] = [];
  const reads: Promise<void>[] = [];
  for (let i = 0; i < blockers; i++) {
    const fifo = path.join(dir, `.fifo-${i}`);
    execFileSync('mkfifo', [fifo]);
    // O_RDWR: the open does not wait for a writer, and the read blocks its pool thread.
    const fd = fs.openSync(fifo, fs.constants.O_RDWR);
    fds.push(fd);
    reads.push(new Promise((resolve) => fs.read(fd, Buffer.alloc(1), 0, 1, null, () => resolve())));
  }
  return async () => {
    for (const fd of fds) fs.writeSync(fd, Buffer.from([1]));
    await Promise.all(reads);
    for (const fd of fds) fs.closeSync(fd);
  };
}
