/**
 * Vocabulary of fusion: fusing τ = Σ wᵢ·τᵢ into the weights of a base checkpoint, and checking the result.
 */
import type { ByteSink, ByteSource } from '../core/bytes.js';
import type { Arch, LayoutSize } from '../layout/types.js';
import type { CheckpointNaming } from '../layout/detect.js';
import type { Lora, Term } from '../lora/types.js';
import type { MergeMethod } from '../lora/methods.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import type { FuseKernel } from '../kernels/types.js';

/**
 * A LoRA to fuse: a path (Node), a ByteSource or an opened SafetensorsFile (the factors are read module by
 * module while the base streams, so a LoRA file is never held in memory whole), or a LoRA already in memory.
 */
export type LoraInput = string | ByteSource | SafetensorsFile | Lora<Term>;

/**
 * A base checkpoint: a path (Node: a single file — SD1.5 LDM / SDXL SGM names, with or without text encoders and
 * VAE, or a lone diffusers UNet file — or a diffusers folder), a ByteSource or an opened SafetensorsFile.
 */
export type BaseInput = string | ByteSource | SafetensorsFile;

/** Output float dtypes. */
export type FuseDType = 'F32' | 'F16' | 'BF16';

export interface FuseProgress {
  readonly tensorsDone: number;
  readonly tensorsTotal: number;
  /** Bytes of output written so far / in total (every output file together). */
  readonly bytesDone: number;
  readonly bytesTotal: number;
  readonly seconds: number;
  /** The tensor just written ('<file>: <key>' for folders). */
  readonly current: string;
}

export interface FuseOptions {
  /**
   * Where to write: a path (a file, or a folder when the base is a diffusers folder; Node), or a ByteSink
   * (single-file bases). The output never replaces an input, and nothing is left behind on failure.
   */
  readonly out: string | ByteSink;
  /** 'cpu' (default): WASM SIMD on worker threads. 'gpu': gpu.js on its best GPU backend, else the CPU (reported). */
  readonly device?: 'cpu' | 'gpu';
  /** Output dtype of every F32/F16/BF16 tensor (default: each tensor keeps its stored dtype). */
  readonly dtype?: FuseDType;
  /** LoRA modules with no matching base weight are reported and skipped instead of failing the run. */
  readonly allowUnmatched?: boolean;
  /** Values beyond the output dtype's range: 'error' (default, FUSE_OVERFLOW, nothing written) or 'clamp' to ±max. */
  readonly onOverflow?: 'error' | 'clamp';
  /**
   * NaN / ±Inf already in a base weight the LoRAs change: refused by default (FORMAT_NONFINITE naming the tensor and
   * the count, nothing written), since the fused weight would carry them silently; true fuses anyway (those values
   * stay NaN / Inf, the report counts them). Tensors the LoRAs do not touch are copied byte for byte either way.
   */
  readonly allowNonfiniteBase?: boolean;
  /** CPU threads (default: all). */
  readonly threads?: number;
  /** Use this kernel instead of creating one (the caller disposes it). */
  readonly kernel?: FuseKernel;
  /** gpu.js's GPU class (browsers, tests); imported from 'gpu.js' when omitted. */
  readonly GPU?: unknown;
  /**
   * Node: write the output with O_DIRECT (bypassing the page cache) where the filesystem allows it. Default: on for
   * outputs of 256 MiB or more, where it saves the page-cache work of multi-GB writes (bench/RESULTS.md), with or
   * without `fsync`.
   */
  readonly directIO?: boolean;
  /**
   * Node, path outputs: make the output durable before it appears (default true: the temp file is fsync'd, renamed
   * into place, and the folder fsync'd). false keeps the temp file + rename — a failed run leaves nothing and no
   * reader ever sees a partial file — but returns once the bytes are in the OS's page cache: a power loss or
   * kernel crash shortly after the run can leave an empty or truncated file under the output's name. The write path
   * is unchanged (O_DIRECT for large outputs unless `directIO: false`, which returns even sooner on a slow disk but
   * costs CPU). Measured in bench/RESULTS.md ("fuse at the machine's limit"); CLI `--no-fsync`.
   */
  readonly fsync?: boolean;
  /**
   * Merge method (docs/methods.md): 'concat' (default) and 'linear' add the exact Σ λᵢ·τᵢ; the delta-space methods
   * (ties, dare_linear, dare_ties, magnitude_prune, slerp) add their dense per-module result, with no rank
   * reduction. The method's parameters: density, majoritySign, seed, t.
   */
  readonly method?: MergeMethod;
  readonly density?: number;
  readonly majoritySign?: 'total' | 'frequency';
  readonly seed?: number;
  readonly t?: number;
  /**
   * A single-file checkpoint at the root of a diffusers folder: 'omit' (default: left out of the output, reported)
   * or 'fuse' (fused like the components; it must be the folder's architecture).
   */
  readonly rootCheckpoint?: 'omit' | 'fuse';
  /** Extra metadata strings for the output (single files and every weight file of a folder). */
  readonly metadata?: Readonly<Record<string, string>>;
  /**
   * Metadata known only after the tensors are written, merged over `metadata` at the end of each output file (the
   * CLI's provenance: the LoRAs' SHA-256 computed from the fuse's own reads). The header is rewritten in place, so
   * each value must be no longer than the placeholder given in `metadata` under the same key. Needs a path output or
   * a sink with `writeAt`.
   */
  readonly lateMetadata?: () => Promise<Readonly<Record<string, string>>>;
  readonly onProgress?: (p: FuseProgress) => void;
}

