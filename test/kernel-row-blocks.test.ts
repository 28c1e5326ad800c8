/**
 * A job larger than the kernel's row-block size (512 MiB of W by default; WasmKernelOptions.maxBlockBytes, lowered
 * here) is updated block by block. A LoKr's Kronecker product and a LoHa's two products must then give each block its
 * own rows: the LoKr's rows r0..r1 of s·left ⊗ right (block starts that fall inside a run of the right side's rows),
 * the LoHa's rows of both pairs' up factors, and the plain LoRA's rows of the job's up factor. The bytes must be those
 * of the dense path (W0 + c·Δ rounded to f32 per element, then one rounding to the output dtype) on a kernel that
 * does the job in one block: F16 and F32 (and F16 → F32), 2 threads (and 1).
 */
import ndarray from 'ndarray';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import '../src/node.js';
import { decodeToF32 } from '../src/core/dtype.js';
import { numberToF16Bits } from '../src/core/dtype-scalar.js';
import { kernelModule, WasmEngine, MAX_PAGES } from '../src/kernels/wasm-engine.js';
import { STORED_FLOAT_SIZE, type FuseKernel, type StoredFloat, type UpdateJob } from '../src/kernels/types.js';
import { createCpuKernel } from '../src/node/kernel-threads.js';
import { hadamardPairs, kroneckerSides, termDelta } from '../src/lora/terms/index.js';
import type { HadamardTerm, KroneckerTerm } from '../src/lora/types.js';

/** 1 MiB of W per block: a 1280-column F16 job is cut every 408 rows, F32 every 204, F16 → F32 every 136. */
const BLOCK_BYTES = 1 << 20;

let blocked: FuseKernel[] = [];
let whole: FuseKernel;
beforeAll(async () => {
  blocked = [
    await createCpuKernel({ threads: 2, maxBlockBytes: BLOCK_BYTES }),
    await createCpuKernel({ threads: 1, maxBlockBytes: BLOCK_BYTES }),
  ];
  whole = await createCpuKernel({ threads: 2 });
});
afterAll(async () => {
  await Promise.all([...blocked, whole].map((k) => k.dispose()));
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

function encode(values: Float32Array, dtype: StoredFloat): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.slice().buffer);
  const bits = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) bits[i] = numberToF16Bits(values[i]!);
  return new Uint8Array(bits.buffer);
}

/** The dense path's W: W0 + coef·Δ, each element rounded to f32. */
function denseW(w0: Float32Array, delta: Float32Array, coef: number): Float32Array {
  const out = w0.slice();
  for (let i = 0; i < out.length; i++) out[i] = out[i]! + coef * delta[i]!;
  return out;
}

/** A side given full or as the product [rows, r]·[r, cols]. */
function side(rows: number, cols: number, rank: number, seed: number, scale = 0.5): KroneckerTerm['left'] {
  if (rank === 0) return { full: ndarray(random(rows * cols, seed, scale), [rows, cols]) };
  return {
    up: ndarray(random(rows * rank, seed, scale), [rows, rank]),
    down: ndarray(random(rank * cols, seed + 1, scale), [rank, cols]),
  };
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

/** How many row blocks a kernel with BLOCK_BYTES cuts this job into (the engine's own rule). */
async function blockCount(job: UpdateJob, src: StoredFloat, dst: StoredFloat): Promise<number> {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES });
  return new WasmEngine(await kernelModule(false, false), memory, BLOCK_BYTES).blocks(job, src, dst).length;
}

const IO: [StoredFloat, StoredFloat][] = [
  ['F16', 'F16'],
  ['F32', 'F32'],
  ['F16', 'F32'],
];

