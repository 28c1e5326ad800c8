/**
 * The term algebra: every kind's dense delta against an independent f64 transcription of the upstream formula
 * (LyCORIS / ComfyUI / PEFT), exact factors reproducing the delta with the stated rank, merges of w and −w giving
 * zero, and the errors for shapes that do not fit.
 */
import fc from 'fast-check';
import ndarray from 'ndarray';
import { describe, expect, it } from 'vitest';
import {
  asLowRank,
  mergeLoras,
  stackFactors,
  termDelta,
  termFactors,
  termRankBound,
  termShape,
  type DoraTerm,
  type GloraTerm,
  type HadamardTerm,
  type KroneckerTerm,
  type Lora,
  type Term,
} from '../src/index.js';
import { prng, randomArray } from './lora-helpers.js';

const nd = (rand: () => number, shape: number[], scale = 0.5) =>
  ndarray(
    randomArray(
      rand,
      shape.reduce((a, b) => a * b, 1),
      scale,
    ),
    shape,
  );

/** Reference f64 product of row-major matrices. */
function mm(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let t = 0; t < k; t++)
      for (let j = 0; j < n; j++) c[i * n + j] = c[i * n + j]! + a[i * k + t]! * b[t * n + j]!;
  return c;
}

/** Numerical rank of a dense matrix by Gaussian elimination with full pivoting (f64). */
function numericRank(a: ArrayLike<number>, m: number, n: number): number {
  const x = Float64Array.from(a);
  let max = 0;
  for (const v of x) max = Math.max(max, Math.abs(v));
  const tol = max * 1e-5 * Math.max(m, n);
  let rank = 0;
  const rowUsed = new Array<boolean>(m).fill(false);
  const colUsed = new Array<boolean>(n).fill(false);
  for (;;) {
    let best = tol,
      bi = -1,
      bj = -1;
    for (let i = 0; i < m; i++)
      if (!rowUsed[i])
        for (let j = 0; j < n; j++)
          if (!colUsed[j] && Math.abs(x[i * n + j]!) > best) {
            best = Math.abs(x[i * n + j]!);
            bi = i;
            bj = j;
          }
    if (bi < 0) return rank;
    rowUsed[bi] = true;
    colUsed[bj] = true;
    rank++;
    for (let i = 0; i < m; i++) {
      if (rowUsed[i]) continue;
      const f = x[i * n + bj]! / x[bi * n + bj]!;
      for (let j = 0; j < n; j++) x[i * n + j]! -= f * x[bi * n + j]!;
    }
  }
}

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, rel = 1e-5): void {
  expect(actual.length).toBe(expected.length);
  let scale = 0,
    err = 0;
  for (let i = 0; i < expected.length; i++) {
    scale = Math.max(scale, Math.abs(expected[i]!));
    err = Math.max(err, Math.abs(actual[i]! - expected[i]!));
  }
  expect(err).toBeLessThanOrEqual(rel * Math.max(scale, 1e-30));
}

function product(t: Term, path: string, base?: Float32Array): Float64Array {
  const f = termFactors(t, path, base);
  const [out] = termShape(t, path);
  return mm(f.up, f.down, out!, f.rank, f.down.length / Math.max(f.rank, 1));
}

function loha(seed: number, out: number, fanIn: number, r1: number, r2: number, shape?: number[]): HadamardTerm {
  const rand = prng(seed);
  return {
    kind: 'hadamard',
    shape: shape ?? [out, fanIn],
    scale: 0.75,
    a: { up: nd(rand, [out, r1]), down: nd(rand, [r1, fanIn]) },
    b: { up: nd(rand, [out, r2]), down: nd(rand, [r2, fanIn]) },
  };
}

