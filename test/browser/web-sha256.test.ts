/**
 * The page's SHA-256 in a browser: the WebAssembly compression (src/core/sha256.wat) in a Web Worker, where the
 * page hashes, against node:crypto — at lengths around the 64-byte block, the padding boundary and the module's
 * data chunk, split into uneven updates, and on the fixture files read the way the page's worker reads a LoRA
 * (File.slice windows hashed by `hashingSource` under the decoder's reads); and the same on the page's main thread.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundle, REPO_ROOT } from '../../scripts/build-browser.js';
import { openSession, tempDir, type BrowserSession } from './harness.js';

/** Bytes the WASM module compresses per call: its memory (2 pages) less the 64-byte state area. */
const CHUNK = 2 * 65536 - 64;
const LENGTHS = [
  0,
  1,
  55,
  56,
  57,
  63,
  64,
  65,
  119,
  120,
  127,
  128,
  129,
  1000,
  CHUNK - 1,
  CHUNK,
  CHUNK + 1,
  2 * CHUNK + 77,
];

/** The same bytes in Node and in the page: a fixed linear congruential sequence. */
const GENERATE = `(n, seed) => {
  const b = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; b[i] = s >>> 24; }
  return b;
}`;
const generate = new Function(`return ${GENERATE}`)() as (n: number, seed: number) => Uint8Array;

/** Runs in a worker or on the main thread: digests of every length, whole and in uneven updates; the fixtures. */
const HASH_ALL = `async (lm, origin, lengths, fixtures) => {
  const generate = ${GENERATE};
  const whole = [];
  const split = [];
  for (const n of lengths) {
    const b = generate(n, n + 1);
    whole.push(lm.sha256Hex(b));
    const h = lm.createSha256();
    for (let at = 0, step = 1; at < n; at += step, step = (step * 7 + 3) % 70001) h.update(b.subarray(at, at + step));
    split.push(h.hex());
  }
  const files = [];
  for (const f of fixtures) {
    const blob = await (await fetch(origin + '/fixtures/' + f)).blob();
    // As the page's worker reads a LoRA: hashed windows under the decoder's reads, the hash finished after it.
    const hashed = lm.hashingSource(lm.blobSource(blob, f, { window: false }));
    const st = await lm.parseSafetensors(hashed);
    await lm.decodeLora(st);
    files.push({ name: f, hex: await hashed.finish(), extra: hashed.extraBytes, size: blob.size });
  }
  return { backend: lm.sha256Backend(), whole, split, files };
}`;

interface Hashed {
  backend: string;
  whole: string[];
  split: string[];
  files: { name: string; hex: string; extra: number; size: number }[];
  error?: string;
}

const nodeHex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const FIXTURES = readdirSync(join(REPO_ROOT, 'fixtures/sd15'))
  .filter((f) => f.endsWith('.safetensors') && f.includes('lora'))
  .map((f) => `sd15/${f}`);

describe('SHA-256 in headless Chromium (WebAssembly, in a worker and on the main thread)', () => {
  let s: BrowserSession;
  const tmp = tempDir('web-sha256');
  beforeAll(async () => {
    await bundle({ entry: 'src/index.ts', outfile: join(tmp.dir, 'lora-mix.js') });
    writeFileSync(join(tmp.dir, 'index.html'), '<!doctype html><title>sha256</title>');
    s = await openSession({ root: tmp.dir, mounts: { '/fixtures/': join(REPO_ROOT, 'fixtures') } });
  }, 60_000);
  afterAll(async () => {
    await s?.close();
    tmp.remove();
  });

  const expectNode = (r: Hashed) => {
    expect(r.error).toBeUndefined();
    for (const [i, n] of LENGTHS.entries()) {
      const want = nodeHex(generate(n, n + 1));
      expect(r.whole[i], `length ${n}, one update`).toBe(want);
      expect(r.split[i], `length ${n}, uneven updates`).toBe(want);
    }
    expect(r.files.length).toBe(FIXTURES.length);
    for (const f of r.files) {
      expect(f.hex, f.name).toBe(nodeHex(readFileSync(join(REPO_ROOT, 'fixtures', f.name))));
      expect(f.extra, `${f.name}: bytes read only for the hash`).toBeLessThan(f.size);
    }
  };

  it('in a Web Worker: the WebAssembly compression, equal to node:crypto', async () => {
    const source = `const hashAll = ${HASH_ALL};
      self.onmessage = async (e) => {
        const [origin, lengths, fixtures] = e.data;
        try { self.postMessage(await hashAll(await import(origin + '/lora-mix.js'), origin, lengths, fixtures)); }
        catch (err) { self.postMessage({ error: String((err && err.stack) || err) }); }
      };`;
    const r = (await s.page.evaluate(
      ([src, lengths, fixtures]) => {
        const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })), { type: 'module' });
        return new Promise<unknown>((ok) => {
          w.onmessage = (e) => ok(e.data);
          w.onerror = (e) => ok({ error: e.message });
          w.postMessage([location.origin, lengths, fixtures]);
        });
      },
      [source, LENGTHS, FIXTURES] as const,
    )) as Hashed;
    expect(r.backend).toBe('wasm');
    expectNode(r);
  });

  it('on the main thread: the same digests', async () => {
    const r = (await s.page.evaluate(
      `(async () => (${HASH_ALL})(await import(location.origin + '/lora-mix.js'), location.origin, ${JSON.stringify(LENGTHS)}, ${JSON.stringify(FIXTURES)}))()`,
    )) as Hashed;
    expect(['wasm', 'js']).toContain(r.backend);
    expectNode(r);
  });
});
