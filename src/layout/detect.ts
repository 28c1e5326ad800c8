/**
 * Architecture detection from tensor names and shapes, by matching against every candidate layout
 * (sd15 / sdxl / ssd1b × full / tiny) — never from one "tell-tale" key, because the same name exists in several
 * families with different shapes.
 *
 * - `detectCheckpoint`: a base checkpoint as one file (single-file LDM/SGM naming, possibly UNet-only, or a lone
 *   diffusers UNet file without prefix).
 * - `detectDiffusersFolder`: a diffusers folder (unet/, text_encoder/, text_encoder_2/).
 * - `detectLoraArch`: which layouts can hold a LoRA's modules, ranked, with the unmatched modules of each.
 */
import { ArchError, FormatError, LoraError } from '../core/errors.js';
import { ARCH_LABEL, CANDIDATES, archConfig, getLayout, unetStateDict } from './archs.js';
import type { TextEncoderConfig } from './text-encoders.js';
import type { Arch, Component, Layout, LayoutSize, ModuleEntry, StateDictEntry } from './types.js';
import { UNET_SINGLE_FILE_PREFIX } from './unet.js';

/** What detection needs to know about a tensor. */
export interface TensorInfo {
  readonly name: string;
  readonly shape: readonly number[];
}

export type CheckpointNaming = 'single-file' | 'diffusers-unet' | 'diffusers-folder';

/** How well one candidate layout explains the UNet tensors of a checkpoint. */
export interface CheckpointCandidate {
  readonly arch: Arch;
  readonly size: LayoutSize;
  /** Layout keys found with the expected shape. */
  readonly matched: number;
  /** Layout keys absent from the file. */
  readonly missing: readonly string[];
  /** Layout keys present with another shape. */
  readonly mismatched: readonly {
    readonly key: string;
    readonly expected: readonly number[];
    readonly found: readonly number[];
  }[];
  /** UNet keys of the file the layout does not have. */
  readonly extra: readonly string[];
}

export interface CheckpointDetection {
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly naming: CheckpointNaming;
  /** Components present, in order: 'unet' first, then the text encoders found. */
  readonly components: readonly Component[];
  readonly layout: Layout;
  /**
   * Layout single-file key → the key this file actually uses, only where they differ (old SD1.5 files store the
   * text encoder without 'text_model.': 'cond_stage_model.transformer.encoder.…').
   */
  readonly aliases: ReadonlyMap<string, string>;
  /**
   * Single files: the prefix the file's UNet keys carry — 'model.diffusion_model.' (full checkpoints),
   * 'diffusion_model.' or '' (UNet-only files saved by ComfyUI and other tools, bare LDM keys 'input_blocks.…').
   * Layout keys are translated through `aliases` when it is not the standard one. '' for diffusers naming.
   */
  readonly unetPrefix: string;
  /** A VAE is present ('first_stage_model.' keys in a single file). */
  readonly hasVae: boolean;
  /** Keys under the UNet or text-encoder prefixes that the layout does not know (ignored, e.g. position_ids). */
  readonly extraKeys: readonly string[];
  /** Every candidate's UNet score, best first. */
  readonly candidates: readonly CheckpointCandidate[];
}

export interface DetectOptions {
  /** File or folder name for messages. */
  readonly source?: string;
}

const UNET_DIFFUSERS_ROOTS = ['conv_in.', 'time_embedding.', 'down_blocks.', 'mid_block.', 'up_blocks.', 'conv_out.'];
/** Top-level module names of an LDM/SGM UNet (keys of a UNet-only single file without any prefix). */
const UNET_LDM_ROOTS = ['input_blocks.', 'middle_block.', 'output_blocks.', 'time_embed.', 'label_emb.', 'out.'];
/** Prefixes a single file's UNet keys may carry, the standard one first. */
const UNET_PREFIXES = [UNET_SINGLE_FILE_PREFIX, 'diffusion_model.'];

