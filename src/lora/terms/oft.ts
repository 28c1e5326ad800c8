/**
 * The oft kind (LyCORIS diag-OFT `oft_blocks` [n, b, b], kohya OFT, the old LyCORIS `oft_diag`): the output rows of
 * W0, in n blocks of b rows, are multiplied by R_kᵀ (the einsum 'k n m, k n … → k m …' of LyCORIS, kohya, A1111 and
 * ComfyUI), then by the optional per-row `rescale` (LyCORIS): W' = diag(s)·blockdiag(R_kᵀ)·W0, Δ = W' − W0 (f64,
 * needs W0, full rank in general). `oft_diag` stores R_k itself (A1111 reads it so); the others store the Cayley
 * parameters (rotation.ts).
 *
 * Strength: ComfyUI's rule (comfy/weight_adapter/oft.py): its difference is computed with (w·R − w·I) and added
 * times w again, so the fused weight is W0 + w²·Δ. LyCORIS and kohya blend w·R + (1 − w)·I, which is W0 + w·Δ; the
 * two agree at w = 1 and w = 0. The fused weight at strength w is inverted per block of rows (baseFromFused).
 */
import { LoraError } from '../../core/errors.js';
import type { OftTerm } from '../types.js';
import { contiguousValues } from '../delta.js';
import { invertSmall, norm1 } from '../linalg.js';
import type { KindOps } from './kind.js';
import { expectShape, viewOf } from './matrix.js';
import {
  addDeltaRows,
  baseOf,
  cayleyRotations,
  checkRescale,
  deltaRows,
  rotateRows,
  rotationKind,
} from './rotation.js';

interface OftParts {
  out: number;
  fanIn: number;
  n: number;
  b: number;
}

function parts(t: OftTerm, path: string): OftParts {
  const { out, fanIn } = viewOf(t.shape);
  const s = t.blocks.shape;
  const [n = 0, b = 0, b2 = 0] = s;
  expectShape(
    s.length === 3 && n > 0 && b > 0 && b === b2,
    path,
    `OFT blocks are [${s.join(', ')}]; expected [n, b, b] (n square blocks of b × b)`,
    s,
  );
  expectShape(
    n * b === out,
    path,
    `OFT blocks [${s.join(', ')}] rotate ${n}·${b} = ${n * b} output rows but the weight [${t.shape.join(', ')}] has ${out}`,
    s,
  );
  checkRescale('OFT', path, t.rescale, out);
  return { out, fanIn, n, b };
}

/** The rotations R_k (f64, [n, b, b]). */
export function oftRotations(t: OftTerm, path: string): Float64Array {
  const { n, b } = parts(t, path);
  const data = contiguousValues(t.blocks);
  return t.cayley ? cayleyRotations(data, n, b, t.constraint) : Float64Array.from(data);
}

/**
 * One block of b rows at a time, in order: its rows of W0 as f64 (x), times R_kᵀ, handed to `visit` with the block's
 * positions [i0, i1) (each block's rows depend on those rows of W0 only, read before `visit` runs).
 */
function eachRotatedBlock(
  t: OftTerm,
  p: OftParts,
  path: string,
  w0: Float32Array | Float64Array,
  visit: (x: Float64Array, i0: number, i1: number) => void,
): void {
  const { n, b, fanIn } = p;
  const r = oftRotations(t, path);
  const span = b * fanIn;
  const x = new Float64Array(span);
  const rows = Int32Array.from({ length: b }, (_, a) => a);
  for (let k = 0; k < n; k++) {
    const i0 = k * span;
    x.set(w0.subarray(i0, i0 + span));
    rotateRows(x, fanIn, rows, r, k * b * b, b, true);
    visit(x, i0, i0 + span);
  }
}

