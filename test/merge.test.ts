import fc from 'fast-check';
import ndarray from 'ndarray';
import { describe, expect, it } from 'vitest';
import { ArchError, type LoraError } from '../src/core/errors.js';
import { getLayout } from '../src/layout/index.js';
import {
  deltaOf,
  mergeLoras,
  MERGE_METADATA_KEY,
  negateLora,
  rankOf,
  scaleLora,
  scaleOf,
  VERSION_METADATA_KEY,
} from '../src/lora/index.js';
import type { Lora, LoraModule } from '../src/lora/types.js';
import { VERSION } from '../src/core/version.js';
import {
  dense,
  diffNorm,
  frob,
  makeLora,
  prng,
  randomModule,
  values64,
  weightedDense,
  type ModuleSpec,
} from './lora-helpers.js';

/** A few real SD1.5 (tiny) module paths with their weight shapes: linear, 1×1 conv, 3×3 conv. */
const layout = getLayout('sd15', 'tiny');
const PATHS = [
  'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q',
  'unet.down_blocks.1.attentions.0.proj_in',
  'unet.down_blocks.1.resnets.0.conv1',
  'unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2',
  'text_encoder.text_model.encoder.layers.0.self_attn.k_proj',
];
const specOf = (path: string, rank: number, alpha: number): ModuleSpec => {
  const shape = layout.byPath.get(path)!.shape;
  return shape.length === 4
    ? { out: shape[0]!, in: shape[1]!, rank, alpha, kernel: [shape[2]!, shape[3]!] }
    : { out: shape[0]!, in: shape[1]!, rank, alpha };
};

/** A random LoRA over a subset of PATHS (mask bit i: PATHS[i] present). */
function randomLora(seed: number, mask: number, rank: number, alpha: number): Lora {
  const rand = prng(seed);
  const modules: Record<string, LoraModule> = {};
  PATHS.forEach((p, i) => {
    if (mask & (1 << i)) modules[p] = randomModule(rand, specOf(p, rank, alpha));
  });
  return makeLora(modules);
}

function expectDeltaClose(got: LoraModule | undefined, want: Float64Array | null, path: string): void {
  if (want === null) {
    expect(got, path).toBeUndefined();
    return;
  }
  expect(got, path).toBeDefined();
  const d = dense(got!).data;
  const scale = Math.max(frob(want), 1e-12);
  expect(diffNorm(d, want) / scale, path).toBeLessThan(1e-5);
}

const inputArb = fc.record({
  seed: fc.integer({ min: 1, max: 1e9 }),
  mask: fc.integer({ min: 1, max: (1 << PATHS.length) - 1 }),
  rank: fc.integer({ min: 1, max: 6 }),
  alpha: fc.oneof(fc.integer({ min: 1, max: 16 }), fc.double({ min: 0.1, max: 8, noNaN: true })),
  weight: fc.double({ min: -3, max: 3, noNaN: true }),
});

describe('deltaOf, rankOf, scaleOf', () => {
  it('computes (alpha/r)·up·down for a linear module (worked example)', () => {
    const m: LoraModule = {
      down: ndarray(Float32Array.of(1, 2, 3, 4, 5, 6), [2, 3]),
      up: ndarray(Float32Array.of(1, 0, 0, 1, 1, 1), [3, 2]),
      alpha: 1,
    };
    expect(rankOf(m)).toBe(2);
    expect(scaleOf(m)).toBe(0.5);
    const d = deltaOf(m);
    expect(d.shape).toEqual([3, 3]);
    expect(Array.from(d.data)).toEqual([0.5, 1, 1.5, 2, 2.5, 3, 2.5, 3.5, 4.5]);
  });

  it('reshapes a conv delta to [out, in, kh, kw] with ΔW[o,i,y,x] = s·Σk up[o,k]·down[k,i,y,x]', () => {
    const rand = prng(7);
    const m = randomModule(rand, { out: 3, in: 2, rank: 2, kernel: [3, 3], alpha: 4 });
    const d = deltaOf(m);
    expect(d.shape).toEqual([3, 2, 3, 3]);
    for (let o = 0; o < 3; o++)
      for (let i = 0; i < 2; i++)
        for (let y = 0; y < 3; y++)
          for (let x = 0; x < 3; x++) {
            let s = 0;
            for (let k = 0; k < 2; k++) s += m.up.get(o, k, 0, 0) * m.down.get(k, i, y, x);
            expect(d.get(o, i, y, x)).toBeCloseTo(2 * s, 5);
          }
  });

  it('rejects factors whose ranks disagree', () => {
    const m: LoraModule = {
      down: ndarray(new Float32Array(6), [2, 3]),
      up: ndarray(new Float32Array(9), [3, 3]),
      alpha: 1,
    };
    expect(() => deltaOf(m, 'unet.x')).toThrow(expect.objectContaining({ code: 'LORA_RANK_MISMATCH' }));
  });
});

