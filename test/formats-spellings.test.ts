/**
 * The spellings of issue 12, generated in the real key structure: ComfyUI-saved LoRAs, the LyCORIS wrapper's
 * 'lycoris_' names, PEFT bias deltas (lora_B.bias) and kohya pivotal-tuning embeddings (bundle_emb.*). Each reads to
 * the same canonical LoRA as the kohya spelling of the same modules, and goes through inspect, merge and convert.
 */
import { describe, expect, it } from 'vitest';
import { syntheticLora, type LoraSpec } from '../src/fixtures/generate.js';
import { decodeLora, encodeLora, planLora, serializeLora } from '../src/formats/index.js';
import { mergeLoras } from '../src/lora/index.js';
import { getLayout } from '../src/layout/index.js';
import type { Arch, ModuleEntry } from '../src/layout/types.js';
import { contiguousValues } from '../src/lora/delta.js';
import { caught, encodedBytes, open } from './formats-helpers.js';
import { requirePlain } from '../src/lora/terms/index.js';

async function decodeSpec(arch: Arch, spec: LoraSpec, name = 'x.safetensors') {
  return requirePlain(await decodeLora(await open(encodedBytes(syntheticLora(arch, 'tiny', spec)), name)));
}

const base = { rank: 4, alpha: 4, dtype: 'F32' as const, seed: 7 };

describe('ComfyUI-saved LoRAs (diffusion_model.<LDM path>, text_encoders.clip_l/clip_g.transformer.<HF path>)', () => {
  for (const arch of ['sd15', 'sdxl'] as const) {
    it(`${arch}: every UNet and text-encoder module resolves to the kohya file's modules and values`, async () => {
      const spec = { ...base, targets: 'style' as const };
      const comfy = await decodeSpec(arch, { ...spec, format: 'comfyui' }, 'comfy.safetensors');
      const kohya = await decodeSpec(arch, { ...spec, format: 'kohya' });
      expect(comfy.format).toBe('comfyui');
      expect(comfy.arch).toBe(arch);
      expect([...comfy.modules.keys()]).toEqual([...kohya.modules.keys()]);
      expect(comfy.modules.size).toBeGreaterThan(0);
      expect([...comfy.modules.keys()].some((p) => p.startsWith('text_encoder.'))).toBe(true);
      if (arch === 'sdxl') expect([...comfy.modules.keys()].some((p) => p.startsWith('text_encoder_2.'))).toBe(true);
      for (const [p, m] of comfy.modules) {
        const k = kohya.modules.get(p)!;
        expect(m.alpha, p).toBe(k.alpha);
        expect(contiguousValues(m.up)).toEqual(contiguousValues(k.up));
        expect(contiguousValues(m.down)).toEqual(contiguousValues(k.down));
      }
    });
  }

  it('the saver writes no alpha: alpha = rank, said in the notes; a stored alpha is used', async () => {
    const plan = await planLora(
      await open(encodedBytes(syntheticLora('sd15', 'tiny', { ...base, targets: 'lcm', format: 'comfyui' })), 'c'),
    );
    const names = plan.modules.map((m) => m.downKey);
    expect(names.some((k) => k.startsWith('diffusion_model.input_blocks.'))).toBe(true);
    expect(plan.modules.every((m) => m.alphaKey === undefined && m.alpha === m.rank)).toBe(true);
    expect(plan.notes.join('\n')).toMatch(/no alpha/);
    const withAlpha = await planLora(
      await open(
        encodedBytes(syntheticLora('sd15', 'tiny', { ...base, alpha: 2, targets: 'lcm', format: 'comfyui' })),
        'c',
      ),
    );
    expect(withAlpha.modules.every((m) => m.alphaKey !== undefined && m.alpha === 2)).toBe(true);
  });

  it("ComfyUI's saver output with its .diff / .diff_b entries decodes: norms by the layout, module biases with their module", async () => {
    const bytes = encodedBytes(
      syntheticLora('sd15', 'tiny', { ...base, targets: 'lcm', format: 'comfyui', comfyDiffs: true }),
    );
    const l = await decodeLora(await open(bytes, 'comfy-diff.safetensors'));
    expect(l.norms?.size).toBe(4);
    expect([...l.modules.values()].filter((t) => t.bias !== undefined).length).toBe(2);
  });
});

