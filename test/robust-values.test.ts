/**
 * Hostile values: NaN/Inf in factors and alphas, weights that fit f64 but not f32, clamping that must not invent
 * NaN, and results that would change nothing. Every case is a typed error and leaves no file; inspect reports
 * non-finite values per tensor and exits 0.
 */
import { type CliRun, runCli } from './cli-helpers.js';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LoraMixError } from '../src/core/errors.js';
import { countNaNStored, countNonFinite } from '../src/core/finite.js';
import { loadLora, saveLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/node.js';
import { mergeLoras, scaleLora } from '../src/lora/index.js';
import { openSafetensors } from '../src/node/files.js';
import { makeFile } from './formats-helpers.js';
import { requirePlain } from '../src/lora/terms/index.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
const STYLE = path.join(FIXTURES, 'sd15/style-lora.kohya.safetensors');
const LCM = path.join(FIXTURES, 'sd15/lcm-lora.kohya.safetensors');
const BASE = path.join(FIXTURES, 'sd15/base.safetensors');

let tmp = '';

const run = (argv: string[]): Promise<CliRun> => runCli(argv, tmp);

/** A copy of a fixture (all tensors as F32) with some values of one tensor replaced. */
async function poisoned(name: string, key: (k: string) => boolean, set: (v: Float32Array) => void): Promise<string> {
  const f = await openSafetensors(STYLE);
  try {
    const tensors = [];
    let hit = false;
    for (const t of f.tensors) {
      const values = Float32Array.from(await f.readF32(t.name));
      if (!hit && key(t.name)) {
        set(values);
        hit = true;
      }
      tensors.push({ name: t.name, shape: [...t.shape], values });
    }
    expect(hit).toBe(true);
    const file = path.join(tmp, name);
    await fs.writeFile(file, makeFile(tensors, { ...f.metadata }));
    return file;
  } finally {
    await f.close();
  }
}

async function leftovers(): Promise<string[]> {
  return (await fs.readdir(tmp)).filter((n) => n.startsWith('out') || n.includes('.tmp'));
}

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(LoraMixError);
    return (e as LoraMixError).code;
  }
  return 'none';
}

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'lora-mix-values-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('non-finite factors and alphas', () => {
  let nanFactor = '';
  let infAlpha = '';
  beforeAll(async () => {
    nanFactor = await poisoned(
      'nan-factor.safetensors',
      (k) => k.endsWith('lora_down.weight'),
      (v) => {
        v[0] = Number.NaN;
        v[3] = Number.NaN;
        v[5] = Number.POSITIVE_INFINITY;
      },
    );
    infAlpha = await poisoned(
      'inf-alpha.safetensors',
      (k) => k.endsWith('.alpha'),
      (v) => {
        v[0] = Number.POSITIVE_INFINITY;
      },
    );
  });

  it('inspect reports the counts per tensor and the infinite alpha, and exits 0', async () => {
    const r = await run(['inspect', nanFactor, '--summary']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/1 of \d+ float tensor\(s\) hold NaN or Inf/);
    expect(r.out).toMatch(/lora_down\.weight: 2 NaN, 1 ±Inf/);
    const j = JSON.parse((await run(['inspect', nanFactor, '--json', '--summary'])).out) as {
      values: { nonFinite: { name: string; nan: number; inf: number }[] };
    };
    expect(j.values.nonFinite).toEqual([expect.objectContaining({ nan: 2, inf: 1 })]);
    const a = await run(['inspect', infAlpha, '--summary']);
    expect(a.code).toBe(0);
    expect(a.out).toMatch(/\.alpha: 1 ±Inf/);
    expect(a.out).toMatch(/non-finite alpha/);
    const clean = await run(['inspect', STYLE, '--summary']);
    expect(clean.out).toMatch(/values: +all finite/);
  });

  it('merge, convert and fuse refuse them with FORMAT_NONFINITE naming the tensor, exit 1, and write nothing', async () => {
    for (const bad of [nanFactor, infAlpha]) {
      const cases = [
        ['merge', bad, LCM, '-o', 'out-merge.safetensors'],
        ['convert', bad, '--to', 'peft', '-o', 'out-convert.safetensors'],
        ['fuse', '--base', BASE, bad, '-o', 'out-fuse.safetensors', '-q'],
      ];
      for (const argv of cases) {
        const r = await run(argv);
        expect(r.code, argv.join(' ')).toBe(1);
        expect(r.err).toMatch(/FORMAT_NONFINITE/);
        expect(r.err).toMatch(
          bad === nanFactor ? /lora_down\.weight' holds 3 non-finite value\(s\) \(2 NaN, 1 ±Inf\)/ : /alpha/,
        );
      }
    }
    expect(await leftovers()).toEqual([]);
    expect(await codeOf(loadLora(nanFactor))).toBe('FORMAT_NONFINITE');
    expect(await codeOf(fuseLoras(BASE, [nanFactor], [1], { out: path.join(tmp, 'out-api.safetensors') }))).toBe(
      'FORMAT_NONFINITE',
    );
    expect(await leftovers()).toEqual([]);
  });
});

