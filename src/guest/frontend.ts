import { UnixStreamSocket, close } from '../sys';
import { Connection } from '../vhost-user/connection';
import {
  decode,
  decodeShmemConfig,
  encode,
  isReply,
  MemoryRegionDesc,
  MemoryTableHeader,
  Message,
  SingleMemoryRegion,
  U64,
  VringAddr,
  VringState,
} from '../vhost-user/messages';
import {
  FrontendRequest,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  bit,
} from '../vhost-user/protocol';
import { GuestQueue } from './guest-queue';
import { GuestRam } from './guest-ram';

export interface FrontendOptions {
  /** Request queues to set up besides hiprio (default 1). */
  requestQueues?: number;
  queueSize?: number;
  /** Guest RAM regions in bytes (default two of 64 MiB). */
  ramRegions?: number[];
  /** Offer VIRTIO_RING_F_EVENT_IDX / INDIRECT_DESC if the back-end has them (default true). */
  eventIdx?: boolean;
  indirect?: boolean;
  /** Announce memory with ADD_MEM_REG when CONFIGURE_MEM_SLOTS is offered (default: SET_MEM_TABLE). */
  addMemRegions?: boolean;
  /** Handles back-end requests (SHMEM_MAP/UNMAP); returns the u64 status to reply (0 = success). */
  onBackendRequest?: (msg: Message) => bigint;
}

/** Protocol features the TypeScript front-end can speak. */
const FRONTEND_PROTOCOL_FEATURES =
  bit(ProtocolFeature.MQ) |
  bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.BACKEND_REQ) |
  bit(ProtocolFeature.BACKEND_SEND_FD) |
  bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  bit(ProtocolFeature.RESET_DEVICE) |
  bit(ProtocolFeature.SHMEM);

export class FrontendError extends Error {
  override name = 'FrontendError';
}

/**
 * The VMM's part of the TypeScript guest: owns guest RAM and the virtqueues,
 * performs the vhost-user handshake with a back-end, answers the back-end
 * channel, and stops or reconnects the device.
 */
export class VhostUserFrontend {
  readonly ram: GuestRam;
  readonly queues: GuestQueue[] = [];
  features = 0n;
  protocolFeatures = 0n;
  backendFeatures = 0n;
  backendProtocolFeatures = 0n;
  maxQueues = 0;
  shmemSizes: bigint[] = [];
  private connection: Connection | null = null;
  private backendChannel: Connection | null = null;
  private readonly replies: { request: number; resolve: (m: Message) => void; reject: (e: Error) => void }[] = [];
  private closedError: Error | null = null;
  private readonly options: Required<Omit<FrontendOptions, 'onBackendRequest'>>;
  /** Serves back-end channel requests (e.g. a DaxWindow's SHMEM_MAP); settable after connecting. */
  backendRequestHandler: ((msg: Message) => bigint) | null;

  constructor(options: FrontendOptions = {}) {
    this.options = {
      requestQueues: options.requestQueues ?? 1,
      queueSize: options.queueSize ?? 128,
      ramRegions: options.ramRegions ?? [64 << 20, 64 << 20],
      eventIdx: options.eventIdx ?? true,
      indirect: options.indirect ?? true,
      addMemRegions: options.addMemRegions ?? false,
    };
    this.backendRequestHandler = options.onBackendRequest ?? null;
    this.ram = new GuestRam(this.options.ramRegions);
  }

  /** Connects to a back-end's socket and brings the device up. */
  static async connect(socketPath: string, options: FrontendOptions = {}): Promise<VhostUserFrontend> {
    const frontend = new VhostUserFrontend(options);
    try {
      await frontend.attach(socketPath);
    } catch (err) {
      frontend.close();
      throw err;
    }
    return frontend;
  }

  get requestQueues(): GuestQueue[] {
    return this.queues.slice(1);
  }

  get hiprioQueue(): GuestQueue {
    return this.queues[0];
  }

