/**
 * The verification network: a small denoiser whose layers are real modules of a checkpoint, used to check a
 * fusion end to end. Sampling with the fused weights W′ must give the same latents as sampling with the base
 * weights W and the LoRAs applied at run time, layer(x) = W·x + Σ wᵢ·sᵢ·upᵢ(downᵢ·x) (sᵢ = alphaᵢ / rᵢ), up to the
 * one rounding of W′ to its stored dtype. The LoRA side never forms a dense delta, so it shares no arithmetic
 * with the fuser.
 *
 * The network (every module named by its canonical path, shaped as in the layout):
 *
 *   context   fixed prompt tokens [L, dᵢ] per text encoder → one encoder layer of each (self_attn q/k/v/out_proj,
 *             mlp fc1/fc2; OpenCLIP-G's q/k/v are row slices of in_proj_weight) → concatenated to [L, D];
 *             without text encoders the fixed tokens are the context
 *   tokens    the latent [1, 4, H, W] as H·W tokens of 4 channels, lifted to C by a fixed matrix, plus a
 *             timestep feature: sinusoid(t) → SiLU → a resnet's time_emb_proj
 *   blocks    two UNet transformer blocks of width C (the first and the last of the widest ones, one in the
 *             down path, one in the up path): self-attention attn1, cross-attention attn2 over the context,
 *             GEGLU feed-forward ff.net.0.proj / ff.net.2
 *   output    x̂₀ = tanh(P·ν(h)) with a fixed projection P [4, C], returned as the ε the scheduler expects
 *
 * ν is RMS normalisation of each token. Sub-layers are pre-normalised and their outputs normalised before the
 * residual add (h += ½·ν(branch)), queries and keys are normalised before the dot product, and the output is a
 * bounded tanh: whatever the weights' magnitude, every layer moves the output by an amount of the order of its
 * relative weight change, and errors do not grow from step to step. The network is blind to a uniform rescaling
 * of a whole weight (ν removes it); verifyFusion checks magnitudes module by module.
 *
 * Arithmetic is f64 throughout (weights are f32 as decoded), so two nets agree to far below one f32 rounding of
 * a weight. `checkFusedSampling` turns the comparison into a pass/fail with a justified tolerance: it measures
 * what one rounding of the fused weights costs (simulated) and fits each LoRA's effect in the fused sample.
 * Core code: no Node imports.
 */

import { ArchError, LoraError, SamplerError, ArgumentError } from '../core/errors.js';
import { archConfig, getLayout } from '../layout/archs.js';
import { detectCheckpoint, detectDiffusersFolder, type CheckpointDetection } from '../layout/detect.js';
import type { Arch, Component, LayoutSize, ModuleEntry } from '../layout/types.js';
import { contiguousValues, moduleDims } from '../lora/delta.js';
import { compileWeight, type MergeWeight } from '../lora/merge.js';
import type { Lora, Term } from '../lora/types.js';
import { lowRankLora } from '../lora/terms/index.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import { FLOAT_FORMAT, halfUlp, isFloatDType } from '../core/dtype.js';
import type { DType } from '../core/tensor.js';
import { LCMScheduler, type PredictionType } from '../sampler/lcm.js';
import { Rng, type Latent } from '../sampler/rng.js';
import { sample, type Denoiser, type SampleResult } from '../sampler/sample.js';

// ---- the network's shape ---------------------------------------------------------------------------------------

/** One linear module the network uses. */
export interface VerifyModule {
  readonly path: string;
  readonly component: Component;
  readonly out: number;
  readonly in: number;
}

/** Which modules the network uses and how wide it is; from `verifyNetSpec`. */
export interface VerifyNetSpec {
  readonly arch: Arch;
  readonly size: LayoutSize;
  /** Transformer blocks, as canonical path prefixes ('unet.down_blocks.2.attentions.0.transformer_blocks.0'). */
  readonly blocks: readonly string[];
  /** The resnet time projection that turns the timestep into a per-token feature. */
  readonly timeProjection: string;
  /** One encoder layer per text encoder ('text_encoder.text_model.encoder.layers.11'); empty: fixed context. */
  readonly textLayers: readonly string[];
  /** C: width of the blocks. */
  readonly channels: number;
  /** D: width of the cross-attention context (the attn2 to_k input). */
  readonly contextDim: number;
  /** L: context tokens. */
  readonly contextTokens: number;
  /** Every module the network uses, in the order it runs them. */
  readonly modules: readonly VerifyModule[];
}

export interface VerifyNetSpecOptions {
  /** Transformer blocks to use (canonical prefixes). Default: the first and the last block of the widest level. */
  readonly blocks?: readonly string[];
  /** Run the context through the text encoders (all of the arch, or these). Default true. */
  readonly textEncoders?: boolean | readonly Component[];
}

const BLOCK_MODULES = [
  'attn1.to_q',
  'attn1.to_k',
  'attn1.to_v',
  'attn1.to_out.0',
  'attn2.to_q',
  'attn2.to_k',
  'attn2.to_v',
  'attn2.to_out.0',
  'ff.net.0.proj',
  'ff.net.2',
] as const;
const TEXT_MODULES = [
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.out_proj',
  'mlp.fc1',
  'mlp.fc2',
] as const;
const CONTEXT_TOKENS = 6;
/** Residual branch weight. */
const BRANCH = 0.5;
const LIFT_SEED = 0x5eed1;
const PROJECT_SEED = 0x5eed2;
const CONTEXT_SEED = 0x5eed3;

const fmt = (s: readonly number[]): string => `[${s.join(', ')}]`;

function layoutError(message: string, details: Record<string, unknown> = {}): ArchError {
  return new ArchError('ARCH_LAYOUT_INVALID', `verification network: ${message}`, details);
}

