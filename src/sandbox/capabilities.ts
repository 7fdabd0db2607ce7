/**
 * Capabilities the daemon keeps, as virtiofsd drops them: the file-server
 * set (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD, SETFCAP,
 * + DAC_READ_SEARCH for file handles), changed by `--modcaps`.
 *
 * Linux keeps capabilities per THREAD: capset(2) and PR_CAPBSET_DROP change
 * the calling thread only, and a thread inherits its creator's sets at
 * clone(). By the time JavaScript runs, Node has already started V8's
 * platform workers (and whatever else), so dropCapabilities() from inside
 * Node leaves those threads with every capability (test/sandbox/
 * capabilities.test.ts shows it). The sets must therefore be reduced BEFORE
 * Node starts: the launcher calls restrictForExec() (bounding set to the keep
 * set, inheritable and ambient empty) and then execs Node. For root, execve
 * gives P'(permitted) = P(inheritable) | P(bounding) and P'(effective) =
 * P'(permitted) (capabilities(7), "root" rules), i.e. exactly the keep set,
 * in every thread the new Node ever creates. dropCapabilities() inside the
 * daemon is then the belt to those braces, and threadsBeyond() checks it.
 */
import * as fs from 'node:fs';
import { SysError } from '../sys/errno';
import {
  LINUX_CAPABILITY_VERSION_3,
  PR_CAPBSET_DROP,
  PR_CAPBSET_READ,
  PR_CAP_AMBIENT,
  PR_CAP_AMBIENT_CLEAR_ALL,
  capget,
  capset,
  prctl,
  setgroups,
} from '../sys/process';

/** linux/capability.h, without the CAP_ prefix. */
export const CAPABILITIES: Readonly<Record<string, number>> = {
  CHOWN: 0,
  DAC_OVERRIDE: 1,
  DAC_READ_SEARCH: 2,
  FOWNER: 3,
  FSETID: 4,
  KILL: 5,
  SETGID: 6,
  SETUID: 7,
  SETPCAP: 8,
  LINUX_IMMUTABLE: 9,
  NET_BIND_SERVICE: 10,
  NET_BROADCAST: 11,
  NET_ADMIN: 12,
  NET_RAW: 13,
  IPC_LOCK: 14,
  IPC_OWNER: 15,
  SYS_MODULE: 16,
  SYS_RAWIO: 17,
  SYS_CHROOT: 18,
  SYS_PTRACE: 19,
  SYS_PACCT: 20,
  SYS_ADMIN: 21,
  SYS_BOOT: 22,
  SYS_NICE: 23,
  SYS_RESOURCE: 24,
  SYS_TIME: 25,
  SYS_TTY_CONFIG: 26,
  MKNOD: 27,
  LEASE: 28,
  AUDIT_WRITE: 29,
  AUDIT_CONTROL: 30,
  SETFCAP: 31,
  MAC_OVERRIDE: 32,
  MAC_ADMIN: 33,
  SYSLOG: 34,
  WAKE_ALARM: 35,
  BLOCK_SUSPEND: 36,
  AUDIT_READ: 37,
  PERFMON: 38,
  BPF: 39,
  CHECKPOINT_RESTORE: 40,
};

/** What a passthrough file server needs (virtiofsd's default set). */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CHOWN',
  'DAC_OVERRIDE',
  'FOWNER',
  'FSETID',
  'SETGID',
  'SETUID',
  'MKNOD',
  'SETFCAP',
];

/** open_by_handle_at(2) needs it. */
export const FILE_HANDLES_CAPABILITY = 'DAC_READ_SEARCH';

/** `chown`, `CAP_CHOWN`, `Cap_Chown` -> `CHOWN`; throws on a name Linux does not have. */
export function capabilityName(name: string): string {
  const upper = name.trim().toUpperCase();
  const bare = upper.startsWith('CAP_') ? upper.slice(4) : upper;
  if (!(bare in CAPABILITIES)) throw new Error(`unknown capability '${name}' (expected e.g. sys_admin or CAP_SYS_ADMIN)`);
  return bare;
}

/**
 * virtiofsd's `--modcaps` (and `-o modcaps=`): `+name` adds, `-name` removes,
 * items separated by ':' (or ','), applied left to right to `base`.
 * E.g. `+sys_admin:-fsetid`. Returns a new set of bare upper-case names.
 */
export function parseModcaps(spec: string, base: Iterable<string>): Set<string> {
  const caps = new Set([...base].map(capabilityName));
  for (const item of spec.split(/[:,]/)) {
    if (item === '') throw new Error(`--modcaps ${spec}: empty item; expected (+|-)capability[:(+|-)capability...]`);
    const op = item[0];
    if (op !== '+' && op !== '-') throw new Error(`--modcaps ${spec}: '${item}' must start with + or -`);
    const name = capabilityName(item.slice(1));
    if (op === '+') caps.add(name);
    else caps.delete(name);
  }
  return caps;
}

/**
 * The set the daemon keeps: the defaults, DAC_READ_SEARCH with inode file
 * handles, then `--modcaps`. Removing DAC_READ_SEARCH while file handles are
 * in use is refused, as virtiofsd refuses it.
 */
export function keepSet(opts: { modcaps?: string; inodeFileHandles: boolean }): Set<string> {
  const base = new Set(DEFAULT_CAPABILITIES);
  if (opts.inodeFileHandles) base.add(FILE_HANDLES_CAPABILITY);
  const keep = opts.modcaps !== undefined ? parseModcaps(opts.modcaps, base) : base;
  if (opts.inodeFileHandles && !keep.has(FILE_HANDLES_CAPABILITY)) {
    throw new Error(`--modcaps cannot remove ${FILE_HANDLES_CAPABILITY}: --inode-file-handles needs it`);
  }
  return keep;
}

