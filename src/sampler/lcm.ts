/**
 * The LCM multistep scheduler (Algorithm 3 of the Latent Consistency Models paper), with the same defaults,
 * timestep selection, boundary scalings and step rule as diffusers' `LCMScheduler` (behaviour of diffusers
 * ≥ 0.24: evenly spaced indices into the 50-step distillation schedule, no noise on the final step).
 *
 * Precision: all arithmetic is IEEE double. The noise table (betas → alphas → alphas_cumprod) is by default
 * the exact float64 formula; `precision: 'float32'` instead reproduces how diffusers builds it in torch float32
 * (see docs/sampler.md, "Precision"). Samples may be Float32Array or Float64Array; outputs have the sample's
 * type and every output element is rounded once, from a double result.
 */

import { SamplerError } from '../core/errors.js';
import type { Latent } from './rng.js';
import type { Rng } from './rng.js';

export type BetaSchedule = 'scaled_linear' | 'linear' | 'squaredcos_cap_v2';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
/** How the noise table is computed: exact float64, or diffusers' torch float32 construction. */
export type SchedulePrecision = 'float64' | 'float32';

export interface LCMSchedulerConfig {
  /** Number of training timesteps T (timesteps are the integers 0 … T−1). Default 1000. */
  numTrainTimesteps: number;
  /** First beta. Default 0.00085. */
  betaStart: number;
  /** Last beta. Default 0.012. */
  betaEnd: number;
  /** How betas run from betaStart to betaEnd. Default 'scaled_linear' (linear in √β), as SD1.5 / SDXL use. */
  betaSchedule: BetaSchedule;
  /** Explicit betas (length numTrainTimesteps); overrides betaStart/betaEnd/betaSchedule. */
  trainedBetas: readonly number[] | null;
  /** Length S of the distillation schedule the inference timesteps are chosen from. Default 50. */
  originalInferenceSteps: number;
  /** Clamp the predicted x₀ to ±clipSampleRange. Default false. */
  clipSample: boolean;
  clipSampleRange: number;
  /** ᾱ used when the previous timestep is negative (never reached with valid schedules). Default true → 1. */
  setAlphaToOne: boolean;
  /** What the model predicts. Default 'epsilon' (SD1.5 / SDXL / SSD-1B and their LCM-LoRAs). */
  predictionType: PredictionType;
  /** Imagen dynamic thresholding of the predicted x₀ (per batch item). Default false. */
  thresholding: boolean;
  dynamicThresholdingRatio: number;
  sampleMaxValue: number;
  /** Multiplies t inside the boundary scalings c_skip, c_out. Default 10. */
  timestepScaling: number;
  /** σ_data of the boundary scalings. Default 0.5 (diffusers hard-codes it). */
  sigmaData: number;
  /** Noise-table precision. Default 'float64'. */
  precision: SchedulePrecision;
}

/** diffusers' `LCMScheduler` defaults (plus this library's precision default). */
export const LCM_DEFAULTS: Readonly<LCMSchedulerConfig> = Object.freeze({
  numTrainTimesteps: 1000,
  betaStart: 0.00085,
  betaEnd: 0.012,
  betaSchedule: 'scaled_linear',
  trainedBetas: null,
  originalInferenceSteps: 50,
  clipSample: false,
  clipSampleRange: 1.0,
  setAlphaToOne: true,
  predictionType: 'epsilon',
  thresholding: false,
  dynamicThresholdingRatio: 0.995,
  sampleMaxValue: 1.0,
  timestepScaling: 10.0,
  sigmaData: 0.5,
  precision: 'float64',
});

export interface SetTimestepsOptions {
  /** Overrides config.originalInferenceSteps for this schedule. */
  originalInferenceSteps?: number;
  /** img2img strength in (0, 1]: keep only the first ⌊S·strength⌋ distillation timesteps. Default 1. */
  strength?: number;
  /** Custom strictly descending timesteps (then pass `undefined` as the step count). */
  timesteps?: readonly number[];
}

