/**
 * The key grammar of LoRA files: what each tensor name in a LoRA safetensors file says about itself, before any
 * layout is consulted. Three spellings exist (see docs/formats.md):
 *
 *   kohya          lora_unet_<flat path>.lora_down.weight | .lora_up.weight | .alpha    (also lora_te_, lora_te1_, lora_te2_)
 *   peft           [base_model.model.][unet.|text_encoder.|text_encoder_2.][base_model.model.]<path>.lora_A[.<adapter>].weight
 *                  … .lora_B…, <path>.lora.down/up.weight, <path>.lora_linear_layer.down/up.weight, <path>.alpha
 *   diffusers-old  [unet.]<attention path>.processor.to_q_lora.down.weight, text_encoder.….self_attn.to_out_lora.up.weight
 *   comfyui        diffusion_model.<LDM path>.lora_down.weight | .lora_up.weight | .alpha,
 *                  text_encoders.clip_l.transformer.<HF path>.…, text_encoders.clip_g.transformer.<HF path>.…
 *   lycoris        lycoris_<flattened diffusers UNet path>.lora_down.weight | .lora_up.weight | .alpha (SimpleTuner)
 *
 * A kohya name is kept whole (it is looked up in the layout's kohya table, never un-flattened); so are ComfyUI and
 * LyCORIS names (looked up in the layout's alias table); a path-style key becomes a canonical module path here,
 * because its dots already separate the path.
 */
import type { Component } from '../layout/types.js';

/** What a key holds for its module: a factor, the alpha, or a PEFT bias delta (`lora_B.bias`, lora_bias=True). */
export type FactorRole = 'down' | 'up' | 'alpha' | 'bias' | AdapterRole;

/**
 * Tensors of the other adapter kinds (LyCORIS spelling, shared/research/adapters.md): the suffix after the module
 * name, e.g. `lora_unet_….hada_w1_a`. 'mid' is LoCon's Tucker core (`lora_mid.weight`), 'dora_scale' the kohya /
 * LyCORIS DoRA magnitude, 'magnitude' PEFT's `lora_magnitude_vector`, 'oft_blocks' / 'oft_diag' / 'rescale' the
 * OFT and BOFT tensors (kohya's OFT names its modules `oft_unet_…`, read as the `lora_unet_…` name).
 */
export type AdapterRole =
  | 'mid'
  | 'hada_w1_a'
  | 'hada_w1_b'
  | 'hada_w2_a'
  | 'hada_w2_b'
  | 'hada_t1'
  | 'hada_t2'
  | 'lokr_w1'
  | 'lokr_w1_a'
  | 'lokr_w1_b'
  | 'lokr_w2'
  | 'lokr_w2_a'
  | 'lokr_w2_b'
  | 'lokr_t1'
  | 'lokr_t2'
  | 'diff'
  | 'diff_b'
  | 'w_norm'
  | 'b_norm'
  | 'a1'
  | 'a2'
  | 'b1'
  | 'b2'
  | 'dora_scale'
  | 'magnitude'
  | 'oft_blocks'
  | 'oft_diag'
  | 'rescale';

const ADAPTER_SUFFIX: Readonly<Record<string, AdapterRole>> = {
  'lora_mid.weight': 'mid',
  hada_w1_a: 'hada_w1_a',
  hada_w1_b: 'hada_w1_b',
  hada_w2_a: 'hada_w2_a',
  hada_w2_b: 'hada_w2_b',
  hada_t1: 'hada_t1',
  hada_t2: 'hada_t2',
  lokr_w1: 'lokr_w1',
  lokr_w1_a: 'lokr_w1_a',
  lokr_w1_b: 'lokr_w1_b',
  lokr_w2: 'lokr_w2',
  lokr_w2_a: 'lokr_w2_a',
  lokr_w2_b: 'lokr_w2_b',
  lokr_t1: 'lokr_t1',
  lokr_t2: 'lokr_t2',
  diff: 'diff',
  diff_b: 'diff_b',
  w_norm: 'w_norm',
  b_norm: 'b_norm',
  'a1.weight': 'a1',
  'a2.weight': 'a2',
  'b1.weight': 'b1',
  'b2.weight': 'b2',
  dora_scale: 'dora_scale',
  oft_blocks: 'oft_blocks',
  oft_diag: 'oft_diag',
  rescale: 'rescale',
};
const SUFFIXES = Object.keys(ADAPTER_SUFFIX)
  .map((k) => k.replace('.', '\\.'))
  .join('|');
