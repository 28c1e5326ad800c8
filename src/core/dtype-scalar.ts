/**
 * Scalar reference conversions between f32 and the 16-bit float formats (IEEE binary16 "F16" and bfloat16
 * "BF16"). These are the definitions the WASM SIMD code in convert.wat / kernel.wat must match bit for bit,
 * and the fallback used when WebAssembly SIMD is unavailable.
 *
 * Rounding is round-to-nearest, ties-to-even. NaN stays NaN: the sign and the top payload bits are kept and the
 * quiet bit is set. Finite values too large for the format become ±Inf (the callers count those).
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** f32 bit pattern of x (after rounding x to f32). */
export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0]!;
}

/** The f32 value of a bit pattern. */
export function f32FromBits(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0]!;
}

/** Decode one binary16 bit pattern to its exact f32 bit pattern. */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // subnormal half: normalise
  let e = 113;
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** Decode one binary16 bit pattern to a number. */
export function f16BitsToNumber(h: number): number {
  return f32FromBits(f16BitsToF32Bits(h));
}

/** Encode one f32 bit pattern as binary16 (RNE; overflow → ±Inf; NaN → quiet NaN keeping the top payload). */
export function f32BitsToF16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const abs = bits & 0x7fffffff;
  if (abs >= 0x7f800000) {
    if (abs === 0x7f800000) return sign | 0x7c00;
    return sign | 0x7e00 | ((abs >>> 13) & 0x3ff);
  }
  if (abs >= 0x477ff000) return sign | 0x7c00; // ≥ 65520 rounds to Inf
  if (abs < 0x38800000) {
    // below 2^-14: subnormal half (or zero). value = abs_f * 2^24 rounded to an integer, RNE.
    if (abs < 0x33000000) return sign; // < 2^-25: rounds to 0 (2^-25 itself is a tie to even → 0)
    const e = abs >>> 23; // 102..112
    const m = (abs & 0x7fffff) | 0x800000; // 24-bit significand
    const shift = 126 - e; // value*2^24 = m * 2^(e-127-23+24) = m >> (126 - e)
    const q = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    const r = rem > half || (rem === half && (q & 1) === 1) ? q + 1 : q;
    return sign | r;
  }
  // normal: rebias, round the 13 dropped bits
  const rebased = abs - 0x38000000; // exponent 127 → 15
  const q = rebased >>> 13;
  const rem = rebased & 0x1fff;
  const r = rem > 0x1000 || (rem === 0x1000 && (q & 1) === 1) ? q + 1 : q;
  return sign | r;
}

/** Decode one bfloat16 bit pattern to its f32 bit pattern (exact: bf16 is the top half of f32). */
export function bf16BitsToF32Bits(h: number): number {
  return (h << 16) >>> 0;
}

/** Encode one f32 bit pattern as bfloat16 (RNE; overflow → ±Inf; NaN → quiet NaN keeping the top payload). */
export function f32BitsToBf16Bits(bits: number): number {
  const abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff;
  const lsb = (bits >>> 16) & 1;
  return (((bits >>> 0) + 0x7fff + lsb) >>> 16) & 0xffff;
}

/** True when a binary16 pattern is ±Inf or NaN. */
export function f16IsNonFinite(h: number): boolean {
  return (h & 0x7c00) === 0x7c00;
}

/** True when a bfloat16 pattern is ±Inf or NaN. */
export function bf16IsNonFinite(h: number): boolean {
  return (h & 0x7f80) === 0x7f80;
}

/** True when an f32 pattern is ±Inf or NaN. */
export function f32IsNonFinite(bits: number): boolean {
  return (bits & 0x7f800000) === 0x7f800000;
}

// ---------------------------------------------------------------------------------------------------------
// Correctly rounded f64 → 16-bit encoders (one rounding from a double; used by the f64 JS reference kernel).

function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * Round a double directly to a binary format with `mant` stored mantissa bits and exponent range
 * [emin, emax] (unbiased, normal numbers), returning { exp (biased, 0 = subnormal), m (stored mantissa) },
 * or null for overflow.
 */
