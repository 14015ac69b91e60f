// A small seeded host PRNG for the runtime (data generation, shuffling, sampling).
//
// The generator is mulberry32 (Tommy Ettinger): 32 bits of state, period 2^32, good enough for
// shuffling and sampling data, and fully reproducible from its seed. `normal()` is Box–Muller and
// keeps the second value of each pair for the next call, so the state is the 32-bit counter plus
// that spare; `getState()`/`setState()` save and restore all of it (a checkpoint can resume the
// exact stream). Independent streams come from `mixSeed(seed, purpose, index, …)`.

const TWO_32 = 2 ** 32;

function fmix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * Hashes any number of integers (negative or up to 2^53 are fine) into one 32-bit seed, so that
 * `mixSeed(seed, 1, epoch)` and `mixSeed(seed, 2, epoch)` start unrelated streams.
 */
export function mixSeed(...values: number[]): number {
  let h = 0x9e3779b9;
  for (const v of values) {
    const t = Math.trunc(v);
    const lo = t >>> 0;
    const hi = Math.floor(t / TWO_32) >>> 0;
    h = fmix32((h ^ fmix32(lo + 0x632be5ab)) >>> 0);
    h = fmix32((Math.imul(h, 31) ^ fmix32(hi ^ 0x2545f491)) >>> 0);
  }
  return h;
}

/** mulberry32's output for state `a` (after the state's increment). */
function mulberry(a: number): number {
  let t = a;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (t ^ (t >>> 14)) >>> 0;
}

/**
 * Plain mulberry32 from a raw 32-bit seed (no mixing), as uniforms in [0, 1) with 32 bits: a
 * tiny reproducible generator for tests and benchmarks that pick inputs from a seed.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    return mulberry(a) / TWO_32;
  };
}

export class Rng {
  private a: number;
  /** The second Box–Muller value, when one is waiting. */
  private spare: number | undefined;

  constructor(seed: number = 0) {
    this.a = mixSeed(seed);
    this.spare = undefined;
  }

  /** A uniform unsigned 32-bit integer. */
  nextU32(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    return mulberry(this.a);
  }

  /** Uniform in [0, 1) with 53 random bits. */
  float(): number {
    const hi = this.nextU32() >>> 5;
    const lo = this.nextU32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** A uniform integer in [0, n), without modulo bias for n ≤ 2^32. */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0) throw new RangeError(`Rng.int: bad bound ${n}`);
    if (n <= TWO_32) {
      const limit = TWO_32 - (TWO_32 % n);
      for (;;) {
        const x = this.nextU32();
        if (x < limit) return x % n;
      }
    }
    return Math.floor(this.float() * n);
  }

  /** A uniform float in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.float();
  }

  /** A standard normal sample (Box–Muller; pairs are generated together). */
  normal(): number {
    if (this.spare !== undefined) {
      const z = this.spare;
      this.spare = undefined;
      return z;
    }
    const u1 = 1 - this.float(); // (0, 1]: the logarithm never sees 0
    const u2 = this.float();
    const r = Math.sqrt(-2 * Math.log(u1));
    this.spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  }

  /** Fisher–Yates shuffle in place; returns the array. */
  shuffle<T extends { length: number; [i: number]: unknown }>(items: T): T {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = items[i];
      items[i] = items[j];
      items[j] = t;
    }
    return items;
  }

  /** A random permutation of 0..n-1. */
  permutation(n: number): Int32Array {
    const p = new Int32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle(p);
  }

  /** The full state, JSON-safe: `[counter, hasSpare (0|1), spare]`. */
  getState(): number[] {
    return this.spare === undefined ? [this.a, 0, 0] : [this.a, 1, this.spare];
  }

  setState(state: readonly number[]): void {
    const [a, has, spare] = state;
    if (
      state.length !== 3 ||
      !Number.isInteger(a) ||
      a! < 0 ||
      a! >= TWO_32 ||
      (has !== 0 && has !== 1) ||
      !Number.isFinite(spare)
    ) {
      throw new RangeError(`Rng.setState: not a saved state: ${JSON.stringify(state)}`);
    }
    this.a = a!;
    this.spare = has === 1 ? spare : undefined;
  }

  /** An independent copy with the same state. */
  clone(): Rng {
    const r = new Rng(0);
    r.setState(this.getState());
    return r;
  }
}