export interface StepOptions {
  /** N(0, I) noise for the re-noising; required on every step except the last (unless `rng` is given). */
  noise?: Latent;
  /** Draw the noise from this generator when `noise` is not given. */
  rng?: Rng;
  /** Position of `t` in the schedule; found by searching the schedule when omitted. */
  stepIndex?: number;
  /** Sample shape [batch, …]; needed only for thresholding (the quantile is taken per batch item). */
  shape?: readonly number[];
}

export interface LCMStepOutput<T extends Latent> {
  /** The sample for the next timestep (re-noised), or `denoised` itself on the final step. */
  prevSample: T;
  /** The consistency function's output c_skip·x_t + c_out·x̂₀: the clean latent predicted at this step. */
  denoised: T;
}

export interface BoundaryScalings {
  cSkip: number;
  cOut: number;
}

const BETA_SCHEDULES: readonly BetaSchedule[] = ['scaled_linear', 'linear', 'squaredcos_cap_v2'];
const PREDICTION_TYPES: readonly PredictionType[] = ['epsilon', 'v_prediction', 'sample'];

function configError(option: string, expected: string, found: unknown): SamplerError {
  return new SamplerError(
    'SAMPLER_INVALID_CONFIG',
    `LCMScheduler: option '${option}' must be ${expected}, got ${JSON.stringify(found) ?? String(found)}`,
    { option, expected, found },
  );
}

/** Python's `int(x)` for finite x: truncation toward zero. */
function pyInt(x: number): number {
  return Math.trunc(x);
}

/**
 * The betas of a schedule. In 'float32' precision they follow torch: `linspace` endpoints rounded to float32,
 * each element rounded to float32, squared in float32 ('scaled_linear'); values are returned as doubles.
 */
export function computeBetas(
  config: Pick<
    LCMSchedulerConfig,
    'numTrainTimesteps' | 'betaStart' | 'betaEnd' | 'betaSchedule' | 'trainedBetas' | 'precision'
  >,
): Float64Array {
  const n = config.numTrainTimesteps;
  const f32 = config.precision === 'float32';
  const round = f32 ? Math.fround : (x: number) => x;
  const betas = new Float64Array(n);
  if (config.trainedBetas) {
    for (let i = 0; i < n; i++) betas[i] = round(config.trainedBetas[i]!);
    return betas;
  }
  const linspace = (start: number, stop: number): Float64Array => {
    const out = new Float64Array(n);
    if (f32) {
      // torch.linspace(float32): endpoints in float32, halves filled from each end, each value rounded once.
      const s = Math.fround(start);
      const e = Math.fround(stop);
      const step = (e - s) / (n - 1);
      const half = Math.floor(n / 2);
      for (let i = 0; i < n; i++) out[i] = Math.fround(i < half ? s + step * i : e - step * (n - 1 - i));
    } else {
      // numpy.linspace in float64: start + i·step, last element exactly stop.
      const step = (stop - start) / (n - 1);
      for (let i = 0; i < n; i++) out[i] = start + i * step;
      out[n - 1] = stop;
    }
    return out;
  };
  switch (config.betaSchedule) {
    case 'linear': {
      betas.set(linspace(config.betaStart, config.betaEnd));
      break;
    }
    case 'scaled_linear': {
      const roots = linspace(Math.sqrt(config.betaStart), Math.sqrt(config.betaEnd));
      for (let i = 0; i < n; i++) betas[i] = round(roots[i]! * roots[i]!);
      break;
    }
    case 'squaredcos_cap_v2': {
      // Glide cosine schedule (diffusers' betas_for_alpha_bar, computed in double, then stored as float32).
      const alphaBar = (t: number) => Math.cos((((t + 0.008) / 1.008) * Math.PI) / 2) ** 2;
      for (let i = 0; i < n; i++) {
        const b = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), 0.999);
        betas[i] = round(b);
      }
      break;
    }
  }
  return betas;
}

