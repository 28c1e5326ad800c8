/**
 * The browser entry of lora-mix (bundled by scripts/build-browser.ts into dist/browser/lora-mix.js): the whole
 * core — safetensors over ArrayBuffers and Blobs, formats, layouts, LoRA arithmetic, the fusion kernels that need
 * no Node (plain JS, single-thread WASM SIMD, gpu.js) and the LCM scheduler. Nothing here imports `node:`; the
 * Node adapters (file paths, worker threads) and the CLI are not part of it.
 */
export * from './errors.js';
export * from './tensor.js';
export { VERSION } from './version.js';
export type { ByteSource, ByteSink } from './io/source.js';
export { blobSource, bufferSource, memorySink, type MemorySink } from './io/browser.js';
export * from './safetensors/index.js';
export * from './layout/index.js';
export * from './formats/index.js';
export * from './lora/index.js';
export * from './sampler/index.js';
export * from './fuse/kernels/index.js';
export { getWasmConvert, loadWasmConvert, type WasmConvert } from './wasm/convert.js';
// Both the safetensors reader and the layout detector name a `TensorInfo`; the reader's is the file's entry.
export type { TensorInfo } from './safetensors/index.js';
// Fusion into a checkpoint or a LoRA held in memory: pass ByteSources (bufferSource, blobSource) and a ByteSink
// (memorySink). In a browser device 'cpu' runs the single-thread WASM SIMD kernel.
export * from './fuse/index.js';
