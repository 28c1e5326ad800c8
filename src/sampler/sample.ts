/**
 * The LCM sampling loop around any denoiser: draw (or take) x_T, then for each scheduled timestep call the
 * model, apply guidance, and take one LCMScheduler step. The result is the last step's `denoised` latent (what
 * diffusers' pipelines decode) together with every step's intermediate latents.
 */

import { SamplerError } from '../core/errors.js';
import { classifierFreeGuidance, guidanceScaleEmbedding } from './guidance.js';
import { LCMScheduler, type PredictionType } from './lcm.js';
import { allocLatent, Rng, type Latent, type LatentDType } from './rng.js';

/** What the sampler tells the denoiser besides x and t. */
export interface DenoiserExtras {
  /** 0-based position of t in the schedule. */
  stepIndex: number;
  /** Guidance embedding for full LCM UNets (guidance: 'embedding'); absent otherwise. */
  timestepCond?: Float32Array | Float64Array;
}

/**
 * A model: given the latent x (flat, row-major over `shape`), the integer timestep t (999, 759, …) and an
 * optional condition, return the model output in the scheduler's prediction type (ε by default) with
 * x.length elements. The sampler never mutates what it passes in or what it gets back.
 */
export type Denoiser<C = unknown> = (x: Latent, t: number, cond: C | undefined, extras: DenoiserExtras) => Latent;
export type AsyncDenoiser<C = unknown> = (
  x: Latent,
  t: number,
  cond: C | undefined,
  extras: DenoiserExtras,
) => Latent | Promise<Latent>;

/** Where the per-step noise comes from, when not from the seeded generator. */
export type NoiseSource = readonly Latent[] | ((stepIndex: number, t: number, length: number) => Latent);

export interface SampleOptions<C = unknown> {
  /** Number of LCM steps (1 … originalInferenceSteps). Give this or `timesteps`. */
  steps?: number;
  /** Custom strictly descending timesteps instead of `steps`. */
  timesteps?: readonly number[];
  /** Latent shape, e.g. [1, 4, 64, 64]; the arrays are flat and row-major. */
  shape: readonly number[];
  /** Seed for every draw not supplied below: x_T first, then the img2img noise, then one array per step. Default 0. */
  seed?: number;
  /** The starting latent x_T (txt2img). Default: N(0, I) from the seed. */
  initialLatent?: Latent;
  /** img2img: the clean latent to start from; it is noised to timesteps[0] (use with `strength`). */
  imageLatent?: Latent;
  /** Noise for img2img's forward noising (default: drawn from the seed). */
  imageNoise?: Latent;
  /** Per-step re-noising noise z_i for i = 0 … N−2 (array or function). Default: drawn from the seed. */
  noise?: NoiseSource;
  /** Element type of the latents. Default 'float64'. */
  dtype?: LatentDType;
  /** A configured scheduler (its setTimesteps is called here). Default: new LCMScheduler({ predictionType }). */
  scheduler?: LCMScheduler;
  /** Shorthand for the default scheduler's predictionType. Default 'epsilon'. */
  predictionType?: PredictionType;
  /** Guidance scale g. Default 1 (no guidance: one model call per step). */
  guidanceScale?: number;
  /**
   * 'cfg' (default; LCM-LoRA): if g > 1, call the model with `uncond` and `cond` and combine ε_u + g(ε_c − ε_u).
   * 'embedding' (full LCM UNets): one call per step with extras.timestepCond = embedding of w = g − 1.
   */
  guidance?: 'cfg' | 'embedding';
  /** time_cond_proj_dim of the UNet for guidance: 'embedding'. Default 256. */
  guidanceEmbeddingDim?: number;
  cond?: C;
  uncond?: C;
  /** Passed to setTimesteps. */
  originalInferenceSteps?: number;
  strength?: number;
  /** Keep every step's latents in the result. Default true. */
  keepTrajectory?: boolean;
  /** Called after every step. */
  onStep?: (step: SampleStep) => void;
}

