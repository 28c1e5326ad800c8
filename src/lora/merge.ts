/**
 * Weighted sums of LoRAs: τ = Σ λᵢ·τᵢ, module by module.
 *
 * Exact by default: a module's terms are concatenated along the rank axis,
 *   up' = [λ₁s₁·up₁ | λ₂s₂·up₂ | …],  down' = [down₁; down₂; …],  alpha' = r' = Σ rᵢ  (sᵢ = alphaᵢ / rᵢ),
 * so up'·down' = Σ λᵢ sᵢ upᵢ·downᵢ = Σ λᵢ Δᵢ with no cross terms and no approximation, for any ranks, alphas and
 * signs. A target rank (or a minimum fraction of the norm) replaces a module's factors by the best
 * approximation of that rank (src/lora/reduce.ts), computed from the factors.
 */
import ndarray from 'ndarray';
import ops from 'ndarray-ops';
import { stackFactors } from './stack.js';
import { mergeNorms } from './norms.js';
import { asLowRank } from './terms/index.js';
import { ArchError, LoraError, ArgumentError, OptionError } from '../core/errors.js';
import { getLayout } from '../layout/index.js';
import type { Arch, Layout, LayoutSize } from '../layout/types.js';
import { VERSION } from '../core/version.js';
import { fileNameOf } from '../core/provenance.js';
import { compileBlockWeights, type BlockSpec, type BlockWeights } from './blocks.js';
import {
  checkComponents,
  componentFactor,
  describeComponents,
  hasComponents,
  type ComponentStrengths,
} from './components.js';
import { contiguousValues, moduleDims, type ModuleDims } from './delta.js';
import { RankReducer, reduceModule, type FactorTerm, type RankTarget, type ReduceOutcome } from './reduce.js';
import { METHODS, resolveMethod, type MethodOptions, type ResolvedMethod } from './methods.js';
import { DenseScratch, methodModule, type MethodModuleRequest } from './method-module.js';
import type { F32Array, Lora, LoraModule, StoredTensor, Term } from './types.js';
import { assertLoraList } from './validate.js';

/**
 * A merge weight: a plain number, or an object with an overall weight (default 1), per-block multipliers and/or
 * per-component strengths (`{ unet: 0.8, te: 0.5 }`, te1/te2 separately); a module's weight is the product.
 */
export type MergeWeight = number | BlockWeights | WeightSpec;

/** The object form of a merge weight (every part optional). */
export interface WeightSpec extends ComponentStrengths {
  readonly weight?: number;
  readonly blocks?: BlockSpec;
}

export interface MergeBaseOptions extends RankTarget {
  /**
   * Reduce every module to at most this rank (Eckart–Young optimal). Modules whose exact rank is already ≤ rank
   * keep their exact factors.
   */
  readonly rank?: number;
  /**
   * 0 < minEnergy ≤ 1: per module, the smallest rank k with ‖Δ_k‖_F / ‖Δ‖_F ≥ minEnergy (the fraction of the
   * delta's Frobenius norm kept — the norm, not its square). With `rank` as well, rank caps k.
   */
  readonly minEnergy?: number;
  /** Called after every module with (modules done, modules in total). */
  readonly onProgress?: (done: number, total: number) => void;
}

/**
 * Merge options: the rank target, plus the merge method and that method's parameters (docs/methods.md). Without
 * `method` the merge is `concat`, the exact sum. Delta-space methods (ties, dare_linear, dare_ties,
 * magnitude_prune, slerp) need `rank`.
 */
export type MergeOptions = MergeBaseOptions & (MethodOptions | { readonly method?: undefined });

