import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const REPO = path.resolve(__dirname, '../..');
const UNITS = path.join(REPO, 'contrib', 'systemd');
const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

describe('contrib/systemd units', () => {
  it.skipIf(!hasAnalyze)(
    `pass systemd-analyze verify with no warning${hasAnalyze ? '' : ' [skipped: systemd-analyze is not installed]'}`,
    () => {
      // Point ExecStart at this checkout so verify can check the command exists.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'units-'));
      try {
        const service = fs
          .readFileSync(path.join(UNITS, 'virtiofsd-ts@.service'), 'utf8')
          .replace('/usr/bin/virtiofsd-ts', `${process.execPath} ${path.join(REPO, 'bin', 'virtiofsd-ts.js')}`);
        fs.writeFileSync(path.join(dir, 'virtiofsd-ts@.service'), service);
        fs.copyFileSync(path.join(UNITS, 'virtiofsd-ts@.socket'), path.join(dir, 'virtiofsd-ts@.socket'));
        const r = spawnSync('systemd-analyze', ['verify', './virtiofsd-ts@share.socket', './virtiofsd-ts@share.service'], {
          cwd: dir,
          encoding: 'utf8',
        });
        expect(r.stderr).toBe('');
        expect(r.status).toBe(0);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it('start the daemon socket-activated (LISTEN_FDS, as test/ops/systemd.test.ts runs it) with Type=notify', () => {
    const service = fs.readFileSync(path.join(UNITS, 'virtiofsd-ts@.service'), 'utf8');
    expect(service).toMatch(/^ExecStart=\/usr\/bin\/virtiofsd-ts --shared-dir /m);
    expect(service).not.toMatch(/^ExecStart=.*--fd/m);
    expect(service).toMatch(/^Type=notify$/m);
    // The daemon that notifies is the launcher's child in namespace mode.
    expect(service).toMatch(/^NotifyAccess=all$/m);
    const socket = fs.readFileSync(path.join(UNITS, 'virtiofsd-ts@.socket'), 'utf8');
    expect(socket).toMatch(/^Accept=no$/m);
  });

  it.skipIf(!hasAnalyze)('score "OK" (at most 3.0) in systemd-analyze security', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'units-'));
    try {
      fs.copyFileSync(path.join(UNITS, 'virtiofsd-ts@.service'), path.join(dir, 'virtiofsd-ts@share.service'));
      const r = spawnSync('systemd-analyze', ['security', '--offline=yes', '--no-pager', './virtiofsd-ts@share.service'], {
        cwd: dir,
        encoding: 'utf8',
      });
      const m = /Overall exposure level for virtiofsd-ts@share\.service: ([\d.]+)/.exec(r.stdout);
      expect(m, r.stdout + r.stderr).not.toBeNull();
      expect(Number(m![1])).toBeLessThanOrEqual(3.0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('contrib/qemu vhost-user descriptor', () => {
  it("is the JSON QEMU and libvirt read (docs/interop/vhost-user.json), sorting after Debian's 50-qemu-virtiofsd.json", () => {
    const files = fs.readdirSync(path.join(REPO, 'contrib', 'qemu'));
    expect(files).toEqual(['60-virtiofsd-ts.json']);
    // Lower names win: the distribution's virtiofsd stays the default until an admin says otherwise.
    expect(['50-qemu-virtiofsd.json', files[0]].sort()[0]).toBe('50-qemu-virtiofsd.json');
    const d = JSON.parse(fs.readFileSync(path.join(REPO, 'contrib', 'qemu', files[0]), 'utf8'));
    expect(d).toEqual({ description: expect.any(String), type: 'fs', binary: '/usr/bin/virtiofsd-ts' });
  });
});