  /** Handshake, memory table, rings. Reusable after a back-end restart (same RAM and rings). */
  async attach(socketPath: string): Promise<void> {
    this.closedError = null;
    this.connection = new Connection(UnixStreamSocket.connect(socketPath));
    this.connection.start(
      (msg) => this.onReply(msg),
      (err) => this.onClosed(err ?? new FrontendError('back-end closed the connection')),
    );
    const { options } = this;

    this.backendFeatures = decode(U64, (await this.call(FrontendRequest.GET_FEATURES)).payload).value;
    if (!(this.backendFeatures & bit(VIRTIO_F_VERSION_1))) throw new FrontendError('back-end lacks VIRTIO_F_VERSION_1');
    let wanted = bit(VIRTIO_F_VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
    if (options.eventIdx) wanted |= bit(VIRTIO_RING_F_EVENT_IDX);
    if (options.indirect) wanted |= bit(VIRTIO_RING_F_INDIRECT_DESC);
    this.features = this.backendFeatures & wanted;

    if (this.features & bit(VHOST_USER_F_PROTOCOL_FEATURES)) {
      this.backendProtocolFeatures = decode(U64, (await this.call(FrontendRequest.GET_PROTOCOL_FEATURES)).payload).value;
      this.protocolFeatures = this.backendProtocolFeatures & FRONTEND_PROTOCOL_FEATURES;
      await this.send(FrontendRequest.SET_PROTOCOL_FEATURES, encode(U64, { value: this.protocolFeatures }));
    }
    this.maxQueues = this.has(ProtocolFeature.MQ) ? Number(decode(U64, (await this.call(FrontendRequest.GET_QUEUE_NUM)).payload).value) : 2;
    const total = 1 + options.requestQueues;
    if (total > this.maxQueues) throw new FrontendError(`back-end serves ${this.maxQueues} queues, ${total} wanted`);

    await this.send(FrontendRequest.SET_OWNER, Buffer.alloc(0));
    if (this.has(ProtocolFeature.SHMEM)) {
      this.shmemSizes = decodeShmemConfig((await this.call(FrontendRequest.GET_SHMEM_CONFIG)).payload);
    }
    if (this.has(ProtocolFeature.BACKEND_REQ)) {
      const [ours, theirs] = UnixStreamSocket.pair();
      this.backendChannel = new Connection(ours);
      this.backendChannel.start(
        (msg) => this.onBackendRequest(msg),
        () => undefined,
      );
      await this.send(FrontendRequest.SET_BACKEND_REQ_FD, Buffer.alloc(0), [theirs.fd]);
      theirs.close();
    }
    await this.send(FrontendRequest.SET_FEATURES, encode(U64, { value: this.features }));
    await this.announceMemory();

    const eventIdx = (this.features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    const reattach = this.queues.length > 0;
    for (let i = 0; i < total; i++) {
      // Rings alternate between RAM regions so both translation paths are used.
      if (!reattach) this.queues.push(new GuestQueue(i, options.queueSize, this.ram, eventIdx, i % this.ram.regions.length));
      await this.setupRing(this.queues[i]);
    }
  }

  private async announceMemory(): Promise<void> {
    const regions = this.ram.regions.map((r) => ({
      guestPhysAddr: BigInt(r.guestPhysAddr),
      memorySize: BigInt(r.size),
      userspaceAddr: BigInt(r.userspaceAddr),
      mmapOffset: 0n,
    }));
    if (this.options.addMemRegions && this.has(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      for (let i = 0; i < regions.length; i++) {
        await this.send(FrontendRequest.ADD_MEM_REG, encode(SingleMemoryRegion, { ...regions[i] }), [this.ram.regions[i].fd]);
      }
      return;
    }
    // Exactly nregions entries, as QEMU sends it (the Rust virtiofsd refuses any other size).
    const table = Buffer.alloc(MemoryTableHeader.size + regions.length * MemoryRegionDesc.size);
    MemoryTableHeader.encode({ nregions: regions.length }, table, 0);
    regions.forEach((r, i) => MemoryRegionDesc.encode(r, table, MemoryTableHeader.size + i * MemoryRegionDesc.size));
    await this.send(
      FrontendRequest.SET_MEM_TABLE,
      table,
      this.ram.regions.map((r) => r.fd),
    );
  }

  private async setupRing(q: GuestQueue): Promise<void> {
    await this.send(FrontendRequest.SET_VRING_NUM, encode(VringState, { index: q.index, num: q.size }));
    await this.send(FrontendRequest.SET_VRING_BASE, encode(VringState, { index: q.index, num: q.driver.availIndex }));
    await this.send(
      FrontendRequest.SET_VRING_ADDR,
      encode(VringAddr, {
        index: q.index,
        flags: 0,
        descUserAddr: BigInt(this.ram.userAddr(q.desc.addr)),
        usedUserAddr: BigInt(this.ram.userAddr(q.used.addr)),
        availUserAddr: BigInt(this.ram.userAddr(q.avail.addr)),
        logGuestAddr: 0n,
      }),
    );
    await this.send(FrontendRequest.SET_VRING_CALL, encode(U64, { value: BigInt(q.index) }), [q.callFd]);
    q.start();
    await this.send(FrontendRequest.SET_VRING_KICK, encode(U64, { value: BigInt(q.index) }), [q.kickFd]);
    if (this.features & bit(VHOST_USER_F_PROTOCOL_FEATURES)) {
      await this.send(FrontendRequest.SET_VRING_ENABLE, encode(VringState, { index: q.index, num: 1 }));
    }
  }

  has(feature: ProtocolFeature): boolean {
    return (this.protocolFeatures & bit(feature)) !== 0n;
  }

  /** Sends a request that has a reply of its own and waits for it. */
  async call(request: FrontendRequest, payload: Buffer = Buffer.alloc(0), fds: number[] = []): Promise<Message> {
    const reply = this.expectReply(request);
    this.raw(request, 0, payload, fds);
    return reply;
  }

  /**
   * Sends a request without a reply of its own; with REPLY_ACK, waits for the
   * back-end's acknowledgement and throws if it reports failure.
   */
  async send(request: FrontendRequest, payload: Buffer, fds: number[] = []): Promise<void> {
    if (!this.has(ProtocolFeature.REPLY_ACK)) {
      this.raw(request, 0, payload, fds);
      return;
    }
    const reply = this.expectReply(request);
    this.raw(request, VHOST_USER_NEED_REPLY_MASK, payload, fds);
    const status = decode(U64, (await reply).payload).value;
    if (status !== 0n) throw new FrontendError(`back-end failed ${FrontendRequest[request]} (status ${status})`);
  }

  /** Writes one message as-is (tests use it for malformed input). */
  raw(request: number, flags: number, payload: Buffer, fds: number[] = []): void {
    if (!this.connection || this.closedError) throw this.closedError ?? new FrontendError('not connected');
    this.connection.send(request, flags, payload, fds);
  }

  private expectReply(request: number): Promise<Message> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => this.replies.push({ request, resolve, reject }));
  }

  private onReply(msg: Message): void {
    const waiter = this.replies.shift();
    if (!waiter || !isReply(msg.flags) || msg.request !== waiter.request) {
      this.onClosed(new FrontendError(`unexpected message ${msg.request} from the back-end`));
      return;
    }
    waiter.resolve(msg);
  }

  private onClosed(err: Error): void {
    this.closedError = err;
    for (const w of this.replies.splice(0)) w.reject(err);
  }

  /** Whether the back-end has gone away. */
  get disconnected(): boolean {
    return this.closedError !== null;
  }

  private onBackendRequest(msg: Message): void {
    let status = 1n;
    try {
      if (this.backendRequestHandler) status = this.backendRequestHandler(msg);
    } catch {
      status = 1n;
    }
    // A handler that keeps an fd takes it out of msg.fds; the rest are closed here.
    for (const fd of msg.fds.splice(0)) close(fd);
    if (msg.flags & VHOST_USER_NEED_REPLY_MASK) {
      this.backendChannel?.send(msg.request, VHOST_USER_REPLY_MASK, encode(U64, { value: status }));
    }
  }

  /** Stops every ring (GET_VRING_BASE) and returns where each would resume. */
  async stop(): Promise<number[]> {
    const bases: number[] = [];
    for (const q of this.queues) {
      const reply = await this.call(FrontendRequest.GET_VRING_BASE, encode(VringState, { index: q.index, num: 0 }));
      bases.push(decode(VringState, reply.payload).num);
    }
    return bases;
  }

  /** Drops the connection to the back-end (RAM and rings stay, for attach()). */
  disconnect(): void {
    for (const q of this.queues) q.stop();
    this.backendChannel?.close();
    this.backendChannel = null;
    this.connection?.close();
    this.connection = null;
    this.onClosed(new FrontendError('disconnected'));
  }

  close(): void {
    this.disconnect();
    for (const q of this.queues) q.close();
    this.queues.length = 0;
    this.ram.close();
  }
}
