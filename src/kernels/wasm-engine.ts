/**
 * The WASM side of the fused update: owns one WebAssembly.Memory (private, or shared with worker threads),
 * lays a job out in it, packs the factors, copies W in and out, and runs the generated kernel over ranges of
 * 4-row tiles. Used by the single-thread kernel (cpu.ts) and the threaded one (src/node/kernel-threads.ts).
 *
 * Memory map (bytes):
 *   [0, 1024)        count slots, 8 bytes per thread: non-finite inputs, overflows
 *   [1024, 4096)     thread control block (src/node/kernel-threads.ts)
 *   [4096, …)        packed B | packed A | staging (raw factors) | W source | W destination (when dtypes differ)
 *
 * The memory grows to the largest job seen and never shrinks, so a fuse over a whole checkpoint touches fresh
 * pages only while it meets ever-larger layers (fresh pages cost ~2.5 µs per 4 KiB on the reference machine).
 * Jobs larger than `maxBlockBytes` are processed in blocks of rows.
 */
import { FuseError } from '../core/errors.js';
import { base64ToBytes } from '../core/base64.js';
import { KERNEL_PLAIN, KERNEL_PLAIN_SHARED, KERNEL_RELAXED, KERNEL_RELAXED_SHARED } from './kernel-bytes.js';
import { type KroneckerPart, STORED_FLOAT_SIZE, type StoredFloat, type UpdateJob } from './types.js';

export const COUNTS_OFFSET = 0;
export const MAX_THREADS = 64;
export const CTL_OFFSET = 1024;
export const CTL_INTS = 768;
const DATA_OFFSET = 4096;
/** Where the hadamard_* and kronecker_* functions read s and c (two f64): the end of the count area (scripts/wasm/kernel-wat.ts). */
export const HADAMARD_COEF_OFFSET = 1008;
/**
 * Where the hadamard_* functions read their two packed pairs and their tile scratch (seven i32: pa1, pb1, r1, pa2,
 * pb2, r2, scratch; HADAMARD_SCRATCH_BYTES per thread). The kronecker_* functions read the scratch word too.
 */
export const HADAMARD_PARAMS_OFFSET = 952;
/** Tile scratch of the hadamard_* functions per thread (one 4 × 8 f32 tile). */
export const HADAMARD_SCRATCH_BYTES = 128;
/**
 * Where the kronecker_* functions read their expanded sides and the block's rows (five i32: L, R, right rows o2,
 * the block's first and end rows).
 */
export const KRONECKER_PARAMS_OFFSET = 984;
const PAGE = 65536;
/** Largest memory the kernels use: 4 GiB (wasm32). */
export const MAX_PAGES = 65536;
/** Bytes of one packed-B panel the kernel keeps in L2 (half of a 512 KiB L2). */
const PANEL_BYTES = 256 * 1024;

type KernelFn = (
  pa: number,
  pb: number,
  r: number,
  psrc: number,
  ldsrc: number,
  pdst: number,
  lddst: number,
  it0: number,
  it1: number,
  jt0: number,
  jt1: number,
  nc: number,
  clamp: number,
  pcount: number,
) => void;

export interface KernelExports {
  pack_a(src: number, dst: number, rows: number, r: number): void;
  pack_b(src: number, dst: number, cols: number, r: number): void;
  [update: `update_${string}` | `hadamard_${string}` | `kronecker_${string}` | `kronunit_${string}`]: KernelFn;
}

const DT: Record<StoredFloat, string> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
const NAN_PATTERN: Record<StoredFloat, number> = { F32: 0x7fc00000, F16: 0x7e00, BF16: 0x7fc0 };

const moduleCache = new Map<string, WebAssembly.Module>();

/** The compiled kernel module for a build (cached). Compiles synchronously (Node, workers) or async. */
export function kernelModuleSync(relaxed: boolean, shared: boolean): WebAssembly.Module {
  const key = `${relaxed ? 'relaxed' : 'plain'}-${shared ? 'shared' : 'private'}`;
  let m = moduleCache.get(key);
  if (!m) {
    m = new WebAssembly.Module(base64ToBytes(kernelBytes(relaxed, shared)));
    moduleCache.set(key, m);
  }
  return m;
}

export async function kernelModule(relaxed: boolean, shared: boolean): Promise<WebAssembly.Module> {
  const key = `${relaxed ? 'relaxed' : 'plain'}-${shared ? 'shared' : 'private'}`;
  let m = moduleCache.get(key);
  if (!m) {
    m = await WebAssembly.compile(base64ToBytes(kernelBytes(relaxed, shared)));
    moduleCache.set(key, m);
  }
  return m;
}

