/**
 * Conversions between the float storage dtypes of safetensors and f32.
 *
 * Decoding (F64, F32, F16, BF16, F8_E4M3, F8_E5M2 → f32) is exact except F64, which rounds to nearest even.
 * Encoding (f32 → F16, BF16, F8_E4M3, F8_E5M2, F32, F64) rounds to nearest, ties to even, with correct
 * subnormals; NaN stays NaN (quietened, the top payload bits kept where the target has room).
 *
 * Overflow on encode: F16, BF16 and F8_E5M2 have infinities, so a finite value too large for them becomes ±Inf,
 * as IEEE 754 rounding says. F8_E4M3 (the "fn" variant: no infinities, NaN = S.1111.111, max 448) turns a value
 * too large for it into NaN, as PyTorch does, unless `saturate` is asked for, which clamps to ±448.
 * `countOverflow` tells a caller how many finite values would not survive, so nothing is clipped silently.
 *
 * The scalar functions are the reference; the array functions are the fast paths (a 65,536-entry table for F16,
 * bit operations over 32-bit views elsewhere) and route large arrays through the WASM SIMD converters when
 * those are available (see `setBulkConvert`).
 */
import { ArgumentError, SafetensorsError } from './errors.js';
import { DTYPE_SIZE, type DType } from './tensor.js';
import { getWasmConvert } from './dtype-wasm.js';
import {
  bf16BitsToF32Bits,
  bf16ToF32Scalar,
  f16BitsToF32Bits,
  f32Bits,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f32FromBits,
  f32ToBf16Scalar,
  f32ToF16Scalar,
} from './dtype-scalar.js';

/** The float dtypes lora-mix can decode to and encode from f32. */
export type FloatDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2';

export function isFloatDType(d: DType): d is FloatDType {
  return d === 'F64' || d === 'F32' || d === 'F16' || d === 'BF16' || d === 'F8_E4M3' || d === 'F8_E5M2';
}

/** True on little-endian hosts (every platform Node and browsers run on in practice). */
export const LITTLE_ENDIAN: boolean = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------------------------------
// Scalar conversions (the reference implementations)
// ---------------------------------------------------------------------------------------------------------------

/**
 * IEEE binary16 bits (0…65535) → the bits of the f32 that denotes the same value (exact; NaN payloads and the
 * signalling bit are kept, which a JS number cannot promise). One definition, shared with the WASM references.
 */
export { f16BitsToF32Bits };

/** IEEE binary16 bits (0…65535) → the f32 value it denotes (exact). */
export function f16BitsToF32(h: number): number {
  return f32FromBits(f16BitsToF32Bits(h));
}

/** bfloat16 bits → f32 value (exact: the top half of an f32). */
export function bf16BitsToF32(b: number): number {
  return f32FromBits(bf16BitsToF32Bits(b & 0xffff));
}

/** Per float dtype: stored mantissa bits and the smallest normal exponent (unbiased). */
export const FLOAT_FORMAT: Readonly<Record<FloatDType, { readonly mantissa: number; readonly minExp: number }>> = {
  F64: { mantissa: 52, minExp: -1022 },
  F32: { mantissa: 23, minExp: -126 },
  F16: { mantissa: 10, minExp: -14 },
  BF16: { mantissa: 7, minExp: -126 },
  F8_E4M3: { mantissa: 3, minExp: -6 },
  F8_E5M2: { mantissa: 2, minExp: -14 },
};

/**
 * Half the spacing of `dtype`'s values around |v|: the most one round-to-nearest to that dtype can move v
 * (subnormals included; Infinity for a non-finite v; integer dtypes are treated as F32).
 */
export function halfUlp(v: number, dtype: DType): number {
  const f = isFloatDType(dtype) ? FLOAT_FORMAT[dtype] : FLOAT_FORMAT.F32;
  const a = Math.abs(v);
  if (!Number.isFinite(a)) return Infinity;
  const e = a === 0 ? f.minExp : Math.max(f.minExp, Math.floor(Math.log2(a)));
  return 2 ** (e - f.mantissa - 1);
}

/**
 * Round a non-negative f32 bit pattern `abs` (not NaN/Inf) to a small float format with `mantBits` mantissa bits
 * and exponent bias `bias`, ties to even. Returns the magnitude bits of the result (exponent|mantissa); the
 * caller decides what an exponent past the format's range means.
 */
