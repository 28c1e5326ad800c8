/**
 * Resolving LoRA module names to layout modules, and deciding which architecture (and size) a LoRA belongs to.
 *
 * Every (arch, size) candidate is tried: a candidate *fits* when every module name resolves in its layout (kohya
 * names through `byKohyaName`, paths through `byPath`) and every factor pair has shapes compatible with the module's
 * weight. Names alone cannot decide (SD1.5 and SDXL share many paths); shapes can (cross-attention width, 1×1-conv vs
 * Linear proj_in, tiny vs full widths). SSD-1B's module set is a subset of SDXL's with equal shapes, so a LoRA
 * that fits SSD-1B also fits SDXL. The tie is broken by *missing siblings* — modules of the candidate that follow
 * the same pattern as the LoRA's modules (same path with any transformer-block index) but are absent from the
 * LoRA: a candidate the LoRA covers completely (no missing sibling) wins; otherwise the fixed order SD1.5, SDXL,
 * SSD-1B decides. An SSD-1B LCM-LoRA covers every transformer block of SSD-1B's attentions and misses SDXL's extra
 * ones, so it is SSD-1B; an SDXL LoRA trained on a few blocks stays SDXL.
 */
import type { Arch, Layout, LayoutSize, ModuleEntry } from '../layout/types.js';
import { CANDIDATES, getLayout } from '../layout/index.js';
import type { KeyFamily } from './keys.js';

/** A LoRA module as found in a file, before resolution: its name and factor shapes. */
export interface RawModule {
  /** kohya name ('lora_unet_…'), canonical path ('unet.…') or another tool's name ('diffusion_model.…'). */
  readonly id: string;
  readonly family: KeyFamily;
  readonly downShape: readonly number[];
  readonly upShape: readonly number[];
  /**
   * Set by kinds whose tensors give only the flattened in·kh·kw (LoHa, LoKr with 2-D factors): the weight then fits
   * when its out is upShape[0] and its in·kh·kw is fanIn.
   */
  readonly fanIn?: number;
  /** Set by kinds whose tensors give only the weight's out (OFT, BOFT): it fits any weight with upShape[0] rows. */
  readonly outOnly?: boolean;
}

export interface ShapeProblem {
  readonly module: RawModule;
  readonly entry: ModuleEntry;
  readonly expected: string;
  readonly found: string;
}

export interface CandidateResult {
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly layout: Layout;
  /** Resolved modules with compatible shapes. */
  readonly matched: readonly { readonly module: RawModule; readonly entry: ModuleEntry }[];
  /** Names that do not exist in this layout. */
  readonly missing: readonly RawModule[];
  /** Names that exist but whose factor shapes do not fit the module's weight. */
  readonly incompatible: readonly ShapeProblem[];
  /** Modules of the layout that follow a pattern the LoRA uses but that the LoRA lacks (tie-break only). */
  readonly missingSiblings: number;
  /**
   * kohya names that resolved only as another layout's spelling ('lora_te1_' on SD1.5, 'lora_te_' on SDXL): a
   * tie-break, so a text-encoder-only LoRA goes to the family whose own prefix it uses.
   */
  readonly alternates: number;
  readonly fits: boolean;
}

/** Look one module name up in a layout. */
export function lookupModule(layout: Layout, module: Pick<RawModule, 'id' | 'family'>): ModuleEntry | undefined {
  switch (module.family) {
    case 'kohya':
      // The other kohya prefix of the first text encoder ('lora_te_' ⇄ 'lora_te1_') is an alias.
      return layout.byKohyaName.get(module.id) ?? layout.byAlias.get(module.id);
    case 'alias':
      return layout.byAlias.get(module.id);
    case 'path':
      return layout.byPath.get(module.id);
  }
}

const fmt = (s: readonly (number | string)[]): string => `[${s.join(', ')}]`;

/**
 * Do LoRA factors of these shapes fit a module of this weight shape? Linear [out, in]: down [r, in] (or
 * [r, in, 1, 1], which kohya squeezes), up [out, r] (or [out, r, 1, 1]). Conv [out, in, kh, kw]: down
 * [r, in, kh, kw], up [out, r, 1, 1] (or [out, r]); for a 1×1 conv a 2-D down [r, in] is accepted too.
 * Returns undefined when they fit, otherwise the expected and found shapes as text.
 */
