/**
 * `lora-mix demo` (what `npm start` runs): the whole pipeline on the bundled fixtures, through main() for SD1.5
 * and SDXL, and once through the built CLI. The numbers the report prints are checked against what the fixtures
 * hold (module counts per group, ranks), not against copies of the output.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runCli } from './cli-helpers.js';
import { loadLora } from '../src/formats/index.js';
import { openSafetensors } from '../src/node/files.js';
import { detectCheckpoint, getLayout } from '../src/layout/index.js';
import { requirePlain } from '../src/lora/terms/index.js';

const ROOT = path.resolve(__dirname, '..');
const FIXTURES = path.join(ROOT, 'fixtures');
const STYLE = { sd15: 'style-lora.kohya.safetensors', sdxl: 'style-lora.kohya-sgm.safetensors' } as const;

function run(argv: string[]): Promise<CliRun> {
  return runCli(argv, ROOT);
}

/** What the fixtures say the demo must report: modules per LoRA, their union, per component/group, ranks. */
async function expected(arch: 'sd15' | 'sdxl') {
  const lcm = requirePlain(await loadLora(path.join(FIXTURES, arch, 'lcm-lora.kohya.safetensors')));
  const style = requirePlain(await loadLora(path.join(FIXTURES, arch, STYLE[arch])));
  const union = new Set([...lcm.modules.keys(), ...style.modules.keys()]);
  const layout = getLayout(arch, 'tiny');
  const byGroup: Record<string, number> = {};
  for (const p of union) {
    const e = layout.byPath.get(p)!;
    const key = `${e.component}/${e.group}`;
    byGroup[key] = (byGroup[key] ?? 0) + 1;
  }
  const rank = (m: { down: { shape: number[] } }): number => m.down.shape[0]!;
  const ranks = [...union].map(
    (p) =>
      (lcm.modules.has(p) ? rank(lcm.modules.get(p)!) : 0) + (style.modules.has(p) ? rank(style.modules.get(p)!) : 0),
  );
  return {
    lcm: lcm.modules.size,
    style: style.modules.size,
    union: union.size,
    byGroup,
    minRank: Math.min(...ranks),
    maxRank: Math.max(...ranks),
  };
}

async function demoTempDirs(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((d) => d.startsWith('lora-mix-demo-'));
}

describe.each(['sd15', 'sdxl'] as const)('lora-mix demo --arch %s', (arch) => {
  it('merges, fuses, verifies and samples the fixtures, reports it, and cleans up', async () => {
    const want = await expected(arch);
    const before = await demoTempDirs();
    const { code, out, err } = await run(arch === 'sd15' ? ['demo'] : ['demo', '--arch', arch]);
    expect(err).toBe('');
    expect(code).toBe(0);
    expect(out).toMatch(new RegExp(`^lora-mix demo — ${arch === 'sd15' ? 'SD1\\.5' : 'SDXL'} \\(tiny fixtures\\)`));
    expect(out).toContain(
      `1.0 × LCM-LoRA   fixtures/${arch}/lcm-lora.kohya.safetensors: kohya, diffusers paths, F16, ${want.lcm} modules`,
    );
    expect(out).toContain(
      `0.8 × style      fixtures/${arch}/${STYLE[arch]}: kohya, ${arch === 'sd15' ? 'diffusers' : 'sgm'} paths, F16, ${want.style} modules`,
    );
    expect(out).toContain(
      `1.0·LCM-LoRA + 0.8·style → ${want.union} modules, rank ${want.minRank}–${want.maxRank} (exact sum`,
    );
    expect(out).toContain(`into fixtures/${arch}/base.safetensors (single-file)`);
    const groups = Object.entries(want.byGroup)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([g, n]) => `${g} ${n}`)
      .join(', ');
    expect(out).toContain(`  ${want.union} modules fused (${groups}); unmatched 0;`);
    expect(out).toContain('overflow none');
    expect(out).toMatch(
      new RegExp(`  ${want.union} modules against base \\+ 1\\.0·LCM-LoRA \\+ 0\\.8·style \\(original factors\\): OK`),
    );
    expect(out).toContain(`4 LCM steps (t = 999, 759, 499, 259), seed 0, latent [1, 4, 8, 8]`);
    const ratio = /= ([\d.]+)× one F16 rounding of the fused weights/.exec(out);
    expect(ratio).not.toBeNull();
    expect(Number(ratio![1])).toBeLessThanOrEqual(4);
    const effects = /LCM-LoRA ([\d.]+) ± ([\d.]+), style ([\d.]+) ± ([\d.]+)/.exec(out);
    expect(effects).not.toBeNull();
    const [lcmEffect, lcmSe, styleEffect, styleSe] = effects!.slice(1).map(Number) as [number, number, number, number];
    expect(Math.abs(lcmEffect - 1)).toBeLessThanOrEqual(4 * lcmSe);
    expect(Math.abs(styleEffect - 1)).toBeLessThanOrEqual(4 * styleSe);
    expect(styleSe).toBeLessThan(0.25); // a style weight of 0.5 instead of 0.8 (effect 0.625) would show
    expect(out).toMatch(
      /\ntime: [\d.]+ s \(inspect [\d.]+ s, merge [\d.]+ s, fuse [\d.]+ s, verify [\d.]+ s, sample [\d.]+ s\)\n/,
    );
    expect(out).toContain('temporary outputs removed');
    expect(out.trimEnd().endsWith('result: OK')).toBe(true);
    expect(await demoTempDirs()).toEqual(before);
  });
});

