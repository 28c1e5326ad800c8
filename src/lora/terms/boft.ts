/**
 * The boft kind (LyCORIS butterfly OFT, `oft_blocks` [m, n, b, b]): m stages, each a block-diagonal rotation of the
 * output rows between two fixed permutations (LyCORIS lycoris/functional/boft.py diff_weight, ComfyUI
 * comfy/weight_adapter/boft.py). Stage i, with k = 2^i·⌊b/2⌋: the rows, in groups of 2k, are read as [2, k] and
 * taken in [k, 2] order (row c·2k + g·k + q goes to position c·2k + 2q + g); each run of b positions j is multiplied
 * by R_(i,j) (not its transpose: the einsum 'b i j, b j … → b i …'); the rows go back to their places. Then the
 * optional per-row `rescale`. Δ = diag(s)·S_(m−1)⋯S_0·W0 − W0 (f64, needs W0, full rank in general).
 *
 * Strength: ComfyUI's rule — every stage's block is blended w·R + (1 − w)·I (as LyCORIS does) and the difference is
 * then multiplied by w again: the fused weight is W0 + w·(diag(s)·S_w·W0 − W0), which is not linear in w.
 */
import { LoraError } from '../../core/errors.js';
import type { BoftTerm } from '../types.js';
import { contiguousValues } from '../delta.js';
import { invertSmall, norm1 } from '../linalg.js';
import type { KindOps } from './kind.js';
import { expectShape, viewOf } from './matrix.js';
import {
  baseOf,
  blendRotations,
  cayleyRotations,
  checkRescale,
  rotatedDelta,
  rotateRows,
  rotationKind,
} from './rotation.js';

interface BoftParts {
  out: number;
  fanIn: number;
  m: number;
  n: number;
  b: number;
}

function parts(t: BoftTerm, path: string): BoftParts {
  const { out, fanIn } = viewOf(t.shape);
  const s = t.blocks.shape;
  const [m = 0, n = 0, b = 0, b2 = 0] = s;
  expectShape(
    s.length === 4 && m > 0 && n > 0 && b > 0 && b === b2,
    path,
    `BOFT blocks are [${s.join(', ')}]; expected [m, n, b, b] (m stages of n square blocks of b × b)`,
    s,
  );
  expectShape(
    n * b === out,
    path,
    `BOFT blocks [${s.join(', ')}] rotate ${n}·${b} = ${n * b} output rows per stage but the weight [${t.shape.join(', ')}] has ${out}`,
    s,
  );
  for (let i = 0; i < m; i++) {
    const k = 2 ** i * Math.floor(b / 2);
    expectShape(
      k >= 1 && out % (2 * k) === 0,
      path,
      `BOFT stage ${i} of [${s.join(', ')}] pairs rows in groups of 2·2^${i}·⌊${b}/2⌋ = ${2 * k}, which does not divide the ${out} output rows`,
      s,
    );
  }
  checkRescale('BOFT', path, t.rescale, out);
  return { out, fanIn, m, n, b };
}

/** The positions of stage i: perm[p] is the row read at butterfly position p. */
export function butterflyPermutation(out: number, b: number, stage: number): Int32Array {
  const k = 2 ** stage * Math.floor(b / 2);
  const perm = new Int32Array(out);
  for (let row = 0; row < out; row++) {
    const c = Math.floor(row / (2 * k));
    const g = Math.floor((row % (2 * k)) / k);
    const q = row % k;
    perm[c * 2 * k + 2 * q + g] = row;
  }
  return perm;
}

/** Every stage's rotations (f64, [m, n, b, b]), blended towards I at strength w. */
function rotations(t: BoftTerm, p: BoftParts, w: number): Float64Array {
  const r = cayleyRotations(contiguousValues(t.blocks), p.m * p.n, p.b, t.constraint);
  return blendRotations(r, p.m * p.n, p.b, w);
}

/**
 * Apply the stages to X [out, cols] in place: forward S_(m−1)⋯S_0·X, or with `inverse` the inverse of that product
 * for orthogonal stages (S_0ᵀ⋯S_(m−1)ᵀ·X, stages in reverse with transposed blocks).
 */
function applyStages(x: Float64Array, cols: number, p: BoftParts, r: Float64Array, inverse = false): void {
  for (let s = 0; s < p.m; s++) {
    const i = inverse ? p.m - 1 - s : s;
    const perm = butterflyPermutation(p.out, p.b, i);
    for (let j = 0; j < p.n; j++) {
      rotateRows(x, cols, perm.subarray(j * p.b, (j + 1) * p.b), r, (i * p.n + j) * p.b * p.b, p.b, inverse);
    }
  }
}

