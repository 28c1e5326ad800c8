/** Human-readable summary of a verification report (the CLI prints it). */
import type { VerifyReport } from './types.js';

export function fmtRatio(x: number): string {
  return !Number.isFinite(x) ? String(x) : x >= 100 ? x.toExponential(2) : x.toFixed(3);
}

export function formatVerifyReport(r: VerifyReport, opts: { all?: boolean } = {}): string {
  const lines: string[] = [];
  lines.push(
    `verified ${r.checked} module(s) of ${r.fused} against ${r.base} (tolerance ${r.tolerance}× the rounding bound)`,
  );
  const shown = opts.all ? r.modules : [...r.modules].sort((a, b) => b.worstRatio - a.worstRatio).slice(0, 10);
  if (shown.length > 0) {
    lines.push(`  ${'error/bound'.padStart(11)}  ${'rel. to Δ'.padStart(9)}  ${'Δ/bound'.padStart(9)}  module`);
    for (const m of shown) {
      const flag = !m.ok ? '  FAIL' : m.inconclusive ? '  (Δ below storage precision)' : '';
      lines.push(
        `  ${fmtRatio(m.worstRatio).padStart(11)}  ${m.worstRelative.toExponential(1).padStart(9)}  ${fmtRatio(m.signal).padStart(9)}  ${m.path}${flag}`,
      );
    }
    if (!opts.all && r.modules.length > shown.length)
      lines.push(`  … ${r.modules.length - shown.length} more (worst first; --all lists every module)`);
  }
  if (r.inconclusive > 0) {
    lines.push(
      `${r.inconclusive} module(s) have a delta below the storage precision of the fused dtype: the check cannot tell them from the base`,
    );
  }
  lines.push(
    r.ok
      ? `OK: every module within tolerance (${r.seconds.toFixed(2)} s)`
      : r.checked === 0
        ? 'FAILED: no module was checked'
        : `FAILED: ${r.failed} module(s) above tolerance`,
  );
  return `${lines.join('\n')}\n`;
}
