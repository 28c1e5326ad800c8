/**
 * Encoding the canonical LoRA into a file spelling: the tensor list (names, dtypes, shapes and lazily converted
 * bytes) plus the metadata, ready for the safetensors writer. Key order is the layout's module order, so the same
 * LoRA always gives the same bytes.
 *
 * - kohya: `<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha` per module (UNet names in diffusers
 *   paths by default — what the LCM-LoRA files use — or SGM paths). The alpha is a 0-d tensor in the factors' dtype
 *   when that dtype holds the value exactly (every integer alpha up to 2048 in F16), otherwise F32, so no alpha is
 *   ever rounded.
 * - peft: `unet.<path>.lora_A.weight` / `.lora_B.weight`; alphas go into the `lora_adapter_metadata` JSON
 *   (per component r, lora_alpha, rank_pattern, alpha_pattern, target_modules), the way diffusers saves them.
 *
 * Factor bytes are produced when the writer asks for them (one tensor at a time); values that would overflow the
 * target dtype raise LoraError LORA_DTYPE_OVERFLOW instead of becoming Inf.
 */
import { ArgumentError, FormatError, LoraError, OptionError } from '../core/errors.js';
import { getLayout, moduleAliases } from '../layout/index.js';
import type { ModuleEntry, NormEntry } from '../layout/types.js';
import type { F32Array, Lora, StoredTensor, Term } from '../lora/types.js';
import { lowRankLora } from '../lora/terms/index.js';
import { contiguousValues } from '../lora/delta.js';
import {
  countOverflow,
  encodeFromF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  bf16BitsToF32,
} from '../core/dtype.js';
import { DTYPE_SIZE } from '../core/tensor.js';
import type { TensorToWrite } from '../safetensors/write.js';
import { oldDiffusersKeys } from './diffusers-old.js';
import { kohyaKeys, kohyaName, type KohyaPaths } from './kohya.js';
import { normStem } from './norms.js';
import { PEFT_METADATA_KEY, peftMetadataJson, peftStem } from './peft.js';
import { checkFactorShapes } from './resolve.js';
import { assertWritableLora, checkEncodeOptions } from './validate.js';
import { assertLora } from '../lora/validate.js';
import { allFinite, countNonFinite, describeNonFinite } from '../core/finite.js';

export type OutputDType = 'F32' | 'F16' | 'BF16';

export interface EncodeOptions {
  readonly format: 'kohya' | 'peft';
  /** kohya only: UNet names in diffusers paths (default) or SGM/LDM paths. */
  readonly kohyaPaths?: KohyaPaths;
  /** Storage dtype of the factors. Default: the LoRA's own `dtype` when it has one of these, else F32. */
  readonly dtype?: OutputDType;
  /** Extra metadata, merged over the LoRA's own. */
  readonly metadata?: Readonly<Record<string, string>>;
}

/** Spellings the encoder can write; 'diffusers-old' and the raw PEFT prefix exist for the fixture generator. */
export interface InternalEncodeOptions {
  /** 'comfyui' (ComfyUI's LoRA saver: its own module names, no alpha) and 'lycoris' are written for fixtures only. */
  readonly format: 'kohya' | 'peft' | 'diffusers-old' | 'comfyui' | 'lycoris';
  readonly kohyaPaths?: KohyaPaths;
  readonly dtype: OutputDType;
  readonly metadata?: Readonly<Record<string, string>>;
  /** peft only: 'component' ('unet.…', default) or 'base_model' ('base_model.model.…', UNet only). */
  readonly peftPrefix?: 'component' | 'base_model';
  /**
   * kohya only: write a module's bias delta as ComfyUI's `<name>.diff_b` beside its factors (ComfyUI's LoraSave
   * with bias_diff; ComfyUI's loader and lora-mix read it) instead of refusing it. The stored values are the bias
   * delta itself (the module's bias times alpha / rank): a diff_b is not scaled by alpha.
   */
  readonly moduleBiasAsDiff?: boolean;
}

/**
 * A factor already in the output dtype, encoded where it was formed (a FactorStore's readEncoded): the same bytes
 * encodeFromF32 gives for its f32 values, which were all finite and within the dtype, and the writer's flush count.
 */
export interface EncodedFactor {
  readonly dtype: OutputDType;
  /** Little-endian stored bytes. */
  readonly bytes: Uint8Array;
  /** Values (bytes / the dtype's size). */
  readonly values: number;
  /** Non-zero values that became ±0. */
  readonly flushedToZero: number;
}

