import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { getxattr, listxattr, setxattr } from '../../src/sys/fs';
import { type FuseClient, XATTR_CREATE, XATTR_REPLACE } from '../../src/guest/fuse-driver';
import { type DirectTransport, cstr, encode, replyError } from './fuse-driver';
import { Harness, LINUX_FLAGS, LINUX_FLAGS2, O_CREAT, O_RDWR } from './harness';

let h: Harness;
let c: FuseClient<DirectTransport>;
afterEach(() => h?.close());

function hostGet(file: string, name: string): Buffer | null {
  const b = Buffer.alloc(256);
  try {
    return b.subarray(0, getxattr(file, name, b, b.length));
  } catch {
    return null;
  }
}
function hostList(file: string): string[] {
  const b = Buffer.alloc(4096);
  const n = listxattr(file, b, b.length);
  return b.subarray(0, n).toString('latin1').split('\0').filter(Boolean).sort();
}
/** The listed names, sorted. */
async function names(list: Promise<string[]>): Promise<string[]> {
  return (await list).sort();
}
/** A harness as `Harness.create` makes it, with its client in `c`. */
function harness(...args: Parameters<typeof Harness.create>): Harness {
  h = Harness.create(...args);
  c = h.client;
  return h;
}

/**
 * An access ACL in the kernel's xattr format: user::rw-, user:1000:r--,
 * group::r--, mask::r--, other::r-- (the named entry keeps it from being
 * folded into the mode bits).
 */
function aclBlob(): Buffer {
  const NO_ID = 0xffffffff;
  const entries: [number, number, number][] = [
    [0x01, 6, NO_ID], // ACL_USER_OBJ
    [0x02, 4, 1000], // ACL_USER
    [0x04, 4, NO_ID], // ACL_GROUP_OBJ
    [0x10, 4, NO_ID], // ACL_MASK
    [0x20, 4, NO_ID], // ACL_OTHER
  ];
  const b = Buffer.alloc(4 + entries.length * 8);
  b.writeUInt32LE(2, 0); // POSIX_ACL_XATTR_VERSION
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + i * 8);
    b.writeUInt16LE(perm, 6 + i * 8);
    b.writeUInt32LE(id, 8 + i * 8);
  });
  return b;
}

/** A security-context block (fuse_secctx_header + one context), padded to 8 bytes. */
export function secctxBlock(name: string, value: Buffer): Buffer {
  const body = Buffer.concat([encode(P.fuse_secctx, { size: value.length }), cstr(name), value]);
  const size = P.fuse_secctx_header.size + P.fuseRecAlign(body.length);
  const out = Buffer.alloc(size);
  P.fuse_secctx_header.encode({ size, nr_secctx: 1 }, out, 0);
  body.copy(out, P.fuse_secctx_header.size);
  return out;
}

describe('xattrs off (the default, as in virtiofsd)', async () => {
  it('answers every xattr request with ENOSYS and does not offer SETXATTR_EXT', async () => {
    harness({}, (d) => fs.writeFileSync(`${d}/f`, ''));
    expect((await h.start()).flags & P.FUSE_SETXATTR_EXT).toBe(0);
    const f = (await c.lookup(1, 'f')).nodeid;
    // Without SETXATTR_EXT the guest sends the compat fuse_setxattr_in.
    expect(await replyError(c.setxattr(f, 'user.a', 'x'))).toBe(-Errno.ENOSYS);
    expect(await replyError(c.getxattrSize(f, 'user.a'))).toBe(-Errno.ENOSYS);
    expect(await replyError(c.listxattrSize(f))).toBe(-Errno.ENOSYS);
    expect(await replyError(c.removexattr(f, 'user.a'))).toBe(-Errno.ENOSYS);
  });
});

