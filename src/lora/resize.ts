/**
 * kohya-style resize (sd-scripts networks/resize_lora.py): per module, a new rank chosen from the singular values
 * S of the unscaled product M = up·down by one of kohya's rules, then the truncated SVD of M with
 * alpha_new = (alpha/r)·k, so the written delta is exactly the rank-k truncation of the module's delta.
 *
 * The singular values come from the factors (Gram matrices of up and down, src/lora/reduce.ts) — never a dense
 * SVD — and are exact up to f64 rounding. kohya's SVD of the dense M returns min(out, in·kh·kw) values, all but r
 * of them zero; the rules below use that length for their clamp, as kohya does.
 *
 * Rules (index before clamping; searchsorted = the first position whose cumulative value reaches the target):
 *   sv_ratio p:       #{j : S_j > S_0 / p}
 *   sv_cumulative p:  searchsorted(cumsum(S) / ΣS, p) + 1
 *   sv_fro p:         searchsorted(cumsum(S²) / ΣS², p²) + 1
 * then index = max(1, min(index, len(S) − 1)) and rank = index + 1; rank 1 when S_0 ≤ 1e-6; then capped by
 * maxRank (kohya's --new_rank). The rule itself is the shared kohya rule code of ./rank-rule.ts (extract uses
 * it too). lora-mix also never goes above the module's numerical rank (kohya would write
 * components with zero singular value there, which change nothing). A fixed `rank` K keeps min(K, rank).
 */
import ndarray from 'ndarray';
import { OptionError } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { contiguousValues, moduleDims } from './delta.js';
import { MERGE_METADATA_KEY, VERSION_METADATA_KEY } from './merge.js';
import { RankReducer } from './reduce.js';
import { asLowRank } from './terms/index.js';
import { chooseExtractRank, type RankRule } from './rank-rule.js';
import type { Lora, LoraModule, Term } from './types.js';

/** Which rule picks each module's rank. */
export type ResizeRule =
  | { readonly rank: number }
  | { readonly svRatio: number }
  | { readonly svFro: number }
  | { readonly svCumulative: number };

export interface ResizeOptions {
  readonly rule: ResizeRule;
  /** Never above this rank (kohya's --new_rank / --new_conv_rank cap of the dynamic rules). */
  readonly maxRank?: number;
  readonly onProgress?: (done: number, total: number) => void;
}

/** kohya's per-module report. */
export interface ModuleResizeReport {
  readonly path: string;
  readonly rankBefore: number;
  readonly rankAfter: number;
  /** alpha written: (alpha/r)·k. */
  readonly alpha: number;
  /** Σ_{j<k} S_j / Σ S. */
  readonly sumRetained: number;
  /** √(Σ_{j<k} S_j²) / √(Σ S²): the fraction of the delta's Frobenius norm kept. */
  readonly froRetained: number;
  /** S_0 / S_{k−1}. */
  readonly maxRatio: number;
}

export interface ResizeReport {
  readonly rule: ResizeRule;
  readonly maxRank?: number;
  readonly modules: readonly ModuleResizeReport[];
  readonly meanFroRetained: number;
  readonly stdFroRetained: number;
  readonly minFroRetained: number;
  readonly maxFroRetained: number;
  readonly rankAfter: { readonly min: number; readonly max: number; readonly mean: number };
}

const ruleName = (r: ResizeRule): string =>
  'rank' in r ? 'rank' : 'svRatio' in r ? 'sv_ratio' : 'svFro' in r ? 'sv_fro' : 'sv_cumulative';

/** Check a rule and cap (OptionError naming the CLI flag). */
export function checkResizeOptions(options: ResizeOptions): void {
  const r = options.rule as Record<string, unknown> | null;
  const keys = r && typeof r === 'object' ? Object.keys(r).filter((k) => r[k] !== undefined) : [];
  if (keys.length !== 1 || !['rank', 'svRatio', 'svFro', 'svCumulative'].includes(keys[0] ?? '')) {
    throw new OptionError(
      'OPTION_CONFLICT',
      `resize: give exactly one of --rank, --sv-ratio, --sv-fro, --sv-cumulative, found ${keys.length === 0 ? 'none' : keys.join(', ')}`,
      { expected: 'one rule', found: keys },
    );
  }
  const key = keys[0] ?? '';
  const v = r?.[key];
  const bad = (expected: string): never => {
    throw new OptionError('OPTION_INVALID', `resize: ${key} must be ${expected}, found ${String(v)}`, {
      key,
      expected,
      found: v,
    });
  };
  if (typeof v !== 'number' || !Number.isFinite(v)) bad('a finite number');
  const n = v as number;
  if (key === 'rank' && !(Number.isInteger(n) && n >= 1)) bad('an integer ≥ 1');
  if (key === 'svRatio' && !(n >= 1)) bad('a number ≥ 1 (the S_0 / S_k limit, e.g. 8)');
  if ((key === 'svFro' || key === 'svCumulative') && !(n > 0 && n <= 1)) bad('a fraction in (0, 1]');
  const cap = options.maxRank;
  if (cap !== undefined && !(typeof cap === 'number' && Number.isInteger(cap) && cap >= 1)) {
    throw new OptionError(
      'OPTION_INVALID',
      `resize: maxRank (--max-rank) must be an integer ≥ 1, found ${String(cap)}`,
      {
        key: 'maxRank',
        found: cap,
      },
    );
  }
}

