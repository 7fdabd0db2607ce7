/**
 * The daemon's confinement, in two stages:
 *
 * 1. `relaunchIntoSandbox` (before any front-end exists): if the sandbox
 *    needs namespaces, or capabilities lowered in every thread, the process
 *    execs native/sandbox_launcher.c, which unshares (mount, pid, network,
 *    and a user namespace when unprivileged), lowers the capability bounding
 *    set, forks, and execs Node again inside (pid 1 of the new pid namespace).
 *    Node has threads before any JavaScript runs, and those two unshare
 *    flags need a caller without them: hence a separate program.
 * 2. `enterSandbox` (in the relaunched daemon, after every module is loaded
 *    and the listening socket exists): the share becomes the root (pivot_root
 *    or chroot), supplementary groups go, the main thread keeps only the
 *    capabilities the options need, and seccomp filters every thread.
 *
 * docs/security.md says what each mode guarantees.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DaemonConfig } from '../config';
import { applyNofileLimit } from '../limits';
import type { Logger } from '../log';
import { geteuid } from '../sys/fs';
import { execve } from '../sys/mount';
import { capabilityMask, dropCapabilities, dropSupplementaryGroups, keepSet } from './capabilities';
import { chrootIntoShare, pivotIntoShare, type SandboxedRoot } from './mounts';
import { installSeccomp, ioUringInstances, type SeccompMode } from './seccomp';

export { SANDBOX_MODES, type SandboxMode } from './modes';
import type { SandboxMode } from './modes';

/** Set in the environment of the daemon the launcher runs, so that it does not relaunch again. */
export const INSIDE_ENV = 'VIRTIOFSD_TS_SANDBOXED';

/** The launcher program, built beside the addon by node-gyp, or the package's prebuilt one. */
export function launcherPath(): string {
  const root = path.resolve(__dirname, '..', '..');
  const built = path.join(root, 'build', 'Release', 'virtiofsd-ts-sandbox');
  const prebuilt = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'virtiofsd-ts-sandbox');
  return fs.existsSync(built) || !fs.existsSync(prebuilt) ? built : prebuilt;
}

export interface SandboxRequest {
  mode: SandboxMode;
  /** Whether the user chose the mode (else namespace was the default, and may fall back). */
  explicit: boolean;
  /** User-namespace maps (unprivileged namespace mode), "INSIDE:OUTSIDE:COUNT" or libvirt's ":I:O:C:". */
  uidMap: string[];
  gidMap: string[];
  /** The socket file the daemon creates, for the launcher to remove once the daemon has ended. */
  socketPath?: string;
  /** Capability bitmask the launcher leaves every thread (bounding, permitted, effective). */
  launcherCaps?: bigint;
  /** More socket files of ours (--metrics-socket), removed like `socketPath`. */
  alsoRemove?: string[];
  /** The pid file, removed by the launcher once the daemon has ended and released its lock. */
  pidFile?: string;
  /** The seccomp mode the daemon will install (io_uring rings of this process must be gone by then). */
  seccomp?: SeccompMode;
  /** fds the daemon inherits and needs (e.g. --fd, LISTEN_FDS). */
  inheritedFds: number[];
}

/** Why an unprivileged process cannot create a user namespace here, or null if it can. */
export function userNamespaceObstacle(): string | null {
  const read = (p: string): string | null => {
    try {
      return fs.readFileSync(p, 'utf8').trim();
    } catch {
      return null;
    }
  };
  if (read('/proc/sys/user/max_user_namespaces') === '0') return 'user namespaces are disabled (user.max_user_namespaces = 0)';
  if (read('/proc/sys/kernel/unprivileged_userns_clone') === '0') {
    return 'unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)';
  }
  return null;
}

/**
 * The mode the daemon will really use: namespace is the default only where
 * it can work; a mode the user asked for that cannot work is an error.
 * `warn` receives the one line saying what was given up.
 */
export function effectiveMode(req: SandboxRequest, warn: (msg: string) => void): SandboxMode {
  // Relaunched (maybe as root of a user namespace): the launcher already ran on this decision.
  if (process.env[INSIDE_ENV] === '1') return req.mode;
  const root = geteuid() === 0;
  if (req.mode === 'chroot' && !root) throw new Error("--sandbox chroot needs root (use '--sandbox namespace' unprivileged)");
  if ((req.uidMap.length > 0 || req.gidMap.length > 0) && (root || req.mode !== 'namespace')) {
    throw new Error('--uid-map/--gid-map are for an unprivileged daemon in --sandbox namespace');
  }
  if (req.mode === 'namespace' && !root) {
    const obstacle = userNamespaceObstacle();
    if (obstacle) {
      if (req.explicit) throw new Error(`--sandbox namespace: ${obstacle}`);
      warn(`sandbox: ${obstacle}; running with --sandbox none (the share is still enforced by the daemon itself)`);
      return 'none';
    }
  }
  return req.mode;
}

/**
 * Stage 1: execs the launcher when the mode needs it and we are not inside
 * yet. Returns normally when nothing is to be done (mode none unprivileged,
 * or already relaunched); otherwise does not return.
 */
