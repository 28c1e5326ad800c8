/**
 * Worker-thread side of the threaded WASM kernel (Node only).
 *
 * The worker is started from source text (`eval: true`) so it needs no TypeScript loader or file path and
 * runs the same under tsx, vitest and the built package. It instantiates the shared-memory kernel module on
 * the shared WebAssembly.Memory it is given, says 'ready', then sleeps in Atomics.wait on the sequence word of
 * the control block. Each time the main thread bumps the sequence, the worker claims chunks of row tiles from
 * the NEXT counter (the main thread claims from the same counter), waits until the main thread has copied a
 * chunk's rows in (READY), runs it, and flags it done (CHUNK_DONE + c) so the main thread can copy it out while
 * other chunks are still running. When no chunk is left it adds one to DONE and notifies. Command QUIT ends
 * the loop, and with it the worker. Errors are reported with a message to the parent and the ERROR word; the
 * chunk is still flagged and DONE still incremented, so the main thread never waits forever.
 */
import { Worker } from 'node:worker_threads';

/** Control block layout (Int32 indices from CTL_OFFSET). */
export const CTL = {
  SEQ: 0,
  CMD: 1,
  DONE: 2,
  ERROR: 3,
  THREADS: 4,
  READY: 5,
  NEXT: 6,
  // block parameters
  FN: 8,
  PA: 9,
  PB: 10,
  R: 11,
  PSRC: 12,
  LDSRC: 13,
  PDST: 14,
  LDDST: 15,
  ROW_TILES: 16,
  COL_TILES: 17,
  NC: 18,
  CLAMP: 19,
  NCHUNKS: 20,
  CHUNK_TILES: 21,
  /** First of the per-chunk done flags. */
  CHUNK_DONE: 64,
} as const;

export const CMD_RUN = 1;
export const CMD_QUIT = 2;

/** Kernel entry points by index (the FN word). */
export const KERNEL_FUNCTIONS = [
  'update_f32_f32',
  'update_f32_f16',
  'update_f32_bf16',
  'update_f16_f32',
  'update_f16_f16',
  'update_f16_bf16',
  'update_bf16_f32',
  'update_bf16_f16',
  'update_bf16_bf16',
  'hadamard_add',
  'kronecker_add',
] as const;

const WORKER_SOURCE = `
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
function main() {
  const { module, memory, index, ctlOffset, ctlInts, countsOffset, fns, C } = workerData;
  let ex;
  try {
    ex = new WebAssembly.Instance(module, { env: { memory } }).exports;
  } catch (e) {
    parentPort.postMessage({ type: 'error', message: 'worker ' + index + ': cannot instantiate the kernel: ' + (e && e.message || e) });
    return;
  }
  const ctl = new Int32Array(memory.buffer, ctlOffset, ctlInts);
  parentPort.postMessage({ type: 'ready', index });
  let seen = Atomics.load(ctl, C.SEQ);
  for (;;) {
    Atomics.wait(ctl, C.SEQ, seen);
    const seq = Atomics.load(ctl, C.SEQ);
    if (seq === seen) continue;
    seen = seq;
    if (Atomics.load(ctl, C.CMD) === ${CMD_QUIT}) break;
    const N = ctl[C.NCHUNKS];
    const CH = ctl[C.CHUNK_TILES];
    const RT = ctl[C.ROW_TILES];
    const fn = ex[fns[ctl[C.FN]]];
    for (;;) {
      const c = Atomics.add(ctl, C.NEXT, 1);
      if (c >= N) break;
      let r;
      while ((r = Atomics.load(ctl, C.READY)) <= c) Atomics.wait(ctl, C.READY, r);
      try {
        const it0 = c * CH;
        const it1 = Math.min(RT, it0 + CH);
        fn(ctl[C.PA], ctl[C.PB], ctl[C.R], ctl[C.PSRC], ctl[C.LDSRC], ctl[C.PDST], ctl[C.LDDST],
          it0, it1, 0, ctl[C.COL_TILES], ctl[C.NC], ctl[C.CLAMP], countsOffset + 8 * index);
      } catch (e) {
        Atomics.store(ctl, C.ERROR, 1);
        parentPort.postMessage({ type: 'error', message: 'worker ' + index + ': ' + (e && e.stack || e) });
      }
      Atomics.store(ctl, C.CHUNK_DONE + c, 1);
      Atomics.notify(ctl, C.CHUNK_DONE + c);
    }
    Atomics.add(ctl, C.DONE, 1);
    Atomics.notify(ctl, C.DONE);
  }
}
main();
`;

export interface WorkerInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  index: number;
  ctlOffset: number;
  ctlInts: number;
  countsOffset: number;
}

/** Start one kernel worker. It is unref'd: it never keeps the process alive. */
export function startKernelWorker(init: WorkerInit): Worker {
  const w = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: { ...init, fns: KERNEL_FUNCTIONS, C: CTL },
    // the worker only runs wasm; keep its JS heap small
    resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 8 },
  });
  w.unref();
  return w;
}