describe('--xattr', async () => {
  it('sets, probes, reads, lists and removes xattrs of files and directories', async () => {
    harness({ xattr: true }, (d) => {
      fs.writeFileSync(`${d}/f`, '');
      fs.mkdirSync(`${d}/dir`);
    });
    expect((await h.start()).flags & P.FUSE_SETXATTR_EXT).toBeTruthy();
    const f = (await c.lookup(1, 'f')).nodeid;
    expect(await replyError(c.setxattr(f, 'user.colour', 'blue'))).toBe(0);
    expect(hostGet(h.p('f'), 'user.colour')?.toString()).toBe('blue');
    // Size 0 is a probe: fuse_getxattr_out carries the length.
    expect(await c.getxattrSize(f, 'user.colour')).toBe(4);
    expect((await c.getxattr(f, 'user.colour', 64)).toString()).toBe('blue');
    expect(await replyError(c.getxattr(f, 'user.colour', 2))).toBe(-Errno.ERANGE);
    expect(await replyError(c.getxattr(f, 'user.none', 64))).toBe(-Errno.ENODATA);
    expect(await replyError(c.setxattr(f, 'user.colour', 'red', XATTR_CREATE))).toBe(-Errno.EEXIST);
    expect(await replyError(c.setxattr(f, 'user.other', 'x', XATTR_REPLACE))).toBe(-Errno.ENODATA);
    expect(await replyError(c.setxattr(f, 'user.other', 'x'))).toBe(0);
    expect(await c.listxattrSize(f)).toBe('user.colour\0user.other\0'.length);
    expect(await names(c.listxattr(f, 1024))).toEqual(['user.colour', 'user.other']);
    expect(await replyError(c.listxattr(f, 5))).toBe(-Errno.ERANGE);
    expect(await replyError(c.removexattr(f, 'user.colour'))).toBe(0);
    expect(await replyError(c.removexattr(f, 'user.colour'))).toBe(-Errno.ENODATA);
    expect(hostList(h.p('f'))).toEqual(['user.other']);

    const d = (await c.lookup(1, 'dir')).nodeid;
    expect(await replyError(c.setxattr(d, 'user.d', Buffer.from([0, 1, 2])))).toBe(0);
    expect([...(await c.getxattr(d, 'user.d', 16))]).toEqual([0, 1, 2]);
  });

  it('reaches symlinks themselves, not their targets', async () => {
    harness({ xattr: true }, (d) => {
      fs.writeFileSync(`${d}/target`, '');
      fs.symlinkSync('target', `${d}/link`);
    });
    await h.start();
    const link = (await c.lookup(1, 'link')).nodeid;
    // user.* xattrs are not allowed on symlinks; trusted.* are (for root).
    expect(await replyError(c.setxattr(link, 'user.x', 'v'))).toBe(-Errno.EPERM);
    expect(await replyError(c.setxattr(link, 'trusted.x', 'v'))).toBe(0);
    expect((await c.getxattr(link, 'trusted.x', 16)).toString()).toBe('v');
    expect(hostList(h.p('target'))).toEqual([]);
  });

  it('accepts the short fuse_setxattr_in of kernels without FUSE_SETXATTR_EXT', async () => {
    harness({ xattr: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start(LINUX_FLAGS & ~P.FUSE_SETXATTR_EXT);
    const f = (await c.lookup(1, 'f')).nodeid;
    expect(await replyError(c.setxattr(f, 'user.a', 'short'))).toBe(0);
    expect(hostGet(h.p('f'), 'user.a')?.toString()).toBe('short');
  });

  it('refuses POSIX ACL xattrs unless --posix-acl', async () => {
    harness({ xattr: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const f = (await c.lookup(1, 'f')).nodeid;
    expect(await replyError(c.setxattr(f, 'system.posix_acl_access', aclBlob()))).toBe(-Errno.EOPNOTSUPP);
    expect(await replyError(c.getxattrSize(f, 'system.posix_acl_default'))).toBe(-Errno.EOPNOTSUPP);
  });

  it('refuses malformed xattr requests', async () => {
    harness({ xattr: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const f = (await c.lookup(1, 'f')).nodeid;
    // A value longer than the request, a name without NUL, no arguments at all.
    const a = encode(P.fuse_setxattr_in, { size: 100, flags: 0, setxattr_flags: 0 });
    expect((await h.raw(Opcode.FUSE_SETXATTR, f, [a, cstr('user.a'), Buffer.from('short')], { replySize: 0 })).error).toBe(-Errno.EINVAL);
    expect(
      (await h.raw(Opcode.FUSE_GETXATTR, f, [encode(P.fuse_getxattr_in, { size: 0 }), Buffer.from('user.a')], { replySize: 8 })).error,
    ).toBe(-Errno.EINVAL);
    expect((await h.raw(Opcode.FUSE_LISTXATTR, f, [], { replySize: 8 })).error).toBe(-Errno.EINVAL);
    expect((await h.raw(Opcode.FUSE_REMOVEXATTR, f, [], { replySize: 0 })).error).toBe(-Errno.EINVAL);
  });
});

describe('--posix-acl', async () => {
  it('negotiates POSIX_ACL with DONT_MASK and passes ACL xattrs', async () => {
    harness({ posixAcl: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    const out = await h.start();
    expect(out.flags & (P.FUSE_POSIX_ACL | P.FUSE_DONT_MASK | P.FUSE_SETXATTR_EXT)).toBe(
      P.FUSE_POSIX_ACL | P.FUSE_DONT_MASK | P.FUSE_SETXATTR_EXT,
    );
    const f = (await c.lookup(1, 'f')).nodeid;
    expect(await replyError(c.setxattr(f, 'system.posix_acl_access', aclBlob()))).toBe(0);
    expect((await c.getxattr(f, 'system.posix_acl_access', 256)).length).toBeGreaterThan(0);
  });

  it('applies the umask the guest left to it, and clears SGID when the kernel asks', async () => {
    harness({ posixAcl: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const e = await c.mkdir(1, 'd', 0o777, 0o027);
    expect(e.attr.mode & 0o777).toBe(0o750);
    fs.chmodSync(h.p('f'), 0o2775);
    const f = (await c.lookup(1, 'f')).nodeid;
    expect(await replyError(c.setxattr(f, 'system.posix_acl_access', aclBlob(), 0, P.FUSE_SETXATTR_ACL_KILL_SGID))).toBe(0);
    expect(fs.statSync(h.p('f')).mode & 0o2000).toBe(0);
  });

  it('fails INIT when the guest cannot do ACLs', async () => {
    harness({ posixAcl: true });
    expect(await replyError(c.init({ major: 7, minor: 38, maxReadahead: 0, flags: LINUX_FLAGS & ~P.FUSE_POSIX_ACL, flags2: 0 }))).toBe(
      -Errno.EPROTO,
    );
    expect(await replyError(c.statfs(1))).toBe(-Errno.EIO);
  });
});

describe('--xattrmap', async () => {
  it('prefixes every guest name and hides unprefixed host names (":map::user.virtiofs.:")', async () => {
    harness({ xattrmap: ':map::user.virtiofs.:' }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    setxattr(h.p('f'), 'user.host-only', Buffer.from('h'), 1, 0);
    const f = (await c.lookup(1, 'f')).nodeid;
    expect(await replyError(c.setxattr(f, 'trusted.overlay.opaque', 'y'))).toBe(0);
    expect(await replyError(c.setxattr(f, 'user.mine', 'z'))).toBe(0);
    expect(hostList(h.p('f'))).toEqual(['user.host-only', 'user.virtiofs.trusted.overlay.opaque', 'user.virtiofs.user.mine']);
    expect(await names(c.listxattr(f, 1024))).toEqual(['trusted.overlay.opaque', 'user.mine']);
    expect(await c.listxattrSize(f)).toBe('trusted.overlay.opaque\0user.mine\0'.length);
    expect((await c.getxattr(f, 'trusted.overlay.opaque', 16)).toString()).toBe('y');
    expect(await replyError(c.removexattr(f, 'user.mine'))).toBe(0);
    expect(hostList(h.p('f'))).toEqual(['user.host-only', 'user.virtiofs.trusted.overlay.opaque']);
  });

  it('applies prefix, ok and bad rules in order, with the built-in final bad rule', async () => {
    const rules = '/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ /bad/client/user.virtiofs.// /ok/client/user.//';
    harness({ xattrmap: rules }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    setxattr(h.p('f'), 'trusted.host', Buffer.from('h'), 1, 0);
    const f = (await c.lookup(1, 'f')).nodeid;
    expect(await replyError(c.setxattr(f, 'trusted.t', '1'))).toBe(0);
    expect(await replyError(c.setxattr(f, 'user.u', '2'))).toBe(0);
    // The guest may not reach the remapped names directly, nor names no rule lets through.
    expect(await replyError(c.setxattr(f, 'user.virtiofs.trusted.t', '3'))).toBe(-Errno.EPERM);
    expect(await replyError(c.setxattr(f, 'security.s', '4'))).toBe(-Errno.EPERM);
    expect(hostList(h.p('f'))).toEqual(['trusted.host', 'user.u', 'user.virtiofs.trusted.t']);
    // trusted.host is hidden; user.u has no server rule that passes it, so the final bad rule hides it.
    expect(await names(c.listxattr(f, 1024))).toEqual(['trusted.t']);
  });

  it('answers unsupported rules with ENOTSUP', async () => {
    harness({ xattrmap: ':unsupported:client:security.:::ok:all:::' }, (d) => fs.writeFileSync(`${d}/f`, ''));
    await h.start();
    const f = (await c.lookup(1, 'f')).nodeid;
    expect(await replyError(c.getxattrSize(f, 'security.selinux'))).toBe(-Errno.ENOTSUP);
    expect(await replyError(c.setxattr(f, 'user.ok', 'v'))).toBe(0);
  });
});

describe('--security-label', async () => {
  it('stores the label the guest sends as a request extension (7.38) on CREATE, MKDIR, MKNOD and SYMLINK', async () => {
    harness({ securityLabel: true });
    expect((await h.start()).flags2 & P.FUSE_SECURITY_CTX_FLAGS2).toBeTruthy();
    const label = (v: string) => secctxBlock('security.virtiofs-test', Buffer.from(v));
    await c.create(1, 'file', O_RDWR | O_CREAT, 0o644, 0o022, { extensions: label('file_t') });
    expect(hostGet(h.p('file'), 'security.virtiofs-test')?.toString()).toBe('file_t');
    await c.mkdir(1, 'dir', 0o755, 0, { extensions: label('dir_t') });
    expect(hostGet(h.p('dir'), 'security.virtiofs-test')?.toString()).toBe('dir_t');
    await c.mknod(1, 'fifo', 0o010644, 0, 0, { extensions: label('fifo_t') });
    await c.symlink(1, 'sym', 'file', { extensions: label('link_t') });
    const b = Buffer.alloc(64);
    fs.chmodSync(h.p('fifo'), 0o644);
    expect(b.subarray(0, getxattr(h.p('fifo'), 'security.virtiofs-test', b, 64)).toString()).toBe('fifo_t');
  });

  it('reads the label after the name from 7.36/7.37 kernels', async () => {
    harness({ securityLabel: true });
    await h.start(LINUX_FLAGS, LINUX_FLAGS2, 37);
    const a = encode(P.fuse_create_in, { flags: O_RDWR | 0o100, mode: 0o100644, umask: 0, open_flags: 0 });
    const old = await h.raw(Opcode.FUSE_CREATE, 1, [a, cstr('old'), secctxBlock('security.virtiofs-test', Buffer.from('old_t'))], {
      replySize: 4096,
    });
    expect(old.error).toBe(0);
    expect(hostGet(h.p('old'), 'security.virtiofs-test')?.toString()).toBe('old_t');
  });

  it('takes the new name away again when the label cannot be stored, and refuses malformed blocks', async () => {
    harness({ securityLabel: true });
    await h.start();
    // "bogus." is no xattr namespace: the host refuses it.
    expect(
      await replyError(
        c.create(1, 'unlabelled', O_RDWR | O_CREAT, 0o644, 0o022, { extensions: secctxBlock('bogus.label', Buffer.from('x')) }),
      ),
    ).toBe(-Errno.EOPNOTSUPP);
    expect(fs.existsSync(h.p('unlabelled'))).toBe(false);
    expect(h.session.stats.inodes).toBe(1);
    const bad = secctxBlock('security.x', Buffer.from('v'));
    bad.writeUInt32LE(4096, 0); // the header claims more than the extension holds
    expect(await replyError(c.create(1, 'bad', O_RDWR | O_CREAT, 0o644, 0o022, { extensions: bad }))).toBe(-Errno.EINVAL);
    expect(fs.existsSync(h.p('bad'))).toBe(false);
    // No context at all (no LSM in the guest): a plain create.
    const none = Buffer.alloc(8);
    P.fuse_secctx_header.encode({ size: 8, nr_secctx: 0 }, none, 0);
    expect(await replyError(c.create(1, 'plain', O_RDWR | O_CREAT, 0o644, 0o022, { extensions: none }))).toBe(0);
  });

  it('fails INIT when the guest offers no FUSE_SECURITY_CTX', async () => {
    harness({ securityLabel: true });
    expect(await replyError(c.init({ major: 7, minor: 38, maxReadahead: 0, flags: LINUX_FLAGS, flags2: 0 }))).toBe(-Errno.EPROTO);
  });
});
