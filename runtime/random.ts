// Counter-based random numbers that a WGSL kernel reproduces bit-exactly with u32 arithmetic.
//
// Element i of a `random` node (i = the row-major flat index) depends only on (seed, i), so any
// device, any workgroup split and any fusion computes the same tensor. The algorithm, exactly:
//
//   s  = seed mod 2^32                               (JS: seed >>> 0)
//   x0 = counter XOR (s * 0x9E3779B9 mod 2^32)       (golden-ratio spread of the seed)
//   h  = lowbias32(lowbias32(x0) XOR s XOR 0x5BD1E995)  (the finalizer twice; the constant keeps
//                                                       (seed 0, counter 0) off the fixed point 0)
//   lowbias32(x) = x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16
//                  (all u32: logical shifts, multiplication mod 2^32; C. Wellons' "lowbias32")
//
//   uniformAt(seed, i) = (hash32(seed, i) >> 8) * 2^-24          in [0, 1), exact in f32
//   normalAt(seed, i)  = sqrt(-2 ln(1 - u1)) * cos(2π u2)        Box–Muller, one output per i,
//       u1 = uniformAt(seed, 2i mod 2^32), u2 = uniformAt(seed, 2i + 1 mod 2^32);
//       1 - u1 lies in [2^-24, 1], so the logarithm never sees 0.
//
// In WGSL: `var x = counter ^ (seed * 0x9E3779B9u);`
//          `x = lowbias32(lowbias32(x) ^ seed ^ 0x5BD1E995u);`
// The uniform is bit-exact everywhere; the normal goes through log/cos, which are only as exact
// as the device's transcendental functions.

function lowbias32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** A 32-bit hash of (seed, counter), as an unsigned integer. */
export function hash32(seed: number, counter: number): number {
  const s = seed >>> 0;
  const x0 = ((counter >>> 0) ^ Math.imul(s, 0x9e3779b9)) >>> 0;
  return lowbias32(lowbias32(x0) ^ s ^ 0x5bd1e995);
}

/** Uniform in [0, 1) with 24 random bits: exactly representable in f32. */
export function uniformAt(seed: number, i: number): number {
  return (hash32(seed, i) >>> 8) * 2 ** -24;
}

/** Standard normal by Box–Muller from the uniforms at counters 2i and 2i + 1. */
export function normalAt(seed: number, i: number): number {
  const u1 = uniformAt(seed, (2 * i) >>> 0);
  const u2 = uniformAt(seed, (2 * i + 1) >>> 0);
  return Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2);
}
