/**
 * The orthogonal blocks OFT and BOFT multiply a weight by (shared/research/adapters.md §8; LyCORIS
 * lycoris/functional/diag_oft.py get_r, ComfyUI comfy/weight_adapter/oft.py): from the stored parameters B_k,
 * Q_k = B_k − B_kᵀ (skew-symmetric); when a constraint c > 0 is set and ‖Q‖_F over every block (plus 1e-8, as both
 * sources write it) exceeds c, every Q_k is scaled by c / (‖Q‖_F + 1e-8); then the Cayley transform
 * R_k = (I + Q_k)(I − Q_k)⁻¹, which is orthogonal (I − Q is never singular for a skew-symmetric Q). All in f64.
 * Also the pieces both kinds share: the W0 check, the rescale check and a row-block product.
 */
import { LoraError } from '../../core/errors.js';
import { invertSmall } from '../linalg.js';
import { rotateRowsWasm } from '../rotate-wasm.js';
import type { KindOps } from './kind.js';
import { denseFactors, expectShape, viewOf } from './matrix.js';

/** The LyCORIS / ComfyUI guard added to ‖Q‖_F before it is compared with the constraint. */
export const OFT_NORM_EPSILON = 1e-8;

/** ‖Q‖_F over all blocks of Q = B − Bᵀ (count blocks of b × b, row-major). */
export function skewNorm(blocks: ArrayLike<number>, count: number, b: number): number {
  let s = 0;
  for (let k = 0; k < count; k++) {
    const o = k * b * b;
    for (let i = 0; i < b; i++) {
      for (let j = 0; j < b; j++) {
        const q = (blocks[o + i * b + j] ?? 0) - (blocks[o + j * b + i] ?? 0);
        s += q * q;
      }
    }
  }
  return Math.sqrt(s);
}

/** The factor the constraint scales Q by: c / (‖Q‖ + ε) when that norm exceeds c > 0, else 1. */
export function constraintFactor(norm: number, constraint: number): number {
  const n = norm + OFT_NORM_EPSILON;
  return constraint > 0 && n > constraint ? constraint / n : 1;
}

/**
 * R_k = (I + Q_k)(I − Q_k)⁻¹ for every block, Q = factor·(B − Bᵀ) with the constraint's factor; count blocks of
 * b × b, row-major f64.
 */
export function cayleyRotations(blocks: ArrayLike<number>, count: number, b: number, constraint: number): Float64Array {
  const f = constraintFactor(skewNorm(blocks, count, b), constraint);
  const out = new Float64Array(count * b * b);
  const plus = new Float64Array(b * b);
  const minus = new Float64Array(b * b);
  for (let k = 0; k < count; k++) {
    const o = k * b * b;
    for (let i = 0; i < b; i++) {
      for (let j = 0; j < b; j++) {
        const q = f * ((blocks[o + i * b + j] ?? 0) - (blocks[o + j * b + i] ?? 0));
        const id = i === j ? 1 : 0;
        plus[i * b + j] = id + q;
        minus[i * b + j] = id - q;
      }
    }
    // I − Q has eigenvalues 1 − iθ: never singular; the fallback only guards non-finite input.
    const inv = invertSmall(minus, b) ?? new Float64Array(b * b).fill(Number.NaN);
    for (let i = 0; i < b; i++) {
      for (let j = 0; j < b; j++) {
        let s = 0;
        for (let l = 0; l < b; l++) s += (plus[i * b + l] ?? 0) * (inv[l * b + j] ?? 0);
        out[o + i * b + j] = s;
      }
    }
  }
  return out;
}

/** w·R + (1 − w)·I for every block (the per-block strength blend of LyCORIS, kohya and ComfyUI's BOFT). */
export function blendRotations(r: Float64Array, count: number, b: number, w: number): Float64Array {
  if (w === 1) return r;
  const out = new Float64Array(r.length);
  for (let k = 0; k < count; k++) {
    const o = k * b * b;
    for (let i = 0; i < b; i++) {
      for (let j = 0; j < b; j++) out[o + i * b + j] = w * (r[o + i * b + j] ?? 0) + (i === j ? 1 - w : 0);
    }
  }
  return out;
}

/**
 * Multiply b rows of X [*, cols] (f64, in place) by a b × b matrix M: the rows at `rows[0..b)` become
 * Σ_c M[a, c]·X[rows[c]] (or M[c, a] with `transposed`), each value summed from +0 in c order, terms with a zero
 * coefficient skipped. In WebAssembly SIMD (../rotate-wasm.ts, the same bits) where it runs, else
 * rotateRowsScalar.
 */
export function rotateRows(
  x: Float64Array,
  cols: number,
  rows: ArrayLike<number>,
  m: Float64Array,
  mo: number,
  b: number,
  transposed: boolean,
): void {
  if (rotateRowsWasm(x, cols, rows, m, mo, b, transposed)) return;
  rotateRowsScalar(x, cols, rows, m, mo, b, transposed);
}

