/**
 * Scaling a LoRA: s·τ. The factor goes into `up` only (s·up·down = s·Δ for any sign of s); `down` and alpha are
 * shared with the input, which is never modified.
 */
import ndarray from 'ndarray';
import ops from 'ndarray-ops';
import { ArgumentError } from '../core/errors.js';
import type { Lora, LoraModule } from './types.js';
import { mergeNorms } from './norms.js';

/** s·module: a new `up` (and bias delta) holding s·up (element-wise through ndarray-ops), the same `down` and alpha. */
export function scaleModule(module: LoraModule, s: number): LoraModule {
  const up = ndarray(new Float32Array(module.up.size), module.up.shape.slice());
  ops.muls(up, module.up, s);
  if (!module.bias) return { down: module.down, up, alpha: module.alpha };
  const bias = ndarray(new Float32Array(module.bias.size), module.bias.shape.slice());
  ops.muls(bias, module.bias, s);
  return { down: module.down, up, alpha: module.alpha, bias };
}

/** s·τ for every module. Throws ArgumentError ARG_INVALID for a non-finite s. */
export function scaleLora(lora: Lora, s: number): Lora {
  if (typeof s !== 'number' || !Number.isFinite(s)) {
    throw new ArgumentError('ARG_INVALID', `scaleLora: the scale must be a finite number, found ${String(s)}`, {
      found: s,
    });
  }
  const modules = new Map<string, LoraModule>();
  for (const [path, m] of lora.modules) modules.set(path, scaleModule(m, s));
  // Norm-layer differences scale with the LoRA (s·diff).
  const norms = lora.norms ? mergeNorms([{ norms: lora.norms, weightOf: () => s, name: 'scaleLora' }]) : undefined;
  return {
    arch: lora.arch,
    size: lora.size,
    modules,
    metadata: { ...lora.metadata },
    ...(lora.embeddings ? { embeddings: lora.embeddings } : {}),
    ...(norms && norms.size > 0 ? { norms } : {}),
  };
}

/** −τ. */
export function negateLora(lora: Lora): Lora {
  return scaleLora(lora, -1);
}
