/**
 * Starting the threaded kernel (src/kernels/threads.ts) when a thread never reports ready — its start message could
 * not be delivered (a page's Web Worker gets `messageerror` and its script never runs the loop), or it hangs before
 * the loop: the kernel must give up with KERNEL_FAILED after `startTimeoutS` and stop every thread it started, not
 * wait forever. A stand-in platform plays the threads; nothing real is started.
 */
import { describe, expect, it } from 'vitest';
import { createThreadedKernel, type ThreadPlatform } from '../src/kernels/threads.js';
import { settleWithin } from './settle-helpers.js';

interface FakeThread {
  index: number;
  stopped: boolean;
}

/** A platform whose threads with an index in `readyOnes` report ready at once and the others never do. */
function platform(readyOnes: number[]): ThreadPlatform<FakeThread> & { started: FakeThread[] } {
  const started: FakeThread[] = [];
  return {
    started,
    start(init, events) {
      const t = { index: init.index, stopped: false };
      started.push(t);
      if (readyOnes.includes(init.index)) queueMicrotask(() => events.ready());
      return t;
    },
    async stop(t) {
      t.stopped = true;
    },
    yieldToLoop: () => new Promise((r) => setImmediate(r)),
    hold: () => () => undefined,
    canBlock: false,
  };
}

/** The kernel's start within `boundMs`: 'started' (then disposed), its error's code and message, or 'hung'. */
async function startWithin(p: ThreadPlatform<FakeThread>, opts: object, boundMs: number): Promise<unknown> {
  const r = await settleWithin(createThreadedKernel(p, { threads: 3, ...opts }), boundMs);
  if (r === 'hung') return r;
  if ('error' in r) {
    const e = r.error as { code?: string; message?: string };
    return { code: e.code, message: e.message };
  }
  await r.value.kernel.dispose();
  return 'started';
}

describe('threaded kernel start-up', () => {
  it('gives up with KERNEL_FAILED when a thread never reports ready, and stops every thread', async () => {
    const p = platform([1]); // thread 2 never starts
    const r = (await startWithin(p, { startTimeoutS: 0.2 }, 3000)) as { code?: string; message?: string };
    expect(r).not.toBe('hung');
    expect(r.code).toBe('KERNEL_FAILED');
    expect(r.message).toMatch(/not all 2 workers reported ready within 0\.2 s/);
    expect(p.started.map((t) => t.stopped)).toEqual([true, true]);
  });

  it('starts when every thread reports ready (the timeout does not fire later)', async () => {
    const p = platform([1, 2]);
    expect(await startWithin(p, { startTimeoutS: 0.2 }, 3000)).toBe('started');
    await new Promise((r) => setTimeout(r, 300)); // past the timeout: nothing rejects unhandled
  });

  it('refuses a start timeout that is not a positive number of seconds', async () => {
    for (const startTimeoutS of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      const r = (await startWithin(platform([1, 2]), { startTimeoutS }, 3000)) as { code?: string };
      expect(r.code).toBe('OPTION_INVALID');
    }
  });
});
