/**
 * The WASM SIMD kernel on several threads, for any platform that can start threads on one shared
 * WebAssembly.Memory: Node's worker threads (src/node/kernel-threads.ts) and a page's Web Workers when it is
 * cross-origin isolated (src/kernels/web-threads.ts). The calling thread packs the factors and copies W in, then
 * every thread (the caller included) runs its own chunks of 4-row tiles, and the caller copies the result out.
 * Memory and threads are reused across calls; dispose() ends the threads. Each row is computed by the same code
 * whichever thread runs it, so the output is bit-identical to the single-thread kernel's.
 */
import { FuseError, OptionError } from '../core/errors.js';
import { hasRelaxedSimd, hasWasmSimd } from '../core/wasm-features.js';
import { backendName } from './cpu.js';
import { disposedError, now, serialQueue, timed, validateJob } from './job.js';
import { CMD_QUIT, CMD_RUN, CTL, KERNEL_FUNCTIONS, type KernelThreadInit } from './thread-loop.js';
import type {
  FuseKernel,
  HadamardPart,
  KernelStats,
  KroneckerPart,
  StoredFloat,
  UpdateJob,
  UpdateOptions,
  UpdateResult,
  WasmKernelOptions,
} from './types.js';
import {
  type Block,
  COUNTS_OFFSET,
  CTL_INTS,
  CTL_OFFSET,
  HADAMARD_SCRATCH_BYTES,
  kernelModuleSync,
  kroneckerPanelTiles,
  kroneckerUnit,
  MAX_PAGES,
  MAX_THREADS,
  panelTiles,
  WasmEngine,
} from './wasm-engine.js';

/** How a platform starts and ends the kernel's threads. T is its thread handle. */
export interface ThreadPlatform<T> {
  /** Start a thread running the kernel loop (thread-loop.ts) and deliver its events to `events`. */
  start(init: KernelThreadInit, events: { ready(): void; error(message: string): void; exit(code: number): void }): T;
  /** End a thread that was asked to quit (or is stuck); resolves once it is gone. */
  stop(thread: T): Promise<void>;
  /** Let the caller's event loop run pending I/O and other tasks, then continue. */
  yieldToLoop(): Promise<void>;
  /** Keep the caller's process alive while it waits on something that does not (Node); returns the release. */
  hold(): () => void;
  /** Whether the calling thread may block in Atomics.wait (not a page's main thread). */
  readonly canBlock: boolean;
}

export interface ThreadedKernelOptions extends WasmKernelOptions {
  /** Threads including the calling thread. */
  threads: number;
  /** Below this many FLOPs a job runs on the calling thread only (waking threads costs tens of µs). */
  minParallelFlops?: number;
  /**
   * Work chunk of the pipelined multi-thread path, in 4-row tiles. Default: about 256 KiB of W and at least
   * 8 tiles (fewer tiles per chunk would reload the packed-D panel from L3 too often).
   */
  chunkTiles?: number;
  /**
   * Seconds to wait for every thread to report ready (default 60) before giving up with KERNEL_FAILED: a thread that
   * never starts — its start message could not be delivered, its script never ran — must not hang the caller.
   */
  startTimeoutS?: number;
}

