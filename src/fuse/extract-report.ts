/** Human-readable summaries of an extraction and an unfusion (the CLI prints these; --json prints the reports). */
import type { ExtractReport } from './extract.js';
import { fmtBytes, formatFuseReport } from './report.js';
import { ULP_BUCKETS, type UnfuseReport } from './unfuse.js';

const pct = (x: number): string => `${(100 * x).toFixed(x >= 0.9995 || x === 0 ? 2 : 3)}%`;

/** What differs outside the extracted modules (changes the LoRA does not carry), naming up to 8 tensors. */
function outsideLine(r: ExtractReport): string {
  const o = r.outside;
  const missing = o.notCompared > 0 ? `; ${o.notCompared} not in the tuned checkpoint under the same name` : '';
  if (o.differing.length === 0)
    return `outside the extracted modules: all ${o.compared} tensor(s) compared are identical${missing}`;
  const shown = o.differing.slice(0, 8).join(', ');
  const more = o.differing.length > 8 ? `, … (${o.differing.length - 8} more; --json lists all)` : '';
  return (
    `outside the extracted modules: ${o.differing.length} of ${o.compared} tensor(s) differ and are NOT in the LoRA ` +
    `(${r.biasDiff ? '' : 'biases and norms without --bias-diff, '}embeddings, text encoders or VAE): ${shown}${more}${missing}`
  );
}

/** The text report: overall figures, the worst modules, and what was left out. `all` lists every module. */
export function formatExtractReport(r: ExtractReport, all = false): string {
  const lines: string[] = [];
  lines.push(
    `extracted ${r.modules.length} module(s) of ${r.arch}${r.size === 'tiny' ? ' (tiny)' : ''}: ${r.tuned} − ${r.base} → ${r.out}`,
  );
  lines.push(`rank rule: ${r.rule}; 3×3 convs: ${r.convRule}; factors stored as ${r.dtype}`);
  lines.push(
    `overall: relative error ${r.overall.relError.toExponential(3)} (‖Δ − Δ̂‖ ${r.overall.error.toExponential(3)} of ‖Δ‖ ${r.overall.norm.toExponential(3)}), kept energy ${pct(r.overall.keptEnergy)}`,
  );
  if (r.worst) lines.push(`worst module: ${r.worst.path} (relative error ${r.worst.relError.toExponential(3)})`);
  lines.push(
    `compared ${r.compared} module(s): ${r.modules.length} extracted, ${r.zero.count} with Δ = 0 left out` +
      (r.textEncoders ? '' : '; text encoders not compared (add --text-encoders)'),
  );
  for (const s of r.skipped) lines.push(`left out: ${s.count} ${s.reason}`);
  const bd = r.biasDiff;
  if (bd)
    lines.push(
      `bias-diff: stored ${bd.biases} module bias(es) (.diff_b) and ${bd.norms} norm layer(s) (.diff, .diff_b) as ` +
        `full differences; ${bd.identical} identical tensor(s) left out`,
    );
  lines.push(outsideLine(r));
  const ranks = new Map<number, number>();
  for (const m of r.modules) ranks.set(m.rank, (ranks.get(m.rank) ?? 0) + 1);
  lines.push(
    `ranks: ${[...ranks]
      .sort((a, b) => a[0] - b[0])
      .map(([k, c]) => `${k}×${c}`)
      .join(', ')}; ${r.parameters.toLocaleString('en-US')} parameters`,
  );
  const sorted = all ? r.modules : [...r.modules].sort((a, b) => b.relError - a.relError).slice(0, 8);
  lines.push(all ? 'per module (relative error, kept energy, rank):' : 'highest relative errors:');
  for (const m of sorted)
    lines.push(
      `  ${m.relError.toExponential(3)}  ${pct(m.keptEnergy).padStart(8)}  r${String(m.rank).padEnd(4)} ${m.path}`,
    );
  const rss = r.peakRssBytes !== undefined ? `, peak memory ${fmtBytes(r.peakRssBytes)}` : '';
  lines.push(`time: ${r.seconds.toFixed(2)} s; wrote ${fmtBytes(r.bytesWritten)}${rss}`);
  return `${lines.join('\n')}\n`;
}

/** The text report of an unfusion: the fuse summary, then the distance from --base when given. */
export function formatUnfuseReport(r: UnfuseReport): string {
  const lines = [
    formatFuseReport(r)
      .replace(/^fused /, 'unfused ')
      .trimEnd(),
  ];
  const d = r.distance;
  if (d) {
    lines.push(
      `distance from ${r.base === '' ? 'the base' : 'the original'} over ${d.tensors} weight(s), ${d.elements} element(s), in ulps of the original:`,
    );
    let prev = '';
    for (const h of d.histogram) {
      const label =
        h.upTo === null
          ? `> ${ULP_BUCKETS[ULP_BUCKETS.length - 1]}`
          : h.upTo === 0
            ? '0 (exact)'
            : `(${prev}, ${h.upTo}]`;
      prev = String(h.upTo);
      const share = d.elements > 0 ? (100 * h.count) / d.elements : 0;
      lines.push(`  ${label.padEnd(10)} ${String(h.count).padStart(12)}  ${share.toFixed(3)}%`);
    }
    if (d.worst) lines.push(`worst: ${d.worst.ulps.toFixed(2)} ulps (${d.worst.module}, element ${d.worst.index})`);
    lines.push(`beyond ½ ulp(fused) + ½ ulp(result): ${d.beyondBound} element(s)`);
    if (d.recoveredElements > 0) {
      lines.push(
        `${d.recoveredElements} element(s) of DoRA/GLoRA modules were recovered through an inverse, which amplifies the fused file's rounding (not held to that bound)`,
      );
    }
  }
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  return `${lines.join('\n')}\n`;
}
