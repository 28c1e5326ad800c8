import { describe, expect, it } from 'vitest';
import { blockIds, getLayout } from '../src/layout/index.js';
import type { Arch, ModuleEntry } from '../src/layout/types.js';
import {
  blockVectorForms,
  compileBlockWeights,
  mergeLoras,
  normalizeBlockId,
  parseBlockWeights,
  rankOf,
  SD15_ATTENTION_BLOCKS,
  SDXL_ATTENTION_BLOCKS,
} from '../src/lora/index.js';
import type { Lora, LoraModule } from '../src/lora/types.js';
import { dense, diffNorm, frob, makeLora, prng, randomModule } from './lora-helpers.js';

/** A LoRA on every module of a tiny layout (UNet and text encoders), rank 2. */
function fullLora(arch: Arch, seed: number, filter: (e: ModuleEntry) => boolean = () => true): Lora {
  const rand = prng(seed);
  const modules: Record<string, LoraModule> = {};
  for (const e of getLayout(arch, 'tiny').modules) {
    if (!filter(e)) continue;
    const [out, inn, kh, kw] = e.shape as number[];
    modules[e.path] = randomModule(rand, {
      out: out!,
      in: inn!,
      rank: 2,
      alpha: 1,
      ...(kh ? { kernel: [kh, kw!] as [number, number] } : {}),
    });
  }
  return makeLora(modules, arch, 'tiny');
}

const code = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    return (e as { code: string }).code;
  }
  return 'none';
};
const message = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  return '';
};

