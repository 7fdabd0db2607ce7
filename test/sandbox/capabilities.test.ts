/**
 * Capability dropping: the --modcaps syntax, the masks, and in child
 * processes what the kernel then enforces, thread by thread.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_CAPABILITIES, capabilityMask, capabilityName, keepSet, parseModcaps } from '../../src/sandbox/capabilities';
import { ensureBuilt } from '../helpers/backends';

const REPO = path.resolve(__dirname, '../..');
const CAPS_JS = path.join(REPO, 'dist/sandbox/capabilities.js');
/** CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, SETGID 6, SETUID 7, MKNOD 27, SETFCAP 31. */
const DEFAULT_MASK = 0x880000dbn;

const CAP_NET_BIND_SERVICE = 10n;
const effective = BigInt(`0x${fs.readFileSync('/proc/self/status', 'utf8').match(/^CapEff:\s*(\S+)/m)![1]}`);
const privileged = process.getuid?.() === 0 && (effective & (1n << CAP_NET_BIND_SERVICE)) !== 0n;
const unprivilegedPorts = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8'));
const PRIVILEGED_PORT = 1000;
const canTest = privileged && unprivilegedPorts > PRIVILEGED_PORT;
const SKIP = canTest ? '' : ` [skipped: needs root with CAP_NET_BIND_SERVICE and port ${PRIVILEGED_PORT} privileged]`;

function runChild(script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', script], { cwd: REPO, timeout: 20_000 }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: unknown }) | null;
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, stdout, stderr });
    });
  });
}

/** A child-side snippet: tries to bind PRIVILEGED_PORT, calls back with 'ok' or the error code. */
const BIND = `
  const tryBind = (cb) => {
    const s = require('net').createServer();
    s.once('error', (e) => cb(e.code));
    s.listen(${PRIVILEGED_PORT}, '127.0.0.1', () => s.close(() => cb('ok')));
  };
  const threads = () => require('fs').readdirSync('/proc/self/task').map((t) => {
    const st = require('fs').readFileSync('/proc/self/task/' + t + '/status', 'utf8');
    const f = (n) => st.match(new RegExp('^' + n + ':\\\\s*(\\\\S+)', 'm'))[1];
    return { tid: Number(t), name: f('Name'), eff: f('CapEff'), prm: f('CapPrm'), bnd: f('CapBnd'), groups: st.match(/^Groups:(.*)$/m)[1].trim() };
  });
`;

beforeAll(() => ensureBuilt(), 180_000);

