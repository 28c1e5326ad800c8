/**
 * fuseLoras on the bundled fixtures: the numbers (against an independent f64 reference), the mapping (single file
 * vs diffusers folder, q/k/v row slices of SDXL's second text encoder), the round trip with negated weights,
 * coverage, overflow, devices, and that failures leave nothing behind.
 */
import { transposeF32 } from '../src/lora/linalg.js';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras, FUSE_METADATA_KEY } from '../src/fuse/index.js';
import { verifyFusion } from '../src/verify/index.js';
import { createGpuKernel } from '../src/kernels/gpu.js';
import { createWasmKernel } from '../src/kernels/cpu.js';
import { bufferSource, memorySink } from '../src/core/memory.js';
import { openSafetensors } from '../src/node/files.js';
import { getLayout } from '../src/layout/index.js';
import { scaleLora } from '../src/lora/scale.js';
import { contiguousValues } from '../src/lora/delta.js';
import type { Lora } from '../src/lora/types.js';
import { parseSafetensors, type SafetensorsFile } from '../src/safetensors/read.js';
import { writeSafetensors } from '../src/safetensors/write.js';
import { f32ToF16Bits, f16BitsToF32 } from '../src/core/dtype.js';
import { LoraMixError } from '../src/core/errors.js';
import { requirePlain } from '../src/lora/terms/index.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');
const fx = (...p: string[]): string => path.join(FX, ...p);
let tmp: string;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-fuse-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const out = (name: string): string => path.join(tmp, name);

async function withFile<T>(p: string, fn: (f: SafetensorsFile) => Promise<T>): Promise<T> {
  const f = await openSafetensors(p);
  try {
    return await fn(f);
  } finally {
    await f.close();
  }
}

async function expectNoOutput(dir: string, name: string): Promise<void> {
  const left = (await fs.readdir(dir)).filter((n) => n.includes(name));
  expect(left).toEqual([]);
}

async function expectCode(p: Promise<unknown>, code: string): Promise<LoraMixError> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(LoraMixError);
  expect((e as LoraMixError).code).toBe(code);
  return e as LoraMixError;
}

/** Dense f64 delta Σ λ·(alpha/r)·up·down of one module over several LoRAs (independent of the kernels). */
function denseDelta(loras: readonly Lora[], weights: readonly number[], modulePath: string): Float64Array | null {
  let d: Float64Array | null = null;
  loras.forEach((l, li) => {
    const m = l.modules.get(modulePath);
    if (!m) return;
    const r = m.down.shape[0]!;
    const out = m.up.shape[0]!;
    const cols = m.down.shape.slice(1).reduce((a, b) => a * b, 1);
    const up = contiguousValues(m.up);
    const dn = contiguousValues(m.down);
    d ??= new Float64Array(out * cols);
    const s = (weights[li]! * m.alpha) / r;
    for (let i = 0; i < out; i++) {
      for (let k = 0; k < r; k++) {
        const u = s * up[i * r + k]!;
        for (let j = 0; j < cols; j++) d[i * cols + j]! += u * dn[k * cols + j]!;
      }
    }
  });
  return d;
}

const SD15 = {
  base: fx('sd15', 'base.safetensors'),
  lcm: fx('sd15', 'lcm-lora.kohya.safetensors'),
  style: fx('sd15', 'style-lora.kohya.safetensors'),
};
const SDXL = {
  base: fx('sdxl', 'base.safetensors'),
  folder: fx('sdxl', 'diffusers'),
  lcm: fx('sdxl', 'lcm-lora.kohya.safetensors'),
  style: fx('sdxl', 'style-lora.kohya-sgm.safetensors'),
};