/** Validated options: thread count, the parallel threshold and the chunk size (undefined: per block). */
function kernelOptions(opts: ThreadedKernelOptions): {
  threads: number;
  minParallelFlops: number;
  chunkTiles?: number;
  startTimeoutS: number;
} {
  const threads = opts.threads;
  if (!Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) {
    throw new OptionError(
      'OPTION_INVALID',
      `cpu kernel: threads must be an integer in 1..${MAX_THREADS}, found ${threads}`,
      {
        expected: `1..${MAX_THREADS}`,
        found: threads,
      },
    );
  }
  const chunkTiles = opts.chunkTiles;
  if (chunkTiles !== undefined && !(Number.isInteger(chunkTiles) && chunkTiles >= 1)) {
    throw new OptionError('OPTION_INVALID', `cpu kernel: chunkTiles must be a positive integer, found ${chunkTiles}`, {
      expected: 'a positive integer',
      found: chunkTiles,
    });
  }
  const startTimeoutS = opts.startTimeoutS ?? DEFAULT_START_TIMEOUT_S;
  if (!(startTimeoutS > 0 && startTimeoutS <= 3600)) {
    throw new OptionError(
      'OPTION_INVALID',
      `cpu kernel: startTimeoutS must be a number of seconds in (0, 3600], found ${startTimeoutS}`,
      { expected: '(0, 3600]', found: startTimeoutS },
    );
  }
  return {
    threads,
    startTimeoutS,
    minParallelFlops: opts.minParallelFlops ?? 2e6,
    ...(chunkTiles !== undefined ? { chunkTiles } : {}),
  };
}

/**
 * The threads of one kernel and their health: the first failure (a thread's error or unexpected exit) is kept and
 * wakes whoever waits for it; waits on the shared control block give up with KERNEL_FAILED then.
 */
class ThreadPool<T> {
  readonly threadHandles: T[] = [];
  failure: string | null = null;
  disposed = false;
  private readonly errorWaiters: Array<(msg: string) => void> = [];

  constructor(
    private readonly platform: ThreadPlatform<T>,
    private readonly ctl: Int32Array,
    readonly threads: number,
  ) {}

  fail(msg: string): void {
    if (!this.failure) this.failure = msg;
    for (const w of this.errorWaiters.splice(0)) w(msg);
  }

  /**
   * Start threads − 1 threads on the shared module and memory; resolves when every one reported ready, and fails
   * with KERNEL_FAILED (the threads stopped) when one reports an error, exits, or is not ready after `timeoutS`.
   */
  async start(module: WebAssembly.Module, memory: WebAssembly.Memory, timeoutS: number): Promise<void> {
    const ready: Array<Promise<void>> = [];
    for (let i = 1; i < this.threads; i++) {
      ready.push(
        new Promise<void>((resolve, reject) => {
          const init = {
            module,
            memory,
            index: i,
            ctlOffset: CTL_OFFSET,
            ctlInts: CTL_INTS,
            countsOffset: COUNTS_OFFSET,
          };
          const handle = this.platform.start(init, {
            ready: resolve,
            error: (message) => {
              reject(new Error(message));
              this.fail(message || `worker ${i} failed`);
            },
            exit: (code) => {
              reject(new Error(`worker ${i} exited with code ${code} before it was ready`));
              if (!this.disposed) this.fail(`worker ${i} exited unexpectedly (code ${code})`);
            },
          });
          this.threadHandles.push(handle);
        }),
      );
    }
    // Node's workers are unref'd, so nothing else keeps the event loop alive while they start.
    const release = this.platform.hold();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const n = this.threads - 1;
        reject(new Error(`${n === 1 ? 'the worker' : `not all ${n} workers`} reported ready within ${timeoutS} s`));
      }, timeoutS * 1000);
    });
    try {
      await Promise.race([Promise.all(ready), late]);
    } catch (e) {
      this.disposed = true;
      await Promise.all(this.threadHandles.map((t) => this.platform.stop(t)));
      throw new FuseError(
        'KERNEL_FAILED',
        `cpu kernel: starting ${this.threads - 1} worker thread(s) failed: ${(e as Error).message}`,
        {
          threads: this.threads,
        },
      );
    } finally {
      clearTimeout(timer);
      release();
    }
  }

  /**
   * Wait until ctl[index] ≥ value: a short synchronous wait first (where the thread may block), then
   * asynchronously (so that thread 'exit' / 'error' events can arrive). Throws KERNEL_FAILED when a thread failed.
   */
  async waitFor(index: number, value: number): Promise<void> {
    const ctl = this.ctl;
    // A short synchronous wait (the chunk in flight is usually nearly done), then asynchronously, so that the
    // calling thread's other work (reads, the next tensor's factors, writes) runs while a worker finishes.
    const spinUntil = this.platform.canBlock ? now() + SPIN_S : 0;
    for (;;) {
      const d = Atomics.load(ctl, index);
      if (d >= value) return;
      if (this.failure) break;
      if (now() < spinUntil) Atomics.wait(ctl, index, d, 1);
      else await waitAsync(ctl, index, d, this.platform);
    }
    throw new FuseError('KERNEL_FAILED', `cpu kernel: ${this.failure}`, { threads: this.threads });
  }

  /** The failure message once a thread reported one (or a generic one after a second). */
  failureMessage(): Promise<string> {
    if (this.failure) return Promise.resolve(this.failure);
    return new Promise<string>((resolve) => {
      this.errorWaiters.push(resolve);
      const t = setTimeout(() => resolve('a worker reported an error'), 1000) as unknown as { unref?(): void };
      t.unref?.();
    });
  }

  /** Ask the threads to quit and wait for them. */
  async quit(): Promise<void> {
    this.disposed = true;
    Atomics.store(this.ctl, CTL.CMD, CMD_QUIT);
    Atomics.add(this.ctl, CTL.SEQ, 1);
    Atomics.notify(this.ctl, CTL.SEQ);
    await Promise.all(this.threadHandles.map((t) => this.platform.stop(t)));
  }
}

