/**
 * UNet-only base checkpoints in the spellings tools write: 'model.diffusion_model.' (full checkpoints),
 * 'diffusion_model.' and bare LDM keys ('input_blocks.…', as ComfyUI's UNet folder holds them). Each is detected,
 * fused and verified like the standard spelling, and the output keeps the file's own key names.
 */
import { FX, tensorValues, useTempDir } from './fuse-helpers.js';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { diffusersComponentTensors, generateBaseCheckpoint, singleFileTensors } from '../src/fixtures/generate.js';
import { fuseLoras } from '../src/fuse/index.js';
import { detectCheckpoint } from '../src/layout/index.js';
import { runCli } from './cli-helpers.js';

const LORA = path.join(FX, 'sd15', 'lcm-lora.kohya.safetensors');
const STANDARD = 'model.diffusion_model.';

const temp = useTempDir('lora-mix-unet-prefix-');

describe.each([
  ['diffusion_model.', 'diffusion_model.'],
  ['bare LDM keys', ''],
])('a UNet-only base with %s', (_label, prefix) => {
  it('is detected as a single file with that UNet prefix', () => {
    const tensors = singleFileTensors('sd15', 'tiny', { components: ['unet'], unetPrefix: prefix });
    expect(tensors.some((t) => t.name === `${prefix}input_blocks.1.1.proj_in.weight`)).toBe(true);
    const d = detectCheckpoint(tensors, { source: 'unet-only.safetensors' });
    expect(d).toMatchObject({ arch: 'sd15', size: 'tiny', naming: 'single-file', unetPrefix: prefix });
    expect(d.components).toEqual(['unet']);
    expect(d.extraKeys).toEqual([]);
  });

  it('fuses to exactly the standard spelling’s values under its own key names', async () => {
    const std = path.join(temp.dir, `std-${prefix || 'bare'}.safetensors`);
    const odd = path.join(temp.dir, `odd-${prefix || 'bare'}.safetensors`);
    await generateBaseCheckpoint(std, 'sd15', 'tiny', { components: ['unet'], dtype: 'F32' });
    await generateBaseCheckpoint(odd, 'sd15', 'tiny', { components: ['unet'], dtype: 'F32', unetPrefix: prefix });
    const stdOut = path.join(temp.dir, `std-out-${prefix || 'bare'}.safetensors`);
    const oddOut = path.join(temp.dir, `odd-out-${prefix || 'bare'}.safetensors`);
    const a = await fuseLoras(std, [LORA], [0.7], { out: stdOut });
    const b = await fuseLoras(odd, [LORA], [0.7], { out: oddOut });
    expect(b.modulesFused).toBe(a.modulesFused);
    expect(b.modulesFused).toBeGreaterThan(0);
    const want = await tensorValues(stdOut);
    const got = await tensorValues(oddOut);
    expect(got.size).toBe(want.size);
    for (const [k, v] of want) {
      const name = prefix + k.slice(STANDARD.length);
      expect(got.get(name), name).toEqual(v);
    }
  });

  it('inspect names the architecture and the prefix', async () => {
    const p = path.join(temp.dir, `inspect-${prefix || 'bare'}.safetensors`);
    await generateBaseCheckpoint(p, 'sd15', 'tiny', { components: ['unet'], unetPrefix: prefix });
    const { code, out } = await runCli(['inspect', p], temp.dir);
    expect(code).toBe(0);
    expect(out).toContain('base checkpoint');
    expect(out).toMatch(/SD1\.5/);
    expect(out).toContain(prefix === '' ? 'without a prefix' : `under '${prefix}'`);
  });
});

describe('what is not a UNet-only base', () => {
  it('a diffusers text-encoder file is named as one, with the fix', () => {
    const te = diffusersComponentTensors('sd15', 'tiny', 'text_encoder');
    expect(() => detectCheckpoint(te, { source: 'text_encoder/model.safetensors' })).toThrow(
      /diffusers text-encoder file .*pass the whole diffusers folder/,
    );
  });

  it('a ComfyUI-saved LoRA (diffusion_model.… .lora_up.weight) is not a checkpoint', () => {
    expect(() =>
      detectCheckpoint(
        [
          { name: 'diffusion_model.input_blocks.1.1.proj_in.lora_up.weight', shape: [8, 4] },
          { name: 'diffusion_model.input_blocks.1.1.proj_in.lora_down.weight', shape: [4, 8] },
        ],
        { source: 'comfy-lora.safetensors' },
      ),
    ).toThrow(/FORMAT_NOT_A_CHECKPOINT|not a base checkpoint: it holds LoRA factors/);
  });
});
