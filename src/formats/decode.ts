/**
 * Decoding a LoRA file into the canonical `Lora`: key grammar (keys.ts) → modules grouped by name → names
 * resolved through the layouts and the architecture decided from names + shapes (resolve.ts) → factors read
 * and decoded to f32.
 *
 * `planLora` does everything except reading the factor values (it reads only the tiny alpha tensors), so
 * `inspect` can describe a 400 MB LoRA without loading it; `decodeLora` is the plan plus the factors.
 */
import ndarray from 'ndarray';
import { ArchError, asInputContentError, FormatError, LoraError } from '../core/errors.js';
import { assertFiniteTensor } from '../core/finite.js';
import { ARCH_LABEL } from '../layout/index.js';
import type { Arch, Layout, LayoutSize, ModuleEntry } from '../layout/types.js';
import type { F32Array, Lora, LoraModule, StoredTensor, Term, TermKind } from '../lora/types.js';
import type { DType } from '../core/tensor.js';
import {
  checkpointEvidence,
  findUnsupportedAdapter,
  isComfyEmbeddingKey,
  otherModelHint,
  isEmbeddingKey,
  moduleId,
  parseLoraKey,
  type FactorRole,
  type KeyFamily,
  type ParsedKey,
} from './keys.js';
import { dropIdleModules } from './idle.js';
import { classifyModule, readAdapterTerm, type AdapterModulePlan, type ModuleTensors } from './adapters.js';
import { kohyaAlpha, kohyaSpellingOf, type KohyaPaths } from './kohya.js';
import { PEFT_METADATA_KEY, parsePeftMetadata, peftAlpha, peftConfigFor, peftRank, type PeftConfigs } from './peft.js';
import { rankCandidates, type CandidateResult, type RawModule, type ShapeProblem } from './resolve.js';
import { isNormGroup, NORM_DIFF_ROLES, normNotes, planNorms, readNorms, type PlannedNorm } from './norms.js';

/**
 * The spelling a LoRA file uses: kohya (sd-scripts), PEFT / diffusers, the old diffusers attention processors,
 * ComfyUI's own keys (its LoRA saver), or the LyCORIS wrapper's 'lycoris_' names (SimpleTuner).
 */
export type LoraFormat = 'kohya' | 'peft' | 'diffusers-old' | 'comfyui' | 'lycoris';

/** What decoding needs from a safetensors file (SafetensorsFile from src/safetensors provides it). */
export interface LoraFileLike {
  readonly name: string;
  readonly tensors: readonly { readonly name: string; readonly dtype: DType; readonly shape: readonly number[] }[];
  readonly metadata: Readonly<Record<string, string>>;
  readF32(name: string): Promise<Float32Array>;
  /** Stored bytes (used for integer alpha tensors, which readF32 refuses). */
  read?(name: string): Promise<Uint8Array>;
}

const INT_READERS: Partial<Record<DType, (v: DataView) => number>> = {
  I64: (v) => Number(v.getBigInt64(0, true)),
  U64: (v) => Number(v.getBigUint64(0, true)),
  I32: (v) => v.getInt32(0, true),
  U32: (v) => v.getUint32(0, true),
  I16: (v) => v.getInt16(0, true),
  U16: (v) => v.getUint16(0, true),
  I8: (v) => v.getInt8(0),
  U8: (v) => v.getUint8(0),
};

/** The value of a one-element alpha tensor, float or integer. */
async function readScalar(file: LoraFileLike, name: string, dtype: DType): Promise<number> {
  const int = INT_READERS[dtype];
  if (int && file.read) {
    const b = await file.read(name);
    return int(new DataView(b.buffer, b.byteOffset, b.byteLength));
  }
  return (await file.readF32(name))[0]!;
}

export interface DecodeOptions {
  /** Force the architecture instead of detecting it. Modules it lacks are listed (see allowUnmatched). */
  readonly arch?: Arch;
  /** Force the layout size ('full' for real files, 'tiny' for fixtures); detected when absent. */
  readonly size?: LayoutSize;
  /**
   * Keep going when some modules or keys cannot be used (an SDXL LoRA on SSD-1B, stray keys): they are listed in
   * `unmatched` instead of raising LORA_UNMATCHED_MODULES / FORMAT_KEY_UNRESOLVED. Shape mismatches stay errors.
   */
  readonly allowUnmatched?: boolean;
}

export interface UnmatchedEntry {
  /** The module name as spelled in the file (kohya name or path), or the tensor key for unparseable keys. */
  readonly key: string;
  readonly reason: string;
}

/** One module of a planned decode: where its factors are and what they look like. */
export interface PlannedModule {
  readonly entry: ModuleEntry;
  /** The name as spelled in the file. */
  readonly name: string;
  /** The term kind ('lowRank' for LoRA / LoCon) and its name in reports ('LoRA', 'LoHa (Tucker)', 'DoRA (LoRA)' …). */
  readonly kind: TermKind;
  readonly label: string;
  /** lowRank factor keys ('' for the kinds without a down / up pair). */
  readonly downKey: string;
  readonly upKey: string;
  readonly alphaKey?: string;
  /** PEFT bias delta (`lora_B.bias`), when the file has one for this module. */
  readonly biasKey?: string;
  readonly downShape: readonly number[];
  readonly upShape: readonly number[];
  readonly rank: number;
  /** alpha as a LoRA reads it (missing or 0 → rank). */
  readonly alpha: number;
  /** The alpha tensor's value, when there is one (the LyCORIS kinds' scale uses it as stored). */
  readonly storedAlpha?: number;
  /** Set for every module that is not a plain two-factor LoRA: its kind, tensors and shapes. */
  readonly adapter?: AdapterModulePlan;
}

