/**
 * The architectures lora-mix knows, as configs (full and tiny), and `getLayout`, which turns a config into the
 * complete, cached `Layout` with its lookup maps.
 *
 * Tiny layouts keep every key name, block, layer, transformer depth and text-encoder layer count of the real model
 * and shrink only widths, so they have exactly the same module paths as the full ones. See docs/layouts.md.
 */
import { ArchError, OptionError } from '../core/errors.js';
import { generateTextEncoder, type TextEncoderConfig } from './text-encoders.js';
import type { Arch, BlockId, Component, Layout, LayoutSize, ModuleEntry, NormEntry, StateDictEntry } from './types.js';
import { generateNorms } from './norms.js';
import { ARCHS } from './types.js';
import { generateUNet, kohyaFlatten, UNET_SINGLE_FILE_PREFIX, type UNetConfig } from './unet.js';

/** Everything that defines one architecture at one size. */
export interface ArchConfig {
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly unet: UNetConfig;
  readonly textEncoders: readonly TextEncoderConfig[];
}

/** Block-ID / text-encoder family: SSD-1B is a distilled SDXL and shares its text encoders and block IDs. */
export type Family = 'sd15' | 'sdxl';

export function familyOf(arch: Arch): Family {
  return arch === 'sd15' ? 'sd15' : 'sdxl';
}

/** Human-readable names for messages and tables. */
export const ARCH_LABEL: Readonly<Record<Arch, string>> = { sd15: 'SD1.5', sdxl: 'SDXL', ssd1b: 'SSD-1B' };

// ---- UNet configs --------------------------------------------------------------------------------------------

const SD15_UNET: UNetConfig = {
  inChannels: 4,
  outChannels: 4,
  blockOutChannels: [320, 640, 1280, 1280],
  downBlockTypes: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  upBlockTypes: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  midBlockType: 'UNetMidBlock2DCrossAttn',
  layersPerBlock: 2,
  transformerLayersPerBlock: 1,
  crossAttentionDim: 768,
  useLinearProjection: false,
  normNumGroups: 32,
  attentionHeadDim: 8,
  convInKernel: 3,
  convOutKernel: 3,
};

const SDXL_UNET: UNetConfig = {
  inChannels: 4,
  outChannels: 4,
  blockOutChannels: [320, 640, 1280],
  downBlockTypes: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  upBlockTypes: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  midBlockType: 'UNetMidBlock2DCrossAttn',
  layersPerBlock: 2,
  transformerLayersPerBlock: [1, 2, 10],
  crossAttentionDim: 2048,
  useLinearProjection: true,
  normNumGroups: 32,
  attentionHeadDim: [5, 10, 20],
  addEmbedding: { type: 'text_time', additionTimeEmbedDim: 256, projectionInputDim: 2816 },
  convInKernel: 3,
  convOutKernel: 3,
};

/** SSD-1B: SDXL with fewer transformer blocks (per layer on the up side) and a resnet-only mid block. */
const SSD1B_UNET: UNetConfig = {
  ...SDXL_UNET,
  transformerLayersPerBlock: [1, 2, 4],
  reverseTransformerLayersPerBlock: [[4, 4, 10], [2, 1, 1], 1],
  midBlockType: 'UNetMidBlock2D',
};

/** Tiny: same structure, widths shrunk; GroupNorm groups 4 so that every width divides. */
function tinyUNet(full: UNetConfig, channels: number[], cross: number, pooled: number): UNetConfig {
  const tiny: UNetConfig = { ...full, blockOutChannels: channels, crossAttentionDim: cross, normNumGroups: 4 };
  if (!full.addEmbedding) return tiny;
  const addDim = 4;
  return {
    ...tiny,
    addEmbedding: { type: 'text_time', additionTimeEmbedDim: addDim, projectionInputDim: 6 * addDim + pooled },
  };
}

// ---- text encoders -------------------------------------------------------------------------------------------

interface Widths {
  hidden: number;
  mlp: number;
  vocab: number;
  positions: number;
}
const CLIP_L_FULL: Widths = { hidden: 768, mlp: 3072, vocab: 49408, positions: 77 };
const CLIP_G_FULL: Widths = { hidden: 1280, mlp: 5120, vocab: 49408, positions: 77 };

function clipL(w: Widths, component: 'text_encoder', singleFilePrefix: string, kohyaPrefix: string): TextEncoderConfig {
  return {
    component,
    singleFileNaming: 'hf-clip',
    singleFilePrefix,
    kohyaPrefix,
    hiddenSize: w.hidden,
    numLayers: 12,
    intermediateSize: w.mlp,
    vocabSize: w.vocab,
    maxPositions: w.positions,
    numHeads: 12,
  };
}

