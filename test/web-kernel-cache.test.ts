/**
 * The page worker's fuse kernel cache (examples/web/kernel-cache.ts): one kernel reused while the thread count stays,
 * a new one (the old disposed) when it changes, a retry after a failed making, and a new one after a job failed with
 * KERNEL_FAILED — a threaded kernel whose thread died fails every later update, so keeping it would fail every later
 * fuse of that worker.
 */
import { describe, expect, it } from 'vitest';
import { kernelCache } from '../examples/web/kernel-cache.js';
import { FuseError } from '../src/core/errors.js';

interface Fake {
  id: number;
  threads: number | undefined;
  disposed: boolean;
  dispose(): Promise<void>;
}

function maker(failFirst = false) {
  const made: Fake[] = [];
  let calls = 0;
  const make = async (threads: number | undefined): Promise<Fake> => {
    calls++;
    if (failFirst && calls === 1) throw new FuseError('FUSE_BACKEND_UNAVAILABLE', 'no threads here');
    const k: Fake = {
      id: made.length,
      threads,
      disposed: false,
      async dispose() {
        k.disposed = true;
      },
    };
    made.push(k);
    return k;
  };
  return { made, make };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

describe('page worker kernel cache', () => {
  it('reuses the kernel for the same thread count and replaces it (disposed) for another', async () => {
    const { made, make } = maker();
    const cache = kernelCache(make);
    const a = await cache.get(undefined);
    expect(await cache.get(undefined)).toBe(a);
    const b = await cache.get(1);
    await settle();
    expect(b).not.toBe(a);
    expect(made.map((k) => k.disposed)).toEqual([true, false]);
  });

  it('makes a new kernel after a job failed with KERNEL_FAILED, and keeps it after any other failure', async () => {
    const { made, make } = maker();
    const cache = kernelCache(make);
    const a = await cache.get(2);
    cache.jobFailed(new FuseError('FUSE_OVERFLOW', 'a weight overflowed'));
    cache.jobFailed(new Error('a read failed'));
    cache.jobFailed(undefined);
    expect(await cache.get(2)).toBe(a);
    cache.jobFailed(new FuseError('KERNEL_FAILED', 'cpu kernel: worker 1 exited unexpectedly (code 1)'));
    await settle();
    expect(a.disposed).toBe(true);
    const b = await cache.get(2);
    expect(b).not.toBe(a);
    expect(made.length).toBe(2);
  });

  it('tries again after the making failed', async () => {
    const { made, make } = maker(true);
    const cache = kernelCache(make);
    await expect(cache.get(undefined)).rejects.toMatchObject({ code: 'FUSE_BACKEND_UNAVAILABLE' });
    await settle();
    const k = await cache.get(undefined);
    expect(made).toEqual([k]);
  });
});