function linearEntry(
  byPath: ReadonlyMap<string, ModuleEntry>,
  path: string,
  shape?: readonly [number | undefined, number | undefined],
): ModuleEntry {
  const e = byPath.get(path);
  if (!e) throw layoutError(`the layout has no module '${path}'`, { key: path });
  if (e.kind !== 'linear' || e.shape.length !== 2)
    throw layoutError(`'${path}' is a ${e.kind} ${fmt(e.shape)}; expected a linear module`, { key: path });
  if (
    shape &&
    ((shape[0] !== undefined && e.shape[0] !== shape[0]) || (shape[1] !== undefined && e.shape[1] !== shape[1]))
  ) {
    throw layoutError(`'${path}' is ${fmt(e.shape)}; expected [${shape[0] ?? 'any'}, ${shape[1] ?? 'any'}]`, {
      key: path,
      found: e.shape,
    });
  }
  return e;
}

/**
 * Choose the modules of the verification network for an architecture and layout size (default 'tiny', the
 * fixtures' size). Only linear modules that LoRAs target are used: UNet transformer blocks (every LCM-LoRA and
 * every attention-style LoRA touches them), a resnet time projection (LCM-LoRA) and one layer of each text
 * encoder (style LoRAs that train the text encoder). Throws ArchError ARCH_LAYOUT_INVALID for blocks the layout
 * lacks or whose shapes do not fit together.
 */
export function verifyNetSpec(
  arch: Arch,
  size: LayoutSize = 'tiny',
  options: VerifyNetSpecOptions = {},
): VerifyNetSpec {
  const layout = getLayout(arch, size);
  const byPath = layout.byPath;
  const all = layout.modules
    .filter((m) => m.component === 'unet' && m.path.endsWith('.attn1.to_q'))
    .map((m) => ({ prefix: m.path.slice(0, -'.attn1.to_q'.length), width: m.shape[0]! }));
  if (all.length === 0) throw layoutError(`${arch} (${size}) has no UNet transformer blocks`);
  let blocks: string[];
  if (options.blocks !== undefined) {
    if (options.blocks.length === 0) throw layoutError('blocks is empty; give at least one transformer block');
    blocks = [...options.blocks];
  } else {
    const widest = Math.max(...all.map((b) => b.width));
    const candidates = all.filter((b) => b.width === widest).map((b) => b.prefix);
    blocks = candidates.length > 1 ? [candidates[0]!, candidates[candidates.length - 1]!] : [candidates[0]!];
  }
  const first = linearEntry(byPath, `${blocks[0]}.attn1.to_q`);
  const C = first.shape[0]!;
  const D = linearEntry(byPath, `${blocks[0]}.attn2.to_k`, [C, undefined]).shape[1]!;
  const modules: VerifyModule[] = [];
  const use = (e: ModuleEntry): void => {
    modules.push({ path: e.path, component: e.component, out: e.shape[0]!, in: e.shape[1]! });
  };

  // Context: one layer of each text encoder, concatenated along the features.
  const wanted = options.textEncoders ?? true;
  const encoders = archConfig(arch, size).textEncoders.filter(
    (te) => wanted === true || (Array.isArray(wanted) && (wanted as readonly Component[]).includes(te.component)),
  );
  const textLayers: string[] = [];
  if (wanted !== false && encoders.length > 0) {
    const width = encoders.reduce((s, te) => s + te.hiddenSize, 0);
    if (width !== D) {
      throw layoutError(`the text encoders' widths add up to ${width} but the cross-attention context is ${D} wide`, {
        expected: D,
        found: width,
      });
    }
    for (const te of encoders) {
      const layer = `${te.component}.text_model.encoder.layers.${te.numLayers - 1}`;
      const d = te.hiddenSize;
      const m = te.intermediateSize;
      const shapes: Record<(typeof TEXT_MODULES)[number], [number, number]> = {
        'self_attn.q_proj': [d, d],
        'self_attn.k_proj': [d, d],
        'self_attn.v_proj': [d, d],
        'self_attn.out_proj': [d, d],
        'mlp.fc1': [m, d],
        'mlp.fc2': [d, m],
      };
      for (const name of TEXT_MODULES) use(linearEntry(byPath, `${layer}.${name}`, shapes[name]));
      textLayers.push(layer);
    }
  }

  // Timestep feature: the time projection of a resnet on the first block's level.
  const level = blocks[0]!.includes('.attentions.') ? blocks[0]!.slice(0, blocks[0]!.indexOf('.attentions.')) : '';
  const timeProjections = layout.modules.filter(
    (m) => m.component === 'unet' && m.kind === 'linear' && m.path.endsWith('.time_emb_proj') && m.shape[0] === C,
  );
  const time = timeProjections.find((m) => m.path.startsWith(`${level}.resnets.`)) ?? timeProjections[0];
  if (!time) throw layoutError(`no resnet time_emb_proj with ${C} outputs`);
  use(time);

  for (const block of blocks) {
    const ff2 = linearEntry(byPath, `${block}.ff.net.2`, [C, undefined]);
    const inner = ff2.shape[1]!;
    const shapes: Record<(typeof BLOCK_MODULES)[number], [number, number]> = {
      'attn1.to_q': [C, C],
      'attn1.to_k': [C, C],
      'attn1.to_v': [C, C],
      'attn1.to_out.0': [C, C],
      'attn2.to_q': [C, C],
      'attn2.to_k': [C, D],
      'attn2.to_v': [C, D],
      'attn2.to_out.0': [C, C],
      'ff.net.0.proj': [2 * inner, C],
      'ff.net.2': [C, inner],
    };
    for (const name of BLOCK_MODULES) use(linearEntry(byPath, `${block}.${name}`, shapes[name]));
  }
  return {
    arch,
    size,
    blocks,
    timeProjection: time.path,
    textLayers,
    channels: C,
    contextDim: D,
    contextTokens: CONTEXT_TOKENS,
    modules,
  };
}

// ---- weights ---------------------------------------------------------------------------------------------------

/** One runtime LoRA term of a layer: coefficient·up·(down·x), coefficient = weight × alpha / rank. */
export interface RuntimeLoraTerm {
  /** Which runtime LoRA it comes from (0-based, in the order they were applied). */
  readonly input: number;
  readonly coefficient: number;
  readonly rank: number;
  /** [rank, in], row-major. */
  readonly down: Float32Array;
  /** [out, rank], row-major. */
  readonly up: Float32Array;
}

