/** The text report of analyzeLoras (the CLI prints it; --json prints the report itself). */
import type { AnalyzeReport, Figures } from './analyze.js';

const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;
const num = (x: number): string => x.toExponential(2);

function pairs(f: Figures): string {
  const out: string[] = [];
  for (const [key, c] of Object.entries(f.cosines)) {
    if (c === null) continue;
    const [i, j] = key.split(',').map(Number);
    out.push(`cos(${(i ?? 0) + 1},${(j ?? 0) + 1}) ${c.toFixed(3)}`);
  }
  const conflict = f.conflicts.fraction === null ? '' : `, sign conflicts ${pct(f.conflicts.fraction)}`;
  return `${out.join(' ')}${conflict}`;
}

/** Inputs, the summary, then a per-block table (norms, shares, cosines, conflicts); `modules` adds every module. */
export function formatAnalyzeReport(r: AnalyzeReport, modules = false): string {
  const lines: string[] = [];
  lines.push(`analyze: ${r.inputs.length} LoRA(s) for ${r.arch}${r.size === 'tiny' ? ' (tiny)' : ''}`);
  r.inputs.forEach((x, i) => {
    lines.push(`  ${i + 1}: ${x.weight} × ${x.name} (${x.modules} modules)`);
  });
  lines.push('');
  for (const s of r.summary) lines.push(s);
  lines.push('');
  const head = r.inputs.map((_, i) => `‖w${i + 1}τ${i + 1}‖`.padStart(10)).join(' ');
  const shares = r.inputs.map((_, i) => `share${i + 1}`.padStart(7)).join(' ');
  lines.push(`${'block'.padEnd(6)} ${'mods'.padStart(4)} ${'energy'.padStart(7)} ${head} ${shares}  pairs`);
  const row = (label: string, count: string, energy: string, f: Figures): string =>
    `${label.padEnd(6)} ${count.padStart(4)} ${energy.padStart(7)} ${f.norms.map((x) => num(x).padStart(10)).join(' ')} ${f.shares
      .map((x) => pct(x).padStart(7))
      .join(' ')}  ${pairs(f)}`;
  for (const b of r.blocks) lines.push(row(b.block, String(b.modules), pct(b.energy), b));
  lines.push(row('total', String(r.modules.length), '100%', r.total));
  if (modules) {
    lines.push('');
    lines.push('per module:');
    for (const m of r.modules)
      lines.push(
        `  ${m.path}: ${m.norms.map(num).join(' / ')}; shares ${m.shares.map(pct).join(' / ')}; ${pairs(m)}${m.sampled ? ' (sampled rows)' : ''}`,
      );
  }
  if (r.skipped.length > 0) lines.push(`skipped ${r.skipped.length} module(s): ${r.skipped[0]?.reason ?? ''}`);
  lines.push(
    `sign conflicts: entries where ≥ 2 inputs are non-zero after trimming each input to its largest ${pct(r.method.density)}; ` +
      `modules over ${r.method.sampleEntries} entries are sampled by evenly spaced rows`,
  );
  return `${lines.join('\n')}\n`;
}