/** Everything known about a LoRA file without reading its factor values. */
export interface LoraPlan {
  readonly format: LoraFormat;
  /** kohya files: which UNet spelling the names use. */
  readonly kohyaPaths?: KohyaPaths | 'mixed';
  readonly arch: Arch;
  readonly size: LayoutSize;
  readonly layout: Layout;
  /** The most common storage dtype of the factors. */
  readonly dtype: DType;
  readonly source: string;
  /** In layout order. */
  readonly modules: readonly PlannedModule[];
  /** Norm-layer differences (ComfyUI .diff / .diff_b on GroupNorm / LayerNorm, LyCORIS w_norm / b_norm), in layout order. */
  readonly norms: readonly PlannedNorm[];
  /** Tensors kept verbatim (kohya pivotal-tuning `bundle_emb.*` embeddings), in file order. */
  readonly embeddings: readonly { readonly key: string; readonly dtype: DType; readonly shape: readonly number[] }[];
  readonly unmatched: readonly UnmatchedEntry[];
  /** Things decoding assumed (missing alphas, alpha 0 read as rank, a component prefix that was absent …). */
  readonly notes: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
}

/** A decoded LoRA with where it came from. */
export interface LoadedLora extends Lora<Term> {
  readonly format: LoraFormat;
  readonly kohyaPaths?: KohyaPaths | 'mixed';
  /** The most common storage dtype of the factors in the file. */
  readonly dtype: DType;
  /** The file it was read from (path or name). */
  readonly source: string;
  readonly unmatched: readonly UnmatchedEntry[];
  readonly notes: readonly string[];
}

const LIST_MAX = 10;

/** 'a, b, c … (+N more)' */
export function listSome(items: readonly string[], max = LIST_MAX): string {
  const head = items.slice(0, max).join(', ');
  return items.length > max ? `${head} … (+${items.length - max} more)` : head;
}

type Group = { readonly id: string; readonly family: KeyFamily } & Partial<Record<FactorRole, ParsedKey>>;

const PLAIN_ROLES: readonly string[] = ['id', 'family', 'down', 'up', 'alpha', 'bias'];

/** A group with tensors of another kind than the plain LoRA's (LyCORIS suffixes, a DoRA magnitude). */
function isAdapterGroup(g: Group): boolean {
  return Object.keys(g).some((k) => !PLAIN_ROLES.includes(k));
}

/** The tensors of a group with their shapes (for the adapter kinds). */
function groupTensors(g: Group, infos: ReadonlyMap<string, TensorMeta>): ModuleTensors {
  const t: Record<string, { key: string; shape: readonly number[] }> = {};
  for (const [role, p] of Object.entries(g)) {
    if (role === 'id' || role === 'family' || typeof p !== 'object' || p === null) continue;
    const key = (p as ParsedKey).key;
    t[role] = { key, shape: infos.get(key)?.shape ?? [] };
  }
  return t as ModuleTensors;
}

/** A group with both factors (after `groupModules`). */
type CompleteGroup = Group & { readonly down: ParsedKey; readonly up: ParsedKey };

type TensorMeta = LoraFileLike['tensors'][number];

function describeCandidate(c: Pick<CandidateResult, 'arch' | 'size'>): string {
  return `${ARCH_LABEL[c.arch]}${c.size === 'tiny' ? ' (tiny)' : ''}`;
}

/** 'an SDXL (tiny)', 'an SD1.5', 'an SSD-1B' */
function withArticle(c: Pick<CandidateResult, 'arch' | 'size'>): string {
  return `an ${describeCandidate(c)}`;
}

function shapeList(problems: readonly ShapeProblem[]): string {
  return listSome(
    problems.map((p) => `${p.module.id}: expected ${p.expected}, found ${p.found}`),
    5,
  );
}

/** The tensor of a key the file lists (keys come from the file's own tensor list). */
function infoOf(infos: ReadonlyMap<string, TensorMeta>, key: string): TensorMeta {
  const info = infos.get(key);
  if (!info) throw new FormatError('FORMAT_KEY_UNRESOLVED', `no tensor '${key}' in the file`, { key });
  return info;
}

/**
 * Read the header-level structure of a LoRA file: format, architecture, every module with its rank and alpha.
 * Throws the typed errors listed in docs/formats.md. Reads only alpha tensors (0-d), never factors.
 */
export async function planLora(file: LoraFileLike, options: DecodeOptions = {}): Promise<LoraPlan> {
  try {
    return await planFile(file, options);
  } catch (e) {
    throw asInputContentError(e);
  }
}