function clipG(w: Widths): TextEncoderConfig {
  return {
    component: 'text_encoder_2',
    singleFileNaming: 'open-clip',
    singleFilePrefix: 'conditioner.embedders.1.model.',
    kohyaPrefix: 'lora_te2',
    hiddenSize: w.hidden,
    numLayers: 32,
    intermediateSize: w.mlp,
    vocabSize: w.vocab,
    maxPositions: w.positions,
    numHeads: 20,
    projectionDim: w.hidden,
  };
}

/**
 * Tiny widths. The cross-attention width equals the text encoders' hidden sizes concatenated (as in the real
 * models: 768 for SD1.5, 768 + 1280 = 2048 for SDXL), and differs between the families (12 vs 20) so a tiny SD1.5
 * LoRA never fits a tiny SDXL layout.
 */
const TINY_SD15_CLIP_L: Widths = { hidden: 12, mlp: 48, vocab: 64, positions: 16 };
const TINY_SDXL_CLIP_L: Widths = { hidden: 8, mlp: 32, vocab: 64, positions: 16 };
const TINY_SDXL_CLIP_G: Widths = { hidden: 12, mlp: 48, vocab: 64, positions: 16 };

function sdxlFamily(arch: 'sdxl' | 'ssd1b', size: LayoutSize): ArchConfig {
  const full = arch === 'sdxl' ? SDXL_UNET : SSD1B_UNET;
  const te1 = size === 'full' ? CLIP_L_FULL : TINY_SDXL_CLIP_L;
  const te2 = size === 'full' ? CLIP_G_FULL : TINY_SDXL_CLIP_G;
  return {
    arch,
    size,
    unet: size === 'full' ? full : tinyUNet(full, [8, 16, 32], te1.hidden + te2.hidden, te2.hidden),
    textEncoders: [clipL(te1, 'text_encoder', 'conditioner.embedders.0.transformer.', 'lora_te1'), clipG(te2)],
  };
}

/** The config of an architecture at a size. */
export function archConfig(arch: Arch, size: LayoutSize = 'full'): ArchConfig {
  checkArch(arch, size);
  if (arch === 'sd15') {
    const te = size === 'full' ? CLIP_L_FULL : TINY_SD15_CLIP_L;
    return {
      arch,
      size,
      unet: size === 'full' ? SD15_UNET : tinyUNet(SD15_UNET, [8, 16, 32, 32], te.hidden, 0),
      textEncoders: [clipL(te, 'text_encoder', 'cond_stage_model.transformer.', 'lora_te')],
    };
  }
  return sdxlFamily(arch, size);
}

function checkArch(arch: unknown, size: unknown): asserts arch is Arch {
  if (!(ARCHS as readonly unknown[]).includes(arch)) {
    throw new OptionError(
      'OPTION_INVALID',
      `unknown architecture '${String(arch)}': expected one of ${ARCHS.join(', ')}`,
      {
        option: 'arch',
        found: arch,
        expected: ARCHS,
      },
    );
  }
  if (size !== 'full' && size !== 'tiny') {
    throw new OptionError('OPTION_INVALID', `unknown layout size '${String(size)}': expected 'full' or 'tiny'`, {
      option: 'size',
      found: size,
    });
  }
}

/** Parse a user-supplied architecture name ('sd15', 'sdxl', 'ssd1b'; also 'sd1.5', 'ssd-1b', any case). */
export function parseArch(name: string): Arch {
  const k = name
    .trim()
    .toLowerCase()
    .replace(/[-_.\s]/g, '');
  const aliases: Record<string, Arch> = { sd15: 'sd15', sd1: 'sd15', sdv15: 'sd15', sdxl: 'sdxl', ssd1b: 'ssd1b' };
  const arch = aliases[k];
  if (!arch) {
    throw new OptionError('OPTION_INVALID', `unknown architecture '${name}': expected one of ${ARCHS.join(', ')}`, {
      option: 'arch',
      found: name,
      expected: ARCHS,
    });
  }
  return arch;
}

// ---- layouts -------------------------------------------------------------------------------------------------

/** A layout plus what only the generator knows: the config and the block-ID list. */
interface BuiltLayout {
  readonly layout: Layout;
  readonly blockIds: readonly BlockId[];
}

const cache = new Map<string, BuiltLayout>();

/** Build a layout from any config (not cached; `getLayout` caches the known ones). */
export function buildLayout(cfg: ArchConfig): Layout {
  return build(cfg).layout;
}

/** ComfyUI's name for each text encoder inside its CLIP object ('clip_l', 'clip_g'), as its LoRA keys spell it. */
const COMFY_TEXT_ENCODER: Readonly<Record<Exclude<Component, 'unet'>, string>> = {
  text_encoder: 'clip_l',
  text_encoder_2: 'clip_g',
};

