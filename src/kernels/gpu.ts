/**
 * gpu.js kernel (core: no Node imports). One gpu.js kernel computes, per output tile,
 *
 *     out[y][x] = W[y][x] + Σ_k U[y][k] · D[k][x]
 *
 * on whatever backend gpu.js gives: WebGPU where an adapter answers (explicit opt-in in gpu.js), otherwise
 * gpu.js's own 'gpu' choice (headless-gl, WebGL2, WebGL, then its WebAssembly 'webasm' backend).
 * If the backend gpu.js resolves to is not a GPU ('webasm' or 'cpu') and the caller asked for 'gpu', the
 * update falls back to the WASM SIMD CPU kernel (30–50× faster than gpu.js's webasm/cpu backends for this
 * kernel) and says so: `fellBack: true` and a `reason` naming what gpu.js found.
 *
 * F16/BF16 are decoded to f32 before upload and the f32 results are rounded once on the CPU (src/core/dtype-wasm.ts),
 * with the same overflow / non-finite counting and clamping as the CPU kernels.
 *
 * Large layers are tiled: output tiles of at most `tile` × `tile` (default 4096, or the backend's maximum
 * texture size if smaller), and the rank in chunks of at most `rankChunk` (default 256, the shader's loop
 * bound); each rank chunk adds onto the previous chunk's result.
 *
 * In the browser pass the GPU class of the bundled gpu-browser build: `createGpuKernel({ GPU })`.
 * In Node the class is imported from the 'gpu.js' package when not given.
 */
import { requireHost } from '../core/host.js';
import { FuseError } from '../core/errors.js';
import { getConvert } from '../core/dtype-wasm.js';
import { f32FromBits } from '../core/dtype-scalar.js';
import { createWasmKernel } from './cpu.js';
import { disposedError, serialQueue, timed, validateJob } from './job.js';
import type {
  FuseKernel,
  GpuKernelResult,
  KernelStats,
  StoredFloat,
  UpdateJob,
  UpdateOptions,
  UpdateResult,
} from './types.js';

/** The parts of gpu.js's GPU class this module uses (kept structural so any gpu.js build fits). */
export interface GpuJsInstance {
  mode?: string;
  Kernel?: { mode?: string; features?: { maxTextureSize?: number }; testContext?: unknown } | null;
  createKernel(source: string, settings?: Record<string, unknown>): GpuJsKernel;
  destroy?(): unknown;
}
export interface GpuJsKernel {
  (...args: unknown[]): unknown;
  setOutput(output: number[]): GpuJsKernel;
  destroy?(removeCanvasReferences?: boolean): unknown;
  kernel?: { constructor?: { mode?: string } };
}
export interface GpuJsClass {
  new (settings?: Record<string, unknown>): GpuJsInstance;
  isWebGPUAvailable?(): Promise<boolean>;
}

/** gpu.js modes this module knows. 'gpu' = the best GPU backend available. */
export type GpuMode = 'gpu' | 'webgpu' | 'webgl2' | 'webgl' | 'headlessgl' | 'webasm' | 'cpu';

/** gpu.js backends that really run on a GPU. */
const GPU_BACKENDS = new Set(['webgpu', 'webgl2', 'webgl', 'headlessgl']);

export interface GpuKernelOptions {
  /** gpu.js's GPU class (the browser bundle's, or the 'gpu.js' package's; imported in Node when omitted). */
  GPU?: GpuJsClass;
  /** An existing gpu.js GPU instance to use instead of creating one. */
  gpu?: GpuJsInstance;
  /** 'gpu' (default): best GPU backend, else fall back. Any other mode is forced (no fallback). */
  mode?: GpuMode;
  /** Kernel to use when mode 'gpu' finds no GPU backend (default: a new single-thread WASM kernel). */
  fallback?: FuseKernel;
  /** Largest output tile side (default 4096, capped by the backend's max texture size). */
  tile?: number;
  /** Largest rank handled by one kernel call (default 256). */
  rankChunk?: number;
}

