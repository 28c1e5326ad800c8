/**
 * convert --rank K / --min-energy E on adapter files of every kind (DoRA and GLoRA with --base): each module is
 * written as the optimal approximation of its exact delta. Checked against an independent dense SVD in the test
 * (singular values from Jacobi on the Gram matrix): the written module's relative error ‖Δ − Δ_K‖/‖Δ‖ is the
 * Eckart–Young tail within 0.1 %, the reported figure equals that recomputation, --min-energy picks the smallest
 * rank that keeps the asked fraction, and without a cap the conversion reproduces Δ to f32 rounding.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadLora } from '../src/formats/index.js';
import { resolveBaseTerms } from '../src/fuse/index.js';
import { termDims, termDelta } from '../src/lora/terms/index.js';
import type { ConversionReport } from '../src/lora/conversion-report.js';
import { runCli } from './cli-helpers.js';
import { delta } from './formats-helpers.js';
import { diffNorm, frob, singularValues } from './lora-helpers.js';

const ROOT = resolve(import.meta.dirname, '..');
const BASE = join(ROOT, 'fixtures', 'sd15', 'base.safetensors');
const KINDS = [
  'locon-tucker',
  'loha',
  'loha-tucker',
  'lokr',
  'full',
  'glora',
  'dora-out',
  'dora-in',
  'dora-peft',
  'oft',
  'oft-kohya',
  'oft-diag',
  'boft',
];
const NEEDS_BASE = new Set(['glora', 'dora-out', 'dora-in', 'dora-peft', 'oft', 'oft-kohya', 'oft-diag', 'boft']);
/** The cap: below every fixture's exact rank (the LoCon fixture has rank 2, the others more). */
const capOf = (name: string): number => (name === 'locon-tucker' ? 1 : 2);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-mix-adapters-convert-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Exact = Map<string, { d: Float64Array; out: number; n: number }>;
/** exactDeltas by file: the three tests of a kind share one resolution against the base (read-only). */
const exactCache = new Map<string, Promise<Exact>>();
/** The exact delta of every module of an adapter file (base-dependent kinds against the base), computed once. */
function exactDeltas(file: string): Promise<Exact> {
  let p = exactCache.get(file);
  if (!p) {
    p = computeExactDeltas(file);
    exactCache.set(file, p);
  }
  return p;
}
async function computeExactDeltas(file: string): Promise<Exact> {
  const lora = await resolveBaseTerms(await loadLora(file), BASE);
  const out = new Map<string, { d: Float64Array; out: number; n: number }>();
  for (const [path, t] of lora.modules) {
    const { out: rows, fanIn } = termDims(t, path);
    out.set(path, { d: Float64Array.from(termDelta(t, path)), out: rows, n: fanIn });
  }
  return out;
}

async function writtenDeltas(file: string): Promise<Map<string, Float64Array>> {
  const lora = await loadLora(file);
  const out = new Map<string, Float64Array>();
  for (const [path, t] of lora.modules) {
    if (t.kind !== undefined && t.kind !== 'lowRank') throw new Error(`${path} is not a plain LoRA module`);
    out.set(path, delta(t));
  }
  return out;
}

/**
 * Run `convert` on the fixture of `name`. The --rank test runs it as a user would (worker threads, one per core); the
 * --min-energy and uncapped tests pass `--threads 1`: starting the workers under the test's TypeScript loader takes
 * seconds per call, and the threaded conversion gives the single-thread bytes (test/convert-stream.test.ts,
 * test/delta-pool.test.ts).
 */
async function convert(name: string, extra: string[]): Promise<{ file: string; report: Record<string, unknown> }> {
  const input = join(ROOT, 'fixtures', 'adapters', `${name}.safetensors`);
  const file = join(dir, `${name}-${extra.join('_')}.safetensors`);
  const to = name === 'full' ? 'peft' : 'kohya'; // diff_b: a bias delta, which only PEFT stores
  const args = ['convert', input, '-o', file, '--to', to, '--dtype', 'fp32', '--json', '-q', ...extra];
  if (NEEDS_BASE.has(name)) args.push('--base', BASE);
  const r = await runCli(args, ROOT);
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  return { file, report: JSON.parse(r.out) as Record<string, unknown> };
}

/** ‖Δ − Δ_k‖/‖Δ‖ of the best rank-k approximation, from the singular values. */
function optimalTail(sigma: Float64Array, k: number): number {
  let all = 0,
    tail = 0;
  sigma.forEach((s, i) => {
    all += s * s;
    if (i >= k) tail += s * s;
  });
  return all > 0 ? Math.sqrt(tail / all) : 0;
}

