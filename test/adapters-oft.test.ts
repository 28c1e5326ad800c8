/**
 * OFT and BOFT (LyCORIS diag-OFT / BOFT, kohya OFT, the old oft_diag) as term kinds, against the independent f64 model
 * of test/oft-helpers.ts: the terms read from the fixtures, orthogonality, the constraint, hand-computed 2 × 2 and
 * 4-row cases, the shape refusals, and PEFT's layout refused. Through the commands: test/oft-fuse.test.ts.
 */
import path from 'node:path';
import ndarray from 'ndarray';
import { describe, expect, it } from 'vitest';
import { loadLora } from '../src/formats/index.js';
import { termDelta, termLabel, termShape, termWeightedDelta } from '../src/lora/terms/index.js';
import { cayleyRotations, skewNorm } from '../src/lora/terms/rotation.js';
import type { BoftTerm, OftTerm, Term } from '../src/lora/types.js';
import {
  adapter,
  baseWeights,
  FX,
  KINDS,
  type Mat,
  maxAbs,
  referenceRotated,
  referenceRotations,
  solve,
} from './oft-helpers.js';

// ---- the algebra ------------------------------------------------------------------------------------------------

describe('rotations', () => {
  it('the Cayley transform is orthogonal and matches the solved form', () => {
    const b = 5;
    const blocks = Float32Array.from({ length: 3 * b * b }, (_, i) => Math.sin(i * 1.7) * 0.4);
    const r = cayleyRotations(blocks, 3, b, 0);
    const ref = referenceRotations(blocks, 3, b, 0);
    for (let k = 0; k < 3; k++) {
      const rk = r.subarray(k * b * b, (k + 1) * b * b);
      for (let i = 0; i < b * b; i++) expect(Math.abs(rk[i]! - ref[k]![i]!)).toBeLessThan(1e-13);
      for (let i = 0; i < b; i++)
        for (let j = 0; j < b; j++) {
          let s = 0;
          for (let l = 0; l < b; l++) s += rk[l * b + i]! * rk[l * b + j]!;
          expect(Math.abs(s - (i === j ? 1 : 0))).toBeLessThan(1e-13);
        }
    }
  });

  it('the constraint scales Q to norm c when ‖Q‖ exceeds it, and leaves it otherwise', () => {
    const b = 4;
    const blocks = Float32Array.from({ length: 2 * b * b }, (_, i) => Math.cos(i * 0.9) * 0.3);
    const norm = skewNorm(blocks, 2, b);
    // R = (I + Q)(I − Q)⁻¹ ⇒ Q = (R − I)(R + I)⁻¹: read Q back from the rotation and take its norm.
    const qNorm = (c: number): number => {
      const r = cayleyRotations(blocks, 2, b, c);
      let s = 0;
      for (let k = 0; k < 2; k++) {
        const rk = r.subarray(k * b * b, (k + 1) * b * b);
        const plus = Float64Array.from(rk, (x, i) => x + (i % (b + 1) === 0 ? 1 : 0));
        const minus = Float64Array.from(rk, (x, i) => x - (i % (b + 1) === 0 ? 1 : 0));
        // Q·(R + I) = R − I  ⇔  (R + I)ᵀ·Qᵀ = (R − I)ᵀ
        const tr = (m: Mat): Mat => Float64Array.from(m, (_, i) => m[(i % b) * b + Math.floor(i / b)]!);
        const qt = solve(tr(plus), tr(minus), b);
        for (const x of qt) s += x * x;
      }
      return Math.sqrt(s);
    };
    expect(qNorm(0)).toBeCloseTo(norm, 10);
    expect(qNorm(norm * 2)).toBeCloseTo(norm, 10);
    expect(qNorm(norm / 3)).toBeCloseTo(((norm / 3) * norm) / (norm + 1e-8), 10);
  });

  it('a hand-computed 2 × 2 OFT: B = [[0, ½], [0, 0]] rotates W0 = I to [[0.6, −0.8], [0.8, 0.6]]', () => {
    const t: OftTerm = {
      kind: 'oft',
      shape: [2, 2],
      blocks: ndarray(Float32Array.of(0, 0.5, 0, 0), [1, 2, 2]),
      cayley: true,
      constraint: 0,
    };
    // Q = [[0, ½], [−½, 0]], R = (I + Q)(I − Q)⁻¹ = [[0.6, 0.8], [−0.8, 0.6]]; OFT applies Rᵀ to the rows.
    const d = termDelta(t, 'm', Float32Array.of(1, 0, 0, 1));
    const expected = [0.6 - 1, -0.8, 0.8, 0.6 - 1];
    for (let i = 0; i < 4; i++) expect(d[i]).toBeCloseTo(expected[i]!, 6);
    // ComfyUI's strength rule: w²·Δ.
    const half = termWeightedDelta(t, 'm', 0.5, Float32Array.of(1, 0, 0, 1));
    for (let i = 0; i < 4; i++) expect(half[i]).toBeCloseTo(0.25 * expected[i]!, 6);
  });

  it('a hand-computed 4-row BOFT stage 0 with b = 2 rotates rows (0, 1) and (2, 3); stage 1 pairs (0, 2) and (1, 3)', () => {
    const w0 = Float32Array.of(1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1);
    const block = [0, 0.5, 0, 0]; // R = [[0.6, 0.8], [−0.8, 0.6]]
    const one: BoftTerm = {
      kind: 'boft',
      shape: [4, 4],
      blocks: ndarray(Float32Array.from([...block, ...[0, 0, 0, 0]]), [1, 2, 2, 2]),
      constraint: 0,
    };
    const d1 = termDelta(one, 'm', w0);
    // stage 0: k = 1, positions are rows in order; block 0 = rows 0, 1 multiplied by R (not Rᵀ).
    expect([...d1.subarray(0, 8)].map((x) => +x.toFixed(6))).toEqual([-0.4, 0.8, 0, 0, -0.8, -0.4, 0, 0]);
    const two: BoftTerm = {
      kind: 'boft',
      shape: [4, 4],
      blocks: ndarray(Float32Array.from([...[0, 0, 0, 0], ...[0, 0, 0, 0], ...block, ...[0, 0, 0, 0]]), [2, 2, 2, 2]),
      constraint: 0,
    };
    const d2 = termDelta(two, 'm', w0);
    // stage 1: k = 2, order [0, 2, 1, 3]: block 0 = rows 0 and 2.
    expect([...d2].map((x) => +x.toFixed(6))).toEqual([-0.4, 0, 0.8, 0, 0, 0, 0, 0, -0.8, 0, -0.4, 0, 0, 0, 0, 0]);
  });

  it('refuses blocks that do not fit, naming the module', () => {
    const bad = (blocks: ndarray.NdArray<Float32Array>, shape = [8, 3], kind: 'oft' | 'boft' = 'oft'): Term =>
      kind === 'oft' ? { kind, shape, blocks, cayley: true, constraint: 0 } : { kind, shape, blocks, constraint: 0 };
    const z = (n: number) => new Float32Array(n);
    expect(() => termShape(bad(ndarray(z(2 * 4 * 3), [2, 4, 3])), 'unet.x')).toThrow(/unet\.x.*\[n, b, b\]/);
    expect(() => termShape(bad(ndarray(z(3 * 4 * 4), [3, 4, 4])), 'unet.x')).toThrow(/12 output rows/);
    // 8 rows, b = 2: stages 0–2 pair rows in groups of 2, 4, 8; a fourth stage would need groups of 16.
    expect(() => termShape(bad(ndarray(z(3 * 4 * 2 * 2), [3, 4, 2, 2]), [8, 3], 'boft'), 'unet.x')).not.toThrow();
    expect(() => termShape(bad(ndarray(z(4 * 4 * 2 * 2), [4, 4, 2, 2]), [8, 3], 'boft'), 'unet.x')).toThrow(/stage 3/);
    expect(() =>
      termShape(
        { kind: 'oft', shape: [8, 3], blocks: ndarray(z(32), [2, 4, 4]), cayley: true, constraint: 0, rescale: z(4) },
        'unet.x',
      ),
    ).toThrow(/rescale holds 4 values; expected 8/);
    expect(() => termDelta(bad(ndarray(z(32), [2, 4, 4])), 'unet.x')).toThrow(
      expect.objectContaining({ code: 'LORA_NEEDS_BASE' }),
    );
  });
});