function roundMagnitude(abs: number, mantBits: number, bias: number): number {
  const e = abs >>> 23;
  const shiftNormal = 23 - mantBits;
  // Smallest f32 exponent field that is normal in the target: target exponent 1.
  if (e >= 127 - bias + 1) {
    const r = abs - ((127 - bias) << 23);
    const half = 1 << (shiftNormal - 1);
    const rem = r & ((1 << shiftNormal) - 1);
    let q = r >>> shiftNormal;
    if (rem > half || (rem === half && (q & 1) === 1)) q++;
    return q;
  }
  // Target subnormal (or zero), in units of 2^(1 - bias - mantBits). An f32 subnormal (field 0) has the
  // scale of field 1 without the implicit bit.
  const e1 = e === 0 ? 1 : e;
  const s = 151 - bias - mantBits - e1;
  if (s >= 25) return 0; // below half the smallest subnormal, whatever the mantissa
  const m = e === 0 ? abs & 0x7fffff : (abs & 0x7fffff) | 0x800000;
  let q = m >>> s;
  const rem = m & ((1 << s) - 1);
  const half = 1 << (s - 1);
  if (rem > half || (rem === half && (q & 1) === 1)) q++;
  return q;
}

/** f32 value → IEEE binary16 bits, round to nearest even; overflow → ±Inf; NaN → quiet NaN. */
export function f32ToF16Bits(x: number): number {
  return f32BitsToF16Bits(f32Bits(x));
}

/** f32 value → bfloat16 bits, round to nearest even; overflow → ±Inf; NaN → quiet NaN. */
export function f32ToBf16Bits(x: number): number {
  return f32BitsToBf16Bits(f32Bits(x));
}

/** F8_E4M3 ("fn": bias 7, no infinities, 0x7f/0xff are NaN, max ±448) bits → f32 value. */
export function f8e4m3BitsToF32(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const exp = (b >>> 3) & 0xf;
  const mant = b & 7;
  if (exp === 0xf && mant === 7) return NaN;
  if (exp === 0) return sign * mant * 2 ** -9;
  return sign * (8 + mant) * 2 ** (exp - 10);
}

/** F8_E5M2 (bias 15, IEEE-like: infinities and NaNs) bits → f32 value; it is the top byte of an F16. */
export function f8e5m2BitsToF32(b: number): number {
  return f16BitsToF32((b & 0xff) << 8);
}

/**
 * f32 value → F8_E4M3 bits, round to nearest even. A finite value whose rounding exceeds 448 becomes NaN
 * (0x7f / 0xff), or ±448 when `saturate` is true; ±Inf becomes NaN, or ±448 with `saturate`.
 */
export function f32ToF8E4M3Bits(x: number, saturate = false): number {
  const u = f32Bits(x);
  const sign = (u >>> 24) & 0x80;
  const abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7f;
  if (abs === 0x7f800000) return sign | (saturate ? 0x7e : 0x7f);
  // 464 = halfway between 448 and the (NaN) code above it; the tie goes to 448, which is even.
  if (abs > 0x43e80000) return sign | (saturate ? 0x7e : 0x7f);
  return sign | roundMagnitude(abs, 3, 7);
}

/** f32 value → F8_E5M2 bits, round to nearest even; overflow → ±Inf; NaN → quiet NaN. */
export function f32ToF8E5M2Bits(x: number): number {
  const u = f32Bits(x);
  const sign = (u >>> 24) & 0x80;
  const abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e;
  if (abs >= 0x47700000) return sign | 0x7c; // ≥ 61440 rounds past 57344
  return sign | roundMagnitude(abs, 2, 15);
}

/**
 * The smallest magnitude that no longer fits each narrow float dtype after rounding (inclusive unless
 * `OVERFLOW_EXCLUSIVE` says otherwise): finite inputs at or above it encode to Inf (or NaN for F8_E4M3).
 */
export const OVERFLOW_THRESHOLD: Readonly<Record<'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2', number>> = {
  F16: 65520,
  BF16: f32FromBits(0x7f7f8000),
  F8_E4M3: 464,
  F8_E5M2: 61440,
};

/** The largest finite value of each narrow float dtype. */
export const DTYPE_MAX: Readonly<Record<'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2', number>> = {
  F16: 65504,
  BF16: f32FromBits(0x7f7f0000),
  F8_E4M3: 448,
  F8_E5M2: 57344,
};

/**
 * How many finite values of `src` would become non-finite when encoded to `dtype`
 * (always 0 for F32 and F64: f32 values fit both).
 */
