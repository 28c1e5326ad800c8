/**
 * The dora kind: W_dora = m ⊙ V / ‖V‖ with V = W0 + Δ_inner (the inner term at strength 1), the norm of V taken per
 * output row (axis 'out': over in, kh, kw) or per input channel (axis 'in': over out, kh, kw), as the DoRA paper,
 * LyCORIS and PEFT define it (not ComfyUI's ‖W0‖ on the output axis). Δ = W_dora − W0, which needs W0 and is full
 * rank in general; fusing at strength w gives W0 + w·Δ (ComfyUI's strength rule). V, its norms and the difference
 * are computed in f64.
 */
import { LoraError } from '../../core/errors.js';
import type { DoraTerm } from '../types.js';
import { denseKind } from './dense.js';
import { gloraKind } from './glora.js';
import { hadamardKind } from './hadamard.js';
import type { KindOps } from './kind.js';
import { kroneckerKind } from './kronecker.js';
import { lowRankKind } from './low-rank.js';
import { denseFactors, expectShape, viewOf } from './matrix.js';

function innerDelta(t: DoraTerm, path: string, base: Float32Array): Float32Array {
  const inner = t.inner;
  switch (inner.kind) {
    case 'hadamard':
      return hadamardKind.delta(inner, path);
    case 'kronecker':
      return kroneckerKind.delta(inner, path);
    case 'dense':
      return denseKind.delta(inner, path);
    case 'glora':
      return gloraKind.delta(inner, path, base);
    default:
      return lowRankKind.delta(inner, path);
  }
}

function checked(t: DoraTerm, path: string): { out: number; fanIn: number; channels: number; kernel: number } {
  const { out, fanIn } = viewOf(t.shape);
  const inn = t.shape[1] ?? 0;
  const channels = t.axis === 'out' ? out : inn;
  expectShape(
    t.magnitude.length === channels,
    path,
    `the DoRA magnitude holds ${t.magnitude.length} values; expected ${channels} (one per ${t.axis === 'out' ? 'output row' : 'input channel'} of [${t.shape.join(', ')}])`,
    t.magnitude.length,
  );
  return { out, fanIn, channels, kernel: inn > 0 ? fanIn / inn : 1 };
}

/** ΔW_dora = m ⊙ V/‖V‖ − W0 with V = W0 + inner delta. */
export function doraDelta(t: DoraTerm, path: string, base: Float32Array | undefined): Float32Array {
  const { out, fanIn, channels, kernel } = checked(t, path);
  if (!base) {
    throw new LoraError(
      'LORA_NEEDS_BASE',
      `module '${path}': a DoRA delta is m·(W0 + ΔW)/‖W0 + ΔW‖ − W0, so it needs the base weight W0; give the base checkpoint (--base CKPT in merge, convert and fuse; resolveBaseTerms in the API)`,
      { key: path },
    );
  }
  expectShape(
    base.length === out * fanIn,
    path,
    `the base weight holds ${base.length} values; expected ${out * fanIn}`,
  );
  const d = innerDelta(t, path, base);
  const v = new Float64Array(out * fanIn);
  for (let i = 0; i < v.length; i++) v[i] = (base[i] ?? 0) + (d[i] ?? 0);
  const norm2 = new Float64Array(channels);
  for (let o = 0; o < out; o++) {
    for (let j = 0; j < fanIn; j++) {
      const x = v[o * fanIn + j] ?? 0;
      const c = t.axis === 'out' ? o : Math.floor(j / kernel);
      norm2[c] = (norm2[c] ?? 0) + x * x;
    }
  }
  const factor = new Float64Array(channels);
  for (let c = 0; c < channels; c++) {
    const n = Math.sqrt(norm2[c] ?? 0);
    factor[c] = n > 0 ? (t.magnitude[c] ?? 0) / n : 0;
  }
  const result = new Float32Array(out * fanIn);
  for (let o = 0; o < out; o++) {
    for (let j = 0; j < fanIn; j++) {
      const i = o * fanIn + j;
      const c = t.axis === 'out' ? o : Math.floor(j / kernel);
      result[i] = (factor[c] ?? 0) * (v[i] ?? 0) - (base[i] ?? 0);
    }
  }
  return result;
}

export const doraKind: KindOps<DoraTerm> = {
  label: 'DoRA',
  needsBase: true,
  shape(t, path) {
    checked(t, path);
    return t.shape;
  },
  rankBound(t) {
    const { out, fanIn } = viewOf(t.shape);
    return Math.min(out, fanIn);
  },
  delta: doraDelta,
  factors(t, path, base) {
    const { out, fanIn } = viewOf(t.shape);
    return denseFactors(doraDelta(t, path, base), out, fanIn);
  },
};