/**
 * ᾱ_t = Π_{i ≤ t} (1 − β_i). In 'float32' precision: 1 − β rounded to float32, the running product kept in
 * double and each entry rounded to float32 (what torch.cumprod does on the CPU for float32 tensors).
 */
export function computeAlphasCumprod(
  betas: Float64Array,
  precision: SchedulePrecision,
): { alphas: Float64Array; alphasCumprod: Float64Array } {
  const n = betas.length;
  const alphas = new Float64Array(n);
  const cumprod = new Float64Array(n);
  const f32 = precision === 'float32';
  let acc = 1;
  for (let i = 0; i < n; i++) {
    const a = f32 ? Math.fround(1 - betas[i]!) : 1 - betas[i]!;
    alphas[i] = a;
    acc *= a;
    cumprod[i] = f32 ? Math.fround(acc) : acc;
  }
  return { alphas, alphasCumprod: cumprod };
}

function validateConfig(c: LCMSchedulerConfig): void {
  const isInt = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x);
  const finite = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);
  if (!isInt(c.numTrainTimesteps) || c.numTrainTimesteps < 2)
    throw configError('numTrainTimesteps', 'an integer ≥ 2', c.numTrainTimesteps);
  if (!BETA_SCHEDULES.includes(c.betaSchedule))
    throw configError('betaSchedule', `one of ${BETA_SCHEDULES.join(', ')}`, c.betaSchedule);
  if (!PREDICTION_TYPES.includes(c.predictionType))
    throw configError('predictionType', `one of ${PREDICTION_TYPES.join(', ')}`, c.predictionType);
  if (c.precision !== 'float64' && c.precision !== 'float32')
    throw configError('precision', "'float64' or 'float32'", c.precision);
  if (c.trainedBetas !== null && c.trainedBetas !== undefined) {
    if (c.trainedBetas.length !== c.numTrainTimesteps)
      throw configError(
        'trainedBetas',
        `an array of numTrainTimesteps = ${c.numTrainTimesteps} betas`,
        `length ${c.trainedBetas.length}`,
      );
  } else {
    if (!finite(c.betaStart) || c.betaStart < 0 || c.betaStart >= 1)
      throw configError('betaStart', 'a number in [0, 1)', c.betaStart);
    if (!finite(c.betaEnd) || c.betaEnd < 0 || c.betaEnd >= 1)
      throw configError('betaEnd', 'a number in [0, 1)', c.betaEnd);
  }
  if (
    !isInt(c.originalInferenceSteps) ||
    c.originalInferenceSteps < 1 ||
    c.originalInferenceSteps > c.numTrainTimesteps
  ) {
    throw configError(
      'originalInferenceSteps',
      `an integer in [1, numTrainTimesteps = ${c.numTrainTimesteps}]`,
      c.originalInferenceSteps,
    );
  }
  if (!finite(c.clipSampleRange) || c.clipSampleRange <= 0)
    throw configError('clipSampleRange', 'a positive number', c.clipSampleRange);
  if (!finite(c.dynamicThresholdingRatio) || c.dynamicThresholdingRatio <= 0 || c.dynamicThresholdingRatio > 1)
    throw configError('dynamicThresholdingRatio', 'a number in (0, 1]', c.dynamicThresholdingRatio);
  if (!finite(c.sampleMaxValue) || c.sampleMaxValue < 1)
    throw configError('sampleMaxValue', 'a number ≥ 1', c.sampleMaxValue);
  if (!finite(c.timestepScaling) || c.timestepScaling < 0)
    throw configError('timestepScaling', 'a number ≥ 0', c.timestepScaling);
  if (!finite(c.sigmaData) || c.sigmaData <= 0) throw configError('sigmaData', 'a positive number', c.sigmaData);
}

function sameTypeAs<T extends Latent>(like: T, n: number): T {
  return (like instanceof Float32Array ? new Float32Array(n) : new Float64Array(n)) as T;
}

