/**
 * Block weights as the LoRA Block Weight extension (hako-mikan/sd-webui-lora-block-weight) reads `lbw=` in an A1111
 * prompt: a preset name, or a comma list of 12 / 17 / 20 / 26 ratios in its BLOCKID12/17/20/26 orders (the vector
 * forms of ./blocks.ts: 17/26 are SD1.5's, 12/20 SDXL's). As the extension does (`to26`), any of the four lengths is
 * accepted for any model: the list names its blocks, every block it leaves out gets **0** (unlike lora-mix's own
 * `--blocks`, where blocks not listed keep 1), and listed blocks the model lacks are ignored. Text-encoder modules
 * take BASE. Random values (R, U) and X are refused: they have no fixed value.
 *
 * Presets: the extension's defaults (DEF_WEIGHT_PRESET in scripts/lora_block_weight.py), all 17-value SD1.5 vectors;
 * the extension looks a name up exactly (case matters) before reading a list, and applies a 17-value preset to an
 * SDXL model through the same BLOCKID17 order, so IN00/IN03/IN06 and OUT00–OUT02 get 0 there. Its FLUXALL preset
 * (61 values) is for Flux, which lora-mix does not lay out. User presets (lbwpresets.txt) are not read.
 */
import { OptionError } from '../core/errors.js';
import { blockIds } from '../layout/archs.js';
import type { Arch, BlockId } from '../layout/types.js';
import { blockVectorForms } from './blocks.js';

const ones = (v: number): string => Array.from({ length: 17 }, () => String(v)).join(',');

/** The extension's default presets, name → 17 ratios in BLOCKID17 order. */
export const LBW_PRESETS: Readonly<Record<string, string>> = {
  NONE: ones(0),
  ALL: ones(1),
  INS: '1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0',
  IND: '1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0',
  INALL: '1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0',
  MIDD: '1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0',
  OUTD: '1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0',
  OUTS: '1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1',
  OUTALL: '1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1',
  'ALL0.5': ones(0.5),
};

/** BLOCKID12/17/20/26: the list orders the extension accepts for every model. */
function lbwOrders(): ReadonlyMap<number, readonly BlockId[]> {
  const out = new Map<number, readonly BlockId[]>();
  for (const arch of ['sd15', 'sdxl'] as const) for (const [n, ids] of blockVectorForms(arch)) out.set(n, ids);
  return out;
}

function unknown(origin: string, spec: string, detail: string): OptionError {
  const names = Object.keys(LBW_PRESETS).join(', ');
  return new OptionError(
    'OPTION_INVALID',
    `${origin}: lbw=${spec} ${detail}; expected a preset (${names}) or a list of ${[...lbwOrders().keys()].join(', ')} ratios`,
    { option: 'lbw', found: spec, expected: { presets: Object.keys(LBW_PRESETS), lengths: [...lbwOrders().keys()] } },
  );
}

/** An explicit ratio per block ID of `arch`, from an `lbw=` value. */
export function lbwBlocks(text: string, arch: Arch, origin = 'lbw'): Record<BlockId, number> {
  const spec = text.trim();
  if (spec === 'FLUXALL')
    throw unknown(origin, spec, 'is the extension’s Flux preset (61 blocks); lora-mix has no Flux layout');
  const values = Object.hasOwn(LBW_PRESETS, spec) ? (LBW_PRESETS[spec] ?? '') : spec;
  const items = values.split(',').map((s) => s.trim());
  const order = lbwOrders().get(items.length);
  if (!order || items.some((s) => s === '')) {
    const hint = Object.keys(LBW_PRESETS).find((k) => k.toLowerCase() === spec.toLowerCase());
    throw unknown(
      origin,
      spec,
      hint ? `is not a preset (names are case-sensitive: ${hint})` : 'is neither a preset nor a list of ratios',
    );
  }
  const out: Record<BlockId, number> = {};
  for (const id of blockIds(arch)) out[id] = 0;
  order.forEach((id, i) => {
    const v = Number(items[i]);
    if (!Number.isFinite(v)) {
      throw new OptionError(
        'OPTION_INVALID',
        `${origin}: lbw value ${i + 1} ('${items[i]}') is not a number (random R/U and X have no fixed value)`,
        { option: 'lbw', found: items[i], key: id },
      );
    }
    if (Object.hasOwn(out, id)) out[id] = v;
  });
  return out;
}