async function planFile(file: LoraFileLike, options: DecodeOptions): Promise<LoraPlan> {
  const fileName = file.name;
  const keys = file.tensors.map((t) => t.name);
  const infos = new Map(file.tensors.map((t) => [t.name, t]));
  const unmatched: UnmatchedEntry[] = [];

  refuseEmpty(fileName, keys);
  refuseUnsupportedAdapter(fileName, keys);
  const { parsed, unknown, embeddings } = parseKeys(fileName, keys);
  const format = decideFormat(fileName, parsed);
  acceptUnknownKeys(fileName, format, unknown, options, unmatched);
  const groups = groupModules(fileName, parsed);
  const idleNotes = await dropIdleModules(groups, (k) => file.readF32(k));
  // Norm-layer differences (1-D .diff / .diff_b, w_norm / b_norm) resolve through the layout's norm table.
  const normGroups = [...groups.values()].filter((g) => isNormGroup(g, infos));
  for (const g of normGroups) groups.delete(g.id);
  const adapters = new Map<string, AdapterModulePlan>();
  for (const g of groups.values())
    if (isAdapterGroup(g)) adapters.set(g.id, classifyModule(fileName, g.id, groupTensors(g, infos)));
  const raw = moduleShapes(fileName, groups, infos, adapters);
  const fromModules = raw.length > 0 ? chooseCandidate(fileName, raw, options, unmatched) : undefined;
  const norms = planNorms(fileName, normGroups, infos, fromModules?.layout, options, unmatched);
  const chosen = fromModules ?? normsOnly(fileName, norms.layout, idleNotes);
  refuseDuplicates(fileName, chosen);
  const peft = format === 'peft' || format === 'diffusers-old' ? peftConfigs(file) : undefined;
  const { modules, notes, kohyaPaths } = await planModules(file, format, chosen, groups, infos, peft, adapters);
  if (peft && [peft.shared, ...Object.values(peft.byComponent)].some((c) => c?.useDora) && adapters.size === 0) {
    notes.push(
      `the PEFT config in metadata '${PEFT_METADATA_KEY}' says use_dora: true but the file has no lora_magnitude_vector: read as a plain LoRA`,
    );
  }
  notes.push(...idleNotes, ...normNotes(norms.planned));
  if (embeddings.length > 0) {
    notes.push(
      `${embeddings.length} embedding tensor(s) (${listSome(embeddings, 3)}) are not LoRA modules: kept by merge and convert, skipped by fuse`,
    );
  }
  return {
    format,
    ...(kohyaPaths ? { kohyaPaths } : {}),
    arch: chosen.arch,
    size: chosen.size,
    layout: chosen.layout,
    dtype: mostCommonDtype(modules, infos),
    source: fileName,
    modules,
    norms: norms.planned,
    embeddings: embeddings.map((k) => {
      const t = infoOf(infos, k);
      return { key: k, dtype: t.dtype, shape: t.shape };
    }),
    unmatched,
    notes,
    metadata: { ...file.metadata },
  };
}

/** The candidate of a file of norm differences only: the layout planNorms chose, no modules. */
function normsOnly(fileName: string, layout: Layout | undefined, dropped: readonly string[]): CandidateResult {
  if (!layout) {
    throw new LoraError(
      'LORA_EMPTY',
      `${fileName}: the file changes no weight an SD1.5, SDXL or SSD-1B checkpoint has${dropped.length > 0 ? ` (${dropped.join('; ')})` : ''}`,
      { file: fileName },
    );
  }
  return {
    arch: layout.arch,
    size: layout.size,
    layout,
    matched: [],
    missing: [],
    incompatible: [],
    missingSiblings: 0,
    alternates: 0,
    fits: true,
  };
}

function refuseEmpty(fileName: string, keys: readonly string[]): void {
  if (keys.length === 0) {
    throw new FormatError('FORMAT_NOT_A_LORA', `${fileName}: the file holds no tensors, so it is not a LoRA`, {
      file: fileName,
    });
  }
}

/** Adapter types lora-mix does not read (OFT/BOFT, (IA)³, norm and replacement weights): refused, naming their keys. */
function refuseUnsupportedAdapter(fileName: string, keys: readonly string[]): void {
  const adapter = findUnsupportedAdapter(keys);
  if (!adapter) return;
  const all = keys.filter((k) => adapter.signature.test(k));
  throw new FormatError(
    'FORMAT_UNSUPPORTED_ADAPTER',
    `${fileName}: this is a ${adapter.signature.type} file, not a LoRA (${adapter.count} key(s): ${listSome(all, 5)}); ` +
      `lora-mix reads LoRA, LoCon, LoHa, LoKr, full diffs, GLoRA, DoRA, OFT and BOFT: ${adapter.signature.why}`,
    {
      file: fileName,
      adapter: adapter.signature.type,
      key: adapter.example,
      keys: all.slice(0, 100),
      count: adapter.count,
    },
  );
}

/** The key grammar: LoRA keys, embeddings kept verbatim, and keys in no known spelling. */
function parseKeys(
  fileName: string,
  keys: readonly string[],
): { parsed: ParsedKey[]; unknown: string[]; embeddings: string[] } {
  const parsed: ParsedKey[] = [];
  const unknown: string[] = [];
  const embeddings: string[] = [];
  for (const k of keys) {
    const p = parseLoraKey(k);
    if (p) parsed.push(p);
    else if (isEmbeddingKey(k)) embeddings.push(k);
    else unknown.push(k);
  }
  if (!parsed.some((p) => p.role !== 'alpha' && p.role !== 'bias')) {
    const evidence = checkpointEvidence(keys);
    throw new FormatError(
      'FORMAT_NOT_A_LORA',
      evidence
        ? `${fileName}: this is a base checkpoint (e.g. '${evidence}'), not a LoRA; expected keys such as '….lora_down.weight' or '….lora_A.weight'`
        : embeddings.length > 0 && unknown.length === 0
          ? `${fileName}: the file holds only embeddings (${listSome(embeddings, 3)}), no LoRA factors; it is a textual-inversion file, not a LoRA`
          : `${fileName}: no LoRA factor keys found (expected '….lora_down.weight' / '….lora_up.weight' or '….lora_A.weight' / '….lora_B.weight'); first keys: ${listSome(keys, 5)}${otherModelHint(keys)}`,
      { file: fileName, kind: evidence ? 'checkpoint' : 'other', key: evidence ?? keys[0] },
    );
  }
  return { parsed, unknown, embeddings };
}

