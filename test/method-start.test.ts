/**
 * The factor start of the merge methods' truncated SVD (src/lora/method-module.ts factorStartBasis, svd.ts
 * `startLeft`): the start spans the dominant left subspace of the inputs' linear merge, and the SVD started from it
 * stays within 0.1% of the Eckart–Young optimum on TIES results and on matrices whose dominant directions lie
 * outside the factors' span.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  factorStartBasis,
  METHOD_SVD_OPTIONS,
  methodDelta,
  methodModule,
  type MethodModuleRequest,
} from '../src/lora/method-module.js';
import { jsProduct, truncatedSvd } from '../src/lora/svd.js';
import { optimalError, prng, productError, randomArray, singularValues } from './lora-helpers.js';

/** Two rank-r inputs with decaying factor columns (a spectrum like a trained LoRA's), TIES at `density`. */
function tiesRequest(seed: number, out: number, fanIn: number, r: number, density: number): MethodModuleRequest {
  const rand = prng(seed);
  const member = (input: number) => {
    const up = randomArray(rand, out * r, 1);
    for (let o = 0; o < out; o++) for (let j = 0; j < r; j++) up[o * r + j]! *= 0.9 ** j;
    return { input, scale: input === 0 ? 0.5 : 2, rank: r, up, down: randomArray(rand, r * fanIn, 1) };
  };
  return {
    path: 'unet.m',
    out,
    fanIn,
    members: [member(0), member(1)],
    weights: [1, 0.8],
    method: 'ties',
    params: { density, majoritySign: 'total', seed: 0, t: 0.5 },
  };
}

/** Energy of the rows of `a` (m × n) in the span of the rows of `basis` (rows × m, any), over the top-`rows` optimum. */
function capturedFraction(a: Float32Array, m: number, n: number, basis: Float32Array, rows: number): number {
  const q = truncatedSvd(basis, rows, m, rows, { product: 'js' });
  // The row space of `basis` = the row space of q.down (rank × m); project A's columns onto it.
  const r = q.rank;
  const d = Float64Array.from(q.down);
  for (let j = 0; j < r; j++) {
    let nn = 0;
    for (let i = 0; i < m; i++) nn += d[j * m + i]! ** 2;
    for (let i = 0; i < m; i++) d[j * m + i]! /= Math.sqrt(nn);
  }
  // q.down's rows are orthogonal (right singular vectors scaled): normalised, they are an orthonormal basis.
  let kept = 0;
  for (let c = 0; c < n; c++)
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let i = 0; i < m; i++) s += d[j * m + i]! * a[i * n + c]!;
      kept += s * s;
    }
  const sv = singularValues(Float64Array.from(a), m, n);
  let best = 0;
  for (let j = 0; j < Math.min(rows, sv.length); j++) best += sv[j]! ** 2;
  return kept / best;
}

describe('factorStartBasis', () => {
  it("spans the dominant left subspace of the inputs' weighted sum", () => {
    for (const seed of [1, 2, 3]) {
      const req = tiesRequest(seed, 60, 80, 16, 0.2);
      const start = factorStartBasis(req, 12, 2, jsProduct);
      expect(start?.rows).toBe(12);
      // The linear merge M = Σ wᵢ·sᵢ·upᵢ·downᵢ, densely.
      const m = new Float32Array(60 * 80);
      for (const mem of req.members) {
        if ('delta' in mem) continue;
        const d = jsProduct(60, 80, mem.rank, mem.up, mem.down);
        const c = req.weights[mem.input]! * mem.scale;
        for (let i = 0; i < m.length; i++) m[i]! += c * d[i]!;
      }
      expect(capturedFraction(m, 60, 80, start!.vectors, 12)).toBeGreaterThan(0.98);
    }
  });

  it('returns the factors themselves when they have no more columns than asked, and nothing for dense members', () => {
    const req = tiesRequest(4, 30, 40, 4, 0.2);
    expect(factorStartBasis(req, 12)?.rows).toBe(8);
    const dense = { ...req, members: [{ input: 0, delta: new Float32Array(30 * 40) }] };
    expect(factorStartBasis(dense, 12)).toBeUndefined();
  });
});

describe('truncatedSvd from a factor start (the merge methods)', () => {
  it('is within 0.1% of optimal on TIES results, as methodModule runs it', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1e6 }),
        fc.integer({ min: 48, max: 96 }),
        fc.integer({ min: 48, max: 128 }),
        fc.integer({ min: 2, max: 20 }),
        fc.double({ min: 0.1, max: 0.3, noNaN: true }),
        (seed, m, n, k, density) => {
          const req = tiesRequest(seed, m, n, Math.min(2 * k, 24), density);
          const a = Float32Array.from(methodDelta(req));
          const o = methodModule(req, { rank: k });
          const best = optimalError(a, m, n, k);
          const got = productError(a, m, n, o.factors!.up, o.factors!.down, o.k);
          expect(o.k).toBe(k);
          expect(got).toBeLessThanOrEqual(best * 1.001 + 1e-5 * best);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('stays within 0.1% when the dominant directions are orthogonal to the start', () => {
    // A = the factors' merge (small) + strong rank-6 directions in the orthogonal complement of the start's rows.
    for (const seed of [11, 12, 13]) {
      const rand = prng(seed);
      const m = 64,
        n = 90,
        k = 8,
        l = 16;
      const start = randomArray(rand, l * m, 1);
      const q = truncatedSvd(start, l, m, l, { product: 'js' });
      // Orthonormal rows of the start's span, then a strong part of A orthogonal to them.
      const basis = Float64Array.from(q.down);
      for (let j = 0; j < l; j++) {
        let nn = 0;
        for (let i = 0; i < m; i++) nn += basis[j * m + i]! ** 2;
        for (let i = 0; i < m; i++) basis[j * m + i]! /= Math.sqrt(nn);
      }
      const a = randomArray(rand, m * n, 0.05);
      for (let t = 0; t < 6; t++) {
        const x = Float64Array.from(randomArray(rand, m, 1));
        for (let j = 0; j < l; j++) {
          let s = 0;
          for (let i = 0; i < m; i++) s += basis[j * m + i]! * x[i]!;
          for (let i = 0; i < m; i++) x[i]! -= s * basis[j * m + i]!;
        }
        const y = randomArray(rand, n, 1);
        for (let i = 0; i < m; i++) for (let c = 0; c < n; c++) a[i * n + c]! += (3 - 0.3 * t) * x[i]! * y[c]!;
      }
      const svd = truncatedSvd(a, m, n, k, {
        ...METHOD_SVD_OPTIONS,
        startLeft: { rows: l - 8, vectors: start },
      });
      expect(productError(a, m, n, svd.up, svd.down, svd.rank)).toBeLessThanOrEqual(optimalError(a, m, n, k) * 1.001);
    }
  });
});
