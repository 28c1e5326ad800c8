/**
 * One LoRA module as numbers: its rank, its scale alpha/r, the dimensions of the weight it changes, and its dense
 * delta (alpha / r)·up·down. The dense delta is for small cases (tests, inspection); the merge and rank
 * reduction never form it.
 */
import ndarray from 'ndarray';
import { LoraError, ArgumentError } from '../core/errors.js';
import type { F32Array, LoraModule } from './types.js';

/** The shape facts of a module: delta is out × fanIn, fanIn = in·kh·kw. */
export interface ModuleDims {
  readonly rank: number;
  readonly out: number;
  readonly in: number;
  /** [kh, kw] for a conv down ([r, in, kh, kw]); null for a linear down ([r, in]). */
  readonly kernel: readonly [number, number] | null;
  /** in·kh·kw: the length of one row of `down` and one row of the flattened delta. */
  readonly fanIn: number;
}

const fmt = (shape: readonly number[]): string => `[${shape.join(', ')}]`;

/** The rank r of a module: the first dimension of `down`. */
export function rankOf(module: LoraModule): number {
  return module.down.shape[0]!;
}

/** The scale alpha / r that multiplies up·down. */
export function scaleOf(module: LoraModule): number {
  return module.alpha / rankOf(module);
}

/**
 * Check a module's factor shapes and return its dimensions. `path` names the module in errors.
 * down [r, in] or [r, in, kh, kw]; up [out, r] or [out, r, 1, 1]; both ranks equal and positive; alpha finite.
 */
export function moduleDims(module: LoraModule, path = '(module)', where?: string): ModuleDims {
  const { down, up } = module;
  const label = where ? `module '${path}' of ${where}` : `module '${path}'`;
  const ds = down.shape,
    us = up.shape;
  const downOk = (ds.length === 2 || ds.length === 4) && ds.every((d) => Number.isInteger(d) && d > 0);
  const upOk =
    (us.length === 2 || (us.length === 4 && us[2] === 1 && us[3] === 1)) &&
    us.every((d) => Number.isInteger(d) && d > 0);
  if (!downOk || !upOk) {
    throw new LoraError(
      'LORA_SHAPE_MISMATCH',
      `${label}: expected down [r, in] or [r, in, kh, kw] and up [out, r] or [out, r, 1, 1], found down ${fmt(ds)}, up ${fmt(us)}`,
      {
        key: path,
        expected: 'down [r, in] | [r, in, kh, kw]; up [out, r] | [out, r, 1, 1]',
        found: { down: ds, up: us },
      },
    );
  }
  if (us[1] !== ds[0]) {
    throw new LoraError(
      'LORA_RANK_MISMATCH',
      `${label}: down ${fmt(ds)} has rank ${ds[0]} but up ${fmt(us)} has rank ${us[1]}`,
      { key: path, expected: ds[0], found: us[1] },
    );
  }
  if (!Number.isFinite(module.alpha)) {
    throw new ArgumentError('ARG_INVALID', `${label}: alpha is ${module.alpha}; expected a finite number`, {
      key: path,
      found: module.alpha,
    });
  }
  const kernel: readonly [number, number] | null = ds.length === 4 ? [ds[2]!, ds[3]!] : null;
  return { rank: ds[0]!, out: us[0]!, in: ds[1]!, kernel, fanIn: ds[1]! * (kernel ? kernel[0] * kernel[1] : 1) };
}

/** The delta's shape: [out, in] for a linear module, [out, in, kh, kw] for a conv module. */
export function deltaShape(dims: ModuleDims): number[] {
  return dims.kernel ? [dims.out, dims.in, dims.kernel[0], dims.kernel[1]] : [dims.out, dims.in];
}

/**
 * The values of an ndarray in row-major order as a Float32Array (the backing array itself when the view is
 * already contiguous, so callers must not write to the result).
 */
export function contiguousValues(a: F32Array): Float32Array {
  const size = a.shape.reduce((x, y) => x * y, 1);
  let contiguous = a.offset === 0 && a.data.length === size;
  let expect = 1;
  for (let i = a.shape.length - 1; i >= 0 && contiguous; i--) {
    if (a.shape[i]! > 1 && a.stride[i] !== expect) contiguous = false;
    expect *= a.shape[i]!;
  }
  if (contiguous) return a.data;
  const out = new Float32Array(size);
  const idx = new Array<number>(a.shape.length).fill(0);
  for (let n = 0; n < size; n++) {
    out[n] = a.get(...idx);
    for (let d = a.shape.length - 1; d >= 0; d--) {
      if (++idx[d]! < a.shape[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}

/**
 * The dense delta (alpha / r)·up·down of a module, [out, in] or [out, in, kh, kw] (a conv delta is the
 * [out, in·kh·kw] product reshaped). Sums are accumulated in f64 and rounded once to f32.
 * Memory is out·in·kh·kw floats: meant for small modules, tests and inspection.
 */
export function deltaOf(module: LoraModule, path?: string): F32Array {
  const dims = moduleDims(module, path);
  const up = contiguousValues(module.up);
  const down = contiguousValues(module.down);
  const { rank: r, out, fanIn: n } = dims;
  const s = module.alpha / r;
  const result = new Float32Array(out * n);
  const row = new Float64Array(n);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let a = 0; a < r; a++) {
      const u = up[o * r + a]!;
      if (u === 0) continue;
      const base = a * n;
      for (let i = 0; i < n; i++) row[i] = row[i]! + u * down[base + i]!;
    }
    const ob = o * n;
    for (let i = 0; i < n; i++) result[ob + i] = s * row[i]!;
  }
  return ndarray(result, deltaShape(dims));
}
