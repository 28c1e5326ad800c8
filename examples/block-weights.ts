/**
 * Per-block weights: keep the LCM-LoRA whole and apply the style LoRA only to some UNet blocks.
 * Block IDs are the ones LoRA Block Weight / SuperMerger use: BASE (text encoder), IN00–IN11, M00, OUT00–OUT11 for
 * SD1.5. Uses the bundled SD1.5 fixtures; writes only to the system temp folder.
 *
 *   npx tsx examples/block-weights.ts
 *
 * In your own project import from 'lora-mix' instead of '../src/index.js'.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  LoraMixError,
  blockIds,
  deltaOf,
  loadLora,
  mergeLoras,
  modulesByBlock,
  saveLora,
  type Lora,
} from '../src/node.js';
import { requirePlain } from '../src/node.js';

const lcm = requirePlain(await loadLora('fixtures/sd15/lcm-lora.kohya.safetensors'));
const style = requirePlain(await loadLora('fixtures/sd15/style-lora.kohya.safetensors'));

// 1. Which blocks each LoRA touches (the block of a module comes from the layout table, not from its name).
const byBlock = modulesByBlock(lcm.arch, lcm.size);
const count = (l: Lora, id: string): number =>
  (byBlock.get(id as never) ?? []).filter((e) => l.modules.has(e.path)).length;
console.log(`SD1.5 blocks (${blockIds('sd15').length}): modules of the LCM-LoRA / of the style LoRA in each`);
console.log(
  `  ${blockIds('sd15')
    .map((id) => `${id} ${count(lcm, id)}/${count(style, id)}`)
    .join(', ')}`,
);

// 2. Style only on the decoder side (OUT blocks), at 0.8; nothing of it in BASE, IN and M00. Three spellings:
//    a rule per module, a string of IDs, and the 17-value vector of the blocks that hold attention.
const byRule = mergeLoras(
  [lcm, style],
  [1.0, { weight: 0.8, blocks: (_path, entry) => (entry?.block?.startsWith('OUT') ? 1 : 0) }],
);
const byIds = mergeLoras(
  [lcm, style],
  [1.0, { weight: 0.8, blocks: 'BASE=0,IN01=0,IN02=0,IN04=0,IN05=0,IN07=0,IN08=0,M00=0' }],
);
const vector = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]; // BASE IN01 IN02 IN04 IN05 IN07 IN08 M00 OUT03…OUT11
const byVector = mergeLoras([lcm, style], [1.0, { weight: 0.8, blocks: vector }]);
const r = byRule.report;
console.log(
  `\nstyle on OUT blocks only: ${r.written} modules, exact: ${r.exact}, rank ${r.rankAfter.min}–${r.rankAfter.max}`,
);
const same = (a: Lora, b: Lora): boolean =>
  a.modules.size === b.modules.size &&
  [...a.modules].every(([p, m]) => {
    const other = b.modules.get(p);
    if (!other) return false;
    const x = deltaOf(m).data,
      y = deltaOf(other).data;
    return x.every((v, i) => v === y[i]);
  });
console.log(
  `the three spellings give the same LoRA: ${same(byRule.lora, byIds.lora) && same(byRule.lora, byVector.lora)}`,
);

// 3. Check two modules: IN04 holds only the LCM delta, OUT05 holds LCM + 0.8 × style.
const maxDiff = (path: string, styleWeight: number): number => {
  const got = deltaOf(byRule.lora.modules.get(path)!).data;
  const a = deltaOf(lcm.modules.get(path)!).data;
  const b = deltaOf(style.modules.get(path)!).data;
  return got.reduce((w, v, i) => Math.max(w, Math.abs(v - (a[i]! + styleWeight * b[i]!))), 0);
};
const inPath = 'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k'; // IN04
const outPath = 'unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k'; // OUT05
console.log(`IN04  ${inPath}: max |Δ − Δ_LCM| = ${maxDiff(inPath, 0).toExponential(2)}`);
console.log(`OUT05 ${outPath}: max |Δ − (Δ_LCM + 0.8·Δ_style)| = ${maxDiff(outPath, 0.8).toExponential(2)}`);
const textOnly = [...style.modules.keys()].filter((p) => p.startsWith('text_encoder.'));
console.log(
  `BASE: ${textOnly.length} text-encoder modules of the style LoRA, ${textOnly.filter((p) => byRule.lora.modules.has(p)).length} kept ` +
    `(${byRule.report.dropped.length} dropped with reason '${byRule.report.dropped[0]?.reason ?? '-'}')`,
);

// 4. Half strength in the middle of the decoder, everything else untouched: IDs not named keep 1.
const partial = mergeLoras([lcm, style], [1.0, { weight: 0.8, blocks: 'OUT03=0.5,OUT04=0.5,OUT05=0.5' }]);
console.log(`\n"OUT03=0.5,OUT04=0.5,OUT05=0.5": ${partial.report.written} modules (other blocks at the full 0.8)`);

// 5. A mistake is a typed error with a stable code, never a silent no-op.
try {
  mergeLoras([lcm, style], [1.0, { weight: 0.8, blocks: 'IN12=0' }]);
} catch (e) {
  if (!(e instanceof LoraMixError)) throw e;
  console.log(`'IN12=0' on SD1.5: ${e.code}: ${e.message.split(';')[0]}`);
}

const dir = await mkdtemp(join(tmpdir(), 'lora-mix-example-'));
try {
  const out = join(dir, 'lcm-style-out-blocks.safetensors');
  const saved = await saveLora(byRule.lora, out, { format: 'kohya', dtype: 'F16' });
  console.log(`\nsaved ${out}: ${saved.byteLength} bytes`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
console.log('done: block-weights');
