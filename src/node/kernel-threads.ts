/**
 * Multi-threaded WASM SIMD kernel for Node: the main thread plus `threads − 1` worker threads share one
 * WebAssembly.Memory({ shared: true }). The main thread packs the factors and copies W in, then every thread
 * (main included) runs its own contiguous range of 4-row tiles, and the main thread copies the result out.
 * Memory and workers are reused across calls; dispose() ends the workers (they are unref'd in any case, so a
 * forgotten kernel never keeps the process alive).
 *
 * Also turns on relaxed SIMD in Node 20 (`--experimental-wasm-relaxed-simd`, set at run time before the
 * kernel is compiled) and checks that it really validates; otherwise mul+add is used.
 */
import os from 'node:os';
import v8 from 'node:v8';
import type { Worker } from 'node:worker_threads';
import { FuseError } from '../core/errors.js';
import { hasRelaxedSimd, hasWasmSimd, resetWasmFeatureCache } from '../core/wasm-features.js';
import { backendName } from '../kernels/cpu.js';
import { disposedError, now, serialQueue, timed, validateJob } from '../kernels/job.js';
import type {
  FuseKernel,
  KernelStats,
  StoredFloat,
  UpdateJob,
  UpdateOptions,
  UpdateResult,
  WasmKernelOptions,
} from '../kernels/types.js';
import {
  type Block,
  COUNTS_OFFSET,
  CTL_INTS,
  CTL_OFFSET,
  kernelModuleSync,
  MAX_PAGES,
  MAX_THREADS,
  WasmEngine,
} from '../kernels/wasm-engine.js';
import { CMD_QUIT, CMD_RUN, CTL, KERNEL_FUNCTIONS, startKernelWorker } from './kernel-worker.js';

let relaxedTried = false;

const workerLists = new WeakMap<FuseKernel, readonly Worker[]>();

/** The worker threads of a kernel made by createCpuKernel (diagnostics and tests); empty for others. */
export function workersOf(kernel: FuseKernel): readonly Worker[] {
  return workerLists.get(kernel) ?? [];
}

/**
 * Make relaxed SIMD available in this process if the runtime can do it (Node 20: a V8 flag set before any
 * module using it is compiled). Returns whether f32x4.relaxed_madd now validates.
 */
export function enableRelaxedSimdNode(): boolean {
  if (hasRelaxedSimd()) return true;
  if (!relaxedTried) {
    relaxedTried = true;
    try {
      v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    } catch {
      // flag unknown to this V8: stay on mul+add
    }
    resetWasmFeatureCache();
  }
  return hasRelaxedSimd();
}

export interface CpuKernelOptions extends WasmKernelOptions {
  /** Threads including the main thread (default os.availableParallelism()). */
  threads?: number;
  /** Below this many FLOPs a job runs on the main thread only (waking workers costs tens of µs). */
  minParallelFlops?: number;
  /**
   * Work chunk of the pipelined multi-thread path, in 4-row tiles. Default: about 256 KiB of W and at least
   * 8 tiles (fewer tiles per chunk would reload the packed-D panel from L3 too often).
   */
  chunkTiles?: number;
}

