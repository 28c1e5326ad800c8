/**
 * Merge methods (src/lora/methods.ts, method-module.ts): PEFT semantics and order on dense task tensors, an
 * independent transcription of TIES, the properties of issue 14, rank-K output within 0.1% of Eckart–Young, and
 * typed errors for bad requests.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { OptionError } from '../src/core/errors.js';
import { mergeLoras } from '../src/lora/merge.js';
import { METHODS, methodsTable, resolveMethod } from '../src/lora/methods.js';
import { magnitudePrune } from '../src/lora/sparsify.js';
import { methodDelta, methodRequestOf } from './methods-helpers.js';
import { dense, makeLora, prng, randomArray, randomModule, singularValues } from './lora-helpers.js';

const P = { density: 1, majoritySign: 'total' as const, seed: 0, t: 0.5 };
const noRng = () => () => 0;

/** Independent TIES (research/methods.md §1), f64: trim, elect on unweighted, weighted disjoint mean. */
function tiesReference(xs: Float64Array[], w: number[], d: number, mode: 'total' | 'frequency'): Float64Array {
  const trimmed = xs.map((x) => {
    const k = Math.floor(d * x.length);
    const order = [...x.keys()].sort((a, b) => Math.abs(x[b]!) - Math.abs(x[a]!) || a - b);
    const t = new Float64Array(x.length);
    for (const i of order.slice(0, k)) t[i] = x[i]!;
    return t;
  });
  const out = new Float64Array(xs[0]!.length);
  for (let e = 0; e < out.length; e++) {
    const S = trimmed.reduce((s, t) => s + (mode === 'total' ? t[e]! : Math.sign(t[e]!)), 0);
    const sigma = S >= 0 ? 1 : -1;
    let num = 0,
      cnt = 0;
    trimmed.forEach((t, i) => {
      if (t[e] !== 0 && Math.sign(t[e]!) === sigma) {
        num += w[i]! * t[e]!;
        cnt++;
      }
    });
    out[e] = num / Math.max(1, cnt);
  }
  return out;
}

const arr = (n: number, seed: number, scale = 1) => randomArray(prng(seed), n, scale);

