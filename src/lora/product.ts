/**
 * f32 matrix products for rebuilding reduced factors, C = A·B (A: rows × rank, B: rank × cols, row-major).
 *
 * Where WebAssembly SIMD is available and the module can be compiled synchronously (Node, workers), this runs
 * the fused-update kernel of src/kernels (f32x4 register tiles, W = 0 + A·B, one private memory reused
 * across calls); elsewhere (e.g. a browser's main thread, which refuses synchronous compiles of large
 * modules) `wasmProduct()` returns null and the reducer keeps its plain-JS f64-accumulating path.
 * The kernel accumulates in f32: relative error of a product ≈ 1e-7·√rank, below the one rounding to f32 the
 * factors get anyway. Memory: the engine's memory holds B (packed and staged) and blocks of C; products with a
 * large B run in slices of the inner dimension (PRODUCT_SLICE_ELEMENTS) so that it stays small.
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

let engineCache: WasmEngine | null | undefined;

/**
 * Elements of B packed into the kernel's memory at once (4 Mi = 16 MiB): a larger product runs in slices of its
 * inner dimension, each slice's A·B added into C, so a product's kernel memory stays near 2 × 16 MiB (packed +
 * staged slice) plus C, whatever the size of B (a 1280 × 23 040 matrix would otherwise take 2 × 118 MB).
 */
export const PRODUCT_SLICE_ELEMENTS = 1 << 22;

/** Rows of W copied into the kernel's memory at once (16 MiB): W += A·B on a large W runs in blocks of rows. */
const PRODUCT_BLOCK_BYTES = 16 << 20;

/** This thread's WASM engine for products (one private memory, grown to the largest job and reused), or null. */
function productEngine(): WasmEngine | null {
  if (engineCache !== undefined) return engineCache;
  engineCache = null;
  try {
    if (hasWasmSimd())
      engineCache = new WasmEngine(
        kernelModuleSync(hasRelaxedSimd(), false),
        new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES }),
        PRODUCT_BLOCK_BYTES,
      );
  } catch {
    engineCache = null;
  }
  return engineCache;
}

/**
 * W (as f32 bytes) += A·B on the engine, in slices of the inner dimension when B holds more than
 * PRODUCT_SLICE_ELEMENTS values (A's columns of a slice copied out; B's rows of a slice are contiguous).
 */
function addSliced(
  engine: WasmEngine,
  bytes: Uint8Array,
  rows: number,
  cols: number,
  rank: number,
  a: Float32Array,
  b: Float32Array,
): void {
  // One slice when B fits (A used as it is), else slices of `step` inner columns copied out of A.
  const step = rank * cols <= PRODUCT_SLICE_ELEMENTS ? rank : Math.max(1, Math.floor(PRODUCT_SLICE_ELEMENTS / cols));
  const part = step < rank ? new Float32Array(rows * step) : null;
  for (let k0 = 0; k0 < rank; k0 += step) {
    const k1 = Math.min(rank, k0 + step);
    const w = k1 - k0;
    let up = a.subarray(0, rows * rank);
    if (part) {
      up = part.subarray(0, rows * w);
      for (let i = 0; i < rows; i++) up.set(a.subarray(i * rank + k0, i * rank + k1), i * w);
    }
    runJobSingle(
      engine,
      bytes,
      'F32',
      bytes,
      'F32',
      { rows, cols, rank: w, up, down: b.subarray(k0 * cols, k1 * cols) },
      false,
    );
  }
}

let cached: ProductF32 | null | undefined;
let cachedAdd: AddProductF32 | null | undefined;

/**
 * Drop this thread's product engine when its memory has grown past `maxBytes` (a WebAssembly memory never
 * shrinks): the next product starts a fresh one on the cached compiled module. For loops over matrices of very
 * different sizes (extract), so one large matrix does not pin its memory for the rest of the run.
 */
export function releaseProductMemory(maxBytes: number): void {
  if (engineCache && engineCache.memory.buffer.byteLength > maxBytes) {
    engineCache = undefined;
    cached = undefined;
    cachedAdd = undefined;
  }
}

/** The WASM SIMD product (created once per thread), or null when this runtime cannot provide it. */
export function wasmProduct(): ProductF32 | null {
  if (cached !== undefined) return cached;
  const engine = productEngine();
  cached = engine
    ? (rows, cols, rank, a, b, into) => {
        // The kernel adds A·B to what the output holds: a reused buffer starts from zeros.
        const out = into ? into.subarray(0, rows * cols).fill(0) : new Float32Array(rows * cols);
        if (rows === 0 || cols === 0) return out;
        addSliced(engine, new Uint8Array(out.buffer, out.byteOffset, out.byteLength), rows, cols, rank, a, b);
        return out;
      }
    : null;
  return cached;
}

/** W (rows × cols) += A (rows × rank) · B (rank × cols), f32, row-major, in place. */
export type AddProductF32 = (
  rows: number,
  cols: number,
  rank: number,
  a: Float32Array,
  b: Float32Array,
  w: Float32Array,
) => void;

/**
 * The fused update W += A·B on the same kernel and memory (null where `wasmProduct()` is): a residual Δ − up·down
 * is formed in Δ's own buffer (pass −up), without a second dense matrix.
 */
export function wasmAddProduct(): AddProductF32 | null {
  if (cachedAdd !== undefined) return cachedAdd;
  const engine = productEngine();
  cachedAdd = engine
    ? (rows, cols, rank, a, b, w) => {
        if (rows === 0 || cols === 0) return;
        addSliced(engine, new Uint8Array(w.buffer, w.byteOffset, rows * cols * 4), rows, cols, rank, a, b);
      }
    : null;
  return cachedAdd;
}