/** LyCORIS suffixes under a kohya name, a `lycoris_` name, or a ComfyUI stem (diffusion_model.… / text_encoders.…). */
const ADAPTER_RE = new RegExp(
  `^(?:(lora_(?:unet|te|te1|te2)_[^.]+)|(lycoris_[^.]+)|((?:diffusion_model|text_encoders\\.[A-Za-z0-9_]+)\\..+?))\\.(${SUFFIXES})$`,
);
const PEFT_MAGNITUDE_RE = /^(.+)\.lora_magnitude_vector(?:\.(?!weight$)([A-Za-z0-9_-]+))?(?:\.weight)?$/;

/** A LyCORIS-suffixed key (any kind but plain LoRA factors), or undefined. */
function parseAdapterKey(key: string): ParsedKey | undefined {
  const m = ADAPTER_RE.exec(key);
  if (m) {
    const role = ADAPTER_SUFFIX[m[4] ?? ''];
    if (!role) return undefined;
    if (m[1] !== undefined) return { key, role, family: 'kohya', name: m[1] };
    if (m[2] !== undefined) return { key, role, family: 'alias', name: m[2], tool: 'lycoris' };
    if (m[3] !== undefined) return { key, role, family: 'alias', name: m[3], tool: 'comfyui' };
  }
  const p = PEFT_MAGNITUDE_RE.exec(key);
  if (p) return pathKey(key, 'magnitude', p[1]!, 'lora_A/B', p[2]);
  return undefined;
}

/**
 * The families of spellings: kohya's flattened names, dotted module paths (PEFT and old diffusers), or another
 * tool's module name looked up whole in the layout's alias table (ComfyUI, LyCORIS wrapper).
 */
export type KeyFamily = 'kohya' | 'path' | 'alias';

interface ParsedBase {
  /** The tensor key in the file. */
  readonly key: string;
  readonly role: FactorRole;
}

/** `lora_unet_…` / `lora_te…_` keys. `name` is the whole kohya module name, e.g. 'lora_unet_down_blocks_0_…_to_q'. */
export interface KohyaKey extends ParsedBase {
  readonly family: 'kohya';
  readonly name: string;
}

/** Path-style keys: the module is named by a canonical path 'unet.…' / 'text_encoder.…' / 'text_encoder_2.…'. */
export interface PathKey extends ParsedBase {
  readonly family: 'path';
  /** Canonical module path (component prefix included). */
  readonly path: string;
  readonly component: Component;
  /** How the factor was spelled. */
  readonly spelling: 'lora_A/B' | 'lora.down/up' | 'lora_linear_layer' | 'processor' | 'alpha';
  /** PEFT adapter name inside the key ('default' in `.lora_A.default.weight`), if any. */
  readonly adapter?: string;
  /** The component was not spelled in the key (bare 'down_blocks…'): assumed. */
  readonly componentAssumed: boolean;
  /** A 'base_model.model.' prefix was present. */
  readonly baseModelPrefix: boolean;
}

/** ComfyUI ('diffusion_model.…', 'text_encoders.…') and LyCORIS-wrapper ('lycoris_…') names: `Layout.byAlias`. */
export interface AliasKey extends ParsedBase {
  readonly family: 'alias';
  /** The whole module name, e.g. 'diffusion_model.input_blocks.1.1.proj_in' or 'lycoris_down_blocks_0_…_to_q'. */
  readonly name: string;
  readonly tool: 'comfyui' | 'lycoris';
}

export type ParsedKey = KohyaKey | PathKey | AliasKey;

/** Spellings of other model families' LoRAs (ComfyUI model_lora_keys_unet / _clip name them per model). */
const OTHER_MODELS: readonly { readonly test: RegExp; readonly what: string }[] = [
  { test: /^lora_prior_(?:unet|te)_/, what: "a Stable Cascade LoRA ('lora_prior_unet_' / 'lora_prior_te_')" },
  {
    test: /(?:^|[._])(?:joint_blocks|context_block|x_block)[._]|^lora_te3_/,
    what: 'an SD3 LoRA (MMDiT joint_blocks, T5 lora_te3_)',
  },
  {
    test: /(?:^|[._])(?:double_blocks|single_blocks|single_transformer_blocks)[._]/,
    what: 'a Flux LoRA (double_blocks / single_blocks)',
  },
  {
    test: /^(?:unet\.)?(?:transformer\.|lora_transformer_|base_model\.model\.transformer_blocks\.)/,
    what: "a DiT (transformer) LoRA ('transformer.…', 'lora_transformer_…': SD3, Flux, PixArt, AuraFlow …)",
  },
];