/** One linear layer: y = W·x + Σ coefficient·up·(down·x). */
export interface VerifyLayer {
  readonly module: VerifyModule;
  /** W [out, in], row-major: as decoded to f32 (f64 only in the rounding simulation of checkFusedSampling). */
  readonly weight: Float32Array | Float64Array;
  readonly loraTerms: readonly RuntimeLoraTerm[];
}

/** The network's weights: from a checkpoint, from memory, or a base with LoRAs applied at run time. */
export interface VerifyNet {
  readonly spec: VerifyNetSpec;
  /** Where the weights came from, for reports. */
  readonly source: string;
  /**
   * The coarsest float dtype the weights were stored in ('F32' for weights given in memory): what one rounding
   * of a fused weight costs.
   */
  readonly dtype: DType;
  readonly layers: ReadonlyMap<string, VerifyLayer>;
  /** Runtime LoRAs applied (0 for plain weights). */
  readonly loraInputs: number;
}

/** The dtype a stored weight has once read: F64 and integer weights are read as f32. */
const asRead = (d: DType): DType => (d === 'F64' || !isFloatDType(d) ? 'F32' : d);
const ulpBits = (d: DType): number => {
  const r = asRead(d);
  return isFloatDType(r) ? FLOAT_FORMAT[r].mantissa : FLOAT_FORMAT.F32.mantissa;
};

/** The coarser of two storage dtypes (fewer mantissa bits). */
function coarser(a: DType, b: DType): DType {
  return ulpBits(b) < ulpBits(a) ? b : a;
}

function makeNet(
  spec: VerifyNetSpec,
  source: string,
  dtype: DType,
  weights: (m: VerifyModule) => Float32Array,
): VerifyNet {
  const layers = new Map<string, VerifyLayer>();
  for (const m of spec.modules) {
    const w = weights(m);
    if (!(w instanceof Float32Array) || w.length !== m.out * m.in) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `verification network: the weight of '${m.path}' must be a Float32Array of ${m.out}×${m.in} = ${m.out * m.in} values, found ${w instanceof Float32Array ? w.length : Object.prototype.toString.call(w)}`,
        { key: m.path, expected: m.out * m.in, found: w instanceof Float32Array ? w.length : null },
      );
    }
    layers.set(m.path, { module: m, weight: w, loraTerms: [] });
  }
  return { spec, source, dtype, layers, loraInputs: 0 };
}

/**
 * A network over weights held in memory (canonical path → [out, in] row-major f32), e.g. a dense W + Δ built
 * by a test. `dtype` says what the values were rounded to (default 'F32').
 */
export function verifyNetFromWeights(
  spec: VerifyNetSpec,
  weights: ReadonlyMap<string, Float32Array> | Readonly<Record<string, Float32Array>>,
  options: { readonly source?: string; readonly dtype?: DType } = {},
): VerifyNet {
  const get = (p: string): Float32Array | undefined =>
    weights instanceof Map ? weights.get(p) : (weights as Readonly<Record<string, Float32Array>>)[p];
  return makeNet(spec, options.source ?? '<memory>', options.dtype ?? 'F32', (m) => {
    const w = get(m.path);
    if (w === undefined) {
      throw new LoraError('LORA_UNMATCHED_MODULES', `verification network: no weight given for '${m.path}'`, {
        key: m.path,
      });
    }
    return w;
  });
}

/** A checkpoint as one file, or a diffusers folder as its component files. */
export type VerifyCheckpoint = SafetensorsFile | Readonly<Partial<Record<Component | 'vae', SafetensorsFile>>>;

export interface LoadVerifyNetOptions {
  /** Use this spec (it must be for the checkpoint's architecture and size). Default: verifyNetSpec of what is detected. */
  readonly spec?: VerifyNetSpec;
  /** With no spec: use the text encoders the checkpoint has (default true). */
  readonly textEncoders?: boolean;
}

function isFile(x: VerifyCheckpoint): x is SafetensorsFile {
  return typeof (x as SafetensorsFile).readF32 === 'function' && Array.isArray((x as SafetensorsFile).tensors);
}

/**
 * Read the network's weights from a checkpoint: a single file (LDM/SGM names, with or without text encoders, or
 * a lone diffusers UNet file) or the component files of a diffusers folder. Names come from the detected layout
 * (old SD1.5 text-encoder spellings included); OpenCLIP-G's q/k/v are read as row slices of in_proj_weight.
 * Weights are decoded to f32. Throws ArchError ARCH_MISMATCH when the spec is for another layout or needs a text
 * encoder the checkpoint lacks.
 */
export async function loadVerifyNet(
  checkpoint: VerifyCheckpoint,
  options: LoadVerifyNetOptions = {},
): Promise<VerifyNet> {
  let det: CheckpointDetection;
  let fileOf: (c: Component) => SafetensorsFile | undefined;
  let name: string;
  if (isFile(checkpoint)) {
    det = detectCheckpoint(checkpoint.tensors, { source: checkpoint.name });
    fileOf = (c) => (det.components.includes(c) ? checkpoint : undefined);
    name = checkpoint.name;
  } else {
    const files = checkpoint;
    const lists: Record<string, readonly { name: string; shape: readonly number[] }[]> = {};
    for (const [c, f] of Object.entries(files)) if (f) lists[c] = f.tensors;
    name = files.unet ? files.unet.name : 'diffusers folder';
    det = detectDiffusersFolder(lists, { source: name });
    fileOf = (c) => (det.components.includes(c) ? files[c] : undefined);
  }
  const spec =
    options.spec ??
    verifyNetSpec(det.arch, det.size, {
      textEncoders: options.textEncoders === false ? false : det.components.filter((c) => c !== 'unet'),
    });
  if (spec.arch !== det.arch || spec.size !== det.size) {
    throw new ArchError(
      'ARCH_MISMATCH',
      `${name}: the checkpoint is ${det.arch} (${det.size}) but the verification network is for ${spec.arch} (${spec.size})`,
      { source: name, expected: { arch: spec.arch, size: spec.size }, found: { arch: det.arch, size: det.size } },
    );
  }
  const cache = new Map<string, Float32Array>();
  const values = new Map<string, Float32Array>();
  let dtype: DType | undefined;
  for (const m of spec.modules) {
    const file = fileOf(m.component);
    if (!file) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `${name}: the verification network needs ${m.component} ('${m.path}') but the checkpoint has no ${m.component}`,
        { source: name, component: m.component, key: m.path },
      );
    }
    const entry = det.layout.byPath.get(m.path)!;
    const single = det.naming === 'single-file';
    const key = single
      ? (det.aliases.get(entry.singleFileWeightKey) ?? entry.singleFileWeightKey)
      : entry.diffusersWeightKey;
    const info = file.info(key);
    dtype = dtype === undefined ? info.dtype : coarser(dtype, info.dtype);
    let all = cache.get(key);
    if (!all) {
      all = await file.readF32(key);
      cache.set(key, all);
    }
    const rows = single ? entry.singleFileRows : undefined;
    const w = rows ? all.slice(rows[0] * m.in, rows[1] * m.in) : all;
    if (w.length !== m.out * m.in) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `${name}: '${key}' has ${w.length} values; '${m.path}' needs ${m.out}×${m.in}`,
        { source: name, key, expected: [m.out, m.in], found: info.shape },
      );
    }
    values.set(m.path, w);
  }
  return makeNet(spec, name, dtype ?? 'F32', (m) => values.get(m.path)!);
}

