/** Shared helpers for the kernel tests: stored-byte builders, an exact emulation of the mul+add WASM kernel,
 *  and the error bound against the f64 reference. */
import { expect } from 'vitest';
import { decodeStored } from '../src/kernels/js.js';
import type { StoredFloat, UpdateJob, UpdateResult } from '../src/kernels/types.js';
import {
  f32Bits,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f32FromBits,
  numberToBf16Bits,
  numberToF16Bits,
} from '../src/core/dtype-scalar.js';

export const DTYPES: readonly StoredFloat[] = ['F32', 'F16', 'BF16'];
export const SIZE: Record<StoredFloat, number> = { F32: 4, F16: 2, BF16: 2 };

/** Round numbers once to a stored dtype, little-endian bytes. */
export function stored(vals: ArrayLike<number>, dt: StoredFloat): Uint8Array {
  const out = new Uint8Array(vals.length * SIZE[dt]);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < vals.length; i++) {
    const v = vals[i]!;
    if (dt === 'F32') dv.setFloat32(4 * i, v, true);
    else dv.setUint16(2 * i, dt === 'F16' ? numberToF16Bits(v) : numberToBf16Bits(v), true);
  }
  return out;
}

/** Deterministic pseudo-random numbers in [-1, 1). */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 31 - 1;
  };
}

export function randomJob(rows: number, cols: number, rank: number, seed: number, scale = 1): UpdateJob {
  const r = rng(seed);
  return {
    rows,
    cols,
    rank,
    up: Float32Array.from({ length: rows * rank }, () => r() * scale),
    down: Float32Array.from({ length: rank * cols }, () => r() * scale),
  };
}

export function randomW(rows: number, cols: number, seed: number, scale = 1): Float64Array {
  const r = rng(seed ^ 0x9e3779b9);
  return Float64Array.from({ length: rows * cols }, () => r() * scale);
}

const LIMIT: Record<StoredFloat, number> = { F32: 0x7f7fffff, F16: 0x477fefff, BF16: 0x7f7f7fff };
const MAXF: Record<StoredFloat, number> = { F32: 0x7f7fffff, F16: 0x477fe000, BF16: 0x7f7f0000 };

/**
 * Exact emulation of the mul+add WASM kernel: acc = Σ_k fl(fl(u·d) + acc) in k order from 0, y = fl(w + acc),
 * counts and clamp in the f32 domain, then one RNE rounding to the output dtype.
 */
export function emulatePlain(
  src: Uint8Array,
  srcDt: StoredFloat,
  dstDt: StoredFloat,
  job: UpdateJob,
  clamp = false,
): { out: Uint8Array; res: UpdateResult } {
  const { rows, cols, rank, up, down } = job;
  const w = decodeStored(src, srcDt);
  const out = new Uint8Array(rows * cols * SIZE[dstDt]);
  const dv = new DataView(out.buffer);
  let overflow = 0;
  let nonFiniteInput = 0;
  const fr = Math.fround;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let acc = 0;
      for (let k = 0; k < rank; k++) acc = fr(fr(up[i * rank + k]! * down[k * cols + j]!) + acc);
      const x = w[i * cols + j]!;
      let yb = f32Bits(fr(x + acc));
      const abs = yb & 0x7fffffff;
      if (abs > LIMIT[dstDt]) {
        if (!Number.isFinite(x)) nonFiniteInput++;
        else {
          overflow++;
          if (clamp && abs <= 0x7f800000) yb = ((yb & 0x80000000) | MAXF[dstDt]) >>> 0;
        }
      }
      if (dstDt === 'F32') dv.setUint32(4 * (i * cols + j), yb, true);
      else dv.setUint16(2 * (i * cols + j), dstDt === 'F16' ? f32BitsToF16Bits(yb) : f32BitsToBf16Bits(yb), true);
    }
  }
  return { out, res: { overflow, nonFiniteInput } };
}

function halfUlp(dt: StoredFloat, v: number): number {
  const a = Math.abs(v);
  if (dt === 'F32') return a < 2 ** -126 ? 2 ** -150 : 2 ** (Math.floor(Math.log2(a)) - 24);
  if (dt === 'F16') return a < 2 ** -14 ? 2 ** -25 : 2 ** (Math.floor(Math.log2(a)) - 11);
  return a < 2 ** -126 ? 2 ** -134 : 2 ** (Math.floor(Math.log2(a)) - 8);
}

/**
 * Assert that `out` (dstDt) equals the f64 reference within the documented bound:
 *   |y − ref| ≤ (rank + 2)·2⁻²⁴·(|w| + Σ|u_k·d_k|) + ½ulp_dst(|ref| + that),
 * and that non-finite outputs sit exactly where the reference has them.
 */
export function expectWithinBound(
  out: Uint8Array,
  src: Uint8Array,
  srcDt: StoredFloat,
  dstDt: StoredFloat,
  job: UpdateJob,
): void {
  const { rows, cols, rank, up, down } = job;
  const w = decodeStored(src, srcDt);
  const y = decodeStored(out, dstDt);
  let worst = 0;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let ref = w[i * cols + j]!;
      let mag = Math.abs(ref);
      for (let k = 0; k < rank; k++) {
        const p = up[i * rank + k]! * down[k * cols + j]!;
        ref += p;
        mag += Math.abs(p);
      }
      const got = y[i * cols + j]!;
      if (!Number.isFinite(ref)) continue; // non-finite inputs: checked by the dedicated tests
      if (!Number.isFinite(got)) expect.fail(`(${i}, ${j}) ${srcDt}→${dstDt}: got ${got}, f64 reference ${ref}`);
      const e = (rank + 2) * 2 ** -24 * mag + 1e-45;
      const bound = e + halfUlp(dstDt, Math.abs(ref) + e);
      const err = Math.abs(got - ref);
      if (err > bound)
        expect.fail(
          `(${i}, ${j}) ${srcDt}→${dstDt} r=${rank}: got ${got}, f64 reference ${ref}, error ${err} > bound ${bound}`,
        );
      worst = Math.max(worst, err / bound);
    }
  }
  expect(worst).toBeLessThanOrEqual(1);
}

export function f32(x: number): number {
  return f32FromBits(f32Bits(x));
}

/** Fast byte equality (vitest's deep equality is slow on large typed arrays); reports the first difference. */
export function expectSameBytes(got: Uint8Array, want: Uint8Array, what = 'bytes'): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  let i = 0;
  while (i < got.length && got[i] === want[i]) i++;
  if (i < got.length) expect.fail(`${what}: first difference at byte ${i}: got ${got[i]}, want ${want[i]}`);
}
