import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runCli } from './cli-helpers.js';
import { loadLora, saveLora } from '../src/formats/index.js';
import { getLayout } from '../src/layout/index.js';
import { MERGE_METADATA_KEY, mergeLoras, VERSION_METADATA_KEY } from '../src/lora/index.js';
import type { Lora } from '../src/lora/types.js';
import { VERSION } from '../src/core/version.js';
import { dense, diffNorm, frob, weightedDense } from './lora-helpers.js';
import { requirePlain } from '../src/lora/terms/index.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');

function run(argv: string[], isTTY = false): Promise<CliRun> {
  return runCli(argv, FIXTURES, { isTTY });
}

/** Largest relative difference between the deltas of two LoRAs, over the union of their modules. */
function maxRelDiff(a: Lora, b: Lora): number {
  let worst = 0;
  for (const p of new Set([...a.modules.keys(), ...b.modules.keys()])) {
    const x = a.modules.get(p),
      y = b.modules.get(p);
    if (!x || !y) return Infinity;
    const dx = dense(x).data,
      dy = dense(y).data;
    worst = Math.max(worst, diffNorm(dx, dy) / Math.max(frob(dy), 1e-30));
  }
  return worst;
}

describe.each(['sd15', 'sdxl'] as const)('LCM-LoRA + style LoRA fixtures (%s)', (arch) => {
  let tmp = '';
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), `lora-mix-merge-${arch}-`));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('merge written as kohya and as PEFT reloads to the same deltas, equal to λ1·Δ_LCM + λ2·Δ_style', async () => {
    const lcm = requirePlain(await loadLora(path.join(FIXTURES, arch, 'lcm-lora.kohya.safetensors')));
    const style = requirePlain(await loadLora(path.join(FIXTURES, arch, 'style-lora.peft.safetensors')));
    // The fixtures differ in rank and alpha, so the merge exercises both scales.
    const r = (l: Lora) => [...l.modules.values()][0]!;
    expect(r(lcm).down.shape[0]).not.toBe(r(style).down.shape[0]);
    const { lora } = mergeLoras([lcm, style], [1, 0.8]);
    const kohya = path.join(tmp, 'merged.kohya.safetensors');
    const peft = path.join(tmp, 'merged.peft.safetensors');
    await saveLora(lora, kohya, { format: 'kohya', dtype: 'F32' });
    await saveLora(lora, peft, { format: 'peft', dtype: 'F32' });
    const a = requirePlain(await loadLora(kohya)),
      b = requirePlain(await loadLora(peft));
    expect(a.format).toBe('kohya');
    expect(b.format).toBe('peft');
    expect(a.modules.size).toBe(new Set([...lcm.modules.keys(), ...style.modules.keys()]).size);
    expect(maxRelDiff(a, b)).toBe(0);
    for (const [p, m] of a.modules) {
      const want = weightedDense([lcm, style], [1, 0.8], p)!;
      expect(diffNorm(dense(m).data, want) / frob(want), p).toBeLessThan(1e-6);
      expect(m.alpha).toBe(m.down.shape[0]);
    }
  });

  it('the CLI writes the same merge, records inputs and weights, and refuses to overwrite an input', async () => {
    const out = path.join(tmp, 'cli.safetensors');
    const r = await run([
      'merge',
      `${arch}/lcm-lora.kohya.safetensors:1.0`,
      `${arch}/style-lora.kohya-sgm.safetensors:0.8`,
      '-o',
      out,
      '--dtype',
      'fp32',
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/merged 2 LoRA\(s\)/);
    expect(r.out).toMatch(/\(exact sum\)/);
    expect(r.err).toMatch(/merge: \d+\/\d+ modules\n/);
    const written = requirePlain(await loadLora(out));
    const lcm = requirePlain(await loadLora(path.join(FIXTURES, arch, 'lcm-lora.kohya.safetensors')));
    const style = requirePlain(await loadLora(path.join(FIXTURES, arch, 'style-lora.kohya-sgm.safetensors')));
    expect(maxRelDiff(written, mergeLoras([lcm, style], [1, 0.8]).lora)).toBeLessThan(1e-6);
    expect(written.metadata[VERSION_METADATA_KEY]).toBe(VERSION);
    const info = JSON.parse(written.metadata[MERGE_METADATA_KEY]!);
    expect(info.inputs).toEqual([
      expect.objectContaining({ source: 'lcm-lora.kohya.safetensors', weight: 1 }),
      expect.objectContaining({ source: 'style-lora.kohya-sgm.safetensors', weight: 0.8 }),
    ]);

    const input = path.join(FIXTURES, arch, 'style-lora.kohya-sgm.safetensors');
    const before = await readFile(input);
    const clash = await run([
      'merge',
      `${arch}/lcm-lora.kohya.safetensors`,
      `${arch}/style-lora.kohya-sgm.safetensors:0.8`,
      '-o',
      input,
    ]);
    expect(clash.code).toBe(3);
    expect(clash.err).toMatch(/OUTPUT_WOULD_OVERWRITE_INPUT/);
    expect((await readFile(input)).equals(before)).toBe(true);
  });
});