/** The set as a 64-bit mask (bit n = capability n), as /proc/<pid>/status prints it in hex. */
export function capabilityMask(caps: Iterable<string>): bigint {
  let mask = 0n;
  for (const c of caps) mask |= 1n << BigInt(CAPABILITIES[capabilityName(c)]);
  return mask;
}

/** The highest capability this kernel knows (/proc/sys/kernel/cap_last_cap). */
export function lastCapability(): number {
  try {
    return Number(fs.readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim());
  } catch {
    return Math.max(...Object.values(CAPABILITIES));
  }
}

export interface CapabilitySets {
  effective: bigint;
  permitted: bigint;
  inheritable: bigint;
}

const header = (): Buffer => {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
  h.writeInt32LE(0, 4); // pid 0: the calling thread
  return h;
};

/** The calling thread's sets (capget). */
export function threadCapabilities(): CapabilitySets {
  const data = Buffer.alloc(24); // struct __user_cap_data_struct[2]
  capget(header(), data);
  const word = (i: number) => BigInt(data.readUInt32LE(i)) | (BigInt(data.readUInt32LE(12 + i)) << 32n);
  return { effective: word(0), permitted: word(4), inheritable: word(8) };
}

function setThreadCapabilities(s: CapabilitySets): void {
  const data = Buffer.alloc(24);
  const put = (off: number, v: bigint) => {
    data.writeUInt32LE(Number(v & 0xffffffffn), off);
    data.writeUInt32LE(Number((v >> 32n) & 0xffffffffn), 12 + off);
  };
  put(0, s.effective);
  put(4, s.permitted);
  put(8, s.inheritable);
  capset(header(), data);
}

/**
 * Bounding set down to `keep` (for the calling thread and whatever it
 * creates or execs from now on) and the ambient set cleared. Dropping from
 * the bounding set needs CAP_SETPCAP: without it (an unprivileged run) the
 * bounding set is left alone: such a process gains nothing by exec unless
 * it is root. Returns the capabilities dropped.
 */
function restrictBoundingAndAmbient(keepMask: bigint, canSetpcap: boolean): number[] {
  try {
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  } catch (err) {
    // EINVAL: a kernel before 4.3 has no ambient set.
    if (!(err instanceof SysError && err.errno === 22)) throw err;
  }
  const dropped: number[] = [];
  if (!canSetpcap) return dropped;
  for (let cap = 0; cap <= lastCapability(); cap++) {
    if (keepMask & (1n << BigInt(cap))) continue;
    if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) !== 1) continue;
    prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    dropped.push(cap);
  }
  return dropped;
}

const SETPCAP = 1n << BigInt(CAPABILITIES.SETPCAP);

/**
 * For the launcher, before it execs Node: bounding set = `keep`, ambient and
 * inheritable empty, on the calling thread (the one that forks/execs). The
 * exec'd program then starts, for root, with exactly `keep` in every thread.
 * The launcher's own permitted set is left as it is.
 */
export function restrictForExec(keep: Set<string>): void {
  const now = threadCapabilities();
  restrictBoundingAndAmbient(capabilityMask(keep), (now.effective & SETPCAP) !== 0n);
  setThreadCapabilities({ ...now, inheritable: 0n });
}

/**
 * Drops, on the CALLING THREAD, every capability not in `keep`: ambient set
 * cleared, bounding set reduced (first, while CAP_SETPCAP is still held),
 * then effective = permitted = keep ∩ permitted, inheritable empty. A
 * capability the thread never had cannot be kept: the result is returned.
 * Other threads are untouched (see the top of this file).
 */
export function dropCapabilities(keep: Set<string>): CapabilitySets {
  const keepMask = capabilityMask(keep);
  const now = threadCapabilities();
  restrictBoundingAndAmbient(keepMask, (now.effective & SETPCAP) !== 0n);
  const permitted = now.permitted & keepMask;
  setThreadCapabilities({ effective: permitted, permitted, inheritable: 0n });
  return threadCapabilities();
}

/** setgroups(0, NULL): no supplementary groups (glibc applies it to every thread). */
export function dropSupplementaryGroups(): void {
  setgroups(0, null);
}

export interface ThreadCapabilities {
  tid: number;
  name: string;
  effective: bigint;
  permitted: bigint;
  bounding: bigint;
}

/** Every thread's sets, from /proc/<pid>/task/<tid>/status. */
export function processThreadCapabilities(pid: number | 'self' = 'self'): ThreadCapabilities[] {
  const out: ThreadCapabilities[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    let status: string;
    try {
      status = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    } catch {
      continue; // The thread ended meanwhile.
    }
    const field = (name: string) => status.match(new RegExp(`^${name}:\\s*(\\S+)`, 'm'))?.[1] ?? '';
    out.push({
      tid: Number(tid),
      name: field('Name'),
      effective: BigInt(`0x${field('CapEff')}`),
      permitted: BigInt(`0x${field('CapPrm')}`),
      bounding: BigInt(`0x${field('CapBnd')}`),
    });
  }
  return out;
}

/** The threads of this process holding a capability outside `keep` (empty: the drop holds everywhere). */
export function threadsBeyond(keep: Set<string>): ThreadCapabilities[] {
  const mask = capabilityMask(keep);
  return processThreadCapabilities().filter((t) => (t.permitted & ~mask) !== 0n || (t.effective & ~mask) !== 0n);
}
