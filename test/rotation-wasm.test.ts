/**
 * The OFT/BOFT row-block product in WebAssembly (src/lora/rotate-wasm.ts, rotate.wat) against the JS reference
 * rotateRowsScalar, bit for bit: block sizes 1–40, column counts 1–67 (odd, not multiples of the vector step) and
 * wider than one column pass, M or Mᵀ, zero and −0 coefficients (skipped, not added), NaN / ±Inf / extreme values,
 * rows taken in a permuted, non-contiguous order (as BOFT's butterfly passes them), values spanning many binades so
 * that a change of summation order shows. Then oftDelta / boftDelta against the pre-WebAssembly algorithm written
 * out here (f64 copies of W0, the whole matrix rotated by rotateRowsScalar, a division per value for the rescale row).
 */
import fc from 'fast-check';
import ndarray from 'ndarray';
import { describe, expect, it } from 'vitest';
import { ROTATE_STEP as WAT_STEP } from '../scripts/wasm/rotate-wat.js';
import { hasRotateWasm, passColumns, ROTATE_STEP, rotateRowsWasm } from '../src/lora/rotate-wasm.js';
import { boftDelta, butterflyPermutation } from '../src/lora/terms/boft.js';
import { oftAddInto, oftDelta, oftRotations } from '../src/lora/terms/oft.js';
import { blendRotations, cayleyRotations, rotateRows, rotateRowsScalar } from '../src/lora/terms/rotation.js';
import type { BoftTerm, OftTerm } from '../src/lora/types.js';

const SPECIALS = [0, -0, Number.NaN, Infinity, -Infinity, Number.MAX_VALUE, -Number.MIN_VALUE, 2 ** -1074, 1e300];

/** n f64 values spanning many binades, a special value about one time in `every` (never when every is 0). */
function values(n: number, seed: number, every: number, zeros = 0): Float64Array {
  let s = seed >>> 0;
  const x = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const t = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) >>> 0) % 1000;
    if (every > 0 && t % every === 0) x[i] = SPECIALS[(s >>> 5) % SPECIALS.length]!;
    else if (zeros > 0 && t < zeros) x[i] = (s & 64) === 0 ? 0 : -0;
    else x[i] = ((s >>> 8) / 2 ** 24 - 0.5) * 2 ** ((s & 31) - 12);
  }
  return x;
}

/** b distinct row indices of `total`, in a seeded random order. */
function pickRows(total: number, b: number, seed: number): Int32Array {
  const all = Int32Array.from({ length: total }, (_, i) => i);
  let s = seed >>> 0;
  for (let i = total - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.subarray(0, b);
}

const hex = (a: Float64Array | Float32Array): string =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

/** rotateRowsWasm and rotateRowsScalar on copies of x; both results' bytes. */
function both(
  x: Float64Array,
  cols: number,
  rows: Int32Array,
  m: Float64Array,
  mo: number,
  b: number,
  transposed: boolean,
): [string, string] {
  const w = x.slice();
  expect(rotateRowsWasm(w, cols, rows, m, mo, b, transposed)).toBe(true);
  const s = x.slice();
  rotateRowsScalar(s, cols, rows, m, mo, b, transposed);
  return [hex(w), hex(s)];
}

describe('rotateRowsWasm', () => {
  it('runs here (WebAssembly SIMD) and uses the generator step', () => {
    expect(hasRotateWasm()).toBe(true);
    expect(ROTATE_STEP).toBe(WAT_STEP);
    expect(passColumns(32) % ROTATE_STEP).toBe(0);
  });

  it('equals rotateRowsScalar bit for bit (fast-check: b 1–40, cols 1–67, M or Mᵀ, permuted rows, specials)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 67 }),
        fc.boolean(),
        fc.integer({ min: 0, max: 6 }),
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 400 }),
        fc.integer(),
        (b, cols, transposed, extra, mo, zeros, seed) => {
          const total = b + extra;
          const x = values(total * cols, seed, seed % 3 === 0 ? 0 : 97);
          const m = values(mo + b * b, seed ^ 0x5bd1e995, seed % 5 === 0 ? 0 : 61, zeros);
          const rows = pickRows(total, b, seed);
          const [w, s] = both(x, cols, rows, m, mo, b, transposed);
          expect(w).toBe(s);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('equals rotateRowsScalar bit for bit across column passes (wider than passColumns(b))', () => {
    for (const [b, extra] of [
      [1, 0],
      [3, 2],
      [32, 0],
      [40, 3],
    ] as const) {
      for (const cols of [passColumns(b) + 37, 2 * passColumns(b) + 1]) {
        const total = b + extra;
        const x = values(total * cols, b * 7 + cols, 211);
        const m = values(b * b, b, 0, 300);
        const [w, s] = both(x, cols, pickRows(total, b, cols), m, 0, b, b % 2 === 0);
        expect(w).toBe(s);
      }
    }
  });

  it('skips zero coefficients: an all-zero M gives +0 rows even over Inf, NaN and −0', () => {
    const x = Float64Array.from([Infinity, Number.NaN, -0, 1, -Infinity, 2]);
    const m = Float64Array.from([0, -0, -0, 0]);
    expect(rotateRowsWasm(x, 3, Int32Array.from([1, 0]), m, 0, 2, false)).toBe(true);
    expect(Array.from(x).map((v) => Object.is(v, 0))).toEqual([true, true, true, true, true, true]);
  });

  it('refuses (x untouched) a row outside x, and rotateRows then keeps the reference behaviour', () => {
    const x = values(3 * 5, 1, 0);
    const before = hex(x);
    expect(rotateRowsWasm(x, 5, Int32Array.from([0, 3]), values(4, 2, 0), 0, 2, false)).toBe(false);
    expect(hex(x)).toBe(before);
    expect(() => rotateRows(x, 5, Int32Array.from([0, 3]), values(4, 2, 0), 0, 2, false)).toThrow(RangeError);
  });
});

// ---- OFT / BOFT deltas against the algorithm before the WebAssembly (f64 copies, a division per value) ----

function oldRotatedDelta(
  x: Float64Array,
  w0: Float64Array,
  rescale: Float32Array | undefined,
  cols: number,
  w: number,
): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const s = rescale ? (rescale[Math.floor(i / cols)] ?? 1) : 1;
    out[i] = w * (s * (x[i] ?? 0) - (w0[i] ?? 0));
  }
  return out;
}

