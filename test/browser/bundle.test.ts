/**
 * The browser build: the core bundles for platform 'browser' with no Node built-ins, the guard that enforces it
 * really fails on a Node import, and the built library works in headless Chromium (parse a fixture LoRA from an
 * ArrayBuffer and from a Blob, describe it, serialize it back).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BrowserBuildError,
  buildBrowser,
  bundle,
  isNodeBuiltin,
  REPO_ROOT,
  writeHtml,
  type BrowserBuild,
} from '../../scripts/build-browser.js';
import { openSession, tempDir, type BrowserSession } from './harness.js';

describe('node built-in guard', () => {
  const tmp = tempDir('guard');
  afterAll(() => tmp.remove());

  it('recognises node: specifiers and bare built-in names, not packages', () => {
    for (const s of ['node:fs', 'fs', 'fs/promises', 'worker_threads', 'node:worker_threads', 'path', 'os', 'crypto']) {
      expect(isNodeBuiltin(s), s).toBe(true);
    }
    for (const s of ['ndarray', 'ndarray-ops', 'gpu.js', './fs.js', '../os', 'fsevents-like']) {
      expect(isNodeBuiltin(s), s).toBe(false);
    }
  });

  it('fails the build and names the importing file when a module imports node:fs', async () => {
    const dir = join(tmp.dir, 'src-like');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'leaf.ts'), "import { readFileSync } from 'node:fs';\nexport const read = readFileSync;\n");
    writeFileSync(join(dir, 'mid.ts'), "export { read } from './leaf.js';\n");
    const err = await bundle({ entry: join(dir, 'mid.ts'), outfile: join(tmp.dir, 'out', 'x.js') }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BrowserBuildError);
    const e = err as BrowserBuildError;
    expect(e.nodeImports.map((n) => n.specifier)).toEqual(['node:fs']);
    expect(e.nodeImports[0]!.importer).toMatch(/leaf\.ts$/);
    expect(e.message).toContain('node:fs');
    expect(e.message).toMatch(/leaf\.ts/);
  });

  it('also catches bare built-in names (worker_threads)', async () => {
    const err = await bundle({
      contents: "import { Worker } from 'worker_threads';\nexport const W = Worker;\n",
      outfile: join(tmp.dir, 'out', 'y.js'),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BrowserBuildError);
    expect((err as BrowserBuildError).nodeImports.map((n) => n.specifier)).toEqual(['worker_threads']);
  });
});

describe('library bundle (dist/browser/lora-mix.js)', () => {
  const tmp = tempDir('lib');
  let built: BrowserBuild;
  let session: BrowserSession;

  beforeAll(async () => {
    built = await buildBrowser({ outDir: tmp.dir });
    // The example of docs/browser.md, as a module next to the bundle.
    const doc = readFileSync(join(REPO_ROOT, 'docs/browser.md'), 'utf8');
    const example = [...doc.matchAll(/```js\n([\s\S]*?)```/g)]
      .map((m) => m[1]!)
      .find((b) => b.includes('export async function mergeFiles'));
    if (!example) throw new Error('docs/browser.md has no ```js block defining mergeFiles');
    writeFileSync(
      join(tmp.dir, 'docs-example.js'),
      example.replace("from './lora-mix.js'", "from './browser/lora-mix.js'"),
    );
    // The page imports the built bundle and the example as modules and exposes them as window.lm / window.docExample.
    await writeHtml(
      join(tmp.dir, 'index.html'),
      '<p>lora-mix library test</p><script type="module">import * as lm from "./browser/lora-mix.js"; ' +
        'import * as ex from "./docs-example.js"; window.docExample = ex; window.lm = lm;</script>',
    );
    session = await openSession({ root: tmp.dir, mounts: { '/fixtures/': join(REPO_ROOT, 'fixtures') } });
    await session.page.waitForFunction(() => 'lm' in window);
  });
  afterAll(async () => {
    await session?.close();
    tmp.remove();
  });

  it('builds as ESM with no Node built-ins and exports the core API', () => {
    const text = readFileSync(built.libFile, 'utf8');
    expect(text).not.toMatch(/\bfrom\s*["']node:/);
    expect(text).not.toMatch(/\brequire\(\s*["'](node:)?(fs|path|os|worker_threads|crypto|url|module)["']\)/);
    const inputs = built.lib.inputs.filter((p) => p.startsWith('src/'));
    expect(inputs.some((p) => p.startsWith('src/node/'))).toBe(false);
    expect(inputs.some((p) => p.startsWith('src/cli/'))).toBe(false);
    expect(inputs.some((p) => /-node\.ts$/.test(p))).toBe(false);
    for (const name of [
      'parseSafetensors',
      'serializeSafetensors',
      'bufferSource',
      'blobSource',
      'memorySink',
      'decodeLora',
      'describeLora',
      'serializeLora',
      'getLayout',
      'mergeLoras',
      'LCMScheduler',
      'LoraMixError',
      'VERSION',
      'createGpuKernel',
      'createWasmKernel',
      'createJsKernel',
      'fuseLoras',
      'verifyFusion',
    ]) {
      expect(built.lib.exports, name).toContain(name);
    }
  });

  it('uses no Node globals in the core modules it bundles (Buffer, process, require, __dirname)', () => {
    const offenders: string[] = [];
    for (const file of built.lib.inputs.filter((p) => p.startsWith('src/'))) {
      const code = readFileSync(join(REPO_ROOT, file), 'utf8')
        .replace(/\/\*[\s\S]*?\*\//g, '')
        .replace(/(^|[^:])\/\/.*$/gm, '$1');
      const m = code.match(/\b(Buffer|process|require|__dirname|__filename|setImmediate)\s*[.(]/);
      if (m) offenders.push(`${file}: ${m[0]}`);
    }
    expect(offenders).toEqual([]);
  });

  it('parses, describes and re-serializes a fixture LoRA inside Chromium (ArrayBuffer and Blob sources)', async () => {
    const result = await session.page.evaluate(async () => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const lm = (window as any).lm;
      const bytes = await (await fetch('/fixtures/sd15/lcm-lora.kohya.safetensors')).arrayBuffer();
      const fromBuffer = await lm.parseSafetensors(lm.bufferSource(bytes, 'lcm.safetensors'));
      const fromBlob = await lm.parseSafetensors(lm.blobSource(new Blob([bytes]), 'lcm-blob.safetensors'));
      const lora = await lm.decodeLora(fromBlob);
      const info = lm.describeLora(lora);
      const again = lm.serializeLora(lora, { format: 'peft' });
      const peft = await lm.decodeLora(await lm.parseSafetensors(lm.bufferSource(again, 'peft.safetensors')));
      let bad: { name: string; code: string; message: string } | null = null;
      try {
        await lm.parseSafetensors(lm.bufferSource(new Uint8Array([1, 2, 3]), 'short.safetensors'));
      } catch (e) {
        const err = e as { name: string; code: string; message: string };
        bad = { name: err.name, code: err.code, message: err.message };
      }
      return {
        tensorsBuffer: fromBuffer.tensors.length,
        tensorsBlob: fromBlob.tensors.length,
        arch: lora.arch,
        format: lora.format,
        modules: lora.modules.size,
        peftModules: peft.modules.size,
        peftFormat: peft.format,
        info: JSON.parse(JSON.stringify(info)) as Record<string, unknown>,
        bad,
      };
    });
    expect(result.tensorsBuffer).toBeGreaterThan(0);
    expect(result.tensorsBlob).toBe(result.tensorsBuffer);
    expect(result.arch).toBe('sd15');
    expect(result.format).toBe('kohya');
    expect(result.modules).toBeGreaterThan(100);
    expect(result.peftModules).toBe(result.modules);
    expect(result.peftFormat).toBe('peft');
    expect(result.bad?.code).toBe('SAFETENSORS_TRUNCATED');
    expect(result.bad?.message).toContain('short.safetensors');
    expect(session.errors).toEqual([]);
  });

  it('runs the mergeFiles example of docs/browser.md on the sd15 fixtures', async () => {
    const result = await session.page.evaluate(async () => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const w = window as any;
      const get = async (name: string) => new File([await (await fetch(`/fixtures/sd15/${name}`)).arrayBuffer()], name);
      const files = [await get('lcm-lora.kohya.safetensors'), await get('style-lora.peft.safetensors')];
      const merged = await w.docExample.mergeFiles(files, [1.0, 0.8]);
      const back = await w.lm.decodeLora(
        await w.lm.parseSafetensors(w.lm.blobSource(merged.blob, 'merged.safetensors')),
      );
      const [a, b] = files as [File, File];
      const one = await w.lm.decodeLora(await w.lm.parseSafetensors(w.lm.blobSource(a, a.name)));
      const two = await w.lm.decodeLora(await w.lm.parseSafetensors(w.lm.blobSource(b, b.name)));
      const union = new Set([...one.modules.keys(), ...two.modules.keys()]);
      return {
        inputs: merged.inputs,
        modules: merged.modules,
        exact: merged.exact,
        decoded: back.modules.size,
        union: union.size,
        format: back.format,
      };
    });
    expect(result.inputs[0]).toMatch(/^kohya sd15 \d+ modules$/);
    expect(result.inputs[1]).toMatch(/^peft sd15 \d+ modules$/);
    expect(result.exact).toBe(true);
    expect(result.modules).toBe(result.union);
    expect(result.decoded).toBe(result.union);
    expect(result.format).toBe('kohya');
  });

  it('fuses the LCM + style LoRAs into the tiny base checkpoint in memory, with the numbers Node gets', async () => {
    const result = await session.page.evaluate(async () => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const lm = (window as any).lm;
      const get = async (name: string) => (await fetch(`/fixtures/sd15/${name}`)).arrayBuffer();
      const sink = lm.memorySink('fused.safetensors');
      const report = await lm.fuseLoras(
        lm.bufferSource(await get('base.safetensors'), 'base.safetensors'),
        [
          lm.blobSource(new Blob([await get('lcm-lora.kohya.safetensors')]), 'lcm'),
          lm.bufferSource(await get('style-lora.kohya.safetensors'), 'style'),
        ],
        [1, 0.8],
        { out: sink, dtype: 'F32' },
      );
      const bytes = sink.bytes() as Uint8Array;
      let bin = '';
      for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return { base64: btoa(bin), modules: report.modulesFused, kernel: report.kernel, seconds: report.seconds };
    });
    expect(result.modules).toBe(350);
    expect(result.kernel).toMatch(/^wasm-simd/);
    const out = join(tmp.dir, 'browser-fused.safetensors');
    writeFileSync(out, Buffer.from(result.base64, 'base64'));
    const { verifyFusion } = await import('../../src/verify/fusion.js');
    const fx = (n: string) => join(REPO_ROOT, 'fixtures', 'sd15', n);
    const v = await verifyFusion(
      out,
      fx('base.safetensors'),
      [fx('lcm-lora.kohya.safetensors'), fx('style-lora.kohya.safetensors')],
      [1, 0.8],
    );
    expect(v.checked).toBe(350);
    expect(v.ok).toBe(true);
    expect(v.inconclusive).toBe(0);
    expect(session.errors).toEqual([]);
  });
});