/** What a LoKr adds to a job's rank when run() decides whether a block is worth the threads. */
const KRONECKER_RANK = 8;

/** How long the threads may take to report ready before the kernel gives up (seconds; startTimeoutS). */
const DEFAULT_START_TIMEOUT_S = 60;
/** How long waitFor blocks synchronously before it waits asynchronously (seconds). */
const SPIN_S = 0.0005;
/** The calling thread returns to the event loop at least this often while it computes chunks (seconds). */
const YIELD_S = 0.001;

type WaitAsync = (
  a: Int32Array,
  i: number,
  v: number,
  t: number,
) => { async: boolean; value: Promise<string> | string };

/** One asynchronous wait on ctl[index] while it still holds `seen` (100 ms at most). */
async function waitAsync(
  ctl: Int32Array,
  index: number,
  seen: number,
  platform: ThreadPlatform<unknown>,
): Promise<void> {
  const wait = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;
  if (!wait) {
    // No Atomics.waitAsync (older browsers): poll after letting the event loop run.
    await platform.yieldToLoop();
    return;
  }
  const r = wait(ctl, index, seen, 100);
  if (!r.async) return;
  // Atomics.waitAsync does not keep Node's event loop alive and the workers are unref'd: without a ref'd timer a
  // script whose only pending work is this wait would exit (code 13) mid-update.
  const release = platform.hold();
  try {
    await r.value;
  } finally {
    release();
  }
}

/** Chunks of ~256 KiB of W and ≥ 8 row tiles, at most as many as the control block has flags. */
function chunking(b: Block, chunkTiles: number | undefined): { ch: number; n: number } {
  const maxChunks = CTL_INTS - CTL.CHUNK_DONE;
  let ch = chunkTiles ?? Math.max(8, Math.ceil((256 * 1024) / (4 * b.ldsrc)));
  ch = Math.max(ch, Math.ceil(b.rowTiles / maxChunks));
  return { ch, n: Math.ceil(b.rowTiles / ch) };
}

/** Write the block's description into the control block and wake the threads for it. */
function publishBlock(ctl: Int32Array, b: Block, threads: number, ch: number, n: number): void {
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
}

/** A block, its source and destination, as one update sees them. */
interface BlockIo {
  readonly b: Block;
  readonly src: Uint8Array;
  readonly srcDtype: StoredFloat;
  readonly dst: Uint8Array;
  readonly dstDtype: StoredFloat;
  readonly cols: number;
}

