/** The dense kind (full weight difference, LyCORIS `diff`): Δ = delta. Exact factors: identity on the shorter side. */
import type { DenseTerm } from '../types.js';
import type { KindOps } from './kind.js';
import { denseFactors, expectShape, matrixOf, viewOf } from './matrix.js';

function values(t: DenseTerm, path: string): { data: Float32Array; out: number; fanIn: number } {
  const { out, fanIn } = viewOf(t.shape);
  const m = matrixOf(t.delta, path, 'diff');
  expectShape(
    m.data.length === out * fanIn,
    path,
    `diff has shape [${t.delta.shape.join(', ')}]; the weight is [${t.shape.join(', ')}]`,
    t.delta.shape,
  );
  return { data: m.data, out, fanIn };
}

export const denseKind: KindOps<DenseTerm> = {
  label: 'full diff',
  needsBase: false,
  shape(t, path) {
    values(t, path);
    return t.shape;
  },
  rankBound(t) {
    const { out, fanIn } = viewOf(t.shape);
    return Math.min(out, fanIn);
  },
  delta: (t, path) => values(t, path).data.slice(),
  factors(t, path) {
    const v = values(t, path);
    return denseFactors(v.data, v.out, v.fanIn);
  },
};