describe('--modcaps', () => {
  it("parses virtiofsd's syntax: +/- items separated by ':' or ',', names in any case, with or without CAP_", () => {
    const base = new Set(DEFAULT_CAPABILITIES);
    const caps = parseModcaps('+sys_admin:-fsetid,+CAP_NET_RAW:-Cap_Mknod', base);
    expect([...caps].sort()).toEqual(['CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'NET_RAW', 'SETFCAP', 'SETGID', 'SETUID', 'SYS_ADMIN']);
    // Left to right: the last word wins; the base is not modified.
    expect(parseModcaps('+chown:-chown', new Set()).size).toBe(0);
    expect(parseModcaps('-chown:+chown', new Set()).has('CHOWN')).toBe(true);
    expect(base.has('FSETID')).toBe(true);
  });

  it('refuses unknown names, items without + or -, and empty items, saying what is wrong', () => {
    expect(() => parseModcaps('+sys_adnim', new Set())).toThrow(/unknown capability 'sys_adnim'/);
    expect(() => parseModcaps('sys_admin', new Set())).toThrow(/'sys_admin' must start with \+ or -/);
    expect(() => parseModcaps('+chown::-mknod', new Set())).toThrow(/empty item/);
    expect(() => parseModcaps('', new Set())).toThrow(/empty item/);
    expect(() => capabilityName('CAP_')).toThrow(/unknown capability/);
  });

  it('keeps the defaults, adds DAC_READ_SEARCH for file handles, and will not remove it then', () => {
    expect(capabilityMask(keepSet({ inodeFileHandles: false }))).toBe(DEFAULT_MASK);
    expect(capabilityMask(keepSet({ inodeFileHandles: true }))).toBe(DEFAULT_MASK | 4n);
    expect(keepSet({ inodeFileHandles: false, modcaps: '-mknod:-setfcap' }).has('MKNOD')).toBe(false);
    expect(() => keepSet({ inodeFileHandles: true, modcaps: '-dac_read_search' })).toThrow(/cannot remove DAC_READ_SEARCH/);
  });
});

describe('dropping capabilities in a child process', () => {
  it.skipIf(!canTest)(
    `dropCapabilities() reduces the calling thread: CapEff shows it, binding a privileged port fails with EACCES${SKIP}`,
    async () => {
      const r = await runChild(`${BIND}
      const caps = require(${JSON.stringify(CAPS_JS)});
      tryBind((before) => {
        const after = caps.dropCapabilities(caps.keepSet({ inodeFileHandles: false }));
        tryBind((afterBind) => {
          console.log(JSON.stringify({ before, afterBind, eff: after.effective.toString(16), prm: after.permitted.toString(16), pid: process.pid, threads: threads() }));
        });
      });`);
      expect(r.code, r.stderr).toBe(0);
      const rep = JSON.parse(r.stdout) as {
        before: string;
        afterBind: string;
        eff: string;
        prm: string;
        pid: number;
        threads: { tid: number; eff: string; prm: string; bnd: string }[];
      };
      expect(rep.before).toBe('ok');
      expect(rep.afterBind).toBe('EACCES');
      expect([rep.eff, rep.prm]).toEqual(['880000db', '880000db']);
      const main = rep.threads.find((t) => t.tid === rep.pid)!;
      expect([BigInt(`0x${main.eff}`), BigInt(`0x${main.prm}`), BigInt(`0x${main.bnd}`)]).toEqual([
        DEFAULT_MASK,
        DEFAULT_MASK,
        DEFAULT_MASK,
      ]);
      // The finding behind the design: capabilities are per thread, and Node's other threads
      // (V8's platform workers, started before any JavaScript) keep everything they had.
      const others = rep.threads.filter((t) => t.tid !== rep.pid);
      expect(others.length).toBeGreaterThan(0);
      expect(others.every((t) => (BigInt(`0x${t.eff}`) & ~DEFAULT_MASK) !== 0n)).toBe(true);
    },
  );

  it.skipIf(!canTest)(`restrictForExec() then exec: every thread of the new Node has exactly the keep set${SKIP}`, async () => {
    const grandchild = `${BIND}
      tryBind((bind) => {
        // Let the pool start too: its threads come from the main thread, after exec.
        require('fs').promises.readFile('/proc/self/status').then(() => console.log(JSON.stringify({ bind, threads: threads() })));
      });`;
    const r = await runChild(`
      const caps = require(${JSON.stringify(CAPS_JS)});
      caps.restrictForExec(caps.keepSet({ inodeFileHandles: false }));
      require('child_process').execFile(process.execPath, ['-e', ${JSON.stringify(grandchild)}], (err, out, errOut) => {
        if (err) { console.error(errOut); process.exit(1); }
        process.stdout.write(out);
      });`);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { bind: string; threads: { name: string; eff: string; prm: string; bnd: string }[] };
    expect(rep.bind).toBe('EACCES');
    expect(rep.threads.length).toBeGreaterThan(5);
    for (const t of rep.threads) {
      expect([t.name, BigInt(`0x${t.eff}`), BigInt(`0x${t.prm}`), BigInt(`0x${t.bnd}`)]).toEqual([
        t.name,
        DEFAULT_MASK,
        DEFAULT_MASK,
        DEFAULT_MASK,
      ]);
    }
  });

  it.skipIf(!canTest)(`dropSupplementaryGroups() leaves no supplementary group on any thread${SKIP}`, async () => {
    const r = await runChild(`${BIND}
      process.setgroups([1, 2, 3]);
      const before = threads()[0].groups;
      require(${JSON.stringify(CAPS_JS)}).dropSupplementaryGroups();
      console.log(JSON.stringify({ before, after: threads().map((t) => t.groups) }));`);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { before: string; after: string[] };
    expect(rep.before).toBe('1 2 3');
    expect(rep.after.length).toBeGreaterThan(1);
    expect(rep.after.every((g) => g === '')).toBe(true);
  });
});