describe('hadamard (LoHa)', () => {
  it('delta is s·(w1a·w1b) ⊙ (w2a·w2b), and the Khatri–Rao factors reproduce it with rank r1·r2', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1e6 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 4 }),
        (seed, r1, r2) => {
          const t = loha(seed, 24, 20, r1, r2);
          const p1 = mm(t.a.up.data, t.a.down.data, 24, r1, 20);
          const p2 = mm(t.b.up.data, t.b.down.data, 24, r2, 20);
          const ref = p1.map((v, i) => 0.75 * v * p2[i]!);
          close(termDelta(t, 'm'), ref);
          const f = termFactors(t, 'm');
          expect(f.rank).toBe(r1 * r2);
          close(product(t, 'm'), ref);
          expect(numericRank(ref, 24, 20)).toBeLessThanOrEqual(r1 * r2);
          expect(termRankBound(t, 'm')).toBe(Math.min(r1 * r2, 20));
        },
      ),
      { numRuns: 12 },
    );
  });

  it('a conv LoHa keeps its 4-D shape through asLowRank', () => {
    const t = loha(3, 8, 4 * 9, 2, 2, [8, 4, 3, 3]);
    const m = asLowRank(t, 'conv');
    expect(m.down.shape).toEqual([4, 4, 3, 3]);
    expect(m.up.shape).toEqual([8, 4, 1, 1]);
  });

  it('a pair that does not fit the weight is LORA_SHAPE_MISMATCH naming the module', () => {
    const t = loha(1, 8, 6, 2, 2);
    const bad: HadamardTerm = { ...t, b: { up: t.b.up, down: nd(prng(2), [3, 6]) } };
    expect(() => termDelta(bad, 'unet.x.to_q')).toThrow(/unet\.x\.to_q/);
    expect(() => termDelta(bad, 'unet.x.to_q')).toThrow(expect.objectContaining({ code: 'LORA_SHAPE_MISMATCH' }));
  });
});

describe('kronecker (LoKr)', () => {
  const kron = (seed: number, factoredLeft: boolean, factoredRight: boolean): KroneckerTerm => {
    const rand = prng(seed);
    return {
      kind: 'kronecker',
      shape: [4 * 6, 3 * 5],
      scale: 1.5,
      left: factoredLeft ? { up: nd(rand, [4, 2]), down: nd(rand, [2, 3]) } : { full: nd(rand, [4, 3]) },
      right: factoredRight ? { up: nd(rand, [6, 2]), down: nd(rand, [2, 5]) } : { full: nd(rand, [6, 5]) },
    };
  };
  const full = (s: KroneckerTerm['left'], r: number, c: number): Float64Array =>
    'full' in s ? Float64Array.from(s.full.data) : mm(s.up.data, s.down.data, r, s.up.shape[1]!, c);

  for (const [fl, fr] of [
    [false, false],
    [false, true],
    [true, false],
    [true, true],
  ] as const) {
    it(`Δ[a·o2+b, c·i2+d] = s·w1[a,c]·w2[b,d] (w1 ${fl ? 'factored' : 'full'}, w2 ${fr ? 'factored' : 'full'}); factors have rank rank(w1)·rank(w2)`, () => {
      const t = kron(7, fl, fr);
      const w1 = full(t.left, 4, 3);
      const w2 = full(t.right, 6, 5);
      const ref = new Float64Array(24 * 15);
      for (let a = 0; a < 4; a++)
        for (let b = 0; b < 6; b++)
          for (let c = 0; c < 3; c++)
            for (let d = 0; d < 5; d++) ref[(a * 6 + b) * 15 + c * 5 + d] = 1.5 * w1[a * 3 + c]! * w2[b * 5 + d]!;
      close(termDelta(t, 'm'), ref);
      close(product(t, 'm'), ref);
      const r1 = fl ? 2 : 3;
      const r2 = fr ? 2 : 5;
      expect(termFactors(t, 'm').rank).toBe(r1 * r2);
      expect(numericRank(ref, 24, 15)).toBe(r1 * r2);
    });
  }
});