/** Values on demand, from memory or (a FactorStore) read back from elsewhere, possibly already encoded. */
type Values = () => Float32Array | Promise<Float32Array | EncodedFactor>;

/** One module to encode: its layout entry, rank, alpha, factor shapes and factor values on demand. */
export interface ModuleSource {
  readonly entry: ModuleEntry;
  readonly alpha: number;
  readonly downShape: readonly number[];
  readonly upShape: readonly number[];
  down(): Float32Array;
  up(): Float32Array;
  /** The bias delta [out] (scaled like up), for modules that have one. */
  bias?(): Float32Array;
}

/** What the encoder takes: a ModuleSource, or one whose factor values are read back asynchronously (a FactorStore). */
export type EncodableModule = Omit<ModuleSource, 'down' | 'up'> & { readonly down: Values; readonly up: Values };

/**
 * Factor values kept outside the LoRA being written (the streaming merge keeps its result in a spill file until the
 * output is written): the LoRA's modules then hold the factors' shapes only, and the writer reads each factor from
 * the store when it writes it.
 */
export interface FactorStore {
  read(path: string, factor: 'up' | 'down'): Promise<Float32Array>;
  /**
   * The factor in the output dtype when the store encodes it itself (an EncodedFactor of that dtype), else its f32
   * values as `read` gives them (the writer encodes and checks those). Optional: stores without it are read.
   */
  readEncoded?(path: string, factor: 'up' | 'down', dtype: OutputDType): Promise<Float32Array | EncodedFactor>;
  /** How many stored modules change their weight (alpha ≠ 0, non-zero up and down): 0 means nothing to write. */
  readonly active: number;
}

export interface EncodeStats {
  /** Factor values written so far. */
  values: number;
  /** Non-zero f32 values that became ±0 in the output dtype (fp16 underflow), counted while writing. */
  flushedToZero: number;
}

export interface EncodedLora {
  readonly tensors: TensorToWrite[];
  readonly metadata: Record<string, string>;
  /** Filled in as the tensors' data functions run (i.e. while the file is written). */
  readonly stats: EncodeStats;
}

/** Metadata keys that describe a specific file's bytes or config and are stale in any re-encoding. */
const STALE_METADATA = ['sshs_model_hash', 'sshs_legacy_hash', PEFT_METADATA_KEY];

/** The LoRA's storage dtype if it carries one we can write (LoadedLora.dtype), else F32. */
export function defaultOutputDType(lora: Lora): OutputDType {
  const d = (lora as { dtype?: unknown }).dtype;
  return d === 'F16' || d === 'BF16' || d === 'F32' ? d : 'F32';
}

/** A contiguous row-major Float32Array of an ndarray's values (the array itself when it already is one). */
export const contiguousF32: (a: F32Array) => Float32Array = contiguousValues;

function sortedRecord(r: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(
    Object.keys(r)
      .sort()
      .map((k) => [k, r[k]!]),
  );
}

/** Does `value` survive a round trip through `dtype`? */
function exactIn(value: number, dtype: OutputDType): boolean {
  if (dtype === 'F32') return Math.fround(value) === value;
  if (dtype === 'F16') return f16BitsToF32(f32ToF16Bits(value)) === value;
  return bf16BitsToF32(f32ToBf16Bits(value)) === value;
}

