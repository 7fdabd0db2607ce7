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

  it('start the daemon the way the --fd tests exercise it: the socket as fd 3', () => {
    const service = fs.readFileSync(path.join(UNITS, 'virtiofsd-ts@.service'), 'utf8');
    expect(service).toMatch(/^ExecStart=\/usr\/bin\/virtiofsd-ts --fd 3 --shared-dir /m);
    const socket = fs.readFileSync(path.join(UNITS, 'virtiofsd-ts@.socket'), 'utf8');
    expect(socket).toMatch(/^Accept=no$/m);
  });
});
