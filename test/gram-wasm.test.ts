/**
 * The f64 Gram matrix of f32 rows in WebAssembly (src/lora/gram-wasm.ts, gram.wat) against linalg.ts gramRows on
 * the rows promoted to f64, bit for bit: every row count (odd, not a multiple of 4, the SVD's 72 and up), lengths
 * around the chunk size, and values whose sums depend on the order they are added in (so a change of summation
 * order shows).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { GRAM_CHUNK as WAT_CHUNK } from '../scripts/wasm/gram-wat.js';
import { GRAM_CHUNK, gramRowsF32 } from '../src/lora/gram-wasm.js';
import { gramRows } from '../src/lora/linalg.js';

const reference = (x: Float32Array, rows: number, len: number): Float64Array => {
  const g = new Float64Array(rows * rows);
  gramRows(Float64Array.from(x.subarray(0, rows * len)), rows, len, g);
  return g;
};
const bits = (g: Float64Array): string => Buffer.from(g.buffer, g.byteOffset, g.byteLength).toString('hex');

/** rows × len values spanning many binades (order-sensitive sums), from a seed. */
function matrix(rows: number, len: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const x = new Float32Array(rows * len);
  for (let i = 0; i < x.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const mant = (s >>> 8) / 2 ** 24 - 0.5;
    x[i] = mant * 2 ** ((s & 31) - 12);
  }
  return x;
}

describe('gramRowsF32', () => {
  it('uses the generator chunk size', () => {
    expect(GRAM_CHUNK).toBe(WAT_CHUNK);
  });

  it('equals gramRows bit for bit (fast-check over rows, lengths and values)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 23 }),
        fc.integer({ min: 1, max: 3 * GRAM_CHUNK + 5 }),
        fc.integer(),
        (rows, len, seed) => {
          const x = matrix(rows, len, seed);
          const g = new Float64Array(rows * rows).fill(Number.NaN);
          gramRowsF32(x, rows, len, g);
          expect(bits(g)).toBe(bits(reference(x, rows, len)));
        },
      ),
      { numRuns: 150 },
    );
  });

  it('equals gramRows bit for bit at the SVD sizes (72, 71, 74 rows; up to 1300 terms; a buffer longer than X)', () => {
    for (const [rows, len] of [
      [72, 1280],
      [71, 640],
      [74, 1300],
      [144, 333],
      [8, 64],
    ] as const) {
      const x = matrix(rows, len, rows * 31 + len);
      const longer = new Float32Array(rows * len + 17);
      longer.set(x);
      const g = new Float64Array(rows * rows);
      gramRowsF32(longer, rows, len, g);
      expect(bits(g)).toBe(bits(reference(x, rows, len)));
      const j = new Float64Array(rows * rows);
      gramRowsF32(x, rows, len, j, 'js');
      expect(bits(j)).toBe(bits(g));
    }
  });

  it('is symmetric with the diagonal the squared row norms', () => {
    const x = Float32Array.from({ length: 12 * 5 }, (_, i) => (i % 7) - 3);
    const g = new Float64Array(144);
    gramRowsF32(x, 12, 5, g);
    for (let i = 0; i < 12; i++) {
      let s = 0;
      for (let t = 0; t < 5; t++) s += (x[i * 5 + t] as number) ** 2;
      expect(g[i * 12 + i]).toBe(s);
      for (let j = 0; j < 12; j++) expect(g[i * 12 + j]).toBe(g[j * 12 + i]);
    }
  });
});