function kernelBytes(relaxed: boolean, shared: boolean): string {
  if (relaxed) return shared ? KERNEL_RELAXED_SHARED : KERNEL_RELAXED;
  return shared ? KERNEL_PLAIN_SHARED : KERNEL_PLAIN;
}

/** One block of rows of a job, laid out in wasm memory and ready to run. */
export interface Block {
  fn: string;
  r: number;
  pa: number;
  pb: number;
  psrc: number;
  ldsrc: number;
  pdst: number;
  lddst: number;
  rowTiles: number;
  colTiles: number;
  nc: number;
  clamp: number;
  /** Padding cells (NaN-filled, counted as non-finite inputs by the kernel). */
  padCells: number;
  rowStart: number;
  rowEnd: number;
}

const align = (n: number, a: number): number => Math.ceil(n / a) * a;

/** Column tiles per packed-B panel for rank r (the `nc` of a block). */
export function panelTiles(r: number): number {
  return Math.max(1, Math.floor(PANEL_BYTES / Math.max(1, 32 * r)));
}

/**
 * ±1 when a LoKr can run on the kronunit_* functions (f32 arithmetic, the same values as the f64 kronecker_* ones):
 * c = ±1 (the sign returned), every s·left[a, c] finite and exactly an f32, every right[b, d] finite; 0 otherwise.
 * (See kroneckerUnitStage in scripts/wasm/kernel-wat.ts for why those conditions make the two equal.)
 */
export function kroneckerUnit(k: KroneckerPart): 0 | 1 | -1 {
  if (k.coef !== 1 && k.coef !== -1) return 0;
  for (let i = 0; i < k.left.length; i++) {
    const x = k.scale * (k.left[i] as number);
    if (!Number.isFinite(x) || Math.fround(x) !== x) return 0;
  }
  for (let i = 0; i < k.right.length; i++) if (!Number.isFinite(k.right[i] as number)) return 0;
  return k.coef;
}

/**
 * Column tiles per panel of a kronecker_* block: the B panel of rank r, the panel's part of every row of the
 * expanded right side (o2 f32 rows, all used by each row of the left side) and one left row (f64) stay in L2
 * together.
 */
export function kroneckerPanelTiles(r: number, rightRows: number): number {
  return panelTiles(r + rightRows + 2);
}

