import { GPU } from 'gpu.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWasmKernel } from '../src/kernels/cpu.js';
import {
  createGpuKernel,
  type GpuBackendProbe,
  gpuBackends,
  type GpuJsClass,
  type GpuJsInstance,
  resolvedBackend,
} from '../src/kernels/gpu.js';
import { decodeStored, referenceUpdate } from '../src/kernels/js.js';
import type { FuseKernel, StoredFloat } from '../src/kernels/types.js';
import { DTYPES, expectSameBytes, randomJob, randomW, SIZE, stored } from './kernel-helpers.js';

const GPU_CLASS = GPU as unknown as GpuJsClass;
const GPU_BACKENDS = ['webgpu', 'webgl2', 'webgl', 'headlessgl'];

let probes: GpuBackendProbe[];
let wasm: FuseKernel;

beforeAll(async () => {
  probes = await gpuBackends({ GPU: GPU_CLASS });
  wasm = await createWasmKernel({ relaxed: false });
});
afterAll(async () => {
  await wasm.dispose();
});

/** Max |a − b| relative to the magnitude of the terms, in units of the output dtype's rounding. */
function compare(a: Uint8Array, b: Uint8Array, dt: StoredFloat, rank: number): void {
  const x = decodeStored(a, dt);
  const y = decodeStored(b, dt);
  const eps = dt === 'F32' ? 2 ** -23 * (rank + 4) : dt === 'F16' ? 2 ** -10 : 2 ** -7;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i]! - y[i]!);
    if (d > eps * Math.max(1, Math.abs(y[i]!)) * 4) expect.fail(`value ${i}: ${x[i]} vs ${y[i]} (${dt})`);
  }
}

describe('gpu.js kernel', () => {
  it('probes every gpu.js mode; the CPU modes work here', () => {
    const modes = probes.map((p) => p.mode);
    expect(modes).toEqual(['gpu', 'webgpu', 'webgl2', 'webgl', 'headlessgl', 'webasm', 'cpu']);
    expect(probes.find((p) => p.mode === 'cpu')).toMatchObject({ works: true, backend: 'cpu' });
    for (const p of probes) if (!p.works) expect(p.error, p.mode).toBeTruthy();
  });

  it("mode 'gpu' falls back to the WASM kernel with a reason when gpu.js finds no GPU backend", async () => {
    const gpuFound = probes.some((p) => p.works && p.backend !== undefined && GPU_BACKENDS.includes(p.backend));
    const fallback = await createWasmKernel();
    const r = await createGpuKernel({ GPU: GPU_CLASS, fallback });
    if (gpuFound) {
      expect(r.fellBack).toBe(false);
      expect(r.backend).toMatch(/^gpu\.js:(webgpu|webgl2|webgl|headlessgl)$/);
      await r.kernel.dispose();
    } else {
      const resolved = probes.find((p) => p.mode === 'gpu')?.backend ?? 'cpu';
      expect(r.fellBack).toBe(true);
      expect(r.kernel).toBe(fallback);
      expect(r.backend).toBe(fallback.backend);
      expect(r.reason).toContain(`'${resolved}'`);
      expect(r.reason).toContain(fallback.backend);
    }
    await fallback.dispose();
  });

  it('a forced mode that is not available rejects with FUSE_BACKEND_UNAVAILABLE', async () => {
    const missing = probes.find((p) => !p.works && p.mode !== 'gpu' && p.mode !== 'webgpu');
    if (!missing) return; // every GL backend works here: nothing to refuse
    await expect(createGpuKernel({ GPU: GPU_CLASS, mode: missing.mode })).rejects.toMatchObject({
      code: 'FUSE_BACKEND_UNAVAILABLE',
    });
  });

  it("names gpu.js's GL backends, which all report mode 'gpu'", () => {
    const fake = (mode: string): GpuJsInstance => ({
      Kernel: { mode },
      createKernel: () => {
        throw new Error('unused');
      },
    });
    expect(resolvedBackend(fake('webasm'))).toBe('webasm');
    expect(resolvedBackend(fake('webgpu'))).toBe('webgpu');
    expect(resolvedBackend(fake('gpu'), 'webgl2')).toBe('webgl2'); // a forced GL mode names itself
    expect(resolvedBackend(fake('gpu'), 'gpu')).toBe('headlessgl'); // Node: the only GL backend is headless-gl
  });

  it('uses a GPU instance it is given, and reports the backend that runs', async () => {
    const r = await createGpuKernel({ gpu: new GPU({ mode: 'cpu' }) as unknown as GpuJsInstance });
    expect(r).toMatchObject({ backend: 'gpu.js:cpu', fellBack: false });
    expect(r.kernel.name).toBe('gpu.js cpu');
    await r.kernel.dispose();
  });
});

describe('gpu.js kernel results match the WASM kernel on every working mode', () => {
  it.each(['webasm', 'cpu', 'webgl2', 'webgl', 'headlessgl', 'webgpu'] as const)('%s', async (mode) => {
    const probe = probes.find((p) => p.mode === mode)!;
    if (!probe.works) {
      expect(probe.error).toBeTruthy();
      return;
    }
    // small tiles and rank chunks so that tiling and rank accumulation are exercised
    const { kernel, backend } = await createGpuKernel({ GPU: GPU_CLASS, mode, tile: 16, rankChunk: 5 });
    expect(backend).toBe(`gpu.js:${mode}`);
    try {
      for (const [rows, cols, rank] of [
        [37, 45, 12],
        [8, 8, 1],
        [3, 50, 0],
      ] as const) {
        for (const srcDt of DTYPES) {
          for (const dstDt of DTYPES) {
            const job = randomJob(rows, cols, rank, rows * cols + rank, 0.5);
            const src = stored(randomW(rows, cols, 9), srcDt);
            const a = new Uint8Array(rows * cols * SIZE[dstDt]);
            const b = new Uint8Array(rows * cols * SIZE[dstDt]);
            expect(await kernel.update(src, srcDt, a, dstDt, job)).toEqual(
              await wasm.update(src, srcDt, b, dstDt, job),
            );
            compare(a, b, dstDt, rank);
          }
        }
      }
      // overflow counting and clamping like the CPU kernels
      const w = Float64Array.from({ length: 6 * 10 }, (_, i) => (i === 7 ? NaN : 60000));
      const job = randomJob(6, 10, 2, 4);
      job.up.fill(1);
      job.down.fill(0);
      job.down[3] = 6000; // column 3 overflows (66000 > 65504) in every row
      const src = stored(w, 'F16');
      for (const clamp of [false, true]) {
        const a = new Uint8Array(src.length);
        const ref = new Uint8Array(src.length);
        const res = await kernel.update(src, 'F16', a, 'F16', job, { clamp });
        expect(res).toEqual(referenceUpdate(src, 'F16', ref, 'F16', job, clamp));
        expect(res).toEqual({ overflow: 6, nonFiniteInput: 1 });
        expectSameBytes(a, ref);
      }
      expect(kernel.stats.calls).toBeGreaterThan(0);
    } finally {
      await kernel.dispose();
    }
  });
});
