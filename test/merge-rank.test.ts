import ndarray from 'ndarray';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  choleskyWhitening,
  gramRows,
  pivotedCholesky,
  symmetricEigen,
  symmetricEigenvalues,
  xtyToF32,
} from '../src/lora/linalg.js';
import { mergeLoras, rankOf, resizeLora, MERGE_METADATA_KEY } from '../src/lora/index.js';
import type { Lora, LoraModule } from '../src/lora/types.js';
import {
  dense,
  diffNorm,
  frob,
  jacobiEigenvalues,
  makeLora,
  prng,
  randomArray,
  randomModule,
  singularValues,
  values64,
  weightedDense,
} from './lora-helpers.js';

const PATH = 'unet.some.module';

interface Case {
  out: number;
  in: number;
  kernel?: [number, number];
  terms: { rank: number; alpha: number; weight: number; seed: number }[];
}

const caseArb: fc.Arbitrary<Case> = fc
  .record({
    out: fc.integer({ min: 2, max: 24 }),
    in: fc.integer({ min: 2, max: 12 }),
    conv: fc.boolean(),
    terms: fc.array(
      fc.record({
        rank: fc.integer({ min: 1, max: 8 }),
        alpha: fc.double({ min: 0.25, max: 16, noNaN: true }),
        weight: fc.oneof(
          fc.double({ min: -2, max: -0.05, noNaN: true }),
          fc.double({ min: 0.05, max: 2, noNaN: true }),
        ),
        seed: fc.integer({ min: 1, max: 1e9 }),
      }),
      { minLength: 1, maxLength: 3 },
    ),
  })
  .map(({ conv, ...c }) => (conv ? { ...c, kernel: [3, 3] as [number, number] } : c));

function build(c: Case): { loras: Lora[]; weights: number[] } {
  const loras = c.terms.map((t) =>
    makeLora({
      [PATH]: randomModule(prng(t.seed), {
        out: c.out,
        in: c.in,
        rank: t.rank,
        alpha: t.alpha,
        ...(c.kernel ? { kernel: c.kernel } : {}),
      }),
    }),
  );
  return { loras, weights: c.terms.map((t) => t.weight) };
}