export interface FuseInputReport {
  readonly source: string;
  /** The weight as given (a number, or a description of block weights). */
  readonly weight: string;
  readonly format: string;
  readonly modules: number;
}

export interface FuseReport {
  readonly base: string;
  readonly out: string;
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly naming: CheckpointNaming;
  readonly inputs: readonly FuseInputReport[];
  /** The merge method and its parameters (absent for the default exact sum, concat); also in the metadata. */
  readonly method?: { readonly name: MergeMethod; readonly params: Readonly<Record<string, number | string>> };
  /** LoRA modules fused (a module present in several inputs counts once). */
  readonly modulesFused: number;
  /** Fused modules per component and group, e.g. { 'unet/attention': 140, 'text_encoder/text_encoder': 72 }. */
  readonly byGroup: Readonly<Record<string, number>>;
  /** Modules skipped with allowUnmatched, with why. */
  readonly unmatched: readonly { readonly key: string; readonly reason: string }[];
  /**
   * LoRA tensors a checkpoint has no place for, skipped ('<source>: <key>'): kohya pivotal-tuning embeddings
   * (`bundle_emb.*`). Load them as textual-inversion embeddings next to the fused model.
   */
  readonly embeddingsSkipped: readonly string[];
  /** What happened to files of a diffusers folder that are not fused component weights (root checkpoints …). */
  readonly notes: readonly string[];
  readonly tensors: {
    readonly total: number;
    readonly fused: number;
    readonly copied: number;
    readonly converted: number;
  };
  /** Output values beyond the output dtype's range, in total and per tensor (clamped when onOverflow is 'clamp'). */
  readonly overflow: {
    readonly total: number;
    readonly tensors: readonly { readonly name: string; readonly count: number }[];
  };
  /** Stored values that already were NaN/±Inf in the base (passed through). */
  readonly nonFiniteInput: number;
  readonly kernel: string;
  readonly backend: string;
  /** device 'gpu' ran on the CPU because gpu.js found no GPU backend. */
  readonly fellBack: boolean;
  readonly fallbackReason?: string;
  readonly seconds: number;
  readonly kernelSeconds: number;
  readonly flops: number;
  /** flops / kernelSeconds / 1e9. */
  readonly gflops: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  /** Peak resident set size of the process in bytes, where the runtime tells (Node). */
  readonly peakRssBytes?: number;
  readonly outputDtype: FuseDType | 'as stored';
}
