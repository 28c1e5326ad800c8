/**
 * Norm-layer differences in a LoRA file: ComfyUI's `.diff` (weight) / `.diff_b` (bias) on a GroupNorm or LayerNorm,
 * LyCORIS's `w_norm` / `b_norm`. ComfyUI applies both as W += strength·diff (comfy/lora.py `load_lora`: a "diff"
 * patch on `<norm>.weight`, and on `<norm>.bias` for diff_b / b_norm). Their names resolve through the layout's norm
 * table (`Layout.normByName`: kohya names of both UNet spellings, ComfyUI's and the LyCORIS wrapper's); each is a
 * dense 1-D delta of the norm's channel count.
 */
import ndarray from 'ndarray';
import { FormatError, LoraError } from '../core/errors.js';
import { assertFiniteTensor } from '../core/finite.js';
import { ARCH_LABEL, CANDIDATES, getLayout, moduleAliases } from '../layout/index.js';
import type { Arch, Layout, LayoutSize, NormEntry } from '../layout/types.js';
import type { NormDelta } from '../lora/types.js';
import type { FactorRole, ParsedKey } from './keys.js';
import { kohyaName, type KohyaPaths } from './kohya.js';

/** The roles a norm's group may hold (an alpha is ignored, as ComfyUI ignores it for diffs). */
const NORM_ROLES: readonly string[] = ['id', 'family', 'diff', 'diff_b', 'w_norm', 'b_norm', 'alpha'];

type GroupLike = { readonly id: string } & Partial<Record<FactorRole, ParsedKey>>;
type Shapes = ReadonlyMap<string, { readonly shape: readonly number[] }>;

/** True for a group that changes a norm layer: LyCORIS w_norm / b_norm, or a 1-D `.diff`. */
export function isNormGroup(g: GroupLike, infos: Shapes): boolean {
  if (g.w_norm || g.b_norm) return true;
  return g.diff !== undefined && infos.get(g.diff.key)?.shape.length === 1;
}

/** A norm difference of a plan: the norm and the keys of its weight and bias deltas. */
export interface PlannedNorm {
  readonly entry: NormEntry;
  /** The name as spelled in the file. */
  readonly name: string;
  readonly weightKey?: string;
  readonly biasKey?: string;
}

/** The weight / bias keys of a norm group; FORMAT_MIXED for tensors of another kind or both spellings. */
function normKeys(file: string, g: GroupLike): { weightKey?: string; biasKey?: string } {
  const other = Object.keys(g).filter((k) => !NORM_ROLES.includes(k));
  if (other.length > 0 || (g.diff && g.w_norm) || (g.diff_b && g.b_norm)) {
    throw new FormatError(
      'FORMAT_MIXED',
      `${file}: '${g.id}' changes a norm layer but also holds ${[...other, ...(g.diff && g.w_norm ? ['diff and w_norm'] : []), ...(g.diff_b && g.b_norm ? ['diff_b and b_norm'] : [])].join(', ')}; expected diff / diff_b or w_norm / b_norm`,
      { file, key: g.id, found: other },
    );
  }
  const w = g.diff ?? g.w_norm;
  const b = g.diff_b ?? g.b_norm;
  return { ...(w ? { weightKey: w.key } : {}), ...(b ? { biasKey: b.key } : {}) };
}

/** Resolve norm groups in one layout: the planned norms, the names it lacks, the deltas of the wrong length. */
function resolveIn(
  file: string,
  layout: Layout,
  groups: readonly GroupLike[],
  infos: Shapes,
): { planned: PlannedNorm[]; missing: string[]; wrong: string[] } {
  const planned: PlannedNorm[] = [];
  const missing: string[] = [];
  const wrong: string[] = [];
  for (const g of groups) {
    const entry = layout.normByName.get(g.id);
    if (!entry) {
      missing.push(g.id);
      continue;
    }
    const keys = normKeys(file, g);
    const bad = [keys.weightKey, keys.biasKey].filter((k): k is string => {
      if (k === undefined) return false;
      const s = infos.get(k)?.shape ?? [];
      return s.length !== 1 || s[0] !== entry.channels;
    });
    if (keys.biasKey !== undefined && !entry.bias) wrong.push(`${keys.biasKey} (the norm has no bias)`);
    for (const k of bad) wrong.push(`${k} [${(infos.get(k)?.shape ?? []).join(', ')}], expected [${entry.channels}]`);
    planned.push({ entry, name: g.id, ...keys });
  }
  return { planned, missing, wrong };
}

/**
 * Plan the norm differences of a file in the layout its modules chose (`layout`), or, for a file of norm
 * differences only, in the first candidate (of the forced arch / size) that holds every one with the right channel
 * count. Unknown names: FORMAT_KEY_UNRESOLVED, or listed as unmatched with allowUnmatched; a delta whose length is
 * not the norm's channel count: LORA_SHAPE_MISMATCH.
 */
