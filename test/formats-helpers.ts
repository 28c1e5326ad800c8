/** Shared helpers for the formats tests: in-memory safetensors files and fixture paths. */
import { fileURLToPath } from 'node:url';
import ndarray from 'ndarray';
import { bufferSource } from '../src/core/memory.js';
import { parseSafetensors, serializeSafetensors, type SafetensorsFile } from '../src/safetensors/index.js';
import type { F32Array, Lora } from '../src/lora/types.js';
import { decodeLora, type DecodeOptions, type LoadedLora } from '../src/formats/index.js';
import type { DType } from '../src/core/tensor.js';
import { requirePlain } from '../src/lora/terms/index.js';

export const FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url));
export const fixture = (rel: string): string => FIXTURES + rel;

export interface RawTensor {
  name: string;
  shape: number[];
  /** Values (F32); default: a deterministic ramp. */
  values?: ArrayLike<number>;
  dtype?: DType;
}

function ramp(n: number, salt: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (((i * 7 + salt * 13) % 17) - 8) / 256;
  return a;
}

/** Serialize F32 tensors (values default to a ramp) into safetensors bytes. */
export function makeFile(tensors: readonly RawTensor[], metadata?: Record<string, string>): Uint8Array {
  return serializeSafetensors(
    tensors.map((t, i) => {
      const n = t.shape.reduce((a, b) => a * b, 1);
      const v = t.values ? Float32Array.from(t.values) : ramp(n, i);
      return { name: t.name, dtype: t.dtype ?? 'F32', shape: t.shape, data: new Uint8Array(v.buffer) };
    }),
    metadata ? { metadata } : {},
  );
}

export async function open(bytes: Uint8Array, name = 'test.safetensors'): Promise<SafetensorsFile> {
  return parseSafetensors(bufferSource(bytes, name));
}

/** A decoded file known to be a plain LoRA. */
export type PlainLoadedLora = Omit<LoadedLora, 'modules'> & Lora;

export async function decodeBytes(
  bytes: Uint8Array,
  options: DecodeOptions = {},
  name = 'test.safetensors',
): Promise<Omit<LoadedLora, 'modules'> & Lora> {
  return requirePlain(await decodeLora(await open(bytes, name), options));
}

/** The exception thrown by an async function (fails the test if none). */
export async function caught(
  f: () => Promise<unknown>,
): Promise<Error & { code?: string; details?: Record<string, unknown> }> {
  try {
    await f();
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error('expected an error, got none');
}

/** Dense delta (alpha/r)·up@down of a module as a flat Float64Array, [out, in·kh·kw]. */
export function delta(m: { down: F32Array; up: F32Array; alpha: number }): Float64Array {
  const r = m.down.shape[0]!;
  const n = m.down.shape.slice(1).reduce((a, b) => a * b, 1);
  const out = m.up.shape[0]!;
  const d = m.down.data;
  const u = m.up.data;
  const s = m.alpha / r;
  const res = new Float64Array(out * n);
  for (let o = 0; o < out; o++) {
    for (let k = 0; k < r; k++) {
      const uk = u[o * r + k]! * s;
      for (let j = 0; j < n; j++) res[o * n + j] = res[o * n + j]! + uk * d[k * n + j]!;
    }
  }
  return res;
}

export function nd(values: ArrayLike<number>, shape: number[]): F32Array {
  return ndarray(Float32Array.from(values), shape);
}

/** The bytes of an encoded LoRA (lazy tensor data materialised). */
export function encodedBytes(enc: {
  tensors: readonly import('../src/safetensors/index.js').TensorToWrite[];
  metadata: Record<string, string>;
}): Uint8Array {
  return serializeSafetensors(
    enc.tensors.map((t) => ({
      ...t,
      data:
        typeof t.data === 'function' ? (t.data as () => import('../src/safetensors/index.js').TensorData)() : t.data,
    })),
    { metadata: enc.metadata },
  );
}