export function countOverflow(src: Float32Array, dtype: FloatDType): number {
  if (dtype === 'F32' || dtype === 'F64') return 0;
  const t = OVERFLOW_THRESHOLD[dtype];
  const exclusive = dtype === 'F8_E4M3';
  let n = 0;
  for (let i = 0; i < src.length; i++) {
    const a = Math.abs(src[i]!);
    if (a !== Infinity && (exclusive ? a > t : a >= t)) n++;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// WASM routing
// ---------------------------------------------------------------------------------------------------------------

/** The bulk converters a WASM SIMD module provides (src/core/dtype-wasm.ts); bit-exact with the JS ones here. */
export interface BulkConvert {
  f16ToF32(src: Uint16Array, dst: Float32Array): void;
  f32ToF16(src: Float32Array, dst: Uint16Array): unknown;
  bf16ToF32(src: Uint16Array, dst: Float32Array): void;
  f32ToBf16(src: Float32Array, dst: Uint16Array): unknown;
}

/** 'auto': the WASM SIMD converter when the runtime has WebAssembly SIMD; null: JS only. */
let bulkChoice: BulkConvert | null | 'auto' = 'auto';
/** Arrays shorter than this stay in JS: the call into WASM and the copies through its memory do not pay off. */
export const WASM_MIN_ELEMENTS = 4096;

/**
 * Choose what large F16/BF16 conversions go through: 'auto' (default: WASM SIMD from src/core/dtype-wasm.ts when
 * available), null (plain JS), or another implementation, which must be bit-exact with the scalar functions.
 */
export function setBulkConvert(impl: BulkConvert | null | 'auto'): void {
  bulkChoice = impl;
}

/** The converter large arrays currently go through, or null when they stay in JS. */
export function getBulkConvert(): BulkConvert | null {
  return bulkChoice === 'auto' ? getWasmConvert() : bulkChoice;
}

function bulkFor(n: number): BulkConvert | null {
  return n >= WASM_MIN_ELEMENTS ? getBulkConvert() : null;
}

// ---------------------------------------------------------------------------------------------------------------
// Array conversions (fast paths)
// ---------------------------------------------------------------------------------------------------------------

let f16Table: Uint32Array | null = null;

/** The 65,536-entry F16 → f32 table (256 KiB) as f32 bit patterns, built on first use. */
function f16Lut(): Uint32Array {
  if (f16Table) return f16Table;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = f16BitsToF32Bits(h);
  f16Table = t;
  return t;
}

let e4m3Table: Uint32Array | null = null;
let e5m2Table: Uint32Array | null = null;

function f8Lut(kind: 'F8_E4M3' | 'F8_E5M2'): Uint32Array {
  if (kind === 'F8_E4M3') {
    if (!e4m3Table) {
      e4m3Table = new Uint32Array(256);
      for (let b = 0; b < 256; b++) e4m3Table[b] = f32Bits(f8e4m3BitsToF32(b));
    }
    return e4m3Table;
  }
  if (!e5m2Table) {
    e5m2Table = new Uint32Array(256);
    for (let b = 0; b < 256; b++) e5m2Table[b] = f16BitsToF32Bits(b << 8);
  }
  return e5m2Table;
}

function checkLengths(what: string, src: ArrayLike<unknown>, dst: ArrayLike<unknown>): void {
  if (src.length !== dst.length) {
    throw new ArgumentError(
      'ARG_INVALID',
      `${what}: source has ${src.length} elements but destination has ${dst.length}`,
      {
        expected: src.length,
        found: dst.length,
      },
    );
  }
}

/** Decode F16 bits to f32 (exact). Allocates `dst` when not given. */
export function f16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  checkLengths('f16ToF32', src, dst);
  const wasm = bulkFor(src.length);
  if (wasm) {
    wasm.f16ToF32(src, dst);
    return dst;
  }
  // Copy bit patterns as integers: moving a NaN through a JS number may change its payload.
  const t = f16Lut();
  const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  const n = src.length;
  for (let i = 0; i < n; i++) out[i] = t[src[i]!]!;
  return dst;
}

/** Encode f32 to F16 bits (RNE, overflow → ±Inf, NaN quiet). Allocates `dst` when not given. */
export function f32ToF16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  checkLengths('f32ToF16', src, dst);
  const wasm = bulkFor(src.length);
  if (wasm) {
    wasm.f32ToF16(src, dst);
    return dst;
  }
  f32ToF16Scalar(src, dst);
  return dst;
}

