/**
 * xattr name mapping, in the reference daemon's `-o xattrmap=` syntax (see
 * virtiofsd(1), "EXTENDED ATTRIBUTE (XATTR) MAPPING"). A map is a list of
 * rules, each `<sep>type<sep>scope<sep>key<sep>prepend<sep>` with `sep` the
 * rule's first non-blank character:
 *
 * - type `prefix`: client names starting with `key` get `prepend` put in
 *   front; server names starting with `prepend` lose it.
 * - type `ok`: matching names pass unchanged.
 * - type `bad`: matching client names fail with EPERM; matching server
 *   names are hidden.
 * - type `unsupported`: like bad, but ENOTSUP.
 * - scope `client` matches `key` against names the guest sends (get/set/
 *   remove), `server` matches `prepend` against names the host lists, `all`
 *   both.
 * - `<sep>map<sep>key<sep>prepend<sep>` is shorthand for the four rules that
 *   prefix `key` names and hide/deny the rest consistently; it must be last.
 *
 * The first matching rule decides. Like the reference daemon, a final
 * `bad` rule for everything is added, so unmatched names are refused.
 */
import { Errno, fail } from './errors';

const CLIENT = 1;
const SERVER = 2;

type RuleType = 'prefix' | 'ok' | 'bad' | 'unsupported';

interface Rule {
  type: RuleType;
  scope: number;
  key: string;
  prepend: string;
}

export class XattrMapSyntaxError extends Error {
  override name = 'XattrMapSyntaxError';
}

const SCOPES: Record<string, number> = { client: CLIENT, server: SERVER, all: CLIENT | SERVER };
const TYPES: readonly string[] = ['prefix', 'ok', 'bad', 'unsupported'];

/** Names are raw bytes; latin1 keeps every byte as one char, so prefix tests are byte tests. */
function text(name: Buffer): string {
  return name.toString('latin1');
}

export class XattrMap {
  private readonly rules: Rule[] = [];

  /** Parses a rule list; throws XattrMapSyntaxError with the reason. */
  constructor(spec: string) {
    let pos = 0;
    const fields = (sep: string, n: number): string[] => {
      const out: string[] = [];
      for (let i = 0; i < n; i++) {
        const end = spec.indexOf(sep, pos);
        if (end < 0) throw new XattrMapSyntaxError(`xattrmap: rule at ${pos} is missing a '${sep}' separator`);
        out.push(spec.slice(pos, end));
        pos = end + 1;
      }
      return out;
    };
    for (;;) {
      while (pos < spec.length && /\s/.test(spec[pos])) pos++;
      if (pos >= spec.length) break;
      const sep = spec[pos++];
      const [type] = fields(sep, 1);
      if (type === 'map') {
        const [key, prepend] = fields(sep, 2);
        if (spec.slice(pos).trim() !== '') throw new XattrMapSyntaxError("xattrmap: a 'map' rule must be the last one");
        this.addMapRules(key, prepend);
        break;
      }
      if (!TYPES.includes(type)) throw new XattrMapSyntaxError(`xattrmap: unknown rule type '${type}' (prefix, ok, bad, unsupported, map)`);
      const [scopeName, key, prepend] = fields(sep, 3);
      const scope = SCOPES[scopeName];
      if (!scope) throw new XattrMapSyntaxError(`xattrmap: unknown scope '${scopeName}' (client, server, all)`);
      this.rules.push({ type: type as RuleType, scope, key, prepend });
    }
    if (this.rules.length === 0) throw new XattrMapSyntaxError('xattrmap: no rules');
    this.rules.push({ type: 'bad', scope: CLIENT | SERVER, key: '', prepend: '' });
  }

  /**
   * The host name for a name the guest sends (without its NUL), or a thrown
   * EPERM / ENOTSUP when a rule refuses it.
   */
  toHost(name: Buffer): Buffer {
    const n = text(name);
    for (const r of this.rules) {
      if (!(r.scope & CLIENT) || !n.startsWith(r.key)) continue;
      switch (r.type) {
        case 'bad':
          return fail(Errno.EPERM);
        case 'unsupported':
          return fail(Errno.ENOTSUP);
        case 'ok':
          return name;
        case 'prefix':
          return Buffer.from(r.prepend + n, 'latin1');
      }
    }
    return fail(Errno.EPERM);
  }

  /** The name the guest sees for a host name, or null when it is hidden. */
  toGuest(name: Buffer): Buffer | null {
    const n = text(name);
    for (const r of this.rules) {
      if (!(r.scope & SERVER) || !n.startsWith(r.prepend)) continue;
      switch (r.type) {
        case 'bad':
        case 'unsupported':
          return null;
        case 'ok':
          return name;
        case 'prefix':
          return Buffer.from(n.slice(r.prepend.length), 'latin1');
      }
    }
    return null;
  }

  /** The reference daemon's expansion of `map`. */
  private addMapRules(key: string, prepend: string): void {
    const all = CLIENT | SERVER;
    this.rules.push({ type: 'prefix', scope: all, key, prepend });
    if (key === '') {
      // Everything is prefixed: host names without the prefix are hidden.
      this.rules.push({ type: 'bad', scope: all, key: '', prepend: '' });
      return;
    }
    // Host names that look like unprefixed `key` names are hidden; the guest may not reach
    // prefixed names directly; everything else passes.
    this.rules.push({ type: 'bad', scope: SERVER, key: '', prepend: key });
    this.rules.push({ type: 'bad', scope: CLIENT, key: prepend, prepend: '' });
    this.rules.push({ type: 'ok', scope: all, key: '', prepend: '' });
  }
}