/** The gpu.js kernel, as source text (gpu.js compiles it to WGSL / GLSL / wasm / JS). */
const KERNEL_SOURCE = `function (w, u, d, rank) {
  let s = 0;
  for (let k = 0; k < rank; k++) {
    s += u[this.thread.y][k] * d[k][this.thread.x];
  }
  return w[this.thread.y][this.thread.x] + s;
}`;

async function importGpuJs(): Promise<GpuJsClass> {
  try {
    const mod = (await requireHost('gpu.js', "pass gpu.js's GPU class as the GPU option").loadGpuJs()) as {
      GPU?: GpuJsClass;
      default?: { GPU?: GpuJsClass };
    };
    const GPU = mod.GPU ?? mod.default?.GPU;
    if (!GPU) throw new Error("the 'gpu.js' module has no GPU export");
    return GPU;
  } catch (e) {
    throw new FuseError('FUSE_BACKEND_UNAVAILABLE', `gpu kernel: cannot load gpu.js: ${(e as Error).message}`, {
      backend: 'gpu.js',
    });
  }
}

const GL_MODES = new Set(['webgl2', 'webgl', 'headlessgl']);

/**
 * The backend a gpu.js instance resolved to ('webgpu', 'webgl2', 'webgl', 'headlessgl', 'webasm', 'cpu').
 * gpu.js's three GL kernels all report mode 'gpu'; they are told apart by the kind of their test context
 * (`requested` settles it when the caller forced a GL mode).
 */
export function resolvedBackend(gpu: GpuJsInstance, requested?: string): string {
  const mode = gpu.Kernel?.mode ?? gpu.mode ?? 'unknown';
  if (mode !== 'gpu') return mode;
  if (requested !== undefined && GL_MODES.has(requested)) return requested;
  let ctx: unknown;
  try {
    ctx = gpu.Kernel?.testContext;
  } catch {
    ctx = undefined;
  }
  if (typeof WebGL2RenderingContext !== 'undefined' && ctx instanceof WebGL2RenderingContext) return 'webgl2';
  if (typeof WebGLRenderingContext !== 'undefined' && ctx instanceof WebGLRenderingContext) return 'webgl';
  // outside a browser the only GL backend gpu.js has is headless-gl
  return typeof document === 'undefined' ? 'headlessgl' : 'webgl';
}

async function webGpuAvailable(GPU: GpuJsClass): Promise<boolean> {
  try {
    return typeof GPU.isWebGPUAvailable === 'function' ? await GPU.isWebGPUAvailable() : false;
  } catch {
    return false;
  }
}

/** Open gpu.js in a mode; 'gpu' tries WebGPU first (gpu.js only uses it on explicit request). */
async function openGpu(GPU: GpuJsClass, mode: GpuMode): Promise<GpuJsInstance> {
  if (mode === 'gpu' && (await webGpuAvailable(GPU))) {
    try {
      return new GPU({ mode: 'webgpu' });
    } catch {
      // fall through to gpu.js's own choice
    }
  }
  return new GPU({ mode });
}

export interface GpuBackendProbe {
  mode: GpuMode;
  /** The kernel ran and gave the right numbers. */
  works: boolean;
  /** Backend that actually ran (for 'gpu': what gpu.js chose). */
  backend?: string;
  error?: string;
}

/**
 * Which gpu.js modes work here: each is opened and runs a 3×5 rank-2 update that is checked against plain JS.
 */
