/**
 * The UNet table generator: from a diffusers-like UNet config, every Linear/Conv2d module (a `ModuleEntry`) and
 * every state-dict tensor (a `StateDictEntry`) under both namings — diffusers (`down_blocks.1.resnets.0.conv1`)
 * and single-file LDM/SGM (`input_blocks.4.0.in_layers.2`, under `model.diffusion_model.`).
 *
 * Everything is produced by loops over the config; there is no key list in this file. The numbering rules
 * (layers per block L):
 *   conv_in                                   ↔ input_blocks.0.0
 *   down_blocks.b.resnets.i / attentions.i    ↔ input_blocks.{1+(L+1)b+i}.0 / .1
 *   down_blocks.b.downsamplers.0.conv         ↔ input_blocks.{(L+1)(b+1)}.0.op
 *   mid_block.resnets.k / attentions.k        ↔ middle_block.{2k} / middle_block.{2k+1}
 *   up_blocks.u.resnets.j / attentions.j      ↔ output_blocks.{(L+1)u+j}.0 / .1
 *   up_blocks.u.upsamplers.0.conv             ↔ output_blocks.{(L+1)u+L}.{1 without attention, 2 with}.conv
 * Block IDs (LoRA Block Weight) are the LDM indices: INnn for input_blocks.nn, M00, OUTnn for output_blocks.nn.
 */
import { ArchError } from '../core/errors.js';
import type { BlockId, ModuleEntry, ModuleGroup, StateDictEntry } from './types.js';

export type DownBlockType = 'CrossAttnDownBlock2D' | 'DownBlock2D';
export type UpBlockType = 'CrossAttnUpBlock2D' | 'UpBlock2D';
export type MidBlockType = 'UNetMidBlock2DCrossAttn' | 'UNetMidBlock2D';

/** Transformer blocks per attention: one number for every layer of a block, or one number per layer. */
export type TransformerDepth = number | readonly number[];

/** A UNet2DConditionModel config, in diffusers' terms (camelCase). Only what decides names and shapes. */
export interface UNetConfig {
  /** Latent channels in (4 for SD). */
  readonly inChannels: number;
  /** Latent channels out (4 for SD). */
  readonly outChannels: number;
  /** Output channels of each down block (up blocks use them reversed). */
  readonly blockOutChannels: readonly number[];
  readonly downBlockTypes: readonly DownBlockType[];
  readonly upBlockTypes: readonly UpBlockType[];
  readonly midBlockType: MidBlockType;
  /** Resnets per down block; up blocks have one more. */
  readonly layersPerBlock: number;
  /** Transformer blocks per attention of each down block (a single number: the same for all blocks). */
  readonly transformerLayersPerBlock: number | readonly TransformerDepth[];
  /**
   * Transformer blocks per attention of each up block (per layer where they differ, as SSD-1B needs).
   * Absent: the down blocks' depths reversed, as diffusers does.
   */
  readonly reverseTransformerLayersPerBlock?: readonly TransformerDepth[];
  /** Transformer blocks in the mid block's attention. Absent: the last down block's depth (diffusers). */
  readonly midTransformerLayers?: number;
  /** Attention layers of the mid block (diffusers `num_layers`): 1 for the cross-attn mid block, 0 resnet-only. */
  readonly midBlockLayers?: number;
  /** Input width of attn2.to_k / attn2.to_v (the text encoders' hidden size). */
  readonly crossAttentionDim: number;
  /** proj_in / proj_out are Linear (true, SDXL) or 1×1 Conv2d (false, SD1.5). */
  readonly useLinearProjection: boolean;
  /** GroupNorm groups; every channel width must divide by it. Does not change any shape. */
  readonly normNumGroups: number;
  /** Attention heads (informational: heads never change a weight shape). */
  readonly attentionHeadDim?: number | readonly number[];
  /** Width of the time embedding (default 4 × blockOutChannels[0]); its input is blockOutChannels[0]. */
  readonly timeEmbeddingDim?: number;
  /** SDXL's `text_time` additional embedding: `add_embedding.linear_1` takes `projectionInputDim`. */
  readonly addEmbedding?: {
    readonly type: 'text_time';
    /** Width of each of the 6 size/crop embeddings (256 for SDXL). */
    readonly additionTimeEmbedDim: number;
    /** 6 · additionTimeEmbedDim + pooled text width (2816 for SDXL). */
    readonly projectionInputDim: number;
  };
  readonly convInKernel: number;
  readonly convOutKernel: number;
}

