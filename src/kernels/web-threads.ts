/**
 * The threaded WASM SIMD kernel in a browser: src/kernels/threads.ts on Web Workers started from source text (a
 * Blob URL: no extra file to serve). It needs SharedArrayBuffer, which a page only has when it is cross-origin
 * isolated (served with `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy: require-corp`).
 * Call it from a Web Worker: the calling thread takes part in the work and waits on the others, and only a worker
 * may block for that (on a page's main thread it waits asynchronously, polling).
 */
import { FuseError } from '../core/errors.js';
import { KERNEL_THREAD_SOURCE } from './thread-loop.js';
import { createThreadedKernel, type ThreadedKernelOptions, type ThreadPlatform } from './threads.js';
import type { FuseKernel } from './types.js';

/** What this file needs of a Web Worker (the DOM's Worker), so that it type-checks without the DOM library. */
interface WebWorker {
  postMessage(message: unknown): void;
  terminate(): void;
  onmessage: ((event: { data: { type: string; message?: string } }) => void) | null;
  onerror: ((event: { message?: string; preventDefault?(): void }) => void) | null;
}
type WorkerClass = new (url: string, options?: { name?: string }) => WebWorker;

const WORKER_SOURCE = `
'use strict';
${KERNEL_THREAD_SOURCE}
// A start message that cannot be received (e.g. a module or memory this worker may not share) says so at once,
// instead of leaving the kernel to wait for a 'ready' that never comes.
self.onmessageerror = () => {
  self.postMessage({ type: 'error', message: 'the kernel worker could not receive its start message' });
};
self.onmessage = (event) => {
  self.onmessage = null;
  kernelThread(
    event.data,
    () => self.postMessage({ type: 'ready' }),
    (message) => self.postMessage({ type: 'error', message }),
  );
};
`;

/** Whether this context can run the threaded kernel: Workers, shared memory and cross-origin isolation. */
export function webThreadsAvailable(): boolean {
  const g = globalThis as { Worker?: unknown; SharedArrayBuffer?: unknown; crossOriginIsolated?: boolean };
  return typeof g.Worker === 'function' && typeof g.SharedArrayBuffer === 'function' && g.crossOriginIsolated === true;
}

/** True where Atomics.wait may block (a worker), false on a page's main thread. */
function canBlockHere(): boolean {
  try {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 1, 0);
    return true;
  } catch {
    return false;
  }
}

/** Return to the event loop without a timer's minimum delay (a message to ourselves). */
function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

function webPlatform(url: string): ThreadPlatform<WebWorker> {
  const WorkerCtor = (globalThis as unknown as { Worker: WorkerClass }).Worker;
  return {
    start(init, events) {
      const w = new WorkerCtor(url, { name: `lora-mix kernel ${init.index}` });
      w.onmessage = (event) => {
        if (event.data.type === 'ready') events.ready();
        else if (event.data.type === 'error') events.error(event.data.message ?? `worker ${init.index} failed`);
      };
      w.onerror = (event) => {
        event.preventDefault?.();
        events.error(`worker ${init.index}: ${event.message ?? 'failed to start'}`);
      };
      w.postMessage(init);
      return w;
    },
    async stop(w) {
      w.terminate();
    },
    yieldToLoop,
    hold: () => () => undefined,
    canBlock: canBlockHere(),
  };
}

/**
 * The WASM SIMD kernel on `threads` threads (the caller's included; default navigator.hardwareConcurrency) in a
 * cross-origin isolated page or worker. FUSE_BACKEND_UNAVAILABLE where shared memory is not available; use
 * createWasmKernel (one thread) there. Outputs are bit-identical to the single-thread kernel's.
 */
export async function createWebCpuKernel(opts: Partial<ThreadedKernelOptions> = {}): Promise<FuseKernel> {
  if (!webThreadsAvailable()) {
    throw new FuseError(
      'FUSE_BACKEND_UNAVAILABLE',
      'threaded cpu kernel: needs Web Workers and SharedArrayBuffer, which a page has only when it is cross-origin ' +
        'isolated (served with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: ' +
        'require-corp); use the single-thread kernel (createWasmKernel) instead',
      { backend: 'wasm-simd-threads' },
    );
  }
  const nav = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator;
  const threads = opts.threads ?? Math.max(1, Math.min(nav?.hardwareConcurrency ?? 1, 8));
  const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: 'text/javascript' }));
  try {
    const { kernel } = await createThreadedKernel(webPlatform(url), { ...opts, threads });
    return kernel;
  } finally {
    // Workers already started keep their script; the URL is not needed after.
    URL.revokeObjectURL(url);
  }
}
