/**
 * Fuse then unfuse returns the base, for every adapter kind. The base-free kinds subtract w·Δ; DoRA and GLoRA
 * depend on W0, so unfuse recovers W0 from the fused weight: DoRA (ComfyUI's strength rule) by the per-channel norm
 * equation c = (‖F + (1 − w)·ΔW‖ − w·m)/(1 − w), GLoRA by a Woodbury solve of W0·(I + w·s·a1·a2) = F − w·s·b1·b2.
 * Checked two ways: through an F32 fused file the result is the F16 base bit for bit; through an F16 fused file every
 * element (DoRA and GLoRA: every channel) is within the rounding bound derived from ½ ulp of the fused values.
 * DoRA at strength 1 is refused (the norm is not in the fused file), as is a singular GLoRA system.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ndarray from 'ndarray';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { halfUlp } from '../src/core/dtype.js';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras, unfuseLoras } from '../src/fuse/index.js';
import { getLayout } from '../src/layout/index.js';
import { baseFromFused, termDelta, termDims } from '../src/lora/terms/index.js';
import type { DoraTerm, GloraTerm, Term } from '../src/lora/types.js';
import { openSafetensors } from '../src/node/files.js';
import { runCli } from './cli-helpers.js';
import { prng, randomArray } from './lora-helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const FX = path.join(ROOT, 'fixtures');
const BASE = path.join(FX, 'sd15', 'base.safetensors');
const KINDS = ['locon-tucker', 'loha', 'loha-tucker', 'lokr', 'full', 'glora', 'dora-out', 'dora-in', 'dora-peft'];
const adapter = (kind: string): string => path.join(FX, 'adapters', `${kind}.safetensors`);

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-adapters-unfuse-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function tensorsOf(file: string): Promise<Map<string, { bytes: Uint8Array; values: Float32Array }>> {
  const f = await openSafetensors(file);
  try {
    const out = new Map<string, { bytes: Uint8Array; values: Float32Array }>();
    for (const t of f.tensors)
      out.set(t.name, { bytes: (await f.read(t.name)).slice(), values: await f.readF32(t.name) });
    return out;
  } finally {
    await f.close();
  }
}

/** The base's tensors, read once for the whole file (the tests only read them). */
let baseTensors: ReturnType<typeof tensorsOf> | undefined;

/** Fuse `kinds` at `weights` into the base (fused dtype `dtype`), unfuse them (F16 out); the three files' tensors. */
async function roundTrip(kinds: string[], weights: number[], dtype: 'F32' | 'F16', tag: string) {
  const fused = path.join(tmp, `${tag}.fused.safetensors`);
  const back = path.join(tmp, `${tag}.back.safetensors`);
  const files = kinds.map(adapter);
  await fuseLoras(BASE, files, weights, { out: fused, dtype });
  await unfuseLoras(fused, files, weights, { out: back, dtype: 'F16' });
  baseTensors ??= tensorsOf(BASE);
  return { base: await baseTensors, fused: await tensorsOf(fused), back: await tensorsOf(back) };
}

describe('fuse then unfuse through an F32 fused file gives the F16 base bit for bit', () => {
  for (const kind of KINDS) {
    for (const w of kind.startsWith('dora') ? [0.6, 0.3, 1.5] : [0.7]) {
      it(`${kind} at ${w}`, async () => {
        const { base, fused, back } = await roundTrip([kind], [w], 'F32', `${kind}-${w}-f32`);
        let changed = 0;
        for (const [name, b] of base) {
          const r = back.get(name);
          expect(r, name).toBeDefined();
          if (!r) continue;
          if (!equalValues(fused.get(name)?.values, b.values)) changed++;
          expect(Buffer.from(r.bytes).equals(Buffer.from(b.bytes)), name).toBe(true);
        }
        expect(changed).toBeGreaterThan(0);
      });
    }
  }

  it('a DoRA and a LoHa fused on the same modules come out together', async () => {
    const { base, back } = await roundTrip(['dora-out', 'loha'], [0.5, 0.8], 'F32', 'mix');
    for (const [name, b] of base)
      expect(Buffer.from(back.get(name)!.bytes).equals(Buffer.from(b.bytes)), name).toBe(true);
  });
});