describe('rank reduction against a dense reference SVD', () => {
  it('keeps the k largest singular values: error = sqrt(Σ discarded σ²), as the dense SVD says', () => {
    fc.assert(
      fc.property(caseArb, fc.integer({ min: 1, max: 24 }), (c, kRaw) => {
        const { loras, weights } = build(c);
        const exact = weightedDense(loras, weights, PATH)!;
        const n = exact.length / c.out;
        const sigma = singularValues(exact, c.out, n);
        const R = c.terms.reduce((s, t) => s + t.rank, 0);
        const k = Math.min(kRaw, R);
        const { lora, report } = mergeLoras(loras, weights, { rank: k });
        const m = report.modules[0]!;
        const norm = frob(exact);
        const sigma1 = sigma[0]!;
        let discarded = 0;
        for (let j = k; j < sigma.length; j++) discarded += sigma[j]! ** 2;
        const refError = Math.sqrt(discarded);
        const tol = 1e-6 * Math.max(sigma1, 1e-30);
        expect(Math.abs(m.error - refError)).toBeLessThan(tol);
        // The spectrum is computed only when the rank must shrink.
        if (k < R) expect(Math.abs(m.norm! - norm)).toBeLessThan(tol);
        else expect(m).toMatchObject({ rankAfter: R, error: 0, normKept: 1 });
        expect(m.rankBefore).toBe(R);
        const got = lora.modules.get(PATH);
        if (got === undefined) {
          expect(m.dropped).toBe('zero-delta');
          return;
        }
        // The written factors really are that approximation.
        const actual = diffNorm(dense(got).data, exact);
        expect(Math.abs(actual - refError)).toBeLessThan(1e-5 * Math.max(sigma1, 1e-30));
        expect(Math.abs(m.normKept - frob(dense(got).data) / norm)).toBeLessThan(1e-5);
        expect(rankOf(got)).toBe(m.rankAfter);
        expect(m.rankAfter).toBeLessThanOrEqual(k);
        expect(got.alpha).toBe(m.rankAfter);
        if (m.rankAfter < k) {
          // Fewer than k only when the rest of the spectrum is numerically zero.
          expect(sigma[m.rankAfter] ?? 0).toBeLessThan(1e-6 * sigma1);
        }
        const shapeDown = c.kernel ? [m.rankAfter, c.in, 3, 3] : [m.rankAfter, c.in];
        expect(got.down.shape).toEqual(shapeDown);
        expect(got.up.shape.slice(0, 2)).toEqual([c.out, m.rankAfter]);
      }),
      { numRuns: 80 },
    );
  });

  it('reproduces the delta when k ≥ its true rank, even when the stacked factors are rank-deficient', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1e9 }),
        fc.integer({ min: 1, max: 5 }),
        fc.double({ min: -2, max: 2, noNaN: true }),
        (seed, r, w) => {
          const rand = prng(seed);
          const base = randomModule(rand, { out: 20, in: 15, rank: r, alpha: 2 });
          const other = randomModule(rand, { out: 20, in: 15, rank: 2, alpha: 1 });
          // Terms: τ, w·τ (same directions) and an independent rank-2 term: true rank r + 2 < R = 2r + 2.
          const loras = [makeLora({ [PATH]: base }), makeLora({ [PATH]: base }), makeLora({ [PATH]: other })];
          const weights = [1, w === -1 ? -0.5 : w, 0.7];
          const exact = weightedDense(loras, weights, PATH)!;
          const { lora, report } = mergeLoras(loras, weights, { rank: r + 2 });
          const got = lora.modules.get(PATH)!;
          expect(diffNorm(dense(got).data, exact) / frob(exact)).toBeLessThan(1e-5);
          expect(report.modules[0]!.rankAfter).toBe(r + 2);
          expect(report.modules[0]!.normKept).toBeCloseTo(1, 6);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('keeps the exact factors when the target rank is at least the merged rank', () => {
    const { loras, weights } = build({
      out: 9,
      in: 7,
      terms: [
        { rank: 3, alpha: 2, weight: 0.5, seed: 1 },
        { rank: 2, alpha: 4, weight: -1, seed: 2 },
      ],
    });
    const exact = mergeLoras(loras, weights).lora.modules.get(PATH)!;
    for (const options of [{ rank: 5 }, { rank: 64 }]) {
      const { lora, report } = mergeLoras(loras, weights, options);
      const got = lora.modules.get(PATH)!;
      expect(Array.from(got.up.data)).toEqual(Array.from(exact.up.data));
      expect(Array.from(got.down.data)).toEqual(Array.from(exact.down.data));
      expect(report.modules[0]).toMatchObject({ rankBefore: 5, rankAfter: 5, normKept: 1, error: 0 });
    }
  });

  it('minEnergy picks the smallest k whose kept norm fraction reaches it', () => {
    fc.assert(
      fc.property(caseArb, fc.double({ min: 0.05, max: 1, noNaN: true }), (c, e) => {
        const { loras, weights } = build(c);
        const exact = weightedDense(loras, weights, PATH)!;
        const sigma = singularValues(exact, c.out, exact.length / c.out);
        const total = sigma.reduce((s, v) => s + v * v, 0);
        const { report } = mergeLoras(loras, weights, { minEnergy: e });
        const m = report.modules[0]!;
        if (m.dropped) return;
        const keptFraction = (k: number) => Math.sqrt(sigma.slice(0, k).reduce((s, v) => s + v * v, 0) / total);
        expect(m.normKept).toBeGreaterThanOrEqual(e - 1e-6);
        expect(Math.abs(m.normKept - keptFraction(m.rankAfter))).toBeLessThan(1e-6);
        if (m.rankAfter > 1 && m.rankAfter < m.rankBefore) expect(keptFraction(m.rankAfter - 1)).toBeLessThan(e + 1e-6);
      }),
      { numRuns: 60 },
    );
  });

  it('rank caps minEnergy when both are given', () => {
    const { loras, weights } = build({
      out: 16,
      in: 12,
      terms: [
        { rank: 6, alpha: 6, weight: 1, seed: 3 },
        { rank: 4, alpha: 2, weight: 1, seed: 4 },
      ],
    });
    const { report } = mergeLoras(loras, weights, { rank: 3, minEnergy: 1 });
    expect(report.modules[0]!.rankAfter).toBe(3);
    expect(report.exact).toBe(false);
  });

  it('splits the kept singular values evenly between up and down (balanced factors)', () => {
    const { loras, weights } = build({
      out: 14,
      in: 11,
      terms: [
        { rank: 5, alpha: 1, weight: 3, seed: 8 },
        { rank: 4, alpha: 9, weight: -0.2, seed: 9 },
      ],
    });
    const { lora } = mergeLoras(loras, weights, { rank: 4 });
    const m = lora.modules.get(PATH)!;
    const up = values64(m.up),
      down = values64(m.down);
    const sigma = singularValues(weightedDense(loras, weights, PATH)!, 14, 11);
    for (let j = 0; j < 4; j++) {
      let cu = 0,
        rd = 0;
      for (let o = 0; o < 14; o++) cu += up[o * 4 + j]! ** 2;
      for (let i = 0; i < 11; i++) rd += down[j * 11 + i]! ** 2;
      expect(Math.sqrt(cu)).toBeCloseTo(Math.sqrt(sigma[j]!), 4);
      expect(Math.sqrt(rd)).toBeCloseTo(Math.sqrt(sigma[j]!), 4);
    }
  });

  it('drops a module whose merged delta is zero (τ − τ) when reducing', () => {
    const { loras } = build({ out: 8, in: 6, terms: [{ rank: 3, alpha: 3, weight: 1, seed: 5 }] });
    const { lora, report } = mergeLoras([loras[0]!, loras[0]!], [1, -1], { rank: 2 });
    expect(lora.modules.size).toBe(0);
    expect(report.dropped).toEqual([{ path: PATH, reason: 'zero-delta' }]);
  });

  it('keeps a module whose weight delta reduces to zero but whose bias delta does not (zero factors, the bias)', () => {
    const m = randomModule(prng(7), { out: 8, in: 6, rank: 3, alpha: 6 });
    const b1 = Float32Array.from({ length: 8 }, (_, i) => i + 1);
    const b2 = Float32Array.from({ length: 8 }, (_, i) => 0.5 * (i + 1) - 1);
    const a = makeLora({ [PATH]: { ...m, bias: ndarray(b1, [8]) } });
    const b = makeLora({ [PATH]: { ...m, bias: ndarray(b2, [8]) } });
    for (const options of [{ rank: 2 }, { minEnergy: 0.9 }]) {
      const { lora, report } = mergeLoras([a, b], [1, -1], options);
      const kept = lora.modules.get(PATH);
      expect(kept).toBeDefined();
      expect(report.dropped).toEqual([]);
      expect(report.modules[0]).toMatchObject({ path: PATH, rankAfter: 1, biasOnly: true });
      // The weight delta is zero; the bias delta is Σ λ·(alpha/r)·bias = 2·(b1 − b2), stored at scale 1.
      expect(dense(kept!).data.every((x) => x === 0)).toBe(true);
      expect(kept!.alpha / (kept!.down.shape[0] ?? 1)).toBe(1);
      expect([...kept!.bias!.data]).toEqual([...b1].map((x, i) => 2 * (x - (b2[i] ?? 0))));
    }
    // Equal biases too: nothing is left, the module is dropped as before.
    const same = mergeLoras([a, a], [1, -1], { rank: 2 });
    expect(same.report.dropped).toEqual([{ path: PATH, reason: 'zero-delta' }]);
  });
});

