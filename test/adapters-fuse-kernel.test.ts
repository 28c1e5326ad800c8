/**
 * Non-LoRA terms fused on the kernel path (addTermInto: a LoHa's two products on the fuse kernel's worker threads,
 * a LoKr's Kronecker product written straight into the rows) give the same bits as the dense-delta path they
 * replace — W0 + w·termDelta(term) rounded to f32 per element, then rounded once to the output dtype:
 * on SDXL-shaped terms (linear and conv, several thread counts) and end to end through fuseLoras on every adapter
 * fixture.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ndarray from 'ndarray';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import '../src/node.js';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/fuse/index.js';
import { openSafetensors } from '../src/node/files.js';
import { createCpuKernel } from '../src/node/kernel-threads.js';
import { getLayout } from '../src/layout/index.js';
import { addTermInto, hadamardPairs, kroneckerSides, termDelta, type AsyncProduct } from '../src/lora/terms/index.js';
import { decodeToF32 } from '../src/core/dtype.js';
import type { HadamardTerm, KroneckerTerm } from '../src/lora/types.js';
import { STORED_FLOAT_SIZE, type FuseKernel, type StoredFloat } from '../src/kernels/types.js';
import { kroneckerUnit } from '../src/kernels/wasm-engine.js';
import { numberToBf16Bits, numberToF16Bits } from '../src/core/dtype-scalar.js';
import { foldTucker } from '../src/formats/adapters.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');
const BASE = path.join(FX, 'sd15', 'base.safetensors');
const KINDS = ['locon-tucker', 'loha', 'loha-tucker', 'lokr', 'full', 'glora', 'dora-out', 'dora-in', 'dora-peft'];

let kernels: FuseKernel[] = [];
let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-fuse-kernel-'));
  // The kernel first: it turns on relaxed SIMD, which the terms' own products then use too (as in a fuse run).
  kernels = [await createCpuKernel({ threads: 2 }), await createCpuKernel({ threads: 3 })];
});
afterAll(async () => {
  await Promise.all(kernels.map((k) => k.dispose()));
  await fs.rm(tmp, { recursive: true, force: true });
});

function random(n: number, seed: number, scale = 0.05): Float32Array {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return a;
}

function kernelProduct(kernel: FuseKernel): AsyncProduct {
  return async (rows, cols, rank, a, b) => {
    const out = new Float32Array(rows * cols);
    const bytes = new Uint8Array(out.buffer);
    await kernel.update(bytes, 'F32', bytes, 'F32', { rows, cols, rank, up: a, down: b });
    return out;
  };
}

/** The dense-delta path: W0 + coef·Δ, each element rounded to f32 (what fuse computed before the kernel path). */
function denseReference(w0: Float32Array, delta: Float32Array, coef: number): Float32Array {
  const out = w0.slice();
  for (let i = 0; i < out.length; i++) out[i] = out[i]! + coef * delta[i]!;
  return out;
}

function firstDifference(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return i;
  return -1;
}

function loha(shape: number[], r1: number, r2: number, seed: number): HadamardTerm {
  const out = shape[0]!;
  const fanIn = shape.slice(1).reduce((x, y) => x * y, 1);
  return {
    kind: 'hadamard',
    shape,
    scale: 0.5,
    a: { up: ndarray(random(out * r1, seed), [out, r1]), down: ndarray(random(r1 * fanIn, seed + 1), [r1, fanIn]) },
    b: { up: ndarray(random(out * r2, seed + 2), [out, r2]), down: ndarray(random(r2 * fanIn, seed + 3), [r2, fanIn]) },
  };
}