describe('weights beyond f32, overflow and clamping', () => {
  it('merge: weights that fit f64 but overflow f32 are LORA_DTYPE_OVERFLOW (exit 4), never Inf in the file', async () => {
    for (const w of ['1e300', '1e45', '-1e42']) {
      const r = await run(['merge', `${STYLE}:${w}`, `${LCM}:${w}`, '-o', 'out-big.safetensors', '--dtype', 'fp32']);
      expect(r.code, w).toBe(4);
      expect(r.err).toMatch(/LORA_DTYPE_OVERFLOW/);
    }
    const style = requirePlain(await loadLora(STYLE));
    const { lora } = mergeLoras([style], [1e300]);
    expect(await codeOf(saveLora(lora, path.join(tmp, 'out-api.safetensors'), { format: 'kohya' }))).toBe(
      'LORA_DTYPE_OVERFLOW',
    );
    expect(await leftovers()).toEqual([]);
  });

  it('fuse: a weight of 1e300 is FUSE_OVERFLOW even with clamp; clamping never writes NaN or Inf', async () => {
    for (const clamp of [[], ['--on-overflow', 'clamp']]) {
      const r = await run(['fuse', '--base', BASE, `${STYLE}:1e300`, '-o', 'out-fuse.safetensors', '-q', ...clamp]);
      expect(r.code).toBe(5);
      expect(r.err).toMatch(/FUSE_OVERFLOW.*overflows f32/);
    }
    expect(await leftovers()).toEqual([]);
    // Real overflow of F16 (deltas ~1e5): clamped values are ±65504, never NaN/Inf.
    const huge = scaleLora(requirePlain(await loadLora(LCM)), 1e10);
    const out = path.join(tmp, 'clamped.safetensors');
    const rep = await fuseLoras(BASE, [huge], [1], { out, onOverflow: 'clamp', dtype: 'F16' });
    expect(rep.overflow.total).toBeGreaterThan(0);
    const f = await openSafetensors(out);
    try {
      for (const t of rep.overflow.tensors) {
        const v = await f.readF32(t.name);
        expect(countNonFinite(v), t.name).toEqual({ nan: 0, inf: 0 });
      }
    } finally {
      await f.close();
    }
    await fs.rm(out);
  });

  it('countNaNStored reads NaN from stored bytes in every dtype', () => {
    expect(countNaNStored(new Uint8Array(Float32Array.of(1, Number.NaN, Infinity).buffer), 'F32')).toBe(1);
    expect(countNaNStored(new Uint8Array(Uint16Array.of(0x7c00, 0x7e00, 0xfc01, 0x3c00).buffer), 'F16')).toBe(2);
    expect(countNaNStored(new Uint8Array(Uint16Array.of(0x7f80, 0x7fc0, 0x3f80).buffer), 'BF16')).toBe(1);
  });
});

describe('results that change nothing are errors, not files', () => {
  it('merge with every weight 0 is LORA_EMPTY (exit 4) and writes nothing; so is fuse', async () => {
    const r = await run(['merge', `${STYLE}:0`, `${LCM}:0`, '-o', 'out-zero.safetensors']);
    expect(r.code).toBe(4);
    expect(r.err).toMatch(/LORA_EMPTY/);
    const f = await run(['fuse', '--base', BASE, `${STYLE}:0`, '-o', 'out-zero-fuse.safetensors', '-q']);
    expect(f.code).toBe(4);
    expect(f.err).toMatch(/LORA_EMPTY.*copy of the base/);
    expect(await leftovers()).toEqual([]);
  });

  it('saving a LoRA whose modules are all zero is LORA_EMPTY', async () => {
    const zero = scaleLora(requirePlain(await loadLora(STYLE)), 0);
    expect(await codeOf(saveLora(zero, path.join(tmp, 'out-z.safetensors'), { format: 'kohya' }))).toBe('LORA_EMPTY');
    expect(await leftovers()).toEqual([]);
  });
});