/** One spelling family per file, one PEFT adapter name; the format that family and its keys say. */
function decideFormat(fileName: string, all: readonly ParsedKey[]): LoraFormat {
  // Full differences (norm layers above all) and text-encoder embedding tables may be spelled as ComfyUI names them
  // beside another spelling's modules: kohya output keeps them under ComfyUI's name, the only one a loader reads.
  const factors = all.filter((p) => !NORM_DIFF_ROLES.includes(p.role) && !isComfyEmbeddingKey(p));
  const parsed = factors.length > 0 ? factors : all;
  const firstOf = new Map<string, ParsedKey>();
  for (const p of parsed) if (!firstOf.has(p.family)) firstOf.set(p.family, p);
  if (firstOf.size > 1) {
    const [a, b] = [...firstOf.values()];
    throw new FormatError(
      'FORMAT_MIXED',
      `${fileName}: the file mixes ${familyLabel(a!)} ('${a!.key}') with ${familyLabel(b!)} ('${b!.key}'); expected one spelling`,
      { file: fileName, expected: 'one key spelling', found: [a!.key, b!.key] },
    );
  }
  const adapters = [
    ...new Set(parsed.flatMap((p) => (p.family === 'path' && p.adapter !== undefined ? [p.adapter] : []))),
  ];
  if (adapters.length > 1) {
    throw new FormatError(
      'FORMAT_MIXED',
      `${fileName}: the file holds several PEFT adapters (${adapters.join(', ')}); expected one`,
      { file: fileName, expected: 'one adapter', found: adapters },
    );
  }
  const first = parsed[0]!;
  if (first.family === 'kohya') return 'kohya';
  if (first.family === 'alias') return first.tool;
  return parsed.some((p) => p.family === 'path' && p.spelling === 'processor') ? 'diffusers-old' : 'peft';
}

function familyLabel(p: ParsedKey): string {
  if (p.family === 'kohya') return 'kohya names';
  if (p.family === 'alias') return p.tool === 'comfyui' ? 'ComfyUI names' : 'LyCORIS names';
  return 'PEFT/diffusers paths';
}

/** Keys in no spelling: an error, or with allowUnmatched listed as unmatched. */
function acceptUnknownKeys(
  fileName: string,
  format: LoraFormat,
  unknown: readonly string[],
  options: DecodeOptions,
  unmatched: UnmatchedEntry[],
): void {
  if (unknown.length === 0) return;
  if (!options.allowUnmatched) {
    throw new FormatError(
      'FORMAT_KEY_UNRESOLVED',
      `${fileName}: ${unknown.length} key(s) are not LoRA factors or alphas in the ${format} spelling: ${listSome(unknown)}`,
      { file: fileName, keys: unknown.slice(0, 100), count: unknown.length },
    );
  }
  for (const k of unknown) unmatched.push({ key: k, reason: 'not a LoRA factor or alpha key in any known spelling' });
}

/** Keys grouped by module; every module needs a down and an up factor, and has at most one tensor per role. */
function groupModules(fileName: string, parsed: readonly ParsedKey[]): Map<string, CompleteGroup> {
  const groups = new Map<string, Group>();
  for (const p of parsed) {
    const id = moduleId(p);
    let g = groups.get(id);
    if (!g) {
      g = { id, family: p.family };
      groups.set(id, g);
    }
    const prev = g[p.role];
    if (prev) {
      throw new FormatError(
        'FORMAT_MIXED',
        `${fileName}: module '${id}' has two ${p.role} tensors, '${prev.key}' and '${p.key}'; expected one`,
        { file: fileName, key: id, found: [prev.key, p.key] },
      );
    }
    g[p.role] = p;
  }
  // Modules of the other kinds (LyCORIS suffixes, DoRA) are checked by classifyModule (src/formats/adapters.ts).
  const incomplete = [...groups.values()].filter((g) => !isAdapterGroup(g) && (!g.down || !g.up));
  if (incomplete.length > 0) {
    const what = (g: Group): string =>
      !g.down && !g.up
        ? `${g.id} (only ${g.bias ? 'a bias' : 'an alpha'})`
        : !g.up
          ? `${g.id} (down without up)`
          : `${g.id} (up without down)`;
    throw new FormatError(
      'FORMAT_INCOMPLETE_MODULE',
      `${fileName}: ${incomplete.length} module(s) lack a factor: ${listSome(incomplete.map(what))}; every module needs both a down and an up factor`,
      { file: fileName, modules: incomplete.map((g) => g.id).slice(0, 100), count: incomplete.length },
    );
  }
  return groups as Map<string, CompleteGroup>;
}

/** Factor shapes and ranks of every module (2-D or 4-D, equal non-zero ranks, a bias of the up factor's rows). */
function moduleShapes(
  fileName: string,
  groups: ReadonlyMap<string, CompleteGroup>,
  infos: ReadonlyMap<string, TensorMeta>,
  adapters: ReadonlyMap<string, AdapterModulePlan>,
): RawModule[] {
  const raw: RawModule[] = [];
  for (const g of groups.values()) {
    const adapter = adapters.get(g.id);
    if (adapter) {
      raw.push({
        id: g.id,
        family: g.family,
        downShape: adapter.downShape,
        upShape: adapter.upShape,
        ...(adapter.fanIn !== undefined ? { fanIn: adapter.fanIn } : {}),
        ...(adapter.outOnly ? { outOnly: true } : {}),
      });
      continue;
    }
    const down = infoOf(infos, g.down.key);
    const up = infoOf(infos, g.up.key);
    const dOk = down.shape.length === 2 || down.shape.length === 4;
    const uOk = up.shape.length === 2 || up.shape.length === 4;
    if (!dOk || !uOk) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `${fileName}: module '${g.id}': expected 2-D or 4-D factors, found down '${down.name}' ${JSON.stringify(down.shape)} and up '${up.name}' ${JSON.stringify(up.shape)}`,
        { file: fileName, key: g.id, found: { down: down.shape, up: up.shape } },
      );
    }
    if (down.shape[0] === 0 && up.shape[1] === 0) {
      throw new LoraError(
        'LORA_RANK_MISMATCH',
        `${fileName}: module '${g.id}' has rank 0 (down '${down.name}' ${JSON.stringify(down.shape)}, up '${up.name}' ${JSON.stringify(up.shape)}): its factors hold no values, so it cannot be read as an update; a tool that resized or pruned this file left it empty — remove its keys from the file (or re-export it with rank ≥ 1)`,
        { file: fileName, key: g.id, expected: 1, found: 0 },
      );
    }
    if (down.shape[0] !== up.shape[1] || down.shape[0] === 0) {
      throw new LoraError(
        'LORA_RANK_MISMATCH',
        `${fileName}: module '${g.id}': the down factor has rank ${down.shape[0]} (${JSON.stringify(down.shape)}) but the up factor has rank ${up.shape[1]} (${JSON.stringify(up.shape)}); expected equal, non-zero ranks`,
        { file: fileName, key: g.id, expected: down.shape[0], found: up.shape[1] },
      );
    }
    if (g.bias) {
      const bias = infoOf(infos, g.bias.key);
      if (bias.shape.length !== 1 || bias.shape[0] !== up.shape[0]) {
        throw new LoraError(
          'LORA_SHAPE_MISMATCH',
          `${fileName}: module '${g.id}': bias delta '${bias.name}' has shape ${JSON.stringify(bias.shape)}; expected [${up.shape[0]}] (the up factor's rows)`,
          { file: fileName, key: bias.name, expected: [up.shape[0]], found: bias.shape },
        );
      }
    }
    raw.push({ id: g.id, family: g.family, downShape: down.shape, upShape: up.shape });
  }
  return raw;
}