const lokrCases: [string, KroneckerTerm][] = [
  [
    'w1 full [4, 4] ⊗ w2 [320, 8]·[8, 320] (1280×1280)',
    {
      kind: 'kronecker',
      shape: [1280, 1280],
      scale: 1.25,
      left: { full: ndarray(random(16, 5, 1), [4, 4]) },
      right: { up: ndarray(random(320 * 8, 6), [320, 8]), down: ndarray(random(8 * 320, 7), [8, 320]) },
    },
  ],
  [
    'conv: w1 full [8, 10] with zeros ⊗ w2 [80, 8]·[8, 64·9]',
    {
      kind: 'kronecker',
      shape: [640, 640, 3, 3],
      scale: 0.5,
      left: {
        full: ndarray(
          random(80, 8, 1).map((x, i) => (i % 7 === 0 ? 0 : x)),
          [8, 10],
        ),
      },
      right: { up: ndarray(random(80 * 8, 9), [80, 8]), down: ndarray(random(8 * 576, 10), [8, 576]) },
    },
  ],
  [
    'both sides factored',
    {
      kind: 'kronecker',
      shape: [1280, 640],
      scale: 2,
      left: { up: ndarray(random(8 * 2, 11, 1), [8, 2]), down: ndarray(random(2 * 8, 12, 1), [2, 8]) },
      right: { full: ndarray(random(160 * 80, 13), [160, 80]) },
    },
  ],
];

describe('addTermInto gives the dense-delta path bit for bit (SDXL shapes)', () => {
  const cases: [string, number[], number, number][] = [
    ['attention 1280×1280', [1280, 1280], 32, 32],
    ['ff 5120×640 (odd ranks)', [5120, 640], 7, 5],
    ['conv 640×640×3×3', [640, 640, 3, 3], 16, 8],
    ['proj 1280×2048, rows not a multiple of 4', [1283, 2048], 32, 4],
  ];
  for (const [name, shape, r1, r2] of cases) {
    it(`LoHa ${name}`, async () => {
      const t = loha(shape, r1, r2, shape[0]!);
      const n = shape.reduce((x, y) => x * y, 1);
      const w0 = random(n, 99, 0.2);
      // Some zeros of both signs in the base: the add must keep their signs as the dense path does.
      for (let i = 0; i < n; i += 977) w0[i] = i % 2 === 0 ? 0 : -0;
      for (const coef of [0.7, -1.3]) {
        const want = denseReference(w0, termDelta(t, name), coef);
        for (const kernel of kernels) {
          const got = w0.slice();
          await addTermInto(t, name, got, coef, kernelProduct(kernel));
          expect(firstDifference(got, want), `${kernel.name}, coef ${coef}`).toBe(-1);
        }
      }
    });
  }

  for (const [name, t] of lokrCases) {
    it(`LoKr ${name}`, async () => {
      const n = t.shape.reduce((x, y) => x * y, 1);
      const w0 = random(n, 17, 0.2);
      for (let i = 0; i < n; i += 613) w0[i] = i % 2 === 0 ? 0 : -0;
      for (const coef of [0.7, -0.4]) {
        const want = denseReference(w0, termDelta(t, name), coef);
        const got = w0.slice();
        await addTermInto(t, name, got, coef, kernelProduct(kernels[0]!));
        expect(firstDifference(got, want), `coef ${coef}`).toBe(-1);
      }
    });
  }

  it('a view of the wrong length is LORA_SHAPE_MISMATCH naming the module', async () => {
    const t = loha([64, 32], 4, 4, 3);
    await expect(
      addTermInto(t, 'mod.x', new Float32Array(64 * 31), 1, kernelProduct(kernels[0]!)),
    ).rejects.toMatchObject({ code: 'LORA_SHAPE_MISMATCH', message: expect.stringContaining('mod.x') });
  });
});

function encode(values: Float32Array, dtype: StoredFloat): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.slice().buffer);
  const bits = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++)
    bits[i] = dtype === 'F16' ? numberToF16Bits(values[i]!) : numberToBf16Bits(values[i]!);
  return new Uint8Array(bits.buffer);
}

