/**
 * What a kernel thread runs, shared by the Node worker threads (src/node/kernel-worker.ts) and the Web Workers of a
 * page (src/kernels/web-threads.ts): the control block's layout and the loop, as source text, since a thread is
 * started from source (no file path, no TypeScript loader, the same under tsx, vitest, the package and a bundle).
 *
 * The loop sleeps in Atomics.wait on the sequence word of the control block, whose value it reads before it reports
 * ready (so that no block published after 'ready' can be missed). Each time the main thread bumps the
 * sequence, the thread claims chunks of row tiles from the NEXT counter (the main thread claims from the same
 * counter), waits until the main thread has copied a chunk's rows in (READY), runs it, and flags it done
 * (CHUNK_DONE + c) so the main thread can copy it out while other chunks are still running. When no chunk is left
 * it adds one to DONE and notifies. Command QUIT ends the loop. Errors are reported through `report` and the ERROR
 * word; the chunk is still flagged and DONE still incremented, so the main thread never waits forever.
 */

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
  'hadamard_f32_f32',
  'hadamard_f32_f16',
  'hadamard_f32_bf16',
  'hadamard_f16_f32',
  'hadamard_f16_f16',
  'hadamard_f16_bf16',
  'hadamard_bf16_f32',
  'hadamard_bf16_f16',
  'hadamard_bf16_bf16',
  'kronecker_f32_f32',
  'kronecker_f32_f16',
  'kronecker_f32_bf16',
  'kronecker_f16_f32',
  'kronecker_f16_f16',
  'kronecker_f16_bf16',
  'kronecker_bf16_f32',
  'kronecker_bf16_f16',
  'kronecker_bf16_bf16',
  'kronunit_f32_f32',
  'kronunit_f32_f16',
  'kronunit_f32_bf16',
  'kronunit_f16_f32',
  'kronunit_f16_f16',
  'kronunit_f16_bf16',
  'kronunit_bf16_f32',
  'kronunit_bf16_f16',
  'kronunit_bf16_bf16',
] as const;

/** What a thread is given to start: the compiled kernel, the shared memory and where its words are. */
export interface KernelThreadInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  index: number;
  ctlOffset: number;
  ctlInts: number;
  countsOffset: number;
}

/**
 * Source text defining `kernelThread(init, ready, report)`: instantiate the kernel on the shared memory, call
 * `ready()`, run the loop until QUIT; `report(message)` for errors. Platform glue calls it (see the file comment).
 */
export const KERNEL_THREAD_SOURCE = `
function kernelThread(init, ready, report) {
  const { module, memory, index, ctlOffset, ctlInts, countsOffset } = init;
  const C = ${JSON.stringify(CTL)};
  const fns = ${JSON.stringify(KERNEL_FUNCTIONS)};
  let ex;
  try {
    ex = new WebAssembly.Instance(module, { env: { memory } }).exports;
  } catch (e) {
    report('worker ' + index + ': cannot instantiate the kernel: ' + (e && e.message || e));
    return;
  }
  const ctl = new Int32Array(memory.buffer, ctlOffset, ctlInts);
  // Read the sequence before saying ready: the main thread may publish a block as soon as it hears 'ready', and a
  // bump that landed before this read would be taken for the starting value and slept through (a deadlock).
  let seen = Atomics.load(ctl, C.SEQ);
  ready();
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
        report('worker ' + index + ': ' + (e && e.stack || e));
      }
      Atomics.store(ctl, C.CHUNK_DONE + c, 1);
      Atomics.notify(ctl, C.CHUNK_DONE + c);
    }
    Atomics.add(ctl, C.DONE, 1);
    Atomics.notify(ctl, C.DONE);
  }
}
`;
