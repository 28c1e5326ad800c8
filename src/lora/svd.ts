/**
 * Truncated SVD of a dense matrix: the ONE implementation lora-mix uses wherever a dense delta (a merge method's
 * result, tuned − base) must become rank-k factors. Factor-space problems (sums of LoRA terms) use the exact
 * Gram-based reducer of ./reduce.ts instead; this file is for matrices that only exist densely.
 *
 * Method: randomized subspace iteration (Halko, Martinsson & Tropp 2011, Algorithms 4.3/4.4) with a seeded
 * starting block of l = k + oversample columns, orthonormalised after every product, and Rayleigh–Ritz on the
 * final subspace — measured at every half-step:
 *
 *   Q ← orth(A·Ω);  repeat { C = QᵀA, Z ← orth(Cᵀ);  C = ZᵀAᵀ, Q ← orth(C) }  until the kept energy stops growing;
 *   on the last basis (Q or Z, C its product): C·Cᵀ = W·Λ·Wᵀ;  A_k = (Qᵀ·W_k)·(W_kᵀ·C)  or  (W_kᵀ·C)ᵀ·(W_kᵀ·Z).
 *
 * Every product with A or Aᵀ gives a basis the energy it keeps: the top-k eigenvalues of C·Cᵀ (Ritz values; they
 * never decrease from one half-step to the next), and the same Gram matrix whitens C into the next basis, so it is
 * computed once per half-step. The iteration can therefore stop after any product, on either side.
 *
 * Error bound. The kept energy Σ_{j≤k} λ_j = ‖P_k·A‖_F² (or ‖A·P_k‖_F²) of the projector onto the chosen k
 * directions is computed exactly, so the reported error ‖A − A_k‖_F² = ‖A‖_F² − Σ_{j≤k} λ_j is the error of the
 * factors returned, never an estimate; it is ≥ the Eckart–Young optimum √(Σ_{j>k} σ_j²). With q power iterations,
 * HMT Corollary 10.10 bounds the expected spectral error by (1 + 4·√(k+p)·√min(m, n)/(p − 1))^(1/(2q+1))·σ_{k+1};
 * in practice (research/methods.md §5.4) one iteration lands within 0.08% of the optimal Frobenius error and two
 * within 0.001%. The iteration stops when one more half-step adds less than tolerance/4 (default 5e-4/4) of the
 * remaining error² to the kept energy, after at least `minIterations` (default 1) whole rounds. Under geometric
 * convergence at a rate ρ per round (√ρ per half-step) that leaves the error within (tolerance/4)·√ρ/(1 − √ρ) of
 * the remaining error² of where further rounds would take it, which is at most what a test on whole rounds
 * (tolerance·ρ/(1 − ρ)) leaves whenever ρ ≥ 1/9 (and both are below tolerance/8 for a faster ρ): the bound is not
 * looser, and a matrix that converged within the first half of a round stops one or two products sooner. When
 * l ≥ min(m, n) or A has rank < l the subspace holds the whole range and the result is the exact truncated SVD.
 *
 * Products run in f32 (the WASM SIMD kernel of ./product.ts where available); the Gram matrices of the l-row blocks
 * accumulate in f64 (WebAssembly SIMD, ./gram-wasm.ts). Aᵀ is never formed: Zᵀ·Aᵀ is computed as A·Z over
 * blocks of A's rows (PRODUCT_SLICE_ELEMENTS values each) and the small result transposed. Memory: A and
 * O((m + n)·l) floats. `workspace` reuses memory across calls: an SvdWorkspace holds the starting block and the
 * products' small operands in buffers kept from call to call, so a loop over many matrices (extract) does not
 * allocate — and fault in — fresh pages for each one (a Float32Array is accepted and no longer used).
 */
import { ArgumentError, LoraError } from '../core/errors.js';
import { mulberry32 } from '../core/random.js';
import { gramRowsF32 } from './gram-wasm.js';
import { choleskyWhitening, symmetricEigen, symmetricEigenvalues, transposeF32 } from './linalg.js';
import { PRODUCT_SLICE_ELEMENTS, wasmProduct, type ProductF32 } from './product.js';