function factorTensor(
  name: string,
  shape: readonly number[],
  dtype: OutputDType,
  values: Values,
  stats: EncodeStats,
  what: string,
): TensorToWrite {
  const encode = (src: Float32Array): Uint8Array => {
    if (!allFinite(src)) {
      const c = countNonFinite(src);
      throw new LoraError(
        'LORA_DTYPE_OVERFLOW',
        `${what}: ${c.nan + c.inf} value(s) of '${name}' are not finite in f32 (${describeNonFinite(c)}): a weight times the factors overflowed; nothing was written`,
        { key: name, dtype: 'F32', count: c.nan + c.inf },
      );
    }
    const overflow = countOverflow(src, dtype);
    if (overflow > 0) {
      let max = 0;
      for (let i = 0; i < src.length; i++) if (Number.isFinite(src[i]!)) max = Math.max(max, Math.abs(src[i]!));
      throw new LoraError(
        'LORA_DTYPE_OVERFLOW',
        `${what}: ${overflow} value(s) of '${name}' (largest magnitude ${max}) do not fit ${dtype} and would become infinite; write F32 or BF16 instead`,
        { key: name, dtype, count: overflow, found: max },
      );
    }
    const bytes = encodeFromF32(dtype, src);
    stats.values += src.length;
    if (dtype !== 'F32') {
      const bits = new Uint16Array(bytes.buffer, bytes.byteOffset, src.length);
      let flushed = 0;
      for (let i = 0; i < src.length; i++) if ((bits[i]! & 0x7fff) === 0 && src[i] !== 0) flushed++;
      stats.flushedToZero += flushed;
    }
    return bytes;
  };
  const take = (src: Float32Array | EncodedFactor): Uint8Array => {
    if (src instanceof Float32Array) return encode(src);
    if (src.dtype !== dtype || src.bytes.byteLength !== src.values * DTYPE_SIZE[dtype]) {
      throw new ArgumentError(
        'ARG_INVALID',
        `${what}: '${name}' was given as ${src.values} ${src.dtype} values in ${src.bytes.byteLength} bytes; expected ${dtype}`,
        { key: name, expected: dtype, found: src.dtype },
      );
    }
    stats.values += src.values;
    stats.flushedToZero += src.flushedToZero;
    return src.bytes;
  };
  return {
    name,
    dtype,
    shape: [...shape],
    data: () => {
      const src = values();
      return src instanceof Promise ? src.then(take) : take(src);
    },
  };
}

function alphaTensor(name: string, alpha: number, dtype: OutputDType): TensorToWrite {
  const d: OutputDType = exactIn(alpha, dtype) ? dtype : 'F32';
  return { name, dtype: d, shape: [], data: () => encodeFromF32(d, Float32Array.of(alpha)) };
}

/**
 * Encode modules in the given order. Low level: callers pass modules already validated and in layout order
 * (encodeLora does both; the fixture generator builds them from the layout).
 */
