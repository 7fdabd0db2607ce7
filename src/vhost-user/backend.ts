import { UnixStreamSocket, close, guardedFaultTotal } from '../sys';
import { BackendChannel } from './backend-channel';
import { Connection } from './connection';
import { VhostUserDevice } from './device';
import { GuestMemory, GuestRegion, unmapRegions } from './guest-memory';
import {
  ConfigHeader,
  decode,
  encode,
  encodeShmemConfig,
  MemoryRegionDesc,
  MemoryTableHeader,
  Message,
  needsReply,
  ProtocolError,
  SingleMemoryRegion,
  U64,
  VringAddr,
  VringState,
} from './messages';
import {
  FrontendRequest,
  MAX_MEM_SLOTS,
  MEMORY_BASELINE_NREGIONS,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_REPLY_MASK,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  VRING_IDX_MASK,
  VHOST_USER_MAX_CONFIG_SIZE,
  VRING_NOFD_MASK,
  bit,
} from './protocol';
import { MAX_QUEUE_SIZE, RingViews, SplitVirtqueue, checkRingAlignment, locateRings } from './virtqueue';
import { Vring } from './vring';

export type { Logger } from '../log';
import type { Logger } from '../log';

/** Transport features every device gets. */
const TRANSPORT_FEATURES =
  bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VHOST_USER_F_PROTOCOL_FEATURES);

const TRANSPORT_PROTOCOL_FEATURES =
  bit(ProtocolFeature.MQ) |
  bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.BACKEND_REQ) |
  bit(ProtocolFeature.BACKEND_SEND_FD) |
  bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  bit(ProtocolFeature.RESET_DEVICE);

/**
 * A request refused without ending the connection, whether or not the
 * front-end asked for a reply: the refusal harms nobody (e.g. no free memory
 * slot for a DAX mapping's region, which only descriptors into the window
 * would need), and QEMU carries on after it; a disconnect would hang the guest.
 */
class Refused extends Error {}

export interface BackendOptions {
  /**
   * The device config served through GET_CONFIG (with
   * VHOST_USER_PROTOCOL_F_CONFIG offered), e.g. the virtio-fs tag and queue
   * count. Absent: CONFIG is not offered and GET_CONFIG answers size 0.
   */
  deviceConfig?: Buffer;
}

/** Messages whose reply is defined by the protocol; need_reply adds nothing to them. */
const HAS_OWN_REPLY = new Set<number>([
  FrontendRequest.GET_FEATURES,
  FrontendRequest.GET_PROTOCOL_FEATURES,
  FrontendRequest.GET_VRING_BASE,
  FrontendRequest.GET_QUEUE_NUM,
  FrontendRequest.GET_CONFIG,
  FrontendRequest.GET_MAX_MEM_SLOTS,
  FrontendRequest.GET_SHMEM_CONFIG,
]);

/**
 * The vhost-user back-end state machine for one front-end connection:
 * handshake, features, memory table, vring setup, and the start/stop of
 * each ring. The device behind it only sees started rings.
 */
export class VhostUserBackend {
  private readonly connection: Connection;
  readonly memory = new GuestMemory();
  private readonly vrings: Vring[];
  private ackedFeatures = 0n;
  private ackedProtocolFeatures = 0n;
  private backendChannel: BackendChannel | null = null;
  private closed = false;
  /** guardedFaultTotal() when last looked at: a change means some guarded mapping faulted. */
  private faultsSeen = guardedFaultTotal();

  constructor(
    socket: UnixStreamSocket,
    private readonly device: VhostUserDevice,
    private readonly log: Logger,
    private readonly onDisconnect: (err?: Error) => void,
    private readonly options: BackendOptions = {},
  ) {
    if (options.deviceConfig && options.deviceConfig.length > VHOST_USER_MAX_CONFIG_SIZE) throw new RangeError('device config too large');
    this.connection = new Connection(socket);
    this.vrings = Array.from({ length: device.maxQueues }, (_, i) => new Vring(i));
  }

  get features(): bigint {
    return TRANSPORT_FEATURES | this.device.deviceFeatures;
  }

  get protocolFeatures(): bigint {
    const config = this.options.deviceConfig ? bit(ProtocolFeature.CONFIG) : 0n;
    return TRANSPORT_PROTOCOL_FEATURES | config | this.device.deviceProtocolFeatures;
  }

