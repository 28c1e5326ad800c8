/**
 * Multi-threaded WASM SIMD kernel for Node: src/kernels/threads.ts on worker threads (src/node/kernel-worker.ts)
 * sharing one WebAssembly.Memory({ shared: true }). The workers are unref'd, so a forgotten kernel never keeps the
 * process alive.
 *
 * Also turns on relaxed SIMD in Node 20 (`--experimental-wasm-relaxed-simd`, set at run time before the
 * kernel is compiled) and checks that it really validates; otherwise mul+add is used.
 */
import os from 'node:os';
import v8 from 'node:v8';
import type { Worker } from 'node:worker_threads';
import { hasRelaxedSimd, resetWasmFeatureCache } from '../core/wasm-features.js';
import { createThreadedKernel, type ThreadedKernelOptions, type ThreadPlatform } from '../kernels/threads.js';
import type { FuseKernel } from '../kernels/types.js';
import { startKernelWorker } from './kernel-worker.js';

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

export interface CpuKernelOptions extends Omit<ThreadedKernelOptions, 'threads'> {
  /** Threads including the main thread (default os.availableParallelism()). */
  threads?: number;
}

/** Default thread count: the machine's available parallelism. */
export function defaultThreads(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

/** Resolves when the worker has exited; terminates it after a second. */
function exited(w: Worker): Promise<void> {
  return new Promise<void>((resolve) => {
    const t = setTimeout(() => {
      void w.terminate().then(() => resolve());
    }, 1000);
    // Not unref'd: the workers are, so this timer is what keeps the process alive until they have exited.
    w.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    if (w.threadId < 0) resolve();
  });
}

/** Node's worker threads as the threaded kernel's platform. */
const NODE_THREADS: ThreadPlatform<Worker> = {
  start(init, events) {
    const w = startKernelWorker(init);
    w.on('message', (m: { type: string; message?: string }) => {
      if (m.type === 'ready') events.ready();
      else if (m.type === 'error') events.error(m.message ?? `worker ${init.index} failed`);
    });
    w.on('error', (e) => events.error(`worker ${init.index}: ${e instanceof Error ? e.message : String(e)}`));
    w.on('exit', (code) => events.exit(code));
    return w;
  },
  stop: exited,
  yieldToLoop: () => new Promise((resolve) => setImmediate(resolve)),
  hold() {
    const t = setInterval(() => undefined, 1000);
    return () => clearInterval(t);
  },
  canBlock: true,
};

/** Multi-threaded WASM SIMD kernel (Node only). */
export async function createCpuKernel(opts: CpuKernelOptions = {}): Promise<FuseKernel> {
  const relaxed = opts.relaxed !== false && enableRelaxedSimdNode();
  const { kernel, threads } = await createThreadedKernel(NODE_THREADS, {
    ...opts,
    relaxed,
    threads: opts.threads ?? defaultThreads(),
  });
  workerLists.set(kernel, threads);
  return kernel;
}
