/**
 * analyzeLoras: how weighted LoRAs interact, module by module and block by block, before anyone merges them.
 *
 * Definitions (every τᵢ is the input's delta at strength 1 with its own alpha/rank, wᵢ the user's weight, and the
 * merged delta is M = Σ wᵢ·τᵢ):
 *  - norm: ‖wᵢ·τᵢ‖_F;
 *  - share of the merged delta's energy: ⟨wᵢ·τᵢ, M⟩ / ‖M‖²; the shares of a module add up to 1; a negative share
 *    means the input pulls against the others;
 *  - cosine: ⟨wᵢ·τᵢ, wⱼ·τⱼ⟩ / (‖wᵢ·τᵢ‖·‖wⱼ·τⱼ‖) (the cosine of the deltas as merged: a negative weight flips it);
 *  - sign conflicts: among the entries where at least two inputs are non-zero after TIES's trimming at `density`
 *    (each input keeps its largest-magnitude share `density` of the entries looked at), the fraction whose
 *    non-zero signs are not all equal — the entries TIES's sign election would drop from some input.
 * Inner products come from the factors: with τ = U·D (scales folded into U), ⟨Uᵢ·Dᵢ, Uⱼ·Dⱼ⟩ = Σ (Uᵢᵀ·Uⱼ) ∘ (Dᵢ·Dⱼᵀ),
 * exact and without a dense delta (rᵢ·rⱼ·(out + in) work); a module whose factors are larger than its dense delta
 * (full diffs) uses the dense delta instead. Sign conflicts need entries: every entry of a module with at most
 * `sampleEntries` (default 2¹⁸) of them, otherwise whole rows evenly spaced through the module (the same rows for
 * every input) until at least `sampleEntries` entries are looked at — an estimate, marked `sampled`.
 * Blocks are kohya/LBW block IDs (BASE = the text encoders; modules without a block: 'other'); block figures add
 * the modules' squared norms and inner products, i.e. they treat the block's deltas as one long vector.
 */
import { ArchError, OptionError } from '../core/errors.js';
import { getLayout } from '../layout/archs.js';
import type { ModuleEntry } from '../layout/types.js';
import { termDelta, termDims, termFactors, termLabel, termNeedsBase, termRankBound } from './terms/index.js';
import type { Lora, Term } from './types.js';

export interface AnalyzeInput {
  readonly name: string;
  readonly lora: Lora<Term>;
  readonly weight: number;
}

export interface AnalyzeOptions {
  /** TIES trimming density for the sign conflicts: each input keeps this share of its largest entries (default 1). */
  readonly density?: number;
  /** Modules with more entries are sampled by rows for the sign conflicts (default 262144). */
  readonly sampleEntries?: number;
  /** A block where one input has at least this share of the merged energy is 'dominated' (default 0.8). */
  readonly dominance?: number;
}

/** Pairwise figures are keyed 'i,j' (i < j, input indices). */
export interface Figures {
  /** ‖wᵢ·τᵢ‖ per input (0 where the input has no such module). */
  readonly norms: readonly number[];
  /** Share of ‖M‖² per input. */
  readonly shares: readonly number[];
  /** ‖M‖. */
  readonly merged: number;
  /** Cosine per pair (null where an input is absent). */
  readonly cosines: Readonly<Record<string, number | null>>;
  /** Entries with ≥ 2 inputs non-zero after trimming, and how many of them have conflicting signs. */
  readonly conflicts: { readonly compared: number; readonly conflicting: number; readonly fraction: number | null };
}

export interface ModuleAnalysis extends Figures {
  readonly path: string;
  readonly block: string;
  readonly sampled: boolean;
}

export interface BlockAnalysis extends Figures {
  readonly block: string;
  readonly modules: number;
  /** This block's share of Σ over blocks of ‖M_block‖². */
  readonly energy: number;
}