describe('method functions (one module)', () => {
  it('ties equals an independent transcription of PEFT (total and frequency, any density)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1e6 }),
        fc.integer({ min: 1, max: 4 }),
        fc.double({ min: 0.05, max: 1, noNaN: true }),
        fc.constantFrom('total', 'frequency'),
        (seed, count, density, mode) => {
          const xs = Array.from({ length: count }, (_, i) => arr(60, seed + i));
          const w = Array.from({ length: count }, (_, i) => 0.3 + 0.4 * i);
          const got = METHODS.ties.dense(xs, w, { ...P, density, majoritySign: mode }, noRng);
          const want = tiesReference(
            xs.map((x) => Float64Array.from(x)),
            w,
            density,
            mode,
          );
          for (let e = 0; e < 60; e++) expect(got[e]).toBeCloseTo(want[e]!, 5);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('ties with density 1 and agreeing signs equals linear; dare with density 1 equals linear', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1e6 }), fc.integer({ min: 1, max: 4 }), (seed, count) => {
        const base = arr(50, seed).map(Math.abs);
        const xs = Array.from({ length: count }, (_, i) =>
          arr(50, seed + 7 * i + 1).map((v, e) => Math.abs(v) * Math.sign(base[e]! - 0.5) || 1e-3),
        );
        const w = Array.from({ length: count }, (_, i) => 0.5 + 0.25 * i);
        const linear = METHODS.linear.dense(xs, w, P, noRng);
        // TIES divides by the agreeing count: with all signs agreeing, ties = (Σ wᵢτᵢ)/count.
        const ties = METHODS.ties.dense(xs, w, { ...P, density: 1 }, noRng);
        for (let e = 0; e < 50; e++) expect(ties[e]! * count).toBeCloseTo(linear[e]!, 5);
        const rng = (i: number) => prng(seed + i);
        const dare = METHODS.dare_linear.dense(xs, w, { ...P, density: 1 }, () => () => rng(0)() * 4294967296);
        expect(Array.from(dare)).toEqual(Array.from(linear));
      }),
      { numRuns: 40 },
    );
  });

  it('ties of one input at density 1 is that input times its weight (the disjoint mean of one)', () => {
    const x = arr(40, 3);
    const got = METHODS.ties.dense([x], [0.7], P, noRng);
    for (let e = 0; e < 40; e++) expect(got[e]).toBeCloseTo(0.7 * x[e]!, 6);
  });

  it('slerp at t = 0 and t = 1 returns the (weighted) inputs; parallel inputs fall back to lerp', () => {
    const a = arr(30, 1),
      b = arr(30, 2);
    expect(Array.from(METHODS.slerp.dense([a, b], [1, 1], { ...P, t: 0 }, noRng))).toEqual(Array.from(a));
    const one = METHODS.slerp.dense([a, b], [1, 1], { ...P, t: 1 }, noRng);
    for (let e = 0; e < 30; e++) expect(one[e]).toBeCloseTo(b[e]!, 6);
    const twice = a.map((v) => 2 * v);
    const mid = METHODS.slerp.dense([a, twice], [1, 1], { ...P, t: 0.5 }, noRng);
    for (let e = 0; e < 30; e++) expect(mid[e]).toBeCloseTo(1.5 * a[e]!, 6);
    // A module only the first input has: the formula with a zero second vector, cos(tπ/2)·v0.
    const lone = METHODS.slerp.dense([a, null], [1, 1], { ...P, t: 0.5 }, noRng);
    for (let e = 0; e < 30; e++) expect(lone[e]).toBeCloseTo(Math.SQRT1_2 * a[e]!, 6);
  });

  it('magnitude pruning keeps exactly ⌊d·n⌋ entries, the largest ones', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1e6 }), fc.double({ min: 0, max: 1, noNaN: true }), (seed, d) => {
        const x = arr(97, seed);
        x[5] = x[6] = 0.25; // a tie somewhere
        const kept = Float32Array.from(x);
        magnitudePrune(kept, d);
        const k = Math.floor(d * 97);
        const nz = [...kept].filter((v) => v !== 0).length;
        expect(nz).toBe(k);
        const minKept = Math.min(...[...kept].filter((v) => v !== 0).map(Math.abs));
        const maxDropped = Math.max(0, ...[...x].filter((_, i) => kept[i] === 0).map(Math.abs));
        if (k > 0 && k < 97) expect(minKept).toBeGreaterThanOrEqual(maxDropped);
      }),
      { numRuns: 80 },
    );
  });

  it('DARE keeps about density of the entries, rescaled, and the same seed gives the same bytes', () => {
    const rand = prng(11);
    const loras = [0, 1].map((i) => makeLora({ 'unet.m': randomModule(rand, { out: 40, in: 30, rank: 4 + i }) }));
    const req = methodRequestOf(loras, [1, 0.5], { method: 'dare_linear', density: 0.3, seed: 5, rank: 8 });
    const x = methodDelta(req);
    const y = methodDelta(req);
    expect(Buffer.from(x.buffer)).toEqual(Buffer.from(y.buffer));
    const z = methodDelta({ ...req, params: { ...req.params, seed: 6 } });
    expect(Buffer.from(x.buffer)).not.toEqual(Buffer.from(z.buffer));
    const single = methodDelta({ ...req, weights: [1, 0] });
    const tau = dense(loras[0]!.modules.get('unet.m')!).data;
    let kept = 0;
    single.forEach((v, e) => {
      if (v !== 0) {
        kept++;
        expect(v).toBeCloseTo(tau[e]! / 0.3, 4);
      }
    });
    expect(kept / single.length).toBeGreaterThan(0.22);
    expect(kept / single.length).toBeLessThan(0.38);
  });
});

