/**
 * Fast dtype conversion between f32 and the 16-bit float formats, with WebAssembly SIMD (src/core/dtype-wasm.wat).
 *
 * Usage (synchronous; no init step needed):
 *
 *   const conv = getWasmConvert();          // null when the runtime has no WebAssembly SIMD
 *   conv?.f16ToF32(halves, floats);
 *
 * or the dispatching helpers `f16ToF32`, `bf16ToF32`, `f32ToF16`, `f32ToBf16`, which use WASM when available and
 * the scalar reference (src/core/dtype-scalar.ts) otherwise; both give identical bits.
 *
 * The module is 2 KB, so it is compiled synchronously on first use (allowed even on a browser main thread,
 * where synchronous compilation is limited to 4 KB). Data is copied through a fixed 256 KiB scratch region in
 * the module's own memory, 32 Ki values at a time (fits in L2), so no allocation happens per call.
 *
 * Conversions round to nearest, ties to even; NaN stays NaN (quiet, sign and top payload bits kept);
 * f32ToF16 / f32ToBf16 return the number of finite inputs that became ±Inf (overflow).
 */
import { ArgumentError } from './errors.js';
import { base64ToBytes } from './base64.js';
import { CONVERT_WASM } from './dtype-wasm-bytes.js';
import { hasWasmSimd } from './wasm-features.js';
import { bf16ToF32Scalar, f16ToF32Scalar, f32ToBf16Scalar, f32ToF16Scalar } from './dtype-scalar.js';

export interface WasmConvert {
  /** Decode src.length binary16 values into dst (dst.length ≥ src.length). */
  f16ToF32(src: Uint16Array, dst: Float32Array): void;
  /** Decode src.length bfloat16 values into dst (dst.length ≥ src.length). */
  bf16ToF32(src: Uint16Array, dst: Float32Array): void;
  /** Encode src.length values as binary16 (RNE). Returns how many finite values overflowed to ±Inf. */
  f32ToF16(src: Float32Array, dst: Uint16Array): number;
  /** Encode src.length values as bfloat16 (RNE). Returns how many finite values overflowed to ±Inf. */
  f32ToBf16(src: Float32Array, dst: Uint16Array): number;
}

/** Values converted per call into WASM (a multiple of 8). */
export const CONVERT_CHUNK = 32768;
const SRC = 0;
const DST = CONVERT_CHUNK * 4;

interface ConvertExports {
  memory: WebAssembly.Memory;
  f16_to_f32(src: number, dst: number, n: number): void;
  bf16_to_f32(src: number, dst: number, n: number): void;
  f32_to_f16(src: number, dst: number, n: number): number;
  f32_to_bf16(src: number, dst: number, n: number): number;
}

function checkLengths(op: string, srcLen: number, dstLen: number): void {
  if (dstLen < srcLen) {
    throw new ArgumentError(
      'ARG_INVALID',
      `${op}: destination holds ${dstLen} values, expected at least ${srcLen} (the source length)`,
      { op, expected: srcLen, found: dstLen },
    );
  }
}

class WasmConvertImpl implements WasmConvert {
  private readonly ex: ConvertExports;
  private readonly inU16: Uint16Array;
  private readonly inF32: Float32Array;
  private readonly outU16: Uint16Array;
  private readonly outF32: Float32Array;

  constructor(ex: ConvertExports) {
    this.ex = ex;
    const buf = ex.memory.buffer; // the module never grows its memory, so these views stay valid
    this.inU16 = new Uint16Array(buf, SRC, CONVERT_CHUNK);
    this.inF32 = new Float32Array(buf, SRC, CONVERT_CHUNK);
    this.outU16 = new Uint16Array(buf, DST, CONVERT_CHUNK);
    this.outF32 = new Float32Array(buf, DST, CONVERT_CHUNK);
  }

  private decode(src: Uint16Array, dst: Float32Array, fn: (s: number, d: number, n: number) => void): void {
    const n = src.length;
    for (let i = 0; i < n; i += CONVERT_CHUNK) {
      const m = Math.min(CONVERT_CHUNK, n - i);
      const m8 = (m + 7) & ~7;
      this.inU16.set(src.subarray(i, i + m));
      if (m8 !== m) this.inU16.fill(0, m, m8);
      fn(SRC, DST, m8);
      dst.set(m === CONVERT_CHUNK ? this.outF32 : this.outF32.subarray(0, m), i);
    }
  }

  private encode(src: Float32Array, dst: Uint16Array, fn: (s: number, d: number, n: number) => number): number {
    const n = src.length;
    let overflow = 0;
    for (let i = 0; i < n; i += CONVERT_CHUNK) {
      const m = Math.min(CONVERT_CHUNK, n - i);
      const m8 = (m + 7) & ~7;
      this.inF32.set(src.subarray(i, i + m));
      if (m8 !== m) this.inF32.fill(0, m, m8);
      overflow += fn(SRC, DST, m8);
      dst.set(m === CONVERT_CHUNK ? this.outU16 : this.outU16.subarray(0, m), i);
    }
    return overflow;
  }

  f16ToF32(src: Uint16Array, dst: Float32Array): void {
    checkLengths('f16ToF32', src.length, dst.length);
    this.decode(src, dst, this.ex.f16_to_f32);
  }

  bf16ToF32(src: Uint16Array, dst: Float32Array): void {
    checkLengths('bf16ToF32', src.length, dst.length);
    this.decode(src, dst, this.ex.bf16_to_f32);
  }

  f32ToF16(src: Float32Array, dst: Uint16Array): number {
    checkLengths('f32ToF16', src.length, dst.length);
    return this.encode(src, dst, this.ex.f32_to_f16);
  }

  f32ToBf16(src: Float32Array, dst: Uint16Array): number {
    checkLengths('f32ToBf16', src.length, dst.length);
    return this.encode(src, dst, this.ex.f32_to_bf16);
  }
}

let cached: WasmConvert | null | undefined;

/**
 * The WASM SIMD converter, compiled synchronously on first call; null when WebAssembly SIMD is unavailable.
 */
export function getWasmConvert(): WasmConvert | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (!hasWasmSimd()) return cached;
  try {
    const mod = new WebAssembly.Module(base64ToBytes(CONVERT_WASM));
    const inst = new WebAssembly.Instance(mod, {});
    cached = new WasmConvertImpl(inst.exports as unknown as ConvertExports);
  } catch {
    cached = null;
  }
  return cached;
}

/** Async form of getWasmConvert (for callers that prefer not to compile on the calling stack). */
export async function loadWasmConvert(): Promise<WasmConvert | null> {
  return getWasmConvert();
}

/** Scalar implementation of the same interface (the reference; used when WASM SIMD is missing). */
export const scalarConvert: WasmConvert = {
  f16ToF32(src, dst) {
    checkLengths('f16ToF32', src.length, dst.length);
    f16ToF32Scalar(src, dst);
  },
  bf16ToF32(src, dst) {
    checkLengths('bf16ToF32', src.length, dst.length);
    bf16ToF32Scalar(src, dst);
  },
  f32ToF16(src, dst) {
    checkLengths('f32ToF16', src.length, dst.length);
    return f32ToF16Scalar(src, dst);
  },
  f32ToBf16(src, dst) {
    checkLengths('f32ToBf16', src.length, dst.length);
    return f32ToBf16Scalar(src, dst);
  },
};

/** The best converter available here: WASM SIMD, else the scalar reference. */
export function getConvert(): WasmConvert {
  return getWasmConvert() ?? scalarConvert;
}
