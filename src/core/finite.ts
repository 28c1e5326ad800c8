/**
 * Finiteness of values read from files or produced by arithmetic: NaN and ±Inf counted separately, so errors and
 * `inspect` can say what was found. One pass, no allocation; cheap next to the I/O that produced the values.
 */
import { FormatError } from './errors.js';

export interface NonFiniteCount {
  /** NaN values. */
  readonly nan: number;
  /** +Inf and −Inf values. */
  readonly inf: number;
}

/** Count NaN and ±Inf in `values`. */
export function countNonFinite(values: ArrayLike<number>): NonFiniteCount {
  let nan = 0;
  let inf = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    if (v - v !== 0) {
      if (Number.isNaN(v)) nan++;
      else inf++;
    }
  }
  return { nan, inf };
}

/** True when every value is finite (stops at the first that is not). */
export function allFinite(values: ArrayLike<number>): boolean {
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    if (v - v !== 0) return false;
  }
  return true;
}

/** '3 NaN, 1 ±Inf' */
export function describeNonFinite(c: NonFiniteCount): string {
  return [c.nan > 0 ? `${c.nan} NaN` : '', c.inf > 0 ? `${c.inf} ±Inf` : ''].filter(Boolean).join(', ');
}

/**
 * Throw FormatError FORMAT_NONFINITE when a tensor read from `file` holds NaN or ±Inf. `what` says what the tensor
 * is for (e.g. 'LoRA factor', 'alpha').
 */
export function assertFiniteTensor(file: string, key: string, values: ArrayLike<number>, what: string): void {
  if (allFinite(values)) return;
  const c = countNonFinite(values);
  throw new FormatError(
    'FORMAT_NONFINITE',
    `${file}: ${what} '${key}' holds ${c.nan + c.inf} non-finite value(s) (${describeNonFinite(c)}) of ${values.length}; ` +
      'NaN or Inf would spread into every weight it touches, so nothing was written',
    { file, key, count: c.nan + c.inf, nan: c.nan, inf: c.inf, found: values.length },
  );
}

/** NaN values among little-endian stored floats (F32, F16 or BF16 bytes), read without decoding. */
export function countNaNStored(bytes: Uint8Array, dtype: 'F32' | 'F16' | 'BF16'): number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let n = 0;
  if (dtype === 'F32') {
    for (let i = 0; i + 4 <= bytes.byteLength; i += 4) if ((dv.getUint32(i, true) & 0x7fffffff) > 0x7f800000) n++;
    return n;
  }
  const inf = dtype === 'F16' ? 0x7c00 : 0x7f80;
  for (let i = 0; i + 2 <= bytes.byteLength; i += 2) if ((dv.getUint16(i, true) & 0x7fff) > inf) n++;
  return n;
}
