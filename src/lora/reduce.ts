/**
 * Optimal rank reduction of a sum of LoRA terms, computed from the factors.
 *
 * A module's merged delta is Δ = U·D with U = [c₁·up₁ | c₂·up₂ | …] (out × R) and D = [down₁; down₂; …] (R × n),
 * R = Σ rᵢ, n = in·kh·kw. Eckart–Young: the best rank-k approximation (in the Frobenius and spectral norms) keeps
 * the k largest singular triplets of Δ. They come from R × R matrices only:
 *
 *   1. Gram matrices Gu = UᵀU and Gd = D·Dᵀ in f64 (the only passes over the long dimensions besides the output).
 *   2. A pivoted Cholesky factor Ru of Gu: RuᵀRu = Gu, so U = Qu·Ru for some Qu with orthonormal columns — Ru is
 *      the R factor of a QR of U without Qu ever being formed (Cholesky-QR).
 *   3. M = Ru·Gd·Ruᵀ = C·Cᵀ for the core C = Ru·Rdᵀ; its eigen-decomposition M = Uc·Σ²·Ucᵀ gives the singular
 *      values Σ of Δ and the left singular vectors Qu·Uc.
 *   4. The kept part is rebuilt without any inverse of a factor (only of the kept singular values):
 *        up'' = U · (Gd·Ruᵀ·Uc_k·Σ_k^(-3/2))    = U_k·Σ_k^(1/2)
 *        down'' = (Σ_k^(-1/2)·Uc_kᵀ·Ru) · D     = Σ_k^(1/2)·V_kᵀ
 *      so up''·down'' = U_k Σ_k V_kᵀ = Δ_k, the singular values split evenly between the factors (balanced
 *      magnitudes, which matters when the file is stored in fp16), alpha = k.
 *
 * Cost per module: (out + n)·R² flops for the Grams, 2·(out + n)·R·k for the rebuilt factors, O(R³) for the core.
 * Working through the Grams limits the resolution of tiny singular values to about 1e-7 of the largest (far below
 * what f32 factors carry); singular values under NOISE_FLOOR·σ₁ are treated as zero.
 */
import { LoraError, ArgumentError } from '../core/errors.js';
import { dot, EPS64, gramRows, matmul, pivotedCholesky, symmetricEigen, xtyToF32 } from './linalg.js';
import { wasmProduct, type ProductF32 } from './product.js';

/** One term c·up·down of a module's merged delta. `up` is out × rank and `down` rank × n, both row-major. */
export interface FactorTerm {
  readonly coef: number;
  readonly rank: number;
  readonly up: Float32Array;
  readonly down: Float32Array;
}

/** Relative threshold on σ²/σ₁² below which a singular value is numerical noise of the Gram-based core. */
export const NOISE_FLOOR = 1e-12;
/**
 * σ² below ABSOLUTE_NOISE·‖U‖_F²·‖D‖_F² is rounding noise of the Grams (terms that cancel, such as τ − τ, leave
 * values around 1e-18 of that product).
 */
export const ABSOLUTE_NOISE = 1e-15;

/** What the analysis of one module found. */
export interface ModuleSpectrum {
  /** Squared singular values σ², descending, above the noise floor (its length is the numerical rank). */
  readonly sigma2: Float64Array;
  /** ‖Δ‖_F² = trace(Gu·Gd): every singular value, noise included. */
  readonly total: number;
}

/** How many singular values to keep: a fixed rank, a minimum fraction of ‖Δ‖_F, or both (the smaller k wins). */
export interface RankTarget {
  readonly rank?: number;
  /** 0 < minEnergy ≤ 1: keep the smallest k with ‖Δ_k‖_F / ‖Δ‖_F ≥ minEnergy. */
  readonly minEnergy?: number;
}

/**
 * The k a target asks for, given the spectrum (never more than the numerical rank).
 * With minEnergy, the comparison is on the squared norms with a few ulps of slack, so minEnergy = 1 keeps every
 * non-noise singular value.
 */
