/**
 * One module of an extraction, from the stored bytes of its base and tuned weights to its stored factors and the
 * error they make: the unit of work extractLora hands to a worker thread (src/node/extract-worker.ts) or runs on
 * its own thread. Plain data in, plain data out (transferable buffers), so both paths run the same code and give
 * the same bytes for a given seed, whatever the thread count.
 *
 * Per module: Δ = tuned − base in f32, decoded straight into buffers that are reused from module to module (an
 * ExtractWorkspace: Δ, the SVD's transpose and scratch — no fresh large arrays per module); an all-zero Δ is
 * reported as zero; otherwise the truncated SVD of src/lora/svd.ts gives balanced rank-k factors (k from the rank
 * rule), the factors are rounded to the output dtype, and ‖Δ − up·down‖_F of those stored factors is measured
 * exactly: the residual is formed in Δ's own buffer by the fused-update kernel (Δ += (−up)·down) and summed in f64.
 */
import { decodeInto, decodeToF32, encodeFromF32, countOverflow } from '../core/dtype.js';
import type { DType } from '../core/tensor.js';
import { LoraError } from '../core/errors.js';
import type { OutputDType } from '../formats/encode.js';
import { releaseProductMemory, wasmAddProduct, wasmProduct, type AddProductF32 } from '../lora/product.js';
import { chooseExtractRank, ruleCap, type RankRule } from '../lora/rank-rule.js';
import { jsProduct, SvdWorkspace, truncatedSvd } from '../lora/svd.js';

/**
 * Stop the SVD's power iterations when one more half-step added less than 0.5%/4 of the remaining error² (see
 * src/lora/svd.ts; its general default is 5e-4). Measured against a converged reference (oversampling 200, 12
 * rounds) at rank 64: pure flat noise 320×960 and 640×2880 — the slowest case, ρ near 1 — end within 1.0034× and
 * 1.0039× of the optimal error (6.5 and 6 rounds); decaying spectra (1/j, 1/√j) within 1.0026× and 1.0017×; a
 * rank-64 signal over noise at a relative error of 0.4–0.8% (what an LCM extraction looks like: 1280×1280,
 * 640×5760, 1280×5120) within 1.0002× after ONE round — its second half-step already shows the kept energy has
 * stopped growing (a test on whole rounds needed a second round, two more products, to see it).
 * test/extract-svd.test.ts checks the 1.01× promise at this tolerance against an independent Jacobi SVD.
 */
export const EXTRACT_SVD_TOLERANCE = 0.005;

/** One module's stored weights: the bytes of exactly its values (rows of a fused tensor already cut out). */
export interface ModuleBytes {
  readonly dtype: string;
  readonly raw: Uint8Array;
  /** For messages: file and key. */
  readonly what: string;
}

export interface ExtractJob {
  readonly path: string;
  /** [out, in] or [out, in, kh, kw]. */
  readonly shape: readonly number[];
  readonly rule: RankRule;
  readonly dtype: OutputDType;
  readonly oversampling?: number;
  readonly seed?: number;
  /** Released (replaced by empty bytes) as soon as Δ is formed: the job does not keep them while it is factored. */
  base: ModuleBytes;
  tuned: ModuleBytes;
}

export interface ExtractModuleReport {
  readonly path: string;
  /** [out, in] or [out, in, kh, kw]. */
  readonly shape: readonly number[];
  readonly rank: number;
  /** ‖Δ‖_F. */
  readonly norm: number;
  /** ‖Δ − up·down‖_F of the factors as stored. */
  readonly error: number;
  /** error / norm. */
  readonly relError: number;
  /** 1 − (error / norm)²: the share of ‖Δ‖_F² the stored factors reproduce. */
  readonly keptEnergy: number;
  /** Power iterations the truncated SVD ran (0 when it was exact). */
  readonly iterations: number;
}

/** What one module gave: zero (Δ = 0, left out) or its report and stored factors (output dtype bytes). */
export type ModuleOutcome =
  | { readonly zero: true }
  | {
      readonly zero: false;
      readonly report: ExtractModuleReport;
      readonly rank: number;
      readonly up: Uint8Array;
      readonly down: Uint8Array;
    };

