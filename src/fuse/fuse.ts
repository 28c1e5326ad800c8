/**
 * fuseLoras: stream a base checkpoint through, adding τ = Σ λᵢ·τᵢ to every weight the LoRAs target.
 *
 * For each output file, tensors go out in the base file's order. Untouched tensors are copied byte for byte (runs
 * of small neighbours are read in one go); a targeted weight is read in its stored dtype and handed to the fusion
 * kernel with the merged factors of its module — U = [λ₁s₁·up₁ | λ₂s₂·up₂ | …], D = [down₁; down₂; …], exactly
 * the factors mergeLoras would give, never a dense delta per input — which computes W + U·D in f32 and rounds once to
 * the output dtype. The next tensor is read while the current one is fused and written, so the disk and the kernel
 * overlap; at most a few tensors' bytes are in memory at any time, whatever the checkpoint's size.
 *
 * Core module: no `node:` imports. Paths and diffusers folders go through ./node.js, loaded on demand.
 */
import ndarray from 'ndarray';
import { allFinite, countNaNStored } from '../core/finite.js';
import { describeValue } from '../lora/validate.js';
import { FormatError, FuseError, IoError, LoraError, OptionError, ArgumentError } from '../core/errors.js';
import { isByteSource, type ByteSink, type ByteSource } from '../core/bytes.js';
import { detectCheckpoint } from '../layout/detect.js';
import type { ModuleEntry } from '../layout/types.js';
import { listSome } from '../formats/decode.js';
import type { MergeWeight } from '../lora/merge.js';
import { decodeToF32, isFloatDType, typedAsBytes } from '../core/dtype.js';
import type { TensorInfo } from '../safetensors/header.js';
import { parseSafetensors, SafetensorsFile } from '../safetensors/read.js';
import { writeSafetensors, type TensorToWrite } from '../safetensors/write.js';
import { DTYPE_SIZE, type DType } from '../core/tensor.js';
import { VERSION } from '../core/version.js';
import { fileNameOf } from '../core/provenance.js';
import { currentFuseHost, type FuseHost } from './host.js';
import {
  locate,
  locateBias,
  locateStateDict,
  whyAbsent,
  type BaseWeightFile,
  type OpenBaseOptions,
  type OpenedBase,
} from './base.js';
import { openInputs, type FactorAlloc, type FuseInput, type InputModule } from './inputs.js';
import { transposedBaseDelta, transposedModule } from './transposed.js';
import { stackFactors, type StackPart } from '../lora/stack.js';
import {
  addTermInto,
  hadamardPairs,
  kroneckerSides,
  termDelta,
  termNeedsBase,
  type AsyncProduct,
} from '../lora/terms/index.js';
import type { Term } from '../lora/types.js';
import { createWasmKernel } from '../kernels/cpu.js';
import { now } from '../kernels/job.js';
import { createGpuKernel } from '../kernels/gpu.js';
import type { FuseKernel, StoredFloat, UpdateJob, UpdateResult } from '../kernels/types.js';
import type { GpuJsClass } from '../kernels/gpu.js';
import { isStoredFloat, STORED_FLOAT_SIZE } from '../kernels/types.js';
import type { BaseInput, FuseDType, FuseOptions, FuseReport, LoraInput } from './types.js';
import { resolveMethod, type ResolvedMethod } from '../lora/methods.js';
import { methodDelta, type MethodMember } from '../lora/method-module.js';

/** Metadata key holding the JSON description of a fusion. */
export const FUSE_METADATA_KEY = 'lora_mix_fuse';

function needFuseHost(what: string): FuseHost {
  const host = currentFuseHost();
  if (host) return host;
  throw new IoError(
    'IO_NO_HOST',
    `${what}: paths and diffusers folders need the Node entry of lora-mix; pass ByteSources and a ByteSink`,
    { file: what },
  );
}

/** Open the base: a SafetensorsFile or ByteSource here, a path (file or folder) through the Node adapter. */
export async function openBase(base: BaseInput, options: OpenBaseOptions = {}): Promise<OpenedBase> {
  if (typeof base === 'string' && base !== '') return needFuseHost(base).openBase(base, options);
  let file: SafetensorsFile;
  if (base instanceof SafetensorsFile) file = base;
  else if (isByteSource(base)) file = await parseSafetensors(base);
  else
    throw new ArgumentError(
      'ARG_INVALID',
      `fuse: the base must be a path, a ByteSource or a SafetensorsFile, found ${describeValue(base)}`,
      { found: describeValue(base) },
    );
  const detection = detectCheckpoint(file.tensors, { source: file.name });
  return {
    name: file.name,
    detection,
    files: [{ file, rel: '', component: null }],
    async close() {
      /* the caller's */
    },
  };
}

// ---- planning --------------------------------------------------------------------------------------------------

export interface FuseTerm {
  readonly input: FuseInput;
  readonly module: InputModule;
  /** lowRank: λ · alpha / rank, folded into up; other kinds: λ, multiplying the dense delta. */
  readonly coef: number;
}

export interface Target {
  readonly path: string;
  /** The module (or norm layer) the target changes. */
  readonly entry: Pick<ModuleEntry, 'path' | 'component' | 'group'>;
  readonly rows: readonly [number, number];
  readonly cols: number;
  readonly terms: readonly FuseTerm[];
  /**
   * A delta-space merge method: the module's dense result from every input that has it (zero weights
   * included: they vote in TIES), added to W directly instead of U·D.
   */
  readonly dense?: {
    readonly method: ResolvedMethod;
    readonly members: readonly { readonly index: number; readonly module: InputModule }[];
    readonly weights: readonly number[];
  };
}

export interface OutTensor {
  readonly info: TensorInfo;
  readonly outDtype: DType;
  readonly mode: 'copy' | 'convert' | 'fuse';
  /** Sorted by first row. */
  readonly targets: readonly Target[];
}

export interface FilePlan {
  readonly base: BaseWeightFile;
  readonly tensors: readonly OutTensor[];
}

const fmt = (s: readonly number[]): string => `[${s.join(', ')}]`;

function outDtypeOf(stored: DType, dtype: FuseDType | undefined): DType {
  if (!dtype || !isFloatDType(stored)) return stored;
  return dtype;
}

export interface Plan {
  readonly files: readonly FilePlan[];
  readonly fused: ReadonlySet<string>;
  readonly byGroup: Record<string, number>;
  readonly unmatched: { key: string; reason: string }[];
}

