/**
 * unfuseLoras: take back what fuseLoras added. The fused checkpoint streams through the same planner, kernel and
 * writer as a fusion, with every weight negated: W″ = round(F − Σ λᵢ·τᵢ), the delta built from the same factors
 * in f32 and rounded once. F = round(W + Δ) already lost up to ½ ulp(F), so no unfuse can promise W back exactly;
 * this one gives every element within ½ ulp(F) + ½ ulp(W″) of the original W (plus the f32 accumulation error of
 * the delta, which is far below one f16/bf16 ulp; for F32 checkpoints it is of the order of the ulp itself).
 *
 * With the original (`base`), the result is compared with it element by element in ulps of the original's dtype:
 * a histogram, the worst element, and how many elements lie beyond the bound above. A LoRA (or weight) that was not
 * fused into the file shows up as an implausible distance, reported as a warning.
 */
import { halfUlp } from '../core/dtype.js';
import type { DType } from '../core/tensor.js';
import type { ModuleEntry } from '../layout/types.js';
import type { MergeWeight } from '../lora/merge.js';
import { inspectLora } from '../formats/index.js';
import { findWeight, readWeightRows, type OpenedBase, type FoundWeight } from './base.js';
import { FUSE_METADATA_KEY, fuseLoras, openBase } from './fuse.js';
import type { BaseInput, FuseOptions, FuseReport, LoraInput } from './types.js';
import { LoraError } from '../core/errors.js';
import { fileNameOf } from '../core/provenance.js';
import { resolveFusedBases } from './unfuse-base.js';

/** Metadata key recording an unfusion. */
export const UNFUSE_METADATA_KEY = 'lora_mix_unfuse';

export interface UnfuseOptions extends FuseOptions {
  /** The original checkpoint, to report the distance of the result from it. */
  readonly base?: BaseInput;
}

/** Upper edges of the ulp histogram buckets (the last bucket is everything above 16). */
export const ULP_BUCKETS = [0, 0.5, 1, 2, 4, 16] as const;

export interface UlpDistance {
  /** Elements compared (every element of every weight the LoRAs change). */
  readonly elements: number;
  readonly tensors: number;
  /** counts[i]: elements with distance ≤ ULP_BUCKETS[i] (and above the previous edge); the last: > 16 ulps. */
  readonly histogram: readonly { readonly upTo: number | null; readonly count: number }[];
  /** Elements farther from the original than ½ ulp(fused) + ½ ulp(result) (not counting `recoveredElements`). */
  readonly beyondBound: number;
  /**
   * Elements of DoRA / GLoRA modules, whose W0 was recovered through an inverse that amplifies the fused file's
   * rounding (DoRA about 1/|1 − w|): they are in the histogram but not held to the bound above.
   */
  readonly recoveredElements: number;
  readonly worst: { readonly ulps: number; readonly module: string; readonly index: number } | null;
  readonly medianBucket: number | null;
  /** False when the distance is implausible for an unfuse of what was fused (see `warning`). */
  readonly plausible: boolean;
  readonly warning?: string;
}

export interface UnfuseReport extends FuseReport {
  /** Present when `base` was given. */
  readonly distance?: UlpDistance;
  /** Warnings (a LoRA the fused file's metadata does not list; an implausible distance). */
  readonly warnings: readonly string[];
}

/** −weight, for numbers and block weights alike. */
export function negateWeight(w: MergeWeight): MergeWeight {
  if (typeof w === 'number') return -w;
  return { ...w, weight: -(w.weight ?? 1) };
}

/** LoRAs not named in the fused file's lora_mix_fuse metadata (when it has any). */
async function unlistedLoras(fused: BaseInput, loras: readonly LoraInput[]): Promise<string[]> {
  const opened = await openBase(fused);
  try {
    const meta = opened.files[0]?.file.metadata?.[FUSE_METADATA_KEY];
    if (typeof meta !== 'string') return [];
    let listed: string[] = [];
    try {
      const parsed = JSON.parse(meta) as { loras?: { source?: unknown }[] };
      listed = (parsed.loras ?? []).map((l) => (typeof l.source === 'string' ? fileNameOf(l.source) : ''));
    } catch {
      return [];
    }
    return loras
      .filter((l): l is string => typeof l === 'string')
      .filter((l) => !listed.includes(fileNameOf(l)))
      .map(
        (l) =>
          `${l} is not among the LoRAs the fused file records (${listed.join(', ') || 'none'}); unfusing a LoRA that was not fused changes the weights instead of restoring them`,
      );
  } finally {
    await opened.close();
  }
}

/**
 * Subtract Σ weightᵢ·τᵢ from a fused checkpoint and write the result (same options as fuseLoras). With
 * `options.base`, report how far the result is from that original, in ulps.
 */
export async function unfuseLoras(
  fused: BaseInput,
  loras: readonly LoraInput[],
  weights: readonly MergeWeight[],
  options: UnfuseOptions,
): Promise<UnfuseReport> {
  const { base, ...fuseOptions } = options;
  const warnings = await unlistedLoras(fused, loras);
  // DoRA / GLoRA: their deltas depend on W0, recovered from the fused weight (LORA_CANNOT_UNFUSE where it cannot be)
  const recovered = new Set<string>();
  const inputs = Array.isArray(weights)
    ? await resolveFusedBases(fused, loras, weights, fuseOptions.allowUnmatched === true, warnings, recovered)
    : loras;
  const report = await fuseLoras(fused, inputs, Array.isArray(weights) ? weights.map(negateWeight) : weights, {
    ...fuseOptions,
    metadata: {
      ...(fuseOptions.metadata ?? {}),
      [UNFUSE_METADATA_KEY]: JSON.stringify({
        fused: typeof fused === 'string' ? fileNameOf(fused) : '(source)',
        loras: loras.length,
      }),
    },
  });
  if (base === undefined || typeof options.out !== 'string') return { ...report, warnings };
  const paths = await modulePaths(loras);
  const distance = await ulpDistance(base, fused, options.out, paths, recovered);
  if (distance.warning) warnings.push(distance.warning);
  return { ...report, distance, warnings };
}

