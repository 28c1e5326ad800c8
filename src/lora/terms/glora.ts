/**
 * The glora kind (LyCORIS GLoRA): Δ = s · (W0 ×_in (a1·a2) + b1·b2), a1 [in, r], a2 [r, in], b1 [out, r],
 * b2 [r, in·kh·kw]; the a-product mixes the input channels of W0 at every kernel position. It needs W0.
 * Exact factors for a linear (or 1×1) weight: up = s·[W0·a1 | b1], down = [a2 ; b2] (rank 2r); a k×k conv gives
 * its exact delta as dense factors.
 */
import { LoraError } from '../../core/errors.js';
import type { GloraTerm } from '../types.js';
import { invertSmall, matmul, norm1 } from '../linalg.js';
import type { KindOps } from './kind.js';
import { denseFactors, expectShape, matrixOf, multiply, viewOf, type PlainFactors } from './matrix.js';

interface Parts {
  a1: Float32Array;
  a2: Float32Array;
  b1: Float32Array;
  b2: Float32Array;
  rank: number;
  in: number;
  kernel: number;
  out: number;
  fanIn: number;
}

function parts(t: GloraTerm, path: string): Parts {
  const { out, fanIn } = viewOf(t.shape);
  const inn = t.shape[1] ?? 0;
  const kernel = inn > 0 ? fanIn / inn : 0;
  const a1 = matrixOf(t.a1, path, 'a1');
  const a2 = matrixOf(t.a2, path, 'a2');
  const b1 = matrixOf(t.b1, path, 'b1');
  const b2 = matrixOf(t.b2, path, 'b2');
  const r = a2.rows;
  expectShape(
    a1.rows === inn && a1.cols === r && a2.cols === inn && b1.rows === out && b1.cols === b2.rows && b2.cols === fanIn,
    path,
    `GLoRA a1 [${a1.rows}, ${a1.cols}], a2 [${a2.rows}, ${a2.cols}], b1 [${b1.rows}, ${b1.cols}], b2 [${b2.rows}, ${b2.cols}] ` +
      `do not fit a weight [${t.shape.join(', ')}] (expected a1 [in, r], a2 [r, in], b1 [out, r'], b2 [r', in·kh·kw])`,
    { a1: t.a1.shape, a2: t.a2.shape, b1: t.b1.shape, b2: t.b2.shape },
  );
  return { a1: a1.data, a2: a2.data, b1: b1.data, b2: b2.data, rank: r, in: inn, kernel, out, fanIn };
}

function needBase(path: string, base: Float32Array | undefined, n: number): Float32Array {
  if (!base) {
    throw new LoraError(
      'LORA_NEEDS_BASE',
      `module '${path}': a GLoRA delta involves the base weight (W0·a1·a2 + b1·b2); give the base checkpoint (--base CKPT in merge, convert and fuse; resolveBaseTerms in the API)`,
      { key: path },
    );
  }
  expectShape(base.length === n, path, `the base weight holds ${base.length} values; expected ${n}`);
  return base;
}

/** Y[o, k, q] = Σ_i W0[o, i, k]·a1[i, q] for W0 [out, in, K] (K = kh·kw), summed in f64: [out, K, r]. */
function w0TimesA1(w0: Float32Array, p: Parts): Float64Array {
  const { in: n, rank: r, kernel: K, fanIn } = p;
  const y = new Float64Array(p.out * K * r);
  for (let o = 0; o < p.out; o++) {
    for (let k = 0; k < K; k++) {
      const at = (o * K + k) * r;
      for (let i = 0; i < n; i++) {
        const w = w0[o * fanIn + i * K + k] ?? 0;
        if (w === 0) continue;
        const row = i * r;
        for (let q = 0; q < r; q++) y[at + q] = (y[at + q] ?? 0) + w * (p.a1[row + q] ?? 0);
      }
    }
  }
  return y;
}