/** The UNet prefix of a single file and its UNet keys; undefined when it has no LDM-named UNet. */
function singleFileUNet(names: readonly string[]): { prefix: string; keys: string[] } | undefined {
  for (const prefix of UNET_PREFIXES) {
    const keys = names.filter((n) => n.startsWith(prefix));
    if (keys.length > 0) return { prefix, keys };
  }
  const bare = names.filter((n) => UNET_LDM_ROOTS.some((r) => n.startsWith(r)));
  // 'out.' alone is too common a name to call a file a UNet; the block lists are not.
  return bare.some((n) => !n.startsWith('out.')) ? { prefix: '', keys: bare } : undefined;
}
const VAE_PREFIXES = ['first_stage_model.', 'vae.'];

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function fmtShape(s: readonly number[]): string {
  return `[${s.join(',')}]`;
}

function label(arch: Arch, size: LayoutSize): string {
  return size === 'full' ? ARCH_LABEL[arch] : `${ARCH_LABEL[arch]} (tiny)`;
}

function examples(keys: readonly string[], max = 3): string {
  const shown = keys.slice(0, max).join(', ');
  return keys.length > max ? `${shown}, … (${keys.length} in all)` : shown;
}

function toShapeMap(tensors: readonly TensorInfo[]): Map<string, readonly number[]> {
  const m = new Map<string, readonly number[]>();
  for (const t of tensors) m.set(t.name, t.shape);
  return m;
}

function unetEntries(layout: Layout): StateDictEntry[] {
  return layout.stateDict.filter((s) => s.component === 'unet');
}

/** Score every candidate on the UNet keys, best first. */
function scoreUNet(
  files: ReadonlyMap<string, readonly number[]>,
  unetKeys: readonly string[],
  keyOf: (s: StateDictEntry) => string,
): CheckpointCandidate[] {
  const scores = CANDIDATES.map(({ arch, size }): CheckpointCandidate => {
    const missing: string[] = [];
    const mismatched: { key: string; expected: readonly number[]; found: readonly number[] }[] = [];
    const known = new Set<string>();
    let matched = 0;
    for (const s of unetStateDict(arch, size)) {
      const key = keyOf(s);
      known.add(key);
      const found = files.get(key);
      if (found === undefined) missing.push(key);
      else if (!sameShape(found, s.shape)) mismatched.push({ key, expected: s.shape, found });
      else matched++;
    }
    const extra = unetKeys.filter((k) => !known.has(k));
    return { arch, size, matched, missing, mismatched, extra };
  });
  const bad = (c: CheckpointCandidate): number => c.missing.length + c.mismatched.length;
  return scores
    .map((c, i) => ({ c, i }))
    .sort((a, b) => bad(a.c) - bad(b.c) || a.c.extra.length - b.c.extra.length || a.i - b.i)
    .map((x) => x.c);
}

function pickUNet(candidates: CheckpointCandidate[], found: number, where: string): CheckpointCandidate {
  const best = candidates[0]!;
  if (best.missing.length === 0 && best.mismatched.length === 0) return best;
  const parts: string[] = [];
  if (best.missing.length) parts.push(`${best.missing.length} tensors missing (e.g. ${examples(best.missing)})`);
  if (best.mismatched.length) {
    const m = best.mismatched
      .slice(0, 3)
      .map((x) => `${x.key}: expected ${fmtShape(x.expected)}, found ${fmtShape(x.found)}`);
    parts.push(`${best.mismatched.length} with another shape (e.g. ${m.join('; ')})`);
  }
  if (best.extra.length) parts.push(`${best.extra.length} unknown (e.g. ${examples(best.extra)})`);
  throw new ArchError(
    'ARCH_UNDETECTED',
    `${where}: the UNet (${found} tensors) matches no known architecture (SD1.5, SDXL, SSD-1B); ` +
      `closest is ${label(best.arch, best.size)}: ${parts.join('; ')}`,
    {
      source: where,
      closest: { arch: best.arch, size: best.size },
      missing: best.missing.slice(0, 20),
      mismatched: best.mismatched.slice(0, 20),
      extra: best.extra.slice(0, 20),
    },
  );
}

