/**
 * f32 matrix products for rebuilding reduced factors, C = A·B (A: rows × rank, B: rank × cols, row-major).
 *
 * Where WebAssembly SIMD is available and the module can be compiled synchronously (Node, workers), this runs
 * the fused-update kernel of src/kernels (f32x4 register tiles, W = 0 + A·B, one private memory reused
 * across calls); elsewhere (e.g. a browser's main thread, which refuses synchronous compiles of large
 * modules) `wasmProduct()` returns null and the reducer keeps its plain-JS f64-accumulating path.
 * The kernel accumulates in f32: relative error of a product ≈ 1e-7·√rank, below the one rounding to f32 the
 * factors get anyway.
 */
import { runJobSingle } from '../kernels/cpu.js';
import { kernelModuleSync, MAX_PAGES, WasmEngine } from '../kernels/wasm-engine.js';
import { hasRelaxedSimd, hasWasmSimd } from '../core/wasm-features.js';

/**
 * C (rows × cols) = A (rows × rank) · B (rank × cols), f32, row-major. Returns a new array, or `into` (its first
 * rows·cols values overwritten, the rest untouched) when given: callers reuse one buffer across modules.
 */
export type ProductF32 = (
  rows: number,
  cols: number,
  rank: number,
  a: Float32Array,
  b: Float32Array,
  into?: Float32Array,
) => Float32Array;

let cached: ProductF32 | null | undefined;

/** The WASM SIMD product (created once per thread), or null when this runtime cannot provide it. */
export function wasmProduct(): ProductF32 | null {
  if (cached !== undefined) return cached;
  cached = null;
  try {
    if (!hasWasmSimd()) return cached;
    const engine = new WasmEngine(
      kernelModuleSync(hasRelaxedSimd(), false),
      new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES }),
    );
    cached = (rows, cols, rank, a, b, into) => {
      // The kernel adds A·B to what the output holds: a reused buffer starts from zeros.
      const out = into ? into.subarray(0, rows * cols).fill(0) : new Float32Array(rows * cols);
      if (rows === 0 || cols === 0) return out;
      const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      runJobSingle(engine, bytes, 'F32', bytes, 'F32', { rows, cols, rank, up: a, down: b }, false);
      return out;
    };
  } catch {
    cached = null;
  }
  return cached;
}