describe("updateHadamard (the kernel's LoHa job) writes the bytes of the dense path: W0 + c·Δ in f32, then update()", () => {
  const cases: [string, number[], number, number, number, StoredFloat, StoredFloat][] = [
    ['1280×1280 F16 → F16', [1280, 1280], 32, 32, 0, 'F16', 'F16'],
    ['conv 320×320×3×3 with a rank-3 LoRA, BF16 → F32', [320, 320, 3, 3], 8, 4, 3, 'BF16', 'F32'],
    ['1283×700 with a rank-5 LoRA, F32 → F16', [1283, 700], 16, 16, 5, 'F32', 'F16'],
    ['tiny 6×10 (one thread does it)', [6, 10], 2, 3, 1, 'F16', 'F16'],
  ];
  for (const [name, shape, r1, r2, rank, srcDtype, dstDtype] of cases) {
    it(name, async () => {
      const t = loha(shape, r1, r2, 7 + shape[0]!);
      const rows = shape[0]!;
      const cols = shape.slice(1).reduce((x, y) => x * y, 1);
      const src = encode(random(rows * cols, 3, 0.3), srcDtype);
      const job = { rows, cols, rank, up: random(rows * rank, 4, 0.1), down: random(rank * cols, 5, 0.1) };
      const { a, b } = hadamardPairs(t, name);
      const coef = -0.8;
      for (const kernel of kernels) {
        // the dense path: decode, add the delta in f32, one update() rounding into the output dtype
        const w = denseReference(decodeToF32(srcDtype, src), termDelta(t, name), coef);
        const want = new Uint8Array(rows * cols * STORED_FLOAT_SIZE[dstDtype]);
        const r0 = await kernel.update(new Uint8Array(w.buffer), 'F32', want, dstDtype, job);
        const got = new Uint8Array(want.length);
        const r = await kernel.updateHadamard!(src, srcDtype, got, dstDtype, job, { a, b, scale: t.scale, coef });
        expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), kernel.name).toBe(0);
        expect(r).toEqual(r0);
      }
    });
  }

  it('jobs of changing sizes one after another on one kernel (the reused zero region stays zero)', async () => {
    const kernel = await createCpuKernel({ threads: 2 });
    try {
      const shapes: [number, number, number][] = [
        [256, 640, 8],
        [16, 24, 2],
        [128, 320, 4],
        [512, 64, 16],
        [256, 640, 8],
        [40, 8, 2],
      ];
      for (const [rows, cols, r] of shapes) {
        const t = loha([rows, cols], r, r, rows + cols);
        const { a, b } = hadamardPairs(t, 'x');
        const src = encode(random(rows * cols, rows, 0.3), 'F16');
        const job = { rows, cols, rank: 0, up: new Float32Array(0), down: new Float32Array(0) };
        const w = denseReference(decodeToF32('F16', src), termDelta(t, 'x'), 0.9);
        const want = new Uint8Array(src.length);
        await kernel.update(new Uint8Array(w.buffer), 'F32', want, 'F16', job);
        const got = new Uint8Array(src.length);
        await kernel.updateHadamard!(src, 'F16', got, 'F16', job, { a, b, scale: t.scale, coef: 0.9 });
        expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), `${rows}×${cols}`).toBe(0);
      }
    } finally {
      await kernel.dispose();
    }
  });

  for (const [name, t] of lokrCases) {
    it(`updateKronecker: LoKr ${name}, F16 → F16 with a rank-2 LoRA`, async () => {
      const rows = t.shape[0]!;
      const cols = t.shape.slice(1).reduce((x, y) => x * y, 1);
      const src = encode(random(rows * cols, 21, 0.3), 'F16');
      const job = { rows, cols, rank: 2, up: random(rows * 2, 22, 0.1), down: random(2 * cols, 23, 0.1) };
      const sides = kroneckerSides(t, name);
      for (const kernel of kernels) {
        for (const coef of [0.6, -1.1]) {
          const w = denseReference(decodeToF32('F16', src), termDelta(t, name), coef);
          const want = new Uint8Array(src.length);
          const r0 = await kernel.update(new Uint8Array(w.buffer), 'F32', want, 'F16', job);
          const got = new Uint8Array(src.length);
          const r = await kernel.updateKronecker!(src, 'F16', got, 'F16', job, { ...sides, scale: t.scale, coef });
          expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), `${kernel.name} ${coef}`).toBe(0);
          expect(r).toEqual(r0);
        }
      }
    });
  }

  it('updateKronecker: sides that do not give the job: KERNEL_INVALID_JOB', async () => {
    const job = { rows: 8, cols: 8, rank: 0, up: new Float32Array(0), down: new Float32Array(0) };
    const buf = new Uint8Array(8 * 8 * 2);
    const part = { left: random(4, 1), rows: 2, leftCols: 2, right: random(12, 2), rightRows: 4, rightCols: 3 };
    await expect(
      kernels[0]!.updateKronecker!(buf, 'F16', buf, 'F16', job, { ...part, scale: 1, coef: 1 }),
    ).rejects.toMatchObject({ code: 'KERNEL_INVALID_JOB' });
  });

  it('in place (source and destination one buffer) and overflow counted as update() counts it', async () => {
    const t = loha([64, 48], 4, 4, 11);
    const { a, b } = hadamardPairs(t, 'x');
    const src = encode(random(64 * 48, 9, 60000), 'F16');
    const job = { rows: 64, cols: 48, rank: 0, up: new Float32Array(0), down: new Float32Array(0) };
    const w = denseReference(decodeToF32('F16', src), termDelta(t, 'x'), 4e9);
    const want = new Uint8Array(src.length);
    const r0 = await kernels[0]!.update(new Uint8Array(w.buffer), 'F32', want, 'F16', job);
    expect(r0.overflow).toBeGreaterThan(0);
    const r = await kernels[0]!.updateHadamard!(src, 'F16', src, 'F16', job, { a, b, scale: t.scale, coef: 4e9 });
    expect(r).toEqual(r0);
    expect(Buffer.compare(Buffer.from(src), Buffer.from(want))).toBe(0);
  });

  it('factors that do not fit the job: KERNEL_INVALID_JOB', async () => {
    const t = loha([8, 8], 2, 2, 1);
    const { a, b } = hadamardPairs(t, 'x');
    const job = { rows: 8, cols: 8, rank: 0, up: new Float32Array(0), down: new Float32Array(0) };
    const buf = new Uint8Array(8 * 8 * 2);
    await expect(
      kernels[0]!.updateHadamard!(buf, 'F16', buf, 'F16', job, { a: { ...a, rank: 3 }, b, scale: 1, coef: 1 }),
    ).rejects.toMatchObject({ code: 'KERNEL_INVALID_JOB' });
  });
});