/**
 * One block on all threads, pipelined: the calling thread copies W in chunk by chunk (publishing READY) while the
 * others already run the chunks that are in; then it claims chunks itself, copying out every chunk flagged done
 * so far after each; then it copies out the rest as they are flagged. Chunks are claimed from one atomic counter,
 * so the split adapts to the threads' actual speed (the calling thread spends part of its time copying).
 *
 * Between its chunks (at least every YIELD_S) the calling thread returns to the event loop, and it waits for the
 * others asynchronously: its other work — reading the next tensors, decoding their factors, handing the previous
 * ones to the writer — runs while the threads compute, instead of after them.
 */
async function runParallel<T>(
  engine: WasmEngine,
  pool: ThreadPool<T>,
  platform: ThreadPlatform<T>,
  ctl: Int32Array,
  io: BlockIo,
  chunkTiles: number | undefined,
): Promise<void> {
  const { b, src, srcDtype, dst, dstDtype, cols } = io;
  const { ch, n } = chunking(b, chunkTiles);
  const tiles = (c: number): [number, number] => [c * ch, Math.min(b.rowTiles, (c + 1) * ch)];
  publishBlock(ctl, b, pool.threads, ch, n);
  let mainError: unknown = null;
  /** Chunks copied out so far (in order). */
  let out = 0;
  try {
    for (let c = 0; c < n; c++) {
      engine.copyIn(b, src, srcDtype, cols, ...tiles(c));
      Atomics.store(ctl, CTL.READY, c + 1);
      Atomics.notify(ctl, CTL.READY);
    }
    let nextYield = now() + YIELD_S;
    for (;;) {
      const c = Atomics.add(ctl, CTL.NEXT, 1);
      if (c >= n) break;
      engine.run(b, ...tiles(c), 0);
      Atomics.store(ctl, CTL.CHUNK_DONE + c, 1);
      for (; out < n && Atomics.load(ctl, CTL.CHUNK_DONE + out) === 1; out++)
        engine.copyOut(b, dst, dstDtype, cols, ...tiles(out));
      if (now() >= nextYield) {
        await platform.yieldToLoop();
        nextYield = now() + YIELD_S;
      }
    }
  } catch (e) {
    mainError = e;
    // release the threads: they may be waiting for rows that will not come
    Atomics.store(ctl, CTL.READY, n);
    Atomics.notify(ctl, CTL.READY);
  }
  if (!mainError) {
    try {
      for (; out < n; out++) {
        await pool.waitFor(CTL.CHUNK_DONE + out, 1);
        engine.copyOut(b, dst, dstDtype, cols, ...tiles(out));
      }
    } catch (e) {
      // Still wait for the threads below: one still in this block would take the next block's chunks for its own
      // and could wait forever for rows that never come (and the next update forever for it).
      mainError = e;
    }
  }
  await pool.waitFor(CTL.DONE, pool.threads - 1);
  if (mainError) throw mainError;
  if (Atomics.load(ctl, CTL.ERROR) !== 0) {
    throw new FuseError('KERNEL_FAILED', `cpu kernel: ${await pool.failureMessage()}`, { threads: pool.threads });
  }
}

const alignTo = (n: number, a: number): number => Math.ceil(n / a) * a;

/** KERNEL_INVALID_JOB unless the LoHa's factors fit the job's rows and columns. */
function validateHadamard(kernel: string, job: UpdateJob, h: HadamardPart): void {
  for (const [which, side] of [
    ['A', h.a],
    ['B', h.b],
  ] as const) {
    const ok =
      Number.isInteger(side.rank) &&
      side.rank >= 0 &&
      side.up instanceof Float32Array &&
      side.down instanceof Float32Array &&
      side.up.length === job.rows * side.rank &&
      side.down.length === side.rank * job.cols;
    if (!ok) {
      throw new FuseError(
        'KERNEL_INVALID_JOB',
        `${kernel} kernel: LoHa pair ${which}: expected [${job.rows}, r]·[r, ${job.cols}] f32 factors of rank ${side.rank}, found ${side.up?.length} + ${side.down?.length} values`,
        { kernel, what: `LoHa pair ${which}`, expected: [job.rows, job.cols], found: side.rank },
      );
    }
  }
}

