import * as fs from 'node:fs';
/**
 * A seccomp filter for the whole daemon, as virtiofsd's seccomp.rs installs:
 * an allow-list of syscalls (seccomp-syscalls.ts), every other one met with
 * the mode's action. Built here as classic BPF, without libseccomp.
 *
 * Installed with SECCOMP_FILTER_FLAG_TSYNC, so every thread of the process
 * (Node's main thread, V8's platform workers, libuv's pool) is under the same
 * filter at once, and every thread created later inherits it.
 */
import { PR_SET_NO_NEW_PRIVS, SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_TSYNC, prctl, seccompSetModeFilter } from '../sys/process';
import { ALLOW_LIST, SYSCALLS_X86_64, type SyscallName, type SyscallRule } from './seccomp-syscalls';

/** `--seccomp`: none installs nothing; the others name the action for a syscall not on the list. */
export { SECCOMP_MODES, type SeccompMode } from './modes';
import type { SeccompMode } from './modes';
export type SeccompAction = Exclude<SeccompMode, 'none'>;

// linux/seccomp.h
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_LOG = 0x7ffc0000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;
export const SECCOMP_RET_ERRNO = 0x00050000;
// linux/audit.h: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
export const AUDIT_ARCH_X86_64 = 0xc000003e;
// asm/unistd.h: x32 syscalls are x86_64 numbers with this bit, same arch value.
const X32_SYSCALL_BIT = 0x40000000;

// linux/filter.h, linux/bpf_common.h
const BPF_LD_W_ABS = 0x00 | 0x00 | 0x20;
const BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00;
const BPF_JMP_JGE_K = 0x05 | 0x30 | 0x00;
const BPF_RET_K = 0x06 | 0x00;
const BPF_MAXINSNS = 4096;

// struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
const DATA_NR = 0;
const DATA_ARCH = 4;
const dataArgLow = (i: number) => 16 + 8 * i;
const dataArgHigh = (i: number) => 16 + 8 * i + 4;

const ACTIONS: Record<SeccompAction, number> = {
  kill: SECCOMP_RET_KILL_PROCESS,
  log: SECCOMP_RET_LOG,
  trap: SECCOMP_RET_TRAP,
};

export interface SeccompOptions {
  /** Syscalls to allow besides the list (e.g. 'sendto' for a syslog socket). */
  extra?: readonly (SyscallName | SyscallRule)[];
}

interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

const stmt = (code: number, k: number): Insn => ({ code, jt: 0, jf: 0, k });
const jump = (code: number, k: number, jt: number, jf: number): Insn => {
  if (jt > 255 || jf > 255) throw new Error(`seccomp: jump offset ${Math.max(jt, jf)} does not fit struct sock_filter`);
  return { code, jt, jf, k };
};

function syscallNumber(name: string): number {
  const nr = (SYSCALLS_X86_64 as Record<string, number>)[name];
  if (nr === undefined) throw new Error(`seccomp: unknown x86_64 syscall '${name}'`);
  return nr;
}

/**
 * One rule, entered with the syscall number in A. A plain rule is
 * `jeq nr ? next : skip; ret ALLOW`. A rule with argument conditions checks
 * each argument's two 32-bit halves against its values and returns the
 * default action on a mismatch (A no longer holds nr then, and no later rule
 * could match the same syscall anyway).
 */
function ruleBlock(rule: SyscallRule, defaultAction: number): Insn[] {
  const nr = syscallNumber(rule.name);
  if (rule.errno !== undefined) {
    if (rule.args?.length) throw new Error(`seccomp: ${rule.name}: an errno rule takes no argument conditions`);
    return [jump(BPF_JMP_JEQ_K, nr, 0, 1), stmt(BPF_RET_K, SECCOMP_RET_ERRNO | (rule.errno & 0xffff))];
  }
  if (!rule.args?.length) return [jump(BPF_JMP_JEQ_K, nr, 0, 1), stmt(BPF_RET_K, SECCOMP_RET_ALLOW)];
  // Body laid out first with absolute targets, then the jeq on nr in front of it.
  const body: { insn: Insn; jt?: 'next' | 'fail' | number; jf?: 'next' | 'fail' | number }[] = [];
  for (const cond of rule.args) {
    if (!Number.isInteger(cond.index) || cond.index < 0 || cond.index > 5) throw new Error(`seccomp: no argument ${cond.index}`);
    if (cond.values.length === 0) throw new Error(`seccomp: ${rule.name}: a condition without values`);
    // High half must be 0: the values are all below 2^32.
    body.push({ insn: stmt(BPF_LD_W_ABS, dataArgHigh(cond.index)) });
    body.push({ insn: { code: BPF_JMP_JEQ_K, jt: 0, jf: 0, k: 0 }, jt: 'next', jf: 'fail' });
    body.push({ insn: stmt(BPF_LD_W_ABS, dataArgLow(cond.index)) });
    const afterValues = body.length + cond.values.length;
    cond.values.forEach((v, i) => {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`seccomp: ${rule.name}: value ${v} is not a 32-bit unsigned`);
      const last = i === cond.values.length - 1;
      body.push({ insn: { code: BPF_JMP_JEQ_K, jt: 0, jf: 0, k: v >>> 0 }, jt: afterValues, jf: last ? 'fail' : 'next' });
    });
  }
  const allowAt = body.length;
  const failAt = allowAt + 1;
  const resolved = body.map(({ insn, jt, jf }, at) => {
    if (insn.code !== BPF_JMP_JEQ_K) return insn;
    const target = (t: 'next' | 'fail' | number | undefined) => (t === 'fail' ? failAt : t === 'next' || t === undefined ? at + 1 : t);
    return jump(insn.code, insn.k, target(jt) - at - 1, target(jf) - at - 1);
  });
  resolved.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW), stmt(BPF_RET_K, defaultAction));
  return [jump(BPF_JMP_JEQ_K, nr, 0, resolved.length), ...resolved];
}

