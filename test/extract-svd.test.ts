/**
 * truncatedSvd (src/lora/svd.ts) as extract calls it (EXTRACT_SVD_TOLERANCE): the rank-k factors are within 1% of the
 * optimal error (the SVD tail, from an independent Jacobi SVD) on flat, decaying and low-rank spectra, wide and tall,
 * sketched and exact; a reused workspace changes nothing.
 */
import { describe, expect, it } from 'vitest';
import { EXTRACT_SVD_TOLERANCE } from '../src/fuse/extract-module.js';
import { PRODUCT_SLICE_ELEMENTS, wasmProduct } from '../src/lora/product.js';
import { jsProduct, SvdWorkspace, truncatedSvd } from '../src/lora/svd.js';
import { prng, randomArray, singularValues } from './lora-helpers.js';

/** A = Σ_j s_j·x_j·y_jᵀ with random x, y (a spectrum shaped by s, plus `noise` everywhere). */
function shaped(rows: number, cols: number, s: readonly number[], noise: number, seed: number): Float32Array {
  const rand = prng(seed);
  const a = randomArray(rand, rows * cols, noise);
  for (const sj of s) {
    const x = randomArray(rand, rows, 1);
    const y = randomArray(rand, cols, 1);
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < cols; j++) a[i * cols + j] = (a[i * cols + j] ?? 0) + sj * x[i]! * y[j]!;
  }
  return a;
}

function errorOf(a: Float32Array, rows: number, cols: number, up: Float32Array, down: Float32Array, k: number) {
  let e = 0;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let p = 0;
      for (let t = 0; t < k; t++) p += up[i * k + t]! * down[t * cols + j]!;
      const d = a[i * cols + j]! - p;
      e += d * d;
    }
  }
  return Math.sqrt(e);
}

function tail(a: Float32Array, rows: number, cols: number, k: number): number {
  const s = singularValues(Float64Array.from(a), rows, cols);
  let t = 0;
  for (let j = k; j < s.length; j++) t += s[j]! * s[j]!;
  return Math.sqrt(t);
}

const CASES = [
  { name: 'flat (noise only), wide', rows: 40, cols: 150, s: [], noise: 1 },
  { name: 'flat, tall', rows: 160, cols: 48, s: [], noise: 1 },
  { name: 'decaying, wide', rows: 64, cols: 200, s: [5, 4, 3, 2.5, 2, 1.5, 1.2, 1, 0.8, 0.6, 0.5, 0.4], noise: 0.01 },
  { name: 'slow decay, tall', rows: 180, cols: 60, s: Array.from({ length: 30 }, (_, j) => 1 / (1 + j)), noise: 0.005 },
];