/** KERNEL_INVALID_JOB unless the LoKr's sides multiply out to the job's rows and columns. */
function validateKronecker(kernel: string, job: UpdateJob, k: KroneckerPart): void {
  const dims = [k.rows, k.leftCols, k.rightRows, k.rightCols];
  const ok =
    dims.every((d) => Number.isInteger(d) && d >= 0) &&
    k.left instanceof Float32Array &&
    k.right instanceof Float32Array &&
    k.left.length === k.rows * k.leftCols &&
    k.right.length === k.rightRows * k.rightCols &&
    k.rows * k.rightRows === job.rows &&
    k.leftCols * k.rightCols === job.cols;
  if (!ok) {
    throw new FuseError(
      'KERNEL_INVALID_JOB',
      `${kernel} kernel: LoKr sides [${k.rows}, ${k.leftCols}] ⊗ [${k.rightRows}, ${k.rightCols}] do not give the job's [${job.rows}, ${job.cols}]`,
      { kernel, what: 'LoKr sides', expected: [job.rows, job.cols], found: dims },
    );
  }
}

/**
 * The multi-threaded WASM SIMD kernel on `platform`'s threads, and those threads (diagnostics and tests).
 * `relaxed`: use relaxed SIMD when the runtime validates it (the caller enables it first where that needs a flag).
 */