/** Δ at strength 1, or ComfyUI's fused difference at strength w: w·(diag(s)·S_w·W0 − W0). */
export function boftDelta(t: BoftTerm, path: string, base: ArrayLike<number> | undefined, w = 1): Float32Array {
  const p = parts(t, path);
  const w0 = baseOf('BOFT', path, base, p.out * p.fanIn);
  const x = Float64Array.from(w0);
  applyStages(x, p.fanIn, p, rotations(t, p, w));
  return rotatedDelta(x, w0, t.rescale, p.fanIn, w);
}

export const boftKind: KindOps<BoftTerm> = rotationKind<BoftTerm>('BOFT', parts, boftDelta, (w) => w);

/** Largest amplification of the fused weight's rounding that unfuse accepts (κ₁ of the row transform). */
export const BOFT_UNFUSE_MAX_CONDITION = 1e6;

function cannotUnfuse(path: string, w: number, what: string, condition: number): LoraError {
  return new LoraError(
    'LORA_CANNOT_UNFUSE',
    `module '${path}': the BOFT fused at strength ${w} multiplies W0 by a row transform that is ${what}: W0 cannot be recovered from the fused weight; unfuse needs the original checkpoint`,
    { key: path, found: { strength: w, condition } },
  );
}

/**
 * W0 from F = W0 + w·(diag(s)·S_w·W0 − W0) = M·W0, M = (1 − w)·I + w·diag(s)·S_w [out, out]. At w = 1 the stages
 * are orthogonal and are undone one by one (transposed, in reverse) after dividing by s; otherwise M is formed and
 * inverted (f64; out³ work). LORA_CANNOT_UNFUSE when a rescale value is 0, or M is singular or its 1-norm condition
 * number exceeds BOFT_UNFUSE_MAX_CONDITION.
 */
export function boftBaseFromFused(t: BoftTerm, path: string, fused: ArrayLike<number>, w: number): Float64Array {
  const p = parts(t, path);
  expectShape(
    fused.length === p.out * p.fanIn,
    path,
    `the fused weight holds ${fused.length} values; expected ${p.out * p.fanIn}`,
  );
  const r = rotations(t, p, w);
  const x = Float64Array.from(fused);
  if (w === 1) {
    if (t.rescale) {
      for (let o = 0; o < p.out; o++) {
        const s = t.rescale[o] ?? 1;
        if (s === 0 || !Number.isFinite(s))
          throw cannotUnfuse(path, w, `singular (rescale of row ${o} is ${s})`, Infinity);
        for (let j = 0; j < p.fanIn; j++) x[o * p.fanIn + j] = (x[o * p.fanIn + j] ?? 0) / s;
      }
    }
    applyStages(x, p.fanIn, p, r, true);
    return x;
  }
  const mat = new Float64Array(p.out * p.out);
  for (let i = 0; i < p.out; i++) mat[i * p.out + i] = 1;
  applyStages(mat, p.out, p, r);
  for (let i = 0; i < p.out; i++) {
    const s = t.rescale?.[i] ?? 1;
    for (let j = 0; j < p.out; j++) {
      const at = i * p.out + j;
      mat[at] = w * s * (mat[at] ?? 0) + (i === j ? 1 - w : 0);
    }
  }
  const inv = invertSmall(mat, p.out);
  const condition = inv ? norm1(mat, p.out, p.out) * norm1(inv, p.out, p.out) : Infinity;
  if (!inv || !(condition <= BOFT_UNFUSE_MAX_CONDITION)) {
    throw cannotUnfuse(
      path,
      w,
      inv
        ? `ill-conditioned (condition number ${condition.toExponential(2)} > ${BOFT_UNFUSE_MAX_CONDITION})`
        : 'singular',
      condition,
    );
  }
  const base = new Float64Array(p.out * p.fanIn);
  for (let i = 0; i < p.out; i++) {
    for (let l = 0; l < p.out; l++) {
      const c = inv[i * p.out + l] ?? 0;
      if (c === 0) continue;
      for (let j = 0; j < p.fanIn; j++)
        base[i * p.fanIn + j] = (base[i * p.fanIn + j] ?? 0) + c * (x[l * p.fanIn + j] ?? 0);
    }
  }
  return base;
}