  start(): void {
    this.connection.start(
      (msg, fdsLost) => this.dispatch(msg, fdsLost),
      (err) => this.teardown(err),
    );
  }

  private hasProtocolFeature(f: ProtocolFeature): boolean {
    return (this.ackedProtocolFeatures & bit(f)) !== 0n;
  }

  private dispatch(msg: Message, fdsLost = false): void {
    const name = FrontendRequest[msg.request] ?? `#${msg.request}`;
    this.log('debug', `vhost-user: ${name} (${msg.payload.length} bytes, ${msg.fds.length} fds)`);
    if (fdsLost && !HAS_OWN_REPLY.has(msg.request)) {
      // The kernel dropped fds of this message (MSG_CTRUNC, e.g. our fd table is full): the
      // request cannot be carried out, but the stream is intact, so only this message fails.
      this.log(
        'error',
        `vhost-user: ${name} refused: file descriptors sent with it were lost (control message truncated; is the daemon at its fd limit?)`,
      );
      for (const fd of msg.fds.splice(0)) close(fd);
      if (needsReply(msg.flags) && this.hasProtocolFeature(ProtocolFeature.REPLY_ACK)) this.reply(msg.request, encode(U64, { value: 1n }));
      return;
    }
    let reply: Buffer | Promise<Buffer> | undefined;
    try {
      reply = this.handle(msg);
    } catch (err) {
      this.failed(msg, err as Error);
      return;
    } finally {
      // Handlers take the fds they keep out of msg.fds; whatever is left is ours to close.
      for (const fd of msg.fds.splice(0)) close(fd);
    }
    if (reply instanceof Promise) {
      // The reply waits (GET_VRING_BASE draining its queue): so does every later message.
      this.connection.pause();
      reply
        .then(
          (payload) => {
            if (!this.closed) this.reply(msg.request, payload);
          },
          (err: Error) => {
            if (!this.closed) this.failed(msg, err);
          },
        )
        .finally(() => {
          if (!this.closed) this.connection.resume();
        });
      return;
    }
    if (reply) this.reply(msg.request, reply);
    else if (needsReply(msg.flags) && !HAS_OWN_REPLY.has(msg.request) && this.hasProtocolFeature(ProtocolFeature.REPLY_ACK)) {
      this.reply(msg.request, encode(U64, { value: 0n }));
    }
  }

  /** A message that could not be carried out: refused (the connection stays) or fatal. */
  private failed(msg: Message, err: Error): void {
    const name = FrontendRequest[msg.request] ?? `#${msg.request}`;
    const malformed = err instanceof ProtocolError;
    const refused = err instanceof Refused;
    this.log(refused ? 'warn' : 'error', `vhost-user: ${name} ${refused ? 'refused' : 'failed'}: ${err.message}`);
    if (refused && !(needsReply(msg.flags) && this.hasProtocolFeature(ProtocolFeature.REPLY_ACK))) return;
    if (malformed || !(needsReply(msg.flags) && this.hasProtocolFeature(ProtocolFeature.REPLY_ACK))) {
      // The front-end cannot learn of the failure any other way: end the connection cleanly.
      this.teardown(err);
      return;
    }
    this.reply(msg.request, encode(U64, { value: 1n }));
  }

  private reply(request: number, payload: Buffer): void {
    this.connection.send(request, VHOST_USER_REPLY_MASK, payload);
  }

  private vring(index: number): Vring {
    const vring = this.vrings[index];
    if (!vring) throw new ProtocolError(`queue index ${index} out of range (the device has ${this.vrings.length})`);
    return vring;
  }

