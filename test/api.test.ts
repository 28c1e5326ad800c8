/**
 * The public entries: 'lora-mix' resolves to the Node entry (src/node.ts → dist/node.js) under the "node" export
 * condition and to the isomorphic entry (src/index.ts → dist/index.js) for browsers and bundlers. The Node entry
 * carries the whole isomorphic entry plus the Node adapters, the version agrees with package.json, and the main
 * calls work when imported from there alone.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import * as api from '../src/node.js';
import * as browser from '../src/index.js';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  version: string;
  main: string;
  types: string;
  browser: string;
  exports: Record<string, { node: { types: string; default: string }; types: string; default: string }>;
};

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('public entry', () => {
  it('VERSION equals package.json version', () => {
    expect(api.VERSION).toBe(pkg.version);
    expect(api.VERSION).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('package.json points "." at src/node.ts under the node condition and at src/index.ts otherwise', () => {
    const dot = pkg.exports['.']!;
    expect(Object.keys(dot)[0]).toBe('node'); // conditions are matched in order: 'node' must come first
    expect(dot.node).toEqual({ types: './dist/node.d.ts', default: './dist/node.js' });
    expect(dot.types).toBe('./dist/index.d.ts');
    expect(dot.default).toBe('./dist/index.js');
    expect(pkg.main).toBe('./dist/node.js');
    expect(pkg.types).toBe('./dist/node.d.ts');
    expect(pkg.browser).toBe('./dist/index.js');
  });

  it('re-exports every value of the browser entry, unchanged', () => {
    const missing = Object.keys(browser).filter((k) => !(k in api));
    expect(missing).toEqual([]);
    for (const k of Object.keys(browser)) {
      expect((api as Record<string, unknown>)[k], k).toBe((browser as Record<string, unknown>)[k]);
    }
  });

  it('exposes the main functions of every area', () => {
    const fns = [
      // safetensors + I/O
      'parseSafetensors',
      'writeSafetensors',
      'serializeSafetensors',
      'openSafetensors',
      'fileSource',
      'fileSink',
      'bufferSource',
      'blobSource',
      'memorySink',
      'f16ToF32',
      'f32ToF16',
      // layouts
      'getLayout',
      'blockIds',
      'detectCheckpoint',
      'detectLoraArch',
      // formats
      'loadLora',
      'inspectLora',
      'decodeLora',
      'saveLora',
      'serializeLora',
      'describeLora',
      'formatLoraSummary',
      'detectFileKind',
      // arithmetic
      'mergeLoras',
      'mergeLorasParallel',
      'resizeLora',
      'scaleLora',
      'negateLora',
      'deltaOf',
      'parseBlockWeights',
      // fusion + kernels
      'fuseLoras',
      'verifyFusion',
      'formatFuseReport',
      'formatVerifyReport',
      'createCpuKernel',
      'createWasmKernel',
      'createJsKernel',
      'createGpuKernel',
      // sampler
      'sample',
      'verifyGaussian',
      'classifierFreeGuidance',
      // generators
      'generateLora',
      'generateBaseCheckpoint',
    ];
    const notFunctions = fns.filter((f) => typeof (api as Record<string, unknown>)[f] !== 'function');
    expect(notFunctions).toEqual([]);
    expect(typeof api.LCMScheduler).toBe('function');
    expect(new api.LCMScheduler().setTimesteps(4)).toEqual([999, 759, 499, 259]);
    expect(typeof api.FUSE_METADATA_KEY).toBe('string');
  });

  it('error classes are exported and typed', () => {
    const e = new api.UsageError('bad');
    expect(e).toBeInstanceOf(api.LoraMixError);
    expect(e.code).toBe('USAGE');
    for (const c of [
      'SafetensorsError',
      'FormatError',
      'LoraError',
      'ArchError',
      'IoError',
      'FuseError',
      'SamplerError',
    ]) {
      expect(typeof (api as Record<string, unknown>)[c]).toBe('function');
    }
  });

  it('merge, fuse and verify work through the public entry alone', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-mix-api-'));
    dirs.push(dir);
    const lcm = await api.loadLora('fixtures/sd15/lcm-lora.kohya.safetensors');
    const style = await api.loadLora('fixtures/sd15/style-lora.kohya.safetensors');
    const { lora, report } = api.mergeLoras([lcm, style], [1.0, 0.8]);
    expect(report.exact).toBe(true);
    expect(lora.arch).toBe('sd15');

    const merged = join(dir, 'merged.safetensors');
    await api.saveLora(lora, merged, { format: 'kohya' });
    const out = join(dir, 'fused.safetensors');
    const fused = await api.fuseLoras('fixtures/sd15/base.safetensors', [merged], [1], { out, threads: 1 });
    expect(fused.arch).toBe('sd15');
    expect(fused.modulesFused).toBeGreaterThan(0);
    const check = await api.verifyFusion(
      out,
      'fixtures/sd15/base.safetensors',
      ['fixtures/sd15/lcm-lora.kohya.safetensors', 'fixtures/sd15/style-lora.kohya.safetensors'],
      [1.0, 0.8],
    );
    expect(check.failed).toBe(0);
    expect(check.ok).toBe(true);
    expect(api.formatVerifyReport(check)).toContain('OK');
  });

  it('typed errors come through the public entry', async () => {
    await expect(api.loadLora('fixtures/bad/oft.safetensors')).rejects.toMatchObject({
      code: 'FORMAT_UNSUPPORTED_ADAPTER',
    });
    await expect(api.openSafetensors('fixtures/does-not-exist.safetensors')).rejects.toBeInstanceOf(api.IoError);
  });

  it("the README's library example runs through the public entry and prints what its comments say", async () => {
    const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Library'));
    const block = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
    expect(block).toBeDefined();
    expect(block).toContain("from 'lora-mix'");
    const dir = await mkdtemp(join(tmpdir(), 'lora-mix-readme-'));
    dirs.push(dir);
    const file = join(dir, 'example.mts');
    // Temp paths first: the repository itself may live under /tmp (CI clones do).
    await writeFile(
      file,
      block!.replaceAll("'/tmp/", `'${dir}/`).replaceAll("from 'lora-mix'", `from '${join(ROOT, 'src/node.js')}'`),
    );
    const r = spawnSync(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe('350 true');
    expect(r.stdout).toMatch(/^fused 350 module\(s\) into fixtures\/sd15\/base\.safetensors/m);
    expect(lines.at(-1)).toBe('true');
  });

  describe('docs/api.md examples run through the public entry', () => {
    const doc = readFileSync(join(ROOT, 'docs/api.md'), 'utf8');
    const blocks = [...doc.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
    const outputs: string[] = [];

    it('has examples', () => {
      expect(blocks.length).toBeGreaterThanOrEqual(8);
    });

    it.concurrent.each(blocks.map((b, i) => [i, b] as const))(
      'example %i',
      async (i, block) => {
        const dir = await mkdtemp(join(tmpdir(), 'lora-mix-apidoc-'));
        dirs.push(dir);
        const file = join(dir, `example-${i}.mts`);
        await writeFile(
          file,
          block.replaceAll("'/tmp/", `'${dir}/`).replaceAll("from 'lora-mix'", `from '${join(ROOT, 'src/node.js')}'`),
        );
        const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
          const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd: ROOT });
          let stdout = '',
            stderr = '';
          child.stdout.on('data', (d: Buffer) => {
            stdout += d.toString();
          });
          child.stderr.on('data', (d: Buffer) => {
            stderr += d.toString();
          });
          child.on('close', (status) => resolve({ status, stdout, stderr }));
        });
        expect(r.status, r.stderr).toBe(0);
        expect(r.stderr).toBe('');
        outputs[i] = r.stdout;
      },
      240_000,
    ); // all examples start at once, each a tsx process: on a busy 2-core machine that takes minutes

    it('print what their comments say', () => {
      const all = outputs.join('\n');
      for (const s of [
        "182 [ 'a', 'b' ]",
        'Float32Array(3) [ 0.5, -2, 65504 ]',
        'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k [ 640, 2048 ] IN04 true',
        '1063 26',
        "sd15 tiny single-file [ 'unet', 'text_encoder' ]",
        'kohya sgm sdxl tiny 986',
        '423 365',
        '350 true { min: 4, max: 12, mean: 9.37',
        'false 0.9968',
        '[ 32, 32 ] 264',
        '350 { total: 1006, fused: 350, copied: 656, converted: 0 } 0 wasm-simd',
        'true 350 0',
        '[ 999, 759, 499, 259 ] 256',
        'consistency 0.7886',
        'tweedie 0.4309',
        'true FORMAT_UNSUPPORTED_ADAPTER',
        'true F16 1052 true',
      ])
        expect(all).toContain(s);
    });
  });
});