/** Where every LoRA module lands in the base, checked before anything is written (see fuseLoras). */
export function planFusion(
  base: OpenedBase,
  inputs: readonly FuseInput[],
  options: Pick<FuseOptions, 'allowUnmatched' | 'dtype'>,
  method?: ResolvedMethod,
): Plan {
  refuseUnreadable(base, inputs);
  const layout = base.detection.layout;
  const unmatched: { key: string; reason: string }[] = [];
  for (const input of inputs)
    for (const u of input.unmatched) unmatched.push({ key: `${input.source}: ${u.key}`, reason: u.reason });
  // file index → key → targets
  const perFile = base.files.map(() => new Map<string, Target[]>());
  const fused = new Set<string>();
  const byGroup: Record<string, number> = {};
  const paths = new Set<string>();
  for (const input of inputs) for (const p of input.modules.keys()) paths.add(p);
  // Layout order, so reports and errors read in model order.
  const ordered = layout.modules.filter((e) => paths.has(e.path));
  for (const entry of ordered) {
    const present = inputs.map((input) => ({ input, module: input.modules.get(entry.path) })).filter((x) => x.module);
    let landed = 0;
    let problem: string | null = null;
    const terms: FuseTerm[] = [];
    for (const { input, module } of present) {
      const lambda = input.weightOf(entry.path);
      if (lambda === 0) continue;
      const m = module!;
      terms.push({ input, module: m, coef: m.kind === 'lowRank' ? (lambda * m.alpha) / m.rank : lambda });
    }
    base.files.forEach((f, fi) => {
      const loc = locate(base, f, entry);
      if (!loc) return;
      const info = f.file.get(loc.key);
      if (!info) return;
      const rows: [number, number] = loc.rows ? [loc.rows[0], loc.rows[1]] : [0, info.shape[0] ?? 1];
      const fileRows = info.shape[0] ?? 1;
      const cols = fileRows === 0 ? 0 : info.numel / fileRows;
      // A weight the file stores transposed (OpenCLIP text_projection) takes every update transposed.
      const view = (m: InputModule): InputModule => (loc.transposed ? transposedModule(m) : m);
      for (const { input, module } of present) {
        const m = view(module!);
        if (rows[1] > fileRows || m.out !== rows[1] - rows[0] || m.fanIn !== cols) {
          problem =
            `${input.source}: '${m.name}' changes a ${m.out}×${m.fanIn} weight but the base tensor '${loc.key}' ` +
            `${loc.rows ? `rows ${rows[0]}–${rows[1]} of ${fmt(info.shape)}` : `is ${fmt(info.shape)}${loc.transposed ? ' (stored transposed)' : ''}`}`;
          return;
        }
      }
      if (terms.length > 0) {
        const list = perFile[fi]!.get(loc.key) ?? [];
        const dense =
          method && method.spec.space === 'delta'
            ? {
                method,
                members: present.map(({ input, module }) => ({ index: inputs.indexOf(input), module: view(module!) })),
                weights: inputs.map((input) => (input.modules.has(entry.path) ? input.weightOf(entry.path) : 0)),
              }
            : undefined;
        const placed = loc.transposed ? terms.map((t) => ({ ...t, module: view(t.module) })) : terms;
        list.push({ path: entry.path, entry, rows, cols, terms: placed, ...(dense ? { dense } : {}) });
        perFile[fi]!.set(loc.key, list);
      }
      landed++;
    });
    if (problem !== null) {
      for (const { input, module } of present)
        unmatched.push({ key: `${input.source}: ${module!.name}`, reason: problem });
      // A wrong shape is never silently skipped for some files only.
      for (const m of perFile) {
        for (const [k, list] of m) {
          const kept = list.filter((t) => t.path !== entry.path);
          if (kept.length > 0) m.set(k, kept);
          else m.delete(k);
        }
      }
      continue;
    }
    if (landed === 0) {
      const reason = whyAbsent(base, entry);
      for (const { input, module } of present) unmatched.push({ key: `${input.source}: ${module!.name}`, reason });
      continue;
    }
    if (terms.length > 0) {
      fused.add(entry.path);
      const g = `${entry.component}/${entry.group}`;
      byGroup[g] = (byGroup[g] ?? 0) + 1;
    }
    planBias(base, entry, terms, perFile, unmatched);
  }
  planNormTargets(base, inputs, perFile, fused, byGroup, unmatched);
  if (unmatched.length > 0 && !options.allowUnmatched) {
    const byReason = new Map<string, string[]>();
    for (const u of unmatched) byReason.set(u.reason, [...(byReason.get(u.reason) ?? []), u.key]);
    const parts = [...byReason].slice(0, 3).map(([reason, keys]) => `${reason}: ${listSome(keys, 3)}`);
    if (byReason.size > 3) parts.push(`(+${byReason.size - 3} other reasons)`);
    throw new LoraError(
      'LORA_UNMATCHED_MODULES',
      `fuse: ${unmatched.length} LoRA module(s) have no matching weight in ${base.name} — ${parts.join('; ')}. ` +
        'Nothing was written. Use the base the LoRA was made for, or allowUnmatched / --allow-unmatched to skip them.',
      { base: base.name, unmatched: unmatched.slice(0, 50), count: unmatched.length },
    );
  }
  const files: FilePlan[] = base.files.map((f, fi) => {
    const targetsOf = perFile[fi]!;
    const tensors: OutTensor[] = f.file.tensors.map((info) => {
      const outDtype = outDtypeOf(info.dtype, options.dtype);
      const targets = (targetsOf.get(info.name) ?? []).slice().sort((a, b) => a.rows[0] - b.rows[0]);
      if (targets.length > 0) {
        if (!isStoredFloat(info.dtype) && !(isFloatDType(info.dtype) && options.dtype)) {
          throw new FuseError(
            'FUSE_DTYPE_UNSUPPORTED',
            `fuse: ${f.file.name}: tensor '${info.name}' is ${info.dtype}; fusing writes F32, F16 or BF16 — pass dtype / --dtype to choose one`,
            { file: f.file.name, key: info.name, found: info.dtype },
          );
        }
        if (!isStoredFloat(outDtype)) {
          throw new FuseError('FUSE_DTYPE_UNSUPPORTED', `fuse: output dtype ${outDtype} is not F32, F16 or BF16`, {
            found: outDtype,
          });
        }
        return { info, outDtype, mode: 'fuse' as const, targets };
      }
      return { info, outDtype, mode: outDtype === info.dtype ? ('copy' as const) : ('convert' as const), targets: [] };
    });
    return { base: f, tensors };
  });
  return { files, fused, byGroup, unmatched };
}

const ONE = Float32Array.of(1);

/** A LoRA that changes a folder component holding no safetensors (only pytorch_model.bin …) is refused up front. */
function refuseUnreadable(base: OpenedBase, inputs: readonly FuseInput[]): void {
  for (const u of base.folder?.unreadable ?? []) {
    for (const input of inputs) {
      // Modules and norm-layer differences alike: either would have to land in the unreadable component.
      const touched = [...input.modules.keys(), ...input.norms.keys()].find(
        (p) => p.startsWith(`${u.component}.`) && input.weightOf(p) !== 0,
      );
      if (touched === undefined) continue;
      throw new FormatError(
        'FORMAT_UNKNOWN',
        `fuse: ${input.source} changes ${u.component} (e.g. '${touched}') but ${base.name}/${u.component}/ holds no safetensors weights, only ${u.files.join(', ')}; convert that component to safetensors first (nothing was written)`,
        { file: `${base.name}/${u.component}`, component: u.component, found: u.files, key: touched },
      );
    }
  }
}

/**
 * PEFT bias deltas (lora_B.bias): the module's bias tensor changes by Σ λ·(alpha/r)·bias. Each lands as a rank-1
 * target on the bias tensor (up = the bias column, down = [1]), so the kernels, dtype handling and overflow checks
 * are the weights' own. A base without that bias is an unmatched module.
 */
function planBias(
  base: OpenedBase,
  entry: ModuleEntry,
  terms: readonly FuseTerm[],
  perFile: Map<string, Target[]>[],
  unmatched: { key: string; reason: string }[],
): void {
  const biased = terms.filter((t) => t.module.bias !== undefined);
  if (biased.length === 0) return;
  let landed = 0;
  let problem: string | null = null;
  base.files.forEach((f, fi) => {
    const loc = locateBias(base, f, entry);
    if (!loc) return;
    const info = f.file.get(loc.key);
    if (!info) return;
    const rows: [number, number] = loc.rows ? [loc.rows[0], loc.rows[1]] : [0, info.shape[0] ?? 1];
    const out = biased[0]!.module.out;
    if (info.shape.length !== 1 || rows[1] > (info.shape[0] ?? 0) || rows[1] - rows[0] !== out) {
      problem = `the bias delta has ${out} values but the base tensor '${loc.key}' is ${fmt(info.shape)}`;
      return;
    }
    const biasTerms: FuseTerm[] = biased.map((t) => ({
      input: t.input,
      coef: t.coef,
      module: {
        path: t.module.path,
        kind: 'lowRank',
        rank: 1,
        alpha: 1,
        out,
        fanIn: 1,
        name: `${t.module.name} (bias)`,
        factors: async () => ({ up: await t.module.bias!(), down: ONE }),
        term: async () => ({
          up: ndarray(await t.module.bias!(), [out, 1]),
          down: ndarray(ONE, [1, 1]),
          alpha: 1,
        }),
      },
    }));
    const list = perFile[fi]!.get(loc.key) ?? [];
    list.push({ path: `${entry.path}.bias`, entry, rows, cols: 1, terms: biasTerms });
    perFile[fi]!.set(loc.key, list);
    landed++;
  });
  if (problem === null && landed > 0) return;
  const reason = problem ?? `the base has no bias for '${entry.path}', so its bias delta (lora_B.bias) cannot land`;
  for (const t of biased) unmatched.push({ key: `${t.input.source}: ${t.module.name} (bias)`, reason });
}

