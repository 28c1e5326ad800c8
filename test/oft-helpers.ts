/**
 * An independent f64 model of OFT and BOFT for the tests (test/adapters-oft.test.ts, test/oft-fuse.test.ts), written
 * from the upstream formulas rather than from src/: the Cayley transform by solving (I − Q)·X = I + Q, the rotations
 * as full out × out matrices, BOFT's butterfly permutations built from the torch reshapes of LyCORIS
 * (lycoris/functional/boft.py diff_weight) and ComfyUI (comfy/weight_adapter/boft.py): unflatten (-1, 2, k), swap,
 * flatten.
 */
import path from 'node:path';
import { getLayout } from '../src/layout/index.js';
import type { BoftTerm, OftTerm } from '../src/lora/types.js';
import { openSafetensors } from '../src/node/files.js';

export const ROOT = path.resolve(import.meta.dirname, '..');
export const FX = path.join(ROOT, 'fixtures');
export const BASE = path.join(FX, 'sd15', 'base.safetensors');
export const KINDS = ['oft', 'oft-kohya', 'oft-diag', 'boft'] as const;
export const adapter = (k: string): string => path.join(FX, 'adapters', `${k}.safetensors`);

export type Mat = Float64Array; // row-major n × n unless said otherwise

/** Solve A·X = B (n × n, partial pivoting). */
export function solve(a: Mat, b: Mat, n: number): Mat {
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
export function referenceRotations(blocks: Float32Array, count: number, b: number, constraint: number): Mat[] {
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

export function matmul(a: Mat, b: Mat, n: number, cols: number): Mat {
  const c = new Float64Array(n * cols);
  for (let i = 0; i < n; i++)
    for (let l = 0; l < n; l++) {
      const x = a[i * n + l]!;
      if (x !== 0) for (let j = 0; j < cols; j++) c[i * cols + j]! += x * b[l * cols + j]!;
    }
  return c;
}

/** The out × out block-diagonal matrix of blocks (transposed each when asked). */
export function blockDiagonal(rs: Mat[], b: number, transposed: boolean): Mat {
  const out = rs.length * b;
  const m = new Float64Array(out * out);
  rs.forEach((r, k) => {
    for (let i = 0; i < b; i++)
      for (let j = 0; j < b; j++) m[(k * b + i) * out + k * b + j] = transposed ? r[j * b + i]! : r[i * b + j]!;
  });
  return m;
}

/** torch: x.unflatten(0, (-1, 2, k)).transpose(1, 2).flatten(0, 2): which original row lands at each position. */
export function butterflyOrder(out: number, k: number): number[] {
  const idx = [...Array(out).keys()];
  const order: number[] = [];
  for (let c = 0; c < out / (2 * k); c++)
    for (let q = 0; q < k; q++) for (let g = 0; g < 2; g++) order.push(idx[c * 2 * k + g * k + q]!);
  return order;
}

/** The weight a term makes of W0 in this file's model: OFT Rᵀ per block; BOFT stages P⁻¹·blockdiag(R)·P; rescale. */
export function referenceRotated(t: OftTerm | BoftTerm, w0: Float32Array, strength = 1): Float64Array {
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

export async function baseWeights(paths: string[]): Promise<Map<string, Float32Array>> {
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

export const maxAbs = (a: ArrayLike<number>): number => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
};