/** Linear interpolation as torch.lerp computes it (two branches for accuracy). */
function lerp(a: number, b: number, w: number): number {
  return w < 0.5 ? a + w * (b - a) : b - (b - a) * (1 - w);
}

/**
 * Imagen dynamic thresholding, per batch item: s = clamp(quantile(|x|, ratio), 1, maxValue); x ← clamp(x, ±s)/s.
 * The quantile interpolates linearly between order statistics, as torch.quantile does.
 */
export function thresholdSample(x: Float64Array, batch: number, ratio: number, maxValue: number): void {
  const per = x.length / batch;
  const abs = new Float64Array(per);
  for (let b = 0; b < batch; b++) {
    const off = b * per;
    for (let i = 0; i < per; i++) abs[i] = Math.abs(x[off + i]!);
    abs.sort();
    const rank = ratio * (per - 1);
    const lo = Math.floor(rank);
    const hi = Math.min(lo + 1, per - 1);
    const q = lerp(abs[lo]!, abs[hi]!, rank - lo);
    const s = Math.min(Math.max(q, 1), maxValue);
    for (let i = 0; i < per; i++) {
      const v = x[off + i]!;
      x[off + i] = (v < -s ? -s : Math.min(v, s)) / s;
    }
  }
}

export class LCMScheduler {
  readonly config: Readonly<LCMSchedulerConfig>;
  /** β_t for t = 0 … T−1 (float32-rounded values in 'float32' precision). */
  readonly betas: Float64Array;
  /** α_t = 1 − β_t. */
  readonly alphas: Float64Array;
  /** ᾱ_t = Π_{i ≤ t} α_i. */
  readonly alphasCumprod: Float64Array;
  /** ᾱ used for a negative previous timestep (1 with setAlphaToOne, else ᾱ_0). */
  readonly finalAlphaCumprod: number;
  /** Standard deviation of the initial noise: always 1 for LCM. */
  readonly initNoiseSigma = 1.0;

  private _timesteps: number[] | null = null;
  private _numInferenceSteps: number | null = null;
  private _customTimesteps = false;
  private _warnings: string[] = [];

  constructor(config: Partial<LCMSchedulerConfig> = {}) {
    const merged: LCMSchedulerConfig = { ...LCM_DEFAULTS, ...config };
    for (const key of Object.keys(config) as (keyof LCMSchedulerConfig)[]) {
      if (config[key] === undefined) (merged as unknown as Record<string, unknown>)[key] = LCM_DEFAULTS[key];
      if (!(key in LCM_DEFAULTS)) throw configError(key, 'a known LCMScheduler option', config[key]);
    }
    validateConfig(merged);
    this.config = Object.freeze(merged);
    this.betas = computeBetas(merged);
    for (let i = 0; i < this.betas.length; i++) {
      const b = this.betas[i]!;
      if (!(b >= 0 && b < 1))
        throw configError(
          merged.trainedBetas ? 'trainedBetas' : 'betaSchedule',
          `betas in [0, 1) (found β_${i} = ${b})`,
          b,
        );
    }
    const { alphas, alphasCumprod } = computeAlphasCumprod(this.betas, merged.precision);
    this.alphas = alphas;
    this.alphasCumprod = alphasCumprod;
    this.finalAlphaCumprod = merged.setAlphaToOne ? 1.0 : alphasCumprod[0]!;
  }

  /** The timesteps chosen by the last setTimesteps call, largest first (a copy). */
  get timesteps(): number[] {
    if (!this._timesteps) throw notSet('timesteps');
    return this._timesteps.slice();
  }

  /** The step count of the last setTimesteps call (for custom timesteps: their number before strength). */
  get numInferenceSteps(): number | null {
    return this._numInferenceSteps;
  }

  /** Whether the last schedule was given as custom timesteps. */
  get customTimesteps(): boolean {
    return this._customTimesteps;
  }