export async function gpuBackends(opts: { GPU?: GpuJsClass } = {}): Promise<GpuBackendProbe[]> {
  const GPU = opts.GPU ?? (await importGpuJs());
  const modes: GpuMode[] = ['gpu', 'webgpu', 'webgl2', 'webgl', 'headlessgl', 'webasm', 'cpu'];
  const out: GpuBackendProbe[] = [];
  const rows = 3;
  const cols = 5;
  const rank = 2;
  const w = Float32Array.from({ length: rows * cols }, (_, i) => i * 0.5 - 3);
  const up = Float32Array.from({ length: rows * rank }, (_, i) => 1 + i);
  const down = Float32Array.from({ length: rank * cols }, (_, i) => 0.25 * i - 1);
  for (const mode of modes) {
    let gpu: GpuJsInstance | null = null;
    try {
      if (mode === 'webgpu' && !(await webGpuAvailable(GPU))) {
        out.push({ mode, works: false, error: 'no WebGPU adapter (GPU.isWebGPUAvailable() is false)' });
        continue;
      }
      gpu = await openGpu(GPU, mode);
      const backend = resolvedBackend(gpu, mode);
      const res = await runTile(gpu, w, up, down, cols, rank, 0, rows, 0, cols, rank);
      let ok = true;
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          let s = w[i * cols + j]!;
          for (let k = 0; k < rank; k++) s += up[i * rank + k]! * down[k * cols + j]!;
          if (Math.abs(res[i * cols + j]! - s) > 1e-4 * (1 + Math.abs(s))) ok = false;
        }
      }
      out.push(ok ? { mode, works: true, backend } : { mode, works: false, backend, error: 'wrong results' });
    } catch (e) {
      out.push({ mode, works: false, error: (e as Error).message });
    } finally {
      try {
        await gpu?.destroy?.();
      } catch {
        // ignore
      }
    }
  }
  return out;
}

/** Compiled kernels per gpu instance, keyed by output size. */
const kernelCache = new WeakMap<GpuJsInstance, Map<string, GpuJsKernel>>();

function kernelFor(gpu: GpuJsInstance, rowsT: number, colsT: number, rankMax: number): GpuJsKernel {
  let m = kernelCache.get(gpu);
  if (!m) {
    m = new Map();
    kernelCache.set(gpu, m);
  }
  const key = `${rowsT}x${colsT}`;
  let k = m.get(key);
  if (!k) {
    k = gpu.createKernel(KERNEL_SOURCE, {
      output: [colsT, rowsT],
      precision: 'single',
      loopMaxIterations: Math.max(1, rankMax),
      tactic: 'precision',
      dynamicArguments: true,
    });
    m.set(key, k);
  }
  return k;
}

/**
 * One output tile: rows [r0, r1), columns [c0, c1), rank steps [k0, k0 + kn) of the update, with W taken from
 * `w` (f32, row-major rows×cols). Returns the tile's results, row-major, (r1−r0)×(c1−c0).
 */
async function runTile(
  gpu: GpuJsInstance,
  w: Float32Array,
  up: Float32Array,
  down: Float32Array,
  cols: number,
  rank: number,
  r0: number,
  r1: number,
  c0: number,
  c1: number,
  rankMax: number,
  k0 = 0,
  kn = rank,
): Promise<Float32Array> {
  const th = r1 - r0;
  const tw = c1 - c0;
  const kk = Math.max(1, kn);
  const wRows: Float32Array[] = [];
  const uRows: Float32Array[] = [];
  for (let i = r0; i < r1; i++) {
    wRows.push(w.subarray(i * cols + c0, i * cols + c1));
    // a zero column keeps the arrays non-empty when kn = 0
    uRows.push(kn > 0 ? up.subarray(i * rank + k0, i * rank + k0 + kn) : new Float32Array(1));
  }
  const dRows: Float32Array[] = [];
  if (kn > 0) for (let k = k0; k < k0 + kn; k++) dRows.push(down.subarray(k * cols + c0, k * cols + c1));
  else dRows.push(new Float32Array(tw));
  const kernel = kernelFor(gpu, th, tw, rankMax);
  let out = kernel(wRows, uRows, dRows, kn > 0 ? kk : 0) as unknown;
  if (out && typeof (out as Promise<unknown>).then === 'function') out = await out;
  const res = new Float32Array(th * tw);
  const rowsOut = out as ArrayLike<ArrayLike<number>>;
  if (rowsOut.length !== th) {
    throw new FuseError('KERNEL_FAILED', `gpu kernel: gpu.js returned ${rowsOut.length} rows, expected ${th}`, {
      expected: th,
      found: rowsOut.length,
    });
  }
  for (let i = 0; i < th; i++) {
    const row = rowsOut[i]!;
    if (row instanceof Float32Array) res.set(row.subarray(0, tw), i * tw);
    else for (let j = 0; j < tw; j++) res[i * tw + j] = row[j]!;
  }
  return res;
}

