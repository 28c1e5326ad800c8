import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import {
  decodeLora,
  describeLora,
  encodeLora,
  loadLora,
  parseLoraKey,
  planLora,
  serializeLora,
} from '../src/formats/index.js';
import { getLayout } from '../src/layout/index.js';
import type { Arch } from '../src/layout/types.js';
import { targetModules } from '../src/fixtures/generate.js';
import { serializeSafetensors } from '../src/safetensors/index.js';
import { caught, decodeBytes, delta, fixture, makeFile, nd, open, type PlainLoadedLora } from './formats-helpers.js';
import { requirePlain } from '../src/lora/terms/index.js';

describe('key grammar', () => {
  it('reads kohya names whole, without un-flattening', () => {
    expect(parseLoraKey('lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight')).toMatchObject({
      family: 'kohya',
      role: 'down',
      name: 'lora_unet_down_blocks_0_attentions_0_proj_in',
    });
    expect(parseLoraKey('lora_te2_text_model_encoder_layers_31_self_attn_out_proj.lora_up.weight')).toMatchObject({
      family: 'kohya',
      role: 'up',
      name: 'lora_te2_text_model_encoder_layers_31_self_attn_out_proj',
    });
    expect(parseLoraKey('lora_te_text_model_encoder_layers_0_mlp_fc1.alpha')).toMatchObject({ role: 'alpha' });
    expect(parseLoraKey('lora_unet_foo.hada_w1_a')).toMatchObject({
      family: 'kohya',
      role: 'hada_w1_a',
      name: 'lora_unet_foo',
    });
    expect(parseLoraKey('lora_unet_foo.oft_blocks')).toMatchObject({ role: 'oft_blocks', name: 'lora_unet_foo' });
    // kohya's OFT network: 'oft_unet_' names read as the 'lora_unet_' name, the key kept.
    expect(parseLoraKey('oft_unet_foo.oft_blocks')).toMatchObject({
      key: 'oft_unet_foo.oft_blocks',
      family: 'kohya',
      role: 'oft_blocks',
      name: 'lora_unet_foo',
    });
    expect(parseLoraKey('oft_unet_foo.alpha')).toMatchObject({ role: 'alpha', name: 'lora_unet_foo' });
    expect(parseLoraKey('base_model.model.foo.oft_r')).toBeUndefined();
  });

  it('reads PEFT / diffusers paths with every prefix and spelling', () => {
    const cases: [string, string, string][] = [
      ['unet.down_blocks.1.attentions.0.proj_in.lora_A.weight', 'unet.down_blocks.1.attentions.0.proj_in', 'down'],
      ['unet.mid_block.resnets.0.conv1.lora_B.weight', 'unet.mid_block.resnets.0.conv1', 'up'],
      ['base_model.model.up_blocks.1.resnets.0.conv1.lora_A.weight', 'unet.up_blocks.1.resnets.0.conv1', 'down'],
      ['unet.base_model.model.conv_in.lora_B.weight', 'unet.conv_in', 'up'],
      ['down_blocks.0.resnets.0.conv2.lora_A.default.weight', 'unet.down_blocks.0.resnets.0.conv2', 'down'],
      [
        'text_encoder_2.text_model.encoder.layers.3.mlp.fc2.lora_B.weight',
        'text_encoder_2.text_model.encoder.layers.3.mlp.fc2',
        'up',
      ],
      [
        'unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight',
        'unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q',
        'down',
      ],
      [
        'text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight',
        'text_encoder.text_model.encoder.layers.0.self_attn.q_proj',
        'up',
      ],
      [
        'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight',
        'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q',
        'down',
      ],
      [
        'up_blocks.0.attentions.2.transformer_blocks.5.attn2.processor.to_out_lora.up.weight',
        'unet.up_blocks.0.attentions.2.transformer_blocks.5.attn2.to_out.0',
        'up',
      ],
      [
        'text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.down.weight',
        'text_encoder.text_model.encoder.layers.0.self_attn.out_proj',
        'down',
      ],
      [
        'text_model.encoder.layers.2.self_attn.k_proj.lora_A.weight',
        'text_encoder.text_model.encoder.layers.2.self_attn.k_proj',
        'down',
      ],
      ['unet.down_blocks.0.resnets.0.conv1.alpha', 'unet.down_blocks.0.resnets.0.conv1', 'alpha'],
    ];
    for (const [key, path, role] of cases) expect(parseLoraKey(key), key).toMatchObject({ family: 'path', path, role });
    expect(parseLoraKey('model.diffusion_model.input_blocks.0.0.weight')).toBeUndefined();
    expect(parseLoraKey('down_blocks.0.resnets.0.conv1.weight')).toBeUndefined();
  });
});