describe('truncatedSvd as extract uses it (independent Jacobi SVD as the reference)', () => {
  for (const c of CASES) {
    it(`rank-8 factors within 1% of the SVD tail: ${c.name}`, () => {
      const a = shaped(c.rows, c.cols, c.s, c.noise, 7);
      const k = 8;
      const svd = truncatedSvd(a, c.rows, c.cols, k, { tolerance: EXTRACT_SVD_TOLERANCE });
      expect(svd.rank).toBe(k);
      const err = errorOf(a, c.rows, c.cols, svd.up, svd.down, k);
      const opt = tail(a, c.rows, c.cols, k);
      expect(err).toBeLessThanOrEqual(1.01 * opt);
      expect(err).toBeGreaterThanOrEqual(opt * (1 - 1e-5));
      // The reported error agrees with the measured one.
      expect(svd.error).toBeCloseTo(err, 3);
    });
  }

  it('recovers an exactly low-rank matrix (error at rounding level)', () => {
    const a = shaped(96, 300, [3, 2, 1, 0.5, 0.25], 0, 3);
    const svd = truncatedSvd(a, 96, 300, 8);
    expect(svd.rank).toBe(5);
    const err = errorOf(a, 96, 300, svd.up, svd.down, 5);
    expect(err / Math.sqrt(svd.total)).toBeLessThan(1e-5);
  });

  it('the leading singular values match the reference, wide and tall', () => {
    for (const [rows, cols] of [
      [12, 50],
      [50, 12],
    ] as const) {
      const a = shaped(rows, cols, [], 1, 5);
      const svd = truncatedSvd(a, rows, cols, 4);
      const ref = singularValues(Float64Array.from(a), rows, cols);
      for (let j = 0; j < 4; j++) expect(Math.sqrt(svd.sigma2[j]!)).toBeCloseTo(ref[j]!, 4);
      expect(errorOf(a, rows, cols, svd.up, svd.down, 4)).toBeLessThanOrEqual(tail(a, rows, cols, 4) * 1.01);
    }
  });

  it('plain-JS and WASM products agree, and the same seed gives the same factors', () => {
    const a = shaped(50, 120, [2, 1, 0.5], 0.05, 9);
    const x = truncatedSvd(a, 50, 120, 3, { seed: 4 });
    const y = truncatedSvd(a, 50, 120, 3, { seed: 4 });
    expect(x.up).toEqual(y.up);
    const z = truncatedSvd(a, 50, 120, 3, { seed: 4, product: jsProduct });
    for (let j = 0; j < 3; j++) expect(Math.sqrt(z.sigma2[j]!)).toBeCloseTo(Math.sqrt(x.sigma2[j]!), 4);
  });

  it('a workspace reused across matrices of different shapes gives the same factors as fresh buffers', () => {
    const ws = new SvdWorkspace();
    for (const [rows, cols, seed] of [
      [60, 200, 1],
      [30, 40, 2],
      [90, 70, 3],
      [60, 200, 4],
    ] as const) {
      const a = shaped(rows, cols, [3, 2, 1], 0.05, seed);
      const fresh = truncatedSvd(a, rows, cols, 4, { tolerance: EXTRACT_SVD_TOLERANCE });
      const reused = truncatedSvd(a, rows, cols, 4, { tolerance: EXTRACT_SVD_TOLERANCE, workspace: ws });
      expect(reused.up).toEqual(fresh.up);
      expect(reused.down).toEqual(fresh.down);
      expect(reused.sigma2).toEqual(fresh.sigma2);
      expect(reused.iterations).toBe(fresh.iterations);
    }
  });

  it('a low-rank signal over rounding-level noise (what an LCM extraction sees) stops after one round, within 1%', () => {
    const [rows, cols, k] = [120, 360, 16];
    // Relative error ≈ 1%, like the F16 rounding noise of a tuned checkpoint under a fused rank-64 LoRA.
    const a = shaped(
      rows,
      cols,
      Array.from({ length: k }, (_, j) => 1 / (1 + 0.1 * j)),
      0.02,
      21,
    );
    const svd = truncatedSvd(a, rows, cols, k, { tolerance: EXTRACT_SVD_TOLERANCE });
    // One power iteration: Ω·Aᵀ, QᵀA, ZᵀAᵀ, QᵀA — the half-step before already showed the energy had stopped growing.
    expect(svd.iterations).toBe(1);
    const err = errorOf(a, rows, cols, svd.up, svd.down, k);
    const opt = tail(a, rows, cols, k);
    expect(err).toBeLessThanOrEqual(1.01 * opt);
    expect(Math.abs(svd.error - err)).toBeLessThanOrEqual(1e-5 * Math.sqrt(svd.total));
  });

  it('stops on either side of a round (half-steps): factors from a right basis are as exact as from a left one', () => {
    const seen = new Set<number>();
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const a = shaped(40, 150, [], 1, seed);
      const svd = truncatedSvd(a, 40, 150, 8, { tolerance: EXTRACT_SVD_TOLERANCE, seed });
      seen.add((svd.iterations * 2) % 2);
      const err = errorOf(a, 40, 150, svd.up, svd.down, 8);
      expect(err).toBeLessThanOrEqual(1.01 * tail(a, 40, 150, 8));
      expect(Math.abs(svd.error - err)).toBeLessThanOrEqual(1e-5 * Math.sqrt(svd.total));
    }
    // Both endings occur on these matrices: whole rounds (left basis) and half rounds (right basis).
    expect([...seen].sort()).toEqual([0, 1]);
  });

  it('a matrix over the product slice size (sliced transposes and products) gives the factors of the unsliced path', () => {
    const [rows, cols, k] = [1024, 4200, 8];
    expect(rows * cols).toBeGreaterThan(PRODUCT_SLICE_ELEMENTS);
    const a = shaped(rows, cols, [3, 2.5, 2, 1.5, 1.2, 1, 0.8, 0.6, 0.4], 1e-3, 13);
    const sliced = truncatedSvd(a, rows, cols, k, { tolerance: EXTRACT_SVD_TOLERANCE, workspace: new SvdWorkspace() });
    const whole = truncatedSvd(a, rows, cols, k, { tolerance: EXTRACT_SVD_TOLERANCE, product: jsProduct });
    expect(sliced.iterations).toBe(whole.iterations);
    for (let j = 0; j < k; j++) expect(sliced.sigma2[j]! / whole.sigma2[j]!).toBeCloseTo(1, 5);
    expect(sliced.error / whole.error).toBeCloseTo(1, 4);
    // The product itself: a sliced inner dimension equals the plain product.
    const mul = wasmProduct();
    if (mul) {
      const [r, c, inner] = [3, 1100, 4000];
      expect(inner * c).toBeGreaterThan(PRODUCT_SLICE_ELEMENTS);
      const x = shaped(r, inner, [], 1, 5);
      const y = shaped(inner, c, [], 1, 6);
      const got = mul(r, c, inner, x, y);
      const ref = jsProduct(r, c, inner, x, y);
      let e = 0;
      let t = 0;
      for (let i = 0; i < ref.length; i++) {
        e += (got[i]! - ref[i]!) ** 2;
        t += ref[i]! ** 2;
      }
      expect(Math.sqrt(e / t)).toBeLessThan(1e-5);
    }
  });
});
