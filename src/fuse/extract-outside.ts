/**
 * What differs between base and tuned outside the modules extract turns into a LoRA: biases, norms, embeddings,
 * conv_in / conv_out, time embeddings, the text encoders (without --text-encoders), the VAE. A LoRA cannot carry
 * them, so extract compares them tensor by tensor (same name in both checkpoints; byte for byte, or value for
 * value when the two store different float dtypes, e.g. an F32 tuned file of an F16 base) and reports
 * which differ: a tuned checkpoint whose change lives there is not fully reproduced by the extracted LoRA.
 */
import { decodeToF32, isFloatDType } from '../core/dtype.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import type { OpenedBase } from './base.js';

/** Tensors outside the extracted modules: how many were compared, which differ, which the tuned file lacks. */
export interface OutsideReport {
  readonly compared: number;
  /** Names (as stored in the base) of the tensors whose bytes differ. */
  readonly differing: readonly string[];
  /** Base tensors with no tensor of the same name in the tuned checkpoint (other naming, or absent). */
  readonly notCompared: number;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Whether a tensor holds the same values in both files. */
async function sameTensor(a: SafetensorsFile, b: SafetensorsFile, key: string): Promise<boolean> {
  const ia = a.get(key);
  const ib = b.get(key);
  if (!ia || !ib || ia.numel !== ib.numel || !ia.shape.every((d, i) => d === ib.shape[i])) return false;
  if (ia.dtype === ib.dtype) return bytesEqual(await a.read(key), await b.read(key));
  if (!isFloatDType(ia.dtype) || !isFloatDType(ib.dtype)) return false;
  const x = decodeToF32(ia.dtype, await a.read(key), key);
  const y = decodeToF32(ib.dtype, await b.read(key), key);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Compare every base tensor not in `used` (`rel\0key`) with the tuned tensor of the same file path and name. */
export async function compareOutside(
  base: OpenedBase,
  tuned: OpenedBase,
  used: ReadonlySet<string>,
): Promise<OutsideReport> {
  const byName = new Map<string, (typeof tuned.files)[number]>();
  for (const f of tuned.files) for (const key of f.file.names) byName.set(`${f.rel}\0${key}`, f);
  const differing: string[] = [];
  let compared = 0;
  let notCompared = 0;
  for (const f of base.files) {
    for (const key of f.file.names) {
      if (used.has(`${f.rel}\0${key}`)) continue;
      const t = byName.get(`${f.rel}\0${key}`);
      if (!t) {
        notCompared++;
        continue;
      }
      compared++;
      if (!(await sameTensor(f.file, t.file, key))) differing.push(f.rel ? `${f.rel}: ${key}` : key);
    }
  }
  return { compared, differing, notCompared };
}
