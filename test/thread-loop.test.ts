/**
 * The kernel thread's loop (src/kernels/thread-loop.ts), run on a real worker thread: a block published the moment
 * the thread says 'ready' must not be missed. The worst interleaving is forced here by publishing from inside the
 * ready callback itself, before the loop's first wait: a loop that reads the sequence word after reporting ready
 * takes that bump for its starting value and sleeps through it (the deadlock that hung a threaded kernel in CI).
 */
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { CMD_QUIT, CMD_RUN, CTL, KERNEL_THREAD_SOURCE } from '../src/kernels/thread-loop.js';
import { kernelModuleSync, MAX_PAGES } from '../src/kernels/wasm-engine.js';

const CTL_INTS = 128;

/** Run the loop on a worker whose ready() publishes `cmd` (QUIT, or an empty RUN then QUIT) at once. */
function runLoop(publishOnReady: 'quit' | 'run-then-quit'): Promise<{ returned: boolean; done: number }> {
  const source = `
    'use strict';
    const { parentPort, workerData } = require('node:worker_threads');
    ${KERNEL_THREAD_SOURCE}
    const C = ${JSON.stringify(CTL)};
    const ctl = new Int32Array(workerData.memory.buffer, workerData.ctlOffset, workerData.ctlInts);
    kernelThread(
      workerData,
      () => {
        // What the main thread does on hearing 'ready', done here before the loop can reach its first wait.
        if (workerData.mode === 'quit') Atomics.store(ctl, C.CMD, ${CMD_QUIT});
        else { Atomics.store(ctl, C.NCHUNKS, 0); Atomics.store(ctl, C.CMD, ${CMD_RUN}); }
        Atomics.add(ctl, C.SEQ, 1);
        Atomics.notify(ctl, C.SEQ);
      },
      (message) => parentPort.postMessage({ error: message }),
    );
    parentPort.postMessage({ returned: true });
  `;
  const memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
  const ctl = new Int32Array(memory.buffer, 0, CTL_INTS);
  const init = {
    module: kernelModuleSync(false, true),
    memory,
    index: 1,
    ctlOffset: 0,
    ctlInts: CTL_INTS,
    countsOffset: 4 * CTL_INTS,
    mode: publishOnReady,
  };
  const w = new Worker(source, { eval: true, workerData: init });
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (r: { returned: boolean; done: number }) => {
      if (settled) return;
      settled = true;
      clearInterval(poll);
      clearTimeout(timer);
      void w.terminate();
      resolve(r);
    };
    // A block with no chunks: the thread counts itself done at once; then ask it to quit.
    const poll = setInterval(() => {
      if (publishOnReady === 'run-then-quit' && Atomics.load(ctl, CTL.DONE) === 1) {
        Atomics.store(ctl, CTL.CMD, CMD_QUIT);
        Atomics.add(ctl, CTL.SEQ, 1);
        Atomics.notify(ctl, CTL.SEQ);
      }
    }, 5);
    const timer = setTimeout(() => finish({ returned: false, done: Atomics.load(ctl, CTL.DONE) }), 5000);
    w.on('message', (m: { returned?: boolean; error?: string }) => {
      if (m.error) reject(new Error(m.error));
      else finish({ returned: true, done: Atomics.load(ctl, CTL.DONE) });
    });
    w.on('error', reject);
  });
}

describe('kernel thread loop', () => {
  it('quits when QUIT is published the instant it reports ready', async () => {
    expect(await runLoop('quit')).toEqual({ returned: true, done: 0 });
  });

  it('runs a block published the instant it reports ready (counts itself done), then quits', async () => {
    expect(await runLoop('run-then-quit')).toEqual({ returned: true, done: 1 });
  });
});
