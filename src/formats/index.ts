/**
 * LoRA file formats: decode any supported spelling (kohya with diffusers or SGM paths, PEFT/diffusers, the old
 * diffusers attention-processor format) into the canonical LoRA, and encode a LoRA as kohya or PEFT.
 * Core module: no `node:` imports. Paths work in Node through the Node adapter, loaded on demand.
 */
import { requireHost } from '../core/host.js';
import type { ByteSink, ByteSource } from '../core/bytes.js';
import type { Lora, Term } from '../lora/types.js';
import { parseSafetensors, type SafetensorsFile } from '../safetensors/read.js';
import { serializeSafetensors, writeSafetensors, type TensorData, type WriteResult } from '../safetensors/write.js';
import { decodeLora, planLora, type DecodeOptions, type LoadedLora, type LoraPlan } from './decode.js';
import { encodeLora, type EncodeOptions, type EncodeStats, type FactorStore } from './encode.js';
import { assertLoraInput, assertSaveTarget, checkEncodeOptions } from './validate.js';

export {
  decodeLora,
  planLora,
  readPlannedLora,
  listSome,
  type LoadedLora,
  type LoraPlan,
  type PlannedModule,
  type DecodeOptions,
  type LoraFormat,
  type LoraFileLike,
  type UnmatchedEntry,
} from './decode.js';
export {
  encodeLora,
  encodeModules,
  moduleSources,
  contiguousF32,
  defaultOutputDType,
  parseOutputDType,
  type EncodeOptions,
  type InternalEncodeOptions,
  type EncodedLora,
  type EncodeStats,
  type EncodedFactor,
  type FactorStore,
  type ModuleSource,
  type OutputDType,
} from './encode.js';
export { describeLora, formatLoraSummary, type LoraSummary, type Count } from './describe.js';
export { detectFileKind, type FileKind } from './detect.js';
export {
  parseLoraKey,
  findUnsupportedAdapter,
  checkpointEvidence,
  UNSUPPORTED_ADAPTERS,
  type ParsedKey,
  type KohyaKey,
  type PathKey,
  type AdapterSignature,
} from './keys.js';
export { kohyaName, kohyaKeys, kohyaAlpha, type KohyaPaths } from './kohya.js';
export {
  parsePeftMetadata,
  peftAlpha,
  peftRank,
  peftPatternKey,
  peftMetadataJson,
  PEFT_METADATA_KEY,
  type PeftConfigs,
  type PeftComponentConfig,
} from './peft.js';
export { oldDiffusersKeys } from './diffusers-old.js';
export { parsePromptStack, parseComfyWorkflow, parseComfyWorkflowText, type StackEntry } from './stack.js';
export {
  checkFactorShapes,
  rankCandidates,
  evaluateCandidate,
  type CandidateResult,
  type RawModule,
} from './resolve.js';

/** Open a safetensors file by path through the platform host (the Node entry), with a clear error elsewhere. */
export async function openPath(path: string): Promise<SafetensorsFile> {
  const source = await requireHost(path, 'pass a ByteSource such as blobSource(file)').openSource(path);
  try {
    return await parseSafetensors(source);
  } catch (e) {
    await source.close?.().catch(() => undefined);
    throw e;
  }
}

/**
 * Load a LoRA from a path (Node) or any ByteSource (Node or browser). A path is opened and closed here; a
 * ByteSource given by the caller is left open.
 */
export async function loadLora(input: string | ByteSource, options: DecodeOptions = {}): Promise<LoadedLora> {
  assertLoraInput(input, 'loadLora');
  if (typeof input !== 'string') return decodeLora(await parseSafetensors(input), options);
  const file = await openPath(input);
  try {
    return await decodeLora(file, options);
  } finally {
    await file.close();
  }
}

/** Plan (header + alphas only) a LoRA from a path or ByteSource; see planLora. */
export async function inspectLora(input: string | ByteSource, options: DecodeOptions = {}): Promise<LoraPlan> {
  assertLoraInput(input, 'inspectLora');
  if (typeof input !== 'string') return planLora(await parseSafetensors(input), options);
  const file = await openPath(input);
  try {
    return await planLora(file, options);
  } finally {
    await file.close();
  }
}

export interface SaveOptions extends EncodeOptions {
  /** Inputs the output must not replace (the LoRA's own source is always added). */
  readonly refuseOverwrite?: readonly (ByteSource | string)[];
  /** Where the factor values are when the LoRA's modules hold only their shapes (the streaming merge's result). */
  readonly factorStore?: FactorStore;
  /**
   * Node, path targets: write with O_DIRECT where the filesystem allows it (WriteOptions.direct; for outputs of
   * many GB, whose buffered writes cost more system time than the copy itself). The bytes are the same.
   */
  readonly direct?: boolean;
}

/**
 * Write a LoRA to a path (Node: temp file, fsync, rename; nothing left behind on failure; never over an input)
 * or to a ByteSink. Returns what the writer wrote and the encoder's statistics (fp16 underflow count).
 */
export async function saveLora(
  lora: Lora<Term>,
  target: string | ByteSink,
  options: SaveOptions,
): Promise<WriteResult & { stats: EncodeStats }> {
  assertSaveTarget(target, 'saveLora');
  const checked = checkEncodeOptions(options, 'saveLora');
  const { factorStore, refuseOverwrite: _refuse, direct, ...encodeOptions } = checked as SaveOptions;
  const encoded = encodeLora(lora, encodeOptions, factorStore);
  const refuse: (ByteSource | string)[] = [...(options.refuseOverwrite ?? [])];
  const source = (lora as Partial<LoadedLora>).source;
  if (typeof source === 'string' && source !== '' && !source.startsWith('<')) refuse.push(source);
  const result = await writeSafetensors(target, encoded.tensors, {
    metadata: encoded.metadata,
    refuseOverwrite: refuse,
    ...(direct === true ? { direct } : {}),
  });
  return { ...result, stats: encoded.stats };
}

/** The whole encoded file in memory (browsers, small LoRAs). */
export function serializeLora(lora: Lora<Term>, options: EncodeOptions): Uint8Array {
  const encoded = encodeLora(lora, options);
  const tensors = encoded.tensors.map((t) => ({
    ...t,
    data: typeof t.data === 'function' ? (t.data as () => TensorData)() : t.data,
  }));
  return serializeSafetensors(tensors, { metadata: encoded.metadata });
}
