/**
 * The value scan of `lora-mix inspect`: NaN and ±Inf counted per tensor. LoRA files are always scanned (they are
 * small, and merge/convert/fuse refuse non-finite factors and alphas); other files only with --values.
 */
import { isFloatDType } from '../../core/dtype.js';
import { countNonFinite, describeNonFinite } from '../../core/finite.js';
import type { SafetensorsFile } from '../../safetensors/index.js';

export interface NonFiniteTensor {
  readonly name: string;
  readonly nan: number;
  readonly inf: number;
}

export interface ValueScan {
  /** Float tensors whose values were read. */
  readonly scanned: number;
  /** Tensors holding NaN or ±Inf, in file order. */
  readonly nonFinite: readonly NonFiniteTensor[];
}

/** Read every float tensor once (one at a time) and count its non-finite values. */
export async function scanValues(file: SafetensorsFile): Promise<ValueScan> {
  const nonFinite: NonFiniteTensor[] = [];
  let scanned = 0;
  for (const t of file.tensors) {
    if (!isFloatDType(t.dtype) || t.numel === 0) continue;
    const c = countNonFinite(await file.readF32(t.name));
    scanned++;
    if (c.nan + c.inf > 0) nonFinite.push({ name: t.name, nan: c.nan, inf: c.inf });
  }
  return { scanned, nonFinite };
}

/** Text lines for the scan (printed with the kind report). */
export function formatValueScan(scan: ValueScan | undefined): string {
  if (!scan) return 'values:      not read (pass --values to count NaN/Inf in every tensor)';
  if (scan.nonFinite.length === 0) return `values:      all finite (${scan.scanned} float tensor(s) read)`;
  return [
    `values:      ${scan.nonFinite.length} of ${scan.scanned} float tensor(s) hold NaN or Inf — merge, convert and fuse refuse this file (FORMAT_NONFINITE):`,
    ...scan.nonFinite.slice(0, 20).map((t) => `  ${t.name}: ${describeNonFinite(t)}`),
    ...(scan.nonFinite.length > 20 ? [`  … (+${scan.nonFinite.length - 20} more)`] : []),
  ].join('\n');
}