/** Default thread count: the machine's available parallelism. */
export function defaultThreads(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

/** Multi-threaded WASM SIMD kernel (Node only). */
export async function createCpuKernel(opts: CpuKernelOptions = {}): Promise<FuseKernel> {
  const threads = opts.threads ?? defaultThreads();
  if (!Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) {
    throw new FuseError(
      'KERNEL_INVALID_JOB',
      `cpu kernel: threads must be an integer in 1..${MAX_THREADS}, found ${threads}`,
      {
        expected: `1..${MAX_THREADS}`,
        found: threads,
      },
    );
  }
  if (!hasWasmSimd()) {
    throw new FuseError('FUSE_BACKEND_UNAVAILABLE', 'cpu kernel: this runtime has no WebAssembly SIMD (v128)', {
      backend: 'wasm-simd',
    });
  }
  const relaxed = opts.relaxed !== false && enableRelaxedSimdNode();
  const backend = backendName(relaxed);
  const module = kernelModuleSync(relaxed, true);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
  const engine = new WasmEngine(module, memory);
  const ctl = new Int32Array(memory.buffer, CTL_OFFSET, CTL_INTS);
  const minParallelFlops = opts.minParallelFlops ?? 2e6;
  const chunkTiles = opts.chunkTiles;
  if (chunkTiles !== undefined && !(Number.isInteger(chunkTiles) && chunkTiles >= 1)) {
    throw new FuseError(
      'KERNEL_INVALID_JOB',
      `cpu kernel: chunkTiles must be a positive integer, found ${chunkTiles}`,
      {
        expected: 'a positive integer',
        found: chunkTiles,
      },
    );
  }
  const name = `${backend} ×${threads} thread${threads === 1 ? '' : 's'}`;

  // ---- workers
  const workers: Worker[] = [];
  let failure: string | null = null;
  let disposed = false;
  const errorWaiters: Array<(msg: string) => void> = [];
  const fail = (msg: string): void => {
    if (!failure) failure = msg;
    for (const w of errorWaiters.splice(0)) w(msg);
  };
  const ready: Array<Promise<void>> = [];
  for (let i = 1; i < threads; i++) {
    const w = startKernelWorker({
      module,
      memory,
      index: i,
      ctlOffset: CTL_OFFSET,
      ctlInts: CTL_INTS,
      countsOffset: COUNTS_OFFSET,
    });
    workers.push(w);
    ready.push(
      new Promise<void>((resolve, reject) => {
        w.on('message', (m: { type: string; message?: string }) => {
          if (m.type === 'ready') resolve();
          else if (m.type === 'error') {
            reject(new Error(m.message));
            fail(m.message ?? `worker ${i} failed`);
          }
        });
        w.on('error', (e) => {
          reject(e);
          fail(`worker ${i}: ${e instanceof Error ? e.message : String(e)}`);
        });
        w.on('exit', (code) => {
          reject(new Error(`worker ${i} exited with code ${code} before it was ready`));
          if (!disposed) fail(`worker ${i} exited unexpectedly (code ${code})`);
        });
      }),
    );
  }
  // The workers are unref'd, so nothing else keeps the event loop alive while they start.
  const keepAlive = setInterval(() => undefined, 1000);
  try {
    await Promise.all(ready);
  } catch (e) {
    disposed = true;
    await Promise.all(workers.map((w) => w.terminate()));
    throw new FuseError(
      'KERNEL_FAILED',
      `cpu kernel: starting ${threads - 1} worker thread(s) failed: ${(e as Error).message}`,
      {
        threads,
      },
    );
  } finally {
    clearInterval(keepAlive);
  }

  /** Wait until ctl[index] ≥ value: a short synchronous wait first, then asynchronously (so that worker
   *  'exit' / 'error' events can arrive). Throws KERNEL_FAILED when a worker failed. */
  async function waitFor(index: number, value: number): Promise<void> {
    const spinUntil = now() + 0.05;
    for (;;) {
      const d = Atomics.load(ctl, index);
      if (d >= value) return;
      if (failure) break;
      if (now() < spinUntil) {
        Atomics.wait(ctl, index, d, 1);
      } else {
        const r = (
          Atomics as unknown as {
            waitAsync(
              a: Int32Array,
              i: number,
              v: number,
              t: number,
            ): { async: boolean; value: Promise<string> | string };
          }
        ).waitAsync(ctl, index, d, 100);
        if (r.async) {
          // Atomics.waitAsync does not keep Node's event loop alive and the workers are unref'd: without a ref'd
          // timer a script whose only pending work is this wait would exit (code 13) mid-update.
          const keepAlive = setTimeout(() => undefined, 200);
          try {
            await r.value;
          } finally {
            clearTimeout(keepAlive);
          }
        }
      }
    }
    throw new FuseError('KERNEL_FAILED', `cpu kernel: ${failure}`, { threads });
  }

  /**
   * One block on all threads, pipelined: the main thread copies W in chunk by chunk (publishing READY) while
   * the workers already run the chunks that are in; then it claims chunks itself; then it copies chunks out
   * as they are flagged done. Chunks are claimed from one atomic counter, so the split adapts to the threads'
   * actual speed (the main thread spends part of its time copying).
   */
  async function runParallel(
    b: Block,
    src: Uint8Array,
    srcDtype: StoredFloat,
    dst: Uint8Array,
    dstDtype: StoredFloat,
    cols: number,
  ): Promise<void> {
    // chunks of ~256 KiB of W and ≥ 8 row tiles, at most as many as the control block has flags
    const maxChunks = CTL_INTS - CTL.CHUNK_DONE;
    let ch = chunkTiles ?? Math.max(8, Math.ceil((256 * 1024) / (4 * b.ldsrc)));
    ch = Math.max(ch, Math.ceil(b.rowTiles / maxChunks));
    const n = Math.ceil(b.rowTiles / ch);
    ctl[CTL.FN] = KERNEL_FUNCTIONS.indexOf(b.fn as (typeof KERNEL_FUNCTIONS)[number]);
    ctl[CTL.PA] = b.pa;
    ctl[CTL.PB] = b.pb;
    ctl[CTL.R] = b.r;
    ctl[CTL.PSRC] = b.psrc;
    ctl[CTL.LDSRC] = b.ldsrc;
    ctl[CTL.PDST] = b.pdst;
    ctl[CTL.LDDST] = b.lddst;
    ctl[CTL.ROW_TILES] = b.rowTiles;
    ctl[CTL.COL_TILES] = b.colTiles;
    ctl[CTL.NC] = b.nc;
    ctl[CTL.CLAMP] = b.clamp;
    ctl[CTL.THREADS] = threads;
    ctl[CTL.NCHUNKS] = n;
    ctl[CTL.CHUNK_TILES] = ch;
    ctl.fill(0, CTL.CHUNK_DONE, CTL.CHUNK_DONE + n);
    Atomics.store(ctl, CTL.READY, 0);
    Atomics.store(ctl, CTL.NEXT, 0);
    Atomics.store(ctl, CTL.DONE, 0);
    Atomics.store(ctl, CTL.ERROR, 0);
    Atomics.store(ctl, CTL.CMD, CMD_RUN);
    Atomics.add(ctl, CTL.SEQ, 1);
    Atomics.notify(ctl, CTL.SEQ);

    let mainError: unknown = null;
    try {
      for (let c = 0; c < n; c++) {
        engine.copyIn(b, src, srcDtype, cols, c * ch, Math.min(b.rowTiles, (c + 1) * ch));
        Atomics.store(ctl, CTL.READY, c + 1);
        Atomics.notify(ctl, CTL.READY);
      }
      for (;;) {
        const c = Atomics.add(ctl, CTL.NEXT, 1);
        if (c >= n) break;
        engine.run(b, c * ch, Math.min(b.rowTiles, (c + 1) * ch), 0);
        Atomics.store(ctl, CTL.CHUNK_DONE + c, 1);
      }
    } catch (e) {
      mainError = e;
      // release the workers: they may be waiting for rows that will not come
      Atomics.store(ctl, CTL.READY, n);
      Atomics.notify(ctl, CTL.READY);
    }
    if (!mainError) {
      for (let c = 0; c < n; c++) {
        await waitFor(CTL.CHUNK_DONE + c, 1);
        engine.copyOut(b, dst, dstDtype, cols, c * ch, Math.min(b.rowTiles, (c + 1) * ch));
      }
    }
    await waitFor(CTL.DONE, threads - 1);
    if (mainError) throw mainError;
    if (Atomics.load(ctl, CTL.ERROR) !== 0) {
      const msg =
        failure ??
        (await new Promise<string>((resolve) => {
          errorWaiters.push(resolve);
          setTimeout(() => resolve('a worker reported an error'), 1000).unref();
        }));
      throw new FuseError('KERNEL_FAILED', `cpu kernel: ${msg}`, { threads });
    }
  }

  async function run(
    src: Uint8Array,
    srcDtype: StoredFloat,
    dst: Uint8Array,
    dstDtype: StoredFloat,
    job: UpdateJob,
    clamp: boolean,
  ): Promise<UpdateResult> {
    if (job.rows === 0 || job.cols === 0) return { overflow: 0, nonFiniteInput: 0 };
    const { pb, end } = engine.packB(job);
    let nonFiniteInput = 0;
    let overflow = 0;
    for (const [r0, r1] of engine.blocks(job, srcDtype, dstDtype)) {
      const b = engine.layoutBlock(srcDtype, dstDtype, job, pb, end, r0, r1, clamp);
      engine.resetCounts(threads);
      const flops = 2 * (r1 - r0) * job.cols * job.rank;
      if (threads > 1 && b.rowTiles >= 2 * threads && flops >= minParallelFlops) {
        await runParallel(b, src, srcDtype, dst, dstDtype, job.cols);
      } else {
        engine.copyIn(b, src, srcDtype, job.cols, 0, b.rowTiles);
        engine.run(b, 0, b.rowTiles, 0);
        engine.finishBlock(b, dst, dstDtype, job.cols);
      }
      const [nf, ov] = engine.readCounts(threads);
      nonFiniteInput += nf - b.padCells;
      overflow += ov;
    }
    return { overflow, nonFiniteInput };
  }

  const stats: KernelStats = { flops: 0, seconds: 0, calls: 0 };
  const queue = serialQueue();

  const kernel: FuseKernel = {
    name,
    backend,
    stats,
    update(src, srcDtype, dst, dstDtype, job, o: UpdateOptions = {}) {
      // calls are serialised: one shared memory, one job at a time
      return queue.run(async () => {
        if (disposed) throw disposedError(name);
        if (failure) throw new FuseError('KERNEL_FAILED', `cpu kernel: ${failure}`, { threads });
        validateJob(name, src, srcDtype, dst, dstDtype, job);
        return timed(stats, job, () => run(src, srcDtype, dst, dstDtype, job, o.clamp === true));
      });
    },
    async dispose() {
      if (disposed) return;
      await queue.idle();
      disposed = true;
      Atomics.store(ctl, CTL.CMD, CMD_QUIT);
      Atomics.add(ctl, CTL.SEQ, 1);
      Atomics.notify(ctl, CTL.SEQ);
      await Promise.all(
        workers.map(
          (w) =>
            new Promise<void>((resolve) => {
              const t = setTimeout(() => {
                void w.terminate().then(() => resolve());
              }, 1000);
              // Not unref'd: the workers are, so this timer is what keeps the process alive until they have exited.
              w.once('exit', () => {
                clearTimeout(t);
                resolve();
              });
              if (w.threadId < 0) resolve();
            }),
        ),
      );
    },
  };
  workerLists.set(kernel, workers);
  return kernel;
}
