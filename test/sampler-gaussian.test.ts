/**
 * Gaussian verification models: for data N(μ, σ²) the exact consistency function makes LCM sampling reproduce
 * the data distribution at 1, 2, 4 and 8 steps; the posterior mean (Tweedie) under-disperses. Tolerances are
 * 5 standard errors of the statistic for the sample size used.
 */
import { describe, expect, it } from 'vitest';
import {
  gaussianDenoiser,
  gaussianMoments,
  LCMScheduler,
  meanVar,
  sample,
  verifyGaussian,
  type PredictionType,
} from '../src/sampler/index.js';

const MU = 0.5;
const SIGMA = 0.8;
const N = 4096;
const SEEDS = [0, 1, 2];

/** 5 standard errors of the sample mean and the unbiased sample variance of n normal draws with variance v. */
function tol(v: number, n: number): { mean: number; variance: number } {
  return { mean: 5 * Math.sqrt(v / n), variance: 5 * v * Math.sqrt(2 / (n - 1)) };
}

describe('consistency denoiser reproduces the data distribution', () => {
  for (const steps of [1, 2, 4, 8]) {
    it(`${steps} step${steps > 1 ? 's' : ''}: mean and variance of ${N} samples within 5 standard errors of N(${MU}, ${SIGMA}²)`, () => {
      const t = tol(SIGMA * SIGMA, N);
      for (const seed of SEEDS) {
        const r = verifyGaussian({ steps, mean: MU, std: SIGMA, n: N, seed, kind: 'consistency' });
        expect(r.timesteps).toHaveLength(steps);
        expect(Math.abs(r.final.mean - MU)).toBeLessThan(t.mean);
        expect(Math.abs(r.final.variance - SIGMA * SIGMA)).toBeLessThan(t.variance);
        // every intermediate denoised latent is already a draw from (nearly) the data distribution
        for (const s of r.steps) {
          expect(Math.abs(s.empiricalDenoisedMean - MU)).toBeLessThan(t.mean);
          expect(Math.abs(s.empiricalDenoisedVar - SIGMA * SIGMA)).toBeLessThan(t.variance);
        }
      }
    });
  }

  it('every step matches the exact moments (denoised and re-noised latents), for several targets', () => {
    for (const [mu, sigma] of [
      [0.5, 0.8],
      [-1, 0.3],
      [2, 1.7],
    ] as const) {
      for (const steps of [1, 2, 4, 8]) {
        const r = verifyGaussian({ steps, mean: mu, std: sigma, n: N, seed: 11, kind: 'consistency' });
        for (const s of r.steps) {
          const td = tol(s.denoisedVar, N);
          const ts = tol(s.sampleVar, N);
          expect(Math.abs(s.empiricalDenoisedMean - s.denoisedMean)).toBeLessThan(td.mean);
          expect(Math.abs(s.empiricalDenoisedVar - s.denoisedVar)).toBeLessThan(td.variance);
          expect(Math.abs(s.empiricalSampleMean - s.sampleMean)).toBeLessThan(ts.mean);
          expect(Math.abs(s.empiricalSampleVar - s.sampleVar)).toBeLessThan(ts.variance);
        }
      }
    }
  });

  it('the exact one-step law: mean μ − σ√ᾱμ/s, variance σ²/s² (the N(0,1) start is not quite the t = 999 marginal)', () => {
    const s = new LCMScheduler();
    const a = s.alphasCumprod[999]!;
    const sd = Math.sqrt(a * SIGMA * SIGMA + 1 - a);
    const m = gaussianMoments(s, [999], { mean: MU, std: SIGMA, kind: 'consistency', boundary: 'invert' })[0]!;
    expect(m.denoisedMean).toBeCloseTo(MU - (SIGMA * Math.sqrt(a) * MU) / sd, 14);
    expect(m.denoisedVar).toBeCloseTo((SIGMA * SIGMA) / (sd * sd), 14);
    // the offset is real but small: 0.027 for μ = 0.5, σ = 0.8, about 2 standard errors at n = 4096
    expect(MU - m.denoisedMean).toBeGreaterThan(0.027);
    expect(MU - m.denoisedMean).toBeLessThan(0.028);
    // with many more samples the sampler shows exactly this offset: it matches the exact law, not the target
    const big = 65536;
    const r = verifyGaussian({ steps: 1, mean: MU, std: SIGMA, n: big, seed: 3 });
    const t = tol(r.final.exactVariance, big);
    expect(Math.abs(r.final.mean - r.final.exactMean)).toBeLessThan(t.mean);
    expect(Math.abs(r.final.mean - MU)).toBeGreaterThan(t.mean);
    // and more steps remove it: each re-noising shrinks the offset by σ√ᾱ'/s'
    const exact = [1, 2, 4, 8].map((n) => {
      const ts = s.setTimesteps(n);
      return MU - gaussianMoments(s, ts, { mean: MU, std: SIGMA }).at(-1)!.denoisedMean;
    });
    for (let i = 1; i < exact.length; i++) expect(Math.abs(exact[i]!)).toBeLessThan(Math.abs(exact[i - 1]!));
    expect(Math.abs(exact[3]!)).toBeLessThan(1e-4);
  });
});