/** Two spellings of one module (e.g. its kohya diffusers-path and SGM-path names) are refused. */
function refuseDuplicates(fileName: string, chosen: CandidateResult): void {
  const seen = new Map<string, string>();
  for (const m of chosen.matched) {
    const other = seen.get(m.entry.path);
    if (other !== undefined) {
      throw new FormatError(
        'FORMAT_MIXED',
        `${fileName}: module '${m.entry.path}' appears twice, as '${other}' and '${m.module.id}'; expected once`,
        { file: fileName, key: m.entry.path, found: [other, m.module.id] },
      );
    }
    seen.set(m.entry.path, m.module.id);
  }
}

/** The PEFT configs in the metadata (DoRA's magnitudes are tensors: `lora_magnitude_vector`). */
function peftConfigs(file: LoraFileLike): PeftConfigs | undefined {
  return parsePeftMetadata(file.metadata, file.name);
}

/** A stored alpha: one finite value. */
async function storedAlpha(file: LoraFileLike, key: string, info: TensorMeta): Promise<number> {
  if (info.shape.reduce((a, b) => a * b, 1) !== 1) {
    throw new LoraError(
      'LORA_SHAPE_MISMATCH',
      `${file.name}: alpha '${key}' must hold one value; found shape ${JSON.stringify(info.shape)}`,
      { file: file.name, key, expected: [], found: info.shape },
    );
  }
  // A non-finite alpha is kept in the plan (inspect reports it); reading the factors refuses it (FORMAT_NONFINITE).
  return readScalar(file, key, info.dtype);
}

/** A note naming the modules whose stored alpha is NaN or ±Inf. */
function nonFiniteAlphaNotes(modules: readonly PlannedModule[]): string[] {
  const bad = modules.filter((m) => !Number.isFinite(m.alpha));
  if (bad.length === 0) return [];
  return [
    `${bad.length} module(s) store a non-finite alpha (${listSome(
      bad.map((m) => `${m.alphaKey ?? m.name} = ${m.alpha}`),
      3,
    )}): merge, convert and fuse refuse this file (FORMAT_NONFINITE)`,
  ];
}

/** Counters behind the plan's notes. */
interface AlphaTally {
  missing: number;
  zero: number;
  assumedComponent: number;
  otherRank: number;
}

/** Alphas and the module list in layout order, with notes on everything assumed. */
async function planModules(
  file: LoraFileLike,
  format: LoraFormat,
  chosen: CandidateResult,
  groups: ReadonlyMap<string, CompleteGroup>,
  infos: ReadonlyMap<string, TensorMeta>,
  peft: PeftConfigs | undefined,
  adapters: ReadonlyMap<string, AdapterModulePlan>,
): Promise<{ modules: PlannedModule[]; notes: string[]; kohyaPaths?: KohyaPaths | 'mixed' }> {
  const order = new Map(chosen.layout.modules.map((e, i) => [e.path, i]));
  const matched = [...chosen.matched].sort((a, b) => (order.get(a.entry.path) ?? 0) - (order.get(b.entry.path) ?? 0));
  const tally: AlphaTally = { missing: 0, zero: 0, assumedComponent: 0, otherRank: 0 };
  const spellings = new Set<KohyaPaths>();
  // kohya and the tools that copy its file layout (ComfyUI, LyCORIS) store alphas as tensors; PEFT in metadata.
  const tensorAlphas = format === 'kohya' || format === 'comfyui' || format === 'lycoris';
  const modules: PlannedModule[] = [];
  for (const { module, entry } of matched) {
    const g = groups.get(module.id);
    if (!g) continue;
    const rank = module.downShape[0] ?? 0;
    const stored = g.alpha ? await storedAlpha(file, g.alpha.key, infoOf(infos, g.alpha.key)) : undefined;
    let alpha: number;
    if (stored !== undefined || tensorAlphas) {
      const k = kohyaAlpha(stored, rank);
      alpha = k.alpha;
      if (k.note === 'zero') tally.zero++;
      // OFT/BOFT's alpha is a constraint, not a scale: without one there is none (nothing assumed).
      const rotation = adapters.get(module.id)?.outOnly === true;
      if (k.note === 'missing' && !rotation) tally.missing++;
    } else {
      const config = peftConfigFor(peft, entry.component);
      const a = peftAlpha(config, entry.localPath, rank);
      if (a === undefined) tally.missing++;
      alpha = a ?? rank;
      const r = peftRank(config, entry.localPath);
      if (r !== undefined && r !== rank) tally.otherRank++;
    }
    if (format === 'kohya') {
      const s = kohyaSpellingOf(entry, module.id);
      if (s) spellings.add(s);
    } else {
      const first = g.down ?? g.magnitude;
      if (first?.family === 'path' && first.componentAssumed) tally.assumedComponent++;
    }
    const adapter = adapters.get(module.id);
    modules.push({
      entry,
      name: module.id,
      kind: adapter?.kind ?? 'lowRank',
      label: adapter?.label ?? 'LoRA',
      downKey: g.down?.key ?? '',
      upKey: g.up?.key ?? '',
      ...(g.alpha ? { alphaKey: g.alpha.key } : {}),
      ...(g.bias ? { biasKey: g.bias.key } : {}),
      // OFT/BOFT tensors give only the out rows: the weight's other dimensions come from the layout.
      downShape: adapter?.outOnly ? [module.downShape[0] ?? 0, ...entry.shape.slice(1)] : module.downShape,
      upShape: module.upShape,
      rank,
      alpha,
      ...(stored !== undefined ? { storedAlpha: stored } : {}),
      ...(adapter ? { adapter } : {}),
    });
  }
  const kohyaPaths =
    format !== 'kohya' || spellings.size === 0 ? undefined : spellings.size === 2 ? 'mixed' : [...spellings][0];
  return {
    modules,
    notes: [...planNotes(format, tally, modules), ...nonFiniteAlphaNotes(modules)],
    ...(kohyaPaths ? { kohyaPaths } : {}),
  };
}

