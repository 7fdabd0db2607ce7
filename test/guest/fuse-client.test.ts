import { describe, expect, it } from 'vitest';
import {
  FUSE_DONT_MASK,
  Opcode,
  fuse_create_in,
  fuse_entry_out,
  fuse_init_out,
  fuse_mkdir_in,
  fuse_open_out,
} from '../../src/fuse-server/protocol';
import { FUSE_OPS, type FuseChannel, FuseClient, type FuseReply } from '../../src/guest/fuse-driver';
import type { FuseCall } from '../../src/guest/fuse-transport';

/** A channel that records each request and answers it with a zeroed body of the room asked for. */
function recorder(initFlags: number): { channel: FuseChannel; calls: FuseCall[] } {
  const calls: FuseCall[] = [];
  const channel: FuseChannel = {
    call(req: FuseCall): Promise<FuseReply> {
      calls.push(req);
      const payload = Buffer.alloc(req.replySize);
      if (req.opcode === Opcode.FUSE_INIT) fuse_init_out.encode({ major: 7, minor: 38, flags: initFlags }, payload, 0);
      return Promise.resolve({ error: 0, payload, unique: BigInt(calls.length) });
    },
    post(req): Promise<void> {
      calls.push({ ...req, replySize: 0 });
      return Promise.resolve();
    },
  };
  return { channel, calls };
}

describe('FuseClient', () => {
  it('applies the umask itself unless FUSE_DONT_MASK was agreed, as the kernel does', async () => {
    for (const [flags, mode] of [
      [0, 0o750],
      [FUSE_DONT_MASK, 0o777],
    ]) {
      const { channel, calls } = recorder(flags);
      const client = new FuseClient(channel);
      await client.init();
      await client.mkdir(1, 'd', 0o777, 0o027);
      await client.create(1, 'f', 0, 0o777, 0o027);
      const [mkdir, create] = calls.slice(1);
      expect(fuse_mkdir_in.decode(mkdir.args![0], 0)).toEqual({ mode, umask: 0o027 });
      expect(fuse_create_in.decode(create.args![0], 0)).toMatchObject({ mode: 0o100000 | mode, umask: 0o027 });
    }
  });

  it('sends each method as its table entry says, and sizes the reply room from its out layout', async () => {
    const { channel, calls } = recorder(0);
    const client = new FuseClient(channel);
    await client.lookup(1, 'x');
    await client.create(1, 'f', 0, 0o644);
    expect(calls.map((c) => [c.opcode, c.replySize])).toEqual([
      [FUSE_OPS.lookup.opcode, fuse_entry_out.size],
      [FUSE_OPS.create.opcode, fuse_entry_out.size + fuse_open_out.size],
    ]);
    expect(calls[0].opcode).toBe(Opcode.FUSE_LOOKUP);
    expect(calls[1].opcode).toBe(Opcode.FUSE_CREATE);
  });
});