/**
 * ' — these keys look like …' when a file's keys (or unresolved module names) are spelled as another model family's
 * LoRA, else ''. lora-mix handles SD1.5, SDXL and SSD-1B; saying which family a file is for is the useful answer.
 */
export function otherModelHint(names: readonly string[]): string {
  for (const o of OTHER_MODELS) {
    if (names.some((n) => o.test.test(n))) {
      return ` — these keys look like ${o.what}; lora-mix handles SD1.5, SDXL and SSD-1B LoRAs only`;
    }
  }
  return '';
}

const COMFY_EMBEDDING_RE = /^text_encoders\.[A-Za-z0-9_]+\.transformer\.text_model\.embeddings\./;

/**
 * A key of a text encoder's embedding table under ComfyUI's name. No kohya name of an embedding is read by any
 * loader, so kohya output keeps them under ComfyUI's (as it does text-encoder norms); such keys may sit beside
 * another spelling's modules.
 */
export function isComfyEmbeddingKey(p: ParsedKey): boolean {
  return p.family === 'alias' && p.tool === 'comfyui' && COMFY_EMBEDDING_RE.test(p.name);
}

/** The module name a parsed key groups under: kohya / alias names whole, paths canonical. */
export function moduleId(p: ParsedKey): string {
  return p.family === 'path' ? p.path : p.name;
}

