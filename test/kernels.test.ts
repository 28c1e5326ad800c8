import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FuseError } from '../src/core/errors.js';
import { createWasmKernel, runJobSingle } from '../src/kernels/cpu.js';
import { enableRelaxedSimdNode } from '../src/node/kernel-threads.js';
import { createJsKernel, decodeStored, referenceUpdate } from '../src/kernels/js.js';
import type { FuseKernel, StoredFloat } from '../src/kernels/types.js';
import { kernelModuleSync, MAX_PAGES, WasmEngine } from '../src/kernels/wasm-engine.js';
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

let plain: FuseKernel;
let relaxed: FuseKernel;

beforeAll(async () => {
  expect(enableRelaxedSimdNode()).toBe(true); // Node 20: the V8 flag set at run time must really validate
  plain = await createWasmKernel({ relaxed: false });
  relaxed = await createWasmKernel();
});
afterAll(async () => {
  await plain.dispose();
  await relaxed.dispose();
});

async function runBoth(srcDt: StoredFloat, dstDt: StoredFloat, rows: number, cols: number, rank: number, seed: number) {
  const job = randomJob(rows, cols, rank, seed, 0.5);
  const src = stored(randomW(rows, cols, seed, 2), srcDt);
  const a = new Uint8Array(rows * cols * SIZE[dstDt]);
  const b = new Uint8Array(rows * cols * SIZE[dstDt]);
  const ra = await plain.update(src, srcDt, a, dstDt, job);
  const rb = await relaxed.update(src, srcDt, b, dstDt, job);
  return { job, src, a, b, ra, rb };
}

