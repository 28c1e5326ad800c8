/**
 * A term as plain data a worker thread (or Web Worker) can receive: every ndarray inside it becomes
 * { nd: values, shape } with contiguous values in a buffer of their own (posting a view would copy its whole
 * buffer), and back; a plain Float32Array field stays one (in a buffer of its own). Works for every kind, nested ones (DoRA's inner term) included, without naming them.
 */
import ndarray from 'ndarray';
import { contiguousValues } from '../delta.js';
import type { F32Array, Term } from '../types.js';

/** The packed form: the term's fields with ndarrays replaced by { nd, shape }. */
export type PackedTerm = { readonly packed: unknown };

interface PackedArray {
  readonly nd: Float32Array;
  readonly shape: readonly number[];
}

function isNdarray(x: object): x is F32Array {
  const a = x as Partial<F32Array>;
  return a.data instanceof Float32Array && Array.isArray(a.shape) && Array.isArray(a.stride);
}

function isPackedArray(x: object): x is PackedArray {
  const a = x as Partial<PackedArray>;
  return a.nd instanceof Float32Array && Array.isArray(a.shape);
}

function pack(x: unknown): unknown {
  if (x === null || typeof x !== 'object') return x;
  // A plain typed array (OFT / BOFT `rescale`): its values in a buffer of their own.
  if (x instanceof Float32Array) return x.byteOffset === 0 && x.byteLength === x.buffer.byteLength ? x : x.slice();
  if (isNdarray(x)) {
    const v = contiguousValues(x);
    return { nd: v.byteOffset === 0 && v.byteLength === v.buffer.byteLength ? v : v.slice(), shape: [...x.shape] };
  }
  if (Array.isArray(x)) return x.map(pack);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(x)) out[k] = pack(v);
  return out;
}

function unpack(x: unknown): unknown {
  if (x === null || typeof x !== 'object' || x instanceof Float32Array) return x;
  if (isPackedArray(x)) return ndarray(x.nd, [...x.shape]);
  if (Array.isArray(x)) return x.map(unpack);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(x)) out[k] = unpack(v);
  return out;
}

/** The term as plain, structured-clone-friendly data. */
export function packTerm(t: Term): PackedTerm {
  return { packed: pack(t) };
}

/** The term a packTerm result describes. */
export function unpackTerm(p: PackedTerm): Term {
  return unpack(p.packed) as Term;
}