/** A 1-D delta as a rank-1 target term (up = the delta column, down = [1]), as bias deltas land. */
function columnTerm(
  input: FuseInput,
  coef: number,
  path: string,
  name: string,
  n: number,
  values: () => Promise<Float32Array>,
): FuseTerm {
  return {
    input,
    coef,
    module: {
      path,
      kind: 'lowRank',
      rank: 1,
      alpha: 1,
      out: n,
      fanIn: 1,
      name,
      factors: async () => ({ up: await values(), down: ONE }),
      term: async () => ({ up: ndarray(await values(), [n, 1]), down: ndarray(ONE, [1, 1]), alpha: 1 }),
    },
  };
}

/**
 * Norm-layer differences (ComfyUI .diff / .diff_b, LyCORIS w_norm / b_norm): the norm's weight and bias change by
 * Σ λ·diff, each landing as rank-1 targets on the 1-D tensor like a bias delta (same kernels, dtype handling and
 * overflow checks). A base without that norm tensor, or with one of another length, is an unmatched module.
 */
function planNormTargets(
  base: OpenedBase,
  inputs: readonly FuseInput[],
  perFile: Map<string, Target[]>[],
  fused: Set<string>,
  byGroup: Record<string, number>,
  unmatched: { key: string; reason: string }[],
): void {
  const layout = base.detection.layout;
  const paths = new Set<string>();
  for (const input of inputs) for (const p of input.norms.keys()) paths.add(p);
  for (const entry of layout.norms.filter((n) => paths.has(n.path))) {
    let applied = false;
    for (const part of ['weight', 'bias'] as const) {
      const s = entry[part];
      const terms: FuseTerm[] = [];
      const named: string[] = [];
      for (const input of inputs) {
        const n = input.norms.get(entry.path);
        const values = n?.[part];
        if (!n || !values) continue;
        named.push(`${input.source}: ${n.name} (${part})`);
        const lambda = input.weightOf(entry.path);
        if (lambda === 0) continue;
        terms.push(columnTerm(input, lambda, entry.path, `${n.name} (${part})`, entry.channels, values));
      }
      if (named.length === 0) continue;
      let landed = 0;
      let problem: string | null = null;
      base.files.forEach((f, fi) => {
        const loc = s ? locateStateDict(base, f, s) : null;
        const info = loc ? f.file.get(loc.key) : undefined;
        if (!loc || !info) return;
        if (info.shape.length !== 1 || info.shape[0] !== entry.channels) {
          problem = `the norm difference has ${entry.channels} values but the base tensor '${loc.key}' is ${fmt(info.shape)}`;
          return;
        }
        if (terms.length > 0) {
          const list = perFile[fi]!.get(loc.key) ?? [];
          list.push({ path: `${entry.path}.${part}`, entry, rows: [0, entry.channels], cols: 1, terms });
          perFile[fi]!.set(loc.key, list);
        }
        landed++;
      });
      if (problem === null && landed > 0) {
        if (terms.length > 0) applied = true;
        continue;
      }
      const reason = problem ?? `the base has no ${part} for the norm layer '${entry.path}'`;
      for (const key of named) unmatched.push({ key, reason });
    }
    if (applied) {
      fused.add(entry.path);
      const g = `${entry.component}/norm`;
      byGroup[g] = (byGroup[g] ?? 0) + 1;
    }
  }
}

// ---- buffers ---------------------------------------------------------------------------------------------------

/** Requests up to this size share buffers of exactly this size (a norm's or a bias's bytes, a run of them). */
const SMALL_BUFFER = 1 << 20;

/**
 * Reusable byte buffers: the streaming loop keeps a handful alive instead of allocating one per tensor. Small
 * requests get buffers of their own size class, so that the many small copies between fused layers never take
 * (and keep in flight) a buffer a layer's weight could have reused; larger ones get the smallest free buffer that
 * fits, and when the pool is full the smallest free buffer makes way for a larger one.
 */
