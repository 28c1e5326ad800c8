/**
 * Terms: what an adapter file holds for one module, one of a few kinds (src/lora/types.ts), each in its own file.
 * Every operation — merge, fuse, verify, convert, methods — asks these questions of a term and never branches
 * on the kind itself:
 *
 * - termKind / termLabel: which kind ('lowRank', 'hadamard' …) and its name in reports ('LoRA', 'LoHa' …);
 * - termShape: the weight's shape, after checking the term's own shapes;
 * - termRankBound: an upper bound on the rank of the delta's [out, in·kh·kw] view;
 * - termNeedsBase: whether the delta depends on the base weight (DoRA, GLoRA, OFT, BOFT);
 * - termDelta: the dense delta at strength 1 (f32, row-major), given W0 where needed;
 * - termWeightedDelta: the delta fuse adds at strength w (ComfyUI's strength rule: w·Δ, but w²·Δ for OFT and
 *   per-stage blending for BOFT);
 * - termFactors: exact factors up·down of the delta with the scale folded in, from the factors where the algebra
 *   allows (Khatri–Rao for LoHa, Kronecker of factors for LoKr);
 * - withBase: a base-dependent term turned into a dense one for a given W0 (base-free terms are returned as they are).
 */
import ndarray from 'ndarray';
import { LoraError } from '../../core/errors.js';
import { contiguousValues } from '../delta.js';
import type { Lora, LoraModule, Term, TermKind } from '../types.js';
import { boftBaseFromFused, boftKind } from './boft.js';
import { denseKind } from './dense.js';
import { doraBaseFromFused, doraKind } from './dora.js';
import { gloraBaseFromFused, gloraKind } from './glora.js';
import { addHadamardProducts, hadamardKind, hadamardPairs } from './hadamard.js';
import type { KindOps } from './kind.js';
import { addKronecker, kroneckerKind } from './kronecker.js';
import { lowRankKind } from './low-rank.js';
import { oftAddInto, oftBaseFromFused, oftKind } from './oft.js';
import { denseFactors, viewOf, type PlainFactors } from './matrix.js';

export type { PlainFactors } from './matrix.js';
export { multiply, denseFactors, viewOf } from './matrix.js';
export { hadamardFactors, hadamardPairs } from './hadamard.js';
export { kroneckerSides } from './kronecker.js';

const KINDS: { readonly [K in TermKind]: KindOps<Extract<Term, { kind?: K }>> } = {
  lowRank: lowRankKind,
  hadamard: hadamardKind,
  kronecker: kroneckerKind,
  dense: denseKind,
  dora: doraKind,
  glora: gloraKind,
  oft: oftKind,
  boft: boftKind,
};

/** The kind of a term ('lowRank' for a plain LoRA module, which need not carry the tag). */
export function termKind(t: Term): TermKind {
  return t.kind ?? 'lowRank';
}

function ops(t: Term): KindOps<Term> {
  const k = KINDS[termKind(t)] as KindOps<Term> | undefined;
  if (!k) {
    throw new LoraError('LORA_SHAPE_MISMATCH', `unknown term kind '${String(t.kind)}'`, { found: t.kind });
  }
  return k;
}

/** The kind's name in reports: LoRA, LoHa, LoKr, full diff, DoRA, GLoRA, OFT, BOFT. */
export function termLabel(t: Term): string {
  return ops(t).label;
}

/** The label of a kind name. */
export function kindLabel(kind: TermKind): string {
  return KINDS[kind].label;
}

/** The weight's shape [out, in] or [out, in, kh, kw] (throws LORA_SHAPE_MISMATCH naming `path` when inconsistent). */
export function termShape(t: Term, path = '(module)'): readonly number[] {
  const shape = ops(t).shape(t, path);
  if (t.kind === 'dora') {
    const inner = termShape(t.inner, path);
    if (inner.join() !== shape.join()) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `module '${path}': the DoRA's inner term changes [${inner.join(', ')}] but the DoRA is for [${shape.join(', ')}]`,
        { key: path, expected: shape, found: inner },
      );
    }
  }
  return shape;
}