describe('WASM fused update: accuracy', () => {
  it('reports its backend', () => {
    expect(plain.backend).toBe('wasm-simd');
    expect(relaxed.backend).toBe('wasm-simd-relaxed');
  });

  it('mul+add build equals an exact f32 emulation bit for bit; relaxed build within the f64 bound (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 23 }),
        fc.integer({ min: 1, max: 37 }),
        fc.integer({ min: 1, max: 130 }),
        fc.constantFrom(...DTYPES),
        fc.constantFrom(...DTYPES),
        fc.integer({ min: 1, max: 2 ** 30 }),
        async (rows, cols, rank, srcDt, dstDt, seed) => {
          const { job, src, a, b, ra, rb } = await runBoth(srcDt, dstDt, rows, cols, rank, seed);
          const em = emulatePlain(src, srcDt, dstDt, job);
          expectSameBytes(a, em.out);
          expect(ra).toEqual(em.res);
          expectWithinBound(a, src, srcDt, dstDt, job);
          expectWithinBound(b, src, srcDt, dstDt, job);
          expect(rb).toEqual({ overflow: 0, nonFiniteInput: 0 });
        },
      ),
      { numRuns: 60 },
    );
  });

  it('handles shapes that are not multiples of the 4×8 tile, and big ranks', async () => {
    for (const [rows, cols, rank] of [
      [1, 1, 1],
      [3, 7, 1],
      [4, 8, 2],
      [5, 9, 130],
      [67, 131, 17],
      [130, 24, 3],
      [9, 300, 64],
    ] as const) {
      for (const dt of DTYPES) {
        const { job, src, a, b } = await runBoth(dt, dt, rows, cols, rank, rows * 1000 + cols);
        expectSameBytes(a, emulatePlain(src, dt, dt, job).out);
        expectWithinBound(b, src, dt, dt, job);
      }
    }
  });

  it('rank 0 converts W unchanged (one rounding to the output dtype)', async () => {
    const w = randomW(6, 10, 3, 100);
    const src = stored(w, 'F32');
    const out = new Uint8Array(60 * 2);
    const ref = new Uint8Array(60 * 2);
    await relaxed.update(src, 'F32', out, 'F16', {
      rows: 6,
      cols: 10,
      rank: 0,
      up: new Float32Array(0),
      down: new Float32Array(0),
    });
    referenceUpdate(src, 'F32', ref, 'F16', {
      rows: 6,
      cols: 10,
      rank: 0,
      up: new Float32Array(0),
      down: new Float32Array(0),
    });
    expectSameBytes(out, ref);
  });

  it('decodes every one of the 65,536 F16 and BF16 source patterns exactly (zero update)', async () => {
    const halves = new Uint8Array(Uint16Array.from({ length: 65536 }, (_, i) => i).buffer);
    const job = { rows: 256, cols: 256, rank: 1, up: new Float32Array(256), down: new Float32Array(256) };
    for (const srcDt of ['F16', 'BF16'] as const) {
      const want = decodeStored(halves, srcDt);
      for (const k of [plain, relaxed]) {
        const out = new Uint8Array(65536 * 4);
        const res = await k.update(halves, srcDt, out, 'F32', job);
        const got = decodeStored(out, 'F32');
        let nonFinite = 0;
        for (let i = 0; i < 65536; i++) {
          const w = want[i]!;
          if (!Number.isFinite(w)) nonFinite++;
          // x + 0 keeps every value (−0 + +0 is +0), NaN stays NaN
          if (Number.isNaN(w)) expect(Number.isNaN(got[i]!)).toBe(true);
          else if (got[i] !== w) expect.fail(`${srcDt} pattern 0x${i.toString(16)}: got ${got[i]}, want ${w}`);
        }
        expect(res).toEqual({ overflow: 0, nonFiniteInput: nonFinite });
        // and back to the same dtype: every finite pattern survives (−0 becomes +0)
        const back = new Uint8Array(65536 * 2);
        await k.update(halves, srcDt, back, srcDt, job);
        const b16 = new Uint16Array(back.buffer);
        for (let i = 0; i < 65536; i++) {
          if (!Number.isFinite(want[i]!)) continue;
          const expected = i === 0x8000 ? 0 : i;
          if (b16[i] !== expected) expect.fail(`${srcDt} round trip 0x${i.toString(16)} → 0x${b16[i]!.toString(16)}`);
        }
      }
    }
  });

  it('works in place (src and dst the same bytes) and on unaligned views', async () => {
    const rows = 13;
    const cols = 21;
    const job = randomJob(rows, cols, 5, 7);
    for (const dt of DTYPES) {
      const src = stored(randomW(rows, cols, 8), dt);
      const expected = emulatePlain(src, dt, dt, job).out;
      // in place
      const buf = src.slice();
      await plain.update(buf, dt, buf, dt, job);
      expectSameBytes(buf, expected);
      // source and destination at odd byte offsets inside bigger buffers
      const big = new Uint8Array(src.length + 7);
      big.set(src, 3);
      const view = big.subarray(3, 3 + src.length);
      const outBig = new Uint8Array(src.length + 5);
      const outView = outBig.subarray(1, 1 + src.length);
      await plain.update(view, dt, outView, dt, job);
      expectSameBytes(outView, expected);
      expect(outBig[0]).toBe(0);
      expect(outBig[src.length + 1]).toBe(0);
    }
  });

  it('the plain JS kernel is the f64 reference and reports stats', async () => {
    const js = createJsKernel();
    const job = randomJob(8, 9, 3, 11);
    const src = stored(randomW(8, 9, 12), 'F16');
    const out = new Uint8Array(8 * 9 * 2);
    const ref = new Uint8Array(8 * 9 * 2);
    expect(await js.update(src, 'F16', out, 'F16', job)).toEqual({ overflow: 0, nonFiniteInput: 0 });
    referenceUpdate(src, 'F16', ref, 'F16', job);
    expectSameBytes(out, ref);
    expect(js.stats.flops).toBe(2 * 8 * 9 * 3);
    expect(js.stats.calls).toBe(1);
    expect(js.backend).toBe('js');
    await js.dispose();
    await expect(js.update(src, 'F16', out, 'F16', job)).rejects.toMatchObject({ code: 'KERNEL_DISPOSED' });
  });

  it('processes big jobs in row blocks with the same result', async () => {
    const job = randomJob(37, 45, 9, 21);
    const src = stored(randomW(37, 45, 22), 'F16');
    const whole = new Uint8Array(37 * 45 * 4);
    const blocked = new Uint8Array(37 * 45 * 4);
    const mk = (maxBlock: number) =>
      new WasmEngine(
        kernelModuleSync(false, false),
        new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES }),
        maxBlock,
      );
    const e1 = mk(1 << 30);
    const e2 = mk(45 * 6 * 2); // a few rows per block
    expect(e2.blocks(job, 'F16', 'F32').length).toBeGreaterThan(3);
    const r1 = runJobSingle(e1, src, 'F16', whole, 'F32', job, false);
    const r2 = runJobSingle(e2, src, 'F16', blocked, 'F32', job, false);
    expectSameBytes(blocked, whole);
    expect(r2).toEqual(r1);
  });

  it('counts FLOPs and calls', async () => {
    const k = await createWasmKernel({ relaxed: false });
    const job = randomJob(10, 20, 4, 5);
    const src = stored(randomW(10, 20, 6), 'F32');
    await k.update(src, 'F32', src.slice(), 'F32', job);
    await k.update(src, 'F32', src.slice(), 'F32', job);
    expect(k.stats.calls).toBe(2);
    expect(k.stats.flops).toBe(2 * 2 * 10 * 20 * 4);
    expect(k.stats.seconds).toBeGreaterThan(0);
    await k.dispose();
    await expect(k.update(src, 'F32', src.slice(), 'F32', job)).rejects.toBeInstanceOf(FuseError);
  });
});