// ---- the files --------------------------------------------------------------------------------------------------

describe.each(KINDS)('%s fixture', (kind) => {
  it('reads as its kind, and its Δ equals the independent model on the raw tensors', async () => {
    const lora = await loadLora(adapter(kind));
    const w0 = await baseWeights([...lora.modules.keys()]);
    expect(lora.modules.size).toBeGreaterThan(0);
    for (const [p, t] of lora.modules) {
      expect(termLabel(t)).toBe(kind === 'boft' ? 'BOFT' : 'OFT');
      const term = t as OftTerm | BoftTerm;
      if (kind === 'oft' || kind === 'boft') expect(term.rescale).toBeDefined();
      const base = w0.get(p)!;
      const ref = referenceRotated(term, base);
      const d = termDelta(t, p, base);
      const scale = maxAbs(base);
      for (let i = 0; i < d.length; i++) expect(Math.abs(d[i]! - (ref[i]! - base[i]!))).toBeLessThan(1e-6 * scale);
      expect(maxAbs(d)).toBeGreaterThan(0);
    }
  });
});

it('a PEFT OFT file (oft_r) is refused naming its layout', async () => {
  await expect(loadLora(path.join(FX, 'bad', 'oft.safetensors'))).rejects.toMatchObject({
    code: 'FORMAT_UNSUPPORTED_ADAPTER',
    message: expect.stringMatching(/PEFT OFT\/BOFT/),
  });
});
