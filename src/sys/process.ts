/**
 * Process-wide privileges for the sandbox (src/sandbox): prctl,
 * capget/capset, setgroups, and the seccomp(2) syscall (glibc has no
 * wrapper: syscall(2)).
 */
import koffi from 'koffi';
import { SysError } from './errno';
import { libc, rawSyscall, syscall } from './libc';

export const PR_CAPBSET_READ = 23;
export const PR_CAPBSET_DROP = 24;
export const PR_SET_NO_NEW_PRIVS = 38;
export const PR_GET_NO_NEW_PRIVS = 39;
export const PR_CAP_AMBIENT = 47;
export const PR_CAP_AMBIENT_CLEAR_ALL = 4;

export const SECCOMP_SET_MODE_FILTER = 1;
export const SECCOMP_FILTER_FLAG_TSYNC = 1 << 0;
export const SECCOMP_FILTER_FLAG_LOG = 1 << 1;
export const SYS_seccomp_x86_64 = 317;

export const LINUX_CAPABILITY_VERSION_3 = 0x20080522;

// glibc declares prctl variadic; every option reads unsigned longs, so a fixed prototype is the same call.
export const prctl = syscall<(option: number, a2: number, a3: number, a4: number, a5: number) => number>(
  'prctl',
  'int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long)',
);
export const capget = syscall<(header: Buffer, data: Buffer) => number>('capget', 'int capget(_Inout_ uint8_t *, _Out_ uint8_t *)');
export const capset = syscall<(header: Buffer, data: Buffer) => number>('capset', 'int capset(_Inout_ uint8_t *, const uint8_t *)');
export const setgroups = syscall<(size: number, list: null) => number>('setgroups', 'int setgroups(size_t, const uint32_t *)');

/** struct sock_fprog: unsigned short len; struct sock_filter *filter (anonymous: koffi type names are process-wide). */
const SockFprog = koffi.struct({ len: 'uint16_t', filter: 'const uint8_t *' });

/**
 * seccomp(SECCOMP_SET_MODE_FILTER, flags, &{len, filter}); `filter` holds
 * `len` struct sock_filter (8 bytes each). Returns the syscall's result: 0, or
 * with TSYNC the id of a thread that could not be synchronised.
 */
export function seccompSetModeFilter(flags: number, filter: Buffer): number {
  const ret = rawSyscall(SYS_seccomp_x86_64, 'unsigned int', SECCOMP_SET_MODE_FILTER, 'unsigned int', flags, koffi.pointer(SockFprog), {
    len: filter.length / 8,
    filter,
  });
  if (ret < 0) throw new SysError('seccomp', koffi.errno());
  return ret;
}

/** struct group's first fields (grp.h); the rest is never read. Anonymous: koffi type names are process-wide. */
const GroupEntry = koffi.struct({ gr_name: 'const char *', gr_passwd: 'const char *', gr_gid: 'uint32_t' });
const getgrnam = libc.func('void *getgrnam(const char *)') as (name: string) => unknown;

/**
 * The gid of group `name` through getgrnam(3), so that groups from NSS
 * (sssd, LDAP, systemd's dynamic users) resolve as well as those in
 * /etc/group; null when there is no such group.
 */
export function groupIdOf(name: string): number | null {
  const entry = getgrnam(name);
  return entry === null ? null : (koffi.decode(entry, GroupEntry) as { gr_gid: number }).gr_gid;
}