/** What happened to one module. */
export interface ModuleMergeReport {
  readonly path: string;
  /** Indices of the inputs that contributed (non-zero weight). */
  readonly inputs: readonly number[];
  /** Rank of the exact sum: Σ of the contributing ranks. */
  readonly rankBefore: number;
  /** Rank written (0 when the module was dropped). */
  readonly rankAfter: number;
  /** ‖Δ_written‖_F / ‖Δ_exact‖_F: 1 for exact modules. */
  readonly normKept: number;
  /** ‖Δ_exact − Δ_written‖_F = sqrt(Σ discarded σ²): 0 for exact modules. */
  readonly error: number;
  /** ‖Δ_exact‖_F, when the spectrum was computed (rank reduction requested). */
  readonly norm?: number;
  /** Why the module is absent from the result. */
  readonly dropped?: 'zero-weight' | 'zero-delta';
  /**
   * The weight delta is exactly zero but the module's bias delta is not: the module is kept as zero rank-1 factors
   * carrying the bias delta, so the bias change is not lost with it.
   */
  readonly biasOnly?: true;
}

export interface MergeReport {
  readonly modules: readonly ModuleMergeReport[];
  /** Modules in the result. */
  readonly written: number;
  /** Modules left out: every contributing weight was exactly 0, or the summed delta is numerically zero. */
  readonly dropped: readonly { readonly path: string; readonly reason: 'zero-weight' | 'zero-delta' }[];
  readonly rankBefore: { readonly min: number; readonly max: number; readonly mean: number };
  readonly rankAfter: { readonly min: number; readonly max: number; readonly mean: number };
  /** Mean and minimum of normKept over written modules. */
  readonly meanNormKept: number;
  readonly minNormKept: number;
  /** sqrt(Σ error²) / sqrt(Σ norm²) over the modules whose norm was computed (0 when none was). */
  readonly relativeError: number;
  /** True when every written module is the exact weighted sum. */
  readonly exact: boolean;
}

export interface MergeResult {
  readonly lora: Lora;
  readonly report: MergeReport;
}

/** Metadata key holding the JSON description of the merge (inputs, weights, options, version). */
export const MERGE_METADATA_KEY = 'lora_mix_merge';
export const VERSION_METADATA_KEY = 'lora_mix_version';

const fmt = (shape: readonly number[]): string => `[${shape.join(', ')}]`;

function nameOf(lora: Lora<Term>, i: number): string {
  const source = (lora as { source?: unknown }).source;
  return typeof source === 'string' && source !== '' ? `input ${i + 1} (${source})` : `input ${i + 1}`;
}

function checkOptions(options: MergeOptions): RankTarget | null {
  const { rank, minEnergy } = options;
  if (rank !== undefined && (typeof rank !== 'number' || !Number.isInteger(rank) || rank < 1)) {
    throw new OptionError('OPTION_INVALID', `merge: rank must be an integer ≥ 1, found ${String(rank)}`, {
      found: rank,
    });
  }
  if (minEnergy !== undefined && (typeof minEnergy !== 'number' || !(minEnergy > 0 && minEnergy <= 1))) {
    throw new OptionError(
      'OPTION_INVALID',
      `merge: minEnergy is the fraction of each delta's Frobenius norm to keep and must be in (0, 1], found ${String(minEnergy)}`,
      { found: minEnergy },
    );
  }
  if (rank === undefined && minEnergy === undefined) return null;
  return { ...(rank !== undefined ? { rank } : {}), ...(minEnergy !== undefined ? { minEnergy } : {}) };
}

/**
 * One input's weight as λ(path) (weight × block multiplier), checked. `name` names the input and `op` the operation
 * ('merge', 'fuse') in errors.
 */