function planNotes(format: LoraFormat, t: AlphaTally, modules: readonly PlannedModule[]): string[] {
  const notes: string[] = [];
  if (t.missing > 0) {
    const where =
      format === 'peft' || format === 'diffusers-old' ? ' (no alpha tensor and no lora_alpha in the metadata)' : '';
    notes.push(`${t.missing} module(s) have no alpha${where}: alpha = rank (scale 1)`);
  }
  if (t.zero > 0)
    notes.push(`${t.zero} module(s) store alpha 0, read as alpha = rank like kohya does (ComfyUI would apply scale 0)`);
  if (t.assumedComponent > 0)
    notes.push(
      `${t.assumedComponent} module(s) had no component prefix; read as the UNet (or text_encoder for 'text_model.' paths)`,
    );
  if (t.otherRank > 0)
    notes.push(
      `${t.otherRank} module(s) have factors of another rank than the PEFT config's r / rank_pattern gives them; the factor shapes were used`,
    );
  const biased = modules.filter((m) => m.biasKey !== undefined).length;
  if (biased > 0) notes.push(`${biased} module(s) carry a bias delta (lora_B.bias): the module's bias changes too`);
  if (format === 'diffusers-old') notes.push('old diffusers attention-processor format: attention projections only');
  if (format === 'comfyui') notes.push("ComfyUI's own key names (diffusion_model.… / text_encoders.…)");
  if (format === 'lycoris')
    notes.push("LyCORIS wrapper names ('lycoris_' + diffusers UNet path, as SimpleTuner saves)");
  return notes;
}

/** The most common storage dtype of the factors. */
function mostCommonDtype(modules: readonly PlannedModule[], infos: ReadonlyMap<string, TensorMeta>): DType {
  const counts = new Map<DType, number>();
  for (const m of modules) {
    for (const k of m.adapter ? Object.values(m.adapter.tensors).map((x) => x?.key ?? '') : [m.downKey, m.upKey]) {
      if (k === '') continue;
      const d = infoOf(infos, k).dtype;
      counts.set(d, (counts.get(d) ?? 0) + 1);
    }
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'F32';
}

function chooseCandidate(
  fileName: string,
  raw: readonly RawModule[],
  options: DecodeOptions,
  unmatched: UnmatchedEntry[],
): CandidateResult {
  const all = rankCandidates(raw, options.size !== undefined ? { size: options.size } : {});
  // Names that no layout knows at all.
  const unknownEverywhere = raw.filter((m) => all.every((c) => c.missing.includes(m)));
  let modules = raw;
  let ranked = all;
  if (unknownEverywhere.length > 0) {
    if (!options.allowUnmatched) {
      throw new FormatError(
        'FORMAT_KEY_UNRESOLVED',
        `${fileName}: ${unknownEverywhere.length} module name(s) match no module of SD1.5, SDXL or SSD-1B: ${listSome(unknownEverywhere.map((m) => m.id))}${otherModelHint(unknownEverywhere.map((m) => m.id))}`,
        { file: fileName, keys: unknownEverywhere.map((m) => m.id).slice(0, 100), count: unknownEverywhere.length },
      );
    }
    for (const m of unknownEverywhere)
      unmatched.push({ key: m.id, reason: 'no module of any known architecture has this name' });
    modules = raw.filter((m) => !unknownEverywhere.includes(m));
    if (modules.length === 0) {
      throw new FormatError(
        'FORMAT_KEY_UNRESOLVED',
        `${fileName}: none of the ${raw.length} module name(s) match a module of SD1.5, SDXL or SSD-1B, e.g. ${listSome(
          raw.map((m) => m.id),
          5,
        )}`,
        { file: fileName, keys: raw.map((m) => m.id).slice(0, 100), count: raw.length },
      );
    }
    ranked = rankCandidates(modules, options.size !== undefined ? { size: options.size } : {});
  }
  const best = ranked[0]!;

  if (options.arch === undefined) {
    if (best.fits) return best;
    if (best.incompatible.length > 0) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `${fileName}: the LoRA fits no known architecture; closest is ${describeCandidate(best)}, where ${best.incompatible.length} module(s) have other shapes: ${shapeList(best.incompatible)}`,
        {
          file: fileName,
          arch: best.arch,
          size: best.size,
          modules: best.incompatible
            .slice(0, 100)
            .map((p) => ({ key: p.module.id, expected: p.expected, found: p.found })),
        },
      );
    }
    return acceptMissing(fileName, best, options, unmatched);
  }

  const forced = ranked.filter((c) => c.arch === options.arch);
  const pick = forced[0]!;
  if (pick.fits) return pick;
  const detected = ranked.find((c) => c.fits);
  if (pick.incompatible.length > 0 || pick.matched.length === 0) {
    if (detected && detected.arch !== options.arch) {
      const why =
        pick.incompatible.length > 0
          ? `${pick.incompatible.length} module(s) have shapes of another model, e.g. ${shapeList(pick.incompatible.slice(0, 2))}`
          : `none of its module names exist in ${ARCH_LABEL[options.arch]}`;
      throw new ArchError(
        'ARCH_MISMATCH',
        `${fileName}: this is ${withArticle(detected)} LoRA (all ${modules.length} modules fit), but ${ARCH_LABEL[options.arch]} was requested: ${why}`,
        { file: fileName, expected: options.arch, found: detected.arch },
      );
    }
    if (pick.incompatible.length > 0) {
      throw new LoraError(
        'LORA_SHAPE_MISMATCH',
        `${fileName}: ${pick.incompatible.length} module(s) do not fit ${describeCandidate(pick)}: ${shapeList(pick.incompatible)}`,
        {
          file: fileName,
          arch: pick.arch,
          size: pick.size,
          modules: pick.incompatible
            .slice(0, 100)
            .map((p) => ({ key: p.module.id, expected: p.expected, found: p.found })),
        },
      );
    }
    throw new ArchError(
      'ARCH_MISMATCH',
      `${fileName}: none of the LoRA's ${modules.length} module names exist in ${ARCH_LABEL[options.arch]}`,
      { file: fileName, expected: options.arch, found: detected?.arch ?? null },
    );
  }
  return acceptMissing(fileName, pick, options, unmatched, detected);
}

