/**
 * OFT and BOFT (LyCORIS diag-OFT / BOFT, kohya OFT, the old oft_diag) as term kinds. An independent f64 model written
 * here — the Cayley transform by solving (I − Q)·X = I + Q, the rotations as full out × out matrices, BOFT's
 * butterfly permutations built from the torch reshapes of LyCORIS / ComfyUI (unflatten (-1, 2, k), swap, flatten) —
 * checks the terms read from the fixtures; then orthogonality, the constraint, a hand-computed 2 × 2 case, fuse
 * (ComfyUI's strength rule, 1 and 2 threads byte-identical, single file and folder), verify, convert and merge with
 * --base, unfuse, and the refusals.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ndarray from 'ndarray';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras, resolveBaseTerms, unfuseLoras } from '../src/fuse/index.js';
import { getLayout } from '../src/layout/index.js';
import { cayleyRotations, skewNorm } from '../src/lora/terms/rotation.js';
import { termDelta, termLabel, termShape, termWeightedDelta } from '../src/lora/terms/index.js';
import type { BoftTerm, OftTerm, Term } from '../src/lora/types.js';
import { openSafetensors } from '../src/node/files.js';
import { verifyFusion } from '../src/verify/index.js';
import { runCli } from './cli-helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const FX = path.join(ROOT, 'fixtures');
const BASE = path.join(FX, 'sd15', 'base.safetensors');
const FOLDER = path.join(FX, 'sd15', 'diffusers');
const KINDS = ['oft', 'oft-kohya', 'oft-diag', 'boft'] as const;
const adapter = (k: string): string => path.join(FX, 'adapters', `${k}.safetensors`);

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-oft-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

// ---- the independent f64 model -----------------------------------------------------------------------------------

type Mat = Float64Array; // row-major n × n unless said otherwise

/** Solve A·X = B (n × n, partial pivoting). */
function solve(a: Mat, b: Mat, n: number): Mat {
  const A = Float64Array.from(a);
  const X = Float64Array.from(b);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(A[r * n + c]!) > Math.abs(A[p * n + c]!)) p = r;
    for (let j = 0; j < n; j++) {
      [A[c * n + j], A[p * n + j]] = [A[p * n + j]!, A[c * n + j]!];
      [X[c * n + j], X[p * n + j]] = [X[p * n + j]!, X[c * n + j]!];
    }
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = A[r * n + c]! / A[c * n + c]!;
      for (let j = 0; j < n; j++) {
        A[r * n + j]! -= f * A[c * n + j]!;
        X[r * n + j]! -= f * X[c * n + j]!;
      }
    }
  }
  for (let r = 0; r < n; r++) for (let j = 0; j < n; j++) X[r * n + j]! /= A[r * n + r]!;
  return X;
}

/** Cayley per block with LyCORIS's constraint: Q = B − Bᵀ scaled to c/(‖Q‖ + 1e-8) when that exceeds c > 0. */
function referenceRotations(blocks: Float32Array, count: number, b: number, constraint: number): Mat[] {
  const qs: Mat[] = [];
  let norm2 = 0;
  for (let k = 0; k < count; k++) {
    const q = new Float64Array(b * b);
    for (let i = 0; i < b; i++)
      for (let j = 0; j < b; j++) q[i * b + j] = blocks[k * b * b + i * b + j]! - blocks[k * b * b + j * b + i]!;
    for (const x of q) norm2 += x * x;
    qs.push(q);
  }
  const n = Math.sqrt(norm2) + 1e-8;
  const f = constraint > 0 && n > constraint ? constraint / n : 1;
  return qs.map((q) => {
    const plus = new Float64Array(b * b);
    const minus = new Float64Array(b * b);
    for (let i = 0; i < b; i++)
      for (let j = 0; j < b; j++) {
        plus[i * b + j] = (i === j ? 1 : 0) + f * q[i * b + j]!;
        minus[i * b + j] = (i === j ? 1 : 0) - f * q[i * b + j]!;
      }
    // (I + Q)(I − Q)⁻¹ = (I − Q)⁻¹(I + Q): Q commutes with I ± Q.
    return solve(minus, plus, b);
  });
}

