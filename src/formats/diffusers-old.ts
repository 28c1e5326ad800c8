/**
 * The 2023 diffusers attention-processor spelling (`LoRAAttnProcessor`), read for compatibility:
 *
 *   unet.<…>.attn1.processor.to_q_lora.down.weight      → unet.<…>.attn1.to_q       (to_k, to_v likewise)
 *   unet.<…>.attn2.processor.to_out_lora.up.weight      → unet.<…>.attn2.to_out.0   ("to_out_lora", no ".0")
 *   text_encoder.<…>.self_attn.to_q_lora.down.weight    → text_encoder.<…>.self_attn.q_proj (k, v, out → out_proj)
 *   text_encoder.<…>.mlp.fc1.lora_linear_layer.down.weight → text_encoder.<…>.mlp.fc1
 *
 * The 'unet.' prefix is sometimes missing. Only attention projections (and CLIP MLPs) can be expressed; alphas
 * were kept outside the file, so alpha = rank. The reading side lives in keys.ts (parseLoraKey); this file
 * writes the spelling, which the fixture generator uses to produce test files.
 */
import type { ModuleEntry } from '../layout/types.js';

const UNET_ATTN_RE = /^(.*\.attn[12])\.(to_q|to_k|to_v|to_out\.0)$/;
const CLIP_ATTN_RE = /^(.*\.self_attn)\.(q_proj|k_proj|v_proj|out_proj)$/;
const CLIP_MLP_RE = /^(.*\.mlp\.fc[12])$/;

/** The old-format keys of a module's factors, or undefined when the old format cannot express the module. */
export function oldDiffusersKeys(entry: ModuleEntry, unetPrefix = true): { down: string; up: string } | undefined {
  const local = entry.localPath;
  if (entry.component === 'unet') {
    const m = UNET_ATTN_RE.exec(local);
    if (!m) return undefined;
    const proj = m[2] === 'to_out.0' ? 'to_out' : m[2]!;
    const stem = `${unetPrefix ? 'unet.' : ''}${m[1]}.processor.${proj}_lora`;
    return { down: `${stem}.down.weight`, up: `${stem}.up.weight` };
  }
  const a = CLIP_ATTN_RE.exec(local);
  if (a) {
    const proj = { q_proj: 'to_q', k_proj: 'to_k', v_proj: 'to_v', out_proj: 'to_out' }[a[2] as 'q_proj'];
    const stem = `${entry.component}.${a[1]}.${proj}_lora`;
    return { down: `${stem}.down.weight`, up: `${stem}.up.weight` };
  }
  if (CLIP_MLP_RE.test(local)) {
    const stem = `${entry.component}.${local}.lora_linear_layer`;
    return { down: `${stem}.down.weight`, up: `${stem}.up.weight` };
  }
  return undefined;
}