class BufferPool {
  #free: ArrayBuffer[] = [];
  #small: ArrayBuffer[] = [];
  /** How many free buffers of each class are kept. */
  constructor(private readonly keep = 3) {}
  acquire(n: number): Uint8Array {
    if (n <= SMALL_BUFFER) return new Uint8Array(this.#small.pop() ?? new ArrayBuffer(SMALL_BUFFER), 0, n);
    let best = -1;
    for (let i = 0; i < this.#free.length; i++) {
      const b = this.#free[i]!;
      if (b.byteLength >= n && (best < 0 || b.byteLength < this.#free[best]!.byteLength)) best = i;
    }
    if (best >= 0) return new Uint8Array(this.#free.splice(best, 1)[0]!, 0, n);
    // Rounded up to whole MiB so slightly larger tensors later can reuse this buffer.
    return new Uint8Array(new ArrayBuffer(Math.ceil(n / SMALL_BUFFER) * SMALL_BUFFER), 0, n);
  }
  release(b: Uint8Array | null | undefined): void {
    if (!b) return;
    const buf = b.buffer as ArrayBuffer;
    if (buf.byteLength <= SMALL_BUFFER) {
      if (this.#small.length < this.keep) this.#small.push(buf);
      return;
    }
    if (this.#free.length < this.keep) {
      this.#free.push(buf);
      return;
    }
    let smallest = 0;
    for (let i = 1; i < this.#free.length; i++)
      if (this.#free[i]!.byteLength < this.#free[smallest]!.byteLength) smallest = i;
    if (this.#free[smallest]!.byteLength < buf.byteLength) this.#free[smallest] = buf;
  }
}

/** Output files at least this large are written with O_DIRECT by default (Node). */
const DIRECT_MIN_BYTES = 256 << 20;

function fileBytes(fp: FilePlan): number {
  return fp.tensors.reduce((a, t) => a + t.info.numel * DTYPE_SIZE[t.outDtype], 0);
}

/**
 * Read-ahead: beyond the segment being written, segments are started in order until AHEAD_JOBS of them are kernel
 * work (a fused or converted tensor, or rows of one) or their input passes AHEAD_BYTES (the next one always starts).
 * Copies of untouched tensors do not count towards the depth: in SD1.5 / SDXL every fused weight is followed by
 * its bias or a norm, so a depth of one *segment* left the kernel without a queued job after each layer (the next
 * layer's read began only once the current one was written). One job ahead keeps the next layer read, its
 * factors decoded and its kernel job queued while the current one computes; two cost ~35 MB more peak memory
 * (SD1.5) without a measurable gain. The bytes bound keeps memory flat whatever the checkpoint's size
 * (bench/RESULTS.md, "fuse pipeline depth (issue 17, session 5)").
 */
const AHEAD_JOBS = 1;
/** … and (beyond the next one, always started) at most this many input bytes. */
const AHEAD_BYTES = 64 << 20;

/** Copies of consecutive untouched tensors are read together up to this many bytes. */
const RUN_BYTES = 16 << 20;
/**
 * Tensors larger than these are streamed in pieces, each read, converted or fused, and written on its own, so memory
 * does not grow with the largest tensor (SDXL's 126 MB OpenCLIP token embedding, a 250 MB F32 output of it):
 * - copy: a copied tensor by byte ranges;
 * - convert: a converted tensor by row ranges (bytes per row counted at the widest of stored, output and f32);
 * - fuse: a fused tensor by row ranges, only beyond a larger size, so that every SD1.5/SDXL layer (at most ~30 MB)
 *   stays one kernel job whose factors are packed once.
 * The output bytes are the same whatever the limits (every row is computed alone); tests lower them to cut the
 * bundled fixtures' tensors.
 */
export const pieceLimits = { copy: 16 << 20, convert: 16 << 20, fuse: 64 << 20 };

interface Segment {
  readonly first: number;
  readonly last: number;
  readonly start: number;
  readonly end: number;
  /** A piece of one tensor (first === last): its rows (convert, fuse) or its bytes (copy). */
  readonly piece?: { readonly index: number; readonly count: number; readonly rows?: readonly [number, number] };
}

/** Rows of a tensor as the kernel sees it: the first dimension (1 for scalars). */
function rowsOf(info: TensorInfo): number {
  return info.shape[0] ?? 1;
}

/** Rows per piece for a converted or fused tensor; 0 when it is not cut (small, or fused through a dense delta). */
function pieceRows(t: OutTensor): number {
  const rows = rowsOf(t.info);
  if (rows <= 1 || t.mode === 'copy') return 0;
  if (t.targets.some((x) => x.dense !== undefined || hasDense(x))) return 0;
  const cols = t.info.numel / rows;
  const rowBytes = cols * Math.max(DTYPE_SIZE[t.info.dtype], DTYPE_SIZE[t.outDtype], 4);
  const limit = t.mode === 'fuse' ? pieceLimits.fuse : pieceLimits.convert;
  if (rows * rowBytes <= limit) return 0;
  return Math.max(1, Math.floor(limit / rowBytes));
}

/** The pieces of one large tensor: byte ranges of a copy, row ranges otherwise (empty when it stays whole). */
function pieces(t: OutTensor, i: number): Segment[] {
  const { offset, byteLength } = t.info;
  if (t.mode === 'copy') {
    const size = pieceLimits.copy;
    if (byteLength <= size) return [];
    const count = Math.ceil(byteLength / size);
    return Array.from({ length: count }, (_, index) => ({
      first: i,
      last: i,
      start: offset + index * size,
      end: offset + Math.min(byteLength, (index + 1) * size),
      piece: { index, count },
    }));
  }
  const per = pieceRows(t);
  if (per === 0) return [];
  const rows = rowsOf(t.info);
  const rowBytes = byteLength / rows;
  const count = Math.ceil(rows / per);
  return Array.from({ length: count }, (_, index) => {
    const r0 = index * per;
    const r1 = Math.min(rows, r0 + per);
    return {
      first: i,
      last: i,
      start: offset + r0 * rowBytes,
      end: offset + r1 * rowBytes,
      piece: { index, count, rows: [r0, r1] },
    };
  });
}

function segments(tensors: readonly OutTensor[]): Segment[] {
  const out: Segment[] = [];
  let i = 0;
  while (i < tensors.length) {
    const t = tensors[i]!;
    const cut = pieces(t, i);
    if (cut.length > 0) {
      out.push(...cut);
      i++;
      continue;
    }
    let last = i;
    let end = t.info.offset + t.info.byteLength;
    if (t.mode === 'copy') {
      while (last + 1 < tensors.length) {
        const n = tensors[last + 1]!;
        if (n.mode !== 'copy' || n.info.offset !== end || n.info.offset + n.info.byteLength - t.info.offset > RUN_BYTES)
          break;
        last++;
        end = n.info.offset + n.info.byteLength;
      }
    }
    out.push({ first: i, last, start: t.info.offset, end });
    i = last + 1;
  }
  return out;
}

// ---- the run ---------------------------------------------------------------------------------------------------

interface Counters {
  overflow: number;
  /** Tensors with clamped values, as they finish (pieces run concurrently); the report lists them in file order. */
  overflowTensors: { name: string; count: number; run: number; at: number }[];
  /** FileRuns created so far (the ordinal of each file in the output). */
  runs: number;
  nonFinite: number;
  fusedTensors: number;
  copied: number;
  converted: number;
  bytesRead: number;
  bytesWritten: number;
}

const EMPTY = new Float32Array(0);

/**
 * The kernel job of a target: its lowRank terms stacked into one pair of factors (src/lora/stack.ts); the stacked
 * up goes into a buffer from `alloc` when given.
 */
function buildJob(
  t: Target,
  factors: readonly { up: Float32Array; down: Float32Array }[],
  alloc?: FactorAlloc,
): UpdateJob {
  const rows = t.rows[1] - t.rows[0];
  const parts: StackPart[] = [];
  t.terms.forEach((term, i) => {
    if (term.module.kind !== 'lowRank') return;
    const f = factors[i]!;
    const r = term.module.rank;
    if (f.up.length !== rows * r || f.down.length !== r * t.cols) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `fuse: ${term.input.source}: '${term.module.name}' factors hold ${f.up.length} + ${f.down.length} values; expected ${rows * r} + ${r * t.cols}`,
        { file: term.input.source, key: term.module.name },
      );
    }
    parts.push({ coef: term.coef, rank: r, up: f.up, down: f.down });
  });
  const stacked = parts.reduce((a, p) => a + p.rank, 0);
  const { up, down, rank } = stackFactors(parts, rows, t.cols, {
    shareDown: true,
    ...(alloc ? { up: alloc(rows * stacked) } : {}),
  });
  if (!allFinite(up)) {
    // weight · alpha / rank times an up factor beyond f32: no output value can be right, clamped or not.
    const low = t.terms.filter((x) => x.module.kind === 'lowRank');
    const worst = low.reduce((x, y) => (Math.abs(y.coef) > Math.abs(x.coef) ? y : x), low[0] ?? t.terms[0]!);
    throw new FuseError(
      'FUSE_OVERFLOW',
      `fuse: ${worst.input.source}: '${worst.module.name}' scaled by weight·alpha/rank = ${worst.coef} overflows f32 ` +
        '(the weight is too large); nothing was written. Lower the weight.',
      { file: worst.input.source, key: worst.module.name, found: worst.coef, dtype: 'F32' },
    );
  }
  return { rows, cols: t.cols, rank, up, down };
}

/** True when a target has a term fused through its dense delta (every kind but lowRank). */
function hasDense(t: Target): boolean {
  return t.terms.some((x) => x.module.kind !== 'lowRank');
}

/**
 * Add Σ λ·Δ of the target's non-lowRank terms to its rows of W (f32, in place), each element rounded to f32 after
 * each term as before, without a dense delta where the kind allows (addTermInto): a LoHa's two products run on
 * `product` (the kernel's worker threads), a LoKr is written straight into the rows. Every Δ is computed from the
 * rows as they were before any term was added (W0), which DoRA, GLoRA, OFT and BOFT need.
 */
async function addDenseTerms(t: Target, w: Float32Array, product: AsyncProduct): Promise<void> {
  const rows = t.rows[1] - t.rows[0];
  const n = rows * t.cols;
  const view = w.subarray(t.rows[0] * t.cols, t.rows[0] * t.cols + n);
  const dense = t.terms.filter((x) => x.module.kind !== 'lowRank');
  const terms = await Promise.all(dense.map((x) => x.module.term()));
  // W0 is kept apart only when a term's delta depends on it and another term could change the rows first, or the
  // term's add could (a lone OFT reads each value of W0 before writing it: oftAddInto).
  const alone = terms.length === 1 && terms[0]?.kind === 'oft';
  const w0 = terms.some(termNeedsBase) ? (alone ? view : view.slice()) : undefined;
  for (let i = 0; i < dense.length; i++) {
    const term = dense[i]!;
    try {
      if (term.module.transposed) {
        const d = transposedBaseDelta(terms[i]!, t.path, term.coef, w0!, rows, t.cols);
        for (let j = 0; j < n; j++) view[j] = (view[j] as number) + (d[j] as number);
        continue;
      }
      await addTermInto(terms[i]!, t.path, view, term.coef, product, w0);
    } catch (e) {
      if (e instanceof LoraError && e.code === 'LORA_SHAPE_MISMATCH')
        throw new LoraError('LORA_SHAPE_MISMATCH', `fuse: ${term.input.source}: '${term.module.name}': ${e.message}`, {
          file: term.input.source,
          key: term.module.name,
        });
      throw e;
    }
  }
}

/**
 * The term of a tensor the kernel can fuse whole (updateHadamard / updateKronecker): one target over all its rows,
 * no merge method, and exactly one term of another kind than lowRank, a LoHa or a LoKr the kernel takes. Null
 * otherwise (the dense path).
 */
function inKernelTerm(t: OutTensor, kernel: FuseKernel): FuseTerm | null {
  if (t.mode !== 'fuse' || !isStoredFloat(t.info.dtype) || t.targets.length !== 1) return null;
  const target = t.targets[0]!;
  if (target.dense || target.rows[0] !== 0 || target.rows[1] !== (t.info.shape[0] ?? 1)) return null;
  const others = target.terms.filter((x) => x.module.kind !== 'lowRank');
  const only = others.length === 1 ? others[0]! : null;
  if (only?.module.kind === 'hadamard' && kernel.updateHadamard) return only;
  if (only?.module.kind === 'kronecker' && kernel.updateKronecker) return only;
  return null;
}

/** A tensor's state across its pieces: the factors and jobs of its targets, and the counts checked at its end. */
interface TensorState {
  readonly index: number;
  readonly factors: Promise<readonly { up: Float32Array; down: Float32Array }[]>[];
  /** The kernel job of each target cut by pieces, built once for all of them. */
  readonly jobs: Map<number, Promise<UpdateJob>>;
  /** Hands out factor buffers from the run's pool; `borrowed` lists them for release when the tensor is done. */
  readonly alloc: FactorAlloc;
  readonly borrowed: Uint8Array[];
  overflow: number;
  nonFiniteIn: number;
  /** NaN outputs (and the non-finite inputs) of pieces that overflowed, under clamp. */
  nanOut: number;
  nanIn: number;
}

/** The rows [a, b) of a target's job (a row range of its up factor; down is shared). */
function jobRows(job: UpdateJob, a: number, b: number): UpdateJob {
  if (a === 0 && b === job.rows) return job;
  return { ...job, rows: b - a, up: job.up.subarray(a * job.rank, b * job.rank) };
}

class FileRun {
  readonly #segs: Segment[];
  /** The first and last segment of each tensor. */
  readonly #segFirst: Int32Array;
  readonly #segLast: Int32Array;
  readonly #loads = new Map<number, Promise<Uint8Array[]>>();
  readonly #held = new Map<number, Uint8Array[]>();
  readonly #pool = new BufferPool();
  /**
   * Buffers for the LoRA factors (decoded and stacked), reused tensor after tensor: fresh memory costs more than
   * decoding it (page faults, then garbage collection), ~0.7 s per 67 M values here.
   */
  readonly #factorPool = new BufferPool(12);
  #state: TensorState | null = null;
  readonly #ordinal: number;

  constructor(
    private readonly fp: FilePlan,
    private readonly kernel: FuseKernel,
    private readonly clamp: boolean,
    private readonly counters: Counters,
    private readonly label: (key: string) => string,
    private readonly allowNonfiniteBase = false,
  ) {
    this.#ordinal = counters.runs++;
    this.#segs = segments(fp.tensors);
    this.#segFirst = new Int32Array(fp.tensors.length).fill(-1);
    this.#segLast = new Int32Array(fp.tensors.length);
    this.#segs.forEach((s, si) => {
      for (let i = s.first; i <= s.last; i++) {
        if (this.#segFirst[i] === -1) this.#segFirst[i] = si;
        this.#segLast[i] = si;
      }
    });
  }

  /**
   * The output bytes of tensor i (called in order by the writer): one buffer, or for a tensor streamed in pieces
   * the pieces in order (each handed over once the previous one was written).
   */
  async data(i: number): Promise<Uint8Array | AsyncIterable<Uint8Array>> {
    const s0 = this.#segFirst[i] ?? -1;
    const s1 = this.#segLast[i] ?? -1;
    if (s0 !== s1) return this.#pieces(s0, s1);
    const seg = this.#segs[s0]!;
    if (i === seg.first) this.#enter(s0);
    const outs = await this.#loads.get(s0)!;
    return outs[i - seg.first]!;
  }

  async *#pieces(s0: number, s1: number): AsyncGenerator<Uint8Array> {
    for (let si = s0; si <= s1; si++) {
      this.#enter(si);
      const outs = await this.#loads.get(si)!;
      yield outs[0]!;
    }
  }

  /** Segment si is next to be written: everything before it was, so its buffers can be reused; read ahead. */
  #enter(si: number): void {
    for (const [k, bufs] of this.#held) {
      if (k < si) {
        for (const b of bufs) this.#pool.release(b);
        this.#held.delete(k);
      }
    }
    // … and the settled loads of those segments: each still references its output views, which would keep every
    // buffer the pool has let go of alive until the file is done.
    for (const k of this.#loads.keys()) if (k < si) this.#loads.delete(k);
    this.#startAhead(si);
  }

  /**
   * Start segment si and the ones after it, up to AHEAD_JOBS kernel segments or AHEAD_BYTES of their input (always
   * at least the next one): their reads, factor decoding and kernel jobs then run while earlier segments are
   * computed and written. This bounds the bytes in flight whatever the checkpoint's size.
   */
  #startAhead(si: number): void {
    this.#start(si);
    let bytes = 0;
    let jobs = 0;
    for (let j = si + 1; j < this.#segs.length; j++) {
      const seg = this.#segs[j]!;
      bytes += seg.end - seg.start;
      if (j > si + 1 && bytes > AHEAD_BYTES) break;
      this.#start(j);
      if (this.fp.tensors[seg.first]!.mode !== 'copy' && ++jobs >= AHEAD_JOBS) break;
    }
  }

  #start(si: number): void {
    if (this.#loads.has(si)) return;
    const p = this.#load(si);
    p.catch(() => undefined); // reported when its turn comes
    this.#loads.set(si, p);
  }

  /**
   * C = A·B on the fuse kernel (all its threads): 0 + A·B in f32, the kernel job a LoRA's U·D is, so the products
   * equal the terms' own `multiply` (the same WASM kernel on one thread). Buffers come from the pool; `held`
   * receives them for release once the target is done.
   */
  #product(held: Uint8Array[]): AsyncProduct {
    return async (rows, cols, rank, a, b) => {
      const bytes = this.#pool.acquire(rows * cols * 4);
      held.push(bytes);
      bytes.fill(0);
      await this.kernel.update(bytes, 'F32', bytes, 'F32', { rows, cols, rank, up: a, down: b });
      return new Float32Array(bytes.buffer, bytes.byteOffset, rows * cols);
    };
  }

  /** Wait for reads still in flight (after a failure) so files can be closed safely. */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.#loads.values()]);
  }

  async #read(start: number, n: number): Promise<Uint8Array> {
    const src = this.fp.base.file.source;
    const buf = this.#pool.acquire(n);
    if (n > 0) {
      if (src.readInto) await src.readInto(start, buf);
      else buf.set(await src.read(start, start + n));
    }
    this.counters.bytesRead += n;
    return buf;
  }