describe('fuseLoras: the numbers', () => {
  it('F32 output equals W + Σ λ·s·up·down (f64 reference) to f32 rounding, for every fused module; untouched tensors are byte-identical', async () => {
    const o = out('sd15-f32.safetensors');
    const report = await fuseLoras(SD15.base, [SD15.lcm, SD15.style], [1, 0.8], { out: o, dtype: 'F32' });
    expect(report.modulesFused).toBe(350);
    expect(report.byGroup).toEqual({
      'unet/attention': 192,
      'unet/resnet': 80,
      'unet/sampler': 6,
      'text_encoder/text_encoder': 72,
    });
    expect(report.tensors.fused).toBe(350);
    expect(report.unmatched).toEqual([]);
    expect(report.overflow.total).toBe(0);
    const loras = [requirePlain(await loadLora(SD15.lcm)), requirePlain(await loadLora(SD15.style))];
    const layout = getLayout('sd15', 'tiny');
    await withFile(SD15.base, (b) =>
      withFile(o, async (f) => {
        expect(f.names).toEqual(b.names);
        let checked = 0;
        for (const entry of layout.modules) {
          const d = denseDelta(loras, [1, 0.8], entry.path);
          if (!d) continue;
          const w = await b.readF32(entry.singleFileWeightKey);
          const wf = await f.readF32(entry.singleFileWeightKey);
          expect(f.info(entry.singleFileWeightKey).dtype).toBe('F32');
          // The worst error relative to its bound, one expect per module (an expect per weight was most of the time).
          let worst = 0;
          for (let i = 0; i < w.length; i++) {
            const exact = w[i]! + d[i]!;
            // one f32 rounding plus f32 accumulation over rank ≤ 12 terms
            const bound = Math.abs(exact) * 2 ** -23 + 16 * 2 ** -24 * (Math.abs(w[i]!) + Math.abs(d[i]!)) + 1e-12;
            worst = Math.max(worst, Math.abs(wf[i]! - exact) / bound);
          }
          expect(worst, entry.path).toBeLessThanOrEqual(1);
          checked++;
        }
        expect(checked).toBe(350);
        // A tensor no LoRA touches (a VAE conv, a norm) is converted F16 → F32 exactly.
        for (const key of ['first_stage_model.decoder.conv_out.weight', 'model.diffusion_model.out.0.weight']) {
          expect(Array.from(await f.readF32(key))).toEqual(Array.from(await b.readF32(key)));
        }
      }),
    );
  });

  it('as-stored F16 output: every fused weight is the nearest F16 of the exact sum, or one ulp from it', async () => {
    const o = out('sd15-f16.safetensors');
    await fuseLoras(SD15.base, [SD15.lcm, SD15.style], [1, 0.8], { out: o });
    const loras = [requirePlain(await loadLora(SD15.lcm)), requirePlain(await loadLora(SD15.style))];
    const layout = getLayout('sd15', 'tiny');
    let exactHits = 0,
      total = 0;
    await withFile(SD15.base, (b) =>
      withFile(o, async (f) => {
        for (const entry of layout.modules.filter((e) => e.component === 'unet').slice(0, 60)) {
          const d = denseDelta(loras, [1, 0.8], entry.path);
          if (!d) continue;
          const w = await b.readF32(entry.singleFileWeightKey);
          const bits = new Uint16Array((await f.read(entry.singleFileWeightKey)).slice().buffer);
          for (let i = 0; i < w.length; i++) {
            const nearest = f32ToF16Bits(w[i]! + d[i]!);
            total++;
            if (bits[i] === nearest) exactHits++;
            else expect(Math.abs(bits[i]! - nearest)).toBe(1); // a tie decided by f32 accumulation, never more
          }
        }
      }),
    );
    expect(total).toBeGreaterThan(10000);
    expect(exactHits / total).toBeGreaterThan(0.999);
  });

  it('fusing with negated weights returns the base within one rounding per weight', async () => {
    const plus = out('plus.safetensors');
    const back = out('back.safetensors');
    await fuseLoras(SD15.base, [SD15.lcm, SD15.style], [1, 0.8], { out: plus });
    const r = await fuseLoras(plus, [SD15.lcm, SD15.style], [-1, -0.8], { out: back });
    expect(r.modulesFused).toBe(350);
    await withFile(SD15.base, (b) =>
      withFile(back, async (f) => {
        let moved = 0;
        const far: string[] = []; // weights not within one F16 ulp of the original, named
        for (const t of b.tensors) {
          if (t.dtype !== 'F16') {
            expect(Buffer.from(await f.read(t.name)).equals(Buffer.from(await b.read(t.name)))).toBe(true);
            continue;
          }
          const x = new Uint16Array((await b.read(t.name)).slice().buffer);
          const y = new Uint16Array((await f.read(t.name)).slice().buffer);
          for (let i = 0; i < x.length; i++) {
            if (x[i] === y[i]) continue;
            if ((x[i]! & 0x7fff) === 0 && (y[i]! & 0x7fff) === 0) continue; // +0 and −0
            moved++;
            // within one F16 ulp of the original (adjacent bit patterns of the same sign)
            const a = f16BitsToF32(x[i]!),
              c = f16BitsToF32(y[i]!);
            const sameSign = Math.sign(a) === Math.sign(c) || a === 0 || c === 0;
            if (!sameSign || Math.abs(x[i]! - y[i]!) > 1) far.push(`${t.name}[${i}]`);
          }
        }
        expect(far.slice(0, 20), `${far.length} weights moved by more than one ulp`).toEqual([]);
        // the round trip is not trivially the identity: some weights did round
        expect(moved).toBeGreaterThan(0);
      }),
    );
  });

  it('SDXL: the single file (q/k/v row slices of in_proj_weight) and the diffusers folder (separate q/k/v) fuse to the same numbers', async () => {
    const single = out('sdxl-single.safetensors');
    const folder = out('sdxl-folder');
    const r1 = await fuseLoras(SDXL.base, [SDXL.lcm, SDXL.style], [1, 0.8], { out: single, dtype: 'F32' });
    const r2 = await fuseLoras(SDXL.folder, [SDXL.lcm, SDXL.style], [1, 0.8], { out: folder, dtype: 'F32' });
    expect(r1.modulesFused).toBe(r2.modulesFused);
    expect(r1.byGroup['text_encoder_2/text_encoder']).toBe(192);
    expect(r2.naming).toBe('diffusers-folder');
    expect((await fs.readdir(folder)).sort()).toEqual(['model_index.json', 'text_encoder', 'text_encoder_2', 'unet']);
    expect(await fs.readFile(path.join(folder, 'model_index.json'), 'utf8')).toBe(
      await fs.readFile(path.join(SDXL.folder, 'model_index.json'), 'utf8'),
    );
    const layout = getLayout('sdxl', 'tiny');
    const files: Record<string, string> = {
      unet: path.join(folder, 'unet', 'diffusion_pytorch_model.safetensors'),
      text_encoder: path.join(folder, 'text_encoder', 'model.safetensors'),
      text_encoder_2: path.join(folder, 'text_encoder_2', 'model.safetensors'),
    };
    let slices = 0;
    await withFile(single, async (s) => {
      for (const component of ['unet', 'text_encoder', 'text_encoder_2'] as const) {
        await withFile(files[component]!, async (d) => {
          for (const e of layout.modules.filter((m) => m.component === component)) {
            const a = await s.readF32(e.singleFileWeightKey);
            const rows = e.singleFileRows;
            const cols = e.shape.slice(1).reduce((x, y) => x * y, 1);
            // text_projection: the single file stores the transpose of the folder's Linear weight.
            const mine = rows
              ? a.subarray(rows[0] * cols, rows[1] * cols)
              : e.singleFileTransposed
                ? transposeF32(a, cols, e.shape[0]!)
                : a;
            if (rows) slices++;
            expect(Array.from(await d.readF32(e.diffusersWeightKey))).toEqual(Array.from(mine));
          }
        });
      }
    });
    expect(slices).toBe(3 * 32); // q, k, v of every layer of the tiny OpenCLIP-G (32 layers)
    const v = await verifyFusion(single, SDXL.base, [SDXL.lcm, SDXL.style], [1, 0.8]);
    expect(v.ok).toBe(true);
    expect(v.inconclusive).toBe(0);
    const vf = await verifyFusion(folder, SDXL.folder, [SDXL.lcm, SDXL.style], [1, 0.8]);
    expect(vf.ok).toBe(true);
    expect(vf.checked).toBe(r2.modulesFused);
    // …and a wrong weight on the style LoRA fails every module it touches, in the folder too.
    const wrong = await verifyFusion(folder, SDXL.folder, [SDXL.lcm, SDXL.style], [1, 0.6]);
    expect(wrong.failed).toBe(986);
  });

  it('block weights: a block at 0 leaves its modules exactly as in the base', async () => {
    const o = out('blocks.safetensors');
    const r = await fuseLoras(SD15.base, [SD15.style], [{ weight: 0.8, blocks: 'IN04=0,BASE=0' }], { out: o });
    const layout = getLayout('sd15', 'tiny');
    const in04 = layout.modules.filter((m) => m.block === 'IN04');
    expect(in04.length).toBeGreaterThan(0);
    expect(r.byGroup['text_encoder/text_encoder']).toBeUndefined();
    await withFile(SD15.base, (b) =>
      withFile(o, async (f) => {
        for (const m of in04)
          expect(
            Buffer.from(await f.read(m.singleFileWeightKey)).equals(Buffer.from(await b.read(m.singleFileWeightKey))),
          ).toBe(true);
        const in05 = layout.modules.find((m) => m.block === 'IN05' && m.path.endsWith('attn1.to_q'))!;
        expect(
          Buffer.from(await f.read(in05.singleFileWeightKey)).equals(
            Buffer.from(await b.read(in05.singleFileWeightKey)),
          ),
        ).toBe(false);
      }),
    );
  });

  it('writes the same bytes with O_DIRECT output (the default for outputs ≥ 256 MiB) as through the page cache', async () => {
    const a = out('direct-off.safetensors');
    const b = out('direct-on.safetensors');
    const kernel = await createWasmKernel();
    try {
      await fuseLoras(SDXL.base, [SDXL.lcm, SDXL.style], [1, 0.8], { out: a, kernel, directIO: false });
      await fuseLoras(SDXL.base, [SDXL.lcm, SDXL.style], [1, 0.8], { out: b, kernel, directIO: true });
    } finally {
      await kernel.dispose();
    }
    expect((await fs.readFile(a)).equals(await fs.readFile(b))).toBe(true);
  });

  it('records the sources, weights and version in the metadata and keeps the base metadata', async () => {
    const o = out('meta.safetensors');
    await fuseLoras(SD15.base, [SD15.lcm, SD15.style], [1, 0.8], { out: o, metadata: { note: 'hello' } });
    await withFile(o, async (f) => {
      const meta = JSON.parse(f.metadata[FUSE_METADATA_KEY]!) as {
        version: string;
        loras: { source: string; weight: string }[];
      };
      expect(meta.loras.map((l) => [path.basename(l.source), l.weight])).toEqual([
        ['lcm-lora.kohya.safetensors', '1'],
        ['style-lora.kohya.safetensors', '0.8'],
      ]);
      expect(meta.version).toMatch(/^\d+\.\d+\.\d+/);
      expect(f.metadata.note).toBe('hello');
      expect(f.metadata.lora_mix_version).toBe(meta.version);
    });
  });

  it('runs in memory (ByteSource base, in-memory LoRAs, ByteSink output) with the same bytes as from files', async () => {
    const o = out('mem-ref.safetensors');
    const sink = memorySink('fused');
    // The same kernel for both runs: fused multiply-add (relaxed SIMD) and mul+add may round differently.
    const kernel = await createWasmKernel();
    try {
      await fuseLoras(SD15.base, [SD15.lcm, SD15.style], [1, 0.8], { out: o, kernel });
      await fuseLoras(
        bufferSource(await fs.readFile(SD15.base), 'base'),
        [requirePlain(await loadLora(SD15.lcm)), requirePlain(await loadLora(SD15.style))],
        [1, 0.8],
        { out: sink, kernel },
      );
    } finally {
      await kernel.dispose();
    }
    // Same tensors, same bytes (the metadata names the sources, which differ).
    const mem = await parseSafetensors(bufferSource(sink.bytes()));
    await withFile(o, async (f) => {
      expect(mem.names).toEqual(f.names);
      for (const t of f.tensors)
        expect(Buffer.from(await mem.read(t.name)).equals(Buffer.from(await f.read(t.name)))).toBe(true);
    });
  });
});

