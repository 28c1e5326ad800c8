/**
 * One module of `convert`: a term of any kind written as a plain LoRA module — exactly (its exact factors, see
 * asLowRank), or under a rank target as the best approximation of its exact delta with the error reported.
 * A pure function of the term, so the in-memory conversion, the streamed one and worker threads give the same bytes.
 *
 * Under a target (rank K and/or minEnergy E), a module whose exact rank R already meets it (R ≤ K, no E) is written
 * exactly; otherwise its spectrum is computed one of two ways, whichever costs less for its sizes:
 *
 * - factor space (src/lora/reduce.ts): the exact SVD from the R × R Grams of the exact factors — cost ≈
 *   (out + in)·R² + R³ in f64 JS, for small R (a plain LoRA, a LoKr of small factors);
 * - dense (src/lora/svd.ts): the dense delta Δ formed by the WASM kernel (a LoHa: two products and their Hadamard
 *   product), then the randomized SVD with a block of K + 24 columns and CONVERT_SVD_OPTIONS' stop: when the predicted
 *   excess of the error over the converged one is ≤ 0.02 %, the convergence rate read off the basis's Ritz values
 *   (the rule TIES uses), after at most 8 rounds — the error within 0.1 % of the Eckart–Young optimum (measured:
 *   bench/convert-rule.ts) — cost 2·(K + 24)·out·in flops per product, 3 to 17 products, at kernel speed, for large
 *   R (a LoHa's Khatri–Rao rank r1·r2).
 *
 * The reported error ‖Δ − Δ_k‖_F is exact for the factors returned in both cases (‖Δ‖² minus the kept energy).
 */
import ndarray from 'ndarray';
import { contiguousValues } from './delta.js';
import { factorF16, type F16Factor } from './factor-f16.js';
import { RankReducer, chooseRank, reduceModule, truncationStats, type RankTarget } from './reduce.js';
import { DEFAULT_OVERSAMPLE, SvdWorkspace, truncatedSvd, type TruncatedSvdOptions } from './svd.js';
import { asLowRank, hadamardPairs, termBias, termDelta, termDims, termExactRank, termShape } from './terms/index.js';
import type { LoraModule, Term } from './types.js';

/**
 * JS f64 arithmetic (the Grams) against the WASM kernel (the dense products): the factor space is chosen when
 * (out + in)·R² + R³ ≤ DENSE_PREFERENCE·out·in. The dense path costs about 5–6 products of Δ with K + 8 columns
 * (≈ 700·out·in flops) at ≈ 25 GFLOP/s per thread; the Grams run at ≈ 1 GFLOP/s: 700 / 25 = 28.
 */
export const DENSE_PREFERENCE = 28;

/**
 * Columns of the randomized SVD's block beyond K. The default 8 of src/lora/svd.ts stops short of the 0.1 % bound on
 * flat spectra within its 8 rounds: on a dim-32 LoHa of random factors (1280 × 1280, K = 64) it ends 0.14 % above
 * the optimal error; 24 ends 0.05 % above (40: 0.02 %), at 22 % more work per product. Measured in
 * bench/RESULTS.md ("convert of an SDXL LoHa").
 */
export const CONVERT_OVERSAMPLE = 24;

/**
 * The dense path's SVD options: the block above and the Ritz-gap stop of src/lora/svd.ts (`excess` 2e-4 with the rate
 * θ_l/θ_k read off the basis, as TIES_SVD_OPTIONS) in place of the default gain test. On the bench's LoHa with
 * decaying factor columns it stops after 4 rounds where the gain test took 4.5–5 (17 % fewer products, worst excess
 * 0.027 % over a long-run reference instead of 0.006 %); on the flat LoHa both run to the 8-round cap (0.04–0.08 %).
 * Measured in bench/RESULTS.md ("convert --rank 64 of an SDXL LoHa, session 9").
 */
export const CONVERT_SVD_OPTIONS = { oversample: CONVERT_OVERSAMPLE, excess: 2e-4, ritzGap: true } as const;

/** Work buffers reused from module to module (one per thread). */
export class ConvertScratch {
  readonly reducer = new RankReducer();
  readonly svd = new SvdWorkspace();
}