export function compileWeight(
  w: MergeWeight,
  arch: Arch,
  size: LayoutSize,
  name: string,
  op = 'merge',
): (path: string) => number {
  if (typeof w === 'number') {
    if (!Number.isFinite(w)) {
      throw new ArgumentError('ARG_INVALID', `${op}: the weight of ${name} must be a finite number, found ${w}`, {
        key: name,
        found: w,
      });
    }
    return () => w;
  }
  if (w === null || typeof w !== 'object' || !('blocks' in w || 'weight' in w || hasComponents(w))) {
    throw new ArgumentError(
      'ARG_INVALID',
      `${op}: the weight of ${name} must be a number or { weight?, blocks?, unet?, te?, te1?, te2? }, found ${JSON.stringify(w)}`,
      { key: name, found: w },
    );
  }
  const spec = w as WeightSpec;
  checkComponents(spec, name, op);
  const base = w.weight ?? 1;
  if (typeof base !== 'number' || !Number.isFinite(base)) {
    throw new ArgumentError(
      'ARG_INVALID',
      `${op}: the weight of ${name} must be a finite number, found ${String(base)}`,
      { key: name, found: base },
    );
  }
  const block =
    spec.blocks !== undefined ? compileBlockWeights(spec.blocks, arch, size, `block weights of ${name}`) : null;
  const components = hasComponents(spec) ? spec : null;
  return (path: string) => base * (block ? block(path) : 1) * (components ? componentFactor(components, path) : 1);
}

/** Per input: path → the module's weight λ (weight × block multiplier). */
function compileWeights(loras: readonly Lora<Term>[], weights: readonly MergeWeight[]): ((path: string) => number)[] {
  if (!Array.isArray(weights) || weights.length !== loras.length) {
    throw new ArgumentError(
      'ARG_INVALID',
      `merge: expected one weight per input (${loras.length}), found ${Array.isArray(weights) ? weights.length : String(weights)}`,
      { expected: loras.length, found: Array.isArray(weights) ? weights.length : weights },
    );
  }
  return weights.map((w, i) => compileWeight(w, loras[i]!.arch, loras[i]!.size, nameOf(loras[i]!, i)));
}

/** Check that the terms of a module describe the same weight; returns the common dims and the output form. */
function commonDims(
  path: string,
  parts: readonly MergePart[],
  loras: readonly Lora<Term>[],
  layout: Layout | undefined,
): { out: number; fanIn: number; downShape: (r: number) => number[]; upShape: (r: number) => number[] } {
  const first = parts[0]!;
  const kernelOf = (d: ModuleDims): [number, number] => (d.kernel ? [d.kernel[0], d.kernel[1]] : [1, 1]);
  for (const p of parts.slice(1)) {
    const a = first.dims,
      b = p.dims;
    const [akh, akw] = kernelOf(a),
      [bkh, bkw] = kernelOf(b);
    if (a.out !== b.out || a.in !== b.in || akh !== bkh || akw !== bkw) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `merge: module '${path}' has different shapes in ${nameOf(loras[first.input]!, first.input)} ` +
          `(down ${fmt(first.module.down.shape)}, up ${fmt(first.module.up.shape)}) and ${nameOf(loras[p.input]!, p.input)} ` +
          `(down ${fmt(p.module.down.shape)}, up ${fmt(p.module.up.shape)}); the weight they change must be the same`,
        {
          key: path,
          expected: { down: first.module.down.shape, up: first.module.up.shape },
          found: { down: p.module.down.shape, up: p.module.up.shape },
        },
      );
    }
  }
  const { out, in: inn } = first.dims;
  const [kh, kw] = kernelOf(first.dims);
  // Output form: conv (4-D factors) or linear (2-D). Mixed 1×1 forms follow the layout's weight shape.
  const forms = new Set(parts.map((p) => p.module.down.shape.length));
  let fourD = first.module.down.shape.length === 4;
  if (forms.size > 1) fourD = (layout?.byPath.get(path)?.shape.length ?? 4) === 4;
  const upFour = fourD && (parts.find((p) => p.module.down.shape.length === 4) ?? first).module.up.shape.length === 4;
  return {
    out,
    fanIn: first.dims.fanIn,
    downShape: (r) => (fourD ? [r, inn, kh, kw] : [r, inn]),
    upShape: (r) => (upFour ? [out, r, 1, 1] : [out, r]),
  };
}

