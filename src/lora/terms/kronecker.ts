/**
 * The kronecker kind (LoKr): Δ = s · left ⊗ right on the [out, in·kh·kw] view, left [o1, i1], right [o2, i2·kh·kw]:
 * Δ[a·o2 + b, c·(i2·kh·kw) + d] = s·left[a, c]·right[b, d]. rank(Δ) = rank(left)·rank(right), and with
 * left = U1·V1, right = U2·V2 the exact factors are (U1 ⊗ U2)·(V1 ⊗ V2) (mixed-product rule).
 */
import type { KroneckerSide, KroneckerTerm } from '../types.js';
import type { KindOps } from './kind.js';
import { denseFactors, expectShape, matrixOf, multiply, viewOf, type PlainFactors } from './matrix.js';

interface Side {
  readonly rows: number;
  readonly cols: number;
  /** Factors of the side (identity on the shorter side for a full matrix). */
  readonly f: PlainFactors;
}

function sideOf(s: KroneckerSide, path: string, which: string): Side {
  if ('full' in s) {
    const m = matrixOf(s.full, path, `${which} full`);
    return { rows: m.rows, cols: m.cols, f: denseFactors(m.data, m.rows, m.cols) };
  }
  const u = matrixOf(s.up, path, `${which} a`);
  const d = matrixOf(s.down, path, `${which} b`);
  expectShape(
    u.cols === d.rows,
    path,
    `LoKr ${which} factors are [${u.rows}, ${u.cols}]·[${d.rows}, ${d.cols}]; their inner sizes must match`,
    { a: s.up.shape, b: s.down.shape },
  );
  return { rows: u.rows, cols: d.cols, f: { up: u.data, down: d.data, rank: u.cols } };
}

function sides(t: KroneckerTerm, path: string): { l: Side; r: Side; out: number; fanIn: number } {
  const l = sideOf(t.left, path, 'w1');
  const r = sideOf(t.right, path, 'w2');
  const { out, fanIn } = viewOf(t.shape);
  expectShape(
    l.rows * r.rows === out && l.cols * r.cols === fanIn,
    path,
    `LoKr w1 [${l.rows}, ${l.cols}] ⊗ w2 [${r.rows}, ${r.cols}] gives [${l.rows * r.rows}, ${l.cols * r.cols}]; the weight is [${out}, ${fanIn}]`,
    t.shape,
  );
  return { l, r, out, fanIn };
}

/** A ⊗ B of row-major matrices, times s. */
function kron(
  a: Float32Array,
  ar: number,
  ac: number,
  b: Float32Array,
  br: number,
  bc: number,
  s: number,
): Float32Array {
  const cols = ac * bc;
  const out = new Float32Array(ar * br * cols);
  for (let i = 0; i < ar; i++) {
    for (let j = 0; j < ac; j++) {
      const x = s * (a[i * ac + j] ?? 0);
      if (x === 0) continue;
      for (let k = 0; k < br; k++) {
        const dst = (i * br + k) * cols + j * bc;
        const src = k * bc;
        for (let l = 0; l < bc; l++) out[dst + l] = x * (b[src + l] ?? 0);
      }
    }
  }
  return out;
}

function fullOf(s: Side): Float32Array {
  return multiply(s.rows, s.cols, s.f.rank, s.f.up, s.f.down);
}

/**
 * view += coef·Δ for a LoKr, the Kronecker product written straight into the weight's rows: one pass over W, no
 * dense delta. Each element gets the value `delta` gives (s·left[a, c] in f64 times right[b, d], rounded to f32;
 * +0 where s·left[a, c] is 0), added once and rounded to f32 — the same bits as adding termDelta's result.
 */
export function addKronecker(t: KroneckerTerm, path: string, view: Float32Array, coef: number): void {
  const { left, rows, leftCols, right, rightRows, rightCols } = kroneckerSides(t, path);
  const fanIn = leftCols * rightCols;
  for (let a = 0; a < rows; a++) {
    for (let b = 0; b < rightRows; b++) {
      const row = (a * rightRows + b) * fanIn;
      const src = b * rightCols;
      for (let c = 0; c < leftCols; c++) {
        const x = t.scale * (left[a * leftCols + c] as number);
        const dst = row + c * rightCols;
        if (x === 0) {
          for (let d = 0; d < rightCols; d++) view[dst + d] = (view[dst + d] as number) + coef * 0;
          continue;
        }
        for (let d = 0; d < rightCols; d++)
          view[dst + d] = (view[dst + d] as number) + coef * Math.fround(x * (right[src + d] as number));
      }
    }
  }
}

/** The two sides of a LoKr as full f32 matrices (factored sides multiplied out), checked against the weight. */
export function kroneckerSides(
  t: KroneckerTerm,
  path: string,
): { left: Float32Array; rows: number; leftCols: number; right: Float32Array; rightRows: number; rightCols: number } {
  const { l, r } = sides(t, path);
  return { left: fullOf(l), rows: l.rows, leftCols: l.cols, right: fullOf(r), rightRows: r.rows, rightCols: r.cols };
}

export const kroneckerKind: KindOps<KroneckerTerm> = {
  label: 'LoKr',
  needsBase: false,
  shape(t, path) {
    sides(t, path);
    return t.shape;
  },
  rankBound(t, path) {
    const { l, r, out, fanIn } = sides(t, path);
    return Math.min(Math.min(l.f.rank, l.rows, l.cols) * Math.min(r.f.rank, r.rows, r.cols), out, fanIn);
  },
  delta(t, path) {
    const { l, r } = sides(t, path);
    return kron(fullOf(l), l.rows, l.cols, fullOf(r), r.rows, r.cols, t.scale);
  },
  factors(t, path) {
    const { l, r } = sides(t, path);
    // A full side whose factors are identity × itself is already minimal; a factored side keeps its rank.
    const up = kron(l.f.up, l.rows, l.f.rank, r.f.up, r.rows, r.f.rank, t.scale);
    const down = kron(l.f.down, l.f.rank, l.cols, r.f.down, r.f.rank, r.cols, 1);
    return { up, down, rank: l.f.rank * r.f.rank };
  },
  factorRank(t, path) {
    return sideRank(t.left, path, 'w1') * sideRank(t.right, path, 'w2');
  },
};

/** The rank of a side's factors (a full side: its shorter dimension, as denseFactors gives). */
function sideRank(s: KroneckerSide, path: string, which: string): number {
  if ('full' in s) {
    const m = matrixOf(s.full, path, `${which} full`);
    return Math.min(m.rows, m.cols);
  }
  return matrixOf(s.up, path, `${which} a`).cols;
}