export interface SampleStep {
  index: number;
  t: number;
  alphaCumprod: number;
  cSkip: number;
  cOut: number;
  /** The latent the model saw at this step. */
  input: Latent;
  /** The guided model output. */
  modelOutput: Latent;
  /** c_skip·x_t + c_out·x̂₀. */
  denoised: Latent;
  /** Latent for the next step (equal to `denoised` on the last step). */
  sample: Latent;
  /** The noise used to re-noise (absent on the last step). */
  noise?: Latent;
}

export interface SampleResult {
  /** The final latent: the last step's denoised output. */
  latent: Latent;
  timesteps: number[];
  /** x_T, the latent the first model call saw. */
  initialLatent: Latent;
  /** One entry per step (empty when keepTrajectory is false). */
  trajectory: SampleStep[];
  /** The scheduler that ran (configured and with its timesteps set). */
  scheduler: LCMScheduler;
}

interface Prepared<C> {
  scheduler: LCMScheduler;
  timesteps: number[];
  n: number;
  dtype: LatentDType;
  rng: Rng;
  x: Latent;
  initialLatent: Latent;
  noiseAt: (i: number, t: number) => Latent;
  guidanceScale: number;
  guidance: 'cfg' | 'embedding';
  embedding: Float32Array | undefined;
  opts: SampleOptions<C>;
}

function toDType(a: Latent, dtype: LatentDType): Latent {
  const out = allocLatent(a.length, dtype);
  out.set(a);
  return out;
}

function checkLength(what: string, a: Latent | undefined, n: number, shape: readonly number[]): void {
  if (a === undefined) return;
  if (!(a instanceof Float32Array || a instanceof Float64Array)) {
    throw new SamplerError(
      'SAMPLER_INVALID_MODEL_OUTPUT',
      `sample: ${what} must be a Float32Array or Float64Array, got ${Object.prototype.toString.call(a)}`,
      {
        option: what,
        expected: 'Float32Array | Float64Array',
        found: Object.prototype.toString.call(a),
      },
    );
  }
  if (a.length !== n) {
    throw new SamplerError(
      'SAMPLER_SHAPE_MISMATCH',
      `sample: ${what} has ${a.length} elements, shape [${shape.join(', ')}] needs ${n}`,
      {
        option: what,
        expected: n,
        found: a.length,
      },
    );
  }
}