const LORA_FIXTURES: { file: string; arch: Arch; format: string; kohyaPaths?: string; modules: number }[] = [
  { file: 'sd15/lcm-lora.kohya.safetensors', arch: 'sd15', format: 'kohya', kohyaPaths: 'diffusers', modules: 278 },
  { file: 'sd15/style-lora.kohya.safetensors', arch: 'sd15', format: 'kohya', kohyaPaths: 'diffusers', modules: 264 },
  { file: 'sd15/style-lora.kohya-sgm.safetensors', arch: 'sd15', format: 'kohya', kohyaPaths: 'sgm', modules: 264 },
  { file: 'sd15/style-lora.peft.safetensors', arch: 'sd15', format: 'peft', modules: 264 },
  { file: 'sd15/lcm-lora.peft-base-model.safetensors', arch: 'sd15', format: 'peft', modules: 278 },
  {
    file: 'sd15/attn-lora.diffusers-old.safetensors',
    arch: 'sd15',
    format: 'diffusers-old',
    modules: targetModules('sd15', 'tiny', 'attention').length,
  },
  { file: 'sdxl/lcm-lora.kohya.safetensors', arch: 'sdxl', format: 'kohya', kohyaPaths: 'diffusers', modules: 788 },
  { file: 'sdxl/style-lora.kohya-sgm.safetensors', arch: 'sdxl', format: 'kohya', kohyaPaths: 'sgm', modules: 986 },
  { file: 'sdxl/style-lora.peft.safetensors', arch: 'sdxl', format: 'peft', modules: 986 },
  { file: 'ssd1b/lcm-lora.kohya.safetensors', arch: 'ssd1b', format: 'kohya', kohyaPaths: 'diffusers', modules: 423 },
  { file: 'ssd1b/style-lora.kohya-sgm.safetensors', arch: 'ssd1b', format: 'kohya', kohyaPaths: 'sgm', modules: 624 },
];

const cache = new Map<string, Promise<PlainLoadedLora>>();
const load = (rel: string): Promise<PlainLoadedLora> => {
  let p = cache.get(rel);
  if (!p) cache.set(rel, (p = loadLora(fixture(rel)).then((l) => requirePlain(l))));
  return p;
};

function expectSameLora(a: PlainLoadedLora | { arch: Arch; modules: PlainLoadedLora['modules'] }, b: typeof a): void {
  expect(b.arch).toBe(a.arch);
  expect([...b.modules.keys()]).toEqual([...a.modules.keys()]);
  for (const [path, m] of a.modules) {
    const o = b.modules.get(path)!;
    expect(o.alpha, path).toBe(m.alpha);
    expect(o.down.shape, path).toEqual(m.down.shape);
    expect(o.up.shape, path).toEqual(m.up.shape);
    expect(
      Buffer.from(o.down.data.buffer, o.down.data.byteOffset, o.down.data.byteLength).equals(
        Buffer.from(m.down.data.buffer, m.down.data.byteOffset, m.down.data.byteLength),
      ),
      path,
    ).toBe(true);
    expect(
      Buffer.from(o.up.data.buffer, o.up.data.byteOffset, o.up.data.byteLength).equals(
        Buffer.from(m.up.data.buffer, m.up.data.byteOffset, m.up.data.byteLength),
      ),
      path,
    ).toBe(true);
  }
}

