/**
 * A summary of a LoRA for people and programs: format, architecture, modules by group and component, rank and
 * alpha histograms, parameter count, LCM-LoRA target coverage, and the kohya training metadata (ss_*).
 * Works on a decoded LoRA, a header-only plan (nothing but alphas read), or any canonical Lora.
 */
import { ARCH_LABEL, getLayout } from '../layout/index.js';
import type { Arch, Component, LayoutSize, ModuleEntry, ModuleGroup } from '../layout/types.js';
import type { Lora, Term } from '../lora/types.js';
import { termLabel, termRankBound } from '../lora/terms/index.js';
import type { DType } from '../core/tensor.js';
import type { LoadedLora, LoraFormat, LoraPlan } from './decode.js';
import type { KohyaPaths } from './kohya.js';

export interface Count<T> {
  readonly value: T;
  readonly count: number;
}

export interface LoraSummary {
  readonly kind: 'lora';
  readonly format?: LoraFormat;
  readonly kohyaPaths?: KohyaPaths | 'mixed';
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly dtype?: DType;
  readonly source?: string;
  readonly modules: number;
  readonly byGroup: Readonly<Partial<Record<ModuleGroup, number>>>;
  readonly byComponent: Readonly<Partial<Record<Component, number>>>;
  /** Modules per adapter kind ('LoRA', 'LoCon (Tucker)', 'LoHa', 'LoKr', 'full diff', 'GLoRA', 'DoRA (LoRA)' …). */
  readonly byKind: Readonly<Record<string, number>>;
  /** Rank histogram, most common first. */
  readonly ranks: readonly Count<number>[];
  /** Alpha histogram, most common first. */
  readonly alphas: readonly Count<number>[];
  /** alpha / rank histogram, most common first. */
  readonly scales: readonly Count<number>[];
  /** Factor parameters: Σ r·(in·kh·kw) + out·r. */
  readonly parameters: number;
  /** How many of the architecture's LCM-LoRA target modules the LoRA covers. */
  readonly lcmTargets: { readonly covered: number; readonly total: number };
  readonly unmatched: number;
  /**
   * Norm-layer differences (ComfyUI .diff / .diff_b, LyCORIS w_norm / b_norm), one entry per norm layer in layout
   * order: they are terms of the LoRA like its modules (merged, converted, fused, verified), listed here by path.
   */
  readonly norms: readonly NormSummary[];
  readonly notes: readonly string[];
  /** kohya training metadata (ss_* keys); long JSON values (tag frequencies, datasets) are shortened. */
  readonly training: Readonly<Record<string, string>>;
}

/** One norm-layer difference of a LoRA. */
export interface NormSummary {
  readonly path: string;
  readonly component: Component;
  /** The name as spelled in the file (a decoded file or plan), else the path. */
  readonly name: string;
  readonly channels: number;
  /** Which of the norm's tensors change. */
  readonly weight: boolean;
  readonly bias: boolean;
}

/** The norm-layer differences of a plan or a LoRA, in layout order. */
function normsOf(x: LoadedLora | LoraPlan | Lora<Term>): NormSummary[] {
  if ('layout' in x && Array.isArray((x as LoraPlan).norms)) {
    return (x as LoraPlan).norms.map((n) => ({
      path: n.entry.path,
      component: n.entry.component,
      name: n.name,
      channels: n.entry.channels,
      weight: n.weightKey !== undefined,
      bias: n.biasKey !== undefined,
    }));
  }
  const lora = x as Lora<Term>;
  if (!lora.norms || lora.norms.size === 0) return [];
  const out: NormSummary[] = [];
  for (const entry of getLayout(lora.arch, lora.size).norms) {
    const d = lora.norms.get(entry.path);
    if (!d) continue;
    out.push({
      path: entry.path,
      component: entry.component,
      name: entry.path,
      channels: entry.channels,
      weight: d.weight !== undefined,
      bias: d.bias !== undefined,
    });
  }
  return out;
}

function histogram(values: readonly number[]): Count<number>[] {
  const m = new Map<number, number>();
  for (const v of values) m.set(v, (m.get(v) ?? 0) + 1);
  return [...m.entries()]
    .map(([value, count]) => ({ value, count }))
    .sort((a, b) => b.count - a.count || a.value - b.value);
}

const numel = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

interface Row {
  entry: ModuleEntry;
  kind: string;
  rank: number;
  alpha: number;
  params: number;
}

function rowsOf(x: LoadedLora | LoraPlan | Lora<Term>): Row[] {
  if ('layout' in x && Array.isArray((x as LoraPlan).modules)) {
    return (x as LoraPlan).modules.map((m) => ({
      entry: m.entry,
      kind: m.label ?? 'LoRA',
      rank: m.rank,
      alpha: m.alpha,
      params: m.adapter
        ? Object.entries(m.adapter.tensors).reduce((n, [role, t]) => n + (role === 'alpha' ? 0 : numel(t!.shape)), 0)
        : numel(m.downShape) + numel(m.upShape),
    }));
  }
  const lora = x as Lora<Term>;
  const layout = getLayout(lora.arch, lora.size);
  const rows: Row[] = [];
  for (const [path, m] of lora.modules) {
    const entry = layout.byPath.get(path);
    if (!entry) continue;
    if (m.kind === undefined || m.kind === 'lowRank') {
      const r = m.down.shape[0] ?? 0;
      rows.push({ entry, kind: 'LoRA', rank: r, alpha: m.alpha, params: numel(m.down.shape) + numel(m.up.shape) });
    } else {
      const r = termRankBound(m, path);
      rows.push({ entry, kind: termLabel(m), rank: r, alpha: r, params: parametersOf(m) });
    }
  }
  return rows;
}

