// IEEE 754 half floats (binary16) for frozen tensors stored as f16 (`storage: "f16"` in
// compiler/program.ts): the WebGPU device uploads their bits, and the interpreter rounds their
// values the same way, so both compute with the same numbers. Rounding is to nearest, ties to
// even, as a GPU converts f32 → f16; values beyond the f16 range (±65504) become ±infinity.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The f16 bits nearest to `x` (rounded to nearest even). */
export function halfBits(x: number): number {
  f32[0] = x; // as f32 first: the GPU rounds the stored f32
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf, NaN
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow: infinity
  if (e <= 0) {
    // subnormal (or zero): the mantissa with its implicit 1, shifted right by 14 - e
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // may carry into the exponent
  return sign | h;
}

/** The value of the f16 bits `h`. */
export function halfValue(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** The f16 bits of every value (what the device's f16 buffer holds). */
export function toHalfBits(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = halfBits(values[i]!);
  return out;
}

/** Every value rounded to the nearest f16 (f32 and f64 hold every f16 exactly). */
export function roundToHalf<T extends Float32Array | Float64Array>(values: T): T {
  const out = (
    values instanceof Float64Array
      ? new Float64Array(values.length)
      : new Float32Array(values.length)
  ) as T;
  for (let i = 0; i < values.length; i++) out[i] = halfValue(halfBits(values[i]!));
  return out;
}