/** The exact concatenation of a module's terms (the one stacking, src/lora/stack.ts). */
function concatenate(
  parts: readonly MergePart[],
  out: number,
  fanIn: number,
): { up: Float32Array; down: Float32Array; rank: number } {
  return stackFactors(
    parts.map((p) => ({
      coef: p.coef,
      rank: p.dims.rank,
      up: contiguousValues(p.module.up),
      down: contiguousValues(p.module.down),
    })),
    out,
    fanIn,
  );
}

function summarize(modules: readonly ModuleMergeReport[]): MergeReport {
  const written = modules.filter((m) => !m.dropped);
  const stat = (xs: number[]) =>
    xs.length === 0
      ? { min: 0, max: 0, mean: 0 }
      : { min: Math.min(...xs), max: Math.max(...xs), mean: xs.reduce((a, b) => a + b, 0) / xs.length };
  let err2 = 0,
    norm2 = 0;
  for (const m of modules) {
    if (m.norm !== undefined) {
      err2 += m.error * m.error;
      norm2 += m.norm * m.norm;
    }
  }
  const kept = written.map((m) => m.normKept);
  return {
    modules,
    written: written.length,
    dropped: modules.filter((m) => m.dropped).map((m) => ({ path: m.path, reason: m.dropped! })),
    rankBefore: stat(written.map((m) => m.rankBefore)),
    rankAfter: stat(written.map((m) => m.rankAfter)),
    meanNormKept: kept.length ? kept.reduce((a, b) => a + b, 0) / kept.length : 1,
    minNormKept: kept.length ? Math.min(...kept) : 1,
    relativeError: norm2 > 0 ? Math.sqrt(err2 / norm2) : 0,
    exact: written.every((m) => m.error === 0 && m.rankAfter === m.rankBefore),
  };
}

function describeWeight(w: MergeWeight): unknown {
  if (typeof w === 'number') return w;
  const spec = w as WeightSpec;
  const blocks = typeof spec.blocks === 'function' ? '(function)' : spec.blocks;
  return {
    weight: spec.weight ?? 1,
    ...(blocks !== undefined ? { blocks } : {}),
    ...(hasComponents(spec) ? { components: describeComponents(spec) } : {}),
  };
}

/** A module's fate, decided before any arithmetic. */
export interface PlannedMergeModule {
  readonly path: string;
  /** Contributing terms (non-zero weight), in input order. */
  readonly parts: readonly MergePart[];
  /** Σ of the contributing ranks (of all ranks when every weight is zero). */
  readonly rankBefore: number;
  /**
   * 'drop': every weight is zero; 'exact': concatenate; 'reduce': analyse the spectrum first; 'method': a
   * delta-space method on the dense deltas, then the truncated SVD.
   */
  readonly action: 'drop' | 'exact' | 'reduce' | 'method';
  /** For 'method': every input that has the module, zero weights included (they vote in TIES). */
  readonly members?: readonly MergePart[];
  readonly out: number;
  readonly fanIn: number;
  readonly downShape: (r: number) => number[];
  readonly upShape: (r: number) => number[];
}

/** One contributing term: input index, its module, and coef = weight × alpha / rank. */
export interface MergePart {
  readonly input: number;
  readonly module: LoraModule;
  readonly dims: ModuleDims;
  readonly coef: number;
  /** The input's weight λ for this module and its scale alpha / rank (coef = weight·scale). */
  readonly weight: number;
  readonly scale: number;
}

export interface MergePlan {
  readonly loras: readonly Lora<Term>[];
  readonly weights: readonly MergeWeight[];
  readonly options: MergeOptions;
  readonly target: RankTarget | null;
  readonly modules: readonly PlannedMergeModule[];
  /** The merge method with its parameters (defaults filled in). */
  readonly method: ResolvedMethod;
}

/**
 * Check the inputs and decide, module by module, what a merge does. Throws the same errors as mergeLoras; no
 * arithmetic on factors happens here.
 */
