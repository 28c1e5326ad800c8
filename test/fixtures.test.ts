import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memorySink, bufferSource } from '../src/core/memory.js';
import { openSafetensors } from '../src/node/files.js';
import { detectCheckpoint, detectDiffusersFolder, getLayout } from '../src/layout/index.js';
import { parseSafetensors } from '../src/safetensors/index.js';
import { decodeLora, loadLora } from '../src/formats/index.js';
import {
  generateBaseCheckpoint,
  generateLora,
  singleFileTensors,
  syntheticLora,
  vaeTensorShapes,
} from '../src/fixtures/generate.js';
import { writeFixtures } from '../src/node/fixtures.js';
import { fillNormalish, hashString, mulberry32 } from '../src/fixtures/random.js';
import { FIXTURES } from './formats-helpers.js';
import { requirePlain } from '../src/lora/terms/index.js';

async function walk(dir: string, base = dir): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p, base)));
    else out.push(path.relative(base, p).split(path.sep).join('/'));
  }
  return out.sort();
}

const numel = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

describe('committed fixtures', () => {
  let tmp = '';
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), 'lora-mix-fixtures-'));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('regenerating gives the committed files, byte for byte, and nothing else', async () => {
    const written = await writeFixtures(tmp);
    const produced = await walk(tmp);
    expect(produced).toEqual(written.map((w) => w.file).sort());
    expect(await walk(FIXTURES)).toEqual(produced);
    for (const f of produced) {
      const a = await readFile(path.join(tmp, f));
      const b = await readFile(path.join(FIXTURES, f));
      expect(a.equals(b), f).toBe(true);
    }
    const total = (
      await Promise.all(produced.map(async (f) => (await readFile(path.join(FIXTURES, f))).length))
    ).reduce((x, y) => x + y, 0);
    expect(total).toBeLessThan(20_000_000);
  });

  it('README lists every file', async () => {
    const readme = await readFile(path.join(FIXTURES, 'README.md'), 'utf8');
    for (const f of await walk(FIXTURES)) if (f !== 'README.md') expect(readme, f).toContain(`| ${f} |`);
  });

  it('base checkpoints are detected with the right arch, size, naming and parts', async () => {
    for (const arch of ['sd15', 'sdxl', 'ssd1b'] as const) {
      const file = await openSafetensors(path.join(FIXTURES, arch, 'base.safetensors'));
      const d = detectCheckpoint(file.tensors, { source: file.name });
      await file.close();
      expect([d.arch, d.size, d.naming]).toEqual([arch, 'tiny', 'single-file']);
      expect(d.components).toEqual(
        arch === 'sd15' ? ['unet', 'text_encoder'] : ['unet', 'text_encoder', 'text_encoder_2'],
      );
      expect(d.hasVae).toBe(true);
    }
    const unet = await openSafetensors(path.join(FIXTURES, 'sd15', 'unet.safetensors'));
    const du = detectCheckpoint(unet.tensors);
    await unet.close();
    expect([du.arch, du.components, du.hasVae]).toEqual(['sd15', ['unet'], false]);
    for (const arch of ['sd15', 'sdxl'] as const) {
      const dir = path.join(FIXTURES, arch, 'diffusers');
      const files: Record<string, { name: string; shape: readonly number[] }[]> = {};
      for (const c of arch === 'sd15' ? ['unet', 'text_encoder'] : ['unet', 'text_encoder', 'text_encoder_2']) {
        const name = c === 'unet' ? 'unet/diffusion_pytorch_model.safetensors' : `${c}/model.safetensors`;
        const f = await openSafetensors(path.join(dir, name));
        files[c] = [...f.tensors];
        await f.close();
      }
      const d = detectDiffusersFolder(files);
      expect([d.arch, d.size, d.naming]).toEqual([arch, 'tiny', 'diffusers-folder']);
      const index = JSON.parse(await readFile(path.join(dir, 'model_index.json'), 'utf8'));
      expect(index.unet).toEqual(['diffusers', 'UNet2DConditionModel']);
    }
  });

  it('a single file and the diffusers folder hold the same weights (fused q/k/v rows, transposed projection)', async () => {
    for (const arch of ['sd15', 'sdxl'] as const) {
      const single = await openSafetensors(path.join(FIXTURES, arch, 'base.safetensors'));
      const layout = getLayout(arch, 'tiny');
      const opened = new Map<string, Awaited<ReturnType<typeof openSafetensors>>>();
      let checked = 0;
      for (const e of layout.stateDict) {
        const name =
          e.component === 'unet' ? 'unet/diffusion_pytorch_model.safetensors' : `${e.component}/model.safetensors`;
        let f = opened.get(name);
        if (!f) opened.set(name, (f = await openSafetensors(path.join(FIXTURES, arch, 'diffusers', name))));
        const d = await f.readF32(e.diffusersKey);
        let s = await single.readF32(e.singleFileKey);
        const cols = numel(e.shape.slice(1));
        if (e.singleFileRows) s = s.subarray(e.singleFileRows[0] * cols, e.singleFileRows[1] * cols);
        if (e.transposed) {
          const [r, c] = e.shape as [number, number];
          const t = new Float32Array(r * c);
          for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) t[i * c + j] = s[j * r + i]!;
          s = t;
        }
        expect(Array.from(s), e.diffusersKey).toEqual(Array.from(d));
        checked++;
      }
      expect(checked).toBe(layout.stateDict.length);
      expect(single.has('first_stage_model.decoder.conv_out.weight')).toBe(true);
      await single.close();
      for (const f of opened.values()) await f.close();
    }
  });

  it('fixture values have realistic magnitudes', async () => {
    const lora = requirePlain(await loadLora(path.join(FIXTURES, 'sd15', 'lcm-lora.kohya.safetensors')));
    let dn = 0,
      dsum = 0,
      un = 0,
      usum = 0;
    for (const m of lora.modules.values()) {
      for (const x of m.down.data) {
        dsum += x * x;
        dn++;
      }
      for (const x of m.up.data) {
        usum += x * x;
        un++;
      }
    }
    expect(Math.sqrt(dsum / dn)).toBeGreaterThan(0.005);
    expect(Math.sqrt(dsum / dn)).toBeLessThan(0.02);
    expect(Math.sqrt(usum / un)).toBeGreaterThan(0.001);
    expect(Math.sqrt(usum / un)).toBeLessThan(0.01);
    const base = await openSafetensors(path.join(FIXTURES, 'sd15', 'base.safetensors'));
    const w = await base.readF32('model.diffusion_model.input_blocks.1.1.proj_in.weight');
    const norm = await base.readF32('model.diffusion_model.input_blocks.1.1.norm.weight');
    await base.close();
    const rms = Math.sqrt(w.reduce((a, x) => a + x * x, 0) / w.length);
    expect(rms).toBeGreaterThan(0.01);
    expect(rms).toBeLessThan(0.04);
    expect(norm.every((x) => Math.abs(x - 1) < 0.1)).toBe(true);
  });
});

