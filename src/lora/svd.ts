/**
 * Truncated SVD of a dense matrix: the ONE implementation lora-mix uses wherever a dense delta (a merge method's
 * result, tuned − base) must become rank-k factors. Factor-space problems (sums of LoRA terms) use the exact
 * Gram-based reducer of ./reduce.ts instead; this file is for matrices that only exist densely.
 *
 * Method: randomized subspace iteration (Halko, Martinsson & Tropp 2011, Algorithms 4.3/4.4) with a seeded
 * starting block of l = k + oversample columns, orthonormalised after every product, and Rayleigh–Ritz on the
 * final subspace:
 *
 *   Q ← orth(A·Ω);  repeat { B = QᵀA;  Q ← orth(A·orth(Bᵀ)) }  until the kept energy stops growing;
 *   B = QᵀA = W·Λ^½·Vᵀ (eigen-decomposition of B·Bᵀ);  A_k = (Q·W_k)·Λ_k^½·V_kᵀ.
 *
 * Error bound. The kept energy Σ_{j≤k} λ_j = ‖Q W_k W_kᵀ Qᵀ A‖_F² is computed exactly, so the reported error
 * ‖A − A_k‖_F² = ‖A‖_F² − Σ_{j≤k} λ_j is the error of the factors returned, never an estimate; it is ≥ the
 * Eckart–Young optimum √(Σ_{j>k} σ_j²). With q power iterations, HMT Corollary 10.10 bounds the expected
 * spectral error by (1 + 4·√(k+p)·√min(m, n)/(p − 1))^(1/(2q+1))·σ_{k+1}; in practice (research/methods.md §5.4)
 * one iteration lands within 0.08% of the optimal Frobenius error and two within 0.001%. The iteration stops
 * when one more round adds less than `tolerance` (default 5e-4) of the remaining error² to the kept energy —
 * geometric convergence then leaves the error within ≈ tolerance/(1 − ρ) of where further rounds would take it —
 * and runs at least `minIterations` (default 1) round. When l ≥ min(m, n) or A has rank < l the subspace holds
 * the whole range and the result is the exact truncated SVD.
 *
 * Products run in f32 (the WASM SIMD kernel of ./product.ts where available) and accumulate the small
 * matrices in f64. Memory: A, Aᵀ and O((m + n)·l) floats. `workspace` reuses memory across calls: a Float32Array
 * holds Aᵀ; an SvdWorkspace holds Aᵀ, the starting block and the f64 scratch in buffers kept from call to call, so
 * a loop over many matrices (extract) does not allocate — and fault in — fresh pages for each one.
 */
import { ArgumentError, LoraError } from '../core/errors.js';
import { mulberry32 } from '../core/random.js';
import { gramRows, symmetricEigen } from './linalg.js';
import { wasmProduct, type ProductF32 } from './product.js';

export interface TruncatedSvdOptions {
  /** Extra columns of the random subspace beyond k (default 8). */
  readonly oversample?: number;
  /** Power (subspace) iterations at least (default 1) and at most (default 8). */
  readonly minIterations?: number;
  readonly maxIterations?: number;
  /** Stop when a round adds less than tolerance × the remaining error² to the kept energy (default 5e-4). */
  readonly tolerance?: number;
  /** Seed of the starting block (default 0x5eed): the same seed and matrix give the same bytes. */
  readonly seed?: number;
  /** How products are computed: 'auto' (WASM SIMD when available), 'js', or a function. */
  readonly product?: 'auto' | 'js' | ProductF32;
  /**
   * Memory reused across calls, same results: a buffer of ≥ m·n floats to hold Aᵀ, or an SvdWorkspace (one per
   * thread) for Aᵀ and the scratch. The result never aliases it.
   */
  readonly workspace?: Float32Array | SvdWorkspace;
}

/**
 * Scratch buffers for truncatedSvd, kept between calls: each named buffer grows to the largest size asked for and
 * is handed out as a view of the requested length. Not for concurrent use (one per thread).
 */