describe('dense, DoRA and GLoRA', () => {
  it('a dense term gives back its diff, and identity factors on the short side reproduce it', () => {
    const rand = prng(11);
    const delta = nd(rand, [6, 4, 3, 3]);
    const t: Term = { kind: 'dense', shape: [6, 4, 3, 3], delta };
    close(termDelta(t, 'm'), delta.data);
    expect(termFactors(t, 'm').rank).toBe(6);
    close(product(t, 'm'), delta.data);
  });

  for (const axis of ['out', 'in'] as const) {
    it(`DoRA (${axis} axis) is m·V/‖V‖ − W0 with V = W0 + sBA, the norm of V (not of W0)`, () => {
      const rand = prng(axis === 'out' ? 21 : 22);
      const [out, inn, k] = [5, 3, 4];
      const fanIn = inn * k;
      const inner = { down: nd(rand, [2, inn, 2, 2]), up: nd(rand, [out, 2, 1, 1]), alpha: 1 };
      const channels = axis === 'out' ? out : inn;
      const magnitude = randomArray(rand, channels, 1).map((x) => 1 + Math.abs(x));
      const t: DoraTerm = { kind: 'dora', shape: [out, inn, 2, 2], inner, magnitude, axis };
      const w0 = randomArray(rand, out * fanIn, 1);
      const ba = mm(inner.up.data, inner.down.data, out, 2, fanIn);
      const v = Float64Array.from(w0, (x, i) => x + 0.5 * ba[i]!);
      const norm = new Float64Array(channels);
      for (let o = 0; o < out; o++)
        for (let j = 0; j < fanIn; j++) {
          const c = axis === 'out' ? o : Math.floor(j / k);
          norm[c] = norm[c]! + v[o * fanIn + j]! ** 2;
        }
      const ref = v.map((x, i) => {
        const c = axis === 'out' ? Math.floor(i / fanIn) : Math.floor((i % fanIn) / k);
        return (magnitude[c]! * x) / Math.sqrt(norm[c]!) - w0[i]!;
      });
      close(termDelta(t, 'm', w0), ref, 1e-5);
      close(product(t, 'm', w0), ref, 1e-5);
      expect(() => termDelta(t, 'unet.a.b')).toThrow(expect.objectContaining({ code: 'LORA_NEEDS_BASE' }));
    });
  }

  it('GLoRA is s·(W0·a1·a2 + b1·b2) (linear) and its factors [W0·a1 | b1]·[a2; b2] have rank 2r', () => {
    const rand = prng(31);
    const [out, inn, r] = [7, 6, 2];
    const t: GloraTerm = {
      kind: 'glora',
      shape: [out, inn],
      scale: 0.5,
      a1: nd(rand, [inn, r]),
      a2: nd(rand, [r, inn]),
      b1: nd(rand, [out, r]),
      b2: nd(rand, [r, inn]),
    };
    const w0 = randomArray(rand, out * inn, 1);
    const wa = mm(mm(w0, t.a1.data, out, inn, r), t.a2.data, out, r, inn);
    const bb = mm(t.b1.data, t.b2.data, out, r, inn);
    const ref = wa.map((x, i) => 0.5 * (x + bb[i]!));
    close(termDelta(t, 'm', w0), ref);
    expect(termFactors(t, 'm', w0).rank).toBe(2 * r);
    close(product(t, 'm', w0), ref);
  });

  it('GLoRA on a conv mixes the input channels of W0 at every kernel position', () => {
    const rand = prng(32);
    const [out, inn, r, K] = [4, 3, 2, 9];
    const t: GloraTerm = {
      kind: 'glora',
      shape: [out, inn, 3, 3],
      scale: 1,
      a1: nd(rand, [inn, r, 1, 1]),
      a2: nd(rand, [r, inn, 1, 1]),
      b1: nd(rand, [out, r, 1, 1]),
      b2: nd(rand, [r, inn, 3, 3]),
    };
    const w0 = randomArray(rand, out * inn * K, 1);
    const m = mm(t.a1.data, t.a2.data, inn, r, inn);
    const bb = mm(t.b1.data, t.b2.data, out, r, inn * K);
    const ref = new Float64Array(out * inn * K);
    for (let o = 0; o < out; o++)
      for (let j = 0; j < inn; j++)
        for (let k = 0; k < K; k++) {
          let s = 0;
          for (let i = 0; i < inn; i++) s += w0[o * inn * K + i * K + k]! * m[i * inn + j]!;
          ref[o * inn * K + j * K + k] = s + bb[o * inn * K + j * K + k]!;
        }
    close(termDelta(t, 'm', w0), ref);
  });
  it('GLoRA deltas are the f64 value rounded once to f32 (no f32 sums over the input channels), linear and conv', () => {
    // A wide layer with large factors whose terms cancel (Δ ≈ 20× the weight, entries near zero): an f32 sum over
    // 512 input channels misses the f64 value by many ulps here; one rounding of an f64 sum does not.
    const rand = prng(33);
    for (const [inn, K] of [
      [512, 1],
      [96, 9],
    ] as const) {
      const [out, r] = [24, 4];
      const shape = K === 1 ? [out, inn] : [out, inn, 3, 3];
      const t: GloraTerm = {
        kind: 'glora',
        shape,
        scale: 0.75,
        a1: nd(rand, K === 1 ? [inn, r] : [inn, r, 1, 1], 3),
        a2: nd(rand, K === 1 ? [r, inn] : [r, inn, 1, 1], 3),
        b1: nd(rand, K === 1 ? [out, r] : [out, r, 1, 1], 3),
        b2: nd(rand, K === 1 ? [r, inn] : [r, inn, 3, 3], 3),
      };
      const w0 = randomArray(rand, out * inn * K, 1);
      const m = mm(t.a1.data, t.a2.data, inn, r, inn);
      const bb = mm(t.b1.data, t.b2.data, out, r, inn * K);
      const d = termDelta(t, 'm', w0);
      let worst = 0;
      for (let o = 0; o < out; o++)
        for (let j = 0; j < inn; j++)
          for (let k = 0; k < K; k++) {
            let x = 0;
            for (let i = 0; i < inn; i++) x += w0[o * inn * K + i * K + k]! * m[i * inn + j]!;
            const at = o * inn * K + j * K + k;
            const ref = 0.75 * (x + bb[at]!);
            // ulps of f32 at the reference's magnitude
            const ulp = 2 ** (Math.floor(Math.log2(Math.abs(ref) || 2 ** -149)) - 23);
            worst = Math.max(worst, Math.abs(d[at]! - ref) / ulp);
          }
      expect(worst, `in ${inn}, kernel ${K}`).toBeLessThanOrEqual(1);
    }
  });
});

