/**
 * The threaded WASM kernel in a browser (src/kernels/web-threads.ts): in a cross-origin isolated page (the test
 * server sends COOP/COEP), on Web Workers sharing one WebAssembly.Memory. Its output must be byte for byte the
 * single-thread kernel's, called from a Web Worker (where the caller blocks on the others, as the page's fuse does)
 * and from the page's main thread (where it may only wait asynchronously); without isolation it refuses with a
 * typed error instead of failing obscurely.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBrowser } from '../../scripts/build-browser.js';
import { openSession, tempDir, type BrowserSession } from './harness.js';

/** Runs in the page or in a worker: random jobs through both kernels; the number of jobs whose bytes differ. */
const COMPARE = `async (lm) => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const fill = (n) => Float32Array.from({ length: n }, rnd);
  const threaded = await lm.createWebCpuKernel({ threads: 3, minParallelFlops: 0 });
  const single = await lm.createWasmKernel();
  const size = { F32: 4, F16: 2, BF16: 2 };
  const results = [];
  for (const [rows, cols, rank] of [[320, 320, 8], [1280, 640, 64], [517, 1153, 13], [64, 4096, 4], [2560, 2880, 32]]) {
    for (const [src, dst] of [['F16', 'F16'], ['F32', 'F16'], ['BF16', 'F32'], ['F16', 'BF16']]) {
      const job = { rows, cols, rank, up: fill(rows * rank).map((x) => x * 0.05), down: fill(rank * cols) };
      const w = new Uint8Array(rows * cols * size[src]);
      for (let i = 0; i < w.length; i++) w[i] = (rnd() * 127) & 0x3f; // finite in every dtype
      const a = new Uint8Array(rows * cols * size[dst]);
      const b = new Uint8Array(rows * cols * size[dst]);
      const ra = await threaded.update(w, src, a, dst, job);
      const rb = await single.update(w, src, b, dst, job);
      let same = ra.overflow === rb.overflow && ra.nonFiniteInput === rb.nonFiniteInput;
      for (let i = 0; same && i < a.length; i++) same = a[i] === b[i];
      results.push({ shape: rows + 'x' + cols + 'r' + rank + ' ' + src + '>' + dst, same });
    }
  }
  const name = threaded.name;
  await threaded.dispose();
  await single.dispose();
  return { name, results };
}`;

describe('threaded WASM kernel in a cross-origin isolated page (headless Chromium)', () => {
  let s: BrowserSession;
  const tmp = tempDir('web-threads');
  beforeAll(async () => {
    await buildBrowser({ outDir: tmp.dir });
    s = await openSession({ root: tmp.dir, path: 'web/index.html' });
  });
  afterAll(async () => {
    await s?.close();
    tmp.remove();
  });

  // Evaluated as strings: vitest would rewrite a dynamic import() inside a function handed to page.evaluate.
  const IMPORT_LM = "await import(location.origin + '/browser/lora-mix.js')";

  it('the page is cross-origin isolated (COOP/COEP from the server) and offers the threaded kernel', async () => {
    const r = await s.page.evaluate(
      `(async () => { const lm = ${IMPORT_LM}; return { isolated: crossOriginIsolated, available: lm.webThreadsAvailable() }; })()`,
    );
    expect(r).toEqual({ isolated: true, available: true });
  });

  it('gives the single-thread kernel’s bytes, called from a Web Worker', async () => {
    const source = `const compare = ${COMPARE};
      self.onmessage = async (e) => {
        try { self.postMessage(await compare(await import(e.data + '/browser/lora-mix.js'))); }
        catch (err) { self.postMessage({ error: String((err && err.stack) || err) }); }
      };`;
    const r = (await s.page.evaluate((src) => {
      const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })), { type: 'module' });
      return new Promise((ok) => {
        w.onmessage = (e) => ok(e.data);
        w.onerror = (e) => ok({ error: e.message });
        w.postMessage(location.origin);
      });
    }, source)) as { name?: string; results?: { shape: string; same: boolean }[]; error?: string };
    expect(r.error).toBeUndefined();
    expect(r.name).toMatch(/^wasm-simd(-relaxed)? ×3 threads$/);
    expect(r.results?.length).toBe(20);
    expect(r.results?.filter((x) => !x.same)).toEqual([]);
  });

  it('gives the same bytes called from the page’s main thread (asynchronous waits only)', async () => {
    const r = (await s.page.evaluate(`(async () => (${COMPARE})(${IMPORT_LM}))()`)) as {
      name: string;
      results: { shape: string; same: boolean }[];
    };
    expect(r.results.length).toBe(20);
    expect(r.results.filter((x) => !x.same)).toEqual([]);
    expect(s.errors).toEqual([]);
  });

  it('without cross-origin isolation it refuses with FUSE_BACKEND_UNAVAILABLE', async () => {
    const plain = await openSession({ root: tmp.dir, path: 'web/index.html', isolate: false });
    try {
      const r = await plain.page.evaluate(`(async () => {
        const lm = ${IMPORT_LM};
        const available = lm.webThreadsAvailable();
        try {
          await lm.createWebCpuKernel({ threads: 2 });
          return { isolated: crossOriginIsolated, available, code: 'none' };
        } catch (e) {
          return { isolated: crossOriginIsolated, available, code: e.code };
        }
      })()`);
      expect(r).toEqual({ isolated: false, available: false, code: 'FUSE_BACKEND_UNAVAILABLE' });
    } finally {
      await plain.close();
    }
  });
});