export function chooseRank(spectrum: ModuleSpectrum, target: RankTarget): number {
  const { sigma2, total } = spectrum;
  let k = sigma2.length;
  if (target.minEnergy !== undefined && total > 0) {
    const goal = target.minEnergy * target.minEnergy * total * (1 - 16 * EPS64);
    let cum = 0;
    let j = 0;
    while (j < sigma2.length) {
      cum += sigma2[j]!;
      j++;
      if (cum >= goal) break;
    }
    k = j;
  }
  if (target.rank !== undefined) k = Math.min(k, target.rank);
  return k;
}

/** ‖Δ_k‖_F / ‖Δ‖_F and ‖Δ − Δ_k‖_F for keeping the first k singular values. */
export function truncationStats(
  spectrum: ModuleSpectrum,
  k: number,
): { normKept: number; error: number; norm: number } {
  let kept = 0;
  for (let j = 0; j < Math.min(k, spectrum.sigma2.length); j++) kept += spectrum.sigma2[j]!;
  const discarded = Math.max(0, spectrum.total - kept);
  const total = kept + discarded;
  return {
    normKept: total > 0 ? Math.sqrt(kept / total) : 1,
    error: Math.sqrt(discarded),
    norm: Math.sqrt(total),
  };
}

/** Reduced factors: up (out × k) and down (k × n), row-major f32. */
export interface ReducedFactors {
  readonly rank: number;
  readonly up: Float32Array;
  readonly down: Float32Array;
}

/**
 * Reduces modules one at a time, reusing its f64 work buffers (so a whole LoRA does not allocate per module
 * beyond the result). Not re-entrant: `analyze` invalidates the previous analysis.
 */
export class RankReducer {
  private ut = new Float64Array(0);
  private d = new Float64Array(0);
  private scratch = new Float32Array(0);
  private readonly product: ProductF32 | null;
  private state: {
    R: number;
    out: number;
    n: number;
    ru: number;
    numRank: number;
    Ru: Float64Array;
    T: Float64Array;
    values: Float64Array;
    vectors: Float64Array;
    /** f32 stacks for `product`: U (out × R) and D (R × n). */
    uf: Float32Array | null;
    df: Float32Array | null;
  } | null = null;

  /**
   * `product`: how the reduced factors are multiplied out — 'auto' (default: the WASM SIMD kernel when the
   * runtime has it, else JS), 'js' (f64-accumulating JS loops), or a function.
   */
  constructor(options: { product?: 'auto' | 'js' | ProductF32 } = {}) {
    const p = options.product ?? 'auto';
    this.product = p === 'js' ? null : p === 'auto' ? wasmProduct() : p;
  }

