import * as path from 'node:path';
import ndarray from 'ndarray';
import { describe, expect, it } from 'vitest';
import { loadLora } from '../src/formats/index.js';
import { mergeLoras } from '../src/lora/index.js';
import { wasmProduct } from '../src/lora/product.js';
import { RankReducer, type FactorTerm } from '../src/lora/reduce.js';
import { mergeLorasParallel } from '../src/node/merge-threads.js';
import type { Lora } from '../src/lora/types.js';
import { prng, randomArray } from './lora-helpers.js';
import { requirePlain } from '../src/lora/terms/index.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');

function sameModules(a: Lora, b: Lora): void {
  expect([...a.modules.keys()]).toEqual([...b.modules.keys()]);
  for (const [p, m] of a.modules) {
    const o = b.modules.get(p)!;
    expect(o.alpha, p).toBe(m.alpha);
    expect(o.down.shape, p).toEqual(m.down.shape);
    expect(o.up.shape, p).toEqual(m.up.shape);
    expect(
      Buffer.from(o.down.data.buffer, o.down.data.byteOffset, o.down.data.byteLength).equals(
        Buffer.from(m.down.data.buffer, m.down.data.byteOffset, m.down.data.byteLength),
      ),
      p,
    ).toBe(true);
    expect(
      Buffer.from(o.up.data.buffer, o.up.data.byteOffset, o.up.data.byteLength).equals(
        Buffer.from(m.up.data.buffer, m.up.data.byteOffset, m.up.data.byteLength),
      ),
      p,
    ).toBe(true);
  }
}

describe('mergeLorasParallel', () => {
  it('gives byte-identical factors and the same report as mergeLoras, on worker threads', async () => {
    const lcm = requirePlain(await loadLora(path.join(FIXTURES, 'sdxl/lcm-lora.kohya.safetensors')));
    const style = requirePlain(await loadLora(path.join(FIXTURES, 'sdxl/style-lora.peft.safetensors')));
    for (const options of [{ rank: 5 }, { minEnergy: 0.97 }]) {
      const seq = mergeLoras([lcm, style], [1, -0.8], options);
      const progress: number[] = [];
      const par = await mergeLorasParallel([lcm, style], [1, -0.8], {
        ...options,
        threads: 2,
        onProgress: (d) => progress.push(d),
      });
      sameModules(par.lora, seq.lora);
      expect(par.report).toEqual(seq.report);
      expect(par.lora.metadata).toEqual(seq.lora.metadata);
      expect(progress.length).toBe(seq.report.modules.length);
      expect(progress.at(-1)).toBe(seq.report.modules.length);
    }
  });

  it('falls back to the calling thread for exact merges and threads = 1, and rejects bad input like mergeLoras', async () => {
    const style = requirePlain(await loadLora(path.join(FIXTURES, 'sd15/style-lora.peft.safetensors')));
    sameModules((await mergeLorasParallel([style], [2])).lora, mergeLoras([style], [2]).lora);
    sameModules(
      (await mergeLorasParallel([style], [2], { rank: 2, threads: 1 })).lora,
      mergeLoras([style], [2], { rank: 2 }).lora,
    );
    await expect(mergeLorasParallel([style], [Number.NaN], { rank: 2 })).rejects.toMatchObject({
      code: 'ARG_INVALID',
    });
  });

  it('reports a failure inside a worker with its code and module, and leaves no worker running', async () => {
    const style = requirePlain(await loadLora(path.join(FIXTURES, 'sd15/style-lora.peft.safetensors')));
    const bad = [...style.modules.keys()].at(-1)!;
    const m = style.modules.get(bad)!;
    const copy = Float32Array.from(m.down.data);
    copy[0] = Number.NaN;
    const broken: Lora = {
      ...style,
      modules: new Map([...style.modules, [bad, { ...m, down: ndarray(copy, m.down.shape.slice()) }]]),
    };
    await expect(mergeLorasParallel([broken, style], [1, 1], { rank: 2, threads: 2 })).rejects.toMatchObject({
      code: 'LORA_NUMERICAL_FAILURE',
      message: expect.stringContaining(bad),
    });
  });
});

describe('reduced factor products', () => {
  it('the WASM SIMD product and the JS path rebuild the same factors (to f32 accuracy)', () => {
    expect(wasmProduct()).not.toBeNull();
    const rand = prng(99);
    for (const [out, n, r1, r2, k] of [
      [37, 29, 6, 5, 4],
      [128, 72, 16, 8, 16],
      [5, 300, 3, 3, 2],
    ] as const) {
      const terms: FactorTerm[] = [
        { coef: 0.7, rank: r1, up: randomArray(rand, out * r1), down: randomArray(rand, r1 * n) },
        { coef: -1.1, rank: r2, up: randomArray(rand, out * r2), down: randomArray(rand, r2 * n) },
      ];
      const js = new RankReducer({ product: 'js' }),
        wasm = new RankReducer();
      js.analyze(terms, out, n);
      wasm.analyze(terms, out, n);
      const a = js.rebuild(k),
        b = wasm.rebuild(k);
      for (const [x, y] of [
        [a.up, b.up],
        [a.down, b.down],
      ] as const) {
        let scale = 0,
          diff = 0;
        for (let i = 0; i < x.length; i++) {
          scale = Math.max(scale, Math.abs(x[i]!));
          diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
        }
        expect(diff / scale).toBeLessThan(1e-5);
      }
    }
  });
});
