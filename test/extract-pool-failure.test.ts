/**
 * The extract pool (src/node/extract-threads.ts) when a request can get no reply: closed while requests are in
 * flight or queued, asked after it was closed, or a request postMessage cannot send (a copy the process has no
 * memory for, a value that cannot be cloned; forced here by making chosen postMessage calls throw what V8 throws
 * when a clone cannot be allocated). Each such request must fail with a typed error, never wait forever, and a
 * request that could not be sent must leave its worker free for the next one.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ExtractJob, ExtractPool } from '../src/fuse/extract-module.js';
import { createExtractPool } from '../src/node/extract-threads.js';
import { failWorkerPosts, requestOutcome } from './settle-helpers.js';

/** A 64×64 F32 module whose tuned weight differs from the base by a rank-2 Δ; factored to rank 2. */
function job(path = 'm'): ExtractJob {
  const n = 64;
  const base = new Float32Array(n * n).map((_, i) => Math.sin(i));
  const tuned = base.map((v, i) => v + 0.01 * (((i % n) + 1) * 0.5 + Math.floor(i / n) * 0.25));
  const bytes = (a: Float32Array) => new Uint8Array(a.buffer);
  return {
    path,
    shape: [n, n],
    rule: { kind: 'rank', rank: 2 },
    dtype: 'F32',
    base: { dtype: 'F32', raw: bytes(base), what: 'base' },
    tuned: { dtype: 'F32', raw: bytes(tuned), what: 'tuned' },
  };
}

// A one-worker pool per test, started and warmed first (a worker loading the TypeScript sources takes seconds):
// the bounded waits below are for the replies of a warm worker.
let pool: ExtractPool;
beforeEach(async () => {
  pool = createExtractPool(1)!;
  expect(pool).not.toBeNull();
  expect(await requestOutcome(pool.factor(job('warm')), 60_000)).toEqual({ ok: true });
});
afterEach(async () => {
  vi.restoreAllMocks();
  await pool?.close();
});

describe('extract pool: requests that can get no reply fail with LORA_WORKER_FAILED', () => {
  it('close() with one request in flight and one queued; a request after close()', async () => {
    const pending = [pool.factor(job('a')), pool.factor(job('b'))].map((p) => requestOutcome(p));
    await pool.close();
    const got = await Promise.all([...pending, requestOutcome(pool.factor(job('c')))]);
    expect(got).toEqual([
      { code: 'LORA_WORKER_FAILED' },
      { code: 'LORA_WORKER_FAILED' },
      { code: 'LORA_WORKER_FAILED' },
    ]);
  });

  it('a request that cannot be sent, and the worker then takes the next one', async () => {
    failWorkerPosts(1);
    const got = await Promise.all([pool.factor(job('a')), pool.factor(job('b'))].map((p) => requestOutcome(p)));
    expect(got).toEqual([{ code: 'LORA_WORKER_FAILED' }, { ok: true }]);
  });

  it('a request that cannot be sent from a worker reply (no uncaught exception), and the queue goes on', async () => {
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown): void => {
      uncaught.push(e);
    };
    process.on('uncaughtException', onUncaught);
    try {
      // 'a' takes the worker; 'b' is sent when its reply comes, and cannot be; 'c' follows.
      failWorkerPosts(2);
      const got = await Promise.all(['a', 'b', 'c'].map((p) => requestOutcome(pool.factor(job(p)))));
      expect(got).toEqual([{ ok: true }, { code: 'LORA_WORKER_FAILED' }, { ok: true }]);
      expect(uncaught).toEqual([]);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });
});