  /** Gram matrices, Cholesky-QR and the core eigen-decomposition of Σ cᵢ·upᵢ·downᵢ. */
  analyze(terms: readonly FactorTerm[], out: number, n: number, path = '(module)'): ModuleSpectrum {
    let R = 0;
    for (const t of terms) R += t.rank;
    if (this.ut.length < R * out) this.ut = new Float64Array(R * out);
    if (this.d.length < R * n) this.d = new Float64Array(R * n);
    const ut = this.ut,
      d = this.d;
    // Uᵀ (R × out): row a is column a of the stacked, scaled ups. D (R × n): the downs, stacked.
    let row = 0;
    for (const t of terms) {
      const { coef, rank: r, up, down } = t;
      for (let o = 0; o < out; o++) {
        const src = o * r;
        for (let a = 0; a < r; a++) ut[(row + a) * out + o] = coef * up[src + a]!;
      }
      const base = row * n;
      for (let i = 0; i < r * n; i++) d[base + i] = down[i]!;
      row += r;
    }
    // f32 stacks for the product path: U = [c·up | …] (out × R) and D = [down; …] (R × n).
    let uf: Float32Array | null = null,
      df: Float32Array | null = null;
    if (this.product) {
      uf = new Float32Array(out * R);
      let col = 0;
      for (const t of terms) {
        const { coef, rank: r, up } = t;
        for (let o = 0; o < out; o++) {
          const src = o * r,
            dst = o * R + col;
          for (let a = 0; a < r; a++) uf[dst + a] = coef * up[src + a]!;
        }
        col += r;
      }
      if (terms.length === 1 && terms[0]!.down.length === R * n) {
        df = terms[0]!.down;
      } else {
        df = new Float32Array(R * n);
        let at = 0;
        for (const t of terms) {
          df.set(t.down.subarray(0, t.rank * n), at);
          at += t.rank * n;
        }
      }
    }
    const Gu = new Float64Array(R * R);
    const Gd = new Float64Array(R * R);
    gramRows(ut, R, out, Gu);
    gramRows(d, R, n, Gd);
    // ‖Δ‖_F² = trace(Gu·Gd) = Σ Gu∘Gd (both symmetric): exact, whatever the Cholesky dropped.
    let total = 0,
      trU = 0,
      trD = 0;
    for (let i = 0; i < R * R; i++) total += Gu[i]! * Gd[i]!;
    for (let i = 0; i < R; i++) {
      trU += Gu[i * R + i]!;
      trD += Gd[i * R + i]!;
    }
    if (!Number.isFinite(trU) || !Number.isFinite(trD) || !Number.isFinite(total)) {
      throw new LoraError(
        'LORA_NUMERICAL_FAILURE',
        `rank reduction of module '${path}': the factors hold non-finite values (‖U‖² = ${trU}, ‖D‖² = ${trD}); expected finite numbers`,
        { key: path, expected: 'finite factors', found: { upNorm2: trU, downNorm2: trD } },
      );
    }
    const chol = pivotedCholesky(Gu, R, Math.max(1e-12, 100 * R * EPS64));
    const ru = chol.rank;
    const Ru = chol.factor;
    // T = Ru·Gd (ru × R); M = T·Ruᵀ (ru × ru) is symmetric: compute its upper triangle and mirror it.
    const T = matmul(Ru, Gd, ru, R, R, new Float64Array(ru * R));
    const M = new Float64Array(ru * ru);
    for (let i = 0; i < ru; i++) {
      for (let j = i; j < ru; j++) {
        const v = dot(T, i * R, Ru, j * R, R);
        M[i * ru + j] = v;
        M[j * ru + i] = v;
      }
    }
    const { values, vectors } = symmetricEigen(M, ru);
    // Noise: relative to the largest σ², and absolute relative to ‖U‖²‖D‖² (terms that cancel leave rounding
    // of that size, whatever Δ is).
    const top = ru > 0 ? values[0]! : 0;
    const floor = Math.max(NOISE_FLOOR * top, ABSOLUTE_NOISE * trU * trD);
    let numRank = 0;
    while (numRank < ru && values[numRank]! > floor) numRank++;
    this.state = { R, out, n, ru, numRank, Ru, T, values, vectors, uf, df };
    return { sigma2: values.slice(0, numRank), total: Math.max(total, 0) };
  }

