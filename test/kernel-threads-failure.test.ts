/**
 * The threaded kernel (src/kernels/threads.ts) when copying a block's result out fails after the calling thread has
 * claimed its last chunk: here the destination's buffer is detached while the update runs (transferred elsewhere),
 * so the copy out throws. The update must reject, and only once every thread is done with the block: a thread still
 * in it would take the next block's chunks for its own, and the next update waited forever.
 *
 * The worst interleaving is made all but certain, not forced: copying W in is slowed (a stand-in source whose
 * subarray, one per chunk, takes 250 ms), so the other thread claims and runs each of the block's four chunks as
 * soon as it is in and the calling thread runs none; it copies them all out at the end, and the first copy out
 * throws while the other thread is still running the last chunk (tens of ms of work). The next update starts at
 * once. With the fix the outcome is the same whatever the interleaving.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWasmKernel } from '../src/kernels/cpu.js';
import type { FuseKernel } from '../src/kernels/types.js';
import { createCpuKernel } from '../src/node/kernel-threads.js';
import { randomJob, randomW, stored } from './kernel-helpers.js';
import { settleWithin } from './settle-helpers.js';

/** Source bytes whose reads (copyIn takes one subarray per chunk) are slow; the first one detaches `detach`. */
class SlowSource extends Uint8Array {
  detach: Uint8Array | null = null;
  override subarray(begin?: number, end?: number): Uint8Array<ArrayBuffer> {
    if (this.detach) {
      structuredClone(this.detach.buffer, { transfer: [this.detach.buffer as ArrayBuffer] });
      this.detach = null;
    }
    const until = performance.now() + 250;
    while (performance.now() < until);
    return new Uint8Array(this.buffer as ArrayBuffer, this.byteOffset, this.length).subarray(begin, end);
  }
}

/** How an update ends within 4 s: 'ok', its error's name, or 'hung'. */
async function outcome(p: Promise<unknown>): Promise<string> {
  const r = await settleWithin(p, 4000);
  return r === 'hung' ? r : 'error' in r ? (r.error as Error).name : 'ok';
}

let threaded: FuseKernel;
let single: FuseKernel;
beforeAll(async () => {
  // 1024 rows in 4 chunks of 64 row tiles, every block on both threads.
  threaded = await createCpuKernel({ threads: 2, relaxed: false, minParallelFlops: 0, chunkTiles: 64 });
  single = await createWasmKernel({ relaxed: false });
});
afterAll(async () => {
  await Promise.all([threaded?.dispose(), single?.dispose()]);
});

describe('threaded kernel: a copy out that fails', () => {
  it('rejects the update, and the next update gives the single-thread bytes (no hang)', async () => {
    // The next update's data first, so that it starts the moment the first one fails.
    const next = randomJob(64, 1024, 8, 3);
    const w2 = stored(randomW(64, 1024, 4), 'F32');
    const got = new Uint8Array(w2.length);
    const want = new Uint8Array(w2.length);
    const job = randomJob(1024, 2048, 256, 1);
    const w = stored(randomW(1024, 2048, 2), 'F32');
    const src = new SlowSource(w.length);
    src.set(w);
    const dst = new Uint8Array(w.length);
    src.detach = dst;
    const first = await outcome(threaded.update(src, 'F32', dst, 'F32', job));
    const second = await outcome(threaded.update(w2, 'F32', got, 'F32', next));
    await single.update(w2, 'F32', want, 'F32', next);
    expect({ first, second, same: Buffer.from(got).equals(Buffer.from(want)) }).toEqual({
      first: 'TypeError',
      second: 'ok',
      same: true,
    });
  });
});