function equalValues(a: Float32Array | undefined, b: Float32Array): boolean {
  if (!a || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Every element, or every group of elements, of the module weights: how far the result is from the base. */
describe('fuse then unfuse through an F16 fused file stays within the rounding bound', () => {
  const layout = getLayout('sd15', 'tiny');
  for (const kind of KINDS) {
    const w = 0.6;
    it(kind, async () => {
      const lora = await loadLora(adapter(kind));
      const { base, fused, back } = await roundTrip([kind], [w], 'F16', `${kind}-f16`);
      let checked = 0;
      for (const [p, t] of lora.modules) {
        const key = layout.byPath.get(p)!.singleFileWeightKey;
        const w0 = base.get(key)!.values;
        const f = fused.get(key)!.values;
        const r = back.get(key)!.values;
        const e = Float64Array.from(f, (x) => halfUlp(x, 'F16'));
        const out = Float64Array.from(r, (x) => halfUlp(x, 'F16'));
        for (const g of groupsOf(t, p, w0, w)) {
          let err = 0,
            ef = 0,
            eo = 0;
          for (const i of g.indices) {
            err += ((r[i] ?? 0) - (w0[i] ?? 0)) ** 2;
            ef += (e[i] ?? 0) ** 2;
            eo += (out[i] ?? 0) ** 2;
          }
          // the bound of the group: amplification × ‖½ ulp(F)‖ + ‖½ ulp(result)‖, with 1 % for the f32 arithmetic
          const bound = 1.01 * (g.amplification * Math.sqrt(ef) + Math.sqrt(eo));
          expect(Math.sqrt(err), `${p} ${g.what}`).toBeLessThanOrEqual(bound);
          checked++;
        }
      }
      expect(checked).toBeGreaterThan(0);
    });
  }
});

interface Group {
  readonly what: string;
  readonly indices: number[];
  /** ‖δW0‖ ≤ amplification · ‖δF‖ on this group. */
  readonly amplification: number;
}

/**
 * The groups over which the inverse acts and their error amplification. Base-free kinds: each element, 1 (and a
 * single-element group makes the check per element). DoRA: each channel; with α = (1 − w) + w·m/c (c = ‖W0 + ΔW‖)
 * the recovery W0 = (c/‖G‖)·G − ΔW moves by at most ‖δF‖·(|1/(1 − w) − 1/α| + 1/α). GLoRA: each row of input
 * channels (per output and kernel position); W0 = (F − c·B)·M⁻¹ moves by at most ‖δF‖·‖M⁻¹‖_F.
 */
function groupsOf(t: Term, p: string, w0: Float32Array, w: number): Group[] {
  const { out, fanIn, shape } = termDims(t, p);
  if (t.kind === 'dora') return doraGroups(t, p, w0, w, out, fanIn, shape);
  if (t.kind === 'glora') return gloraGroups(t, w, out, fanIn, shape);
  return Array.from({ length: out * fanIn }, (_, i) => ({ what: `[${i}]`, indices: [i], amplification: 1 }));
}

function doraGroups(
  t: DoraTerm,
  p: string,
  w0: Float32Array,
  w: number,
  out: number,
  fanIn: number,
  shape: readonly number[],
): Group[] {
  const d = termDelta(t.inner, p);
  const kernel = fanIn / (shape[1] ?? 1);
  const channels = t.axis === 'out' ? out : (shape[1] ?? 1);
  const groups: number[][] = Array.from({ length: channels }, () => []);
  for (let o = 0; o < out; o++)
    for (let j = 0; j < fanIn; j++) groups[t.axis === 'out' ? o : Math.floor(j / kernel)]!.push(o * fanIn + j);
  return groups.map((indices, ch) => {
    let c2 = 0;
    for (const i of indices) c2 += ((w0[i] ?? 0) + (d[i] ?? 0)) ** 2;
    const alpha = 1 - w + (w * (t.magnitude[ch] ?? 0)) / Math.sqrt(c2);
    return { what: `channel ${ch}`, indices, amplification: Math.abs(1 / (1 - w) - 1 / alpha) + 1 / alpha };
  });
}

function gloraGroups(t: GloraTerm, w: number, out: number, fanIn: number, shape: readonly number[]): Group[] {
  const inn = shape[1] ?? 1;
  const kernel = fanIn / inn;
  const r = t.a2.shape[0] ?? 1;
  const a1 = t.a1.data,
    a2 = t.a2.data;
  const c = w * t.scale;
  // M = I + c·a1·a2 (in × in); its inverse by Gauss–Jordan, then ‖M⁻¹‖_F
  const m = new Float64Array(inn * inn);
  for (let i = 0; i < inn; i++)
    for (let j = 0; j < inn; j++) {
      let s = i === j ? 1 : 0;
      for (let q = 0; q < r; q++) s += c * (a1[i * r + q] ?? 0) * (a2[q * inn + j] ?? 0);
      m[i * inn + j] = s;
    }
  const amplification = Math.sqrt(inverseOf(m, inn).reduce((s, x) => s + x * x, 0));
  const groups: Group[] = [];
  for (let o = 0; o < out; o++)
    for (let k = 0; k < kernel; k++)
      groups.push({
        what: `row ${o} position ${k}`,
        indices: Array.from({ length: inn }, (_, i) => o * fanIn + i * kernel + k),
        amplification,
      });
  return groups;
}

function inverseOf(m: Float64Array, n: number): Float64Array {
  const a = Float64Array.from(m);
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let col = 0; col < n; col++) {
    let piv = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(a[r * n + col]!) > Math.abs(a[piv * n + col]!)) piv = r;
    for (let j = 0; j < n; j++) {
      [a[col * n + j], a[piv * n + j]] = [a[piv * n + j]!, a[col * n + j]!];
      [inv[col * n + j], inv[piv * n + j]] = [inv[piv * n + j]!, inv[col * n + j]!];
    }
    const pv = a[col * n + col]!;
    for (let j = 0; j < n; j++) {
      a[col * n + j] = a[col * n + j]! / pv;
      inv[col * n + j] = inv[col * n + j]! / pv;
    }
    for (let r = 0; r < n; r++) {
      if (r === col) continue;
      const f = a[r * n + col]!;
      for (let j = 0; j < n; j++) {
        a[r * n + j] = a[r * n + j]! - f * a[col * n + j]!;
        inv[r * n + j] = inv[r * n + j]! - f * inv[col * n + j]!;
      }
    }
  }
  return inv;
}