function prepare<C>(opts: SampleOptions<C>): Prepared<C> {
  const shape = opts.shape;
  if (!Array.isArray(shape) || shape.length === 0 || !shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
    throw new SamplerError(
      'SAMPLER_SHAPE_MISMATCH',
      `sample: shape must be a non-empty array of positive integers, got ${JSON.stringify(shape)}`,
      {
        option: 'shape',
        expected: 'positive integer dimensions',
        found: shape,
      },
    );
  }
  const n = shape.reduce((p, d) => p * d, 1);
  const dtype = opts.dtype ?? 'float64';
  if (dtype !== 'float32' && dtype !== 'float64') {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `sample: dtype must be 'float32' or 'float64', got ${String(dtype)}`,
      { option: 'dtype', expected: 'float32 | float64', found: dtype },
    );
  }
  let scheduler = opts.scheduler;
  if (scheduler) {
    if (opts.predictionType !== undefined && opts.predictionType !== scheduler.config.predictionType) {
      throw new SamplerError(
        'SAMPLER_INVALID_CONFIG',
        `sample: predictionType '${opts.predictionType}' disagrees with the given scheduler's '${scheduler.config.predictionType}'`,
        {
          option: 'predictionType',
          expected: scheduler.config.predictionType,
          found: opts.predictionType,
        },
      );
    }
  } else {
    scheduler = new LCMScheduler(opts.predictionType !== undefined ? { predictionType: opts.predictionType } : {});
  }
  const timesteps = scheduler.setTimesteps(opts.timesteps === undefined ? opts.steps : undefined, {
    timesteps: opts.timesteps,
    originalInferenceSteps: opts.originalInferenceSteps,
    strength: opts.strength,
  });
  if (opts.timesteps !== undefined && opts.steps !== undefined && opts.steps !== timesteps.length) {
    throw new SamplerError(
      'SAMPLER_INVALID_STEPS',
      `sample: steps = ${opts.steps} disagrees with the ${opts.timesteps.length} custom timesteps; give one of them`,
      {
        option: 'steps',
        expected: opts.timesteps.length,
        found: opts.steps,
      },
    );
  }
  const rng = new Rng(opts.seed ?? 0);
  checkLength('initialLatent', opts.initialLatent, n, shape);
  checkLength('imageLatent', opts.imageLatent, n, shape);
  checkLength('imageNoise', opts.imageNoise, n, shape);
  if (opts.initialLatent && opts.imageLatent) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      'sample: give initialLatent (txt2img) or imageLatent (img2img), not both',
      {
        option: 'initialLatent',
        expected: 'one of initialLatent, imageLatent',
        found: 'both',
      },
    );
  }
  let x: Latent;
  if (opts.imageLatent) {
    const z = opts.imageNoise ?? rng.normalArray(n, dtype);
    x = scheduler.addNoise(toDType(opts.imageLatent, dtype), z, timesteps[0]!);
  } else if (opts.initialLatent) {
    x = toDType(opts.initialLatent, dtype); // init_noise_sigma is 1
  } else {
    x = rng.normalArray(n, dtype);
  }
  const source = opts.noise;
  const noiseAt = (i: number, t: number): Latent => {
    let z: Latent | undefined;
    if (source === undefined) return rng.normalArray(n, dtype);
    if (typeof source === 'function') z = source(i, t, n);
    else {
      z = source[i];
      if (z === undefined) {
        throw new SamplerError(
          'SAMPLER_NOISE_MISSING',
          `sample: noise array has ${source.length} entries; step ${i} (t = ${t}) needs entry ${i} (N − 1 = ${timesteps.length - 1} in all)`,
          {
            option: 'noise',
            expected: timesteps.length - 1,
            found: source.length,
          },
        );
      }
    }
    checkLength(`noise[${i}]`, z, n, shape);
    return z!;
  };
  const guidanceScale = opts.guidanceScale ?? 1;
  if (typeof guidanceScale !== 'number' || !Number.isFinite(guidanceScale)) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `sample: guidanceScale must be a finite number, got ${String(guidanceScale)}`,
      { option: 'guidanceScale', expected: 'finite number', found: guidanceScale },
    );
  }
  const guidance = opts.guidance ?? 'cfg';
  if (guidance !== 'cfg' && guidance !== 'embedding') {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `sample: guidance must be 'cfg' or 'embedding', got ${String(guidance)}`,
      { option: 'guidance', expected: 'cfg | embedding', found: guidance },
    );
  }
  const embedding =
    guidance === 'embedding' ? guidanceScaleEmbedding(guidanceScale - 1, opts.guidanceEmbeddingDim ?? 256) : undefined;
  return {
    scheduler,
    timesteps,
    n,
    dtype,
    rng,
    x,
    initialLatent: x,
    noiseAt,
    guidanceScale,
    guidance,
    embedding,
    opts,
  };
}

function checkOutput(out: unknown, n: number, t: number, which: string): Latent {
  if (!(out instanceof Float32Array || out instanceof Float64Array)) {
    throw new SamplerError(
      'SAMPLER_INVALID_MODEL_OUTPUT',
      `sample: the denoiser's ${which}output at t = ${t} must be a Float32Array or Float64Array, got ${Object.prototype.toString.call(out)}`,
      {
        expected: 'Float32Array | Float64Array',
        found: Object.prototype.toString.call(out),
        t,
      },
    );
  }
  if (out.length !== n) {
    throw new SamplerError(
      'SAMPLER_SHAPE_MISMATCH',
      `sample: the denoiser's ${which}output at t = ${t} has ${out.length} elements, the latent has ${n}`,
      {
        expected: n,
        found: out.length,
        t,
      },
    );
  }
  return out;
}

