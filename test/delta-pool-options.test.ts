/**
 * createDeltaPool (src/node/delta-pool.ts, what mergeLoraFiles and convert use with a base) asked for Infinity
 * threads: Math.max(1, Math.floor(Infinity)) is Infinity, and ReducePool.start looped starting workers forever (a
 * hang that ends in running out of memory). It must refuse the count with a typed error before starting any. Worker
 * starts are counted here through a stand-in startWorker that gives up after a few, so the test stays safe
 * without the fix.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it, vi } from 'vitest';
import { createDeltaPool } from '../src/node/delta-pool.js';

// vi.mock is hoisted above the imports: delta-pool's ReducePool gets the stand-in.
const started = vi.hoisted(() => ({ count: 0 }));
vi.mock('../src/node/worker-boot.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../src/node/worker-boot.js')>();
  return {
    ...real,
    startWorker: () => {
      if (++started.count > 16) throw new Error(`startWorker called ${started.count} times`);
      return Object.assign(new EventEmitter(), { postMessage: () => undefined, terminate: async () => 1 });
    },
  };
});

describe('createDeltaPool with a thread count that is not a finite number', () => {
  it('Infinity is refused with OPTION_INVALID before any worker starts', () => {
    let error: unknown;
    try {
      createDeltaPool(Number.POSITIVE_INFINITY);
    } catch (e) {
      error = e;
    }
    expect({ code: (error as { code?: unknown })?.code, started: started.count }).toEqual({
      code: 'OPTION_INVALID',
      started: 0,
    });
  });
});