export function planMerge(
  loras: readonly Lora<Term>[],
  weights: readonly MergeWeight[],
  options: MergeOptions = {},
): MergePlan {
  assertLoraList(loras, 'merge');
  const first = loras[0]!;
  loras.forEach((l, i) => {
    if (l.arch !== first.arch || l.size !== first.size) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `merge: ${nameOf(l, i)} is a ${l.arch} (${l.size}) LoRA but ${nameOf(first, 0)} is ${first.arch} (${first.size}); inputs must share the architecture`,
        { expected: { arch: first.arch, size: first.size }, found: { arch: l.arch, size: l.size }, key: nameOf(l, i) },
      );
    }
  });
  const target = checkOptions(options);
  const method = resolveMethod(options, loras.length);
  const dense = method.spec.space === 'delta';
  if (dense && target?.rank === undefined) {
    throw new OptionError(
      'OPTION_INVALID',
      `merge: method ${method.method} forms dense deltas and needs a target rank (rank / --rank K; minEnergy may lower it per module)`,
      { key: 'rank', expected: 'an integer ≥ 1', found: options.rank },
    );
  }
  const weightOf = compileWeights(loras, weights);
  let layout: Layout | undefined;
  try {
    layout = getLayout(first.arch, first.size);
  } catch {
    layout = undefined;
  }

  // Module order: layout order first, then paths the layout does not know, in order of appearance.
  const seen = new Set<string>();
  for (const l of loras) for (const p of l.modules.keys()) seen.add(p);
  const paths: string[] = [];
  if (layout)
    for (const e of layout.modules)
      if (seen.has(e.path)) {
        paths.push(e.path);
        seen.delete(e.path);
      }
  paths.push(...seen);

  const modules: PlannedMergeModule[] = paths.map((path) => {
    const parts: MergePart[] = [];
    const members: MergePart[] = [];
    let allRanks = 0;
    loras.forEach((l, i) => {
      const t = l.modules.get(path);
      if (!t) return;
      const m = asLowRank(t, path);
      const dims = moduleDims(m, path, nameOf(l, i));
      allRanks += dims.rank;
      const w = weightOf[i]!(path);
      const scale = m.alpha / dims.rank;
      const part = { input: i, module: m, dims, coef: w * scale, weight: w, scale };
      members.push(part);
      if (w !== 0) parts.push(part);
    });
    if (parts.length === 0) {
      return {
        path,
        parts,
        rankBefore: allRanks,
        action: 'drop',
        out: 0,
        fanIn: 0,
        downShape: () => [],
        upShape: () => [],
      };
    }
    const shape = commonDims(path, dense ? members : parts, loras, layout);
    const R = parts.reduce((s, p) => s + p.dims.rank, 0);
    if (dense) return { path, parts, members, rankBefore: R, action: 'method' as const, ...shape };
    const reduce = target !== null && (target.minEnergy !== undefined || R > (target.rank ?? Infinity));
    return { path, parts, rankBefore: R, action: reduce ? 'reduce' : 'exact', ...shape };
  });
  return { loras, weights, options, target, modules, method };
}

/** The request that runs a delta-space method on one planned module (plain data: a worker can take it). */
export function methodRequest(plan: MergePlan, pm: PlannedMergeModule): MethodModuleRequest {
  return {
    path: pm.path,
    out: pm.out,
    fanIn: pm.fanIn,
    members: (pm.members ?? pm.parts).map((p) => ({
      input: p.input,
      scale: p.scale,
      rank: p.dims.rank,
      up: contiguousValues(p.module.up),
      down: contiguousValues(p.module.down),
    })),
    weights: plan.loras.map((_, i) => (pm.members ?? pm.parts).find((p) => p.input === i)?.weight ?? 0),
    method: plan.method.method,
    params: plan.method.params,
  };
}

/** The terms of a planned module as the reducer takes them (contiguous row-major factors). */
export function factorTerms(pm: PlannedMergeModule): FactorTerm[] {
  return pm.parts.map((p) => ({
    coef: p.coef,
    rank: p.dims.rank,
    up: contiguousValues(p.module.up),
    down: contiguousValues(p.module.down),
  }));
}

