/** The merge page's state rules (examples/web/state.ts): request identity, duplicates, architecture conflicts. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  archConflict,
  duplicatesOf,
  fileKey,
  parseRank,
  parseWeight,
  parseWeightField,
  percent,
  requestKey,
} from '../examples/web/state.js';
import type { MergeRequest } from '../examples/web/protocol.js';

const base: MergeRequest = {
  inputs: [
    { id: 1, weight: 1 },
    { id: 2, weight: 0.8 },
  ],
  format: 'kohya',
  dtype: 'auto',
  fileName: 'a+b.merged.safetensors',
};

describe('requestKey', () => {
  it('ignores the file name and changes with every input and option', () => {
    expect(requestKey({ ...base, fileName: 'other' })).toBe(requestKey(base));
    const variants: MergeRequest[] = [
      { ...base, inputs: [base.inputs[0]!, { id: 2, weight: 0.5 }] },
      { ...base, inputs: [base.inputs[1]!, base.inputs[0]!] },
      { ...base, inputs: [base.inputs[0]!] },
      { ...base, inputs: [base.inputs[0]!, { id: 3, weight: 0.8 }] },
      { ...base, inputs: [base.inputs[0]!, { id: 2, weight: 0.8, blocks: 'IN04=0' }] },
      { ...base, rank: 4 },
      { ...base, blocks: 'OUT05=0.5' },
      { ...base, format: 'peft' },
      { ...base, dtype: 'F32' },
    ];
    const keys = new Set([requestKey(base), ...variants.map(requestKey)]);
    expect(keys.size).toBe(variants.length + 1);
  });
});

describe('duplicatesOf', () => {
  it('points every later copy at the first one', () => {
    const a = fileKey({ name: 'a.safetensors', size: 10, lastModified: 1 });
    const b = fileKey({ name: 'b.safetensors', size: 10, lastModified: 1 });
    const d = duplicatesOf([
      { id: 1, key: a },
      { id: 2, key: b },
      { id: 3, key: a },
      { id: 4, key: a },
    ]);
    expect([...d.entries()]).toEqual([
      [3, 1],
      [4, 1],
    ]);
  });
  it('never flags the first occurrence of a key (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 12 }), (ks) => {
        const entries = ks.map((k, i) => ({ id: i, key: String(k) }));
        const d = duplicatesOf(entries);
        expect(d.size).toBe(ks.length - new Set(ks).size);
        for (const [dup, original] of d) {
          expect(original).toBeLessThan(dup);
          expect(entries[original]!.key).toBe(entries[dup]!.key);
          expect(d.has(original)).toBe(false);
        }
      }),
    );
  });
  it('flags the same content under another name once both hashes are known', () => {
    const d = duplicatesOf([
      { id: 1, key: 'a', sha256: 'x' },
      { id: 2, key: 'b', sha256: 'y' },
      { id: 3, key: 'c' }, // not read yet
      { id: 4, key: 'd', sha256: 'x' },
      { id: 5, key: 'd', sha256: 'x' },
      { id: 6, key: 'c', sha256: 'z' },
    ]);
    expect([...d.entries()]).toEqual([
      [4, 1],
      [5, 1],
      [6, 3],
    ]);
  });
  it('points a copy at a kept entry that shares its name or its content (property)', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.tuple(fc.integer({ min: 0, max: 4 }), fc.option(fc.integer({ min: 0, max: 3 }), { nil: undefined })),
          {
            maxLength: 12,
          },
        ),
        (xs) => {
          const entries = xs.map(([k, h], i) => ({
            id: i,
            key: String(k),
            sha256: h === undefined ? undefined : String(h),
          }));
          const d = duplicatesOf(entries);
          for (const [dup, original] of d) {
            expect(original).toBeLessThan(dup);
            expect(d.has(original)).toBe(false);
          }
          const kept = entries.filter((e) => !d.has(e.id));
          expect(new Set(kept.map((e) => e.key)).size).toBe(kept.length);
          const hashes = kept.flatMap((e) => (e.sha256 === undefined ? [] : [e.sha256]));
          expect(new Set(hashes).size).toBe(hashes.length);
        },
      ),
    );
  });
  it('tells files apart by size and modification time too', () => {
    const k = (size: number, lastModified: number) => fileKey({ name: 'x', size, lastModified });
    expect(new Set([k(1, 1), k(2, 1), k(1, 2)]).size).toBe(3);
  });
});

describe('archConflict', () => {
  it('is null for one architecture', () => {
    expect(archConflict([{ id: 1, fileName: 'a', arch: 'sd15', size: 'full' }])).toBeNull();
    expect(archConflict([])).toBeNull();
  });
  it('names every file with its architecture and marks the smaller group', () => {
    const c = archConflict([
      { id: 1, fileName: 'a.safetensors', arch: 'sdxl', size: 'full' },
      { id: 2, fileName: 'b.safetensors', arch: 'sd15', size: 'full' },
      { id: 3, fileName: 'c.safetensors', arch: 'sd15', size: 'full' },
    ]);
    expect(c?.message).toContain('a.safetensors is SDXL');
    expect(c?.message).toContain('b.safetensors, c.safetensors are SD 1.5');
    expect(c?.odd).toEqual([1]);
  });
  it('treats the tiny test layout as its own architecture', () => {
    const c = archConflict([
      { id: 1, fileName: 'a', arch: 'sd15', size: 'tiny' },
      { id: 2, fileName: 'b', arch: 'sd15', size: 'full' },
    ]);
    expect(c?.message).toContain('tiny test layout');
    expect(c?.odd).toEqual([2]);
  });
});

describe('field parsing', () => {
  it('reads weights and ranks', () => {
    expect(parseWeight(' 0.8 ')).toBe(0.8);
    expect(parseWeight('-1')).toBe(-1);
    expect(parseWeight('')).toBeUndefined();
    expect(parseWeight('abc')).toBeUndefined();
    expect(parseWeight('Infinity')).toBeUndefined();
    expect(parseRank('')).toEqual({});
    expect(parseRank('8')).toEqual({ rank: 8 });
    expect(parseRank('0').error).toContain('"0"');
    expect(parseRank('2.5').error).toContain('whole number');
  });
  it('reads a weight field as the CLI reads FILE:WEIGHT (a number or component strengths)', () => {
    expect(parseWeightField('0.8')).toEqual({ weight: 0.8 });
    expect(parseWeightField('unet=0.8,te=0.5')).toEqual({ weight: 1, components: { unet: 0.8, te: 0.5 } });
    expect(parseWeightField('te1=0, te2=1')).toEqual({ weight: 1, components: { te1: 0, te2: 1 } });
    const twice = parseWeightField('unet=1,unet=2');
    expect('error' in twice && twice.error).toContain('OPTION_INVALID');
    const bad = parseWeightField('unet=x');
    expect('error' in bad && bad.error).toContain('OPTION_INVALID');
    const word = parseWeightField('heavy');
    expect('error' in word && word.error).toContain('"heavy"');
  });
  it('percent is a clamped whole number', () => {
    expect(percent(1, 3)).toBe(33);
    expect(percent(5, 0)).toBe(0);
    expect(percent(7, 5)).toBe(100);
  });
});