function teConfig(arch: Arch, size: LayoutSize, component: Component): TextEncoderConfig | undefined {
  return archConfig(arch, size).textEncoders.find((t) => t.component === component);
}

/**
 * Check a text encoder found in the file against the layout; returns aliases for keys spelled differently.
 * Throws ArchError ARCH_MISMATCH when tensors are missing or have other shapes.
 */
function checkTextEncoder(
  layout: Layout,
  component: Component,
  files: ReadonlyMap<string, readonly number[]>,
  naming: 'single-file' | 'diffusers',
  where: string,
  aliases: Map<string, string>,
): Set<string> {
  const entries = layout.stateDict.filter((s) => s.component === component);
  const used = new Set<string>();
  const missing: string[] = [];
  const mismatched: string[] = [];
  const te = teConfig(layout.arch, layout.size, component)!;
  // Old SD1.5 files store CLIP-L as 'cond_stage_model.transformer.encoder.…' (no 'text_model.').
  let legacy = false;
  if (naming === 'single-file' && te.singleFileNaming === 'hf-clip') {
    const withText = `${te.singleFilePrefix}text_model.`;
    legacy = ![...files.keys()].some((k) => k.startsWith(withText));
  }
  for (const s of entries) {
    let key = naming === 'single-file' ? s.singleFileKey : s.diffusersKey;
    if (legacy && key.startsWith(`${te.singleFilePrefix}text_model.`)) {
      const alt = te.singleFilePrefix + key.slice(te.singleFilePrefix.length + 'text_model.'.length);
      aliases.set(key, alt);
      key = alt;
    }
    used.add(key);
    const found = files.get(key);
    if (found === undefined) {
      missing.push(key);
      continue;
    }
    let expected: readonly number[] = s.shape;
    if (naming === 'single-file' && s.transposed) expected = [...s.shape].reverse();
    const ok =
      naming === 'single-file' && s.singleFileRows
        ? found.length === expected.length &&
          found[0]! >= s.singleFileRows[1] &&
          sameShape(found.slice(1), expected.slice(1))
        : sameShape(found, expected);
    if (!ok)
      mismatched.push(
        `${key}: expected ${fmtShape(expected)}${s.singleFileRows ? ` (rows ${s.singleFileRows[0]}–${s.singleFileRows[1]})` : ''}, found ${fmtShape(found)}`,
      );
  }
  if (missing.length || mismatched.length) {
    const parts: string[] = [];
    if (missing.length) parts.push(`${missing.length} tensors missing (e.g. ${examples(missing)})`);
    if (mismatched.length)
      parts.push(`${mismatched.length} with another shape (e.g. ${mismatched.slice(0, 3).join('; ')})`);
    throw new ArchError(
      'ARCH_MISMATCH',
      `${where}: the UNet is ${label(layout.arch, layout.size)} but its ${component} does not match ` +
        `${label(layout.arch, layout.size)}'s: ${parts.join('; ')}`,
      { source: where, component, missing: missing.slice(0, 20), mismatched: mismatched.slice(0, 20) },
    );
  }
  return used;
}

function looksLikeLora(names: readonly string[]): boolean {
  return names.some(
    (n) => /^(lora_(unet|te\d?)|lycoris)_/.test(n) || /\.lora_(A|B|up|down)\./.test(n) || n.endsWith('.alpha'),
  );
}

function notACheckpoint(where: string, names: readonly string[], what: string): FormatError {
  const hint = looksLikeLora(names)
    ? ' — the keys look like a LoRA; pass it as a LoRA instead'
    : names.some((n) => n.startsWith('text_model.'))
      ? ' — it is a diffusers text-encoder file (text_model.…); pass the whole diffusers folder as the base'
      : names.some((n) => /^(encoder|decoder)\.(down|up)_blocks\./.test(n))
        ? ' — it is a diffusers VAE file; pass the whole diffusers folder as the base'
        : '';
  return new FormatError(
    'FORMAT_NOT_A_CHECKPOINT',
    `${where}: not a base checkpoint: ${what}${hint} (found ${names.length} tensors, e.g. ${examples(names)})`,
    { source: where, examples: names.slice(0, 10) },
  );
}