/** The exact module (concatenated factors) of a planned module. */
export function exactModule(pm: PlannedMergeModule): LoraModule {
  const R = pm.rankBefore;
  if (pm.parts.length === 1) {
    // One term: share its down (never modified), scale its up.
    const p = pm.parts[0]!;
    const up = ndarray(new Float32Array(pm.out * R), [pm.out, R]);
    ops.muls(up, ndarray(contiguousValues(p.module.up), [pm.out, R]), p.coef);
    return {
      up: ndarray(up.data, pm.upShape(R)),
      down: ndarray(contiguousValues(p.module.down), pm.downShape(R)),
      alpha: R,
    };
  }
  const c = concatenate(pm.parts, pm.out, pm.fanIn);
  return { up: ndarray(c.up, pm.upShape(R)), down: ndarray(c.down, pm.downShape(R)), alpha: R };
}

/**
 * The merged bias delta of a module, Σ coefᵢ·biasᵢ over the terms that have one (the merged module has scale 1,
 * so the sum is stored as is), or undefined when no term has a bias. Biases add linearly, so this is exact whatever
 * happens to the factors (rank reduction included).
 */
export function mergedBias(pm: PlannedMergeModule): F32Array | undefined {
  let sum: Float64Array | undefined;
  for (const p of pm.parts) {
    const b = p.module.bias;
    if (!b) continue;
    const v = contiguousValues(b);
    sum ??= new Float64Array(v.length);
    if (v.length !== sum.length) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `merge: module '${pm.path}': bias deltas of ${sum.length} and ${v.length} values; expected one length`,
        { key: pm.path, expected: sum.length, found: v.length },
      );
    }
    for (let i = 0; i < v.length; i++) sum[i] = (sum[i] ?? 0) + p.coef * (v[i] ?? 0);
  }
  return sum ? ndarray(Float32Array.from(sum), [sum.length]) : undefined;
}

/**
 * A module whose weight delta reduced to zero but whose merged bias delta is not zero: zero rank-1 factors (scale 1)
 * carrying the bias. Undefined when there is no bias or it is zero too.
 */
function biasOnlyModule(pm: PlannedMergeModule): LoraModule | undefined {
  const bias = mergedBias(pm);
  if (!bias?.data.some((x) => x !== 0)) return undefined;
  const up = pm.upShape(1);
  const down = pm.downShape(1);
  const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);
  return {
    up: ndarray(new Float32Array(size(up)), up),
    down: ndarray(new Float32Array(size(down)), down),
    alpha: 1,
    bias,
  };
}

/** Attach a planned module's merged bias delta to its merged factors. */
function withBias(pm: PlannedMergeModule, m: LoraModule): LoraModule {
  const bias = mergedBias(pm);
  return bias ? { ...m, bias } : m;
}

/**
 * The union of the inputs' embeddings (pivotal-tuning tokens). An embedding carried by several inputs with other
 * bytes is refused: there is no weighted sum of token vectors that means what either input meant.
 */
export function mergedEmbeddings(loras: readonly Lora<Term>[]): Map<string, StoredTensor> {
  const out = new Map<string, StoredTensor>();
  const from = new Map<string, number>();
  loras.forEach((l, i) => {
    for (const [k, e] of l.embeddings ?? []) {
      const prev = out.get(k);
      if (!prev) {
        out.set(k, e);
        from.set(k, i);
        continue;
      }
      const same =
        prev.dtype === e.dtype &&
        prev.shape.length === e.shape.length &&
        prev.shape.every((d, j) => d === e.shape[j]) &&
        prev.data.length === e.data.length &&
        prev.data.every((b, j) => b === e.data[j]);
      if (!same) {
        throw new LoraError(
          'LORA_SHAPE_MISMATCH',
          `merge: ${nameOf(l, i)} and ${nameOf(loras[from.get(k) ?? 0]!, from.get(k) ?? 0)} both carry the embedding '${k}' with different values; rename the token in one of them`,
          { key: k },
        );
      }
    }
  });
  return out;
}