  /** The best rank-k factors of the module last analysed (k ≤ its numerical rank). */
  rebuild(k: number): ReducedFactors {
    const st = this.state;
    if (!st)
      throw new ArgumentError(
        'ARG_INVALID',
        'rank reduction: rebuild(k) needs a module analysed first (call analyze)',
        {},
      );
    const { R, out, n, ru, numRank, Ru, T, values, vectors, uf, df } = st;
    if (!Number.isInteger(k) || k < 1 || k > numRank) {
      throw new ArgumentError(
        'ARG_INVALID',
        `rank reduction: k must be an integer in [1, ${numRank}] (the numerical rank), found ${k}`,
        { expected: [1, numRank], found: k },
      );
    }
    // A (R × k) = Tᵀ·Uc_k·Σ_k^(-3/2); Bᵀ (R × k) = (Σ_k^(-1/2)·Uc_kᵀ·Ru)ᵀ. vectors row j = Uc[:, j].
    // Scaled kept eigenvectors: Va[i, j] = Uc[i, j]·λ_j^(-3/4), Vb[i, j] = Uc[i, j]·λ_j^(-1/4) (ru × k).
    const Va = new Float64Array(ru * k);
    const Vb = new Float64Array(ru * k);
    for (let j = 0; j < k; j++) {
      const lambda = values[j]!;
      const fa = Math.pow(lambda, -0.75),
        fb = Math.pow(lambda, -0.25);
      for (let i = 0; i < ru; i++) {
        const u = vectors[j * ru + i]!;
        Va[i * k + j] = u * fa;
        Vb[i * k + j] = u * fb;
      }
    }
    // A = Tᵀ·Va and Bt = Ruᵀ·Vb (R × k), accumulated row by row.
    const A = new Float64Array(R * k);
    const Bt = new Float64Array(R * k);
    for (let i = 0; i < ru; i++) {
      const ik = i * k,
        iR = i * R;
      for (let a = 0; a < R; a++) {
        const t = T[iR + a]!,
          r = Ru[iR + a]!;
        const ak = a * k;
        if (t !== 0) for (let j = 0; j < k; j++) A[ak + j] = A[ak + j]! + t * Va[ik + j]!;
        if (r !== 0) for (let j = 0; j < k; j++) Bt[ak + j] = Bt[ak + j]! + r * Vb[ik + j]!;
      }
    }
    if (this.product && uf && df) {
      // up'' = U·A (out × k), down'' = B·D (k × n) with B = Btᵀ, in f32.
      const B = new Float32Array(k * R);
      for (let a = 0; a < R; a++) for (let j = 0; j < k; j++) B[j * R + a] = Bt[a * k + j]!;
      return {
        rank: k,
        up: this.product(out, k, R, uf, Float32Array.from(A)),
        down: this.product(k, n, R, B, df),
      };
    }
    const up = new Float32Array(out * k);
    xtyToF32(this.ut, A, R, out, k, up);
    // down''ᵀ (n × k) = Dᵀ·Bᵀ, then transposed into k × n.
    if (this.scratch.length < n * k) this.scratch = new Float32Array(n * k);
    const dt = this.scratch;
    xtyToF32(this.d, Bt, R, n, k, dt);
    const down = new Float32Array(k * n);
    const BLOCK = 64;
    for (let i0 = 0; i0 < n; i0 += BLOCK) {
      const i1 = Math.min(n, i0 + BLOCK);
      for (let j = 0; j < k; j++) {
        const dj = j * n;
        for (let i = i0; i < i1; i++) down[dj + i] = dt[i * k + j]!;
      }
    }
    return { rank: k, up, down };
  }

  /** Drop the work buffers (they grow to the largest module seen). */
  release(): void {
    this.ut = new Float64Array(0);
    this.d = new Float64Array(0);
    this.scratch = new Float32Array(0);
    this.state = null;
  }
}

/** What the rank reduction of one module decided (the part a worker thread can compute). */
export interface ReduceOutcome {
  readonly k: number;
  readonly normKept: number;
  readonly error: number;
  readonly norm: number;
  /** Present when 0 < k < rankBefore. */
  readonly factors?: { readonly up: Float32Array; readonly down: Float32Array };
}

/** Analyse one module and, when its rank must shrink, rebuild its factors. */
export function reduceModule(
  reducer: RankReducer,
  terms: readonly FactorTerm[],
  out: number,
  fanIn: number,
  target: RankTarget,
  path?: string,
): ReduceOutcome {
  const R = terms.reduce((s, t) => s + t.rank, 0);
  const spectrum = reducer.analyze(terms, out, fanIn, path);
  const k = chooseRank(spectrum, target);
  const stats = truncationStats(spectrum, k);
  if (k === 0 || k >= R) return { k, ...stats };
  const f = reducer.rebuild(k);
  return { k, ...stats, factors: { up: f.up, down: f.down } };
}