const lokrCases: [string, KroneckerTerm][] = [
  [
    'w1 full [4, 4] ⊗ w2 [320, 8]·[8, 320] (1280×1280: blocks start inside a run of 320 rows)',
    {
      kind: 'kronecker',
      shape: [1280, 1280],
      scale: 1.25,
      left: side(4, 4, 0, 5, 1),
      right: side(320, 320, 8, 6),
    },
  ],
  [
    'both sides factored, 1339×651 (rows not a multiple of 4)',
    { kind: 'kronecker', shape: [1339, 651], scale: 2, left: side(13, 7, 2, 51), right: side(103, 93, 3, 53) },
  ],
  [
    'w1 [64, 1] ⊗ w2 full [20, 1280] (blocks cut at every 4th row of the left side)',
    { kind: 'kronecker', shape: [1280, 1280], scale: 0.5, left: side(64, 1, 0, 61, 1), right: side(20, 1280, 0, 62) },
  ],
];

describe('LoKr and LoHa fused in several row blocks give the bytes of the dense path', () => {
  for (const [name, t] of lokrCases) {
    for (const [srcDtype, dstDtype] of IO) {
      it(`LoKr ${name}, ${srcDtype} → ${dstDtype}, with a rank-2 LoRA`, async () => {
        const rows = t.shape[0]!;
        const cols = t.shape.slice(1).reduce((x, y) => x * y, 1);
        const src = encode(random(rows * cols, 21, 0.3), srcDtype);
        const job = { rows, cols, rank: 2, up: random(rows * 2, 22, 0.1), down: random(2 * cols, 23, 0.1) };
        expect(await blockCount(job, srcDtype, dstDtype)).toBeGreaterThan(1);
        const sides = kroneckerSides(t, name);
        for (const coef of [0.6, -1]) {
          const w = denseW(decodeToF32(srcDtype, src), termDelta(t, name), coef);
          const want = new Uint8Array(rows * cols * STORED_FLOAT_SIZE[dstDtype]);
          const r0 = await whole.update(new Uint8Array(w.buffer), 'F32', want, dstDtype, job);
          for (const kernel of blocked) {
            const got = new Uint8Array(want.length);
            const r = await kernel.updateKronecker!(src, srcDtype, got, dstDtype, job, {
              ...sides,
              scale: t.scale,
              coef,
            });
            expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), `${kernel.name} coef ${coef}`).toBe(0);
            expect(r).toEqual(r0);
          }
        }
      });
    }
  }

  const lohaCases: [string, number[], number, number][] = [
    ['1280×1280, ranks 16 and 8', [1280, 1280], 16, 8],
    ['1283×700 (rows not a multiple of 4), ranks 5 and 3', [1283, 700], 5, 3],
  ];
  for (const [name, shape, r1, r2] of lohaCases) {
    for (const [srcDtype, dstDtype] of IO) {
      it(`LoHa ${name}, ${srcDtype} → ${dstDtype}, with a rank-3 LoRA`, async () => {
        const t = loha(shape, r1, r2, 7 + shape[0]!);
        const rows = shape[0]!;
        const cols = shape.slice(1).reduce((x, y) => x * y, 1);
        const src = encode(random(rows * cols, 3, 0.3), srcDtype);
        const job = { rows, cols, rank: 3, up: random(rows * 3, 4, 0.1), down: random(3 * cols, 5, 0.1) };
        expect(await blockCount(job, srcDtype, dstDtype)).toBeGreaterThan(1);
        const { a, b } = hadamardPairs(t, name);
        const coef = -0.8;
        const w = denseW(decodeToF32(srcDtype, src), termDelta(t, name), coef);
        const want = new Uint8Array(rows * cols * STORED_FLOAT_SIZE[dstDtype]);
        const r0 = await whole.update(new Uint8Array(w.buffer), 'F32', want, dstDtype, job);
        for (const kernel of blocked) {
          const got = new Uint8Array(want.length);
          const r = await kernel.updateHadamard!(src, srcDtype, got, dstDtype, job, { a, b, scale: t.scale, coef });
          expect(Buffer.compare(Buffer.from(got), Buffer.from(want)), kernel.name).toBe(0);
          expect(r).toEqual(r0);
        }
      });
    }
  }
});