/** Turn a plan and the reduction outcomes (by path) into the merged LoRA and its report. */
export function assembleMerge(
  plan: MergePlan,
  outcomes: ReadonlyMap<string, ReduceOutcome>,
  built: ReadonlyMap<string, LoraModule> = new Map(),
): MergeResult {
  const modules = new Map<string, LoraModule>();
  const reports: ModuleMergeReport[] = [];
  for (const pm of plan.modules) {
    const { path, rankBefore: R } = pm;
    const inputs = pm.parts.map((p) => p.input);
    if (pm.action === 'drop') {
      reports.push({ path, inputs: [], rankBefore: R, rankAfter: 0, normKept: 1, error: 0, dropped: 'zero-weight' });
      continue;
    }
    if (pm.action === 'exact') {
      modules.set(path, withBias(pm, built.get(path) ?? exactModule(pm)));
      reports.push({ path, inputs, rankBefore: R, rankAfter: R, normKept: 1, error: 0 });
      continue;
    }
    const o = outcomes.get(path);
    if (!o)
      throw new LoraError('LORA_WORKER_FAILED', `merge: no rank-reduction outcome for module '${path}'`, { key: path });
    const biasOnly = o.k === 0 ? biasOnlyModule(pm) : undefined;
    if (biasOnly) {
      modules.set(path, biasOnly);
      reports.push({
        path,
        inputs,
        rankBefore: R,
        rankAfter: 1,
        normKept: 0,
        error: o.error,
        norm: o.norm,
        biasOnly: true,
      });
    } else if (o.k === 0) {
      reports.push({
        path,
        inputs,
        rankBefore: R,
        rankAfter: 0,
        normKept: o.normKept,
        error: o.error,
        norm: o.norm,
        dropped: 'zero-delta',
      });
    } else if (!o.factors) {
      modules.set(path, withBias(pm, built.get(path) ?? exactModule(pm)));
      reports.push({ path, inputs, rankBefore: R, rankAfter: R, normKept: 1, error: 0, norm: o.norm });
    } else {
      modules.set(
        path,
        withBias(pm, {
          up: ndarray(o.factors.up, pm.upShape(o.k)),
          down: ndarray(o.factors.down, pm.downShape(o.k)),
          alpha: o.k,
        }),
      );
      reports.push({ path, inputs, rankBefore: R, rankAfter: o.k, normKept: o.normKept, error: o.error, norm: o.norm });
    }
  }
  const { loras, weights, options } = plan;
  const first = loras[0]!;
  const metadata: Record<string, string> = {
    [VERSION_METADATA_KEY]: VERSION,
    [MERGE_METADATA_KEY]: JSON.stringify({
      inputs: loras.map((l, i) => {
        const source = (l as { source?: unknown }).source;
        const outputName = l.metadata.ss_output_name;
        return {
          ...(typeof source === 'string' ? { source: fileNameOf(source) } : {}),
          ...(outputName ? { ss_output_name: outputName } : {}),
          weight: describeWeight(weights[i]!),
        };
      }),
      ...(options.rank !== undefined ? { rank: options.rank } : {}),
      ...(options.minEnergy !== undefined ? { minEnergy: options.minEnergy } : {}),
      ...(plan.method.method !== 'concat'
        ? {
            method: plan.method.method,
            ...Object.fromEntries(METHODS[plan.method.method].params.map((p) => [p, plan.method.params[p]])),
          }
        : {}),
    }),
  };
  const embeddings = mergedEmbeddings(loras);
  const weightOf = compileWeights(loras, weights);
  const norms = mergeNorms(loras.map((l, i) => ({ norms: l.norms, weightOf: weightOf[i]!, name: nameOf(l, i) })));
  return {
    lora: {
      arch: first.arch,
      size: first.size,
      modules,
      metadata,
      ...(embeddings.size > 0 ? { embeddings } : {}),
      ...(norms.size > 0 ? { norms } : {}),
    },
    report: summarize(reports),
  };
}