describe('fixtures decode: format, arch and size detection', () => {
  for (const f of LORA_FIXTURES) {
    it(`${f.file} → ${f.format} ${f.arch} tiny`, async () => {
      const l = await load(f.file);
      expect(l.format).toBe(f.format);
      expect(l.arch).toBe(f.arch);
      expect(l.size).toBe('tiny');
      expect(l.kohyaPaths).toBe(f.kohyaPaths);
      expect(l.modules.size).toBe(f.modules);
      expect(l.dtype).toBe('F16');
      expect(l.unmatched).toEqual([]);
      const layout = getLayout(f.arch, 'tiny');
      for (const [path, m] of l.modules) {
        const entry = layout.byPath.get(path)!;
        expect(entry, path).toBeDefined();
        expect(m.up.shape[0]).toBe(entry.shape[0]);
        expect(m.down.shape[1]).toBe(entry.shape[1]);
      }
    });
  }

  it('every spelling of one LoRA decodes to the same factors and alphas', async () => {
    expectSameLora(
      await load('sd15/style-lora.kohya.safetensors'),
      await load('sd15/style-lora.kohya-sgm.safetensors'),
    );
    expectSameLora(await load('sd15/style-lora.kohya.safetensors'), await load('sd15/style-lora.peft.safetensors'));
    expectSameLora(await load('sdxl/style-lora.kohya-sgm.safetensors'), await load('sdxl/style-lora.peft.safetensors'));
    expectSameLora(
      await load('sd15/lcm-lora.kohya.safetensors'),
      await load('sd15/lcm-lora.peft-base-model.safetensors'),
    );
  });

  it('the LCM fixtures hold alpha 1 at rank 8 (scale 1/8) and SD1.5 proj_in as 1×1-conv factors', async () => {
    const sd15 = await load('sd15/lcm-lora.kohya.safetensors');
    const sdxl = await load('sdxl/lcm-lora.kohya.safetensors');
    const p = 'unet.down_blocks.1.attentions.0.proj_in';
    expect(sd15.modules.get(p)!.down.shape).toHaveLength(4);
    expect(sdxl.modules.get(p)!.down.shape).toHaveLength(2);
    expect(sd15.modules.get(p)!.alpha).toBe(1);
    expect(describeLora(sd15).scales).toEqual([{ value: 0.125, count: 278 }]);
  });

  it('the old diffusers format maps to_out_lora to to_out.0 and CLIP to_q_lora to q_proj', async () => {
    const l = await load('sd15/attn-lora.diffusers-old.safetensors');
    expect(l.modules.has('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0')).toBe(true);
    expect(l.modules.has('text_encoder.text_model.encoder.layers.0.self_attn.q_proj')).toBe(true);
    expect(l.modules.has('text_encoder.text_model.encoder.layers.0.mlp.fc1')).toBe(true);
    for (const m of l.modules.values()) expect(m.alpha).toBe(m.down.shape[0]);
  });

  it('an SSD-1B LCM-LoRA is SSD-1B although every name exists in SDXL; a partial SDXL LoRA stays SDXL', async () => {
    expect((await load('ssd1b/lcm-lora.kohya.safetensors')).arch).toBe('ssd1b');
    // Keep only down_blocks.2 attention modules of transformer blocks 0 and 5 of the SDXL LCM fixture.
    const full = await load('sdxl/lcm-lora.kohya.safetensors');
    const keep = [...full.modules.keys()].filter((p) =>
      /down_blocks\.2\.attentions\.0\.transformer_blocks\.[05]\./.test(p),
    );
    const partial = { ...full, modules: new Map(keep.map((p) => [p, full.modules.get(p)!])) };
    const back = await decodeBytes(serializeLora(partial, { format: 'kohya' }));
    expect(back.arch).toBe('sdxl');
    // Only blocks 0–3 of each SSD-1B-deep attention: complete for SSD-1B, so SSD-1B.
    const ssdLike = [...full.modules.keys()].filter((p) =>
      /down_blocks\.2\.attentions\.\d\.transformer_blocks\.[0-3]\./.test(p),
    );
    const back2 = await decodeBytes(
      serializeLora({ ...full, modules: new Map(ssdLike.map((p) => [p, full.modules.get(p)!])) }, { format: 'kohya' }),
    );
    expect(back2.arch).toBe('ssd1b');
  });
});