describe('lora-mix merge options', () => {
  let tmp = '';
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), 'lora-mix-merge-opts-'));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('--rank reduces, reports norm kept, and --json gives the per-module report', async () => {
    const out = path.join(tmp, 'r.safetensors');
    const r = await run([
      'merge',
      'sd15/lcm-lora.kohya.safetensors',
      'sd15/style-lora.kohya-sgm.safetensors:0.8',
      '-o',
      out,
      '--rank',
      '4',
      '--format',
      'peft',
      '--json',
    ]);
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out);
    expect(j).toMatchObject({ format: 'peft', arch: 'sd15', size: 'tiny', options: { rank: 4 } });
    expect(j.report.rankAfter.max).toBe(4);
    expect(j.report.exact).toBe(false);
    expect(j.report.minNormKept).toBeGreaterThan(0);
    expect(j.report.minNormKept).toBeLessThan(1);
    const l = requirePlain(await loadLora(out));
    for (const m of l.modules.values()) expect(m.down.shape[0]).toBeLessThanOrEqual(4);
    const reduced = j.report.modules.filter((m: { rankBefore: number }) => m.rankBefore > 4);
    expect(reduced.length).toBeGreaterThan(0);
    for (const m of reduced) expect(m.error).toBeGreaterThan(0);
    // Worker threads or not, the same bytes.
    const one = path.join(tmp, 'r1.safetensors');
    const r1 = await run([
      'merge',
      'sd15/lcm-lora.kohya.safetensors',
      'sd15/style-lora.kohya-sgm.safetensors:0.8',
      '-o',
      one,
      '--rank',
      '4',
      '--format',
      'peft',
      '--threads',
      '1',
    ]);
    expect(r1.code, r1.err).toBe(0);
    expect((await readFile(one)).equals(await readFile(out))).toBe(true);
  });

  it('--min-energy and --blocks-N', async () => {
    const out = path.join(tmp, 'e.safetensors');
    const r = await run([
      'merge',
      'sdxl/lcm-lora.kohya.safetensors',
      'sdxl/style-lora.peft.safetensors:-0.5',
      '-o',
      out,
      '--min-energy',
      '0.9',
      '--blocks-2',
      'BASE=0,IN04=0',
      '--json',
    ]);
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out);
    for (const m of j.report.modules) if (!m.dropped) expect(m.normKept).toBeGreaterThanOrEqual(0.9 - 1e-9);
    const layout = getLayout('sdxl', 'tiny');
    const written = requirePlain(await loadLora(out));
    // BASE = 0 for the only input with text-encoder modules: they are all dropped.
    for (const p of written.modules.keys()) expect(layout.byPath.get(p)!.block).not.toBe('BASE');
    expect(j.inputs[1]).toMatchObject({ weight: -0.5, blocks: 'BASE=0,IN04=0' });
  });

  it('draws a redrawn bar on a terminal', async () => {
    const r = await run(
      ['merge', 'sd15/style-lora.kohya-sgm.safetensors', '-o', path.join(tmp, 'tty.safetensors')],
      true,
    );
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/\rmerge \[#+\.*\] \d+\/\d+ modules/);
    expect(r.err.endsWith('\n')).toBe(true);
  });

  it('usage errors exit 2 with a message', async () => {
    const cases: [string[], RegExp][] = [
      [['merge', 'sd15/lcm-lora.kohya.safetensors'], /-o OUT is required/],
      [['merge', '-o', 'x.safetensors'], /at least one input/],
      [['merge', 'sd15/lcm-lora.kohya.safetensors', '-o', 'x.safetensors', '--rank', '0'], /--rank expects an integer/],
      [
        ['merge', 'sd15/lcm-lora.kohya.safetensors', '-o', 'x.safetensors', '--min-energy', '0'],
        /--min-energy expects a fraction/,
      ],
      [['merge', 'sd15/lcm-lora.kohya.safetensors', '-o', 'x.safetensors', '--blocks-2', 'IN04=0'], /only 1 input/],
      [
        ['merge', 'sd15/lcm-lora.kohya.safetensors', '-o', 'x.safetensors', '--format', 'ckpt'],
        /--format expects kohya or peft/,
      ],
      [['merge', 'sd15/lcm-lora.kohya.safetensors:abc', '-o', 'x.safetensors'], /must be a number/],
    ];
    for (const [argv, pattern] of cases) {
      const r = await run(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(pattern);
    }
  });

  it('mixed architectures exit 1 (input), bad block IDs 2 (an option value)', async () => {
    const out = path.join(tmp, 'bad.safetensors');
    const mixed = await run(['merge', 'sd15/lcm-lora.kohya.safetensors', 'sdxl/lcm-lora.kohya.safetensors', '-o', out]);
    expect(mixed.code).toBe(1);
    expect(mixed.err).toMatch(/ARCH_MISMATCH/);
    const blocks = await run(['merge', 'sdxl/lcm-lora.kohya.safetensors', '-o', out, '--blocks', 'IN11=0']);
    expect(blocks.code).toBe(2);
    expect(blocks.err).toMatch(/OPTION_INVALID.*IN11/);
    await expect(stat(out)).rejects.toThrow();
  });
});
