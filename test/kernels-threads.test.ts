import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWasmKernel } from '../src/kernels/cpu.js';
import { createCpuKernel, defaultThreads, workersOf } from '../src/node/kernel-threads.js';
import type { FuseKernel, StoredFloat } from '../src/kernels/types.js';
import {
  DTYPES,
  emulatePlain,
  expectSameBytes,
  expectWithinBound,
  randomJob,
  randomW,
  SIZE,
  stored,
} from './kernel-helpers.js';

// shapes big enough to be split across threads (≥ 2 row tiles per thread, ≥ 2 MFLOP), with uneven row tiles
const SHAPES = [
  [124, 300, 32], // 31 row tiles: uneven split
  [256, 136, 64],
  [61, 1000, 20], // rows not a multiple of 4
] as const;

let single: FuseKernel;
let two: FuseKernel;
let twoRelaxed: FuseKernel;
let oneRelaxed: FuseKernel;
let twoSmallChunks: FuseKernel;

beforeAll(async () => {
  single = await createWasmKernel({ relaxed: false });
  two = await createCpuKernel({ threads: 2, relaxed: false });
  twoRelaxed = await createCpuKernel({ threads: 2 });
  oneRelaxed = await createCpuKernel({ threads: 1 });
  twoSmallChunks = await createCpuKernel({ threads: 2, relaxed: false, chunkTiles: 3 }); // many chunks, uneven last
});
afterAll(async () => {
  await Promise.all([
    single.dispose(),
    two.dispose(),
    twoRelaxed.dispose(),
    oneRelaxed.dispose(),
    twoSmallChunks.dispose(),
  ]);
});

describe('threaded WASM kernel', () => {
  it('names its backend and thread count', () => {
    expect(two.name).toBe('wasm-simd ×2 threads');
    expect(twoRelaxed.name).toBe('wasm-simd-relaxed ×2 threads');
    expect(oneRelaxed.name).toBe('wasm-simd-relaxed ×1 thread');
    expect(workersOf(two)).toHaveLength(1);
    expect(workersOf(oneRelaxed)).toHaveLength(0);
    expect(defaultThreads()).toBeGreaterThanOrEqual(1);
  });

  it('2 threads give exactly the bits of 1 thread (mul+add), for every dtype pair', async () => {
    for (const [rows, cols, rank] of SHAPES) {
      for (const srcDt of DTYPES) {
        for (const dstDt of DTYPES) {
          const job = randomJob(rows, cols, rank, rows + cols + rank, 0.3);
          const src = stored(randomW(rows, cols, rank), srcDt);
          const a = new Uint8Array(rows * cols * SIZE[dstDt]);
          const b = new Uint8Array(rows * cols * SIZE[dstDt]);
          const c = new Uint8Array(rows * cols * SIZE[dstDt]);
          const ra = await single.update(src, srcDt, a, dstDt, job);
          const rb = await two.update(src, srcDt, b, dstDt, job);
          const rc = await twoSmallChunks.update(src, srcDt, c, dstDt, job); // many chunks, uneven last one
          expectSameBytes(b, a);
          expectSameBytes(c, a);
          expect(rb).toEqual(ra);
          expect(rc).toEqual(ra);
        }
      }
    }
    const [rows, cols, rank] = SHAPES[0];
    const job = randomJob(rows, cols, rank, 5);
    const src = stored(randomW(rows, cols, 6), 'F16');
    const out = new Uint8Array(src.length);
    await two.update(src, 'F16', out, 'F16', job);
    expectSameBytes(out, emulatePlain(src, 'F16', 'F16', job).out);
  });

  it('relaxed: 1 and 2 threads agree bit for bit, and stay within the f64 bound', async () => {
    for (const [rows, cols, rank] of SHAPES) {
      for (const dt of ['F32', 'F16'] as StoredFloat[]) {
        const job = randomJob(rows, cols, rank, 77 + rows);
        const src = stored(randomW(rows, cols, 78), dt);
        const a = new Uint8Array(src.length);
        const b = new Uint8Array(src.length);
        await oneRelaxed.update(src, dt, a, dt, job);
        await twoRelaxed.update(src, dt, b, dt, job);
        expectSameBytes(b, a);
        expectWithinBound(b, src, dt, dt, job);
      }
    }
  });

  it('counts overflows and non-finite inputs across threads', async () => {
    const rows = 128;
    const cols = 64;
    const w = Float64Array.from({ length: rows * cols }, (_, i) =>
      i % 97 === 0 ? NaN : i % 89 === 0 ? -Infinity : 65000,
    );
    const job = randomJob(rows, cols, 16, 3);
    job.up.fill(0);
    for (let i = 0; i < rows; i += 3) job.up[i * 16] = 1; // every third row gets + down[0][j]
    job.down.fill(0);
    for (let j = 0; j < cols; j++) job.down[j] = j % 2 ? 1000 : 0; // pushes 65000 past 65504 on odd columns
    const src = stored(w, 'F16');
    for (const clamp of [false, true]) {
      const a = new Uint8Array(src.length);
      const b = new Uint8Array(src.length);
      const c = src.slice(); // in place, many chunks
      const ra = await single.update(src, 'F16', a, 'F16', job, { clamp });
      const rb = await two.update(src, 'F16', b, 'F16', job, { clamp });
      const rc = await twoSmallChunks.update(c, 'F16', c, 'F16', job, { clamp });
      expect(rb).toEqual(ra);
      expect(rc).toEqual(ra);
      expectSameBytes(b, a);
      expectSameBytes(c, a);
      expect(ra.overflow).toBeGreaterThan(100);
      expect(ra.nonFiniteInput).toBe(Array.from(w).filter((v) => !Number.isFinite(v)).length);
    }
  });

  it('serialises concurrent update calls', async () => {
    const jobs = [0, 1, 2, 3].map((s) => randomJob(96, 200, 24, 500 + s));
    const srcs = jobs.map((_, s) => stored(randomW(96, 200, 600 + s), 'F32'));
    const outs = await Promise.all(
      jobs.map(async (job, s) => {
        const out = new Uint8Array(srcs[s]!.length);
        await two.update(srcs[s]!, 'F32', out, 'F32', job);
        return out;
      }),
    );
    for (let s = 0; s < jobs.length; s++) expectSameBytes(outs[s]!, emulatePlain(srcs[s]!, 'F32', 'F32', jobs[s]!).out);
    expect(two.stats.calls).toBeGreaterThanOrEqual(4);
  });
});