describe('mergeLoras with a method', () => {
  it('writes rank-K factors within 0.1% of the optimal error of the method result, and reports kept energy', () => {
    const rand = prng(21);
    const loras = [0, 1, 2].map((i) =>
      makeLora({
        'unet.a': randomModule(rand, { out: 24, in: 20, rank: 4 + i, alpha: 2 }),
        'unet.conv': randomModule(rand, { out: 8, in: 4, rank: 3, kernel: [3, 3] }),
      }),
    );
    const weights = [1, 0.6, 0.8];
    for (const method of ['ties', 'dare_ties', 'magnitude_prune'] as const) {
      const { lora, report } = mergeLoras(loras, weights, { method, density: 0.5, rank: 5 });
      for (const path of ['unet.a', 'unet.conv']) {
        const req = methodRequestOf(loras, weights, { method, density: 0.5, rank: 5 }, path);
        const target = methodDelta(req);
        const sv = singularValues(Float64Array.from(target), req.out, req.fanIn);
        const best = Math.sqrt(sv.slice(5).reduce((s, v) => s + v * v, 0));
        const got = dense(lora.modules.get(path)!);
        let err = 0;
        for (let e = 0; e < target.length; e++) err += (target[e]! - got.data[e]!) ** 2;
        expect(Math.sqrt(err)).toBeLessThanOrEqual(best * 1.001 + 1e-6);
        const m = report.modules.find((x) => x.path === path)!;
        expect(m.rankAfter).toBe(5);
        expect(m.normKept).toBeGreaterThan(0);
        expect(m.normKept).toBeLessThanOrEqual(1);
      }
      expect(JSON.parse(lora.metadata.lora_mix_merge!).method).toBe(method);
    }
  });

  it('linear with a rank is the existing optimal reduction of the exact sum; concat stays exact', () => {
    const rand = prng(5);
    const loras = [0, 1].map(() => makeLora({ 'unet.a': randomModule(rand, { out: 16, in: 12, rank: 4 }) }));
    const a = mergeLoras(loras, [1, 0.5], { method: 'linear', rank: 3 });
    const b = mergeLoras(loras, [1, 0.5], { rank: 3 });
    expect(Array.from(a.lora.modules.get('unet.a')!.up.data)).toEqual(
      Array.from(b.lora.modules.get('unet.a')!.up.data),
    );
    expect(mergeLoras(loras, [1, 0.5], { method: 'concat' }).report.exact).toBe(true);
  });

  it('bad requests are OptionErrors: unknown method, density outside (0, 1], slerp with 3 inputs, no rank', () => {
    const rand = prng(2);
    const loras = [0, 1, 2].map(() => makeLora({ 'unet.a': randomModule(rand, { out: 6, in: 5, rank: 2 }) }));
    const bad =
      (o: object, n = 3) =>
      () =>
        mergeLoras(loras.slice(0, n), [1, 1, 1].slice(0, n), o as never);
    expect(bad({ method: 'median', rank: 2 })).toThrow(OptionError);
    expect(bad({ method: 'ties', density: 0, rank: 2 })).toThrow(/density/);
    expect(bad({ method: 'ties', density: 1.5, rank: 2 })).toThrow(OptionError);
    expect(bad({ method: 'slerp', rank: 2 })).toThrow(/exactly 2 inputs/);
    expect(bad({ method: 'ties' })).toThrow(/rank/);
    expect(bad({ method: 'ties', t: 0.5, rank: 2 })).toThrow(OptionError);
    expect(() => resolveMethod({ method: 'dare_ties', majoritySign: 'sum' }, 2)).toThrow(OptionError);
  });

  it('the docs table is the registry', async () => {
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(new URL('../docs/methods.md', import.meta.url), 'utf8')).toContain(methodsTable());
  });
});
