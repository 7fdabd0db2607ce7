/**
 * The back-end channel towards a front-end that does not read it: a request
 * that cannot be sent whole leaves the stream mid-message, so the channel must
 * close rather than frame later requests after a torn one.
 */
import { describe, expect, it } from 'vitest';
import { UnixStreamSocket } from '../../src/sys';
import { BackendChannel, BackendChannelError } from '../../src/vhost-user/backend-channel';
import { BackendRequest } from '../../src/vhost-user/protocol';

describe('BackendChannel', () => {
  it('closes itself when a request cannot be sent whole, and refuses every later one', async () => {
    const [ours, theirs] = UnixStreamSocket.pair();
    const logs: string[] = [];
    const channel = new BackendChannel(ours, false, (m) => logs.push(m));
    try {
      // Nobody reads `theirs`: the socket buffer fills, and one send stops half way (EAGAIN).
      const payload = Buffer.alloc(4000);
      let first: Error | null = null;
      for (let i = 0; i < 10_000 && !first; i++) {
        first = await channel.request(BackendRequest.SHMEM_MAP, payload).then(
          () => null,
          (e: Error) => e,
        );
      }
      expect(first).toBeInstanceOf(BackendChannelError);
      expect(first!.message).toMatch(/back-end channel unusable: SHMEM_MAP could not be sent/);
      expect(logs.join('\n')).toMatch(/back-end channel unusable/);
      // Even once the front-end drains its end, nothing more goes out on the torn stream.
      const later = await channel.request(BackendRequest.SHMEM_UNMAP, Buffer.alloc(8)).then(
        () => null,
        (e: Error) => e,
      );
      expect(later).toBe(first);
    } finally {
      channel.close();
      theirs.close();
    }
  });
});
