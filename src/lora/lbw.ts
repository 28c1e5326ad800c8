/**
 * Block weights as the LoRA Block Weight extension (hako-mikan/sd-webui-lora-block-weight) reads `lbw=` in an A1111
 * prompt: a comma list of 12 / 17 / 20 / 26 ratios in its BLOCKID orders (the vector forms of ./blocks.ts), or a
 * preset name. Unlike lora-mix's own `--blocks` (blocks not listed keep 1), LBW expands a short list to all 26 / 20
 * blocks with **0** for the blocks it leaves out, so this returns an explicit ratio for every block ID of the
 * architecture. Text-encoder modules take BASE. Random values (R, U) and X are refused: they have no fixed value.
 */
import { OptionError } from '../core/errors.js';
import { blockIds } from '../layout/archs.js';
import type { Arch, BlockId } from '../layout/types.js';
import { blockVectorForms } from './blocks.js';

/** Presets that need no table: every block at one value. */
const UNIFORM: Readonly<Record<string, number>> = { ALL: 1, NONE: 0, 'ALL0.5': 0.5 };

/** An explicit ratio per block ID of `arch`, from an `lbw=` value. */
export function lbwBlocks(text: string, arch: Arch, origin = 'lbw'): Record<BlockId, number> {
  const spec = text.trim();
  const all = blockIds(arch);
  const out: Record<BlockId, number> = {};
  const uniform = UNIFORM[spec.toUpperCase()];
  if (uniform !== undefined) {
    for (const id of all) out[id] = uniform;
    return out;
  }
  const items = spec.split(',').map((s) => s.trim());
  const order = blockVectorForms(arch).get(items.length);
  if (!order || items.some((s) => s === '')) {
    throw new OptionError(
      'OPTION_INVALID',
      `${origin}: lbw=${spec} is neither a preset lora-mix knows (ALL, NONE, ALL0.5) nor a list of ${[...blockVectorForms(arch).keys()].join(' or ')} ratios for ${arch}`,
      { option: 'lbw', found: spec, expected: [...blockVectorForms(arch).keys()] },
    );
  }
  for (const id of all) out[id] = 0;
  order.forEach((id, i) => {
    const v = Number(items[i]);
    if (!Number.isFinite(v)) {
      throw new OptionError(
        'OPTION_INVALID',
        `${origin}: lbw value ${i + 1} ('${items[i]}') is not a number (random R/U and X have no fixed value)`,
        { option: 'lbw', found: items[i], key: id },
      );
    }
    out[id] = v;
  });
  return out;
}
