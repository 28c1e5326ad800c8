/**
 * Vocabulary of the layout tables. A layout is generated from a UNet config (src/layout/unet.ts) and the
 * text-encoder configs (src/layout/text-encoders.ts); nothing here is a hand-written key list.
 */

/** Model families lora-mix knows. (Room for 'sd2'.) */
export type Arch = 'sd15' | 'sdxl' | 'ssd1b';
export const ARCHS: readonly Arch[] = ['sd15', 'sdxl', 'ssd1b'];

/**
 * 'full' is the real model. 'tiny' keeps every key name, block, layer and depth of the real model but
 * shrinks channel widths, so fixtures have the real structure at a few kilobytes.
 */
export type LayoutSize = 'full' | 'tiny';

/** The sub-model a module belongs to; also the first segment of its canonical path. */
export type Component = 'unet' | 'text_encoder' | 'text_encoder_2';

/** 'norm' is the group of norm layers (NormEntry), which are not Linear/Conv modules. */
export type ModuleGroup = 'attention' | 'resnet' | 'sampler' | 'embedding' | 'io' | 'text_encoder' | 'norm';

/**
 * LoRA Block Weight / SuperMerger block ID: 'BASE' (text encoders), 'IN00'…'IN11', 'M00', 'OUT00'…'OUT11'.
 * Null for UNet modules no block ID covers (time/add embedding, conv_out).
 */
export type BlockId = string;

/** One Linear or Conv2d weight a LoRA can target. */
export interface ModuleEntry {
  /** Canonical path: component + '.' + localPath, e.g. 'unet.down_blocks.1.attentions.0.proj_in'. */
  readonly path: string;
  readonly component: Component;
  /** Module path inside its component in diffusers / HF naming (no '.weight'). */
  readonly localPath: string;
  /** Weight key in the component's file of a diffusers folder: localPath + '.weight'. */
  readonly diffusersWeightKey: string;
  /** Module path in single-file (LDM/SGM/OpenCLIP) naming, without the checkpoint prefix. */
  readonly singleFilePath: string;
  /** Full key of the single-file checkpoint tensor this module's weight lives in (prefix included). */
  readonly singleFileWeightKey: string;
  /**
   * Rows [start, end) of `singleFileWeightKey` holding this module's weight, when the single file stores several
   * modules in one tensor (OpenCLIP-G q/k/v in `attn.in_proj_weight`). Absent: the whole tensor.
   */
  readonly singleFileRows?: readonly [number, number];
  /**
   * The single file stores the transpose of this weight (OpenCLIP-G `text_projection`, the [hidden, projection]
   * matrix used as x·P, where diffusers keeps a Linear weight [projection, hidden]). A delta lands there transposed.
   */
  readonly singleFileTransposed?: boolean;
  readonly kind: 'linear' | 'conv2d';
  /** Weight shape: [out, in] or [out, in, kh, kw]. */
  readonly shape: readonly number[];
  /** Conv only. */
  readonly kernel?: readonly [number, number];
  readonly stride?: readonly [number, number];
  readonly padding?: readonly [number, number];
  readonly group: ModuleGroup;
  readonly block: BlockId | null;
  /** Targeted by LCM-LoRA (every Linear/Conv2d in UNet attentions, resnets and down/up-samplers). */
  readonly lcmTarget: boolean;
  /**
   * A 2-D text-encoder weight that is not a Linear of the transformer layers but that ComfyUI still maps a LoRA
   * onto (comfy/lora.py maps every CLIP state-dict weight): 'projection' (`text_projection`, a bias-free Linear of
   * CLIPTextModelWithProjection) or 'embedding' (`token_embedding` [vocab, hidden], `position_embedding`
   * [positions, hidden]: the delta up·down has the table's shape). kohya and PEFT never train them; fixtures and
   * extract leave them out. Absent for every other module.
   */
  readonly extra?: 'projection' | 'embedding';
  /**
   * kohya names (without '.lora_down.weight' etc.): for UNet modules [diffusers-path spelling, SGM-path spelling]
   * ('lora_unet_down_blocks_…', 'lora_unet_input_blocks_…'); for text encoders the one 'lora_te_…' /
   * 'lora_te1_…' / 'lora_te2_…' name.
   */
  readonly kohyaNames: readonly string[];
}

/** One state-dict tensor (weights, biases, norms, embeddings) under both namings, for renaming checkpoints. */
export interface StateDictEntry {
  readonly component: Component;
  /** Key in the component's diffusers file. */
  readonly diffusersKey: string;
  /** Full single-file key (prefix included). */
  readonly singleFileKey: string;
  /** Shape in the diffusers file. */
  readonly shape: readonly number[];
  /** Rows of the single-file tensor (fused q/k/v). */
  readonly singleFileRows?: readonly [number, number];
  /** The single file stores the transpose (OpenCLIP-G text_projection). */
  readonly transposed?: boolean;
}

/**
 * A norm layer (GroupNorm in the UNet, LayerNorm in the text encoders): its weight and bias are 1-D [channels]
 * tensors that LoRA files change only by full differences (ComfyUI `.diff` / `.diff_b`, LyCORIS `w_norm` / `b_norm`).
 * Generated from the state-dict tables (src/layout/norms.ts).
 */
export interface NormEntry {
  /** Canonical path: component + '.' + localPath, e.g. 'unet.down_blocks.0.resnets.0.norm1'. */
  readonly path: string;
  readonly component: Component;
  /** Path inside its component in diffusers / HF naming (no '.weight'). */
  readonly localPath: string;
  /** Path in single-file naming without the checkpoint prefix ('input_blocks.1.0.in_layers.0', OpenCLIP 'ln_1' …). */
  readonly singleFilePath: string;
  readonly channels: number;
  readonly group: 'norm';
  readonly weight: StateDictEntry;
  readonly bias?: StateDictEntry;
  readonly block: BlockId | null;
  /** kohya spellings, as for modules (both UNet spellings). */
  readonly kohyaNames: readonly string[];
}

export interface Layout {
  readonly arch: Arch;
  readonly size: LayoutSize;
  /** Every Linear/Conv2d module of the UNet and the text encoders, in model order. */
  readonly modules: readonly ModuleEntry[];
  readonly byPath: ReadonlyMap<string, ModuleEntry>;
  /** Every kohya spelling → its module. */
  readonly byKohyaName: ReadonlyMap<string, ModuleEntry>;
  /**
   * Other names tools give a module, read only (see `moduleAliases`): ComfyUI's own LoRA keys
   * ('diffusion_model.<LDM path>', 'text_encoders.clip_l.transformer.<HF path>', 'text_encoders.clip_g.…') and the
   * LyCORIS wrapper's 'lycoris_<flattened diffusers UNet path>' (SimpleTuner).
   */
  readonly byAlias: ReadonlyMap<string, ModuleEntry>;
  /** Single-file weight key → the module(s) writing into it (several for a fused in_proj_weight). */
  readonly bySingleFileKey: ReadonlyMap<string, readonly ModuleEntry[]>;
  /** Every UNet and text-encoder state-dict key under both namings. */
  readonly stateDict: readonly StateDictEntry[];
  /** Every norm layer, in state-dict order. */
  readonly norms: readonly NormEntry[];
  readonly normByPath: ReadonlyMap<string, NormEntry>;
  /** A norm's kohya names and the other tools' names (as `byKohyaName` and `byAlias` for modules) → the norm. */
  readonly normByName: ReadonlyMap<string, NormEntry>;
}
