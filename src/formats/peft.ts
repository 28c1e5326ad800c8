/**
 * The PEFT / diffusers spelling: `unet.<module path>.lora_A.weight` (down) and `.lora_B.weight` (up), with
 * `text_encoder.` / `text_encoder_2.` for the text encoders. Files carry no alpha tensors; the scale comes from the
 * PEFT config, which diffusers stores as JSON in the safetensors metadata under `lora_adapter_metadata`, with keys
 * prefixed by component ("unet.r", "unet.lora_alpha", "unet.alpha_pattern", …). Unprefixed configs
 * ("r", "lora_alpha", …) are read too and then apply to every component.
 *
 * lora-mix writes one config per component: `r` and `lora_alpha` are the most common rank and alpha, and
 * `rank_pattern` / `alpha_pattern` list every module that differs, by its full module path, so any alpha survives.
 */
import { FormatError } from '../core/errors.js';
import type { Component, ModuleEntry } from '../layout/types.js';
import { scanKeys } from '../safetensors/json-keys.js';

/** A PEFT pattern (alpha_pattern / rank_pattern): key → value, in the order the config's JSON text lists them. */
export type PeftPattern = readonly (readonly [string, number])[];

export const PEFT_METADATA_KEY = 'lora_adapter_metadata';

/** The part of a PEFT LoraConfig that decides scales. */
export interface PeftComponentConfig {
  readonly r?: number;
  readonly loraAlpha?: number;
  /** In the JSON text's key order (a JS object would put integer-like keys first). */
  readonly alphaPattern: PeftPattern;
  readonly rankPattern: PeftPattern;
  readonly useRslora: boolean;
  readonly useDora: boolean;
}

/** Configs per component, or one for all (unprefixed metadata). */
export interface PeftConfigs {
  readonly byComponent: Partial<Record<Component, PeftComponentConfig>>;
  readonly shared?: PeftComponentConfig;
}

const COMPONENTS: readonly Component[] = ['text_encoder_2', 'text_encoder', 'unet'];
const CONFIG_FIELDS = ['r', 'lora_alpha', 'alpha_pattern', 'rank_pattern', 'use_rslora', 'use_dora'];

function invalid(file: string, what: string, found: unknown): FormatError {
  return new FormatError(
    'FORMAT_METADATA_INVALID',
    `${file}: metadata '${PEFT_METADATA_KEY}' ${what}; found ${JSON.stringify(found)?.slice(0, 200)}`,
    { file, key: PEFT_METADATA_KEY, found },
  );
}

function numberField(file: string, name: string, v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalid(file, `field '${name}' must be a finite number`, v);
  return v;
}

/**
 * A pattern object as an ordered list. `order` is the key order of the object in the JSON text (JSON.parse's
 * object lists integer-like keys first, ascending, whatever the text said; PEFT tries the keys in the text's order).
 */
function patternField(file: string, name: string, v: unknown, order: readonly string[] | undefined): PeftPattern {
  if (v === undefined || v === null) return [];
  if (typeof v !== 'object' || Array.isArray(v))
    throw invalid(file, `field '${name}' must be an object of module → number`, v);
  const obj = v as Record<string, unknown>;
  const keys = order && order.length === Object.keys(obj).length ? order : Object.keys(obj);
  return keys.map((k) => {
    const x = obj[k];
    if (typeof x !== 'number' || !Number.isFinite(x))
      throw invalid(file, `field '${name}.${k}' must be a finite number`, x);
    return [k, x] as const;
  });
}

function componentConfig(
  file: string,
  raw: Record<string, unknown>,
  prefix: string,
  order: ReadonlyMap<string, string[]> | undefined,
): PeftComponentConfig {
  const get = (f: string): unknown => raw[prefix + f];
  const r = numberField(file, `${prefix}r`, get('r'));
  const loraAlpha = numberField(file, `${prefix}lora_alpha`, get('lora_alpha'));
  return {
    ...(r !== undefined ? { r } : {}),
    ...(loraAlpha !== undefined ? { loraAlpha } : {}),
    alphaPattern: patternField(
      file,
      `${prefix}alpha_pattern`,
      get('alpha_pattern'),
      order?.get(`${prefix}alpha_pattern`),
    ),
    rankPattern: patternField(file, `${prefix}rank_pattern`, get('rank_pattern'), order?.get(`${prefix}rank_pattern`)),
    useRslora: get('use_rslora') === true,
    useDora: get('use_dora') === true,
  };
}

/** Parse `lora_adapter_metadata` from safetensors metadata; undefined when absent. */
export function parsePeftMetadata(metadata: Readonly<Record<string, string>>, file: string): PeftConfigs | undefined {
  const text = metadata[PEFT_METADATA_KEY];
  if (text === undefined) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw invalid(file, 'is not valid JSON', text);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw invalid(file, 'must be a JSON object', raw);
  const obj = raw as Record<string, unknown>;
  // The text's key order inside each pattern object (JSON.parse has accepted the text, as scanKeys requires).
  const order = scanKeys(text, { childKeys: true }).children;
  const byComponent: Partial<Record<Component, PeftComponentConfig>> = {};
  for (const c of COMPONENTS) {
    if (Object.keys(obj).some((k) => k.startsWith(`${c}.`)))
      byComponent[c] = componentConfig(file, obj, `${c}.`, order);
  }
  const hasShared = CONFIG_FIELDS.some((f) => f in obj);
  return { byComponent, ...(hasShared ? { shared: componentConfig(file, obj, '', order) } : {}) };
}