describe('the generator', () => {
  it('is deterministic and seed-dependent', () => {
    expect(hashString('')).toBe(0x811c9dc5);
    expect(hashString('a')).toBe(0xe40c292c);
    const r = mulberry32(1);
    const first = [r(), r()];
    const r2 = mulberry32(1);
    expect([r2(), r2()]).toEqual(first);
    const a = fillNormalish(new Float32Array(10_000), 5, 1);
    const mean = a.reduce((x, y) => x + y, 0) / a.length;
    const std = Math.sqrt(a.reduce((x, y) => x + (y - mean) ** 2, 0) / a.length);
    expect(Math.abs(mean)).toBeLessThan(0.05);
    expect(Math.abs(std - 1)).toBeLessThan(0.05);
    expect(Array.from(fillNormalish(new Float32Array(4), 6, 1))).not.toEqual(Array.from(a.subarray(0, 4)));
  });

  it('full size: LCM-LoRA-shaped files have the real module counts and parameters (shapes only, no data)', () => {
    const expected = { sd15: [834, 67_252_224], sdxl: [2364, 196_751_360], ssd1b: [1269, 104_902_656] } as const;
    for (const arch of ['sd15', 'sdxl', 'ssd1b'] as const) {
      const l = syntheticLora(arch, 'full', { rank: 64, alpha: 8, targets: 'lcm', format: 'kohya' });
      expect(l.tensors.length).toBe(expected[arch][0]);
      expect(l.tensors.filter((t) => !t.name.endsWith('.alpha')).reduce((n, t) => n + numel(t.shape), 0)).toBe(
        expected[arch][1],
      );
    }
  });

  it('full size: base checkpoints have the real UNet and VAE parameter counts (shapes only)', () => {
    const unet = { sd15: 859_520_964, sdxl: 2_567_463_684, ssd1b: 1_331_334_404 } as const;
    for (const arch of ['sd15', 'sdxl', 'ssd1b'] as const) {
      const t = singleFileTensors(arch, 'full');
      expect(t.filter((x) => x.name.startsWith('model.diffusion_model.')).reduce((n, x) => n + numel(x.shape), 0)).toBe(
        unet[arch],
      );
      expect(t.filter((x) => x.name.startsWith('first_stage_model.')).reduce((n, x) => n + numel(x.shape), 0)).toBe(
        83_653_863,
      );
      expect(t.every((x) => typeof x.data === 'function')).toBe(true);
    }
    expect(vaeTensorShapes('full')).toHaveLength(248);
  });

  it('streams: tensor data is produced only when the writer reaches it', async () => {
    const spec = { rank: 2, alpha: 2, targets: 'style' as const, format: 'kohya' as const, seed: 3 };
    const lora = syntheticLora('sd15', 'tiny', spec);
    let produced = 0;
    const tensors = lora.tensors.map((t) => ({
      ...t,
      data: () => {
        produced++;
        return (t.data as () => Uint8Array)();
      },
    }));
    expect(produced).toBe(0);
    const sink = memorySink('x.safetensors');
    const { writeSafetensors } = await import('../src/safetensors/index.js');
    let maxAhead = 0;
    await writeSafetensors(sink, tensors, {
      metadata: lora.metadata,
      onTensor: (_i, index) => {
        maxAhead = Math.max(maxAhead, produced - (index + 1));
      },
    });
    expect(produced).toBe(tensors.length);
    expect(maxAhead).toBe(0);
    const viaGenerate = memorySink('y.safetensors');
    await generateLora(viaGenerate, 'sd15', 'tiny', spec);
    expect(Buffer.from(viaGenerate.bytes()).equals(Buffer.from(sink.bytes()))).toBe(true);
    const back = requirePlain(await decodeLora(await parseSafetensors(bufferSource(sink.bytes(), 'x.safetensors'))));
    expect(back.modules.size).toBe(264);
    const ckpt = memorySink('c.safetensors');
    await generateBaseCheckpoint(ckpt, 'sd15', 'tiny', { components: ['unet'], dtype: 'BF16' });
    const parsed = await parseSafetensors(bufferSource(ckpt.bytes()));
    expect(parsed.tensors.every((t) => t.dtype === 'BF16' && t.name.startsWith('model.diffusion_model.'))).toBe(true);
  });
});
