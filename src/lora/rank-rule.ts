/**
 * How many singular values of a module's delta to keep, from its singular values σ (descending) and ‖Δ‖_F².
 *
 *  - `rank` K: min(K, the number of non-zero singular values).
 *  - `minEnergy` E (0 < E ≤ 1): the smallest k with ‖Δ_k‖_F ≥ E·‖Δ‖_F (lora-mix's rule, no offset).
 *  - `svRatio` / `svFro` / `svCumulative` p: kohya's resize_lora.py dynamic rules, reproduced exactly
 *    (shared/research/methods.md §4): idx = #{σ_j > σ_0/p} (ratio), or the 0-based position where
 *    Σ_{i≤j} σ_i² / ‖Δ‖² first reaches p² (+1), or where Σ_{i≤j} σ_i / Σσ first reaches p (+1); then idx is
 *    clamped to [1, min(out, fanIn) − 1] and the rank is idx + 1 (kohya keeps one more); σ_0 ≤ 1e-6 gives rank 1.
 *    The result is capped by `maxRank`.
 *
 * `sigma` may hold only the leading singular values (a truncated SVD): a rule that would need more than it holds
 * then keeps them all (never more than maxRank, which the truncated SVD must cover).
 */
import { OptionError } from '../core/errors.js';

export type RankRule =
  | { readonly kind: 'rank'; readonly rank: number }
  | { readonly kind: 'minEnergy'; readonly value: number; readonly maxRank: number }
  | { readonly kind: 'svRatio' | 'svFro' | 'svCumulative'; readonly value: number; readonly maxRank: number };

/** kohya's MIN_SV: a largest singular value at or below it gives rank 1. */
export const KOHYA_MIN_SV = 1e-6;

/** The largest rank a rule can give (what a truncated SVD has to find). */
export function ruleCap(rule: RankRule): number {
  return rule.kind === 'rank' ? rule.rank : rule.maxRank;
}

/** Human-readable form, for reports and metadata. */
export function describeRule(rule: RankRule): string {
  switch (rule.kind) {
    case 'rank':
      return `rank ${rule.rank}`;
    case 'minEnergy':
      return `min-energy ${rule.value} (max rank ${rule.maxRank})`;
    case 'svRatio':
      return `sv-ratio ${rule.value} (max rank ${rule.maxRank})`;
    case 'svFro':
      return `sv-fro ${rule.value} (max rank ${rule.maxRank})`;
    case 'svCumulative':
      return `sv-cumulative ${rule.value} (max rank ${rule.maxRank})`;
  }
}

/** Check a rule's numbers (OptionError OPTION_INVALID naming the option). */
export function validateRule(rule: RankRule, where = 'extract'): RankRule {
  const bad = (what: string, found: unknown, expected: string): never => {
    throw new OptionError('OPTION_INVALID', `${where}: ${what} must be ${expected}, found ${String(found)}`, {
      option: what,
      expected,
      found,
    });
  };
  const cap = ruleCap(rule);
  if (!Number.isInteger(cap) || cap < 1) bad(rule.kind === 'rank' ? 'rank' : 'maxRank', cap, 'a positive integer');
  if (rule.kind === 'minEnergy' && !(rule.value > 0 && rule.value <= 1)) bad('minEnergy', rule.value, 'in (0, 1]');
  if (rule.kind === 'svRatio' && !(rule.value >= 1 && Number.isFinite(rule.value))) bad('svRatio', rule.value, '≥ 1');
  if ((rule.kind === 'svFro' || rule.kind === 'svCumulative') && !(rule.value > 0 && rule.value <= 1))
    bad(rule.kind, rule.value, 'in (0, 1]');
  return rule;
}

/** First 0-based j where cum_j ≥ target (numpy's searchsorted, left), or the length when none. */
function searchsorted(cum: readonly number[], target: number): number {
  for (let j = 0; j < cum.length; j++) if (cum[j]! >= target) return j;
  return cum.length;
}

/**
 * The rank a rule keeps. `sigma`: singular values found (descending); `norm2` = ‖Δ‖_F²; `fullLength` =
 * min(out, fanIn) (kohya's len(S)); `sigmaSum` = Σσ over all singular values (svCumulative only).
 */
export function chooseExtractRank(
  rule: RankRule,
  sigma: Float64Array,
  norm2: number,
  fullLength: number,
  sigmaSum?: number,
): number {
  const found = sigma.length;
  if (found === 0) return 0;
  const cap = Math.min(ruleCap(rule), fullLength);
  if (rule.kind === 'rank') return Math.min(cap, found);
  if (rule.kind === 'minEnergy') {
    const goal = rule.value * rule.value * norm2 * (1 - 1e-12);
    let cum = 0;
    for (let j = 0; j < found; j++) {
      cum += sigma[j]! * sigma[j]!;
      if (cum >= goal) return Math.min(cap, j + 1);
    }
    return Math.min(cap, found);
  }
  const s0 = sigma[0]!;
  let idx: number;
  if (rule.kind === 'svRatio') {
    const min = s0 / rule.value;
    idx = 0;
    while (idx < found && sigma[idx]! > min) idx++;
  } else {
    const squares = rule.kind === 'svFro';
    const total = squares ? norm2 : (sigmaSum ?? Number.NaN);
    let acc = 0;
    const cum: number[] = [];
    for (let j = 0; j < found; j++) {
      acc += squares ? sigma[j]! * sigma[j]! : sigma[j]!;
      cum.push(acc / total);
    }
    idx = searchsorted(cum, squares ? rule.value * rule.value : rule.value) + 1;
  }
  idx = Math.max(1, Math.min(idx, fullLength - 1));
  let k = idx + 1;
  if (s0 <= KOHYA_MIN_SV) k = 1;
  return Math.max(1, Math.min(k, cap, found));
}