export interface AnalyzeReport {
  readonly arch: string;
  readonly size: string;
  readonly inputs: readonly { readonly name: string; readonly weight: number; readonly modules: number }[];
  readonly modules: readonly ModuleAnalysis[];
  readonly blocks: readonly BlockAnalysis[];
  readonly total: Figures;
  /** Sentences naming the blocks where one input dominates or inputs cancel. */
  readonly summary: readonly string[];
  /** Suggested block weights per input (LBW 'ID=value' lists), to pass as --blocks-N; empty when none. */
  readonly suggestions: readonly { readonly input: number; readonly name: string; readonly blocks: string }[];
  /** Modules left out, with why (DoRA, GLoRA, OFT and BOFT need the base weight: resolveBaseTerms first). */
  readonly skipped: readonly { readonly path: string; readonly reason: string }[];
  readonly method: { readonly density: number; readonly sampleEntries: number };
}

const pairKey = (i: number, j: number): string => `${i},${j}`;

/** One input's module as a weighted operator: factors (U scaled by w, D) or a dense matrix. */
type Operand =
  | { readonly kind: 'factors'; readonly rank: number; readonly up: Float64Array; readonly down: Float64Array }
  | { readonly kind: 'dense'; readonly delta: Float64Array };

function operand(term: Term, weight: number, out: number, n: number, path: string): Operand {
  const bound = termRankBound(term, path);
  if (bound * (out + n) <= out * n) {
    const f = termFactors(term, path);
    const up = new Float64Array(out * f.rank);
    for (let i = 0; i < up.length; i++) up[i] = weight * (f.up[i] ?? 0);
    return { kind: 'factors', rank: f.rank, up, down: Float64Array.from(f.down) };
  }
  const d = termDelta(term, path);
  const delta = new Float64Array(out * n);
  for (let i = 0; i < delta.length; i++) delta[i] = weight * (d[i] ?? 0);
  return { kind: 'dense', delta };
}

function dense(op: Operand, out: number, n: number): Float64Array {
  if (op.kind === 'dense') return op.delta;
  const d = new Float64Array(out * n);
  for (let o = 0; o < out; o++) {
    for (let a = 0; a < op.rank; a++) {
      const u = op.up[o * op.rank + a] ?? 0;
      if (u === 0) continue;
      const row = a * n;
      const base = o * n;
      for (let c = 0; c < n; c++) d[base + c] = (d[base + c] ?? 0) + u * (op.down[row + c] ?? 0);
    }
  }
  return d;
}

/** ⟨X, Y⟩ of two weighted deltas: from the factors' cross Grams when both are factored, else densely. */
function inner(x: Operand, y: Operand, out: number, n: number): number {
  if (x.kind === 'factors' && y.kind === 'factors') {
    const rx = x.rank;
    const ry = y.rank;
    const gu = new Float64Array(rx * ry);
    for (let o = 0; o < out; o++) {
      for (let a = 0; a < rx; a++) {
        const u = x.up[o * rx + a] ?? 0;
        if (u === 0) continue;
        for (let b = 0; b < ry; b++) gu[a * ry + b] = (gu[a * ry + b] ?? 0) + u * (y.up[o * ry + b] ?? 0);
      }
    }
    let s = 0;
    for (let a = 0; a < rx; a++) {
      for (let b = 0; b < ry; b++) {
        const g = gu[a * ry + b] ?? 0;
        if (g === 0) continue;
        let d = 0;
        const ra = a * n;
        const rb = b * n;
        for (let c = 0; c < n; c++) d += (x.down[ra + c] ?? 0) * (y.down[rb + c] ?? 0);
        s += g * d;
      }
    }
    return s;
  }
  const dx = dense(x, out, n);
  const dy = dense(y, out, n);
  let s = 0;
  for (let i = 0; i < dx.length; i++) s += (dx[i] ?? 0) * (dy[i] ?? 0);
  return s;
}

/** Rows of a weighted delta. */
function rowsOf(op: Operand, rows: readonly number[], n: number): Float64Array {
  const out = new Float64Array(rows.length * n);
  rows.forEach((o, s) => {
    const base = s * n;
    if (op.kind === 'dense') {
      out.set(op.delta.subarray(o * n, o * n + n), base);
      return;
    }
    for (let a = 0; a < op.rank; a++) {
      const u = op.up[o * op.rank + a] ?? 0;
      if (u === 0) continue;
      const row = a * n;
      for (let c = 0; c < n; c++) out[base + c] = (out[base + c] ?? 0) + u * (op.down[row + c] ?? 0);
    }
  });
  return out;
}