/**
 * Detect the architecture, size and naming of a base checkpoint stored as one file: a single-file checkpoint
 * (UNet under 'model.diffusion_model.', text encoders under 'cond_stage_model.' / 'conditioner.embedders.N.',
 * VAE under 'first_stage_model.'; any part but the UNet may be absent) or a lone diffusers UNet file.
 *
 * Throws FormatError FORMAT_NOT_A_CHECKPOINT when there is no UNet, ArchError ARCH_UNDETECTED when the UNet matches
 * no layout, ArchError ARCH_MISMATCH when a text encoder present does not match the UNet's architecture.
 */
export function detectCheckpoint(tensors: readonly TensorInfo[], opts: DetectOptions = {}): CheckpointDetection {
  const where = opts.source ?? 'checkpoint';
  const names = tensors.map((t) => t.name);
  const files = toShapeMap(tensors);
  const factor = names.find((n) => /^(lora_(unet|te\d?)|lycoris)_|\.lora_(A|B|up|down)[._]/.test(n));
  if (factor !== undefined) throw notACheckpoint(where, names, `it holds LoRA factors such as '${factor}'`);
  const single = singleFileUNet(names);
  const unetPrefix = single?.prefix ?? '';
  let naming: CheckpointNaming;
  let unetKeys: string[];
  if (single) {
    naming = 'single-file';
    unetKeys = single.keys;
  } else {
    unetKeys = names.filter(
      (n) =>
        UNET_DIFFUSERS_ROOTS.some((r) => n.startsWith(r)) ||
        n.startsWith('add_embedding.') ||
        n.startsWith('conv_norm_out.'),
    );
    if (unetKeys.length === 0) {
      throw notACheckpoint(
        where,
        names,
        `no UNet tensors ('${UNET_SINGLE_FILE_PREFIX}…', 'diffusion_model.…', bare 'input_blocks.…' or diffusers 'down_blocks.…')`,
      );
    }
    naming = 'diffusers-unet';
  }
  const inFile = (s: StateDictEntry): string => unetPrefix + s.singleFileKey.slice(UNET_SINGLE_FILE_PREFIX.length);
  const candidates = scoreUNet(files, unetKeys, naming === 'single-file' ? inFile : (s) => s.diffusersKey);
  const best = pickUNet(candidates, unetKeys.length, where);
  const layout = getLayout(best.arch, best.size);
  const components: Component[] = ['unet'];
  const aliases = new Map<string, string>();
  if (naming === 'single-file' && unetPrefix !== UNET_SINGLE_FILE_PREFIX) {
    for (const s of unetEntries(layout)) aliases.set(s.singleFileKey, inFile(s));
  }
  const extraKeys = [...best.extra];
  if (naming === 'single-file') {
    for (const te of archConfig(best.arch, best.size).textEncoders) {
      const present = names.filter((n) => n.startsWith(te.singleFilePrefix));
      if (present.length === 0) continue;
      const used = checkTextEncoder(layout, te.component, files, 'single-file', where, aliases);
      components.push(te.component);
      extraKeys.push(...present.filter((n) => !used.has(n)));
    }
    // A text encoder of the other family (e.g. SDXL's 'conditioner.' keys beside an SD1.5 UNet) is a mismatch.
    const foreign = names.filter(
      (n) =>
        (n.startsWith('cond_stage_model.') || n.startsWith('conditioner.')) &&
        !archConfig(best.arch, best.size).textEncoders.some((te) => n.startsWith(te.singleFilePrefix)),
    );
    if (foreign.length > 0) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `${where}: the UNet is ${label(best.arch, best.size)} but the file also holds text-encoder tensors of ` +
          `another layout (e.g. ${examples(foreign)})`,
        { source: where, foreign: foreign.slice(0, 20) },
      );
    }
  }
  return {
    arch: best.arch,
    size: best.size,
    naming,
    components,
    layout,
    aliases,
    unetPrefix,
    hasVae: names.some((n) => VAE_PREFIXES.some((p) => n.startsWith(p))),
    extraKeys,
    candidates,
  };
}