/**
 * PEFT's pattern rule (peft/utils/other.py `get_pattern_key`): the pattern keys are tried in the order the config
 * lists them, and the first whose regular expression `(.*\.)?(KEY)$` matches the whole module name wins — not the
 * most specific one, and not an exact name first. diffusers writes the patterns with sorted keys, so a short key
 * ('attn1.to_q') can shadow a full path listed after it. A key that is not a valid regular expression here is
 * compared literally (the name, or its '.'-suffix). Returns the winning key, or undefined.
 */
export function peftPatternKey(keys: readonly string[], moduleName: string): string | undefined {
  for (const k of keys) {
    let hit: boolean;
    try {
      hit = new RegExp(`^(?:.*\\.)?(?:${k})$`).test(moduleName);
    } catch {
      hit = moduleName === k || moduleName.endsWith(`.${k}`);
    }
    if (hit) return k;
  }
  return undefined;
}

function matchPattern(pattern: PeftPattern, moduleName: string): number | undefined {
  const key = peftPatternKey(
    pattern.map(([k]) => k),
    moduleName,
  );
  return key === undefined ? undefined : pattern.find(([k]) => k === key)?.[1];
}

export function peftConfigFor(configs: PeftConfigs | undefined, component: Component): PeftComponentConfig | undefined {
  return configs?.byComponent[component] ?? configs?.shared;
}

/** The rank the PEFT config gives one module (rank_pattern, else r), or undefined when it says nothing. */
export function peftRank(config: PeftComponentConfig | undefined, localPath: string): number | undefined {
  if (!config) return undefined;
  return matchPattern(config.rankPattern, localPath) ?? config.r;
}

/**
 * The alpha of one module (in lora-mix's convention: delta = alpha / r · up·down) from the PEFT config, or
 * undefined when the config says nothing (the caller then uses alpha = r). rsLoRA scales by alpha / √r, which is
 * alpha·√r in this convention.
 */
export function peftAlpha(
  config: PeftComponentConfig | undefined,
  localPath: string,
  rank: number,
): number | undefined {
  if (!config) return undefined;
  const a = matchPattern(config.alphaPattern, localPath) ?? config.loraAlpha;
  if (a === undefined) return undefined;
  return config.useRslora ? a * Math.sqrt(rank) : a;
}

/** PEFT key stem of a module: 'unet.<path>' or, with the raw PEFT prefix, 'base_model.model.<path>' (UNet only). */
export function peftStem(entry: ModuleEntry, prefix: 'component' | 'base_model'): string {
  return prefix === 'base_model' ? `base_model.model.${entry.localPath}` : entry.path;
}

function mostCommon(values: readonly number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0]!;
  let bestCount = -1;
  for (const [v, c] of counts) {
    if (c > bestCount || (c === bestCount && v < best)) {
      best = v;
      bestCount = c;
    }
  }
  return best;
}

/** Sort object keys recursively (diffusers writes the JSON with sorted keys, indent 2). */
function sortedJson(value: unknown): string {
  const sort = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sort);
    if (v && typeof v === 'object') {
      return Object.fromEntries(
        Object.keys(v as object)
          .sort()
          .map((k) => [k, sort((v as Record<string, unknown>)[k])]),
      );
    }
    return v;
  };
  return JSON.stringify(sort(value), null, 2);
}

/**
 * Build the `lora_adapter_metadata` JSON for a set of modules: per component r, lora_alpha, rank_pattern,
 * alpha_pattern and target_modules (the full module paths). `prefixed` false writes one unprefixed config (used
 * for the raw 'base_model.model.' spelling, which is UNet-only).
 */
export function peftMetadataJson(
  modules: readonly { entry: ModuleEntry; rank: number; alpha: number }[],
  prefixed: boolean,
): string {
  const out: Record<string, unknown> = {};
  for (const c of COMPONENTS) {
    const ms = modules.filter((m) => m.entry.component === c);
    if (ms.length === 0) continue;
    const r = mostCommon(ms.map((m) => m.rank));
    const alpha = mostCommon(ms.map((m) => m.alpha));
    const rankPattern: Record<string, number> = {};
    const alphaPattern: Record<string, number> = {};
    for (const m of ms) {
      if (m.rank !== r) rankPattern[m.entry.localPath] = m.rank;
      if (m.alpha !== alpha) alphaPattern[m.entry.localPath] = m.alpha;
    }
    const p = prefixed ? `${c}.` : '';
    out[`${p}r`] = r;
    out[`${p}lora_alpha`] = alpha;
    out[`${p}rank_pattern`] = rankPattern;
    out[`${p}alpha_pattern`] = alphaPattern;
    out[`${p}target_modules`] = ms.map((m) => m.entry.localPath);
  }
  return sortedJson(out);
}
