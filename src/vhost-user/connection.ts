import { UnixStreamSocket, close } from '../sys';
import { HEADER_SIZE, MAX_PAYLOAD_SIZE } from './protocol';
import { Message, ProtocolError, decodeHeader, encodeMessage } from './messages';

/**
 * Frames vhost-user messages over a Unix stream socket: header, payload and
 * the file descriptors that arrive with them. Used by both the back-end and
 * the TypeScript front-end.
 */
export class Connection {
  private readonly buf = Buffer.alloc(HEADER_SIZE + MAX_PAYLOAD_SIZE);
  private have = 0;
  private fds: number[] = [];
  /** Some fd sent with the message being assembled was lost (MSG_CTRUNC). */
  private fdsLost = false;
  /** Whether the message `receive` returned last lost fds on the way. */
  lastFdsLost = false;
  private closed = false;
  private paused = false;
  private onReadable: (() => void) | null = null;

  constructor(readonly socket: UnixStreamSocket) {}

  /**
   * Calls `onMessage` for every complete message (`fdsLost`: the kernel dropped
   * some of its fds, see Received); `onClose` once, on EOF or on a framing
   * error (with the error).
   */
  start(onMessage: (msg: Message, fdsLost: boolean) => void, onClose: (err?: Error) => void): void {
    this.onReadable = () => {
      try {
        while (!this.paused) {
          const msg = this.receive();
          if (msg === null) return;
          if (msg === 'eof') {
            this.close();
            onClose();
            return;
          }
          onMessage(msg, this.lastFdsLost);
          if (this.closed) return;
        }
      } catch (err) {
        this.close();
        onClose(err as Error);
      }
    };
    this.socket.watch(this.onReadable);
  }

  /**
   * Takes no message until `resume` (a reply that has to wait): what the
   * front-end sends meanwhile stays in the kernel's socket buffer, in order.
   */
  pause(): void {
    if (this.paused || this.closed) return;
    this.paused = true;
    this.socket.unwatch();
  }

  resume(): void {
    if (!this.paused || this.closed || !this.onReadable) return;
    this.paused = false;
    this.socket.watch(this.onReadable);
  }

  /** Reads what is available; a whole message, null when incomplete, 'eof' when the peer left. */
  receive(): Message | null | 'eof' {
    for (;;) {
      const want = this.have < HEADER_SIZE ? HEADER_SIZE : HEADER_SIZE + decodeHeader(this.buf).size;
      if (this.have === want && this.have >= HEADER_SIZE) {
        const { request, flags, size } = decodeHeader(this.buf);
        const msg: Message = {
          request,
          flags,
          payload: Buffer.from(this.buf.subarray(HEADER_SIZE, HEADER_SIZE + size)),
          fds: this.fds,
        };
        this.lastFdsLost = this.fdsLost;
        this.have = 0;
        this.fds = [];
        this.fdsLost = false;
        return msg;
      }
      const got = this.socket.receive(this.buf, this.have, want - this.have);
      if (got === null) return null;
      this.fds.push(...got.fds);
      if (got.fdsLost) this.fdsLost = true;
      if (got.bytes === 0) {
        if (this.have > 0) throw new ProtocolError(`connection closed in the middle of a message`);
        return 'eof';
      }
      this.have += got.bytes;
    }
  }

  send(request: number, flags: number, payload: Buffer, fds: number[] = []): void {
    this.socket.send(encodeMessage(request, flags, payload), fds);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.fds) close(fd);
    this.fds = [];
    this.socket.close();
  }
}