export function encodeModules(
  modules: readonly EncodableModule[],
  options: InternalEncodeOptions,
  baseMetadata: Readonly<Record<string, string>> = {},
  embeddings: ReadonlyMap<string, StoredTensor> = new Map(),
  norms: readonly NormSource[] = [],
): EncodedLora {
  const stats: EncodeStats = { values: 0, flushedToZero: 0 };
  const tensors: TensorToWrite[] = [];
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(baseMetadata)) if (!STALE_METADATA.includes(k)) metadata[k] = v;
  Object.assign(metadata, options.metadata ?? {});
  metadata.format = 'pt';
  const what = `${options.format} encoding`;
  const dtype = options.dtype;
  const rankOf = (m: EncodableModule): number => m.downShape[0]!;
  if (!(options.format === 'kohya' && options.moduleBiasAsDiff)) refuseBiasWithout(options.format, modules);

  switch (options.format) {
    case 'kohya': {
      const paths = options.kohyaPaths ?? 'diffusers';
      for (const m of modules) {
        const k = kohyaKeys(kohyaStem(m.entry, paths));
        // kohya reads a stored alpha of 0 as alpha = rank; a zero-scale module is written as a zero up factor.
        const zero = m.alpha === 0;
        const up = zero ? () => new Float32Array(m.upShape.reduce((a, b) => a * b, 1)) : m.up;
        tensors.push(factorTensor(k.down, m.downShape, dtype, m.down, stats, what));
        tensors.push(factorTensor(k.up, m.upShape, dtype, up, stats, what));
        tensors.push(alphaTensor(k.alpha, zero ? rankOf(m) : m.alpha, dtype));
        const bias = m.bias;
        if (bias) {
          const s = m.alpha / rankOf(m);
          const values = (): Float32Array => (s === 1 ? bias() : bias().map((x) => x * s));
          tensors.push(
            factorTensor(`${kohyaName(m.entry, paths)}.diff_b`, [m.upShape[0] ?? 0], dtype, values, stats, what),
          );
        }
      }
      delete metadata[PEFT_METADATA_KEY];
      break;
    }
    case 'peft': {
      const prefix = options.peftPrefix ?? 'component';
      if (prefix === 'base_model') {
        const other = modules.find((m) => m.entry.component !== 'unet');
        if (other) {
          throw new LoraError(
            'LORA_UNMATCHED_MODULES',
            `${what}: the raw 'base_model.model.' spelling names UNet modules only; '${other.entry.path}' is a text-encoder module`,
            { key: other.entry.path },
          );
        }
      }
      for (const m of modules) {
        refusePeftEmbedding(m.entry, what);
        const stem = peftStem(m.entry, prefix);
        tensors.push(factorTensor(`${stem}.lora_A.weight`, m.downShape, dtype, m.down, stats, what));
        tensors.push(factorTensor(`${stem}.lora_B.weight`, m.upShape, dtype, m.up, stats, what));
        if (m.bias) tensors.push(factorTensor(`${stem}.lora_B.bias`, [m.upShape[0]!], dtype, m.bias, stats, what));
      }
      metadata[PEFT_METADATA_KEY] = peftMetadataJson(
        modules.map((m) => ({ entry: m.entry, rank: rankOf(m), alpha: m.alpha })),
        prefix === 'component',
      );
      break;
    }
    case 'comfyui':
    case 'lycoris': {
      for (const m of modules) {
        const name = toolName(m.entry, options.format, what);
        tensors.push(factorTensor(`${name}.lora_down.weight`, m.downShape, dtype, m.down, stats, what));
        tensors.push(factorTensor(`${name}.lora_up.weight`, m.upShape, dtype, m.up, stats, what));
        // ComfyUI's saver writes no alpha (alpha = rank); LyCORIS always does.
        if (options.format === 'lycoris' || m.alpha !== rankOf(m)) {
          tensors.push(alphaTensor(`${name}.alpha`, m.alpha, dtype));
        }
      }
      delete metadata[PEFT_METADATA_KEY];
      break;
    }
    case 'diffusers-old': {
      for (const m of modules) {
        const k = oldDiffusersKeys(m.entry);
        if (!k) {
          throw new LoraError(
            'LORA_UNMATCHED_MODULES',
            `${what}: module '${m.entry.path}' cannot be written in the old attention-processor format (attention projections and CLIP MLPs only)`,
            { key: m.entry.path },
          );
        }
        if (m.alpha !== rankOf(m)) {
          throw new OptionError(
            'OPTION_CONFLICT',
            `${what}: module '${m.entry.path}' has alpha ${m.alpha} ≠ rank ${rankOf(m)}; the old attention-processor format stores no alpha`,
            { key: m.entry.path, expected: rankOf(m), found: m.alpha },
          );
        }
        tensors.push(factorTensor(k.down, m.downShape, dtype, m.down, stats, what));
        tensors.push(factorTensor(k.up, m.upShape, dtype, m.up, stats, what));
      }
      delete metadata[PEFT_METADATA_KEY];
      break;
    }
    default:
      throw new OptionError('OPTION_INVALID', `encoding: unknown output format '${String(options.format)}'`, {
        option: 'format',
        found: options.format,
      });
  }
  // Norm-layer differences, after the modules, in layout order: `.diff` (weight) and `.diff_b` (bias).
  for (const n of norms) {
    const stem = normStem(n.entry, options.format, options.kohyaPaths);
    const shape = [n.entry.channels];
    if (n.weight) tensors.push(factorTensor(`${stem}.diff`, shape, dtype, n.weight, stats, what));
    if (n.bias) tensors.push(factorTensor(`${stem}.diff_b`, shape, dtype, n.bias, stats, what));
  }
  // Pivotal-tuning embeddings travel verbatim, after the modules, in key order.
  for (const key of [...embeddings.keys()].sort()) {
    const e = embeddings.get(key)!;
    tensors.push({ name: key, dtype: e.dtype, shape: [...e.shape], data: e.data });
  }
  return { tensors, metadata: sortedRecord(metadata), stats };
}

/**
 * A module's name in ComfyUI's or the LyCORIS wrapper's spelling (Layout.byAlias): ComfyUI's own key, or
 * 'lycoris_' + the diffusers UNet path — the one LyCORIS spelling ComfyUI reads, so text-encoder modules (which
 * ComfyUI knows by no 'lycoris_' name) are refused rather than written where no loader finds them.
 */
/**
 * The stem of a module in kohya output. A text encoder's embedding table has no kohya name any loader reads
 * (ComfyUI's kohya map covers the layers' Linears and text_projection), so it is written under ComfyUI's own name —
 * as text-encoder norms are (normStem); ComfyUI reads each key by itself and lora-mix reads such a file back.
 */
