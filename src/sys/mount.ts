/**
 * Mount-namespace and process-image syscalls for the sandbox (src/sandbox):
 * mount, umount2, pivot_root, chroot, execve. One declaration each.
 */
import koffi from 'koffi';
import { SysError } from './errno';
import { F_SETFD, fcntl, libc, rawSyscall, syscall } from './libc';

export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MS_BIND = 0x1000;
export const MS_REC = 0x4000;
export const MS_SLAVE = 1 << 19;
export const MS_RELATIME = 1 << 21;
export const MNT_DETACH = 2;

/** x86_64 number of pivot_root(2), which glibc does not wrap. */
const SYS_pivot_root = 155;

export const mount = syscall<(source: string | null, target: string, fstype: string | null, flags: number, data: null) => number>(
  'mount',
  'int mount(const char*, const char*, const char*, unsigned long, const void*)',
);
export const umount2 = syscall<(target: string, flags: number) => number>('umount2', 'int umount2(const char*, int)');
export const chroot = syscall<(path: string) => number>('chroot', 'int chroot(const char*)');
export const chdir = syscall<(path: string) => number>('chdir', 'int chdir(const char*)');

export function pivotRoot(newRoot: string, putOld: string): void {
  if (rawSyscall(SYS_pivot_root, 'const char *', newRoot, 'const char *', putOld) < 0) throw new SysError('pivot_root', koffi.errno());
}

const rawExecve = libc.func('int execve(const char*, const char**, const char**)') as (
  path: string,
  argv: (string | null)[],
  envp: (string | null)[],
) => number;
/**
 * Replaces the process image (same pid); the fds in `keepFds` stay open
 * across it (Node marks even stdio close-on-exec). Returns only by throwing.
 */
export function execve(path: string, argv: string[], env: NodeJS.ProcessEnv, keepFds: number[] = [0, 1, 2]): never {
  for (const fd of keepFds) fcntl(fd, F_SETFD, 0);
  const envp = Object.entries(env)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  rawExecve(path, [...argv, null], [...envp, null]);
  throw new SysError('execve', koffi.errno());
}