describe('fuseLoras: coverage and failures leave nothing behind', () => {
  it('UNet-only base: an LCM-LoRA fuses; a LoRA with text-encoder modules fails listing them, or skips them with allowUnmatched', async () => {
    const unet = fx('sd15', 'unet.safetensors');
    const r = await fuseLoras(unet, [SD15.lcm], [1], { out: out('unet-lcm.safetensors') });
    expect(r.modulesFused).toBe(278);
    const e = await expectCode(
      fuseLoras(unet, [SD15.style], [0.8], { out: out('unet-style.safetensors') }),
      'LORA_UNMATCHED_MODULES',
    );
    expect(e.message).toMatch(/no text_encoder/);
    expect(e.message).toMatch(/lora_te_text_model_encoder_layers_0_self_attn_q_proj/);
    expect((e.details as { count: number }).count).toBe(72);
    await expectNoOutput(tmp, 'unet-style');
    const r2 = await fuseLoras(unet, [SD15.style], [0.8], { out: out('unet-style.safetensors'), allowUnmatched: true });
    expect(r2.unmatched).toHaveLength(72);
    expect(r2.modulesFused).toBe(192);
  });

  it('a LoRA of another architecture is ARCH_MISMATCH; an SDXL LoRA on SSD-1B works only with allowUnmatched', async () => {
    await expectCode(fuseLoras(SD15.base, [SDXL.lcm], [1], { out: out('mismatch.safetensors') }), 'ARCH_MISMATCH');
    await expectNoOutput(tmp, 'mismatch');
    const ssd = fx('ssd1b', 'base.safetensors');
    const e = await expectCode(fuseLoras(ssd, [SDXL.lcm], [1], { out: out('ssd.safetensors') }), 'ARCH_MISMATCH');
    expect(e.message).toMatch(/allow-unmatched/);
    const r = await fuseLoras(ssd, [SDXL.lcm], [1], { out: out('ssd.safetensors'), allowUnmatched: true });
    expect(r.unmatched.length).toBeGreaterThan(0);
    expect(r.modulesFused).toBe(423);
  });

  it('overflow: F16 values beyond 65504 fail the run (nothing written) or are clamped and counted', async () => {
    const huge = scaleLora(requirePlain(await loadLora(SD15.lcm)), 1e10); // deltas of ~1e5
    await expectCode(fuseLoras(SD15.base, [huge], [1], { out: out('overflow.safetensors') }), 'FUSE_OVERFLOW');
    await expectNoOutput(tmp, 'overflow');
    const r = await fuseLoras(SD15.base, [huge], [1], { out: out('overflow.safetensors'), onOverflow: 'clamp' });
    expect(r.overflow.total).toBeGreaterThan(0);
    expect(r.overflow.tensors.length).toBeGreaterThan(0);
    await withFile(out('overflow.safetensors'), async (f) => {
      const t = r.overflow.tensors[0]!;
      const v = await f.readF32(t.name);
      expect(v.every((x) => Number.isFinite(x))).toBe(true);
      expect(v.some((x) => Math.abs(x) === 65504)).toBe(true);
    });
    // F32 output has room: no overflow at all.
    const r32 = await fuseLoras(SD15.base, [huge], [1], { out: out('overflow32.safetensors'), dtype: 'F32' });
    expect(r32.overflow.total).toBe(0);
  });

  it('never writes over an input; a diffusers-folder output must be new', async () => {
    const copy = out('base-copy.safetensors');
    await fs.copyFile(SD15.base, copy);
    const before = await fs.readFile(copy);
    await expectCode(fuseLoras(copy, [SD15.lcm], [1], { out: copy }), 'OUTPUT_WOULD_OVERWRITE_INPUT');
    expect((await fs.readFile(copy)).equals(before)).toBe(true);
    const folderOut = out('exists');
    await fs.mkdir(folderOut);
    await fs.writeFile(path.join(folderOut, 'keep.txt'), 'x');
    await expectCode(fuseLoras(SDXL.folder, [SDXL.lcm], [1], { out: folderOut }), 'OUTPUT_EXISTS');
    expect(await fs.readdir(folderOut)).toEqual(['keep.txt']);
    await expectCode(fuseLoras(SDXL.folder, [SDXL.lcm], [1], { out: SDXL.folder }), 'OUTPUT_WOULD_OVERWRITE_INPUT');
    // A LoRA already loaded into memory still names its file, which is refused as an output too.
    const loraCopy = out('lora-copy.safetensors');
    await fs.copyFile(SD15.lcm, loraCopy);
    const loraBefore = await fs.readFile(loraCopy);
    await expectCode(
      fuseLoras(SD15.base, [requirePlain(await loadLora(loraCopy))], [1], { out: loraCopy }),
      'OUTPUT_WOULD_OVERWRITE_INPUT',
    );
    expect((await fs.readFile(loraCopy)).equals(loraBefore)).toBe(true);
  });

  it('bad inputs are typed errors: truncated base, missing base, a LoRA that is a checkpoint, wrong weights', async () => {
    const bytes = await fs.readFile(SD15.base);
    const cut = out('cut.safetensors');
    await fs.writeFile(cut, bytes.subarray(0, Math.floor(bytes.length * 0.7)));
    await expectCode(fuseLoras(cut, [SD15.lcm], [1], { out: out('cut-out.safetensors') }), 'SAFETENSORS_TRUNCATED');
    await expectCode(
      fuseLoras(out('nope.safetensors'), [SD15.lcm], [1], { out: out('nope-out.safetensors') }),
      'INPUT_NOT_FOUND',
    );
    await expectCode(
      fuseLoras(SD15.base, [SD15.base], [1], { out: out('ckpt-as-lora.safetensors') }),
      'FORMAT_NOT_A_LORA',
    );
    await expectCode(fuseLoras(SD15.base, [SD15.lcm], [1, 2], { out: out('weights-out.safetensors') }), 'ARG_INVALID');
    await expectCode(
      fuseLoras(SD15.base, [SD15.lcm], [Number.NaN], { out: out('weights-out.safetensors') }),
      'ARG_INVALID',
    );
    await expectCode(fuseLoras(SD15.base, [], [], { out: out('weights-out.safetensors') }), 'ARG_MISSING');
    for (const n of ['cut-out', 'nope-out', 'ckpt-as-lora', 'weights-out']) await expectNoOutput(tmp, n);
  });
});

