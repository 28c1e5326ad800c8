/**
 * TIES' trim and vote in WebAssembly (src/lora/trim-wasm.ts, trim.wat) against the JS references
 * (magnitudePruneScalar, disjointMergeScalar), bit for bit: ties at the threshold kept in index order (also across
 * chunk boundaries), ±0, denormals, infinities, both majority-sign modes, 1/2/3 inputs, missing inputs, density
 * edge cases; and the dispatching functions use the WASM path.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TRIM_CHUNK, TRIM_DATA, TRIM_HIGH, TRIM_LOW, TRIM_MAX_INPUTS, TRIM_WEIGHTS } from '../scripts/wasm/trim-wat.js';
import { disjointMerge, disjointMergeScalar } from '../src/lora/methods.js';
import { magnitudePrune, magnitudePruneScalar } from '../src/lora/sparsify.js';
import { getWasmTrim, TRIM_LAYOUT } from '../src/lora/trim-wasm.js';

const wasm = getWasmTrim();
if (!wasm) throw new Error('WebAssembly SIMD is expected in the test runtime');
const W = wasm;

const bits = (x: Float32Array): number[] => Array.from(new Uint32Array(x.buffer, x.byteOffset, x.length));

/** Values with many ties and every special class but NaN. */
const POOL = [0, -0, 1, -1, 0.5, -0.5, 2, -2, 1e-45, -1e-45, 1.2e-38, -3e-40, 65504, Infinity, -Infinity];
const value = fc.oneof(fc.constantFrom(...POOL), fc.float({ noNaN: true }), fc.float({ noNaN: true, min: -4, max: 4 }));
const tensor = (n: fc.Arbitrary<number>) => n.chain((len) => fc.array(value, { minLength: len, maxLength: len }));
const density = fc.oneof(fc.constantFrom(0, 1e-9, 0.2, 0.5, 0.999, 1, 1.5), fc.double({ min: 0, max: 1, noNaN: true }));

/** A random tensor of n values drawn from `pool` (plenty of equal magnitudes), seeded. */
function tiedTensor(n: number, seed: number, pool: readonly number[]): Float32Array {
  let s = seed >>> 0;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    x[i] = pool[s % pool.length] ?? 0;
  }
  return x;
}

function pruneBoth(x: Float32Array, d: number): void {
  const a = Float32Array.from(x);
  const b = Float32Array.from(x);
  magnitudePruneScalar(a, d);
  W.magnitudePrune(b, d);
  expect(bits(b)).toEqual(bits(a));
}

describe('WASM magnitude pruning = magnitudePruneScalar, bit for bit', () => {
  it('random tensors with ties, ±0, denormals and infinities, every density', () => {
    fc.assert(
      fc.property(tensor(fc.integer({ min: 0, max: 300 })), density, (xs, d) => pruneBoth(Float32Array.from(xs), d)),
      { numRuns: 400 },
    );
  });

  it('ties at the threshold straddling chunk boundaries (three chunks and a tail)', () => {
    const n = 3 * TRIM_CHUNK + 5;
    for (const [seed, d] of [
      [1, 0.3],
      [2, 0.5],
      [3, 0.77],
      [4, 1 / n],
      [5, (n - 1) / n],
    ] as const) {
      pruneBoth(tiedTensor(n, seed, [0, -0, 1, -1, 2, -2, 3e-41]), d);
    }
    // realistic magnitudes: few exact ties
    const g = tiedTensor(n, 9, [0]).map((_, i) => Math.sin(i * 12.9898) * 1e-3);
    pruneBoth(g, 0.2);
  });

  it('keeps the ties in index order (first ones kept, later ones zeroed, across chunks)', () => {
    // k = 3: 3 is above the threshold 2, then the first two 2s (the next ones are zeroed), -0 and 1 below
    for (const prune of [magnitudePruneScalar, W.magnitudePrune.bind(W)]) {
      const x = new Float32Array([2, 1, -2, 3, 2, -0, 2]);
      prune(x, 3 / 7 + 1e-9);
      expect(Array.from(x)).toEqual([2, 0, -2, 3, 0, 0, 0]);
    }
    // one tie left to keep at the end of the first chunk, the tie at the start of the second chunk is zeroed
    const n = 2 * TRIM_CHUNK;
    const x = new Float32Array(n).fill(1);
    x[0] = 5;
    const k = TRIM_CHUNK + 1; // 5 and the first TRIM_CHUNK of the 1s: index 1 … TRIM_CHUNK
    W.magnitudePrune(x, (k + 0.5) / n);
    expect(x[TRIM_CHUNK]).toBe(1);
    expect(x[TRIM_CHUNK + 1]).toBe(0);
    expect(x.reduce((c, v) => c + (v !== 0 ? 1 : 0), 0)).toBe(k);
  });

  it('magnitudePrune dispatches to the WASM path and gives the reference bits', () => {
    const x = tiedTensor(1000, 7, [1, -1, 2, 0.25]);
    const a = Float32Array.from(x);
    magnitudePrune(a, 0.4);
    const b = Float32Array.from(x);
    magnitudePruneScalar(b, 0.4);
    expect(bits(a)).toEqual(bits(b));
  });
});