describe('both kohya spellings resolve to the same module', () => {
  for (const arch of ['sd15', 'sdxl', 'ssd1b'] as const) {
    it(`${arch}: every UNet module, diffusers vs SGM spelling, and a file mixing both`, async () => {
      const layout = getLayout(arch, 'tiny');
      const unet = layout.modules.filter((m) => m.component === 'unet');
      const tensors = (spell: (i: number) => 0 | 1) =>
        unet.flatMap((m, i) => {
          const name = m.kohyaNames[spell(i)]!;
          const down = m.shape.length === 4 ? [2, m.shape[1]!, m.shape[2]!, m.shape[3]!] : [2, m.shape[1]!];
          const up = m.shape.length === 4 ? [m.shape[0]!, 2, 1, 1] : [m.shape[0]!, 2];
          return [
            { name: `${name}.lora_down.weight`, shape: down },
            { name: `${name}.lora_up.weight`, shape: up },
            { name: `${name}.alpha`, shape: [], values: [1 + (i % 5)] },
          ];
        });
      const a = await decodeBytes(makeFile(tensors(() => 0)));
      const b = await decodeBytes(makeFile(tensors(() => 1)));
      const c = await decodeBytes(makeFile(tensors((i) => (i % 2 ? 1 : 0))));
      expect(a.arch).toBe(arch);
      expect(a.modules.size).toBe(unet.length);
      expect(a.kohyaPaths).toBe('diffusers');
      expect(b.kohyaPaths).toBe('sgm');
      expect(c.kohyaPaths).toBe('mixed');
      expectSameLora(a, b);
      expectSameLora(a, c);
      expect([...a.modules.keys()]).toEqual(unet.map((m) => m.path));
    });
  }

  it('a file naming one module in both spellings is refused', async () => {
    const m = getLayout('sd15', 'tiny').byPath.get('unet.up_blocks.0.upsamplers.0.conv')!;
    const t = (n: string) => [
      { name: `${n}.lora_down.weight`, shape: [2, m.shape[1]!, 3, 3] },
      { name: `${n}.lora_up.weight`, shape: [m.shape[0]!, 2, 1, 1] },
    ];
    const e = await caught(() => decodeBytes(makeFile([...t(m.kohyaNames[0]!), ...t(m.kohyaNames[1]!)])));
    expect(e.code).toBe('FORMAT_MIXED');
    expect(e.message).toContain('appears twice');
    // The SGM spelling of this upsampler is output_blocks.2.1.conv (no attention in up_blocks.0 of SD1.5).
    expect(m.kohyaNames[1]).toBe('lora_unet_output_blocks_2_1_conv');
  });
});

describe('conversions round-trip', () => {
  const kohyaFiles = LORA_FIXTURES.filter((f) => f.format === 'kohya');
  for (const f of kohyaFiles) {
    it(`${f.file}: kohya → peft → kohya gives the same bytes`, async () => {
      const bytes = new Uint8Array(await readFile(fixture(f.file)));
      const a = await decodeBytes(bytes);
      const peft = serializeLora(a, { format: 'peft' });
      const b = await decodeBytes(peft);
      expect(b.format).toBe('peft');
      expectSameLora(a, b);
      const back = serializeLora(b, { format: 'kohya', kohyaPaths: f.kohyaPaths as 'diffusers' | 'sgm' });
      expect(Buffer.from(back).equals(Buffer.from(bytes))).toBe(true);
    });
  }

  it('peft → kohya → peft gives the same bytes (alphas survive through lora_adapter_metadata)', async () => {
    for (const rel of ['sd15/style-lora.peft.safetensors', 'sdxl/style-lora.peft.safetensors']) {
      const bytes = new Uint8Array(await readFile(fixture(rel)));
      const a = await decodeBytes(bytes);
      const back = serializeLora(await decodeBytes(serializeLora(a, { format: 'kohya', kohyaPaths: 'sgm' })), {
        format: 'peft',
      });
      expect(Buffer.from(back).equals(Buffer.from(bytes)), rel).toBe(true);
    }
  });

  it('non-uniform alphas survive peft (alpha_pattern) with the same deltas', async () => {
    const a = await load('sdxl/style-lora.kohya-sgm.safetensors');
    const modules = new Map(
      [...a.modules].map(([p, m], i) => [p, { ...m, alpha: i % 3 === 0 ? 0.3 : i % 3 === 1 ? 7 : m.alpha }]),
    );
    const mixed = { ...a, modules };
    const b = await decodeBytes(serializeLora(mixed, { format: 'peft', dtype: 'F16' }));
    const meta = JSON.parse(b.metadata.lora_adapter_metadata!);
    expect(Object.keys(meta['unet.alpha_pattern']).length).toBeGreaterThan(0);
    expect(meta['text_encoder_2.target_modules']).toHaveLength(192);
    for (const [p, m] of modules) {
      const o = b.modules.get(p)!;
      expect(o.alpha, p).toBe(m.alpha);
      const d1 = delta(m);
      const d2 = delta(o);
      for (let i = 0; i < d1.length; i += 7) expect(d2[i]).toBe(d1[i]);
    }
  });

  it('kohya alphas are stored in the factor dtype when exact, else in F32', async () => {
    const a = await load('sd15/style-lora.kohya.safetensors');
    const p = [...a.modules.keys()][0]!;
    const lora = { ...a, modules: new Map([[p, { ...a.modules.get(p)!, alpha: 0.3 }]]) };
    const file = await open(serializeLora(lora, { format: 'kohya' }));
    const alpha = file.tensors.find((t) => t.name.endsWith('.alpha'))!;
    expect(alpha.dtype).toBe('F32');
    expect(alpha.shape).toEqual([]);
    const plain = await open(new Uint8Array(await readFile(fixture('sd15/style-lora.kohya.safetensors'))));
    expect(plain.tensors.filter((t) => t.name.endsWith('.alpha')).every((t) => t.dtype === 'F16')).toBe(true);
    expect(requirePlain(await decodeLora(file)).modules.get(p)!.alpha).toBe(Math.fround(0.3));
  });

  it('converting to BF16 and F32 keeps the deltas within one rounding', async () => {
    const a = await load('sd15/lcm-lora.kohya.safetensors');
    const f32 = await decodeBytes(serializeLora(a, { format: 'peft', dtype: 'F32' }));
    expectSameLora(a, f32);
    expect(f32.dtype).toBe('F32');
    const bf16 = await decodeBytes(serializeLora(a, { format: 'kohya', dtype: 'BF16' }));
    expect(bf16.dtype).toBe('BF16');
    for (const [p, m] of a.modules) {
      const o = bf16.modules.get(p)!;
      for (let i = 0; i < m.down.data.length; i++) {
        expect(Math.abs(o.down.data[i]! - m.down.data[i]!)).toBeLessThanOrEqual(Math.abs(m.down.data[i]!) / 128);
      }
    }
  });
});

