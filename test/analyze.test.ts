/**
 * analyzeLoras: norms, shares and cosines from the factors' Grams equal a dense f64 computation; a LoRA against
 * itself and against its negation gives cos ±1, 0% / 100% sign conflicts, and the summary names dominance and
 * cancelling with block weights the block parser accepts; the CLI's text, JSON and HTML.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/main.js';
import { loadLora } from '../src/formats/index.js';
import { resolveBaseTerms } from '../src/fuse/index.js';
import { termDelta } from '../src/lora/terms/index.js';
import { analyzeHtml, analyzeLoras, parseBlockWeights } from '../src/lora/index.js';
import type { Lora, Term } from '../src/lora/types.js';
import { scaleLora } from '../src/lora/scale.js';
import { dense } from './lora-helpers.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');
let tmp: string;
let lcm: Lora<Term>;
let style: Lora<Term>;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-analyze-'));
  lcm = (await loadLora(path.join(FX, 'sd15', 'lcm-lora.kohya.safetensors'))) as Lora<Term>;
  style = (await loadLora(path.join(FX, 'sd15', 'style-lora.kohya.safetensors'))) as Lora<Term>;
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('analyzeLoras', () => {
  it('norms, shares and cosines equal the dense computation, per module and in total', () => {
    const w = [1, -0.7];
    const r = analyzeLoras([
      { name: 'lcm', lora: lcm, weight: w[0]! },
      { name: 'style', lora: style, weight: w[1]! },
    ]);
    let checked = 0;
    let t11 = 0;
    let t22 = 0;
    let t12 = 0;
    for (const m of r.modules) {
      const a = lcm.modules.get(m.path);
      const b = style.modules.get(m.path);
      const da = a ? dense(a as never).data.map((x) => x * w[0]!) : null;
      const db = b ? dense(b as never).data.map((x) => x * w[1]!) : null;
      let aa = 0;
      let bb = 0;
      let ab = 0;
      const n = (da ?? db)!.length;
      for (let i = 0; i < n; i++) {
        const x = da?.[i] ?? 0;
        const y = db?.[i] ?? 0;
        aa += x * x;
        bb += y * y;
        ab += x * y;
      }
      t11 += aa;
      t22 += bb;
      t12 += ab;
      expect(m.norms[0]).toBeCloseTo(Math.sqrt(aa), 10);
      expect(m.norms[1]).toBeCloseTo(Math.sqrt(bb), 10);
      const m2 = aa + bb + 2 * ab;
      expect(m.merged).toBeCloseTo(Math.sqrt(m2), 10);
      expect(m.shares[0]! + m.shares[1]!).toBeCloseTo(1, 9);
      expect(m.shares[0]).toBeCloseTo((aa + ab) / m2, 6);
      if (da && db) {
        expect(m.cosines['0,1']).toBeCloseTo(ab / Math.sqrt(aa * bb), 6);
        checked++;
      } else expect(m.cosines['0,1']).toBeNull();
    }
    expect(checked).toBeGreaterThan(100);
    expect(r.total.cosines['0,1']).toBeCloseTo(t12 / Math.sqrt(t11 * t22), 6);
    expect(r.total.shares[1]).toBeCloseTo((t22 + t12) / (t11 + t22 + 2 * t12), 6);
    const energy = r.blocks.reduce((a, b) => a + b.energy, 0);
    expect(energy).toBeCloseTo(1, 9);
  });

  it('a LoRA against itself and its negation: cos ±1, 0% and 100% sign conflicts, cancelling named', () => {
    const same = analyzeLoras([
      { name: 'a', lora: style, weight: 1 },
      { name: 'b', lora: style, weight: 0.5 },
    ]);
    expect(same.total.cosines['0,1']).toBeCloseTo(1, 9);
    expect(same.total.conflicts.fraction).toBe(0);
    const opposed = analyzeLoras([
      { name: 'a', lora: style, weight: 1 },
      { name: 'b', lora: style, weight: -0.9 },
    ]);
    expect(opposed.total.cosines['0,1']).toBeCloseTo(-1, 9);
    expect(opposed.total.conflicts.fraction).toBe(1);
    expect(opposed.summary.join('\n')).toMatch(/inputs cancel in: /);
  });

  it('names the dominated blocks and suggests block weights the parser accepts', () => {
    const r = analyzeLoras([
      { name: 'lcm', lora: scaleLora(lcm as never, 10) as Lora<Term>, weight: 1 },
      { name: 'style', lora: style, weight: 1 },
    ]);
    const text = r.summary.join('\n');
    expect(text).toMatch(/one input dominates in: .*M00 \(lcm 9\d%\)/);
    expect(r.suggestions).toHaveLength(1);
    const s = r.suggestions[0]!;
    expect(s.input).toBe(0);
    const parsed = parseBlockWeights(s.blocks, 'sd15');
    expect(parsed.size).toBeGreaterThan(3);
    for (const v of parsed.values()) expect(v).toBeLessThan(0.5);
    expect(text).toMatch(/--blocks-1 /);
  });

  it('sign conflicts: sampling rows of large modules, and trimming by density', () => {
    const all = analyzeLoras([
      { name: 'a', lora: lcm, weight: 1 },
      { name: 'b', lora: style, weight: 1 },
    ]);
    const sampled = analyzeLoras(
      [
        { name: 'a', lora: lcm, weight: 1 },
        { name: 'b', lora: style, weight: 1 },
      ],
      { sampleEntries: 64 },
    );
    expect(all.modules.some((m) => m.sampled)).toBe(false);
    expect(sampled.modules.some((m) => m.sampled)).toBe(true);
    expect(sampled.total.conflicts.compared).toBeLessThan(all.total.conflicts.compared);
    // Independent random-like deltas disagree on about half the entries.
    expect(all.total.conflicts.fraction!).toBeGreaterThan(0.4);
    expect(all.total.conflicts.fraction!).toBeLessThan(0.6);
    const trimmed = analyzeLoras(
      [
        { name: 'a', lora: lcm, weight: 1 },
        { name: 'b', lora: style, weight: 1 },
      ],
      { density: 0.2 },
    );
    expect(trimmed.total.conflicts.compared).toBeLessThan(all.total.conflicts.compared * 0.2);
    expect(() => analyzeLoras([{ name: 'a', lora: lcm, weight: 1 }], { density: 0 })).toThrow(/density/);
  });

  it('the HTML page is self-contained (inline SVG, no script, no network) and phone-sized', () => {
    const r = analyzeLoras([
      { name: 'lcm <1>', lora: lcm, weight: 1 },
      { name: 'style', lora: style, weight: 0.8 },
    ]);
    const html = analyzeHtml(r);
    expect(html).toMatch(/<svg viewBox=/);
    expect(html).toMatch(/name="viewport"/);
    expect(html).not.toMatch(/<script|https?:|src=/);
    expect(html).toMatch(/lcm &lt;1&gt;/);
  });
});

describe('lora-mix analyze', () => {
  it('text, --json and --html', async () => {
    let o = '';
    let e = '';
    const ctx = {
      out: (s: string) => {
        o += s;
      },
      err: (s: string) => {
        e += s;
      },
      isTTY: false,
      cwd: FX,
    };
    const html = path.join(tmp, 'a.html');
    const code = await main(
      ['analyze', 'sd15/lcm-lora.kohya.safetensors:1', 'sd15/style-lora.kohya.safetensors:0.8', '--html', html],
      ctx,
    );
    expect(code).toBe(0);
    expect(o).toMatch(/overall: .*% of the merged delta's energy/);
    expect(o).toMatch(/^total +350 /m);
    expect(e).toMatch(/wrote/);
    expect(await fs.readFile(html, 'utf8')).toMatch(/<svg/);
    o = '';
    expect(await main(['analyze', 'sd15/lcm-lora.kohya.safetensors', '--json', '-q'], ctx)).toBe(0);
    const r = JSON.parse(o) as { modules: unknown[]; blocks: unknown[] };
    expect(r.modules.length).toBe(278);
    e = '';
    expect(await main(['analyze'], ctx)).toBe(2);
    expect(e).toMatch(/at least one LoRA/);
  });

  it('DoRA/GLoRA/OFT modules: left out with how to include them, analysed as their exact deltas with --base', async () => {
    let o = '';
    const ctx = { out: (s: string) => void (o += s), err: () => undefined, isTTY: false, cwd: FX };
    expect(await main(['analyze', 'adapters/dora-out.safetensors:0.5', '-q'], ctx)).toBe(0);
    expect(o).toMatch(
      /skipped 9 module\(s\): a DoRA delta depends on the base weight: give the base checkpoint \(--base/,
    );
    o = '';
    const args = ['analyze', 'adapters/dora-out.safetensors:0.5', 'sd15/lcm-lora.kohya.safetensors:1'];
    expect(await main([...args, '--base', 'sd15/base.safetensors', '--threads', '1', '--json', '-q'], ctx)).toBe(0);
    const r = JSON.parse(o) as { skipped: unknown[]; modules: { path: string; norms: number[] }[] };
    expect(r.skipped).toEqual([]);
    // The DoRA's norms are those of its exact deltas against the base, at its weight.
    const resolved = await resolveBaseTerms(
      await loadLora(path.join(FX, 'adapters/dora-out.safetensors')),
      path.join(FX, 'sd15/base.safetensors'),
    );
    let checked = 0;
    for (const [p, t] of resolved.modules) {
      const m = r.modules.find((x) => x.path === p);
      expect(m, p).toBeDefined();
      const d = termDelta(t, p);
      let ss = 0;
      for (let i = 0; i < d.length; i++) ss += (d[i] ?? 0) ** 2;
      expect(m!.norms[0]! / (0.5 * Math.sqrt(ss)), p).toBeCloseTo(1, 5);
      checked++;
    }
    expect(checked).toBe(9);
  });
});
