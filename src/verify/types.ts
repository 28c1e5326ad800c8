/** Options and results of verifyFusion. */
import type { Component, ModuleGroup } from '../layout/types.js';

export interface VerifyOptions {
  /** Random probe vectors per module (default 4). */
  readonly probes?: number;
  readonly seed?: number;
  /**
   * A module fails when its worst error exceeds `tolerance` × its rounding bound (default 2): the bound is what
   * one rounding of W′ to its stored dtype can move W′x (Σⱼ |xⱼ|·ulp(W′ᵢⱼ)/2), plus f32 accumulation slack.
   */
  readonly tolerance?: number;
  /** Check only these canonical module paths. */
  readonly modules?: readonly string[];
  readonly allowUnmatched?: boolean;
  readonly onProgress?: (done: number, total: number) => void;
}

export interface ModuleVerifyReport {
  readonly path: string;
  readonly component: Component;
  readonly group: ModuleGroup;
  /** max over probes and rows of |W′x − (Wx + Σ wᵢ sᵢ upᵢ(downᵢ x))| / bound. Pass: ≤ tolerance. */
  readonly worstRatio: number;
  /** max over probes of ‖W′x − expected‖∞ / ‖expected − Wx‖∞: the error relative to the LoRA's own effect. */
  readonly worstRelative: number;
  /** ‖Σ wᵢ sᵢ upᵢ(downᵢ x)‖∞ / bound: below ~1 the delta is under storage precision and the check cannot see it. */
  readonly signal: number;
  readonly inconclusive: boolean;
  readonly ok: boolean;
}

export interface VerifyReport {
  readonly fused: string;
  readonly base: string;
  readonly modules: readonly ModuleVerifyReport[];
  readonly checked: number;
  readonly failed: number;
  readonly inconclusive: number;
  readonly worst: ModuleVerifyReport | null;
  readonly tolerance: number;
  readonly ok: boolean;
  readonly seconds: number;
}
