/**
 * The truncated SVD's resident-matrix kernel (src/lora/svd-resident.ts, scripts/wasm/svd-wat.ts): X·A and X·Aᵀ
 * against the plain-JS product on shapes that leave partial tiles and blocks everywhere, and truncatedSvd on a
 * matrix large enough to take that path against the general product kernel's path on the same matrix.
 */
import { describe, expect, it } from 'vitest';
import { transposeF32 } from '../src/lora/linalg.js';
import { PRODUCT_SLICE_ELEMENTS, wasmProduct } from '../src/lora/product.js';
import { hasResidentKernel, residentMatrix } from '../src/lora/svd-resident.js';
import { jsProduct, truncatedSvd } from '../src/lora/svd.js';
import { prng, randomArray } from './lora-helpers.js';

/** max |x − y| / max |y|. */
function relMax(x: Float32Array, y: Float32Array): number {
  let e = 0,
    s = 0;
  for (let i = 0; i < y.length; i++) {
    e = Math.max(e, Math.abs(x[i]! - y[i]!));
    s = Math.max(s, Math.abs(y[i]!));
  }
  return e / s;
}

describe.runIf(hasResidentKernel())('resident-matrix SVD kernel', () => {
  it('computes X·A and X·Aᵀ as the JS product does, on partial tiles and blocks', () => {
    const rand = prng(14);
    // m, n, rows: odd sizes, a single row/column, inner dimensions across the 256-row and 64-column blocks.
    for (const [m, n, rows] of [
      [1, 1, 1],
      [5, 3, 2],
      [13, 21, 9],
      [257, 65, 17],
      [300, 530, 72],
      [1030, 40, 8],
      [7, 700, 5],
    ] as const) {
      const a = randomArray(rand, m * n, 1);
      const op = residentMatrix(a, m, n)!;
      const xl = randomArray(rand, rows * m, 1);
      const xr = randomArray(rand, rows * n, 1);
      const left = op.left(rows, xl);
      const right = op.right(rows, xr);
      expect(left.length).toBe(rows * n);
      expect(right.length).toBe(rows * m);
      expect(relMax(left, jsProduct(rows, n, m, xl, a))).toBeLessThan(1e-5);
      expect(relMax(right, jsProduct(rows, m, n, xr, transposeF32(a, m, n)))).toBeLessThan(1e-5);
    }
  });

  it('refuses a matrix replaced by a newer one', () => {
    const op = residentMatrix(new Float32Array(6).fill(1), 2, 3)!;
    residentMatrix(new Float32Array(6).fill(2), 3, 2);
    expect(() => op.left(1, new Float32Array(2))).toThrow(/replaced/);
  });

  it('gives truncatedSvd the same factors as the product kernel on a matrix above the slice size', () => {
    const rand = prng(33);
    const m = 1030,
      n = 4100; // > PRODUCT_SLICE_ELEMENTS: the resident path; m, n not multiples of 4 or 8
    expect(m * n).toBeGreaterThan(PRODUCT_SLICE_ELEMENTS);
    const a = randomArray(rand, m * n, 1e-2);
    for (let j = 0; j < 12; j++) {
      const x = randomArray(rand, m, 1),
        y = randomArray(rand, n, 1),
        s = 2 ** (-j / 2);
      for (let i = 0; i < m; i++) for (let c = 0; c < n; c++) a[i * n + c]! += s * x[i]! * y[c]!;
    }
    const opts = { excess: 2e-4 } as const;
    const resident = truncatedSvd(a, m, n, 8, opts);
    const general = truncatedSvd(a, m, n, 8, { ...opts, product: wasmProduct() ?? jsProduct });
    expect(resident.rank).toBe(8);
    // The stopping rule reads gains near f32 rounding, so the two paths may stop a half-step apart; the errors of
    // the factors (measured here in f64) agree closely anyway.
    const e = (f: typeof resident): number => {
      let sum = 0;
      for (let i = 0; i < m; i++)
        for (let c = 0; c < n; c++) {
          let v = 0;
          for (let j = 0; j < f.rank; j++) v += f.up[i * f.rank + j]! * f.down[j * n + c]!;
          sum += (a[i * n + c]! - v) ** 2;
        }
      return Math.sqrt(sum);
    };
    const er = e(resident),
      eg = e(general);
    expect(Math.abs(er - eg) / eg).toBeLessThan(1e-3);
    expect(Math.abs(resident.error - er) / er).toBeLessThan(1e-3);
    for (let j = 0; j < 8; j++)
      expect(Math.abs(resident.sigma2[j]! - general.sigma2[j]!) / general.sigma2[j]!).toBeLessThan(1e-4);
  });
});