/** Decode BF16 bits to f32 (exact). Allocates `dst` when not given. */
export function bf16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  checkLengths('bf16ToF32', src, dst);
  const wasm = bulkFor(src.length);
  if (wasm) {
    wasm.bf16ToF32(src, dst);
    return dst;
  }
  bf16ToF32Scalar(src, dst);
  return dst;
}

/** Encode f32 to BF16 bits (RNE, overflow → ±Inf, NaN quiet). Allocates `dst` when not given. */
export function f32ToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  checkLengths('f32ToBf16', src, dst);
  const wasm = bulkFor(src.length);
  if (wasm) {
    wasm.f32ToBf16(src, dst);
    return dst;
  }
  f32ToBf16Scalar(src, dst);
  return dst;
}

/** Decode F8 bytes (E4M3 "fn" or E5M2) to f32 (exact). */
export function f8ToF32(
  kind: 'F8_E4M3' | 'F8_E5M2',
  src: Uint8Array,
  dst: Float32Array = new Float32Array(src.length),
): Float32Array {
  checkLengths('f8ToF32', src, dst);
  const t = f8Lut(kind);
  const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) out[i] = t[src[i]!]!;
  return dst;
}

/** Encode f32 to F8 bytes (RNE). E4M3 overflow → NaN, or ±448 with `saturate`; E5M2 overflow → ±Inf. */
export function f32ToF8(
  kind: 'F8_E4M3' | 'F8_E5M2',
  src: Float32Array,
  dst: Uint8Array = new Uint8Array(src.length),
  saturate = false,
): Uint8Array {
  checkLengths('f32ToF8', src, dst);
  if (kind === 'F8_E4M3') for (let i = 0; i < src.length; i++) dst[i] = f32ToF8E4M3Bits(src[i]!, saturate);
  else for (let i = 0; i < src.length; i++) dst[i] = f32ToF8E5M2Bits(src[i]!);
  return dst;
}

// ---------------------------------------------------------------------------------------------------------------
// Bytes ⇄ typed arrays, by dtype
// ---------------------------------------------------------------------------------------------------------------

/** The typed array `readTyped` returns for each dtype. */
export type TypedArrayFor<D extends DType> = D extends 'F64'
  ? Float64Array
  : D extends 'F32'
    ? Float32Array
    : D extends 'F16' | 'BF16' | 'U16'
      ? Uint16Array
      : D extends 'F8_E4M3' | 'F8_E5M2' | 'U8' | 'BOOL'
        ? Uint8Array
        : D extends 'I8'
          ? Int8Array
          : D extends 'I16'
            ? Int16Array
            : D extends 'I32'
              ? Int32Array
              : D extends 'U32'
                ? Uint32Array
                : D extends 'I64'
                  ? BigInt64Array
                  : D extends 'U64'
                    ? BigUint64Array
                    : never;

export type AnyTypedArray =
  | Float64Array
  | Float32Array
  | Uint16Array
  | Uint8Array
  | Int8Array
  | Int16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array;

function swapInPlace(bytes: Uint8Array, size: number): void {
  for (let i = 0; i < bytes.length; i += size) {
    for (let a = i, b = i + size - 1; a < b; a++, b--) {
      const t = bytes[a]!;
      bytes[a] = bytes[b]!;
      bytes[b] = t;
    }
  }
}

/**
 * View little-endian stored bytes as the typed array of `dtype`. No copy when `bytes` is suitably aligned on a
 * little-endian host; otherwise the bytes are copied into a fresh aligned buffer (and byte-swapped on a
 * big-endian host). The byte length must be a multiple of the element size.
 */
export function bytesAsTyped<D extends DType>(dtype: D, bytes: Uint8Array): TypedArrayFor<D> {
  const size = DTYPE_SIZE[dtype];
  if (bytes.byteLength % size !== 0) {
    throw new SafetensorsError(
      'SAFETENSORS_BYTE_LENGTH_MISMATCH',
      `${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${size} bytes each)`,
      { dtype, byteLength: bytes.byteLength },
    );
  }
  let b = bytes;
  if (size > 1 && (b.byteOffset % size !== 0 || !LITTLE_ENDIAN)) {
    b = bytes.slice();
    if (!LITTLE_ENDIAN) swapInPlace(b, size);
  }
  const n = b.byteLength / size;
  const buf = b.buffer,
    off = b.byteOffset;
  let out: AnyTypedArray;
  switch (dtype) {
    case 'F64':
      out = new Float64Array(buf, off, n);
      break;
    case 'F32':
      out = new Float32Array(buf, off, n);
      break;
    case 'F16':
    case 'BF16':
    case 'U16':
      out = new Uint16Array(buf, off, n);
      break;
    case 'I8':
      out = new Int8Array(buf, off, n);
      break;
    case 'I16':
      out = new Int16Array(buf, off, n);
      break;
    case 'I32':
      out = new Int32Array(buf, off, n);
      break;
    case 'U32':
      out = new Uint32Array(buf, off, n);
      break;
    case 'I64':
      out = new BigInt64Array(buf, off, n);
      break;
    case 'U64':
      out = new BigUint64Array(buf, off, n);
      break;
    default:
      out = new Uint8Array(buf, off, n);
      break; // U8, BOOL, F8_E4M3, F8_E5M2
  }
  return out as TypedArrayFor<D>;
}

