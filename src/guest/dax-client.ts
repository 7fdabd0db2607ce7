import { DaxChunkManager, DaxFaultError } from './dax-chunks';
import { DaxWindow, VIRTIO_FS_SHMCAP_ID_CACHE } from './dax-window';
import type { FuseDriver } from './fuse-driver';
import { FUSE_SETUPMAPPING_FLAG_READ, FUSE_SETUPMAPPING_FLAG_WRITE } from '../fuse-server/protocol';

/** Linux resolves DAX mappings by nodeid and sends no file handle: fh = -1. */
const NO_FILE_HANDLE = -1;

/**
 * DAX for the TypeScript guest: the window the back-end's SHMEM_MAP requests
 * fill, and the chunk manager that asks for mappings with FUSE_SETUPMAPPING /
 * FUSE_REMOVEMAPPING as a Linux or OSv guest does.
 */
export class DaxClient {
  private constructor(
    private readonly driver: FuseDriver,
    readonly window: DaxWindow,
    readonly chunks: DaxChunkManager,
  ) {}

  /** Sets up the window the back-end advertised (GET_SHMEM_CONFIG); throws if it offers none. */
  static enable(driver: FuseDriver): DaxClient {
    const size = driver.frontend.shmemSizes[VIRTIO_FS_SHMCAP_ID_CACHE];
    if (!size) throw new Error('the back-end offers no DAX window (no VHOST_USER_PROTOCOL_F_SHMEM or size 0)');
    const window = new DaxWindow(Number(size));
    driver.frontend.backendRequestHandler = (msg) => window.handleBackendRequest(msg);
    const chunks = new DaxChunkManager(window, {
      setupMapping: (nodeid, foffset, len, moffset, writable) =>
        driver.setupMapping(nodeid, NO_FILE_HANDLE, {
          foffset,
          len,
          moffset,
          flags: FUSE_SETUPMAPPING_FLAG_READ | (writable ? FUSE_SETUPMAPPING_FLAG_WRITE : 0),
        }),
      removeMapping: (ranges) => driver.removeMapping(0, ranges),
    });
    return new DaxClient(driver, window, chunks);
  }

  /** Reads through the window (at most up to `fileSize`); resolves with the bytes read. */
  read(nodeid: number, offset: number, dst: Buffer, fileSize: number): Promise<number> {
    return this.chunks.read(nodeid, offset, dst, fileSize);
  }

  /** Writes through the window; the range must lie within the file. */
  write(nodeid: number, offset: number, src: Buffer, fileSize: number): Promise<number> {
    return this.chunks.write(nodeid, offset, src, fileSize);
  }

  /**
   * Reads like a guest kernel with DAX: through the window up to the file size
   * the caller knows, with FUSE_READ for what lies beyond it (the file may have
   * grown) and instead of the window when a mapping faults (the file shrank on
   * the host; its mappings are dropped so the next access maps afresh).
   */
  async readFile(nodeid: number, fh: number, offset: number, size: number, fileSize: number): Promise<Buffer> {
    const inWindow = Math.max(0, Math.min(size, fileSize - offset));
    const out = Buffer.alloc(inWindow);
    try {
      await this.chunks.read(nodeid, offset, out, fileSize);
    } catch (err) {
      if (!(err instanceof DaxFaultError)) throw err;
      await this.chunks.dropInode(nodeid);
      return this.driver.read(nodeid, fh, offset, size);
    }
    if (inWindow === size) return out;
    return Buffer.concat([out, await this.driver.read(nodeid, fh, offset + inWindow, size - inWindow)]);
  }

  /**
   * Writes through the window when the range lies within the file, else (the
   * write extends the file, or the mapping faults) with FUSE_WRITE, as Linux does.
   */
  async writeFile(nodeid: number, fh: number, offset: number, data: Buffer, fileSize: number): Promise<number> {
    if (offset + data.length <= fileSize) {
      try {
        return await this.chunks.write(nodeid, offset, data, fileSize);
      } catch (err) {
        if (!(err instanceof DaxFaultError)) throw err;
        await this.chunks.dropInode(nodeid);
      }
    }
    return this.driver.write(nodeid, fh, offset, data);
  }

  close(): void {
    this.window.close();
  }
}