describe.each(KINDS)('%s', (name) => {
  const input = join(ROOT, 'fixtures', 'adapters', `${name}.safetensors`);

  const K = capOf(name);
  it(`--rank ${K} writes the optimal rank-${K} approximation of every module and reports its error`, async () => {
    const exact = await exactDeltas(input);
    const { file, report } = await convert(name, ['--rank', String(K)]);
    const written = await writtenDeltas(file);
    const reduction = report.reduction as ConversionReport;
    expect(reduction.modules.length).toBe(exact.size);
    let reduced = 0;
    for (const m of reduction.modules) {
      const e = exact.get(m.path);
      const w = written.get(m.path);
      expect(e, m.path).toBeDefined();
      expect(w, m.path).toBeDefined();
      if (!e || !w) continue;
      const norm = frob(e.d);
      const actual = diffNorm(e.d, w) / norm;
      const sigma = singularValues(e.d, e.out, e.n);
      const optimal = optimalTail(sigma, K);
      expect(m.rankAfter, m.path).toBeLessThanOrEqual(K);
      // within 0.1 % of the Eckart–Young optimum (plus the f32 rounding of the written factors)
      expect(actual, m.path).toBeLessThanOrEqual(optimal * 1.001 + 2e-6);
      expect(actual, m.path).toBeGreaterThanOrEqual(optimal * 0.999 - 2e-6);
      // the reported figure is the recomputed one
      expect(Math.abs(m.relativeError - actual), m.path).toBeLessThanOrEqual(1e-3 * actual + 2e-6);
      expect(Math.abs(m.normKept - Math.sqrt(Math.max(0, 1 - optimal * optimal))), m.path).toBeLessThanOrEqual(1e-5);
      if (optimal > 1e-4) reduced++;
    }
    expect(reduced).toBeGreaterThan(0);
    const errors = reduction.modules.map((m) => m.relativeError);
    expect(reduction.maxRelativeError).toBe(Math.max(...errors));
    expect(reduction.meanRelativeError).toBeCloseTo(errors.reduce((a, b) => a + b, 0) / errors.length, 12);
  });

  it('--min-energy keeps the smallest rank with ‖Δ_k‖/‖Δ‖ ≥ E', async () => {
    const exact = await exactDeltas(input);
    const E = 0.97;
    const { report } = await convert(name, ['--min-energy', String(E), '--threads', '1']);
    const reduction = report.reduction as ConversionReport;
    for (const m of reduction.modules) {
      const e = exact.get(m.path);
      if (!e) throw new Error(`no module ${m.path}`);
      const sigma = singularValues(e.d, e.out, e.n);
      const kept = (k: number) => Math.sqrt(Math.max(0, 1 - optimalTail(sigma, k) ** 2));
      expect(m.normKept, m.path).toBeGreaterThanOrEqual(E - 1e-9);
      if (m.rankAfter > 1) expect(kept(m.rankAfter - 1), m.path).toBeLessThan(E + 1e-6);
    }
  });

  it('without a rank cap reproduces every delta to f32 rounding', async () => {
    const exact = await exactDeltas(input);
    const { file, report } = await convert(name, ['--threads', '1']);
    expect(report.reduction).toBeUndefined();
    const written = await writtenDeltas(file);
    expect(written.size).toBe(exact.size);
    for (const [path, e] of exact) {
      const w = written.get(path);
      if (!w) throw new Error(`no module ${path} written`);
      expect(diffNorm(e.d, w), path).toBeLessThanOrEqual(2e-6 * frob(e.d) + 1e-12);
    }
  });
});

it('prints the per-module report as text, and refuses a bad --min-energy before writing', async () => {
  const out = join(dir, 'text.safetensors');
  const r = await runCli(
    ['convert', 'fixtures/adapters/lokr.safetensors', '-o', out, '--to', 'peft', '--rank', '1', '-q'],
    ROOT,
  );
  expect(r.code).toBe(0);
  expect(r.out).toContain('rel. error');
  expect(r.out).toMatch(/unet\.conv_in\s+LoKr\s+\d+ → 1\s/);
  expect(r.out).toMatch(/relative error ‖Δ − Δ_k‖\/‖Δ‖: mean \S+, max \S+/);
  const sub = await mkdtemp(join(dir, 'bad-'));
  const bad = await runCli(
    [
      'convert',
      'fixtures/adapters/lokr.safetensors',
      '-o',
      join(sub, 'x.safetensors'),
      '--to',
      'peft',
      '--min-energy',
      '0',
    ],
    ROOT,
  );
  expect(bad.code).not.toBe(0);
  expect(bad.err).toContain('--min-energy');
  expect(await readdir(sub)).toEqual([]);
});