/** A candidate where every present name fits but some names are absent: allowed only with allowUnmatched. */
function acceptMissing(
  fileName: string,
  c: CandidateResult,
  options: DecodeOptions,
  unmatched: UnmatchedEntry[],
  detected?: CandidateResult,
): CandidateResult {
  const reason = `no such module in ${describeCandidate(c)}`;
  if (!options.allowUnmatched) {
    const from = detected && detected.arch !== c.arch ? ` (it is ${withArticle(detected)} LoRA)` : '';
    throw new LoraError(
      'LORA_UNMATCHED_MODULES',
      `${fileName}: ${c.missing.length} of ${c.missing.length + c.matched.length} LoRA modules have no counterpart in ${describeCandidate(c)}${from}: ${listSome(c.missing.map((m) => m.id))}; pass allowUnmatched (--allow-unmatched) to use the ${c.matched.length} that match`,
      {
        file: fileName,
        arch: c.arch,
        modules: c.missing.map((m) => m.id).slice(0, 100),
        count: c.missing.length,
        matched: c.matched.length,
      },
    );
  }
  for (const m of c.missing) unmatched.push({ key: m.id, reason });
  return { ...c, missing: [], fits: true };
}

/** A Float32Array that owns its whole buffer (a view into a shared buffer is copied). */
function owned(a: Float32Array): Float32Array {
  return a.byteOffset === 0 && a.buffer.byteLength === a.byteLength ? a : a.slice();
}

function toNd(data: Float32Array, shape: readonly number[], file: string, key: string): F32Array {
  const n = shape.reduce((x, y) => x * y, 1);
  if (data.length !== n) {
    throw new LoraError(
      'LORA_SHAPE_MISMATCH',
      `${file}: tensor '${key}' decoded to ${data.length} values; expected ${n} for shape ${JSON.stringify(shape)}`,
      { file, key, expected: n, found: data.length },
    );
  }
  return ndarray(owned(data), [...shape]);
}

/** Modules whose factors are read at the same time: overlaps file reads with decoding, bounds memory. */
const READ_AHEAD = 4;

/** The term of one planned module of any kind, read from the file. */
export async function readPlannedTerm(file: LoraFileLike, m: PlannedModule): Promise<Term> {
  try {
    return await readTerm(file, m);
  } catch (e) {
    throw asInputContentError(e);
  }
}

async function readTerm(file: LoraFileLike, m: PlannedModule): Promise<Term> {
  if (!m.adapter) {
    const [d, u, b] = await Promise.all([
      file.readF32(m.downKey),
      file.readF32(m.upKey),
      m.biasKey !== undefined ? file.readF32(m.biasKey) : undefined,
    ]);
    const module: LoraModule = {
      down: toNd(d, m.downShape, file.name, m.downKey),
      up: toNd(u, m.upShape, file.name, m.upKey),
      alpha: m.alpha,
      ...(b !== undefined && m.biasKey !== undefined
        ? { bias: toNd(b, [m.upShape[0] ?? 0], file.name, m.biasKey) }
        : {}),
    };
    return module;
  }
  const read = async (key: string): Promise<Float32Array> => owned(await file.readF32(key));
  return readAdapterTerm(m.adapter, m.entry.shape, { lora: m.alpha, stored: m.storedAlpha }, read);
}

/** Zeros shared by every readPlannedShapeTerm (grown, never written). */
let shapeZeros = new Float32Array(0);

/**
 * The term of a planned module as far as the header determines it, without reading its factors: the kind, shapes,
 * alpha and scale readPlannedTerm gives, with every factor value 0 (views of one shared buffer of zeros), and its
 * bias read (the bias is written as it is). Exact ranks and factor shapes depend on shapes only, so this gives what
 * an exact conversion writes in its header (exactShapeModule) without reading the file's factors.
 */
