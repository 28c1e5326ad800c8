/**
 * The Node entry of lora-mix (package.json "exports" '.' under the "node" condition → dist/node.js).
 *
 * Everything of the isomorphic entry (src/index.ts), plus what needs Node: file paths as byte sources and atomic
 * file sinks, diffusers folders, the threaded WASM kernel and the worker-thread merge. Loading this module
 * installs the Node host, so every function of the library that takes a ByteSource also takes a path here.
 *
 *   import { loadLora, mergeLoras, saveLora, fuseLoras, verifyFusion } from 'lora-mix';
 */
import { installNodeHost } from './node/install.js';

installNodeHost();

export * from './index.js';
// Both the safetensors reader and the layout detector name a `TensorInfo`; the reader's is the file's entry.
export type { TensorInfo } from './safetensors/index.js';

// Files as ByteSources (positional reads) and ByteSinks (temp file, fsync, rename).
export {
  fileSource,
  openSafetensors,
  fileSink,
  assertNotOverwriting,
  type FileSource,
  type FileSink,
  type FileSinkOptions,
} from './node/files.js';

// The WASM SIMD fusion kernel on worker threads.
export {
  createCpuKernel,
  defaultThreads,
  enableRelaxedSimdNode,
  workersOf,
  type CpuKernelOptions,
} from './node/kernel-threads.js';

// Rank reduction of whole LoRAs on worker threads.
export { mergeLorasParallel, type ParallelMergeOptions } from './node/merge-threads.js';

// Merge LoRA files into a file (the `merge` command; streams reducing merges module by module).
export {
  defaultOutputDtype,
  mergeLoraFiles,
  type MergeFilesMetadata,
  type MergeLoraFilesOptions,
  type MergeLoraFilesResult,
} from './node/merge-files.js';

// Convert a LoRA file of any mix of kinds module by module on worker threads (the `convert` command's path).
export {
  convertLoraParallel,
  convertStreaming,
  type StreamedConversion,
  type StreamingConvertOptions,
} from './node/convert-stream.js';

export { installNodeHost } from './node/install.js';