describe('alpha rules', () => {
  const m = getLayout('sd15', 'tiny').byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')!;
  const [out, inn] = m.shape as [number, number];
  const name = m.kohyaNames[0]!;

  it('kohya: missing alpha ⇒ rank; alpha 0 ⇒ rank (noted); any other value kept', async () => {
    const base = [
      { name: `${name}.lora_down.weight`, shape: [3, inn] },
      { name: `${name}.lora_up.weight`, shape: [out, 3] },
    ];
    const missing = await decodeBytes(makeFile(base));
    expect(missing.modules.get(m.path)!.alpha).toBe(3);
    expect(missing.notes.join(' ')).toMatch(/no alpha/);
    const zero = await decodeBytes(makeFile([...base, { name: `${name}.alpha`, shape: [], values: [0] }]));
    expect(zero.modules.get(m.path)!.alpha).toBe(3);
    expect(zero.notes.join(' ')).toMatch(/alpha 0/);
    const neg = await decodeBytes(makeFile([...base, { name: `${name}.alpha`, shape: [], values: [-1.5] }]));
    expect(neg.modules.get(m.path)!.alpha).toBe(-1.5);
    const one = await decodeBytes(
      makeFile([...base, { name: `${name}.alpha`, shape: [1], values: [16], dtype: 'F32' }]),
    );
    expect(one.modules.get(m.path)!.alpha).toBe(16);
    // Some converters store the alpha as an integer tensor (torch.tensor(8) is int64).
    const i64 = new Uint8Array(8);
    new DataView(i64.buffer).setBigInt64(0, 8n, true);
    const int = await decodeBytes(
      serializeSafetensors([
        ...base.map((t) => ({
          name: t.name,
          dtype: 'F32' as const,
          shape: t.shape,
          data: new Uint8Array(new Float32Array(t.shape.reduce((a, b) => a * b, 1)).buffer),
        })),
        { name: `${name}.alpha`, dtype: 'I64', shape: [], data: i64 },
      ]),
    );
    expect(int.modules.get(m.path)!.alpha).toBe(8);
  });

  it('kohya encoding writes a zero-scale module (alpha 0) as a zero up factor with alpha = rank', async () => {
    // A second module that changes something: a LoRA whose every module is zero is LORA_EMPTY, not a file.
    const live = getLayout('sd15', 'tiny').byPath.get(
      'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k',
    )!;
    const lora = {
      arch: 'sd15' as const,
      size: 'tiny' as const,
      metadata: {},
      modules: new Map([
        [
          m.path,
          {
            down: nd(new Float32Array(3 * inn).fill(0.5), [3, inn]),
            up: nd(new Float32Array(out * 3).fill(0.25), [out, 3]),
            alpha: 0,
          },
        ],
        [
          live.path,
          {
            down: nd(new Float32Array(2 * live.shape[1]!).fill(0.5), [2, live.shape[1]!]),
            up: nd(new Float32Array(live.shape[0]! * 2).fill(0.25), [live.shape[0]!, 2]),
            alpha: 2,
          },
        ],
      ]),
    };
    const onlyZero = { ...lora, modules: new Map([...lora.modules].slice(0, 1)) };
    expect(() => serializeLora(onlyZero, { format: 'kohya' })).toThrow(expect.objectContaining({ code: 'LORA_EMPTY' }));
    const back = (await decodeBytes(serializeLora(lora, { format: 'kohya' }))).modules.get(m.path)!;
    expect(back.alpha).toBe(3);
    expect(delta(back).every((x) => x === 0)).toBe(true);
    const peft = (await decodeBytes(serializeLora(lora, { format: 'peft' }))).modules.get(m.path)!;
    expect(peft.alpha).toBe(0);
  });

  const peftTensors = (stem: string, r: number) => [
    { name: `${stem}.lora_A.weight`, shape: [r, inn] },
    { name: `${stem}.lora_B.weight`, shape: [out, r] },
  ];
  const other = getLayout('sd15', 'tiny').byPath.get(
    'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k',
  )!;

  it('peft: lora_alpha, alpha_pattern (prefixed per component or not), rsLoRA, alpha tensors; else rank', async () => {
    const tensors = [...peftTensors(m.path, 4), ...peftTensors(other.path, 2)];
    const none = await decodeBytes(makeFile(tensors));
    expect(none.modules.get(m.path)!.alpha).toBe(4);
    expect(none.modules.get(other.path)!.alpha).toBe(2);
    const prefixed = await decodeBytes(
      makeFile(tensors, {
        lora_adapter_metadata: JSON.stringify({
          'unet.r': 4,
          'unet.lora_alpha': 8,
          'unet.alpha_pattern': { [other.localPath]: 1 },
        }),
      }),
    );
    expect(prefixed.modules.get(m.path)!.alpha).toBe(8);
    expect(prefixed.modules.get(other.path)!.alpha).toBe(1);
    const suffix = await decodeBytes(
      makeFile(tensors, {
        lora_adapter_metadata: JSON.stringify({ r: 4, lora_alpha: 6, alpha_pattern: { 'attn1.to_k': 3 } }),
      }),
    );
    expect(suffix.modules.get(m.path)!.alpha).toBe(6);
    expect(suffix.modules.get(other.path)!.alpha).toBe(3);
    const rs = await decodeBytes(
      makeFile(tensors, { lora_adapter_metadata: JSON.stringify({ lora_alpha: 2, use_rslora: true }) }),
    );
    expect(rs.modules.get(m.path)!.alpha).toBe(2 * Math.sqrt(4));
    const tensorAlpha = await decodeBytes(makeFile([...tensors, { name: `${m.path}.alpha`, shape: [], values: [5] }]));
    expect(tensorAlpha.modules.get(m.path)!.alpha).toBe(5);
  });

  it('peft: metadata that is not JSON, or has a non-numeric alpha, is FORMAT_METADATA_INVALID', async () => {
    const tensors = peftTensors(m.path, 4);
    for (const bad of [
      '{not json',
      '[1,2]',
      JSON.stringify({ lora_alpha: 'eight' }),
      JSON.stringify({ 'unet.alpha_pattern': { x: null } }),
    ]) {
      const e = await caught(() => decodeBytes(makeFile(tensors, { lora_adapter_metadata: bad })));
      expect(e.code, bad).toBe('FORMAT_METADATA_INVALID');
      expect(e.message).toContain('lora_adapter_metadata');
    }
  });
});