/** rotateRows in plain JS: the reference the WebAssembly is tested against, and the fallback. */
export function rotateRowsScalar(
  x: Float64Array,
  cols: number,
  rows: ArrayLike<number>,
  m: Float64Array,
  mo: number,
  b: number,
  transposed: boolean,
  tmp: Float64Array = new Float64Array(b * cols),
): void {
  tmp.fill(0, 0, b * cols);
  for (let a = 0; a < b; a++) {
    const t = a * cols;
    for (let c = 0; c < b; c++) {
      const coef = transposed ? (m[mo + c * b + a] ?? 0) : (m[mo + a * b + c] ?? 0);
      if (coef === 0) continue;
      const src = (rows[c] ?? 0) * cols;
      for (let j = 0; j < cols; j++) tmp[t + j] = (tmp[t + j] ?? 0) + coef * (x[src + j] ?? 0);
    }
  }
  for (let a = 0; a < b; a++) x.set(tmp.subarray(a * cols, (a + 1) * cols), (rows[a] ?? 0) * cols);
}

/**
 * W0 after checking it has out·fanIn values (LORA_NEEDS_BASE naming the module when absent): the given array when it
 * is a Float32Array or Float64Array (not copied: its values read as numbers are those of an f64 copy), else an f64
 * copy.
 */
export function baseOf(
  kind: string,
  path: string,
  base: ArrayLike<number> | undefined,
  n: number,
): Float32Array | Float64Array {
  if (!base) {
    throw new LoraError(
      'LORA_NEEDS_BASE',
      `module '${path}': an ${kind} delta rotates the base weight (W' = R·W0), so it needs W0; give the base checkpoint (--base CKPT in merge and convert; fuse reads it from the checkpoint; resolveBaseTerms in the API)`,
      { key: path },
    );
  }
  expectShape(base.length === n, path, `the base weight holds ${base.length} values; expected ${n}`);
  return base instanceof Float32Array || base instanceof Float64Array ? base : Float64Array.from(base);
}

/** The rescale vector, checked to hold one value per output row. */
export function checkRescale(kind: string, path: string, rescale: Float32Array | undefined, out: number): void {
  if (rescale === undefined) return;
  expectShape(
    rescale.length === out,
    path,
    `the ${kind} rescale holds ${rescale.length} values; expected ${out} (one per output row)`,
    rescale.length,
  );
}

/** Δ = diag(rescale)·X − W0 as f32 (X the rotated weight, f64), every value scaled by `w`. */
export function rotatedDelta(
  x: Float64Array,
  w0: ArrayLike<number>,
  rescale: Float32Array | undefined,
  cols: number,
  w = 1,
): Float32Array {
  const out = new Float32Array(x.length);
  deltaRows(x, 0, x.length, w0, rescale, cols, w, out);
  return out;
}

/**
 * out[i] = w·(s_r·x[i − i0] − w0[i]) for i in [i0, i1), s_r the rescale of row r = ⌊i / cols⌋ (1 without one): the
 * values of rotatedDelta for those positions, with x holding the rows from position i0 on. A loop per row instead of
 * a division per value; the same operations per value.
 */
export function deltaRows(
  x: Float64Array,
  i0: number,
  i1: number,
  w0: ArrayLike<number>,
  rescale: Float32Array | undefined,
  cols: number,
  w: number,
  out: Float32Array,
): void {
  let i = i0;
  while (i < i1) {
    const r = Math.floor(i / cols);
    const s = rescale ? (rescale[r] ?? 1) : 1;
    const end = cols > 0 ? Math.min(i1, (r + 1) * cols) : i1;
    for (; i < end; i++) out[i] = w * (s * (x[i - i0] ?? 0) - (w0[i] ?? 0));
  }
}

/**
 * view[i] = f32(view[i] + f32(w·(s_r·x[i − i0] − w0[i]))) for i in [i0, i1): deltaRows' value rounded to f32 as its
 * store does (Math.fround), then added to view and rounded by view's store — what storing the delta and adding it
 * gives, without the delta array. w0 may be view (w0[i] is read before view[i] is written).
 */
export function addDeltaRows(
  x: Float64Array,
  i0: number,
  i1: number,
  w0: ArrayLike<number>,
  rescale: Float32Array | undefined,
  cols: number,
  w: number,
  view: Float32Array,
): void {
  let i = i0;
  while (i < i1) {
    const r = Math.floor(i / cols);
    const s = rescale ? (rescale[r] ?? 1) : 1;
    const end = cols > 0 ? Math.min(i1, (r + 1) * cols) : i1;
    for (; i < end; i++) view[i] = (view[i] as number) + Math.fround(w * (s * (x[i - i0] ?? 0) - (w0[i] ?? 0)));
  }
}

/**
 * The kind operations OFT and BOFT share: a full-rank delta of the base weight, exact factors from the dense delta.
 * `strength` maps the fuse weight to the rotation's (OFT squares it, as ComfyUI does; BOFT blends per stage).
 */
export function rotationKind<T extends { readonly shape: readonly number[] }>(
  label: string,
  check: (t: T, path: string) => { readonly out: number; readonly fanIn: number },
  delta: (t: T, path: string, base: ArrayLike<number> | undefined, w?: number) => Float32Array,
  strength: (w: number) => number,
): KindOps<T> {
  return {
    label,
    needsBase: true,
    shape(t, path) {
      check(t, path);
      return t.shape;
    },
    rankBound(t) {
      const { out, fanIn } = viewOf(t.shape);
      return Math.min(out, fanIn);
    },
    delta: (t, path, base) => delta(t, path, base),
    factors(t, path, base) {
      const { out, fanIn } = check(t, path);
      return denseFactors(delta(t, path, base), out, fanIn);
    },
    weighted: (t, path, w, base) => delta(t, path, base, strength(w)),
  };
}
