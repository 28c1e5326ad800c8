/**
 * Plain-JS reference kernel (core). Accumulates W + U·D in f64 and rounds once to the output dtype — the most
 * accurate of the kernels, and the one the WASM and gpu.js kernels are tested against. About 1 GFLOP/s.
 */
import { f16BitsToNumber, numberToBf16Bits, numberToF16Bits } from '../core/dtype-scalar.js';
import { disposedError, timed, validateJob } from './job.js';
import type { FuseKernel, KernelStats, StoredFloat, UpdateJob, UpdateOptions, UpdateResult } from './types.js';

const F32_MAX = 3.4028234663852886e38;

/** Decode every value of a stored buffer to f64. */
export function decodeStored(src: Uint8Array, dtype: StoredFloat): Float64Array {
  const copy = src.slice(); // aligned, and safe when src aliases the destination
  const out = new Float64Array(dtype === 'F32' ? copy.byteLength / 4 : copy.byteLength / 2);
  if (dtype === 'F32') {
    const v = new Float32Array(copy.buffer);
    for (let i = 0; i < v.length; i++) out[i] = v[i]!;
  } else {
    const v = new Uint16Array(copy.buffer);
    if (dtype === 'F16') for (let i = 0; i < v.length; i++) out[i] = f16BitsToNumber(v[i]!);
    else {
      const f = new Float32Array(1);
      const u = new Uint32Array(f.buffer);
      for (let i = 0; i < v.length; i++) {
        u[0] = v[i]! << 16;
        out[i] = f[0]!;
      }
    }
  }
  return out;
}

/** Round f64 values once to the stored dtype, writing little-endian bytes into dst. Returns overflow count. */
function encodeRow(
  vals: Float64Array,
  inputFinite: Uint8Array,
  dtype: StoredFloat,
  dst: Uint8Array,
  offset: number,
  clamp: boolean,
): number {
  let overflow = 0;
  const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  for (let j = 0; j < vals.length; j++) {
    const x = vals[j]!;
    const finiteIn = inputFinite[j] === 1;
    if (dtype === 'F32') {
      let y = Math.fround(x);
      if (finiteIn && !Number.isFinite(y)) {
        overflow++;
        if (clamp && !Number.isNaN(y)) y = y > 0 ? F32_MAX : -F32_MAX;
      }
      dv.setFloat32(offset + 4 * j, y, true);
    } else {
      let h = dtype === 'F16' ? numberToF16Bits(x) : numberToBf16Bits(x);
      const expMask = dtype === 'F16' ? 0x7c00 : 0x7f80;
      if (finiteIn && (h & expMask) === expMask) {
        overflow++;
        if (clamp && (h & 0x7fff) === expMask) h = (h & 0x8000) | (dtype === 'F16' ? 0x7bff : 0x7f7f);
      }
      dv.setUint16(offset + 2 * j, h, true);
    }
  }
  return overflow;
}

/** The f64 reference update (synchronous), shared by createJsKernel and the tests. */
export function referenceUpdate(
  src: Uint8Array,
  srcDtype: StoredFloat,
  dst: Uint8Array,
  dstDtype: StoredFloat,
  job: UpdateJob,
  clamp = false,
): UpdateResult {
  const { rows, cols, rank, up, down } = job;
  const w = decodeStored(src, srcDtype);
  const acc = new Float64Array(cols);
  const finite = new Uint8Array(cols);
  const size = dstDtype === 'F32' ? 4 : 2;
  let overflow = 0;
  let nonFiniteInput = 0;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const x = w[i * cols + j]!;
      acc[j] = x;
      const f = Number.isFinite(x);
      finite[j] = f ? 1 : 0;
      if (!f) nonFiniteInput++;
    }
    for (let k = 0; k < rank; k++) {
      const u = up[i * rank + k]!;
      const d0 = k * cols;
      for (let j = 0; j < cols; j++) acc[j] = acc[j]! + u * down[d0 + j]!;
    }
    overflow += encodeRow(acc, finite, dstDtype, dst, i * cols * size, clamp);
  }
  return { overflow, nonFiniteInput };
}

export function createJsKernel(): FuseKernel {
  const stats: KernelStats = { flops: 0, seconds: 0, calls: 0 };
  let disposed = false;
  return {
    name: 'js',
    backend: 'js',
    stats,
    async update(src, srcDtype, dst, dstDtype, job, opts: UpdateOptions = {}) {
      if (disposed) throw disposedError('js');
      validateJob('js', src, srcDtype, dst, dstDtype, job);
      return timed(stats, job, () => referenceUpdate(src, srcDtype, dst, dstDtype, job, opts.clamp === true));
    },
    async dispose() {
      disposed = true;
    },
  };
}
