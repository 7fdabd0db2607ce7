/**
 * A small deterministic PRNG for the fuzzers (mulberry32), and the seed and
 * case-count plumbing: FUZZ_SEED pins the seed, FUZZ_CASES the case count.
 */

export class Prng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A generator for case `index` of a run seeded `seed`: each case can be replayed on its own. */
  static forCase(seed: number, index: number): Prng {
    return new Prng(Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35));
  }

  /** A uniform u32. */
  u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [0, n). */
  below(n: number): number {
    return n <= 0x1_0000_0000 ? Math.floor((this.u32() / 0x1_0000_0000) * n) : Math.floor(this.float() * n);
  }

  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + this.below(hi - lo + 1);
  }

  float(): number {
    return (this.u32() * 0x1_0000_0000 + this.u32()) / 2 ** 64;
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  bytes(n: number): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (v >>> (8 * j)) & 0xff;
    }
    return out;
  }

  /** A size biased towards the edges: 0, tiny, around `typical`, or anything up to `max`. */
  size(typical: number, max: number): number {
    switch (this.below(5)) {
      case 0:
        return 0;
      case 1:
        return this.int(1, 8);
      case 2:
        return Math.max(0, typical + this.int(-8, 8));
      case 3:
        return this.below(max + 1);
      default:
        return this.below(Math.min(max, 2 * typical + 16) + 1);
    }
  }

  /** A copy of `buf` with a few bytes flipped, overwritten with edge values, cut short or extended. */
  mutate(buf: Buffer): Buffer {
    let out = Buffer.from(buf);
    const rounds = this.int(1, 4);
    for (let r = 0; r < rounds; r++) {
      switch (this.below(6)) {
        case 0:
          if (out.length) out[this.below(out.length)] ^= 1 << this.below(8);
          break;
        case 1:
          if (out.length) out[this.below(out.length)] = this.pick([0, 0xff, 0x7f, 0x80, 1]);
          break;
        case 2:
          if (out.length >= 4) {
            // Mostly at field boundaries, sometimes straddling them.
            const at = this.chance(0.8) ? (this.below(out.length - 3) >> 2) << 2 : this.below(out.length - 3);
            out.writeUInt32LE(this.pick([0, 0xffffffff, 0x7fffffff, 0x80000000, 1, 4096, 0x10000]), at);
          }
          break;
        case 3:
          out = out.subarray(0, this.below(out.length + 1));
          break;
        case 4:
          out = Buffer.concat([out, this.bytes(this.int(1, 64))]);
          break;
        default:
          if (out.length >= 8) {
            const at = (this.below(out.length - 7) >> 3) << 3;
            out.writeBigUInt64LE(this.pick([0n, 0xffffffffffffffffn, 1n << 63n, 1n << 53n, 0x100000000n]), at);
          }
      }
    }
    return out;
  }
}

/** The seed every CI run replays. */
export const FIXED_SEED = 0x5eed_f00d;

/** Seeds to run: FUZZ_SEED alone if set, else the fixed one and a fresh random one. */
export function fuzzSeeds(): number[] {
  const pinned = process.env.FUZZ_SEED;
  if (pinned !== undefined && pinned !== '') {
    const n = Number(pinned);
    if (!Number.isInteger(n)) throw new Error(`FUZZ_SEED must be an integer, not ${pinned}`);
    return [n >>> 0];
  }
  return [FIXED_SEED, (Math.random() * 0x1_0000_0000) >>> 0];
}

/** Cases per seed: FUZZ_CASES (a total for the seam) split across the seeds run. */
export function casesPerSeed(defaultTotal: number, seeds: number): number {
  const env = process.env.FUZZ_CASES;
  const total = env !== undefined && env !== '' ? Number(env) : defaultTotal;
  if (!Number.isInteger(total) || total < 1) throw new Error(`FUZZ_CASES must be a positive integer, not ${env}`);
  return Math.max(1, Math.ceil(total / seeds));
}

/** FUZZ_ONLY=n replays just case n of the seed (a reproducer). */
export function onlyCase(): number | null {
  const v = process.env.FUZZ_ONLY;
  return v === undefined || v === '' ? null : Number(v);
}

/**
 * How to replay a failing case, for failure messages. `stateful`: the case
 * builds on what earlier ones created, so the whole seed is the reproducer.
 */
export function replayHint(seed: number, index: number, file = 'test/fuzz', stateful = false): string {
  return stateful
    ? `seed ${seed} case ${index} (replay: FUZZ_SEED=${seed} npx vitest run ${file}; FUZZ_ONLY=${index} replays it alone, without the state earlier cases built)`
    : `seed ${seed} case ${index} (replay: FUZZ_SEED=${seed} FUZZ_ONLY=${index} npx vitest run ${file})`;
}
