/**
 * What a rank-capped conversion (convert --rank K / --min-energy E) did to each module: the rank of the exact
 * factors, the rank written, the relative error ‖Δ − Δ_k‖_F / ‖Δ‖_F and the kept norm ‖Δ_k‖_F / ‖Δ‖_F (the figure
 * --min-energy thresholds; relative error² + kept² = 1), from the merge report of the one-input reduction.
 */
import type { MergeReport } from './merge.js';

export interface ModuleConversion {
  readonly path: string;
  /** The module's kind in the input (LoRA, LoHa, LoKr, full diff, DoRA, GLoRA). */
  readonly kind: string;
  /** Rank of the exact factors (Khatri–Rao r1·r2 for LoHa, rank(w1)·rank(w2) for LoKr, capped at min(out, in·k²)). */
  readonly rankBefore: number;
  readonly rankAfter: number;
  /** ‖Δ − Δ_k‖_F / ‖Δ‖_F: 0 for a module kept exact. */
  readonly relativeError: number;
  /** ‖Δ_k‖_F / ‖Δ‖_F: 1 for a module kept exact. */
  readonly normKept: number;
  /**
   * How the spectrum was found: 'exact' (the SVD from the Grams of the exact factors) or 'randomized' (the dense
   * delta's randomized SVD, within ≈ 0.1 % of the optimal error); absent for a module written exactly.
   */
  readonly svd?: 'exact' | 'randomized';
}

export interface ConversionReport {
  readonly target: { readonly rank?: number; readonly minEnergy?: number };
  readonly modules: readonly ModuleConversion[];
  readonly meanRelativeError: number;
  readonly maxRelativeError: number;
  readonly meanNormKept: number;
  readonly minNormKept: number;
  /** Modules whose written rank is below the exact one. */
  readonly reduced: number;
}

/** Build the conversion report from a merge report; `kindOf` names each module's kind in the input. */
export function conversionReport(
  report: MergeReport,
  target: { readonly rank?: number; readonly minEnergy?: number },
  kindOf: (path: string) => string,
): ConversionReport {
  return summarizeConversions(
    report.modules.map((m) => ({
      path: m.path,
      kind: kindOf(m.path),
      rankBefore: m.rankBefore,
      rankAfter: m.rankAfter,
      relativeError: m.norm !== undefined && m.norm > 0 ? m.error / m.norm : 0,
      normKept: m.normKept,
    })),
    target,
  );
}

/** One module's row from what its conversion found (convertModule's outcome). */
export function moduleConversion(
  path: string,
  kind: string,
  o: {
    readonly rankBefore: number;
    readonly rank: number;
    readonly error: number;
    readonly norm: number;
    readonly normKept: number;
    readonly method?: 'exact' | 'factors' | 'dense';
  },
): ModuleConversion {
  return {
    path,
    kind,
    rankBefore: o.rankBefore,
    rankAfter: o.rank,
    relativeError: o.norm > 0 ? o.error / o.norm : 0,
    normKept: o.normKept,
    ...(o.method === 'factors'
      ? { svd: 'exact' as const }
      : o.method === 'dense'
        ? { svd: 'randomized' as const }
        : {}),
  };
}

/** The report of a conversion's modules: the rows, then the mean and worst error and kept norm. */
export function summarizeConversions(
  modules: readonly ModuleConversion[],
  target: { readonly rank?: number; readonly minEnergy?: number },
): ConversionReport {
  const errors = modules.map((m) => m.relativeError);
  const kept = modules.map((m) => m.normKept);
  const mean = (xs: number[]): number => (xs.length > 0 ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
  return {
    target,
    modules,
    meanRelativeError: mean(errors),
    maxRelativeError: errors.length > 0 ? Math.max(...errors) : 0,
    meanNormKept: kept.length > 0 ? mean(kept) : 1,
    minNormKept: kept.length > 0 ? Math.min(...kept) : 1,
    reduced: modules.filter((m) => m.rankAfter < m.rankBefore).length,
  };
}

/** The report as text lines: one per module, then the mean and the worst. */
export function formatConversionReport(r: ConversionReport): string[] {
  const goal = [
    r.target.rank !== undefined ? `rank ≤ ${r.target.rank}` : '',
    r.target.minEnergy !== undefined ? `‖Δ_k‖/‖Δ‖ ≥ ${r.target.minEnergy}` : '',
  ]
    .filter(Boolean)
    .join(', ');
  const width = Math.max(6, ...r.modules.map((m) => m.path.length));
  const lines = [
    `  reduced to ${goal}: ${r.reduced} of ${r.modules.length} module(s) below their exact rank`,
    `  ${'module'.padEnd(width)}  kind       rank        rel. error  norm kept`,
  ];
  for (const m of r.modules) {
    lines.push(
      `  ${m.path.padEnd(width)}  ${m.kind.padEnd(9)}  ${`${m.rankBefore} → ${m.rankAfter}`.padEnd(10)}  ${m.relativeError.toExponential(3).padStart(10)}  ${m.normKept.toFixed(6)}`,
    );
  }
  lines.push(
    `  relative error ‖Δ − Δ_k‖/‖Δ‖: mean ${r.meanRelativeError.toExponential(3)}, max ${r.maxRelativeError.toExponential(3)}; ` +
      `norm kept ‖Δ_k‖/‖Δ‖: mean ${r.meanNormKept.toFixed(6)}, min ${r.minNormKept.toFixed(6)}`,
  );
  return lines;
}