describe("LyCORIS wrapper names ('lycoris_' + flattened diffusers UNet path, SimpleTuner)", () => {
  it('read like kohya names of the same modules', async () => {
    const spec = { ...base, alpha: 2, targets: 'lcm' as const };
    const ly = await decodeSpec('sdxl', { ...spec, format: 'lycoris' }, 'ly.safetensors');
    const kohya = await decodeSpec('sdxl', { ...spec, format: 'kohya' });
    expect(ly.format).toBe('lycoris');
    expect(ly.arch).toBe('sdxl');
    expect([...ly.modules.keys()]).toEqual([...kohya.modules.keys()]);
    for (const [p, m] of ly.modules) {
      expect(m.alpha).toBe(2);
      expect(contiguousValues(m.up)).toEqual(contiguousValues(kohya.modules.get(p)!.up));
    }
  });

  /** A kohya file of `arch` with every module renamed by `rename` (module entry → new stem), through the layout. */
  async function renamed(arch: Arch, rename: (e: ModuleEntry) => string) {
    const enc = syntheticLora(arch, 'tiny', { ...base, targets: 'style', format: 'kohya' });
    const layout = getLayout(arch, 'tiny');
    const tensors = enc.tensors.map((t) => {
      const dot = t.name.indexOf('.');
      const entry = layout.byKohyaName.get(t.name.slice(0, dot));
      if (!entry) throw new Error(`no module for ${t.name}`);
      return { ...t, name: rename(entry) + t.name.slice(dot) };
    });
    return requirePlain(await decodeLora(await open(encodedBytes({ ...enc, tensors }), 'ly.safetensors')));
  }

  const sameAsKohya = async (arch: Arch, ly: Awaited<ReturnType<typeof renamed>>) => {
    const kohya = await decodeSpec(arch, { ...base, targets: 'style', format: 'kohya' });
    expect(ly.format).toBe('lycoris');
    expect(ly.arch).toBe(arch);
    expect([...ly.modules.keys()]).toEqual([...kohya.modules.keys()]);
    for (const [p, m] of ly.modules) expect(contiguousValues(m.up)).toEqual(contiguousValues(kohya.modules.get(p)!.up));
  };

  it("text encoders as 'lycoris_te_' / 'lycoris_te1_' / 'lycoris_te2_' + HF path; the UNet by its LDM path", async () => {
    for (const arch of ['sd15', 'sdxl'] as const) {
      const ly = await renamed(arch, (e) =>
        e.component === 'unet'
          ? `lycoris_${e.singleFilePath.replace(/\./g, '_')}`
          : `lycoris_${arch === 'sd15' ? 'te' : e.component === 'text_encoder' ? 'te1' : 'te2'}_${e.localPath.replace(/\./g, '_')}`,
      );
      await sameAsKohya(arch, ly);
      expect([...ly.modules.keys()].some((p) => p.startsWith('text_encoder.'))).toBe(true);
      if (arch === 'sdxl') expect([...ly.modules.keys()].some((p) => p.startsWith('text_encoder_2.'))).toBe(true);
    }
  });

  it("the wrapper on a text encoder writes 'lycoris_' + HF path: the (first) text encoder", async () => {
    const ly = await renamed('sd15', (e) => `lycoris_${e.localPath.replace(/\./g, '_')}`);
    await sameAsKohya('sd15', ly);
    // SDXL's two encoders share HF paths; the bare name is the first one's (like a bare 'text_model.' PEFT path).
    const te1 = getLayout('sdxl', 'tiny').byAlias.get('lycoris_text_model_encoder_layers_0_self_attn_q_proj');
    expect(te1?.path).toBe('text_encoder.text_model.encoder.layers.0.self_attn.q_proj');
  });

  it('an unknown lycoris_ name is FORMAT_KEY_UNRESOLVED naming it, never "not a LoRA"', async () => {
    const enc = syntheticLora('sd15', 'tiny', { ...base, targets: 'lcm', format: 'lycoris' });
    const renamed = {
      ...enc,
      tensors: enc.tensors.map((t) => ({
        ...t,
        name: t.name.replace('lycoris_down_blocks_0_resnets_0_conv1', 'lycoris_nope_0'),
      })),
    };
    const e = await caught(async () => decodeLora(await open(encodedBytes(renamed), 'ly.safetensors')));
    expect(e.code).toBe('FORMAT_KEY_UNRESOLVED');
    expect(e.message).toContain('lycoris_nope_0');
  });
});