function weightFunction(lora: Lora, w: MergeWeight, i: number): (path: string) => number {
  return compileWeight(w, lora.arch, lora.size, `LoRA ${i + 1}`, 'verification network');
}

/**
 * The same network with LoRAs applied at run time: every layer a LoRA touches computes
 * W·x + Σ wᵢ·(alphaᵢ/rᵢ)·upᵢ·(downᵢ·x) from the factors (never a dense delta). Weights are numbers or block weights,
 * as for mergeLoras and fuseLoras. Modules of the LoRAs the network does not use are ignored; a module whose
 * factors do not fit the layer is a LoraError LORA_SHAPE_MISMATCH.
 */
export function withRuntimeLoras(
  net: VerifyNet,
  inputs: readonly Lora<Term>[],
  weights: readonly MergeWeight[],
): VerifyNet {
  // Every kind applied through its exact factors (DoRA / GLoRA would need the base: LORA_NEEDS_BASE).
  const loras = Array.isArray(inputs) ? inputs.map((l) => lowRankLora(l)) : inputs;
  if (!Array.isArray(loras) || !Array.isArray(weights) || loras.length !== weights.length) {
    throw new ArgumentError(
      'ARG_INVALID',
      `verification network: expected one weight per LoRA (${Array.isArray(loras) ? loras.length : '?'}), found ${Array.isArray(weights) ? weights.length : String(weights)}`,
      {
        expected: Array.isArray(loras) ? loras.length : null,
        found: Array.isArray(weights) ? weights.length : weights,
      },
    );
  }
  const fns = loras.map((l, i) => weightFunction(l, weights[i]!, i));
  const layers = new Map<string, VerifyLayer>();
  let added = 0;
  for (const [path, layer] of net.layers) {
    const terms = [...layer.loraTerms];
    loras.forEach((lora, i) => {
      const m = lora.modules.get(path);
      if (!m) return;
      const dims = moduleDims(m, path, `LoRA ${i + 1}`);
      const { out, in: inn } = layer.module;
      if (dims.out !== out || dims.in !== inn || dims.fanIn !== inn) {
        throw new LoraError(
          'LORA_SHAPE_MISMATCH',
          `verification network: LoRA ${i + 1} module '${path}' has down ${fmt(m.down.shape)}, up ${fmt(m.up.shape)}; the layer is [${out}, ${inn}]`,
          { key: path, expected: [out, inn], found: { down: m.down.shape, up: m.up.shape } },
        );
      }
      const coefficient = fns[i]!(path) * (m.alpha / dims.rank);
      if (coefficient === 0) return;
      terms.push({
        input: net.loraInputs + i,
        coefficient,
        rank: dims.rank,
        down: contiguousValues(m.down),
        up: contiguousValues(m.up),
      });
      added++;
    });
    layers.set(path, { ...layer, loraTerms: terms });
  }
  return {
    ...net,
    source: `${net.source} + ${loras.length} runtime LoRA(s) on ${added} layer term(s)`,
    layers,
    loraInputs: net.loraInputs + loras.length,
  };
}

/** The network without its runtime LoRA terms (the base alone). */
export function withoutRuntimeLoras(net: VerifyNet): VerifyNet {
  const layers = new Map<string, VerifyLayer>();
  for (const [p, l] of net.layers) layers.set(p, { ...l, loraTerms: [] });
  return { ...net, layers, loraInputs: 0 };
}

// ---- the forward pass ------------------------------------------------------------------------------------------

/** A layer with its values widened to f64 once, so the loops below see one array type. */
interface DenseLayer {
  readonly out: number;
  readonly in: number;
  readonly weight: Float64Array;
  readonly terms: readonly {
    readonly coefficient: number;
    readonly rank: number;
    readonly down: Float64Array;
    readonly up: Float64Array;
  }[];
}

function denseLayer(layer: VerifyLayer): DenseLayer {
  return {
    out: layer.module.out,
    in: layer.module.in,
    weight: Float64Array.from(layer.weight),
    terms: layer.loraTerms.map((t) => ({
      coefficient: t.coefficient,
      rank: t.rank,
      down: Float64Array.from(t.down),
      up: Float64Array.from(t.up),
    })),
  };
}

/**
 * A·Bᵀ for row-major A [n, k] and B [m, k]: [n, m]. Four rows of A share each load of B (about four times faster
 * in V8 than the plain triple loop); the summation order is fixed, so equal inputs give equal bits.
 */
