/**
 * OFT and BOFT through real files (fixtures/adapters/oft*.safetensors, boft.safetensors on the tiny SD1.5 base):
 * fuse with ComfyUI's strength rule (1 and 2 threads byte-identical, single file and diffusers folder), verify,
 * convert and merge with --base, unfuse — against the independent f64 model of test/oft-helpers.ts.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras, resolveBaseTerms, unfuseLoras } from '../src/fuse/index.js';
import { getLayout } from '../src/layout/index.js';
import { termDelta } from '../src/lora/terms/index.js';
import type { BoftTerm, OftTerm } from '../src/lora/types.js';
import { openSafetensors } from '../src/node/files.js';
import { verifyFusion } from '../src/verify/index.js';
import { runCli } from './cli-helpers.js';
import { adapter, BASE, baseWeights, FX, KINDS, ROOT, referenceRotated } from './oft-helpers.js';

const FOLDER = path.join(FX, 'sd15', 'diffusers');
const oneThread = (kind: string): string[] => (kind === KINDS[0] ? [] : ['--threads', '1']);

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-oft-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe.each(KINDS)('%s fixture through the commands', (kind) => {
  it('fuses with ComfyUI’s strength rule, the same bytes on 1 and 2 threads, and verifies', async () => {
    const w = 0.7;
    const lora = await loadLora(adapter(kind));
    const layout = getLayout('sd15', 'tiny');
    const outs = [1, 2].map((n) => path.join(tmp, `${kind}.t${n}.safetensors`));
    for (const [i, out] of outs.entries()) {
      await fuseLoras(BASE, [adapter(kind)], [w], { out, dtype: 'F32', threads: i + 1 });
    }
    const [a, b] = await Promise.all(outs.map((o) => fs.readFile(o)));
    expect(Buffer.compare(a!, b!)).toBe(0);
    const w0 = await baseWeights([...lora.modules.keys()]);
    const fused = await openSafetensors(outs[0]!);
    try {
      for (const [p, t] of lora.modules) {
        const base = w0.get(p)!;
        const got = await fused.readF32(layout.byPath.get(p)!.singleFileWeightKey);
        const term = t as OftTerm | BoftTerm;
        // OFT: W0 + w²·Δ; BOFT: W0 + w·(diag(s)·S_w·W0 − W0) with each stage blended w·R + (1 − w)·I.
        const rotated = referenceRotated(term, base, term.kind === 'boft' ? w : 1);
        const c = term.kind === 'oft' ? w * w : w;
        // The worst error relative to its bound (one expect per module: an expect per weight was most of the time).
        let worst = 0;
        for (let i = 0; i < got.length; i++) {
          const want = base[i]! + c * (rotated[i]! - base[i]!);
          worst = Math.max(worst, Math.abs(got[i]! - want) / (2 ** -22 * Math.max(1, Math.abs(want))));
        }
        expect(worst, p).toBeLessThanOrEqual(1);
      }
    } finally {
      await fused.close();
    }
    const ok = await verifyFusion(outs[0]!, BASE, [adapter(kind)], [w]);
    expect(ok.ok).toBe(true);
    const wrong = await verifyFusion(outs[0]!, BASE, [adapter(kind)], [w * 0.5]);
    expect(wrong.ok).toBe(false);
  });

  it('converts with --base to a plain LoRA whose Δ is exact, and fuses to the same checkpoint at strength 1', async () => {
    const lora = await loadLora(adapter(kind));
    const plain = await resolveBaseTerms(lora, BASE);
    const w0 = await baseWeights([...lora.modules.keys()]);
    for (const [p, t] of plain.modules) {
      const base = w0.get(p)!;
      const ref = referenceRotated(lora.modules.get(p) as OftTerm | BoftTerm, base);
      const d = termDelta(t, p);
      let worst = 0;
      for (let i = 0; i < d.length; i++) worst = Math.max(worst, Math.abs(d[i]! - (ref[i]! - base[i]!)));
      expect(worst, p).toBeLessThan(1e-6);
    }
    const out = path.join(tmp, `${kind}.plain.safetensors`);
    const cli = await runCli(
      // Worker threads (seconds to start under the test's TS loader) for the first kind only: the threaded deltas
      // are the single-thread bits (test/delta-pool.test.ts).
      ['convert', adapter(kind), '--to', 'kohya', '--dtype', 'fp32', '-o', out, '--base', BASE, ...oneThread(kind)],
      ROOT,
    );
    expect(cli.err).toBe('');
    expect(cli.code).toBe(0);
    const fa = path.join(tmp, `${kind}.fa.safetensors`);
    const fb = path.join(tmp, `${kind}.fb.safetensors`);
    await fuseLoras(BASE, [adapter(kind)], [1], { out: fa, dtype: 'F32' });
    await fuseLoras(BASE, [out], [1], { out: fb, dtype: 'F32' });
    const [A, B] = await Promise.all([openSafetensors(fa), openSafetensors(fb)]);
    try {
      for (const t of A.tensors) {
        const x = await A.readF32(t.name);
        const y = await B.readF32(t.name);
        let worst = 0;
        for (let i = 0; i < x.length; i++)
          worst = Math.max(worst, Math.abs(x[i]! - y[i]!) / (1e-6 * Math.max(1, Math.abs(x[i]!))));
        expect(worst, t.name).toBeLessThan(1);
      }
    } finally {
      await Promise.all([A.close(), B.close()]);
    }
  });

  it('unfuse takes the fused F32 checkpoint back to the base', async () => {
    const fused = path.join(tmp, `${kind}.u.safetensors`);
    const back = path.join(tmp, `${kind}.back.safetensors`);
    await fuseLoras(BASE, [adapter(kind)], [0.6], { out: fused, dtype: 'F32' });
    await unfuseLoras(fused, [adapter(kind)], [0.6], { out: back, dtype: 'F16' });
    const [a, b] = await Promise.all([openSafetensors(BASE), openSafetensors(back)]);
    try {
      let differ = 0;
      for (const t of a.tensors) {
        const x = new Uint16Array((await a.read(t.name)).slice().buffer);
        const y = new Uint16Array((await b.read(t.name)).slice().buffer);
        for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) differ++;
      }
      expect(differ).toBe(0);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe('commands', () => {
  it('inspect names the kinds and counts them', async () => {
    const r = await runCli(['inspect', adapter('boft'), '--json'], ROOT);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/"BOFT":\s*9/);
    const t = await runCli(['inspect', adapter('oft-diag')], ROOT);
    expect(t.out).toMatch(/OFT \(oft_diag\) ×9/);
    expect(t.out).not.toMatch(/no alpha/);
  });

  it('without --base, convert and merge refuse with LORA_NEEDS_BASE and write nothing', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'nobase-'));
    const c = await runCli(['convert', adapter('oft'), '--to', 'peft', '-o', path.join(dir, 'x.safetensors')], ROOT);
    expect(c.code).toBe(4);
    expect(c.err).toContain('LORA_NEEDS_BASE');
    const m = await runCli(
      ['merge', adapter('boft'), 'fixtures/sd15/lcm-lora.kohya.safetensors', '-o', path.join(dir, 'm.safetensors')],
      ROOT,
    );
    expect(m.code).toBe(4);
    expect(await fs.readdir(dir)).toEqual([]);
  });

  it('merge with --base and convert --rank report the error', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'base-'));
    const m = await runCli(
      [
        'merge',
        adapter('oft'),
        'fixtures/sd15/lcm-lora.kohya.safetensors:0.5',
        '-o',
        path.join(dir, 'm.safetensors'),
        '--base',
        BASE,
        '--dtype',
        'fp32',
        '-q',
      ],
      ROOT,
    );
    expect(m.err).toBe('');
    expect(m.code).toBe(0);
    const c = await runCli(
      [
        'convert',
        adapter('boft'),
        '--to',
        'kohya',
        '-o',
        path.join(dir, 'r.safetensors'),
        '--base',
        BASE,
        '--rank',
        '2',
        '--json',
        '-q',
      ],
      ROOT,
    );
    expect(c.err).toBe('');
    expect(c.code).toBe(0);
    expect(c.out).toMatch(/relative|reduction/i);
  });

  it('fuses into a diffusers folder like into the single file', async () => {
    const out = path.join(tmp, 'oft-folder');
    const r = await runCli(['fuse', '--base', FOLDER, `${adapter('oft')}:0.8`, '-o', out, '-q'], ROOT);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const v = await runCli(['verify', '--base', FOLDER, `${adapter('oft')}:0.8`, '--fused', out], ROOT);
    expect(v.code).toBe(0);
  });
});
