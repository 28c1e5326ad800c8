/**
 * The page worker's OPFS results folder (examples/web/scratch.ts) is named by a Web Lock it holds for its life. A
 * lock request the browser refuses outright (it rejects without ever calling back) left the folder's first use
 * waiting forever, and with it every fuse, merge and resize of the worker (its jobs run one after another). It must
 * give null instead (the caller then keeps the result as Blob parts). OPFS and the lock manager are stand-ins here.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { settleWithin } from './settle-helpers.js';

/** An empty OPFS directory whose entries are directories like itself. */
function fakeDir(): object {
  return {
    getDirectoryHandle: async () => fakeDir(),
    getFileHandle: async () => ({ getFile: async () => new File([], 'x') }),
    removeEntry: async () => undefined,
    keys: async function* () {},
  };
}

afterEach(() => {
  vi.unstubAllGlobals();
  vi.resetModules();
});

describe('scratchSink when the Web Lock naming its folder is refused', () => {
  it('gives null (Blob parts instead), and so does the next call', async () => {
    vi.stubGlobal('navigator', {
      storage: { getDirectory: async () => fakeDir() },
      locks: {
        request: () => Promise.reject(new DOMException('refused', 'SecurityError')),
        query: async () => ({ held: [] }),
      },
    });
    const { scratchSink } = await import('../examples/web/scratch.js');
    expect(await settleWithin(scratchSink('fuse', 'out.safetensors'), 3000)).toEqual({ value: null });
    expect(await settleWithin(scratchSink('merge', 'out.safetensors'), 3000)).toEqual({ value: null });
  });
});
