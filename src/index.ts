/**
 * The isomorphic entry of lora-mix (package.json "exports" '.' for browsers and bundlers; bundled by
 * scripts/build-browser.ts into dist/browser/lora-mix.js): safetensors over ArrayBuffers and Blobs, formats,
 * layouts, LoRA arithmetic, fusion with the kernels that need no Node (plain JS, single-thread WASM SIMD, gpu.js),
 * verification and the LCM sampler. Nothing here imports `node:`; the Node entry (src/node.ts) adds file paths,
 * diffusers folders and worker threads by installing a host (src/core/host.ts).
 */
export * from './core/errors.js';
export * from './core/tensor.js';
export { VERSION } from './core/version.js';
export type { ByteSource, ByteSink } from './core/bytes.js';
export { blobSource, bufferSource, memorySink, type MemorySink } from './core/memory.js';
// Provenance (what a written file was made from) and the streaming SHA-256 it records, for hosts without node:crypto.
export {
  PROVENANCE_METADATA_KEY,
  formatProvenance,
  provenanceMetadata,
  readProvenance,
  weightLabel,
  type Provenance,
  type ProvenanceInput,
} from './core/provenance.js';
export { createSha256, sha256Backend, sha256Hex, type Sha256 } from './core/sha256.js';
export { hashingSource, type HashingSource } from './core/sha256-source.js';
export * from './safetensors/index.js';
export * from './layout/index.js';
export * from './formats/index.js';
export * from './lora/index.js';
export * from './sampler/index.js';
export * from './kernels/index.js';
export { getWasmConvert, loadWasmConvert, type WasmConvert } from './core/dtype-wasm.js';
// Both the safetensors reader and the layout detector name a `TensorInfo`; the reader's is the file's entry.
export type { TensorInfo } from './safetensors/index.js';
// Fusion into a checkpoint or a LoRA held in memory: pass ByteSources (bufferSource, blobSource) and a ByteSink
// (memorySink). In a browser device 'cpu' runs the single-thread WASM SIMD kernel.
export * from './fuse/index.js';
// Checks of written files and synthetic checkpoints with the real key names (what fixtures/ and bench/ are made of).
export * from './verify/index.js';
export {
  generateLora,
  generateBaseCheckpoint,
  syntheticLora,
  type LoraSpec,
  type LoraTargets,
  type SyntheticFormat,
  type CheckpointSpec,
  type CheckpointPart,
} from './fixtures/generate.js';
export { installHost, currentHost, type Host, type SinkOptions, type RefuseList } from './core/host.js';