describe('non-finite factors', () => {
  it('a rank reduction over NaN or Inf factors fails with LORA_NUMERICAL_FAILURE naming the module', () => {
    for (const bad of [Number.NaN, Infinity]) {
      const m = randomModule(prng(3), { out: 6, in: 5, rank: 3 });
      m.down.data[4] = bad;
      const l = makeLora({ [PATH]: m });
      expect(() => mergeLoras([l, l], [1, 0.5], { rank: 2 })).toThrow(
        expect.objectContaining({
          code: 'LORA_NUMERICAL_FAILURE',
          message: expect.stringContaining(PATH),
        }),
      );
    }
  });
});

describe('resizeLora', () => {
  it('reduces one LoRA, sets alpha = new rank and drops stale rank metadata', () => {
    const rand = prng(77);
    const a: LoraModule = randomModule(rand, { out: 12, in: 10, rank: 6, alpha: 3 });
    const b: LoraModule = randomModule(rand, { out: 8, in: 5, rank: 2, alpha: 1 });
    const lora = makeLora({ 'unet.a': a, 'unet.b': b }, 'sd15', 'tiny', { ss_network_dim: '6', ss_output_name: 'x' });
    const { lora: out, report } = resizeLora(lora, 4);
    expect(rankOf(out.modules.get('unet.a')!)).toBe(4);
    expect(out.modules.get('unet.a')!.alpha).toBe(4);
    expect(rankOf(out.modules.get('unet.b')!)).toBe(2);
    expect(diffNorm(dense(out.modules.get('unet.b')!).data, dense(b).data) / frob(dense(b).data)).toBeLessThan(1e-6);
    const sigma = singularValues(dense(a).data, 12, 10);
    const err = Math.sqrt(sigma.slice(4).reduce((s, v) => s + v * v, 0));
    expect(report.modules.find((m) => m.path === 'unet.a')!.error).toBeCloseTo(err, 6);
    expect(out.metadata.ss_network_dim).toBeUndefined();
    expect(out.metadata.ss_output_name).toBe('x');
    expect(JSON.parse(out.metadata[MERGE_METADATA_KEY]!).rank).toBe(4);
    expect(() => resizeLora(lora, {})).toThrow(expect.objectContaining({ code: 'OPTION_INVALID' }));
  });
});