/**
 * The other names tools give a module (Layout.byAlias). ComfyUI keys a module by its model's state-dict name
 * without '.weight' (comfy/lora.py `model_lora_keys_unet` / `model_lora_keys_clip`): 'diffusion_model.' + the LDM
 * path for the UNet, 'text_encoders.clip_l.transformer.' / 'text_encoders.clip_g.transformer.' + the HF path for
 * the text encoders; its LoRA saver writes those keys. The LyCORIS wrapper (`lycoris/wrapper.py`, prefix 'lycoris',
 * used by SimpleTuner) flattens the path of the module it wraps: 'lycoris_' + the diffusers UNet path (what ComfyUI
 * maps), or + the LDM path when it wrapped an LDM/SGM UNet; on a text encoder 'lycoris_' + its HF path, which both
 * SDXL encoders share, so the bare form names the first encoder only, as a bare 'text_model.' path does. Tools that
 * keep kohya's encoder prefixes spell them 'lycoris_te_' / 'lycoris_te1_' / 'lycoris_te2_'.
 */
export function moduleAliases(
  m: Pick<ModuleEntry, 'component' | 'localPath' | 'singleFilePath' | 'kohyaNames'>,
): string[] {
  if (m.component === 'unet') {
    return [
      `diffusion_model.${m.singleFilePath}`,
      kohyaFlatten('lycoris', m.localPath),
      kohyaFlatten('lycoris', m.singleFilePath),
    ];
  }
  const kohya = m.kohyaNames[0] ?? '';
  const names = [`text_encoders.${COMFY_TEXT_ENCODER[m.component]}.transformer.${m.localPath}`];
  if (kohya.startsWith('lora_')) names.push(`lycoris_${kohya.slice('lora_'.length)}`);
  // The first text encoder answers to both kohya prefixes: ComfyUI maps 'lora_te_' and 'lora_te1_' onto CLIP-L
  // whatever the model (comfy/lora.py model_lora_keys_clip), and diffusers reads both as text_encoder.
  if (kohya.startsWith('lora_te1_')) names.push(`lora_te_${kohya.slice('lora_te1_'.length)}`);
  else if (kohya.startsWith('lora_te_')) names.push(`lora_te1_${kohya.slice('lora_te_'.length)}`);
  if (m.component === 'text_encoder') names.push(kohyaFlatten('lycoris', m.localPath));
  return names;
}

function build(cfg: ArchConfig): BuiltLayout {
  const unet = generateUNet(cfg.unet);
  const modules: ModuleEntry[] = [...unet.modules];
  const stateDict: StateDictEntry[] = [...unet.stateDict];
  for (const te of cfg.textEncoders) {
    const t = generateTextEncoder(te);
    modules.push(...t.modules);
    stateDict.push(...t.stateDict);
  }
  const where = `${cfg.arch} (${cfg.size}) layout`;
  const byPath = new Map<string, ModuleEntry>();
  const byKohyaName = new Map<string, ModuleEntry>();
  const bySingleFileKey = new Map<string, ModuleEntry[]>();
  const byAlias = new Map<string, ModuleEntry>();
  for (const m of modules) {
    for (const k of new Set(moduleAliases(m))) {
      const other = byAlias.get(k);
      if (other) throw duplicate(where, `module alias (also ${other.path})`, k);
      byAlias.set(k, m);
    }
    if (byPath.has(m.path)) throw duplicate(where, 'module path', m.path);
    byPath.set(m.path, m);
    for (const k of new Set(m.kohyaNames)) {
      const other = byKohyaName.get(k);
      if (other) throw duplicate(where, `kohya name (also ${other.path})`, k);
      byKohyaName.set(k, m);
    }
    const list = bySingleFileKey.get(m.singleFileWeightKey);
    if (list) {
      // Only row slices of one fused tensor may share a key, and their rows must not overlap.
      if (!m.singleFileRows || list.some((o) => !o.singleFileRows))
        throw duplicate(where, 'single-file key', m.singleFileWeightKey);
      list.push(m);
    } else {
      bySingleFileKey.set(m.singleFileWeightKey, [m]);
    }
  }
  const seenDiff = new Set<string>();
  const seenSingle = new Set<string>();
  for (const s of stateDict) {
    const dk = `${s.component}/${s.diffusersKey}`;
    if (seenDiff.has(dk)) throw duplicate(where, 'state-dict key', dk);
    seenDiff.add(dk);
    const sk = s.singleFileRows ? `${s.singleFileKey}[${s.singleFileRows[0]}:${s.singleFileRows[1]}]` : s.singleFileKey;
    if (seenSingle.has(sk)) throw duplicate(where, 'single-file state-dict key', sk);
    seenSingle.add(sk);
  }
  const { norms, normByPath, normByName } = buildNorms(cfg, where, stateDict, modules);
  const layout: Layout = {
    arch: cfg.arch,
    size: cfg.size,
    modules,
    byPath,
    byKohyaName,
    byAlias,
    bySingleFileKey,
    stateDict,
    norms,
    normByPath,
    normByName,
  };
  const blockIds: BlockId[] = cfg.textEncoders.length > 0 ? ['BASE', ...unet.blockIds] : [...unet.blockIds];
  return { layout, blockIds };
}

