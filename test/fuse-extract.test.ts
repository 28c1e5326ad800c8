/**
 * extractLora: a tuned checkpoint made by fusing a known LoRA into the fixture base gives that LoRA's deltas back
 * (rank ≥ the LoRA's rank), the stated per-module error equals an independent dense computation, a smaller rank
 * stays within 1% of the optimal error (independent Jacobi SVD), single files and diffusers folders mix, SDXL's
 * fused q/k/v rows work, and bad input fails with typed errors and writes nothing.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/main.js';
import { LoraMixError } from '../src/core/errors.js';
import { loadLora } from '../src/formats/index.js';
import { extractLora, fuseLoras, type ExtractReport } from '../src/fuse/index.js';
import { getLayout } from '../src/layout/index.js';
import type { Lora } from '../src/lora/types.js';
import { openSafetensors } from '../src/node/files.js';
import { dense, singularValues } from './lora-helpers.js';
import { requirePlain } from '../src/lora/terms/index.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');
const fx = (...p: string[]): string => path.join(FX, ...p);
let tmp: string;
const out = (name: string): string => path.join(tmp, name);

async function expectCode(p: Promise<unknown>, code: string): Promise<LoraMixError> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(LoraMixError);
  expect((e as LoraMixError).code).toBe(code);
  return e as LoraMixError;
}

/** tuned = base + the LoRA (fused in f32, so Δ = tuned − base is the LoRA's delta up to one f32 rounding). */
async function tunedWith(arch: string, lora: string, name: string): Promise<string> {
  const o = out(name);
  await fuseLoras(fx(arch, 'base.safetensors'), [fx(arch, lora)], [1], { out: o, dtype: 'F32' });
  return o;
}

function relDiff(a: Float64Array, b: Float64Array): number {
  let d = 0;
  let n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i]! - b[i]!) ** 2;
    n += a[i]! ** 2;
  }
  return Math.sqrt(d / n);
}

let sd15Tuned: string;
let lcm: Lora;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-extract-'));
  sd15Tuned = await tunedWith('sd15', 'lcm-lora.kohya.safetensors', 'sd15-lcm.safetensors');
  lcm = requirePlain(await loadLora(fx('sd15', 'lcm-lora.kohya.safetensors')));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