function matmul(a: Mat, b: Mat, n: number, cols: number): Mat {
  const c = new Float64Array(n * cols);
  for (let i = 0; i < n; i++)
    for (let l = 0; l < n; l++) {
      const x = a[i * n + l]!;
      if (x !== 0) for (let j = 0; j < cols; j++) c[i * cols + j]! += x * b[l * cols + j]!;
    }
  return c;
}

/** The out × out block-diagonal matrix of blocks (transposed each when asked). */
function blockDiagonal(rs: Mat[], b: number, transposed: boolean): Mat {
  const out = rs.length * b;
  const m = new Float64Array(out * out);
  rs.forEach((r, k) => {
    for (let i = 0; i < b; i++)
      for (let j = 0; j < b; j++) m[(k * b + i) * out + k * b + j] = transposed ? r[j * b + i]! : r[i * b + j]!;
  });
  return m;
}

/** torch: x.unflatten(0, (-1, 2, k)).transpose(1, 2).flatten(0, 2): which original row lands at each position. */
function butterflyOrder(out: number, k: number): number[] {
  const idx = [...Array(out).keys()];
  const order: number[] = [];
  for (let c = 0; c < out / (2 * k); c++)
    for (let q = 0; q < k; q++) for (let g = 0; g < 2; g++) order.push(idx[c * 2 * k + g * k + q]!);
  return order;
}

/** The weight a term makes of W0 in this file's model: OFT Rᵀ per block; BOFT stages P⁻¹·blockdiag(R)·P; rescale. */
function referenceRotated(t: OftTerm | BoftTerm, w0: Float32Array, strength = 1): Float64Array {
  const out = t.shape[0]!;
  const cols = w0.length / out;
  const blocks = Float32Array.from(t.blocks.data);
  const blend = (r: Mat, b: number): Mat => r.map((x, i) => strength * x + (i % (b + 1) === 0 ? 1 - strength : 0));
  let x: Float64Array = Float64Array.from(w0);
  if (t.kind === 'oft') {
    const [n, b] = t.blocks.shape as [number, number];
    const rs = t.cayley
      ? referenceRotations(blocks, n, b, t.constraint)
      : Array.from({ length: n }, (_, k) => Float64Array.from(blocks.subarray(k * b * b, (k + 1) * b * b)));
    x = matmul(blockDiagonal(rs, b, true), x, out, cols);
  } else {
    const [m, n, b] = t.blocks.shape as [number, number, number];
    const rs = referenceRotations(blocks, m * n, b, t.constraint);
    for (let i = 0; i < m; i++) {
      const order = butterflyOrder(out, 2 ** i * Math.floor(b / 2));
      const perm = new Float64Array(out * out); // (P·x)[p] = x[order[p]]
      order.forEach((row, p) => {
        perm[p * out + row] = 1;
      });
      const permT = new Float64Array(out * out);
      for (let r = 0; r < out; r++) for (let c = 0; c < out; c++) permT[c * out + r] = perm[r * out + c]!;
      const stage = blockDiagonal(
        rs.slice(i * n, (i + 1) * n).map((r) => blend(r, b)),
        b,
        false,
      );
      x = matmul(permT, matmul(stage, matmul(perm, x, out, cols), out, cols), out, cols);
    }
  }
  if (t.rescale) for (let i = 0; i < x.length; i++) x[i]! *= t.rescale[Math.floor(i / cols)]!;
  return x;
}

async function baseWeights(paths: string[]): Promise<Map<string, Float32Array>> {
  const layout = getLayout('sd15', 'tiny');
  const f = await openSafetensors(BASE);
  try {
    const m = new Map<string, Float32Array>();
    for (const p of paths) m.set(p, await f.readF32(layout.byPath.get(p)!.singleFileWeightKey));
    return m;
  } finally {
    await f.close();
  }
}