// ---------------------------------------------------------------------------------------------------------
// stored bytes ⇄ f32 around the GPU

function decodeToF32(src: Uint8Array, dtype: StoredFloat): Float32Array {
  const n = dtype === 'F32' ? src.byteLength / 4 : src.byteLength / 2;
  const out = new Float32Array(n);
  if (dtype === 'F32') {
    new Uint8Array(out.buffer).set(src);
    return out;
  }
  const aligned =
    src.byteOffset % 2 === 0 ? new Uint16Array(src.buffer, src.byteOffset, n) : new Uint16Array(src.slice().buffer);
  if (dtype === 'F16') getConvert().f16ToF32(aligned, out);
  else getConvert().bf16ToF32(aligned, out);
  return out;
}

const LIMIT_F16 = 65520; // |y| ≥ this rounds to Inf in binary16
const LIMIT_BF16 = f32FromBits(0x7f7f8000); // |y| ≥ this rounds to Inf in bfloat16
const MAX_F16 = 65504;
const MAX_BF16 = f32FromBits(0x7f7f0000);
const MAX_F32 = f32FromBits(0x7f7fffff);

/** Count, clamp and round the f32 results into dst, like the CPU kernels. */
function encodeResults(
  w: Float32Array,
  y: Float32Array,
  dst: Uint8Array,
  dtype: StoredFloat,
  clamp: boolean,
): UpdateResult {
  let overflow = 0;
  let nonFiniteInput = 0;
  const limit = dtype === 'F32' ? Infinity : dtype === 'F16' ? LIMIT_F16 : LIMIT_BF16;
  const max = dtype === 'F32' ? MAX_F32 : dtype === 'F16' ? MAX_F16 : MAX_BF16;
  for (let i = 0; i < y.length; i++) {
    const v = y[i]!;
    if (Math.abs(v) < limit) continue; // fast path (false for NaN)
    if (!Number.isFinite(w[i]!)) {
      nonFiniteInput++;
      continue;
    }
    overflow++;
    if (clamp && !Number.isNaN(v)) y[i] = v > 0 ? max : -max;
  }
  if (dtype === 'F32') {
    new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength).set(
      new Uint8Array(y.buffer, y.byteOffset, y.byteLength),
    );
  } else {
    const h = new Uint16Array(y.length);
    if (dtype === 'F16') getConvert().f32ToF16(y, h);
    else getConvert().f32ToBf16(y, h);
    dst.set(new Uint8Array(h.buffer));
  }
  // NaN inputs have NaN results and fail the fast-path test too; count them (done above). Inputs that are
  // non-finite always give non-finite results, so none escaped the scan.
  return { overflow, nonFiniteInput };
}