describe('lora-mix demo options', () => {
  let keep = '';
  beforeAll(async () => {
    keep = await mkdtemp(path.join(tmpdir(), 'lora-mix-keep-test-'));
  });
  afterAll(async () => {
    if (keep) await rm(keep, { recursive: true, force: true });
  });

  it('--json --keep DIR: the report as JSON, and outputs that are a LoRA and a fused checkpoint', async () => {
    const want = await expected('sd15');
    const dir = path.join(keep, 'out');
    const { code, out } = await run(['demo', '--json', '--keep', dir]);
    expect(code).toBe(0);
    const r = JSON.parse(out);
    expect(r.ok).toBe(true);
    expect(r.arch).toBe('sd15');
    expect(r.inputs.map((i: { weight: number }) => i.weight)).toEqual([1, 0.8]);
    expect(r.inputs[0].summary.modules).toBe(want.lcm);
    expect(r.merge).toMatchObject({ modules: want.union, exact: true, dtype: 'F32' });
    expect(r.fuse.modulesFused).toBe(want.union);
    expect(r.fuse.byGroup).toEqual(want.byGroup);
    expect(r.fuse.unmatched).toEqual([]);
    expect(r.verify).toMatchObject({ checked: want.union, failed: 0, ok: true });
    expect(r.sampler).toMatchObject({
      ok: true,
      conclusive: true,
      steps: 4,
      timesteps: [999, 759, 499, 259],
      dtype: 'F16',
    });
    expect(r.sampler.effects.map((e: { lora: string }) => e.lora)).toEqual(['LCM-LoRA', 'style']);
    expect(r.outputs.kept).toBe(true);

    const merged = requirePlain(await loadLora(r.outputs.merged));
    expect(merged.modules.size).toBe(want.union);
    expect(merged.dtype).toBe('F32');
    const fused = await openSafetensors(r.outputs.fused);
    try {
      const det = detectCheckpoint(fused.tensors);
      expect([det.arch, det.size, det.naming]).toEqual(['sd15', 'tiny', 'single-file']);
    } finally {
      await fused.close();
    }
  });

  it('is listed in --help, has its own help, and rejects bad options', async () => {
    expect((await run(['--help'])).out).toMatch(/\n {2}demo +merge, fuse, verify and sample/);
    const help = await run(['demo', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toContain('Usage: lora-mix demo [--arch sd15|sdxl|ssd1b] [--keep DIR] [--json]');
    expect((await run(['demo', 'extra'])).code).toBe(2);
    expect((await run(['demo', '--nope'])).code).toBe(2);
    const bad = await run(['demo', '--arch', 'sd3']);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toContain('sd3');
  });
});

const BUILT = path.join(ROOT, 'dist', 'cli', 'lora-mix.js');
const BUILT_DEMO = path.join(ROOT, 'dist', 'cli', 'commands', 'demo.js');
const built = existsSync(BUILT) && existsSync(BUILT_DEMO);
if (!built) {
  console.warn(
    `demo-cli.test.ts: ${BUILT_DEMO} is missing — skipping the built-CLI test; run 'npm run build' (npm ci runs it)`,
  );
}

describe('the built CLI (npm start)', () => {
  it.skipIf(!built)('node dist/cli/lora-mix.js demo finds the fixtures from dist/ and exits 0', async () => {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BUILT, 'demo'], {
      cwd: tmpdir(),
      timeout: 120_000,
    });
    expect(stderr).toBe('');
    expect(stdout).toContain('fixtures/sd15/base.safetensors');
    expect(stdout.trimEnd().endsWith('result: OK')).toBe(true);
  });
});
