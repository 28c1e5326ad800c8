/**
 * verifyFusion checks bias deltas (PEFT lora_B.bias, ComfyUI diff_b) like weights: each lands as a target of its
 * own on the module's bias tensor, and a fused file whose biases did not get Σ λ·(alpha/r)·bias fails the check.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { syntheticLora } from '../src/fixtures/generate.js';
import { fuseLoras } from '../src/fuse/index.js';
import { verifyFusion } from '../src/verify/index.js';
import { encodedBytes, FIXTURES } from './formats-helpers.js';

const BASE = path.join(FIXTURES, 'sd15', 'base.safetensors');
let tmp = '';
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-verify-bias-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('verifyFusion and bias deltas', () => {
  it('checks every bias target, and fails when the fused biases are not base + w·Δb', async () => {
    const lora = path.join(tmp, 'peft-bias.safetensors');
    const enc = syntheticLora('sd15', 'tiny', {
      rank: 4,
      alpha: 8,
      targets: 'style',
      format: 'peft',
      dtype: 'F32',
      bias: true,
      seed: 5,
    });
    // Make the bias deltas large next to the factors so a wrong bias cannot hide under the weight's rounding.
    const scaled = {
      ...enc,
      tensors: enc.tensors.map((t) => {
        if (!t.name.endsWith('.lora_B.bias')) return t;
        const data = t.data as () => Uint8Array;
        return {
          ...t,
          data: () => {
            const v = new Float32Array(data().slice().buffer);
            return new Uint8Array(v.map((x) => x * 1000).buffer);
          },
        };
      }),
    };
    await fs.writeFile(lora, encodedBytes(scaled));
    const out = path.join(tmp, 'fused.safetensors');
    await fuseLoras(BASE, [lora], [0.8], { out, dtype: 'F32' });
    const ok = await verifyFusion(out, BASE, [lora], [0.8]);
    const biases = ok.modules.filter((m) => m.path.endsWith('.bias'));
    expect(biases.length).toBeGreaterThan(0);
    expect(ok.ok).toBe(true);
    expect(biases.every((m) => m.ok && !m.inconclusive)).toBe(true);
    // The same file checked as if fused at another weight: the bias targets fail too.
    const wrong = await verifyFusion(out, BASE, [lora], [0.4]);
    expect(wrong.modules.filter((m) => m.path.endsWith('.bias') && !m.ok).length).toBe(biases.length);
  });
});