describe('plan and describe', () => {
  it('planLora reads no factor (only alphas) and describeLora summarises', async () => {
    const file = await open(
      new Uint8Array(await readFile(fixture('sdxl/style-lora.kohya-sgm.safetensors'))),
      'style.safetensors',
    );
    const reads: string[] = [];
    const spy = {
      ...file,
      name: file.name,
      tensors: file.tensors,
      metadata: file.metadata,
      readF32: (n: string) => {
        reads.push(n);
        return file.readF32(n);
      },
    };
    const plan = await planLora(spy);
    expect(reads.every((n) => n.endsWith('.alpha'))).toBe(true);
    const s = describeLora(plan);
    expect(s).toMatchObject({
      kind: 'lora',
      format: 'kohya',
      kohyaPaths: 'sgm',
      arch: 'sdxl',
      size: 'tiny',
      modules: 986,
      dtype: 'F16',
    });
    expect(s.byGroup).toEqual({ attention: 722, text_encoder: 264 });
    expect(s.byComponent).toEqual({ unet: 722, text_encoder: 72, text_encoder_2: 192 });
    expect(s.ranks).toEqual([{ value: 4, count: 986 }]);
    expect(s.alphas).toEqual([{ value: 2, count: 986 }]);
    const full = requirePlain(await decodeLora(file));
    expect(describeLora(full).parameters).toBe(s.parameters);
    expect(s.parameters).toBe([...full.modules.values()].reduce((n, m) => n + m.down.size + m.up.size, 0));
    const lcm = describeLora(await load('sdxl/lcm-lora.kohya.safetensors'));
    expect(lcm.lcmTargets).toEqual({ covered: 788, total: 788 });
  });

  it('describeLora shortens long kohya training metadata', async () => {
    const a = await load('sd15/style-lora.kohya.safetensors');
    const s = describeLora({ ...a, metadata: { ss_network_dim: '4', ss_tag_frequency: 'x'.repeat(5000), other: 'y' } });
    expect(s.training.ss_network_dim).toBe('4');
    expect(s.training.ss_tag_frequency!.length).toBeLessThan(200);
    expect(s.training.other).toBeUndefined();
  });
});