/** Values stored by a term (every ndarray and typed array in it). */
function parametersOf(t: object): number {
  let n = 0;
  for (const v of Object.values(t)) {
    if (v instanceof Float32Array) n += v.length;
    else if (v && typeof v === 'object' && 'shape' in v && 'data' in v) n += numel((v as { shape: number[] }).shape);
    else if (v && typeof v === 'object' && !Array.isArray(v)) n += parametersOf(v as object);
  }
  return n;
}

function shortMetadata(metadata: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(metadata).sort()) {
    if (!k.startsWith('ss_')) continue;
    const v = metadata[k]!;
    out[k] = v.length > 200 ? `${v.slice(0, 120)}… (${v.length} characters)` : v;
  }
  return out;
}

/** Summarise a LoRA (decoded, planned, or canonical). */
export function describeLora(x: LoadedLora | LoraPlan | Lora<Term>): LoraSummary {
  const rows = rowsOf(x);
  const byGroup: Partial<Record<ModuleGroup, number>> = {};
  const byComponent: Partial<Record<Component, number>> = {};
  const byKind: Record<string, number> = {};
  for (const r of rows) {
    byKind[r.kind] = (byKind[r.kind] ?? 0) + 1;
    byGroup[r.entry.group] = (byGroup[r.entry.group] ?? 0) + 1;
    byComponent[r.entry.component] = (byComponent[r.entry.component] ?? 0) + 1;
  }
  const layout = getLayout(x.arch, x.size);
  const present = new Set(rows.map((r) => r.entry.path));
  const targets = layout.modules.filter((m) => m.lcmTarget);
  const meta = x as Partial<LoadedLora>;
  return {
    kind: 'lora',
    ...(meta.format ? { format: meta.format } : {}),
    ...(meta.kohyaPaths ? { kohyaPaths: meta.kohyaPaths } : {}),
    arch: x.arch,
    size: x.size,
    ...(meta.dtype ? { dtype: meta.dtype } : {}),
    ...(meta.source ? { source: meta.source } : {}),
    modules: rows.length,
    byGroup,
    byComponent,
    byKind,
    ranks: histogram(rows.map((r) => r.rank)),
    alphas: histogram(rows.map((r) => r.alpha)),
    scales: histogram(rows.map((r) => r.alpha / r.rank)),
    parameters: rows.reduce((s, r) => s + r.params, 0),
    lcmTargets: { covered: targets.filter((m) => present.has(m.path)).length, total: targets.length },
    unmatched: meta.unmatched?.length ?? 0,
    norms: normsOf(x),
    notes: [...(meta.notes ?? [])],
    training: shortMetadata(x.metadata),
  };
}

const hist = (h: readonly Count<number>[]): string =>
  h
    .slice(0, 6)
    .map((c) => `${Number(c.value.toPrecision(6))}×${c.count}`)
    .join(', ') + (h.length > 6 ? `, … (${h.length} values)` : '');

/** The summary as text lines (for `lora-mix inspect`). */
export function formatLoraSummary(s: LoraSummary): string {
  const lines: string[] = [];
  const spelling = s.format === 'kohya' && s.kohyaPaths ? ` (UNet names: ${s.kohyaPaths} paths)` : '';
  const kinds = Object.entries(s.byKind ?? {});
  const plain = kinds.length === 1 && kinds[0]?.[0] === 'LoRA';
  lines.push(`kind:        ${plain ? 'LoRA' : kinds.map(([k, n]) => `${k} ×${n}`).join(', ') || 'LoRA'}`);
  if (s.format) lines.push(`format:      ${s.format}${spelling}`);
  lines.push(`arch:        ${ARCH_LABEL[s.arch]}${s.size === 'tiny' ? ' (tiny test layout)' : ''}`);
  if (s.dtype) lines.push(`dtype:       ${s.dtype}`);
  lines.push(
    `modules:     ${s.modules}  (${Object.entries(s.byGroup)
      .map(([g, n]) => `${g} ${n}`)
      .join(', ')})`,
  );
  lines.push(
    `components:  ${Object.entries(s.byComponent)
      .map(([c, n]) => `${c} ${n}`)
      .join(', ')}`,
  );
  lines.push(`${plain ? 'ranks:      ' : 'ranks/dims: '} ${hist(s.ranks)}`);
  lines.push(`alphas:      ${hist(s.alphas)}`);
  lines.push(`scale α/r:   ${hist(s.scales)}`);
  lines.push(`parameters:  ${s.parameters.toLocaleString('en-US')}`);
  lines.push(`LCM targets: ${s.lcmTargets.covered} of ${s.lcmTargets.total} covered`);
  const norms = s.norms ?? [];
  if (norms.length > 0) {
    const by = new Map<string, number>();
    for (const n of norms) by.set(n.component, (by.get(n.component) ?? 0) + 1);
    lines.push(
      `norms:       ${norms.length} norm layer(s) changed (${[...by].map(([c, n]) => `${c} ${n}`).join(', ')}): ${norms
        .slice(0, 3)
        .map((n) => n.path)
        .join(', ')}${norms.length > 3 ? ' …' : ''}`,
    );
  }
  if (s.unmatched > 0) lines.push(`unmatched:   ${s.unmatched} module(s)/key(s) not used`);
  for (const n of s.notes) lines.push(`note:        ${n}`);
  const t = Object.entries(s.training);
  if (t.length > 0) {
    lines.push('training metadata:');
    for (const [k, v] of t) lines.push(`  ${k} = ${v}`);
  }
  return lines.join('\n');
}
