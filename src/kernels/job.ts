/** Checks shared by every kernel: a job must describe exactly the bytes and factors it is given. */
import { FuseError } from '../core/errors.js';
import { isStoredFloat, STORED_FLOAT_SIZE, type KernelStats, type StoredFloat, type UpdateJob } from './types.js';

function isCount(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0;
}

function fail(kernel: string, what: string, expected: unknown, found: unknown): never {
  throw new FuseError(
    'KERNEL_INVALID_JOB',
    `${kernel} kernel: ${what}: expected ${String(expected)}, found ${String(found)}`,
    { kernel, what, expected, found },
  );
}

/** Throws FuseError KERNEL_INVALID_JOB unless the job, buffers and dtypes agree. */
export function validateJob(
  kernel: string,
  src: Uint8Array,
  srcDtype: StoredFloat,
  dst: Uint8Array,
  dstDtype: StoredFloat,
  job: UpdateJob,
): void {
  if (!isStoredFloat(srcDtype)) fail(kernel, 'source dtype', 'F32, F16 or BF16', srcDtype);
  if (!isStoredFloat(dstDtype)) fail(kernel, 'destination dtype', 'F32, F16 or BF16', dstDtype);
  const { rows, cols, rank } = job;
  if (!isCount(rows)) fail(kernel, 'rows', 'a non-negative integer', rows);
  if (!isCount(cols)) fail(kernel, 'cols', 'a non-negative integer', cols);
  if (!isCount(rank)) fail(kernel, 'rank', 'a non-negative integer', rank);
  if (!(src instanceof Uint8Array)) fail(kernel, 'source buffer', 'a Uint8Array', typeof src);
  if (!(dst instanceof Uint8Array)) fail(kernel, 'destination buffer', 'a Uint8Array', typeof dst);
  if (!(job.up instanceof Float32Array)) fail(kernel, 'up factor', 'a Float32Array', typeof job.up);
  if (!(job.down instanceof Float32Array)) fail(kernel, 'down factor', 'a Float32Array', typeof job.down);
  const n = rows * cols;
  if (src.byteLength !== n * STORED_FLOAT_SIZE[srcDtype]) {
    fail(kernel, `source bytes for ${rows}×${cols} ${srcDtype}`, n * STORED_FLOAT_SIZE[srcDtype], src.byteLength);
  }
  if (dst.byteLength !== n * STORED_FLOAT_SIZE[dstDtype]) {
    fail(kernel, `destination bytes for ${rows}×${cols} ${dstDtype}`, n * STORED_FLOAT_SIZE[dstDtype], dst.byteLength);
  }
  if (job.up.length !== rows * rank) fail(kernel, `up values for [${rows}, ${rank}]`, rows * rank, job.up.length);
  if (job.down.length !== rank * cols) {
    fail(kernel, `down values for [${rank}, ${cols}]`, rank * cols, job.down.length);
  }
  if (srcDtype !== dstDtype && src.buffer === dst.buffer) {
    const s0 = src.byteOffset;
    const s1 = s0 + src.byteLength;
    const d0 = dst.byteOffset;
    const d1 = d0 + dst.byteLength;
    if (s0 < d1 && d0 < s1) {
      fail(
        kernel,
        'buffers',
        `separate source and destination when converting ${srcDtype} → ${dstDtype}`,
        'overlapping views',
      );
    }
  }
}

export function jobFlops(job: UpdateJob): number {
  return 2 * job.rows * job.cols * job.rank;
}

export function disposedError(kernel: string): FuseError {
  return new FuseError('KERNEL_DISPOSED', `${kernel} kernel: update() called after dispose()`, { kernel });
}

export const now: () => number =
  typeof performance !== 'undefined' && typeof performance.now === 'function'
    ? () => performance.now() / 1000
    : () => Date.now() / 1000;

/** Run one job's computation and add its FLOPs, time and call to `stats` (every kernel reports the same way). */
export async function timed<T>(stats: KernelStats, job: UpdateJob, fn: () => T | Promise<T>): Promise<T> {
  const t0 = now();
  const res = await fn();
  stats.seconds += now() - t0;
  stats.flops += jobFlops(job);
  stats.calls++;
  return res;
}

/**
 * Calls run one at a time, in the order made, whatever becomes of the earlier ones: for kernels that own one shared
 * memory or one GPU context. `idle()` resolves once everything queued so far has settled.
 */
export function serialQueue(): { run<T>(fn: () => Promise<T>): Promise<T>; idle(): Promise<void> } {
  let busy: Promise<void> = Promise.resolve();
  return {
    run(fn) {
      const p = busy.then(fn);
      busy = p.then(
        () => undefined,
        () => undefined,
      );
      return p;
    },
    idle: () => busy,
  };
}
