/**
 * The hadamard kind (LoHa): Δ = s · (A_up·A_down) ⊙ (B_up·B_down). Its rank is at most r1·r2, and its exact factors
 * are the face-splitting products U[o, (p,q)] = A_up[o,p]·B_up[o,q], D[(p,q), j] = A_down[p,j]·B_down[q,j].
 */
import type { Factors, HadamardTerm } from '../types.js';
import type { KindOps } from './kind.js';
import { expectShape, matrixOf, multiply, viewOf, type PlainFactors } from './matrix.js';

interface Pair {
  readonly up: Float32Array;
  readonly down: Float32Array;
  readonly rank: number;
}

function pairOf(f: Factors, path: string, which: string, out: number, fanIn: number): Pair {
  const u = matrixOf(f.up, path, `${which} up`);
  const d = matrixOf(f.down, path, `${which} down`);
  expectShape(
    u.rows === out && d.cols === fanIn && u.cols === d.rows,
    path,
    `LoHa pair ${which} is [${u.rows}, ${u.cols}]·[${d.rows}, ${d.cols}]; expected [${out}, r]·[r, ${fanIn}]`,
    { up: f.up.shape, down: f.down.shape },
  );
  return { up: u.data, down: d.data, rank: u.cols };
}

/** The two checked factor pairs of a LoHa (w1 = a, w2 = b), contiguous row-major. */
export function hadamardPairs(t: HadamardTerm, path: string): { a: Pair; b: Pair; out: number; fanIn: number } {
  return pairs(t, path);
}

function pairs(t: HadamardTerm, path: string): { a: Pair; b: Pair; out: number; fanIn: number } {
  const { out, fanIn } = viewOf(t.shape);
  return { a: pairOf(t.a, path, 'w1', out, fanIn), b: pairOf(t.b, path, 'w2', out, fanIn), out, fanIn };
}

/** Khatri–Rao factors of the Hadamard product, scale folded into up. */
export function hadamardFactors(t: HadamardTerm, path: string): PlainFactors {
  const { a, b, out, fanIn } = pairs(t, path);
  const rank = a.rank * b.rank;
  const up = new Float32Array(out * rank);
  const down = new Float32Array(rank * fanIn);
  for (let o = 0; o < out; o++) {
    for (let p = 0; p < a.rank; p++) {
      const x = t.scale * (a.up[o * a.rank + p] ?? 0);
      const base = o * rank + p * b.rank;
      for (let q = 0; q < b.rank; q++) up[base + q] = x * (b.up[o * b.rank + q] ?? 0);
    }
  }
  for (let p = 0; p < a.rank; p++) {
    for (let q = 0; q < b.rank; q++) {
      const dst = (p * b.rank + q) * fanIn;
      const ap = p * fanIn,
        bq = q * fanIn;
      for (let j = 0; j < fanIn; j++) down[dst + j] = (a.down[ap + j] ?? 0) * (b.down[bq + j] ?? 0);
    }
  }
  return { up, down, rank };
}

/**
 * view += coef·Δ given the two products p1 = A_up·A_down and p2 = B_up·B_down (f32, from whichever GEMM the
 * caller runs): each element is the value `delta` gives, s·p1·p2 rounded to f32, added once and rounded to f32 —
 * the same bits as adding termDelta's result, without a third dense array.
 */
export function addHadamardProducts(
  view: Float32Array,
  p1: Float32Array,
  p2: Float32Array,
  scale: number,
  coef: number,
): void {
  const n = view.length;
  for (let i = 0; i < n; i++)
    view[i] = (view[i] as number) + coef * Math.fround(scale * (p1[i] as number) * (p2[i] as number));
}

export const hadamardKind: KindOps<HadamardTerm> = {
  label: 'LoHa',
  needsBase: false,
  shape(t, path) {
    pairs(t, path);
    return t.shape;
  },
  rankBound(t, path) {
    const { a, b, out, fanIn } = pairs(t, path);
    return Math.min(a.rank * b.rank, out, fanIn);
  },
  delta(t, path) {
    const { a, b, out, fanIn } = pairs(t, path);
    const m1 = multiply(out, fanIn, a.rank, a.up, a.down);
    const m2 = multiply(out, fanIn, b.rank, b.up, b.down);
    for (let i = 0; i < m1.length; i++) m1[i] = t.scale * (m1[i] ?? 0) * (m2[i] ?? 0);
    return m1;
  },
  factors: hadamardFactors,
  factorRank(t, path) {
    const { a, b } = pairs(t, path);
    return a.rank * b.rank;
  },
};