  /** Warnings from the last setTimesteps call (diffusers logs these; custom schedules off the training grid). */
  get warnings(): readonly string[] {
    return this._warnings;
  }

  /**
   * The distillation schedule the inference steps come from: k·j − 1 for j = 1 … ⌊S·strength⌋, k = ⌊T/S⌋
   * (ascending: [19, 39, …, 999] for the defaults).
   */
  originTimesteps(originalInferenceSteps = this.config.originalInferenceSteps, strength = 1): number[] {
    const s = originalInferenceSteps;
    const T = this.config.numTrainTimesteps;
    if (!Number.isSafeInteger(s) || s < 1 || s > T) {
      throw new SamplerError(
        'SAMPLER_INVALID_STEPS',
        `LCMScheduler.setTimesteps: originalInferenceSteps must be an integer in [1, numTrainTimesteps = ${T}], got ${String(s)}`,
        {
          option: 'originalInferenceSteps',
          expected: `integer in [1, ${T}]`,
          found: s,
        },
      );
    }
    if (typeof strength !== 'number' || !(strength > 0 && strength <= 1)) {
      throw new SamplerError(
        'SAMPLER_INVALID_STEPS',
        `LCMScheduler.setTimesteps: strength must be a number in (0, 1], got ${String(strength)}`,
        {
          option: 'strength',
          expected: 'number in (0, 1]',
          found: strength,
        },
      );
    }
    const k = Math.floor(T / s);
    const count = pyInt(s * strength);
    const out: number[] = [];
    for (let j = 1; j <= count; j++) out.push(j * k - 1);
    return out;
  }