function oldOftDelta(t: OftTerm, base: Float32Array, w: number): Float32Array {
  const [n = 0, b = 0] = t.blocks.shape;
  const fanIn = base.length / (n * b);
  const r = oftRotations(t, 'm');
  const w0 = Float64Array.from(base);
  const x = w0.slice();
  const rows = new Int32Array(b);
  const tmp = new Float64Array(b * fanIn);
  for (let k = 0; k < n; k++) {
    for (let a = 0; a < b; a++) rows[a] = k * b + a;
    rotateRowsScalar(x, fanIn, rows, r, k * b * b, b, true, tmp);
  }
  return oldRotatedDelta(x, w0, t.rescale, fanIn, w);
}

function oldBoftDelta(t: BoftTerm, base: Float32Array, w: number): Float32Array {
  const [m = 0, n = 0, b = 0] = t.blocks.shape;
  const out = n * b;
  const fanIn = base.length / out;
  const r = blendRotations(cayleyRotations(t.blocks.data as Float32Array, m * n, b, t.constraint), m * n, b, w);
  const w0 = Float64Array.from(base);
  const x = w0.slice();
  const tmp = new Float64Array(b * fanIn);
  for (let i = 0; i < m; i++) {
    const perm = butterflyPermutation(out, b, i);
    for (let j = 0; j < n; j++)
      rotateRowsScalar(x, fanIn, perm.subarray(j * b, (j + 1) * b), r, (i * n + j) * b * b, b, false, tmp);
  }
  return oldRotatedDelta(x, w0, t.rescale, fanIn, w);
}

const f32 = (n: number, seed: number, scale: number): Float32Array =>
  Float32Array.from(values(n, seed, 0), (v) => Math.tanh(v) * scale);

describe('oftDelta / boftDelta with the WebAssembly product', () => {
  it('give the bytes of the algorithm before it (OFT: M·Rᵀ blocks; BOFT: permuted stages; rescale, strengths)', () => {
    for (const [n, b, fanIn, rescaled] of [
      [4, 8, 37, true],
      [3, 16, 67, false],
      [2, 32, 640, true],
    ] as const) {
      const out = n * b;
      const t: OftTerm = {
        kind: 'oft',
        shape: [out, fanIn],
        blocks: ndarray(f32(n * b * b, n + b, 0.3), [n, b, b]),
        cayley: true,
        constraint: 0.5 * out,
        ...(rescaled ? { rescale: Float32Array.from(f32(out, 9, 1), (v) => 1 + v) } : {}),
      };
      const base = f32(out * fanIn, fanIn, 0.5);
      for (const w of [1, 0.7]) expect(hex(oftDelta(t, 'm', base, w))).toBe(hex(oldOftDelta(t, base, w)));
    }
    for (const [m, n, b, fanIn] of [
      [2, 8, 4, 35],
      [3, 8, 16, 129],
    ] as const) {
      const out = n * b;
      const t: BoftTerm = {
        kind: 'boft',
        shape: [out, fanIn],
        blocks: ndarray(f32(m * n * b * b, m + b, 0.2), [m, n, b, b]),
        constraint: 0,
        rescale: Float32Array.from(f32(out, 5, 1), (v) => 1 + v),
      };
      const base = f32(out * fanIn, fanIn + 1, 0.5);
      for (const w of [1, 0.7]) expect(hex(boftDelta(t, 'm', base, w))).toBe(hex(oldBoftDelta(t, base, w)));
    }
  });
});

describe('oftAddInto (the fuse add of a lone OFT, no delta array)', () => {
  it('gives view + oftDelta with the dense add roundings, also with W0 = the view itself', () => {
    const [n, b, fanIn] = [3, 16, 67];
    const out = n * b;
    const t: OftTerm = {
      kind: 'oft',
      shape: [out, fanIn],
      blocks: ndarray(f32(n * b * b, 11, 0.3), [n, b, b]),
      cayley: true,
      constraint: 0,
      rescale: Float32Array.from(f32(out, 12, 1), (v) => 1 + v),
    };
    const base = f32(out * fanIn, 13, 0.5);
    for (const w of [1, 0.7]) {
      const d = oftDelta(t, 'm', base, w * w);
      const want = base.slice();
      for (let i = 0; i < want.length; i++) want[i] = want[i]! + d[i]!;
      const apart = base.slice();
      oftAddInto(t, 'm', base, w * w, apart, (k) => expect(k).toBe(out * fanIn));
      expect(hex(apart)).toBe(hex(want));
      const same = base.slice();
      oftAddInto(t, 'm', same, w * w, same, () => undefined);
      expect(hex(same)).toBe(hex(want));
    }
  });
});