/** The result of converting one module. */
export interface ModuleConvertOutcome {
  /** Rank of the module's exact factors (what an uncapped conversion writes). */
  readonly rankBefore: number;
  /** Rank written; 0: the module's delta is zero and it is left out. */
  readonly rank: number;
  readonly alpha: number;
  /** ‖Δ_k‖_F / ‖Δ‖_F, ‖Δ − Δ_k‖_F and ‖Δ‖_F (exact modules: 1, 0, ‖Δ‖ when it was computed, else 0). */
  readonly normKept: number;
  readonly error: number;
  readonly norm: number;
  /** Which computation gave the factors. */
  readonly method: 'exact' | 'factors' | 'dense';
  /** The dense path: subspace iterations the randomized SVD ran (in halves) and its block width K + oversample. */
  readonly iterations?: number;
  readonly block?: number;
  /** up [out, rank] and down [rank, fanIn], row-major f32 (absent when rank is 0, or when given as `f16`). */
  readonly up?: Float32Array;
  readonly down?: Float32Array;
  /** The factors as F16 bits instead (exactOutcomeF16), with how many non-zero values of each became ±0. */
  readonly f16?: { readonly up: F16Factor; readonly down: F16Factor };
  /** The module's bias delta at the written scale (diff_b / lora_B.bias), when it has one. */
  readonly bias?: Float32Array;
  /** The factors' shapes when written exactly (a plain LoRA module keeps its own); else from the weight's shape. */
  readonly upShape?: readonly number[];
  readonly downShape?: readonly number[];
}

/** A module written as its exact factors (asLowRank). */
function exactOutcome(t: Term, path: string): ModuleConvertOutcome {
  const m = asLowRank(t, path);
  const rank = m.down.shape[0] ?? 0;
  return {
    rankBefore: rank,
    rank,
    alpha: m.alpha,
    normKept: 1,
    error: 0,
    norm: 0,
    method: 'exact',
    up: contiguousValues(m.up),
    down: contiguousValues(m.down),
    ...(m.bias ? { bias: contiguousValues(m.bias) } : {}),
    upShape: [...m.up.shape],
    downShape: [...m.down.shape],
  };
}

/**
 * exactOutcome with the factors as F16 bits (`f16`), formed here: a LoHa's Khatri–Rao factors block by block in
 * WASM (src/lora/factor-f16.ts: the same f32 values as hadamardFactors, then the same bits as the writer's F16
 * encoding), any other kind's exact factors encoded. The f32 outcome instead where WASM SIMD is missing or a
 * value is beyond F16 (the writer then reports it, as it does for f32 factors).
 */
export function exactOutcomeF16(t: Term, path: string): ModuleConvertOutcome {
  const enc = factorF16();
  if (!enc) return exactOutcome(t, path);
  if (t.kind === 'hadamard') {
    const { a, b, out, fanIn } = hadamardPairs(t, path);
    const r = a.rank * b.rank;
    // The Khatri–Rao factors are what asLowRank writes when r1·r2 < min(out, in) (else the dense delta).
    if (r < Math.min(out, fanIn)) {
      const up = enc.khatriRaoUp(a.up, b.up, out, a.rank, b.rank, t.scale);
      const down = up && enc.khatriRaoDown(a.down, b.down, fanIn, a.rank, b.rank);
      if (up && down) {
        const shape = exactShapeModule(t, path);
        return {
          rankBefore: r,
          rank: r,
          alpha: r,
          normKept: 1,
          error: 0,
          norm: 0,
          method: 'exact',
          f16: { up, down },
          ...(t.bias ? { bias: contiguousValues(t.bias) } : {}),
          upShape: [...shape.up.shape],
          downShape: [...shape.down.shape],
        };
      }
    }
  }
  const o = exactOutcome(t, path);
  const up = o.up && enc.encode(o.up);
  const down = up && o.down && enc.encode(o.down);
  if (!up || !down) return o;
  const { up: _u, down: _d, ...rest } = o;
  return { ...rest, f16: { up, down } };
}

/**
 * Convert one module (see the file comment). `target` undefined: exact. Base-dependent kinds (DoRA, GLoRA, OFT,
 * BOFT) must have been resolved against their base first (LORA_NEEDS_BASE otherwise). `svdOptions` replaces the
 * dense path's stopping options (benchmarks compare rules with it; `oversample` also sets the reported block).
 */
