/**
 * Norm-layer differences (ComfyUI's saver: `.diff` / `.diff_b` on GroupNorm and LayerNorm; LyCORIS train_norm:
 * `w_norm` / `b_norm`), generated in the real spellings from the layout's norm table: decode resolves them through
 * the layout, inspect lists them, merge sums them, convert keeps them where a loader reads them (refuses otherwise),
 * fuse adds w·diff to the norm's weight and bias, and verifyFusion checks them.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/main.js';
import { syntheticLora, type LoraSpec } from '../src/fixtures/generate.js';
import { decodeLora, encodeLora, planLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/fuse/index.js';
import { getLayout } from '../src/layout/index.js';
import type { Arch } from '../src/layout/types.js';
import { contiguousValues } from '../src/lora/delta.js';
import { mergeLoras, resizeLora, scaleLora } from '../src/lora/index.js';
import { requirePlain } from '../src/lora/terms/index.js';
import { openSafetensors } from '../src/node/files.js';
import { verifyFusion } from '../src/verify/index.js';
import { caught, encodedBytes, FIXTURES, open } from './formats-helpers.js';

const base = { rank: 4, alpha: 4, dtype: 'F32' as const, seed: 11 };
let tmp = '';
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-norms-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function bytesOf(arch: Arch, spec: Partial<LoraSpec> & Pick<LoraSpec, 'format' | 'targets'>): Uint8Array {
  return encodedBytes(syntheticLora(arch, 'tiny', { ...base, ...spec }));
}

async function decoded(bytes: Uint8Array, name = 'n.safetensors') {
  return decodeLora(await open(bytes, name));
}

describe('norm-layer differences: decode through the layout', () => {
  it('ComfyUI .diff / .diff_b on UNet GroupNorms and text-encoder LayerNorms resolve to the layout norms', async () => {
    const l = await decoded(bytesOf('sdxl', { format: 'comfyui', targets: 'style', comfyDiffs: true, norms: 8 }));
    expect(l.format).toBe('comfyui');
    const layout = getLayout('sdxl', 'tiny');
    const paths = [...(l.norms?.keys() ?? [])];
    expect(paths).toHaveLength(8);
    for (const p of paths) {
      const n = layout.normByPath.get(p)!;
      expect(n).toBeDefined();
      const d = l.norms!.get(p)!;
      expect(d.weight?.shape).toEqual([n.channels]);
      expect(d.bias?.shape).toEqual([n.channels]);
    }
    expect(paths.some((p) => p.startsWith('unet.'))).toBe(true);
    expect(paths.some((p) => p.startsWith('text_encoder'))).toBe(true);
    expect(l.notes.join('\n')).toMatch(/8 norm layer\(s\)/);
  });

  for (const format of ['kohya', 'lycoris'] as const) {
    it(`${format} spelling (both UNet paths for kohya) reads the same norms`, async () => {
      for (const kohyaPaths of format === 'kohya' ? (['diffusers', 'sgm'] as const) : ([undefined] as const)) {
        const l = await decoded(
          bytesOf('sd15', { format, targets: 'lcm', norms: 5, ...(kohyaPaths ? { kohyaPaths } : {}) }),
        );
        const comfy = await decoded(bytesOf('sd15', { format: 'comfyui', targets: 'lcm', norms: 5 }));
        expect([...(l.norms?.keys() ?? [])]).toHaveLength(5);
        for (const [p, d] of l.norms!) {
          if (!comfy.norms?.has(p)) continue;
          expect(contiguousValues(d.weight!)).toEqual(contiguousValues(comfy.norms.get(p)!.weight!));
        }
      }
    });
  }

  it('LyCORIS w_norm / b_norm are read as the same differences (no longer refused)', async () => {
    const enc = syntheticLora('sd15', 'tiny', { ...base, format: 'kohya', targets: 'lcm', norms: 3 });
    const renamed = {
      ...enc,
      tensors: enc.tensors.map((t) => ({
        ...t,
        name: t.name.replace(/\.diff$/, '.w_norm').replace(/\.diff_b$/, '.b_norm'),
      })),
    };
    const l = await decoded(encodedBytes(renamed));
    const ref = await decoded(encodedBytes(enc));
    expect([...(l.norms?.keys() ?? [])]).toEqual([...(ref.norms?.keys() ?? [])]);
    for (const [p, d] of l.norms!)
      expect(contiguousValues(d.bias!)).toEqual(contiguousValues(ref.norms!.get(p)!.bias!));
  });

  it('a difference of the wrong width is LORA_SHAPE_MISMATCH; an unknown norm name FORMAT_KEY_UNRESOLVED', async () => {
    const enc = syntheticLora('sd15', 'tiny', { ...base, format: 'comfyui', targets: 'lcm', norms: 2 });
    const widened = {
      ...enc,
      tensors: enc.tensors.map((t) =>
        t.name.endsWith('.diff')
          ? { ...t, shape: [(t.shape[0] ?? 0) + 1], data: new Uint8Array(4 * ((t.shape[0] ?? 0) + 1)) }
          : t,
      ),
    };
    const e = await caught(async () => decoded(encodedBytes(widened)));
    expect(e.code).toBe('LORA_SHAPE_MISMATCH');
    expect(e.details).toMatchObject({ input: true });
    const unknown = {
      ...enc,
      tensors: [
        ...enc.tensors,
        {
          name: 'diffusion_model.input_blocks.1.0.in_layers.9.diff',
          dtype: 'F32' as const,
          shape: [8],
          data: new Uint8Array(32),
        },
      ],
    };
    const u = await caught(async () => decoded(encodedBytes(unknown)));
    expect(u.code).toBe('FORMAT_KEY_UNRESOLVED');
    expect(u.message).toContain('diffusion_model.input_blocks.1.0.in_layers.9');
  });

  it('a file of norm differences only decodes (its architecture from the norm names and widths)', async () => {
    const enc = syntheticLora('sdxl', 'tiny', { ...base, format: 'comfyui', targets: 'lcm', norms: 4 });
    const only = { ...enc, tensors: enc.tensors.filter((t) => /\.diff(_b)?$/.test(t.name)) };
    const l = await decoded(encodedBytes(only));
    expect(l.arch).toBe('sdxl');
    expect(l.modules.size).toBe(0);
    expect(l.norms?.size).toBe(4);
  });
});

describe('norm-layer differences: merge, convert, fuse, verify, inspect', () => {
  it('merge sums them exactly (Σ λ·diff); convert keeps them as ComfyUI / kohya read them, PEFT refuses', async () => {
    const a = await decoded(bytesOf('sd15', { format: 'comfyui', targets: 'lcm', norms: 4, seed: 1 }));
    const b = await decoded(bytesOf('sd15', { format: 'comfyui', targets: 'lcm', norms: 4, seed: 2 }));
    const { lora } = mergeLoras([a, b], [0.5, -2]);
    expect(lora.norms?.size).toBe(4);
    for (const [p, d] of lora.norms!) {
      const x = contiguousValues(a.norms!.get(p)!.weight!);
      const y = contiguousValues(b.norms!.get(p)!.weight!);
      const got = contiguousValues(d.weight!);
      for (const [i, v] of got.entries()) expect(v).toBeCloseTo(0.5 * x[i]! - 2 * y[i]!, 7);
    }
    for (const kohyaPaths of ['diffusers', 'sgm'] as const) {
      const enc = encodeLora(lora, { format: 'kohya', kohyaPaths });
      const names = enc.tensors.map((t) => t.name).filter((n) => /\.diff(_b)?$/.test(n));
      expect(names).toHaveLength(8);
      expect(names.every((n) => n.startsWith('lora_unet_'))).toBe(true);
      const back = await decoded(encodedBytes(enc));
      expect([...(back.norms?.keys() ?? [])].sort()).toEqual([...lora.norms!.keys()].sort());
    }
    const e = await caught(async () => encodeLora(lora, { format: 'peft' }));
    expect(e.code).toBe('FORMAT_CANNOT_ENCODE');
    expect(e.message).toMatch(/norm layer 'unet\./);
  });

  it('scaleLora scales them (s·diff); resizeLora keeps them as they are', async () => {
    const a = await decoded(bytesOf('sd15', { format: 'comfyui', targets: 'lcm', norms: 3 }));
    const plain = requirePlain(a);
    const scaled = scaleLora(plain, -0.5);
    for (const [p, d] of scaled.norms!) {
      const x = contiguousValues(a.norms!.get(p)!.bias!);
      for (const [i, v] of contiguousValues(d.bias!).entries()) expect(v).toBe(Math.fround(-0.5 * x[i]!));
    }
    const { lora: resized } = resizeLora(plain, 2);
    expect([...resized.norms!.keys()]).toEqual([...a.norms!.keys()]);
  });

  it("kohya output keeps a text-encoder norm difference under ComfyUI's name (no kohya name a loader reads)", async () => {
    const l = await decoded(bytesOf('sdxl', { format: 'comfyui', targets: 'style', norms: 8 }));
    expect([...l.norms!.keys()].some((p) => p.startsWith('text_encoder'))).toBe(true);
    const enc = encodeLora(l, { format: 'kohya' });
    const te = enc.tensors.map((t) => t.name).filter((n) => /\.diff(_b)?$/.test(n) && !n.startsWith('lora_unet_'));
    expect(te.length).toBeGreaterThan(0);
    expect(te.every((n) => n.startsWith('text_encoders.clip_'))).toBe(true);
    const back = await decoded(encodedBytes(enc));
    expect(back.format).toBe('kohya');
    expect([...(back.norms?.keys() ?? [])].sort()).toEqual([...l.norms!.keys()].sort());
  });

  it('fuse adds w·diff to the norm weight and bias of a single-file base; verifyFusion checks them', async () => {
    const loraPath = path.join(tmp, 'comfy-norms.safetensors');
    await fs.writeFile(loraPath, bytesOf('sd15', { format: 'comfyui', targets: 'lcm', norms: 6, comfyDiffs: true }));
    const lora = await decoded(await fs.readFile(loraPath));
    const basePath = path.join(FIXTURES, 'sd15', 'base.safetensors');
    const out = path.join(tmp, 'fused.safetensors');
    const W = 0.75;
    const report = await fuseLoras(basePath, [loraPath], [W], { out, dtype: 'F32' });
    expect(report.modulesFused).toBe(lora.modules.size + lora.norms!.size);
    const layout = getLayout('sd15', 'tiny');
    const [b, f] = [await openSafetensors(basePath), await openSafetensors(out)];
    try {
      for (const [p, d] of lora.norms!) {
        const n = layout.normByPath.get(p)!;
        for (const [part, delta] of [
          [n.weight, d.weight],
          [n.bias, d.bias],
        ] as const) {
          const key = part!.singleFileKey;
          const w0 = await b.readF32(key);
          const w1 = await f.readF32(key);
          const dv = contiguousValues(delta!);
          for (const [i, v] of w1.entries()) expect(v).toBeCloseTo(Math.fround(w0[i]! + W * dv[i]!), 6);
        }
      }
    } finally {
      await b.close();
      await f.close();
    }
    const ok = await verifyFusion(out, basePath, [loraPath], [W]);
    expect(ok.ok).toBe(true);
    expect(ok.modules.filter((m) => m.group === 'norm')).toHaveLength(2 * lora.norms!.size);
    // A fused file whose norms were not changed fails the check (the norm targets are really compared).
    const wrong = await verifyFusion(out, basePath, [loraPath], [2 * W]);
    expect(wrong.modules.filter((m) => m.group === 'norm' && !m.ok).length).toBeGreaterThan(0);
  });

  it('inspect lists the norm differences; a LoRA with them goes through the CLI merge and fuse', async () => {
    const loraPath = path.join(tmp, 'inspect-norms.safetensors');
    await fs.writeFile(loraPath, bytesOf('sd15', { format: 'comfyui', targets: 'lcm', norms: 3 }));
    let out = '';
    const io = { out: (s: string) => void (out += s), err: () => undefined, isTTY: false, cwd: tmp };
    expect(await main(['inspect', loraPath], io)).toBe(0);
    expect(out).toMatch(/norms: +3 norm layer\(s\) changed \(unet 3\)/);
    // --json: the norms are first-class entries of the summary, not only notes.
    out = '';
    expect(await main(['inspect', loraPath, '--json', '--summary'], io)).toBe(0);
    const json = JSON.parse(out) as { lora: { norms: { path: string; weight: boolean; bias: boolean }[] } };
    const planned = await planLora(await open(await fs.readFile(loraPath), 'x.safetensors'));
    expect(json.lora.norms.map((n) => n.path)).toEqual(planned.norms.map((n) => n.entry.path));
    expect(json.lora.norms.every((n) => n.weight)).toBe(true);
    out = '';
    const merged = path.join(tmp, 'm.safetensors');
    expect(await main(['merge', `${loraPath}:0.5`, '-o', merged, '-q'], io)).toBe(0);
    expect((await decoded(await fs.readFile(merged))).norms?.size).toBe(3);
    const fused = path.join(tmp, 'cli-fused.safetensors');
    const basePath = path.join(FIXTURES, 'sd15', 'base.safetensors');
    expect(await main(['fuse', '--base', basePath, `${loraPath}:0.5`, '-o', fused, '-q'], io)).toBe(0);
    const plan = await planLora(await open(await fs.readFile(loraPath), 'x.safetensors'));
    expect(plan.norms.map((n) => n.entry.path)).toEqual([
      ...(await decoded(await fs.readFile(loraPath))).norms!.keys(),
    ]);
  });
});