export class WasmEngine {
  readonly memory: WebAssembly.Memory;
  readonly exports: KernelExports;
  private bufRef: ArrayBufferLike | null = null;
  private u8!: Uint8Array;
  private u16!: Uint16Array;
  private u32!: Uint32Array;
  private f32!: Float32Array;
  readonly maxBlockBytes: number;

  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, maxBlockBytes = 512 * 1024 * 1024) {
    this.memory = memory;
    const inst = new WebAssembly.Instance(module, { env: { memory } });
    this.exports = inst.exports as unknown as KernelExports;
    this.maxBlockBytes = maxBlockBytes;
    this.refresh();
  }

  private refresh(): void {
    const buf = this.memory.buffer;
    if (buf === this.bufRef && this.u8.byteLength === buf.byteLength) return;
    this.bufRef = buf;
    this.u8 = new Uint8Array(buf);
    this.u16 = new Uint16Array(buf);
    this.u32 = new Uint32Array(buf);
    this.f32 = new Float32Array(buf);
  }

  /** Grow the memory to hold `bytes` (never shrinks). */
  ensure(bytes: number): void {
    const need = Math.ceil(bytes / PAGE);
    const have = this.memory.buffer.byteLength / PAGE;
    if (need > MAX_PAGES) {
      throw new FuseError(
        'KERNEL_INVALID_JOB',
        `wasm kernel: a block of this job needs ${bytes} bytes of WebAssembly memory, more than the 4 GiB a wasm32 memory can hold`,
        { expected: MAX_PAGES * PAGE, found: bytes },
      );
    }
    if (need > have) {
      try {
        this.memory.grow(need - have);
      } catch (e) {
        throw new FuseError(
          'KERNEL_FAILED',
          `wasm kernel: cannot grow WebAssembly memory from ${have * PAGE} to ${need * PAGE} bytes: ${(e as Error).message}`,
          { expected: need * PAGE, found: have * PAGE },
        );
      }
    }
    this.refresh();
  }

  /** Row blocks of a job: each fits in maxBlockBytes of W storage. */
  blocks(job: UpdateJob, srcDtype: StoredFloat, dstDtype: StoredFloat): Array<[number, number]> {
    const { rows, cols } = job;
    const colsP = align(Math.max(cols, 1), 8);
    const perRow = colsP * (STORED_FLOAT_SIZE[srcDtype] + (srcDtype === dstDtype ? 0 : STORED_FLOAT_SIZE[dstDtype]));
    let blockRows = Math.max(4, Math.floor(this.maxBlockBytes / perRow / 4) * 4);
    if (blockRows >= rows) blockRows = rows;
    const out: Array<[number, number]> = [];
    for (let r0 = 0; r0 < rows; r0 += blockRows) out.push([r0, Math.min(rows, r0 + blockRows)]);
    return out;
  }

  /** Pack B (all columns) once per job at `base`; returns its offset and the end of the bytes used. */
  packB(job: UpdateJob, base = DATA_OFFSET): { pb: number; end: number } {
    const { rank: r, cols } = job;
    const colsP = align(Math.max(cols, 1), 8);
    const pb = align(base, 64);
    const staging = align(pb + colsP * r * 4, 64);
    this.ensure(staging + r * cols * 4);
    this.f32.set(job.down, staging / 4);
    this.exports.pack_b(staging, pb, cols, r);
    return { pb, end: staging };
  }

  /**
   * Lay out rows [rowStart, rowEnd) of the job after `base` (the end of packed B) and pack their rows of U.
   * W is not copied yet: see copyIn. W is padded to 4-row × 8-column tiles; padding cells hold NaN so that
   * the kernel counts them as non-finite inputs (`padCells` of them), which the caller subtracts.
   */
  layoutBlock(
    srcDtype: StoredFloat,
    dstDtype: StoredFloat,
    job: UpdateJob,
    pb: number,
    base: number,
    rowStart: number,
    rowEnd: number,
    clamp: boolean,
  ): Block {
    const { rank: r, cols } = job;
    const n = rowEnd - rowStart;
    const rowsP = align(n, 4);
    const colTiles = Math.ceil(cols / 8);
    const colsP = colTiles * 8;
    const ldsrc = colsP * STORED_FLOAT_SIZE[srcDtype];
    const lddst = colsP * STORED_FLOAT_SIZE[dstDtype];
    const pa = align(base, 64);
    const staging = align(pa + rowsP * r * 4, 64);
    const psrc = align(staging + n * r * 4, 64);
    const inPlace = srcDtype === dstDtype;
    const pdst = inPlace ? psrc : align(psrc + rowsP * ldsrc, 64);
    this.ensure((inPlace ? psrc + rowsP * ldsrc : pdst + rowsP * lddst) + 64);

    // A: the block's rows of U, packed 4 rows at a time
    this.f32.set(job.up.subarray(rowStart * r, rowEnd * r), staging / 4);
    this.exports.pack_a(staging, pa, n, r);

    const nc = panelTiles(r);
    return {
      fn: `update_${DT[srcDtype]}_${DT[dstDtype]}`,
      r,
      pa,
      pb,
      psrc,
      ldsrc,
      pdst,
      lddst,
      rowTiles: rowsP / 4,
      colTiles,
      nc,
      clamp: clamp ? 1 : 0,
      padCells: rowsP * colsP - n * cols,
      rowStart,
      rowEnd,
    };
  }

  /** Copy the W rows of row tiles [t0, t1) of a block into wasm memory, NaN-padding the tile edges. */
  copyIn(b: Block, src: Uint8Array, srcDtype: StoredFloat, cols: number, t0: number, t1: number): void {
    this.refresh();
    const ss = STORED_FLOAT_SIZE[srcDtype];
    const n = b.rowEnd - b.rowStart;
    const i0 = 4 * t0;
    const i1 = Math.min(n, 4 * t1);
    const rowBytes = cols * ss;
    if (b.ldsrc === rowBytes) {
      this.u8.set(src.subarray((b.rowStart + i0) * rowBytes, (b.rowStart + i1) * rowBytes), b.psrc + i0 * b.ldsrc);
    } else {
      for (let i = i0; i < i1; i++) {
        const o = (b.rowStart + i) * rowBytes;
        this.u8.set(src.subarray(o, o + rowBytes), b.psrc + i * b.ldsrc);
      }
    }
    const nan = NAN_PATTERN[srcDtype];
    const view = ss === 4 ? this.u32 : this.u16;
    const colsP = b.ldsrc / ss;
    if (colsP !== cols) {
      for (let i = i0; i < i1; i++) {
        const e = (b.psrc + i * b.ldsrc) / ss;
        view.fill(nan, e + cols, e + colsP);
      }
    }
    if (4 * t1 > n) view.fill(nan, (b.psrc + Math.max(i0, n) * b.ldsrc) / ss, (b.psrc + 4 * t1 * b.ldsrc) / ss);
  }

  /** Copy the result rows of row tiles [t0, t1) of a block out into dst. */
  copyOut(b: Block, dst: Uint8Array, dstDtype: StoredFloat, cols: number, t0: number, t1: number): void {
    this.refresh();
    const rowBytes = cols * STORED_FLOAT_SIZE[dstDtype];
    const n = b.rowEnd - b.rowStart;
    const i0 = 4 * t0;
    const i1 = Math.min(n, 4 * t1);
    if (b.lddst === rowBytes) {
      dst.set(this.u8.subarray(b.pdst + i0 * rowBytes, b.pdst + i1 * rowBytes), (b.rowStart + i0) * rowBytes);
    } else {
      for (let i = i0; i < i1; i++) {
        const p = b.pdst + i * b.lddst;
        dst.set(this.u8.subarray(p, p + rowBytes), (b.rowStart + i) * rowBytes);
      }
    }
  }

  /** layoutBlock + copyIn of the whole block. */
  prepareBlock(
    src: Uint8Array,
    srcDtype: StoredFloat,
    dstDtype: StoredFloat,
    job: UpdateJob,
    pb: number,
    base: number,
    rowStart: number,
    rowEnd: number,
    clamp: boolean,
  ): Block {
    const b = this.layoutBlock(srcDtype, dstDtype, job, pb, base, rowStart, rowEnd, clamp);
    this.copyIn(b, src, srcDtype, job.cols, 0, b.rowTiles);
    return b;
  }

  /**
   * Pack the factors of a job for rows [rowStart, rowEnd): D at `base` (DATA_OFFSET by default), then U after it
   * (reusing D's staging area once it is packed). Returns the packed offsets and the end of the bytes used.
   */
  packFactors(
    rank: number,
    up: Float32Array,
    down: Float32Array,
    cols: number,
    rowStart: number,
    rowEnd: number,
    base = DATA_OFFSET,
  ): { pa: number; pb: number; end: number } {
    const n = rowEnd - rowStart;
    const { pb, end: stagingB } = this.packB({ rows: n, cols, rank, up, down }, base);
    const pa = align(stagingB, 64);
    const staging = align(pa + align(n, 4) * rank * 4, 64);
    this.ensure(staging + n * rank * 4 + 64);
    this.f32.set(up.subarray(rowStart * rank, rowEnd * rank), staging / 4);
    this.exports.pack_a(staging, pa, n, rank);
    return { pa, pb, end: Math.max(stagingB + rank * cols * 4, staging + n * rank * 4) };
  }

  /** Write the coefficients s and c of the hadamard_* and kronecker_* functions. */
  setHadamardCoefs(scale: number, coef: number): void {
    const v = new Float64Array(this.memory.buffer, HADAMARD_COEF_OFFSET, 2);
    v[0] = scale;
    v[1] = coef;
  }

  /**
   * The hadamard_* functions' parameters: the two packed pairs (see packFactors) with their ranks, s and c, and
   * the tile scratch (MAX_THREADS · HADAMARD_SCRATCH_BYTES bytes, 16-byte aligned).
   */
  setHadamardParams(
    first: { pa: number; pb: number },
    rank1: number,
    second: { pa: number; pb: number },
    rank2: number,
    scale: number,
    coef: number,
    scratch: number,
  ): void {
    this.setHadamardCoefs(scale, coef);
    const v = new Int32Array(this.memory.buffer, HADAMARD_PARAMS_OFFSET, 7);
    v[0] = first.pa;
    v[1] = first.pb;
    v[2] = rank1;
    v[3] = second.pa;
    v[4] = second.pb;
    v[5] = rank2;
    v[6] = scratch;
  }

  /**
   * Write a LoKr's sides expanded along the columns at `base` (64-byte aligned) for the kronecker_* functions:
   * L [o1, colsP] f64 with L[a, c·n2 + d] = s·left[a, c] (the f64 product the dense path forms), R [o2, colsP] f32
   * with R[b, c·n2 + d] = right[b, d], both zero in the padding columns [cols, colsP). With `unit` (±1, the kronunit_*
   * functions, see kroneckerUnit) L is f32 and holds unit·s·left[a, c]. Returns their offsets and the end of the
   * bytes used.
   */
  setKroneckerSides(k: KroneckerPart, base: number, unit: 0 | 1 | -1 = 0): { pl: number; pr: number; end: number } {
    const { rows: o1, leftCols: i1, rightRows: o2, rightCols: n2, left, right, scale } = k;
    const cols = i1 * n2;
    const colsP = align(Math.max(cols, 1), 8);
    const pl = align(base, 64);
    const pr = align(pl + o1 * colsP * (unit ? 4 : 8), 64);
    const end = pr + o2 * colsP * 4;
    this.ensure(end + 64);
    const l = unit
      ? new Float32Array(this.memory.buffer, pl, o1 * colsP)
      : new Float64Array(this.memory.buffer, pl, o1 * colsP);
    const sign = unit || 1;
    for (let a = 0; a < o1; a++) {
      const row = a * colsP;
      for (let c = 0; c < i1; c++)
        l.fill(sign * (scale * (left[a * i1 + c] as number)), row + c * n2, row + (c + 1) * n2);
      l.fill(0, row + cols, row + colsP);
    }
    const f = this.f32;
    for (let b = 0; b < o2; b++) {
      const row = pr / 4 + b * colsP;
      const src = right.subarray(b * n2, (b + 1) * n2);
      if (n2 >= 16) {
        for (let c = 0; c < i1; c++) f.set(src, row + c * n2);
      } else {
        for (let j = 0; j < cols; j++) f[row + j] = src[j % n2] as number;
      }
      f.fill(0, row + cols, row + colsP);
    }
    return { pl, pr, end };
  }

  /**
   * The kronecker_* functions' parameters for a job: s and c, the expanded sides (see setKroneckerSides), the right
   * side's row count and the tile scratch (MAX_THREADS · HADAMARD_SCRATCH_BYTES bytes, 16-byte aligned).
   */
  setKroneckerParams(
    scale: number,
    coef: number,
    sides: { pl: number; pr: number },
    rightRows: number,
    scratch: number,
  ): void {
    this.setHadamardCoefs(scale, coef);
    const v = new Int32Array(this.memory.buffer, KRONECKER_PARAMS_OFFSET, 3);
    v[0] = sides.pl;
    v[1] = sides.pr;
    v[2] = rightRows;
    new Int32Array(this.memory.buffer, HADAMARD_PARAMS_OFFSET, 7)[6] = scratch;
  }

  /** The global rows [rowStart, rowEnd) of the block the kronecker_* functions run next. */
  setKroneckerRows(rowStart: number, rowEnd: number): void {
    const v = new Int32Array(this.memory.buffer, KRONECKER_PARAMS_OFFSET + 12, 2);
    v[0] = rowStart;
    v[1] = rowEnd;
  }

  /** Zero the count slots [0, slots). */
  resetCounts(slots: number): void {
    this.u32.fill(0, COUNTS_OFFSET / 4, COUNTS_OFFSET / 4 + 2 * slots);
  }

  /** Sum of count slots [0, slots): [non-finite inputs, overflows]. */
  readCounts(slots: number): [number, number] {
    let a = 0;
    let b = 0;
    for (let s = 0; s < slots; s++) {
      a += this.u32[COUNTS_OFFSET / 4 + 2 * s]!;
      b += this.u32[COUNTS_OFFSET / 4 + 2 * s + 1]!;
    }
    return [a, b];
  }

  /** Run row tiles [it0, it1) of a block, counting into slot `slot`. */
  run(b: Block, it0: number, it1: number, slot: number): void {
    runBlock(this.exports, b, it0, it1, slot);
  }

  /** Copy the whole block's result out into dst. */
  finishBlock(b: Block, dst: Uint8Array, dstDtype: StoredFloat, cols: number): void {
    this.copyOut(b, dst, dstDtype, cols, 0, b.rowTiles);
  }
}

/** Call the kernel for row tiles [it0, it1) of a block (also used by worker threads). */
export function runBlock(ex: KernelExports, b: Block, it0: number, it1: number, slot: number): void {
  const fn = ex[b.fn as `update_${string}` | `hadamard_${string}` | `kronecker_${string}` | `kronunit_${string}`];
  if (!fn) throw new FuseError('KERNEL_FAILED', `kernel: the WASM module has no function ${b.fn}`, { found: b.fn });
  fn(
    b.pa,
    b.pb,
    b.r,
    b.psrc,
    b.ldsrc,
    b.pdst,
    b.lddst,
    it0,
    it1,
    0,
    b.colTiles,
    b.nc,
    b.clamp,
    COUNTS_OFFSET + 8 * slot,
  );
}
