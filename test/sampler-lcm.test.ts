/**
 * LCMScheduler against every concrete number in the LCM research notes (ᾱ table in float64 and diffusers'
 * float32, timesteps for 1/2/4/8/10/25/26/50 steps, strength, boundary scalings), diffusers' errors, the step
 * rule, clipping/thresholding, guidance helpers and the seeded generator.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LoraMixError, SamplerError } from '../src/core/errors.js';
import {
  classifierFreeGuidance,
  guidanceScaleEmbedding,
  LCMScheduler,
  LCM_DEFAULTS,
  Rng,
  thresholdSample,
} from '../src/sampler/index.js';

function expectCode(fn: () => unknown, code: string): SamplerError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SamplerError);
    expect(e).toBeInstanceOf(LoraMixError);
    expect((e as SamplerError).code).toBe(code);
    return e as SamplerError;
  }
  throw new Error(`expected a SamplerError ${code}, nothing was thrown`);
}

describe('noise schedule', () => {
  it('has diffusers defaults', () => {
    const s = new LCMScheduler();
    expect(s.config).toMatchObject({
      numTrainTimesteps: 1000,
      betaStart: 0.00085,
      betaEnd: 0.012,
      betaSchedule: 'scaled_linear',
      originalInferenceSteps: 50,
      sigmaData: 0.5,
      timestepScaling: 10,
      setAlphaToOne: true,
      predictionType: 'epsilon',
      clipSample: false,
      thresholding: false,
      clipSampleRange: 1,
      dynamicThresholdingRatio: 0.995,
      sampleMaxValue: 1,
      precision: 'float64',
    });
    expect(s.finalAlphaCumprod).toBe(1);
    expect(s.initNoiseSigma).toBe(1);
    expect(s.alphasCumprod).toHaveLength(1000);
    expect(new LCMScheduler({ setAlphaToOne: false }).finalAlphaCumprod).toBe(s.alphasCumprod[0]);
  });

  it('ᾱ_t in float64 matches the quoted table', () => {
    const s = new LCMScheduler();
    const table: [number, number][] = [
      [0, 0.99915],
      [19, 0.9822439911],
      [259, 0.65897552689],
      [499, 0.27766965046],
      [759, 0.05221292829],
      [999, 0.00466009851],
    ];
    for (const [t, v] of table) expect(Math.abs(s.alphasCumprod[t]! - v)).toBeLessThan(6e-12);
    // β_0 and β_999 are the endpoints exactly
    expect(s.betas[0]).toBeCloseTo(0.00085, 15);
    expect(s.betas[999]).toBeCloseTo(0.012, 15);
  });

  it("ᾱ_t in 'float32' precision reproduces diffusers' torch float32 table to one float32 ulp", () => {
    const s = new LCMScheduler({ precision: 'float32' });
    const table: [number, number][] = [
      [0, 0.99914997816],
      [19, 0.98224395514],
      [259, 0.65897524357],
      [499, 0.27766945958],
      [759, 0.05221289396],
      [999, 0.00466009602],
    ];
    for (const [t, v] of table) {
      const ulp = 2 ** (Math.floor(Math.log2(v)) - 23);
      expect(Math.abs(s.alphasCumprod[t]! - v)).toBeLessThanOrEqual(ulp * 1.01);
      expect(Math.fround(s.alphasCumprod[t]!)).toBe(s.alphasCumprod[t]); // stored values are float32 numbers
    }
  });

  it('float32 and float64 tables differ by at most 8.15e-7 relative (as measured against diffusers)', () => {
    const a = new LCMScheduler().alphasCumprod;
    const b = new LCMScheduler({ precision: 'float32' }).alphasCumprod;
    let worst = 0;
    for (let i = 0; i < 1000; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / a[i]!);
    expect(worst).toBeLessThan(8.2e-7);
    expect(worst).toBeGreaterThan(1e-7);
  });

  it('linear and cosine schedules and trained betas', () => {
    const lin = new LCMScheduler({ betaSchedule: 'linear' });
    expect(lin.betas[0]).toBeCloseTo(0.00085, 15);
    expect(lin.betas[500]).toBeCloseTo(0.00085 + ((0.012 - 0.00085) * 500) / 999, 14);
    const cos = new LCMScheduler({ betaSchedule: 'squaredcos_cap_v2' });
    // ᾱ of the Glide cosine schedule: cos²((t/T + 0.008)/1.008 · π/2) / cos²(0.008/1.008 · π/2)
    const f = (u: number) => Math.cos((((u + 0.008) / 1.008) * Math.PI) / 2) ** 2;
    expect(cos.alphasCumprod[499]).toBeCloseTo(f(0.5) / f(0), 9);
    const trained = new LCMScheduler({ trainedBetas: Array.from(lin.betas) });
    expect(Array.from(trained.alphasCumprod)).toEqual(Array.from(lin.alphasCumprod));
  });

  it('rejects bad configuration with a typed error naming the option', () => {
    expect(expectCode(() => new LCMScheduler({ numTrainTimesteps: 1 }), 'SAMPLER_INVALID_CONFIG').message).toContain(
      'numTrainTimesteps',
    );
    expectCode(() => new LCMScheduler({ betaEnd: 1.5 }), 'SAMPLER_INVALID_CONFIG');
    expectCode(() => new LCMScheduler({ predictionType: 'flow' as never }), 'SAMPLER_INVALID_CONFIG');
    expectCode(() => new LCMScheduler({ betaSchedule: 'cubic' as never }), 'SAMPLER_INVALID_CONFIG');
    expectCode(() => new LCMScheduler({ originalInferenceSteps: 1001 }), 'SAMPLER_INVALID_CONFIG');
    expectCode(() => new LCMScheduler({ trainedBetas: [0.1, 0.2] }), 'SAMPLER_INVALID_CONFIG');
    expectCode(() => new LCMScheduler({ sigmaData: 0 }), 'SAMPLER_INVALID_CONFIG');
    expectCode(() => new LCMScheduler({ bogus: 1 } as never), 'SAMPLER_INVALID_CONFIG');
    expect(LCM_DEFAULTS.numTrainTimesteps).toBe(1000);
  });
});

describe('setTimesteps', () => {
  const s = new LCMScheduler();
  it('picks evenly spaced indices into the 50-step distillation schedule (diffusers ≥ 0.24)', () => {
    expect(s.setTimesteps(1)).toEqual([999]);
    expect(s.setTimesteps(2)).toEqual([999, 499]);
    expect(s.setTimesteps(4)).toEqual([999, 759, 499, 259]);
    expect(s.setTimesteps(8)).toEqual([999, 879, 759, 639, 499, 379, 259, 139]);
    expect(s.timesteps).toEqual([999, 879, 759, 639, 499, 379, 259, 139]);
    expect(s.numInferenceSteps).toBe(8);
    expect(s.customTimesteps).toBe(false);
    for (const [n, lastT] of [
      [10, 99],
      [25, 39],
      [26, 39],
      [50, 19],
    ] as const) {
      const ts = s.setTimesteps(n);
      expect(ts).toHaveLength(n);
      expect(ts[0]).toBe(999);
      expect(ts[n - 1]).toBe(lastT);
    }
    expect(s.setTimesteps(50)).toEqual(Array.from({ length: 50 }, (_, j) => 999 - 20 * j));
  });

  it('the distillation schedule is k·j − 1', () => {
    const origin = s.originTimesteps();
    expect(origin).toHaveLength(50);
    expect(origin[0]).toBe(19);
    expect(origin[49]).toBe(999);
    expect(s.originTimesteps(10)).toEqual([99, 199, 299, 399, 499, 599, 699, 799, 899, 999]);
  });

  it('strength truncates the distillation schedule before selection', () => {
    expect(s.setTimesteps(4, { strength: 0.8 })).toEqual([799, 599, 399, 199]);
    expect(s.setTimesteps(4, { strength: 0.6 })).toEqual([599, 459, 299, 159]);
    expect(s.setTimesteps(4, { strength: 0.5 })).toEqual([499, 379, 259, 139]);
    expect(s.setTimesteps(4, { strength: 0.3 })).toEqual([299, 239, 159, 79]);
  });

  it("floors j·(L/N) in double like numpy's linspace, not the exact rational (L = 30, N = 22)", () => {
    const ts = s.setTimesteps(22, { strength: 0.6 });
    expect(ts[11]).toBe(319); // exact floor(11·30/22) = 15 would give 299
    expect(ts).toEqual([
      599, 579, 559, 519, 499, 479, 439, 419, 399, 359, 339, 319, 279, 259, 219, 199, 179, 139, 119, 99, 59, 39,
    ]);
  });

  it('originalInferenceSteps changes the grid', () => {
    expect(s.setTimesteps(4, { originalInferenceSteps: 100 })).toEqual([999, 749, 499, 249]);
    expect(s.setTimesteps(2, { originalInferenceSteps: 4 })).toEqual([999, 499]);
  });

  it('custom timesteps: strictly descending, below T; strength drops leading entries; warnings off-grid', () => {
    expect(s.setTimesteps(undefined, { timesteps: [999, 499] })).toEqual([999, 499]);
    expect(s.customTimesteps).toBe(true);
    expect(s.warnings).toEqual([]);
    expect(s.setTimesteps(undefined, { timesteps: [999, 749, 499, 249] })).toEqual([999, 749, 499, 249]);
    expect(s.warnings.join(' ')).toContain('749');
    expect(s.setTimesteps(undefined, { timesteps: [999, 759, 499, 259], strength: 0.5 })).toEqual([499, 259]);
    expect(s.numInferenceSteps).toBe(4);
    expect(s.setTimesteps(undefined, { timesteps: [899, 499] })).toEqual([899, 499]);
    expect(s.warnings.join(' ')).toContain('899');
    expectCode(() => s.setTimesteps(undefined, { timesteps: [999, 999] }), 'SAMPLER_INVALID_TIMESTEPS');
    expectCode(() => s.setTimesteps(undefined, { timesteps: [499, 999] }), 'SAMPLER_INVALID_TIMESTEPS');
    expectCode(() => s.setTimesteps(undefined, { timesteps: [1000, 499] }), 'SAMPLER_INVALID_TIMESTEPS');
    expectCode(() => s.setTimesteps(undefined, { timesteps: [999, -1] }), 'SAMPLER_INVALID_TIMESTEPS');
    expectCode(() => s.setTimesteps(undefined, { timesteps: [999, 1.5] }), 'SAMPLER_INVALID_TIMESTEPS');
    expectCode(() => s.setTimesteps(undefined, { timesteps: [] }), 'SAMPLER_INVALID_TIMESTEPS');
  });

  it("raises diffusers' errors for bad step counts", () => {
    expectCode(() => s.setTimesteps(undefined), 'SAMPLER_INVALID_STEPS');
    expectCode(() => s.setTimesteps(4, { timesteps: [999] }), 'SAMPLER_INVALID_STEPS');
    expectCode(() => s.setTimesteps(0), 'SAMPLER_INVALID_STEPS');
    expectCode(() => s.setTimesteps(-1), 'SAMPLER_INVALID_STEPS');
    expectCode(() => s.setTimesteps(2.5), 'SAMPLER_INVALID_STEPS');
    expectCode(() => s.setTimesteps(Number.NaN), 'SAMPLER_INVALID_STEPS');
    const over = expectCode(() => s.setTimesteps(1001), 'SAMPLER_INVALID_STEPS');
    expect(over.message).toContain('numTrainTimesteps = 1000');
    // 51 > 50 distillation steps: diffusers' "original_steps x strength" error
    const tooMany = expectCode(() => s.setTimesteps(51), 'SAMPLER_INVALID_STEPS');
    expect(tooMany.message).toContain('50 × 1');
    expect(tooMany.message).toContain('strength');
    expectCode(() => s.setTimesteps(5, { strength: 0.08 }), 'SAMPLER_INVALID_STEPS'); // L = 4 < 5
    expect(s.setTimesteps(4, { strength: 0.08 })).toEqual([79, 59, 39, 19]);
    expectCode(() => s.setTimesteps(1, { strength: 0.01 }), 'SAMPLER_INVALID_STEPS'); // L = 0
    expectCode(() => s.setTimesteps(4, { strength: 0 }), 'SAMPLER_INVALID_STEPS');
    expectCode(() => s.setTimesteps(4, { strength: 1.5 }), 'SAMPLER_INVALID_STEPS');
    expectCode(() => s.setTimesteps(4, { originalInferenceSteps: 1001 }), 'SAMPLER_INVALID_STEPS');
    // N > originalInferenceSteps with the grid large enough: 1000 // 600 = 1 → grid of 600 entries at k = 1
    expect(s.setTimesteps(600, { originalInferenceSteps: 600 })).toHaveLength(600);
  });

  it('property: timesteps are strictly descending, on the grid, start at the top and have length N', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 50 }), fc.integer({ min: 1, max: 100 }), (n, strengthPct) => {
        const strength = strengthPct / 100;
        const L = Math.trunc(50 * strength);
        if (Math.floor(L / n) < 1) {
          expectCode(() => s.setTimesteps(n, { strength }), 'SAMPLER_INVALID_STEPS');
          return;
        }
        const ts = s.setTimesteps(n, { strength });
        expect(ts).toHaveLength(n);
        expect(ts[0]).toBe(20 * L - 1);
        for (let i = 1; i < n; i++) expect(ts[i]).toBeLessThan(ts[i - 1]!);
        for (const t of ts) expect((t + 1) % 20).toBe(0);
      }),
      { numRuns: 300 },
    );
  });
});

describe('boundary scalings', () => {
  const s = new LCMScheduler();
  it('match the quoted c_skip and c_out values', () => {
    const table: [number, number, number][] = [
      [999, 2.505008e-9, 0.999999998747],
      [879, 3.235655e-9, 0.999999998382],
      [759, 4.339667e-9, 0.99999999783],
      [639, 6.122634e-9, 0.999999996939],
      [499, 1.004012e-8, 0.99999999498],
      [379, 1.74045e-8, 0.999999991298],
      [259, 3.726838e-8, 0.999999981366],
      [139, 1.293929e-7, 0.999999935304],
    ];
    for (const [t, cSkip, cOut] of table) {
      const sc = s.scalings(t);
      expect(Math.abs(sc.cSkip - cSkip) / cSkip).toBeLessThan(1e-6);
      expect(Math.abs(sc.cOut - cOut)).toBeLessThan(1e-12);
    }
    const s19 = s.scalings(19);
    expect(s19.cSkip).toBeCloseTo(6.925e-6, 9);
    expect(s19.cOut).toBeCloseTo(0.9999965, 7);
    // c_out rounds to exactly 1 in float32 for t ≥ 259, not at 139
    for (const t of [999, 879, 759, 639, 499, 379, 259]) expect(Math.fround(s.scalings(t).cOut)).toBe(1);
    expect(Math.fround(s.scalings(139).cOut)).toBeLessThan(1);
  });
  it('c_skip(0) = 1, c_out(0) = 0, and c_skip + c_out² = 1 at every t', () => {
    expect(s.scalings(0)).toEqual({ cSkip: 1, cOut: 0 });
    for (const t of [1, 19, 259, 999]) {
      const { cSkip, cOut } = s.scalings(t);
      expect(cSkip + cOut * cOut).toBeCloseTo(1, 14);
    }
    const s2 = new LCMScheduler({ timestepScaling: 0.1 });
    expect(s2.scalings(999).cSkip).toBeCloseTo(0.25 / (99.9 ** 2 + 0.25), 15);
  });
});

describe('step', () => {
  it('needs a schedule, a scheduled timestep, matching lengths and noise before the last step', () => {
    const s = new LCMScheduler();
    const x = new Float64Array(4);
    expectCode(() => s.step(x, 999, x), 'SAMPLER_TIMESTEPS_NOT_SET');
    s.setTimesteps(4);
    expectCode(() => s.step(x, 500, x), 'SAMPLER_TIMESTEP_NOT_SCHEDULED');
    expectCode(() => s.step(x, 999, x, { stepIndex: 1 }), 'SAMPLER_TIMESTEP_NOT_SCHEDULED');
    expectCode(() => s.step(new Float64Array(3), 999, x, { noise: x }), 'SAMPLER_SHAPE_MISMATCH');
    expectCode(() => s.step(x, 999, x, { noise: new Float64Array(5) }), 'SAMPLER_SHAPE_MISMATCH');
    const missing = expectCode(() => s.step(x, 999, x), 'SAMPLER_NOISE_MISSING');
    expect(missing.message).toContain('t = 999');
    // the last step needs no noise and returns denoised as prevSample
    const out = s.step(x, 259, x);
    expect(out.prevSample).toBe(out.denoised);
  });

  it('re-noises to the next timestep: prevSample = √ᾱ_prev·denoised + √(1−ᾱ_prev)·z', () => {
    const s = new LCMScheduler();
    s.setTimesteps(4);
    const x = Float64Array.from([0.3, -1.2, 2, 0]);
    const eps = Float64Array.from([0.1, 0.5, -0.7, 1]);
    const z = Float64Array.from([1, -1, 0.5, 2]);
    const { prevSample, denoised } = s.step(eps, 759, x, { noise: z });
    const a = s.alphasCumprod[759]!;
    const ap = s.alphasCumprod[499]!;
    const { cSkip, cOut } = s.scalings(759);
    for (let i = 0; i < 4; i++) {
      const x0 = (x[i]! - Math.sqrt(1 - a) * eps[i]!) / Math.sqrt(a);
      const d = cOut * x0 + cSkip * x[i]!;
      expect(denoised[i]).toBeCloseTo(d, 13);
      expect(prevSample[i]).toBeCloseTo(Math.sqrt(ap) * d + Math.sqrt(1 - ap) * z[i]!, 13);
    }
    // drawing the noise from an Rng equals passing the same draws
    const fromRng = s.step(eps, 759, x, { rng: new Rng(5) });
    const drawn = new Rng(5).normalArray(4);
    expect(Array.from(fromRng.prevSample)).toEqual(Array.from(s.step(eps, 759, x, { noise: drawn }).prevSample));
  });

  it('property: every prediction type recovers x₀ from a forward-noised sample', () => {
    const sched = {
      epsilon: new LCMScheduler(),
      v_prediction: new LCMScheduler({ predictionType: 'v_prediction' }),
      sample: new LCMScheduler({ predictionType: 'sample' }),
    };
    for (const s of Object.values(sched)) s.setTimesteps(8);
    const ts = sched.epsilon.timesteps;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 7 }),
        fc.array(fc.double({ min: -3, max: 3, noNaN: true }), { minLength: 1, maxLength: 16 }),
        fc.array(fc.double({ min: -3, max: 3, noNaN: true }), { minLength: 16, maxLength: 16 }),
        (k, x0s, epss) => {
          const t = ts[k]!;
          const x0 = Float64Array.from(x0s);
          const eps = Float64Array.from(epss.slice(0, x0.length));
          const a = sched.epsilon.alphasCumprod[t]!;
          const xt = x0.map((v, i) => Math.sqrt(a) * v + Math.sqrt(1 - a) * eps[i]!);
          const v = x0.map((xv, i) => Math.sqrt(a) * eps[i]! - Math.sqrt(1 - a) * xv);
          const outputs = { epsilon: eps, v_prediction: v, sample: x0 };
          const { cSkip, cOut } = sched.epsilon.scalings(t);
          for (const [name, s] of Object.entries(sched)) {
            const { denoised } = s.step(outputs[name as keyof typeof outputs], t, xt, {
              noise: new Float64Array(x0.length),
            });
            for (let i = 0; i < x0.length; i++)
              expect(Math.abs(denoised[i]! - (cOut * x0[i]! + cSkip * xt[i]!))).toBeLessThan(1e-11);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('clipSample clamps x̂₀ to ±clipSampleRange before the boundary condition', () => {
    const s = new LCMScheduler({ predictionType: 'sample', clipSample: true, clipSampleRange: 0.5 });
    s.setTimesteps(1);
    const x = Float64Array.from([0, 0, 0]);
    const { denoised } = s.step(Float64Array.from([-2, 0.25, 3]), 999, x);
    const { cOut } = s.scalings(999);
    expect(Array.from(denoised)).toEqual([-0.5 * cOut, 0.25 * cOut, 0.5 * cOut]);
  });

  it('thresholding: per batch item, s = clamp(quantile(|x̂₀|, ratio), 1, max); x̂₀ ← clamp(x̂₀, ±s)/s', () => {
    // batch 0: |x| = 0 … 9 → quantile 0.9 = 8.1 → clamp to max 5 → values clamp to ±5 then / 5
    const x = Float64Array.from([
      ...Array.from({ length: 10 }, (_, i) => (i % 2 ? -i : i)),
      ...Array.from({ length: 10 }, () => 0.5),
    ]);
    const y = Float64Array.from(x);
    thresholdSample(y, 2, 0.9, 5);
    for (let i = 0; i < 10; i++) expect(y[i]).toBeCloseTo(Math.max(-5, Math.min(5, x[i]!)) / 5, 15);
    for (let i = 10; i < 20; i++) expect(y[i]).toBe(0.5); // s clamps up to 1: plain clipping, nothing changes
    const q = Float64Array.from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((v) => v * 0.2));
    thresholdSample(q, 1, 0.5, 10); // quantile 0.5 of 0 … 1.8 is 0.9 → s = max(0.9, 1) = 1: clip at 1
    expect(Array.from(q).map((v) => Math.round(v * 1e12) / 1e12)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1, 1]);
    const s = new LCMScheduler({
      predictionType: 'sample',
      thresholding: true,
      sampleMaxValue: 5,
      dynamicThresholdingRatio: 0.9,
    });
    s.setTimesteps(1);
    expectCode(() => s.step(x, 999, new Float64Array(20)), 'SAMPLER_SHAPE_MISMATCH');
    const { denoised } = s.step(x, 999, new Float64Array(20), { shape: [2, 10] });
    for (let i = 0; i < 20; i++) expect(denoised[i]).toBeCloseTo(y[i]! * s.scalings(999).cOut, 14);
  });

  it('keeps the sample type: Float32Array in, Float32Array out (rounded once from double)', () => {
    const s = new LCMScheduler();
    s.setTimesteps(2);
    const x = Float32Array.from([0.1, 0.2]);
    const eps = Float64Array.from([0.3, -0.4]);
    const out = s.step(eps, 999, x, { noise: Float64Array.from([1, 1]) });
    expect(out.prevSample).toBeInstanceOf(Float32Array);
    expect(out.denoised).toBeInstanceOf(Float32Array);
    const ref = s.step(eps, 999, Float64Array.from(x), { noise: Float64Array.from([1, 1]) });
    for (let i = 0; i < 2; i++) expect(out.prevSample[i]).toBe(Math.fround(ref.prevSample[i]!));
  });

  it('addNoise is the forward process', () => {
    const s = new LCMScheduler();
    const out = s.addNoise(Float64Array.from([1, 2]), Float64Array.from([0.5, -0.5]), 499);
    const a = s.alphasCumprod[499]!;
    expect(out[0]).toBeCloseTo(Math.sqrt(a) + 0.5 * Math.sqrt(1 - a), 15);
    expect(out[1]).toBeCloseTo(2 * Math.sqrt(a) - 0.5 * Math.sqrt(1 - a), 15);
    expectCode(() => s.addNoise(new Float64Array(2), new Float64Array(2), 1000), 'SAMPLER_INVALID_TIMESTEPS');
  });
});

describe('guidance', () => {
  it('embedding of w = guidance − 1: sin block then cos block with frequencies exp(−j·ln 10⁴/(d/2 − 1))', () => {
    const e = guidanceScaleEmbedding(7, 256, { precision: 'float64' });
    expect(e).toBeInstanceOf(Float64Array);
    expect(e).toHaveLength(256);
    expect(e[0]).toBeCloseTo(Math.sin(7000), 12);
    expect(e[128]).toBeCloseTo(Math.cos(7000), 12);
    expect(e[127]).toBeCloseTo(Math.sin(7000 * 1e-4), 12); // last frequency is 1/10000
    expect(e[255]).toBeCloseTo(Math.cos(0.7), 12);
    const j = 40;
    expect(e[j]).toBeCloseTo(Math.sin(7000 * Math.exp((-j * Math.log(10000)) / 127)), 10);
    for (let k = 0; k < 128; k++) expect(e[k]! ** 2 + e[128 + k]! ** 2).toBeCloseTo(1, 12);
  });

  it("default float32 embedding follows torch's float32 rounding, which differs visibly at large w'", () => {
    const e32 = guidanceScaleEmbedding(7);
    const e64 = guidanceScaleEmbedding(7, 256, { precision: 'float64' });
    expect(e32).toBeInstanceOf(Float32Array);
    // first frequency is exactly 1: argument 7000 is exact in float32
    expect(e32[0]).toBe(Math.fround(Math.sin(7000)));
    let worst = 0;
    for (let k = 0; k < 256; k++) worst = Math.max(worst, Math.abs(e32[k]! - e64[k]!));
    expect(worst).toBeGreaterThan(1e-5);
    expect(worst).toBeLessThan(2e-3);
    // w = 0 (guidance 1): sin = 0, cos = 1
    const zero = guidanceScaleEmbedding(0, 8);
    expect(Array.from(zero)).toEqual([0, 0, 0, 0, 1, 1, 1, 1]);
    // odd dimension: zero padded
    const odd = guidanceScaleEmbedding(2, 9, { precision: 'float64' });
    expect(odd).toHaveLength(9);
    expect(odd[8]).toBe(0);
    expectCode(() => guidanceScaleEmbedding(Number.NaN), 'SAMPLER_INVALID_CONFIG');
    expectCode(() => guidanceScaleEmbedding(1, 3), 'SAMPLER_INVALID_CONFIG');
  });

  it('classifier-free guidance: ε_u + g·(ε_c − ε_u)', () => {
    const u = Float64Array.from([1, 2, 3]);
    const c = Float32Array.from([2, 2, 0]);
    const g = classifierFreeGuidance(u, c, 1.5);
    expect(g).toBeInstanceOf(Float32Array);
    expect(Array.from(g)).toEqual([2.5, 2, -1.5]);
    expect(Array.from(classifierFreeGuidance(u, c, 1))).toEqual([2, 2, 0]);
    expect(Array.from(classifierFreeGuidance(u, c, 0))).toEqual([1, 2, 3]);
    expectCode(() => classifierFreeGuidance(new Float64Array(2), c, 2), 'SAMPLER_SHAPE_MISMATCH');
  });
});

describe('Rng', () => {
  it('produces the xoshiro128** stream (checked against an independent Python transcription)', () => {
    const r = new Rng(0);
    expect([r.nextUint32(), r.nextUint32(), r.nextUint32(), r.nextUint32(), r.nextUint32()]).toEqual([
      3809008728, 1133695204, 53579671, 2891528803, 139681546,
    ]);
    const big = new Rng(2 ** 40 + 5);
    expect([big.nextUint32(), big.nextUint32()]).toEqual([538299823, 2287012550]);
    expectCode(() => new Rng(-1), 'SAMPLER_INVALID_CONFIG');
    expectCode(() => new Rng(0.5), 'SAMPLER_INVALID_CONFIG');
  });

  it('is deterministic per seed and different across seeds', () => {
    const a = new Rng(123).normalArray(64);
    const b = new Rng(123).normalArray(64);
    const c = new Rng(124).normalArray(64);
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Array.from(a)).not.toEqual(Array.from(c));
    expect(new Rng(1).normalArray(3, 'float32')).toBeInstanceOf(Float32Array);
  });

  it('normal draws have mean 0, variance 1, and Gaussian tails (within 5 standard errors)', () => {
    const n = 200_000;
    const z = new Rng(7).normalArray(n);
    let s = 0;
    let s2 = 0;
    let s4 = 0;
    let beyond2 = 0;
    for (const v of z) {
      s += v;
      s2 += v * v;
      s4 += v ** 4;
      if (Math.abs(v) > 2) beyond2++;
    }
    const mean = s / n;
    const m2 = s2 / n;
    expect(Math.abs(mean)).toBeLessThan(5 / Math.sqrt(n));
    expect(Math.abs(m2 - 1)).toBeLessThan(5 * Math.sqrt(2 / n));
    expect(Math.abs(s4 / n - 3)).toBeLessThan(5 * Math.sqrt(96 / n)); // Var(z⁴) = 105 − 9 = 96
    const p = 0.0455002638963584; // P(|z| > 2)
    expect(Math.abs(beyond2 / n - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / n));
    const u = new Rng(9);
    for (let i = 0; i < 1000; i++) {
      const v = u.uniform();
      expect(v).toBeGreaterThanOrEqual(0);
      expect(v).toBeLessThan(1);
    }
  });
});