/** out and fanIn = in·kh·kw of a term's weight. */
export function termDims(t: Term, path = '(module)'): { out: number; fanIn: number; shape: readonly number[] } {
  const shape = termShape(t, path);
  return { ...viewOf(shape), shape };
}

/** An upper bound on rank(Δ) of the [out, in·kh·kw] view. */
export function termRankBound(t: Term, path = '(module)'): number {
  return ops(t).rankBound(t, path);
}

/** True when the delta needs the base weight (DoRA, GLoRA, OFT, BOFT). */
export function termNeedsBase(t: Term): boolean {
  return ops(t).needsBase;
}

/**
 * The dense delta at strength 1, [out·in·kh·kw] row-major f32. `base` is W0 in the same layout (f32), needed by
 * DoRA and GLoRA (LoraError LORA_NEEDS_BASE without it). Memory: out·in·kh·kw floats.
 */
export function termDelta(t: Term, path = '(module)', base?: Float32Array): Float32Array {
  return ops(t).delta(t, path, base);
}

/** C [rows, cols] = A [rows, rank] · B [rank, cols] in f32, computed wherever the caller likes (fuse: its kernel). */
export type AsyncProduct = (
  rows: number,
  cols: number,
  rank: number,
  a: Float32Array,
  b: Float32Array,
) => Promise<Float32Array>;

/**
 * view += coef·Δ in f32 (view: the module's rows of W, [out·in·kh·kw]), every element the value of
 * `view[i] + coef·termDelta(t)[i]` rounded once to f32, but without forming Δ where the kind allows: a LoHa's two
 * products come from `product` (the fuse kernel's workers) and are combined in the add; a LoKr's Kronecker product
 * is written straight into the rows. `base` is W0 for the kinds that need it (DoRA, GLoRA, OFT, BOFT).
 */
export async function addTermInto(
  t: Term,
  path: string,
  view: Float32Array,
  coef: number,
  product: AsyncProduct,
  base?: Float32Array,
): Promise<void> {
  if (t.kind === 'hadamard') {
    const { a, b, out, fanIn } = hadamardPairs(t, path);
    expectLength(view.length, out * fanIn, path);
    const p1 = await product(out, fanIn, a.rank, a.up, a.down);
    const p2 = await product(out, fanIn, b.rank, b.up, b.down);
    addHadamardProducts(view, p1, p2, t.scale, coef);
    return;
  }
  if (t.kind === 'kronecker') {
    const { out, fanIn } = termDims(t, path);
    expectLength(view.length, out * fanIn, path);
    addKronecker(t, path, view, coef);
    return;
  }
  if (t.kind === 'oft') {
    // ComfyUI's strength rule (w² for OFT), added a block of rows at a time without a delta array: the same bits.
    oftAddInto(t, path, base, coef * coef, view, (n) => expectLength(view.length, n, path));
    return;
  }
  if (!termLinearInStrength(t)) {
    // OFT / BOFT: ComfyUI's strength rule is not coef·Δ; the delta comes already weighted.
    const d = termWeightedDelta(t, path, coef, base);
    expectLength(view.length, d.length, path);
    for (let i = 0; i < d.length; i++) view[i] = (view[i] as number) + (d[i] as number);
    return;
  }
  const d = termDelta(t, path, base);
  expectLength(view.length, d.length, path);
  for (let i = 0; i < d.length; i++) view[i] = (view[i] as number) + coef * (d[i] as number);
}

function expectLength(have: number, want: number, path: string): void {
  if (have !== want) {
    throw new LoraError(
      'LORA_SHAPE_MISMATCH',
      `module '${path}' has ${want} delta values; the weight's rows hold ${have}`,
      {
        key: path,
        expected: have,
        found: want,
      },
    );
  }
}