export async function readPlannedShapeTerm(file: LoraFileLike, m: PlannedModule): Promise<Term> {
  try {
    const zeros = (n: number): Float32Array => {
      if (shapeZeros.length < n) shapeZeros = new Float32Array(n);
      return shapeZeros.subarray(0, n);
    };
    const numel = (shape: readonly number[]): number => shape.reduce((x, y) => x * y, 1);
    if (!m.adapter) {
      const b = m.biasKey !== undefined ? await file.readF32(m.biasKey) : undefined;
      return {
        down: toNd(zeros(numel(m.downShape)), m.downShape, file.name, m.downKey),
        up: toNd(zeros(numel(m.upShape)), m.upShape, file.name, m.upKey),
        alpha: m.alpha,
        ...(b !== undefined && m.biasKey !== undefined
          ? { bias: toNd(b, [m.upShape[0] ?? 0], file.name, m.biasKey) }
          : {}),
      };
    }
    const shapes = new Map<string, readonly number[]>();
    for (const x of Object.values(m.adapter.tensors)) if (x) shapes.set(x.key, x.shape);
    const biasKey = m.adapter.tensors.diff_b?.key;
    const read = async (key: string): Promise<Float32Array> =>
      key === biasKey ? owned(await file.readF32(key)) : zeros(numel(shapes.get(key) ?? []));
    return await readAdapterTerm(m.adapter, m.entry.shape, { lora: m.alpha, stored: m.storedAlpha }, read);
  } catch (e) {
    throw asInputContentError(e);
  }
}

/** Read the factors of a plan: the LoRA in canonical form. */
export async function readPlannedLora(file: LoraFileLike, plan: LoraPlan): Promise<LoadedLora> {
  try {
    return await readPlanned(file, plan);
  } catch (e) {
    throw asInputContentError(e);
  }
}

async function readPlanned(file: LoraFileLike, plan: LoraPlan): Promise<LoadedLora> {
  for (const m of plan.modules) {
    if (!Number.isFinite(m.alpha)) assertFiniteTensor(file.name, m.alphaKey ?? m.name, [m.alpha], 'alpha');
  }
  const readModule = async (m: PlannedModule): Promise<Term> => {
    if (m.adapter) return readPlannedTerm(file, m);
    const [d, u, b] = await Promise.all([
      file.readF32(m.downKey),
      file.readF32(m.upKey),
      m.biasKey !== undefined ? file.readF32(m.biasKey) : undefined,
    ]);
    assertFiniteTensor(file.name, m.downKey, d, 'LoRA factor');
    assertFiniteTensor(file.name, m.upKey, u, 'LoRA factor');
    if (b !== undefined && m.biasKey !== undefined) assertFiniteTensor(file.name, m.biasKey, b, 'LoRA bias');
    return {
      down: toNd(d, m.downShape, file.name, m.downKey),
      up: toNd(u, m.upShape, file.name, m.upKey),
      alpha: m.alpha,
      ...(b !== undefined && m.biasKey !== undefined
        ? { bias: toNd(b, [m.upShape[0] ?? 0], file.name, m.biasKey) }
        : {}),
    };
  };
  const modules = new Map<string, Term>();
  const pending: Promise<Term>[] = [];
  let next = 0;
  for (const m of plan.modules) {
    while (pending.length - next < READ_AHEAD && pending.length < plan.modules.length) {
      const p = readModule(plan.modules[pending.length]!);
      p.catch(() => undefined); // a failure is reported when its turn comes, never as an unhandled rejection
      pending.push(p);
    }
    modules.set(m.entry.path, await pending[next]!);
    // Drop the reference so finished modules are not kept alive twice.
    (pending as (Promise<Term> | undefined)[])[next++] = undefined;
  }
  const embeddings = await readEmbeddings(file, plan);
  const norms = await readNorms(file.name, plan.norms, (k) => file.readF32(k));
  return {
    ...loraOfPlan(plan, modules),
    ...(embeddings.size > 0 ? { embeddings } : {}),
    ...(norms.size > 0 ? { norms } : {}),
  };
}

/**
 * The LoadedLora a plan describes, with these modules (read, or shapes only as the streamed merge and convert
 * hold them) and the plan's metadata unless other metadata is given; embeddings and norms are the caller's to add.
 */
export function loraOfPlan(
  plan: LoraPlan,
  modules: Map<string, Term>,
  metadata: Readonly<Record<string, string>> = plan.metadata,
): LoadedLora {
  return {
    arch: plan.arch,
    size: plan.size,
    modules,
    metadata,
    format: plan.format,
    ...(plan.kohyaPaths ? { kohyaPaths: plan.kohyaPaths } : {}),
    dtype: plan.dtype,
    source: plan.source,
    unmatched: plan.unmatched,
    notes: plan.notes,
  };
}

/** The embedding tensors of a plan, bytes as stored (F32 when the file cannot give bytes). */
async function readEmbeddings(file: LoraFileLike, plan: LoraPlan): Promise<Map<string, StoredTensor>> {
  const out = new Map<string, StoredTensor>();
  for (const e of plan.embeddings) {
    if (file.read) {
      out.set(e.key, { dtype: e.dtype, shape: [...e.shape], data: (await file.read(e.key)).slice() });
    } else {
      const v = await file.readF32(e.key);
      out.set(e.key, {
        dtype: 'F32',
        shape: [...e.shape],
        data: new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength)),
      });
    }
  }
  return out;
}

/** Decode a LoRA file (any supported spelling) into the canonical LoRA. */
export async function decodeLora(file: LoraFileLike, options: DecodeOptions = {}): Promise<LoadedLora> {
  return readPlannedLora(file, await planLora(file, options));
}