function roundToFormat(ax: number, mant: number, emin: number, emax: number): { e: number; m: number } | null {
  // ax > 0, finite
  let e = Math.floor(Math.log2(ax));
  // fix possible log2 inaccuracy
  if (2 ** e > ax) e--;
  else if (2 ** (e + 1) <= ax) e++;
  if (e < emin) {
    // subnormal: quantum 2^(emin - mant)
    const q = roundHalfEven(ax * 2 ** (mant - emin));
    if (q >= 2 ** mant) return { e: 1, m: 0 }; // rounded up to the smallest normal
    return { e: 0, m: q };
  }
  let q = roundHalfEven(ax * 2 ** (mant - e)); // in [2^mant, 2^(mant+1)]
  if (q === 2 ** (mant + 1)) {
    q = 2 ** mant;
    e++;
  }
  if (e > emax) return null;
  const bias = emax;
  return { e: e + bias, m: q - 2 ** mant };
}

/** Round a number (f64) once to binary16 bits, by exact arithmetic (slow; the definition). */
export function numberToF16BitsExact(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const ax = Math.abs(x);
  if (ax === Infinity) return sign | 0x7c00;
  if (ax === 0) return sign;
  const r = roundToFormat(ax, 10, -14, 15);
  if (r === null) return sign | 0x7c00;
  return sign | (r.e << 10) | r.m;
}

/** Round a number (f64) once to bfloat16 bits, by exact arithmetic (slow; the definition). */
export function numberToBf16BitsExact(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const ax = Math.abs(x);
  if (ax === Infinity) return sign | 0x7f80;
  if (ax === 0) return sign;
  const r = roundToFormat(ax, 7, -126, 127);
  if (r === null) return sign | 0x7f80;
  return sign | (r.e << 7) | r.m;
}

/*
 * Fast single rounding f64 → 16-bit: round to f32 first, then f32 → 16-bit. Every rounding boundary of the
 * 16-bit formats (a midpoint between two neighbours) is itself an f32 value, so no boundary can lie strictly
 * between x and fround(x); the two-step result differs from the one-step result only when fround(x) lands
 * exactly on a boundary while x was not representable. That case takes the exact path.
 */

/** Round a number (f64) once to binary16 bits. */
export function numberToF16Bits(x: number): number {
  const b = f32Bits(x);
  const y = f32[0]!;
  if (y === x || Number.isNaN(x)) return f32BitsToF16Bits(b);
  const abs = b & 0x7fffffff;
  const tie = abs >= 0x38800000 ? (abs & 0x1fff) === 0x1000 : (y * 2 ** 24) % 1 === 0.5 || (y * 2 ** 24) % 1 === -0.5;
  return tie ? numberToF16BitsExact(x) : f32BitsToF16Bits(b);
}

/** Round a number (f64) once to bfloat16 bits. */
export function numberToBf16Bits(x: number): number {
  const b = f32Bits(x);
  const y = f32[0]!;
  if (y === x || Number.isNaN(x)) return f32BitsToBf16Bits(b);
  return (b & 0xffff) === 0x8000 ? numberToBf16BitsExact(x) : f32BitsToBf16Bits(b);
}

// ---------------------------------------------------------------------------------------------------------
// Array versions (scalar). Lengths: dst.length must be ≥ src.length; src.length values are converted.

export function f16ToF32Scalar(src: Uint16Array, dst: Float32Array): void {
  const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) out[i] = f16BitsToF32Bits(src[i]!);
}

export function bf16ToF32Scalar(src: Uint16Array, dst: Float32Array): void {
  const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
}

/** Returns the number of finite inputs that became ±Inf. */
export function f32ToF16Scalar(src: Float32Array, dst: Uint16Array): number {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  let overflow = 0;
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    const h = f32BitsToF16Bits(b);
    dst[i] = h;
    if ((h & 0x7fff) === 0x7c00 && (b & 0x7f800000) !== 0x7f800000) overflow++;
  }
  return overflow;
}

/** Returns the number of finite inputs that became ±Inf. */
export function f32ToBf16Scalar(src: Float32Array, dst: Uint16Array): number {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  let overflow = 0;
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    const h = f32BitsToBf16Bits(b);
    dst[i] = h;
    if ((h & 0x7fff) === 0x7f80 && (b & 0x7f800000) !== 0x7f800000) overflow++;
  }
  return overflow;
}