/**
 * τ = Σ weights[i]·loras[i], exact unless a rank target is given. Returns the merged LoRA (alpha = rank on every
 * module, i.e. scale 1) and a per-module report. Synchronous, on the calling thread; in Node,
 * `mergeLorasParallel` (src/node/merge-threads.ts) spreads the rank reductions over worker threads.
 *
 * - Inputs must share arch and size (ArchError ARCH_MISMATCH).
 * - One weight per input: a finite number or { weight?, blocks } (ArgumentError ARG_INVALID,
 *   OptionError OPTION_INVALID for block weights).
 * - Every module of any input is in the result; a module's terms must change the same weight
 *   (LORA_SHAPE_MISMATCH). Terms with weight exactly 0 are left out; a module with no term left is dropped and
 *   listed in the report, as is a module whose reduced delta is numerically zero.
 * - Result modules follow the layout's module order. They may share factor arrays with the inputs (a module
 *   with a single term keeps its `down`): treat LoRAs as immutable.
 */
export function mergeLoras(
  loras: readonly Lora<Term>[],
  weights: readonly MergeWeight[],
  options: MergeOptions = {},
): MergeResult {
  const plan = planMerge(loras, weights, options);
  const outcomes = new Map<string, ReduceOutcome>();
  const built = new Map<string, LoraModule>();
  const reducer = plan.target ? new RankReducer() : null;
  const scratch = new DenseScratch();
  let done = 0;
  for (const pm of plan.modules) {
    if (pm.action === 'method') {
      outcomes.set(pm.path, methodModule(methodRequest(plan, pm), plan.target!, scratch));
    } else if (pm.action === 'reduce') {
      const o = reduceModule(reducer!, factorTerms(pm), pm.out, pm.fanIn, plan.target!, pm.path);
      outcomes.set(pm.path, o);
      if (o.k >= pm.rankBefore) built.set(pm.path, exactModule(pm));
    } else if (pm.action === 'exact') {
      built.set(pm.path, exactModule(pm));
    }
    done++;
    options.onProgress?.(done, plan.modules.length);
  }
  reducer?.release();
  return assembleMerge(plan, outcomes, built);
}

/** Metadata keys of an input that no longer describe a resized LoRA. */
export const STALE_ON_RESIZE: readonly string[] = [
  'ss_network_dim',
  'ss_network_alpha',
  'sshs_model_hash',
  'sshs_legacy_hash',
  'modelspec.hash_sha256',
];

/**
 * Change the rank of one LoRA: `target` is a rank k or { rank?, minEnergy? } (see MergeOptions). The delta of every
 * module becomes its best approximation of that rank; modules already at rank ≤ k keep their exact delta. Alpha
 * becomes the new rank (scale 1). The input's metadata is kept, minus keys describing the old ranks or bytes.
 */
export function resizeLora(
  lora: Lora<Term>,
  target: number | RankTarget,
  options: { onProgress?: (done: number, total: number) => void } = {},
): MergeResult {
  const t: RankTarget = typeof target === 'number' ? { rank: target } : target;
  if (t.rank === undefined && t.minEnergy === undefined) {
    throw new OptionError('OPTION_INVALID', 'resize: give a rank or a minEnergy', { option: 'rank' });
  }
  const { lora: out, report } = mergeLoras([lora], [1], {
    ...t,
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
  });
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(lora.metadata)) if (!STALE_ON_RESIZE.includes(k)) metadata[k] = v;
  metadata[VERSION_METADATA_KEY] = VERSION;
  metadata[MERGE_METADATA_KEY] = out.metadata[MERGE_METADATA_KEY]!;
  return { lora: { ...out, metadata }, report };
}
