/**
 * Single-thread WASM SIMD kernel (core: runs in browsers and Node unchanged).
 *
 * Uses f32x4.relaxed_madd when the runtime validates it and `relaxed` is not false, mul+add otherwise.
 * In Node 20 relaxed SIMD needs a V8 flag; createCpuKernel (src/node/kernel-threads.ts) sets it before compiling.
 */
import { FuseError } from '../core/errors.js';
import { hasRelaxedSimd, hasWasmSimd } from '../core/wasm-features.js';
import { disposedError, timed, validateJob } from './job.js';
import type {
  FuseKernel,
  KernelStats,
  StoredFloat,
  UpdateJob,
  UpdateOptions,
  UpdateResult,
  WasmKernelOptions,
} from './types.js';
import { kernelModule, MAX_PAGES, WasmEngine } from './wasm-engine.js';

/** Run a whole job on one engine (one thread). Shared by the single-thread kernel and tests. */
export function runJobSingle(
  engine: WasmEngine,
  src: Uint8Array,
  srcDtype: StoredFloat,
  dst: Uint8Array,
  dstDtype: StoredFloat,
  job: UpdateJob,
  clamp: boolean,
): UpdateResult {
  if (job.rows === 0 || job.cols === 0) return { overflow: 0, nonFiniteInput: 0 };
  const { pb, end } = engine.packB(job);
  let nonFiniteInput = 0;
  let overflow = 0;
  for (const [r0, r1] of engine.blocks(job, srcDtype, dstDtype)) {
    const b = engine.prepareBlock(src, srcDtype, dstDtype, job, pb, end, r0, r1, clamp);
    engine.resetCounts(1);
    engine.run(b, 0, b.rowTiles, 0);
    const [nf, ov] = engine.readCounts(1);
    nonFiniteInput += nf - b.padCells;
    overflow += ov;
    engine.finishBlock(b, dst, dstDtype, job.cols);
  }
  return { overflow, nonFiniteInput };
}

export function backendName(relaxed: boolean): string {
  return relaxed ? 'wasm-simd-relaxed' : 'wasm-simd';
}

/** Single-thread WASM SIMD kernel. Rejects with FUSE_BACKEND_UNAVAILABLE when WebAssembly SIMD is missing. */
export async function createWasmKernel(opts: WasmKernelOptions = {}): Promise<FuseKernel> {
  if (!hasWasmSimd()) {
    throw new FuseError('FUSE_BACKEND_UNAVAILABLE', 'wasm kernel: this runtime has no WebAssembly SIMD (v128)', {
      backend: 'wasm-simd',
    });
  }
  const relaxed = opts.relaxed !== false && hasRelaxedSimd();
  const module = await kernelModule(relaxed, false);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES });
  let engine: WasmEngine | null = new WasmEngine(module, memory, opts.maxBlockBytes);
  const stats: KernelStats = { flops: 0, seconds: 0, calls: 0 };
  const backend = backendName(relaxed);
  return {
    name: backend,
    backend,
    stats,
    async update(src, srcDtype, dst, dstDtype, job: UpdateJob, o: UpdateOptions = {}) {
      if (!engine) throw disposedError(backend);
      validateJob(backend, src, srcDtype, dst, dstDtype, job);
      const e = engine;
      return timed(stats, job, () => runJobSingle(e, src, srcDtype, dst, dstDtype, job, o.clamp === true));
    },
    async dispose() {
      engine = null;
    },
  };
}