/** The filter program, as the struct sock_filter array the kernel takes (8 bytes per instruction). */
export function buildSeccompFilter(action: SeccompAction, opts: SeccompOptions = {}): Buffer {
  const defaultAction = ACTIONS[action];
  if (defaultAction === undefined) throw new Error(`seccomp: unknown action '${String(action)}'`);
  const rules: SyscallRule[] = [...ALLOW_LIST];
  for (const extra of opts.extra ?? []) {
    const rule = typeof extra === 'string' ? { name: extra } : extra;
    syscallNumber(rule.name);
    // An unconditional extra replaces a conditional rule for the same call; a duplicate adds nothing.
    const at = rules.findIndex((r) => r.name === rule.name);
    if (at < 0) rules.push(rule);
    else if (!rule.args?.length) rules[at] = rule;
  }
  const prog: Insn[] = [
    stmt(BPF_LD_W_ABS, DATA_ARCH),
    jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
    // Another ABI (i386 via int 0x80) has other numbers: nothing on the list means the same there.
    stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
    stmt(BPF_LD_W_ABS, DATA_NR),
    jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
    stmt(BPF_RET_K, defaultAction),
    ...rules.flatMap((r) => ruleBlock(r, defaultAction)),
    stmt(BPF_RET_K, defaultAction),
  ];
  if (prog.length > BPF_MAXINSNS) throw new Error(`seccomp: ${prog.length} instructions, the kernel takes ${BPF_MAXINSNS}`);
  const buf = Buffer.alloc(prog.length * 8);
  prog.forEach((insn, i) => {
    buf.writeUInt16LE(insn.code, i * 8);
    buf.writeUInt8(insn.jt, i * 8 + 2);
    buf.writeUInt8(insn.jf, i * 8 + 3);
    buf.writeUInt32LE(insn.k >>> 0, i * 8 + 4);
  });
  return buf;
}

/**
 * Confines every thread of this process to the allow-list; a syscall off the
 * list kills the process (kill: SIGSYS, core dump), is allowed but written to
 * the audit log / dmesg (log: "type=1326 ... syscall=N"), or raises SIGSYS in
 * the calling thread (trap). Sets no_new_privs first (the kernel requires it
 * of an unprivileged caller, and an exec could never regain privileges).
 * Irreversible. Throws if the kernel refuses or a thread cannot be synced.
 */
export function installSeccomp(action: SeccompAction, opts: SeccompOptions = {}): void {
  if (process.arch !== 'x64') throw new Error(`seccomp: the allow-list is for x86_64, not ${process.arch}`);
  const filter = buildSeccompFilter(action, opts);
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  // FLAG_LOG: every action but ALLOW is logged, so trap and kill leave a record too.
  const tid = seccompSetModeFilter(SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG, filter);
  if (tid !== 0) throw new Error(`seccomp: thread ${tid} could not be put under the filter (TSYNC)`);
}

/**
 * io_uring instances this process holds. A Node built with a system libuv
 * (Debian's nodejs: libuv 1.50) sets rings up when its event loop starts and
 * enters them for file and epoll work later; io_uring is not on the allow-list
 * (its operations would run past the filter), so such a process would be
 * killed at its first use after the filter. The launcher starts Node with
 * io_uring answering ENOSYS, and libuv then keeps to epoll and its pool.
 */
export function ioUringInstances(procSelfFd = '/proc/self/fd'): number {
  let fds: string[];
  try {
    fds = fs.readdirSync(procSelfFd);
  } catch {
    // No /proc: nothing to tell (the daemon needs /proc/self/fd itself and says so when it opens it).
    return 0;
  }
  let n = 0;
  for (const fd of fds) {
    try {
      if (fs.readlinkSync(`${procSelfFd}/${fd}`) === 'anon_inode:[io_uring]') n++;
    } catch {
      // Closed meanwhile (the directory's own fd).
    }
  }
  return n;
}
