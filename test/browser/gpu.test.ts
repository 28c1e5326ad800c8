/**
 * The gpu.js fusion kernel (src/kernels/gpu.ts) on real GPU backends: headless Chromium exposes a WebGPU
 * adapter (Dawn on SwiftShader) and WebGL2 (ANGLE on SwiftShader). The page loads gpu.js's own browser build and
 * our kernels (bundled for the browser), runs W + U·D for linear- and conv-shaped modules, ranks 1, 8, 64 and 70,
 * F32 and F16 storage, and the results are checked in Node against the f64 reference kernel and against the WASM
 * CPU kernel run in the same page.
 *
 * A backend that silently fell back is a failure: each case checks the backend the kernel reports AND the class of
 * every gpu.js kernel object that actually ran (gpu.js can swap a failing GPU kernel for its CPU kernel).
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundle, REPO_ROOT, writeHtml } from '../../scripts/build-browser.js';
import { referenceUpdate } from '../../src/kernels/js.js';
import type { StoredFloat } from '../../src/kernels/types.js';
import { f16BitsToF32 } from '../../src/core/dtype.js';
import { f32ToF16 } from '../../src/core/dtype.js';
import { CHROMIUM_ARGS, openSession, tempDir, type BrowserSession } from './harness.js';
import { prng } from '../lora-helpers.js';

type Mode = 'webgpu' | 'webgl2';

interface Case {
  label: string;
  rows: number;
  cols: number;
  rank: number;
  dtype: StoredFloat;
}

/** Linear [out, in] and conv [out, in·3·3] shaped updates; sizes that are not multiples of any tile. */
const SHAPES = [
  { kind: 'linear', rows: 40, cols: 72 },
  { kind: 'conv 3×3', rows: 24, cols: 16 * 9 },
] as const;
const RANKS = [1, 8, 64, 70];
const DTYPES: StoredFloat[] = ['F32', 'F16'];

const CASES: Case[] = SHAPES.flatMap((s) =>
  RANKS.flatMap((rank) =>
    DTYPES.map((dtype) => ({
      label: `${s.kind} ${s.rows}×${s.cols} r${rank} ${dtype}`,
      rows: s.rows,
      cols: s.cols,
      rank,
      dtype,
    })),
  ),
);
/** One bigger module (a 320-channel 3×3 conv at rank 64) so the kernel runs beyond toy sizes. */
const BIG: Case = { label: 'conv 3×3 320×2880 r64 F16', rows: 320, cols: 320 * 9, rank: 64, dtype: 'F16' };

/** Deterministic values (the fixtures' mulberry32) in [0, 1), scaled below to LoRA-like magnitudes: W ~ 0.02, up ~ 4e-3, down ~ 1e-2. */
const rng = prng;

interface Inputs {
  src: Uint8Array;
  up: Float32Array;
  down: Float32Array;
}

function makeInputs(c: Case, seed: number): Inputs {
  const r = rng(seed);
  const sym = (scale: number) => (r() * 2 - 1) * scale;
  const w = Float32Array.from({ length: c.rows * c.cols }, () => sym(0.05));
  const up = Float32Array.from({ length: c.rows * c.rank }, () => sym(0.2));
  const down = Float32Array.from({ length: c.rank * c.cols }, () => sym(0.2));
  let src: Uint8Array;
  if (c.dtype === 'F32') src = new Uint8Array(w.buffer);
  else {
    const h = new Uint16Array(w.length);
    f32ToF16(w, h);
    src = new Uint8Array(h.buffer);
  }
  return { src, up, down };
}

const b64 = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
const unb64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));
const f32bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function values(bytes: Uint8Array, dtype: StoredFloat): Float64Array {
  const copy = bytes.slice();
  if (dtype === 'F32') return Float64Array.from(new Float32Array(copy.buffer));
  return Float64Array.from(new Uint16Array(copy.buffer), (h) => f16BitsToF32(h));
}

/** Spacing of f16 values at |x| (subnormal spacing below 2^-14). */
function f16Ulp(x: number): number {
  const a = Math.abs(x);
  if (a < 2 ** -14) return 2 ** -24;
  return 2 ** (Math.floor(Math.log2(a)) - 10);
}

/**
 * Largest violation of the error bound between a kernel's output and the f64 reference, both decoded: an f32
 * accumulation of rank+1 terms is within (rank + 2)·2⁻²⁴·(|W| + Σ|u·d|) of exact; F16 outputs may in addition land
 * one f16 step apart when the exact value sits near a rounding boundary. Returns max(|got − ref| / bound) (≤ 1 passes)
 * and how many values differ at all.
 */