function matmulT(a: Float64Array, n: number, b: Float64Array, m: number, k: number): Float64Array {
  const y = new Float64Array(n * m);
  let r = 0;
  for (; r + 3 < n; r += 4) {
    const a0 = r * k,
      a1 = a0 + k,
      a2 = a1 + k,
      a3 = a2 + k;
    for (let o = 0; o < m; o++) {
      const bo = o * k;
      let s0 = 0,
        s1 = 0,
        s2 = 0,
        s3 = 0;
      for (let i = 0; i < k; i++) {
        const bv = b[bo + i]!;
        s0 += bv * a[a0 + i]!;
        s1 += bv * a[a1 + i]!;
        s2 += bv * a[a2 + i]!;
        s3 += bv * a[a3 + i]!;
      }
      y[r * m + o] = s0;
      y[(r + 1) * m + o] = s1;
      y[(r + 2) * m + o] = s2;
      y[(r + 3) * m + o] = s3;
    }
  }
  for (; r < n; r++) {
    const a0 = r * k;
    for (let o = 0; o < m; o++) {
      const bo = o * k;
      let s = 0;
      for (let i = 0; i < k; i++) s += b[bo + i]! * a[a0 + i]!;
      y[r * m + o] = s;
    }
  }
  return y;
}

/** Y [rows, out] = X [rows, in]·Wᵀ + Σ c·(X·downᵀ)·upᵀ, in f64 (the LoRA terms through their rank, never densely). */
function applyLayer(layer: DenseLayer, x: Float64Array, rows: number): Float64Array {
  const { out, in: inn } = layer;
  const y = matmulT(x, rows, layer.weight, out, inn);
  for (const term of layer.terms) {
    const h = matmulT(x, rows, term.down, term.rank, inn);
    const u = matmulT(h, rows, term.up, out, term.rank);
    for (let i = 0; i < y.length; i++) y[i] = y[i]! + term.coefficient * u[i]!;
  }
  return y;
}

/** Each row divided by its root mean square (ν). */
function rmsRows(x: Float64Array, rows: number, cols: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let q = 0;
    for (let c = 0; c < cols; c++) q += x[r * cols + c]! ** 2;
    const inv = 1 / Math.sqrt(q / cols + 1e-24);
    for (let c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c]! * inv;
  }
  return y;
}

/** Single-head softmax attention of n queries over m keys (q, k [·, d]; v [m, e]). */
function attention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  n: number,
  m: number,
  d: number,
  e: number,
  causal: boolean,
): Float64Array {
  const scores = matmulT(q, n, k, m, d);
  const scale = 1 / Math.sqrt(d);
  for (let i = 0; i < n; i++) {
    const row = i * m;
    const lim = causal ? Math.min(i + 1, m) : m;
    let max = -Infinity;
    for (let j = 0; j < lim; j++) max = Math.max(max, scores[row + j]! * scale);
    let sum = 0;
    for (let j = 0; j < lim; j++) {
      const p = Math.exp(scores[row + j]! * scale - max);
      scores[row + j] = p;
      sum += p;
    }
    for (let j = 0; j < m; j++) scores[row + j] = j < lim ? scores[row + j]! / sum : 0;
  }
  const vt = new Float64Array(e * m);
  for (let j = 0; j < m; j++) for (let c = 0; c < e; c++) vt[c * m + j] = v[j * e + c]!;
  return matmulT(scores, n, vt, e, m);
}

