/**
 * Does a LoRA look like an LCM-LoRA (the acceleration vector, applied at weight 1.0)? Evidence, in order:
 * "lcm" in the file name, in the names its metadata gives it, or a coverage pattern: it targets (nearly) every
 * module LCM-LoRA targets — attentions, resnets and samplers of the UNet — and no text-encoder module.
 */
import type { LoraSummary } from '../../src/formats/index.js';

const NAME_KEYS = ['ss_output_name', 'modelspec.title', 'name', 'ss_sd_model_name'];
const LCM_WORD = /lcm/i;

export const LCM_WEIGHT = 1.0;
export const STYLE_WEIGHT = 0.8;

/** A short reason when the LoRA looks like an LCM-LoRA, else null. */
export function lcmEvidence(
  fileName: string,
  metadata: Readonly<Record<string, string>>,
  summary: LoraSummary,
): string | null {
  if (LCM_WORD.test(fileName)) return 'file name';
  for (const key of NAME_KEYS) {
    const v = metadata[key];
    if (typeof v === 'string' && LCM_WORD.test(v)) return `metadata ${key}`;
  }
  const { covered, total } = summary.lcmTargets;
  const textEncoder = summary.byGroup.text_encoder ?? 0;
  if (total > 0 && covered >= 0.9 * total && textEncoder === 0) {
    return `covers ${covered} of ${total} LCM-LoRA target modules`;
  }
  return null;
}

export function defaultWeightFor(evidence: string | null): number {
  return evidence === null ? STYLE_WEIGHT : LCM_WEIGHT;
}
