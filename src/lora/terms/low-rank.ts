/** The lowRank kind (LoRA, LoCon, Tucker LoCon with the core folded): Δ = (alpha / r) · up · down. */
import { contiguousValues, deltaOf, deltaShape, moduleDims } from '../delta.js';
import type { LowRankTerm } from '../types.js';
import type { KindOps } from './kind.js';
import { scaled } from './matrix.js';

export const lowRankKind: KindOps<LowRankTerm> = {
  label: 'LoRA',
  needsBase: false,
  shape: (t, path) => deltaShape(moduleDims(t, path)),
  rankBound: (t, path) => moduleDims(t, path).rank,
  delta: (t, path) => contiguousValues(deltaOf(t, path)),
  factors(t, path) {
    const d = moduleDims(t, path);
    return { up: scaled(contiguousValues(t.up), t.alpha / d.rank), down: contiguousValues(t.down), rank: d.rank };
  },
};
