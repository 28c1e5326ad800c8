/**
 * LCM-LoRA + a style LoRA as one LoRA: τ = 1.0·τ_LCM + 0.8·τ_style, exact, then the same sum at a smaller rank.
 * Uses the bundled SD1.5 fixtures (tiny widths, real key names) and writes only to the system temp folder.
 *
 *   npx tsx examples/merge-lcm-style.ts
 *
 * In your own project import from 'lora-mix' instead of '../src/index.js'.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deltaOf, describeLora, loadLora, mergeLoras, saveLora } from '../src/node.js';
import { requirePlain } from '../src/node.js';

const LCM = 'fixtures/sd15/lcm-lora.kohya.safetensors';
const STYLE = 'fixtures/sd15/style-lora.kohya.safetensors';

// 1. Load both files. The format (kohya, PEFT, old diffusers) and the architecture are detected.
const lcm = requirePlain(await loadLora(LCM));
const style = requirePlain(await loadLora(STYLE));
for (const l of [lcm, style]) {
  const d = describeLora(l);
  const ranks = d.ranks.map((r) => `${r.value}×${r.count}`).join(' ');
  console.log(
    `loaded ${l.source}: ${l.format} ${l.arch}${l.size === 'tiny' ? ' (tiny)' : ''}, ${l.modules.size} modules, ` +
      `rank ${ranks}, LCM targets ${d.lcmTargets.covered}/${d.lcmTargets.total}`,
  );
}

// 2. The exact weighted sum: factors stacked along the rank axis, so ranks add up where both LoRAs have a module.
const { lora, report } = mergeLoras([lcm, style], [1.0, 0.8]);
console.log(
  `\nmerged 1.0 × LCM + 0.8 × style: ${report.written} modules, exact: ${report.exact}, ` +
    `rank ${report.rankAfter.min}–${report.rankAfter.max} (mean ${report.rankAfter.mean.toFixed(2)})`,
);

// 3. Check one module by hand: its delta is 1.0·Δ_LCM + 0.8·Δ_style, to f32 rounding.
const q = 'unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q';
const sum = deltaOf(lora.modules.get(q)!).data;
const a = deltaOf(lcm.modules.get(q)!).data;
const b = deltaOf(style.modules.get(q)!).data;
let worst = 0;
let scale = 0;
for (let i = 0; i < sum.length; i++) {
  worst = Math.max(worst, Math.abs(sum[i]! - (a[i]! + 0.8 * b[i]!)));
  scale = Math.max(scale, Math.abs(sum[i]!));
}
console.log(
  `check ${q}: max |Δ − (Δ_LCM + 0.8·Δ_style)| = ${worst.toExponential(2)} (largest |Δ| ${scale.toExponential(2)})`,
);

// 4. Save as kohya (F16 like the inputs; written to a temp file, then renamed into place).
const dir = await mkdtemp(join(tmpdir(), 'lora-mix-example-'));
try {
  const out = join(dir, 'lcm-style.safetensors');
  const saved = await saveLora(lora, out, { format: 'kohya', dtype: 'F16' });
  console.log(
    `saved ${out}: ${saved.tensors.length} tensors, ${saved.byteLength} bytes` +
      (saved.stats.flushedToZero > 0 ? `, ${saved.stats.flushedToZero} value(s) too small for F16 became 0` : ''),
  );
  const back = requirePlain(await loadLora(out));
  console.log(
    `reloaded: ${back.format} ${back.arch}${back.size === 'tiny' ? ' (tiny)' : ''}, ${back.modules.size} modules`,
  );

  // 5. Optionally trade exactness for size: the best rank-8 approximation of every module (Eckart–Young).
  const reduced = mergeLoras([lcm, style], [1.0, 0.8], { rank: 8 });
  const r = reduced.report;
  console.log(
    `\nrank-reduced to 8: exact: ${r.exact}, rank ${r.rankAfter.min}–${r.rankAfter.max}, ` +
      `mean norm kept ${(100 * r.meanNormKept).toFixed(2)}%, worst ${(100 * r.minNormKept).toFixed(2)}%, ` +
      `error ${(100 * r.relativeError).toFixed(1)}% of the reduced modules' norm`,
  );
  const small = join(dir, 'lcm-style.rank8.safetensors');
  const savedSmall = await saveLora(reduced.lora, small, { format: 'kohya', dtype: 'F16' });
  console.log(
    `saved ${small}: ${savedSmall.byteLength} bytes (${((100 * savedSmall.byteLength) / saved.byteLength).toFixed(0)}% of the exact file)`,
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
console.log('done: merge-lcm-style');