export function checkFactorShapes(
  entry: Pick<ModuleEntry, 'shape'>,
  downShape: readonly number[],
  upShape: readonly number[],
): { expected: string; found: string } | undefined {
  const [out, inn, kh = 1, kw = 1] = entry.shape as number[];
  const r = downShape[0] ?? 0;
  const pointwise = kh === 1 && kw === 1;
  const downOk =
    (downShape.length === 4 && downShape[1] === inn && downShape[2] === kh && downShape[3] === kw) ||
    (pointwise && downShape.length === 2 && downShape[1] === inn);
  const upOk =
    upShape[0] === out &&
    upShape[1] === r &&
    (upShape.length === 2 || (upShape.length === 4 && upShape[2] === 1 && upShape[3] === 1));
  if (downOk && upOk && r > 0) return undefined;
  const downExp = pointwise
    ? entry.shape.length === 4
      ? `${fmt(['r', inn!, 1, 1])} or ${fmt(['r', inn!])}`
      : `${fmt(['r', inn!])} or ${fmt(['r', inn!, 1, 1])}`
    : fmt(['r', inn!, kh, kw]);
  return {
    expected: `down ${downExp}, up ${fmt([out!, 'r'])} or ${fmt([out!, 'r', 1, 1])} (weight ${fmt(entry.shape)})`,
    found: `down ${fmt(downShape)}, up ${fmt(upShape)}`,
  };
}

/** Does a weight of this shape have `out` rows of in·kh·kw = fanIn values? */
export function checkFlatShape(
  entry: Pick<ModuleEntry, 'shape'>,
  out: number,
  fanIn: number,
): { expected: string; found: string } | undefined {
  const n = entry.shape.slice(1).reduce((a, b) => a * b, 1);
  if (entry.shape[0] === out && n === fanIn) return undefined;
  return { expected: `a [${entry.shape[0]}, ${n}] update (weight ${fmt(entry.shape)})`, found: `[${out}, ${fanIn}]` };
}

/** Does a weight of this shape have `out` rows (its other dimensions free)? */
export function checkOutRows(
  entry: Pick<ModuleEntry, 'shape'>,
  out: number,
): { expected: string; found: string } | undefined {
  if (entry.shape[0] === out) return undefined;
  return { expected: `${entry.shape[0]} output rows (weight ${fmt(entry.shape)})`, found: `${out} rotated rows` };
}

/** How many factor dimensions of the incompatible modules agree with the weight (out and in): for messages. */
function closeness(c: CandidateResult): number {
  let n = 0;
  for (const p of c.incompatible)
    n += Number(p.module.upShape[0] === p.entry.shape[0]) + Number(p.module.downShape[1] === p.entry.shape[1]);
  return n;
}

const pattern = (path: string): string => path.replace(/\.transformer_blocks\.\d+\./, '.transformer_blocks.*.');

/** Evaluate one candidate layout. */
export function evaluateCandidate(modules: readonly RawModule[], arch: Arch, size: LayoutSize): CandidateResult {
  const layout = getLayout(arch, size);
  const matched: { module: RawModule; entry: ModuleEntry }[] = [];
  const missing: RawModule[] = [];
  const incompatible: ShapeProblem[] = [];
  for (const module of modules) {
    const entry = lookupModule(layout, module);
    if (!entry) {
      missing.push(module);
      continue;
    }
    const problem = module.outOnly
      ? checkOutRows(entry, module.upShape[0] ?? 0)
      : module.fanIn !== undefined
        ? checkFlatShape(entry, module.upShape[0] ?? 0, module.fanIn)
        : checkFactorShapes(entry, module.downShape, module.upShape);
    if (problem) incompatible.push({ module, entry, ...problem });
    else matched.push({ module, entry });
  }
  let missingSiblings = 0;
  if (matched.length > 0) {
    const present = new Set(matched.map((m) => m.entry.path));
    const patterns = new Set([...present].map(pattern));
    for (const m of layout.modules) if (!present.has(m.path) && patterns.has(pattern(m.path))) missingSiblings++;
  }
  const fits = missing.length === 0 && incompatible.length === 0 && matched.length > 0;
  const alternates = matched.filter((m) => m.module.family === 'kohya' && !layout.byKohyaName.has(m.module.id)).length;
  return { arch, size, layout, matched, missing, incompatible, missingSiblings, alternates, fits };
}

/**
 * Evaluate every candidate (or those of a forced arch / size) and order them best first: fitting candidates
 * (complete ones — no missing sibling — first), then the rest by most names known (matched or not), then most
 * matched; ties keep CANDIDATES order.
 */
export function rankCandidates(
  modules: readonly RawModule[],
  filter: { arch?: Arch; size?: LayoutSize } = {},
): CandidateResult[] {
  const results = CANDIDATES.filter(
    (c) =>
      (filter.arch === undefined || c.arch === filter.arch) && (filter.size === undefined || c.size === filter.size),
  ).map((c) => evaluateCandidate(modules, c.arch, c.size));
  const order = new Map(results.map((r, i) => [r, i]));
  return results.sort((a, b) => {
    if (a.fits !== b.fits) return a.fits ? -1 : 1;
    if (a.fits)
      return (
        a.alternates - b.alternates ||
        Number(a.missingSiblings > 0) - Number(b.missingSiblings > 0) ||
        order.get(a)! - order.get(b)!
      );
    const known = (c: CandidateResult): number => c.matched.length + c.incompatible.length;
    return (
      known(b) - known(a) ||
      b.matched.length - a.matched.length ||
      closeness(b) - closeness(a) ||
      order.get(a)! - order.get(b)!
    );
  });
}
