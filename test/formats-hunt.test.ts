/**
 * Spelling classes and stored values found by going through ComfyUI's model_lora_keys_clip / model_lora_keys_unet /
 * load_lora and diffusers' kohya conversion: both kohya prefixes of the first text encoder, the shapes and dtypes
 * an alpha comes in, alphas on some modules only, fp8 / bf16 / f16 / f64 factors, and other model families'
 * LoRAs named as such (docs/formats.md, "Spellings accepted").
 */
import { describe, expect, it } from 'vitest';
import { decodeToF32 } from '../src/core/dtype.js';
import type { DType } from '../src/core/tensor.js';
import { syntheticModules } from '../src/fixtures/generate.js';
import { encodeModules } from '../src/formats/encode.js';
import { getLayout } from '../src/layout/index.js';
import { serializeSafetensors } from '../src/safetensors/index.js';
import { caught, decodeBytes, delta, encodedBytes } from './formats-helpers.js';

/** A tensor with raw bytes (any dtype). */
const raw = (name: string, dtype: DType, shape: number[], data: Uint8Array) => ({ name, dtype, shape, data });
const f32 = (name: string, shape: number[], values: ArrayLike<number>) =>
  raw(name, 'F32', shape, new Uint8Array(Float32Array.from(values).buffer));
const bytes = (ts: ReturnType<typeof raw>[]) => serializeSafetensors(ts, {});
const ramp = (n: number, salt = 1): number[] => Array.from({ length: n }, (_, i) => (((i * 5 + salt) % 11) - 5) / 64);

/** Tiny SD1.5 CLIP-L width; tiny SDXL CLIP-L width. */
const SD15_H = 12;
const Q = 'text_model_encoder_layers_0_self_attn_q_proj';

describe("the first text encoder's two kohya prefixes (ComfyUI maps both onto CLIP-L, diffusers too)", () => {
  it("'lora_te1_' on SD1.5 and 'lora_te_' on SDXL resolve to the same modules and values as the own prefix", async () => {
    for (const [arch, own, other] of [
      ['sd15', 'lora_te', 'lora_te1'],
      ['sdxl', 'lora_te1', 'lora_te'],
    ] as const) {
      const mods = syntheticModules(arch, 'tiny', { rank: 2, alpha: 1, targets: 'style', seed: 3 });
      const canonical = await decodeBytes(encodedBytes(encodeModules(mods, { format: 'kohya', dtype: 'F32' })), {
        size: 'tiny',
      });
      const plain = encodeModules(mods, { format: 'kohya', dtype: 'F32' });
      const rename = (n: string): string => (n.startsWith(`${own}_`) ? `${other}_${n.slice(own.length + 1)}` : n);
      const enc = { ...plain, tensors: plain.tensors.map((t) => ({ ...t, name: rename(t.name) })) };
      expect(enc.tensors.some((t) => t.name.startsWith(`${other}_text_model`))).toBe(true);
      const l = await decodeBytes(encodedBytes(enc), { size: 'tiny' });
      expect(l.arch).toBe(arch);
      expect([...l.modules.keys()]).toEqual([...canonical.modules.keys()]);
      for (const [p, m] of canonical.modules)
        expect(Array.from(delta(l.modules.get(p)!))).toEqual(Array.from(delta(m)));
    }
  });

  it('a text-encoder-only LoRA goes to the family whose own prefix it uses', async () => {
    // CLIP-L is the same width in both families at full size; the prefix decides, as it does in kohya's tools.
    const te = getLayout('sd15').modules.filter((m) => m.component === 'text_encoder' && !m.extra);
    const file = (prefix: string) =>
      bytes(
        te.flatMap((m) => {
          const name = `${prefix}_${m.localPath.replace(/\./g, '_')}`;
          const [out, inn] = m.shape as [number, number];
          return [
            f32(`${name}.lora_down.weight`, [1, inn], ramp(inn)),
            f32(`${name}.lora_up.weight`, [out, 1], ramp(out)),
          ];
        }),
      );
    expect((await decodeBytes(file('lora_te'))).arch).toBe('sd15');
    expect((await decodeBytes(file('lora_te1'))).arch).toBe('sdxl');
  });
});

describe('alpha tensors as tools store them', () => {
  const down = f32(`lora_te_${Q}.lora_down.weight`, [2, SD15_H], ramp(2 * SD15_H));
  const up = f32(`lora_te_${Q}.lora_up.weight`, [SD15_H, 2], ramp(2 * SD15_H, 3));
  const alphaOf = async (a: ReturnType<typeof raw>): Promise<number> =>
    (await decodeBytes(bytes([down, up, a]), { size: 'tiny' })).modules.get(
      'text_encoder.text_model.encoder.layers.0.self_attn.q_proj',
    )!.alpha;
  const key = `lora_te_${Q}.alpha`;

  it('0-d, [1] and [1, 1] hold the same alpha; F32, F16, BF16, F64 and integer dtypes all read', async () => {
    expect(await alphaOf(f32(key, [], [3]))).toBe(3);
    expect(await alphaOf(f32(key, [1], [3]))).toBe(3);
    expect(await alphaOf(f32(key, [1, 1], [3]))).toBe(3);
    expect(await alphaOf(raw(key, 'F16', [], new Uint8Array(Uint16Array.of(0x4200).buffer)))).toBe(3);
    expect(await alphaOf(raw(key, 'BF16', [], new Uint8Array(Uint16Array.of(0x4040).buffer)))).toBe(3);
    expect(await alphaOf(raw(key, 'F64', [], new Uint8Array(Float64Array.of(3).buffer)))).toBe(3);
    expect(await alphaOf(raw(key, 'I64', [], new Uint8Array(BigInt64Array.of(3n).buffer)))).toBe(3);
    expect(await alphaOf(raw(key, 'I32', [], new Uint8Array(Int32Array.of(3).buffer)))).toBe(3);
  });

  it('more than one value is LORA_SHAPE_MISMATCH naming the alpha', async () => {
    const e = await caught(() => decodeBytes(bytes([down, up, f32(key, [2], [3, 3])]), { size: 'tiny' }));
    expect(e.code).toBe('LORA_SHAPE_MISMATCH');
    expect(e.message).toContain(key);
  });

  it('an alpha on some modules only: those keep theirs, the others get alpha = rank (per module)', async () => {
    const K = 'text_model_encoder_layers_0_self_attn_k_proj';
    const l = await decodeBytes(
      bytes([
        down,
        up,
        f32(key, [], [1]),
        f32(`lora_te_${K}.lora_down.weight`, [4, SD15_H], ramp(4 * SD15_H)),
        f32(`lora_te_${K}.lora_up.weight`, [SD15_H, 4], ramp(4 * SD15_H, 2)),
      ]),
      { size: 'tiny' },
    );
    expect(l.modules.get('text_encoder.text_model.encoder.layers.0.self_attn.q_proj')!.alpha).toBe(1);
    expect(l.modules.get('text_encoder.text_model.encoder.layers.0.self_attn.k_proj')!.alpha).toBe(4);
    expect(l.notes.join('\n')).toMatch(/1 module\(s\) have no alpha: alpha = rank/);
  });
});

