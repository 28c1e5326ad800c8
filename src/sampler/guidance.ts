/**
 * The two ways an LCM is guided.
 *
 * - Full LCM UNets (LCM_Dreamshaper_v7, lcm-sdxl, lcm-ssd-1b) had classifier-free guidance distilled in: the
 *   UNet takes a sinusoidal embedding of w = guidanceScale − 1 as `timestep_cond` and is called once per step.
 * - LCM-LoRA on a plain SD / SDXL UNet has no such input: guidance is ordinary CFG over two UNet calls,
 *   ε = ε_u + g·(ε_c − ε_u), and only when g > 1 (g = 1 uses ε_c alone).
 */

import { SamplerError } from '../core/errors.js';
import type { Latent } from './rng.js';

export interface GuidanceEmbeddingOptions {
  /**
   * 'float32' (default) reproduces diffusers' torch float32 computation, rounding every intermediate; at
   * w = 7 the arguments of sin/cos reach 7000, where float32 rounding moves the result by up to 2.5e-4, so the
   * two precisions differ visibly. 'float64' is the exact formula in double.
   */
  precision?: 'float32' | 'float64';
}

/**
 * Sinusoidal embedding of the guidance weight w (already w = guidanceScale − 1, diffusers' convention) for
 * UNets with `time_cond_proj_dim = dim`: with w' = 1000·w and f_j = exp(−j·ln(10000)/(dim/2 − 1)),
 * [sin(w'·f_0) … sin(w'·f_{h−1}), cos(w'·f_0) … cos(w'·f_{h−1})], h = ⌊dim/2⌋, plus one 0 when dim is odd.
 */
export function guidanceScaleEmbedding(w: number, dim?: number, options?: { precision?: 'float32' }): Float32Array;
export function guidanceScaleEmbedding(
  w: number,
  dim: number | undefined,
  options: { precision: 'float64' },
): Float64Array;
export function guidanceScaleEmbedding(
  w: number,
  dim?: number,
  options?: GuidanceEmbeddingOptions,
): Float32Array | Float64Array;
export function guidanceScaleEmbedding(
  w: number,
  dim = 256,
  options: GuidanceEmbeddingOptions = {},
): Float32Array | Float64Array {
  const precision = options.precision ?? 'float32';
  if (typeof w !== 'number' || !Number.isFinite(w)) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `guidanceScaleEmbedding: w must be a finite number (guidanceScale − 1), got ${String(w)}`,
      {
        option: 'w',
        expected: 'finite number',
        found: w,
      },
    );
  }
  const half = Math.floor(dim / 2);
  if (!Number.isSafeInteger(dim) || half < 2) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `guidanceScaleEmbedding: dim must be an integer ≥ 4 (the UNet's time_cond_proj_dim), got ${String(dim)}`,
      {
        option: 'dim',
        expected: 'integer ≥ 4',
        found: dim,
      },
    );
  }
  if (precision === 'float64') {
    const out = new Float64Array(dim);
    const scale = Math.log(10000) / (half - 1);
    const ws = w * 1000;
    for (let j = 0; j < half; j++) {
      const arg = ws * Math.exp(-j * scale);
      out[j] = Math.sin(arg);
      out[half + j] = Math.cos(arg);
    }
    return out;
  }
  const f = Math.fround;
  const out = new Float32Array(dim);
  const scale = f(f(Math.log(10000)) / (half - 1));
  const ws = f(f(w) * 1000);
  for (let j = 0; j < half; j++) {
    const freq = f(Math.exp(f(j * -scale)));
    const arg = f(ws * freq);
    out[j] = Math.sin(arg);
    out[half + j] = Math.cos(arg);
  }
  return out;
}

/**
 * Classifier-free guidance: uncond + scale·(cond − uncond), element-wise, computed in double; the result has
 * the type of `cond`. (Callers skip it for scale ≤ 1 and use `cond` alone, as diffusers' pipelines do.)
 */
export function classifierFreeGuidance<T extends Latent>(uncond: Latent, cond: T, scale: number): T {
  if (uncond.length !== cond.length) {
    throw new SamplerError(
      'SAMPLER_SHAPE_MISMATCH',
      `classifierFreeGuidance: unconditional output has ${uncond.length} elements, conditional has ${cond.length}`,
      {
        expected: cond.length,
        found: uncond.length,
      },
    );
  }
  if (typeof scale !== 'number' || !Number.isFinite(scale)) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `classifierFreeGuidance: scale must be a finite number, got ${String(scale)}`,
      {
        option: 'scale',
        expected: 'finite number',
        found: scale,
      },
    );
  }
  const out = (cond instanceof Float32Array ? new Float32Array(cond.length) : new Float64Array(cond.length)) as T;
  for (let i = 0; i < out.length; i++) {
    const u = uncond[i]!;
    out[i] = u + scale * (cond[i]! - u);
  }
  return out;
}