describe('block weight parsing', () => {
  it('reads ID=value lists; IDs not named keep 1; MID, lower case and short numbers are accepted', () => {
    expect([...parseBlockWeights('IN04=0,OUT05=0.5', 'sd15')]).toEqual([
      ['IN04', 0],
      ['OUT05', 0.5],
    ]);
    expect([...parseBlockWeights(' in4 = 0.25 ; mid=-1 ; base=2 ', 'sdxl')]).toEqual([
      ['IN04', 0.25],
      ['M00', -1],
      ['BASE', 2],
    ]);
    expect([...parseBlockWeights({ OUT08: 0 }, 'ssd1b')]).toEqual([['OUT08', 0]]);
    expect(normalizeBlockId('Out3')).toBe('OUT03');
    expect(normalizeBlockId('M00')).toBe('M00');
    expect(normalizeBlockId('nope')).toBeUndefined();
  });

  it('reads vectors in the accepted orders: 26/17 for SD1.5, 20/12 for SDXL and SSD-1B', () => {
    expect([...blockVectorForms('sd15').keys()].sort((a, b) => a - b)).toEqual([17, 26]);
    expect([...blockVectorForms('sdxl').keys()].sort((a, b) => a - b)).toEqual([12, 20]);
    expect([...blockVectorForms('ssd1b').keys()].sort((a, b) => a - b)).toEqual([12, 20]);
    const v26 = blockIds('sd15').map((_, i) => i / 10);
    const m26 = parseBlockWeights(v26.join(','), 'sd15');
    expect(m26.get('BASE')).toBe(0);
    expect(m26.get('IN00')).toBeCloseTo(0.1);
    expect(m26.get('M00')).toBeCloseTo(1.3);
    expect(m26.get('OUT11')).toBeCloseTo(2.5);
    const m17 = parseBlockWeights(
      SD15_ATTENTION_BLOCKS.map((_, i) => i),
      'sd15',
    );
    expect(m17.get('IN01')).toBe(1);
    expect(m17.get('M00')).toBe(7);
    expect(m17.has('IN03')).toBe(false);
    const m12 = parseBlockWeights(SDXL_ATTENTION_BLOCKS.map(() => '0').join(','), 'sdxl');
    expect(m12.get('OUT05')).toBe(0);
    expect(m12.has('OUT06')).toBe(false);
    expect(
      parseBlockWeights(
        blockIds('sdxl').map(() => 1),
        'sdxl',
      ).size,
    ).toBe(20);
  });

  it('rejects unknown IDs, wrong vector lengths and bad values with OPTION_INVALID', () => {
    expect(code(() => parseBlockWeights('IN09=0', 'sdxl'))).toBe('OPTION_INVALID');
    expect(message(() => parseBlockWeights('IN09=0', 'sdxl'))).toMatch(/unknown block ID 'IN09'.*IN08/);
    expect(code(() => parseBlockWeights('FOO=1', 'sd15'))).toBe('OPTION_INVALID');
    expect(code(() => parseBlockWeights('IN04=x', 'sd15'))).toBe('OPTION_INVALID');
    expect(code(() => parseBlockWeights('IN04=', 'sd15'))).toBe('OPTION_INVALID');
    expect(code(() => parseBlockWeights('IN04=1,in4=0', 'sd15'))).toBe('OPTION_INVALID');
    expect(code(() => parseBlockWeights('', 'sd15'))).toBe('OPTION_INVALID');
    expect(code(() => parseBlockWeights('1,0,1', 'sd15'))).toBe('OPTION_INVALID');
    expect(message(() => parseBlockWeights('1,0,1', 'sd15'))).toMatch(/3 value\(s\).*26 \(BASE.*or 17 \(/);
    expect(message(() => parseBlockWeights(new Array(26).fill(1), 'sdxl'))).toMatch(/20 .* or 12 /);
    expect(
      code(() =>
        parseBlockWeights(
          new Array(20).fill(1).map((v, i) => (i === 3 ? Number.NaN : v)),
          'sdxl',
        ),
      ),
    ).toBe('OPTION_INVALID');
    expect(code(() => compileBlockWeights(() => Number.NaN, 'sd15', 'tiny')('unet.conv_in'))).toBe('OPTION_INVALID');
  });
});

describe('block weights in a merge', () => {
  it("weight 0 on a block removes exactly that block's modules; every other module is untouched", () => {
    for (const [arch, id] of [
      ['sd15', 'IN04'],
      ['sd15', 'OUT02'],
      ['sdxl', 'M00'],
      ['sdxl', 'BASE'],
      ['ssd1b', 'OUT05'],
    ] as const) {
      const lora = fullLora(arch, 100);
      const layout = getLayout(arch, 'tiny');
      const { lora: out, report } = mergeLoras([lora], [{ blocks: `${id}=0` }]);
      const inBlock = layout.modules.filter((e) => e.block === id).map((e) => e.path);
      expect(inBlock.length).toBeGreaterThan(0);
      for (const p of inBlock) expect(out.modules.has(p)).toBe(false);
      expect(report.dropped.map((d) => d.path).sort()).toEqual([...inBlock].sort());
      for (const [p, m] of lora.modules) {
        if (inBlock.includes(p)) continue;
        const got = out.modules.get(p)!;
        expect(diffNorm(dense(got).data, dense(m).data), p).toBeLessThanOrEqual(1e-6 * frob(dense(m).data));
      }
    }
  });

  it("scales one input's block while the other input contributes in full", () => {
    const a = fullLora('sd15', 1),
      b = fullLora('sd15', 2);
    const layout = getLayout('sd15', 'tiny');
    const { lora } = mergeLoras([a, b], [{ weight: 0.8, blocks: 'OUT05=0.5,BASE=0' }, 1]);
    for (const e of layout.modules) {
      const k = e.block === 'OUT05' ? 0.4 : e.block === 'BASE' ? 0 : 0.8;
      const da = dense(a.modules.get(e.path)!).data,
        db = dense(b.modules.get(e.path)!).data;
      const want = da.map((v, i) => k * v + db[i]!);
      const got = lora.modules.get(e.path)!;
      expect(diffNorm(dense(got).data, want) / frob(want), e.path).toBeLessThan(1e-5);
      expect(rankOf(got)).toBe(k === 0 ? 2 : 4);
    }
  });

  it('modules without a block ID (time embedding, conv_out) keep the plain weight', () => {
    const a = fullLora('sdxl', 3);
    const zeros = blockIds('sdxl').map(() => 0);
    const { lora } = mergeLoras([a], [{ weight: -2, blocks: zeros }]);
    const noBlock = getLayout('sdxl', 'tiny')
      .modules.filter((e) => e.block === null)
      .map((e) => e.path);
    expect(noBlock).toContain('unet.time_embedding.linear_1');
    expect(noBlock).toContain('unet.conv_out');
    expect([...lora.modules.keys()].sort()).toEqual([...noBlock].sort());
    for (const p of noBlock) {
      const want = dense(a.modules.get(p)!).data.map((v) => -2 * v);
      expect(diffNorm(dense(lora.modules.get(p)!).data, want) / frob(want)).toBeLessThan(1e-6);
    }
  });

  it('short (attention-only) vectors leave the blocks they omit at 1, e.g. the resnet-only IN03 of LCM-LoRA', () => {
    const lcm = fullLora('sd15', 4, (e) => e.lcmTarget);
    const { lora } = mergeLoras([lcm], [{ blocks: SD15_ATTENTION_BLOCKS.map(() => 0) }]);
    const kept = [...lora.modules.keys()].map((p) => getLayout('sd15', 'tiny').byPath.get(p)!.block);
    expect(new Set(kept)).toEqual(new Set(['IN03', 'IN06', 'IN09', 'IN10', 'IN11', 'OUT00', 'OUT01', 'OUT02']));
  });

  it('a function gets the module path and its layout entry', () => {
    const a = fullLora('sd15', 5);
    const seen: [string, string | undefined][] = [];
    const { lora } = mergeLoras(
      [a],
      [
        {
          blocks: (path, entry) => {
            seen.push([path, entry?.path]);
            return entry?.group === 'attention' ? 1 : 0;
          },
        },
      ],
    );
    expect(seen.every(([p, e]) => p === e)).toBe(true);
    for (const p of lora.modules.keys()) expect(getLayout('sd15', 'tiny').byPath.get(p)!.group).toBe('attention');
  });

  it('rejects block weights that do not fit the architecture', () => {
    const a = fullLora('sdxl', 6, (e) => e.block === 'M00');
    expect(code(() => mergeLoras([a], [{ blocks: 'IN11=0' }]))).toBe('OPTION_INVALID');
    expect(code(() => mergeLoras([a], [{ blocks: new Array(26).fill(0) }]))).toBe('OPTION_INVALID');
  });
});