/** Columns added to the rank for the starting block when `oversample` is not given. */
export const DEFAULT_OVERSAMPLE = 8;

export interface TruncatedSvdOptions {
  /** Extra columns of the random subspace beyond k (default 8). */
  readonly oversample?: number;
  /** Power (subspace) iterations at least (default 1) and at most (default 8). */
  readonly minIterations?: number;
  readonly maxIterations?: number;
  /** Stop when a half-step adds less than tolerance/4 × the remaining error² to the kept energy (default 5e-4). */
  readonly tolerance?: number;
  /**
   * Stop instead when the predicted excess of the Frobenius error over the converged one is ≤ `excess` (relative;
   * the merge methods use 5e-4 = 0.05%): the gain of the half-steps still to come is extrapolated from the last
   * two gains (geometric convergence). Replaces `tolerance` when given.
   */
  readonly excess?: number;
  /**
   * With `excess`: the rate of convergence is also read off the basis's own Ritz values θ (C·Cᵀ's eigenvalues,
   * descending): r ≥ θ_l/θ_k per half-step, the estimate of (σ_{l+1}/σ_k)² — the asymptotic rate at which subspace
   * iteration with l columns closes the k-th direction — in place of the fixed ¾ assumed until a whole-round ratio of
   * gains exists (a measured round ratio still applies when larger). Lets a fast-converging matrix stop after its
   * third product instead of its fifth; a near-flat spectrum (θ_l ≈ θ_k) takes r near 1 and runs on.
   */
  readonly ritzGap?: boolean;
  /**
   * A starting left basis in place of the range of A·Ω: `rows` vectors of length m (row-major, not necessarily
   * orthonormal) — e.g. the dominant left subspace of the factors A was formed from. The l − rows further starting
   * vectors are A·ω for random ω (so strong directions of A outside the given rows are in the start), and only
   * they cost a product with A: (l − rows)/l of one. Only the starting point changes: the kept energy, the error
   * reported and the stopping rule come from A's products as without it.
   */
  readonly startLeft?: { readonly rows: number; readonly vectors: Float32Array };
  /** Seed of the starting block (default 0x5eed): the same seed and matrix give the same bytes. */
  readonly seed?: number;
  /**
   * Diagnostics: called after every half-step with its index (0 = the start's product), the energy the basis keeps
   * (top-k Ritz values summed), ‖A‖_F² and all the basis's Ritz values (descending; valid during the call only).
   */
  readonly onHalfStep?: (step: number, kept: number, total: number, ritz: Float64Array) => void;
  /** How products are computed: 'auto' (WASM SIMD when available), 'js', or a function. */
  readonly product?: 'auto' | 'js' | ProductF32;
  /**
   * Memory reused across calls, same results: an SvdWorkspace (one per thread) for the scratch (a Float32Array, once
   * the buffer for Aᵀ, is accepted and unused: Aᵀ is no longer formed). The result never aliases it.
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
  /** Subspace iterations run, in halves (1.5: the factors come from the right basis after one and a half rounds). */
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

interface Eigen {
  readonly values: Float64Array;
  readonly vectors: Float64Array;
}

/** The f64 Gram matrix X·Xᵀ of the rows of X (r × len, f32): gramRows' values, in WebAssembly (./gram-wasm.ts). */
function gramOf(X: Float32Array, rows: number, len: number): Float64Array {
  const G = new Float64Array(rows * rows);
  gramRowsF32(X, rows, len, G);
  return G;
}

/**
 * The whitening W (r' × r, f32) that makes W·X orthonormal for rows X with f64 Gram matrix G (r × r): L⁻¹ of the
 * Cholesky factor G = L·Lᵀ (CholeskyQR), or — when G is numerically singular — Λ^-½·Vᵀ from its eigen-
 * decomposition, dropping directions with eigenvalues under 1e-12 of the largest (numerically absent): r' ≤ r.
 * `spread` (smallest over largest squared pivot; 1 on the eigen path) says how far X was from orthogonal.
 */
function whitening(G: Float64Array, r: number): { w: Float32Array; rows: number; spread: number } {
  const chol = choleskyWhitening(G, r);
  if (chol) return { w: Float32Array.from(chol.inverse), rows: r, spread: chol.spread };
  const { values, vectors } = symmetricEigen(G, r);
  const top = r > 0 ? (values[0] ?? 0) : 0;
  let keep = 0;
  while (keep < r && top > 0 && (values[keep] ?? 0) > 1e-12 * top) keep++;
  const w = new Float32Array(keep * r);
  for (let j = 0; j < keep; j++) {
    const f = 1 / Math.sqrt(values[j] ?? 1);
    for (let i = 0; i < r; i++) w[j * r + i] = (vectors[j * r + i] ?? 0) * f;
  }
  return { w, rows: keep, spread: 1 };
}

/**
 * Orthonormal rows spanning the rows of X (r × len, f32) by CholeskyQR on the f64 Gram matrix (see whitening).
 * A second pass makes the result orthonormal to f32 working precision; it is skipped when `onePass` and X was well
 * conditioned (spread > 1e-4: the first pass then leaves ‖QQᵀ − I‖ near κ·ε_f32 ≤ 1e-5, far below what the
 * stopping rule resolves). `gram`: X's Gram matrix when the caller already has it (the first pass reuses it).
 */
function orthonormalRows(
  X: Float32Array,
  r: number,
  len: number,
  mul: ProductF32,
  gram?: Float64Array,
  onePass = false,
  ws?: SvdWorkspace,
): { q: Float32Array; rows: number } {
  let cur = X,
    rows = r;
  for (let pass = 0; pass < 2; pass++) {
    const G = pass === 0 && gram ? gram : gramOf(cur, rows, len);
    const { w, rows: keep, spread } = whitening(G, rows);
    // With a workspace, pass 0 writes 'q0' and pass 1 'q1': never the buffer it reads (X is never one of them).
    cur = keep > 0 ? mul(keep, len, rows, w, cur, ws?.f32(pass === 0 ? 'q0' : 'q1', keep * len)) : new Float32Array(0);
    rows = keep;
    if (onePass && spread > 1e-4) break;
  }
  return { q: cur, rows };
}

/**
 * Products X·Aᵀ (X: rows × n) without ever forming Aᵀ: X·Aᵀ = (A·Xᵀ)ᵀ, with A as the product's left operand and
 * the small Xᵀ (n × rows) as its right one, in blocks of A's rows (at most PRODUCT_SLICE_ELEMENTS values each, so
 * the kernel's memory stays near two such blocks) — each block's rows of A·Xᵀ are complete sums over all n, in the
 * same order as the kernel sums X·Aᵀ — then the small (m × rows) result transposed. No transpose of A (a tiled
 * transpose of a large matrix runs at 5–20 ns per value, slower than the product itself) and no m × n buffer.
 */
class TransposedA {
  constructor(
    private readonly a: Float32Array,
    private readonly m: number,
    private readonly n: number,
    private readonly mul: ProductF32,
    private readonly ws: SvdWorkspace | undefined,
  ) {}

