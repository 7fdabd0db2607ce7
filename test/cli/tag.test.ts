// --tag: the virtio-fs tag the back-end serves as device config (GET_CONFIG),
// for QEMU's generic vhost-user-test-device-pci; vhost-user-fs-pci builds
// its own config and needs none.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { UsageError, parseArgs } from '../../src/cli';
import { Daemon } from '../../src/daemon';
import { VhostUserFrontend } from '../../src/guest/frontend';
import { ConfigHeader, decode, encode } from '../../src/vhost-user/messages';
import { FrontendRequest, ProtocolFeature } from '../../src/vhost-user/protocol';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-tag-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function parse(...extra: string[]) {
  const parsed = parseArgs(['--socket-path', path.join(dir, 'sock'), '--shared-dir', dir, ...extra]);
  if (parsed.kind !== 'daemon') throw new Error('expected a daemon config');
  return parsed.config;
}

describe('--tag', () => {
  it('takes 1 to 36 bytes; absent, there is no tag', () => {
    expect(parse().tag).toBeUndefined();
    expect(parse('--tag', 'myfs').tag).toBe('myfs');
    expect(parse('--tag', 'x'.repeat(36)).tag).toBe('x'.repeat(36));
    for (const bad of ['', 'x'.repeat(37), 'é'.repeat(19)]) expect(() => parse('--tag', bad), bad).toThrow(UsageError);
  });

  it('makes the daemon offer VHOST_USER_PROTOCOL_F_CONFIG and serve the virtio-fs config; without it neither', async () => {
    for (const tag of ['myfs', undefined]) {
      const socketPath = path.join(dir, `sock-${tag ?? 'none'}`);
      const daemon = new Daemon({
        ...parse(...(tag ? ['--tag', tag] : [])),
        socketPath,
        sandbox: undefined,
        seccomp: undefined,
        logLevel: 'error',
      });
      daemon.start();
      const frontend = await VhostUserFrontend.connect(socketPath, { requestQueues: 1, ramRegions: [1 << 20, 1 << 20] });
      try {
        expect((frontend.backendProtocolFeatures & (1n << BigInt(ProtocolFeature.CONFIG))) !== 0n).toBe(tag !== undefined);
        const reply = await frontend.call(
          FrontendRequest.GET_CONFIG,
          Buffer.concat([encode(ConfigHeader, { offset: 0, size: 40, flags: 0 }), Buffer.alloc(40)]),
        );
        if (tag) {
          const config = reply.payload.subarray(ConfigHeader.size);
          expect(config.subarray(0, 36).toString().replace(/\0+$/, '')).toBe(tag);
          // One request queue: what a generic device with num_vqs=2 has.
          expect(config.readUInt32LE(36)).toBe(1);
        } else {
          expect(decode(ConfigHeader, reply.payload).size).toBe(0);
        }
      } finally {
        frontend.close();
        daemon.stop();
      }
    }
  });
});