/**
 * W0 ×_in (a1·a2): X[o, j, k] = Σ_q (W0·a1)[o, k, q]·a2[q, j], both sums in f64 — r·in·(out·K)·2 multiply-adds
 * instead of the in² of forming a1·a2 first and mixing W0 with it (80× fewer on SDXL's 10240 × 1280 feed-forward at
 * rank 8), and an f64 sum of in terms instead of an f32 one.
 */
function mixInputs(w0: Float32Array, p: Parts): Float64Array {
  const { in: n, rank: r, kernel: K, fanIn } = p;
  const y = w0TimesA1(w0, p);
  const out = new Float64Array(p.out * fanIn);
  for (let o = 0; o < p.out; o++) {
    for (let k = 0; k < K; k++) {
      for (let q = 0; q < r; q++) {
        const c = y[(o * K + k) * r + q] ?? 0;
        if (c === 0) continue;
        const row = q * n;
        for (let j = 0; j < n; j++)
          out[o * fanIn + j * K + k] = (out[o * fanIn + j * K + k] ?? 0) + c * (p.a2[row + j] ?? 0);
      }
    }
  }
  return out;
}

/** x += b1·b2 in f64 (b1 [out, r'], b2 [r', fanIn]). */
function addB(x: Float64Array, p: Parts): void {
  const rb = p.b2.length / p.fanIn;
  for (let o = 0; o < p.out; o++) {
    for (let q = 0; q < rb; q++) {
      const c = p.b1[o * rb + q] ?? 0;
      if (c === 0) continue;
      const row = q * p.fanIn;
      for (let j = 0; j < p.fanIn; j++) x[o * p.fanIn + j] = (x[o * p.fanIn + j] ?? 0) + c * (p.b2[row + j] ?? 0);
    }
  }
}

export const gloraKind: KindOps<GloraTerm> = {
  label: 'GLoRA',
  needsBase: true,
  shape(t, path) {
    parts(t, path);
    return t.shape;
  },
  rankBound(t, path) {
    const p = parts(t, path);
    const b = p.b2.length / p.fanIn;
    return Math.min(p.rank * p.kernel + b, p.out, p.fanIn);
  },
  delta(t, path, base) {
    const p = parts(t, path);
    const w0 = needBase(path, base, p.out * p.fanIn);
    const x = mixInputs(w0, p);
    addB(x, p);
    const d = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) d[i] = t.scale * (x[i] ?? 0);
    return d;
  },
  factors(t, path, base): PlainFactors {
    const p = parts(t, path);
    const w0 = needBase(path, base, p.out * p.fanIn);
    if (p.kernel !== 1) return denseFactors(gloraKind.delta(t, path, w0), p.out, p.fanIn);
    const rb = p.b2.length / p.fanIn;
    const wa = w0TimesA1(w0, p); // [out, 1, r], f64 sums, rounded once below
    const rank = p.rank + rb;
    const up = new Float32Array(p.out * rank);
    for (let o = 0; o < p.out; o++) {
      for (let q = 0; q < p.rank; q++) up[o * rank + q] = t.scale * (wa[o * p.rank + q] ?? 0);
      for (let q = 0; q < rb; q++) up[o * rank + p.rank + q] = t.scale * (p.b1[o * rb + q] ?? 0);
    }
    const down = new Float32Array(rank * p.fanIn);
    down.set(p.a2, 0);
    down.set(p.b2, p.rank * p.fanIn);
    return { up, down, rank };
  },
};

/** Largest amplification of the fused weight's rounding that unfuse accepts (κ₁ of I + c·a1·a2). */
export const GLORA_UNFUSE_MAX_CONDITION = 1e6;

