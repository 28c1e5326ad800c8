/** Messages between the page (app.ts) and its Web Worker (worker.ts). Everything stays on this machine. */
import type { LoraSummary } from '../../src/formats/index.js';
import type { ComponentStrengths } from '../../src/lora/components.js';
import type { ResizeRule } from '../../src/lora/resize.js';

/** A failure as the page shows it: the library's stable error code and its message. */
export interface ErrorInfo {
  code: string;
  name: string;
  message: string;
}

export interface LoraInfo {
  id: number;
  fileName: string;
  bytes: number;
  /** Hex SHA-256 of the whole file, computed while it was read (recorded in provenance; flags duplicates by content). */
  sha256: string;
  summary: LoraSummary;
  /** Why the page thinks this is an LCM-LoRA, or null. */
  lcm: string | null;
  /** The weight the page suggests (1.0 for an LCM-LoRA, 0.8 otherwise). */
  defaultWeight: number;
  /** Seconds the worker spent reading, hashing and decoding the file. */
  seconds: number;
  /**
   * Of those: reading the file (one File.arrayBuffer), its SHA-256 (WebCrypto: the wait for it after the decode, the
   * hash itself runs off the worker's thread; else the WebAssembly hash on it), and decoding it from memory.
   */
  phases: { read: number; hash: number; decode: number };
}

export interface MergeRequest {
  /** Inputs in page order; `blocks` (e.g. "IN04=0,OUT05=0.5") overrides the global block weights for that input. */
  inputs: { id: number; weight: number; blocks?: string; components?: ComponentStrengths }[];
  /** Target rank; absent: exact merge (rank = sum of ranks). */
  rank?: number;
  /** Block weights for inputs without their own, e.g. "IN04=0,OUT05=0.5"; absent or empty: none. */
  blocks?: string;
  /** A method of the library's registry (METHODS in src/lora/methods.ts); absent: concat, the exact sum. */
  method?: string;
  /** That method's parameters, by API name (density, majoritySign, seed, t). */
  params?: Record<string, number | string>;
  format: 'kohya' | 'peft';
  dtype: 'auto' | 'F32' | 'F16' | 'BF16';
  fileName: string;
}

export interface MergeSummary {
  arch: string;
  modules: number;
  dropped: number;
  rankBefore: { min: number; max: number; mean: number };
  rankAfter: { min: number; max: number; mean: number };
  meanNormKept: number;
  minNormKept: number;
  exact: boolean;
  dtype: string;
  format: string;
  bytes: number;
  /** Non-zero factor values that became 0 in the output dtype (too small for it). */
  flushedToZero: number;
  seconds: number;
  /** Of those: the merge itself, and encoding + writing the file. */
  phases: { merge: number; write: number };
}

/** Resize one loaded LoRA with kohya's rules (like `lora-mix resize`). */
export interface ResizeRequest {
  id: number;
  /** One of kohya's rules: { rank } | { svRatio } | { svFro } | { svCumulative }. */
  rule: ResizeRule;
  maxRank?: number;
  format: 'kohya' | 'peft';
  dtype: 'auto' | 'F32' | 'F16' | 'BF16';
  fileName: string;
}

/** kohya's report of a resize, as the page shows it. */
export interface ResizeSummary {
  modules: number;
  rankBefore: { min: number; max: number };
  rankAfter: { min: number; max: number; mean: number };
  meanFroRetained: number;
  stdFroRetained: number;
  minFroRetained: number;
  maxFroRetained: number;
  /** The module keeping the least of its Frobenius norm: path, ranks, Σ S kept, Frobenius kept, S0/S(k−1). */
  worst: string;
  dtype: string;
  format: string;
  bytes: number;
  seconds: number;
}

/** Fuse the inputs (weights, block weights, method of a MergeRequest) into a base checkpoint. */
export interface FuseRequest {
  merge: MergeRequest;
  /** Output dtype of the checkpoint: as stored, or one of the float dtypes. */
  dtype: 'auto' | 'F32' | 'F16' | 'BF16';
  fileName: string;
}

export interface FuseSummary {
  arch: string;
  modulesFused: number;
  tensors: { total: number; fused: number; copied: number; converted: number };
  overflow: number;
  kernel: string;
  bytes: number;
  /** The name of the file the worker wrote into (showSaveFilePicker), when it did. */
  savedTo?: string;
  /**
   * Without a chosen file, where the checkpoint offered for download is kept: a file of the origin-private file
   * system (written through a synchronous access handle), or Blob parts in memory where the browser has none.
   */
  keptIn?: 'origin-private file' | 'memory';
  seconds: number;
  /** Of those: waits for reads of the base (summed; they overlap), waits on the output's writes, the kernel. */
  phases: { read: number; write: number; kernel: number };
}

export interface AnalyzeSummary {
  /** formatAnalyzeReport's text (the CLI's output). */
  text: string;
  /** analyzeHtml's self-contained page (inline SVG), shown in a sandboxed frame. */
  html: string;
  seconds: number;
}

export type ToWorker =
  | { type: 'add'; id: number; file: File }
  | { type: 'remove'; id: number }
  | { type: 'merge'; job: number; request: MergeRequest }
  | { type: 'resize'; job: number; request: ResizeRequest }
  /**
   * `target`: the file chosen with showSaveFilePicker, written by the worker as the fuse goes (absent: Blob pieces
   * for a download). `threads`: kernel threads (absent: every core when cross-origin isolated; 1: one thread).
   */
  | { type: 'fuse'; job: number; request: FuseRequest; base: File; target?: FileSystemFileHandle; threads?: number }
  | { type: 'analyze'; job: number; request: MergeRequest };

export type FromWorker =
  | { type: 'ready'; version: string }
  | { type: 'added'; info: LoraInfo }
  | { type: 'add-failed'; id: number; fileName: string; error: ErrorInfo }
  /** Bytes of a dropped file read so far (parsing and decoding it). */
  | { type: 'reading'; id: number; done: number; total: number }
  /** Merge/resize/analyze: modules done of total; write: tensors written; fuse: bytes of the checkpoint written. */
  | {
      type: 'progress';
      job: number;
      done: number;
      total: number;
      phase: 'merge' | 'write' | 'resize' | 'fuse' | 'analyze';
    }
  /** The merged file as a Blob built from the writer's chunks (never one big copy on the page's thread). */
  | { type: 'merged'; job: number; blob: Blob; summary: MergeSummary }
  | { type: 'resized'; job: number; blob: Blob; summary: ResizeSummary }
  /** blob: null when the worker wrote the checkpoint straight into the chosen file (summary.savedTo). */
  | { type: 'fused'; job: number; blob: Blob | null; summary: FuseSummary }
  | { type: 'analyzed'; job: number; summary: AnalyzeSummary }
  /** Any job (merge, resize, fuse, analyze) failed. */
  | { type: 'merge-failed'; job: number; error: ErrorInfo };