/** Smallest |v| kept when keeping the largest `density` share of `values` (0 keeps everything). */
function trimThreshold(values: Float64Array, density: number): number {
  if (density >= 1) return 0;
  const mags = Float64Array.from(values, Math.abs).sort();
  const keep = Math.floor(density * mags.length);
  if (keep <= 0) return Number.POSITIVE_INFINITY;
  return mags[mags.length - keep] ?? 0;
}

function conflictsOf(
  ops: readonly (Operand | null)[],
  out: number,
  n: number,
  density: number,
  sampleEntries: number,
): { compared: number; conflicting: number; sampled: boolean } {
  const present = ops.filter((o): o is Operand => o !== null);
  if (present.length < 2) return { compared: 0, conflicting: 0, sampled: false };
  const sampled = out * n > sampleEntries;
  const count = sampled ? Math.min(out, Math.ceil(sampleEntries / n)) : out;
  const rows = Array.from({ length: count }, (_, s) => (sampled ? Math.floor(((s + 0.5) * out) / count) : s));
  const values = present.map((op) => rowsOf(op, rows, n));
  const thresholds = values.map((v) => trimThreshold(v, density));
  let compared = 0;
  let conflicting = 0;
  const len = rows.length * n;
  for (let e = 0; e < len; e++) {
    let pos = 0;
    let neg = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i]?.[e] ?? 0;
      if (v === 0 || Math.abs(v) < (thresholds[i] ?? 0)) continue;
      if (v > 0) pos++;
      else neg++;
    }
    if (pos + neg >= 2) {
      compared++;
      if (pos > 0 && neg > 0) conflicting++;
    }
  }
  return { compared, conflicting, sampled };
}

/** Figures from a Gram matrix of the weighted deltas (k × k over all inputs; absent inputs have zero rows). */
function figures(
  gram: Float64Array,
  k: number,
  present: readonly boolean[],
  conflicts: { compared: number; conflicting: number },
): Figures {
  let m2 = 0;
  for (let i = 0; i < k * k; i++) m2 += gram[i] ?? 0;
  m2 = Math.max(0, m2);
  const norms: number[] = [];
  const shares: number[] = [];
  const cosines: Record<string, number | null> = {};
  for (let i = 0; i < k; i++) {
    norms.push(Math.sqrt(Math.max(0, gram[i * k + i] ?? 0)));
    let row = 0;
    for (let j = 0; j < k; j++) row += gram[i * k + j] ?? 0;
    shares.push(m2 > 0 ? row / m2 : 0);
  }
  for (let i = 0; i < k; i++) {
    for (let j = i + 1; j < k; j++) {
      const d = (norms[i] ?? 0) * (norms[j] ?? 0);
      cosines[pairKey(i, j)] = present[i] && present[j] && d > 0 ? (gram[i * k + j] ?? 0) / d : null;
    }
  }
  return {
    norms,
    shares,
    merged: Math.sqrt(m2),
    cosines,
    conflicts: {
      ...conflicts,
      fraction: conflicts.compared > 0 ? conflicts.conflicting / conflicts.compared : null,
    },
  };
}

function checkInputs(inputs: readonly AnalyzeInput[]): void {
  if (!Array.isArray(inputs) || inputs.length === 0) {
    throw new OptionError('OPTION_INVALID', 'analyze: give at least one LoRA with its weight', { found: inputs });
  }
  const first = inputs[0] as AnalyzeInput;
  for (const x of inputs) {
    if (!Number.isFinite(x.weight)) {
      throw new OptionError(
        'OPTION_INVALID',
        `analyze: the weight of ${x.name} must be a finite number, found ${x.weight}`,
        {
          key: x.name,
          found: x.weight,
        },
      );
    }
    if (x.lora.arch !== first.lora.arch || x.lora.size !== first.lora.size) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `analyze: ${x.name} is a LoRA for ${x.lora.arch}${x.lora.size === 'tiny' ? ' (tiny)' : ''} but ${first.name} is for ${first.lora.arch}${first.lora.size === 'tiny' ? ' (tiny)' : ''}`,
        { file: x.name, expected: first.lora.arch, found: x.lora.arch },
      );
    }
  }
}