export function convertModule(
  t: Term,
  path: string,
  target: RankTarget | undefined,
  scratch: ConvertScratch = new ConvertScratch(),
  svdOptions: TruncatedSvdOptions = CONVERT_SVD_OPTIONS,
): ModuleConvertOutcome {
  if (target === undefined) return exactOutcome(t, path);
  const { out, fanIn } = termDims(t, path);
  const R = termExactRank(t, path);
  if (target.minEnergy === undefined && R <= (target.rank ?? Infinity)) return exactOutcome(t, path);
  const biasValues = termBias(t);
  const bias = biasValues ? { bias: biasValues } : {};
  if ((out + fanIn) * R * R + R * R * R <= DENSE_PREFERENCE * out * fanIn) {
    const m = asLowRank(t, path);
    const o = reduceModule(
      scratch.reducer,
      [{ coef: m.alpha / R, rank: R, up: contiguousValues(m.up), down: contiguousValues(m.down) }],
      out,
      fanIn,
      target,
      path,
    );
    const s = { normKept: o.normKept, error: o.error, norm: o.norm };
    if (o.k === 0) return { rankBefore: R, rank: 0, alpha: 0, ...s, method: 'factors' };
    if (!o.factors) return { ...exactOutcome(t, path), ...s };
    return { rankBefore: R, rank: o.k, alpha: o.k, ...s, method: 'factors', ...o.factors, ...bias };
  }
  const delta = termDelta(t, path);
  const cap = Math.min(target.rank ?? Math.min(out, fanIn), out, fanIn);
  const svd = truncatedSvd(delta, out, fanIn, Math.max(1, cap), { ...svdOptions, workspace: scratch.svd });
  const spectrum = { sigma2: svd.sigma2.subarray(0, svd.rank), total: svd.total };
  const k = Math.min(chooseRank(spectrum, target), svd.rank);
  const s = truncationStats(spectrum, k);
  const base = {
    rankBefore: R,
    normKept: s.normKept,
    error: s.error,
    norm: s.norm,
    method: 'dense' as const,
    iterations: svd.iterations,
    block: Math.min(Math.max(1, cap) + (svdOptions.oversample ?? DEFAULT_OVERSAMPLE), out, fanIn),
  };
  if (k === 0) return { ...base, rank: 0, alpha: 0 };
  let up = svd.up;
  if (k < svd.rank) {
    up = new Float32Array(out * k);
    for (let o = 0; o < out; o++) up.set(svd.up.subarray(o * svd.rank, o * svd.rank + k), o * k);
  }
  const down = k < svd.rank ? svd.down.slice(0, k * fanIn) : svd.down;
  return { ...base, rank: k, alpha: k, up, down, ...bias };
}

/**
 * What an exact conversion writes for a term, without forming its factors: a module carrying the factor shapes,
 * alpha and bias of exactOutcome's module, with empty factor values (the streamed conversion writes its header
 * from these and forms the factors when the writer asks for them).
 */
export function exactShapeModule(t: Term, path: string): LoraModule {
  const none = new Float32Array(0);
  if (t.kind === undefined || t.kind === 'lowRank') {
    return {
      up: ndarray(none, [...t.up.shape]),
      down: ndarray(none, [...t.down.shape]),
      alpha: t.alpha,
      ...(t.bias ? { bias: t.bias } : {}),
    };
  }
  const r = termExactRank(t, path);
  const f = factorShapes(termShape(t, path), r);
  return { up: ndarray(none, f.up), down: ndarray(none, f.down), alpha: r, ...(t.bias ? { bias: t.bias } : {}) };
}

/** The factor shapes of a module of rank r for a weight of this shape: [out, r] (or [out, r, 1, 1]) and [r, in, …]. */
export function factorShapes(shape: readonly number[], r: number): { up: number[]; down: number[] } {
  const out = shape[0] ?? 0;
  return { up: shape.length === 4 ? [out, r, 1, 1] : [out, r], down: [r, ...shape.slice(1)] };
}

/** The converted module as a LoRA module (shapes from the term's weight shape), or null when its rank is 0. */
export function convertedModule(o: ModuleConvertOutcome, shape: readonly number[]): LoraModule | null {
  if (o.rank === 0 || !o.up || !o.down) return null;
  const f = factorShapes(shape, o.rank);
  return {
    up: ndarray(o.up, [...(o.upShape ?? f.up)]),
    down: ndarray(o.down, [...(o.downShape ?? f.down)]),
    alpha: o.alpha,
    ...(o.bias ? { bias: ndarray(o.bias, [o.bias.length]) } : {}),
  };
}
