/**
 * Modules a tool writes that no SD1.5 / SDXL / SSD-1B checkpoint has. ComfyUI's CLIP-L model carries a
 * `text_projection` (an identity it creates when the checkpoint has none: SD1.5's and SDXL's CLIP-L are
 * CLIPTextModel, without a projection), so its LoRA saver factors that weight's difference too — zero, as both models
 * hold the same identity — and its loader maps `lora_te1_text_projection` onto it (comfy/lora.py
 * `model_lora_keys_clip`). A zero update of such a module changes nothing anywhere: it is dropped with a note. A
 * non-zero one is left to resolution, which names it as a module the architecture lacks.
 */
import type { ParsedKey } from './keys.js';

/** CLIP-L text_projection under ComfyUI's own name and the kohya name its loader maps. */
const IDLE_MODULES: ReadonlySet<string> = new Set([
  'text_encoders.clip_l.transformer.text_projection',
  'lora_te1_text_projection',
]);

type GroupLike = { readonly id: string } & Partial<Record<string, ParsedKey | string>>;

/**
 * Drop the groups of `IDLE_MODULES` whose update is zero (an all-zero down or up factor, or an all-zero `diff`) from
 * `groups`; returns a note per dropped module.
 */
export async function dropIdleModules(
  groups: Map<string, GroupLike>,
  readF32: (key: string) => Promise<Float32Array>,
): Promise<string[]> {
  const notes: string[] = [];
  for (const [id, g] of groups) {
    if (!IDLE_MODULES.has(id)) continue;
    const keyOf = (role: string): string | undefined => {
      const p = g[role];
      return typeof p === 'object' ? p.key : undefined;
    };
    const roles = ['down', 'up', 'diff'].filter((r) => keyOf(r) !== undefined);
    let zero = false;
    for (const r of roles) {
      const v = await readF32(keyOf(r)!);
      if (v.every((x) => x === 0)) zero = true;
    }
    if (!zero) continue;
    groups.delete(id);
    notes.push(
      `'${id}' is a zero update of CLIP-L's text_projection, which SD1.5 and SDXL checkpoints do not have (ComfyUI's saver writes it): dropped`,
    );
  }
  return notes;
}
