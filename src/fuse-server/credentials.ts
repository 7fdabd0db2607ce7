/**
 * New files must belong to the guest user who created them and obey that
 * user's permissions, as virtiofsd arranges with setfsuid/setfsgid around each
 * creating call. The fs ids are per thread; every handler runs synchronously on
 * the event-loop thread, so the switch covers exactly one syscall sequence.
 * Without root there is nothing to switch to: files belong to the daemon's user.
 */
import { CAP_FSETID, geteuid, setfsgid, setfsuid, withoutEffectiveCapability } from '../sys/fs';

/** Host ids to act as. */
export interface HostIds {
  uid: number;
  gid: number;
}

export class Credentials {
  private readonly canSwitch = geteuid() === 0;

  /**
   * Runs `fn` with the fs uid/gid `ids`, restoring the daemon's afterwards.
   * A non-zero `umask` is applied for the call: with FUSE_DONT_MASK the guest
   * leaves it to us, so that the host honours default ACLs (the daemon's own
   * umask is 0).
   */
  asCaller<T>(ids: HostIds, umask: number, fn: () => T): T {
    const oldMask = umask ? process.umask(umask) : 0;
    try {
      if (!this.canSwitch) return fn();
      const gid = setfsgid(ids.gid);
      const uid = setfsuid(ids.uid);
      try {
        return fn();
      } finally {
        setfsuid(uid);
        setfsgid(gid);
      }
    } finally {
      if (umask) process.umask(oldMask);
    }
  }

  /**
   * Runs `fn` without CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2): the host kernel
   * then drops set-id bits and file capabilities on a write or truncation,
   * as it would for the unprivileged guest caller.
   */
  withoutFsetid<T>(fn: () => T): T {
    return withoutEffectiveCapability(CAP_FSETID, fn);
  }
}
