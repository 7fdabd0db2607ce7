/**
 * Makes the shared directory the daemon's root, from inside the namespaces
 * the launcher (native/sandbox_launcher.c) created, or with chroot(2).
 * Runs once at start-up, after every module is loaded (nothing can be
 * require()d from outside the share afterwards) and before the first
 * front-end message is read.
 */
import {
  MNT_DETACH,
  MS_BIND,
  MS_NODEV,
  MS_NOEXEC,
  MS_NOSUID,
  MS_REC,
  MS_RELATIME,
  MS_SLAVE,
  chdir,
  chroot,
  mount,
  pivotRoot,
  umount2,
} from '../sys/mount';
import { AT_EMPTY_PATH, AT_FDCWD, O_CLOEXEC, O_DIRECTORY, O_PATH, O_RDONLY, closeQuietly, fchdir, openat, statx } from '../sys/fs';

/** What the file server needs from the sandbox: where the share now is, and /proc/self/fd. */
export interface SandboxedRoot {
  /** The shared directory's path as the daemon now sees it ('/' once it is the root). */
  sharedDir: string;
  /** An O_PATH fd on this process's /proc/self/fd (the file server reopens inodes through it). */
  procSelfFd: number;
}

/**
 * namespace mode, in the new mount namespace: no mount event leaks back to
 * the host (/ made a recursive slave), a fresh /proc of the new pid
 * namespace of which only /proc/self/fd stays reachable (through an fd),
 * the share bind-mounted onto itself (so the kernel refuses a `..` out of a
 * directory moved out of it), pivot_root into it and the old root detached.
 */
export function pivotIntoShare(sharedDir: string): SandboxedRoot {
  // EINVAL here: / is not a mount point (a chroot without a mount of its own).
  step('making / a recursive slave mount', () => mount(null, '/', null, MS_SLAVE | MS_REC, null));
  // The share first, and held by an fd, so that a share under /proc survives what follows.
  step(`bind-mounting the share ${sharedDir} onto itself`, () => mount(sharedDir, sharedDir, null, MS_BIND | MS_REC, null));
  const newRoot = openat(AT_FDCWD, sharedDir, O_DIRECTORY | O_RDONLY | O_CLOEXEC, 0);
  let procSelfFd = -1;
  try {
    step('mounting a /proc of the new pid namespace', () =>
      mount('proc', '/proc', 'proc', MS_NODEV | MS_NOEXEC | MS_NOSUID | MS_RELATIME, null),
    );
    // Only /proc/self/fd stays: bound over /proc, so no other process's entry is reachable from it.
    step('binding /proc/self/fd over /proc', () => mount('/proc/self/fd', '/proc', null, MS_BIND, null));
    procSelfFd = openat(AT_FDCWD, '/proc', O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    const oldRoot = openat(AT_FDCWD, '/', O_DIRECTORY | O_RDONLY | O_CLOEXEC, 0);
    try {
      fchdir(newRoot);
      if (!sameDirectory(oldRoot, newRoot)) {
        step(`pivot_root into ${sharedDir}`, () => pivotRoot('.', '.'));
        // The old root is now stacked on the new one; detach it from here.
        fchdir(oldRoot);
        mount(null, '.', null, MS_SLAVE | MS_REC, null);
        umount2('.', MNT_DETACH);
        fchdir(newRoot);
      }
    } finally {
      closeQuietly(oldRoot);
    }
    chdir('/');
    return { sharedDir: '/', procSelfFd };
  } catch (err) {
    if (procSelfFd >= 0) closeQuietly(procSelfFd);
    throw err;
  } finally {
    closeQuietly(newRoot);
  }
}

/**
 * chroot mode, for containers that already provide the namespaces: /proc/self/fd
 * is opened first (it is not reachable afterwards), then chroot into the share.
 */
export function chrootIntoShare(sharedDir: string): SandboxedRoot {
  const procSelfFd = openat(AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  try {
    chroot(sharedDir);
    chdir('/');
  } catch (err) {
    closeQuietly(procSelfFd);
    throw err;
  }
  return { sharedDir: '/', procSelfFd };
}

function sameDirectory(a: number, b: number): boolean {
  const sa = statx(a, '', AT_EMPTY_PATH);
  const sb = statx(b, '', AT_EMPTY_PATH);
  return sa.mntId === sb.mntId && sa.devMajor === sb.devMajor && sa.devMinor === sb.devMinor && sa.ino === sb.ino;
}

/** Runs one step of entering the sandbox; a failure names the step as well as the errno. */
function step(what: string, call: () => unknown): void {
  try {
    call();
  } catch (err) {
    throw new Error(`sandbox: ${what}: ${(err as Error).message}`);
  }
}
