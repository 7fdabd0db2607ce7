import { describe, expect, it } from 'vitest';
import { FuseError } from '../../src/fuse-server/errors';
import { IdMap, IdMapSyntaxError } from '../../src/fuse-server/id-map';
import { XattrMap, XattrMapSyntaxError } from '../../src/fuse-server/xattr-map';
import { Errno } from '../../src/sys/errno';

const b = (s: string) => Buffer.from(s, 'latin1');
function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (err) {
    if (err instanceof FuseError) return err.errno;
    throw err;
  }
  return 0;
}

describe('XattrMap (virtiofsd(1) syntax)', () => {
  it('parses the man page examples', () => {
    for (const spec of [
      ':prefix:all::user.virtiofs.::bad:all:::',
      ':map::user.virtiofs.:',
      '/prefix/all/trusted./user.virtiofs./\n /bad/server//trusted./\n /bad/client/user.virtiofs.//\n /ok/all///',
      '/map/trusted./user.virtiofs./',
      '/bad/all/security./security./ /ok/all///',
      ':map:security.selinux:trusted.virtiofs.:',
    ]) {
      expect(() => new XattrMap(spec)).not.toThrow();
    }
  });

  it('maps both ways as the rules say', () => {
    const m = new XattrMap('/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ /bad/client/user.virtiofs.// /ok/all///');
    expect(m.toHost(b('trusted.x')).toString()).toBe('user.virtiofs.trusted.x');
    expect(m.toHost(b('user.y')).toString()).toBe('user.y');
    expect(errnoOf(() => m.toHost(b('user.virtiofs.z')))).toBe(Errno.EPERM);
    expect(m.toGuest(b('user.virtiofs.trusted.x'))?.toString()).toBe('trusted.x');
    expect(m.toGuest(b('trusted.host'))).toBeNull();
    expect(m.toGuest(b('user.y'))?.toString()).toBe('user.y');
  });

  it('expands map with a key into prefix, hide, deny and pass rules', () => {
    const m = new XattrMap(':map:trusted.:user.virtiofs.:');
    expect(m.toHost(b('trusted.a')).toString()).toBe('user.virtiofs.trusted.a');
    expect(errnoOf(() => m.toHost(b('user.virtiofs.trusted.a')))).toBe(Errno.EPERM);
    expect(m.toHost(b('security.x')).toString()).toBe('security.x');
    expect(m.toGuest(b('trusted.real'))).toBeNull();
    expect(m.toGuest(b('user.virtiofs.trusted.a'))?.toString()).toBe('trusted.a');
    expect(m.toGuest(b('security.x'))?.toString()).toBe('security.x');
  });

  it('ends with an implicit bad rule', () => {
    const m = new XattrMap(':ok:client:user.::');
    expect(m.toHost(b('user.a')).toString()).toBe('user.a');
    expect(errnoOf(() => m.toHost(b('trusted.a')))).toBe(Errno.EPERM);
    expect(m.toGuest(b('user.a'))).toBeNull();
    const u = new XattrMap(':unsupported:all:security.:security.:');
    expect(errnoOf(() => u.toHost(b('security.selinux')))).toBe(Errno.ENOTSUP);
    expect(u.toGuest(b('security.selinux'))).toBeNull();
  });

  it('rejects malformed rule lists with a reason', () => {
    const bad: [string, RegExp][] = [
      ['', /no rules/],
      ['   ', /no rules/],
      [':prefix:all:trusted.', /missing a ':' separator/],
      [':frob:all:::', /unknown rule type 'frob'/],
      [':ok:nowhere:::', /unknown scope 'nowhere'/],
      [':map::user.x.::ok:all:::', /'map' rule must be the last one/],
    ];
    for (const [spec, why] of bad) {
      expect(() => new XattrMap(spec)).toThrow(XattrMapSyntaxError);
      expect(() => new XattrMap(spec)).toThrow(why);
    }
  });
});

describe('IdMap (--translate-uid/--translate-gid syntax)', () => {
  it('maps ranges both ways, one way, squashed and forbidden', () => {
    const m = new IdMap([
      'map:1000:100000:100',
      'squash-guest:5000:65534:1000',
      'host:0:2000:1',
      'squash-host:70000:3000:10',
      'forbid-guest:9000:1',
    ]);
    expect(m.toHost(1005)).toBe(100005);
    expect(m.toGuest(100005)).toBe(1005);
    expect(m.toHost(5999)).toBe(65534);
    expect(m.toGuest(0)).toBe(2000);
    expect(m.toHost(0)).toBe(0);
    expect(m.toGuest(70009)).toBe(3000);
    expect(m.toHost(42)).toBe(42);
    expect(errnoOf(() => m.toHost(9000))).toBe(Errno.EPERM);
    expect(new IdMap().identity).toBe(true);
    expect(new IdMap(['guest/1/2/3']).toHost(2)).toBe(3);
  });

  it('rejects bad rules with a reason', () => {
    const bad: [string, RegExp][] = [
      ['map:1:2', /takes 3 numbers, got 2/],
      ['forbid-guest:1:2:3', /takes 2 numbers, got 3/],
      ['swap:1:2:3', /unknown mapping type 'swap'/],
      ['map:1:x:3', /'x' is not an id/],
      ['map:1:2:0', /count must not be 0/],
      ['map:4294967295:0:2', /passes 2\^32/],
      ['nothing', /expected TYPE:NUMBERS/],
    ];
    for (const [spec, why] of bad) expect(() => new IdMap([spec])).toThrow(why);
    expect(() => new IdMap(['map:0:100:10', 'guest:5:200:1'])).toThrow(/overlaps an earlier mapping/);
    expect(() => new IdMap(['map:0:100:10'])).not.toThrow(IdMapSyntaxError);
  });
});
