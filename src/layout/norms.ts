/**
 * Norm layers (GroupNorm in the UNet, LayerNorm in the text encoders): their weight and bias are 1-D [C] tensors,
 * not Linear/Conv modules, but LoRA files change them by full differences — ComfyUI's saver writes `.diff` (weight)
 * and `.diff_b` (bias) for them, LyCORIS with train_norm writes `w_norm` / `b_norm` — and ComfyUI's loader applies
 * those (comfy/lora.py: every `diffusion_model.*.weight` and every diffusers UNet key has a LoRA name, norms
 * included). The table is generated from the state-dict tables: every 1-D `.weight` (a norm's scale) with its bias.
 */
import type { BlockId, Component, ModuleEntry, NormEntry, StateDictEntry } from './types.js';
import { kohyaFlatten } from './unet.js';

/** What the generator needs to know per component: the single-file prefix and the kohya prefix. */
export interface NormNaming {
  readonly singleFilePrefix: string;
  /** 'lora_unet', 'lora_te', 'lora_te1', 'lora_te2'. */
  readonly kohyaPrefix: string;
}

const WEIGHT = '.weight';
const BIAS = '.bias';

/** The block of a norm: that of a Linear/Conv module in the same parent (resnet, transformer block, attention). */
function blockOf(modules: readonly ModuleEntry[], component: Component, localPath: string): BlockId | null {
  const dot = localPath.lastIndexOf('.');
  if (dot < 0) return null; // conv_norm_out: beside conv_out, which no block covers
  const parent = `${localPath.slice(0, dot)}.`;
  return modules.find((m) => m.component === component && m.localPath.startsWith(parent))?.block ?? null;
}

/** Every norm layer of a layout, in state-dict order. */
export function generateNorms(
  stateDict: readonly StateDictEntry[],
  modules: readonly ModuleEntry[],
  naming: (component: Component) => NormNaming,
): NormEntry[] {
  const index = new Map(stateDict.map((s) => [`${s.component}/${s.diffusersKey}`, s]));
  const norms: NormEntry[] = [];
  for (const s of stateDict) {
    if (s.shape.length !== 1 || !s.diffusersKey.endsWith(WEIGHT)) continue;
    const localPath = s.diffusersKey.slice(0, -WEIGHT.length);
    const { singleFilePrefix, kohyaPrefix } = naming(s.component);
    const singleFileName = s.singleFileKey.startsWith(singleFilePrefix)
      ? s.singleFileKey.slice(singleFilePrefix.length)
      : s.singleFileKey;
    const singleFilePath = singleFileName.endsWith(WEIGHT) ? singleFileName.slice(0, -WEIGHT.length) : singleFileName;
    const bias = index.get(`${s.component}/${localPath}${BIAS}`);
    const kohyaNames =
      s.component === 'unet'
        ? [kohyaFlatten(kohyaPrefix, localPath), kohyaFlatten(kohyaPrefix, singleFilePath)]
        : [kohyaFlatten(kohyaPrefix, localPath)];
    norms.push({
      path: `${s.component}.${localPath}`,
      component: s.component,
      localPath,
      singleFilePath,
      channels: s.shape[0] ?? 0,
      group: 'norm',
      weight: s,
      ...(bias ? { bias } : {}),
      block: s.component === 'unet' ? blockOf(modules, s.component, localPath) : 'BASE',
      kohyaNames: [...new Set(kohyaNames)],
    });
  }
  return norms;
}
