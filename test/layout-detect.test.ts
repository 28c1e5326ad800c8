import { describe, expect, it } from 'vitest';
import { ArchError, FormatError, LoraError } from '../src/core/errors.js';
import {
  archConfig,
  buildLayout,
  CANDIDATES,
  describeUnmatched,
  detectCheckpoint,
  detectDiffusersFolder,
  detectLoraArch,
  getLayout,
  loraFactorMismatch,
  singleFileTensors,
  diffusersTensors,
  type Component,
  type Layout,
  type LoraFactorShapes,
  type TensorInfo,
} from '../src/layout/index.js';

/** The tensors of a single-file checkpoint as the layout describes them (fused q/k/v merged, projection transposed). */
function singleFile(
  l: Layout,
  components: readonly Component[] = ['unet', 'text_encoder', 'text_encoder_2'],
): TensorInfo[] {
  return singleFileTensors(l, components).map((t) => ({ name: t.key, shape: t.shape }));
}

function diffusersFile(l: Layout, component: Component): TensorInfo[] {
  return diffusersTensors(l, component).map((t) => ({ name: t.key, shape: t.shape }));
}

function lcmLora(l: Layout, rank = 4, squeeze = false): Map<string, LoraFactorShapes> {
  const m = new Map<string, LoraFactorShapes>();
  for (const e of l.modules) {
    if (!e.lcmTarget) continue;
    const oneByOne = e.kind === 'conv2d' && e.kernel![0] === 1 && e.kernel![1] === 1;
    const fourD = e.kind === 'conv2d' && !(squeeze && oneByOne);
    m.set(e.path, {
      downShape: fourD ? [rank, ...e.shape.slice(1)] : [rank, e.shape[1]!],
      upShape: fourD ? [e.shape[0]!, rank, 1, 1] : [e.shape[0]!, rank],
    });
  }
  return m;
}

function catchErr(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}

describe('singleFileTensors', () => {
  it('fuses OpenCLIP-G q/k/v, transposes text_projection, keeps everything else one-to-one', () => {
    const l = getLayout('sdxl');
    const list = singleFileTensors(l);
    const get = (k: string) => list.find((t) => t.key === k)!;
    const inProj = get('conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight');
    expect(inProj.shape).toEqual([3840, 1280]);
    expect(inProj.parts.map((p) => p.diffusersKey)).toEqual(
      ['q', 'k', 'v'].map((x) => `text_model.encoder.layers.0.self_attn.${x}_proj.weight`),
    );
    expect(get('conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias').shape).toEqual([3840]);
    const proj = get('conditioner.embedders.1.model.text_projection');
    expect(proj.shape).toEqual([1280, 1280]);
    expect(proj.parts[0]!.transposed).toBe(true);
    // 32 layers × (4 q/k/v tensors fused away) = 128 fewer tensors than diffusers keys.
    expect(list.filter((t) => t.component === 'text_encoder_2')).toHaveLength(517 - 128);
    expect(list.filter((t) => t.component === 'unet')).toHaveLength(1680);
    const tiny = singleFileTensors(getLayout('sdxl', 'tiny'), ['text_encoder_2']);
    expect(tiny.find((t) => t.key.endsWith('resblocks.5.attn.in_proj_weight'))!.shape).toEqual([36, 12]);
    expect(diffusersTensors(getLayout('sd15'), 'unet')).toHaveLength(686);
  });
});