/**
 * W0 from a weight fused as F = W0 + w·Δ = W0 ×_in (I + c·A) + c·B, c = w·s, A = a1·a2 [in, in], B = b1·b2: every
 * row of input channels (each output row at each kernel position) is solved from x·(I + c·a1·a2) = F − c·B by the
 * Woodbury identity (I + c·a1·a2)⁻¹ = I − c·a1·(I_r + c·a2·a1)⁻¹·a2, so only an r × r system is inverted (f64).
 * LORA_CANNOT_UNFUSE when that system is singular or the 1-norm condition number of I + c·a1·a2 (bounded from the
 * r × r inverse) exceeds GLORA_UNFUSE_MAX_CONDITION. Returns W0 in f64, [out·in·kh·kw].
 */
export function gloraBaseFromFused(t: GloraTerm, path: string, fused: ArrayLike<number>, w: number): Float64Array {
  const p = parts(t, path);
  expectShape(
    fused.length === p.out * p.fanIn,
    path,
    `the fused weight holds ${fused.length} values; expected ${p.out * p.fanIn}`,
  );
  const c = w * t.scale;
  const r = p.rank;
  const a1 = Float64Array.from(p.a1);
  const a2 = Float64Array.from(p.a2);
  // S = I_r + c·a2·a1
  const S = matmul(a2, a1, r, p.in, r, new Float64Array(r * r));
  for (let i = 0; i < r * r; i++) S[i] = c * (S[i] ?? 0);
  for (let i = 0; i < r; i++) S[i * r + i] = (S[i * r + i] ?? 0) + 1;
  const Sinv = invertSmall(S, r);
  // ‖M‖₁ ≤ 1 + |c|·‖a1‖₁‖a2‖₁ and ‖M⁻¹‖₁ ≤ 1 + |c|·‖a1‖₁‖S⁻¹‖₁‖a2‖₁ for M = I + c·a1·a2.
  const n1 = norm1(a1, p.in, r);
  const n2 = norm1(a2, r, p.in);
  const condition = Sinv ? (1 + Math.abs(c) * n1 * n2) * (1 + Math.abs(c) * n1 * norm1(Sinv, r, r) * n2) : Infinity;
  if (!Sinv || !(condition <= GLORA_UNFUSE_MAX_CONDITION)) {
    throw new LoraError(
      'LORA_CANNOT_UNFUSE',
      `module '${path}': the GLoRA fused at strength ${w} multiplies W0 by I + ${c}·a1·a2, which is ${Sinv ? `ill-conditioned (condition number up to ${condition.toExponential(2)} > ${GLORA_UNFUSE_MAX_CONDITION})` : 'singular'}: W0 cannot be recovered from the fused weight to any useful precision; unfuse needs the original checkpoint`,
      { key: path, found: { strength: w, condition } },
    );
  }
  // K = c·Sinv·a2 [r, in]: W0 row = x − (x·a1)·K.
  const K = matmul(Sinv, a2, r, r, p.in, new Float64Array(r * p.in));
  for (let i = 0; i < K.length; i++) K[i] = c * (K[i] ?? 0);
  const rb = p.b2.length / p.fanIn;
  const B = multiply(p.out, p.fanIn, rb, p.b1, p.b2);
  const base = new Float64Array(p.out * p.fanIn);
  const x = new Float64Array(p.in);
  const y = new Float64Array(r);
  const kernel = p.kernel;
  for (let o = 0; o < p.out; o++) {
    for (let k = 0; k < kernel; k++) {
      for (let i = 0; i < p.in; i++) {
        const at = o * p.fanIn + i * kernel + k;
        x[i] = (fused[at] ?? 0) - c * (B[at] ?? 0);
      }
      y.fill(0);
      for (let i = 0; i < p.in; i++) {
        const xi = x[i] ?? 0;
        if (xi === 0) continue;
        for (let q = 0; q < r; q++) y[q] = (y[q] ?? 0) + xi * (a1[i * r + q] ?? 0);
      }
      for (let j = 0; j < p.in; j++) {
        let s = x[j] ?? 0;
        for (let q = 0; q < r; q++) s -= (y[q] ?? 0) * (K[q * p.in + j] ?? 0);
        base[o * p.fanIn + j * kernel + k] = s;
      }
    }
  }
  return base;
}
