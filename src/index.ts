/**
 * The Node entry of lora-mix (package.json "exports" '.' → dist/index.js).
 *
 * It is the browser entry (src/browser.ts: safetensors over any ByteSource, formats, layouts, LoRA arithmetic, the
 * browser-safe kernels, the LCM sampler) plus what needs Node: file paths as byte sources and atomic file sinks,
 * the threaded WASM kernel, the worker-thread merge, fusion into a base checkpoint and its verification, and the
 * synthetic-checkpoint generators used by the fixtures and benchmarks.
 *
 *   import { loadLora, mergeLoras, saveLora, fuseLoras, verifyFusion } from 'lora-mix';
 */
export * from './browser.js';
// Both the safetensors reader and the layout detector name a `TensorInfo`; the reader's is the file's entry.
export type { TensorInfo } from './safetensors/index.js';

// Node adapters: files as ByteSources (positional reads) and ByteSinks (temp file, fsync, rename).
export {
  fileSource, openSafetensors, fileSink, assertNotOverwriting,
  type FileSource, type FileSink, type FileSinkOptions, type RefuseList,
} from './io/node.js';

// The WASM SIMD fusion kernel on worker threads.
export {
  createCpuKernel, defaultThreads, enableRelaxedSimdNode, workersOf, type CpuKernelOptions,
} from './fuse/kernels/cpu-node.js';

// Rank reduction of whole LoRAs on worker threads.
export { mergeLorasParallel, type ParallelMergeOptions } from './lora/threads-node.js';

// Fusion into a base checkpoint and its check (paths and diffusers folders work here through the Node adapter).
export {
  fuseLoras, verifyFusion, formatFuseReport, formatVerifyReport, describeFailures, planFusion, openBase,
  FUSE_METADATA_KEY,
  type BaseInput, type LoraInput, type FuseDType, type FuseOptions, type FuseProgress, type FuseReport,
  type FuseInputReport, type VerifyOptions, type VerifyReport, type ModuleVerifyReport,
  type OpenedBase, type Plan as FusionPlan,
} from './fuse/index.js';

// Synthetic LoRAs and base checkpoints with the real key names (what fixtures/ and bench/ are made of).
export {
  generateLora, generateBaseCheckpoint, syntheticLora,
  type LoraSpec, type LoraTargets, type SyntheticFormat, type CheckpointSpec, type CheckpointPart,
} from './fixtures/generate.js';