/** Apply one step given the model outputs for this step; shared by sample and sampleAsync. */
function advance<C>(
  p: Prepared<C>,
  i: number,
  t: number,
  input: Latent,
  outputs: { cond: Latent; uncond?: Latent },
  trajectory: SampleStep[],
): Latent {
  const modelOutput = outputs.uncond
    ? classifierFreeGuidance(outputs.uncond, outputs.cond, p.guidanceScale)
    : outputs.cond;
  const last = i === p.timesteps.length - 1;
  const noise = last ? undefined : p.noiseAt(i, t);
  const { prevSample, denoised } = p.scheduler.step(modelOutput, t, input, {
    noise,
    stepIndex: i,
    shape: p.opts.shape,
  });
  const { cSkip, cOut } = p.scheduler.scalings(t);
  const step: SampleStep = {
    index: i,
    t,
    alphaCumprod: p.scheduler.alphasCumprod[t]!,
    cSkip,
    cOut,
    input,
    modelOutput,
    denoised,
    sample: prevSample,
    ...(noise ? { noise } : {}),
  };
  if (p.opts.keepTrajectory !== false) trajectory.push(step);
  p.opts.onStep?.(step);
  return prevSample;
}

function usesTwoCalls<C>(p: Prepared<C>): boolean {
  return p.guidance === 'cfg' && p.guidanceScale > 1;
}

function finish<C>(p: Prepared<C>, x: Latent, trajectory: SampleStep[]): SampleResult {
  return { latent: x, timesteps: p.timesteps, initialLatent: p.initialLatent, trajectory, scheduler: p.scheduler };
}

/**
 * Run LCM sampling with a synchronous denoiser. Randomness comes from `seed` (xoshiro128** + Box–Muller) unless
 * the arrays are supplied; the same options give the same result.
 */
export function sample<C = unknown>(denoiser: Denoiser<C>, options: SampleOptions<C>): SampleResult {
  const p = prepare(options);
  const trajectory: SampleStep[] = [];
  let x = p.x;
  p.timesteps.forEach((t, i) => {
    const extras: DenoiserExtras = p.embedding ? { stepIndex: i, timestepCond: p.embedding } : { stepIndex: i };
    const cond = checkOutput(denoiser(x, t, options.cond, extras), p.n, t, '');
    const uncond = usesTwoCalls(p)
      ? checkOutput(denoiser(x, t, options.uncond, extras), p.n, t, 'unconditional ')
      : undefined;
    x = advance(p, i, t, x, { cond, uncond }, trajectory);
  });
  return finish(p, x, trajectory);
}

/** The same loop as `sample`, awaiting a denoiser that may return a Promise (e.g. a GPU model). */
export async function sampleAsync<C = unknown>(
  denoiser: AsyncDenoiser<C>,
  options: SampleOptions<C>,
): Promise<SampleResult> {
  const p = prepare(options);
  const trajectory: SampleStep[] = [];
  let x = p.x;
  for (let i = 0; i < p.timesteps.length; i++) {
    const t = p.timesteps[i]!;
    const extras: DenoiserExtras = p.embedding ? { stepIndex: i, timestepCond: p.embedding } : { stepIndex: i };
    const cond = checkOutput(await denoiser(x, t, options.cond, extras), p.n, t, '');
    const uncond = usesTwoCalls(p)
      ? checkOutput(await denoiser(x, t, options.uncond, extras), p.n, t, 'unconditional ')
      : undefined;
    x = advance(p, i, t, x, { cond, uncond }, trajectory);
  }
  return finish(p, x, trajectory);
}
