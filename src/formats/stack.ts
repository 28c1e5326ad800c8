/**
 * Runtime LoRA stacks as files spell them: an A1111 prompt's `<lora:…>` tags and a ComfyUI workflow's
 * LoraLoader / LoraLoaderModelOnly chain (UI and API formats). Both become the same list of entries — a LoRA name
 * with a UNet strength, a text-encoder strength and optional block weights — which a merge or fuse with
 * per-component weights reproduces exactly (both UIs add every LoRA's scaled delta in f32: an exact weighted sum).
 *
 * A1111 (extensions-builtin/Lora/extra_networks_lora.py, webui ≥ 1.5): tags `<lora:NAME:…>` (or `<lyco:…>`); the
 * items after the name are split on ':'; an item with '=' is named (key=value), others positional: te, unet, dyn.
 * te = positional 1 (default 1), overridden by te=; unet = positional 2, else te (after the named override),
 * overridden by unet=; dyn = positional 3 or dyn=. `lbw=` (or `w=`) carries LoRA Block Weight ratios.
 *
 * ComfyUI (nodes.py): LoraLoader widgets [lora_name, strength_model, strength_clip], LoraLoaderModelOnly
 * [lora_name, strength_model]; strength_model → UNet, strength_clip → text encoders. UI format: `nodes` with
 * `widgets_values` and `mode` (2 muted, 4 bypassed: applies nothing); API format: `{ id: { class_type, inputs } }`.
 */
import { FormatError } from '../core/errors.js';

/** One LoRA of a runtime stack. */
export interface StackEntry {
  /** As written: an A1111 name (file name without extension) or a ComfyUI lora_name (relative path). */
  readonly name: string;
  readonly unet: number;
  readonly te: number;
  /** A1111 `dyn`: only the first dyn rank components are used at run time (not reproducible: reported). */
  readonly dyn?: number;
  /** LoRA Block Weight ratios as written (`lbw=` / `w=`): a preset name or a comma list. */
  readonly lbw?: string;
  /** Where it came from, for the report: the tag text or 'node 12 (LoraLoader)'. */
  readonly origin: string;
  /** Things lora-mix cannot reproduce, for the report. */
  readonly warnings: readonly string[];
}

const TAG = /<(lora|lyco):([^>]+)>/gi;

function num(text: string, what: string, origin: string): number {
  const v = text.trim() === '' ? Number.NaN : Number(text);
  if (!Number.isFinite(v)) {
    throw new FormatError('FORMAT_STACK_INVALID', `${origin}: ${what} must be a number, found '${text}'`, {
      key: what,
      found: text,
    });
  }
  return v;
}

/** The `<lora:…>` tags of an A1111 prompt, in order. Text outside the tags is ignored. */
export function parsePromptStack(prompt: string): StackEntry[] {
  const entries: StackEntry[] = [];
  for (const m of prompt.matchAll(TAG)) {
    const origin = m[0];
    const items = (m[2] ?? '').split(':');
    const name = (items[0] ?? '').trim();
    if (name === '') {
      throw new FormatError('FORMAT_STACK_INVALID', `prompt: ${origin} names no LoRA`, { found: origin });
    }
    const positional: string[] = [];
    const named = new Map<string, string>();
    for (const item of items.slice(1)) {
      const eq = item.indexOf('=');
      if (eq >= 0) named.set(item.slice(0, eq).trim().toLowerCase(), item.slice(eq + 1).trim());
      else positional.push(item.trim());
    }
    let te = positional[0] !== undefined ? num(positional[0], 'te (1st value)', origin) : 1;
    if (named.has('te')) te = num(named.get('te') ?? '', 'te=', origin);
    let unet = positional[1] !== undefined ? num(positional[1], 'unet (2nd value)', origin) : te;
    if (named.has('unet')) unet = num(named.get('unet') ?? '', 'unet=', origin);
    const dynText = named.get('dyn') ?? positional[2];
    const warnings: string[] = [];
    let dyn: number | undefined;
    if (dynText !== undefined && dynText !== '') {
      dyn = num(dynText, 'dyn', origin);
      warnings.push(
        `${origin}: dyn=${dyn} makes A1111 use only the first ${dyn} rank components at run time; lora-mix uses the whole LoRA (dyn cannot be reproduced)`,
      );
    }
    const lbw = named.get('lbw') ?? named.get('w');
    for (const key of ['start', 'stop', 'step']) {
      if (named.has(key)) {
        warnings.push(`${origin}: ${key}= is a sampling-step schedule of the LoRA Block Weight extension; ignored`);
      }
    }
    if (named.has('lbwe')) warnings.push(`${origin}: lbwe= (elemental block weights) is not supported; ignored`);
    for (const key of named.keys()) {
      if (!['te', 'unet', 'dyn', 'lbw', 'w', 'start', 'stop', 'step', 'lbwe', 'x'].includes(key)) {
        warnings.push(`${origin}: unknown parameter ${key}= ignored`);
      }
    }
    entries.push({
      name,
      unet,
      te,
      ...(dyn !== undefined ? { dyn } : {}),
      ...(lbw !== undefined ? { lbw } : {}),
      origin,
      warnings,
    });
  }
  if (entries.length === 0) {
    throw new FormatError('FORMAT_STACK_INVALID', 'prompt: no <lora:NAME:…> tag found', {
      found: prompt.slice(0, 200),
    });
  }
  return entries;
}

