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

function innerDelta(t: DoraTerm, path: string, base: Float32Array | undefined): Float32Array {
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

function cannotUnfuse(path: string, message: string, details: Record<string, unknown> = {}): LoraError {
  return new LoraError('LORA_CANNOT_UNFUSE', `module '${path}': ${message}`, { key: path, ...details });
}

/**
 * W0 from a weight fused with ComfyUI's strength rule F = (1 − w)·W0 + w·m ⊙ V/‖V‖, V = W0 + ΔW (ΔW the inner
 * term at strength 1, which does not involve W0). Per channel (row for the output axis, input channel for the
 * input axis) let c = ‖V‖ and G = F + (1 − w)·ΔW. Then G = α·V with α = (1 − w) + w·m/c, so ‖G‖ = |α|·c and, on the
 * branch α > 0, (1 − w)·c + w·m = ‖G‖: the norm is linear in the unknown, c = (‖G‖ − w·m)/(1 − w), and
 * W0 = (c/‖G‖)·G − ΔW. For 0 < w < 1 (and m ≥ 0) α > 0 always holds, so the solution is unique; for other w ≠ 1 the
 * α > 0 solution is taken (the fused channel points along V, as it does in any DoRA whose magnitude is near the norm:
 * α > 0 ⇔ m/c > (w − 1)/w for w > 1, ⇔ m/c < (1 − w)/(−w) for w < 0). There the α < 0 branch
 * c = (−‖G‖ − w·m)/(1 − w) may be positive too — a second W0 that fuses to the same F; such channels are counted in
 * `notes` (one line per module) so that unfuse can warn.
 * At w = 1 F = m·V/‖V‖ keeps only V's direction: ‖V‖ is not in the fused weight, and LORA_CANNOT_UNFUSE says so.
 * The rounding error of F is amplified by about 1/|1 − w| in c. Returns W0 in f64, [out·in·kh·kw].
 */
export function doraBaseFromFused(
  t: DoraTerm,
  path: string,
  fused: ArrayLike<number>,
  w: number,
  notes?: string[],
): Float64Array {
  const { out, fanIn, channels, kernel } = checked(t, path);
  expectShape(
    fused.length === out * fanIn,
    path,
    `the fused weight holds ${fused.length} values; expected ${out * fanIn}`,
  );
  if (t.inner.kind === 'glora') {
    throw cannotUnfuse(
      path,
      'a DoRA over a GLoRA term: its inner delta involves W0 itself, so the fused weight does not give W0 by a per-channel equation; unfuse needs the original checkpoint',
    );
  }
  if (w === 1) {
    throw cannotUnfuse(
      path,
      'a DoRA fused at strength 1 replaces every ' +
        (t.axis === 'out' ? 'row' : 'input channel') +
        ' of W0 + ΔW by m·(W0 + ΔW)/‖W0 + ΔW‖, whose norm is m: the norm ‖W0 + ΔW‖ is not in the fused file, so W0 cannot be recovered from it (any positive multiple of a row fits). Keep the original checkpoint (fuse writes a new file), or fuse at a strength ≠ 1 if the fusion must be undoable',
      { found: w },
    );
  }
  const d = innerDelta(t, path, undefined);
  const g = new Float64Array(out * fanIn);
  const norm2 = new Float64Array(channels);
  const channelOf = (o: number, j: number): number => (t.axis === 'out' ? o : Math.floor(j / kernel));
  for (let o = 0; o < out; o++) {
    for (let j = 0; j < fanIn; j++) {
      const i = o * fanIn + j;
      const x = (fused[i] ?? 0) + (1 - w) * (d[i] ?? 0);
      g[i] = x;
      const c = channelOf(o, j);
      norm2[c] = (norm2[c] ?? 0) + x * x;
    }
  }
  const factor = new Float64Array(channels);
  let ambiguous = 0;
  for (let c = 0; c < channels; c++) {
    const gn = Math.sqrt(norm2[c] ?? 0);
    const m = t.magnitude[c] ?? 0;
    const v = (gn - w * m) / (1 - w);
    if ((-gn - w * m) / (1 - w) > 0) ambiguous++;
    if (!(v > 0) || !(gn > 0) || !Number.isFinite(v)) {
      throw cannotUnfuse(
        path,
        `${t.axis === 'out' ? 'row' : 'input channel'} ${c}: no positive norm ‖W0 + ΔW‖ solves the fused equation at strength ${w} (‖F + (1 − w)·ΔW‖ = ${gn}, m = ${m}); was this DoRA fused into the file at this strength?`,
        { found: { channel: c, strength: w, normG: gn, magnitude: m } },
      );
    }
    factor[c] = v / gn;
  }
  if (ambiguous > 0) {
    notes?.push(
      `module '${path}': at strength ${w} ${ambiguous} of ${channels} DoRA ${t.axis === 'out' ? 'row(s)' : 'input channel(s)'} have a second base weight fusing to the same values (pointing against W0 + ΔW, with norm (‖G‖ + w·m)/(w − 1), G = F + (1 − w)·ΔW); the one along the fused weight was taken`,
    );
  }
  const base = new Float64Array(out * fanIn);
  for (let o = 0; o < out; o++) {
    for (let j = 0; j < fanIn; j++) {
      const i = o * fanIn + j;
      base[i] = (factor[channelOf(o, j)] ?? 0) * (g[i] ?? 0) - (d[i] ?? 0);
    }
  }
  return base;
}