/** Analyse weighted LoRAs (see the file comment for every definition). */
export function analyzeLoras(inputs: readonly AnalyzeInput[], options: AnalyzeOptions = {}): AnalyzeReport {
  checkInputs(inputs);
  const density = options.density ?? 1;
  if (!(density > 0 && density <= 1))
    throw new OptionError('OPTION_INVALID', `analyze: density must be in (0, 1], found ${density}`, { found: density });
  const sampleEntries = options.sampleEntries ?? 1 << 18;
  const dominance = options.dominance ?? 0.8;
  const k = inputs.length;
  const first = inputs[0] as AnalyzeInput;
  const layout = getLayout(first.lora.arch, first.lora.size);
  const paths = new Set<string>();
  for (const x of inputs) for (const p of x.lora.modules.keys()) paths.add(p);
  const entries: ModuleEntry[] = layout.modules.filter((e) => paths.has(e.path));
  const modules: ModuleAnalysis[] = [];
  const skipped: { path: string; reason: string }[] = [];
  const blockGram = new Map<
    string,
    { gram: Float64Array; present: boolean[]; modules: number; compared: number; conflicting: number }
  >();
  for (const e of entries) {
    const terms = inputs.map((x) => x.lora.modules.get(e.path) ?? null);
    const needsBase = terms.find((t) => t !== null && termNeedsBase(t));
    if (needsBase) {
      skipped.push({
        path: e.path,
        reason: `a ${termLabel(needsBase)} delta depends on the base weight: give the base checkpoint (--base CKPT; resolveBaseTerms in the API) to include it`,
      });
      continue;
    }
    const dims = termDims(terms.find((t) => t !== null) as Term, e.path);
    const { out, fanIn: n } = dims;
    const ops = terms.map((t, i) => (t ? operand(t, inputs[i]?.weight ?? 0, out, n, e.path) : null));
    const gram = new Float64Array(k * k);
    for (let i = 0; i < k; i++) {
      const oi = ops[i];
      if (!oi) continue;
      for (let j = i; j < k; j++) {
        const oj = ops[j];
        if (!oj) continue;
        const v = inner(oi, oj, out, n);
        gram[i * k + j] = v;
        gram[j * k + i] = v;
      }
    }
    const present = ops.map((o) => o !== null);
    const c = conflictsOf(ops, out, n, density, sampleEntries);
    const block = e.block ?? 'other';
    modules.push({ path: e.path, block, sampled: c.sampled, ...figures(gram, k, present, c) });
    const b = blockGram.get(block) ?? {
      gram: new Float64Array(k * k),
      present: new Array<boolean>(k).fill(false),
      modules: 0,
      compared: 0,
      conflicting: 0,
    };
    for (let i = 0; i < k * k; i++) b.gram[i] = (b.gram[i] ?? 0) + (gram[i] ?? 0);
    present.forEach((p, i) => {
      if (p) b.present[i] = true;
    });
    b.modules++;
    b.compared += c.compared;
    b.conflicting += c.conflicting;
    blockGram.set(block, b);
  }
  const order = [...layoutBlockOrder(entries)];
  const totalGram = new Float64Array(k * k);
  const totalPresent = new Array<boolean>(k).fill(false);
  let compared = 0;
  let conflicting = 0;
  for (const b of blockGram.values()) {
    for (let i = 0; i < k * k; i++) totalGram[i] = (totalGram[i] ?? 0) + (b.gram[i] ?? 0);
    b.present.forEach((p, i) => {
      if (p) totalPresent[i] = true;
    });
    compared += b.compared;
    conflicting += b.conflicting;
  }
  const total = figures(totalGram, k, totalPresent, { compared, conflicting });
  let energySum = 0;
  const blockFigures = order
    .map((id) => {
      const b = blockGram.get(id);
      if (!b) return null;
      const f = figures(b.gram, k, b.present, b);
      energySum += f.merged * f.merged;
      return { block: id, modules: b.modules, f };
    })
    .filter((x): x is { block: string; modules: number; f: Figures } => x !== null);
  const blocks: BlockAnalysis[] = blockFigures.map(({ block, modules: m, f }) => ({
    block,
    modules: m,
    energy: energySum > 0 ? (f.merged * f.merged) / energySum : 0,
    ...f,
  }));
  const { summary, suggestions } = summarize(inputs, blocks, total, dominance);
  return {
    arch: first.lora.arch,
    size: first.lora.size,
    inputs: inputs.map((x) => ({ name: x.name, weight: x.weight, modules: x.lora.modules.size })),
    modules,
    blocks,
    total,
    summary,
    suggestions,
    skipped,
    method: { density, sampleEntries },
  };
}

