/**
 * Worker-thread side of the threaded WASM kernel (Node only): a worker_threads Worker started from source text
 * (`eval: true`) that runs the shared kernel thread loop (src/kernels/thread-loop.ts), reporting 'ready' and errors
 * to its parent.
 */
import { Worker } from 'node:worker_threads';
import { KERNEL_THREAD_SOURCE, type KernelThreadInit } from '../kernels/thread-loop.js';

export { CMD_QUIT, CMD_RUN, CTL, KERNEL_FUNCTIONS } from '../kernels/thread-loop.js';

const WORKER_SOURCE = `
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
${KERNEL_THREAD_SOURCE}
kernelThread(
  workerData,
  () => parentPort.postMessage({ type: 'ready', index: workerData.index }),
  (message) => parentPort.postMessage({ type: 'error', message }),
);
`;

export type WorkerInit = KernelThreadInit;

/** Start one kernel worker. It is unref'd: it never keeps the process alive. */
export function startKernelWorker(init: WorkerInit): Worker {
  const w = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: init,
    // the worker only runs wasm; keep its JS heap small
    resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 8 },
  });
  w.unref();
  return w;
}