/**
 * The little-endian bytes of a typed array, as stored in a file: a view (no copy) on little-endian hosts,
 * a byte-swapped copy on big-endian ones.
 */
export function typedAsBytes(view: ArrayBufferView): Uint8Array {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  const size = (view as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
  if (LITTLE_ENDIAN || size === 1) return bytes;
  const copy = bytes.slice();
  swapInPlace(copy, size);
  return copy;
}

/**
 * Decode stored bytes of a float dtype into `out` (out.length = number of elements). Integer dtypes are refused
 * with SAFETENSORS_DTYPE_NOT_FLOAT.
 */
export function decodeInto(dtype: DType, bytes: Uint8Array, out: Float32Array, what = 'tensor'): Float32Array {
  switch (dtype) {
    case 'F32':
      out.set(bytesAsTyped('F32', bytes));
      return out;
    case 'F16':
      return f16ToF32(bytesAsTyped('F16', bytes), out);
    case 'BF16':
      return bf16ToF32(bytesAsTyped('BF16', bytes), out);
    case 'F64':
      out.set(bytesAsTyped('F64', bytes));
      return out;
    case 'F8_E4M3':
    case 'F8_E5M2':
      return f8ToF32(dtype, bytes, out);
    default:
      throw new SafetensorsError(
        'SAFETENSORS_DTYPE_NOT_FLOAT',
        `${what}: dtype ${dtype} is an integer type; expected a float dtype (F64, F32, F16, BF16, F8_E4M3, F8_E5M2) to decode to f32`,
        { dtype },
      );
  }
}

/**
 * Decode stored bytes of a float dtype to f32. F32 bytes that are aligned come back as a view (no copy);
 * everything else is a fresh array. Integer dtypes are refused with SAFETENSORS_DTYPE_NOT_FLOAT.
 */
export function decodeToF32(dtype: DType, bytes: Uint8Array, what = 'tensor'): Float32Array {
  switch (dtype) {
    case 'F32':
      return bytesAsTyped('F32', bytes);
    case 'F16':
      return f16ToF32(bytesAsTyped('F16', bytes));
    case 'BF16':
      return bf16ToF32(bytesAsTyped('BF16', bytes));
    case 'F64':
      return Float32Array.from(bytesAsTyped('F64', bytes));
    case 'F8_E4M3':
    case 'F8_E5M2':
      return f8ToF32(dtype, bytes);
    default:
      throw new SafetensorsError(
        'SAFETENSORS_DTYPE_NOT_FLOAT',
        `${what}: dtype ${dtype} is an integer type; expected a float dtype (F64, F32, F16, BF16, F8_E4M3, F8_E5M2) to decode to f32`,
        { dtype },
      );
  }
}

/**
 * Encode f32 values to the stored little-endian bytes of a float dtype (RNE). F32 on a little-endian host
 * returns a view of `src`. F8_E4M3 overflow follows `saturate` (see f32ToF8E4M3Bits).
 */
export function encodeFromF32(dtype: DType, src: Float32Array, options: { saturate?: boolean } = {}): Uint8Array {
  switch (dtype) {
    case 'F32':
      return typedAsBytes(src);
    case 'F16':
      return typedAsBytes(f32ToF16(src));
    case 'BF16':
      return typedAsBytes(f32ToBf16(src));
    case 'F64':
      return typedAsBytes(Float64Array.from(src));
    case 'F8_E4M3':
    case 'F8_E5M2':
      return f32ToF8(dtype, src, undefined, options.saturate === true);
    default:
      throw new SafetensorsError(
        'SAFETENSORS_DTYPE_NOT_FLOAT',
        `cannot encode f32 values as ${dtype}: expected a float dtype (F64, F32, F16, BF16, F8_E4M3, F8_E5M2)`,
        { dtype },
      );
  }
}