/**
 * The delta fuse adds for a term at strength w, ComfyUI's strength rule: w·Δ for every kind (DoRA: W0 + w·(W_dora −
 * W0)) except OFT, whose difference ComfyUI scales by w twice (w²·Δ), and BOFT, whose stages are blended
 * w·R + (1 − w)·I before the difference is scaled by w.
 */
export function termWeightedDelta(t: Term, path: string, w: number, base?: Float32Array): Float32Array {
  const k = ops(t);
  if (k.weighted) return k.weighted(t, path, w, base);
  const d = k.delta(t, path, base);
  if (w !== 1) for (let i = 0; i < d.length; i++) d[i] = w * (d[i] ?? 0);
  return d;
}

/** True when fusing at strength w adds exactly w·Δ (every kind but OFT and BOFT). */
export function termLinearInStrength(t: Term): boolean {
  return ops(t).weighted === undefined;
}

/** Exact factors Δ = up·down with every scale folded in (see each kind for the rank it gives). */
export function termFactors(t: Term, path = '(module)', base?: Float32Array): PlainFactors {
  return ops(t).factors(t, path, base);
}

/** Δ_bias of a term at strength 1 (diff_b; a lowRank module's bias times alpha / r), or undefined. */
export function termBias(t: Term): Float32Array | undefined {
  if (!t.bias) return undefined;
  const b = contiguousValues(t.bias);
  if (t.kind !== undefined && t.kind !== 'lowRank') return b;
  const s = t.alpha / (t.down.shape[0] ?? 1);
  return b.map((x) => s * x);
}

/** A term as a dense term for base weight W0 (base-free terms are returned unchanged). */
export function withBase(t: Term, path: string, base: Float32Array): Term {
  if (!termNeedsBase(t)) return t;
  return withDelta(t, path, termDelta(t, path, base));
}

/** The dense term withBase makes of a base-dependent term whose delta (termDelta against W0) is `delta`. */
export function withDelta(t: Term, path: string, delta: Float32Array): Term {
  const shape = termShape(t, path);
  const bias = 'bias' in t ? t.bias : undefined;
  return {
    kind: 'dense',
    shape,
    delta: ndarray(delta, [...shape]),
    ...(bias ? { bias } : {}),
  };
}

/**
 * The base weight W0 behind a weight fused with this term at strength w (F = W0 + w·Δ(W0); DoRA with ComfyUI's rule),
 * in f64: F − w·Δ for the base-free kinds, the per-channel norm equation for DoRA, a Woodbury solve for GLoRA, the
 * inverse row transform for OFT (per block) and BOFT.
 * LoraError LORA_CANNOT_UNFUSE where the fused weight does not determine W0 (DoRA at w = 1, a singular or
 * ill-conditioned GLoRA system). `notes` receives a line per module where the fused weight has a second solution
 * (DoRA at w < 0 or w > 1; see doraBaseFromFused).
 */
export function baseFromFused(
  t: Term,
  path: string,
  fused: ArrayLike<number>,
  w: number,
  notes?: string[],
): Float64Array {
  if (t.kind === 'dora') return doraBaseFromFused(t, path, fused, w, notes);
  if (t.kind === 'glora') return gloraBaseFromFused(t, path, fused, w);
  if (t.kind === 'oft') return oftBaseFromFused(t, path, fused, w);
  if (t.kind === 'boft') return boftBaseFromFused(t, path, fused, w);
  const d = termDelta(t, path);
  const out = new Float64Array(fused.length);
  for (let i = 0; i < out.length; i++) out[i] = (fused[i] ?? 0) - w * (d[i] ?? 0);
  return out;
}

/** Paths of the modules of a LoRA whose terms need the base weights. */
export function modulesNeedingBase(lora: Lora<Term>): string[] {
  const out: string[] = [];
  for (const [path, t] of lora.modules) if (termNeedsBase(t)) out.push(path);
  return out;
}

/** Count of modules per kind (for inspect). */
export function kindCounts(lora: Lora<Term>): Partial<Record<TermKind, number>> {
  const counts: Partial<Record<TermKind, number>> = {};
  for (const t of lora.modules.values()) {
    const k = termKind(t);
    counts[k] = (counts[k] ?? 0) + 1;
  }
  return counts;
}