const weight = fc.oneof(fc.constantFrom(0, -0, 1, 0.8, -0.5, 1 / 3), fc.double({ noNaN: true, min: -1e6, max: 1e6 }));

function mergeBoth(ts: (Float32Array | null)[], w: number[], mode: 'total' | 'frequency'): void {
  const n = ts.find((t) => t)?.length ?? 0;
  const a = disjointMergeScalar(
    ts.map((t) => (t ? Float32Array.from(t) : null)),
    w,
    mode,
  );
  const b = W.disjointMerge(
    ts.map((t) => (t ? Float32Array.from(t) : null)),
    w,
    mode === 'frequency',
    n,
    new Float32Array(n),
  );
  expect(bits(b)).toEqual(bits(a));
  // in place into the first present input, as the TIES method calls it
  const own = ts.map((t) => (t ? Float32Array.from(t) : null));
  const first = own.find((t) => t);
  if (first) {
    W.disjointMerge(own, w, mode === 'frequency', n, first);
    expect(bits(first)).toEqual(bits(a));
  }
}

describe('WASM sign vote and disjoint mean = disjointMergeScalar, bit for bit', () => {
  it('1, 2 and 3 inputs (some missing), both majority-sign modes, random weights', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 120 }).chain((n) =>
          fc.record({
            ts: fc.array(fc.option(tensor(fc.constant(n)), { freq: 5 }), { minLength: 1, maxLength: 4 }),
            w: fc.array(weight, { minLength: 0, maxLength: 4 }),
            mode: fc.constantFrom('total' as const, 'frequency' as const),
          }),
        ),
        ({ ts, w, mode }) => {
          if (!ts.some((t) => t)) return;
          mergeBoth(
            ts.map((t) => (t ? Float32Array.from(t) : null)),
            w,
            mode,
          );
        },
      ),
      { numRuns: 400 },
    );
  });

  it('large trimmed tensors over several chunks, 1/2/3 inputs, both modes', () => {
    const n = 2 * TRIM_CHUNK + 3;
    const pool = [0, 0, 0, -0, 1, -1, 0.3, -0.7, 2e-45, -1e-39];
    const t = [tiedTensor(n, 11, pool), tiedTensor(n, 12, pool), tiedTensor(n, 13, pool)];
    for (const mode of ['total', 'frequency'] as const) {
      mergeBoth([t[0] ?? null], [0.8], mode);
      mergeBoth([t[0] ?? null, t[1] ?? null], [1, 0.8], mode);
      mergeBoth([t[0] ?? null, null, t[1] ?? null, t[2] ?? null], [1, 5, -0.8, 1 / 3], mode);
    }
  });

  it('disjointMerge dispatches to the WASM path and gives the reference bits', () => {
    const a = tiedTensor(500, 3, [0, 1, -1, 0.5]);
    const b = tiedTensor(500, 4, [0, 1, -2, 0.25]);
    for (const mode of ['total', 'frequency'] as const) {
      expect(bits(disjointMerge([a, b], [1, 0.8], mode))).toEqual(bits(disjointMergeScalar([a, b], [1, 0.8], mode)));
    }
    // inputs of unequal sizes (never in a merge) are left to the reference, which reads a shorter one as zeros
    const short = a.subarray(0, 100);
    expect(bits(disjointMerge([a, short], [1, 1], 'total'))).toEqual(
      bits(disjointMergeScalar([a, short], [1, 1], 'total')),
    );
  });
});

describe('trim.wat layout', () => {
  it('src/lora/trim-wasm.ts uses the generator layout', () => {
    expect(TRIM_LAYOUT).toEqual({
      high: TRIM_HIGH,
      low: TRIM_LOW,
      weights: TRIM_WEIGHTS,
      maxInputs: TRIM_MAX_INPUTS,
      data: TRIM_DATA,
      chunk: TRIM_CHUNK,
    });
  });
});