const LOADERS = new Set(['LoraLoader', 'LoraLoaderModelOnly']);

function loaderEntry(
  type: string,
  id: string,
  name: unknown,
  strengthModel: unknown,
  strengthClip: unknown,
): StackEntry {
  const origin = `node ${id} (${type})`;
  if (typeof name !== 'string' || name === '') {
    throw new FormatError('FORMAT_STACK_INVALID', `workflow: ${origin} has no lora_name`, { key: id, found: name });
  }
  const unet = strengthModel === undefined ? 1 : num(String(strengthModel), 'strength_model', origin);
  const te =
    type === 'LoraLoaderModelOnly'
      ? 0
      : strengthClip === undefined
        ? 1
        : num(String(strengthClip), 'strength_clip', origin);
  return { name: name.replace(/\\/g, '/'), unet, te, origin, warnings: [] };
}

type Json = Record<string, unknown>;
const isObject = (x: unknown): x is Json => typeof x === 'object' && x !== null && !Array.isArray(x);

/**
 * The LoRA loaders of a ComfyUI workflow (UI format with `nodes`, or API format keyed by node id), in chain order:
 * from the loader nearest the checkpoint to the one nearest the sampler (the order does not change the sum).
 * Muted (mode 2) and bypassed (mode 4) loaders are skipped and reported; loaders of other node packs are reported
 * as not understood. No loader at all is a FormatError.
 */
export function parseComfyWorkflow(json: unknown, source = 'workflow'): { entries: StackEntry[]; warnings: string[] } {
  const warnings: string[] = [];
  const found: { id: string; entry: StackEntry; upstream: string | null }[] = [];
  const other: string[] = [];
  if (isObject(json) && Array.isArray(json.nodes)) {
    // UI format: links [id, from_node, from_slot, to_node, to_slot, type].
    const linkFrom = new Map<number, string>();
    if (Array.isArray(json.links)) {
      for (const l of json.links) if (Array.isArray(l) && typeof l[0] === 'number') linkFrom.set(l[0], String(l[1]));
    }
    for (const node of json.nodes) {
      if (!isObject(node)) continue;
      const type = String(node.type ?? '');
      const id = String(node.id ?? '?');
      if (!LOADERS.has(type)) {
        if (/lora/i.test(type)) other.push(`node ${id} (${type})`);
        continue;
      }
      if (node.mode === 2 || node.mode === 4) {
        warnings.push(`${source}: node ${id} (${type}) is ${node.mode === 2 ? 'muted' : 'bypassed'}: not applied`);
        continue;
      }
      const w = Array.isArray(node.widgets_values) ? node.widgets_values : [];
      const inputs = Array.isArray(node.inputs) ? node.inputs : [];
      const modelIn = inputs.find((i) => isObject(i) && i.name === 'model');
      const link = isObject(modelIn) && typeof modelIn.link === 'number' ? modelIn.link : null;
      found.push({
        id,
        entry: loaderEntry(type, id, w[0], w[1], w[2]),
        upstream: link !== null ? (linkFrom.get(link) ?? null) : null,
      });
    }
  } else if (isObject(json)) {
    // API format: { "<id>": { class_type, inputs: { model: ["<id>", 0], lora_name, strength_model, … } } }.
    for (const [id, node] of Object.entries(json)) {
      if (!isObject(node) || typeof node.class_type !== 'string') continue;
      const type = node.class_type;
      if (!LOADERS.has(type)) {
        if (/lora/i.test(type)) other.push(`node ${id} (${type})`);
        continue;
      }
      const inputs = isObject(node.inputs) ? node.inputs : {};
      const model = inputs.model;
      found.push({
        id,
        entry: loaderEntry(type, id, inputs.lora_name, inputs.strength_model, inputs.strength_clip),
        upstream: Array.isArray(model) ? String(model[0]) : null,
      });
    }
  } else {
    throw new FormatError('FORMAT_STACK_INVALID', `${source}: not a ComfyUI workflow (expected a JSON object)`, {
      file: source,
    });
  }
  for (const o of other) warnings.push(`${source}: ${o} is not a core LoraLoader; not read`);
  if (found.length === 0) {
    throw new FormatError(
      'FORMAT_STACK_INVALID',
      `${source}: no active LoraLoader or LoraLoaderModelOnly node${other.length ? ` (found ${other.join(', ')})` : ''}`,
      { file: source },
    );
  }
  // Chain order: a loader whose model input comes from another loader follows it.
  const ids = new Set(found.map((f) => f.id));
  const ordered: typeof found = [];
  const placed = new Set<string>();
  while (ordered.length < found.length) {
    const next = found.find(
      (f) => !placed.has(f.id) && (f.upstream === null || !ids.has(f.upstream) || placed.has(f.upstream)),
    );
    const pick = next ?? found.find((f) => !placed.has(f.id));
    if (!pick) break;
    ordered.push(pick);
    placed.add(pick.id);
  }
  return { entries: ordered.map((f) => f.entry), warnings };
}

/** Parse a workflow file's text (JSON), naming the file in errors. */
export function parseComfyWorkflowText(
  text: string,
  source = 'workflow',
): { entries: StackEntry[]; warnings: string[] } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FormatError('FORMAT_STACK_INVALID', `${source}: not valid JSON (${(e as Error).message})`, {
      file: source,
    });
  }
  return parseComfyWorkflow(json, source);
}