// The library calls pass threads: 1 where threads are not the subject: starting the worker pool under the test's
// TypeScript loader takes seconds per call. The 1/2/3-thread test below and the CLI test run the workers.
describe('extractLora', () => {
  it('recovers a fused rank-8 LoRA module by module (F32 factors: to the rounding of the tuned file)', async () => {
    const o = out('x-f32.safetensors');
    const r = await extractLora(fx('sd15', 'base.safetensors'), sd15Tuned, {
      threads: 1,
      out: o,
      rank: 8,
      dtype: 'F32',
    });
    expect(r.modules.length).toBe(lcm.modules.size);
    // The LoRA's modules all differ; the other UNet modules (conv_in, conv_out, time embedding) are zero.
    expect(r.zero.paths).toEqual([
      'unet.conv_in',
      'unet.time_embedding.linear_1',
      'unet.time_embedding.linear_2',
      'unet.conv_out',
    ]);
    expect(r.zero.count).toBe(4);
    const got = requirePlain(await loadLora(o));
    expect(got.format).toBe('kohya');
    expect(got.modules.size).toBe(lcm.modules.size);
    for (const [p, m] of lcm.modules) {
      const g = got.modules.get(p);
      expect(g, p).toBeDefined();
      expect(g!.down.shape[0]).toBeLessThanOrEqual(8);
      expect(relDiff(dense(m).data, dense(g!).data), p).toBeLessThan(1e-4);
      // 3×3 convs are LoCon: down [r, in, 3, 3], up [out, r, 1, 1].
      if (m.down.shape.length === 4) {
        expect(g!.down.shape.slice(1)).toEqual(m.down.shape.slice(1));
        expect(g!.up.shape.slice(2)).toEqual([1, 1]);
      }
    }
    expect(r.overall.relError).toBeLessThan(1e-4); // the f32 rounding of the tuned weights is full-rank noise
    expect(r.overall.keptEnergy).toBeGreaterThan(1 - 1e-9);
    expect(r.seconds).toBeGreaterThan(0);
  });

  it('gives the same bytes and report on 1, 2 or 3 threads (worker threads run the same per-module code)', async () => {
    const files: Buffer[] = [];
    const reports: ExtractReport[] = [];
    for (const threads of [1, 2, 3]) {
      const o = out(`threads-${threads}.safetensors`);
      // Rank 3 < the LoRA's 8: the SVD iterates, so any difference between the threads' arithmetic would show.
      const r = await extractLora(fx('sd15', 'base.safetensors'), sd15Tuned, { out: o, rank: 3, threads, seed: 5 });
      reports.push(r);
      files.push(await fs.readFile(o));
    }
    expect(reports[0]!.modules.some((m) => m.iterations > 0)).toBe(true);
    for (const i of [1, 2]) {
      expect(files[i]!.equals(files[0]!)).toBe(true);
      expect(reports[i]!.modules).toEqual(reports[0]!.modules);
      expect(reports[i]!.overall).toEqual(reports[0]!.overall);
    }
    await expectCode(
      extractLora(fx('sd15', 'base.safetensors'), sd15Tuned, { out: out('t0.safetensors'), rank: 3, threads: 0 }),
      'OPTION_INVALID',
    );
    await expect(fs.access(out('t0.safetensors'))).rejects.toThrow();
  });

  it('names what differs outside the extracted modules (a bias, the text encoder) and counts the rest; conv_in is a module', async () => {
    // The fused LoRA touches only its modules: nothing outside them differs.
    const clean = await extractLora(fx('sd15', 'base.safetensors'), sd15Tuned, {
      threads: 1,
      out: out('outside-clean.safetensors'),
      rank: 8,
    });
    expect(clean.outside.compared).toBeGreaterThan(500);
    expect(clean.outside.differing).toEqual([]);
    expect(clean.outside.notCompared).toBe(0);
    // conv_in, conv_out and the time embedding are compared as modules (identical here: left out and counted).
    for (const p of ['unet.conv_in', 'unet.conv_out', 'unet.time_embedding.linear_1'])
      expect(clean.zero.paths, p).toContain(p);
    // Change three tensors no LoRA module holds and conv_in, in a copy of the tuned file.
    const bytes = await fs.readFile(sd15Tuned);
    const f = await openSafetensors(sd15Tuned);
    const keys = [
      'model.diffusion_model.input_blocks.0.0.weight',
      'model.diffusion_model.middle_block.0.in_layers.2.bias',
      f.names.find((k) => k.startsWith('cond_stage_model.') && k.endsWith('.weight'))!,
    ];
    for (const k of keys) {
      const info = f.get(k)!;
      bytes[info.offset] = (bytes[info.offset] ?? 0) ^ 0x01; // one low mantissa bit of the first element
    }
    await f.close();
    const changed = out('tuned-changed.safetensors');
    await fs.writeFile(changed, bytes);
    const r = await extractLora(fx('sd15', 'base.safetensors'), changed, {
      threads: 1,
      out: out('outside.safetensors'),
      rank: 8,
    });
    // conv_in is now a LoCon module of the LoRA; the bias and the text-encoder weight are named as not carried.
    expect(r.modules.map((m) => m.path)).toContain('unet.conv_in');
    expect([...r.outside.differing].sort()).toEqual([...keys.slice(1)].sort());
    expect(r.outside.compared).toBe(clean.outside.compared);
    const { formatExtractReport } = await import('../src/fuse/extract-report.js');
    const text = formatExtractReport(r);
    expect(text).toContain('2 of');
    expect(text).toContain('model.diffusion_model.middle_block.0.in_layers.2.bias');
    // With biasDiff the module's bias is carried (.diff_b): only the text encoder is left.
    const b = await extractLora(fx('sd15', 'base.safetensors'), changed, {
      threads: 1,
      out: out('outside-bias.safetensors'),
      rank: 8,
      biasDiff: true,
    });
    expect(b.outside.differing).toEqual([keys[2]]);
    expect(b.biasDiff).toMatchObject({ biases: 1, norms: 0 });
    expect(formatExtractReport(b)).toContain('bias-diff: stored 1 module bias(es)');
  });

  it('--bias-diff: biases, norms, conv_in/conv_out and the time embedding changed → extract, fuse back: tuned again', async () => {
    // A tuned file whose change is not only low-rank modules: shift biases, GroupNorms, conv_in, conv_out, time_embed.
    const bytes = await fs.readFile(sd15Tuned);
    const f = await openSafetensors(sd15Tuned);
    await f.close(); // the header (names, offsets) stays readable
    const changedKeys = f.names.filter(
      (k) =>
        k.startsWith('model.diffusion_model.') &&
        (/\.(input_blocks\.0\.0|out\.[02]|time_embed\.[02])\./.test(k) ||
          /\.in_layers\.[02]\.(weight|bias)$/.test(k) ||
          /\.(norm|proj_in)\.bias$/.test(k)),
    );
    expect(changedKeys.length).toBeGreaterThan(20);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (const k of changedKeys) {
      const info = f.get(k)!;
      expect(info.dtype).toBe('F32');
      for (let i = 0; i < info.numel; i++) {
        const o = info.offset + 4 * i;
        view.setFloat32(o, view.getFloat32(o, true) + 0.01 * ((i % 7) - 3 + 0.5), true);
      }
    }
    const tunedPath = out('tuned-biases.safetensors');
    await fs.writeFile(tunedPath, bytes);
    const base = fx('sd15', 'base.safetensors');
    const lora = out('bias-diff.safetensors');
    const r = await extractLora(base, tunedPath, { threads: 1, out: lora, rank: 64, dtype: 'F32', biasDiff: true });
    expect(r.outside.differing).toEqual([]);
    expect(r.biasDiff!.biases).toBeGreaterThan(10);
    expect(r.biasDiff!.norms).toBeGreaterThan(5);
    for (const p of ['unet.conv_in', 'unet.conv_out', 'unet.time_embedding.linear_1', 'unet.time_embedding.linear_2'])
      expect(r.modules.map((m) => m.path)).toContain(p);
    // Fuse it back into the base: every tensor is the tuned one again, to f32 rounding.
    const fused = out('refused.safetensors');
    await fuseLoras(base, [lora], [1], { out: fused, dtype: 'F32' });
    // Without --bias-diff the same fuse misses the biases and norms (the check below can fail).
    const plain = out('plain.safetensors');
    await extractLora(base, tunedPath, { threads: 1, out: plain, rank: 64, dtype: 'F32' });
    const fusedPlain = out('refused-plain.safetensors');
    await fuseLoras(base, [plain], [1], { out: fusedPlain, dtype: 'F32' });
    const a = await openSafetensors(fused);
    const t = await openSafetensors(tunedPath);
    const bf = await openSafetensors(base);
    const p2 = await openSafetensors(fusedPlain);
    try {
      let worst = 0;
      let worstPlain = 0;
      for (const k of t.names.filter((n) => n.startsWith('model.diffusion_model.'))) {
        const [x, y, z, w] = await Promise.all([a.readF32(k), t.readF32(k), bf.readF32(k), p2.readF32(k)]);
        let d2 = 0;
        let dp2 = 0;
        let n2 = 0;
        for (let i = 0; i < y.length; i++) {
          d2 += (x[i]! - y[i]!) ** 2;
          dp2 += (w[i]! - y[i]!) ** 2;
          n2 += (y[i]! - z[i]!) ** 2;
        }
        if (n2 === 0) {
          expect(d2, k).toBe(0);
          continue;
        }
        worst = Math.max(worst, Math.sqrt(d2 / n2));
        worstPlain = Math.max(worstPlain, Math.sqrt(dp2 / n2));
      }
      expect(worst).toBeLessThan(1e-4);
      expect(worstPlain).toBeGreaterThan(0.5);
    } finally {
      await Promise.all([a, t, bf, p2].map((x) => x.close()));
    }
  });

  it('states the error of the stored F16 factors exactly, and a smaller rank is within 1% of the SVD tail', async () => {
    const o = out('x-r3.safetensors');
    const r = await extractLora(fx('sd15', 'base.safetensors'), sd15Tuned, { threads: 1, out: o, rank: 3 });
    expect(r.dtype).toBe('F16');
    const got = requirePlain(await loadLora(o));
    const base = await openSafetensors(fx('sd15', 'base.safetensors'));
    const tuned = await openSafetensors(sd15Tuned);
    const layout = getLayout('sd15', 'tiny');
    try {
      let checked = 0;
      for (const m of r.modules) {
        const e = layout.modules.find((x) => x.path === m.path)!;
        const wb = await base.readF32(e.singleFileWeightKey);
        const wt = await tuned.readF32(e.singleFileWeightKey);
        const delta = Float64Array.from(wt, (v, i) => Math.fround(v - wb[i]!));
        const approx = dense(got.modules.get(m.path)!).data;
        let err2 = 0;
        let norm2 = 0;
        for (let i = 0; i < delta.length; i++) {
          err2 += (delta[i]! - approx[i]!) ** 2;
          norm2 += delta[i]! ** 2;
        }
        expect(m.rank).toBe(3);
        expect(m.norm).toBeCloseTo(Math.sqrt(norm2), 9);
        expect(Math.abs(m.error - Math.sqrt(err2)) / Math.sqrt(err2)).toBeLessThan(1e-4);
        const outDim = e.shape[0]!;
        const n = delta.length / outDim;
        const s = singularValues(delta, outDim, n);
        let tail = 0;
        for (let j = 3; j < s.length; j++) tail += s[j]! ** 2;
        // F16 storage adds its own rounding on top of the truncation: allow it beside the 1% of the optimum.
        expect(m.error, m.path).toBeLessThanOrEqual(1.01 * Math.sqrt(tail) + 2e-3 * Math.sqrt(norm2));
        checked++;
      }
      expect(checked).toBe(r.modules.length);
    } finally {
      await base.close();
      await tuned.close();
    }
  });

  it('leaves out and counts modules whose Δ is zero; a diffusers folder base mixes with a single-file tuned', async () => {
    const tuned = await tunedWith('sd15', 'style-lora.kohya.safetensors', 'sd15-style.safetensors');
    const a = await extractLora(fx('sd15', 'base.safetensors'), tuned, {
      threads: 1,
      out: out('s1.safetensors'),
      rank: 4,
    });
    const b = await extractLora(fx('sd15', 'diffusers'), tuned, { threads: 1, out: out('s2.safetensors'), rank: 4 });
    const layout = getLayout('sd15', 'tiny');
    // Every UNet module the layout knows is compared (LCM targets, conv_in/out, time embedding).
    const unetTargets = layout.modules.filter((m) => m.component === 'unet');
    const attention = unetTargets.filter((m) => m.group === 'attention');
    expect(a.compared).toBe(unetTargets.length);
    expect(a.modules.length).toBe(attention.length);
    expect(a.zero.count).toBe(unetTargets.length - attention.length);
    expect(a.textEncoders).toBe(false);
    expect(b.modules.map((m) => [m.path, m.rank])).toEqual(a.modules.map((m) => [m.path, m.rank]));
    // The same factors, byte for byte (the metadata names the inputs, so only the tensors are compared).
    const f1 = await openSafetensors(out('s1.safetensors'));
    const f2 = await openSafetensors(out('s2.safetensors'));
    expect(f2.tensors.map((t) => t.name)).toEqual(f1.tensors.map((t) => t.name));
    for (const t of f1.tensors) expect(await f2.read(t.name)).toEqual(await f1.read(t.name));
    await f1.close();
    await f2.close();
    // With the text encoders.
    const c = await extractLora(fx('sd15', 'base.safetensors'), tuned, {
      threads: 1,
      out: out('s3.safetensors'),
      rank: 4,
      textEncoders: true,
    });
    const style = requirePlain(await loadLora(fx('sd15', 'style-lora.kohya.safetensors')));
    expect(c.modules.length).toBe(style.modules.size);
    expect(c.overall.relError).toBeLessThan(2e-3);
  });

  it('SDXL: the second text encoder’s q/k/v rows of one fused tensor, and dynamic rules', async () => {
    const tuned = await tunedWith('sdxl', 'style-lora.kohya-sgm.safetensors', 'sdxl-style.safetensors');
    const r = await extractLora(fx('sdxl', 'base.safetensors'), tuned, {
      threads: 1,
      out: out('xl.safetensors'),
      minEnergy: 0.999,
      maxRank: 8,
      textEncoders: true,
      dtype: 'F32',
    });
    const style = requirePlain(await loadLora(fx('sdxl', 'style-lora.kohya-sgm.safetensors')));
    expect(r.modules.length).toBe(style.modules.size);
    expect(r.modules.some((m) => m.path.startsWith('text_encoder_2.') && m.path.endsWith('q_proj'))).toBe(true);
    for (const m of r.modules) expect(m.rank).toBeLessThanOrEqual(4); // the LoRA's rank is 4
    expect(r.overall.keptEnergy).toBeGreaterThan(0.998);
    const got = requirePlain(await loadLora(out('xl.safetensors')));
    for (const [p, m] of style.modules)
      expect(relDiff(dense(m).data, dense(got.modules.get(p)!).data), p).toBeLessThan(0.05);
    // kohya's sv-ratio: ranks are one more than the count above σ_max/X, capped by the max rank.
    const k = await extractLora(fx('sdxl', 'base.safetensors'), tuned, {
      threads: 1,
      out: out('xl-ratio.safetensors'),
      svRatio: 1e6,
      maxRank: 3,
    });
    for (const m of k.modules) expect(m.rank).toBe(3);
  });

  it('bad input: other architecture, tuned == base, no rank, conflicting rules — typed errors, nothing written', async () => {
    await expectCode(
      extractLora(fx('sd15', 'base.safetensors'), fx('sdxl', 'base.safetensors'), {
        out: out('bad1.safetensors'),
        rank: 4,
      }),
      'ARCH_MISMATCH',
    );
    const same = await expectCode(
      extractLora(fx('sd15', 'base.safetensors'), fx('sd15', 'diffusers'), { out: out('bad2.safetensors'), rank: 4 }),
      'LORA_ZERO_DELTA',
    );
    expect(same.message).toMatch(/identical weights/);
    await expectCode(
      extractLora(fx('sd15', 'base.safetensors'), sd15Tuned, { out: out('bad3.safetensors') }),
      'OPTION_INVALID',
    );
    await expectCode(
      extractLora(fx('sd15', 'base.safetensors'), sd15Tuned, { out: out('bad4.safetensors'), svFro: 0.9, svRatio: 4 }),
      'OPTION_CONFLICT',
    );
    await expectCode(
      extractLora(fx('sd15', 'base.safetensors'), sd15Tuned, { out: sd15Tuned, rank: 4 }),
      'OUTPUT_WOULD_OVERWRITE_INPUT',
    );
    await expectCode(
      extractLora(fx('sd15', 'unet.safetensors'), sd15Tuned, {
        out: out('bad5.safetensors'),
        rank: 4,
        textEncoders: true,
      }),
      'ARCH_MISMATCH',
    );
    const left = (await fs.readdir(tmp)).filter((n) => n.startsWith('bad'));
    expect(left).toEqual([]);
  });
});