describe('PEFT bias deltas (lora_B.bias, lora_bias=True)', () => {
  const spec = { ...base, alpha: 8, targets: 'lcm' as const, format: 'peft' as const, bias: true };

  it('decode keeps them with the module; merge sums them exactly as Σ λ·(alpha/r)·bias', async () => {
    const a = await decodeSpec('sd15', spec, 'a.safetensors');
    const b = await decodeSpec('sd15', { ...spec, alpha: 2, seed: 9 }, 'b.safetensors');
    const biased = [...a.modules].filter(([, m]) => m.bias !== undefined);
    expect(biased.length).toBeGreaterThan(0);
    const layout = getLayout('sd15', 'tiny');
    for (const [p, m] of biased) expect(m.bias!.shape).toEqual([layout.byPath.get(p)!.shape[0]]);
    const { lora } = mergeLoras([a, b], [0.5, -1.5]);
    for (const [p, m] of biased) {
      const ra = m.down.shape[0]!;
      const mb = b.modules.get(p)!;
      const want = contiguousValues(m.bias!).map(
        (x, i) => 0.5 * (m.alpha / ra) * x - 1.5 * (mb.alpha / mb.down.shape[0]!) * contiguousValues(mb.bias!)[i]!,
      );
      const got = lora.modules.get(p)!;
      const scale = got.alpha / got.down.shape[0]!;
      const have = contiguousValues(got.bias!).map((x) => x * scale);
      for (let i = 0; i < want.length; i++) expect(have[i]).toBeCloseTo(want[i]!, 6);
    }
  });

  it('convert to PEFT writes lora_B.bias and reads back; kohya refuses instead of dropping them', async () => {
    const a = await decodeSpec('sd15', spec, 'a.safetensors');
    const back = requirePlain(await decodeLora(await open(serializeLora(a, { format: 'peft' }), 'back.safetensors')));
    for (const [p, m] of a.modules) {
      if (!m.bias) continue;
      expect(contiguousValues(back.modules.get(p)!.bias!)).toEqual(contiguousValues(m.bias));
    }
    expect(() => encodeLora(a, { format: 'kohya' })).toThrow(/lora_B\.bias|bias delta/);
    try {
      encodeLora(a, { format: 'kohya' });
    } catch (e) {
      expect((e as { code?: string }).code).toBe('FORMAT_CANNOT_ENCODE');
    }
  });

  it('inspect notes the bias deltas', async () => {
    const plan = await planLora(await open(encodedBytes(syntheticLora('sd15', 'tiny', spec)), 'a'));
    expect(plan.format).toBe('peft');
    expect(plan.notes.join('\n')).toMatch(/bias delta/);
  });
});

describe('kohya pivotal-tuning embeddings (bundle_emb.*)', () => {
  for (const arch of ['sd15', 'sdxl'] as const) {
    it(`${arch}: kept verbatim by decode, merge and convert, never FORMAT_KEY_UNRESOLVED`, async () => {
      const enc = syntheticLora(arch, 'tiny', { ...base, targets: 'style', format: 'kohya', embedding: 'sks' });
      const keys = enc.tensors.map((t) => t.name).filter((k) => k.startsWith('bundle_emb.'));
      expect(keys).toEqual(
        arch === 'sd15' ? ['bundle_emb.sks.string_to_param.*'] : ['bundle_emb.sks.clip_g', 'bundle_emb.sks.clip_l'],
      );
      const lora = requirePlain(await decodeLora(await open(encodedBytes(enc), 'emb.safetensors')));
      expect([...(lora.embeddings?.keys() ?? [])].sort()).toEqual(keys);
      const plan = await planLora(await open(encodedBytes(enc), 'emb.safetensors'));
      expect(plan.notes.join('\n')).toMatch(/embedding/);
      const { lora: merged } = mergeLoras([lora], [0.5]);
      expect(merged.embeddings).toEqual(lora.embeddings);
      for (const format of ['kohya', 'peft'] as const) {
        const back = requirePlain(await decodeLora(await open(serializeLora(merged, { format }), 'back.safetensors')));
        expect(back.embeddings).toEqual(lora.embeddings);
      }
    });
  }

  it('two inputs with one token of different values are refused by merge', async () => {
    const a = await decodeSpec('sd15', { ...base, targets: 'style', format: 'kohya', embedding: 'sks' });
    const b = await decodeSpec('sd15', { ...base, targets: 'style', format: 'kohya', embedding: 'sks', seed: 8 });
    expect(() => mergeLoras([a, b], [1, 1])).toThrow(/bundle_emb\.sks/);
    expect(mergeLoras([a, a], [1, 1]).lora.embeddings?.size).toBe(1);
  });

  it('a file of embeddings only is not a LoRA, and says it is a textual inversion', async () => {
    const enc = syntheticLora('sd15', 'tiny', { ...base, targets: 'style', format: 'kohya', embedding: 'sks' });
    enc.tensors.splice(0, enc.tensors.length, ...enc.tensors.filter((t) => t.name.startsWith('bundle_emb.')));
    const e = await caught(async () => decodeLora(await open(encodedBytes(enc), 'ti.safetensors')));
    expect(e.code).toBe('FORMAT_NOT_A_LORA');
    expect(e.message).toMatch(/textual-inversion/);
  });
});