export async function createThreadedKernel<T>(
  platform: ThreadPlatform<T>,
  opts: ThreadedKernelOptions,
): Promise<{ kernel: FuseKernel; threads: readonly T[] }> {
  const { threads, minParallelFlops, chunkTiles, startTimeoutS } = kernelOptions(opts);
  if (!hasWasmSimd()) {
    throw new FuseError('FUSE_BACKEND_UNAVAILABLE', 'cpu kernel: this runtime has no WebAssembly SIMD (v128)', {
      backend: 'wasm-simd',
    });
  }
  const relaxed = opts.relaxed !== false && hasRelaxedSimd();
  const backend = backendName(relaxed);
  const module = kernelModuleSync(relaxed, true);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
  const engine = new WasmEngine(module, memory, opts.maxBlockBytes);
  const ctl = new Int32Array(memory.buffer, CTL_OFFSET, CTL_INTS);
  const name = `${backend} ×${threads} thread${threads === 1 ? '' : 's'}`;
  const pool = new ThreadPool(platform, ctl, threads);
  await pool.start(module, memory, startTimeoutS);

  /**
   * W' = W + U·D, block by block; with `h`, W' = f32(W + c·Δ) + U·D for the LoHa Δ = s·(A1·B1)⊙(A2·B2): the
   * hadamard_* functions compute both products of a tile in registers, combine them and add U·D there, so no
   * product region, f32 copy of W or extra pass exists, and W is copied in and out as for a plain update.
   * With `k`, the same for the LoKr Δ = s·left ⊗ right: its sides are expanded along the columns once per job
   * (setKroneckerSides) and the kronecker_* functions add Δ to each tile where they read W (in f64 as the dense
   * path does, or, where kroneckerUnit shows that f32 gives the same values, the kronunit_* ones in f32).
   */
  async function run(
    io: Omit<BlockIo, 'b' | 'cols'>,
    job: UpdateJob,
    clamp: boolean,
    h?: HadamardPart,
    k?: KroneckerPart,
  ): Promise<UpdateResult> {
    if (job.rows === 0 || job.cols === 0) return { overflow: 0, nonFiniteInput: 0 };
    const { pb, end } = engine.packB(job);
    // a LoKr's per-element f64 work costs about as much as a rank-8 product (for the parallel threshold only)
    const rank = job.rank + (h ? h.a.rank + h.b.rank : 0) + (k ? KRONECKER_RANK : 0);
    let kBase = end;
    const unit = k ? kroneckerUnit(k) : 0;
    if (k) {
      const sides = engine.setKroneckerSides(k, end, unit);
      const scratch = alignTo(sides.end, 64);
      engine.setKroneckerParams(k.scale, k.coef, sides, k.rightRows, scratch);
      kBase = scratch + MAX_THREADS * HADAMARD_SCRATCH_BYTES;
    }
    let nonFiniteInput = 0;
    let overflow = 0;
    for (const [r0, r1] of engine.blocks(job, io.srcDtype, io.dstDtype)) {
      let base = kBase;
      if (h) {
        const first = engine.packFactors(h.a.rank, h.a.up, h.a.down, job.cols, r0, r1, end);
        const second = engine.packFactors(h.b.rank, h.b.up, h.b.down, job.cols, r0, r1, first.end);
        const scratch = alignTo(second.end, 64);
        engine.setHadamardParams(first, h.a.rank, second, h.b.rank, h.scale, h.coef, scratch);
        base = scratch + MAX_THREADS * HADAMARD_SCRATCH_BYTES;
      }
      if (k) engine.setKroneckerRows(r0, r1);
      const laid = engine.layoutBlock(io.srcDtype, io.dstDtype, job, pb, base, r0, r1, clamp);
      const b = h
        ? { ...laid, fn: laid.fn.replace('update_', 'hadamard_'), nc: panelTiles(rank) }
        : k
          ? {
              ...laid,
              fn: laid.fn.replace('update_', unit ? 'kronunit_' : 'kronecker_'),
              nc: kroneckerPanelTiles(job.rank, k.rightRows),
            }
          : laid;
      engine.resetCounts(threads);
      const flops = 2 * (r1 - r0) * job.cols * rank;
      if (threads > 1 && b.rowTiles >= 2 * threads && flops >= minParallelFlops) {
        await runParallel(engine, pool, platform, ctl, { ...io, b, cols: job.cols }, chunkTiles);
      } else {
        engine.copyIn(b, io.src, io.srcDtype, job.cols, 0, b.rowTiles);
        engine.run(b, 0, b.rowTiles, 0);
        engine.finishBlock(b, io.dst, io.dstDtype, job.cols);
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
        if (pool.disposed) throw disposedError(name);
        if (pool.failure) throw new FuseError('KERNEL_FAILED', `cpu kernel: ${pool.failure}`, { threads });
        validateJob(name, src, srcDtype, dst, dstDtype, job);
        return timed(stats, job, () => run({ src, srcDtype, dst, dstDtype }, job, o.clamp === true));
      });
    },
    updateKronecker(src, srcDtype, dst, dstDtype, job, k, o: UpdateOptions = {}) {
      return queue.run(async () => {
        if (pool.disposed) throw disposedError(name);
        if (pool.failure) throw new FuseError('KERNEL_FAILED', `cpu kernel: ${pool.failure}`, { threads });
        validateJob(name, src, srcDtype, dst, dstDtype, job);
        validateKronecker(name, job, k);
        return timed(stats, job, () => run({ src, srcDtype, dst, dstDtype }, job, o.clamp === true, undefined, k));
      });
    },
    updateHadamard(src, srcDtype, dst, dstDtype, job, h, o: UpdateOptions = {}) {
      return queue.run(async () => {
        if (pool.disposed) throw disposedError(name);
        if (pool.failure) throw new FuseError('KERNEL_FAILED', `cpu kernel: ${pool.failure}`, { threads });
        validateJob(name, src, srcDtype, dst, dstDtype, job);
        validateHadamard(name, job, h);
        const res = await timed(stats, job, () => run({ src, srcDtype, dst, dstDtype }, job, o.clamp === true, h));
        stats.flops += 2 * job.rows * job.cols * (h.a.rank + h.b.rank);
        return res;
      });
    },
    async dispose() {
      if (pool.disposed) return;
      await queue.idle();
      await pool.quit();
    },
  };
  return { kernel, threads: pool.threadHandles };
}
