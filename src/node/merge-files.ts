/**
 * mergeLoraFiles (Node only): LoRA files in, one LoRA file out — what `lora-mix merge` runs (the CLI adds its
 * provenance through `metadata`). A merge that reduces modules (a merge method, `rank`, `minEnergy`) streams
 * (./merge-stream.ts): the inputs' headers are read first, each module's factors when it is reduced, and the
 * result waits in a spill file beside the output until it is written, so memory holds the modules in flight, never the inputs or the
 * result. An exact sum, a merge with `base`, and inputs the streaming path does not take (modules of other
 * adapter kinds, PEFT bias deltas, norm-layer differences, embeddings) load the inputs and merge in memory (on
 * worker threads for the reductions). Either way the file is the one mergeLoras + saveLora would write.
 */
import {
  loadLora,
  saveLora,
  type DecodeOptions,
  type EncodeStats,
  type KohyaPaths,
  type LoadedLora,
  type OutputDType,
} from '../formats/index.js';
import type { Arch, LayoutSize } from '../layout/index.js';
import type { MergeReport, MergeWeight } from '../lora/merge.js';
import { mergeStreaming, openStreamingInputs, type StreamedMerge } from './merge-stream.js';
import { resolveBaseTermsThreaded } from './delta-pool.js';
import { mergeLorasParallel, type ParallelMergeOptions } from './merge-threads.js';

/** Metadata of the output, or a function giving it once the output dtype is known (the CLI's provenance). */
export type MergeFilesMetadata =
  | Readonly<Record<string, string>>
  | ((info: {
      readonly dtype: OutputDType;
      readonly inputs: readonly LoadedLora[];
    }) => Promise<Readonly<Record<string, string>>> | Readonly<Record<string, string>>);

export type MergeLoraFilesOptions = ParallelMergeOptions &
  DecodeOptions & {
    /** Output format (default 'kohya'). */
    readonly format?: 'kohya' | 'peft';
    readonly kohyaPaths?: KohyaPaths;
    /** Output dtype (default: the inputs' common dtype when they share F16, BF16 or F32, else F32). */
    readonly dtype?: OutputDType;
    /** Extra metadata written to the file (merged over the merge's own `lora_mix_merge`). */
    readonly metadata?: MergeFilesMetadata;
    /** A base checkpoint (file or diffusers folder) for DoRA / GLoRA inputs, which need it (in-memory path). */
    readonly base?: string;
  };

export interface MergeLoraFilesResult {
  readonly output: string;
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly report: MergeReport;
  /** The inputs as decoded (format, dtype, source, modules — shapes only when the merge streamed). */
  readonly inputs: readonly LoadedLora[];
  readonly dtype: OutputDType;
  /** Bytes written. */
  readonly byteLength: number;
  readonly stats: EncodeStats;
  /** Whether the merge streamed (module by module from the files) or loaded the inputs. */
  readonly streamed: boolean;
  /** Wall time of the phases, seconds. */
  readonly seconds: { readonly load: number; readonly merge: number; readonly write: number; readonly total: number };
}

/** The output dtype when none is asked for: the inputs' common storage dtype, else F32. */
export function defaultOutputDtype(inputs: readonly LoadedLora[]): OutputDType {
  const dtypes = new Set(inputs.map((l) => l.dtype));
  const only = dtypes.size === 1 ? [...dtypes][0] : undefined;
  return only === 'F16' || only === 'BF16' || only === 'F32' ? only : 'F32';
}

/**
 * Merge LoRA files (`weights[i]` for `inputs[i]`: a number, or per-component / block weights) into `output`.
 * Same options, semantics, errors and bytes as mergeLoras + saveLora (and `lora-mix merge`); the output never
 * replaces an input, and nothing is left behind on failure.
 */
export async function mergeLoraFiles(
  inputs: readonly string[],
  weights: readonly MergeWeight[],
  output: string,
  options: MergeLoraFilesOptions = {},
): Promise<MergeLoraFilesResult> {
  const { format = 'kohya', kohyaPaths, dtype, metadata, base, arch, size, allowUnmatched, ...mergeOptions } = options;
  const decode: DecodeOptions = {
    ...(arch ? { arch } : {}),
    ...(size ? { size } : {}),
    ...(allowUnmatched === true ? { allowUnmatched: true } : {}),
  };
  const t0 = performance.now();
  const reducing = mergeOptions.rank !== undefined || mergeOptions.minEnergy !== undefined;
  const streaming = reducing && base === undefined ? await openStreamingInputs(inputs, decode) : null;
  const loras: LoadedLora[] = streaming ? [...streaming.loras] : [];
  if (!streaming) {
    for (const input of inputs) {
      const lora = await loadLora(input, decode);
      // DoRA / GLoRA / OFT / BOFT modules become their exact dense deltas against the base (LORA_NEEDS_BASE without
      // it), computed on worker threads.
      loras.push(base !== undefined ? await resolveBaseTermsThreaded(lora, base, mergeOptions.threads) : lora);
    }
  }
  const t1 = performance.now();

  let streamed: StreamedMerge | null = null;
  let merged: Awaited<ReturnType<typeof mergeLorasParallel>> | StreamedMerge;
  try {
    if (streaming) merged = streamed = await mergeStreaming(streaming, weights, mergeOptions, output);
    else merged = await mergeLorasParallel(loras, weights, mergeOptions);
  } finally {
    await streaming?.close();
  }
  const t2 = performance.now();

  const outDtype = dtype ?? defaultOutputDtype(loras);
  let written: Awaited<ReturnType<typeof saveLora>>;
  try {
    const extra = typeof metadata === 'function' ? await metadata({ dtype: outDtype, inputs: loras }) : metadata;
    const saveOptions = {
      format,
      ...(kohyaPaths ? { kohyaPaths } : {}),
      dtype: outDtype,
      ...(extra ? { metadata: extra } : {}),
      refuseOverwrite: inputs,
    };
    written = streamed ? await streamed.save(output, saveOptions) : await saveLora(merged.lora, output, saveOptions);
  } finally {
    await streamed?.dispose();
  }
  const t3 = performance.now();
  return {
    output,
    arch: merged.lora.arch,
    size: merged.lora.size,
    report: merged.report,
    inputs: loras,
    dtype: outDtype,
    byteLength: written.byteLength,
    stats: written.stats,
    streamed: streaming !== null,
    seconds: {
      load: (t1 - t0) / 1000,
      merge: (t2 - t1) / 1000,
      write: (t3 - t2) / 1000,
      total: (t3 - t0) / 1000,
    },
  };
}