describe('fuseLoras: devices', () => {
  it("device 'gpu' without a GPU falls back to the CPU kernel, says so, and writes the same bytes", async () => {
    const cpu = out('dev-cpu.safetensors');
    const gpu = out('dev-gpu.safetensors');
    const a = await fuseLoras(SD15.base, [SD15.lcm, SD15.style], [1, 0.8], { out: cpu });
    const b = await fuseLoras(SD15.base, [SD15.lcm, SD15.style], [1, 0.8], { out: gpu, device: 'gpu' });
    expect(a.fellBack).toBe(false);
    expect(b.fellBack).toBe(true);
    expect(b.fallbackReason).toMatch(/gpu\.js/);
    expect((await fs.readFile(cpu)).equals(await fs.readFile(gpu))).toBe(true);
  });

  it("gpu.js's own kernel (its CPU backend here) gives the CPU path's numbers within float tolerance", async () => {
    const { kernel, backend } = await createGpuKernel({ mode: 'cpu' });
    expect(backend).toBe('gpu.js:cpu');
    const o = out('gpujs.safetensors');
    const ref = out('gpujs-ref.safetensors');
    try {
      await fuseLoras(SDXL.base, [SDXL.lcm, SDXL.style], [1, 0.8], { out: o, dtype: 'F32', kernel });
    } finally {
      await kernel.dispose();
    }
    await fuseLoras(SDXL.base, [SDXL.lcm, SDXL.style], [1, 0.8], { out: ref, dtype: 'F32' });
    await withFile(o, (f) =>
      withFile(ref, async (g) => {
        let worst = 0;
        for (const t of g.tensors) {
          const x = await f.readF32(t.name),
            y = await g.readF32(t.name);
          for (let i = 0; i < x.length; i++)
            worst = Math.max(worst, Math.abs(x[i]! - y[i]!) / (Math.abs(y[i]!) + 1e-6));
        }
        expect(worst).toBeLessThan(1e-5);
      }),
    );
    const v = await verifyFusion(o, SDXL.base, [SDXL.lcm, SDXL.style], [1, 0.8]);
    expect(v.ok).toBe(true);
  });
});