describe('merging kinds', () => {
  const loraOf = (modules: Map<string, Term>): Lora<Term> => ({ arch: 'sd15', size: 'tiny', modules, metadata: {} });

  it('a kind with weight w and then −w merges to zero, exactly as factors', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1e6 }), fc.double({ min: 0.1, max: 3, noNaN: true }), (seed, w) => {
        const t = loha(seed, 12, 10, 2, 3);
        const l = loraOf(new Map([['unet.m', t]]));
        const { lora } = mergeLoras([l, l], [w, -w]);
        const m = lora.modules.get('unet.m')!;
        const d = mm(m.up.data, m.down.data, 12, m.up.shape[1]!, 10);
        for (const x of d) expect(Math.abs(x)).toBeLessThan(1e-12);
      }),
      { numRuns: 8 },
    );
  });

  it('a merge of a LoRA, a LoHa and a LoKr is the weighted sum of their deltas', () => {
    const rand = prng(41);
    const lr = { down: nd(rand, [3, 10]), up: nd(rand, [12, 3]), alpha: 1.5 };
    const h = loha(42, 12, 10, 2, 2);
    const k: KroneckerTerm = {
      kind: 'kronecker',
      shape: [12, 10],
      scale: 2,
      left: { full: nd(rand, [3, 2]) },
      right: { up: nd(rand, [4, 1]), down: nd(rand, [1, 5]) },
    };
    const { lora, report } = mergeLoras(
      [loraOf(new Map([['unet.m', lr]])), loraOf(new Map([['unet.m', h]])), loraOf(new Map([['unet.m', k]]))],
      [0.5, -1, 2],
    );
    const ref = new Float64Array(120);
    const parts: [Term, number][] = [
      [lr, 0.5],
      [h, -1],
      [k, 2],
    ];
    for (const [t, w] of parts) {
      const d = termDelta(t, 'm');
      for (let i = 0; i < d.length; i++) ref[i] = ref[i]! + w * d[i]!;
    }
    const m = lora.modules.get('unet.m')!;
    close(mm(m.up.data, m.down.data, 12, m.up.shape[1]!, 10), ref);
    expect(report.exact).toBe(true);
    expect(m.alpha).toBe(3 + 4 + 2);
  });

  it('a DoRA in a merge without a base is LORA_NEEDS_BASE naming the module', () => {
    const rand = prng(51);
    const t: DoraTerm = {
      kind: 'dora',
      shape: [4, 3],
      inner: { down: nd(rand, [1, 3]), up: nd(rand, [4, 1]), alpha: 1 },
      magnitude: new Float32Array(4).fill(1),
      axis: 'out',
    };
    expect(() => mergeLoras([loraOf(new Map([['unet.dora_module', t]]))], [1])).toThrow(/unet\.dora_module/);
  });

  it('stackFactors is Σ c·up·down', () => {
    const rand = prng(61);
    const a = { coef: 2, rank: 2, up: randomArray(rand, 8), down: randomArray(rand, 6) };
    const b = { coef: -0.5, rank: 1, up: randomArray(rand, 4), down: randomArray(rand, 3) };
    const s = stackFactors([a, b], 4, 3);
    const ref = mm(a.up, a.down, 4, 2, 3).map((x, i) => 2 * x - 0.5 * mm(b.up, b.down, 4, 1, 3)[i]!);
    close(mm(s.up, s.down, 4, 3, 3), ref);
  });
});