/** The FuseKernel over a gpu.js instance (no fallback logic). */
export function gpuJsKernel(
  gpu: GpuJsInstance,
  opts: { tile?: number; rankChunk?: number; mode?: string } = {},
): FuseKernel {
  const found = resolvedBackend(gpu, opts.mode);
  const backend = `gpu.js:${found}`;
  let maxTex = Infinity;
  try {
    maxTex = gpu.Kernel?.features?.maxTextureSize ?? Infinity;
  } catch {
    // some backends need a context to answer; keep the default tile
  }
  const tile = Math.max(1, Math.min(opts.tile ?? 4096, maxTex || 4096));
  const rankChunk = Math.max(1, opts.rankChunk ?? 256);
  const stats: KernelStats = { flops: 0, seconds: 0, calls: 0 };
  let disposed = false;
  const queue = serialQueue();

  async function run(
    src: Uint8Array,
    srcDtype: StoredFloat,
    dst: Uint8Array,
    dstDtype: StoredFloat,
    job: UpdateJob,
    clamp: boolean,
  ): Promise<UpdateResult> {
    const { rows, cols, rank, up, down } = job;
    if (rows === 0 || cols === 0) return { overflow: 0, nonFiniteInput: 0 };
    const w = decodeToF32(src, srcDtype);
    const y = new Float32Array(rows * cols);
    for (let r0 = 0; r0 < rows; r0 += tile) {
      const r1 = Math.min(rows, r0 + tile);
      for (let c0 = 0; c0 < cols; c0 += tile) {
        const c1 = Math.min(cols, c0 + tile);
        // rank chunks: the first reads W, later ones read the running result
        let base = w;
        let k0 = 0;
        do {
          const kn = Math.min(rankChunk, rank - k0);
          const part = await runTile(gpu, base, up, down, cols, rank, r0, r1, c0, c1, rankChunk, k0, kn);
          const tw = c1 - c0;
          for (let i = r0; i < r1; i++) y.set(part.subarray((i - r0) * tw, (i - r0 + 1) * tw), i * cols + c0);
          base = y;
          k0 += kn;
        } while (k0 < rank);
      }
    }
    return encodeResults(w, y, dst, dstDtype, clamp);
  }

  return {
    name: `gpu.js ${found}`,
    backend,
    stats,
    update(src, srcDtype, dst, dstDtype, job, o: UpdateOptions = {}) {
      return queue.run(async () => {
        if (disposed) throw disposedError(backend);
        validateJob(backend, src, srcDtype, dst, dstDtype, job);
        return timed(stats, job, () => run(src, srcDtype, dst, dstDtype, job, o.clamp === true));
      });
    },
    async dispose() {
      if (disposed) return;
      await queue.idle();
      disposed = true;
      const m = kernelCache.get(gpu);
      if (m) for (const k of m.values()) k.destroy?.();
      kernelCache.delete(gpu);
      await gpu.destroy?.();
    },
  };
}

/**
 * A gpu.js kernel on the best backend (or the forced `mode`). With mode 'gpu', when gpu.js can only offer
 * 'webasm' or 'cpu', returns the fallback kernel instead, with fellBack: true and the reason.
 */
export async function createGpuKernel(opts: GpuKernelOptions = {}): Promise<GpuKernelResult> {
  const mode: GpuMode = opts.mode ?? 'gpu';
  let gpu = opts.gpu;
  if (!gpu) {
    const GPU = opts.GPU ?? (await importGpuJs());
    try {
      gpu = await openGpu(GPU, mode);
    } catch (e) {
      if (mode !== 'gpu') {
        throw new FuseError(
          'FUSE_BACKEND_UNAVAILABLE',
          `gpu kernel: gpu.js mode '${mode}' is not available here: ${(e as Error).message}`,
          {
            backend: `gpu.js:${mode}`,
          },
        );
      }
      const kernel = opts.fallback ?? (await createWasmKernel());
      return {
        kernel,
        backend: kernel.backend,
        fellBack: true,
        reason: `gpu.js could not open a GPU backend (${(e as Error).message})`,
      };
    }
  }
  const found = resolvedBackend(gpu, opts.gpu ? undefined : mode);
  if (mode === 'gpu' && !opts.gpu && !GPU_BACKENDS.has(found)) {
    await gpu.destroy?.();
    const kernel = opts.fallback ?? (await createWasmKernel());
    return {
      kernel,
      backend: kernel.backend,
      fellBack: true,
      reason:
        `gpu.js resolved mode 'gpu' to its '${found}' backend (no WebGPU adapter and no WebGL/headless-gl context here); ` +
        `using the ${kernel.backend} CPU kernel instead, which is much faster than gpu.js on the CPU`,
    };
  }
  const kernel = gpuJsKernel(gpu, { tile: opts.tile, rankChunk: opts.rankChunk, mode: opts.gpu ? undefined : mode });
  const reason = GPU_BACKENDS.has(found) ? undefined : `gpu.js runs on its '${found}' backend (CPU), as requested`;
  return reason === undefined
    ? { kernel, backend: kernel.backend, fellBack: false }
    : { kernel, backend: kernel.backend, fellBack: false, reason };
}