describe('detectCheckpoint', () => {
  for (const { arch, size } of CANDIDATES) {
    it(`${arch}/${size}: full single file, UNet-only single file, diffusers UNet file`, () => {
      const l = getLayout(arch, size);
      const full = detectCheckpoint([
        ...singleFile(l),
        { name: 'first_stage_model.decoder.conv_in.weight', shape: [4, 4, 3, 3] },
      ]);
      expect([full.arch, full.size, full.naming]).toEqual([arch, size, 'single-file']);
      expect(full.components).toEqual(
        arch === 'sd15' ? ['unet', 'text_encoder'] : ['unet', 'text_encoder', 'text_encoder_2'],
      );
      expect(full.hasVae).toBe(true);
      expect(full.extraKeys).toEqual([]);
      expect(full.layout).toBe(l);

      const unetOnly = detectCheckpoint(singleFile(l, ['unet']));
      expect([unetOnly.arch, unetOnly.size, unetOnly.components, unetOnly.hasVae]).toEqual([
        arch,
        size,
        ['unet'],
        false,
      ]);

      const diff = detectCheckpoint(diffusersFile(l, 'unet'));
      expect([diff.arch, diff.size, diff.naming, diff.components]).toEqual([arch, size, 'diffusers-unet', ['unet']]);
    });

    it(`${arch}/${size}: diffusers folder`, () => {
      const l = getLayout(arch, size);
      const files: Record<string, TensorInfo[]> = {
        unet: diffusersFile(l, 'unet'),
        text_encoder: diffusersFile(l, 'text_encoder'),
      };
      if (arch !== 'sd15') files.text_encoder_2 = diffusersFile(l, 'text_encoder_2');
      files.vae = [{ name: 'decoder.conv_in.weight', shape: [4, 4, 3, 3] }];
      const d = detectDiffusersFolder(files);
      expect([d.arch, d.size, d.naming, d.hasVae]).toEqual([arch, size, 'diffusers-folder', true]);
      expect(d.components).toEqual(Object.keys(files).filter((k) => k !== 'vae'));
    });
  }

  it('SDXL vs SSD-1B: an SDXL UNet also holds every SSD-1B key, yet is told apart (extra keys) and vice versa', () => {
    const d = detectCheckpoint(singleFile(getLayout('sdxl'), ['unet']));
    expect(d.arch).toBe('sdxl');
    const ssdScore = d.candidates.find((c) => c.arch === 'ssd1b' && c.size === 'full')!;
    expect(ssdScore.missing).toEqual([]);
    expect(ssdScore.mismatched).toEqual([]);
    expect(ssdScore.extra.length).toBe(1680 - 944);
    expect(ssdScore.extra).toContain('model.diffusion_model.middle_block.1.proj_in.weight');
    expect(detectCheckpoint(singleFile(getLayout('ssd1b'), ['unet'])).arch).toBe('ssd1b');
  });

  it('old SD1.5 text encoder without text_model., position_ids and other extras', () => {
    const l = getLayout('sd15');
    const tensors = singleFile(l).map((t) => ({
      ...t,
      name: t.name.replace('cond_stage_model.transformer.text_model.', 'cond_stage_model.transformer.'),
    }));
    tensors.push({ name: 'cond_stage_model.transformer.embeddings.position_ids', shape: [1, 77] });
    tensors.push({ name: 'model_ema.decay', shape: [] }, { name: 'alphas_cumprod', shape: [1000] });
    const d = detectCheckpoint(tensors, { source: 'v1-5-pruned.safetensors' });
    expect([d.arch, d.components]).toEqual(['sd15', ['unet', 'text_encoder']]);
    expect(d.aliases.get('cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight')).toBe(
      'cond_stage_model.transformer.encoder.layers.0.self_attn.q_proj.weight',
    );
    expect(d.aliases.size).toBe(196);
    expect(d.extraKeys).toEqual(['cond_stage_model.transformer.embeddings.position_ids']);
  });

  it('SDXL logit_scale and position_ids are extra keys, not errors', () => {
    const tensors = singleFile(getLayout('sdxl'));
    tensors.push({ name: 'conditioner.embedders.1.model.logit_scale', shape: [] });
    tensors.push({ name: 'conditioner.embedders.0.transformer.text_model.embeddings.position_ids', shape: [1, 77] });
    const d = detectCheckpoint(tensors);
    expect(d.arch).toBe('sdxl');
    expect([...d.extraKeys].sort()).toEqual([
      'conditioner.embedders.0.transformer.text_model.embeddings.position_ids',
      'conditioner.embedders.1.model.logit_scale',
    ]);
  });

  it('no UNet → FORMAT_NOT_A_CHECKPOINT (with a hint for LoRA files)', () => {
    const te = singleFile(getLayout('sd15'), ['text_encoder']);
    const e = catchErr(() => detectCheckpoint(te, { source: 'te.safetensors' }));
    expect(e).toBeInstanceOf(FormatError);
    expect(e).toMatchObject({ code: 'FORMAT_NOT_A_CHECKPOINT' });
    expect((e as Error).message).toContain('te.safetensors');
    const lora = [{ name: 'lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight', shape: [4, 320, 3, 3] }];
    expect(() => detectCheckpoint(lora)).toThrow(/look like a LoRA/);
    expect(() => detectCheckpoint([])).toThrow(expect.objectContaining({ code: 'FORMAT_NOT_A_CHECKPOINT' }));
  });

  it('an unknown UNet (SD2-like) → ARCH_UNDETECTED naming the closest candidate and a mismatched key', () => {
    const base = archConfig('sd15');
    const sd2 = buildLayout({ ...base, unet: { ...base.unet, useLinearProjection: true, crossAttentionDim: 1024 } });
    const e = catchErr(() => detectCheckpoint(singleFile(sd2, ['unet']), { source: 'sd2.safetensors' }));
    expect(e).toBeInstanceOf(ArchError);
    expect(e).toMatchObject({ code: 'ARCH_UNDETECTED' });
    const msg = (e as Error).message;
    expect(msg).toContain('sd2.safetensors');
    expect(msg).toContain('closest is SD1.5');
    expect(msg).toMatch(/expected \[320,320,1,1\], found \[320,320\]|expected \[320,768\], found \[320,1024\]/);
  });

  it('a truncated UNet → ARCH_UNDETECTED naming a missing key', () => {
    const tensors = singleFile(getLayout('sdxl'), ['unet']).filter(
      (t) => !t.name.includes('output_blocks.8.0.out_layers.3'),
    );
    const e = catchErr(() => detectCheckpoint(tensors));
    expect(e).toMatchObject({ code: 'ARCH_UNDETECTED' });
    expect((e as Error).message).toContain('model.diffusion_model.output_blocks.8.0.out_layers.3.weight');
    expect((e as Error).message).toContain('closest is SDXL');
  });

  it('a text encoder that does not fit the UNet → ARCH_MISMATCH', () => {
    // SD1.5 UNet with a tiny text encoder.
    const mixed = [
      ...singleFile(getLayout('sd15'), ['unet']),
      ...singleFile(getLayout('sd15', 'tiny'), ['text_encoder']),
    ];
    expect(() => detectCheckpoint(mixed)).toThrow(expect.objectContaining({ code: 'ARCH_MISMATCH' }));
    // SD1.5 UNet with SDXL text encoders.
    const foreign = [...singleFile(getLayout('sd15'), ['unet']), ...singleFile(getLayout('sdxl'), ['text_encoder_2'])];
    expect(() => detectCheckpoint(foreign)).toThrow(/another layout/);
    // SDXL with a truncated OpenCLIP-G.
    const cut = singleFile(getLayout('sdxl')).filter((t) => !t.name.includes('resblocks.31.'));
    const e = catchErr(() => detectCheckpoint(cut));
    expect(e).toMatchObject({ code: 'ARCH_MISMATCH' });
    expect((e as Error).message).toContain(
      'conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight',
    );
  });

  it('folder errors', () => {
    expect(() => detectDiffusersFolder({ vae: [{ name: 'x', shape: [1] }] }, { source: 'models/sd' })).toThrow(
      expect.objectContaining({ code: 'FORMAT_NOT_A_CHECKPOINT', message: expect.stringContaining('models/sd') }),
    );
    const l = getLayout('sd15');
    expect(() =>
      detectDiffusersFolder({
        unet: diffusersFile(l, 'unet'),
        text_encoder_2: diffusersFile(getLayout('sdxl'), 'text_encoder_2'),
      }),
    ).toThrow(expect.objectContaining({ code: 'ARCH_MISMATCH' }));
    const badTe = diffusersFile(l, 'text_encoder').map((t) =>
      t.name.endsWith('mlp.fc1.weight') ? { ...t, shape: [3072, 1024] } : t,
    );
    expect(() => detectDiffusersFolder({ unet: diffusersFile(l, 'unet'), text_encoder: badTe })).toThrow(
      /expected \[3072,768\], found \[3072,1024\]/,
    );
  });
});

