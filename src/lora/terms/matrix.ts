/**
 * The small matrix pieces every kind shares: products of 2-D factors (the WASM SIMD product where the runtime
 * has it, an f64-accumulating loop elsewhere), identity factors, and the [out, in·kh·kw] view of a weight shape.
 */
import { LoraError } from '../../core/errors.js';
import { contiguousValues } from '../delta.js';
import { wasmProduct } from '../product.js';
import type { F32Array } from '../types.js';

/** Exact factors of a module's delta with every scale folded in: Δ = up [out, rank] · down [rank, fanIn]. */
export interface PlainFactors {
  readonly up: Float32Array;
  readonly down: Float32Array;
  readonly rank: number;
}

/** out and fanIn = in·kh·kw of a weight shape [out, in] or [out, in, kh, kw]. */
export function viewOf(shape: readonly number[]): { out: number; fanIn: number } {
  const out = shape[0] ?? 0;
  let fanIn = 1;
  for (let i = 1; i < shape.length; i++) fanIn *= shape[i] ?? 1;
  return { out, fanIn };
}

/** The [rows, cols] sizes of a 2-D factor, checked (a 4-D [o, r, 1, 1] or [r, i, kh, kw] reads as its flat view). */
export function matrixOf(a: F32Array, path: string, what: string): { rows: number; cols: number; data: Float32Array } {
  if (a.shape.length < 1 || a.shape.some((d) => !Number.isInteger(d) || d <= 0)) {
    throw new LoraError('LORA_SHAPE_MISMATCH', `module '${path}': ${what} has shape [${a.shape.join(', ')}]`, {
      key: path,
      found: a.shape,
    });
  }
  const rows = a.shape[0] ?? 1;
  return { rows, cols: a.size / rows, data: contiguousValues(a) };
}

/** Fail with LORA_SHAPE_MISMATCH naming the module unless `ok`. */
export function expectShape(ok: boolean, path: string, message: string, found?: unknown): void {
  if (!ok) throw new LoraError('LORA_SHAPE_MISMATCH', `module '${path}': ${message}`, { key: path, found });
}

/** C [rows, cols] = A [rows, rank] · B [rank, cols], f32 result (f64 sums in the plain-JS path). */
export function multiply(rows: number, cols: number, rank: number, a: Float32Array, b: Float32Array): Float32Array {
  const fast = wasmProduct();
  if (fast && rank > 0) return fast(rows, cols, rank, a, b);
  const out = new Float32Array(rows * cols);
  const acc = new Float64Array(cols);
  for (let i = 0; i < rows; i++) {
    acc.fill(0);
    for (let k = 0; k < rank; k++) {
      const u = a[i * rank + k] ?? 0;
      if (u === 0) continue;
      const bo = k * cols;
      for (let j = 0; j < cols; j++) acc[j] = (acc[j] ?? 0) + u * (b[bo + j] ?? 0);
    }
    out.set(acc, i * cols);
  }
  return out;
}

/** Scale a copy of `a` by s. */
export function scaled(a: Float32Array, s: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = s * (a[i] ?? 0);
  return out;
}

/** The identity [n, n]. */
export function identity(n: number): Float32Array {
  const out = new Float32Array(n * n);
  for (let i = 0; i < n; i++) out[i * n + i] = 1;
  return out;
}

/**
 * Exact factors of a dense [rows, cols] matrix scaled by s: identity on the shorter side, so the rank is
 * min(rows, cols).
 */
export function denseFactors(m: Float32Array, rows: number, cols: number, s = 1): PlainFactors {
  if (rows <= cols) return { up: scaled(identity(rows), s), down: m, rank: rows };
  return { up: scaled(m, s), down: identity(cols), rank: cols };
}