  /**
   * Choose the inference timesteps. Standard: N evenly spaced indices ⌊j·L/N⌋ into the reversed distillation
   * schedule of length L (4 steps → [999, 759, 499, 259]). Custom: pass `undefined` and `options.timesteps`.
   * Errors mirror diffusers' ValueErrors (N > T, N > S, L // N < 1), plus N < 1 or non-integer.
   */
  setTimesteps(numInferenceSteps: number | undefined, options: SetTimestepsOptions = {}): number[] {
    const { strength = 1 } = options;
    const custom = options.timesteps;
    const T = this.config.numTrainTimesteps;
    if (numInferenceSteps === undefined && custom === undefined) {
      throw new SamplerError(
        'SAMPLER_INVALID_STEPS',
        'LCMScheduler.setTimesteps: pass exactly one of a step count or custom timesteps; got neither',
        {
          expected: 'numInferenceSteps or options.timesteps',
          found: 'neither',
        },
      );
    }
    if (numInferenceSteps !== undefined && custom !== undefined) {
      throw new SamplerError(
        'SAMPLER_INVALID_STEPS',
        `LCMScheduler.setTimesteps: pass only one of a step count (${numInferenceSteps}) or custom timesteps; got both`,
        {
          expected: 'numInferenceSteps or options.timesteps',
          found: 'both',
        },
      );
    }
    const S = options.originalInferenceSteps ?? this.config.originalInferenceSteps;
    const origin = this.originTimesteps(S, strength);
    const warnings: string[] = [];
    let timesteps: number[];
    let n: number;
    if (custom !== undefined) {
      if (!Array.isArray(custom) || custom.length === 0) {
        throw new SamplerError(
          'SAMPLER_INVALID_TIMESTEPS',
          `LCMScheduler.setTimesteps: custom timesteps must be a non-empty array of integers, got ${JSON.stringify(custom)}`,
          {
            option: 'timesteps',
            expected: 'non-empty integer array',
            found: custom,
          },
        );
      }
      const onGrid = new Set(origin);
      const offGrid: number[] = [];
      for (let i = 0; i < custom.length; i++) {
        const t = custom[i]!;
        if (!Number.isSafeInteger(t) || t < 0) {
          throw new SamplerError(
            'SAMPLER_INVALID_TIMESTEPS',
            `LCMScheduler.setTimesteps: custom timestep #${i} must be an integer ≥ 0, got ${String(t)}`,
            {
              option: 'timesteps',
              index: i,
              expected: 'integer ≥ 0',
              found: t,
            },
          );
        }
        if (i > 0 && t >= custom[i - 1]!) {
          throw new SamplerError(
            'SAMPLER_INVALID_TIMESTEPS',
            `LCMScheduler.setTimesteps: custom timesteps must be strictly descending; #${i} is ${t} after ${custom[i - 1]}`,
            {
              option: 'timesteps',
              index: i,
              expected: `< ${custom[i - 1]}`,
              found: t,
            },
          );
        }
        if (i > 0 && !onGrid.has(t)) offGrid.push(t);
      }
      if (custom[0]! >= T) {
        throw new SamplerError(
          'SAMPLER_INVALID_TIMESTEPS',
          `LCMScheduler.setTimesteps: custom timesteps must start below numTrainTimesteps = ${T}, got ${custom[0]}`,
          {
            option: 'timesteps',
            expected: `< ${T}`,
            found: custom[0],
          },
        );
      }
      if (strength === 1 && custom[0] !== T - 1)
        warnings.push(`the first custom timestep is ${custom[0]}, not ${T - 1}: results may be unexpected`);
      if (offGrid.length > 0) warnings.push(`custom timesteps not on the distillation schedule: ${offGrid.join(', ')}`);
      if (custom.length > S) warnings.push(`${custom.length} custom timesteps exceed originalInferenceSteps = ${S}`);
      n = custom.length;
      // strength keeps the last ⌊N·strength⌋ entries (img2img starts part-way down the schedule)
      const init = Math.min(pyInt(n * strength), n);
      const start = Math.max(n - init, 0);
      timesteps = custom.slice(start);
      this._customTimesteps = true;
    } else {
      n = numInferenceSteps!;
      if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) {
        throw new SamplerError(
          'SAMPLER_INVALID_STEPS',
          `LCMScheduler.setTimesteps: the step count must be an integer ≥ 1, got ${String(n)}`,
          {
            option: 'numInferenceSteps',
            expected: 'integer ≥ 1',
            found: n,
          },
        );
      }
      if (n > T) {
        throw new SamplerError(
          'SAMPLER_INVALID_STEPS',
          `LCMScheduler.setTimesteps: ${n} steps cannot exceed numTrainTimesteps = ${T}`,
          {
            option: 'numInferenceSteps',
            expected: `≤ ${T}`,
            found: n,
          },
        );
      }
      const L = origin.length;
      if (Math.floor(L / n) < 1) {
        throw new SamplerError(
          'SAMPLER_INVALID_STEPS',
          `LCMScheduler.setTimesteps: originalInferenceSteps × strength = ${S} × ${strength} leaves ${L} distillation timesteps, fewer than the ${n} steps asked; ` +
            `use at most ${L} steps or a strength above ${n / S}`,
          {
            option: 'numInferenceSteps',
            expected: `≤ ${L}`,
            found: n,
            originalInferenceSteps: S,
            strength,
          },
        );
      }
      if (n > S) {
        throw new SamplerError(
          'SAMPLER_INVALID_STEPS',
          `LCMScheduler.setTimesteps: ${n} steps cannot exceed originalInferenceSteps = ${S}`,
          {
            option: 'numInferenceSteps',
            expected: `≤ ${S}`,
            found: n,
          },
        );
      }
      const reversed = origin.slice().reverse();
      const stride = L / n; // numpy: floor(linspace(0, L, n, endpoint=False)) = floor(j · (L/n)) in double
      timesteps = [];
      for (let j = 0; j < n; j++) timesteps.push(reversed[Math.floor(j * stride)]!);
      this._customTimesteps = false;
    }
    this._timesteps = timesteps;
    this._numInferenceSteps = n;
    this._warnings = warnings;
    return timesteps.slice();
  }

  /** ᾱ_t for an integer timestep 0 ≤ t < T. */
  alphaCumprodAt(t: number): number {
    if (!Number.isSafeInteger(t) || t < 0 || t >= this.alphasCumprod.length) {
      throw new SamplerError(
        'SAMPLER_INVALID_TIMESTEPS',
        `LCMScheduler: timestep must be an integer in [0, ${this.alphasCumprod.length - 1}], got ${String(t)}`,
        {
          expected: `integer in [0, ${this.alphasCumprod.length - 1}]`,
          found: t,
        },
      );
    }
    return this.alphasCumprod[t]!;
  }

  /** Consistency boundary scalings at timestep t: c_skip = σ²/((s·t)² + σ²), c_out = s·t/√((s·t)² + σ²). */
  scalings(t: number): BoundaryScalings {
    const st = t * this.config.timestepScaling;
    const sd2 = this.config.sigmaData * this.config.sigmaData;
    return { cSkip: sd2 / (st * st + sd2), cOut: st / Math.sqrt(st * st + sd2) };
  }

  /** The identity, as in diffusers (LCM needs no input scaling); kept so loops read like other schedulers. */
  scaleModelInput<T extends Latent>(sample: T, _t?: number): T {
    return sample;
  }

  /** Index of timestep t in the current schedule (throws if it is not scheduled). */
  indexOf(t: number): number {
    const ts = this._timesteps;
    if (!ts) throw notSet('step');
    const i = ts.indexOf(t);
    if (i < 0) {
      throw new SamplerError(
        'SAMPLER_TIMESTEP_NOT_SCHEDULED',
        `LCMScheduler.step: timestep ${String(t)} is not in the schedule [${ts.join(', ')}]`,
        {
          expected: ts.slice(),
          found: t,
        },
      );
    }
    return i;
  }

  /**
   * One LCM step at timestep t: x̂₀ from the model output (per predictionType), optional clip / threshold,
   * denoised = c_out·x̂₀ + c_skip·x_t, then — except on the last scheduled step — re-noise to the next
   * timestep: prevSample = √ᾱ_prev·denoised + √(1−ᾱ_prev)·z. On the last step prevSample is `denoised`
   * (the same array). Outputs have the type of `sample`.
   */
  step<T extends Latent>(modelOutput: Latent, t: number, sample: T, options: StepOptions = {}): LCMStepOutput<T> {
    const ts = this._timesteps;
    if (!ts) throw notSet('step');
    let i: number;
    if (options.stepIndex !== undefined) {
      i = options.stepIndex;
      if (!Number.isSafeInteger(i) || i < 0 || i >= ts.length || ts[i] !== t) {
        throw new SamplerError(
          'SAMPLER_TIMESTEP_NOT_SCHEDULED',
          `LCMScheduler.step: stepIndex ${String(i)} does not hold timestep ${t} in the schedule [${ts.join(', ')}]`,
          {
            expected: ts.slice(),
            found: { stepIndex: i, t },
          },
        );
      }
    } else {
      i = this.indexOf(t);
    }
    const n = sample.length;
    if (modelOutput.length !== n) {
      throw new SamplerError(
        'SAMPLER_SHAPE_MISMATCH',
        `LCMScheduler.step: model output has ${modelOutput.length} elements, the sample has ${n} (timestep ${t})`,
        {
          expected: n,
          found: modelOutput.length,
          t,
        },
      );
    }
    const last = i === ts.length - 1;
    const tPrev = last ? t : ts[i + 1]!;
    const a = this.alphasCumprod[t]!;
    const aPrev = tPrev >= 0 ? this.alphasCumprod[tPrev]! : this.finalAlphaCumprod;
    const sqrtA = Math.sqrt(a);
    const sqrtB = Math.sqrt(1 - a);
    const { cSkip, cOut } = this.scalings(t);

    const x0 = new Float64Array(n);
    switch (this.config.predictionType) {
      case 'epsilon':
        for (let j = 0; j < n; j++) x0[j] = (sample[j]! - sqrtB * modelOutput[j]!) / sqrtA;
        break;
      case 'v_prediction':
        for (let j = 0; j < n; j++) x0[j] = sqrtA * sample[j]! - sqrtB * modelOutput[j]!;
        break;
      case 'sample':
        for (let j = 0; j < n; j++) x0[j] = modelOutput[j]!;
        break;
    }
    if (this.config.thresholding) {
      const shape = options.shape;
      const batch = shape && shape.length >= 1 ? shape[0]! : undefined;
      if (!shape || batch === undefined || shape.reduce((p, d) => p * d, 1) !== n || batch < 1) {
        throw new SamplerError(
          'SAMPLER_SHAPE_MISMATCH',
          `LCMScheduler.step: thresholding needs options.shape [batch, …] whose product is the sample length ${n}, got ${JSON.stringify(shape)}`,
          {
            expected: `shape with product ${n}`,
            found: shape,
          },
        );
      }
      thresholdSample(x0, batch, this.config.dynamicThresholdingRatio, this.config.sampleMaxValue);
    } else if (this.config.clipSample) {
      const r = this.config.clipSampleRange;
      for (let j = 0; j < n; j++) {
        const v = x0[j]!;
        x0[j] = v < -r ? -r : Math.min(v, r);
      }
    }

    const denoised = sameTypeAs(sample, n);
    for (let j = 0; j < n; j++) x0[j] = cOut * x0[j]! + cSkip * sample[j]!; // x0 now holds denoised in double
    denoised.set(x0);
    if (last) return { prevSample: denoised, denoised };

    let noise = options.noise;
    if (noise === undefined) {
      if (!options.rng) {
        throw new SamplerError(
          'SAMPLER_NOISE_MISSING',
          `LCMScheduler.step: step ${i} (t = ${t}) is not the last of ${ts.length}, so it needs noise: pass options.noise or options.rng`,
          {
            expected: 'noise or rng',
            found: 'neither',
            stepIndex: i,
            t,
          },
        );
      }
      noise = options.rng.normalArray(n);
    }
    if (noise.length !== n) {
      throw new SamplerError(
        'SAMPLER_SHAPE_MISMATCH',
        `LCMScheduler.step: noise has ${noise.length} elements, the sample has ${n} (timestep ${t})`,
        {
          expected: n,
          found: noise.length,
          t,
        },
      );
    }
    const sa = Math.sqrt(aPrev);
    const sb = Math.sqrt(1 - aPrev);
    const prevSample = sameTypeAs(sample, n);
    for (let j = 0; j < n; j++) prevSample[j] = sa * x0[j]! + sb * noise[j]!;
    return { prevSample, denoised };
  }

  /** Forward process q(x_t | x₀): √ᾱ_t·x₀ + √(1−ᾱ_t)·noise (img2img starts from this at timesteps[0]). */
  addNoise<T extends Latent>(original: T, noise: Latent, t: number): T {
    const a = this.alphaCumprodAt(t);
    if (noise.length !== original.length) {
      throw new SamplerError(
        'SAMPLER_SHAPE_MISMATCH',
        `LCMScheduler.addNoise: noise has ${noise.length} elements, the sample has ${original.length}`,
        {
          expected: original.length,
          found: noise.length,
        },
      );
    }
    const sa = Math.sqrt(a);
    const sb = Math.sqrt(1 - a);
    const out = sameTypeAs(original, original.length);
    for (let j = 0; j < out.length; j++) out[j] = sa * original[j]! + sb * noise[j]!;
    return out;
  }
}

function notSet(what: string): SamplerError {
  return new SamplerError(
    'SAMPLER_TIMESTEPS_NOT_SET',
    `LCMScheduler.${what}: call setTimesteps(n) first; no schedule is set`,
    {
      expected: 'a schedule from setTimesteps',
      found: 'none',
    },
  );
}
