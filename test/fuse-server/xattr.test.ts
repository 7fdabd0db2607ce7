import * as fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as P from '../../src/fuse-server/protocol';
import { Opcode } from '../../src/fuse-server/protocol';
import { Errno } from '../../src/sys/errno';
import { getxattr, listxattr, setxattr } from '../../src/sys/fs';
import { XATTR_CREATE, XATTR_REPLACE } from '../../src/guest/fuse-driver';
import { cstr, encode } from './fuse-driver';
import { Harness, LINUX_FLAGS, LINUX_FLAGS2, O_RDWR } from './harness';

let h: Harness;
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
function names(body: Buffer): string[] {
  return body.toString('latin1').split('\0').filter(Boolean).sort();
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

describe('xattrs off (the default, as in virtiofsd)', () => {
  it('answers every xattr request with ENOSYS and does not offer SETXATTR_EXT', () => {
    h = Harness.create({}, (d) => fs.writeFileSync(`${d}/f`, ''));
    expect(h.init().flags & P.FUSE_SETXATTR_EXT).toBe(0);
    const f = h.lookup(1, 'f').nodeid;
    // Without SETXATTR_EXT the guest sends the compat fuse_setxattr_in.
    expect(h.setxattr(f, 'user.a', 'x', 0, 0, false).error).toBe(-Errno.ENOSYS);
    expect(h.getxattr(f, 'user.a', 0).error).toBe(-Errno.ENOSYS);
    expect(h.listxattr(f, 0).error).toBe(-Errno.ENOSYS);
    expect(h.removexattr(f, 'user.a').error).toBe(-Errno.ENOSYS);
  });
});

describe('--xattr', () => {
  it('sets, probes, reads, lists and removes xattrs of files and directories', () => {
    h = Harness.create({ xattr: true }, (d) => {
      fs.writeFileSync(`${d}/f`, '');
      fs.mkdirSync(`${d}/dir`);
    });
    expect(h.init().flags & P.FUSE_SETXATTR_EXT).toBeTruthy();
    const f = h.lookup(1, 'f').nodeid;
    expect(h.setxattr(f, 'user.colour', 'blue').error).toBe(0);
    expect(hostGet(h.p('f'), 'user.colour')?.toString()).toBe('blue');
    // Size 0 is a probe: fuse_getxattr_out carries the length.
    const probe = h.getxattr(f, 'user.colour', 0);
    expect(P.fuse_getxattr_out.decode(probe.body, 0).size).toBe(4);
    expect(h.getxattr(f, 'user.colour', 64).body.toString()).toBe('blue');
    expect(h.getxattr(f, 'user.colour', 2).error).toBe(-Errno.ERANGE);
    expect(h.getxattr(f, 'user.none', 64).error).toBe(-Errno.ENODATA);
    expect(h.setxattr(f, 'user.colour', 'red', XATTR_CREATE).error).toBe(-Errno.EEXIST);
    expect(h.setxattr(f, 'user.other', 'x', XATTR_REPLACE).error).toBe(-Errno.ENODATA);
    expect(h.setxattr(f, 'user.other', 'x').error).toBe(0);
    const listProbe = h.listxattr(f, 0);
    expect(P.fuse_getxattr_out.decode(listProbe.body, 0).size).toBe('user.colour\0user.other\0'.length);
    expect(names(h.listxattr(f, 1024).body)).toEqual(['user.colour', 'user.other']);
    expect(h.listxattr(f, 5).error).toBe(-Errno.ERANGE);
    expect(h.removexattr(f, 'user.colour').error).toBe(0);
    expect(h.removexattr(f, 'user.colour').error).toBe(-Errno.ENODATA);
    expect(hostList(h.p('f'))).toEqual(['user.other']);

    const d = h.lookup(1, 'dir').nodeid;
    expect(h.setxattr(d, 'user.d', Buffer.from([0, 1, 2])).error).toBe(0);
    expect([...h.getxattr(d, 'user.d', 16).body]).toEqual([0, 1, 2]);
  });

  it('reaches symlinks themselves, not their targets', () => {
    h = Harness.create({ xattr: true }, (d) => {
      fs.writeFileSync(`${d}/target`, '');
      fs.symlinkSync('target', `${d}/link`);
    });
    h.init();
    const link = h.lookup(1, 'link').nodeid;
    // user.* xattrs are not allowed on symlinks; trusted.* are (for root).
    expect(h.setxattr(link, 'user.x', 'v').error).toBe(-Errno.EPERM);
    expect(h.setxattr(link, 'trusted.x', 'v').error).toBe(0);
    expect(h.getxattr(link, 'trusted.x', 16).body.toString()).toBe('v');
    expect(hostList(h.p('target'))).toEqual([]);
  });

  it('accepts the short fuse_setxattr_in of kernels without FUSE_SETXATTR_EXT', () => {
    h = Harness.create({ xattr: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init(LINUX_FLAGS & ~P.FUSE_SETXATTR_EXT);
    const f = h.lookup(1, 'f').nodeid;
    expect(h.setxattr(f, 'user.a', 'short', 0, 0, false).error).toBe(0);
    expect(hostGet(h.p('f'), 'user.a')?.toString()).toBe('short');
  });

  it('refuses POSIX ACL xattrs unless --posix-acl', () => {
    h = Harness.create({ xattr: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    const f = h.lookup(1, 'f').nodeid;
    expect(h.setxattr(f, 'system.posix_acl_access', aclBlob()).error).toBe(-Errno.EOPNOTSUPP);
    expect(h.getxattr(f, 'system.posix_acl_default', 0).error).toBe(-Errno.EOPNOTSUPP);
  });

  it('refuses malformed xattr requests', () => {
    h = Harness.create({ xattr: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    const f = h.lookup(1, 'f').nodeid;
    // A value longer than the request, a name without NUL, no arguments at all.
    const a = encode(P.fuse_setxattr_in, { size: 100, flags: 0, setxattr_flags: 0 });
    expect(h.fuse.request(Opcode.FUSE_SETXATTR, f, [a, cstr('user.a'), Buffer.from('short')]).error).toBe(-Errno.EINVAL);
    expect(h.fuse.request(Opcode.FUSE_GETXATTR, f, [encode(P.fuse_getxattr_in, { size: 0 }), Buffer.from('user.a')]).error).toBe(
      -Errno.EINVAL,
    );
    expect(h.fuse.request(Opcode.FUSE_LISTXATTR, f, []).error).toBe(-Errno.EINVAL);
    expect(h.fuse.request(Opcode.FUSE_REMOVEXATTR, f, []).error).toBe(-Errno.EINVAL);
  });
});

describe('--posix-acl', () => {
  it('negotiates POSIX_ACL with DONT_MASK and passes ACL xattrs', () => {
    h = Harness.create({ posixAcl: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    const out = h.init();
    expect(out.flags & (P.FUSE_POSIX_ACL | P.FUSE_DONT_MASK | P.FUSE_SETXATTR_EXT)).toBe(
      P.FUSE_POSIX_ACL | P.FUSE_DONT_MASK | P.FUSE_SETXATTR_EXT,
    );
    const f = h.lookup(1, 'f').nodeid;
    expect(h.setxattr(f, 'system.posix_acl_access', aclBlob()).error).toBe(0);
    expect(h.getxattr(f, 'system.posix_acl_access', 256).body.length).toBeGreaterThan(0);
  });

  it('applies the umask the guest left to it, and clears SGID when the kernel asks', () => {
    h = Harness.create({ posixAcl: true }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    const e = h.mkdir(1, 'd', 0o777, { umask: 0o027 });
    expect(e.attr.mode & 0o777).toBe(0o750);
    fs.chmodSync(h.p('f'), 0o2775);
    const f = h.lookup(1, 'f').nodeid;
    expect(h.setxattr(f, 'system.posix_acl_access', aclBlob(), 0, P.FUSE_SETXATTR_ACL_KILL_SGID).error).toBe(0);
    expect(fs.statSync(h.p('f')).mode & 0o2000).toBe(0);
  });

  it('fails INIT when the guest cannot do ACLs', () => {
    h = Harness.create({ posixAcl: true });
    const r = h.fuse.request(Opcode.FUSE_INIT, 0, [
      encode(P.fuse_init_in, { major: 7, minor: 38, max_readahead: 0, flags: LINUX_FLAGS & ~P.FUSE_POSIX_ACL, flags2: 0 }),
    ]);
    expect(r.error).toBe(-Errno.EPROTO);
    expect(h.fuse.request(Opcode.FUSE_STATFS, 1).error).toBe(-Errno.EIO);
  });
});

describe('--xattrmap', () => {
  it('prefixes every guest name and hides unprefixed host names (":map::user.virtiofs.:")', () => {
    h = Harness.create({ xattrmap: ':map::user.virtiofs.:' }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    setxattr(h.p('f'), 'user.host-only', Buffer.from('h'), 1, 0);
    const f = h.lookup(1, 'f').nodeid;
    expect(h.setxattr(f, 'trusted.overlay.opaque', 'y').error).toBe(0);
    expect(h.setxattr(f, 'user.mine', 'z').error).toBe(0);
    expect(hostList(h.p('f'))).toEqual(['user.host-only', 'user.virtiofs.trusted.overlay.opaque', 'user.virtiofs.user.mine']);
    expect(names(h.listxattr(f, 1024).body)).toEqual(['trusted.overlay.opaque', 'user.mine']);
    expect(P.fuse_getxattr_out.decode(h.listxattr(f, 0).body, 0).size).toBe('trusted.overlay.opaque\0user.mine\0'.length);
    expect(h.getxattr(f, 'trusted.overlay.opaque', 16).body.toString()).toBe('y');
    expect(h.removexattr(f, 'user.mine').error).toBe(0);
    expect(hostList(h.p('f'))).toEqual(['user.host-only', 'user.virtiofs.trusted.overlay.opaque']);
  });

  it('applies prefix, ok and bad rules in order, with the built-in final bad rule', () => {
    const rules = '/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ /bad/client/user.virtiofs.// /ok/client/user.//';
    h = Harness.create({ xattrmap: rules }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    setxattr(h.p('f'), 'trusted.host', Buffer.from('h'), 1, 0);
    const f = h.lookup(1, 'f').nodeid;
    expect(h.setxattr(f, 'trusted.t', '1').error).toBe(0);
    expect(h.setxattr(f, 'user.u', '2').error).toBe(0);
    // The guest may not reach the remapped names directly, nor names no rule lets through.
    expect(h.setxattr(f, 'user.virtiofs.trusted.t', '3').error).toBe(-Errno.EPERM);
    expect(h.setxattr(f, 'security.s', '4').error).toBe(-Errno.EPERM);
    expect(hostList(h.p('f'))).toEqual(['trusted.host', 'user.u', 'user.virtiofs.trusted.t']);
    // trusted.host is hidden; user.u has no server rule that passes it, so the final bad rule hides it.
    expect(names(h.listxattr(f, 1024).body)).toEqual(['trusted.t']);
  });

  it('answers unsupported rules with ENOTSUP', () => {
    h = Harness.create({ xattrmap: ':unsupported:client:security.:::ok:all:::' }, (d) => fs.writeFileSync(`${d}/f`, ''));
    h.init();
    const f = h.lookup(1, 'f').nodeid;
    expect(h.getxattr(f, 'security.selinux', 0).error).toBe(-Errno.ENOTSUP);
    expect(h.setxattr(f, 'user.ok', 'v').error).toBe(0);
  });
});

describe('--security-label', () => {
  it('stores the label the guest sends as a request extension (7.38) on CREATE, MKDIR, MKNOD and SYMLINK', () => {
    h = Harness.create({ securityLabel: true });
    expect(h.init().flags2 & P.FUSE_SECURITY_CTX_FLAGS2).toBeTruthy();
    const label = (v: string) => secctxBlock('security.virtiofs-test', Buffer.from(v));
    h.create(1, 'file', { extensions: label('file_t') });
    expect(hostGet(h.p('file'), 'security.virtiofs-test')?.toString()).toBe('file_t');
    h.fuse.ok(Opcode.FUSE_MKDIR, 1, [encode(P.fuse_mkdir_in, { mode: 0o755, umask: 0 }), cstr('dir')], { extensions: label('dir_t') });
    expect(hostGet(h.p('dir'), 'security.virtiofs-test')?.toString()).toBe('dir_t');
    h.fuse.ok(Opcode.FUSE_MKNOD, 1, [encode(P.fuse_mknod_in, { mode: 0o010644, rdev: 0, umask: 0 }), cstr('fifo')], {
      extensions: label('fifo_t'),
    });
    h.fuse.ok(Opcode.FUSE_SYMLINK, 1, [cstr('sym'), cstr('file')], { extensions: label('link_t') });
    const b = Buffer.alloc(64);
    fs.chmodSync(h.p('fifo'), 0o644);
    expect(b.subarray(0, getxattr(h.p('fifo'), 'security.virtiofs-test', b, 64)).toString()).toBe('fifo_t');
  });

  it('reads the label after the name from 7.36/7.37 kernels', () => {
    h = Harness.create({ securityLabel: true });
    h.init(LINUX_FLAGS, LINUX_FLAGS2, 37);
    const a = encode(P.fuse_create_in, { flags: O_RDWR | 0o100, mode: 0o100644, umask: 0, open_flags: 0 });
    h.fuse.ok(Opcode.FUSE_CREATE, 1, [a, cstr('old'), secctxBlock('security.virtiofs-test', Buffer.from('old_t'))]);
    expect(hostGet(h.p('old'), 'security.virtiofs-test')?.toString()).toBe('old_t');
  });

  it('takes the new name away again when the label cannot be stored, and refuses malformed blocks', () => {
    h = Harness.create({ securityLabel: true });
    h.init();
    // "bogus." is no xattr namespace: the host refuses it.
    expect(h.createRaw(1, 'unlabelled', { extensions: secctxBlock('bogus.label', Buffer.from('x')) }).error).toBe(-Errno.EOPNOTSUPP);
    expect(fs.existsSync(h.p('unlabelled'))).toBe(false);
    expect(h.session.stats.inodes).toBe(1);
    const bad = secctxBlock('security.x', Buffer.from('v'));
    bad.writeUInt32LE(4096, 0); // the header claims more than the extension holds
    expect(h.createRaw(1, 'bad', { extensions: bad }).error).toBe(-Errno.EINVAL);
    expect(fs.existsSync(h.p('bad'))).toBe(false);
    // No context at all (no LSM in the guest): a plain create.
    const none = Buffer.alloc(8);
    P.fuse_secctx_header.encode({ size: 8, nr_secctx: 0 }, none, 0);
    expect(h.createRaw(1, 'plain', { extensions: none }).error).toBe(0);
  });

  it('fails INIT when the guest offers no FUSE_SECURITY_CTX', () => {
    h = Harness.create({ securityLabel: true });
    const r = h.fuse.request(Opcode.FUSE_INIT, 0, [
      encode(P.fuse_init_in, { major: 7, minor: 38, max_readahead: 0, flags: LINUX_FLAGS, flags2: 0 }),
    ]);
    expect(r.error).toBe(-Errno.EPROTO);
  });
});