/**
 * Elements up to which a thread keeps its full-size buffer (Δ; the SVD's transpose and the product kernel's memory
 * are bounded by PRODUCT_SLICE_ELEMENTS) for the next module: 16 Mi (64 MiB) covers most modules; the larger
 * convolutions (up to 29.5 M) get a buffer of their own that is freed afterwards, so two threads do not both hold
 * the largest size for the rest of the run.
 */
export const KEEP_BUFFER_ELEMENTS = 1 << 24;

/**
 * Bytes of kernel memory a thread keeps for the next module: the sliced products use 2 × 16 MiB for B plus blocks
 * of 16 MiB of C or W, so 64 MiB; a memory grown past that (an unusually wide product) is dropped after the module.
 */
const KEEP_KERNEL_BYTES = 64 << 20;

const NO_BYTES = new Uint8Array(0);

/** Buffers one thread reuses across modules (not for concurrent use). */
export class ExtractWorkspace {
  readonly svd = new SvdWorkspace();
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Elements of the base decoded at a time while Δ is formed (Δ is the only full-size f32 copy). */
const CHUNK = 1 << 16;

/** Δ = tuned − base in f32 in the workspace's 'delta' buffer, or null when every element is zero. */
function deltaOf(job: ExtractJob, size: number, ws: ExtractWorkspace): Float32Array | null {
  const { base, tuned } = job;
  if (base.dtype === tuned.dtype && bytesEqual(base.raw, tuned.raw)) return null;
  const delta = ws.svd.f32('delta', size);
  decodeInto(tuned.dtype as DType, tuned.raw, delta, tuned.what);
  const width = base.raw.byteLength / size;
  if (!Number.isInteger(width)) decodeInto(base.dtype as DType, base.raw, delta, base.what); // raises the length error
  const b = ws.svd.f32('chunk', Math.min(CHUNK, size));
  let any = false;
  for (let c0 = 0; c0 < size; c0 += CHUNK) {
    const c1 = Math.min(size, c0 + CHUNK);
    const part = decodeInto(
      base.dtype as DType,
      base.raw.subarray(c0 * width, c1 * width),
      b.subarray(0, c1 - c0),
      base.what,
    );
    for (let j = c0; j < c1; j++) {
      const d = (delta[j] as number) - (part[j - c0] as number);
      delta[j] = d;
      if (d !== 0) any = true;
    }
  }
  return any ? delta : null;
}

/** The first k singular triplets of balanced factors up (out × r) and down (r × n): exactly the rank-k truncation. */
function leading(
  up: Float32Array,
  down: Float32Array,
  out: number,
  n: number,
  r: number,
  k: number,
): { up: Float32Array; down: Float32Array } {
  if (k === r) return { up, down };
  const u = new Float32Array(out * k);
  for (let i = 0; i < out; i++) u.set(up.subarray(i * r, i * r + k), i * k);
  return { up: u, down: down.slice(0, k * n) };
}

/** Plain-JS W += A·B (where the WASM kernel is unavailable). */
const jsAddProduct: AddProductF32 = (rows, cols, rank, a, b, w) => {
  const p = jsProduct(rows, cols, rank, a, b);
  for (let i = 0; i < rows * cols; i++) w[i] = (w[i] as number) + (p[i] as number);
};

/** ‖Δ − up·down‖_F² in f64, forming the residual in Δ's buffer (Δ is overwritten). */
function residual2(
  delta: Float32Array,
  out: number,
  n: number,
  k: number,
  up: Float32Array,
  down: Float32Array,
): number {
  const add = wasmAddProduct() ?? jsAddProduct;
  const neg = new Float32Array(up.length);
  for (let i = 0; i < up.length; i++) neg[i] = -(up[i] as number);
  add(out, n, k, neg, down, delta);
  let e0 = 0;
  let e1 = 0;
  const size = out * n;
  let j = 0;
  for (; j + 1 < size; j += 2) {
    const a = delta[j] as number;
    const b = delta[j + 1] as number;
    e0 += a * a;
    e1 += b * b;
  }
  if (j < size) e0 += (delta[j] as number) ** 2;
  return e0 + e1;
}

/**
 * Factor one module's Δ (rank from its rule), round the factors to the output dtype and measure the error of
 * what will be stored. LORA_DTYPE_OVERFLOW when a factor does not fit the dtype.
 */
export function factorModule(job: ExtractJob, ws: ExtractWorkspace): ModuleOutcome {
  try {
    return factorIn(job, ws);
  } finally {
    ws.svd.trim(KEEP_BUFFER_ELEMENTS);
    releaseProductMemory(KEEP_KERNEL_BYTES);
  }
}

function factorIn(job: ExtractJob, ws: ExtractWorkspace): ModuleOutcome {
  const { shape, rule, dtype, path } = job;
  const out = shape[0] ?? 1;
  const n = shape.slice(1).reduce((a, d) => a * d, 1);
  const delta = deltaOf(job, out * n, ws);
  // The stored bytes are not needed past Δ: let them go while the module is factored (they can be 2 × 59 MB).
  job.base = { ...job.base, raw: NO_BYTES };
  job.tuned = { ...job.tuned, raw: NO_BYTES };
  if (!delta) return { zero: true };
  const short = Math.min(out, n);
  const cumulative = rule.kind === 'svCumulative';
  // The rules need one singular value past the cap; the cumulative rule needs all of them (Σσ).
  const want = cumulative ? short : Math.min(short, ruleCap(rule) + (rule.kind === 'rank' ? 0 : 1));
  const svd = truncatedSvd(delta, out, n, want, {
    product: wasmProduct() ?? jsProduct,
    tolerance: EXTRACT_SVD_TOLERANCE,
    workspace: ws.svd,
    ...(job.oversampling !== undefined ? { oversample: job.oversampling } : {}),
    ...(job.seed !== undefined ? { seed: job.seed } : {}),
  });
  const sigma = Float64Array.from(svd.sigma2.subarray(0, svd.rank), Math.sqrt);
  const sigmaSum = cumulative ? Float64Array.from(svd.sigma2, Math.sqrt).reduce((a, s) => a + s, 0) : undefined;
  const rank = Math.min(Math.max(1, chooseExtractRank(rule, sigma, svd.total, short, sigmaSum)), svd.rank);
  const f = leading(svd.up, svd.down, out, n, svd.rank, rank);
  for (const [name, values] of [
    ['up', f.up],
    ['down', f.down],
  ] as const) {
    const overflow = countOverflow(values, dtype);
    if (overflow > 0) {
      throw new LoraError(
        'LORA_DTYPE_OVERFLOW',
        `extract: module '${path}': ${overflow} value(s) of the ${name} factor do not fit ${dtype}; write F32 or BF16 instead (dtype / --dtype)`,
        { key: path, dtype, count: overflow },
      );
    }
  }
  // Own copies of the stored bytes (F32 encoding may return a view of the factor) — they are transferred.
  const up = encodeFromF32(dtype, f.up).slice();
  const down = encodeFromF32(dtype, f.down).slice();
  const err2 = residual2(delta, out, n, rank, decodeToF32(dtype, up), decodeToF32(dtype, down));
  const norm = Math.sqrt(svd.total);
  const error = Math.sqrt(err2);
  return {
    zero: false,
    rank,
    up,
    down,
    report: {
      path,
      shape: [...shape],
      rank,
      norm,
      error,
      relError: norm > 0 ? error / norm : 0,
      keptEnergy: svd.total > 0 ? 1 - err2 / svd.total : 1,
      iterations: svd.iterations,
    },
  };
}

/** Worker threads that run factorModule (the Node host provides one: src/node/extract-threads.ts). */
export interface ExtractPool {
  /** Modules factored at once. */
  readonly threads: number;
  /** Factor one module on a worker; rejects with the typed error the worker raised. The job's bytes move over. */
  factor(job: ExtractJob): Promise<ModuleOutcome>;
  close(): Promise<void>;
}