function kohyaStem(entry: ModuleEntry, paths: KohyaPaths): string {
  if (entry.extra === 'embedding') return moduleAliases(entry)[0] ?? entry.path;
  return kohyaName(entry, paths);
}

/**
 * PEFT trains an embedding table with its own tensors (lora_embedding_A / lora_embedding_B, transposed relative to
 * a Linear's lora_A / lora_B); lora-mix does not write those: FORMAT_CANNOT_ENCODE naming the module, never a file
 * diffusers would misread.
 */
function refusePeftEmbedding(entry: ModuleEntry, what: string): void {
  if (entry.extra !== 'embedding') return;
  throw new FormatError(
    'FORMAT_CANNOT_ENCODE',
    `${what}: the LoRA changes the embedding table '${entry.path}', which the PEFT spelling does not hold as lora_A / lora_B; write kohya to keep it (under ComfyUI's name), or leave that module out`,
    { key: entry.path, format: 'peft' },
  );
}

function toolName(entry: ModuleEntry, tool: 'comfyui' | 'lycoris', what: string): string {
  const aliases = moduleAliases(entry);
  const name = tool === 'comfyui' ? aliases[0] : entry.component === 'unet' ? aliases[1] : undefined;
  if (name === undefined) {
    throw new FormatError(
      'FORMAT_CANNOT_ENCODE',
      `${what}: module '${entry.path}' has no ${tool} name ComfyUI reads (the LyCORIS wrapper's names cover the UNet only); write kohya or comfyui for text-encoder modules`,
      { key: entry.path, format: tool },
    );
  }
  return name;
}

/** Only PEFT has a place for a bias delta (`lora_B.bias`): other spellings refuse rather than drop it. */
function refuseBiasWithout(format: InternalEncodeOptions['format'], modules: readonly EncodableModule[]): void {
  if (format === 'peft') return;
  const biased = modules.filter((m) => m.bias !== undefined).map((m) => m.entry.path);
  if (biased.length === 0) return;
  throw new FormatError(
    'FORMAT_CANNOT_ENCODE',
    `${format} encoding: ${biased.length} module(s) carry a bias delta (PEFT lora_B.bias), e.g. '${biased[0]}', which the ${format} spelling cannot store; write PEFT instead (format 'peft' / --format peft)`,
    { format, modules: biased.slice(0, 100), count: biased.length },
  );
}

/** Check a canonical LoRA against its layout and list its modules in layout order. */
export function moduleSources(lora: Lora): ModuleSource[] {
  const layout = getLayout(lora.arch, lora.size);
  const unknown = [...lora.modules.keys()].filter((p) => !layout.byPath.has(p));
  if (unknown.length > 0) {
    throw new LoraError(
      'LORA_UNMATCHED_MODULES',
      `${unknown.length} module path(s) of the LoRA are not modules of ${lora.arch} (${lora.size}): ${unknown.slice(0, 10).join(', ')}${unknown.length > 10 ? ' …' : ''}`,
      { arch: lora.arch, modules: unknown.slice(0, 100), count: unknown.length },
    );
  }
  const out: ModuleSource[] = [];
  for (const entry of layout.modules) {
    const m = lora.modules.get(entry.path);
    if (!m) continue;
    const rank = m.down.shape[0]!;
    if (m.up.shape[1] !== rank) {
      throw new LoraError(
        'LORA_RANK_MISMATCH',
        `module '${entry.path}': down ${JSON.stringify(m.down.shape)} has rank ${rank} but up ${JSON.stringify(m.up.shape)} has rank ${m.up.shape[1]}`,
        { key: entry.path, expected: rank, found: m.up.shape[1] },
      );
    }
    const problem = checkFactorShapes(entry, m.down.shape, m.up.shape);
    if (problem) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `module '${entry.path}': expected ${problem.expected}, found ${problem.found}`,
        { key: entry.path, expected: problem.expected, found: problem.found },
      );
    }
    if (!Number.isFinite(m.alpha)) {
      throw new ArgumentError('ARG_INVALID', `module '${entry.path}': alpha is ${m.alpha}; expected a finite number`, {
        key: entry.path,
        found: m.alpha,
      });
    }
    out.push({
      entry,
      alpha: m.alpha,
      downShape: [...m.down.shape],
      upShape: [...m.up.shape],
      down: () => contiguousF32(m.down),
      up: () => contiguousF32(m.up),
      ...(m.bias ? { bias: biasValues(entry, m.bias) } : {}),
    });
  }
  return out;
}