const KOHYA_OFT_PREFIX = 'oft_unet_';
const KOHYA_RE = /^(lora_(?:unet|te|te1|te2)_[^.]+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const LYCORIS_RE = /^(lycoris_[^.]+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
/** ComfyUI's module names: its model's state-dict keys without '.weight'. */
const COMFY_STEM_RE = /^(?:diffusion_model|text_encoders\.[A-Za-z0-9_]+)\./;
const KOHYA_SUFFIX_RE = /^(.+)\.lora_(down|up)\.weight$/;
const PEFT_AB_RE = /^(.+)\.lora_([AB])(?:\.([A-Za-z0-9_-]+))?\.weight$/;
/** `<path>.lora_A` / `.lora_B` without '.weight' (ComfyUI reads it: its "mochi" spelling). */
const BARE_AB_RE = /^(.+)\.lora_([AB])$/;
const PEFT_BIAS_RE = /^(.+)\.lora_B(?:\.([A-Za-z0-9_-]+))?\.bias$/;
const UP_BIAS_RE = /^(.+)\.(lora|lora_linear_layer)\.up\.bias$/;
const LORA_DOT_RE = /^(.+)\.lora\.(down|up)\.weight$/;
const LINEAR_LAYER_RE = /^(.+)\.lora_linear_layer\.(down|up)\.weight$/;
const PROCESSOR_RE = /^(.+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/;
/**
 * `<module path>_lora.down/up.weight` on any other module (ComfyUI's "diffusers" spelling, `x_lora.up.weight`, for
 * every stem its key map has: `…ff.net.0.proj_lora.up.weight`, `text_encoder.….self_attn.q_proj_lora.up.weight`).
 */
const MODULE_LORA_RE = /^(.+)_lora\.(down|up)\.weight$/;
const PATH_ALPHA_RE = /^(.+)\.alpha$/;

const COMPONENTS: readonly Component[] = ['text_encoder_2', 'text_encoder', 'unet'];
const BASE_MODEL = 'base_model.model.';

/** Split an optional 'base_model.model.' and a component prefix off a dotted module path. */
function splitComponent(raw: string): { component: Component; local: string; assumed: boolean; baseModel: boolean } {
  let rest = raw;
  let baseModel = false;
  if (rest.startsWith(BASE_MODEL)) {
    rest = rest.slice(BASE_MODEL.length);
    baseModel = true;
  }
  let component: Component | undefined;
  for (const c of COMPONENTS) {
    if (rest.startsWith(`${c}.`)) {
      component = c;
      rest = rest.slice(c.length + 1);
      break;
    }
  }
  if (rest.startsWith(BASE_MODEL)) {
    rest = rest.slice(BASE_MODEL.length);
    baseModel = true;
  }
  if (component) return { component, local: rest, assumed: false, baseModel };
  // No component spelled: a bare 'text_model.…' path is a (first) text encoder, anything else the UNet.
  return { component: rest.startsWith('text_model.') ? 'text_encoder' : 'unet', local: rest, assumed: true, baseModel };
}

/** The old attention-processor names → module names: to_out_lora is to_out.0 (UNet) or out_proj (CLIP). */
function processorModule(parent: string, proj: string): string {
  const isClip = /(^|\.)self_attn$/.test(parent);
  if (isClip) {
    const clip: Record<string, string> = { to_q: 'q_proj', to_k: 'k_proj', to_v: 'v_proj', to_out: 'out_proj' };
    return `${parent}.${clip[proj]}`;
  }
  const base = parent.endsWith('.processor') ? parent.slice(0, -'.processor'.length) : parent;
  return proj === 'to_out' ? `${base}.to_out.0` : `${base}.${proj}`;
}

function pathKey(
  key: string,
  role: FactorRole,
  rawPath: string,
  spelling: PathKey['spelling'],
  adapter?: string,
): PathKey | AliasKey {
  if (COMFY_STEM_RE.test(rawPath)) return { key, role, family: 'alias', name: rawPath, tool: 'comfyui' };
  const { component, local, assumed, baseModel } = splitComponent(rawPath);
  return {
    key,
    role,
    family: 'path',
    path: `${component}.${local}`,
    component,
    spelling,
    componentAssumed: assumed,
    baseModelPrefix: baseModel,
    ...(adapter !== undefined ? { adapter } : {}),
  };
}

/**
 * Parse one tensor key. Returns undefined for keys that are not LoRA factors or alphas in any known spelling
 * (the caller reports them). Does not consult any layout.
 */
export function parseLoraKey(key: string): ParsedKey | undefined {
  if (key.startsWith(KOHYA_OFT_PREFIX)) {
    // kohya's OFT network (networks/oft.py) names UNet modules like its LoRA, with 'oft_unet_' for 'lora_unet_'.
    const p = parseLoraKey(`lora_unet_${key.slice(KOHYA_OFT_PREFIX.length)}`);
    return p?.family === 'kohya' ? { ...p, key } : undefined;
  }
  const adapter = parseAdapterKey(key);
  if (adapter) return adapter;
  let m = KOHYA_RE.exec(key);
  if (m) {
    const role: FactorRole = m[2] === 'alpha' ? 'alpha' : m[2] === 'lora_down.weight' ? 'down' : 'up';
    return { key, role, family: 'kohya', name: m[1]! };
  }
  if (key.startsWith('lora_unet_') || key.startsWith('lora_te')) return undefined;
  m = LYCORIS_RE.exec(key);
  if (m) {
    const role: FactorRole = m[2] === 'alpha' ? 'alpha' : m[2] === 'lora_down.weight' ? 'down' : 'up';
    return { key, role, family: 'alias', name: m[1]!, tool: 'lycoris' };
  }
  if (key.startsWith('lycoris_')) return undefined;
  m = KOHYA_SUFFIX_RE.exec(key);
  if (m && COMFY_STEM_RE.test(m[1]!)) {
    return { key, role: m[2] === 'down' ? 'down' : 'up', family: 'alias', name: m[1]!, tool: 'comfyui' };
  }
  m = PROCESSOR_RE.exec(key);
  if (m) {
    return pathKey(key, m[3] === 'down' ? 'down' : 'up', processorModule(m[1]!, m[2]!), 'processor');
  }
  m = MODULE_LORA_RE.exec(key);
  if (m) return pathKey(key, m[2] === 'down' ? 'down' : 'up', m[1]!, 'processor');
  m = PEFT_AB_RE.exec(key);
  if (m) return pathKey(key, m[2] === 'A' ? 'down' : 'up', m[1]!, 'lora_A/B', m[3]);
  m = BARE_AB_RE.exec(key);
  if (m) return pathKey(key, m[2] === 'A' ? 'down' : 'up', m[1]!, 'lora_A/B');
  m = PEFT_BIAS_RE.exec(key);
  if (m) return pathKey(key, 'bias', m[1]!, 'lora_A/B', m[2]);
  m = UP_BIAS_RE.exec(key);
  if (m) return pathKey(key, 'bias', m[1]!, m[2] === 'lora' ? 'lora.down/up' : 'lora_linear_layer');
  m = LORA_DOT_RE.exec(key);
  if (m) return pathKey(key, m[2] === 'down' ? 'down' : 'up', m[1]!, 'lora.down/up');
  m = LINEAR_LAYER_RE.exec(key);
  if (m) return pathKey(key, m[2] === 'down' ? 'down' : 'up', m[1]!, 'lora_linear_layer');
  m = PATH_ALPHA_RE.exec(key);
  if (m && m[1]!.includes('.')) return pathKey(key, 'alpha', m[1]!, 'alpha');
  return undefined;
}

/**
 * Keys that are not LoRA factors but belong in a LoRA file and are kept verbatim: kohya's pivotal-tuning textual
 * inversion embeddings, `bundle_emb.<token>.string_to_param.*` (SD1.5) or `bundle_emb.<token>.clip_l` /
 * `.clip_g` (SDXL), trained together with the LoRA.
 */
export function isEmbeddingKey(key: string): boolean {
  return key.startsWith('bundle_emb.');
}

// ---------------------------------------------------------------------------------------------------------------
// Adapter types lora-mix refuses (keys.md §2.4, adapters.md §8–9): their updates depend on the base in ways no term
// kind models, so reading them as anything else would silently produce a wrong model.

export interface AdapterSignature {
  /** Human name used in the error message. */
  readonly type: string;
  /** Why it is refused. */
  readonly why: string;
  readonly test: (key: string) => boolean;
}

const endsWithAny = (key: string, suffixes: readonly string[]): boolean => suffixes.some((s) => key.endsWith(s));

export const UNSUPPORTED_ADAPTERS: readonly AdapterSignature[] = [
  {
    type: '(IA)³',
    why: '(IA)³ rescales activations; it has no low-rank delta',
    test: (k) => k.endsWith('.on_input') || /\.ia3_l(\.|$)/.test(k),
  },
  {
    type: 'replacement weights (set_weight)',
    why: 'the file replaces whole tensors instead of changing them by a difference, which no weighted sum can express',
    test: (k) => endsWithAny(k, ['.set_weight']),
  },
  {
    type: 'PEFT OFT/BOFT',
    why: "PEFT's OFT and BOFT tuners store their rotations in their own layout (oft_r / oft_R, oft_s, boft_R, boft_s, with options in the adapter config), which lora-mix does not read; LyCORIS and kohya OFT/BOFT files (oft_blocks, oft_diag) are read",
    test: (k) => /\.(oft_r|oft_R|oft_s|boft_R|boft_s)(\.|$)/.test(k),
  },
];

/** The first unsupported adapter found in a key list, with an example key and how many keys belong to it. */
export function findUnsupportedAdapter(
  keys: readonly string[],
): { signature: AdapterSignature; example: string; count: number } | undefined {
  for (const signature of UNSUPPORTED_ADAPTERS) {
    let example: string | undefined;
    let count = 0;
    for (const k of keys) {
      if (signature.test(k)) {
        example ??= k;
        count++;
      }
    }
    if (example !== undefined) return { signature, example, count };
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Base checkpoints handed in where a LoRA was expected.

const CHECKPOINT_PREFIXES = [
  'model.diffusion_model.',
  'diffusion_model.',
  'input_blocks.',
  'middle_block.',
  'output_blocks.',
  'cond_stage_model.',
  'conditioner.embedders.',
  'first_stage_model.',
  'model_ema.',
];
const DIFFUSERS_CHECKPOINT_RE =
  /^(conv_in|time_embedding|down_blocks\.\d+\.resnets|mid_block|text_model\.(encoder|embeddings)|encoder\.down_blocks|decoder\.up_blocks)\..*\.?(weight|bias)$/;

/** If the keys look like a base model (single file or a diffusers component file), an example key; else undefined. */
export function checkpointEvidence(keys: readonly string[]): string | undefined {
  for (const k of keys) if (CHECKPOINT_PREFIXES.some((p) => k.startsWith(p))) return k;
  for (const k of keys) if (DIFFUSERS_CHECKPOINT_RE.test(k)) return k;
  return undefined;
}