it('a DoRA at a strength outside (0, 1) whose fused channels have a second preimage is unfused with a warning', async () => {
  // The fixtures' magnitudes (≈ 0.1) are far above some tiny rows' norms, so at −0.8 some channels truly have
  // α = (1 − w) + w·m/c < 0 and a second base fuses to the same values; between 0 and 1 the preimage is unique.
  const fused = path.join(tmp, 'neg.fused.safetensors');
  await fuseLoras(BASE, [adapter('dora-in')], [-0.8], { out: fused, dtype: 'F32' });
  const neg = await unfuseLoras(fused, [adapter('dora-in')], [-0.8], { out: path.join(tmp, 'neg.back.safetensors') });
  expect(neg.warnings.join('\n')).toMatch(/second base weight fusing to the same values/);
  const fused2 = path.join(tmp, 'pos.fused.safetensors');
  await fuseLoras(BASE, [adapter('dora-in')], [0.8], { out: fused2, dtype: 'F32' });
  const pos = await unfuseLoras(fused2, [adapter('dora-in')], [0.8], { out: path.join(tmp, 'pos.back.safetensors') });
  expect(pos.warnings).toEqual([]);
});

describe('what unfuse cannot recover', () => {
  it('a DoRA fused at strength 1: LORA_CANNOT_UNFUSE explaining why, exit 4, nothing written', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'dora1-'));
    const fused = path.join(tmp, 'dora1.fused.safetensors');
    await fuseLoras(BASE, [adapter('dora-in')], [1], { out: fused });
    const r = await runCli(
      ['unfuse', '--fused', fused, `${adapter('dora-in')}:1`, '-o', path.join(dir, 'back.safetensors'), '-q'],
      ROOT,
    );
    expect(r.code).toBe(4);
    expect(r.err).toContain('LORA_CANNOT_UNFUSE');
    expect(r.err).toContain('strength 1');
    expect(r.err).toContain('not in the fused file');
    expect(await fs.readdir(dir)).toEqual([]);
  });

  it('a GLoRA whose I + w·s·a1·a2 is singular is refused', () => {
    // r = 1, in = out = 3, a2·a1 = −1/c so that I_r + c·a2·a1 = 0
    const c = 0.5;
    const t: GloraTerm = {
      kind: 'glora',
      shape: [3, 3],
      scale: 1,
      a1: ndarray(Float32Array.of(1, 0, 0), [3, 1]),
      a2: ndarray(Float32Array.of(-1 / c, 0, 0), [1, 3]),
      b1: ndarray(Float32Array.of(0.1, 0.2, 0.3), [3, 1]),
      b2: ndarray(Float32Array.of(0.1, 0.1, 0.1), [1, 3]),
    };
    expect(() => baseFromFused(t, 'm', new Float32Array(9).fill(0.5), c)).toThrow(
      expect.objectContaining({ code: 'LORA_CANNOT_UNFUSE', message: expect.stringContaining('singular') }),
    );
    // near-singular: ill-conditioned
    const near = { ...t, a2: ndarray(Float32Array.of(-1 / c + 1e-9, 0, 0), [1, 3]) };
    expect(() => baseFromFused(near, 'm', new Float32Array(9).fill(0.5), c)).toThrow(
      expect.objectContaining({ code: 'LORA_CANNOT_UNFUSE' }),
    );
  });
});

