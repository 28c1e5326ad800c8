/**
 * The rank-reduction pool (src/node/reduce-pool.ts) when a request cannot be sent: postMessage throws (a copy the
 * process has no memory for, a value that cannot be cloned). No reply can come for such a request, so it must fail
 * with a typed error at once, without keeping one of its worker's two slots (two such requests left a one-worker
 * pool with no slot: every later request waited forever) and without the error escaping the worker's 'message'
 * listener when the request is sent from a reply (an uncaught exception). The failure is forced by making chosen
 * postMessage calls throw what V8 throws when a clone cannot be allocated.
 */
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadLora } from '../src/formats/index.js';
import { requirePlain } from '../src/lora/terms/index.js';
import { createDeltaPool } from '../src/node/delta-pool.js';
import { mergeLorasParallel } from '../src/node/merge-threads.js';
import { ReducePool, type ReduceJob } from '../src/node/reduce-pool.js';
import { failWorkerPosts, requestOutcome } from './settle-helpers.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');

/** A small rank-2 module to reduce to rank 1 (a reply comes back for it). */
const job = (): ReduceJob => ({
  path: 'm',
  out: 2,
  fanIn: 2,
  target: { rank: 1 },
  terms: [{ coef: 1, rank: 2, up: Float32Array.of(1, 0, 0, 1), down: Float32Array.of(3, 0, 0, 1) }],
});

describe('ReducePool: a request that cannot be sent', () => {
  // A pool per test, started and warmed first (a worker loading the TypeScript sources takes seconds): the bounded
  // waits below are for the replies of a warm worker.
  let pool: ReducePool;
  beforeEach(async () => {
    pool = ReducePool.start(1)!;
    expect(pool).not.toBeNull();
    expect(await requestOutcome(pool.run('warm', job), 60_000)).toEqual({ ok: true });
  });
  afterEach(async () => {
    vi.restoreAllMocks();
    await pool?.close();
  });

  it('fails with LORA_WORKER_FAILED and frees its slot (two of them do not stall a one-worker pool)', async () => {
    failWorkerPosts(1, 2);
    const runs = ['a', 'b', 'c'].map((p) => pool.run(p, job));
    const got = await Promise.all(runs.map((r) => requestOutcome(r)));
    expect(got).toEqual([{ code: 'LORA_WORKER_FAILED' }, { code: 'LORA_WORKER_FAILED' }, { ok: true }]);
  });

  it('sent from a worker reply, fails with LORA_WORKER_FAILED (no uncaught exception) and the queue goes on', async () => {
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown): void => {
      uncaught.push(e);
    };
    process.on('uncaughtException', onUncaught);
    try {
      // Two requests fill the worker's slots; the third is sent when the first reply comes, and cannot be.
      failWorkerPosts(3);
      const runs = ['a', 'b', 'c', 'd'].map((p) => pool.run(p, job));
      const got = await Promise.all(runs.map((r) => requestOutcome(r)));
      expect(got).toEqual([{ ok: true }, { ok: true }, { code: 'LORA_WORKER_FAILED' }, { ok: true }]);
      expect(uncaught).toEqual([]);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });
});

describe('worker pools asked for NaN threads', () => {
  // Math.max(1, NaN) is NaN: the pool started no worker and every request waited forever.
  it('mergeLorasParallel and createDeltaPool reject with OPTION_INVALID instead of waiting forever', async () => {
    const style = requirePlain(await loadLora(path.join(FIXTURES, 'sd15/style-lora.peft.safetensors')));
    const merged = requestOutcome(mergeLorasParallel([style], [1], { rank: 2, threads: Number.NaN }));
    const delta = requestOutcome(
      (async () => {
        const [key, m] = [...style.modules][0]!;
        const pool = createDeltaPool(Number.NaN);
        try {
          return await pool?.weightedDelta(m, key, 1, new Float32Array(0));
        } finally {
          await pool?.close();
        }
      })(),
    );
    expect(await Promise.all([merged, delta])).toEqual([{ code: 'OPTION_INVALID' }, { code: 'OPTION_INVALID' }]);
  });
});