/** Δ at strength 1: diag(s)·blockdiag(R_kᵀ)·W0 − W0 (a block of rows at a time). */
export function oftDelta(t: OftTerm, path: string, base: ArrayLike<number> | undefined, w = 1): Float32Array {
  const p = parts(t, path);
  const w0 = baseOf('OFT', path, base, p.out * p.fanIn);
  const delta = new Float32Array(p.out * p.fanIn);
  eachRotatedBlock(t, p, path, w0, (x, i0, i1) => deltaRows(x, i0, i1, w0, t.rescale, p.fanIn, w, delta));
  return delta;
}

/**
 * view[i] += oftDelta(t, path, base, w)[i] with the same roundings (each delta value to f32, then the sum to f32),
 * without the delta array. `base` may be `view` itself: every value of W0 is read before it is written. `check`
 * gets out·fanIn after the shape and base checks, before anything is written.
 */
export function oftAddInto(
  t: OftTerm,
  path: string,
  base: ArrayLike<number> | undefined,
  w: number,
  view: Float32Array,
  check: (n: number) => void,
): void {
  const p = parts(t, path);
  const w0 = baseOf('OFT', path, base, p.out * p.fanIn);
  check(p.out * p.fanIn);
  eachRotatedBlock(t, p, path, w0, (x, i0, i1) => addDeltaRows(x, i0, i1, w0, t.rescale, p.fanIn, w, view));
}

export const oftKind: KindOps<OftTerm> = rotationKind<OftTerm>('OFT', parts, oftDelta, (w) => w * w);

/** Largest amplification of the fused weight's rounding that unfuse accepts (κ₁ of a block's matrix). */
export const OFT_UNFUSE_MAX_CONDITION = 1e6;

/**
 * W0 from F = W0 + w²·Δ (ComfyUI's rule): per block of rows F_k = M_k·W0_k with M_k = (1 − w²)·I + w²·diag(s_k)·R_kᵀ,
 * so W0_k = M_k⁻¹·F_k (a b × b inverse, f64). LORA_CANNOT_UNFUSE when a block's M_k is singular or its 1-norm
 * condition number exceeds OFT_UNFUSE_MAX_CONDITION (a rescale near 0, or w² ≈ 1/2 against a half-turn rotation).
 */
export function oftBaseFromFused(t: OftTerm, path: string, fused: ArrayLike<number>, w: number): Float64Array {
  const { n, b, out, fanIn } = parts(t, path);
  expectShape(
    fused.length === out * fanIn,
    path,
    `the fused weight holds ${fused.length} values; expected ${out * fanIn}`,
  );
  const c = w * w;
  const r = oftRotations(t, path);
  const x = Float64Array.from(fused);
  const m = new Float64Array(b * b);
  const rows = new Int32Array(b);
  for (let k = 0; k < n; k++) {
    for (let i = 0; i < b; i++) {
      const s = t.rescale?.[k * b + i] ?? 1;
      for (let j = 0; j < b; j++) m[i * b + j] = c * s * (r[k * b * b + j * b + i] ?? 0) + (i === j ? 1 - c : 0);
    }
    const inv = invertSmall(m, b);
    const condition = inv ? norm1(m, b, b) * norm1(inv, b, b) : Infinity;
    if (!inv || !(condition <= OFT_UNFUSE_MAX_CONDITION)) {
      throw new LoraError(
        'LORA_CANNOT_UNFUSE',
        `module '${path}': the OFT fused at strength ${w} multiplies rows ${k * b}–${k * b + b - 1} of W0 by a matrix that is ${inv ? `ill-conditioned (condition number ${condition.toExponential(2)} > ${OFT_UNFUSE_MAX_CONDITION})` : 'singular'}: W0 cannot be recovered from the fused weight; unfuse needs the original checkpoint`,
        { key: path, found: { strength: w, block: k, condition } },
      );
    }
    for (let a = 0; a < b; a++) rows[a] = k * b + a;
    rotateRows(x, fanIn, rows, inv, 0, b, false);
  }
  return x;
}