/** A side given full ([rows, cols] values) or as the product [rows, r]·[r, cols]. */
function side(rows: number, cols: number, rank: number, seed: number, scale = 0.5): KroneckerTerm['left'] {
  if (rank === 0) return { full: ndarray(random(rows * cols, seed, scale), [rows, cols]) };
  return {
    up: ndarray(random(rows * rank, seed, scale), [rows, rank]),
    down: ndarray(random(rank * cols, seed + 1, scale), [rank, cols]),
  };
}

/**
 * A conv LoKr whose w2 has a Tucker core, as the decoder builds it from lokr_w2_a [r, o2], lokr_w2_b [r, i2] and
 * lokr_t2 [r, r, kh, kw]: up = lokr_w2_aᵀ, down = the core folded into lokr_w2_b (src/formats/adapters.ts).
 */
function tuckerLokr(o1: number, i1: number, o2: number, i2: number, r: number, seed: number): KroneckerTerm {
  const a = random(r * o2, seed, 0.3);
  const up = new Float32Array(o2 * r);
  for (let p = 0; p < r; p++) for (let o = 0; o < o2; o++) up[o * r + p] = a[p * o2 + o]!;
  const down = foldTucker(random(r * r * 9, seed + 1, 0.3), [r, r, 3, 3], random(r * i2, seed + 2, 0.3), i2);
  return {
    kind: 'kronecker',
    shape: [o1 * o2, i1 * i2, 3, 3],
    scale: 0.75,
    left: side(o1, i1, 0, seed + 3),
    right: { up: ndarray(up, [o2, r]), down: ndarray(down, [r, i2 * 9]) },
  };
}