/**
 * Detect the architecture and size of a diffusers folder from the tensors of each component directory
 * ('unet', 'text_encoder', 'text_encoder_2'; other directories such as 'vae' are ignored except to set hasVae).
 */
export function detectDiffusersFolder(
  files: Readonly<Record<string, readonly TensorInfo[]>>,
  opts: DetectOptions = {},
): CheckpointDetection {
  const where = opts.source ?? 'diffusers folder';
  const unet = files.unet;
  if (!unet || unet.length === 0) {
    const dirs = Object.keys(files);
    throw new FormatError(
      'FORMAT_NOT_A_CHECKPOINT',
      `${where}: not a diffusers checkpoint folder: no unet/ weights (found ${dirs.length ? dirs.map((d) => `${d}/`).join(', ') : 'nothing'})`,
      { source: where, found: dirs },
    );
  }
  const unetFiles = toShapeMap(unet);
  const candidates = scoreUNet(
    unetFiles,
    unet.map((t) => t.name),
    (s) => s.diffusersKey,
  );
  const best = pickUNet(candidates, unet.length, `${where}/unet`);
  const layout = getLayout(best.arch, best.size);
  const components: Component[] = ['unet'];
  const extraKeys = best.extra.map((k) => `unet/${k}`);
  const aliases = new Map<string, string>();
  for (const component of ['text_encoder', 'text_encoder_2'] as const) {
    const list = files[component];
    if (!list || list.length === 0) continue;
    if (!teConfig(best.arch, best.size, component)) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `${where}: the UNet is ${label(best.arch, best.size)}, which has no ${component}, but ${component}/ holds ` +
          `${list.length} tensors`,
        { source: where, component },
      );
    }
    const used = checkTextEncoder(layout, component, toShapeMap(list), 'diffusers', `${where}/${component}`, aliases);
    components.push(component);
    extraKeys.push(...list.filter((t) => !used.has(t.name)).map((t) => `${component}/${t.name}`));
  }
  return {
    arch: best.arch,
    size: best.size,
    naming: 'diffusers-folder',
    components,
    layout,
    aliases,
    unetPrefix: '',
    hasVae: (files.vae?.length ?? 0) > 0,
    extraKeys,
    candidates,
  };
}

// ---- LoRAs ---------------------------------------------------------------------------------------------------

/** Shapes of a LoRA module's factors as stored (down [r, in(,kh,kw)], up [out, r(,1,1)]). */
export interface LoraFactorShapes {
  readonly downShape: readonly number[];
  readonly upShape: readonly number[];
}

export interface UnmatchedModule {
  readonly path: string;
  /** 'missing': the layout has no such module; 'shape': it has, with a shape the factors do not fit. */
  readonly reason: 'missing' | 'shape';
  readonly detail: string;
}

export interface LoraArchCandidate {
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly layout: Layout;
  /** Modules of the LoRA that fit this layout. */
  readonly matched: number;
  readonly unmatched: readonly UnmatchedModule[];
  /** matched / modules of this layout in the components the LoRA touches (tie-break: SSD-1B vs SDXL). */
  readonly coverage: number;
}

/**
 * Why LoRA factors do not fit a module, or null when they do. Accepted: down [r, in] or [r, in, kh, kw] and
 * up [out, r] or [out, r, 1, 1], where a 2-D down needs a 1×1 kernel (Linear or 1×1 conv, as kohya squeezes) and a
 * 4-D down on a Linear needs [r, in, 1, 1].
 */