describe('detectLoraArch', () => {
  for (const { arch, size } of CANDIDATES) {
    it(`${arch}/${size}: an LCM-LoRA-shaped LoRA ranks its own layout first`, () => {
      const r = detectLoraArch(lcmLora(getLayout(arch, size)));
      expect([r[0]!.arch, r[0]!.size]).toEqual([arch, size]);
      expect(r[0]!.unmatched).toEqual([]);
      expect(r).toHaveLength(6);
    });
  }

  it('SDXL LoRA on SSD-1B: 365 missing, reported', () => {
    const r = detectLoraArch(lcmLora(getLayout('sdxl')));
    const ssd = r.find((c) => c.arch === 'ssd1b' && c.size === 'full')!;
    expect(ssd.unmatched).toHaveLength(365);
    expect(ssd.unmatched.every((u) => u.reason === 'missing')).toBe(true);
    expect(r[1]).toBe(ssd);
    expect(describeUnmatched(ssd)).toMatch(/^SSD-1B: 365 of 788 modules have no counterpart/);
  });

  it('SSD-1B LoRA also fits SDXL entirely; SSD-1B wins on coverage', () => {
    const r = detectLoraArch(lcmLora(getLayout('ssd1b')));
    expect(r[0]!.arch).toBe('ssd1b');
    expect(r[1]!.arch).toBe('sdxl');
    expect(r[1]!.unmatched).toEqual([]);
    expect(r[0]!.coverage).toBeGreaterThan(r[1]!.coverage);
  });

  it('SD1.5 LoRA on SDXL fails on cross-attention shapes', () => {
    const r = detectLoraArch(lcmLora(getLayout('sd15')), { candidates: [{ arch: 'sdxl', size: 'full' }] });
    const shape = r[0]!.unmatched.filter((u) => u.reason === 'shape');
    expect(shape.some((u) => u.path.endsWith('attn2.to_k') && u.detail.includes('[640,2048]'))).toBe(true);
  });

  it('kohya squeezing: 2-D factors on SD1.5 1×1 convs, 4-D [r,in,1,1] on SDXL Linear modules', () => {
    expect(detectLoraArch(lcmLora(getLayout('sd15'), 8, true))[0]!.unmatched).toEqual([]);
    const sdxl = getLayout('sdxl');
    const lora = lcmLora(sdxl);
    const p = 'unet.down_blocks.1.attentions.0.proj_in';
    lora.set(p, { downShape: [4, 640, 1, 1], upShape: [640, 4, 1, 1] });
    const r = detectLoraArch(lora);
    expect([r[0]!.arch, r[0]!.unmatched]).toEqual(['sdxl', []]);
  });

  it('a style LoRA (attention + both text encoders)', () => {
    const l = getLayout('sdxl', 'tiny');
    const m = new Map<string, LoraFactorShapes>();
    for (const e of l.modules)
      if (e.group === 'attention' || e.group === 'text_encoder') {
        m.set(e.path, { downShape: [2, e.shape[1]!], upShape: [e.shape[0]!, 2] });
      }
    const r = detectLoraArch(m);
    expect([r[0]!.arch, r[0]!.size, r[0]!.unmatched.length]).toEqual(['sdxl', 'tiny', 0]);
  });

  it('loraFactorMismatch', () => {
    const l = getLayout('sd15');
    const conv = l.byPath.get('unet.down_blocks.0.resnets.0.conv1')!; // [320,320,3,3]
    const lin = l.byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k')!; // [320,768]
    expect(loraFactorMismatch(conv, [8, 320, 3, 3], [320, 8, 1, 1])).toBeNull();
    expect(loraFactorMismatch(conv, [8, 320], [320, 8])).toMatch(/expects down \[r,320,3,3\]/);
    expect(loraFactorMismatch(conv, [8, 320, 1, 1], [320, 8, 1, 1])).not.toBeNull();
    expect(loraFactorMismatch(conv, [8, 320, 3, 3], [320, 8, 3, 3])).not.toBeNull();
    expect(loraFactorMismatch(lin, [8, 768], [320, 8])).toBeNull();
    expect(loraFactorMismatch(lin, [8, 768, 1, 1], [320, 8, 1, 1])).toBeNull();
    expect(loraFactorMismatch(lin, [8, 768], [320, 4])).toMatch(
      /rank of down \[8,768\] \(8\) differs from rank of up \[320,4\] \(4\)/,
    );
    expect(loraFactorMismatch(lin, [8, 320], [320, 8])).toMatch(/found down \[8,320\], up \[320,8\]/);
    expect(loraFactorMismatch(lin, [8, 768], [768, 8])).not.toBeNull();
    expect(loraFactorMismatch(lin, [8, 768, 1], [320, 8])).not.toBeNull();
    expect(loraFactorMismatch(lin, [0, 768], [320, 0])).not.toBeNull();
  });

  it('unknown module paths are "missing"; an empty LoRA is LORA_EMPTY', () => {
    const r = detectLoraArch(new Map([['unet.nonexistent.to_q', { downShape: [1, 1], upShape: [1, 1] }]]));
    expect(r.every((c) => c.unmatched[0]!.reason === 'missing')).toBe(true);
    const e = catchErr(() => detectLoraArch(new Map()));
    expect(e).toBeInstanceOf(LoraError);
    expect(e).toMatchObject({ code: 'LORA_EMPTY' });
  });
});