/** The norm table and its lookups: canonical path, and every kohya / tool name. */
function buildNorms(
  cfg: ArchConfig,
  where: string,
  stateDict: readonly StateDictEntry[],
  modules: readonly ModuleEntry[],
): { norms: NormEntry[]; normByPath: Map<string, NormEntry>; normByName: Map<string, NormEntry> } {
  const te = new Map(cfg.textEncoders.map((t) => [t.component, t]));
  const norms = generateNorms(stateDict, modules, (c) => {
    const t = c === 'unet' ? undefined : te.get(c);
    return t
      ? { singleFilePrefix: t.singleFilePrefix, kohyaPrefix: t.kohyaPrefix }
      : { singleFilePrefix: UNET_SINGLE_FILE_PREFIX, kohyaPrefix: 'lora_unet' };
  });
  const normByPath = new Map<string, NormEntry>();
  const normByName = new Map<string, NormEntry>();
  for (const n of norms) {
    if (normByPath.has(n.path)) throw duplicate(where, 'norm path', n.path);
    normByPath.set(n.path, n);
    for (const k of new Set([...n.kohyaNames, ...moduleAliases(n)])) {
      const other = normByName.get(k);
      if (other) throw duplicate(where, `norm name (also ${other.path})`, k);
      normByName.set(k, n);
    }
  }
  return { norms, normByPath, normByName };
}

function duplicate(where: string, what: string, key: string): ArchError {
  return new ArchError('ARCH_LAYOUT_INVALID', `${where}: duplicate ${what} '${key}'`, { key });
}

function built(arch: Arch, size: LayoutSize): BuiltLayout {
  checkArch(arch, size);
  const key = `${arch}/${size}`;
  let b = cache.get(key);
  if (!b) {
    b = build(archConfig(arch, size));
    cache.set(key, b);
  }
  return b;
}

const unetCache = new Map<string, readonly StateDictEntry[]>();

/**
 * The UNet state-dict entries of an architecture (cached), without building the whole layout: checkpoint detection
 * scores every candidate on them, and building all six candidate layouts (text encoders, norm tables, name maps)
 * for that cost ~0.2 s at the start of every command that opens a checkpoint. The entries are the layout's own
 * (getLayout(arch, size).stateDict holds the same ones, component 'unet', first and in this order).
 */
export function unetStateDict(arch: Arch, size: LayoutSize = 'full'): readonly StateDictEntry[] {
  checkArch(arch, size);
  const key = `${arch}/${size}`;
  let entries = unetCache.get(key);
  if (!entries) {
    entries = generateUNet(archConfig(arch, size).unet).stateDict;
    unetCache.set(key, entries);
  }
  return entries;
}

/** The layout of an architecture (cached: the same object on every call). */
export function getLayout(arch: Arch, size: LayoutSize = 'full'): Layout {
  return built(arch, size).layout;
}

/**
 * Block IDs of an architecture in order: BASE, IN00…, M00, OUT00… (26 for SD1.5, 20 for SDXL and SSD-1B). The
 * same list serves both sizes.
 */
export function blockIds(arch: Arch): readonly BlockId[] {
  return built(arch, 'full').blockIds;
}

/**
 * The block ID of a module: 'BASE' for text encoders, INnn / M00 / OUTnn for UNet modules by their LDM index, null
 * for modules no block covers (time / add embedding, conv_out).
 */
export function blockIdOf(entry: ModuleEntry): BlockId | null {
  return entry.block;
}

/** Every (arch, size) pair, in the order detection tries them. */
export const CANDIDATES: readonly { readonly arch: Arch; readonly size: LayoutSize }[] = ARCHS.flatMap((arch) =>
  (['full', 'tiny'] as const).map((size) => ({ arch, size })),
);

/** Parameters of a rank-r LoRA on a module: r·(in·kh·kw) + out·r. */
export function loraParamCount(entry: ModuleEntry, rank: number): number {
  const out = entry.shape[0]!;
  let fanIn = 1;
  for (let i = 1; i < entry.shape.length; i++) fanIn *= entry.shape[i]!;
  return rank * fanIn + out * rank;
}