describe('WASM fused update: overflow, clamp and non-finite inputs', () => {
  const cases: Array<{ dt: StoredFloat; big: number; max: number }> = [
    { dt: 'F16', big: 60000, max: 65504 },
    { dt: 'BF16', big: 3.0e38, max: 3.3895313892515355e38 },
    { dt: 'F32', big: 3.0e38, max: 3.4028234663852886e38 },
  ];

  for (const { dt, big, max } of cases) {
    it(`${dt}: counts overflows, writes ±Inf, or ±max with clamp — same as the f64 reference`, async () => {
      const rows = 6;
      const cols = 11;
      // W = ±big; update adds ±0.25·big on some entries: those overflow
      const w = Float64Array.from({ length: rows * cols }, (_, i) => (i % 2 ? big : -big));
      const up = Float32Array.from({ length: rows * 2 }, (_, i) => (i % 2 ? 0 : 0.5));
      const down = Float32Array.from({ length: 2 * cols }, (_, i) => (i < cols ? ((i % 3) - 1) * big * 0.5 : 0));
      const job = { rows, cols, rank: 2, up, down };
      const src = stored(w, dt);
      for (const clamp of [false, true]) {
        for (const k of [plain, relaxed]) {
          const out = new Uint8Array(src.length);
          const ref = new Uint8Array(src.length);
          const res = await k.update(src, dt, out, dt, job, { clamp });
          const rres = referenceUpdate(src, dt, ref, dt, job, clamp);
          expect(res).toEqual(rres);
          expect(res.overflow).toBeGreaterThan(0);
          expect(res.nonFiniteInput).toBe(0);
          const y = decodeStored(out, dt);
          const infs = Array.from(y).filter((v) => !Number.isFinite(v)).length;
          const maxes = Array.from(y).filter((v) => Math.abs(v) === max).length;
          if (clamp) {
            expect(infs).toBe(0);
            expect(maxes).toBeGreaterThanOrEqual(res.overflow);
          } else {
            expect(infs).toBe(res.overflow);
          }
          expectSameBytes(out, ref);
        }
      }
    });
  }

  it('NaN and ±Inf inputs pass through, are counted as non-finite inputs, never as overflows, never clamped', async () => {
    for (const srcDt of DTYPES) {
      for (const dstDt of DTYPES) {
        const rows = 5;
        const cols = 9;
        const w = Float64Array.from({ length: rows * cols }, (_, i) =>
          i % 7 === 0 ? NaN : i % 11 === 0 ? Infinity : i % 13 === 0 ? -Infinity : 0.5,
        );
        const special = Array.from(w).filter((v) => !Number.isFinite(v)).length;
        const job = randomJob(rows, cols, 3, 99, 0.1);
        const src = stored(w, srcDt);
        for (const k of [plain, relaxed]) {
          const out = new Uint8Array(rows * cols * SIZE[dstDt]);
          const res = await k.update(src, srcDt, out, dstDt, job, { clamp: true });
          expect(res).toEqual({ overflow: 0, nonFiniteInput: special });
          const y = decodeStored(out, dstDt);
          for (let i = 0; i < w.length; i++) {
            if (Number.isNaN(w[i]!)) expect(Number.isNaN(y[i]!)).toBe(true);
            else if (!Number.isFinite(w[i]!)) expect(y[i]).toBe(w[i]);
            else expect(Number.isFinite(y[i]!)).toBe(true);
          }
        }
      }
    }
  });

  it('NaN in a factor makes NaN results, counted as overflows (finite input, result not representable)', async () => {
    const job = randomJob(4, 8, 2, 5);
    job.up[0] = NaN; // row 0 becomes NaN
    const src = stored(randomW(4, 8, 6), 'F16');
    const out = new Uint8Array(src.length);
    const res = await plain.update(src, 'F16', out, 'F16', job, { clamp: true });
    expect(res).toEqual({ overflow: 8, nonFiniteInput: 0 });
    expect(Array.from(decodeStored(out, 'F16').subarray(0, 8)).every(Number.isNaN)).toBe(true);
  });
});

