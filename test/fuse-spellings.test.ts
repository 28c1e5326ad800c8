/**
 * Fusing the spellings of issue 12: a ComfyUI-saved LoRA fuses to exactly the kohya spelling's output; PEFT bias
 * deltas land on the modules' bias tensors (single file and diffusers folder, OpenCLIP in_proj_bias rows included);
 * pivotal-tuning embeddings are skipped and reported.
 */
import { FX, tensorValues, useTempDir } from './fuse-helpers.js';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { generateLora } from '../src/fixtures/generate.js';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/fuse/index.js';
import { getLayout } from '../src/layout/index.js';
import { contiguousValues } from '../src/lora/delta.js';
import { requirePlain } from '../src/lora/terms/index.js';

const temp = useTempDir('lora-mix-fuse-spell-');

const spec = { rank: 4, alpha: 2, targets: 'style' as const, dtype: 'F32' as const, seed: 3 };

describe('fuse reads every spelling', () => {
  it('a ComfyUI-saved LoRA fuses to exactly the kohya spelling’s output (SDXL, both text encoders)', async () => {
    const comfy = path.join(temp.dir, 'comfy.safetensors');
    const kohya = path.join(temp.dir, 'kohya.safetensors');
    await generateLora(comfy, 'sdxl', 'tiny', { ...spec, format: 'comfyui' });
    await generateLora(kohya, 'sdxl', 'tiny', { ...spec, format: 'kohya' });
    const base = path.join(FX, 'sdxl', 'base.safetensors');
    const a = await fuseLoras(base, [comfy], [0.8], {
      out: path.join(temp.dir, 'out-comfy.safetensors'),
      dtype: 'F32',
    });
    const b = await fuseLoras(base, [kohya], [0.8], {
      out: path.join(temp.dir, 'out-kohya.safetensors'),
      dtype: 'F32',
    });
    expect(a.modulesFused).toBe(b.modulesFused);
    expect(a.byGroup['text_encoder_2/text_encoder']).toBeGreaterThan(0);
    expect(await tensorValues(path.join(temp.dir, 'out-comfy.safetensors'))).toEqual(
      await tensorValues(path.join(temp.dir, 'out-kohya.safetensors')),
    );
  });

  it.each([
    ['sd15 single file', 'sd15', 'base.safetensors'],
    ['sdxl single file (OpenCLIP in_proj_bias rows)', 'sdxl', 'base.safetensors'],
    ['sd15 diffusers folder', 'sd15', 'diffusers'],
  ] as const)('PEFT bias deltas land on the bias tensors: %s', async (_label, arch, baseRel) => {
    const lora = path.join(temp.dir, `bias-${arch}.safetensors`);
    await generateLora(lora, arch, 'tiny', { ...spec, format: 'peft', bias: true });
    const base = path.join(FX, arch, baseRel);
    const out = path.join(temp.dir, `out-bias-${arch}-${baseRel}${baseRel.endsWith('.safetensors') ? '' : '-dir'}`);
    const w = 0.75;
    await fuseLoras(base, [lora], [w], { out, dtype: 'F32' });
    const decoded = requirePlain(await loadLora(lora));
    const layout = getLayout(arch, 'tiny');
    const single = baseRel.endsWith('.safetensors');
    const before = single
      ? await tensorValues(base)
      : await tensorValues(path.join(base, 'text_encoder', 'model.safetensors'));
    const after = single
      ? await tensorValues(out)
      : await tensorValues(path.join(out, 'text_encoder', 'model.safetensors'));
    let checked = 0;
    for (const [p, m] of decoded.modules) {
      if (!m.bias) continue;
      const entry = layout.byPath.get(p)!;
      if (!single && entry.component !== 'text_encoder') continue;
      const s = layout.stateDict.find(
        (x) => x.component === entry.component && x.diffusersKey === `${entry.localPath}.bias`,
      )!;
      const key = single ? s.singleFileKey : s.diffusersKey;
      const [r0] = single && s.singleFileRows ? s.singleFileRows : [0];
      const b = contiguousValues(m.bias);
      const scale = (w * m.alpha) / m.down.shape[0]!;
      for (let i = 0; i < b.length; i++) {
        expect(after.get(key)![r0 + i]).toBeCloseTo(before.get(key)![r0 + i]! + scale * b[i]!, 5);
      }
      checked++;
    }
    expect(checked).toBeGreaterThan(0);
  });

  it('pivotal-tuning embeddings are skipped and reported, the modules fused', async () => {
    const lora = path.join(temp.dir, 'emb.safetensors');
    await generateLora(lora, 'sd15', 'tiny', { ...spec, format: 'kohya', embedding: 'sks' });
    const r = await fuseLoras(path.join(FX, 'sd15', 'base.safetensors'), [lora], [1], {
      out: path.join(temp.dir, 'out-emb.safetensors'),
    });
    expect(r.modulesFused).toBeGreaterThan(0);
    expect(r.embeddingsSkipped).toEqual([`${lora}: bundle_emb.sks.string_to_param.*`]);
  });
});