describe('lora-mix extract', () => {
  async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
    let o = '';
    let e = '';
    const code = await main(argv, {
      out: (s) => {
        o += s;
      },
      err: (s) => {
        e += s;
      },
      isTTY: false,
      cwd: FX,
    });
    return { code, out: o, err: e };
  }

  it('prints the report (text and --json), progress on stderr, and usage errors exit 2', async () => {
    const t = await run([
      'extract',
      '--base',
      'sd15/base.safetensors',
      '--tuned',
      sd15Tuned,
      '--rank',
      '8',
      '-o',
      out('c1.safetensors'),
    ]);
    expect(t.code).toBe(0);
    expect(t.out).toMatch(/extracted \d+ module\(s\) of sd15 \(tiny\)/);
    expect(t.out).toMatch(/overall: relative error/);
    expect(t.err).toMatch(/extract: \d+\/\d+ modules/);
    const j = await run([
      'extract',
      '--base',
      'sd15/base.safetensors',
      '--tuned',
      sd15Tuned,
      '--sv-fro',
      '0.9',
      '--conv-rank',
      '0',
      '--json',
      '-q',
      '-o',
      out('c2.safetensors'),
    ]);
    expect(j.code).toBe(0);
    expect(j.err).toBe('');
    const rep = JSON.parse(j.out) as ExtractReport;
    expect(rep.skipped[0]?.count).toBeGreaterThan(0);
    expect(rep.modules.every((m) => m.shape.length === 2 || m.shape[2] === 1)).toBe(true);
    const u = await run([
      'extract',
      '--base',
      'sd15/base.safetensors',
      '--tuned',
      sd15Tuned,
      '-o',
      out('c3.safetensors'),
    ]);
    expect(u.code).toBe(2);
    expect(u.err).toMatch(/choose a rank/);
    const h = await run(['extract', '--help']);
    expect(h.out).toMatch(/Examples:/);
  });
});