describe('WASM fused update: job validation', () => {
  it('rejects sizes that do not match the job, naming what was expected and found', async () => {
    const job = randomJob(4, 5, 2, 1);
    await expect(plain.update(new Uint8Array(39), 'F16', new Uint8Array(40), 'F16', job)).rejects.toMatchObject({
      code: 'KERNEL_INVALID_JOB',
      message: expect.stringContaining('expected 40, found 39'),
    });
    await expect(plain.update(new Uint8Array(40), 'F16', new Uint8Array(40), 'F32', job)).rejects.toThrow(
      /destination bytes/,
    );
    await expect(
      plain.update(new Uint8Array(40), 'F16', new Uint8Array(40), 'F16', { ...job, rank: 3 }),
    ).rejects.toThrow(/up values/);
    await expect(plain.update(new Uint8Array(40), 'F8' as StoredFloat, new Uint8Array(40), 'F16', job)).rejects.toThrow(
      /source dtype/,
    );
    await expect(
      plain.update(new Uint8Array(40), 'F16', new Uint8Array(40), 'F16', { ...job, rows: 4.5 }),
    ).rejects.toThrow(/rows/);
  });

  it('rejects overlapping source and destination when the dtypes differ', async () => {
    const job = randomJob(4, 5, 2, 1);
    const buf = new Uint8Array(200);
    await expect(plain.update(buf.subarray(0, 40), 'F16', buf.subarray(20, 100), 'F32', job)).rejects.toThrow(
      /overlapping/,
    );
  });

  it('empty jobs do nothing', async () => {
    const r = await plain.update(new Uint8Array(0), 'F32', new Uint8Array(0), 'F16', {
      rows: 0,
      cols: 7,
      rank: 3,
      up: new Float32Array(0),
      down: new Float32Array(21),
    });
    expect(r).toEqual({ overflow: 0, nonFiniteInput: 0 });
  });
});
