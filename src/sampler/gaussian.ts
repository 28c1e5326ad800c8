/**
 * Verification models with known answers. If the data is x₀ ~ N(μ, σ²I), every quantity the sampler touches is
 * Gaussian and can be written down exactly:
 *
 *   x_t = √ᾱ·x₀ + √(1−ᾱ)·ε  ~  N(√ᾱ·μ, s_t²),   s_t² = ᾱσ² + 1 − ᾱ
 *
 * - consistency function (the probability-flow ODE map back to t = 0, monotone and affine here):
 *     x₀(x_t) = μ + σ·(x_t − √ᾱ·μ)/s_t                    → a sample of N(μ, σ²) for x_t from the marginal
 * - posterior mean (Tweedie):
 *     E[x₀ | x_t] = μ + (√ᾱ·σ²/s_t²)·(x_t − √ᾱ·μ)          → variance ᾱσ⁴/s_t² < σ²: under-dispersed
 *
 * Either is turned into the model output the scheduler expects (ε = (x_t − √ᾱ·x₀)/√(1−ᾱ) for 'epsilon').
 * `gaussianMoments` propagates mean and variance through the LCM steps exactly (including c_skip/c_out and
 * the N(0, I) start, which is not quite the marginal at t = 999), so a sampler run can be checked against
 * the exact distribution its output must have, not only against the target.
 */

import { SamplerError } from '../core/errors.js';
import { LCMScheduler, type PredictionType } from './lcm.js';
import type { Latent, LatentDType } from './rng.js';
import { sample, type Denoiser, type SampleOptions } from './sample.js';

export type GaussianDenoiserKind = 'consistency' | 'tweedie';

export interface GaussianTarget {
  mean: number;
  std: number;
}

export interface GaussianDenoiserOptions extends GaussianTarget {
  kind?: GaussianDenoiserKind;
  /** Scheduler whose ᾱ table and predictionType the outputs are expressed in. Default: a default LCMScheduler. */
  scheduler?: LCMScheduler;
  /**
   * 'ignore' (default): output x̂₀ as is; the scheduler then returns c_skip·x_t + c_out·x̂₀, which differs from
   * x̂₀ by c_skip·(x_t − x̂₀) (c_skip ≤ 1.3e-7 for t ≥ 139). 'invert': output (x̂₀ − c_skip·x_t)/c_out so that
   * the scheduler's `denoised` is exactly x̂₀ (as a consistency model trained with the boundary condition would).
   */
  boundary?: 'ignore' | 'invert';
}

function checkTarget(mean: number, std: number): void {
  if (typeof mean !== 'number' || !Number.isFinite(mean)) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `gaussian target: mean must be a finite number, got ${String(mean)}`,
      { option: 'mean', expected: 'finite number', found: mean },
    );
  }
  if (typeof std !== 'number' || !Number.isFinite(std) || std <= 0) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `gaussian target: std must be a positive number, got ${String(std)}`,
      { option: 'std', expected: 'positive number', found: std },
    );
  }
}

/**
 * The affine map x_t ↦ x̂₀ = A·x_t + B of a Gaussian denoiser at a timestep with cumulative alpha ᾱ.
 */
export function gaussianX0Map(
  kind: GaussianDenoiserKind,
  target: GaussianTarget,
  alphaCumprod: number,
): { a: number; b: number } {
  checkTarget(target.mean, target.std);
  const { mean: mu, std: sigma } = target;
  const sa = Math.sqrt(alphaCumprod);
  const s2 = alphaCumprod * sigma * sigma + 1 - alphaCumprod;
  const a = kind === 'consistency' ? sigma / Math.sqrt(s2) : (sa * sigma * sigma) / s2;
  return { a, b: mu - a * sa * mu };
}

/**
 * A denoiser for data N(mean, std²): returns, for each element, the model output (in the scheduler's
 * prediction type) whose x̂₀ is the exact consistency function or the posterior mean.
 */