/** The values of a module's bias delta, checked against the module's output size. */
function biasValues(entry: ModuleEntry, bias: F32Array): () => Float32Array {
  const out = entry.shape[0];
  if (bias.shape.length !== 1 || bias.shape[0] !== out) {
    throw new LoraError(
      'LORA_SHAPE_MISMATCH',
      `module '${entry.path}': bias delta has shape ${JSON.stringify(bias.shape)}; expected [${out}]`,
      { key: entry.path, expected: [out], found: bias.shape },
    );
  }
  return () => contiguousF32(bias);
}

/**
 * Encode a LoRA as kohya or PEFT tensors (+ metadata). Data is produced lazily, one tensor at a time, when the
 * writer asks for it; with a `store`, the factor values come from it (the LoRA's modules give only their shapes).
 */
export function encodeLora(input: Lora<Term>, rawOptions: EncodeOptions, store?: FactorStore): EncodedLora {
  const options = checkEncodeOptions(rawOptions, 'encode');
  assertLora(input, 'encode');
  // Any kind is written as its exact plain-LoRA factors (DoRA / GLoRA need them resolved against a base first).
  const lora = lowRankLora(input);
  const dtype = options.dtype ?? defaultOutputDType(lora);
  const read = (path: string, factor: 'up' | 'down'): Promise<Float32Array | EncodedFactor> =>
    store!.readEncoded ? store!.readEncoded(path, factor, dtype) : store!.read(path, factor);
  const sources = moduleSources(lora).map(
    (s): EncodableModule =>
      store ? { ...s, down: () => read(s.entry.path, 'down'), up: () => read(s.entry.path, 'up') } : s,
  );
  assertWritableLora(lora, 'encode', store);
  return encodeModules(
    sources,
    {
      format: options.format,
      dtype,
      ...(options.kohyaPaths ? { kohyaPaths: options.kohyaPaths } : {}),
      ...(options.metadata ? { metadata: options.metadata } : {}),
    },
    lora.metadata,
    lora.embeddings,
    normSources(lora),
  );
}

/** One norm difference to encode: its layout entry and the weight / bias deltas on demand. */
export interface NormSource {
  readonly entry: NormEntry;
  readonly weight?: () => Float32Array;
  readonly bias?: () => Float32Array;
}

/** The norm differences of a LoRA in layout order, each checked against its norm's channel count. */
function normSources(lora: Lora): NormSource[] {
  if (!lora.norms || lora.norms.size === 0) return [];
  const layout = getLayout(lora.arch, lora.size);
  const out: NormSource[] = [];
  for (const entry of layout.norms) {
    const d = lora.norms.get(entry.path);
    if (!d) continue;
    const values = (v: F32Array | undefined, what: string): (() => Float32Array) | undefined => {
      if (!v) return undefined;
      if (v.shape.length !== 1 || v.shape[0] !== entry.channels) {
        throw new LoraError(
          'LORA_SHAPE_MISMATCH',
          `norm '${entry.path}': the ${what} difference has shape ${JSON.stringify(v.shape)}; expected [${entry.channels}]`,
          { key: entry.path, expected: [entry.channels], found: v.shape },
        );
      }
      return () => contiguousF32(v);
    };
    const weight = values(d.weight, 'weight');
    const bias = values(d.bias, 'bias');
    out.push({ entry, ...(weight ? { weight } : {}), ...(bias ? { bias } : {}) });
  }
  const unknown = [...lora.norms.keys()].filter((p) => !layout.normByPath.has(p));
  if (unknown.length > 0) {
    throw new LoraError('LORA_UNMATCHED_MODULES', `encode: no norm layer '${unknown[0]}' in ${lora.arch}`, {
      keys: unknown.slice(0, 100),
    });
  }
  return out;
}

/** The dtype names the CLI accepts. */
export function parseOutputDType(name: string): OutputDType | undefined {
  const k = name.trim().toLowerCase();
  if (k === 'fp16' || k === 'f16' || k === 'float16' || k === 'half') return 'F16';
  if (k === 'bf16' || k === 'bfloat16') return 'BF16';
  if (k === 'fp32' || k === 'f32' || k === 'float32' || k === 'float') return 'F32';
  return undefined;
}