describe("updateKronecker (the kernel's LoKr job: one pass per tile) writes the bytes of the dense path", () => {
  // [name, term, job rank, source dtype, output dtype]
  const cases: [string, KroneckerTerm, number, StoredFloat, StoredFloat][] = [
    [
      'attention 1280×1280: w1 full [32, 32] ⊗ w2 [40, 8]·[8, 40], F16 → F16',
      { kind: 'kronecker', shape: [1280, 1280], scale: 1, left: side(32, 32, 0, 31), right: side(40, 40, 8, 32, 0.3) },
      0,
      'F16',
      'F16',
    ],
    [
      'conv 320×640×3×3, w2 with a Tucker core, rank-3 LoRA, BF16 → F16',
      tuckerLokr(16, 32, 20, 20, 4, 41),
      3,
      'BF16',
      'F16',
    ],
    [
      'both sides factored, 1339×651 (rows and columns off the tiles, 93 = w2 columns), rank-5 LoRA, F32 → BF16',
      { kind: 'kronecker', shape: [1339, 651], scale: 2, left: side(13, 7, 2, 51), right: side(103, 93, 3, 53) },
      5,
      'F32',
      'BF16',
    ],
    [
      'w2 narrower than a tile: [64, 3] full, w1 [20, 40] full, F16 → F32',
      { kind: 'kronecker', shape: [1280, 120], scale: 0.5, left: side(20, 40, 0, 61), right: side(64, 3, 0, 62) },
      0,
      'F16',
      'F32',
    ],
    [
      'w1 a single row: [1, 6] ⊗ w2 [518, 11]·… (tiles across w1 columns), rank-2 LoRA, BF16 → BF16',
      { kind: 'kronecker', shape: [518, 66], scale: 1.5, left: side(1, 6, 0, 71), right: side(518, 11, 4, 72) },
      2,
      'BF16',
      'BF16',
    ],
    [
      'tiny 6×10 (one thread does it), F32 → F32',
      { kind: 'kronecker', shape: [6, 10], scale: 1, left: side(2, 5, 0, 81), right: side(3, 2, 0, 82) },
      1,
      'F32',
      'F32',
    ],
  ];
  for (const [name, t, rank, srcDtype, dstDtype] of cases) {
    it(name, async () => {
      const rows = t.shape[0]!;
      const cols = t.shape.slice(1).reduce((x, y) => x * y, 1);
      const w0 = random(rows * cols, rows + 1, 0.3);
      // zeros of both signs in the base: W + 0 turns −0 into +0 before the add, in both paths
      for (let i = 0; i < w0.length; i += 331) w0[i] = i % 2 === 0 ? 0 : -0;
      const src = encode(w0, srcDtype);
      const job = { rows, cols, rank, up: random(rows * rank, 4, 0.1), down: random(rank * cols, 5, 0.1) };
      const sides = kroneckerSides(t, name);
      for (const kernel of kernels) {
        // ±1: the kronunit_* functions (f32) where s·left is exactly f32 (scale 1, 0.5, 2 here), else kronecker_*
        for (const coef of [0.7, -1.3, 1, -1]) {
          const w = denseReference(decodeToF32(srcDtype, src), termDelta(t, name), coef);
          const want = new Uint8Array(rows * cols * STORED_FLOAT_SIZE[dstDtype]);
          const r0 = await kernel.update(new Uint8Array(w.buffer), 'F32', want, dstDtype, job);
          const got = new Uint8Array(want.length);
          const r = await kernel.updateKronecker!(src, srcDtype, got, dstDtype, job, {
            ...sides,
            scale: t.scale,
            coef,
          });
          expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), `${kernel.name}, coef ${coef}`).toBe(0);
          expect(r).toEqual(r0);
        }
      }
    });
  }

  it('specials, in place: NaN / ±Inf / ±0 in W, Inf in w2 where w1 is 0, overflow with and without clamp', async () => {
    const left = random(8 * 6, 91, 1);
    for (let i = 0; i < left.length; i += 5) left[i] = i % 10 === 0 ? 0 : -0;
    const right = random(40 * 24, 92, 1);
    // an Inf in the full w2 (whose product with the identity makes its row NaN): it must reach only the rows of
    // w1 entries that are not 0, as the dense path skips the zeros
    right[3] = Infinity;
    const t: KroneckerTerm = {
      kind: 'kronecker',
      shape: [320, 144],
      scale: 1,
      left: { full: ndarray(left, [8, 6]) },
      right: { full: ndarray(right, [40, 24]) },
    };
    const rows = 320;
    const cols = 144;
    const delta = termDelta(t, 'x');
    const w0 = random(rows * cols, 93, 60000);
    // NaN in W only where Δ is finite: where both are NaN, which NaN the sum keeps is the compiler's choice
    // (WebAssembly leaves it open), in the old passes and the JS reference alike
    for (let i = 0; i < w0.length; i += 97) {
      const v = [Number.NaN, Infinity, -Infinity, 0, -0][(i / 97) % 5]!;
      w0[i] = Number.isNaN(v) && !Number.isFinite(delta[i]!) ? -Infinity : v;
    }
    const base = encode(w0, 'F16');
    const job = { rows, cols, rank: 2, up: random(rows * 2, 94, 0.1), down: random(2 * cols, 95, 0.1) };
    const sides = kroneckerSides(t, 'x');
    // the same W on the f32 functions (c = 1, w2 finite): NaN, ±Inf and ±0 in W
    const finite: KroneckerTerm = { ...t, right: { full: ndarray(random(40 * 24, 92, 1), [40, 24]) } };
    const fSides = kroneckerSides(finite, 'x');
    expect(kroneckerUnit({ ...fSides, scale: 1, coef: 1 })).toBe(1);
    for (const kernel of kernels) {
      const w = denseReference(decodeToF32('F16', base), termDelta(finite, 'x'), 1);
      const want = new Uint8Array(base.length);
      const r0 = await kernel.update(new Uint8Array(w.buffer), 'F32', want, 'F16', job);
      const got = base.slice();
      const r = await kernel.updateKronecker!(got, 'F16', got, 'F16', job, { ...fSides, scale: 1, coef: 1 });
      expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), `${kernel.name}, f32 functions`).toBe(0);
      expect(r).toEqual(r0);
    }
    for (const kernel of kernels) {
      for (const clamp of [false, true]) {
        const w = denseReference(decodeToF32('F16', base), delta, 30000);
        const want = new Uint8Array(base.length);
        const r0 = await kernel.update(new Uint8Array(w.buffer), 'F32', want, 'F16', job, { clamp });
        expect(r0.overflow).toBeGreaterThan(0);
        expect(r0.nonFiniteInput).toBeGreaterThan(0);
        const got = base.slice();
        const r = await kernel.updateKronecker!(
          got,
          'F16',
          got,
          'F16',
          job,
          { ...sides, scale: 1, coef: 30000 },
          { clamp },
        );
        expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), `${kernel.name}, clamp ${clamp}`).toBe(0);
        expect(r).toEqual(r0);
      }
    }
  });

  it("the f32 functions (kronunit_*) are picked only where they give the f64 ones' values", () => {
    const part = { left: random(12, 1, 1), rows: 3, leftCols: 4, right: random(20, 2), rightRows: 4, rightCols: 5 };
    expect(kroneckerUnit({ ...part, scale: 1, coef: 1 })).toBe(1);
    expect(kroneckerUnit({ ...part, scale: 0.125, coef: -1 })).toBe(-1);
    // c·s·left not exactly f32, or c not ±1: f64
    expect(kroneckerUnit({ ...part, scale: 0.1, coef: 1 })).toBe(0);
    expect(kroneckerUnit({ ...part, scale: 1, coef: 0.5 })).toBe(0);
    // a non-finite right value (the zero rule needs the f64 functions' mask)
    const right = part.right.slice();
    right[7] = Number.NaN;
    expect(kroneckerUnit({ ...part, right, scale: 1, coef: 1 })).toBe(0);
  });

  it('LoKr jobs of changing shapes one after another on one kernel, between LoHa and plain jobs', async () => {
    const kernel = kernels[1]!;
    const shapes: [number, number, number, number][] = [
      [16, 40, 40, 32],
      [2, 3, 4, 5],
      [8, 8, 80, 72],
      [5, 9, 13, 7],
    ];
    for (const [o1, i1, o2, n2] of shapes) {
      const t: KroneckerTerm = {
        kind: 'kronecker',
        shape: [o1 * o2, i1 * n2],
        scale: 1,
        left: side(o1, i1, 0, o1 + i1),
        right: side(o2, n2, 2, o2 + n2),
      };
      const rows = o1 * o2;
      const cols = i1 * n2;
      const src = encode(random(rows * cols, rows, 0.3), 'F16');
      const job = { rows, cols, rank: 0, up: new Float32Array(0), down: new Float32Array(0) };
      const w = denseReference(decodeToF32('F16', src), termDelta(t, 'x'), 0.9);
      const want = new Uint8Array(src.length);
      await kernel.update(new Uint8Array(w.buffer), 'F32', want, 'F16', job);
      const got = new Uint8Array(src.length);
      await kernel.updateKronecker!(src, 'F16', got, 'F16', job, { ...kroneckerSides(t, 'x'), scale: 1, coef: 0.9 });
      expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), `${rows}×${cols}`).toBe(0);
      // a LoHa job between (its own parameters at the shared offsets), then the next LoKr
      const h = loha([64, 48], 2, 2, rows);
      const hs = hadamardPairs(h, 'h');
      const hb = encode(random(64 * 48, 7, 0.3), 'F16');
      const hjob = { rows: 64, cols: 48, rank: 0, up: new Float32Array(0), down: new Float32Array(0) };
      await kernel.updateHadamard!(hb, 'F16', hb, 'F16', hjob, { ...hs, scale: 1, coef: 1 });
    }
  });
});

