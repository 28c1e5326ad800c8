/**
 * What fusion needs from the platform beyond byte sources and sinks: base checkpoints given as paths (single files
 * and diffusers folders), folder outputs moved into place at the end, the multi-threaded CPU kernel and extract's
 * factoring threads. The Node entry installs src/node/fuse.ts here; without it (browsers) fusion works on ByteSources and a ByteSink with the
 * single-thread WASM kernel.
 */
import type { FuseKernel } from '../kernels/types.js';
import type { OpenBaseOptions, OpenedBase } from './base.js';
import type { ExtractPool } from './extract-module.js';

export interface FuseHost {
  /** Open a base checkpoint path: a single safetensors file or a diffusers folder. */
  openBase(path: string, options?: OpenBaseOptions): Promise<OpenedBase>;
  /** Write a folder output: `write` fills a new folder, which then replaces `out` atomically. */
  writeFolder(base: OpenedBase, out: string, write: (dir: string) => Promise<void>): Promise<void>;
  /** `rel` (a '/'-separated path inside a folder) under `dir`. */
  joinPath(dir: string, rel: string): string;
  /** The CPU kernel on worker threads. */
  createCpuKernel(threads?: number): Promise<FuseKernel>;
  /** Worker threads for extract's per-module factoring (default one per core); null when unavailable. */
  createExtractPool?(threads?: number): ExtractPool | null;
}

let installed: FuseHost | null = null;

export function installFuseHost(host: FuseHost): void {
  installed = host;
}

export function currentFuseHost(): FuseHost | null {
  return installed;
}
