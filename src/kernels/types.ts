/**
 * The fused-update kernel API. Every backend (plain JS, WASM SIMD on one thread, WASM SIMD on worker threads,
 * gpu.js) implements `FuseKernel`; the fuser only ever talks to this interface.
 *
 * One update computes, for a weight W of `rows × cols` values,
 *
 *     W' = W + U · D        U: [rows, rank] f32 (the caller folds every scale into U)
 *                           D: [rank, cols] f32 (cols = in·kh·kw for a conv)
 *
 * in f32 (the JS reference accumulates in f64), reading W in its stored dtype and writing W' in the requested
 * dtype, rounded once (round to nearest, ties to even).
 */

/** One update request. Both factors are contiguous row-major f32. */
export interface UpdateJob {
  rows: number;
  cols: number;
  rank: number;
  /** [rows, rank] row-major, scales folded in. */
  up: Float32Array;
  /** [rank, cols] row-major (cols = in·kh·kw). */
  down: Float32Array;
}

/**
 * A LoHa term fused into an update: W' = W + coef·Δ + U·D with Δ = scale·(A_up·A_down) ⊙ (B_up·B_down), in the
 * same arithmetic as adding the dense delta first: both products in f32 (the update kernel's own GEMM from zero),
 * Δ rounded to f32, W + coef·Δ rounded to f32, then U·D added and rounded once to the output dtype.
 */
export interface HadamardPart {
  /** A_up [rows, rankA], A_down [rankA, cols] (same for B), contiguous row-major f32. */
  readonly a: { readonly rank: number; readonly up: Float32Array; readonly down: Float32Array };
  readonly b: { readonly rank: number; readonly up: Float32Array; readonly down: Float32Array };
  readonly scale: number;
  readonly coef: number;
}

/**
 * A LoKr term fused into an update: W' = W + coef·Δ + U·D with Δ = scale·left ⊗ right written straight into the
 * rows, in the arithmetic of adding the dense delta first (Δ as f32: s·left[a, c] in f64 times right[b, d],
 * rounded; W + coef·Δ rounded to f32), then U·D added and rounded once to the output dtype.
 */
export interface KroneckerPart {
  /** left [rows, leftCols] and right [rightRows, rightCols] as full f32 matrices, row-major. */
  readonly left: Float32Array;
  readonly rows: number;
  readonly leftCols: number;
  readonly right: Float32Array;
  readonly rightRows: number;
  readonly rightCols: number;
  readonly scale: number;
  readonly coef: number;
}

/** Stored float dtypes the kernels read and write. */
export type StoredFloat = 'F32' | 'F16' | 'BF16';

export interface UpdateOptions {
  /**
   * When true, results that overflow the output dtype (finite input, ±Inf after rounding) are written as the
   * largest finite value of that dtype with the result's sign; they are still counted in `overflow`.
   * When false (default) the ±Inf is written and counted; the caller decides whether to raise.
   */
  clamp?: boolean;
}

export interface UpdateResult {
  /**
   * Outputs whose stored input value was finite but whose result is not representable in the output dtype:
   * ±Inf after rounding (clamped to ±max when `clamp` is set), or NaN produced by non-finite factors.
   */
  overflow: number;
  /** Outputs whose stored input value already was NaN or ±Inf (passed through; not an overflow). */
  nonFiniteInput: number;
}

export interface KernelStats {
  /** 2·rows·cols·rank summed over the jobs done. */
  flops: number;
  /** Wall-clock seconds spent inside update(). */
  seconds: number;
  calls: number;
}

export interface FuseKernel {
  /** Human-readable description, e.g. 'wasm-simd-relaxed ×2 threads', 'gpu.js webgpu', 'js'. */
  readonly name: string;
  /** 'wasm-simd' | 'wasm-simd-relaxed' | 'js' | 'gpu.js:webgpu' | 'gpu.js:webgl2' | 'gpu.js:cpu' … */
  readonly backend: string;
  /**
   * src holds rows×cols values of srcDtype (bytes as stored in the file, little-endian, any byteOffset);
   * dst receives rows×cols values of dstDtype. src and dst may be the same buffer when the dtypes match.
   * Rejects with a FuseError (code KERNEL_INVALID_JOB) when sizes do not match the job.
   */
  update(
    src: Uint8Array,
    srcDtype: StoredFloat,
    dst: Uint8Array,
    dstDtype: StoredFloat,
    job: UpdateJob,
    opts?: UpdateOptions,
  ): Promise<UpdateResult>;
  /**
   * update() with a LoHa term added first (see HadamardPart), computed where the kernel keeps W: its products,
   * the Hadamard combine and the final update run on the kernel's threads without a dense delta in JS memory.
   * Optional: kernels without it are given the dense delta instead (the fuser adds it to W and calls update()).
   */
  updateHadamard?(
    src: Uint8Array,
    srcDtype: StoredFloat,
    dst: Uint8Array,
    dstDtype: StoredFloat,
    job: UpdateJob,
    hadamard: HadamardPart,
    opts?: UpdateOptions,
  ): Promise<UpdateResult>;
  /** update() with a LoKr term added first (see KroneckerPart), where the kernel keeps W. Optional like updateHadamard. */
  updateKronecker?(
    src: Uint8Array,
    srcDtype: StoredFloat,
    dst: Uint8Array,
    dstDtype: StoredFloat,
    job: UpdateJob,
    kronecker: KroneckerPart,
    opts?: UpdateOptions,
  ): Promise<UpdateResult>;
  /** FLOPs done so far (2·rows·cols·rank per job) and seconds spent inside update, for GFLOP/s reports. */
  readonly stats: KernelStats;
  /** Release workers, GPU resources and memory. Idempotent; update() after dispose() rejects. */
  dispose(): Promise<void>;
}

/** Options of the WASM kernels. */
export interface WasmKernelOptions {
  /**
   * Use f32x4.relaxed_madd when the runtime validates it (default true). false forces mul+add.
   * In Node 20 relaxed SIMD is behind a V8 flag: createCpuKernel (src/node/kernel-threads.ts) sets it; the core
   * createWasmKernel only detects.
   */
  relaxed?: boolean;
  /**
   * Bytes of W (stored plus output dtype) per row block of a job (default 512 MiB, WasmEngine): a larger job is
   * updated block by block. For tests, which lower it to cut small jobs into several blocks; the output bytes are the
   * same whatever the blocks.
   */
  maxBlockBytes?: number;
}

/** What createGpuKernel returns: the kernel to use and what actually runs it. */
export interface GpuKernelResult {
  kernel: FuseKernel;
  /** Backend that runs the updates, e.g. 'gpu.js:webgpu', or the fallback's backend ('wasm-simd-relaxed'). */
  backend: string;
  /** True when gpu.js could not give a GPU backend and `kernel` is the fallback. */
  fellBack: boolean;
  /** Why it fell back (names the mode gpu.js resolved to), or a note about the backend. */
  reason?: string;
}

/** Byte size of one stored value. */
export const STORED_FLOAT_SIZE: Readonly<Record<StoredFloat, number>> = { F32: 4, F16: 2, BF16: 2 };

export function isStoredFloat(x: unknown): x is StoredFloat {
  return x === 'F32' || x === 'F16' || x === 'BF16';
}