describe('baseFromFused inverts the fused formulas (random modules, f64)', () => {
  const rand = prng(13);
  for (const axis of ['out', 'in'] as const) {
    for (const w of [0.3, -0.7, 2.5]) {
      it(`DoRA, ${axis} axis, strength ${w}`, () => {
        const shape = [6, 4, 3, 3];
        const n = 6 * 36;
        const w0 = randomArray(rand, n, 0.2);
        const inner: Term = {
          up: ndarray(randomArray(rand, 6 * 2, 0.1), [6, 2, 1, 1]),
          down: ndarray(randomArray(rand, 2 * 36, 0.1), [2, 4, 3, 3]),
          alpha: 2,
        };
        const channels = axis === 'out' ? 6 : 4;
        const t: DoraTerm = {
          kind: 'dora',
          shape,
          axis,
          inner,
          magnitude: Float32Array.from({ length: channels }, () => 0.5 + rand()),
        };
        const d = termDelta(t, 'm', w0);
        const f = Float64Array.from(w0, (x, i) => x + w * (d[i] ?? 0));
        const back = baseFromFused(t, 'm', f, w);
        let worst = 0;
        for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs((back[i] ?? 0) - (w0[i] ?? 0)));
        expect(worst).toBeLessThan(1e-5);
      });
    }
  }
});

it('the ulp report keeps DoRA/GLoRA modules out of the ½ + ½ ulp plausibility bound (their inverse amplifies it)', async () => {
  const fused = path.join(tmp, 'report.fused.safetensors');
  await fuseLoras(BASE, [adapter('dora-in'), adapter('loha')], [0.6, 0.5], { out: fused });
  const r = await unfuseLoras(fused, [adapter('dora-in'), adapter('loha')], [0.6, 0.5], {
    out: path.join(tmp, 'report.back.safetensors'),
    base: BASE,
  });
  expect(r.distance?.recoveredElements).toBeGreaterThan(0);
  expect(r.distance?.plausible).toBe(true);
  expect(r.warnings).toEqual([]);
});