/** The generated UNet tables. */
export interface UNetTables {
  readonly modules: readonly ModuleEntry[];
  readonly stateDict: readonly StateDictEntry[];
  /** Block IDs in order: IN00…, M00, OUT00… (BASE, for text encoders, is added by the layout). */
  readonly blockIds: readonly BlockId[];
}

/** Prefix of UNet keys in a single-file checkpoint. */
export const UNET_SINGLE_FILE_PREFIX = 'model.diffusion_model.';

/** kohya's flattening: prefix + '_' + path with every '.' replaced by '_'. */
export function kohyaFlatten(prefix: string, path: string): string {
  return `${prefix}_${path.replace(/\./g, '_')}`;
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

export function inBlockId(n: number): BlockId {
  return `IN${pad2(n)}`;
}

export function outBlockId(n: number): BlockId {
  return `OUT${pad2(n)}`;
}

function invalid(message: string, details: Record<string, unknown> = {}): ArchError {
  return new ArchError('ARCH_LAYOUT_INVALID', `UNet config: ${message}`, details);
}

function isPosInt(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n > 0;
}

function depthAt(depth: TransformerDepth, layer: number, what: string): number {
  if (typeof depth === 'number') return depth;
  const d = depth[layer];
  if (d === undefined) throw invalid(`${what}: expected a depth for layer ${layer}, found ${depth.length} entries`);
  return d;
}

/** Check the config and resolve per-block / per-layer depths. */
function resolveConfig(cfg: UNetConfig): {
  downDepth: (block: number, layer: number) => number;
  upDepth: (block: number, layer: number) => number;
  midDepth: number;
  midLayers: number;
  timeDim: number;
} {
  for (const [name, v] of [
    ['inChannels', cfg.inChannels],
    ['outChannels', cfg.outChannels],
    ['layersPerBlock', cfg.layersPerBlock],
    ['crossAttentionDim', cfg.crossAttentionDim],
    ['normNumGroups', cfg.normNumGroups],
    ['convInKernel', cfg.convInKernel],
    ['convOutKernel', cfg.convOutKernel],
  ] as const) {
    if (!isPosInt(v)) throw invalid(`${name} must be a positive integer, found ${String(v)}`);
  }
  const n = cfg.blockOutChannels.length;
  if (n === 0) throw invalid('blockOutChannels is empty');
  for (const [i, c] of cfg.blockOutChannels.entries()) {
    if (!isPosInt(c)) throw invalid(`blockOutChannels[${i}] must be a positive integer, found ${String(c)}`);
    if (c % cfg.normNumGroups !== 0) {
      throw invalid(`blockOutChannels[${i}] = ${c} is not divisible by normNumGroups = ${cfg.normNumGroups}`);
    }
  }
  if (cfg.downBlockTypes.length !== n || cfg.upBlockTypes.length !== n) {
    throw invalid(
      `expected ${n} down and up block types (one per blockOutChannels entry), found ` +
        `${cfg.downBlockTypes.length} down and ${cfg.upBlockTypes.length} up`,
    );
  }
  if (cfg.convInKernel % 2 === 0 || cfg.convOutKernel % 2 === 0) {
    throw invalid(
      `conv kernels must be odd, found convInKernel ${cfg.convInKernel}, convOutKernel ${cfg.convOutKernel}`,
    );
  }
  const tl = cfg.transformerLayersPerBlock;
  const down: TransformerDepth[] = typeof tl === 'number' ? new Array<TransformerDepth>(n).fill(tl) : [...tl];
  if (down.length !== n) throw invalid(`transformerLayersPerBlock has ${down.length} entries, expected ${n}`);
  const up: TransformerDepth[] =
    cfg.reverseTransformerLayersPerBlock !== undefined
      ? [...cfg.reverseTransformerLayersPerBlock]
      : [...down].reverse();
  if (up.length !== n) throw invalid(`reverseTransformerLayersPerBlock has ${up.length} entries, expected ${n}`);
  const lastDown = down[n - 1]!;
  const midDepth = cfg.midTransformerLayers ?? depthAt(lastDown, 0, 'transformerLayersPerBlock (mid block)');
  const midLayers = cfg.midBlockLayers ?? (cfg.midBlockType === 'UNetMidBlock2DCrossAttn' ? 1 : 0);
  if (!Number.isInteger(midLayers) || midLayers < 0) throw invalid(`midBlockLayers must be ≥ 0, found ${midLayers}`);
  if (cfg.midBlockType === 'UNetMidBlock2D' && midLayers !== 0) {
    throw invalid(`a resnet-only UNetMidBlock2D has midBlockLayers 0, found ${midLayers}`);
  }
  const timeDim = cfg.timeEmbeddingDim ?? 4 * cfg.blockOutChannels[0]!;
  const check = (d: number, what: string): number => {
    if (!isPosInt(d)) throw invalid(`${what}: transformer depth must be a positive integer, found ${String(d)}`);
    return d;
  };
  return {
    downDepth: (b, i) => check(depthAt(down[b]!, i, `down_blocks.${b}`), `down_blocks.${b}.attentions.${i}`),
    upDepth: (u, j) => check(depthAt(up[u]!, j, `up_blocks.${u}`), `up_blocks.${u}.attentions.${j}`),
    midDepth: cfg.midBlockType === 'UNetMidBlock2DCrossAttn' ? check(midDepth, 'mid_block') : 0,
    midLayers,
    timeDim: check(timeDim, 'timeEmbeddingDim'),
  };
}

/** Collects modules and state-dict entries in model order. */
class UNetEmitter {
  readonly modules: ModuleEntry[] = [];
  readonly stateDict: StateDictEntry[] = [];

  param(diff: string, ldm: string, shape: readonly number[]): void {
    this.stateDict.push({ component: 'unet', diffusersKey: diff, singleFileKey: UNET_SINGLE_FILE_PREFIX + ldm, shape });
  }

  norm(diff: string, ldm: string, channels: number): void {
    this.param(`${diff}.weight`, `${ldm}.weight`, [channels]);
    this.param(`${diff}.bias`, `${ldm}.bias`, [channels]);
  }

  private module(
    diff: string,
    ldm: string,
    shape: number[],
    group: ModuleGroup,
    block: BlockId | null,
    bias: boolean,
    conv?: { kernel: number; stride: number; padding: number },
  ): void {
    const base = {
      path: `unet.${diff}`,
      component: 'unet' as const,
      localPath: diff,
      diffusersWeightKey: `${diff}.weight`,
      singleFilePath: ldm,
      singleFileWeightKey: `${UNET_SINGLE_FILE_PREFIX}${ldm}.weight`,
      shape,
      group,
      block,
      lcmTarget: group === 'attention' || group === 'resnet' || group === 'sampler',
      kohyaNames: [kohyaFlatten('lora_unet', diff), kohyaFlatten('lora_unet', ldm)],
    };
    const entry: ModuleEntry = conv
      ? {
          ...base,
          kind: 'conv2d',
          kernel: [conv.kernel, conv.kernel],
          stride: [conv.stride, conv.stride],
          padding: [conv.padding, conv.padding],
        }
      : { ...base, kind: 'linear' };
    this.modules.push(entry);
    this.param(`${diff}.weight`, `${ldm}.weight`, shape);
    if (bias) this.param(`${diff}.bias`, `${ldm}.bias`, [shape[0]!]);
  }

  linear(
    diff: string,
    ldm: string,
    out: number,
    inp: number,
    group: ModuleGroup,
    block: BlockId | null,
    bias = true,
  ): void {
    this.module(diff, ldm, [out, inp], group, block, bias);
  }

  conv(
    diff: string,
    ldm: string,
    out: number,
    inp: number,
    kernel: number,
    stride: number,
    group: ModuleGroup,
    block: BlockId | null,
  ): void {
    this.module(diff, ldm, [out, inp, kernel, kernel], group, block, true, {
      kernel,
      stride,
      padding: (kernel - 1) >> 1,
    });
  }

  /** ResnetBlock2D ↔ ResBlock. */
  resnet(diff: string, ldm: string, inC: number, outC: number, temb: number, block: BlockId | null): void {
    this.norm(`${diff}.norm1`, `${ldm}.in_layers.0`, inC);
    this.conv(`${diff}.conv1`, `${ldm}.in_layers.2`, outC, inC, 3, 1, 'resnet', block);
    this.linear(`${diff}.time_emb_proj`, `${ldm}.emb_layers.1`, outC, temb, 'resnet', block);
    this.norm(`${diff}.norm2`, `${ldm}.out_layers.0`, outC);
    this.conv(`${diff}.conv2`, `${ldm}.out_layers.3`, outC, outC, 3, 1, 'resnet', block);
    if (inC !== outC) this.conv(`${diff}.conv_shortcut`, `${ldm}.skip_connection`, outC, inC, 1, 1, 'resnet', block);
  }

  /** Transformer2DModel ↔ SpatialTransformer: the inner names are the same on both sides. */
  transformer(
    diff: string,
    ldm: string,
    c: number,
    depth: number,
    cross: number,
    linearProj: boolean,
    block: BlockId | null,
  ): void {
    const proj = (name: string): void => {
      if (linearProj) this.linear(`${diff}.${name}`, `${ldm}.${name}`, c, c, 'attention', block);
      else this.conv(`${diff}.${name}`, `${ldm}.${name}`, c, c, 1, 1, 'attention', block);
    };
    this.norm(`${diff}.norm`, `${ldm}.norm`, c);
    proj('proj_in');
    for (let t = 0; t < depth; t++) {
      const d = `${diff}.transformer_blocks.${t}`;
      const l = `${ldm}.transformer_blocks.${t}`;
      const attention = (name: string, kvIn: number): void => {
        this.linear(`${d}.${name}.to_q`, `${l}.${name}.to_q`, c, c, 'attention', block, false);
        this.linear(`${d}.${name}.to_k`, `${l}.${name}.to_k`, c, kvIn, 'attention', block, false);
        this.linear(`${d}.${name}.to_v`, `${l}.${name}.to_v`, c, kvIn, 'attention', block, false);
        this.linear(`${d}.${name}.to_out.0`, `${l}.${name}.to_out.0`, c, c, 'attention', block);
      };
      this.norm(`${d}.norm1`, `${l}.norm1`, c);
      attention('attn1', c);
      this.norm(`${d}.norm2`, `${l}.norm2`, c);
      attention('attn2', cross);
      this.norm(`${d}.norm3`, `${l}.norm3`, c);
      // GEGLU: one projection producing value and gate, 2 · (4 · c) rows.
      this.linear(`${d}.ff.net.0.proj`, `${l}.ff.net.0.proj`, 8 * c, c, 'attention', block);
      this.linear(`${d}.ff.net.2`, `${l}.ff.net.2`, c, 4 * c, 'attention', block);
    }
    proj('proj_out');
  }
}

/** Generate the UNet tables of a config. Throws ArchError ARCH_LAYOUT_INVALID for an inconsistent config. */
export function generateUNet(cfg: UNetConfig): UNetTables {
  const r = resolveConfig(cfg);
  const e = new UNetEmitter();
  const ch = cfg.blockOutChannels;
  const n = ch.length;
  const L = cfg.layersPerBlock;
  const temb = r.timeDim;
  const cross = cfg.crossAttentionDim;
  const lin = cfg.useLinearProjection;

  e.conv('conv_in', 'input_blocks.0.0', ch[0]!, cfg.inChannels, cfg.convInKernel, 1, 'io', inBlockId(0));
  e.linear('time_embedding.linear_1', 'time_embed.0', temb, ch[0]!, 'embedding', null);
  e.linear('time_embedding.linear_2', 'time_embed.2', temb, temb, 'embedding', null);
  if (cfg.addEmbedding) {
    if (!isPosInt(cfg.addEmbedding.projectionInputDim)) {
      throw invalid(
        `addEmbedding.projectionInputDim must be a positive integer, found ${String(cfg.addEmbedding.projectionInputDim)}`,
      );
    }
    e.linear('add_embedding.linear_1', 'label_emb.0.0', temb, cfg.addEmbedding.projectionInputDim, 'embedding', null);
    e.linear('add_embedding.linear_2', 'label_emb.0.2', temb, temb, 'embedding', null);
  }

  // Down blocks. Skip connections: every resnet and every downsampler feeds one up-block resnet.
  const blockIds: BlockId[] = [inBlockId(0)];
  let inputChannel = ch[0]!;
  for (let b = 0; b < n; b++) {
    const outC = ch[b]!;
    const attn = cfg.downBlockTypes[b] === 'CrossAttnDownBlock2D';
    for (let i = 0; i < L; i++) {
      const idx = 1 + (L + 1) * b + i;
      const id = inBlockId(idx);
      blockIds.push(id);
      e.resnet(`down_blocks.${b}.resnets.${i}`, `input_blocks.${idx}.0`, i === 0 ? inputChannel : outC, outC, temb, id);
      if (attn) {
        e.transformer(
          `down_blocks.${b}.attentions.${i}`,
          `input_blocks.${idx}.1`,
          outC,
          r.downDepth(b, i),
          cross,
          lin,
          id,
        );
      }
    }
    if (b < n - 1) {
      const idx = (L + 1) * (b + 1);
      const id = inBlockId(idx);
      blockIds.push(id);
      e.conv(`down_blocks.${b}.downsamplers.0.conv`, `input_blocks.${idx}.0.op`, outC, outC, 3, 2, 'sampler', id);
    }
    inputChannel = outC;
  }

  // Mid block: resnets.k ↔ middle_block.{2k}, attentions.k ↔ middle_block.{2k+1}.
  const midC = ch[n - 1]!;
  blockIds.push('M00');
  e.resnet('mid_block.resnets.0', 'middle_block.0', midC, midC, temb, 'M00');
  for (let k = 0; k < r.midLayers; k++) {
    e.transformer(`mid_block.attentions.${k}`, `middle_block.${2 * k + 1}`, midC, r.midDepth, cross, lin, 'M00');
    e.resnet(`mid_block.resnets.${k + 1}`, `middle_block.${2 * k + 2}`, midC, midC, temb, 'M00');
  }

  // Up blocks, channels reversed. Resnet j takes the previous output (j = 0) or this block's output, plus the
  // skip from the matching down-side output: this block's width, or the next lower block's for the last layer.
  const rev = [...ch].reverse();
  for (let u = 0; u < n; u++) {
    const outC = rev[u]!;
    const prevOut = rev[Math.max(u - 1, 0)]!;
    const skipLast = rev[Math.min(u + 1, n - 1)]!;
    const attn = cfg.upBlockTypes[u] === 'CrossAttnUpBlock2D';
    for (let j = 0; j <= L; j++) {
      const idx = (L + 1) * u + j;
      const id = outBlockId(idx);
      blockIds.push(id);
      const resIn = (j === 0 ? prevOut : outC) + (j === L ? skipLast : outC);
      e.resnet(`up_blocks.${u}.resnets.${j}`, `output_blocks.${idx}.0`, resIn, outC, temb, id);
      if (attn) {
        e.transformer(
          `up_blocks.${u}.attentions.${j}`,
          `output_blocks.${idx}.1`,
          outC,
          r.upDepth(u, j),
          cross,
          lin,
          id,
        );
      }
    }
    if (u < n - 1) {
      const idx = (L + 1) * u + L;
      e.conv(
        `up_blocks.${u}.upsamplers.0.conv`,
        `output_blocks.${idx}.${attn ? 2 : 1}.conv`,
        outC,
        outC,
        3,
        1,
        'sampler',
        outBlockId(idx),
      );
    }
  }

  e.norm('conv_norm_out', 'out.0', ch[0]!);
  e.conv('conv_out', 'out.2', cfg.outChannels, ch[0]!, cfg.convOutKernel, 1, 'io', null);

  return { modules: e.modules, stateDict: e.stateDict, blockIds };
}
