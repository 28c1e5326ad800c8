/**
 * kohya-style resize (src/lora/resize.ts): kohya's rank rules on the research worked example, the cap and the
 * energy threshold as properties, the written delta = the optimal rank-k truncation, and bad options.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { main } from '../src/cli/main.js';
import { OptionError } from '../src/core/errors.js';
import { loadLora } from '../src/formats/index.js';
import { kohyaRank, kohyaResize } from '../src/lora/resize.js';
import { dense, diffNorm, makeLora, prng, randomModule, singularValues } from './lora-helpers.js';

const S = [10, 6, 4, 2.5, 1.5, 1, 0.6, 0.35, 0.2, 0.1, 0.05, 0.02];

describe('kohyaRank', () => {
  it('matches kohya on the worked example (research/methods.md §4)', () => {
    expect(kohyaRank(S, 64, { svRatio: 8 })).toBe(6);
    expect(kohyaRank(S, 64, { svFro: 0.9 })).toBe(3);
    expect(kohyaRank(S, 64, { svCumulative: 0.8 })).toBe(5);
    expect(kohyaRank(S, 64, { svFro: 0.97 }, 4)).toBe(4);
    // A dominant first value gives 2, never 1 (the lower clamp); a zero module gives 1.
    expect(kohyaRank([1, 1e-9], 64, { svFro: 0.5 })).toBe(2);
    expect(kohyaRank([1e-7], 64, { svFro: 0.9 })).toBe(1);
  });
});

describe('kohyaResize', () => {
  it('never exceeds the cap; below the cap the kept Frobenius fraction meets sv_fro; the delta is the optimal truncation', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1e6 }),
        fc.double({ min: 0.3, max: 0.99, noNaN: true }),
        fc.integer({ min: 1, max: 8 }),
        (seed, p, cap) => {
          const rand = prng(seed);
          const lora = makeLora({
            'unet.a': randomModule(rand, { out: 20, in: 16, rank: 8, alpha: 4 }),
            'unet.c': randomModule(rand, { out: 6, in: 4, rank: 5, kernel: [3, 3] }),
          });
          const { lora: out, report } = kohyaResize(lora, { rule: { svFro: p }, maxRank: cap });
          for (const m of report.modules) {
            expect(m.rankAfter).toBeLessThanOrEqual(cap);
            if (m.rankAfter < cap && m.rankAfter < m.rankBefore) expect(m.froRetained).toBeGreaterThanOrEqual(p - 1e-9);
            const src = dense(lora.modules.get(m.path)!);
            const sv = singularValues(src.data, src.out, src.n);
            const tail = Math.sqrt(sv.slice(m.rankAfter).reduce((s, v) => s + v * v, 0));
            const got = dense(out.modules.get(m.path)!);
            expect(got.data.length).toBe(src.data.length);
            expect(diffNorm(got.data, src.data)).toBeLessThanOrEqual(tail * 1.0001 + 1e-5 * sv[0]!);
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  it('a fixed rank gives min(K, r) per module, keeps the scale, and writes kohya metadata', () => {
    const rand = prng(4);
    const lora = makeLora({
      'unet.a': randomModule(rand, { out: 12, in: 10, rank: 6, alpha: 3 }),
      'unet.b': randomModule(rand, { out: 12, in: 10, rank: 2 }),
    });
    const { lora: out, report } = kohyaResize(lora, { rule: { rank: 4 } });
    expect(report.modules.map((m) => m.rankAfter)).toEqual([4, 2]);
    expect(out.modules.get('unet.a')!.alpha).toBeCloseTo(0.5 * 4, 12);
    expect(out.metadata.ss_network_dim).toBe('4');
    expect(kohyaResize(lora, { rule: { svRatio: 4 } }).lora.metadata.ss_network_dim).toBe('Dynamic');
  });

  it('bad options are OptionErrors', () => {
    const lora = makeLora({ 'unet.a': randomModule(prng(1), { out: 4, in: 4, rank: 2 }) });
    expect(() => kohyaResize(lora, { rule: { svFro: 1.5 } })).toThrow(OptionError);
    expect(() => kohyaResize(lora, { rule: { rank: 0 } })).toThrow(OptionError);
    expect(() => kohyaResize(lora, { rule: { svRatio: 2 }, maxRank: 0 })).toThrow(OptionError);
    expect(() => kohyaResize(lora, { rule: {} as never })).toThrow(OptionError);
  });
});

describe('lora-mix resize', () => {
  it('writes the dynamic ranks under the cap, reports kohya figures, and refuses two rules with nothing written', async () => {
    const tmp = await mkdtemp(path.join(tmpdir(), 'lora-mix-resize-'));
    try {
      let out = '',
        err = '';
      const io = {
        out: (s: string) => {
          out += s;
        },
        err: (s: string) => {
          err += s;
        },
        isTTY: false,
        cwd: path.resolve(__dirname, '..', 'fixtures'),
      };
      const o = path.join(tmp, 'r.safetensors');
      const code = await main(
        ['resize', 'sd15/style-lora.kohya.safetensors', '-o', o, '--sv-fro', '0.9', '--max-rank', '3', '--json'],
        io,
      );
      expect(code, err).toBe(0);
      const report = JSON.parse(out).report;
      expect(report.rankAfter.max).toBeLessThanOrEqual(3);
      expect(report.meanFroRetained).toBeGreaterThan(0);
      const got = await loadLora(o);
      for (const m of got.modules.values())
        expect((m as { down: { shape: number[] } }).down.shape[0]).toBeLessThanOrEqual(3);
      const bad = await main(
        [
          'resize',
          'sd15/style-lora.kohya.safetensors',
          '-o',
          path.join(tmp, 'x.safetensors'),
          '--rank',
          '2',
          '--sv-fro',
          '0.5',
        ],
        io,
      );
      expect(bad).not.toBe(0);
      expect(await readdir(tmp)).toEqual(['r.safetensors']);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
});