function layoutBlockOrder(entries: readonly ModuleEntry[]): Set<string> {
  const s = new Set<string>();
  for (const e of entries) s.add(e.block ?? 'other');
  return s;
}

const pct = (x: number): string => `${Math.round(100 * x)}%`;
const round2 = (x: number): number => Math.round(100 * x) / 100;

/** The sentences of the summary and the block weights they suggest. */
function summarize(
  inputs: readonly AnalyzeInput[],
  blocks: readonly BlockAnalysis[],
  total: Figures,
  dominance: number,
): { summary: string[]; suggestions: { input: number; name: string; blocks: string }[] } {
  const k = inputs.length;
  const name = (i: number): string => inputs[i]?.name ?? `input ${i + 1}`;
  const summary: string[] = [];
  if (k >= 2) {
    const top = total.shares.reduce((best, s, i) => (s > (total.shares[best] ?? 0) ? i : best), 0);
    summary.push(
      `overall: ${total.shares.map((s, i) => `${name(i)} ${pct(s)}`).join(', ')} of the merged delta's energy` +
        (total.shares[top] !== undefined && total.shares[top] >= dominance ? ` — ${name(top)} dominates` : ''),
    );
  }
  const perInput = new Map<number, string[]>();
  const dominated: string[] = [];
  const cancelling: string[] = [];
  for (const b of blocks) {
    if (b.energy < 0.01 && b.merged > 0) continue;
    const present = b.norms.map((x, i) => (x > 0 ? i : -1)).filter((i) => i >= 0);
    if (present.length < 2) continue;
    const sumSq = b.norms.reduce((a, x) => a + x * x, 0);
    const merged2 = b.merged * b.merged;
    let dom = -1;
    for (const i of present) if ((b.shares[i] ?? 0) >= dominance) dom = i;
    if (dom >= 0) {
      const others = present.filter((i) => i !== dom);
      const strongest = others.reduce(
        (best, i) => ((b.norms[i] ?? 0) > (b.norms[best] ?? 0) ? i : best),
        others[0] ?? dom,
      );
      const ratio = (b.norms[strongest] ?? 0) / (b.norms[dom] ?? 1);
      dominated.push(`${b.block} (${name(dom)} ${pct(b.shares[dom] ?? 0)})`);
      const m = round2(Math.max(0, Math.min(1, ratio)));
      if (m < 1) {
        const list = perInput.get(dom) ?? [];
        list.push(`${b.block}=${m}`);
        perInput.set(dom, list);
      }
    }
    if (sumSq > 0 && merged2 < 0.8 * sumSq)
      cancelling.push(`${b.block} (merged energy ${pct(merged2 / sumSq)} of the inputs' sum)`);
  }
  if (dominated.length > 0) summary.push(`one input dominates in: ${dominated.join(', ')}`);
  if (cancelling.length > 0) summary.push(`inputs cancel in: ${cancelling.join(', ')}`);
  if (k >= 2 && dominated.length === 0 && cancelling.length === 0)
    summary.push('no block is dominated by one input and no block cancels');
  const suggestions = [...perInput].map(([input, list]) => ({ input, name: name(input), blocks: list.join(',') }));
  for (const s of suggestions)
    summary.push(
      `suggested block weights for ${s.name} (input ${s.input + 1}): --blocks-${s.input + 1} ${s.blocks} (brings its norm in those blocks down to the strongest other input's)`,
    );
  return { summary, suggestions };
}
