/** What every term kind answers (one file per kind implements it; src/lora/terms/index.ts dispatches). */
import type { PlainFactors } from './matrix.js';

export interface KindOps<T> {
  /** The kind's name in reports: 'LoRA', 'LoHa', 'LoKr', 'full diff', 'DoRA', 'GLoRA', 'OFT', 'BOFT'. */
  readonly label: string;
  /** True when the delta depends on the base weight W0 (DoRA, GLoRA, OFT, BOFT). */
  readonly needsBase: boolean;
  /** The weight's shape [out, in] or [out, in, kh, kw], after checking the term's own shapes agree. */
  shape(t: T, path: string): readonly number[];
  /** An upper bound on the rank of the delta's [out, in·kh·kw] view. */
  rankBound(t: T, path: string): number;
  /** The delta at strength 1, [out·in·kh·kw] row-major. `base` is W0 in the same layout (kinds that need it). */
  delta(t: T, path: string, base?: Float32Array): Float32Array;
  /** Exact factors of the delta (scale folded into up), formed without the dense delta where the algebra allows. */
  factors(t: T, path: string, base?: Float32Array): PlainFactors;
  /** The rank of `factors` without forming them (absent: the factors are formed to learn it). */
  factorRank?(t: T, path: string): number;
  /**
   * The delta fuse adds at strength w under ComfyUI's strength rule, for the kinds where that is not w·delta
   * (OFT: w²·Δ; BOFT: the stages blended towards I, then times w). Absent: w·delta.
   */
  weighted?(t: T, path: string, w: number, base?: Float32Array): Float32Array;
}
