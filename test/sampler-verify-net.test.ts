/**
 * The verification network (src/verify/network.ts): its modules, reading them from every checkpoint naming, the
 * runtime LoRA path against dense weights built here, and the end-to-end check of real fusions of the fixtures
 * (LCM-LoRA ×1.0 + style LoRA ×0.8) — including mutations that must make the check fail.
 *
 * Tolerances. The fused weights are W′ = round(W + Σ wᵢΔᵢ) in the output dtype; the runtime network computes
 * W·x + Σ wᵢsᵢ·upᵢ(downᵢx) in f64 from the same W. So the only legitimate difference is that one rounding, and
 * checkFusedSampling measures what it costs (the "floor": the same runtime network with the LoRA-touched weights
 * moved by random sub-half-ulp amounts). Measured on these fixtures (8×8 latent, 4 steps, seed 0): the fused/floor
 * ratio is 0.8–1.2 for F32, F16 and BF16, so ratio ≤ 4 has ample margin. For F32 the floor is ~5e-8 rms on latents
 * of rms ~0.7, while a 0.5-instead-of-0.8 weight moves them by ~1e-3 and a wrong module mapping by 5e-4 or more:
 * ~10⁴ times the floor. For F16 (the fixtures' storage) the floor is ~5e-4 — the fixtures' deltas are only ~10×
 * F16's resolution — so the overall difference sees a whole misplaced block (8–10× floor) but a weight of 0.5
 * instead of 0.8 only at ~2×; the per-LoRA effect fit sees it at 5–10 standard errors.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArchError, ArgumentError, LoraError, SamplerError } from '../src/core/errors.js';
import { loadLora, type LoadedLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/fuse/index.js';
import { openSafetensors } from '../src/node/files.js';
import { contiguousValues } from '../src/lora/delta.js';
import type { Lora, LoraModule } from '../src/lora/types.js';
import { LCMScheduler, sample } from '../src/sampler/index.js';
import {
  checkFusedSampling,
  compareVerifyNets,
  loadVerifyNet,
  verifyDenoiser,
  verifyNetFromWeights,
  verifyNetSpec,
  withRuntimeLoras,
  withoutRuntimeLoras,
  type VerifyNet,
} from '../src/verify/index.js';
import type { SafetensorsFile } from '../src/safetensors/read.js';
import { requirePlain } from '../src/lora/terms/index.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
const fx = (...p: string[]): string => path.join(FIXTURES, ...p);
const STYLE: Record<'sd15' | 'sdxl', string> = {
  sd15: 'style-lora.kohya.safetensors',
  sdxl: 'style-lora.kohya-sgm.safetensors',
};

async function withFile<T>(p: string, f: (file: SafetensorsFile) => Promise<T>): Promise<T> {
  const file = await openSafetensors(p);
  try {
    return await f(file);
  } finally {
    await file.close();
  }
}

const loadNet = (p: string): Promise<VerifyNet> => withFile(p, (f) => loadVerifyNet(f));

/** Dense W + Σ w·(alpha/r)·up·down per layer, summed in f64 and rounded once to f32 (independent of the fuser). */
function denseFused(base: VerifyNet, loras: readonly Lora[], weights: readonly number[]): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [p, layer] of base.layers) {
    const { out: o, in: n } = layer.module;
    const acc = Float64Array.from(layer.weight);
    loras.forEach((lora, li) => {
      const m = lora.modules.get(p);
      if (!m) return;
      const r = m.down.shape[0]!;
      const up = contiguousValues(m.up);
      const down = contiguousValues(m.down);
      const c = weights[li]! * (m.alpha / r);
      for (let i = 0; i < o; i++) {
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let a = 0; a < r; a++) s += up[i * r + a]! * down[a * n + j]!;
          acc[i * n + j] = acc[i * n + j]! + c * s;
        }
      }
    });
    out.set(p, Float32Array.from(acc));
  }
  return out;
}

/** A LoRA whose modules are renamed (a simulated key-mapping bug); null drops the module. */
function remap(lora: Lora, f: (p: string) => string | null): Lora {
  const modules = new Map<string, LoraModule>();
  for (const [p, m] of lora.modules) {
    const q = f(p);
    if (q !== null) modules.set(q, m);
  }
  return { ...lora, modules };
}

const swapQK = (p: string): string =>
  p.endsWith('.attn1.to_q') ? p.replace(/to_q$/, 'to_k') : p.endsWith('.attn1.to_k') ? p.replace(/to_k$/, 'to_q') : p;