describe('scaleLora / negateLora', () => {
  it('scales every delta, shares down, leaves the input untouched', () => {
    const a = randomLora(11, 0b11111, 3, 2);
    const before = [...a.modules.values()].map((m) => Array.from(m.up.data));
    const s = scaleLora(a, -2.5);
    for (const [p, m] of a.modules) {
      const got = dense(s.modules.get(p)!).data;
      const want = dense(m).data.map((v) => -2.5 * v);
      expect(diffNorm(got, want) / frob(want)).toBeLessThan(1e-6);
      expect(s.modules.get(p)!.down).toBe(m.down);
    }
    expect([...a.modules.values()].map((m) => Array.from(m.up.data))).toEqual(before);
    const n = negateLora(a);
    for (const [p, m] of a.modules)
      expectDeltaClose(
        n.modules.get(p),
        dense(m).data.map((v) => -v),
        p,
      );
  });

  it('rejects a non-finite scale', () => {
    expect(() => scaleLora(randomLora(1, 1, 1, 1), Number.NaN)).toThrow(
      expect.objectContaining({ code: 'ARG_INVALID' }),
    );
  });
});

describe('mergeLoras (exact)', () => {
  it('gives Σ wᵢ·Δᵢ on every module, with rank Σ rᵢ, alpha = rank and the shapes of the weight', () => {
    fc.assert(
      fc.property(fc.array(inputArb, { minLength: 1, maxLength: 4 }), (inputs) => {
        const loras = inputs.map((x) => randomLora(x.seed, x.mask, x.rank, x.alpha));
        const weights = inputs.map((x) => x.weight);
        const { lora, report } = mergeLoras(loras, weights);
        expect(report.exact).toBe(true);
        for (const path of PATHS) {
          const contributing = loras
            .map((l, i) => (l.modules.has(path) && weights[i] !== 0 ? i : -1))
            .filter((i) => i >= 0);
          const got = lora.modules.get(path);
          if (contributing.length === 0) {
            expect(got).toBeUndefined();
            continue;
          }
          expectDeltaClose(got, weightedDense(loras, weights, path), path);
          const R = contributing.reduce((s, i) => s + loras[i]!.modules.get(path)!.down.shape[0]!, 0);
          expect(rankOf(got!)).toBe(R);
          expect(got!.alpha).toBe(R);
          const w = layout.byPath.get(path)!.shape;
          expect(got!.down.shape).toEqual(w.length === 4 ? [R, w[1], w[2], w[3]] : [R, w[1]]);
          expect(got!.up.shape.slice(0, 2)).toEqual([w[0], R]);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('is linear: a merge of merges equals the flat merge', () => {
    fc.assert(
      fc.property(inputArb, inputArb, inputArb, fc.double({ min: -2, max: 2, noNaN: true }), (a, b, c, outer) => {
        const [A, B, C] = [a, b, c].map((x) => randomLora(x.seed, x.mask, x.rank, x.alpha)) as [Lora, Lora, Lora];
        const inner = mergeLoras([A, B], [a.weight, b.weight]).lora;
        const nested = mergeLoras([inner, C], [outer, c.weight]).lora;
        const flat = mergeLoras([A, B, C], [outer * a.weight, outer * b.weight, c.weight]).lora;
        for (const path of PATHS) {
          const want = weightedDense([A, B, C], [outer * a.weight, outer * b.weight, c.weight], path);
          if (want === null) continue;
          const n = nested.modules.get(path),
            f = flat.modules.get(path);
          if (!n || !f) {
            expect(frob(want)).toBe(0);
            continue;
          }
          expect(diffNorm(dense(n).data, dense(f).data) / Math.max(frob(want), 1e-12)).toBeLessThan(1e-5);
        }
      }),
      { numRuns: 40 },
    );
  });

  it('does not depend on input order beyond a permutation of the rank axis', () => {
    const A = randomLora(3, 0b11111, 4, 2),
      B = randomLora(4, 0b10111, 2, 8);
    const ab = mergeLoras([A, B], [0.7, -1.2]).lora;
    const ba = mergeLoras([B, A], [-1.2, 0.7]).lora;
    for (const path of PATHS) {
      const x = ab.modules.get(path)!,
        y = ba.modules.get(path)!;
      expectDeltaClose(x, dense(y).data, path);
      const rA = A.modules.get(path)!.down.shape[0]!;
      const rB = B.modules.get(path)?.down.shape[0] ?? 0;
      const n = x.down.size / rankOf(x);
      // down' rows: [A; B] versus [B; A] — the same rows, permuted.
      const dx = values64(x.down),
        dy = values64(y.down);
      expect(Array.from(dx.subarray(0, rA * n))).toEqual(Array.from(dy.subarray(rB * n)));
      expect(Array.from(dx.subarray(rA * n))).toEqual(Array.from(dy.subarray(0, rB * n)));
    }
  });

  it('subtracts with negative weights, and τ − τ has a zero delta', () => {
    const A = randomLora(21, 0b11111, 3, 3),
      B = randomLora(22, 0b11111, 5, 1);
    const d = mergeLoras([A, B], [1, -1]).lora;
    for (const path of PATHS) {
      const want = dense(A.modules.get(path)!).data.map((v, i) => v - dense(B.modules.get(path)!).data[i]!);
      expectDeltaClose(d.modules.get(path), want, path);
    }
    for (const z of [mergeLoras([A, negateLora(A)], [1, 1]).lora, mergeLoras([A, A], [0.8, -0.8]).lora]) {
      for (const path of PATHS) {
        const ref = frob(dense(A.modules.get(path)!).data);
        expect(frob(dense(z.modules.get(path)!).data) / ref).toBeLessThan(1e-6);
      }
    }
  });

  it('keeps modules present in only some inputs and leaves the inputs untouched', () => {
    const A = randomLora(31, 0b00011, 2, 2),
      B = randomLora(32, 0b11100, 3, 6);
    const snapshot = (l: Lora) =>
      [...l.modules.values()].map((m) => [Array.from(m.up.data), Array.from(m.down.data), m.alpha]);
    const sa = snapshot(A),
      sb = snapshot(B);
    const { lora } = mergeLoras([A, B], [2, 3]);
    expect([...lora.modules.keys()].sort()).toEqual([...PATHS].sort());
    for (const path of PATHS) expectDeltaClose(lora.modules.get(path), weightedDense([A, B], [2, 3], path), path);
    expect(snapshot(A)).toEqual(sa);
    expect(snapshot(B)).toEqual(sb);
  });

  it('writes modules in layout order and records the merge in the metadata', () => {
    const A = randomLora(41, 0b11111, 2, 2);
    const B = {
      ...randomLora(42, 0b00100, 2, 2),
      metadata: { ss_output_name: 'papercut' },
      source: 'style.safetensors',
    } as Lora;
    const { lora } = mergeLoras([A, B], [1, { weight: 0.8, blocks: 'IN04=0' }], { rank: 8 });
    const order = layout.modules.map((e) => e.path).filter((p) => lora.modules.has(p));
    expect([...lora.modules.keys()]).toEqual(order);
    expect(lora.metadata[VERSION_METADATA_KEY]).toBe(VERSION);
    const info = JSON.parse(lora.metadata[MERGE_METADATA_KEY]!);
    expect(info.rank).toBe(8);
    expect(info.inputs[0].weight).toBe(1);
    expect(info.inputs[1]).toEqual({
      source: 'style.safetensors',
      ss_output_name: 'papercut',
      weight: { weight: 0.8, blocks: 'IN04=0' },
    });
  });

  it('drops a module whose every weight is zero and reports it', () => {
    const A = randomLora(51, 0b00011, 2, 2),
      B = randomLora(52, 0b00110, 2, 2);
    const { lora, report } = mergeLoras([A, B], [0, 1]);
    expect(lora.modules.has(PATHS[0]!)).toBe(false);
    expect(report.dropped).toEqual([{ path: PATHS[0], reason: 'zero-weight' }]);
    expect(rankOf(lora.modules.get(PATHS[1]!)!)).toBe(2);
    expect(report.written).toBe(2);
  });

  it('rejects inputs of different architectures', () => {
    const A = randomLora(1, 1, 1, 1);
    const B = { ...A, arch: 'sdxl' as const };
    const C = { ...A, size: 'full' as const };
    for (const other of [B, C]) {
      let err: unknown;
      try {
        mergeLoras([A, other], [1, 1]);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ArchError);
      expect((err as ArchError).code).toBe('ARCH_MISMATCH');
      expect((err as ArchError).message).toMatch(/input 2/);
    }
  });

  it('rejects a module whose factors change different weights in different inputs', () => {
    const rand = prng(5);
    const A = makeLora({ 'unet.x': randomModule(rand, { out: 4, in: 6, rank: 2 }) });
    const B = makeLora({ 'unet.x': randomModule(rand, { out: 4, in: 5, rank: 2 }) });
    const C = makeLora({ 'unet.x': randomModule(rand, { out: 4, in: 6, rank: 2, kernel: [3, 3] }) });
    for (const other of [B, C]) {
      expect(() => mergeLoras([A, other], [1, 1])).toThrow(
        expect.objectContaining({ code: 'LORA_SHAPE_MISMATCH', message: expect.stringMatching(/unet\.x/) }),
      );
    }
    // A 1×1 conv spelled [r, in, 1, 1] and a linear-shaped [r, in] factor describe the same weight.
    const D = makeLora({ 'unet.x': randomModule(rand, { out: 4, in: 6, rank: 2, kernel: [1, 1] }) });
    const { lora } = mergeLoras([A, D], [1, -0.5]);
    expectDeltaClose(lora.modules.get('unet.x'), weightedDense([A, D], [1, -0.5], 'unet.x'), 'unet.x');
  });

  it('validates weights and options', () => {
    const A = randomLora(1, 1, 2, 2);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return (e as LoraError).code;
      }
      return 'none';
    };
    expect(code(() => mergeLoras([A], [Number.NaN]))).toBe('ARG_INVALID');
    expect(code(() => mergeLoras([A], [Infinity]))).toBe('ARG_INVALID');
    expect(code(() => mergeLoras([A, A], [1]))).toBe('ARG_INVALID');
    expect(code(() => mergeLoras([A], [{ weight: Number.NaN, blocks: 'IN04=0' }]))).toBe('ARG_INVALID');
    expect(code(() => mergeLoras([], []))).toBe('ARG_MISSING');
    expect(code(() => mergeLoras([A], [1], { rank: 0 }))).toBe('OPTION_INVALID');
    expect(code(() => mergeLoras([A], [1], { rank: 2.5 }))).toBe('OPTION_INVALID');
    expect(code(() => mergeLoras([A], [1], { minEnergy: 0 }))).toBe('OPTION_INVALID');
    expect(code(() => mergeLoras([A], [1], { minEnergy: 1.01 }))).toBe('OPTION_INVALID');
  });

  it('reports progress once per module', () => {
    const A = randomLora(61, 0b11111, 2, 2);
    const calls: [number, number][] = [];
    mergeLoras([A], [1], { onProgress: (d, t) => calls.push([d, t]) });
    expect(calls).toEqual(PATHS.map((_, i) => [i + 1, PATHS.length]));
  });
});
