/**
 * UID/GID translation between the guest's ids and the host's, configured with
 * `--translate-uid` / `--translate-gid` in the Rust virtiofsd's syntax:
 *
 *   map:GUEST:HOST:COUNT           1:1 both ways
 *   guest:GUEST:HOST:COUNT         1:1, guest -> host only
 *   host:HOST:GUEST:COUNT          1:1, host -> guest only
 *   squash-guest:GUEST:HOST:COUNT  COUNT guest ids -> one host id
 *   squash-host:HOST:GUEST:COUNT   COUNT host ids -> one guest id
 *   forbid-guest:GUEST:COUNT       guest ids refused (EPERM)
 *
 * The separator is the first character after the type (':' above). Ids no
 * rule covers map to themselves. Ranges of one direction must not overlap.
 */
import { Errno, fail } from './errors';

type Rule =
  | { kind: 'range'; from: number; count: number; to: number }
  | { kind: 'squash'; from: number; count: number; to: number }
  | { kind: 'forbid'; from: number; count: number };

const ID_LIMIT = 2 ** 32;

export class IdMapSyntaxError extends Error {
  override name = 'IdMapSyntaxError';
}

/** One direction of a translation: ordered, non-overlapping ranges. */
class Direction {
  readonly rules: Rule[] = [];

  add(rule: Rule, text: string): void {
    if (rule.count === 0) throw new IdMapSyntaxError(`'${text}': the count must not be 0`);
    if (rule.from + rule.count > ID_LIMIT) throw new IdMapSyntaxError(`'${text}': the range passes 2^32`);
    if (rule.kind === 'range' && rule.to + rule.count > ID_LIMIT) throw new IdMapSyntaxError(`'${text}': the target range passes 2^32`);
    for (const r of this.rules) {
      if (rule.from < r.from + r.count && r.from < rule.from + rule.count) {
        throw new IdMapSyntaxError(`'${text}' overlaps an earlier mapping`);
      }
    }
    this.rules.push(rule);
  }

  map(id: number): number {
    for (const r of this.rules) {
      if (id < r.from || id >= r.from + r.count) continue;
      if (r.kind === 'forbid') return fail(Errno.EPERM);
      return r.kind === 'range' ? r.to + (id - r.from) : r.to;
    }
    return id;
  }
}

/** Translation of one kind of id (uids or gids). */
export class IdMap {
  private readonly toHostRules = new Direction();
  private readonly toGuestRules = new Direction();

  /** Parses the command-line rules; throws IdMapSyntaxError on the first bad one. */
  constructor(specs: readonly string[] = []) {
    for (const spec of specs) this.add(spec);
  }

  get identity(): boolean {
    return this.toHostRules.rules.length === 0 && this.toGuestRules.rules.length === 0;
  }

  /** The host id for a guest id; EPERM for a forbidden one. */
  toHost(guestId: number): number {
    return this.toHostRules.map(guestId);
  }

  /** The guest id for a host id. */
  toGuest(hostId: number): number {
    return this.toGuestRules.map(hostId);
  }

  private add(spec: string): void {
    const m = /^([A-Za-z0-9_-]+)([^A-Za-z0-9_-])(.*)$/.exec(spec);
    if (!m) throw new IdMapSyntaxError(`'${spec}': expected TYPE:NUMBERS`);
    const [, type, sep, rest] = m;
    const numbers = rest.split(sep).map((v) => {
      if (!/^\d+$/.test(v) || Number(v) >= ID_LIMIT) throw new IdMapSyntaxError(`'${spec}': '${v}' is not an id`);
      return Number(v);
    });
    const want = type.toLowerCase() === 'forbid-guest' ? 2 : 3;
    if (numbers.length !== want) throw new IdMapSyntaxError(`'${spec}': ${type} takes ${want} numbers, got ${numbers.length}`);
    const [a, b, count] = numbers;
    switch (type.toLowerCase()) {
      case 'map':
        this.toHostRules.add({ kind: 'range', from: a, to: b, count }, spec);
        this.toGuestRules.add({ kind: 'range', from: b, to: a, count }, spec);
        return;
      case 'guest':
        return this.toHostRules.add({ kind: 'range', from: a, to: b, count }, spec);
      case 'host':
        return this.toGuestRules.add({ kind: 'range', from: a, to: b, count }, spec);
      case 'squash-guest':
        return this.toHostRules.add({ kind: 'squash', from: a, to: b, count }, spec);
      case 'squash-host':
        return this.toGuestRules.add({ kind: 'squash', from: a, to: b, count }, spec);
      case 'forbid-guest':
        return this.toHostRules.add({ kind: 'forbid', from: a, count: b }, spec);
      default:
        throw new IdMapSyntaxError(`'${spec}': unknown mapping type '${type}' (map, guest, host, squash-guest, squash-host, forbid-guest)`);
    }
  }
}