function compare(c: Case, inputs: Inputs, got: Float64Array, ref: Float64Array): { worst: number; differ: number } {
  const w = values(inputs.src, c.dtype);
  let worst = 0;
  let differ = 0;
  for (let i = 0; i < c.rows; i++) {
    for (let j = 0; j < c.cols; j++) {
      let mag = Math.abs(w[i * c.cols + j]!);
      for (let k = 0; k < c.rank; k++) mag += Math.abs(inputs.up[i * c.rank + k]! * inputs.down[k * c.cols + j]!);
      const idx = i * c.cols + j;
      let bound = (c.rank + 2) * 2 ** -24 * mag + 1e-30;
      if (c.dtype === 'F16') bound += f16Ulp(ref[idx]!);
      const gap = Math.abs(got[idx]! - ref[idx]!);
      if (gap > 0) differ++;
      if (!(gap <= bound)) worst = Math.max(worst, Number.isNaN(gap) ? Infinity : gap / bound);
      else worst = Math.max(worst, gap / bound);
    }
  }
  return { worst, differ };
}

interface PageResult {
  backend: string;
  kernelBackend: string;
  fellBack: boolean;
  reason: string | null;
  /** Class names of the gpu.js kernel objects that ran. */
  ranOn: string[];
  gpu: string;
  cpu: string;
  cpuBackend: string;
  overflow: number;
}

