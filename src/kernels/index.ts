/**
 * Core kernel API (browser-safe). Node-only: `createCpuKernel` from '../node/kernel-threads.js' (worker threads).
 */
export type {
  FuseKernel,
  GpuKernelResult,
  KernelStats,
  StoredFloat,
  UpdateJob,
  UpdateOptions,
  UpdateResult,
  WasmKernelOptions,
} from './types.js';
export { isStoredFloat, STORED_FLOAT_SIZE } from './types.js';
export { createJsKernel, referenceUpdate } from './js.js';
export { createWasmKernel } from './cpu.js';
export { createGpuKernel, gpuBackends, gpuJsKernel, resolvedBackend } from './gpu.js';
export type { GpuBackendProbe, GpuJsClass, GpuJsInstance, GpuKernelOptions, GpuMode } from './gpu.js';
export { hasRelaxedSimd, hasWasmSimd } from '../core/wasm-features.js';
export { createWebCpuKernel, webThreadsAvailable } from './web-threads.js';
