/**
 * Norm-layer differences (GroupNorm / LayerNorm weight and bias, ComfyUI `.diff` / `.diff_b`, LyCORIS `w_norm` /
 * `b_norm`): dense 1-D deltas that add linearly, so a merge is their exact weighted sum, Σ λᵢ·Δᵢ, whatever happens
 * to the modules (rank reduction, merge methods).
 */
import ndarray from 'ndarray';
import { LoraError } from '../core/errors.js';
import { contiguousValues } from './delta.js';
import type { F32Array, NormDelta } from './types.js';

/** One input's norm deltas and its weight function (λ of a path). */
export interface NormInput {
  readonly norms?: ReadonlyMap<string, NormDelta>;
  readonly weightOf: (path: string) => number;
  readonly name: string;
}

function addInto(sum: Float64Array | undefined, v: F32Array, coef: number, path: string, name: string): Float64Array {
  const x = contiguousValues(v);
  const acc = sum ?? new Float64Array(x.length);
  if (acc.length !== x.length) {
    throw new LoraError(
      'LORA_SHAPE_MISMATCH',
      `merge: ${name}: the norm difference of '${path}' has ${x.length} values; another input has ${acc.length}`,
      { key: path, expected: acc.length, found: x.length },
    );
  }
  for (let i = 0; i < x.length; i++) acc[i] = (acc[i] ?? 0) + coef * (x[i] ?? 0);
  return acc;
}

const asF32 = (a: Float64Array | undefined): F32Array | undefined =>
  a?.some((x) => x !== 0) ? ndarray(Float32Array.from(a), [a.length]) : undefined;

/**
 * Σ λᵢ·Δᵢ of every norm difference of the inputs (weights of exactly 0 leave an input out; a sum that is zero
 * everywhere is left out), in first-seen order.
 */
export function mergeNorms(inputs: readonly NormInput[]): Map<string, NormDelta> {
  const sums = new Map<string, { weight?: Float64Array; bias?: Float64Array }>();
  for (const input of inputs) {
    for (const [path, d] of input.norms ?? []) {
      const lambda = input.weightOf(path);
      if (lambda === 0) continue;
      const s = sums.get(path) ?? {};
      if (d.weight) s.weight = addInto(s.weight, d.weight, lambda, path, input.name);
      if (d.bias) s.bias = addInto(s.bias, d.bias, lambda, path, input.name);
      sums.set(path, s);
    }
  }
  const out = new Map<string, NormDelta>();
  for (const [path, s] of sums) {
    const weight = asF32(s.weight);
    const bias = asF32(s.bias);
    if (weight || bias) out.set(path, { ...(weight ? { weight } : {}), ...(bias ? { bias } : {}) });
  }
  return out;
}
