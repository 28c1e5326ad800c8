/**
 * The text encoders' other 2-D weights ComfyUI maps a LoRA onto: OpenCLIP-G's `text_projection` (stored transposed
 * in an SGM single file, a plain Linear in a diffusers folder) and both embedding tables (`token_embedding`,
 * `position_embedding`). Read in every spelling, merged, converted, fused into both kinds of base and verified;
 * the fused values are checked against an f64 computation made here from the LoRA file's own tensors.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { syntheticModules } from '../src/fixtures/generate.js';
import { encodeModules, type ModuleSource } from '../src/formats/encode.js';
import { loadLora, saveLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/fuse/index.js';
import { verifyFusion } from '../src/verify/index.js';
import { getLayout } from '../src/layout/index.js';
import { mergeLoras } from '../src/lora/index.js';
import { requirePlain } from '../src/lora/terms/index.js';
import { openSafetensors } from '../src/node/files.js';
import { writeSafetensors } from '../src/safetensors/index.js';
import { encodeFromF32 } from '../src/core/dtype.js';
import { caught, delta, fixture } from './formats-helpers.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-text-extras-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const SDXL_BASE = fixture('sdxl/base.safetensors');
const SDXL_DIR = fixture('sdxl/diffusers');
const SD15_BASE = fixture('sd15/base.safetensors');

/** The extra modules of a tiny layout (embeddings, text_projection), as synthetic F32 factors. */
function extras(arch: 'sd15' | 'sdxl', alpha: number, seed: number, only?: (p: string) => boolean): ModuleSource[] {
  return syntheticModules(arch, 'tiny', { rank: 3, alpha, targets: 'style-extras', seed }).filter(
    (m) => m.entry.extra !== undefined && (!only || only(m.entry.path)),
  );
}

async function write(name: string, modules: ModuleSource[], format: 'comfyui' | 'kohya' | 'peft'): Promise<string> {
  const p = path.join(tmp, name);
  const enc = encodeModules(modules, { format, dtype: 'F32' });
  await writeSafetensors(p, enc.tensors, { metadata: enc.metadata });
  return p;
}

async function tensors(p: string): Promise<Map<string, { shape: number[]; v: Float32Array }>> {
  const f = await openSafetensors(p);
  try {
    const m = new Map<string, { shape: number[]; v: Float32Array }>();
    for (const t of f.tensors) m.set(t.name, { shape: [...t.shape], v: await f.readF32(t.name) });
    return m;
  } finally {
    await f.close();
  }
}

/**
 * Δ [out, in] in f64 from a ComfyUI-spelled file's own tensors (`<name>.lora_up.weight` [out, r],
 * `<name>.lora_down.weight` [r, in], `<name>.alpha` or alpha = rank), independent of the decoder.
 */
function rawDelta(file: Map<string, { shape: number[]; v: Float32Array }>, name: string): Float64Array {
  const up = file.get(`${name}.lora_up.weight`)!;
  const down = file.get(`${name}.lora_down.weight`)!;
  const r = down.shape[0]!;
  const alpha = file.get(`${name}.alpha`)?.v[0] ?? r;
  const [out, inn] = [up.shape[0]!, down.shape[1]!];
  const d = new Float64Array(out * inn);
  for (let o = 0; o < out; o++)
    for (let k = 0; k < r; k++)
      for (let j = 0; j < inn; j++) d[o * inn + j]! += (alpha / r) * up.v[o * r + k]! * down.v[k * inn + j]!;
  return d;
}

/** max |got − want| / (|want| + 1e-3) over a tensor; want = base (+ transposed) w·Δ. */
function worst(
  base: Float32Array,
  got: Float32Array,
  d: Float64Array,
  w: number,
  rows: number,
  cols: number,
  transposed: boolean,
): number {
  let e = 0;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const dd = transposed ? d[j * rows + i]! : d[i * cols + j]!;
      const want = base[i * cols + j]! + w * dd;
      e = Math.max(e, Math.abs(got[i * cols + j]! - want) / (Math.abs(want) + 1e-3));
    }
  }
  return e;
}

