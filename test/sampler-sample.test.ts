/**
 * The sampling loop: seeding, supplied arrays, guidance (CFG for LCM-LoRA, embedding for full LCM UNets),
 * img2img, async denoisers and the errors for inconsistent inputs.
 */
import { describe, expect, it } from 'vitest';
import { SamplerError } from '../src/core/errors.js';
import {
  guidanceScaleEmbedding,
  LCMScheduler,
  Rng,
  sample,
  sampleAsync,
  type DenoiserExtras,
  type Latent,
} from '../src/sampler/index.js';

const shape = [1, 4, 2, 2];
const scaled = (k: number) => (x: Latent, t: number) => x.map((v) => k * v + 1e-4 * t) as Latent;

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SamplerError);
    return (e as SamplerError).code;
  }
  return 'nothing thrown';
}

describe('sample', () => {
  it('is deterministic per seed: x_T then one noise array per step, all from the seed', () => {
    const a = sample(scaled(0.1), { steps: 4, shape, seed: 9 });
    const b = sample(scaled(0.1), { steps: 4, shape, seed: 9 });
    const c = sample(scaled(0.1), { steps: 4, shape, seed: 10 });
    expect(Array.from(a.latent)).toEqual(Array.from(b.latent));
    expect(Array.from(a.latent)).not.toEqual(Array.from(c.latent));
    const rng = new Rng(9);
    expect(Array.from(a.initialLatent)).toEqual(Array.from(rng.normalArray(16)));
    expect(Array.from(a.trajectory[0]!.noise!)).toEqual(Array.from(rng.normalArray(16)));
    expect(Array.from(a.trajectory[1]!.noise!)).toEqual(Array.from(rng.normalArray(16)));
    expect(a.timesteps).toEqual([999, 759, 499, 259]);
    expect(a.trajectory.map((s) => s.t)).toEqual([999, 759, 499, 259]);
    expect(a.trajectory[0]!.input).toBe(a.initialLatent);
    expect(a.trajectory[1]!.input).toBe(a.trajectory[0]!.sample);
  });

  it('passes t, stepIndex and cond to the denoiser and never mutates its input', () => {
    const seen: [number, number, unknown][] = [];
    const initial = new Rng(1).normalArray(16);
    const copy = Float64Array.from(initial);
    sample(
      (x, t, cond, extras) => {
        seen.push([t, extras.stepIndex, cond]);
        return new Float64Array(x.length);
      },
      { steps: 2, shape, initialLatent: initial, cond: 'a cat' },
    );
    expect(seen).toEqual([
      [999, 0, 'a cat'],
      [499, 1, 'a cat'],
    ]);
    expect(Array.from(initial)).toEqual(Array.from(copy));
  });

  it('CFG (LCM-LoRA): one call when g ≤ 1, two calls and ε_u + g(ε_c − ε_u) when g > 1', () => {
    const calls: unknown[] = [];
    const model = (x: Latent, _t: number, cond: unknown) => {
      calls.push(cond);
      return x.map(() => (cond === 'c' ? 1 : 0.25)) as Latent;
    };
    sample(model, { steps: 2, shape, cond: 'c', uncond: 'u', guidanceScale: 1 });
    expect(calls).toEqual(['c', 'c']);
    calls.length = 0;
    const r = sample(model, { steps: 2, shape, cond: 'c', uncond: 'u', guidanceScale: 1.5 });
    expect(calls).toEqual(['c', 'u', 'c', 'u']);
    for (const v of r.trajectory[0]!.modelOutput) expect(v).toBeCloseTo(0.25 + 1.5 * 0.75, 15);
  });

  it('embedding guidance (full LCM): one call with timestepCond = embedding of g − 1', () => {
    const got: DenoiserExtras[] = [];
    sample(
      (x, _t, _c, extras) => {
        got.push(extras);
        return new Float64Array(x.length);
      },
      { steps: 2, shape, guidance: 'embedding', guidanceScale: 8, guidanceEmbeddingDim: 32, uncond: 'ignored' },
    );
    expect(got).toHaveLength(2);
    expect(Array.from(got[0]!.timestepCond!)).toEqual(Array.from(guidanceScaleEmbedding(7, 32)));
  });

  it('img2img: the image latent is noised to timesteps[0] with strength', () => {
    const image = Float64Array.from({ length: 16 }, (_, i) => i / 16);
    const z = new Rng(2).normalArray(16);
    const s = new LCMScheduler();
    const r = sample(scaled(0), {
      steps: 4,
      strength: 0.5,
      shape,
      imageLatent: image,
      imageNoise: z,
      scheduler: s,
      noise: () => new Float64Array(16),
    });
    expect(r.timesteps).toEqual([499, 379, 259, 139]);
    expect(Array.from(r.initialLatent)).toEqual(Array.from(s.addNoise(image, z, 499)));
  });

  it('dtype float32 gives Float32Array latents; custom timesteps work', () => {
    const r = sample(scaled(0.1), { timesteps: [999, 499], shape, dtype: 'float32' });
    expect(r.latent).toBeInstanceOf(Float32Array);
    expect(r.timesteps).toEqual([999, 499]);
    expect(sample(scaled(0.1), { steps: 3, shape, keepTrajectory: false }).trajectory).toEqual([]);
    let count = 0;
    sample(scaled(0.1), { steps: 3, shape, onStep: () => count++ });
    expect(count).toBe(3);
  });

  it('sampleAsync equals sample', async () => {
    const syncR = sample(scaled(0.2), { steps: 8, shape, seed: 3 });
    const asyncR = await sampleAsync(async (x, t) => scaled(0.2)(x, t), { steps: 8, shape, seed: 3 });
    expect(Array.from(asyncR.latent)).toEqual(Array.from(syncR.latent));
  });

  it('reports inconsistent inputs with typed errors', () => {
    expect(code(() => sample(scaled(0), { steps: 4, shape: [] }))).toBe('SAMPLER_SHAPE_MISMATCH');
    expect(code(() => sample(scaled(0), { steps: 4, shape: [2, 0] }))).toBe('SAMPLER_SHAPE_MISMATCH');
    expect(code(() => sample(scaled(0), { steps: 4, shape, initialLatent: new Float64Array(3) }))).toBe(
      'SAMPLER_SHAPE_MISMATCH',
    );
    expect(code(() => sample(() => new Float64Array(3), { steps: 4, shape }))).toBe('SAMPLER_SHAPE_MISMATCH');
    expect(code(() => sample(() => [1, 2] as unknown as Latent, { steps: 4, shape }))).toBe(
      'SAMPLER_INVALID_MODEL_OUTPUT',
    );
    expect(code(() => sample(scaled(0), { steps: 4, shape, noise: [new Float64Array(16)] }))).toBe(
      'SAMPLER_NOISE_MISSING',
    );
    expect(code(() => sample(scaled(0), { steps: 4, shape, noise: () => new Float64Array(2) }))).toBe(
      'SAMPLER_SHAPE_MISMATCH',
    );
    expect(code(() => sample(scaled(0), { steps: 0, shape }))).toBe('SAMPLER_INVALID_STEPS');
    expect(code(() => sample(scaled(0), { steps: 3, timesteps: [999, 499], shape }))).toBe('SAMPLER_INVALID_STEPS');
    expect(
      code(() => sample(scaled(0), { steps: 4, shape, scheduler: new LCMScheduler(), predictionType: 'sample' })),
    ).toBe('SAMPLER_INVALID_CONFIG');
    expect(code(() => sample(scaled(0), { steps: 4, shape, guidanceScale: Number.NaN }))).toBe(
      'SAMPLER_INVALID_CONFIG',
    );
    expect(
      code(() =>
        sample(scaled(0), { steps: 4, shape, initialLatent: new Float64Array(16), imageLatent: new Float64Array(16) }),
      ),
    ).toBe('SAMPLER_INVALID_CONFIG');
    // a noise array with exactly N − 1 entries is enough
    expect(() => sample(scaled(0), { steps: 2, shape, noise: [new Float64Array(16)] })).not.toThrow();
  });
});