/**
 * Factors wider than the weight's shorter side (a LoHa with r1·r2 ≥ min(out, in·k²)) hold more numbers than the
 * dense delta: the dense delta with an identity on its shorter side is then the smaller exact form.
 */
function exactAsDense(t: Term, path: string, out: number, fanIn: number): boolean {
  return termRankBound(t, path) >= Math.min(out, fanIn) && !termNeedsBase(t) && t.kind !== 'dense';
}

/**
 * The rank of the exact factors asLowRank gives (its own rank for a plain LoRA module), without forming them where
 * the kind allows. Base-dependent kinds must have been resolved against their base (withBase) first.
 */
export function termExactRank(t: Term, path = '(module)'): number {
  if (t.kind === undefined || t.kind === 'lowRank') return termRankBound(t, path);
  const { out, fanIn } = termDims(t, path);
  if (exactAsDense(t, path, out, fanIn)) return Math.min(out, fanIn);
  const k = ops(t);
  return k.factorRank ? k.factorRank(t, path) : k.factors(t, path).rank;
}

/** True when a kind's delta depends on the base weight (DoRA, GLoRA, OFT, BOFT). */
export function kindNeedsBase(kind: TermKind): boolean {
  return KINDS[kind].needsBase;
}

/**
 * A term as a plain low-rank module with its exact factors (scale folded in, alpha = rank): the module itself for
 * the lowRank kind. Throws LORA_NEEDS_BASE for DoRA / GLoRA without `base`.
 */
export function asLowRank(t: Term, path = '(module)', base?: Float32Array): LoraModule {
  if (t.kind === undefined || t.kind === 'lowRank') return t as LoraModule;
  const { out, fanIn, shape } = termDims(t, path);
  const f = exactAsDense(t, path, out, fanIn)
    ? denseFactors(termDelta(t, path), out, fanIn)
    : termFactors(t, path, base);
  const conv = shape.length === 4;
  return {
    up: ndarray(f.up, conv ? [out, f.rank, 1, 1] : [out, f.rank]),
    down: ndarray(f.down, [f.rank, ...shape.slice(1)]),
    alpha: f.rank,
    // scale alpha / rank = 1, so a bias delta (diff_b) is carried as it is
    ...(t.bias ? { bias: t.bias } : {}),
  };
}

/**
 * Every module of a LoRA as plain low-rank factors (see asLowRank); `baseOf` gives W0 for the kinds that need it.
 * Other fields of the input (source, dtype, embeddings …) are kept; a LoRA that is already plain is returned as it is.
 */
export function lowRankLora<L extends Lora<Term>>(
  lora: L,
  baseOf?: (path: string) => Float32Array | undefined,
): Omit<L, 'modules'> & Lora {
  let plain = true;
  for (const t of lora.modules.values()) if (t.kind !== undefined && t.kind !== 'lowRank') plain = false;
  if (plain) return lora as unknown as Omit<L, 'modules'> & Lora;
  const modules = new Map<string, LoraModule>();
  for (const [path, t] of lora.modules) modules.set(path, asLowRank(t, path, baseOf?.(path)));
  return { ...lora, modules };
}

/**
 * The same LoRA typed as a plain one (every module lowRank), for callers that read files they know to be plain
 * LoRAs. Throws LORA_SHAPE_MISMATCH naming the first module of another kind.
 */
export function requirePlain<L extends Lora<Term>>(lora: L): Omit<L, 'modules'> & Lora {
  for (const [path, t] of lora.modules) {
    if (t.kind !== undefined && t.kind !== 'lowRank') {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `module '${path}' is a ${termLabel(t)}, not a plain LoRA module; use asLowRank / lowRankLora for its exact factors`,
        { key: path, found: termLabel(t) },
      );
    }
  }
  return lora as unknown as Omit<L, 'modules'> & Lora;
}
