import fc from 'fast-check';
import ndarray from 'ndarray';
import { describe, expect, it } from 'vitest';
import { serializeLora } from '../src/formats/index.js';
import { fillNormalish } from '../src/fixtures/random.js';
import { factorShapes } from '../src/fixtures/generate.js';
import { getLayout } from '../src/layout/index.js';
import type { Arch } from '../src/layout/types.js';
import type { Lora, LoraModule } from '../src/lora/types.js';
import { f16ToF32, f32ToF16 } from '../src/safetensors/index.js';
import { decodeBytes } from './formats-helpers.js';

interface Case {
  arch: Arch;
  picks: { index: number; rank: number; alpha: number; seed: number }[];
  format: 'kohya' | 'peft';
  kohyaPaths: 'diffusers' | 'sgm';
  dtype: 'F32' | 'F16';
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  arch: fc.constantFrom<Arch>('sd15', 'sdxl', 'ssd1b'),
  picks: fc.array(
    fc.record({
      index: fc.nat(100_000),
      rank: fc.integer({ min: 1, max: 6 }),
      alpha: fc.float({ min: -64, max: 64, noNaN: true, noDefaultInfinity: true }).filter((a) => a !== 0),
      seed: fc.nat(),
    }),
    { minLength: 1, maxLength: 30 },
  ),
  format: fc.constantFrom<'kohya' | 'peft'>('kohya', 'peft'),
  kohyaPaths: fc.constantFrom<'diffusers' | 'sgm'>('diffusers', 'sgm'),
  dtype: fc.constantFrom<'F32' | 'F16'>('F32', 'F16'),
});

function build(c: Case): Lora {
  // Embedding tables have no PEFT lora_A / lora_B spelling (refused) and kohya output keeps them under ComfyUI's
  // names (test/formats-text-extras.test.ts): every other module round-trips in both formats.
  const candidates = getLayout(c.arch, 'tiny').modules.filter((m) => m.extra !== 'embedding');
  const modules = new Map<string, LoraModule>();
  for (const p of c.picks) {
    const entry = candidates[p.index % candidates.length]!;
    const s = factorShapes(entry, p.rank);
    const n = (sh: number[]) => sh.reduce((a, b) => a * b, 1);
    modules.set(entry.path, {
      down: ndarray(fillNormalish(new Float32Array(n(s.down)), p.seed, 0.5), s.down),
      up: ndarray(fillNormalish(new Float32Array(n(s.up)), p.seed + 1, 0.5), s.up),
      alpha: p.alpha,
    });
  }
  return { arch: c.arch, size: 'tiny', modules, metadata: { ss_output_name: 'prop' } };
}

const roundF16 = (a: Float32Array): Float32Array => f16ToF32(f32ToF16(a));

describe('encode → decode is exact for random LoRAs in every format', () => {
  it('random module subsets, ranks and alphas; kohya (both spellings) and PEFT; F32 and F16', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, async (c) => {
        const lora = build(c);
        const bytes = serializeLora(lora, { format: c.format, kohyaPaths: c.kohyaPaths, dtype: c.dtype });
        const back = await decodeBytes(bytes, { arch: c.arch, size: 'tiny' });
        expect(back.format).toBe(c.format);
        expect(back.arch).toBe(c.arch);
        expect(back.dtype).toBe(c.dtype);
        expect(new Set(back.modules.keys())).toEqual(new Set(lora.modules.keys()));
        for (const [path, m] of lora.modules) {
          const o = back.modules.get(path)!;
          expect(o.alpha).toBe(m.alpha);
          expect(o.down.shape).toEqual(m.down.shape);
          expect(o.up.shape).toEqual(m.up.shape);
          const want = (x: Float32Array) => (c.dtype === 'F16' ? roundF16(x) : x);
          expect(Array.from(o.down.data)).toEqual(Array.from(want(m.down.data)));
          expect(Array.from(o.up.data)).toEqual(Array.from(want(m.up.data)));
        }
        expect(back.metadata.ss_output_name).toBe('prop');
        // Encoding the decoded LoRA again gives the same bytes; so does the other format and back.
        const again = serializeLora(back, { format: c.format, kohyaPaths: c.kohyaPaths, dtype: c.dtype });
        expect(Buffer.from(again).equals(Buffer.from(bytes))).toBe(true);
        const other = c.format === 'kohya' ? 'peft' : 'kohya';
        const via = await decodeBytes(serializeLora(back, { format: other, kohyaPaths: c.kohyaPaths }), {
          arch: c.arch,
          size: 'tiny',
        });
        const round = serializeLora(via, { format: c.format, kohyaPaths: c.kohyaPaths, dtype: c.dtype });
        expect(Buffer.from(round).equals(Buffer.from(bytes))).toBe(true);
      }),
      { numRuns: 60 },
    );
  });
});