describe('threaded WASM kernel lifecycle', () => {
  it('dispose() ends every worker and later updates reject', async () => {
    const k = await createCpuKernel({ threads: 3 });
    const ws = workersOf(k);
    expect(ws).toHaveLength(2);
    const job = randomJob(64, 64, 8, 1);
    const src = stored(randomW(64, 64, 2), 'F32');
    await k.update(src, 'F32', src.slice(), 'F32', job);
    await k.dispose();
    expect(ws.every((w) => w.threadId === -1)).toBe(true);
    await k.dispose(); // idempotent
    await expect(k.update(src, 'F32', src.slice(), 'F32', job)).rejects.toMatchObject({ code: 'KERNEL_DISPOSED' });
  });

  it('a worker that dies makes the next update reject with KERNEL_FAILED (no hang)', async () => {
    const k = await createCpuKernel({ threads: 2 });
    const [w] = workersOf(k);
    await w!.terminate();
    await new Promise((r) => setTimeout(r, 20));
    const job = randomJob(128, 128, 16, 1);
    const src = stored(randomW(128, 128, 2), 'F32');
    await expect(k.update(src, 'F32', src.slice(), 'F32', job)).rejects.toMatchObject({
      code: 'KERNEL_FAILED',
      message: expect.stringContaining('worker 1 exited'),
    });
    await k.dispose();
  });

  it('rejects an invalid thread count or chunk size', async () => {
    await expect(createCpuKernel({ threads: 0 })).rejects.toMatchObject({ code: 'OPTION_INVALID' });
    await expect(createCpuKernel({ threads: 2, chunkTiles: 0 })).rejects.toMatchObject({ code: 'OPTION_INVALID' });
  });
});
