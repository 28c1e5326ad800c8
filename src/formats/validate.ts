/**
 * The formats API at its boundary: what loadLora / inspectLora / saveLora accept, checked before any work, with
 * typed errors (ArgumentError for the wrong kind of value, OptionError for an unknown option value, LoraError
 * LORA_EMPTY for a LoRA that would write a file applying nothing).
 */
import type { ByteSink, ByteSource } from '../core/bytes.js';
import { ArgumentError, LoraError, OptionError } from '../core/errors.js';
import { allFinite } from '../core/finite.js';
import { describeValue } from '../lora/validate.js';
import type { Lora } from '../lora/types.js';

/** Output spellings saveLora writes. Names are matched without regard to case ('PEFT' is 'peft'). */
const WRITABLE_FORMATS = ['kohya', 'peft'] as const;
const KOHYA_PATHS = ['diffusers', 'sgm'] as const;
const DTYPES = ['F32', 'F16', 'BF16'] as const;

function isByteSource(x: unknown): x is ByteSource {
  const s = x as Partial<ByteSource> | null;
  return s !== null && typeof s === 'object' && typeof s.read === 'function' && typeof s.byteLength === 'number';
}

function isByteSink(x: unknown): x is ByteSink {
  const s = x as Partial<ByteSink> | null;
  return (
    s !== null &&
    typeof s === 'object' &&
    typeof s.write === 'function' &&
    typeof s.commit === 'function' &&
    typeof s.abort === 'function'
  );
}

/** loadLora / inspectLora input: a non-empty path string or a ByteSource. */
export function assertLoraInput(input: unknown, op: string): asserts input is string | ByteSource {
  if (typeof input === 'string' && input !== '') return;
  if (isByteSource(input)) return;
  throw new ArgumentError(
    'ARG_INVALID',
    `${op}: expected a file path (non-empty string) or a ByteSource (such as blobSource(file) or bufferSource(bytes)), found ${describeValue(input)}`,
    { found: describeValue(input) },
  );
}

function pick<T extends string>(option: string, raw: unknown, allowed: readonly T[], op: string): T {
  const hit = typeof raw === 'string' ? allowed.find((a) => a.toLowerCase() === raw.trim().toLowerCase()) : undefined;
  if (hit) return hit;
  const hint =
    option === 'format' && typeof raw === 'string' && raw.trim().toLowerCase() === 'diffusers'
      ? " (diffusers ≥ 0.22 writes the PEFT spelling: use 'peft')"
      : '';
  throw new OptionError(
    'OPTION_INVALID',
    `${op}: option '${option}' must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, found ${describeValue(raw)}${hint}`,
    { option, expected: allowed, found: describeValue(raw) },
  );
}

/** Encode options once checked (the shape of encode.ts's EncodeOptions). */
export interface CheckedEncodeOptions {
  readonly format: (typeof WRITABLE_FORMATS)[number];
  readonly kohyaPaths?: (typeof KOHYA_PATHS)[number];
  readonly dtype?: (typeof DTYPES)[number];
  readonly metadata?: Readonly<Record<string, string>>;
}

/** Check saveLora / encodeLora options; returns them with names normalised ('PEFT' → 'peft', 'f16' → 'F16'). */
export function checkEncodeOptions(options: unknown, op: string): CheckedEncodeOptions {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ArgumentError(
      'ARG_MISSING',
      `${op}: options with the output format are required, e.g. { format: 'kohya' } or { format: 'peft' }; found ${describeValue(options)}`,
      { found: describeValue(options) },
    );
  }
  const o = options as Record<string, unknown>;
  const format = pick('format', o.format, WRITABLE_FORMATS, op);
  // kohyaPaths is checked whatever the format and used by kohya only (the other spellings have one UNet naming).
  const kohyaPaths = o.kohyaPaths === undefined ? undefined : pick('kohyaPaths', o.kohyaPaths, KOHYA_PATHS, op);
  const dtype = o.dtype === undefined ? undefined : pick('dtype', o.dtype, DTYPES, op);
  const metadata = o.metadata;
  if (
    metadata !== undefined &&
    (metadata === null ||
      typeof metadata !== 'object' ||
      Object.values(metadata as object).some((v) => typeof v !== 'string'))
  ) {
    throw new ArgumentError(
      'ARG_INVALID',
      `${op}: metadata must be an object of strings, found ${describeValue(metadata)}`,
      {
        option: 'metadata',
      },
    );
  }
  return {
    ...(o as object),
    format,
    ...(kohyaPaths ? { kohyaPaths } : {}),
    ...(dtype ? { dtype } : {}),
  } as CheckedEncodeOptions;
}

/** saveLora target: a non-empty path string or a ByteSink. */
export function assertSaveTarget(target: unknown, op: string): asserts target is string | ByteSink {
  if ((typeof target === 'string' && target !== '') || isByteSink(target)) return;
  throw new ArgumentError(
    'ARG_INVALID',
    `${op}: expected an output path (non-empty string) or a ByteSink, found ${describeValue(target)}`,
    { found: describeValue(target) },
  );
}

/** Does a module change its weight at all (non-zero scale, some non-zero value in both factors)? */
export function applies(m: {
  up: { data: ArrayLike<number> };
  down: { data: ArrayLike<number> };
  alpha: number;
}): boolean {
  if (m.alpha === 0) return false;
  const nonZero = (a: ArrayLike<number>): boolean => {
    for (let i = 0; i < a.length; i++) if (a[i] !== 0) return true;
    return false;
  };
  return nonZero(m.up.data) && nonZero(m.down.data);
}

/**
 * A LoRA about to be written must be a LoRA, have modules, change something, and hold only finite factors:
 * otherwise the file would apply nothing or spread NaN (LORA_EMPTY, LORA_DTYPE_OVERFLOW). `stored` is given when
 * the factor values live in a FactorStore (the LoRA's modules hold shapes only): its owner counted the modules that
 * change something, and the encoder checks every value for finiteness as it writes.
 */
export function assertWritableLora(lora: Lora, op: string, stored?: { readonly active: number }): void {
  const norms = lora.norms?.size ?? 0;
  if (lora.modules.size === 0 && norms === 0) {
    throw new LoraError(
      'LORA_EMPTY',
      `${op}: the LoRA has no modules, so the file would change nothing (every weight 0, or every module dropped); nothing was written`,
      { count: 0 },
    );
  }
  let active = stored?.active ?? 0;
  for (const [path, m] of stored ? [] : lora.modules) {
    if ((m as { kind?: string }).kind !== undefined && (m as { kind?: string }).kind !== 'lowRank') {
      active++; // other term kinds are checked by their encoders
      continue;
    }
    if (!allFinite(m.up.data) || !allFinite(m.down.data)) {
      throw new LoraError(
        'LORA_DTYPE_OVERFLOW',
        `${op}: module '${path}' holds non-finite factor values (a weight times the factors overflowed f32, or NaN/Inf came in); nothing was written`,
        { key: path, dtype: 'F32' },
      );
    }
    if (active === 0 && applies(m)) active++;
  }
  if (active === 0 && norms === 0) {
    throw new LoraError(
      'LORA_EMPTY',
      `${op}: all ${lora.modules.size} module(s) of the LoRA are zero (zero factors or alpha 0), so the file would change nothing; nothing was written`,
      { count: lora.modules.size },
    );
  }
}