describe('text_projection and embedding tables resolve in every spelling', () => {
  it('ComfyUI, kohya (lora_te2_text_projection) and PEFT names all give the same module', async () => {
    const proj = extras('sdxl', 2, 1, (p) => p === 'text_encoder_2.text_projection');
    const comfy = await loadLora(await write('proj-comfy.safetensors', proj, 'comfyui'));
    const kohya = await loadLora(await write('proj-kohya.safetensors', proj, 'kohya'));
    const peft = await loadLora(await write('proj-peft.safetensors', proj, 'peft'));
    const raw = await tensors(path.join(tmp, 'proj-kohya.safetensors'));
    expect([...raw.keys()].sort()).toEqual([
      'lora_te2_text_projection.alpha',
      'lora_te2_text_projection.lora_down.weight',
      'lora_te2_text_projection.lora_up.weight',
    ]);
    expect(await tensors(path.join(tmp, 'proj-peft.safetensors'))).toHaveProperty(
      'size',
      2, // text_encoder_2.text_projection.lora_A.weight / .lora_B.weight
    );
    const p = 'text_encoder_2.text_projection';
    const want = Array.from(delta(requirePlain(kohya).modules.get(p)!));
    for (const l of [comfy, kohya, peft]) {
      expect(l.arch).toBe('sdxl');
      expect([...l.modules.keys()]).toEqual([p]);
      expect(Array.from(delta(requirePlain(l).modules.get(p)!))).toEqual(want);
    }
    expect(comfy.format).toBe('comfyui');
  });

  it('embedding tables: ComfyUI names for both encoders; kohya output keeps them under those names and reads back', async () => {
    const emb = extras('sdxl', 3, 2, (p) => p.includes('.embeddings.'));
    const comfyPath = await write('emb-comfy.safetensors', emb, 'comfyui');
    const comfy = requirePlain(await loadLora(comfyPath));
    expect([...comfy.modules.keys()].sort()).toEqual([
      'text_encoder.text_model.embeddings.position_embedding',
      'text_encoder.text_model.embeddings.token_embedding',
      'text_encoder_2.text_model.embeddings.position_embedding',
      'text_encoder_2.text_model.embeddings.token_embedding',
    ]);
    // A kohya file of a style LoRA plus embeddings: the embeddings keep ComfyUI's names, the rest kohya's.
    const mixed = syntheticModules('sdxl', 'tiny', { rank: 3, alpha: 3, targets: 'style-extras', seed: 2 });
    const kohyaPath = await write('style-extras-kohya.safetensors', mixed, 'kohya');
    const keys = [...(await tensors(kohyaPath)).keys()];
    expect(keys).toContain('text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.lora_down.weight');
    expect(keys).toContain('lora_te2_text_projection.lora_up.weight');
    expect(keys.some((k) => k.startsWith('lora_te1_text_model_embeddings'))).toBe(false);
    const back = requirePlain(await loadLora(kohyaPath));
    expect(back.format).toBe('kohya');
    expect(back.modules.size).toBe(mixed.length);
    const tok = 'text_encoder.text_model.embeddings.token_embedding';
    expect(Array.from(delta(back.modules.get(tok)!))).toEqual(Array.from(delta(comfy.modules.get(tok)!)));
  });

  it('PEFT output refuses an embedding table (FORMAT_CANNOT_ENCODE), nothing written; text_projection converts', async () => {
    const emb = requirePlain(await loadLora(await write('emb-only.safetensors', extras('sd15', 3, 4), 'comfyui')));
    const out = path.join(tmp, 'emb-peft.safetensors');
    const e = await caught(() => saveLora(emb, out, { format: 'peft' }));
    expect(e.code).toBe('FORMAT_CANNOT_ENCODE');
    expect(e.message).toContain('text_encoder.text_model.embeddings.token_embedding');
    await expect(fs.stat(out)).rejects.toThrow();
    const proj = requirePlain(await loadLora(path.join(tmp, 'proj-comfy.safetensors')));
    const peftOut = path.join(tmp, 'proj-to-peft.safetensors');
    await saveLora(proj, peftOut, { format: 'peft' });
    expect([...(await tensors(peftOut)).keys()].sort()).toEqual([
      'text_encoder_2.text_projection.lora_A.weight',
      'text_encoder_2.text_projection.lora_B.weight',
    ]);
    const back = requirePlain(await loadLora(peftOut));
    const p = 'text_encoder_2.text_projection';
    const a = delta(back.modules.get(p)!);
    const b = delta(proj.modules.get(p)!);
    for (let i = 0; i < a.length; i++) expect(a[i]).toBeCloseTo(b[i]!, 12);
  });

  it('merge sums text_projection and embedding deltas exactly', async () => {
    const a = requirePlain(await loadLora(await write('m-a.safetensors', extras('sdxl', 2, 5), 'comfyui')));
    const b = requirePlain(await loadLora(await write('m-b.safetensors', extras('sdxl', 4, 6), 'kohya')));
    const m = mergeLoras([a, b], [0.5, -1.25]).lora;
    for (const p of ['text_encoder_2.text_projection', 'text_encoder.text_model.embeddings.position_embedding']) {
      const got = delta(m.modules.get(p)!);
      const da = delta(a.modules.get(p)!);
      const db = delta(b.modules.get(p)!);
      for (let i = 0; i < got.length; i++) expect(got[i]).toBeCloseTo(0.5 * da[i]! - 1.25 * db[i]!, 9);
    }
  });
});

