import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Daemon } from '../../src/daemon';
import { FUSE_ROOT_ID, FuseDriver } from '../../src/guest/fuse-driver';

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

function startDaemon(sharedDir: string, socketPath: string): Daemon {
  const daemon = new Daemon({ socketPath, sharedDir, cache: 'auto', readonly: false, logLevel: 'error' }, () => undefined);
  daemon.start();
  return daemon;
}

describe('the TypeScript guest across a back-end restart', () => {
  it('stops its rings, re-attaches to a new back-end with the same RAM and rings, and carries on', async () => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'reconnect-'));
    const share = path.join(base, 'share');
    fs.mkdirSync(share);
    fs.writeFileSync(path.join(share, 'f'), 'before the restart');
    const sock = path.join(base, 'sock');
    cleanups.push(() => fs.rmSync(base, { recursive: true, force: true }));

    let daemon = startDaemon(share, sock);
    const fuse = await FuseDriver.connect(sock, { requestQueues: 2, timeoutMs: 5000 });
    cleanups.push(() => fuse.close());
    await fuse.init();
    for (let i = 0; i < 5; i++) await fuse.lookup(FUSE_ROOT_ID, 'f');
    const bases = await fuse.frontend.stop();
    expect(bases[0]).toBe(0); // nothing went through hiprio
    expect(bases[1] + bases[2]).toBe(6); // INIT + 5 LOOKUPs over the request queues
    fuse.frontend.disconnect();
    expect(await daemon.done).toBe(0);

    daemon = startDaemon(share, sock);
    cleanups.push(() => daemon.stop());
    await fuse.frontend.attach(sock);
    // A new back-end has a new FUSE session: INIT again, as a guest does after a device reset.
    await fuse.init();
    const entry = await fuse.lookup(FUSE_ROOT_ID, 'f');
    const { fh } = await fuse.open(entry.nodeid, fs.constants.O_RDONLY);
    expect((await fuse.read(entry.nodeid, fh, 0, 64)).toString()).toBe('before the restart');
    // The rings resumed where they stopped rather than at 0: 6 before, INIT + LOOKUP + OPEN + READ after.
    expect(fuse.frontend.requestQueues.map((q) => q.driver.availIndex).reduce((a, b) => a + b)).toBe(6 + 4);
  });
});
