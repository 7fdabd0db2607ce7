import { UnixStreamSocket, close } from '../sys';
import { Connection } from './connection';
import { BackendRequest, VHOST_USER_NEED_REPLY_MASK } from './protocol';
import { decode, isReply, U64 } from './messages';

export class BackendChannelError extends Error {
  override name = 'BackendChannelError';
}

/**
 * The back-end channel (SET_BACKEND_REQ_FD): requests this back-end sends to
 * the front-end, e.g. SHMEM_MAP. With REPLY_ACK every request waits for the
 * front-end's u64 answer (0 = success); replies arrive in request order.
 */
export class BackendChannel {
  private readonly connection: Connection;
  private readonly waiting: { request: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  private closedError: Error | null = null;

  constructor(
    socket: UnixStreamSocket,
    private readonly replyAck: boolean,
    private readonly log: (msg: string) => void,
  ) {
    this.connection = new Connection(socket);
    this.connection.start(
      (msg) => {
        // Replies carry no fds; anything a front-end sends along is closed, not leaked.
        for (const fd of msg.fds.splice(0)) close(fd);
        const pending = this.waiting.shift();
        if (!pending || !isReply(msg.flags) || msg.request !== pending.request) {
          this.log(`back-end channel: unexpected message ${msg.request} from the front-end`);
          pending?.reject(new BackendChannelError(`unexpected reply ${msg.request}`));
          return;
        }
        const status = msg.payload.length >= 8 ? decode(U64, msg.payload).value : 1n;
        if (status === 0n) pending.resolve();
        else pending.reject(new BackendChannelError(`front-end refused ${BackendRequest[pending.request]} (status ${status})`));
      },
      (err) => this.fail(err ?? new BackendChannelError('front-end closed the back-end channel')),
    );
  }

  /** Sends a request; resolves when the front-end acknowledges it (at once without REPLY_ACK). */
  request(request: BackendRequest, payload: Buffer, fds: number[] = []): Promise<void> {
    if (this.closedError) return Promise.reject(this.closedError);
    try {
      this.connection.send(request, this.replyAck ? VHOST_USER_NEED_REPLY_MASK : 0, payload, fds);
    } catch (err) {
      // A front-end that does not read its end (EAGAIN), or a send cut short, leaves the stream
      // mid-message: nothing more can be framed on it, so the channel is done for.
      const why = new BackendChannelError(
        `back-end channel unusable: ${BackendRequest[request]} could not be sent (${(err as Error).message})`,
      );
      this.log(why.message);
      this.fail(why);
      this.connection.close();
      return Promise.reject(why);
    }
    if (!this.replyAck) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiting.push({ request, resolve, reject }));
  }

  private fail(err: Error): void {
    this.closedError = err;
    for (const w of this.waiting.splice(0)) w.reject(err);
  }

  close(): void {
    this.fail(new BackendChannelError('back-end channel closed'));
    this.connection.close();
  }
}