describe('gpu.js fusion kernel in headless Chromium', () => {
  const tmp = tempDir('gpu');
  let session: BrowserSession;

  beforeAll(async () => {
    await bundle({
      contents: [
        "import { createGpuKernel, gpuBackends } from './src/kernels/gpu.js';",
        "import { createWasmKernel } from './src/kernels/cpu.js';",
        '(globalThis as any).loraMixKernels = { createGpuKernel, gpuBackends, createWasmKernel };',
      ].join('\n'),
      outfile: join(tmp.dir, 'kernels.js'),
    });
    copyFileSync(join(REPO_ROOT, 'node_modules/gpu.js/dist/gpu-browser.min.js'), join(tmp.dir, 'gpu-browser.min.js'));
    await writeHtml(
      join(tmp.dir, 'index.html'),
      '<script src="gpu-browser.min.js"></script><script type="module" src="kernels.js"></script>',
    );
    session = await openSession({ root: tmp.dir });
    await session.page.waitForFunction(() => 'loraMixKernels' in window && 'GPU' in window);
  });
  afterAll(async () => {
    await session?.close();
    tmp.remove();
  });

  /** Run cases on one gpu.js mode in the page (one kernel for all cases), plus the WASM kernel on the same inputs. */
  async function runInPage(
    mode: Mode | 'gpu',
    cases: { c: Case; inputs: Inputs }[],
    on: BrowserSession = session,
  ): Promise<PageResult[]> {
    const payload = cases.map(({ c, inputs }) => ({
      rows: c.rows,
      cols: c.cols,
      rank: c.rank,
      dtype: c.dtype,
      src: b64(inputs.src),
      up: b64(f32bytes(inputs.up)),
      down: b64(f32bytes(inputs.down)),
    }));
    return on.page.evaluate(
      async ({ mode, payload }) => {
        /* eslint-disable @typescript-eslint/no-explicit-any */
        const w = window as any;
        const { createGpuKernel, createWasmKernel } = w.loraMixKernels;
        const ran: any[] = [];
        // Record every kernel gpu.js hands out, to see afterwards which backend class really ran.
        class SpyGPU extends w.GPU {
          createKernel(...args: unknown[]) {
            const k = super.createKernel(...args);
            ran.push(k);
            return k;
          }
        }
        const dec = (s: string) => Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0));
        const enc = (b: Uint8Array) => {
          let s = '';
          for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
          return btoa(s);
        };
        const made = await createGpuKernel({ GPU: SpyGPU, ...(mode === 'gpu' ? {} : { mode }) });
        const cpu = await createWasmKernel();
        const out = [];
        for (const p of payload) {
          const job = {
            rows: p.rows,
            cols: p.cols,
            rank: p.rank,
            up: new Float32Array(dec(p.up).buffer),
            down: new Float32Array(dec(p.down).buffer),
          };
          const src = dec(p.src);
          const dst = new Uint8Array(src.length);
          const res = await made.kernel.update(src, p.dtype, dst, p.dtype, job);
          const cdst = new Uint8Array(src.length);
          await cpu.update(src, p.dtype, cdst, p.dtype, job);
          const names = new Set<string>();
          for (const k of ran) names.add(k.kernel?.constructor?.name ?? k.constructor?.name ?? 'unknown');
          out.push({
            backend: made.backend,
            kernelBackend: made.kernel.backend,
            fellBack: made.fellBack,
            reason: made.reason ?? null,
            ranOn: [...names],
            gpu: enc(dst),
            cpu: enc(cdst),
            cpuBackend: cpu.backend,
            overflow: res.overflow,
          });
        }
        await made.kernel.dispose();
        await cpu.dispose();
        return out;
      },
      { mode, payload },
    );
  }

  function check(mode: Mode, cases: Case[], results: PageResult[], seed0: number): void {
    const kernelClass = mode === 'webgpu' ? 'WebGPUKernel' : 'WebGL2Kernel';
    results.forEach((r, n) => {
      const c = cases[n]!;
      expect(r.fellBack, `${c.label}: fell back (${r.reason})`).toBe(false);
      expect(r.backend, c.label).toBe(`gpu.js:${mode}`);
      expect(r.kernelBackend, c.label).toBe(`gpu.js:${mode}`);
      expect(r.ranOn, c.label).toEqual([kernelClass]);
      expect(r.overflow, c.label).toBe(0);
      const inputs = makeInputs(c, seed0 + n);
      const refBytes = new Uint8Array(inputs.src.length);
      referenceUpdate(inputs.src, c.dtype, refBytes, c.dtype, {
        rows: c.rows,
        cols: c.cols,
        rank: c.rank,
        up: inputs.up,
        down: inputs.down,
      });
      const ref = values(refBytes, c.dtype);
      const gpu = compare(c, inputs, values(unb64(r.gpu), c.dtype), ref);
      expect(gpu.worst, `${c.label}: GPU vs f64 reference`).toBeLessThanOrEqual(1);
      const cpu = compare(c, inputs, values(unb64(r.cpu), c.dtype), ref);
      expect(cpu.worst, `${c.label}: page WASM (${r.cpuBackend}) vs f64 reference`).toBeLessThanOrEqual(1);
      // The update really changed the weights (a kernel returning W untouched would fail here).
      const w = values(inputs.src, c.dtype);
      let moved = 0;
      for (let i = 0; i < w.length; i++) if (ref[i] !== w[i]) moved++;
      expect(moved, c.label).toBeGreaterThan(w.length / 2);
    });
  }

  for (const mode of ['webgpu', 'webgl2'] as const) {
    it(`${mode}: linear and conv modules, ranks ${RANKS.join('/')}, F32 and F16 match the CPU kernels`, async () => {
      const seed0 = mode === 'webgpu' ? 1000 : 2000;
      const inputs = CASES.map((c, n) => ({ c, inputs: makeInputs(c, seed0 + n) }));
      const results = await runInPage(mode, inputs);
      expect(results).toHaveLength(CASES.length);
      check(mode, CASES, results, seed0);
    });

    it(`${mode}: a 320×2880 conv-shaped module at rank 64 (F16) matches`, async () => {
      const seed0 = mode === 'webgpu' ? 3000 : 4000;
      const results = await runInPage(mode, [{ c: BIG, inputs: makeInputs(BIG, seed0) }]);
      check(mode, [BIG], results, seed0);
    });
  }

  it("mode 'gpu' picks WebGPU here (an adapter answers) without falling back", async () => {
    const c = CASES[2]!;
    const results = await runInPage('gpu', [{ c, inputs: makeInputs(c, 5000) }]);
    check('webgpu', [c], results, 5000);
  });

  it("mode 'gpu' uses WebGL2 (not the CPU) in a Chromium without a WebGPU adapter", async () => {
    const noWebGpu = await openSession({
      root: tmp.dir,
      args: CHROMIUM_ARGS.filter((a) => a !== '--enable-unsafe-webgpu'),
    });
    try {
      await noWebGpu.page.waitForFunction(() => 'loraMixKernels' in window && 'GPU' in window);
      const adapter = await noWebGpu.page.evaluate(async () => {
        const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
        return gpu ? (await gpu.requestAdapter()) !== null : false;
      });
      expect(adapter, 'this browser must have no WebGPU adapter').toBe(false);
      const c = CASES[3]!;
      const results = await runInPage('gpu', [{ c, inputs: makeInputs(c, 6000) }], noWebGpu);
      check('webgl2', [c], results, 6000);
    } finally {
      await noWebGpu.close();
    }
  });

  it('the probe lists webgpu and webgl2 as working gpu.js modes in Chromium', async () => {
    const probes = await session.page.evaluate(async () => {
      const w = window as unknown as {
        loraMixKernels: { gpuBackends(o: unknown): Promise<{ mode: string; works: boolean; backend?: string }[]> };
        GPU: unknown;
      };
      return w.loraMixKernels.gpuBackends({ GPU: w.GPU });
    });
    const byMode = new Map(probes.map((p) => [p.mode, p]));
    expect(byMode.get('webgpu')).toMatchObject({ works: true, backend: 'webgpu' });
    expect(byMode.get('webgl2')).toMatchObject({ works: true, backend: 'webgl2' });
    expect(byMode.get('gpu')).toMatchObject({ works: true, backend: 'webgpu' });
    expect(session.errors.filter((e) => !/WebGL|GPU stall/.test(e))).toEqual([]);
  });
});
