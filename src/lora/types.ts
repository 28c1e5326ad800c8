import type { NdArray } from 'ndarray';
import type { Arch, LayoutSize } from '../layout/types.js';

/** A contiguous row-major float32 ndarray (offset 0, C-order strides). */
export type F32Array = NdArray<Float32Array>;

/**
 * One LoRA module: delta = (alpha / r) · up @ down, with r = down.shape[0].
 * Linear: down [r, in], up [out, r]. Conv: down [r, in, kh, kw], up [out, r, 1, 1]
 * (delta = (up.reshape(out, r) @ down.reshape(r, in·kh·kw)).reshape(out, in, kh, kw)).
 * Factors are always f32 in memory, whatever the file stored.
 */
export interface LoraModule {
  readonly down: F32Array;
  readonly up: F32Array;
  readonly alpha: number;
}

/** A LoRA: a τ vector over the modules of one architecture, keyed by canonical module path. */
export interface Lora {
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly modules: ReadonlyMap<string, LoraModule>;
  /** Free-form string metadata (safetensors __metadata__), carried into outputs. */
  readonly metadata: Readonly<Record<string, string>>;
}
