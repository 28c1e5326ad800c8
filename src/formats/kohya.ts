/**
 * The kohya (sd-scripts) spelling: `<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha`, where
 * `<name>` is 'lora_unet_' + the module path with every '.' turned into '_' — the UNet path in diffusers naming
 * ('lora_unet_down_blocks_1_attentions_0_proj_in') or in SGM/LDM naming ('lora_unet_input_blocks_4_1_proj_in') —
 * or 'lora_te_' (SD1.5), 'lora_te1_' / 'lora_te2_' (SDXL family) + the text-encoder path.
 *
 * Flattening loses the boundary between path separators and underscores inside identifiers, so a name is never
 * un-flattened: it is looked up in the layout's table of every spelling (`Layout.byKohyaName`).
 */
import type { ModuleEntry } from '../layout/types.js';

export type KohyaPaths = 'diffusers' | 'sgm';

/** The kohya module name of a layout module in the requested UNet spelling (text encoders have one spelling). */
export function kohyaName(entry: Pick<ModuleEntry, 'component' | 'kohyaNames'>, paths: KohyaPaths): string {
  if (entry.component !== 'unet') return entry.kohyaNames[0]!;
  return paths === 'sgm' ? (entry.kohyaNames[1] ?? entry.kohyaNames[0]!) : entry.kohyaNames[0]!;
}

/** Which UNet spelling a kohya name is for this module, or undefined when it cannot tell (text encoders). */
export function kohyaSpellingOf(entry: ModuleEntry, name: string): KohyaPaths | undefined {
  if (entry.component !== 'unet' || entry.kohyaNames[0] === entry.kohyaNames[1]) return undefined;
  if (name === entry.kohyaNames[0]) return 'diffusers';
  if (name === entry.kohyaNames[1]) return 'sgm';
  return undefined;
}

export const kohyaKeys = (name: string): { down: string; up: string; alpha: string } => ({
  down: `${name}.lora_down.weight`,
  up: `${name}.lora_up.weight`,
  alpha: `${name}.alpha`,
});

/**
 * kohya's alpha rule: a missing alpha, or an alpha of 0, means alpha = rank (scale 1). ComfyUI differs on 0
 * (scale 0); lora-mix follows kohya, which wrote the format.
 */
export function kohyaAlpha(stored: number | undefined, rank: number): { alpha: number; note?: 'missing' | 'zero' } {
  if (stored === undefined) return { alpha: rank, note: 'missing' };
  if (stored === 0) return { alpha: rank, note: 'zero' };
  return { alpha: stored };
}