describe('fusing text_projection and embedding tables', () => {
  const W = 0.8;

  it('SGM single file: text_projection gets Δᵀ (stored transposed), embeddings Δ; matches an f64 reference', async () => {
    const lora = await write('fuse-extras.safetensors', extras('sdxl', 2, 7), 'comfyui');
    const out = path.join(tmp, 'fused-extras.safetensors');
    const r = await fuseLoras(SDXL_BASE, [lora], [W], { out, dtype: 'F32' });
    expect(r.modulesFused).toBe(5);
    const [base, fused, file] = await Promise.all([tensors(SDXL_BASE), tensors(out), tensors(lora)]);
    const layout = getLayout('sdxl', 'tiny');
    const cases: [string, string, boolean][] = [
      ['text_encoders.clip_g.transformer.text_projection', 'conditioner.embedders.1.model.text_projection', true],
      [
        'text_encoders.clip_g.transformer.text_model.embeddings.token_embedding',
        'conditioner.embedders.1.model.token_embedding.weight',
        false,
      ],
      [
        'text_encoders.clip_g.transformer.text_model.embeddings.position_embedding',
        'conditioner.embedders.1.model.positional_embedding',
        false,
      ],
      [
        'text_encoders.clip_l.transformer.text_model.embeddings.token_embedding',
        'conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight',
        false,
      ],
    ];
    for (const [name, key, transposed] of cases) {
      const b = base.get(key)!;
      const f = fused.get(key)!;
      expect(f.shape).toEqual(b.shape);
      const d = rawDelta(file, name);
      expect(worst(b.v, f.v, d, W, b.shape[0]!, b.shape[1]!, transposed)).toBeLessThan(1e-5);
      // The update is really there, and only in its transposed form for text_projection.
      expect(worst(b.v, f.v, d, W, b.shape[0]!, b.shape[1]!, !transposed)).toBeGreaterThan(1e-2);
    }
    expect(layout.byPath.get('text_encoder_2.text_projection')!.singleFileTransposed).toBe(true);
    const v = await verifyFusion(out, SDXL_BASE, [lora], [W]);
    expect(v.ok).toBe(true);
    expect(v.modules.map((m) => m.path)).toContain('text_encoder_2.text_projection');
  });

  it('diffusers folder: text_projection.weight gets Δ as a plain Linear; verify passes', async () => {
    const lora = path.join(tmp, 'fuse-extras.safetensors');
    const out = path.join(tmp, 'fused-extras-dir');
    await fuseLoras(SDXL_DIR, [lora], [W], { out, dtype: 'F32' });
    const te2 = 'text_encoder_2/model.safetensors';
    const [base, fused, file] = await Promise.all([
      tensors(path.join(SDXL_DIR, te2)),
      tensors(path.join(out, te2)),
      tensors(lora),
    ]);
    for (const [name, key] of [
      ['text_encoders.clip_g.transformer.text_projection', 'text_projection.weight'],
      [
        'text_encoders.clip_g.transformer.text_model.embeddings.position_embedding',
        'text_model.embeddings.position_embedding.weight',
      ],
    ] as const) {
      const b = base.get(key)!;
      const f = fused.get(key)!;
      expect(worst(b.v, f.v, rawDelta(file, name), W, b.shape[0]!, b.shape[1]!, false)).toBeLessThan(1e-5);
    }
    expect((await verifyFusion(out, SDXL_DIR, [lora], [W])).ok).toBe(true);
  });

  it('verify fails on a single file whose text_projection got Δ untransposed', async () => {
    const lora = path.join(tmp, 'fuse-extras.safetensors');
    const good = await tensors(path.join(tmp, 'fused-extras.safetensors'));
    const base = await tensors(SDXL_BASE);
    const file = await tensors(lora);
    const key = 'conditioner.embedders.1.model.text_projection';
    const b = base.get(key)!;
    const d = rawDelta(file, 'text_encoders.clip_g.transformer.text_projection');
    const wrong = Float32Array.from(b.v, (x, i) => x + W * d[i]!);
    const bad = path.join(tmp, 'fused-wrong.safetensors');
    const src = await openSafetensors(SDXL_BASE);
    const order = src.tensors.map((t) => t.name);
    await src.close();
    await writeSafetensors(
      bad,
      order.map((name) => {
        const t = good.get(name)!;
        const v = name === key ? wrong : t.v;
        return { name, dtype: 'F32' as const, shape: t.shape, data: () => encodeFromF32('F32', v) };
      }),
    );
    const v = await verifyFusion(bad, SDXL_BASE, [lora], [W]);
    expect(v.ok).toBe(false);
    expect(v.modules.filter((m) => !m.ok).map((m) => m.path)).toEqual(['text_encoder_2.text_projection']);
  });

  it('SD1.5 single file: both embedding tables of CLIP-L', async () => {
    const lora = await write('sd15-emb.safetensors', extras('sd15', 1, 8), 'comfyui');
    const out = path.join(tmp, 'sd15-emb-fused.safetensors');
    const r = await fuseLoras(SD15_BASE, [lora], [W], { out, dtype: 'F32' });
    expect(r.modulesFused).toBe(2);
    const [base, fused, file] = await Promise.all([tensors(SD15_BASE), tensors(out), tensors(lora)]);
    const key = 'cond_stage_model.transformer.text_model.embeddings.position_embedding.weight';
    const b = base.get(key)!;
    const d = rawDelta(file, 'text_encoders.clip_l.transformer.text_model.embeddings.position_embedding');
    expect(worst(b.v, fused.get(key)!.v, d, W, b.shape[0]!, b.shape[1]!, false)).toBeLessThan(1e-5);
    expect((await verifyFusion(out, SD15_BASE, [lora], [W])).ok).toBe(true);
  });
});