describe('linalg kernels', () => {
  const dims = fc.record({
    rows: fc.integer({ min: 1, max: 13 }),
    len: fc.integer({ min: 1, max: 37 }),
    seed: fc.integer({ min: 1, max: 1e9 }),
  });

  it('gramRows equals the naive X·Xᵀ and is exactly symmetric', () => {
    fc.assert(
      fc.property(dims, ({ rows, len, seed }) => {
        const X = Float64Array.from(randomArray(prng(seed), rows * len));
        const G = new Float64Array(rows * rows);
        gramRows(X, rows, len, G);
        for (let a = 0; a < rows; a++)
          for (let b = 0; b < rows; b++) {
            let s = 0;
            for (let i = 0; i < len; i++) s += X[a * len + i]! * X[b * len + i]!;
            expect(G[a * rows + b]).toBeCloseTo(s, 10);
            expect(G[a * rows + b]).toBe(G[b * rows + a]);
          }
      }),
      { numRuns: 50 },
    );
  });

  it('xtyToF32 equals the naive Xᵀ·Y', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 11 }),
        fc.integer({ min: 1, max: 10 }),
        fc.integer({ min: 1, max: 1e9 }),
        (r, p, q, seed) => {
          const rand = prng(seed);
          const X = Float64Array.from(randomArray(rand, r * p)),
            Y = Float64Array.from(randomArray(rand, r * q));
          const C = new Float32Array(p * q);
          xtyToF32(X, Y, r, p, q, C);
          for (let i = 0; i < p; i++)
            for (let j = 0; j < q; j++) {
              let s = 0;
              for (let a = 0; a < r; a++) s += X[a * p + i]! * Y[a * q + j]!;
              expect(C[i * q + j]).toBeCloseTo(Math.fround(s), 5);
            }
        },
      ),
      { numRuns: 50 },
    );
  });

  it('pivotedCholesky gives FᵀF = G with F of the numerical rank, also for rank-deficient G', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: 1e9 }),
        (n, r, seed) => {
          const rand = prng(seed);
          const B = Float64Array.from(randomArray(rand, r * n)); // G = BᵀB has rank min(r, n)
          for (let j = 0; j < n; j++) {
            const s = 10 ** (rand() * 6 - 3);
            for (let i = 0; i < r; i++) B[i * n + j] = B[i * n + j]! * s;
          }
          const G = new Float64Array(n * n);
          for (let a = 0; a < n; a++)
            for (let b = 0; b < n; b++) {
              let s = 0;
              for (let i = 0; i < r; i++) s += B[i * n + a]! * B[i * n + b]!;
              G[a * n + b] = s;
            }
          const { rank, factor } = pivotedCholesky(G, n);
          expect(rank).toBe(Math.min(r, n));
          for (let a = 0; a < n; a++)
            for (let b = 0; b < n; b++) {
              let s = 0;
              for (let k = 0; k < rank; k++) s += factor[k * n + a]! * factor[k * n + b]!;
              expect(Math.abs(s - G[a * n + b]!)).toBeLessThan(
                1e-9 * Math.sqrt(G[a * n + a]! * G[b * n + b]!) + 1e-300,
              );
            }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('symmetricEigen: A·v = λ·v, orthonormal vectors, descending values equal to a Jacobi reference', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 16 }),
        fc.integer({ min: 1, max: 1e9 }),
        fc.boolean(),
        (n, seed, clustered) => {
          const rand = prng(seed);
          const A = new Float64Array(n * n);
          for (let i = 0; i < n; i++)
            for (let j = i; j < n; j++) {
              const v = clustered ? (i === j ? Math.round(rand() * 2) : 1e-9 * (rand() - 0.5)) : rand() - 0.5;
              A[i * n + j] = v;
              A[j * n + i] = v;
            }
          const { values, vectors } = symmetricEigen(A, n);
          const ref = jacobiEigenvalues(A, n);
          const only = symmetricEigenvalues(A, n);
          for (let j = 0; j < n; j++) {
            expect(Math.abs(values[j]! - ref[j]!)).toBeLessThan(1e-10);
            expect(Math.abs(only[j]! - ref[j]!)).toBeLessThan(1e-10);
            if (j > 0) expect(values[j]!).toBeLessThanOrEqual(values[j - 1]!);
            for (let i = 0; i < n; i++) {
              let s = 0;
              for (let l = 0; l < n; l++) s += A[i * n + l]! * vectors[j * n + l]!;
              expect(Math.abs(s - values[j]! * vectors[j * n + i]!)).toBeLessThan(1e-10);
            }
            for (let k = 0; k <= j; k++) {
              let d = 0;
              for (let l = 0; l < n; l++) d += vectors[j * n + l]! * vectors[k * n + l]!;
              expect(Math.abs(d - (j === k ? 1 : 0))).toBeLessThan(1e-10);
            }
          }
        },
      ),
      { numRuns: 80 },
    );
  });

  it('choleskyWhitening: L⁻¹·X has orthonormal rows for a well-conditioned Gram matrix, null for a singular one', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 1, max: 1e9 }), (r, seed) => {
        const rand = prng(seed);
        const len = r + 5;
        const X = randomArray(rand, r * len, 1);
        const G = new Float64Array(r * r);
        gramRows(Float64Array.from(X), r, len, G);
        const w = choleskyWhitening(G, r);
        expect(w).not.toBeNull();
        const Q = new Float64Array(r * len);
        for (let i = 0; i < r; i++)
          for (let t = 0; t < r; t++)
            for (let c = 0; c < len; c++) Q[i * len + c]! += w!.inverse[i * r + t]! * X[t * len + c]!;
        const QQ = new Float64Array(r * r);
        gramRows(Q, r, len, QQ);
        for (let i = 0; i < r; i++)
          for (let j = 0; j < r; j++) expect(Math.abs(QQ[i * r + j]! - (i === j ? 1 : 0))).toBeLessThan(1e-9);
        expect(w!.spread).toBeGreaterThan(0);
        expect(w!.spread).toBeLessThanOrEqual(1);
        if (r >= 2) {
          // A repeated row: the Gram matrix is singular.
          const Y = Float64Array.from(X);
          Y.copyWithin(len, 0, len);
          gramRows(Y, r, len, G);
          expect(choleskyWhitening(G, r)).toBeNull();
        }
      }),
      { numRuns: 60 },
    );
  });
});
