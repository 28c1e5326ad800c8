import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { OptionError } from '../src/core/errors.js';
import {
  ARCHS,
  archConfig,
  blockIds,
  blockIdOf,
  buildLayout,
  CANDIDATES,
  familyOf,
  generateUNet,
  getLayout,
  kohyaFlatten,
  loraParamCount,
  parseArch,
  type Arch,
  type Layout,
  type ModuleEntry,
  type UNetConfig,
} from '../src/layout/index.js';
import { numel } from '../src/core/tensor.js';

const unetModules = (l: Layout): ModuleEntry[] => l.modules.filter((m) => m.component === 'unet');
const unetState = (l: Layout) => l.stateDict.filter((s) => s.component === 'unet');
const lcmParams = (l: Layout, r: number): number =>
  unetModules(l)
    .filter((m) => m.lcmTarget)
    .reduce((t, m) => t + loraParamCount(m, r), 0);

describe('sanity figures (full layouts)', () => {
  const expected: Record<Arch, { modules: number; keys: number; params: number; lcm: number; lcmParams: number }> = {
    sd15: { modules: 282, keys: 686, params: 859_520_964, lcm: 278, lcmParams: 67_252_224 },
    sdxl: { modules: 794, keys: 1680, params: 2_567_463_684, lcm: 788, lcmParams: 196_751_360 },
    ssd1b: { modules: 429, keys: 944, params: 1_331_334_404, lcm: 423, lcmParams: 104_902_656 },
  };
  for (const arch of ARCHS) {
    it(`${arch}: module, key, parameter and LCM-LoRA counts`, () => {
      const l = getLayout(arch);
      const e = expected[arch];
      expect(unetModules(l)).toHaveLength(e.modules);
      expect(unetState(l)).toHaveLength(e.keys);
      expect(unetState(l).reduce((t, s) => t + numel(s.shape), 0)).toBe(e.params);
      expect(unetModules(l).filter((m) => m.lcmTarget)).toHaveLength(e.lcm);
      expect(lcmParams(l, 64)).toBe(e.lcmParams);
    });
  }

  it('LCM-LoRA targets are everything except conv_in, conv_out, time_embedding, add_embedding', () => {
    for (const arch of ARCHS) {
      const off = unetModules(getLayout(arch))
        .filter((m) => !m.lcmTarget)
        .map((m) => m.localPath)
        .sort();
      const want = ['conv_in', 'conv_out', 'time_embedding.linear_1', 'time_embedding.linear_2'];
      if (arch !== 'sd15') want.push('add_embedding.linear_1', 'add_embedding.linear_2');
      expect(off).toEqual(want.sort());
    }
  });

  it('kohya conv-LoRA split: attention vs resnet/sampler modules', () => {
    const split = (arch: Arch) => {
      const lcm = unetModules(getLayout(arch)).filter((m) => m.lcmTarget);
      return [lcm.filter((m) => m.group === 'attention').length, lcm.filter((m) => m.group !== 'attention').length];
    };
    expect(split('sd15')).toEqual([192, 86]);
    expect(split('sdxl')).toEqual([722, 66]);
  });

  it('365 SDXL modules have no SSD-1B counterpart; SSD-1B has none SDXL lacks; shared names have equal shapes', () => {
    const sdxl = getLayout('sdxl');
    const ssd = getLayout('ssd1b');
    const onlySdxl = unetModules(sdxl).filter((m) => !ssd.byPath.has(m.path));
    expect(onlySdxl).toHaveLength(365);
    expect(unetModules(ssd).filter((m) => !sdxl.byPath.has(m.path))).toHaveLength(0);
    for (const m of ssd.modules) expect(sdxl.byPath.get(m.path)!.shape).toEqual(m.shape);
    // Where the missing ones are (keys.md §4).
    const where = new Set(
      onlySdxl.map((m) =>
        m.localPath
          .replace(/\.transformer_blocks\.\d+\..*$/, '.transformer_blocks')
          .replace(/^mid_block\..*$/, 'mid_block'),
      ),
    );
    expect([...where].sort()).toEqual([
      'down_blocks.2.attentions.0.transformer_blocks',
      'down_blocks.2.attentions.1.transformer_blocks',
      'mid_block',
      'up_blocks.0.attentions.0.transformer_blocks',
      'up_blocks.0.attentions.1.transformer_blocks',
      'up_blocks.1.attentions.1.transformer_blocks',
      'up_blocks.1.attentions.2.transformer_blocks',
    ]);
  });

  it('text encoders: CLIP-L 12 layers × 6 modules, OpenCLIP-G 32 × 6, + embeddings and text_projection; 196 / 517 state-dict tensors', () => {
    for (const arch of ARCHS) {
      const l = getLayout(arch);
      const te1 = l.modules.filter((m) => m.component === 'text_encoder');
      const te2 = l.modules.filter((m) => m.component === 'text_encoder_2');
      // The transformer layers' Linears (what kohya and PEFT train) …
      expect(te1.filter((m) => !m.extra)).toHaveLength(72);
      expect(te2.filter((m) => !m.extra)).toHaveLength(arch === 'sd15' ? 0 : 192);
      // … and the 2-D tensors ComfyUI also maps a LoRA onto: both embeddings, and OpenCLIP-G's text_projection.
      expect(te1.filter((m) => m.extra).map((m) => [m.localPath, m.extra, m.shape])).toEqual([
        ['text_model.embeddings.token_embedding', 'embedding', [49408, 768]],
        ['text_model.embeddings.position_embedding', 'embedding', [77, 768]],
      ]);
      expect(te2.filter((m) => m.extra).map((m) => [m.localPath, m.extra, m.shape])).toEqual(
        arch === 'sd15'
          ? []
          : [
              ['text_model.embeddings.token_embedding', 'embedding', [49408, 1280]],
              ['text_model.embeddings.position_embedding', 'embedding', [77, 1280]],
              ['text_projection', 'projection', [1280, 1280]],
            ],
      );
      expect(l.stateDict.filter((s) => s.component === 'text_encoder')).toHaveLength(196);
      expect(l.stateDict.filter((s) => s.component === 'text_encoder_2')).toHaveLength(arch === 'sd15' ? 0 : 517);
      for (const m of [...te1, ...te2]) {
        expect(m.group).toBe('text_encoder');
        expect(m.block).toBe('BASE');
        expect(m.lcmTarget).toBe(false);
        expect(m.localPath.startsWith('text_model.') || m.localPath === 'text_projection').toBe(true);
        expect(m.kind).toBe('linear');
        expect(m.singleFileTransposed === true).toBe(m.localPath === 'text_projection');
      }
    }
  });

  it('text_projection: kohya lora_te2_text_projection, ComfyUI clip_g, diffusers path; the SGM key stores the transpose', () => {
    const l = getLayout('sdxl');
    const p = l.byPath.get('text_encoder_2.text_projection')!;
    expect(p.singleFileWeightKey).toBe('conditioner.embedders.1.model.text_projection');
    expect(p.diffusersWeightKey).toBe('text_projection.weight');
    expect(l.byKohyaName.get('lora_te2_text_projection')).toBe(p);
    expect(l.byAlias.get('text_encoders.clip_g.transformer.text_projection')).toBe(p);
    expect(l.byAlias.get('lycoris_te2_text_projection')).toBe(p);
    const tok = l.byPath.get('text_encoder_2.text_model.embeddings.position_embedding')!;
    expect(tok.singleFileWeightKey).toBe('conditioner.embedders.1.model.positional_embedding');
    expect(tok.singleFileTransposed).toBeUndefined();
    expect(l.byAlias.get('text_encoders.clip_l.transformer.text_model.embeddings.token_embedding')?.path).toBe(
      'text_encoder.text_model.embeddings.token_embedding',
    );
  });
});

