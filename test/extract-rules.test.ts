/** chooseExtractRank: kohya's dynamic rules on research/methods.md §4's worked example, and lora-mix's own rules. */
import { describe, expect, it } from 'vitest';
import { chooseExtractRank, validateRule } from '../src/lora/rank-rule.js';

const S = Float64Array.from([10, 6, 4, 2.5, 1.5, 1, 0.6, 0.35, 0.2, 0.1, 0.05, 0.02]);
const norm2 = S.reduce((a, s) => a + s * s, 0);
const sum = S.reduce((a, s) => a + s, 0);
const LEN = 16; // min(out, in): the zero singular values count in kohya's clamp

describe('chooseExtractRank', () => {
  it("reproduces kohya's sv_ratio, sv_fro and sv_cumulative (one more than the count)", () => {
    expect(chooseExtractRank({ kind: 'svRatio', value: 8, maxRank: 64 }, S, norm2, LEN)).toBe(6);
    expect(chooseExtractRank({ kind: 'svFro', value: 0.9, maxRank: 64 }, S, norm2, LEN)).toBe(3);
    expect(chooseExtractRank({ kind: 'svCumulative', value: 0.8, maxRank: 64 }, S, norm2, LEN, sum)).toBe(5);
  });

  it('a dominant first value gives rank 2 (the lower clamp), a tiny one rank 1; the cap wins', () => {
    const dom = Float64Array.from([100, 1e-4, 1e-5]);
    const n2 = dom.reduce((a, s) => a + s * s, 0);
    expect(chooseExtractRank({ kind: 'svFro', value: 0.5, maxRank: 64 }, dom, n2, 8)).toBe(2);
    expect(chooseExtractRank({ kind: 'svRatio', value: 2, maxRank: 64 }, dom, n2, 8)).toBe(2);
    const tiny = Float64Array.from([1e-7, 1e-8]);
    expect(chooseExtractRank({ kind: 'svRatio', value: 2, maxRank: 64 }, tiny, 1e-14, 8)).toBe(1);
    expect(chooseExtractRank({ kind: 'svRatio', value: 8, maxRank: 4 }, S, norm2, LEN)).toBe(4);
  });

  it('min-energy is the smallest rank reaching the share, rank is capped by what exists', () => {
    expect(chooseExtractRank({ kind: 'minEnergy', value: 0.9, maxRank: 64 }, S, norm2, LEN)).toBe(2);
    expect(chooseExtractRank({ kind: 'minEnergy', value: 1, maxRank: 64 }, S, norm2, LEN)).toBe(12);
    expect(chooseExtractRank({ kind: 'rank', rank: 64 }, S, norm2, LEN)).toBe(12);
    expect(chooseExtractRank({ kind: 'rank', rank: 5 }, S, norm2, LEN)).toBe(5);
    expect(chooseExtractRank({ kind: 'rank', rank: 5 }, new Float64Array(0), 0, LEN)).toBe(0);
  });

  it('validates the numbers', () => {
    expect(() => validateRule({ kind: 'rank', rank: 0 })).toThrow(/positive integer/);
    expect(() => validateRule({ kind: 'svFro', value: 1.5, maxRank: 4 })).toThrow(/svFro/);
    expect(() => validateRule({ kind: 'svRatio', value: 0.5, maxRank: 4 })).toThrow(/svRatio/);
    expect(() => validateRule({ kind: 'minEnergy', value: 0, maxRank: 4 })).toThrow(/minEnergy/);
  });
});