describe('verifyNetSpec', () => {
  it('uses linear modules of the tiny layouts that both fixture LoRAs touch', async () => {
    for (const arch of ['sd15', 'sdxl'] as const) {
      const spec = verifyNetSpec(arch);
      expect(spec.blocks).toHaveLength(2);
      expect(spec.channels).toBe(32);
      expect(spec.contextDim).toBe(arch === 'sd15' ? 12 : 20);
      expect(spec.textLayers).toEqual(
        arch === 'sd15'
          ? ['text_encoder.text_model.encoder.layers.11']
          : ['text_encoder.text_model.encoder.layers.11', 'text_encoder_2.text_model.encoder.layers.31'],
      );
      expect(spec.modules).toHaveLength(1 + 20 + 6 * spec.textLayers.length);
      const lcm = requirePlain(await loadLora(fx(arch, 'lcm-lora.kohya.safetensors')));
      const style = requirePlain(await loadLora(fx(arch, STYLE[arch])));
      for (const m of spec.modules) {
        if (m.component === 'unet') expect(lcm.modules.has(m.path), m.path).toBe(true);
        if (m.component === 'unet' && m.path !== spec.timeProjection)
          expect(style.modules.has(m.path), m.path).toBe(true);
        if (m.component !== 'unet') expect(style.modules.has(m.path), m.path).toBe(true);
      }
    }
  });

  it('can leave the text encoders out or pick blocks, and rejects blocks the layout lacks', () => {
    const spec = verifyNetSpec('sd15', 'tiny', {
      textEncoders: false,
      blocks: ['unet.mid_block.attentions.0.transformer_blocks.0'],
    });
    expect(spec.textLayers).toEqual([]);
    expect(spec.modules.map((m) => m.path)).toContain('unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2');
    expect(() =>
      verifyNetSpec('sd15', 'tiny', { blocks: ['unet.down_blocks.3.attentions.0.transformer_blocks.0'] }),
    ).toThrow(expect.objectContaining({ code: 'ARCH_LAYOUT_INVALID' }));
  });
});