describe("CLIP-L text_projection (ComfyUI's identity, absent from SD checkpoints)", () => {
  const zeroOrNot = async (zero: boolean): Promise<string> => {
    const mods = extras('sd15', 1, 9, (p) => p.endsWith('position_embedding'));
    const p = path.join(tmp, `clip-l-proj-${zero}.safetensors`);
    const enc = encodeModules(mods, { format: 'comfyui', dtype: 'F32' });
    const h = 12; // tiny SD1.5 CLIP-L width
    const v = new Float32Array(3 * h).fill(zero ? 0 : 0.01);
    for (const [suffix, shape] of [
      ['lora_up.weight', [h, 3]],
      ['lora_down.weight', [3, h]],
    ] as const) {
      enc.tensors.push({
        name: `text_encoders.clip_l.transformer.text_projection.${suffix}`,
        dtype: 'F32',
        shape: [...shape],
        data: () => encodeFromF32('F32', v),
      });
    }
    await writeSafetensors(p, enc.tensors, { metadata: enc.metadata });
    return p;
  };

  it('a zero update (what ComfyUI’s saver writes) is dropped with a note', async () => {
    const l = await loadLora(await zeroOrNot(true));
    expect([...l.modules.keys()]).toEqual(['text_encoder.text_model.embeddings.position_embedding']);
    expect(l.notes.join('\n')).toMatch(/text_projection.*dropped/);
  });

  it('a non-zero one is refused, naming the key', async () => {
    const file = await zeroOrNot(false);
    const e = await caught(() => loadLora(file));
    expect(e.code).toBe('FORMAT_KEY_UNRESOLVED');
    expect(e.message).toContain('text_encoders.clip_l.transformer.text_projection');
  });
});

