/**
 * New files must belong to the guest user who created them and obey that
 * user's permissions, as virtiofsd arranges with setfsuid/setfsgid around each
 * creating call. The fs ids are per thread; every handler runs synchronously on
 * the event-loop thread, so the switch covers exactly one syscall sequence.
 * Without root there is nothing to switch to: files belong to the daemon's user.
 */
import { geteuid, setfsgid, setfsuid } from '../sys/fs';
import type { Context } from './filesystem';

export class Credentials {
  private readonly canSwitch = geteuid() === 0;

  /** Runs `fn` with the fs uid/gid of the caller, restoring the daemon's afterwards. */
  asCaller<T>(ctx: Context, fn: () => T): T {
    if (!this.canSwitch) return fn();
    const gid = setfsgid(ctx.gid);
    const uid = setfsuid(ctx.uid);
    try {
      return fn();
    } finally {
      setfsuid(uid);
      setfsgid(gid);
    }
  }
}