export function planNorms(
  file: string,
  groups: readonly GroupLike[],
  infos: Shapes,
  layout: Layout | undefined,
  options: { readonly arch?: Arch; readonly size?: LayoutSize; readonly allowUnmatched?: boolean },
  unmatched: { key: string; reason: string }[],
): { planned: PlannedNorm[]; layout?: Layout } {
  if (groups.length === 0) return { planned: [] };
  let chosen = layout;
  if (!chosen) {
    for (const c of CANDIDATES) {
      if ((options.arch && c.arch !== options.arch) || (options.size && c.size !== options.size)) continue;
      const l = getLayout(c.arch, c.size);
      const r = resolveIn(file, l, groups, infos);
      if (r.missing.length === 0 && r.wrong.length === 0) {
        chosen = l;
        break;
      }
    }
    if (!chosen) {
      throw new FormatError(
        'FORMAT_KEY_UNRESOLVED',
        `${file}: the file changes only norm layers, and no architecture${options.arch ? ` (${ARCH_LABEL[options.arch]})` : ''} has norms of these names and widths: ${groups
          .slice(0, 5)
          .map((g) => g.id)
          .join(', ')}`,
        { file, keys: groups.map((g) => g.id).slice(0, 100), count: groups.length },
      );
    }
  }
  const r = resolveIn(file, chosen, groups, infos);
  if (r.wrong.length > 0) {
    throw new LoraError(
      'LORA_SHAPE_MISMATCH',
      `${file}: ${r.wrong.length} norm-layer difference(s) do not fit ${ARCH_LABEL[chosen.arch]}${chosen.size === 'tiny' ? ' (tiny)' : ''}: ${r.wrong.slice(0, 5).join('; ')}`,
      { file, keys: r.wrong.slice(0, 100), count: r.wrong.length },
    );
  }
  if (r.missing.length > 0) {
    if (!options.allowUnmatched) {
      throw new FormatError(
        'FORMAT_KEY_UNRESOLVED',
        `${file}: ${r.missing.length} norm-layer name(s) match no norm of ${ARCH_LABEL[chosen.arch]}: ${r.missing.slice(0, 10).join(', ')}`,
        { file, keys: r.missing.slice(0, 100), count: r.missing.length },
      );
    }
    for (const k of r.missing) unmatched.push({ key: k, reason: 'no norm layer of this name in the architecture' });
  }
  const order = new Map(chosen.norms.map((n, i) => [n.path, i]));
  r.planned.sort((a, b) => (order.get(a.entry.path) ?? 0) - (order.get(b.entry.path) ?? 0));
  return { planned: r.planned, layout: chosen };
}

/** A note for the plan: how many norm layers change and how. */
export function normNotes(norms: readonly PlannedNorm[]): string[] {
  if (norms.length === 0) return [];
  const biases = norms.filter((n) => n.biasKey !== undefined).length;
  return [
    `${norms.length} norm layer(s) (GroupNorm / LayerNorm) change by a full difference (${norms.filter((n) => n.weightKey !== undefined).length} weight, ${biases} bias): kept by merge and convert, added by fuse`,
  ];
}

type ReadF32 = (key: string) => Promise<Float32Array>;

/** Read the planned norm deltas, refusing NaN / ±Inf (FORMAT_NONFINITE) as for every other tensor. */
export async function readNorms(
  file: string,
  norms: readonly PlannedNorm[],
  read: ReadF32,
): Promise<Map<string, NormDelta>> {
  const out = new Map<string, NormDelta>();
  for (const n of norms) {
    const get = async (key: string | undefined) => {
      if (key === undefined) return undefined;
      const v = (await read(key)).slice();
      assertFiniteTensor(file, key, v, 'norm-layer difference');
      return ndarray(v, [v.length]);
    };
    const [weight, bias] = await Promise.all([get(n.weightKey), get(n.biasKey)]);
    out.set(n.entry.path, { ...(weight ? { weight } : {}), ...(bias ? { bias } : {}) });
  }
  return out;
}

/**
 * The stem a norm difference is written under (`<stem>.diff`, `<stem>.diff_b`), as ComfyUI's loader reads it: its
 * own name ('diffusion_model.<LDM path>', 'text_encoders.clip_l.transformer.<HF path>'), a kohya UNet name
 * ('lora_unet_<path>': both spellings are in its key map) or the LyCORIS wrapper's UNet name. A text encoder's norm
 * has no kohya or LyCORIS name any loader reads, so kohya output keeps it under ComfyUI's name (ComfyUI reads each
 * key by itself; lora-mix reads such a file back). PEFT and old diffusers have no norm tensors at all: refused with
 * FORMAT_CANNOT_ENCODE naming the norm, never dropped.
 */
export function normStem(entry: NormEntry, format: string, kohyaPaths: KohyaPaths | undefined): string {
  const unet = entry.component === 'unet';
  const comfy = moduleAliases(entry)[0] ?? entry.path;
  if (format === 'comfyui') return comfy;
  if (format === 'kohya') return unet ? kohyaName(entry, kohyaPaths ?? 'diffusers') : comfy;
  if (format === 'lycoris' && unet) return moduleAliases(entry)[1] ?? entry.path;
  const why =
    format === 'peft' || format === 'diffusers-old'
      ? `the ${format} spelling has no place for norm-layer differences`
      : `ComfyUI reads ${format} names for UNet norms only`;
  throw new FormatError(
    'FORMAT_CANNOT_ENCODE',
    `${format} encoding: the LoRA changes the norm layer '${entry.path}' (a full difference of its weight / bias), but ${why}; write kohya to keep it`,
    { key: entry.path, format },
  );
}

/** The roles that name norm-layer differences (their keys may use another spelling than the file's modules). */
export const NORM_DIFF_ROLES: readonly FactorRole[] = ['diff', 'diff_b', 'w_norm', 'b_norm'];
