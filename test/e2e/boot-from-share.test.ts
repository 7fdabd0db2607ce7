// End to end: a Linux guest boots with the daemon's share as its root file
// system (`root=myfs rootfstype=virtiofs`, no initramfs), as the seeds did
// with OSv. The share holds a busybox root file system built here; its /init
// writes to `/`, and the host sees the result in the share.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, test } from 'vitest';
import { DAEMON_TITLE, REFERENCE, TEST_TIMEOUT, daemonCommand, expectCleanExit, useE2EEnvironment } from './harness';
import { bootGuest, describeRun, guestKernel, parseConsole } from './qemu-guest';

/** Debian's busybox-static (scripts/e2e/setup.sh installs it): one static binary for every tool. */
const BUSYBOX = '/bin/busybox';

/** PID 1 of the guest, run from the share: writes to `/`, then powers off. */
const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
root=$(awk '$2 == "/" { print $3 " " $1 }' /proc/mounts | tail -n 1)
echo "E2E-INFO root $root"
case "$root" in "virtiofs myfs") echo "E2E-OK root-is-virtiofs" ;; *) echo "E2E-FAIL root-is-virtiofs: $root" ;; esac
uname -r > /written-by-guest
mkdir -p /var/log && echo "booted from the share" > /var/log/boot.txt && echo "E2E-OK write-root"
ln -s written-by-guest /link-by-guest && echo "E2E-OK symlink"
rm /delete-me && echo "E2E-OK remove"
sync
echo "E2E-DONE"
poweroff -f
`;

/** A minimal root file system: busybox, the mount points, /init, and a file for the guest to remove. */
function buildRoot(share: string): void {
  for (const dir of ['bin', 'proc', 'dev', 'sys', 'tmp']) fs.mkdirSync(path.join(share, dir), { recursive: true });
  fs.copyFileSync(BUSYBOX, path.join(share, 'bin', 'busybox'));
  fs.chmodSync(path.join(share, 'bin', 'busybox'), 0o755);
  fs.writeFileSync(path.join(share, 'init'), INIT, { mode: 0o755 });
  fs.writeFileSync(path.join(share, 'delete-me'), 'the guest removes this\n');
}

describe(`a Linux guest booting from ${DAEMON_TITLE}'s share`, () => {
  const workDir = useE2EEnvironment();

  test(
    '6.12 guest with root=myfs rootfstype=virtiofs: /init runs from the share and what it writes to / reaches the host',
    async () => {
      const share = path.join(workDir(), 'rootfs');
      buildRoot(share);
      const socketPath = path.join(workDir(), 'vhost-fs.sock');
      const run = await bootGuest({
        daemonCommand: daemonCommand(socketPath, share, { cache: 'auto' }),
        socketPath,
        kernel: guestKernel('backports'),
        mode: 'root',
        rootFromShare: true,
      });
      const report = parseConsole(run.consoleText);
      const details = describeRun(run);
      expect(report.failed, details).toEqual([]);
      expect(report.ok, details).toEqual(['root-is-virtiofs', 'write-root', 'symlink', 'remove']);
      expectCleanExit({ share, run, report, hostRequests: [] });
      // The host sees what the guest's / got.
      const release = fs.readFileSync(path.join(share, 'written-by-guest'), 'utf8').trim();
      expect(release).toMatch(/^6\.12\./);
      expect(fs.readFileSync(path.join(share, 'var', 'log', 'boot.txt'), 'utf8')).toBe('booted from the share\n');
      expect(fs.readlinkSync(path.join(share, 'link-by-guest'))).toBe('written-by-guest');
      expect(fs.existsSync(path.join(share, 'delete-me'))).toBe(false);
      // busybox --install ran in the guest: its applet links are in the share's /bin.
      expect(fs.readlinkSync(path.join(share, 'bin', 'sh'))).toBe('/bin/busybox');
      if (!REFERENCE) console.log(`[e2e] booted from the share in ${run.qemuMs} ms`);
    },
    TEST_TIMEOUT,
  );
});