describe('Tweedie (posterior-mean) denoiser under-disperses', () => {
  it('variance stays clearly below σ² at 1, 2, 4 and 8 steps, while the mean is right', () => {
    const expectedRatio: Record<number, number> = { 1: 0.0029925, 2: 0.15858, 4: 0.29604, 8: 0.36838 };
    for (const steps of [1, 2, 4, 8]) {
      for (const seed of SEEDS) {
        const r = verifyGaussian({ steps, mean: MU, std: SIGMA, n: N, seed, kind: 'tweedie' });
        const target = tol(SIGMA * SIGMA, N);
        expect(r.final.variance).toBeLessThan(SIGMA * SIGMA - target.variance);
        expect(r.final.variance).toBeLessThan(0.4 * SIGMA * SIGMA);
        const t = tol(r.final.exactVariance, N);
        expect(Math.abs(r.final.variance - r.final.exactVariance)).toBeLessThan(t.variance);
        expect(Math.abs(r.final.mean - MU)).toBeLessThan(tol(SIGMA * SIGMA, N).mean);
        expect(r.final.exactVariance / (SIGMA * SIGMA)).toBeCloseTo(expectedRatio[steps]!, 4);
      }
    }
  });

  it('one Tweedie step from N(0, 1) has variance ᾱσ⁴/s⁴ (hand formula)', () => {
    const s = new LCMScheduler();
    const a = s.alphasCumprod[999]!;
    const s2 = a * SIGMA * SIGMA + 1 - a;
    const m = gaussianMoments(s, [999], { mean: MU, std: SIGMA, kind: 'tweedie', boundary: 'invert' })[0]!;
    expect(m.denoisedVar).toBeCloseTo((a * SIGMA ** 4) / (s2 * s2), 15);
  });
});

describe('boundary condition and prediction types', () => {
  it('c_skip is ≤ 3.8e-8 on the 4-step schedule: inverting it changes the result by < 1e-6', () => {
    const s = new LCMScheduler();
    for (const t of s.setTimesteps(4)) expect(s.scalings(t).cSkip).toBeLessThan(3.8e-8);
    const run = (boundary: 'ignore' | 'invert') =>
      sample(gaussianDenoiser({ mean: MU, std: SIGMA, boundary }), { steps: 4, shape: [N], seed: 4 }).latent;
    const a = run('ignore');
    const b = run('invert');
    let worst = 0;
    for (let i = 0; i < N; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    expect(worst).toBeGreaterThan(0);
    expect(worst).toBeLessThan(1e-6);
  });

  it("with boundary 'invert' one step returns exactly the consistency function of x_T", () => {
    const s = new LCMScheduler();
    const res = sample(gaussianDenoiser({ mean: MU, std: SIGMA, boundary: 'invert', scheduler: s }), {
      steps: 1,
      shape: [64],
      seed: 5,
      scheduler: s,
    });
    const a = s.alphasCumprod[999]!;
    const sd = Math.sqrt(a * SIGMA * SIGMA + 1 - a);
    for (let i = 0; i < 64; i++) {
      const x = res.initialLatent[i]!;
      expect(res.latent[i]).toBeCloseTo(MU + (SIGMA * (x - Math.sqrt(a) * MU)) / sd, 12);
    }
  });

  it('epsilon, v_prediction and sample outputs give the same samples', () => {
    const run = (p: PredictionType) => {
      const s = new LCMScheduler({ predictionType: p });
      return sample(gaussianDenoiser({ mean: MU, std: SIGMA, scheduler: s, kind: 'tweedie' }), {
        steps: 4,
        shape: [512],
        seed: 6,
        scheduler: s,
      }).latent;
    };
    const e = run('epsilon');
    for (const p of ['v_prediction', 'sample'] as const) {
      const o = run(p);
      for (let i = 0; i < e.length; i++) expect(Math.abs(o[i]! - e[i]!)).toBeLessThan(1e-9);
    }
  });

  it('meanVar is the two-pass mean and unbiased variance', () => {
    expect(meanVar([1, 2, 3, 4])).toEqual({ mean: 2.5, variance: 5 / 3 });
    const big = meanVar([1e9 + 1, 1e9 + 2, 1e9 + 3]);
    expect(big.variance).toBeCloseTo(1, 9);
  });

  it('rejects a bad target with a typed error', () => {
    expect(() => gaussianDenoiser({ mean: 0, std: 0 })).toThrow(/std must be a positive number/);
    expect(() => gaussianDenoiser({ mean: Number.NaN, std: 1 })).toThrow(/mean must be a finite number/);
    expect(() => verifyGaussian({ steps: 4, mean: 0, std: 1, n: 1 })).toThrow(/n must be an integer ≥ 2/);
  });
});
