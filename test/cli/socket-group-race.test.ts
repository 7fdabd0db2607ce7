/**
 * --socket-group must never chown/chmod through a path someone else can swap:
 * whoever may write to the socket's directory could otherwise replace the
 * fresh socket file by a symlink to any file between bind() and chown(), and
 * the daemon (root) would give that file to the group with mode 0660.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { UnixListener } from '../../src/sys';

describe('UnixListener.listen with a group', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsd-sockgrp-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('gives the socket itself the group and mode 0660, never a file swapped in for it', async () => {
    const victim = path.join(dir, 'victim');
    fs.writeFileSync(victim, 'root only\n', { mode: 0o600 });
    fs.chownSync(victim, 0, 0);
    const sock = path.join(dir, 'vfsd.sock');
    // The attacker: renames a fresh symlink to the victim over the socket path, as fast as it can.
    const attacker = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('fs'); const [sock, victim] = process.argv.slice(1); let i = 0;
         for (;;) { const tmp = sock + '.l' + (i++ & 1); try { fs.symlinkSync(victim, tmp); fs.renameSync(tmp, sock); } catch {} }`,
        sock,
        victim,
      ],
      { stdio: 'ignore' },
    );
    try {
      let bound = 0;
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline) {
        try {
          const listener = UnixListener.listen(sock, { gid: 4242 });
          bound++;
          const st = fs.fstatSync(listener.fd);
          expect(st.isSocket()).toBe(true);
          listener.close(false);
        } catch {
          // The attacker's symlink took the name first (EEXIST/EADDRINUSE): try again.
        }
        try {
          fs.unlinkSync(sock);
        } catch {
          /* already gone */
        }
        await new Promise((r) => setImmediate(r));
      }
      expect(bound).toBeGreaterThan(0);
    } finally {
      attacker.kill('SIGKILL');
    }
    const st = fs.statSync(victim);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.gid).toBe(0);
  }, 20_000);

  it('is born 0660 with the group, and leaves no private directory behind', () => {
    const sock = path.join(dir, 'vfsd.sock');
    const listener = UnixListener.listen(sock, { gid: 4242 });
    try {
      const st = fs.lstatSync(sock);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o660);
      expect(st.gid).toBe(4242);
      expect(fs.readdirSync(dir)).toEqual(['vfsd.sock']);
    } finally {
      listener.close(true);
    }
    expect(fs.existsSync(sock)).toBe(false);
  });

  it('never replaces a file that is not a socket', () => {
    const sock = path.join(dir, 'vfsd.sock');
    fs.writeFileSync(sock, 'precious');
    expect(() => UnixListener.listen(sock, { gid: 4242 })).toThrow();
    expect(fs.readFileSync(sock, 'utf8')).toBe('precious');
    expect(fs.readdirSync(dir)).toEqual(['vfsd.sock']);
  });
});