export function loraFactorMismatch(entry: ModuleEntry, down: readonly number[], up: readonly number[]): string | null {
  const out = entry.shape[0]!;
  const inp = entry.shape[1]!;
  const [kh, kw] = entry.kernel ?? [1, 1];
  const expectDown = kh * kw === 1 ? `[r,${inp}] or [r,${inp},1,1]` : `[r,${inp},${kh},${kw}]`;
  const expectUp = `[${out},r] or [${out},r,1,1]`;
  const bad = (what: string): string =>
    `${entry.path} ${fmtShape(entry.shape)} expects down ${expectDown} and up ${expectUp}, found ${what}`;
  const found = `down ${fmtShape(down)}, up ${fmtShape(up)}`;
  if (down.length !== 2 && down.length !== 4) return bad(found);
  if (up.length !== 2 && up.length !== 4) return bad(found);
  if (up.length === 4 && (up[2] !== 1 || up[3] !== 1)) return bad(found);
  if (down[1] !== inp || up[0] !== out) return bad(found);
  if (down.length === 2 ? kh * kw !== 1 : down[2] !== kh || down[3] !== kw) return bad(found);
  if (down[0] !== up[1])
    return `${entry.path}: rank of down ${fmtShape(down)} (${down[0]}) differs from rank of up ${fmtShape(up)} (${up[1]})`;
  if (!(down[0]! > 0)) return bad(found);
  return null;
}

/**
 * Rank every candidate layout by how well it holds a LoRA's modules (canonical paths → factor shapes): fewest
 * unmatched first, then highest coverage. The first candidate with no unmatched module is the LoRA's arch; a
 * candidate with unmatched modules tells the caller e.g. "SDXL LoRA on SSD-1B: 365 modules missing".
 * Throws LoraError LORA_EMPTY for an empty map.
 */
export function detectLoraArch(
  modules: ReadonlyMap<string, LoraFactorShapes>,
  opts: {
    readonly candidates?: readonly { readonly arch: Arch; readonly size: LayoutSize }[];
    readonly source?: string;
  } = {},
): LoraArchCandidate[] {
  if (modules.size === 0) {
    throw new LoraError('LORA_EMPTY', `${opts.source ?? 'LoRA'}: no LoRA modules to match against a layout`);
  }
  const touched = new Set<string>();
  for (const p of modules.keys()) {
    const dot = p.indexOf('.');
    touched.add(dot < 0 ? p : p.slice(0, dot));
  }
  const list = (opts.candidates ?? CANDIDATES).map(({ arch, size }, i) => {
    const layout = getLayout(arch, size);
    const unmatched: UnmatchedModule[] = [];
    let matched = 0;
    for (const [path, f] of modules) {
      const entry = layout.byPath.get(path);
      if (!entry) {
        unmatched.push({ path, reason: 'missing', detail: `${label(arch, size)} has no module ${path}` });
        continue;
      }
      const why = loraFactorMismatch(entry, f.downShape, f.upShape);
      if (why) unmatched.push({ path, reason: 'shape', detail: why });
      else matched++;
    }
    const total = layout.modules.filter((m) => touched.has(m.component)).length;
    return { c: { arch, size, layout, matched, unmatched, coverage: total ? matched / total : 0 }, i };
  });
  list.sort((a, b) => a.c.unmatched.length - b.c.unmatched.length || b.c.coverage - a.c.coverage || a.i - b.i);
  return list.map((x) => x.c);
}

/** One line about a candidate's unmatched modules, e.g. "SSD-1B: 365 of 788 modules have no counterpart (e.g. …)". */
export function describeUnmatched(c: LoraArchCandidate, max = 3): string {
  const total = c.matched + c.unmatched.length;
  if (c.unmatched.length === 0) return `${label(c.arch, c.size)}: all ${total} modules match`;
  const missing = c.unmatched.filter((u) => u.reason === 'missing');
  const shape = c.unmatched.filter((u) => u.reason === 'shape');
  const parts: string[] = [];
  if (missing.length)
    parts.push(
      `${missing.length} of ${total} modules have no counterpart (e.g. ${examples(
        missing.map((u) => u.path),
        max,
      )})`,
    );
  if (shape.length)
    parts.push(
      `${shape.length} of ${total} do not fit (e.g. ${shape
        .slice(0, max)
        .map((u) => u.detail)
        .join('; ')})`,
    );
  return `${label(c.arch, c.size)}: ${parts.join('; ')}`;
}