/** The module paths the LoRAs change (file LoRAs through their plans, in-memory ones directly). */
async function modulePaths(loras: readonly LoraInput[]): Promise<Set<string>> {
  const paths = new Set<string>();
  for (const l of loras) {
    if (typeof l === 'string') {
      const plan = await inspectLora(l, { allowUnmatched: true });
      for (const m of plan.modules) paths.add(m.entry.path);
    } else if (typeof l === 'object' && l !== null && 'modules' in l && l.modules instanceof Map) {
      for (const p of l.modules.keys()) paths.add(p);
    }
  }
  return paths;
}

async function rowsF32(w: FoundWeight, what: string): Promise<{ values: Float32Array; dtype: DType }> {
  return { values: readWeightRows(await w.file.read(w.key), w, what), dtype: w.file.info(w.key).dtype };
}

/**
 * Distance of `result` from `original` in ulps of the original's dtype, over every weight of `paths`, and how
 * many elements lie beyond ½ ulp(fused) + ½ ulp(result). One module's three tensors in memory at a time.
 */
export async function ulpDistance(
  original: BaseInput,
  fused: BaseInput,
  result: BaseInput,
  paths: ReadonlySet<string>,
  recovered: ReadonlySet<string> = new Set(),
): Promise<UlpDistance> {
  const opened: OpenedBase[] = [];
  try {
    for (const x of [original, fused, result]) opened.push(await openBase(x));
    const [o, f, r] = opened as [OpenedBase, OpenedBase, OpenedBase];
    const counts = new Array<number>(ULP_BUCKETS.length + 1).fill(0);
    let elements = 0;
    let tensors = 0;
    let beyond = 0;
    let recoveredElements = 0;
    let worst: { ulps: number; module: string; index: number } | null = null;
    const entries = o.detection.layout.modules.filter((e: ModuleEntry) => paths.has(e.path));
    for (const e of entries) {
      const wo = findWeight(o, e);
      const wf = findWeight(f, e);
      const wr = findWeight(r, e);
      if (!wo || !wf || !wr) continue;
      const a = await rowsF32(wo, `${o.name}: '${wo.key}'`);
      const b = await rowsF32(wf, `${f.name}: '${wf.key}'`);
      const c = await rowsF32(wr, `${r.name}: '${wr.key}'`);
      if (a.values.length !== c.values.length || b.values.length !== c.values.length) {
        throw new LoraError(
          'LORA_SHAPE_MISMATCH',
          `unfuse: module '${e.path}' has ${a.values.length} values in ${o.name} but ${c.values.length} in the result`,
          { key: e.path, expected: a.values.length, found: c.values.length },
        );
      }
      tensors++;
      const inverse = recovered.has(e.path);
      if (inverse) recoveredElements += a.values.length;
      for (let i = 0; i < a.values.length; i++) {
        const w = a.values[i] ?? 0;
        const got = c.values[i] ?? 0;
        const d = Math.abs(got - w);
        const ulps = d / (2 * halfUlp(w, a.dtype));
        let bucket = 0;
        while (bucket < ULP_BUCKETS.length && ulps > (ULP_BUCKETS[bucket] ?? 0)) bucket++;
        counts[bucket] = (counts[bucket] ?? 0) + 1;
        if (!inverse && d > halfUlp(b.values[i] ?? 0, b.dtype) + halfUlp(got, c.dtype)) beyond++;
        if (!worst || ulps > worst.ulps) worst = { ulps, module: e.path, index: i };
      }
      elements += a.values.length;
    }
    const histogram = counts.map((count, i) => ({
      upTo: i < ULP_BUCKETS.length ? (ULP_BUCKETS[i] ?? null) : null,
      count,
    }));
    let acc = 0;
    let medianBucket: number | null = null;
    for (let i = 0; i < counts.length; i++) {
      acc += counts[i] ?? 0;
      if (acc * 2 >= elements && elements > 0) {
        medianBucket = i < ULP_BUCKETS.length ? (ULP_BUCKETS[i] ?? null) : Number.POSITIVE_INFINITY;
        break;
      }
    }
    // An unfuse of what was fused lands within the bound everywhere; a few stragglers can only come from the f32
    // accumulation. More than 0.1% beyond it means the LoRAs or weights are not what was fused.
    const plausible = elements === recoveredElements || beyond <= 0.001 * (elements - recoveredElements);
    return {
      elements,
      tensors,
      histogram,
      beyondBound: beyond,
      recoveredElements,
      worst,
      medianBucket,
      plausible,
      ...(plausible
        ? {}
        : {
            warning:
              `the result is far from ${o.name}: ${beyond} of ${elements} element(s) lie beyond ½ ulp(fused) + ½ ulp(result)` +
              (worst ? ` (worst ${worst.ulps.toFixed(1)} ulps in ${worst.module})` : '') +
              '; was this LoRA fused into the file, at this weight, into this base?',
          }),
    };
  } finally {
    await Promise.allSettled(opened.map((x) => x.close()));
  }
}