export function gaussianDenoiser(options: GaussianDenoiserOptions): Denoiser {
  const kind = options.kind ?? 'consistency';
  if (kind !== 'consistency' && kind !== 'tweedie') {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `gaussianDenoiser: kind must be 'consistency' or 'tweedie', got ${String(kind)}`,
      { option: 'kind', expected: 'consistency | tweedie', found: kind },
    );
  }
  checkTarget(options.mean, options.std);
  const scheduler = options.scheduler ?? new LCMScheduler();
  const prediction: PredictionType = scheduler.config.predictionType;
  const invert = options.boundary === 'invert';
  const target: GaussianTarget = { mean: options.mean, std: options.std };
  return (x: Latent, t: number): Latent => {
    const alpha = scheduler.alphaCumprodAt(t);
    const { a, b } = gaussianX0Map(kind, target, alpha);
    const { cSkip, cOut } = scheduler.scalings(t);
    const sa = Math.sqrt(alpha);
    const sb = Math.sqrt(1 - alpha);
    const out = x instanceof Float32Array ? new Float32Array(x.length) : new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const xt = x[i]!;
      let x0 = a * xt + b;
      if (invert && cOut !== 0) x0 = (x0 - cSkip * xt) / cOut;
      switch (prediction) {
        case 'epsilon':
          out[i] = (xt - sa * x0) / sb;
          break;
        case 'v_prediction': {
          const eps = (xt - sa * x0) / sb;
          out[i] = sa * eps - sb * x0;
          break;
        }
        case 'sample':
          out[i] = x0;
          break;
      }
    }
    return out;
  };
}

export interface MomentStep {
  index: number;
  t: number;
  alphaCumprod: number;
  cSkip: number;
  cOut: number;
  /** Mean and variance of `denoised` at this step. */
  denoisedMean: number;
  denoisedVar: number;
  /** Mean and variance of the latent handed to the next step (= denoised on the last step). */
  sampleMean: number;
  sampleVar: number;
}

/**
 * The exact per-element mean and variance of every step's output when the sampler starts from x_T ~ N(m₀, v₀)
 * (default N(0, 1)) and uses a Gaussian denoiser. Mirrors LCMScheduler.step in closed form.
 */
export function gaussianMoments(
  scheduler: LCMScheduler,
  timesteps: readonly number[],
  options: GaussianTarget & {
    kind?: GaussianDenoiserKind;
    boundary?: 'ignore' | 'invert';
    initialMean?: number;
    initialVar?: number;
  },
): MomentStep[] {
  const kind = options.kind ?? 'consistency';
  let m = options.initialMean ?? 0;
  let v = options.initialVar ?? 1;
  const out: MomentStep[] = [];
  timesteps.forEach((t, i) => {
    const alpha = scheduler.alphaCumprodAt(t);
    const { a, b } = gaussianX0Map(kind, options, alpha);
    const { cSkip, cOut } = scheduler.scalings(t);
    const invert = options.boundary === 'invert' && cOut !== 0;
    const ad = invert ? a : cOut * a + cSkip;
    const bd = invert ? b : cOut * b;
    const dm = ad * m + bd;
    const dv = ad * ad * v;
    const last = i === timesteps.length - 1;
    if (last) {
      m = dm;
      v = dv;
    } else {
      const ap = scheduler.alphaCumprodAt(timesteps[i + 1]!);
      m = Math.sqrt(ap) * dm;
      v = ap * dv + 1 - ap;
    }
    out.push({
      index: i,
      t,
      alphaCumprod: alpha,
      cSkip,
      cOut,
      denoisedMean: dm,
      denoisedVar: dv,
      sampleMean: m,
      sampleVar: v,
    });
  });
  return out;
}

/** Mean and unbiased variance of an array (two-pass, in double). */
export function meanVar(x: ArrayLike<number>): { mean: number; variance: number } {
  const n = x.length;
  let s = 0;
  for (let i = 0; i < n; i++) s += x[i]!;
  const mean = s / n;
  let q = 0;
  let c = 0;
  for (let i = 0; i < n; i++) {
    const d = x[i]! - mean;
    q += d * d;
    c += d;
  }
  return { mean, variance: n > 1 ? (q - (c * c) / n) / (n - 1) : 0 };
}