describe('factor dtypes', () => {
  it.each(['F8_E4M3', 'F8_E5M2', 'BF16', 'F16', 'F64'] as const)(
    '%s factors decode to exactly their stored values',
    async (dtype) => {
      const size = dtype === 'F64' ? 8 : dtype.startsWith('F8') ? 1 : 2;
      const n = 2 * SD15_H;
      const stored = (salt: number) => {
        const b = new Uint8Array(n * size);
        for (let i = 0; i < b.length; i++) b[i] = ((i * 37 + salt * 11) % 251) & (dtype === 'F64' ? 0x3f : 0x3b); // finite values
        return b;
      };
      const d = stored(1);
      const u = stored(2);
      const l = await decodeBytes(
        bytes([
          raw(`lora_te_${Q}.lora_down.weight`, dtype, [2, SD15_H], d),
          raw(`lora_te_${Q}.lora_up.weight`, dtype, [SD15_H, 2], u),
        ]),
        { size: 'tiny' },
      );
      expect(l.dtype).toBe(dtype);
      const m = l.modules.get('text_encoder.text_model.encoder.layers.0.self_attn.q_proj')!;
      expect(Array.from(m.down.data)).toEqual(Array.from(decodeToF32(dtype, d, 'down')));
      expect(Array.from(m.up.data)).toEqual(Array.from(decodeToF32(dtype, u, 'up')));
    },
  );
});

describe("other model families' LoRAs are named as such", () => {
  it.each([
    ['Stable Cascade', ['lora_prior_unet_down_levels_1_0_attention_attn_to_q.lora_down.weight'], /Stable Cascade/],
    ['a DiT (diffusers transformer.)', ['transformer.transformer_blocks.0.attn.to_q.lora_A.weight'], /DiT/],
    ['Flux (ComfyUI)', ['diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight'], /Flux/],
    ['SD3 (OneTrainer)', ['lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight'], /SD3/],
  ])('%s', async (_what, names, hint) => {
    const ts = names.flatMap((n) => [
      f32(n, [2, 4], ramp(8)),
      f32(n.replace('lora_down', 'lora_up').replace('lora_A', 'lora_B'), [4, 2], ramp(8)),
    ]);
    const e = await caught(() => decodeBytes(bytes(ts)));
    expect(e.code).toMatch(/^FORMAT_(NOT_A_LORA|KEY_UNRESOLVED)$/);
    expect(e.message).toMatch(hint);
    expect(e.message).toContain('SD1.5, SDXL and SSD-1B');
  });
});

describe("ComfyUI's other factor suffixes on any module (weight_adapter/lora.py)", () => {
  const layout = getLayout('sd15', 'tiny');
  const ff = layout.byPath.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj')!;
  const q = layout.byPath.get('text_encoder.text_model.encoder.layers.0.self_attn.q_proj')!;
  const factors = (stem: string, [out, inn]: readonly number[], down: string, up: string) => [
    f32(`${stem}${down}`, [2, inn!], ramp(2 * inn!)),
    f32(`${stem}${up}`, [out!, 2], ramp(2 * out!, 4)),
  ];

  it("'<path>_lora.down/up.weight' (diffusers) and '<path>.lora_A/B' without '.weight' (mochi) read as the module", async () => {
    for (const [down, up] of [
      ['_lora.down.weight', '_lora.up.weight'],
      ['.lora_A', '.lora_B'],
    ] as const) {
      const l = await decodeBytes(
        bytes([
          ...factors(`unet.${ff.localPath}`, ff.shape, down, up),
          ...factors(`text_encoder.${q.localPath}`, q.shape, down, up),
        ]),
        { size: 'tiny' },
      );
      expect(l.arch).toBe('sd15');
      expect([...l.modules.keys()].sort()).toEqual([q.path, ff.path].sort());
      const canonical = await decodeBytes(
        bytes([
          ...factors(`unet.${ff.localPath}`, ff.shape, '.lora_A.weight', '.lora_B.weight'),
          ...factors(`text_encoder.${q.localPath}`, q.shape, '.lora_A.weight', '.lora_B.weight'),
        ]),
        { size: 'tiny' },
      );
      for (const [p, m] of canonical.modules)
        expect(Array.from(delta(l.modules.get(p)!))).toEqual(Array.from(delta(m)));
    }
  });
});