  /** Handles one message; returns the reply payload for messages that have one (or its promise). */
  private handle(msg: Message): Buffer | Promise<Buffer> | undefined {
    const p = msg.payload;
    switch (msg.request) {
      case FrontendRequest.GET_FEATURES:
        return encode(U64, { value: this.features });
      case FrontendRequest.SET_FEATURES: {
        const value = decode(U64, p).value;
        if (value & ~this.features) throw new ProtocolError(`front-end acked features we never offered: 0x${value.toString(16)}`);
        this.ackedFeatures = value;
        return undefined;
      }
      case FrontendRequest.GET_PROTOCOL_FEATURES:
        return encode(U64, { value: this.protocolFeatures });
      case FrontendRequest.SET_PROTOCOL_FEATURES:
        this.ackedProtocolFeatures = decode(U64, p).value & this.protocolFeatures;
        return undefined;
      case FrontendRequest.SET_OWNER:
        return undefined;
      case FrontendRequest.RESET_OWNER:
      case FrontendRequest.RESET_DEVICE:
        this.resetDevice();
        return undefined;
      case FrontendRequest.GET_QUEUE_NUM:
        return encode(U64, { value: BigInt(this.vrings.length) });
      case FrontendRequest.GET_MAX_MEM_SLOTS:
        return encode(U64, { value: BigInt(MAX_MEM_SLOTS) });
      case FrontendRequest.SET_MEM_TABLE:
        this.setMemTable(msg);
        return undefined;
      case FrontendRequest.ADD_MEM_REG: {
        const r = decode(SingleMemoryRegion, p);
        if (msg.fds.length !== 1) throw new ProtocolError(`ADD_MEM_REG with ${msg.fds.length} fds`);
        if (this.memory.regionCount >= MAX_MEM_SLOTS) throw new Refused(`no free memory slot (all ${MAX_MEM_SLOTS} in use)`);
        this.memory.addRegion(r, msg.fds.shift()!);
        return undefined;
      }
      case FrontendRequest.REM_MEM_REG: {
        const r = decode(SingleMemoryRegion, p);
        const removed = this.memory.detachRegion(r.guestPhysAddr, r.memorySize);
        // E.g. the region of a DAX mapping refused for want of a slot: nothing to remove.
        if (!removed) throw new Refused(`no memory region at 0x${r.guestPhysAddr.toString(16)} of size 0x${r.memorySize.toString(16)}`);
        // A running ring inside the region refuses the removal: it would point into unmapped memory.
        let rings: [Vring, RingViews][];
        try {
          rings = this.locateRunningRings(this.memory);
        } catch (err) {
          this.memory.reattachRegion(removed);
          throw err;
        }
        for (const [vring, views] of rings) vring.queue!.useRings(views);
        this.retire([removed]);
        return undefined;
      }
      case FrontendRequest.SET_VRING_NUM: {
        const s = decode(VringState, p);
        const vring = this.vring(s.index);
        if (s.num === 0 || s.num > MAX_QUEUE_SIZE || (s.num & (s.num - 1)) !== 0) throw new ProtocolError(`bad queue size ${s.num}`);
        vring.size = s.num;
        return undefined;
      }
      case FrontendRequest.SET_VRING_ADDR: {
        const a = decode(VringAddr, p);
        const vring = this.vring(a.index);
        const [desc, avail, used] = [a.descUserAddr, a.availUserAddr, a.usedUserAddr].map((x) => {
          if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`queue ${a.index}: vring address 0x${x.toString(16)} beyond 2^53`);
          return Number(x);
        });
        checkRingAlignment(desc, avail, used);
        // Checked in full (every byte of the three rings, for the queue's size) as soon as size and
        // memory are known; a running ring is switched only once the new rings are found.
        const size = vring.queue?.size ?? vring.size;
        const views = vring.queue || (size > 0 && this.memory.regionCount > 0) ? locateRings(this.memory, size, desc, avail, used) : null;
        vring.descUserAddr = desc;
        vring.availUserAddr = avail;
        vring.usedUserAddr = used;
        vring.addressed = true;
        if (vring.queue && views) vring.queue.useRings(views);
        return undefined;
      }
      case FrontendRequest.SET_VRING_BASE: {
        const s = decode(VringState, p);
        this.vring(s.index).base = s.num & 0xffff;
        return undefined;
      }
      case FrontendRequest.GET_VRING_BASE: {
        const s = decode(VringState, p);
        const vring = this.vring(s.index);
        const stopped = (): Buffer => {
          const next = vring.stop();
          vring.base = next;
          // After GET_VRING_BASE the ring is stopped; a new SET_VRING_ENABLE is needed to restart it.
          vring.enabled = !this.hasFeature(VHOST_USER_F_PROTOCOL_FEATURES) && vring.enabled;
          return encode(VringState, { index: s.index, num: next });
        };
        // Requests still in flight must be used before the base is taken, or a resumed ring loses them.
        vring.draining = vring.started;
        const drained = vring.started ? this.device.drainQueue(vring) : null;
        return drained ? drained.then(stopped) : stopped();
      }
      case FrontendRequest.SET_VRING_KICK:
        this.setVringFd(msg, 'kickFd');
        return undefined;
      case FrontendRequest.SET_VRING_CALL:
        this.setVringFd(msg, 'callFd');
        return undefined;
      case FrontendRequest.SET_VRING_ERR:
        this.setVringFd(msg, 'errFd');
        return undefined;
      case FrontendRequest.SET_VRING_ENABLE: {
        const s = decode(VringState, p);
        const vring = this.vring(s.index);
        vring.enabled = s.num !== 0;
        if (vring.enabled && vring.started) this.kicked(vring);
        return undefined;
      }
      case FrontendRequest.SET_BACKEND_REQ_FD: {
        if (msg.fds.length !== 1) throw new ProtocolError(`SET_BACKEND_REQ_FD with ${msg.fds.length} fds`);
        const socket = new UnixStreamSocket(msg.fds.shift()!);
        let channel: BackendChannel;
        try {
          channel = new BackendChannel(socket, this.hasProtocolFeature(ProtocolFeature.REPLY_ACK), (m) => this.log('error', m));
        } catch (err) {
          // Not something we can poll (a regular file, a directory): refused, the old channel stays.
          socket.close();
          throw new Error(`back-end channel fd unusable: ${(err as Error).message}`);
        }
        this.backendChannel?.close();
        this.backendChannel = channel;
        this.device.setBackendChannel(this.backendChannel);
        return undefined;
      }
      case FrontendRequest.GET_CONFIG: {
        // The front-end's header names the slice it wants; the reply carries exactly that
        // slice, or size 0 (the protocol's failure) when there is no config or it lies outside.
        const h = decode(ConfigHeader, p);
        const config = this.options.deviceConfig;
        if (
          !config ||
          h.size === 0 ||
          h.size > VHOST_USER_MAX_CONFIG_SIZE ||
          h.offset > config.length ||
          h.size > config.length - h.offset
        ) {
          return encode(ConfigHeader, { offset: h.offset, size: 0, flags: h.flags });
        }
        return Buffer.concat([encode(ConfigHeader, h), config.subarray(h.offset, h.offset + h.size)]);
      }
      case FrontendRequest.SET_CONFIG:
        // virtio-fs config is read-only for the driver (virtio spec 5.11.4).
        throw new Refused('the device config is read-only');
      case FrontendRequest.GET_SHMEM_CONFIG: {
        return encodeShmemConfig(this.device.shmemRegions());
      }
      default:
        throw new Error(`unsupported request ${FrontendRequest[msg.request] ?? msg.request}`);
    }
  }

  private hasFeature(n: number): boolean {
    return (this.ackedFeatures & bit(n)) !== 0n;
  }

  private setMemTable(msg: Message): void {
    const h = decode(MemoryTableHeader, msg.payload);
    if (h.nregions === 0 || h.nregions > MEMORY_BASELINE_NREGIONS) throw new ProtocolError(`SET_MEM_TABLE with ${h.nregions} regions`);
    if (msg.fds.length !== h.nregions) throw new ProtocolError(`SET_MEM_TABLE: ${h.nregions} regions but ${msg.fds.length} fds`);
    const regions = Array.from({ length: h.nregions }, (_, i) =>
      decode(MemoryRegionDesc, msg.payload, MemoryTableHeader.size + i * MemoryRegionDesc.size),
    );
    // Build the whole new table and find every running ring in it before the old one is
    // touched: a refused table leaves every ring on memory that is still mapped.
    const next = new GuestMemory();
    let rings: [Vring, RingViews][];
    try {
      for (const r of regions) next.addRegion(r, msg.fds.shift()!);
      rings = this.locateRunningRings(next);
    } catch (err) {
      next.clear();
      throw err;
    }
    // From here nothing can fail: switch the table, re-point the rings, then unmap the old regions.
    const old = this.memory.replaceWith(next);
    for (const [vring, views] of rings) vring.queue!.useRings(views);
    this.retire(old);
  }

  /**
   * Finds every running ring's three areas in `memory` (for the queue's own
   * size, aligned), or throws naming the first ring that does not fit.
   */
  private locateRunningRings(memory: GuestMemory): [Vring, RingViews][] {
    return this.vrings
      .filter((v) => v.queue)
      .map((v) => {
        try {
          return [v, locateRings(memory, v.queue!.size, v.descUserAddr, v.availUserAddr, v.usedUserAddr)];
        } catch (err) {
          throw new Error(`queue ${v.index} would not fit the new memory table: ${(err as Error).message}`);
        }
      });
  }

  /**
   * Unmaps regions taken out of the table once no request is in flight:
   * requests waiting (e.g. SETLKW) hold views of them and will still reply into them.
   */
  private retire(regions: GuestRegion[]): void {
    if (regions.length > 0) this.device.whenIdle(() => unmapRegions(regions));
  }

  private setVringFd(msg: Message, which: 'kickFd' | 'callFd' | 'errFd'): void {
    const value = decode(U64, msg.payload).value;
    const index = Number(value & BigInt(VRING_IDX_MASK));
    const noFd = (value & BigInt(VRING_NOFD_MASK)) !== 0n;
    const vring = this.vring(index);
    if (noFd !== (msg.fds.length === 0)) throw new ProtocolError(`${which} for queue ${index}: fd flag and fds disagree`);
    if (which !== 'kickFd') {
      if (noFd) vring.replaceFd(which, -1);
      else {
        const refused = vring.adoptFd(which, msg.fds.shift()!);
        if (refused) this.log('warn', `queue ${index}: ${refused}`);
      }
      return;
    }
    if (noFd) throw new Error(`queue ${index}: polling without a kick fd is not supported`);
    // A new kick fd for a running ring resumes it where it was, not at the last SET_VRING_BASE.
    vring.base = vring.stop();
    vring.adoptFd('kickFd', msg.fds.shift()!);
    try {
      this.startRing(vring);
    } catch (err) {
      vring.replaceFd('kickFd', -1);
      throw err;
    }
  }

  /** The ring starts when it gets its kick fd; without PROTOCOL_FEATURES it is enabled at once. */
  private startRing(vring: Vring): void {
    if (!vring.addressed || vring.size === 0) throw new ProtocolError(`queue ${vring.index} started before its size and addresses`);
    const queue = new SplitVirtqueue(
      this.memory,
      vring.size,
      this.hasFeature(VIRTIO_RING_F_EVENT_IDX),
      this.hasFeature(VIRTIO_RING_F_INDIRECT_DESC),
    );
    queue.setAddresses(vring.descUserAddr, vring.availUserAddr, vring.usedUserAddr);
    queue.setBase(vring.base);
    try {
      vring.watchKick(
        () => this.kicked(vring),
        (why) => this.log('warn', `queue ${vring.index}: kick fd unusable (${why}); no longer watched`),
      );
    } catch (err) {
      throw new Error(`queue ${vring.index}: kick fd cannot be polled (${(err as Error).message})`);
    }
    vring.queue = queue;
    if (!this.hasFeature(VHOST_USER_F_PROTOCOL_FEATURES)) vring.enabled = true;
    // Chains may already be waiting (e.g. after a reconnect).
    if (vring.enabled) this.kicked(vring);
  }

  private kicked(vring: Vring): void {
    if (!vring.enabled || !vring.queue || vring.draining) return;
    try {
      this.device.processQueue(vring);
    } catch (err) {
      // Nothing may escape into the event loop. A driver that broke the ring's
      // invariants loses this queue; the others keep going.
      this.log('error', `queue ${vring.index}: ${(err as Error).message}; queue stopped`);
      vring.stop();
    }
    // A guest-RAM file shrunk under us: the faulting pages now read as zeros (the
    // addon's guard kept the daemon alive), so this memory is no longer the guest's.
    const faults = guardedFaultTotal();
    if (faults !== this.faultsSeen) {
      this.faultsSeen = faults;
      if (this.memory.faulted()) this.teardown(new Error("guest memory faulted: a region's file was shrunk under the daemon"));
    }
  }

  private resetDevice(): void {
    for (const vring of this.vrings) vring.reset();
    this.device.reset();
    this.ackedFeatures = 0n;
  }

  private teardown(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    if (err) this.log('error', `vhost-user: ${err.message}; disconnecting`);
    for (const vring of this.vrings) vring.reset();
    this.device.setBackendChannel(null);
    this.backendChannel?.close();
    this.backendChannel = null;
    this.device.reset();
    this.connection.close();
    const regions = this.memory.replaceWith(new GuestMemory());
    this.retire(regions);
    this.onDisconnect(err);
  }

  close(): void {
    this.teardown();
  }
}
