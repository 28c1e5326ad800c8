/**
 * unfuseLoras: unfuse(fuse(W)) is within ½ ulp(fused) + ½ ulp(result) of W for every element (checked here
 * independently of the report's own counting), the --base report says so, and a LoRA that was not fused is
 * flagged (metadata warning and an implausible distance).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/main.js';
import { halfUlp } from '../src/core/dtype.js';
import { fuseLoras, negateWeight, unfuseLoras } from '../src/fuse/index.js';
import { getLayout } from '../src/layout/index.js';
import { openSafetensors } from '../src/node/files.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');
const fx = (...p: string[]): string => path.join(FX, ...p);
let tmp: string;
const out = (name: string): string => path.join(tmp, name);
const BASE = fx('sd15', 'base.safetensors');
const LCM = fx('sd15', 'lcm-lora.kohya.safetensors');
const STYLE = fx('sd15', 'style-lora.kohya.safetensors');

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-unfuse-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** Max over every changed element of |result − W| − (½ulp(F) + ½ulp(result)), and how many exceed it. */
async function checkBound(original: string, fused: string, result: string, slack = 0): Promise<number> {
  const [o, f, r] = await Promise.all([original, fused, result].map((p) => openSafetensors(p)));
  let beyond = 0;
  let checked = 0;
  try {
    for (const e of getLayout('sd15', 'tiny').modules) {
      const key = e.singleFileWeightKey;
      if (!o!.has(key)) continue;
      const [wo, wf, wr] = await Promise.all([o!.readF32(key), f!.readF32(key), r!.readF32(key)]);
      const dt = o!.info(key).dtype;
      const dtr = r!.info(key).dtype;
      const dtf = f!.info(key).dtype;
      for (let i = 0; i < wo.length; i++) {
        const bound = halfUlp(wf[i]!, dtf) + halfUlp(wr[i]!, dtr) + slack * halfUlp(wo[i]!, dt);
        if (Math.abs(wr[i]! - wo[i]!) > bound) beyond++;
        checked++;
      }
    }
  } finally {
    await Promise.all([o, f, r].map((x) => x!.close()));
  }
  expect(checked).toBeGreaterThan(100_000);
  return beyond;
}

describe('unfuseLoras', () => {
  it('negateWeight negates numbers and block weights', () => {
    expect(negateWeight(0.8)).toBe(-0.8);
    expect(negateWeight({ blocks: 'IN01:1' })).toEqual({ blocks: 'IN01:1', weight: -1 });
    expect(negateWeight({ weight: 0.5, blocks: [1, 0] })).toEqual({ weight: -0.5, blocks: [1, 0] });
  });

  it('F16: unfuse(fuse(W)) is within ½ ulp(F) + ½ ulp(W″) of W everywhere, and --base reports it', async () => {
    const fused = out('f16-fused.safetensors');
    await fuseLoras(BASE, [LCM, STYLE], [1, 0.8], { out: fused });
    const back = out('f16-back.safetensors');
    const r = await unfuseLoras(fused, [LCM, STYLE], [1, 0.8], { out: back, base: BASE });
    expect(await checkBound(BASE, fused, back)).toBe(0);
    expect(r.warnings).toEqual([]);
    const d = r.distance!;
    expect(d.plausible).toBe(true);
    expect(d.beyondBound).toBe(0);
    expect(d.tensors).toBe(r.modulesFused);
    expect(d.histogram.reduce((a, h) => a + h.count, 0)).toBe(d.elements);
    // Most elements come back exactly; the worst is a few ulps of a near-zero weight.
    expect(d.histogram[0]!.count / d.elements).toBeGreaterThan(0.5);
    expect(d.worst).not.toBeNull();
  });

  it('F32: within the bound up to the f32 accumulation of the delta', async () => {
    const fused = out('f32-fused.safetensors');
    await fuseLoras(BASE, [LCM], [1], { out: fused, dtype: 'F32' });
    const back = out('f32-back.safetensors');
    await unfuseLoras(fused, [LCM], [1], { out: back, dtype: 'F32' });
    // Compared with the F16 original: the result rounds back to it (well within one f16 ulp).
    expect(await checkBound(BASE, fused, back, 0.01)).toBe(0);
  });

  it('a LoRA that was not fused: metadata warning and an implausible distance', async () => {
    const fused = out('style-only.safetensors');
    await fuseLoras(BASE, [STYLE], [1], { out: fused });
    const r = await unfuseLoras(fused, [LCM], [1], { out: out('wrong.safetensors'), base: BASE });
    expect(r.warnings.some((w) => /not among the LoRAs the fused file records/.test(w))).toBe(true);
    expect(r.distance!.plausible).toBe(false);
    expect(r.warnings.some((w) => /far from/.test(w))).toBe(true);
    // The wrong weight is caught too.
    const r2 = await unfuseLoras(fused, [STYLE], [0.5], { out: out('half.safetensors'), base: BASE });
    expect(r2.distance!.plausible).toBe(false);
  });

  it('lora-mix unfuse prints the histogram and the worst element', async () => {
    const fused = out('cli-fused.safetensors');
    await fuseLoras(BASE, [LCM], [1], { out: fused });
    let o = '';
    let e = '';
    const code = await main(
      [
        'unfuse',
        '--fused',
        fused,
        'sd15/lcm-lora.kohya.safetensors:1',
        '-o',
        out('cli-back.safetensors'),
        '--base',
        'sd15/base.safetensors',
        '-q',
      ],
      {
        out: (s) => {
          o += s;
        },
        err: (s) => {
          e += s;
        },
        isTTY: false,
        cwd: FX,
      },
    );
    expect(e).toBe('');
    expect(code).toBe(0);
    expect(o).toMatch(/^unfused \d+ module/);
    expect(o).toMatch(/0 \(exact\)/);
    expect(o).toMatch(/beyond ½ ulp\(fused\) \+ ½ ulp\(result\): 0 element/);
  });
});