const maxAbs = (a: ArrayLike<number>): number => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
};

// ---- the algebra ------------------------------------------------------------------------------------------------

describe('rotations', () => {
  it('the Cayley transform is orthogonal and matches the solved form', () => {
    const b = 5;
    const blocks = Float32Array.from({ length: 3 * b * b }, (_, i) => Math.sin(i * 1.7) * 0.4);
    const r = cayleyRotations(blocks, 3, b, 0);
    const ref = referenceRotations(blocks, 3, b, 0);
    for (let k = 0; k < 3; k++) {
      const rk = r.subarray(k * b * b, (k + 1) * b * b);
      for (let i = 0; i < b * b; i++) expect(Math.abs(rk[i]! - ref[k]![i]!)).toBeLessThan(1e-13);
      for (let i = 0; i < b; i++)
        for (let j = 0; j < b; j++) {
          let s = 0;
          for (let l = 0; l < b; l++) s += rk[l * b + i]! * rk[l * b + j]!;
          expect(Math.abs(s - (i === j ? 1 : 0))).toBeLessThan(1e-13);
        }
    }
  });

  it('the constraint scales Q to norm c when ‖Q‖ exceeds it, and leaves it otherwise', () => {
    const b = 4;
    const blocks = Float32Array.from({ length: 2 * b * b }, (_, i) => Math.cos(i * 0.9) * 0.3);
    const norm = skewNorm(blocks, 2, b);
    // R = (I + Q)(I − Q)⁻¹ ⇒ Q = (R − I)(R + I)⁻¹: read Q back from the rotation and take its norm.
    const qNorm = (c: number): number => {
      const r = cayleyRotations(blocks, 2, b, c);
      let s = 0;
      for (let k = 0; k < 2; k++) {
        const rk = r.subarray(k * b * b, (k + 1) * b * b);
        const plus = Float64Array.from(rk, (x, i) => x + (i % (b + 1) === 0 ? 1 : 0));
        const minus = Float64Array.from(rk, (x, i) => x - (i % (b + 1) === 0 ? 1 : 0));
        // Q·(R + I) = R − I  ⇔  (R + I)ᵀ·Qᵀ = (R − I)ᵀ
        const tr = (m: Mat): Mat => Float64Array.from(m, (_, i) => m[(i % b) * b + Math.floor(i / b)]!);
        const qt = solve(tr(plus), tr(minus), b);
        for (const x of qt) s += x * x;
      }
      return Math.sqrt(s);
    };
    expect(qNorm(0)).toBeCloseTo(norm, 10);
    expect(qNorm(norm * 2)).toBeCloseTo(norm, 10);
    expect(qNorm(norm / 3)).toBeCloseTo(((norm / 3) * norm) / (norm + 1e-8), 10);
  });

  it('a hand-computed 2 × 2 OFT: B = [[0, ½], [0, 0]] rotates W0 = I to [[0.6, −0.8], [0.8, 0.6]]', () => {
    const t: OftTerm = {
      kind: 'oft',
      shape: [2, 2],
      blocks: ndarray(Float32Array.of(0, 0.5, 0, 0), [1, 2, 2]),
      cayley: true,
      constraint: 0,
    };
    // Q = [[0, ½], [−½, 0]], R = (I + Q)(I − Q)⁻¹ = [[0.6, 0.8], [−0.8, 0.6]]; OFT applies Rᵀ to the rows.
    const d = termDelta(t, 'm', Float32Array.of(1, 0, 0, 1));
    const expected = [0.6 - 1, -0.8, 0.8, 0.6 - 1];
    for (let i = 0; i < 4; i++) expect(d[i]).toBeCloseTo(expected[i]!, 6);
    // ComfyUI's strength rule: w²·Δ.
    const half = termWeightedDelta(t, 'm', 0.5, Float32Array.of(1, 0, 0, 1));
    for (let i = 0; i < 4; i++) expect(half[i]).toBeCloseTo(0.25 * expected[i]!, 6);
  });

  it('a hand-computed 4-row BOFT stage 0 with b = 2 rotates rows (0, 1) and (2, 3); stage 1 pairs (0, 2) and (1, 3)', () => {
    const w0 = Float32Array.of(1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1);
    const block = [0, 0.5, 0, 0]; // R = [[0.6, 0.8], [−0.8, 0.6]]
    const one: BoftTerm = {
      kind: 'boft',
      shape: [4, 4],
      blocks: ndarray(Float32Array.from([...block, ...[0, 0, 0, 0]]), [1, 2, 2, 2]),
      constraint: 0,
    };
    const d1 = termDelta(one, 'm', w0);
    // stage 0: k = 1, positions are rows in order; block 0 = rows 0, 1 multiplied by R (not Rᵀ).
    expect([...d1.subarray(0, 8)].map((x) => +x.toFixed(6))).toEqual([-0.4, 0.8, 0, 0, -0.8, -0.4, 0, 0]);
    const two: BoftTerm = {
      kind: 'boft',
      shape: [4, 4],
      blocks: ndarray(Float32Array.from([...[0, 0, 0, 0], ...[0, 0, 0, 0], ...block, ...[0, 0, 0, 0]]), [2, 2, 2, 2]),
      constraint: 0,
    };
    const d2 = termDelta(two, 'm', w0);
    // stage 1: k = 2, order [0, 2, 1, 3]: block 0 = rows 0 and 2.
    expect([...d2].map((x) => +x.toFixed(6))).toEqual([-0.4, 0, 0.8, 0, 0, 0, 0, 0, -0.8, 0, -0.4, 0, 0, 0, 0, 0]);
  });

  it('refuses blocks that do not fit, naming the module', () => {
    const bad = (blocks: ndarray.NdArray<Float32Array>, shape = [8, 3], kind: 'oft' | 'boft' = 'oft'): Term =>
      kind === 'oft' ? { kind, shape, blocks, cayley: true, constraint: 0 } : { kind, shape, blocks, constraint: 0 };
    const z = (n: number) => new Float32Array(n);
    expect(() => termShape(bad(ndarray(z(2 * 4 * 3), [2, 4, 3])), 'unet.x')).toThrow(/unet\.x.*\[n, b, b\]/);
    expect(() => termShape(bad(ndarray(z(3 * 4 * 4), [3, 4, 4])), 'unet.x')).toThrow(/12 output rows/);
    // 8 rows, b = 2: stages 0–2 pair rows in groups of 2, 4, 8; a fourth stage would need groups of 16.
    expect(() => termShape(bad(ndarray(z(3 * 4 * 2 * 2), [3, 4, 2, 2]), [8, 3], 'boft'), 'unet.x')).not.toThrow();
    expect(() => termShape(bad(ndarray(z(4 * 4 * 2 * 2), [4, 4, 2, 2]), [8, 3], 'boft'), 'unet.x')).toThrow(/stage 3/);
    expect(() =>
      termShape(
        { kind: 'oft', shape: [8, 3], blocks: ndarray(z(32), [2, 4, 4]), cayley: true, constraint: 0, rescale: z(4) },
        'unet.x',
      ),
    ).toThrow(/rescale holds 4 values; expected 8/);
    expect(() => termDelta(bad(ndarray(z(32), [2, 4, 4])), 'unet.x')).toThrow(
      expect.objectContaining({ code: 'LORA_NEEDS_BASE' }),
    );
  });
});