describe('verifyFusion catches what a wrong fuser would do', () => {
  /** Copy a fused file, replacing one tensor's values through `edit` (F32 tensors). */
  async function tamper(
    src: string,
    dst: string,
    key: string,
    edit: (v: Float32Array, shape: readonly number[]) => Float32Array,
  ): Promise<void> {
    await withFile(src, async (f) => {
      const tensors = await Promise.all(
        f.tensors.map(async (t) => ({
          name: t.name,
          dtype: t.dtype,
          shape: t.shape,
          data: t.name === key ? edit(await f.readF32(t.name), t.shape) : await f.read(t.name),
        })),
      );
      await writeSafetensors(dst, tensors, { metadata: f.metadata });
    });
  }

  it('swapped q/k row slices of the fused in_proj_weight, a transposed weight, and a delta on the wrong module all fail', async () => {
    const good = out('catch-good.safetensors');
    const loras = [SDXL.lcm, SDXL.style];
    await fuseLoras(SDXL.base, loras, [1, 0.8], { out: good, dtype: 'F32' });
    const layout = getLayout('sdxl', 'tiny');
    const q = layout.modules.find(
      (m) => m.component === 'text_encoder_2' && m.path.endsWith('layers.3.self_attn.q_proj'),
    )!;
    const k = layout.modules.find(
      (m) => m.component === 'text_encoder_2' && m.path.endsWith('layers.3.self_attn.k_proj'),
    )!;
    const [q0, q1] = q.singleFileRows!;
    const [k0] = k.singleFileRows!;

    // 1. q and k slices swapped (a slice-order bug).
    const swapped = out('catch-swapped.safetensors');
    await tamper(good, swapped, q.singleFileWeightKey, (v, shape) => {
      const cols = shape[1]!;
      const w = v.slice();
      w.set(v.subarray(k0 * cols, (k0 + q1 - q0) * cols), q0 * cols);
      w.set(v.subarray(q0 * cols, q1 * cols), k0 * cols);
      return w;
    });
    const r1 = await verifyFusion(swapped, SDXL.base, loras, [1, 0.8]);
    expect(r1.ok).toBe(false);
    expect(
      r1.modules
        .filter((m) => !m.ok)
        .map((m) => m.path)
        .sort(),
    ).toEqual([k.path, q.path].sort());

    // 2. A square weight stored transposed.
    const sq = layout.modules.find((m) => m.path.endsWith('mid_block.attentions.0.transformer_blocks.0.attn1.to_q'))!;
    expect(sq.shape[0]).toBe(sq.shape[1]);
    const transposed = out('catch-transposed.safetensors');
    await tamper(good, transposed, sq.singleFileWeightKey, (v, shape) => {
      const n = shape[0]!;
      const w = new Float32Array(v.length);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) w[j * n + i] = v[i * n + j]!;
      return w;
    });
    const r2 = await verifyFusion(transposed, SDXL.base, loras, [1, 0.8]);
    expect(r2.modules.filter((m) => !m.ok).map((m) => m.path)).toEqual([sq.path]);

    // 3. The base weight left as it was (the module's delta "landed" elsewhere or nowhere).
    const missed = out('catch-missed.safetensors');
    await withFile(SDXL.base, async (b) => {
      const original = await b.readF32(sq.singleFileWeightKey);
      await tamper(good, missed, sq.singleFileWeightKey, () => original);
    });
    const r3 = await verifyFusion(missed, SDXL.base, loras, [1, 0.8]);
    expect(r3.failed).toBe(1);
    expect(r3.worst!.path).toBe(sq.path);
    expect(r3.worst!.worstRatio).toBeGreaterThan(100);

    // The untampered file passes, with every module conclusive.
    const r0 = await verifyFusion(good, SDXL.base, loras, [1, 0.8]);
    expect(r0.ok).toBe(true);
    expect(r0.inconclusive).toBe(0);
  });
});
