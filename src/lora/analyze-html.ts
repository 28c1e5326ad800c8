/**
 * analyzeLoras as a self-contained HTML page: per-block stacked bars of each input's energy share and a heat map
 * of the pairwise cosines, as inline SVG (no script, no network), laid out for a phone first.
 */
import type { AnalyzeReport } from './analyze.js';

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];
const color = (i: number): string => COLORS[i % COLORS.length] ?? '#555';

function esc(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c,
  );
}

/** Stacked horizontal bars: one row per block, each input's share of the merged energy (negatives to the left). */
function shareBars(r: AnalyzeReport): string {
  const rowH = 22;
  const left = 60;
  const width = 360;
  const h = r.blocks.length * rowH + 30;
  const zero = left + 0.25 * width;
  const scale = 0.75 * width;
  const parts: string[] = [];
  r.blocks.forEach((b, y) => {
    const top = y * rowH + 20;
    parts.push(`<text x="${left - 6}" y="${top + 14}" text-anchor="end" font-size="12">${esc(b.block)}</text>`);
    let pos = zero;
    let neg = zero;
    b.shares.forEach((s, i) => {
      const w = Math.abs(s) * scale;
      if (w <= 0) return;
      const x = s >= 0 ? pos : neg - w;
      if (s >= 0) pos += w;
      else neg -= w;
      parts.push(
        `<rect x="${x.toFixed(1)}" y="${top}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${color(i)}"><title>${esc(
          `${b.block}: ${r.inputs[i]?.name ?? ''} ${(100 * s).toFixed(1)}% of the merged energy`,
        )}</title></rect>`,
      );
    });
  });
  parts.push(`<line x1="${zero}" y1="14" x2="${zero}" y2="${h - 8}" stroke="#333" stroke-width="1"/>`);
  parts.push(`<text x="${zero}" y="11" font-size="10" text-anchor="middle">0</text>`);
  parts.push(`<text x="${zero + scale}" y="11" font-size="10" text-anchor="end">100%</text>`);
  return `<svg viewBox="0 0 ${left + width + 10} ${h}" width="100%" role="img" aria-label="energy share per block">${parts.join('')}</svg>`;
}

/** Heat map of the cosines: rows = blocks, columns = input pairs; red = opposed, blue = aligned. */
function cosineMap(r: AnalyzeReport): string {
  const keys = Object.keys(r.total.cosines);
  if (keys.length === 0) return '';
  const cell = 26;
  const left = 60;
  const h = r.blocks.length * cell + 40;
  const parts: string[] = [];
  keys.forEach((k, x) => {
    const [i, j] = k.split(',').map(Number);
    parts.push(
      `<text x="${left + x * cell + cell / 2}" y="24" font-size="10" text-anchor="middle">${(i ?? 0) + 1}·${(j ?? 0) + 1}</text>`,
    );
  });
  r.blocks.forEach((b, y) => {
    const top = y * cell + 30;
    parts.push(
      `<text x="${left - 6}" y="${top + cell / 2 + 4}" text-anchor="end" font-size="12">${esc(b.block)}</text>`,
    );
    keys.forEach((k, x) => {
      const c = b.cosines[k];
      const fill =
        c === null || c === undefined
          ? '#eee'
          : c >= 0
            ? `rgba(31,119,180,${Math.min(1, c).toFixed(2)})`
            : `rgba(214,39,40,${Math.min(1, -c).toFixed(2)})`;
      parts.push(
        `<rect x="${left + x * cell}" y="${top}" width="${cell - 2}" height="${cell - 2}" fill="${fill}"><title>${esc(
          `${b.block} cos = ${c === null || c === undefined ? 'n/a' : c.toFixed(3)}`,
        )}</title></rect>`,
      );
    });
  });
  return `<svg viewBox="0 0 ${left + keys.length * cell + 10} ${h}" width="${Math.min(100, 20 + keys.length * 10)}%" role="img" aria-label="cosine per block and pair">${parts.join('')}</svg>`;
}

/** The page. */
export function analyzeHtml(r: AnalyzeReport): string {
  const legend = r.inputs
    .map(
      (x, i) =>
        `<li><span class="sw" style="background:${color(i)}"></span>${i + 1}: ${esc(String(x.weight))} × ${esc(x.name)} (${x.modules} modules)</li>`,
    )
    .join('');
  const rows = r.blocks
    .map(
      (b) =>
        `<tr><th>${esc(b.block)}</th><td>${(100 * b.energy).toFixed(1)}%</td>${b.shares
          .map((s) => `<td>${(100 * s).toFixed(1)}%</td>`)
          .join(
            '',
          )}<td>${b.conflicts.fraction === null ? '–' : `${(100 * b.conflicts.fraction).toFixed(1)}%`}</td></tr>`,
    )
    .join('');
  const head = r.inputs.map((_, i) => `<th>share ${i + 1}</th>`).join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>lora-mix analyze</title>
<style>
body{font-family:system-ui,sans-serif;margin:0 auto;padding:12px;max-width:760px;line-height:1.4;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}ul{padding-left:1.2em}
.sw{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}
table{border-collapse:collapse;font-size:.85em;display:block;overflow-x:auto}td,th{padding:2px 6px;text-align:right;border-bottom:1px solid #ddd}
svg{max-width:100%;height:auto}
</style></head><body>
<h1>How these LoRAs interact (${esc(r.arch)}${r.size === 'tiny' ? ', tiny' : ''})</h1>
<ul>${legend}</ul>
<h2>Summary</h2>
<ul>${r.summary.map((s) => `<li>${esc(s)}</li>`).join('')}</ul>
<h2>Share of the merged delta's energy, per block</h2>
${shareBars(r)}
<h2>Cosine of the weighted deltas, per block (blue aligned, red opposed)</h2>
${cosineMap(r)}
<h2>Table</h2>
<table><tr><th>block</th><th>energy</th>${head}<th>sign conflicts</th></tr>${rows}</table>
<p><small>Energy share of input i: ⟨wᵢτᵢ, M⟩/‖M‖² with M = Σ wⱼτⱼ (from the factors' Gram matrices, exact). Sign conflicts:
entries with ≥ 2 non-zero inputs after trimming each to its largest ${(100 * r.method.density).toFixed(0)}%, whose signs differ
(modules over ${r.method.sampleEntries} entries sampled by rows).</small></p>
</body></html>
`;
}
