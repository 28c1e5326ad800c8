/**
 * The WASM product C = A·B (src/lora/product.ts): it never reads the output it writes (the engine's copy of W starts
 * from zeros, not from the caller's buffer), and gives the same bits as the fused update W += A·B on a zero W —
 * one slice of the inner dimension or several.
 */
import { describe, expect, it } from 'vitest';
import { PRODUCT_SLICE_ELEMENTS, wasmAddProduct, wasmProduct } from '../src/lora/product.js';
import { jsProduct } from '../src/lora/svd.js';
import { prng, randomArray } from './lora-helpers.js';

const product = wasmProduct();
const add = wasmAddProduct();

describe.runIf(product && add)('wasmProduct', () => {
  it('ignores what the output buffer holds and equals W += A·B on zeros, bit for bit', () => {
    const rand = prng(5);
    // [rows, cols, rank]: odd shapes (padding), several row blocks, and an inner dimension in two slices.
    const cases: [number, number, number][] = [
      [37, 53, 7],
      [300, 2100, 64],
      [5, Math.floor(PRODUCT_SLICE_ELEMENTS / 40), 64],
    ];
    for (const [rows, cols, rank] of cases) {
      // A product before, so the engine's memory holds other values.
      product!(rows, cols, rank, randomArray(rand, rows * rank, 3), randomArray(rand, rank * cols, 3));
      const a = randomArray(rand, rows * rank, 1),
        b = randomArray(rand, rank * cols, 1);
      const into = new Float32Array(rows * cols + 3).fill(Number.NaN);
      const got = product!(rows, cols, rank, a, b, into);
      expect(got.length).toBe(rows * cols);
      expect(Number.isNaN(into[rows * cols])).toBe(true); // past the product: untouched
      const ref = new Float32Array(rows * cols);
      add!(rows, cols, rank, a, b, ref);
      expect(Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(ref.buffer))).toBe(true);
      const js = jsProduct(rows, cols, rank, a, b);
      let err = 0;
      for (let i = 0; i < js.length; i++) err = Math.max(err, Math.abs(js[i]! - got[i]!));
      expect(err).toBeLessThan(1e-4);
    }
  });
});