  /** X·Aᵀ (rows × m). */
  times(rows: number, x: Float32Array): Float32Array {
    const { a, m, n, ws } = this;
    const xt = transposeF32(x, rows, n, ws?.f32('xt', n * rows));
    const ax = ws ? ws.f32('ax', m * rows) : new Float32Array(m * rows);
    const step = Math.max(1, Math.floor(PRODUCT_SLICE_ELEMENTS / n));
    for (let i0 = 0; i0 < m; i0 += step) {
      const i1 = Math.min(m, i0 + step);
      this.mul(i1 - i0, rows, n, a.subarray(i0 * n, i1 * n), xt, ax.subarray(i0 * rows, i1 * rows));
    }
    return transposeF32(ax, m, rows, ws?.f32('axT', m * rows));
  }
}

/** Σ a[i]² for i < len, in f64 and index order (a small function of its own: V8 keeps the loop tight). */
function sumOfSquares(a: Float32Array, len: number): number {
  let total = 0;
  for (let i = 0; i < len; i++) {
    const v = a[i] as number;
    total += v * v;
  }
  return total;
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
  const excess = options.excess;
  const total = sumOfSquares(a, m * n);
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
  const l = Math.min(k + (options.oversample ?? DEFAULT_OVERSAMPLE), m, n);
  const ws = options.workspace instanceof SvdWorkspace ? options.workspace : undefined;
  // QᵀA = Qᵀ·A (the small operand on the left) and (A·Z)ᵀ = Zᵀ·Aᵀ computed as A·Z, then transposed (small).
  const at = new TransposedA(a, m, n, mul, ws);
  const next = mulberry32(options.seed ?? 0x5eed);
  // Starting block: the given rows (options.startLeft) first, then the rows of (A·Ω)ᵀ for the l − given random
  // columns Ω (uniform on [−1, 1) from the seeded generator) — any strong direction of A the given rows miss is in
  // the start all the same.
  const start = options.startLeft;
  const given = start && start.rows > 0 ? Math.min(start.rows, l) : 0;
  let sampled: Float32Array | null = null;
  if (given < l) {
    const omegaT = ws ? ws.f32('omega', (l - given) * n) : new Float32Array((l - given) * n);
    for (let i = 0; i < omegaT.length; i++) omegaT[i] = next() / 2147483648 - 1;
    sampled = at.times(l - given, omegaT);
  }
  let s0 = sampled as Float32Array;
  if (start && given > 0) {
    s0 = ws ? ws.f32('start', l * m) : new Float32Array(l * m);
    s0.set(start.vectors.subarray(0, given * m));
    if (sampled) s0.set(sampled, given * m);
  }
  let basis = orthonormalRows(s0, l, m, mul, undefined, false, ws);
  // Without given rows, a range of dimension < l (or l = min(m, n)) is captured whole by the first block: no
  // iteration needed; with them, only a basis that spans m-space is.
  const whole = given > 0 ? basis.rows === m : basis.rows < l || l === Math.min(m, n);
  // Half-steps: a left basis Q (rows × m) gives C = QᵀA (rows × n), a right basis Z (rows × n) gives C = ZᵀAᵀ
  // (rows × m); the top-k eigenvalues of C·Cᵀ are the energy the basis keeps, and orth(C) is the next basis.
  let side: 'left' | 'right' = 'left';
  let steps = 0;
  let prevKept = -1;
  const gains: number[] = [];
  for (;;) {
    const { q, rows } = basis;
    if (rows === 0) return empty(steps / 2);
    const c = side === 'left' ? mul(rows, n, m, q, a, ws?.f32('c', rows * n)) : at.times(rows, q);
    const len = side === 'left' ? n : m;
    const G = gramOf(c, rows, len);
    const values = symmetricEigenvalues(G, rows);
    let kept = 0;
    for (let j = 0; j < Math.min(k, rows); j++) kept += Math.max(0, values[j] ?? 0);
    const tail = Math.max(0, total - kept);
    const gain = kept - prevKept;
    gains.push(gain);
    options.onHalfStep?.(steps, kept, total, values);
    const converged =
      whole ||
      steps >= 2 * maxIt ||
      (steps >= 2 * minIt &&
        (excess === undefined
          ? gain <= (tol / 4) * tail
          : predictedGain(gains, options.ritzGap ? ritzGapRate(values, k, rows) : undefined) <= 2 * excess * tail));
    if (converged) {
      // The factor that is transposed into `up` is a temporary: in the workspace when there is one.
      const f = finish(q, rows, side === 'left' ? m : n, c, len, symmetricEigen(G, rows), k, mul, side, ws);
      // Left: up = (W·Q)ᵀ, down = W'·C. Right (C = (A·Z)ᵀ): down = W·Z, up = (W'·C)ᵀ.
      const [up, down] =
        side === 'left'
          ? [transposeF32(f.fromBasis, f.rank, m), f.fromC]
          : [transposeF32(f.fromC, f.rank, m), f.fromBasis];
      return {
        rank: f.rank,
        up,
        down,
        sigma2: f.sigma2,
        total,
        error: Math.sqrt(Math.max(0, total - f.kept)),
        iterations: steps / 2,
      };
    }
    prevKept = kept;
    steps++;
    basis = orthonormalRows(c, rows, len, mul, G, true, ws);
    side = side === 'left' ? 'right' : 'left';
  }
}

/**
 * The energy the half-steps still to come would add, extrapolated from the gains so far (gains[s]: what half-step s
 * added): subspace iteration gains roughly geometrically, ρ per round, so with r = √ρ per half-step the rest adds
 * ≈ g·r/(1 − r) after a gain g. ρ is measured over a whole round (the last gain over the one two half-steps before,
 * same side of the matrix). The gains of the first round (from the random start) say nothing about ρ — a ratio
 * against them underestimates it on clustered spectra — so until a ratio of two later gains exists, r = ¾ (the
 * rest taken to add three times the last gain); r is capped at 0.995 (two hundred times).
 */
function predictedGain(gains: readonly number[], gapRate?: number): number {
  const s = gains.length - 1;
  const g = gains[s] ?? 0;
  if (g <= 0) return 0;
  const before = gains[s - 2] ?? 0;
  const round = s >= 4 && before > 0 ? Math.sqrt(g / before) : undefined;
  const r = Math.min(gapRate === undefined ? (round ?? 0.75) : Math.max(gapRate, round ?? 0), 0.995);
  return (g * r) / (1 - r);
}

/**
 * θ_l/θ_k from a basis's Ritz values (descending, `rows` of them): the per-half-step rate (σ_{l+1}/σ_k)² at which
 * the energy still missing from the top-k directions shrinks once the faster directions have converged (each product
 * with A or Aᵀ scales the tangent of the k-th direction's angle by σ_{l+1}/σ_k, the energy it misses by the square).
 * θ_l stands in for σ_{l+1}²: a lower bound on σ_l² ≥ σ_{l+1}², so the estimate can run low while θ_l is still far
 * from converged — the margin of the `excess` target covers that (measured: bench/ties-rule.ts). Undefined when
 * θ_k ≤ 0 (rank below k: nothing left to converge) or the basis has no row beyond k.
 */
function ritzGapRate(values: Float64Array, k: number, rows: number): number | undefined {
  const thetaK = values[k - 1] ?? 0;
  if (rows <= k || !(thetaK > 0)) return undefined;
  return Math.max(0, values[rows - 1] ?? 0) / thetaK;
}

/**
 * Rayleigh–Ritz on a basis (rows × bLen, orthonormal rows) and C = basisᵀ·M (rows × len) with C·Cᵀ = W·Λ·Wᵀ: the
 * top-k of M projected on the basis is (basisᵀ·W_k·Λ_k^¼)·(Λ_k^-¼·W_kᵀ·C) — fromBasis = Λ_k^¼·W_kᵀ·basis (r × bLen)
 * and fromC = Λ_k^-¼·W_kᵀ·C (r × len): the singular values split evenly between the two factors.
 */
function finish(
  basis: Float32Array,
  rows: number,
  bLen: number,
  c: Float32Array,
  len: number,
  eig: Eigen,
  k: number,
  mul: ProductF32,
  side: 'left' | 'right',
  ws: SvdWorkspace | undefined,
): { rank: number; fromBasis: Float32Array; fromC: Float32Array; sigma2: Float64Array; kept: number } {
  const { values, vectors } = eig;
  const top = values[0] ?? 0;
  let numRank = 0;
  while (numRank < rows && top > 0 && (values[numRank] ?? 0) > 1e-12 * top) numRank++;
  const r = Math.min(k, numRank);
  const sigma2 = Float64Array.from(values.subarray(0, numRank), (v) => Math.max(0, v));
  let kept = 0;
  for (let j = 0; j < r; j++) kept += sigma2[j] ?? 0;
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
  // The caller transposes fromBasis (left side) or fromC (right side) into `up`: that one may live in `ws`.
  const fromBasis = mul(r, bLen, rows, Wa, basis, side === 'left' ? ws?.f32('fin', r * bLen) : undefined);
  const fromC = mul(r, len, rows, Wb, c, side === 'right' ? ws?.f32('fin', r * len) : undefined);
  return { rank: r, fromBasis, fromC, sigma2, kept };
}
