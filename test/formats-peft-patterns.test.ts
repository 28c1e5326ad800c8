import { describe, expect, it } from 'vitest';
import { syntheticLora } from '../src/fixtures/generate.js';
import { PEFT_METADATA_KEY, peftPatternKey, planLora } from '../src/formats/index.js';
import { serializeSafetensors, type TensorData } from '../src/safetensors/index.js';
import { open } from './formats-helpers.js';

/** A tiny SD1.5 PEFT LoRA (diffusers spelling) at rank 4 whose adapter config in the metadata is replaced by `config`. */
function peftFile(config: Record<string, unknown> | string): Uint8Array {
  const enc = syntheticLora('sd15', 'tiny', {
    rank: 4,
    alpha: 4,
    targets: 'style',
    format: 'peft',
    dtype: 'F32',
  });
  return serializeSafetensors(
    enc.tensors.map((t) => ({ ...t, data: typeof t.data === 'function' ? (t.data as () => TensorData)() : t.data })),
    {
      metadata: {
        ...enc.metadata,
        [PEFT_METADATA_KEY]: typeof config === 'string' ? config : JSON.stringify(config),
      },
    },
  );
}

const Q0 = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q';
const Q1 = 'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q';
const K1 = 'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k';

async function alphas(config: Record<string, unknown> | string): Promise<Map<string, number>> {
  const plan = await planLora(await open(peftFile(config), 'peft.safetensors'));
  return new Map(plan.modules.map((m) => [m.entry.path, m.alpha]));
}

describe('PEFT alpha_pattern / rank_pattern: the first key in pattern order whose (.*\\.)?KEY$ matches', () => {
  it('peftPatternKey follows pattern order, not specificity', () => {
    expect(peftPatternKey(['attn1.to_q', Q0], Q0)).toBe('attn1.to_q');
    expect(peftPatternKey([Q0, 'attn1.to_q'], Q0)).toBe(Q0);
    // a key matches only whole dotted segments at its start: 'to_q' matches '….attn1.to_q', 'n1.to_q' does not
    expect(peftPatternKey(['n1.to_q'], Q0)).toBeUndefined();
    expect(peftPatternKey(['to_q'], Q0)).toBe('to_q');
    // keys are regular expressions
    expect(peftPatternKey(['down_blocks\\.1\\..*to_[qk]'], K1)).toBe('down_blocks\\.1\\..*to_[qk]');
    expect(peftPatternKey(['down_blocks\\.1\\..*to_[qk]'], Q0)).toBeUndefined();
    // a key that is no valid regular expression is compared literally
    expect(peftPatternKey(['attn1.to_q('], Q0)).toBeUndefined();
  });

  it('overlapping keys written sorted (as diffusers does): the short key listed first wins', async () => {
    const a = await alphas({
      'unet.r': 4,
      'unet.lora_alpha': 4,
      // sorted: 'attn1.to_q' < 'down_blocks…' — PEFT gives Q0 alpha 1, an "exact key first" reader 16
      'unet.alpha_pattern': { 'attn1.to_q': 1, [Q0]: 16 },
    });
    expect(a.get(`unet.${Q0}`)).toBe(1);
    expect(a.get(`unet.${Q1}`)).toBe(1);
    expect(a.get(`unet.${K1}`)).toBe(4);
  });

  it('the same keys in the other order: the full path listed first wins for its module only', async () => {
    const a = await alphas({
      'unet.r': 4,
      'unet.lora_alpha': 4,
      'unet.alpha_pattern': { [Q0]: 16, 'attn1.to_q': 1 },
    });
    expect(a.get(`unet.${Q0}`)).toBe(16);
    expect(a.get(`unet.${Q1}`)).toBe(1);
  });

  it('regex keys and unprefixed configs; text encoders use their own component config', async () => {
    const a = await alphas({
      r: 4,
      lora_alpha: 8,
      alpha_pattern: { 'down_blocks\\.1\\..*attn1\\.to_[qk]': 2 },
    });
    expect(a.get(`unet.${Q1}`)).toBe(2);
    expect(a.get(`unet.${K1}`)).toBe(2);
    expect(a.get(`unet.${Q0}`)).toBe(8);
  });

  it('rank_pattern is resolved the same way; a config rank that disagrees with the factors is noted', async () => {
    const plan = await planLora(
      await open(
        peftFile({ 'unet.r': 4, 'unet.lora_alpha': 4, 'unet.rank_pattern': { 'attn1.to_q': 8, [Q0]: 4 } }),
        'peft.safetensors',
      ),
    );
    // the factors are rank 4 everywhere; PEFT's rule gives attn1.to_q rank 8 (the first key), so every to_q
    // module of attn1 disagrees — the shapes win and the plan says so
    expect(plan.notes.join('\n')).toMatch(/rank_pattern/);
    const consistent = await planLora(
      await open(peftFile({ 'unet.r': 4, 'unet.lora_alpha': 4, 'unet.rank_pattern': { [Q0]: 4 } }), 'p.safetensors'),
    );
    expect(consistent.notes.join('\n')).not.toMatch(/rank_pattern/);
  });

  it('integer-like pattern keys keep the order of the JSON text (a JS object would list them first)', async () => {
    const O0 = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0';
    // PEFT tries 'to_out.0' first (text order); JSON.parse's object would try '0' first and give 3.
    const text = '{"unet.r": 4, "unet.lora_alpha": 4, "unet.alpha_pattern": {"to_out.0": 7, "0": 3}}';
    const a = await alphas(text);
    expect(a.get(`unet.${O0}`)).toBe(7);
    expect(a.get(`unet.${Q0}`)).toBe(4);
    // The other order: '0' is listed first and wins for every module whose name ends in '.0'.
    const b = await alphas('{"unet.r": 4, "unet.lora_alpha": 4, "unet.alpha_pattern": {"0": 3, "to_out.0": 7}}');
    expect(b.get(`unet.${O0}`)).toBe(3);
    // rank_pattern keeps its text order too (the note says the config's rank for to_out.0 disagrees).
    const plan = await planLora(
      await open(
        peftFile('{"unet.r": 4, "unet.lora_alpha": 4, "unet.rank_pattern": {"to_out.0": 4, "0": 9}}'),
        'p.safetensors',
      ),
    );
    expect(plan.notes.join('\n')).not.toMatch(/rank_pattern/);
  });
});