describe('loadVerifyNet', () => {
  it('reads the same weights from a single file, a lone diffusers UNet and a diffusers folder (OpenCLIP-G rows)', async () => {
    for (const arch of ['sd15', 'sdxl'] as const) {
      const single = await loadNet(fx(arch, 'base.safetensors'));
      expect(single.dtype).toBe('F16');
      const dir = fx(arch, 'diffusers');
      const files: Record<string, SafetensorsFile> = {};
      try {
        files.unet = await openSafetensors(path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors'));
        files.text_encoder = await openSafetensors(path.join(dir, 'text_encoder', 'model.safetensors'));
        if (arch === 'sdxl')
          files.text_encoder_2 = await openSafetensors(path.join(dir, 'text_encoder_2', 'model.safetensors'));
        const folder = await loadVerifyNet(files);
        const unetOnly = await loadVerifyNet(files.unet);
        expect(unetOnly.spec.textLayers).toEqual([]);
        for (const [p, layer] of single.layers) {
          expect(folder.layers.get(p)!.weight, p).toEqual(layer.weight);
          if (unetOnly.layers.has(p)) expect(unetOnly.layers.get(p)!.weight, p).toEqual(layer.weight);
        }
        // Reading q/k/v of OpenCLIP-G from the wrong rows of in_proj_weight would differ from the folder's q_proj.
        if (arch === 'sdxl') {
          const q = single.layers.get('text_encoder_2.text_model.encoder.layers.31.self_attn.q_proj')!.weight;
          const k = single.layers.get('text_encoder_2.text_model.encoder.layers.31.self_attn.k_proj')!.weight;
          expect(q).not.toEqual(k);
        }
      } finally {
        for (const f of Object.values(files)) await f.close();
      }
    }
    const unet = await loadNet(fx('sd15', 'unet.safetensors'));
    expect(unet.spec.textLayers).toEqual([]);
  });

  it('refuses a spec for another architecture or one that needs a missing text encoder', async () => {
    await withFile(fx('sd15', 'base.safetensors'), async (f) => {
      await expect(loadVerifyNet(f, { spec: verifyNetSpec('sdxl') })).rejects.toThrow(ArchError);
    });
    await withFile(fx('sd15', 'unet.safetensors'), async (f) => {
      await expect(loadVerifyNet(f, { spec: verifyNetSpec('sd15') })).rejects.toThrow(
        expect.objectContaining({ code: 'ARCH_MISMATCH' }),
      );
    });
  });
});

describe('runtime LoRA network against dense weights built in memory', () => {
  let base: VerifyNet;
  let lcm: Omit<LoadedLora, 'modules'> & Lora;
  let style: Omit<LoadedLora, 'modules'> & Lora;
  beforeAll(async () => {
    base = await loadNet(fx('sd15', 'base.safetensors'));
    lcm = requirePlain(await loadLora(fx('sd15', 'lcm-lora.kohya.safetensors')));
    style = requirePlain(await loadLora(fx('sd15', STYLE.sd15)));
  });

  it('the denoiser is deterministic, finite, and its ε gives back x̂₀ for every prediction type', () => {
    const net = withRuntimeLoras(base, [lcm, style], [1, 0.8]);
    const eps = sample(verifyDenoiser(net), { steps: 4, seed: 3, shape: [1, 4, 8, 8] });
    const again = sample(verifyDenoiser(net), { steps: 4, seed: 3, shape: [1, 4, 8, 8] });
    expect(again.latent).toEqual(eps.latent);
    expect(eps.latent.every(Number.isFinite)).toBe(true);
    expect(Math.max(...eps.latent.map(Math.abs))).toBeLessThan(1.01); // x̂₀ is a tanh (c_skip·x_t at t = 259 is ~1e-7)
    for (const predictionType of ['sample', 'v_prediction'] as const) {
      const scheduler = new LCMScheduler({ predictionType });
      const other = sample(verifyDenoiser(net, { scheduler }), { steps: 4, seed: 3, shape: [1, 4, 8, 8], scheduler });
      for (let i = 0; i < eps.latent.length; i++) expect(other.latent[i]).toBeCloseTo(eps.latent[i]!, 10);
    }
    const d = verifyDenoiser(net);
    expect(() => d(new Float64Array(10), 999, undefined, { stepIndex: 0 })).toThrow(SamplerError);
  });

  it('base + runtime LoRAs samples like the dense W + Δ (f32), and a wrong weight or mapping does not', () => {
    const runtime = withRuntimeLoras(base, [lcm, style], [1, 0.8]);
    const dense = verifyNetFromWeights(base.spec, denseFused(base, [lcm, style], [1, 0.8]));
    const check = checkFusedSampling(dense, runtime);
    expect(check.ok).toBe(true);
    expect(check.conclusive).toBe(true);
    expect(check.ratio).toBeLessThanOrEqual(4);
    expect(check.comparison.maxAbsDiff).toBeLessThan(5e-6);
    for (const e of check.effects) expect(Math.abs(e.effect - 1)).toBeLessThan(1e-3);
    // The LoRAs move the sample by ~3e-3 rms; the check is meaningless unless that is far above the floor.
    expect(check.signal).toBeGreaterThan(1000 * check.floor);

    const wrongWeight = checkFusedSampling(
      verifyNetFromWeights(base.spec, denseFused(base, [lcm, style], [1, 0.5])),
      runtime,
    );
    expect(wrongWeight.ok).toBe(false);
    expect(wrongWeight.difference).toBeGreaterThan(1000 * check.difference);
    expect(wrongWeight.effects[1]!.effect).toBeCloseTo(0.5 / 0.8, 2);
    expect(wrongWeight.effects[0]!.effect).toBeCloseTo(1, 2);

    const wrongMapping = checkFusedSampling(
      verifyNetFromWeights(base.spec, denseFused(base, [remap(lcm, swapQK), remap(style, swapQK)], [1, 0.8])),
      runtime,
    );
    expect(wrongMapping.ok).toBe(false);
    expect(wrongMapping.difference).toBeGreaterThan(1000 * check.difference);
  });

  it('block weights and zero weights act like the fuser would apply them', () => {
    const blocks = { weight: 0.8, blocks: { BASE: 0, IN07: 0.5 } };
    const runtime = withRuntimeLoras(base, [lcm, style], [1, blocks]);
    const layerWeight = (p: string): number =>
      p.startsWith('text_encoder') ? 0 : p.includes('down_blocks.2.attentions.0') ? 0.4 : 0.8;
    const dense = new Map<string, Float32Array>();
    for (const [p] of base.layers)
      dense.set(
        p,
        denseFused({ ...base, layers: new Map([[p, base.layers.get(p)!]]) }, [lcm, style], [1, layerWeight(p)]).get(p)!,
      );
    expect(compareVerifyNets(verifyNetFromWeights(base.spec, dense), runtime).maxAbsDiff).toBeLessThan(5e-6);
    expect(
      compareVerifyNets(withRuntimeLoras(base, [lcm, style], [0, 0]), withoutRuntimeLoras(runtime)).maxAbsDiff,
    ).toBe(0);
  });

  it('rejects weights that do not match the LoRAs and factors that do not fit a layer', () => {
    expect(() => withRuntimeLoras(base, [lcm, style], [1])).toThrow(ArgumentError);
    expect(() => withRuntimeLoras(base, [lcm], [Number.NaN])).toThrow(expect.objectContaining({ code: 'ARG_INVALID' }));
    const bad = remap(lcm, (p) =>
      p.endsWith('attn2.to_k') ? p.replace(/to_k$/, 'to_q') : p.endsWith('attn2.to_q') ? null : p,
    );
    expect(() => withRuntimeLoras(base, [bad], [1])).toThrow(expect.objectContaining({ code: 'LORA_SHAPE_MISMATCH' }));
    expect(() => verifyNetFromWeights(base.spec, new Map())).toThrow(LoraError);
  });
});

describe.each(['sd15', 'sdxl'] as const)('fused fixtures sample like base + runtime LoRAs (%s)', (arch) => {
  let tmp = '';
  let base: VerifyNet;
  let lcm: Omit<LoadedLora, 'modules'> & Lora;
  let style: Omit<LoadedLora, 'modules'> & Lora;
  let runtime: VerifyNet;
  let fusedF32: VerifyNet;
  let fusedF16: VerifyNet;
  const lcmPath = fx(arch, 'lcm-lora.kohya.safetensors');
  const stylePath = fx(arch, STYLE[arch]);
  const fuse = async (name: string, weights: number[], dtype?: 'F32'): Promise<VerifyNet> => {
    const out = path.join(tmp, name);
    await fuseLoras(fx(arch, 'base.safetensors'), [lcmPath, stylePath], weights, {
      out,
      ...(dtype ? { dtype } : {}),
      threads: 1,
    });
    return loadNet(out);
  };

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), `lora-mix-verify-net-${arch}-`));
    base = await loadNet(fx(arch, 'base.safetensors'));
    lcm = requirePlain(await loadLora(lcmPath));
    style = requirePlain(await loadLora(stylePath));
    runtime = withRuntimeLoras(base, [lcm, style], [1, 0.8]);
    fusedF32 = await fuse('f32.safetensors', [1, 0.8], 'F32');
    fusedF16 = await fuse('f16.safetensors', [1, 0.8]);
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('F32: agreement to one f32 rounding; a wrong weight or mapping is ~10⁴ times further', async () => {
    const fused = fusedF32;
    expect(fused.dtype).toBe('F32');
    const check = checkFusedSampling(fused, runtime);
    expect(check.ratio).toBeLessThanOrEqual(4);
    expect(check.ok).toBe(true);
    expect(check.conclusive).toBe(true);
    expect(check.comparison.maxAbsDiff).toBeLessThan(5e-6);
    expect(check.comparison.steps).toBe(4);
    expect(check.comparison.timesteps).toEqual([999, 759, 499, 259]);
    for (const e of check.effects) expect(Math.abs(e.effect - 1)).toBeLessThan(1e-3);

    for (const wrong of [
      withRuntimeLoras(base, [lcm, style], [1, 0.5]),
      withRuntimeLoras(base, [remap(lcm, swapQK), remap(style, swapQK)], [1, 0.8]),
      withRuntimeLoras(base, [lcm, remap(style, (p) => (p.startsWith('text_encoder') ? null : p))], [1, 0.8]),
    ]) {
      const c = checkFusedSampling(fused, wrong, { roundingSamples: 2 }); // a rough floor is enough at 10⁴×
      expect(c.ok).toBe(false);
      expect(c.difference).toBeGreaterThan(1000 * check.difference);
      expect(c.ratio).toBeGreaterThan(1000);
    }
  });

  it('F16 (as stored): agreement to one f16 rounding; a wrong weight shows in the LoRA effects, a misplaced block in the difference', async () => {
    const fused = fusedF16;
    expect(fused.dtype).toBe('F16');
    const check = checkFusedSampling(fused, runtime);
    expect(check.ok).toBe(true);
    expect(check.conclusive).toBe(true);
    expect(check.ratio).toBeLessThanOrEqual(4);
    // F16 rounding of weights ~0.02 moves them by ≤ 2⁻¹² relative: the latents agree to ~1e-3, not 1e-6.
    expect(check.comparison.maxAbsDiff).toBeLessThan(1e-2);
    expect(check.difference).toBeGreaterThan(100 * compareVerifyNets(fusedF32, runtime).rmsDiff);

    const wrong = await fuse('f16-style-0.5.safetensors', [1, 0.5]);
    const w = checkFusedSampling(wrong, runtime);
    expect(w.ok).toBe(false);
    expect(w.difference).toBeGreaterThan(1.5 * check.difference);
    const styleEffect = w.effects[1]!;
    expect(Math.abs(styleEffect.effect - 0.625)).toBeLessThan(3 * styleEffect.standardError);
    expect(Math.abs(styleEffect.effect - 1)).toBeGreaterThan(styleEffect.resolution);

    const [a, b] = base.spec.blocks as [string, string];
    const swapBlocks = (p: string): string =>
      p.startsWith(`${a}.`) ? b + p.slice(a.length) : p.startsWith(`${b}.`) ? a + p.slice(b.length) : p;
    const misplaced = checkFusedSampling(
      fused,
      withRuntimeLoras(base, [remap(lcm, swapBlocks), remap(style, swapBlocks)], [1, 0.8]),
    );
    expect(misplaced.ok).toBe(false);
    expect(misplaced.ratio).toBeGreaterThan(6);
  });
});