export interface GaussianVerifyOptions extends GaussianTarget {
  steps: number;
  /** Number of independent latent elements (default 4096). */
  n?: number;
  seed?: number;
  kind?: GaussianDenoiserKind;
  boundary?: 'ignore' | 'invert';
  scheduler?: LCMScheduler;
  dtype?: LatentDType;
  /** Extra options passed to `sample` (noise, timesteps, originalInferenceSteps …). */
  sampleOptions?: Partial<SampleOptions>;
}

export interface GaussianVerifyStep extends MomentStep {
  /** Sample statistics over the n elements. */
  empiricalDenoisedMean: number;
  empiricalDenoisedVar: number;
  empiricalSampleMean: number;
  empiricalSampleVar: number;
}

export interface GaussianVerifyReport {
  target: GaussianTarget;
  kind: GaussianDenoiserKind;
  n: number;
  seed: number;
  timesteps: number[];
  steps: GaussianVerifyStep[];
  /** Final latent statistics (the last step's denoised output). */
  final: { mean: number; variance: number; std: number; exactMean: number; exactVariance: number };
  /** Standard errors of the final mean and variance for n draws from N(exactMean, exactVariance). */
  standardError: { mean: number; variance: number };
}

/**
 * Run the sampler on n independent elements with a Gaussian denoiser and report, per step, the empirical
 * mean/variance next to the exact values (and the target). The teaching tool behind `lora-mix sample`.
 */
export function verifyGaussian(options: GaussianVerifyOptions): GaussianVerifyReport {
  const n = options.n ?? 4096;
  if (!Number.isSafeInteger(n) || n < 2) {
    throw new SamplerError('SAMPLER_INVALID_CONFIG', `verifyGaussian: n must be an integer ≥ 2, got ${String(n)}`, {
      option: 'n',
      expected: 'integer ≥ 2',
      found: n,
    });
  }
  checkTarget(options.mean, options.std);
  const kind = options.kind ?? 'consistency';
  const seed = options.seed ?? 0;
  const scheduler = options.scheduler ?? new LCMScheduler();
  const denoiser = gaussianDenoiser({
    mean: options.mean,
    std: options.std,
    kind,
    scheduler,
    boundary: options.boundary,
  });
  const result = sample(denoiser, {
    ...options.sampleOptions,
    steps: options.sampleOptions?.timesteps ? undefined : options.steps,
    shape: [n],
    seed,
    scheduler,
    dtype: options.dtype,
  });
  const init = meanVar(result.initialLatent);
  const exact = gaussianMoments(scheduler, result.timesteps, {
    mean: options.mean,
    std: options.std,
    kind,
    boundary: options.boundary,
    // the exact law of the start is N(0, 1) unless the caller supplied the start
    ...(options.sampleOptions?.initialLatent || options.sampleOptions?.imageLatent
      ? { initialMean: init.mean, initialVar: init.variance }
      : {}),
  });
  const steps: GaussianVerifyStep[] = exact.map((e, i) => {
    const st = result.trajectory[i]!;
    const d = meanVar(st.denoised);
    const s = meanVar(st.sample);
    return {
      ...e,
      empiricalDenoisedMean: d.mean,
      empiricalDenoisedVar: d.variance,
      empiricalSampleMean: s.mean,
      empiricalSampleVar: s.variance,
    };
  });
  const fin = meanVar(result.latent);
  const last = exact[exact.length - 1]!;
  return {
    target: { mean: options.mean, std: options.std },
    kind,
    n,
    seed,
    timesteps: result.timesteps,
    steps,
    final: {
      mean: fin.mean,
      variance: fin.variance,
      std: Math.sqrt(fin.variance),
      exactMean: last.denoisedMean,
      exactVariance: last.denoisedVar,
    },
    standardError: { mean: Math.sqrt(last.denoisedVar / n), variance: last.denoisedVar * Math.sqrt(2 / (n - 1)) },
  };
}