/** The rule in the form of the shared kohya rule code (./rank-rule.ts). */
function asRankRule(rule: ResizeRule, maxRank: number): RankRule {
  if ('rank' in rule) return { kind: 'rank', rank: rule.rank };
  if ('svRatio' in rule) return { kind: 'svRatio', value: rule.svRatio, maxRank };
  if ('svFro' in rule) return { kind: 'svFro', value: rule.svFro, maxRank };
  return { kind: 'svCumulative', value: rule.svCumulative, maxRank };
}

/**
 * The rank kohya's rule gives for singular values S (descending, the non-zero ones) of a module whose SVD has
 * `length` = min(out, in·kh·kw) values, never more than S holds (the module's numerical rank) nor maxRank.
 */
export function kohyaRank(S: readonly number[], length: number, rule: ResizeRule, maxRank?: number): number {
  const sigma = Float64Array.from(S);
  let norm2 = 0,
    sum = 0;
  for (const s of S) {
    norm2 += s * s;
    sum += s;
  }
  return chooseExtractRank(asRankRule(rule, maxRank ?? length), sigma, norm2, length, sum);
}

const STALE = ['ss_network_dim', 'ss_network_alpha', 'sshs_model_hash', 'sshs_legacy_hash', 'modelspec.hash_sha256'];

/** Resize every module of a LoRA by a kohya rule; see the top of this file. */
export function kohyaResize(lora: Lora<Term>, options: ResizeOptions): { lora: Lora; report: ResizeReport } {
  checkResizeOptions(options);
  const reducer = new RankReducer();
  const modules = new Map<string, LoraModule>();
  const reports: ModuleResizeReport[] = [];
  const total = lora.modules.size;
  let done = 0;
  try {
    for (const [path, term] of lora.modules) {
      const m = asLowRank(term, path);
      const dims = moduleDims(m, path);
      const scale = m.alpha / dims.rank;
      const up = contiguousValues(m.up),
        down = contiguousValues(m.down);
      const spectrum = reducer.analyze([{ coef: 1, rank: dims.rank, up, down }], dims.out, dims.fanIn, path);
      const S = Array.from(spectrum.sigma2, (v) => Math.sqrt(v));
      const numRank = S.length;
      let k = kohyaRank(S, Math.min(dims.out, dims.fanIn), options.rule, options.maxRank);
      k = Math.min(k, Math.max(numRank, 1), dims.rank);
      const sumS = S.reduce((a, b) => a + b, 0);
      const fro2 = S.reduce((a, b) => a + b * b, 0);
      let keptS = 0,
        keptFro = 0;
      for (let j = 0; j < Math.min(k, numRank); j++) {
        keptS += S[j] ?? 0;
        keptFro += (S[j] ?? 0) ** 2;
      }
      const alpha = scale * k;
      if (k >= dims.rank || numRank === 0) {
        modules.set(path, { up: m.up, down: m.down, alpha: scale * dims.rank });
      } else {
        const f = reducer.rebuild(k);
        const upShape = m.up.shape.length === 4 ? [dims.out, k, 1, 1] : [dims.out, k];
        const downShape = dims.kernel ? [k, dims.in, dims.kernel[0], dims.kernel[1]] : [k, dims.in];
        modules.set(path, { up: ndarray(f.up, upShape), down: ndarray(f.down, downShape), alpha });
      }
      reports.push({
        path,
        rankBefore: dims.rank,
        rankAfter: Math.min(k, dims.rank),
        alpha: k >= dims.rank ? scale * dims.rank : alpha,
        sumRetained: sumS > 0 ? keptS / sumS : 1,
        froRetained: fro2 > 0 ? Math.sqrt(keptFro / fro2) : 1,
        maxRatio: numRank > 0 ? (S[0] ?? 0) / (S[Math.min(k, numRank) - 1] ?? 1) : 1,
      });
      options.onProgress?.(++done, total);
    }
  } finally {
    reducer.release();
  }
  const fro = reports.map((r) => r.froRetained);
  const mean = fro.length ? fro.reduce((a, b) => a + b, 0) / fro.length : 1;
  const std = fro.length ? Math.sqrt(fro.reduce((a, b) => a + (b - mean) ** 2, 0) / fro.length) : 0;
  const ranks = reports.map((r) => r.rankAfter);
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(lora.metadata)) if (!STALE.includes(k)) metadata[k] = v;
  const dynamic = !('rank' in options.rule);
  metadata.ss_network_dim = dynamic ? 'Dynamic' : String(Math.max(0, ...ranks));
  metadata.ss_network_alpha = dynamic ? 'Dynamic' : metadata.ss_network_dim;
  metadata[VERSION_METADATA_KEY] = VERSION;
  metadata[MERGE_METADATA_KEY] = JSON.stringify({
    resize: { rule: ruleName(options.rule), value: Object.values(options.rule)[0], maxRank: options.maxRank },
  });
  const report: ResizeReport = {
    rule: options.rule,
    ...(options.maxRank !== undefined ? { maxRank: options.maxRank } : {}),
    modules: reports,
    meanFroRetained: mean,
    stdFroRetained: std,
    minFroRetained: fro.length ? Math.min(...fro) : 1,
    maxFroRetained: fro.length ? Math.max(...fro) : 1,
    rankAfter: {
      min: ranks.length ? Math.min(...ranks) : 0,
      max: ranks.length ? Math.max(...ranks) : 0,
      mean: ranks.length ? ranks.reduce((a, b) => a + b, 0) / ranks.length : 0,
    },
  };
  // Embeddings and norm-layer differences are not low-rank: they travel unchanged.
  return {
    lora: {
      arch: lora.arch,
      size: lora.size,
      modules,
      metadata,
      ...(lora.embeddings ? { embeddings: lora.embeddings } : {}),
      ...(lora.norms ? { norms: lora.norms } : {}),
    },
    report,
  };
}