// ---- the files --------------------------------------------------------------------------------------------------

describe.each(KINDS)('%s fixture', (kind) => {
  it('reads as its kind, and its Δ equals the independent model on the raw tensors', async () => {
    const lora = await loadLora(adapter(kind));
    const w0 = await baseWeights([...lora.modules.keys()]);
    expect(lora.modules.size).toBeGreaterThan(0);
    for (const [p, t] of lora.modules) {
      expect(termLabel(t)).toBe(kind === 'boft' ? 'BOFT' : 'OFT');
      const term = t as OftTerm | BoftTerm;
      if (kind === 'oft' || kind === 'boft') expect(term.rescale).toBeDefined();
      const base = w0.get(p)!;
      const ref = referenceRotated(term, base);
      const d = termDelta(t, p, base);
      const scale = maxAbs(base);
      for (let i = 0; i < d.length; i++) expect(Math.abs(d[i]! - (ref[i]! - base[i]!))).toBeLessThan(1e-6 * scale);
      expect(maxAbs(d)).toBeGreaterThan(0);
    }
  });

  it('fuses with ComfyUI’s strength rule, the same bytes on 1 and 2 threads, and verifies', async () => {
    const w = 0.7;
    const lora = await loadLora(adapter(kind));
    const layout = getLayout('sd15', 'tiny');
    const outs = [1, 2].map((n) => path.join(tmp, `${kind}.t${n}.safetensors`));
    for (const [i, out] of outs.entries()) {
      await fuseLoras(BASE, [adapter(kind)], [w], { out, dtype: 'F32', threads: i + 1 });
    }
    const [a, b] = await Promise.all(outs.map((o) => fs.readFile(o)));
    expect(Buffer.compare(a!, b!)).toBe(0);
    const w0 = await baseWeights([...lora.modules.keys()]);
    const fused = await openSafetensors(outs[0]!);
    try {
      for (const [p, t] of lora.modules) {
        const base = w0.get(p)!;
        const got = await fused.readF32(layout.byPath.get(p)!.singleFileWeightKey);
        const term = t as OftTerm | BoftTerm;
        // OFT: W0 + w²·Δ; BOFT: W0 + w·(diag(s)·S_w·W0 − W0) with each stage blended w·R + (1 − w)·I.
        const rotated = referenceRotated(term, base, term.kind === 'boft' ? w : 1);
        const c = term.kind === 'oft' ? w * w : w;
        for (let i = 0; i < got.length; i++) {
          const want = base[i]! + c * (rotated[i]! - base[i]!);
          expect(Math.abs(got[i]! - want)).toBeLessThanOrEqual(2 ** -22 * Math.max(1, Math.abs(want)));
        }
      }
    } finally {
      await fused.close();
    }
    const ok = await verifyFusion(outs[0]!, BASE, [adapter(kind)], [w]);
    expect(ok.ok).toBe(true);
    const wrong = await verifyFusion(outs[0]!, BASE, [adapter(kind)], [w * 0.5]);
    expect(wrong.ok).toBe(false);
  });

  it('converts with --base to a plain LoRA whose Δ is exact, and fuses to the same checkpoint at strength 1', async () => {
    const lora = await loadLora(adapter(kind));
    const plain = await resolveBaseTerms(lora, BASE);
    const w0 = await baseWeights([...lora.modules.keys()]);
    for (const [p, t] of plain.modules) {
      const base = w0.get(p)!;
      const ref = referenceRotated(lora.modules.get(p) as OftTerm | BoftTerm, base);
      const d = termDelta(t, p);
      for (let i = 0; i < d.length; i++) expect(Math.abs(d[i]! - (ref[i]! - base[i]!))).toBeLessThan(1e-6);
    }
    const out = path.join(tmp, `${kind}.plain.safetensors`);
    const cli = await runCli(
      ['convert', adapter(kind), '--to', 'kohya', '--dtype', 'fp32', '-o', out, '--base', BASE],
      ROOT,
    );
    expect(cli.err).toBe('');
    expect(cli.code).toBe(0);
    const fa = path.join(tmp, `${kind}.fa.safetensors`);
    const fb = path.join(tmp, `${kind}.fb.safetensors`);
    await fuseLoras(BASE, [adapter(kind)], [1], { out: fa, dtype: 'F32' });
    await fuseLoras(BASE, [out], [1], { out: fb, dtype: 'F32' });
    const [A, B] = await Promise.all([openSafetensors(fa), openSafetensors(fb)]);
    try {
      for (const t of A.tensors) {
        const x = await A.readF32(t.name);
        const y = await B.readF32(t.name);
        for (let i = 0; i < x.length; i++)
          expect(Math.abs(x[i]! - y[i]!)).toBeLessThan(1e-6 * Math.max(1, Math.abs(x[i]!)));
      }
    } finally {
      await Promise.all([A.close(), B.close()]);
    }
  });

  it('unfuse takes the fused F32 checkpoint back to the base', async () => {
    const fused = path.join(tmp, `${kind}.u.safetensors`);
    const back = path.join(tmp, `${kind}.back.safetensors`);
    await fuseLoras(BASE, [adapter(kind)], [0.6], { out: fused, dtype: 'F32' });
    await unfuseLoras(fused, [adapter(kind)], [0.6], { out: back, dtype: 'F16' });
    const [a, b] = await Promise.all([openSafetensors(BASE), openSafetensors(back)]);
    try {
      let differ = 0;
      for (const t of a.tensors) {
        const x = new Uint16Array((await a.read(t.name)).slice().buffer);
        const y = new Uint16Array((await b.read(t.name)).slice().buffer);
        for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) differ++;
      }
      expect(differ).toBe(0);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe('commands', () => {
  it('inspect names the kinds and counts them', async () => {
    const r = await runCli(['inspect', adapter('boft'), '--json'], ROOT);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/"BOFT":\s*9/);
    const t = await runCli(['inspect', adapter('oft-diag')], ROOT);
    expect(t.out).toMatch(/OFT \(oft_diag\) ×9/);
    expect(t.out).not.toMatch(/no alpha/);
  });

  it('without --base, convert and merge refuse with LORA_NEEDS_BASE and write nothing', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'nobase-'));
    const c = await runCli(['convert', adapter('oft'), '--to', 'peft', '-o', path.join(dir, 'x.safetensors')], ROOT);
    expect(c.code).toBe(4);
    expect(c.err).toContain('LORA_NEEDS_BASE');
    const m = await runCli(
      ['merge', adapter('boft'), 'fixtures/sd15/lcm-lora.kohya.safetensors', '-o', path.join(dir, 'm.safetensors')],
      ROOT,
    );
    expect(m.code).toBe(4);
    expect(await fs.readdir(dir)).toEqual([]);
  });

  it('merge with --base and convert --rank report the error', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'base-'));
    const m = await runCli(
      [
        'merge',
        adapter('oft'),
        'fixtures/sd15/lcm-lora.kohya.safetensors:0.5',
        '-o',
        path.join(dir, 'm.safetensors'),
        '--base',
        BASE,
        '--dtype',
        'fp32',
        '-q',
      ],
      ROOT,
    );
    expect(m.err).toBe('');
    expect(m.code).toBe(0);
    const c = await runCli(
      [
        'convert',
        adapter('boft'),
        '--to',
        'kohya',
        '-o',
        path.join(dir, 'r.safetensors'),
        '--base',
        BASE,
        '--rank',
        '2',
        '--json',
        '-q',
      ],
      ROOT,
    );
    expect(c.err).toBe('');
    expect(c.code).toBe(0);
    expect(c.out).toMatch(/relative|reduction/i);
  });

  it('fuses into a diffusers folder like into the single file', async () => {
    const out = path.join(tmp, 'oft-folder');
    const r = await runCli(['fuse', '--base', FOLDER, `${adapter('oft')}:0.8`, '-o', out, '-q'], ROOT);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const v = await runCli(['verify', '--base', FOLDER, `${adapter('oft')}:0.8`, '--fused', out], ROOT);
    expect(v.code).toBe(0);
  });

  it('a PEFT OFT file (oft_r) is refused naming its layout', async () => {
    await expect(loadLora(path.join(FX, 'bad', 'oft.safetensors'))).rejects.toMatchObject({
      code: 'FORMAT_UNSUPPORTED_ADAPTER',
      message: expect.stringMatching(/PEFT OFT\/BOFT/),
    });
  });
});