describe('spot checks (keys.md §1.5, §1.6)', () => {
  const shape = (arch: Arch, path: string) => getLayout(arch).byPath.get(path)?.shape;
  const ldm = (arch: Arch, path: string) => getLayout(arch).byPath.get(path)?.singleFilePath;

  it('shapes', () => {
    const rows: [string, number[], number[] | undefined][] = [
      ['conv_in', [320, 4, 3, 3], [320, 4, 3, 3]],
      ['time_embedding.linear_1', [1280, 320], [1280, 320]],
      ['add_embedding.linear_1', [], [1280, 2816]],
      ['add_embedding.linear_2', [], [1280, 1280]],
      ['down_blocks.0.resnets.0.conv1', [320, 320, 3, 3], [320, 320, 3, 3]],
      ['down_blocks.0.resnets.0.time_emb_proj', [320, 1280], [320, 1280]],
      ['down_blocks.1.resnets.0.conv_shortcut', [640, 320, 1, 1], [640, 320, 1, 1]],
      ['down_blocks.0.downsamplers.0.conv', [320, 320, 3, 3], [320, 320, 3, 3]],
      ['down_blocks.0.attentions.0.proj_in', [320, 320, 1, 1], []],
      ['down_blocks.1.attentions.0.proj_in', [640, 640, 1, 1], [640, 640]],
      ['down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q', [640, 640], [640, 640]],
      ['down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k', [640, 768], [640, 2048]],
      ['down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj', [5120, 640], [5120, 640]],
      ['down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2', [640, 2560], [640, 2560]],
      ['mid_block.resnets.0.conv1', [1280, 1280, 3, 3], [1280, 1280, 3, 3]],
      ['up_blocks.0.upsamplers.0.conv', [1280, 1280, 3, 3], [1280, 1280, 3, 3]],
      ['up_blocks.1.resnets.0.conv_shortcut', [1280, 2560, 1, 1], [640, 1920, 1, 1]],
      ['up_blocks.2.resnets.0.conv1', [640, 1920, 3, 3], [320, 960, 3, 3]],
      ['conv_out', [4, 320, 3, 3], [4, 320, 3, 3]],
    ];
    for (const [p, sd15, sdxl] of rows) {
      expect(shape('sd15', `unet.${p}`)).toEqual(sd15.length ? sd15 : undefined);
      expect(shape('sdxl', `unet.${p}`)).toEqual(sdxl?.length ? sdxl : undefined);
      expect(shape('ssd1b', `unet.${p}`)).toEqual(sdxl?.length ? sdxl : undefined);
    }
  });

  it('single-file names, including the upsampler and downsampler traps', () => {
    expect(ldm('sd15', 'unet.up_blocks.0.upsamplers.0.conv')).toBe('output_blocks.2.1.conv');
    expect(ldm('sdxl', 'unet.up_blocks.0.upsamplers.0.conv')).toBe('output_blocks.2.2.conv');
    expect(ldm('sd15', 'unet.up_blocks.1.upsamplers.0.conv')).toBe('output_blocks.5.2.conv');
    expect(ldm('sd15', 'unet.down_blocks.0.downsamplers.0.conv')).toBe('input_blocks.3.0.op');
    expect(ldm('sd15', 'unet.down_blocks.2.downsamplers.0.conv')).toBe('input_blocks.9.0.op');
    expect(ldm('sdxl', 'unet.down_blocks.1.downsamplers.0.conv')).toBe('input_blocks.6.0.op');
    expect(ldm('sd15', 'unet.down_blocks.1.resnets.0.conv1')).toBe('input_blocks.4.0.in_layers.2');
    expect(ldm('sd15', 'unet.down_blocks.1.resnets.0.time_emb_proj')).toBe('input_blocks.4.0.emb_layers.1');
    expect(ldm('sd15', 'unet.down_blocks.1.resnets.0.conv2')).toBe('input_blocks.4.0.out_layers.3');
    expect(ldm('sd15', 'unet.down_blocks.1.resnets.0.conv_shortcut')).toBe('input_blocks.4.0.skip_connection');
    expect(ldm('sd15', 'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0')).toBe(
      'input_blocks.4.1.transformer_blocks.0.attn1.to_out.0',
    );
    expect(ldm('sd15', 'unet.mid_block.attentions.0.proj_in')).toBe('middle_block.1.proj_in');
    expect(ldm('sd15', 'unet.mid_block.resnets.1.conv1')).toBe('middle_block.2.in_layers.2');
    expect(ldm('sdxl', 'unet.add_embedding.linear_2')).toBe('label_emb.0.2');
    expect(ldm('sd15', 'unet.time_embedding.linear_2')).toBe('time_embed.2');
    expect(ldm('sd15', 'unet.conv_out')).toBe('out.2');
    expect(ldm('sdxl', 'unet.up_blocks.2.resnets.2.conv1')).toBe('output_blocks.8.0.in_layers.2');
    expect(ldm('sd15', 'unet.up_blocks.3.attentions.2.proj_out')).toBe('output_blocks.11.1.proj_out');
    const sd15Keys = new Set(getLayout('sd15').stateDict.map((s) => s.singleFileKey));
    expect(sd15Keys.has('model.diffusion_model.output_blocks.11.0.skip_connection.weight')).toBe(true);
    expect(sd15Keys.has('model.diffusion_model.out.0.weight')).toBe(true);
    const ssdKeys = getLayout('ssd1b').stateDict.map((s) => s.singleFileKey);
    expect(ssdKeys.some((k) => k.startsWith('model.diffusion_model.middle_block.0.'))).toBe(true);
    expect(ssdKeys.some((k) => k.startsWith('model.diffusion_model.middle_block.1.'))).toBe(false);
    expect(ssdKeys.some((k) => k.startsWith('model.diffusion_model.middle_block.2.'))).toBe(false);
  });

  it('SSD-1B transformer depths per attention', () => {
    const depth = (arch: Arch, att: string) =>
      unetModules(getLayout(arch)).filter(
        (m) => m.localPath.startsWith(`${att}.transformer_blocks.`) && m.localPath.endsWith('attn1.to_q'),
      ).length;
    const atts = [
      'down_blocks.1.attentions.0',
      'down_blocks.1.attentions.1',
      'down_blocks.2.attentions.0',
      'down_blocks.2.attentions.1',
      'mid_block.attentions.0',
      'up_blocks.0.attentions.0',
      'up_blocks.0.attentions.1',
      'up_blocks.0.attentions.2',
      'up_blocks.1.attentions.0',
      'up_blocks.1.attentions.1',
      'up_blocks.1.attentions.2',
    ];
    expect(atts.map((a) => depth('sdxl', a))).toEqual([2, 2, 10, 10, 10, 10, 10, 10, 2, 2, 2]);
    expect(atts.map((a) => depth('ssd1b', a))).toEqual([2, 2, 4, 4, 0, 4, 4, 10, 2, 1, 1]);
  });

  it('conv geometry', () => {
    const l = getLayout('sd15');
    const ds = l.byPath.get('unet.down_blocks.0.downsamplers.0.conv')!;
    expect([ds.kind, ds.kernel, ds.stride, ds.padding]).toEqual(['conv2d', [3, 3], [2, 2], [1, 1]]);
    const sc = l.byPath.get('unet.down_blocks.1.resnets.0.conv_shortcut')!;
    expect([sc.kernel, sc.stride, sc.padding]).toEqual([
      [1, 1],
      [1, 1],
      [0, 0],
    ]);
    const pi = l.byPath.get('unet.down_blocks.0.attentions.0.proj_in')!;
    expect(pi.kind).toBe('conv2d');
    expect(getLayout('sdxl').byPath.get('unet.down_blocks.1.attentions.0.proj_in')!.kind).toBe('linear');
    expect(l.byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')!.kernel).toBeUndefined();
  });

  it('text encoders: prefixes, OpenCLIP-G fused q/k/v rows and transposed projection', () => {
    const sd15 = getLayout('sd15').byPath.get('text_encoder.text_model.encoder.layers.3.self_attn.q_proj')!;
    expect(sd15.singleFileWeightKey).toBe(
      'cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.q_proj.weight',
    );
    expect(sd15.kohyaNames).toEqual(['lora_te_text_model_encoder_layers_3_self_attn_q_proj']);
    expect(sd15.shape).toEqual([768, 768]);
    const sdxl = getLayout('sdxl');
    const te1 = sdxl.byPath.get('text_encoder.text_model.encoder.layers.0.mlp.fc1')!;
    expect(te1.singleFileWeightKey).toBe(
      'conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight',
    );
    expect(te1.kohyaNames).toEqual(['lora_te1_text_model_encoder_layers_0_mlp_fc1']);
    expect(te1.shape).toEqual([3072, 768]);
    const rows = ['q_proj', 'k_proj', 'v_proj'].map(
      (p) => sdxl.byPath.get(`text_encoder_2.text_model.encoder.layers.31.self_attn.${p}`)!,
    );
    for (const [i, m] of rows.entries()) {
      expect(m.singleFileWeightKey).toBe('conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight');
      expect(m.singleFileRows).toEqual([1280 * i, 1280 * (i + 1)]);
      expect(m.shape).toEqual([1280, 1280]);
    }
    expect(
      sdxl.bySingleFileKey.get('conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight'),
    ).toEqual(rows);
    const out = sdxl.byPath.get('text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj')!;
    expect(out.singleFileWeightKey).toBe('conditioner.embedders.1.model.transformer.resblocks.31.attn.out_proj.weight');
    expect(out.kohyaNames).toEqual(['lora_te2_text_model_encoder_layers_31_self_attn_out_proj']);
    expect(sdxl.byPath.get('text_encoder_2.text_model.encoder.layers.0.mlp.fc1')!.singleFileWeightKey).toBe(
      'conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight',
    );
    expect(sdxl.byPath.get('text_encoder_2.text_model.encoder.layers.0.mlp.fc2')!.shape).toEqual([1280, 5120]);
    const proj = sdxl.stateDict.find(
      (s) => s.component === 'text_encoder_2' && s.diffusersKey === 'text_projection.weight',
    )!;
    expect(proj).toMatchObject({
      singleFileKey: 'conditioner.embedders.1.model.text_projection',
      transposed: true,
      shape: [1280, 1280],
    });
    const qb = sdxl.stateDict.find(
      (s) => s.diffusersKey === 'text_model.encoder.layers.2.self_attn.v_proj.bias' && s.component === 'text_encoder_2',
    )!;
    expect(qb).toMatchObject({
      singleFileKey: 'conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_bias',
      singleFileRows: [2560, 3840],
    });
    const pos = sdxl.stateDict.find(
      (s) => s.component === 'text_encoder_2' && s.diffusersKey === 'text_model.embeddings.position_embedding.weight',
    )!;
    expect(pos).toMatchObject({
      singleFileKey: 'conditioner.embedders.1.model.positional_embedding',
      shape: [77, 1280],
    });
    expect(sdxl.stateDict.some((s) => s.singleFileKey.endsWith('logit_scale'))).toBe(false);
  });
});

describe('names', () => {
  for (const { arch, size } of CANDIDATES) {
    it(`${arch}/${size}: unique names, both kohya spellings index the same module, bySingleFileKey complete`, () => {
      const l = getLayout(arch, size);
      expect(new Set(l.modules.map((m) => m.path)).size).toBe(l.modules.length);
      expect(l.byPath.size).toBe(l.modules.length);
      let spellings = 0;
      for (const m of l.modules) {
        expect(m.path).toBe(`${m.component}.${m.localPath}`);
        expect(m.diffusersWeightKey).toBe(`${m.localPath}.weight`);
        expect(m.kohyaNames).toHaveLength(m.component === 'unet' ? 2 : 1);
        for (const k of m.kohyaNames) expect(l.byKohyaName.get(k)).toBe(m);
        spellings += m.kohyaNames.length;
        expect(l.bySingleFileKey.get(m.singleFileWeightKey)).toContain(m);
        if (m.component === 'unet') {
          expect(m.kohyaNames[0]).toBe(kohyaFlatten('lora_unet', m.localPath));
          expect(m.kohyaNames[1]).toBe(kohyaFlatten('lora_unet', m.singleFilePath));
          expect(m.singleFileWeightKey).toBe(`model.diffusion_model.${m.singleFilePath}.weight`);
        }
        // The module's weight is a state-dict entry with the same shape under both namings.
        const s = l.stateDict.find((e) => e.component === m.component && e.diffusersKey === m.diffusersWeightKey)!;
        expect(s.shape).toEqual(m.shape);
        expect(s.singleFileKey).toBe(m.singleFileWeightKey);
        expect(s.singleFileRows).toEqual(m.singleFileRows);
        expect(s.transposed).toEqual(m.singleFileTransposed);
      }
      expect(l.byKohyaName.size).toBe(spellings);
    });

    it(`${arch}/${size}: single-file ↔ diffusers state-dict renaming is a bijection`, () => {
      const l = getLayout(arch, size);
      const fwd = new Map<string, string>();
      const back = new Map<string, string>();
      for (const s of l.stateDict) {
        const d = `${s.component}:${s.diffusersKey}`;
        const f = s.singleFileRows ? `${s.singleFileKey}[${s.singleFileRows.join(':')}]` : s.singleFileKey;
        expect(fwd.has(d)).toBe(false);
        expect(back.has(f)).toBe(false);
        fwd.set(d, f);
        back.set(f, d);
      }
      for (const [d, f] of fwd) expect(back.get(f)).toBe(d);
      // Row slices of one fused tensor tile it exactly.
      const slices = new Map<string, [number, number][]>();
      for (const s of l.stateDict)
        if (s.singleFileRows) {
          const list = slices.get(s.singleFileKey) ?? [];
          list.push([...s.singleFileRows]);
          slices.set(s.singleFileKey, list);
        }
      for (const list of slices.values()) {
        list.sort((a, b) => a[0] - b[0]);
        expect(list[0]![0]).toBe(0);
        for (let i = 1; i < list.length; i++) expect(list[i]![0]).toBe(list[i - 1]![1]);
      }
    });
  }

  it('property: module → kohya name → module, → single-file key → module, → path → module', () => {
    const layouts = CANDIDATES.map(({ arch, size }) => getLayout(arch, size));
    fc.assert(
      fc.property(
        fc.nat({ max: layouts.length - 1 }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        fc.boolean(),
        (li, pick, sgm) => {
          const l = layouts[li]!;
          const m = l.modules[Math.floor(pick * l.modules.length)]!;
          const name = m.kohyaNames[sgm && m.kohyaNames.length > 1 ? 1 : 0]!;
          expect(l.byKohyaName.get(name)).toBe(m);
          const byKey = l.bySingleFileKey.get(m.singleFileWeightKey)!;
          const found = m.singleFileRows ? byKey.find((o) => o.singleFileRows![0] === m.singleFileRows![0]) : byKey[0];
          expect(found).toBe(m);
          expect(l.byPath.get(m.path)).toBe(m);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('kohya spellings never collide across layouts of one family and are disjoint between the two spellings', () => {
    for (const arch of ARCHS) {
      const l = getLayout(arch);
      const diffusers = new Set(unetModules(l).map((m) => m.kohyaNames[0]));
      const sgm = new Set(unetModules(l).map((m) => m.kohyaNames[1]));
      for (const k of sgm) expect(diffusers.has(k)).toBe(false);
    }
  });
});

describe('tiny layouts', () => {
  for (const arch of ARCHS) {
    it(`${arch}: same paths, names, blocks and kinds as full; smaller shapes`, () => {
      const full = getLayout(arch, 'full');
      const tiny = getLayout(arch, 'tiny');
      expect(tiny.modules.map((m) => m.path)).toEqual(full.modules.map((m) => m.path));
      expect(tiny.stateDict.map((s) => `${s.component}:${s.diffusersKey}>${s.singleFileKey}`)).toEqual(
        full.stateDict.map((s) => `${s.component}:${s.diffusersKey}>${s.singleFileKey}`),
      );
      for (const [i, t] of tiny.modules.entries()) {
        const f = full.modules[i]!;
        expect([
          t.kohyaNames,
          t.singleFileWeightKey,
          t.block,
          t.kind,
          t.group,
          t.lcmTarget,
          t.shape.length,
          t.kernel,
        ]).toEqual([
          f.kohyaNames,
          f.singleFileWeightKey,
          f.block,
          f.kind,
          f.group,
          f.lcmTarget,
          f.shape.length,
          f.kernel,
        ]);
        expect(numel(t.shape)).toBeLessThan(numel(f.shape) + 1);
      }
      const params = (l: Layout) => l.stateDict.reduce((t, s) => t + numel(s.shape), 0);
      expect(params(tiny)).toBeLessThan(3_000_000);
    });
  }

  it('tiny cross-attention widths differ between SD1.5 and SDXL (12 vs 20) and match the text encoders', () => {
    const to_k = 'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k';
    expect(getLayout('sd15', 'tiny').byPath.get(to_k)!.shape).toEqual([16, 12]);
    expect(getLayout('sdxl', 'tiny').byPath.get(to_k)!.shape).toEqual([16, 20]);
    expect(getLayout('ssd1b', 'tiny').byPath.get(to_k)!.shape).toEqual([16, 20]);
    const q = (arch: Arch, c: string) =>
      getLayout(arch, 'tiny').byPath.get(`${c}.text_model.encoder.layers.0.self_attn.q_proj`)!.shape[0]!;
    expect(q('sd15', 'text_encoder')).toBe(12);
    expect(q('sdxl', 'text_encoder') + q('sdxl', 'text_encoder_2')).toBe(20);
    expect(getLayout('sdxl', 'tiny').byPath.get('unet.add_embedding.linear_1')!.shape).toEqual([32, 36]);
  });

  it('getLayout caches', () => {
    expect(getLayout('sdxl', 'tiny')).toBe(getLayout('sdxl', 'tiny'));
    expect(getLayout('sd15')).toBe(getLayout('sd15', 'full'));
  });
});

describe('block IDs', () => {
  const id = (arch: Arch, path: string) => blockIdOf(getLayout(arch).byPath.get(path)!);

  it('SD1.5 has 26 IDs, SDXL and SSD-1B 20', () => {
    expect(blockIds('sd15')).toEqual([
      'BASE',
      ...Array.from({ length: 12 }, (_, i) => `IN${String(i).padStart(2, '0')}`),
      'M00',
      ...Array.from({ length: 12 }, (_, i) => `OUT${String(i).padStart(2, '0')}`),
    ]);
    expect(blockIds('sdxl')).toHaveLength(20);
    expect(blockIds('ssd1b')).toEqual(blockIds('sdxl'));
    expect(new Set(blockIds('sd15')).size).toBe(26);
  });

  it('every ID is used by some module and every module block is in the list', () => {
    for (const { arch, size } of CANDIDATES) {
      const l = getLayout(arch, size);
      const used = new Set(l.modules.map((m) => m.block).filter((b) => b !== null));
      expect([...used].sort()).toEqual([...blockIds(arch)].sort());
    }
  });

  it('formulas of merge.md §5', () => {
    expect(id('sd15', 'unet.conv_in')).toBe('IN00');
    expect(id('sd15', 'unet.down_blocks.0.attentions.1.proj_in')).toBe('IN02');
    expect(id('sd15', 'unet.down_blocks.0.downsamplers.0.conv')).toBe('IN03');
    expect(id('sd15', 'unet.down_blocks.2.resnets.1.conv2')).toBe('IN08');
    expect(id('sd15', 'unet.down_blocks.2.downsamplers.0.conv')).toBe('IN09');
    expect(id('sd15', 'unet.down_blocks.3.resnets.1.conv1')).toBe('IN11');
    expect(id('sd15', 'unet.mid_block.resnets.1.conv1')).toBe('M00');
    expect(id('sd15', 'unet.up_blocks.0.resnets.0.conv1')).toBe('OUT00');
    expect(id('sd15', 'unet.up_blocks.0.upsamplers.0.conv')).toBe('OUT02');
    expect(id('sd15', 'unet.up_blocks.2.attentions.1.proj_out')).toBe('OUT07');
    expect(id('sd15', 'unet.up_blocks.3.attentions.2.proj_out')).toBe('OUT11');
    expect(id('sd15', 'unet.conv_out')).toBeNull();
    expect(id('sd15', 'unet.time_embedding.linear_1')).toBeNull();
    expect(id('sdxl', 'unet.add_embedding.linear_1')).toBeNull();
    expect(id('sdxl', 'unet.down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2')).toBe('IN08');
    expect(id('sdxl', 'unet.up_blocks.1.upsamplers.0.conv')).toBe('OUT05');
    expect(id('sdxl', 'unet.up_blocks.2.resnets.2.conv2')).toBe('OUT08');
    expect(id('ssd1b', 'unet.mid_block.resnets.0.conv1')).toBe('M00');
    expect(id('sdxl', 'text_encoder_2.text_model.encoder.layers.0.mlp.fc1')).toBe('BASE');
  });
});

describe('configs and errors', () => {
  it('familyOf, parseArch', () => {
    expect(ARCHS.map(familyOf)).toEqual(['sd15', 'sdxl', 'sdxl']);
    expect(parseArch('SD1.5')).toBe('sd15');
    expect(parseArch('ssd-1b')).toBe('ssd1b');
    expect(() => parseArch('sd3')).toThrow(expect.objectContaining({ code: 'OPTION_INVALID' }));
    expect(() => getLayout('sd2' as Arch)).toThrow(OptionError);
    expect(() => getLayout('sdxl', 'huge' as 'full')).toThrow(expect.objectContaining({ code: 'OPTION_INVALID' }));
  });

  it('inconsistent configs give ARCH_LAYOUT_INVALID naming the problem', () => {
    const base = archConfig('sd15').unet;
    const bad = (u: Partial<UNetConfig>) => () => generateUNet({ ...base, ...u });
    expect(bad({ blockOutChannels: [320, 640, 1280] })).toThrow(/3 down and up block types|expected 3/);
    expect(bad({ blockOutChannels: [320, 640, 1280, 1000] })).toThrow(/not divisible by normNumGroups/);
    expect(bad({ reverseTransformerLayersPerBlock: [1, [1, 1], 1, 1] })).toThrow(/layer 2/);
    expect(bad({ layersPerBlock: 0 })).toThrow(expect.objectContaining({ code: 'ARCH_LAYOUT_INVALID' }));
  });

  it('an SD2-like config (linear projection, cross-attention 1024) generates a distinct layout', () => {
    const sd2 = buildLayout({
      ...archConfig('sd15'),
      unet: { ...archConfig('sd15').unet, useLinearProjection: true, crossAttentionDim: 1024 },
    });
    expect(sd2.byPath.get('unet.down_blocks.0.attentions.0.proj_in')!.shape).toEqual([320, 320]);
    expect(sd2.byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v')!.shape).toEqual([
      320, 1024,
    ]);
  });

  it('property: any valid config gives unique names, a bijective renaming and the upsampler sub-index rule', () => {
    const cfg = fc.record({
      n: fc.integer({ min: 1, max: 4 }),
      L: fc.integer({ min: 1, max: 3 }),
      widths: fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 4, maxLength: 4 }),
      attn: fc.array(fc.boolean(), { minLength: 8, maxLength: 8 }),
      depth: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 4, maxLength: 4 }),
      mid: fc.boolean(),
      linear: fc.boolean(),
      add: fc.boolean(),
    });
    fc.assert(
      fc.property(cfg, (c) => {
        const ch = c.widths.slice(0, c.n).map((w) => 4 * w);
        const u: UNetConfig = {
          inChannels: 4,
          outChannels: 4,
          blockOutChannels: ch,
          layersPerBlock: c.L,
          downBlockTypes: ch.map((_, i) => (c.attn[i] ? 'CrossAttnDownBlock2D' : 'DownBlock2D')),
          upBlockTypes: ch.map((_, i) => (c.attn[4 + i] ? 'CrossAttnUpBlock2D' : 'UpBlock2D')),
          midBlockType: c.mid ? 'UNetMidBlock2DCrossAttn' : 'UNetMidBlock2D',
          transformerLayersPerBlock: c.depth.slice(0, c.n),
          crossAttentionDim: 7,
          useLinearProjection: c.linear,
          normNumGroups: 4,
          convInKernel: 3,
          convOutKernel: 3,
          ...(c.add
            ? { addEmbedding: { type: 'text_time' as const, additionTimeEmbedDim: 2, projectionInputDim: 20 } }
            : {}),
        };
        const t = generateUNet(u);
        expect(new Set(t.modules.map((m) => m.path)).size).toBe(t.modules.length);
        expect(new Set(t.modules.map((m) => m.singleFilePath)).size).toBe(t.modules.length);
        expect(new Set(t.stateDict.map((s) => s.diffusersKey)).size).toBe(t.stateDict.length);
        expect(new Set(t.stateDict.map((s) => s.singleFileKey)).size).toBe(t.stateDict.length);
        for (let i = 0; i < c.n - 1; i++) {
          const up = t.modules.find((m) => m.localPath === `up_blocks.${i}.upsamplers.0.conv`)!;
          expect(up.singleFilePath).toBe(`output_blocks.${(c.L + 1) * i + c.L}.${c.attn[4 + i] ? 2 : 1}.conv`);
        }
        // Channel bookkeeping: each up-block resnet takes the running width plus the skip popped from the down side.
        const skips = t.modules
          .filter((m) => /^(conv_in|down_blocks\.\d+\.(resnets\.\d+\.conv2|downsamplers\.0\.conv))$/.test(m.localPath))
          .map((m) => m.shape[0]!);
        const upConv1 = t.modules.filter((m) => /^up_blocks\.\d+\.resnets\.\d+\.conv1$/.test(m.localPath));
        expect(upConv1).toHaveLength(skips.length);
        let hidden = ch[ch.length - 1]!;
        for (const m of upConv1) {
          expect(m.shape[1]).toBe(hidden + skips.pop()!);
          hidden = m.shape[0]!;
        }
        expect(t.blockIds.length).toBe(1 + c.n * (c.L + 1) - 1 + 1 + c.n * (c.L + 1));
      }),
      { numRuns: 150 },
    );
  });
});

describe('unetStateDict (what checkpoint detection scores candidates on)', () => {
  it("is every candidate layout's UNet state dict: same keys, shapes and order", async () => {
    const { unetStateDict } = await import('../src/layout/archs.js');
    for (const { arch, size } of CANDIDATES) {
      const own = unetStateDict(arch, size).map((s) => [s.component, s.diffusersKey, s.singleFileKey, s.shape]);
      expect(own.length).toBeGreaterThan(0);
      expect(own).toEqual(
        unetState(getLayout(arch, size)).map((s) => [s.component, s.diffusersKey, s.singleFileKey, s.shape]),
      );
      expect(unetStateDict(arch, size)).toBe(unetStateDict(arch, size));
    }
  });
});
