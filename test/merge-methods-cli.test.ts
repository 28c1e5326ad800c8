import { formatFuseReport } from '../src/fuse/report.js';
import type { FuseReport } from '../src/fuse/types.js';
/**
 * Merge methods and per-component strengths through the CLI and the fixtures: `merge --method`, `fuse --method`
 * (the dense result equals fusing the full-rank method merge), `unet=…,te=…` weights in merge, fuse and convert,
 * and bad requests failing with nothing written.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runCli } from './cli-helpers.js';
import { loadLora } from '../src/formats/index.js';
import { mergeLoras } from '../src/lora/index.js';
import { openSafetensors } from '../src/node/files.js';
import { decodeToF32 } from '../src/core/dtype.js';
import { dense, diffNorm, frob } from './lora-helpers.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
const fx = (...p: string[]) => path.join(FIXTURES, ...p);
let tmp = '';

function run(argv: string[]): Promise<CliRun> {
  return runCli(argv, FIXTURES);
}

async function tensors(file: string): Promise<Map<string, Float32Array>> {
  const f = await openSafetensors(file);
  try {
    const m = new Map<string, Float32Array>();
    for (const t of f.tensors) m.set(t.name, Float32Array.from(decodeToF32(t.dtype, await f.read(t.name), t.name)));
    return m;
  } finally {
    await f.close();
  }
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'lora-mix-methods-'));
});
afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('per-component strengths', () => {
  it('merge A:1 B:unet=0.8,te=0.3 gives UNet modules 0.8·B and text-encoder modules 0.3·B (CLI = API)', async () => {
    const o = path.join(tmp, 'components.safetensors');
    const r = await run([
      'merge',
      'sd15/lcm-lora.kohya.safetensors:1',
      'sd15/style-lora.peft.safetensors:unet=0.8,te=0.3',
      '-o',
      o,
      '--dtype',
      'fp32',
    ]);
    expect(r.code).toBe(0);
    expect(r.out).toContain('unet=0.8,te=0.3');
    const got = await loadLora(o);
    const lcm = await loadLora(fx('sd15', 'lcm-lora.kohya.safetensors'));
    const style = await loadLora(fx('sd15', 'style-lora.peft.safetensors'));
    let te = 0,
      unet = 0;
    for (const [p, m] of style.modules) {
      const w = p.startsWith('unet.') ? 0.8 : 0.3;
      if (p.startsWith('unet.')) unet++;
      else te++;
      const want = dense(m as never).data.map((v) => w * v);
      const l = lcm.modules.get(p);
      if (l) {
        const d = dense(l as never).data;
        want.forEach((_, i) => {
          want[i] = want[i]! + d[i]!;
        });
      }
      const have = dense(got.modules.get(p) as never).data;
      expect(diffNorm(have, want)).toBeLessThan(1e-5 * Math.max(frob(want), 1e-6));
    }
    expect(te).toBeGreaterThan(0);
    expect(unet).toBeGreaterThan(0);
    const api = mergeLoras([lcm, style], [1, { unet: 0.8, te: 0.3 }]).lora;
    for (const [p, m] of api.modules)
      expect(diffNorm(dense(m).data, dense(got.modules.get(p) as never).data)).toBeLessThan(
        1e-4 * Math.max(frob(dense(m).data), 1e-6),
      );
  });

  it('convert IN:unet=1,te=0 keeps the UNet modules and drops the text encoder', async () => {
    const o = path.join(tmp, 'unet-only.safetensors');
    const r = await run(['convert', 'sd15/style-lora.peft.safetensors:unet=1,te=0', '-o', o, '--to', 'kohya']);
    expect(r.code).toBe(0);
    const got = await loadLora(o);
    expect([...got.modules.keys()].every((p) => p.startsWith('unet.'))).toBe(true);
    expect(got.modules.size).toBeGreaterThan(0);
  });

  it('a bad strength is a typed error and nothing is written', async () => {
    const r = await run(['merge', 'sd15/style-lora.peft.safetensors:unet=x', '-o', path.join(tmp, 'bad.safetensors')]);
    expect(r.code).not.toBe(0);
    expect(await readdir(tmp)).not.toContain('bad.safetensors');
  });
});

describe('methods through the CLI', () => {
  it('merge --method ties writes rank-K factors and reports the norm kept; the same seed gives the same bytes for dare', async () => {
    const a = path.join(tmp, 'ties.safetensors');
    const r = await run([
      'merge',
      'sd15/lcm-lora.kohya.safetensors',
      'sd15/style-lora.kohya.safetensors:0.7',
      '-o',
      a,
      '--method',
      'ties',
      '--density',
      '0.5',
      '--rank',
      '4',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out);
    expect(report.options.method).toBe('ties');
    expect(report.report.rankAfter.max).toBeLessThanOrEqual(4);
    const d1 = path.join(tmp, 'dare1.safetensors'),
      d2 = path.join(tmp, 'dare2.safetensors');
    for (const o of [d1, d2]) {
      const x = await run([
        'merge',
        'sd15/lcm-lora.kohya.safetensors',
        'sd15/style-lora.kohya.safetensors',
        '-o',
        o,
        '--method',
        'dare_ties',
        '--density',
        '0.4',
        '--seed',
        '3',
        '--rank',
        '4',
        '--threads',
        '1',
      ]);
      expect(x.code).toBe(0);
    }
    const { readFile } = await import('node:fs/promises');
    expect(Buffer.compare(await readFile(d1), await readFile(d2))).toBe(0);
  });

  it('fuse --method ties adds the dense result: equal to fusing the full-rank ties merge', async () => {
    const full = path.join(tmp, 'ties-full.safetensors');
    const args = ['sd15/lcm-lora.kohya.safetensors', 'sd15/style-lora.kohya.safetensors:0.6'];
    expect(
      (
        await run([
          'merge',
          ...args,
          '-o',
          full,
          '--method',
          'ties',
          '--density',
          '0.3',
          '--rank',
          '100000',
          '--dtype',
          'fp32',
        ])
      ).code,
    ).toBe(0);
    const viaMerge = path.join(tmp, 'fused-merge.safetensors'),
      direct = path.join(tmp, 'fused-direct.safetensors');
    expect(
      (await run(['fuse', '--base', 'sd15/base.safetensors', full, '-o', viaMerge, '--dtype', 'f32', '-q'])).code,
    ).toBe(0);
    const r = await run([
      'fuse',
      '--base',
      'sd15/base.safetensors',
      ...args,
      '-o',
      direct,
      '--dtype',
      'f32',
      '-q',
      '--method',
      'ties',
      '--density',
      '0.3',
      '--json',
    ]);
    expect(r.code).toBe(0);
    // The report names the method and its parameters, in JSON and in the text summary.
    const report = JSON.parse(r.out) as FuseReport;
    expect(report.method).toEqual({ name: 'ties', params: { density: 0.3, majoritySign: 'total' } });
    expect(formatFuseReport(report)).toContain('method: ties (density 0.3, majoritySign total)');
    const [a, b, base] = await Promise.all([
      tensors(viaMerge),
      tensors(direct),
      tensors(fx('sd15', 'base.safetensors')),
    ]);
    let changed = 0;
    for (const [k, x] of a) {
      const y = b.get(k)!;
      const w = base.get(k)!;
      const dx = x.map((v, i) => v - w[i]!);
      const dy = y.map((v, i) => v - w[i]!);
      if (frob(dy) > 0) changed++;
      expect(diffNorm(dx, dy)).toBeLessThanOrEqual(1e-4 * Math.max(frob(dy), 1e-6) + 1e-6);
    }
    expect(changed).toBeGreaterThan(0);
  });

  it('bad requests fail with nothing written: unknown method, density outside (0, 1], slerp with 3 inputs, no rank', async () => {
    const o = path.join(tmp, 'never.safetensors');
    const lcm = 'sd15/lcm-lora.kohya.safetensors',
      style = 'sd15/style-lora.kohya.safetensors';
    const cases = [
      ['merge', lcm, style, '-o', o, '--method', 'median', '--rank', '4'],
      ['merge', lcm, style, '-o', o, '--method', 'ties', '--density', '0', '--rank', '4'],
      ['merge', lcm, style, '-o', o, '--method', 'ties', '--density', '1.2', '--rank', '4'],
      ['merge', lcm, style, lcm, '-o', o, '--method', 'slerp', '--rank', '4'],
      ['merge', lcm, style, '-o', o, '--method', 'ties'],
      ['fuse', '--base', 'sd15/base.safetensors', lcm, style, lcm, '-o', o, '--method', 'slerp'],
      ['fuse', '--base', 'sd15/base.safetensors', lcm, '-o', o, '--method', 'ties', '--density', '-1'],
    ];
    for (const argv of cases) {
      const r = await run(argv);
      expect(r.code, argv.join(' ')).not.toBe(0);
      expect(r.err).toMatch(/method|density|inputs|rank/);
    }
    expect((await readdir(tmp)).filter((n) => n.includes('never'))).toEqual([]);
  });
});