  /** The per-tensor state of tensor i, started (its modules' factors requested) by its first segment. */
  #stateOf(i: number): TensorState {
    if (this.#state?.index === i) return this.#state;
    const borrowed: Uint8Array[] = [];
    const alloc: FactorAlloc = (n) => {
      const b = this.#factorPool.acquire(n * 4);
      borrowed.push(b);
      return new Float32Array(b.buffer, b.byteOffset, n);
    };
    const factors = this.fp.tensors[i]!.targets.map((t) =>
      Promise.all(
        t.terms.map((term) =>
          term.module.kind === 'lowRank' ? term.module.factors(alloc) : Promise.resolve({ up: EMPTY, down: EMPTY }),
        ),
      ),
    );
    for (const p of factors) p.catch(() => undefined);
    this.#state = {
      index: i,
      factors,
      jobs: new Map(),
      alloc,
      borrowed,
      overflow: 0,
      nonFiniteIn: 0,
      nanOut: 0,
      nanIn: 0,
    };
    return this.#state;
  }

  /**
   * A converted or fused tensor is done (every piece computed): its factor buffers go back to the pool, once no
   * read can still be writing into them (a method's target never awaits its kernel factors).
   */
  async #releaseFactors(state: TensorState): Promise<void> {
    await Promise.allSettled(state.factors);
    for (const b of state.borrowed.splice(0)) this.#factorPool.release(b);
  }

  async #load(si: number): Promise<Uint8Array[]> {
    const seg = this.#segs[si]!;
    const first = this.fp.tensors[seg.first]!;
    if (first.mode === 'copy') {
      const buf = await this.#read(seg.start, seg.end - seg.start);
      this.#held.set(si, [buf]);
      if (seg.piece) {
        if (seg.piece.index === seg.piece.count - 1) this.counters.copied++;
        return [buf];
      }
      const outs: Uint8Array[] = [];
      for (let i = seg.first; i <= seg.last; i++) {
        const t = this.fp.tensors[i]!.info;
        outs.push(buf.subarray(t.offset - seg.start, t.offset - seg.start + t.byteLength));
        this.counters.copied++;
      }
      return outs;
    }
    // One tensor (or rows of one) to convert or fuse: read it; its modules' factors are read alongside.
    const state = this.#stateOf(seg.first);
    const raw = await this.#read(seg.start, seg.end - seg.start);
    const held = [raw];
    this.#held.set(si, held);
    const dst = await this.#update(first, state, raw, held, seg.piece?.rows ?? [0, rowsOf(first.info)]);
    if (seg.piece && seg.piece.index === seg.piece.count - 1) {
      // Pieces run concurrently (one ahead): the tensor's counts are complete once every earlier piece is done.
      const earlier: Promise<unknown>[] = [];
      for (let k = si - seg.piece.index; k < si; k++) earlier.push(this.#loads.get(k) ?? Promise.resolve());
      await Promise.all(earlier);
    }
    if (!seg.piece || seg.piece.index === seg.piece.count - 1) {
      this.#finishTensor(first, state);
      await this.#releaseFactors(state);
    }
    return [dst];
  }

  /** Convert or fuse rows [w0, w1) of tensor `first`, whose stored bytes are `raw`; returns the output bytes. */
  async #update(
    first: OutTensor,
    state: TensorState,
    raw: Uint8Array,
    held: Uint8Array[],
    [w0, w1]: readonly [number, number],
  ): Promise<Uint8Array> {
    const info = first.info;
    // A whole tensor changed by one LoHa or LoKr (and any LoRAs) goes to the kernel whole: the term's delta is
    // formed and added where the kernel keeps W, then rounded once.
    const whole = w0 === 0 && w1 === rowsOf(info);
    const loha = whole ? inKernelTerm(first, this.kernel) : null;
    const lohaTerm = loha ? loha.module.term() : null;
    lohaTerm?.catch(() => undefined);
    let src = raw;
    let srcDtype: StoredFloat;
    const dense = !loha && first.targets.some(hasDense);
    if (dense) {
      // Kinds fused through a dense delta (never cut in pieces): W0 to f32 once; the kernel then rounds W0 + Σλ·Δ + U·D once.
      const decoded = decodeToF32(info.dtype, raw, info.name);
      const w = info.dtype === 'F32' || info.dtype === 'F64' ? decoded.slice() : decoded;
      const products: Uint8Array[] = [];
      try {
        for (const t of first.targets) if (hasDense(t) && !t.dense) await addDenseTerms(t, w, this.#product(products));
      } finally {
        for (const b of products) this.#pool.release(b);
      }
      src = typedAsBytes(w);
      srcDtype = 'F32';
    } else if (isStoredFloat(info.dtype)) {
      srcDtype = info.dtype;
    } else {
      src = typedAsBytes(decodeToF32(info.dtype, raw, info.name));
      srcDtype = 'F32';
    }
    const dstDtype = first.outDtype as StoredFloat;
    const rows = w1 - w0;
    const cols = rowsOf(info) === 0 ? 0 : info.numel / rowsOf(info);
    let dst = src;
    if (dstDtype !== srcDtype) {
      dst = this.#pool.acquire(rows * cols * STORED_FLOAT_SIZE[dstDtype]);
      held.push(dst);
    }
    const sRow = cols * STORED_FLOAT_SIZE[srcDtype];
    const dRow = cols * STORED_FLOAT_SIZE[dstDtype];
    let overflow = 0;
    let nonFiniteIn = 0;
    /** Rows [r0, r1) of this window (window-relative) through the kernel. */
    const run = async (r0: number, r1: number, job: UpdateJob): Promise<void> => {
      if (r1 <= r0) return;
      const res = await this.kernel.update(
        src.subarray(r0 * sRow, r1 * sRow),
        srcDtype,
        dst.subarray(r0 * dRow, r1 * dRow),
        dstDtype,
        job,
        { clamp: this.clamp },
      );
      overflow += res.overflow;
      nonFiniteIn += res.nonFiniteInput;
      this.counters.nonFinite += res.nonFiniteInput;
    };
    const runLoha = async (
      t: Target,
      factors: readonly { up: Float32Array; down: Float32Array }[],
      term: FuseTerm,
      h: Term,
    ): Promise<void> => {
      const job = buildJob(t, factors, state.alloc);
      const opts = { clamp: this.clamp };
      let res: UpdateResult;
      if (h.kind === 'hadamard') {
        const { a, b } = hadamardPairs(h, t.path);
        const part = { a, b, scale: h.scale, coef: term.coef };
        res = await this.kernel.updateHadamard!(src, srcDtype, dst, dstDtype, job, part, opts);
      } else if (h.kind === 'kronecker') {
        const part = { ...kroneckerSides(h, t.path), scale: h.scale, coef: term.coef };
        res = await this.kernel.updateKronecker!(src, srcDtype, dst, dstDtype, job, part, opts);
      } else {
        throw new LoraError('LORA_SHAPE_MISMATCH', `fuse: '${term.module.name}' is not a LoHa or LoKr term`, {
          key: term.module.name,
        });
      }
      overflow += res.overflow;
      nonFiniteIn += res.nonFiniteInput;
      this.counters.nonFinite += res.nonFiniteInput;
    };
    const convert = (r0: number, r1: number): Promise<void> =>
      dst === src ? Promise.resolve() : run(r0, r1, { rows: r1 - r0, cols, rank: 0, up: EMPTY, down: EMPTY });
    // A method's dense result: W + Δ in f32 on this thread, then the kernel's rank-0 pass rounds it once.
    const addDense = async (t: Target): Promise<void> => {
      const { method, members, weights } = t.dense!;
      const [r0, r1] = t.rows;
      const rowsT = r1 - r0;
      const w = Float32Array.from(decodeToF32(srcDtype, src.subarray(r0 * sRow, r1 * sRow), info.name));
      const got: MethodMember[] = await Promise.all(
        members.map(async (m): Promise<MethodMember> => {
          if (m.module.transposed)
            return { input: m.index, delta: transposedBaseDelta(await m.module.term(), t.path, 1, w, rowsT, cols) };
          if (m.module.kind !== 'lowRank')
            return { input: m.index, delta: termDelta(await m.module.term(), t.path, w) };
          const f = await m.module.factors();
          return { input: m.index, scale: m.module.alpha / m.module.rank, rank: m.module.rank, up: f.up, down: f.down };
        }),
      );
      const delta = methodDelta({
        path: t.path,
        out: rowsT,
        fanIn: cols,
        members: got,
        weights,
        method: method.method,
        params: method.params,
      });
      for (let i = 0; i < w.length; i++) w[i] = (w[i] ?? 0) + (delta[i] ?? 0);
      const res = await this.kernel.update(
        typedAsBytes(w),
        'F32',
        dst.subarray(r0 * dRow, r1 * dRow),
        dstDtype,
        { rows: rowsT, cols, rank: 0, up: EMPTY, down: EMPTY },
        { clamp: this.clamp },
      );
      overflow += res.overflow;
      nonFiniteIn += res.nonFiniteInput;
      this.counters.nonFinite += res.nonFiniteInput;
    };
    let cursor = 0;
    for (let ti = 0; ti < first.targets.length; ti++) {
      const t = first.targets[ti]!;
      // The target's rows inside this window, window-relative.
      const a = Math.max(t.rows[0], w0) - w0;
      const b = Math.min(t.rows[1], w1) - w0;
      if (b <= a) continue;
      await convert(cursor, a);
      if (t.dense) await addDense(t);
      else if (loha && lohaTerm) await runLoha(t, await state.factors[ti]!, loha, await lohaTerm);
      else {
        let job = state.jobs.get(ti);
        if (!job) {
          job = state.factors[ti]!.then((f) => buildJob(t, f, state.alloc));
          // Kept for the target's other pieces (a whole target has none).
          if (w0 > t.rows[0] || w1 < t.rows[1]) state.jobs.set(ti, job);
        }
        await run(a, b, jobRows(await job, a + w0 - t.rows[0], b + w0 - t.rows[0]));
      }
      cursor = b;
    }
    await convert(cursor, rows);
    state.overflow += overflow;
    state.nonFiniteIn += nonFiniteIn;
    if (overflow > 0 && this.clamp) {
      state.nanOut += countNaNStored(dst, dstDtype);
      state.nanIn += nonFiniteIn;
    }
    return dst;
  }

  /** After a converted or fused tensor's last piece: count it, and refuse what cannot be written. */
  #finishTensor(first: OutTensor, state: TensorState): void {
    const info = first.info;
    const { overflow, nonFiniteIn } = state;
    if (first.mode === 'fuse' && nonFiniteIn > 0 && !this.allowNonfiniteBase)
      throw this.nonFiniteBase(info.name, nonFiniteIn);
    if (first.mode === 'fuse') this.counters.fusedTensors++;
    else this.counters.converted++;
    if (overflow === 0) return;
    const dstDtype = first.outDtype;
    const name = this.label(info.name);
    this.counters.overflow += overflow;
    this.counters.overflowTensors.push({ name, count: overflow, run: this.#ordinal, at: info.offset });
    // Clamping maps ±Inf to ±max; a NaN (Inf − Inf in the sum) has no sign to clamp to, so it stays an error.
    const undefinedValues = this.clamp ? state.nanOut - state.nanIn : 0;
    if (undefinedValues > 0) {
      throw new FuseError(
        'FUSE_OVERFLOW',
        `fuse: ${undefinedValues} value(s) of '${name}' are NaN after adding the LoRAs (terms beyond the f32 range cancel, ` +
          `Inf − Inf), so they cannot be clamped — nothing was written. Lower the weights.`,
        { key: name, count: undefinedValues, dtype: dstDtype },
      );
    }
    if (!this.clamp) {
      throw new FuseError(
        'FUSE_OVERFLOW',
        `fuse: ${overflow} value(s) of '${name}' do not fit ${dstDtype} (largest finite ${dstDtype === 'F16' ? '65504' : dstDtype === 'BF16' ? '3.39e38' : '3.40e38'}) ` +
          `after adding the LoRAs — nothing was written. Lower the weights, write F32 (--dtype f32), or clamp (--on-overflow clamp).`,
        { key: name, count: overflow, dtype: dstDtype },
      );
    }
  }

  /** A touched base tensor that holds NaN / ±Inf before anything is added (see FuseOptions.allowNonfiniteBase). */
  nonFiniteBase(key: string, count: number): FormatError {
    const file = this.fp.base.file.name;
    return new FormatError(
      'FORMAT_NONFINITE',
      `fuse: ${file}: the base tensor '${this.label(key)}' holds ${count} NaN/±Inf value(s) before the LoRAs are added; ` +
        'the fused weight would carry them silently — nothing was written. Repair the base, or pass allowNonfiniteBase / ' +
        '--allow-nonfinite-base to fuse anyway (those values stay NaN/Inf).',
      { file, key, count },
    );
  }
}

function peakRss(): number | undefined {
  const p = (globalThis as { process?: { resourceUsage?: () => { maxRSS: number } } }).process;
  try {
    return p?.resourceUsage ? p.resourceUsage().maxRSS * 1024 : undefined;
  } catch {
    return undefined;
  }
}

interface KernelChoice {
  kernel: FuseKernel;
  owned: boolean;
  backend: string;
  fellBack: boolean;
  reason?: string;
}

async function chooseKernel(options: FuseOptions): Promise<KernelChoice> {
  if (options.kernel) return { kernel: options.kernel, owned: false, backend: options.kernel.backend, fellBack: false };
  const cpu = async (): Promise<FuseKernel> => {
    const host = currentFuseHost();
    return host ? host.createCpuKernel(options.threads) : createWasmKernel();
  };
  if (options.device === undefined || options.device === 'cpu') {
    const kernel = await cpu();
    return { kernel, owned: true, backend: kernel.backend, fellBack: false };
  }
  if (options.device !== 'gpu') {
    throw new OptionError('OPTION_INVALID', `fuse: device must be 'cpu' or 'gpu', found '${String(options.device)}'`, {
      option: 'device',
      found: options.device,
    });
  }
  const fallback = await cpu();
  try {
    const r = await createGpuKernel({ fallback, ...(options.GPU ? { GPU: options.GPU as GpuJsClass } : {}) });
    if (r.kernel !== fallback) await fallback.dispose();
    return {
      kernel: r.kernel,
      owned: true,
      backend: r.backend,
      fellBack: r.fellBack,
      ...(r.reason ? { reason: r.reason } : {}),
    };
  } catch (e) {
    await fallback.dispose();
    throw e;
  }
}

/**
 * Fuse Σ weightᵢ·τᵢ into a base checkpoint and write the result. See FuseOptions for the choices and FuseReport for
 * what comes back. Fails before writing anything when a LoRA does not fit the base (ARCH_MISMATCH,
 * LORA_UNMATCHED_MODULES); fails without leaving output on overflow (FUSE_OVERFLOW, unless onOverflow is 'clamp'),
 * on I/O errors and on bad input.
 */
export async function fuseLoras(
  base: BaseInput,
  loras: readonly LoraInput[],
  weights: readonly MergeWeight[],
  options: FuseOptions,
): Promise<FuseReport> {
  const t0 = now();
  if (
    !options ||
    (typeof options.out !== 'string' && typeof (options.out as ByteSink | undefined)?.write !== 'function')
  ) {
    throw new ArgumentError('ARG_INVALID', 'fuse: options.out must be a path or a ByteSink', {
      option: 'out',
      found: describeValue(options.out),
    });
  }
  if (options.dtype !== undefined && !isStoredFloat(options.dtype)) {
    throw new OptionError('OPTION_INVALID', `fuse: dtype must be F32, F16 or BF16, found '${String(options.dtype)}'`, {
      option: 'dtype',
      found: options.dtype,
    });
  }
  if (options.onOverflow !== undefined && options.onOverflow !== 'error' && options.onOverflow !== 'clamp') {
    throw new OptionError(
      'OPTION_INVALID',
      `fuse: onOverflow must be 'error' or 'clamp', found '${String(options.onOverflow)}'`,
      { option: 'onOverflow', found: options.onOverflow },
    );
  }
  const method = resolveMethod(options, loras.length, 'fuse');
  const opened = await openBase(base, options.rootCheckpoint ? { rootCheckpoint: options.rootCheckpoint } : {});
  let inputs: FuseInput[] = [];
  let choice: KernelChoice | null = null;
  const runs: FileRun[] = [];
  try {
    const d = opened.detection;
    inputs = await openInputs(loras, weights, d.arch, d.size, options.allowUnmatched === true);
    const p = planFusion(opened, inputs, options, method);
    if (p.fused.size === 0) {
      throw new LoraError(
        'LORA_EMPTY',
        `fuse: no module of the LoRA(s) changes ${opened.name} (every weight is 0, or no module lands on a base weight${p.unmatched.length > 0 ? `; ${p.unmatched.length} unmatched` : ''}); the output would be a copy of the base — nothing was written`,
        { count: 0, unmatched: p.unmatched.length },
      );
    }
    if (opened.folder && typeof options.out !== 'string') {
      throw new IoError('IO_WRITE_FAILED', 'fuse: a diffusers folder is written to a folder path, not a ByteSink', {
        base: opened.name,
      });
    }
    if (!opened.folder && opened.files.length !== 1)
      throw new IoError('IO_WRITE_FAILED', 'fuse: internal: several files without a folder', {});
    choice = await chooseKernel(options);
    const counters: Counters = {
      overflow: 0,
      overflowTensors: [],
      runs: 0,
      nonFinite: 0,
      fusedTensors: 0,
      copied: 0,
      converted: 0,
      bytesRead: 0,
      bytesWritten: 0,
    };
    const clamp = options.onOverflow === 'clamp';
    const fuseMeta = JSON.stringify({
      version: VERSION,
      // File names only: a written file never records where its inputs lived.
      base: fileNameOf(opened.name),
      loras: inputs.map((x) => ({ source: fileNameOf(x.source), format: x.format, weight: x.weightLabel })),
      dtype: options.dtype ?? 'as stored',
      onOverflow: clamp ? 'clamp' : 'error',
      ...(method.method !== 'concat'
        ? {
            method: method.method,
            ...Object.fromEntries(method.spec.params.map((name) => [name, method.params[name]])),
          }
        : {}),
    });
    const refuse: (ByteSource | string)[] = [
      ...opened.files.map((f) => f.file.source),
      ...loras.filter((l): l is string | ByteSource => typeof l === 'string' || isByteSource(l)),
      ...loras.filter((l): l is SafetensorsFile => l instanceof SafetensorsFile).map((l) => l.source),
      // A LoRA loaded into memory still names its file: never write over it either.
      ...loras
        .map((l) => (l as { source?: unknown }).source)
        .filter((x): x is string => typeof x === 'string' && x !== ''),
    ];
    const bytesTotal = p.files.reduce(
      (a, f) => a + f.tensors.reduce((b, t) => b + t.info.numel * DTYPE_SIZE[t.outDtype], 0),
      0,
    );
    const tensorsTotal = p.files.reduce((a, f) => a + f.tensors.length, 0);
    let tensorsDone = 0;
    const writeFile = async (fp: FilePlan, target: string | ByteSink): Promise<void> => {
      const label = (key: string): string => (fp.base.rel ? `${fp.base.rel}: ${key}` : key);
      const run = new FileRun(fp, choice!.kernel, clamp, counters, label, options.allowNonfiniteBase === true);
      runs.push(run);
      const tensors: TensorToWrite[] = fp.tensors.map((t, i) => ({
        name: t.info.name,
        dtype: t.outDtype,
        shape: t.info.shape,
        data: () => run.data(i),
      }));
      const metadata = {
        ...fp.base.file.metadata,
        ...(options.metadata ?? {}),
        [FUSE_METADATA_KEY]: fuseMeta,
        lora_mix_version: VERSION,
      };
      const late = options.lateMetadata;
      const res = await writeSafetensors(target, tensors, {
        metadata,
        ...(late
          ? {
              lateMetadata: async () => ({
                ...fp.base.file.metadata,
                ...(options.metadata ?? {}),
                ...(await late()),
                [FUSE_METADATA_KEY]: fuseMeta,
                lora_mix_version: VERSION,
              }),
            }
          : {}),
        direct: options.directIO ?? fileBytes(fp) >= DIRECT_MIN_BYTES,
        fsync: options.fsync !== false,
        refuseOverwrite: refuse,
        onTensor: (info) => {
          tensorsDone++;
          counters.bytesWritten += info.byteLength;
          options.onProgress?.({
            tensorsDone,
            tensorsTotal,
            bytesDone: counters.bytesWritten,
            bytesTotal,
            seconds: now() - t0,
            current: label(info.name),
          });
        },
      });
      counters.bytesWritten += res.headerLength + 8;
    };
    if (opened.folder) {
      const node = needFuseHost(opened.name);
      await node.writeFolder(opened, options.out as string, async (dir) => {
        for (const fp of p.files) await writeFile(fp, node.joinPath(dir, fp.base.rel));
      });
    } else {
      await writeFile(p.files[0]!, options.out);
    }
    const stats = choice.kernel.stats;
    const seconds = now() - t0;
    const rss = peakRss();
    return {
      base: opened.name,
      out: typeof options.out === 'string' ? options.out : options.out.name,
      arch: d.arch,
      size: d.size,
      naming: d.naming,
      inputs: inputs.map((x) => ({
        source: x.source,
        weight: x.weightLabel,
        format: x.format,
        modules: x.modules.size,
      })),
      ...(method.method !== 'concat'
        ? {
            method: {
              name: method.method,
              params: Object.fromEntries(method.spec.params.map((name) => [name, method.params[name]])),
            },
          }
        : {}),
      modulesFused: p.fused.size,
      byGroup: p.byGroup,
      unmatched: p.unmatched,
      notes: [...(opened.folder?.notes ?? [])],
      embeddingsSkipped: inputs.flatMap((x) => x.embeddings.map((k) => `${x.source}: ${k}`)),
      tensors: {
        total: tensorsTotal,
        fused: counters.fusedTensors,
        copied: counters.copied,
        converted: counters.converted,
      },
      overflow: {
        total: counters.overflow,
        tensors: [...counters.overflowTensors]
          .sort((a, b) => a.run - b.run || a.at - b.at)
          .map(({ name, count }) => ({ name, count })),
      },
      nonFiniteInput: counters.nonFinite,
      kernel: choice.kernel.name,
      backend: choice.backend,
      fellBack: choice.fellBack,
      ...(choice.reason ? { fallbackReason: choice.reason } : {}),
      seconds,
      kernelSeconds: stats.seconds,
      flops: stats.flops,
      gflops: stats.seconds > 0 ? stats.flops / stats.seconds / 1e9 : 0,
      bytesRead: counters.bytesRead,
      bytesWritten: counters.bytesWritten,
      ...(rss !== undefined ? { peakRssBytes: rss } : {}),
      outputDtype: options.dtype ?? 'as stored',
    };
  } finally {
    await Promise.allSettled(runs.map((r) => r.settle()));
    if (choice?.owned) await choice.kernel.dispose().catch(() => undefined);
    await Promise.allSettled(inputs.map((x) => x.close()));
    await opened.close();
  }
}