describe('encoding checks', () => {
  it('factors that overflow F16 raise LORA_DTYPE_OVERFLOW instead of becoming Inf', async () => {
    const m = getLayout('sd15', 'tiny').byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')!;
    const [out, inn] = m.shape as [number, number];
    const big = new Float32Array(out * 2).fill(1);
    big[3] = 1e6;
    const lora = {
      arch: 'sd15' as const,
      size: 'tiny' as const,
      metadata: {},
      modules: new Map([
        [m.path, { down: nd(new Float32Array(2 * inn).fill(1), [2, inn]), up: nd(big, [out, 2]), alpha: 2 }],
      ]),
    };
    const e = await caught(async () => serializeLora(lora, { format: 'kohya', dtype: 'F16' }));
    expect(e.code).toBe('LORA_DTYPE_OVERFLOW');
    expect(e.message).toContain('lora_up.weight');
    expect(serializeLora(lora, { format: 'kohya', dtype: 'BF16' }).length).toBeGreaterThan(0);
  });

  it('a module whose factors do not fit its layout module is LORA_SHAPE_MISMATCH; an unknown path LORA_UNMATCHED_MODULES', async () => {
    const m = getLayout('sd15', 'tiny').byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')!;
    const bad = {
      arch: 'sd15' as const,
      size: 'tiny' as const,
      metadata: {},
      modules: new Map([
        [
          m.path,
          {
            down: nd(new Float32Array(2 * 5), [2, 5]),
            up: nd(new Float32Array(m.shape[0]! * 2), [m.shape[0]!, 2]),
            alpha: 2,
          },
        ],
      ]),
    };
    expect(() => encodeLora(bad, { format: 'kohya' })).toThrow(
      expect.objectContaining({ code: 'LORA_SHAPE_MISMATCH' }),
    );
    const unknown = { ...bad, modules: new Map([['unet.nowhere.to_q', bad.modules.get(m.path)!]]) };
    expect(() => encodeLora(unknown, { format: 'peft' })).toThrow(
      expect.objectContaining({ code: 'LORA_UNMATCHED_MODULES' }),
    );
  });

  it('output key order follows the layout, whatever the order of the module map', async () => {
    const a = await load('sd15/style-lora.kohya.safetensors');
    const reversed = { ...a, modules: new Map([...a.modules].reverse()) };
    expect(
      Buffer.from(serializeLora(reversed, { format: 'kohya' })).equals(
        Buffer.from(serializeLora(a, { format: 'kohya' })),
      ),
    ).toBe(true);
  });
});
