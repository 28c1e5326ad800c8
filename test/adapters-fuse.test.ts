/**
 * Fusing and verifying every adapter kind (fixtures/adapters/ on the tiny SD1.5 base): the fused weight is
 * W0 + w·Δ with Δ from the term against W0 (DoRA: ComfyUI's strength rule W0 + w·(W_dora − W0)), verifyFusion passes,
 * and for the kinds whose delta does not depend on the base, fusing with −w returns the base.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/fuse/index.js';
import { verifyFusion } from '../src/verify/index.js';
import { openSafetensors } from '../src/node/files.js';
import { getLayout } from '../src/layout/index.js';
import { termBias, termDelta, termNeedsBase } from '../src/lora/terms/index.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');
const BASE = path.join(FX, 'sd15', 'base.safetensors');
const KINDS = ['locon-tucker', 'loha', 'loha-tucker', 'lokr', 'full', 'glora', 'dora-out', 'dora-in', 'dora-peft'];
const W = 0.7;

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-adapters-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function readAll(file: string, keys: string[]): Promise<Map<string, Float32Array>> {
  const f = await openSafetensors(file);
  try {
    const out = new Map<string, Float32Array>();
    for (const k of keys) out.set(k, await f.readF32(k));
    return out;
  } finally {
    await f.close();
  }
}

describe('fuse and verify every adapter kind', () => {
  for (const kind of KINDS) {
    it(kind, async () => {
      const adapter = path.join(FX, 'adapters', `${kind}.safetensors`);
      const lora = await loadLora(adapter);
      const layout = getLayout('sd15', 'tiny');
      const entries = [...lora.modules.keys()].map((p) => layout.byPath.get(p)!);
      const keys = entries.map((e) => e.singleFileWeightKey);
      const fused = path.join(tmp, `${kind}.f32.safetensors`);
      const report = await fuseLoras(BASE, [adapter], [W], { out: fused, dtype: 'F32' });
      // Bias deltas (diff_b) land on the modules' bias tensors as targets of their own.
      const withBias = [...lora.modules.values()].filter((t) => t.bias !== undefined).length;
      expect(report.modulesFused).toBe(lora.modules.size);
      expect(report.tensors.fused).toBe(lora.modules.size + withBias);
      if (kind === 'full') expect(withBias).toBeGreaterThan(0);
      const w0 = await readAll(BASE, keys);
      const wf = await readAll(fused, keys);
      for (const e of entries) {
        const base = w0.get(e.singleFileWeightKey)!;
        const got = wf.get(e.singleFileWeightKey)!;
        const d = termDelta(lora.modules.get(e.path)!, e.path, base);
        let scale = 0;
        for (const x of d) scale = Math.max(scale, Math.abs(x));
        expect(scale, e.path).toBeGreaterThan(0);
        for (let i = 0; i < base.length; i++) {
          const exact = base[i]! + W * d[i]!;
          expect(Math.abs(got[i]! - exact), e.path).toBeLessThanOrEqual(1e-6 * scale + 2 ** -22 * Math.abs(exact));
        }
      }
      for (const e of entries) {
        const b = termBias(lora.modules.get(e.path)!);
        if (!b) continue;
        const key = e.singleFileWeightKey.replace(/\.weight$/, '.bias');
        const [b0, bf] = [(await readAll(BASE, [key])).get(key)!, (await readAll(fused, [key])).get(key)!];
        for (let i = 0; i < b.length; i++) expect(bf[i]!).toBeCloseTo(b0[i]! + W * b[i]!, 6);
      }
      const v = await verifyFusion(fused, BASE, [adapter], [W]);
      expect(v.ok).toBe(true);
      expect(v.modules.length).toBe(lora.modules.size + withBias);
      // A wrong weight fails verification.
      expect((await verifyFusion(fused, BASE, [adapter], [W * 0.5])).ok).toBe(false);

      const baseFree = [...lora.modules.values()].every((t) => !termNeedsBase(t));
      if (!baseFree) return;
      const back = path.join(tmp, `${kind}.back.safetensors`);
      await fuseLoras(fused, [adapter], [-W], { out: back, dtype: 'F16' });
      const wb = await readAll(back, keys);
      for (const e of entries) {
        const base = w0.get(e.singleFileWeightKey)!;
        const got = wb.get(e.singleFileWeightKey)!;
        for (let i = 0; i < base.length; i++) {
          // Within one F16 rounding of the base (F16 spacing is 2^-10 relative).
          expect(Math.abs(got[i]! - base[i]!), e.path).toBeLessThanOrEqual(2 ** -10 * Math.abs(base[i]!) + 2 ** -24);
        }
      }
    });
  }
});
