import * as fs from 'node:fs';
import type { Logger } from './log';
import { getNofileLimit, setNofileLimit } from './sys';

/** The fd limit the daemon raises itself to by default, as virtiofsd does: min(this, fs.nr_open). */
const DEFAULT_NOFILE = 1_000_000;

/**
 * RLIMIT_NOFILE as `--rlimit-nofile` asks: 0 leaves it, a number sets it
 * (failing start-up if not allowed), absent raises it to min(1000000,
 * fs.nr_open) as far as the process may (each inode the guest holds costs an fd).
 */
export function applyNofileLimit(requested: number | undefined, log: Logger): void {
  if (requested === 0) return;
  const current = getNofileLimit();
  if (requested !== undefined) {
    try {
      setNofileLimit({ soft: requested, hard: requested });
    } catch (err) {
      throw new Error(`--rlimit-nofile ${requested}: ${(err as Error).message} (the hard limit is ${current.hard})`);
    }
    return;
  }
  const target = Math.min(DEFAULT_NOFILE, readNrOpen());
  if (current.soft >= target) return;
  try {
    setNofileLimit({ soft: target, hard: Math.max(target, current.hard) });
  } catch {
    // Unprivileged: the soft limit can still go up to the hard one.
    if (current.soft < current.hard) setNofileLimit({ soft: current.hard, hard: current.hard });
    log('warn', `open-file limit is ${Math.max(current.soft, current.hard)}; could not raise it to ${target}`);
  }
}

function readNrOpen(): number {
  try {
    return Number(fs.readFileSync('/proc/sys/fs/nr_open', 'utf8').trim()) || DEFAULT_NOFILE;
  } catch {
    return DEFAULT_NOFILE;
  }
}
