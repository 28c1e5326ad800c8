/**
 * Argument checks at the API boundary: a function of the library called with the wrong kind of value throws
 * ArgumentError (ARG_INVALID / ARG_MISSING) naming the argument and what it found, never a raw TypeError from
 * deep inside.
 */
import { ArgumentError } from '../core/errors.js';
import type { Lora } from './types.js';

/** A short description of a value for error messages: "a string ('x.safetensors')", "null", "a number (42)". */
export function describeValue(x: unknown): string {
  if (x === null) return 'null';
  if (x === undefined) return 'undefined';
  if (typeof x === 'string') return `a string ('${x.length > 60 ? `${x.slice(0, 57)}…` : x}')`;
  if (typeof x === 'number' || typeof x === 'boolean' || typeof x === 'bigint') return `a ${typeof x} (${String(x)})`;
  if (Array.isArray(x)) return `an array of ${x.length}`;
  if (typeof x === 'function') return 'a function';
  const name = (x as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === 'string' && name !== 'Object' ? `a ${name}` : 'an object';
}

/** Does `x` look like a canonical Lora (arch, size, a Map of modules, metadata)? */
export function isLora(x: unknown): x is Lora {
  if (x === null || typeof x !== 'object') return false;
  const l = x as Partial<Lora>;
  return (
    typeof l.arch === 'string' &&
    typeof l.size === 'string' &&
    l.modules instanceof Map &&
    l.metadata !== null &&
    typeof l.metadata === 'object'
  );
}

/** Throw ARG_INVALID unless `x` is a Lora; `what` names the argument ('merge: input 2'). */
export function assertLora(x: unknown, what: string): asserts x is Lora {
  if (isLora(x)) return;
  const hint =
    typeof x === 'string'
      ? '; a path must be loaded first: loadLora(path)'
      : x instanceof Uint8Array || x instanceof ArrayBuffer
        ? '; bytes must be decoded first: loadLora(bufferSource(bytes))'
        : '';
  throw new ArgumentError(
    'ARG_INVALID',
    `${what}: expected a LoRA (an object with arch, size, a Map of modules and metadata, as loadLora returns), found ${describeValue(x)}${hint}`,
    { found: describeValue(x) },
  );
}

/** Throw unless `loras` is a non-empty array of Lora objects. `op` names the operation ('merge'). */
export function assertLoraList(loras: unknown, op: string): asserts loras is readonly Lora[] {
  if (!Array.isArray(loras)) {
    throw new ArgumentError(
      'ARG_INVALID',
      `${op}: expected an array of LoRAs, found ${describeValue(loras)}${isLora(loras) ? ' (wrap a single LoRA in an array: [lora])' : ''}`,
      { found: describeValue(loras) },
    );
  }
  if (loras.length === 0) {
    throw new ArgumentError('ARG_MISSING', `${op}: no input LoRA given; pass an array of at least one LoRA`, {});
  }
  loras.forEach((l, i) => {
    assertLora(l, `${op}: input ${i + 1}`);
  });
}