function gelu(x: number): number {
  return 0.5 * x * (1 + Math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

/** h += BRANCH·ν(branch), in place. */
function addBranch(h: Float64Array, branch: Float64Array, rows: number, cols: number): void {
  const b = rmsRows(branch, rows, cols);
  for (let i = 0; i < h.length; i++) h[i] = h[i]! + BRANCH * b[i]!;
}

class Forward {
  readonly #net: VerifyNet;
  readonly #dense = new Map<string, DenseLayer>();
  readonly #lift: Float64Array;
  readonly #project: Float64Array;
  #context: Float64Array | undefined;

  constructor(net: VerifyNet) {
    this.#net = net;
    const C = net.spec.channels;
    // Fixed, seeded matrices: lift [C, 4] keeps a token's size (entries N(0, 1/4)); project [4, C] gives outputs of
    // unit variance for unit-RMS tokens (entries N(0, 1/C)).
    this.#lift = scaled(new Rng(LIFT_SEED).normalArray(C * 4, 'float64') as Float64Array, 0.5);
    this.#project = scaled(new Rng(PROJECT_SEED).normalArray(4 * C, 'float64') as Float64Array, 1 / Math.sqrt(C));
  }

  #layer(path: string): DenseLayer {
    let d = this.#dense.get(path);
    if (!d) {
      d = denseLayer(this.#net.layers.get(path)!);
      this.#dense.set(path, d);
    }
    return d;
  }

  #linear(path: string, x: Float64Array, rows: number): Float64Array {
    return applyLayer(this.#layer(path), x, rows);
  }

  /** The cross-attention context [L, D]: fixed tokens through one layer of each text encoder. */
  context(): Float64Array {
    if (this.#context) return this.#context;
    const { spec } = this.#net;
    const L = spec.contextTokens;
    const D = spec.contextDim;
    const rng = new Rng(CONTEXT_SEED);
    if (spec.textLayers.length === 0) {
      this.#context = rng.normalArray(L * D, 'float64') as Float64Array;
      return this.#context;
    }
    const ctx = new Float64Array(L * D);
    let col = 0;
    for (const layer of spec.textLayers) {
      const d = this.#layer(`${layer}.self_attn.q_proj`).in;
      const m = this.#layer(`${layer}.mlp.fc1`).out;
      const z = rng.normalArray(L * d, 'float64') as Float64Array;
      let a = rmsRows(z, L, d);
      const q = rmsRows(this.#linear(`${layer}.self_attn.q_proj`, a, L), L, d);
      const k = rmsRows(this.#linear(`${layer}.self_attn.k_proj`, a, L), L, d);
      const v = this.#linear(`${layer}.self_attn.v_proj`, a, L);
      addBranch(z, this.#linear(`${layer}.self_attn.out_proj`, attention(q, k, v, L, L, d, d, true), L), L, d);
      a = rmsRows(z, L, d);
      const hidden = rmsRows(this.#linear(`${layer}.mlp.fc1`, a, L), L, m).map(gelu);
      addBranch(z, this.#linear(`${layer}.mlp.fc2`, hidden, L), L, d);
      const out = rmsRows(z, L, d);
      for (let t = 0; t < L; t++) for (let c = 0; c < d; c++) ctx[t * D + col + c] = out[t * d + c]!;
      col += d;
    }
    this.#context = ctx;
    return ctx;
  }

  /** x̂₀ for a latent of 4 channel planes (flat [4, N]) at integer timestep t. */
  predictX0(x: Latent, t: number): Float64Array {
    const { spec } = this.#net;
    const C = spec.channels;
    const D = spec.contextDim;
    const L = spec.contextTokens;
    const N = x.length / 4;
    // Lift the tokens and add the timestep feature.
    const h = new Float64Array(N * C);
    for (let p = 0; p < N; p++) {
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let k = 0; k < 4; k++) s += this.#lift[c * 4 + k]! * x[k * N + p]!;
        h[p * C + c] = s;
      }
    }
    const timeLayer = this.#layer(spec.timeProjection);
    const emb = timestepEmbedding(t, timeLayer.in).map((v) => v / (1 + Math.exp(-v))); // SiLU
    const temb = rmsRows(applyLayer(timeLayer, emb, 1), 1, C);
    for (let p = 0; p < N; p++) for (let c = 0; c < C; c++) h[p * C + c] = h[p * C + c]! + BRANCH * temb[c]!;
    // Transformer blocks.
    const ctx = rmsRows(this.context(), L, D);
    for (const b of spec.blocks) {
      let a = rmsRows(h, N, C);
      let q = rmsRows(this.#linear(`${b}.attn1.to_q`, a, N), N, C);
      let k = rmsRows(this.#linear(`${b}.attn1.to_k`, a, N), N, C);
      let v = this.#linear(`${b}.attn1.to_v`, a, N);
      addBranch(h, this.#linear(`${b}.attn1.to_out.0`, attention(q, k, v, N, N, C, C, false), N), N, C);
      a = rmsRows(h, N, C);
      q = rmsRows(this.#linear(`${b}.attn2.to_q`, a, N), N, C);
      k = rmsRows(this.#linear(`${b}.attn2.to_k`, ctx, L), L, C);
      v = this.#linear(`${b}.attn2.to_v`, ctx, L);
      addBranch(h, this.#linear(`${b}.attn2.to_out.0`, attention(q, k, v, N, L, C, C, false), N), N, C);
      a = rmsRows(h, N, C);
      const proj = this.#layer(`${b}.ff.net.0.proj`);
      const F = proj.out / 2;
      const pj = rmsRows(applyLayer(proj, a, N), N, 2 * F);
      const g = new Float64Array(N * F);
      for (let p = 0; p < N; p++)
        for (let f = 0; f < F; f++) g[p * F + f] = pj[p * 2 * F + f]! * gelu(pj[p * 2 * F + F + f]!);
      addBranch(h, this.#linear(`${b}.ff.net.2`, g, N), N, C);
    }
    // Project back to 4 channels.
    const hn = rmsRows(h, N, C);
    const out = new Float64Array(4 * N);
    for (let p = 0; p < N; p++) {
      for (let k = 0; k < 4; k++) {
        let s = 0;
        for (let c = 0; c < C; c++) s += this.#project[k * C + c]! * hn[p * C + c]!;
        out[k * N + p] = Math.tanh(s);
      }
    }
    return out;
  }
}

function scaled(a: Float64Array, s: number): Float64Array {
  for (let i = 0; i < a.length; i++) a[i] = a[i]! * s;
  return a;
}

/** Sinusoidal timestep embedding (cosine half first, as diffusers' flip_sin_to_cos=True), `dim` wide. */
function timestepEmbedding(t: number, dim: number): Float64Array {
  const half = Math.floor(dim / 2);
  const out = new Float64Array(dim);
  for (let i = 0; i < half; i++) {
    const f = Math.exp((-Math.log(10000) * i) / half);
    out[i] = Math.cos(t * f);
    out[half + i] = Math.sin(t * f);
  }
  return out;
}

export interface VerifyDenoiserOptions {
  /** Scheduler whose ᾱ table and predictionType the output is expressed in. Default: a default LCMScheduler. */
  readonly scheduler?: LCMScheduler;
}

/**
 * The network as a denoiser for `sample()`: for a latent [1, 4, H, W] (any flat length divisible by 4: channel
 * planes of N tokens) and timestep t it predicts x̂₀ = tanh(P·ν(h)) and returns it in the scheduler's prediction
 * type (ε = (x_t − √ᾱ·x̂₀)/√(1−ᾱ) by default), so the sampler's `denoised` is x̂₀ up to the boundary scalings.
 * Deterministic: the same weights, latent and t give the same output. The condition argument is ignored (the
 * context is fixed).
 */
export function verifyDenoiser(net: VerifyNet, options: VerifyDenoiserOptions = {}): Denoiser {
  const scheduler = options.scheduler ?? new LCMScheduler();
  const prediction: PredictionType = scheduler.config.predictionType;
  const forward = new Forward(net);
  return (x: Latent, t: number): Latent => {
    if (x.length === 0 || x.length % 4 !== 0) {
      throw new SamplerError(
        'SAMPLER_SHAPE_MISMATCH',
        `verification network: the latent has ${x.length} elements; it needs 4 channel planes (shape [1, 4, H, W])`,
        { expected: 'a multiple of 4', found: x.length },
      );
    }
    const x0 = forward.predictX0(x, t);
    const alpha = scheduler.alphaCumprodAt(t);
    const sa = Math.sqrt(alpha);
    const sb = Math.sqrt(1 - alpha);
    const out = x instanceof Float32Array ? new Float32Array(x.length) : new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const eps = (x[i]! - sa * x0[i]!) / sb;
      out[i] = prediction === 'epsilon' ? eps : prediction === 'v_prediction' ? sa * eps - sb * x0[i]! : x0[i]!;
    }
    return out;
  };
}

// ---- comparing two networks ------------------------------------------------------------------------------------

export interface CompareVerifyOptions {
  /** LCM steps (default 4). */
  readonly steps?: number;
  /** Sampler seed: x_T and the re-noising draws (default 0). */
  readonly seed?: number;
  /** Latent shape [1, 4, H, W] (default [1, 4, 8, 8]). */
  readonly shape?: readonly number[];
}

export interface VerifyNetComparison {
  readonly steps: number;
  readonly seed: number;
  readonly shape: readonly number[];
  readonly timesteps: readonly number[];
  /** The two final latents. */
  readonly a: Latent;
  readonly b: Latent;
  /** max |a − b|, and the root mean square of a − b and of a. */
  readonly maxAbsDiff: number;
  readonly rmsDiff: number;
  readonly rms: number;
  /** Per step, max |denoisedₐ − denoised_b|. */
  readonly stepMaxAbsDiff: readonly number[];
}

function run(net: VerifyNet, options: CompareVerifyOptions): SampleResult {
  return sample(verifyDenoiser(net), {
    steps: options.steps ?? 4,
    seed: options.seed ?? 0,
    shape: options.shape ?? [1, 4, 8, 8],
  });
}

function diffStats(a: Latent, b: Latent): { max: number; rmsDiff: number; rms: number } {
  let max = 0;
  let q = 0;
  let r = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (d > max || Number.isNaN(d)) max = d;
    q += d * d;
    r += a[i]! ** 2;
  }
  return { max, rmsDiff: Math.sqrt(q / a.length), rms: Math.sqrt(r / a.length) };
}

/** Sample with both networks from the same seed and compare the latents. */
export function compareVerifyNets(a: VerifyNet, b: VerifyNet, options: CompareVerifyOptions = {}): VerifyNetComparison {
  const ra = run(a, options);
  const rb = run(b, options);
  const { max, rmsDiff, rms } = diffStats(ra.latent, rb.latent);
  return {
    steps: ra.timesteps.length,
    seed: options.seed ?? 0,
    shape: [...(options.shape ?? [1, 4, 8, 8])],
    timesteps: ra.timesteps,
    a: ra.latent,
    b: rb.latent,
    maxAbsDiff: max,
    rmsDiff,
    rms,
    stepMaxAbsDiff: ra.trajectory.map((s, i) => diffStats(s.denoised, rb.trajectory[i]!.denoised).max),
  };
}

/**
 * The network with every weight a runtime LoRA touches moved by a uniform random fraction of half an ulp of
 * `dtype`: a stand-in for one rounding of the fused weights to that dtype. Untouched weights stay (a fuser copies
 * them).
 */
function roundingPerturbed(net: VerifyNet, dtype: DType, seed: number): VerifyNet {
  const rng = new Rng(seed);
  const layers = new Map<string, VerifyLayer>();
  for (const [p, l] of net.layers) {
    if (l.loraTerms.length === 0) {
      layers.set(p, l);
      continue;
    }
    const w = new Float64Array(l.weight.length); // f64: the moves are below f32 resolution when dtype is F32
    for (let i = 0; i < w.length; i++) {
      const v = l.weight[i]!;
      w[i] = v + (2 * rng.uniform() - 1) * halfUlp(v, asRead(dtype));
    }
    layers.set(p, { ...l, weight: w });
  }
  return { ...net, layers };
}

export interface FusedSamplingOptions extends CompareVerifyOptions {
  /**
   * Pass when the fused-vs-runtime difference is at most `tolerance` × the rounding floor and every LoRA's
   * measured effect is within `tolerance` standard errors of 1 (default 4).
   */
  readonly tolerance?: number;
  /** Simulated roundings behind the floor and the effects' standard errors (default 8). */
  readonly roundingSamples?: number;
}

/** How strongly one runtime LoRA acts in the fused network, measured on the sampled latent. */
export interface LoraEffect {
  /** 0-based runtime LoRA index. */
  readonly input: number;
  /**
   * γ of the least-squares fit fused − runtime ≈ Σᵢ (γᵢ − 1)·∂(sample)/∂γᵢ, where γᵢ scales LoRA i's runtime terms:
   * 1 when the fused checkpoint holds exactly the weight asked for, 0.625 when 0.5 was fused instead of 0.8.
   * NaN when the LoRA does not touch the network.
   */
  readonly effect: number;
  /**
   * Standard error of `effect` under the rounding of the fused weights: the spread of the same fit over the
   * simulated roundings (the rounding noise is correlated with the LoRAs' own directions, so the fit's residual
   * alone underestimates it), at least the fit's residual standard error.
   */
  readonly standardError: number;
  /** tolerance × standardError: the smallest relative weight error the check can see for this LoRA. */
  readonly resolution: number;
}

export interface FusedSamplingCheck {
  readonly comparison: VerifyNetComparison;
  /** rms of (fused − runtime) over the final latent. */
  readonly difference: number;
  /**
   * What one rounding of the fused weights to the fused network's dtype is expected to cost: the rms difference
   * between the runtime network and copies whose LoRA-touched weights are moved by random sub-half-ulp amounts.
   */
  readonly floor: number;
  readonly dtype: DType;
  /** rms of (runtime − base): how much the LoRAs change the sample at all. */
  readonly signal: number;
  /** difference / floor. */
  readonly ratio: number;
  /** Per runtime LoRA: its effect in the fused network. */
  readonly effects: readonly LoraEffect[];
  readonly tolerance: number;
  /** ratio ≤ tolerance and every effect within its resolution of 1. */
  readonly ok: boolean;
  /**
   * signal > tolerance × floor and every LoRA's resolution below 1: a fusion that left out the LoRAs, or any one of
   * them, would have failed. False when the deltas are below the storage precision (tiny deltas in BF16).
   */
  readonly conclusive: boolean;
}

/** The runtime network with each LoRA's terms scaled: input i by factors[i]. */
function scaledInputs(net: VerifyNet, factors: readonly number[]): VerifyNet {
  const layers = new Map<string, VerifyLayer>();
  for (const [p, l] of net.layers) {
    layers.set(p, {
      ...l,
      loraTerms: l.loraTerms.map((t) => ({ ...t, coefficient: t.coefficient * (factors[t.input] ?? 1) })),
    });
  }
  return { ...net, layers };
}

/** Invert a small symmetric positive definite matrix (Gauss–Jordan with partial pivoting); null when singular. */
function invert(a: readonly (readonly number[])[]): number[][] | null {
  const n = a.length;
  const m = a.map((row, i) => [...row, ...a.map((_, j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < n; c++) {
    let piv = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[piv]![c]!)) piv = r;
    if (!(Math.abs(m[piv]![c]!) > 0)) return null;
    const pivot = m[piv]!;
    m[piv] = m[c]!;
    m[c] = pivot;
    const d = pivot[c]!;
    for (let k = 0; k < 2 * n; k++) pivot[k] = pivot[k]! / d;
    for (let r = 0; r < n; r++) {
      const row = m[r]!;
      if (r === c) continue;
      const f = row[c]!;
      if (f !== 0) for (let k = 0; k < 2 * n; k++) row[k] = row[k]! - f * pivot[k]!;
    }
  }
  return m.map((row) => row.slice(n));
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

function minus(a: Latent, b: Latent): Float64Array {
  const d = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) d[i] = a[i]! - b[i]!;
  return d;
}

/**
 * The end-to-end check of a fusion. Sample with the fused network and with base + runtime LoRAs from the same
 * seed, then
 *  1. compare their difference with what one rounding of the fused weights to their stored dtype costs
 *     (the floor, simulated by random sub-half-ulp moves of the weights the LoRAs touch), and
 *  2. fit each LoRA's effect in the fused sample by least squares against the change its own weight makes,
 *     and compare it with 1, within the spread the same fit shows over the simulated roundings.
 * The fit sees a wrong weight that the overall difference cannot (0.5 instead of 0.8 on F16 fixtures moves the
 * sample by only about twice the rounding floor). Latent [1, 4, 8, 8] by default.
 */
export function checkFusedSampling(
  fused: VerifyNet,
  runtime: VerifyNet,
  options: FusedSamplingOptions = {},
): FusedSamplingCheck {
  const tolerance = options.tolerance ?? 4;
  if (typeof tolerance !== 'number' || !(tolerance > 0) || !Number.isFinite(tolerance)) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `checkFusedSampling: tolerance must be a positive number, got ${String(tolerance)}`,
      { option: 'tolerance', expected: '> 0', found: tolerance },
    );
  }
  const samples = options.roundingSamples ?? 8;
  if (!Number.isInteger(samples) || samples < 1 || samples > 1000) {
    throw new SamplerError(
      'SAMPLER_INVALID_CONFIG',
      `checkFusedSampling: roundingSamples must be an integer from 1 to 1000, got ${String(samples)}`,
      { option: 'roundingSamples', expected: 'integer 1…1000', found: samples },
    );
  }
  if (
    fused.spec.arch !== runtime.spec.arch ||
    fused.spec.size !== runtime.spec.size ||
    fused.spec.modules.map((m) => m.path).join() !== runtime.spec.modules.map((m) => m.path).join()
  ) {
    throw new ArchError(
      'ARCH_MISMATCH',
      `checkFusedSampling: '${fused.source}' and '${runtime.source}' use different verification networks`,
      { expected: runtime.spec.modules.length, found: fused.spec.modules.length },
    );
  }
  const comparison = compareVerifyNets(fused, runtime, options);
  const reference = comparison.b;
  const n = reference.length;
  const signal = diffStats(run(withoutRuntimeLoras(runtime), options).latent, reference).rmsDiff;

  // Columns gᵢ = ∂(sample)/∂γᵢ by central differences at γᵢ = 1 ± ½, and the least-squares projector (GᵀG)⁻¹Gᵀ.
  const k = runtime.loraInputs;
  const columns: (Float64Array | null)[] = [];
  for (let i = 0; i < k; i++) {
    const at = (g: number): Latent =>
      run(
        scaledInputs(
          runtime,
          Array.from({ length: k }, (_, j) => (j === i ? g : 1)),
        ),
        options,
      ).latent;
    const g = minus(at(1.5), at(0.5));
    columns.push(dot(g, g) > 0 ? g : null);
  }
  const used = columns.flatMap((c, i) => (c ? [i] : []));
  const inv = used.length > 0 ? invert(used.map((i) => used.map((j) => dot(columns[i]!, columns[j]!)))) : null;
  const fit = (r: Float64Array): number[] => {
    if (!inv) return [];
    const b = used.map((i) => dot(columns[i]!, r));
    return inv.map((row) => dot(row, b));
  };

  // Simulated roundings: the floor, and the fit's spread under rounding noise alone.
  let q = 0;
  const spread = new Array<number>(used.length).fill(0);
  for (let s = 0; s < samples; s++) {
    const r = minus(run(roundingPerturbed(runtime, fused.dtype, 0x0f100d + s), options).latent, reference);
    q += dot(r, r) / n;
    fit(r).forEach((d, u) => {
      spread[u] = spread[u]! + d * d;
    });
  }
  const floor = Math.sqrt(q / samples);

  const residual = minus(comparison.a, reference);
  const delta = fit(residual);
  let rss = 0;
  for (let e = 0; e < n; e++) {
    let f = 0;
    used.forEach((i, u) => {
      f += delta[u]! * columns[i]![e]!;
    });
    rss += (residual[e]! - f) ** 2;
  }
  const sigma2 = rss / Math.max(1, n - used.length);
  const effects: LoraEffect[] = [];
  for (let i = 0; i < k; i++) {
    const u = used.indexOf(i);
    if (u < 0 || !inv) {
      effects.push({ input: i, effect: NaN, standardError: Infinity, resolution: Infinity });
      continue;
    }
    const se = Math.max(Math.sqrt(spread[u]! / samples), Math.sqrt(sigma2 * inv[u]![u]!));
    effects.push({ input: i, effect: 1 + delta[u]!, standardError: se, resolution: tolerance * se });
  }
  const difference = comparison.rmsDiff;
  const ratio = difference === 0 ? 0 : difference / floor;
  const effectsOk = effects.every((e) => Number.isNaN(e.effect) || Math.abs(e.effect - 1) <= e.resolution);
  return {
    comparison,
    difference,
    floor,
    dtype: fused.dtype,
    signal,
    ratio,
    effects,
    tolerance,
    ok: ratio <= tolerance && effectsOk,
    conclusive: signal > tolerance * floor && effects.length > 0 && effects.every((e) => e.resolution < 1),
  };
}