describe('kinds that need the base rows on a transposed tensor', () => {
  // A DoRA on text_projection (OneTrainer trains lora_te2_text_projection; PEFT DoRA writes lora_magnitude_vector).
  // ComfyUI transposes the SGM tensor P = W0ᵀ on load and patches W0, so the DoRA norm runs over W0's rows; the fused
  // single file must hold (W0 + w·Δ(W0))ᵀ, and a diffusers folder W0 + w·Δ(W0). Expected values in f64 here.
  const h = 12; // tiny OpenCLIP-G width = projection width
  const ramp = (n: number, k: number): Float32Array =>
    Float32Array.from({ length: n }, (_, i) => (((i * 7 + k) % 13) - 6) / 100);
  const stem = 'text_encoder_2.text_projection';
  const f = (name: string, shape: number[], v: Float32Array) => ({
    name,
    dtype: 'F32' as const,
    shape,
    data: () => encodeFromF32('F32', v),
  });
  const A = ramp(2 * h, 1);
  const B = ramp(2 * h, 2);
  const m = Float32Array.from({ length: h }, (_, i) => 0.9 + i / 50);
  const W = 0.6;

  /** W0 + w·(m·V/‖V‖_row − W0), V = W0 + B·A (no config: alpha = r), W0 [proj, hidden] row-major. */
  function expected(w0: Float64Array): Float64Array {
    const out = new Float64Array(h * h);
    for (let o = 0; o < h; o++) {
      const v = new Float64Array(h);
      let n2 = 0;
      for (let i = 0; i < h; i++) {
        let d = 0;
        for (let k = 0; k < 2; k++) d += B[o * 2 + k]! * A[k * h + i]!;
        v[i] = w0[o * h + i]! + d;
        n2 += v[i]! ** 2;
      }
      for (let i = 0; i < h; i++)
        out[o * h + i] = w0[o * h + i]! + W * ((m[o]! * v[i]!) / Math.sqrt(n2) - w0[o * h + i]!);
    }
    return out;
  }

  it('a DoRA on text_projection fuses into an SGM single file (on W0 = Pᵀ, stored back transposed) as into a folder', async () => {
    const lora = path.join(tmp, 'dora-proj.safetensors');
    await writeSafetensors(lora, [
      f(`${stem}.lora_A.weight`, [2, h], A),
      f(`${stem}.lora_B.weight`, [h, 2], B),
      f(`${stem}.lora_magnitude_vector`, [h], m),
    ]);
    const out = path.join(tmp, 'dora-proj-fused.safetensors');
    const r = await fuseLoras(SDXL_BASE, [lora], [W], { out, dtype: 'F32' });
    expect(r.modulesFused).toBe(1);
    const key = 'conditioner.embedders.1.model.text_projection';
    const p0 = (await tensors(SDXL_BASE)).get(key)!.v; // P = W0ᵀ: [hidden, proj]
    const w0 = new Float64Array(h * h);
    for (let o = 0; o < h; o++) for (let i = 0; i < h; i++) w0[o * h + i] = p0[i * h + o]!;
    const want = expected(w0);
    const got = (await tensors(out)).get(key)!.v;
    let worst = 0;
    let change = 0;
    for (let o = 0; o < h; o++)
      for (let i = 0; i < h; i++) {
        worst = Math.max(worst, Math.abs(got[i * h + o]! - want[o * h + i]!));
        change = Math.max(change, Math.abs(want[o * h + i]! - w0[o * h + i]!));
      }
    expect(change).toBeGreaterThan(1e-3);
    expect(worst).toBeLessThan(1e-6);
    expect((await verifyFusion(out, SDXL_BASE, [lora], [W])).ok).toBe(true);

    // Through a merge method's dense path (TIES at density 1 on one input is that input): the same values.
    const viaTies = path.join(tmp, 'dora-proj-ties.safetensors');
    await fuseLoras(SDXL_BASE, [lora], [W], { out: viaTies, dtype: 'F32', method: 'ties' });
    const tied = (await tensors(viaTies)).get(key)!.v;
    for (let j = 0; j < h * h; j++) expect(Math.abs(tied[j]! - got[j]!)).toBeLessThan(1e-6);

    // The same module fused into the diffusers folder (same weights, Linear layout) gives the transpose (to f32 rounding).
    const dir = path.join(tmp, 'dora-proj-dir');
    await fuseLoras(SDXL_DIR, [lora], [W], { out: dir, dtype: 'F32' });
    const folder = (await tensors(path.join(dir, 'text_encoder_2/model.safetensors'))).get('text_projection.weight')!.v;
    let apart = 0;
    for (let o = 0; o < h; o++)
      for (let i = 0; i < h; i++) apart = Math.max(apart, Math.abs(folder[o * h + i]! - got[i * h + o]!));
    expect(apart).toBeLessThan(1e-6);
  });

  it('an OFT on text_projection fuses into an SGM single file as into a folder, transposed (was LORA_NEEDS_BASE)', async () => {
    // LyCORIS diag-OFT spelled the kohya way: blocks of 4 rows of the [proj, hidden] weight, no constraint (alpha 0).
    const lora = path.join(tmp, 'oft-proj.safetensors');
    await writeSafetensors(lora, [
      f('lora_te2_text_projection.oft_blocks', [3, 4, 4], ramp(48, 3)),
      f('lora_te2_text_projection.alpha', [], new Float32Array([0])),
    ]);
    const out = path.join(tmp, 'oft-proj-fused.safetensors');
    expect((await fuseLoras(SDXL_BASE, [lora], [W], { out, dtype: 'F32' })).modulesFused).toBe(1);
    const key = 'conditioner.embedders.1.model.text_projection';
    const p0 = (await tensors(SDXL_BASE)).get(key)!.v;
    const got = (await tensors(out)).get(key)!.v;
    const dir = path.join(tmp, 'oft-proj-dir');
    await fuseLoras(SDXL_DIR, [lora], [W], { out: dir, dtype: 'F32' });
    const folder = (await tensors(path.join(dir, 'text_encoder_2/model.safetensors'))).get('text_projection.weight')!.v;
    let apart = 0;
    let change = 0;
    for (let o = 0; o < h; o++)
      for (let i = 0; i < h; i++) {
        apart = Math.max(apart, Math.abs(folder[o * h + i]! - got[i * h + o]!));
        change = Math.max(change, Math.abs(got[i * h + o]! - p0[i * h + o]!));
      }
    expect(change).toBeGreaterThan(1e-4);
    expect(apart).toBeLessThan(1e-7);
    expect((await verifyFusion(out, SDXL_BASE, [lora], [W])).ok).toBe(true);
  });
});
