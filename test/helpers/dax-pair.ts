import { DaxMapper } from '../../src/dax-mapper/dax-mapper';
import { DaxWindow } from '../../src/guest/dax-window';
import { UnixStreamSocket, close } from '../../src/sys';
import { BackendChannel } from '../../src/vhost-user/backend-channel';
import { Connection } from '../../src/vhost-user/connection';
import { U64, encode } from '../../src/vhost-user/messages';
import { VHOST_USER_REPLY_MASK } from '../../src/vhost-user/protocol';

/**
 * The daemon's DaxMapper and the guest's DaxWindow joined by a real back-end
 * channel (a socketpair), without the rest of either side.
 */
export function daxPair(windowSize: number, options: { refuse?: boolean } = {}) {
  const [backendEnd, frontendEnd] = UnixStreamSocket.pair();
  const window = new DaxWindow(windowSize);
  const frontend = new Connection(frontendEnd);
  frontend.start(
    (msg) => {
      const status = options.refuse ? 1n : window.handleBackendRequest(msg);
      for (const fd of msg.fds.splice(0)) close(fd);
      frontend.send(msg.request, VHOST_USER_REPLY_MASK, encode(U64, { value: status }));
    },
    () => undefined,
  );
  const channel = new BackendChannel(backendEnd, true, () => undefined);
  const mapper = new DaxMapper(BigInt(windowSize));
  mapper.setBackendChannel(channel);
  return {
    window,
    mapper,
    close(): void {
      mapper.reset();
      channel.close();
      frontend.close();
      window.close();
    },
  };
}