export function relaunchIntoSandbox(mode: SandboxMode, req: SandboxRequest): void {
  if (process.env[INSIDE_ENV] === '1') return;
  const root = geteuid() === 0;
  const namespace = mode === 'namespace';
  // This Node's libuv holds io_uring rings the filter would kill it for: start it again without.
  const rings = (req.seccomp ?? 'none') !== 'none' && ioUringInstances() > 0;
  if (!namespace && !(root && req.launcherCaps !== undefined) && !rings) return;
  const launcher = launcherPath();
  if (!fs.existsSync(launcher)) {
    if (rings && !namespace) {
      throw new Error(
        `sandbox: this Node's libuv uses io_uring, which the seccomp filter does not allow, and ${launcher} (which starts Node without it) is missing: npm install builds it, or use --seccomp none`,
      );
    }
    throw new Error(`sandbox: ${launcher} is missing (npm install builds it), or use --sandbox none`);
  }
  const args = [launcher];
  if (namespace) args.push('--namespace');
  if (namespace && !root) args.push('--userns');
  if ((req.seccomp ?? 'none') !== 'none') args.push('--no-io-uring');
  for (const m of req.uidMap) args.push('--uid-map', m);
  for (const m of req.gidMap) args.push('--gid-map', m);
  if (root && req.launcherCaps !== undefined) args.push('--caps', req.launcherCaps.toString(16));
  if (mode !== 'none' && req.socketPath) args.push('--remove', req.socketPath);
  for (const p of mode !== 'none' ? (req.alsoRemove ?? []) : []) args.push('--remove', p);
  if (mode !== 'none' && req.pidFile) args.push('--remove-pidfile', req.pidFile);
  args.push('--', process.execPath, ...process.execArgv, ...process.argv.slice(1));
  execve(launcher, args, { ...process.env, [INSIDE_ENV]: '1' }, [0, 1, 2, ...req.inheritedFds]);
}

/** Stage 2, the file-system part: where the share is from now on, and /proc/self/fd. */
export function enterRoot(mode: SandboxMode, sharedDir: string): SandboxedRoot | null {
  if (mode === 'namespace') {
    if (process.env[INSIDE_ENV] !== '1' || process.pid !== 1) throw new Error('sandbox: namespace mode entered outside the launcher');
    return pivotIntoShare(sharedDir);
  }
  if (mode === 'chroot') return chrootIntoShare(sharedDir);
  return null;
}

export type { SandboxedRoot };

/** What stage 2 applies to the process, besides the root. */
export interface ProcessConfinement {
  seccomp: SeccompMode;
  /** Capabilities the main thread keeps; null: leave them (an embedded daemon). */
  capabilities: Set<string> | null;
  log: Logger;
}

/** The capabilities the daemon keeps under `config`; null when it is not ours to confine (embedded, no sandbox). */
export function processCapabilities(config: DaemonConfig): Set<string> | null {
  if (config.sandbox === undefined) return null;
  return keepSet({ modcaps: config.modcaps, inodeFileHandles: (config.inodeFileHandles ?? 'never') !== 'never' });
}

/**
 * Stage 1 for the command: decides the mode (namespace falls back to none
 * where it cannot work, unless asked for), applies --rlimit-nofile while that
 * is still allowed, and execs the launcher when the mode needs it. Returns the
 * mode the daemon runs with (in the process that goes on to serve).
 */
export function prepareSandbox(config: DaemonConfig, warn: (msg: string) => void): SandboxMode {
  const req: SandboxRequest = {
    mode: config.sandbox ?? 'namespace',
    explicit: config.sandboxExplicit ?? false,
    uidMap: config.uidMapNs ?? [],
    gidMap: config.gidMapNs ?? [],
    socketPath: config.socketPath,
    alsoRemove: config.metricsSocket !== undefined ? [config.metricsSocket] : [],
    pidFile: config.pidFile,
    seccomp: config.seccomp,
    // The pid file's lock, the notify and syslog sockets (daemon.ts openOutside) stay open too.
    inheritedFds: [...(config.fd !== undefined ? [config.fd] : []), ...(config.inheritFds ?? [])],
  };
  if (process.env[INSIDE_ENV] === '1') return req.mode;
  const mode = effectiveMode(req, warn);
  if (geteuid() !== 0) {
    warn(
      `running unprivileged (uid ${geteuid()}): new files belong to this user, and changing owners, ` +
        'creating device nodes and acting as the guest user are unavailable',
    );
  }
  // Raising RLIMIT_NOFILE above the hard limit needs CAP_SYS_RESOURCE, which the
  // relaunched daemon no longer has: do it now (rlimits survive exec and fork).
  applyNofileLimit(config.rlimitNofile, (_level, msg) => warn(msg));
  if (geteuid() === 0) {
    // Every thread the relaunched Node starts holds no more than this: what the
    // file server keeps, plus what entering the root needs (the main thread drops it after).
    const keep = processCapabilities({ ...config, sandbox: mode })!;
    if (mode === 'namespace') keep.add('SYS_ADMIN');
    if (mode === 'chroot') keep.add('SYS_CHROOT');
    req.launcherCaps = capabilityMask(keep);
  }
  relaunchIntoSandbox(mode, req);
  return mode;
}

/**
 * Stage 2, the process part, last thing before serving: no supplementary
 * groups, the main thread down to the capabilities the options need (the
 * launcher already bounded every other thread), then the seccomp filter on
 * every thread.
 */
export function confineProcess(c: ProcessConfinement): void {
  if (c.capabilities) {
    if (geteuid() === 0) {
      try {
        dropSupplementaryGroups();
      } catch (err) {
        // In a user namespace with setgroups denied there are none to drop.
        c.log('debug', `sandbox: supplementary groups kept: ${(err as Error).message}`);
      }
    }
    dropCapabilities(c.capabilities);
  }
  if (c.seccomp !== 'none') installSeccomp(c.seccomp);
}
