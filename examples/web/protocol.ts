/** Messages between the page (app.ts) and its Web Worker (worker.ts). Everything stays on this machine. */
import type { LoraSummary } from '../../src/formats/index.js';

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
  summary: LoraSummary;
  /** Why the page thinks this is an LCM-LoRA, or null. */
  lcm: string | null;
  /** The weight the page suggests (1.0 for an LCM-LoRA, 0.8 otherwise). */
  defaultWeight: number;
  /** Seconds the worker spent reading and decoding the file. */
  seconds: number;
}

export interface MergeRequest {
  inputs: { id: number; weight: number }[];
  /** Target rank; absent: exact merge (rank = sum of ranks). */
  rank?: number;
  /** Block weights for every input, e.g. "IN04=0,OUT05=0.5"; absent or empty: none. */
  blocks?: string;
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
  seconds: number;
}

export type ToWorker =
  | { type: 'add'; id: number; file: File }
  | { type: 'remove'; id: number }
  | { type: 'merge'; job: number; request: MergeRequest };

export type FromWorker =
  | { type: 'ready'; version: string }
  | { type: 'added'; info: LoraInfo }
  | { type: 'add-failed'; id: number; fileName: string; error: ErrorInfo }
  | { type: 'progress'; job: number; done: number; total: number; phase: 'merge' | 'write' }
  | { type: 'merged'; job: number; bytes: Uint8Array; summary: MergeSummary }
  | { type: 'merge-failed'; job: number; error: ErrorInfo };