describe('fuseLoras on the kernel path: every adapter fixture, F16 output = the dense-delta path rounded once', () => {
  for (const kind of KINDS) {
    it(kind, async () => {
      const adapter = path.join(FX, 'adapters', `${kind}.safetensors`);
      const lora = await loadLora(adapter);
      const layout = getLayout('sd15', 'tiny');
      const w = 0.7;
      const out = path.join(tmp, `${kind}.safetensors`);
      await fuseLoras(BASE, [adapter], [w], { out, threads: 2 });
      const base = await openSafetensors(BASE);
      const fused = await openSafetensors(out);
      try {
        for (const [p, t] of lora.modules) {
          const key = layout.byPath.get(p)!.singleFileWeightKey;
          const w0 = await base.readF32(key);
          const want = denseReference(w0, termDelta(t, p, w0), w);
          const raw = await fused.read(key);
          const got = new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
          let differing = 0;
          for (let i = 0; i < want.length; i++) if (got[i] !== numberToF16Bits(want[i]!)) differing++;
          // lowRank (LoCon) goes through the kernel's U·D, not the dense path: there only a rounding bound holds.
          if (t.kind === undefined || t.kind === 'lowRank') expect(differing / want.length, p).toBeLessThan(0.01);
          else expect(differing, p).toBe(0);
        }
      } finally {
        await base.close();
        await fused.close();
      }
    });
  }
});