export class SvdWorkspace {
  readonly #f32 = new Map<string, Float32Array>();
  readonly #f64 = new Map<string, Float64Array>();

  f32(name: string, length: number): Float32Array {
    let b = this.#f32.get(name);
    if (!b || b.length < length) {
      b = new Float32Array(length);
      this.#f32.set(name, b);
    }
    return b.subarray(0, length);
  }

  /** Forget buffers longer than `maxElements` (large one-off sizes are not kept for the rest of a run). */
  trim(maxElements: number): void {
    for (const m of [this.#f32, this.#f64] as Map<string, { length: number }>[])
      for (const [name, b] of m) if (b.length > maxElements) m.delete(name);
  }

  f64(name: string, length: number): Float64Array {
    let b = this.#f64.get(name);
    if (!b || b.length < length) {
      b = new Float64Array(length);
      this.#f64.set(name, b);
    }
    return b.subarray(0, length);
  }
}

/** f64 copy of an f32 array, in `ws`'s buffer `name` when given (else a fresh array). */
function toF64(x: Float32Array, ws: SvdWorkspace | undefined, name: string): Float64Array {
  if (!ws) return Float64Array.from(x);
  const out = ws.f64(name, x.length);
  out.set(x);
  return out;
}

/** Rank-k factors with A_k = up·down: up = U_k·Σ_k^½ (m × k), down = Σ_k^½·V_kᵀ (k × n), row-major f32. */
export interface TruncatedSvd {
  /** Rank of the factors: min(k, numerical rank of A); 0 when A is zero. */
  readonly rank: number;
  readonly up: Float32Array;
  readonly down: Float32Array;
  /** Squared singular values found, descending (the Ritz values of the final subspace; the first `rank` kept). */
  readonly sigma2: Float64Array;
  /** ‖A‖_F², exact. */
  readonly total: number;
  /** ‖A − up·down‖_F, exact for the factors returned (up to f32 rounding of the factors). */
  readonly error: number;
  /** Subspace iterations run. */
  readonly iterations: number;
}

/** C (rows × cols) = A (rows × inner) · B (inner × cols) in plain JS, f64 accumulation. */
export function jsProduct(
  rows: number,
  cols: number,
  inner: number,
  a: Float32Array,
  b: Float32Array,
  into?: Float32Array,
): Float32Array {
  const out = into ? into.subarray(0, rows * cols) : new Float32Array(rows * cols);
  const acc = new Float64Array(cols);
  for (let i = 0; i < rows; i++) {
    acc.fill(0);
    const ai = i * inner;
    for (let c = 0; c < inner; c++) {
      const x = a[ai + c] ?? 0;
      if (x === 0) continue;
      const bc = c * cols;
      for (let j = 0; j < cols; j++) acc[j] = (acc[j] ?? 0) + x * (b[bc + j] ?? 0);
    }
    out.set(acc, i * cols);
  }
  return out;
}

/** Transpose a row-major rows × cols f32 matrix (cols × rows), in cache-friendly tiles; into `into` when given. */
function transposeF32(x: Float32Array, rows: number, cols: number, into?: Float32Array): Float32Array {
  const t = into && into.length >= rows * cols ? into.subarray(0, rows * cols) : new Float32Array(rows * cols);
  const T = 32;
  for (let i0 = 0; i0 < rows; i0 += T) {
    const i1 = Math.min(rows, i0 + T);
    for (let j0 = 0; j0 < cols; j0 += T) {
      const j1 = Math.min(cols, j0 + T);
      for (let i = i0; i < i1; i++) for (let j = j0; j < j1; j++) t[j * rows + i] = x[i * cols + j] ?? 0;
    }
  }
  return t;
}

/**
 * Orthonormal rows spanning the rows of X (r × len, f32): whitening through the eigen-decomposition of the f64
 * Gram matrix, Q = Λ^-½·Vᵀ·X, done twice so the result is orthonormal to f32 working precision. Directions with
 * eigenvalues under 1e-12 of the largest (numerically absent) are dropped: the result has r' ≤ r rows.
 */
function orthonormalRows(
  X: Float32Array,
  r: number,
  len: number,
  mul: ProductF32,
  ws?: SvdWorkspace,
): { q: Float32Array; rows: number } {
  let cur = X,
    rows = r;
  for (let pass = 0; pass < 2; pass++) {
    const G = new Float64Array(rows * rows);
    gramRows(toF64(cur.subarray(0, rows * len), ws, 'gram'), rows, len, G);
    const { values, vectors } = symmetricEigen(G, rows);
    const top = rows > 0 ? (values[0] ?? 0) : 0;
    let keep = 0;
    while (keep < rows && top > 0 && (values[keep] ?? 0) > 1e-12 * top) keep++;
    const W = new Float32Array(keep * rows);
    for (let j = 0; j < keep; j++) {
      const f = 1 / Math.sqrt(values[j] ?? 1);
      for (let i = 0; i < rows; i++) W[j * rows + i] = (vectors[j * rows + i] ?? 0) * f;
    }
    cur = keep > 0 ? mul(keep, len, rows, W, cur) : new Float32Array(0);
    rows = keep;
  }
  return { q: cur, rows };
}

function checkArgs(a: Float32Array, m: number, n: number, k: number): void {
  if (!(a instanceof Float32Array) || !Number.isInteger(m) || !Number.isInteger(n) || m < 1 || n < 1) {
    throw new ArgumentError('ARG_INVALID', `truncatedSvd: expected a Float32Array and positive integer dimensions`, {
      found: { rows: m, cols: n },
    });
  }
  if (a.length < m * n) {
    throw new ArgumentError(
      'ARG_INVALID',
      `truncatedSvd: a ${m} × ${n} matrix needs ${m * n} values, found ${a.length}`,
      { expected: m * n, found: a.length },
    );
  }
  if (!Number.isInteger(k) || k < 1) {
    throw new ArgumentError('ARG_INVALID', `truncatedSvd: rank must be an integer ≥ 1, found ${String(k)}`, {
      found: k,
    });
  }
}

/**
 * The best rank-k approximation of A (m × n, row-major f32), within the error bound stated at the top of this
 * file. Deterministic for a given seed.
 */
export function truncatedSvd(
  a: Float32Array,
  m: number,
  n: number,
  k: number,
  options: TruncatedSvdOptions = {},
): TruncatedSvd {
  checkArgs(a, m, n, k);
  const p = options.product ?? 'auto';
  const mul: ProductF32 = p === 'js' ? jsProduct : p === 'auto' ? (wasmProduct() ?? jsProduct) : p;
  const minIt = options.minIterations ?? 1;
  const maxIt = Math.max(minIt, options.maxIterations ?? 8);
  const tol = options.tolerance ?? 5e-4;
  let total = 0;
  for (let i = 0; i < m * n; i++) {
    const v = a[i] ?? 0;
    total += v * v;
  }
  if (!Number.isFinite(total)) {
    throw new LoraError('LORA_NUMERICAL_FAILURE', 'truncatedSvd: the matrix holds non-finite values', {
      expected: 'finite values',
    });
  }
  const empty = (iterations: number): TruncatedSvd => ({
    rank: 0,
    up: new Float32Array(0),
    down: new Float32Array(0),
    sigma2: new Float64Array(0),
    total,
    error: Math.sqrt(total),
    iterations,
  });
  if (total === 0) return empty(0);
  const l = Math.min(k + (options.oversample ?? 8), m, n);
  // Every large product has the small operand on the left (the kernel's fast form): QᵀA = Qᵀ·A and
  // (A·Z)ᵀ = Zᵀ·Aᵀ, so Aᵀ is formed once.
  const ws = options.workspace instanceof SvdWorkspace ? options.workspace : undefined;
  const at = transposeF32(a, m, n, ws ? ws.f32('transpose', m * n) : (options.workspace as Float32Array | undefined));
  // Starting block Ωᵀ (l × n): uniform on [−1, 1) from the seeded generator; Yᵀ = Ωᵀ·Aᵀ (l × m).
  const next = mulberry32(options.seed ?? 0x5eed);
  const omegaT = ws ? ws.f32('omega', l * n) : new Float32Array(l * n);
  for (let i = 0; i < omegaT.length; i++) omegaT[i] = next() / 2147483648 - 1;
  let { q, rows } = orthonormalRows(mul(l, m, n, omegaT, at), l, m, mul, ws);
  // A range of dimension < l (or l = min(m, n)) is captured whole by the first block: no iteration needed.
  const whole = rows < l || l === Math.min(m, n);
  let iterations = 0;
  let prevKept = -1;
  for (;;) {
    if (rows === 0) return empty(iterations);
    const B = mul(rows, n, m, q, a); // QᵀA (rows × n)
    const B64 = toF64(B, ws, 'gram');
    const G = new Float64Array(rows * rows);
    gramRows(B64, rows, n, G);
    const eig = symmetricEigen(G, rows);
    let kept = 0;
    for (let j = 0; j < Math.min(k, rows); j++) kept += Math.max(0, eig.values[j] ?? 0);
    const tail = Math.max(0, total - kept);
    const converged = whole || (iterations >= minIt && kept - prevKept <= tol * tail) || iterations >= maxIt;
    if (converged) return finish(q, rows, B, eig, m, n, k, total, iterations, mul);
    prevKept = kept;
    iterations++;
    // Zᵀ = orth(B) (rows' × n); Yᵀ = Zᵀ·Aᵀ (rows' × m); Q = orth(Y).
    const z = orthonormalRows(B, rows, n, mul, ws);
    if (z.rows === 0) return empty(iterations);
    ({ q, rows } = orthonormalRows(mul(z.rows, m, n, z.q, at), z.rows, m, mul, ws));
  }
}

/** Rayleigh–Ritz: the top-k factors from Q (rows × m, orthonormal rows) and B = QᵀA (rows × n). */
function finish(
  q: Float32Array,
  rows: number,
  B: Float32Array,
  eig: { values: Float64Array; vectors: Float64Array },
  m: number,
  n: number,
  k: number,
  total: number,
  iterations: number,
  mul: ProductF32,
): TruncatedSvd {
  const { values, vectors } = eig;
  const top = values[0] ?? 0;
  let numRank = 0;
  while (numRank < rows && top > 0 && (values[numRank] ?? 0) > 1e-12 * top) numRank++;
  const r = Math.min(k, numRank);
  const sigma2 = Float64Array.from(values.subarray(0, numRank), (v) => Math.max(0, v));
  let kept = 0;
  for (let j = 0; j < r; j++) kept += sigma2[j] ?? 0;
  // upᵀ = (Λ^¼·W_kᵀ)·Q (r × m); down = (Λ^-¼·W_kᵀ)·B (r × n): singular values split evenly between the factors.
  const Wa = new Float32Array(r * rows);
  const Wb = new Float32Array(r * rows);
  for (let j = 0; j < r; j++) {
    const lambda = sigma2[j] ?? 1;
    const fa = lambda ** 0.25,
      fb = lambda ** -0.25;
    for (let i = 0; i < rows; i++) {
      const w = vectors[j * rows + i] ?? 0;
      Wa[j * rows + i] = w * fa;
      Wb[j * rows + i] = w * fb;
    }
  }
  const up = transposeF32(mul(r, m, rows, Wa, q), r, m);
  const down = mul(r, n, rows, Wb, B);
  return { rank: r, up, down, sigma2, total, error: Math.sqrt(Math.max(0, total - kept)), iterations };
}
