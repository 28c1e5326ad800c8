/**
 * extractLora: τ = tuned − base as a LoRA, module by module, with the error it makes stated per module.
 *
 * Both checkpoints are opened lazily (single files or diffusers folders, SD1.5 / SDXL / SSD-1B, either naming) and
 * read side by side one module at a time in the base's file order, the next pair read while the current one is
 * factored: never more than two module pairs in memory. Per module: Δ = tuned − base in f32 (exact for fp16/bf16
 * weights of similar size); an all-zero Δ is left out and counted; otherwise the truncated SVD of src/lora/svd.ts
 * gives balanced rank-k factors (k from the rank rule, src/lora/rank-rule.ts), no clamping; the factors are rounded
 * to the output dtype and the error ‖Δ − up·down‖_F of those stored factors is measured against Δ in f64. 3×3
 * convolutions are written as LoCon (kohya spelling: lora_down [r, in, 3, 3], lora_up [out, r, 1, 1]).
 *
 * Which modules: every UNet Linear/Conv2d the layout knows — attentions, resnets and down/up-samplers (kohya's
 * LoRA/LoCon targets, LCM-LoRA's set) and also conv_in, conv_out and the time / add embeddings, which kohya names
 * (`lora_unet_conv_in` …) and ComfyUI's loader and lora-mix read — and with `textEncoders` every text-encoder
 * Linear. With `biasDiff` (ComfyUI's LoraSave `bias_diff`) the biases of the extracted modules and the norm layers'
 * weights and biases of the extracted components are stored as full differences: `<module>.diff_b` beside the
 * factors, `<norm>.diff` / `<norm>.diff_b`. Everything else that differs (embeddings tables, the VAE, a bias whose
 * module's weight did not change) is named in the report as not carried.
 */
import { isByteSource, type ByteSink, type ByteSource } from '../core/bytes.js';
import { decodeToF32 } from '../core/dtype.js';
import { ArchError, LoraError, OptionError } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { fileNameOf } from '../core/provenance.js';
import { ARCH_LABEL } from '../layout/archs.js';
import type { ModuleEntry } from '../layout/types.js';
import { encodeModules, type ModuleSource, type OutputDType } from '../formats/encode.js';
import type { KohyaPaths } from '../formats/kohya.js';
import { describeRule, ruleCap, validateRule, type RankRule } from '../lora/rank-rule.js';
import type { SafetensorsFile } from '../safetensors/read.js';
import { writeSafetensors } from '../safetensors/write.js';
import { now } from '../kernels/job.js';
import { findWeight, type OpenedBase } from './base.js';
import { biasDiffs, type BiasDiffs } from './extract-bias.js';
import {
  ExtractWorkspace,
  factorModule,
  type ExtractJob,
  type ExtractModuleReport,
  type ExtractPool,
  type ModuleOutcome,
} from './extract-module.js';
import { compareOutside, type OutsideReport } from './extract-outside.js';
import { openBase } from './fuse.js';
import { currentFuseHost } from './host.js';
import type { BaseInput } from './types.js';

export type { ExtractModuleReport } from './extract-module.js';

/** Metadata key holding the JSON summary of an extraction. */
export const EXTRACT_METADATA_KEY = 'lora_mix_extract';

/** Default cap of the dynamic rank rules. */
export const DEFAULT_MAX_RANK = 128;

export interface ExtractOptions {
  /** Where to write the LoRA: a path (Node; temp file + rename) or a ByteSink. Never over an input. */
  readonly out: string | ByteSink;
  /** Fixed rank per module; with a dynamic rule, its cap. */
  readonly rank?: number;
  /** The smallest rank keeping ‖Δ_k‖_F ≥ minEnergy·‖Δ‖_F. */
  readonly minEnergy?: number;
  /** kohya's dynamic rules (resize_lora.py semantics, see src/lora/rank-rule.ts). */
  readonly svRatio?: number;
  readonly svFro?: number;
  readonly svCumulative?: number;
  /** Cap of the dynamic rules when `rank` is not given (default 128). */
  readonly maxRank?: number;
  /** Rank of 3×3 convolutions (LoCon); 0 leaves them out. Default: the same rule as the other modules. */
  readonly convRank?: number;
  /** Also extract the text encoders (default: UNet only). */
  readonly textEncoders?: boolean;
  /**
   * Also store the biases of the extracted modules (`.diff_b` beside the factors) and the norm layers' weights and
   * biases (`.diff` / `.diff_b`) as full differences, as ComfyUI's LoraSave does with `bias_diff` (default false).
   */
  readonly biasDiff?: boolean;
  /** Storage dtype of the factors (default F16). */
  readonly dtype?: OutputDType;
  /** kohya UNet names in diffusers paths (default) or SGM paths. */
  readonly kohyaPaths?: KohyaPaths;
  /** Sketch oversampling of the truncated SVD (default 8) and its seed (default: the SVD's). */
  readonly oversampling?: number;
  readonly seed?: number;
  /**
   * Modules factored at once on worker threads (Node; default one per core, at most 4); 1 factors on the calling thread.
   * The factors are the same for every thread count.
   */
  readonly threads?: number;
  readonly metadata?: Readonly<Record<string, string>>;
  readonly onProgress?: (p: ExtractProgress) => void;
}

export interface ExtractProgress {
  readonly modulesDone: number;
  readonly modulesTotal: number;
  readonly current: string;
  readonly seconds: number;
}

export interface ExtractReport {
  readonly base: string;
  readonly tuned: string;
  readonly out: string;
  readonly arch: string;
  readonly size: string;
  readonly rule: string;
  readonly convRule: string;
  readonly dtype: OutputDType;
  readonly modules: readonly ExtractModuleReport[];
  /** Modules compared whose Δ is exactly zero (left out). */
  readonly zero: { readonly count: number; readonly paths: readonly string[] };
  /** Modules not compared, with why (3×3 convs with convRank 0). */
  readonly skipped: { readonly count: number; readonly reason: string }[];
  readonly compared: number;
  /**
   * Tensors outside the extracted modules (biases, norms, embeddings, conv_in/conv_out, text encoders without
   * `textEncoders`, VAE), compared by name: the ones that differ are changes the LoRA does not carry.
   */
  readonly outside: OutsideReport;
  readonly textEncoders: boolean;
  /**
   * With `biasDiff`: the full differences stored — module biases (`.diff_b`), norm layers (weight `.diff` and bias
   * `.diff_b`) — and the tensors compared that were identical (left out). Absent without `biasDiff`.
   */
  readonly biasDiff?: { readonly biases: number; readonly norms: number; readonly identical: number };
  readonly overall: {
    readonly norm: number;
    readonly error: number;
    readonly relError: number;
    readonly keptEnergy: number;
  };
  /** Worst module by relative error. */
  readonly worst?: { readonly path: string; readonly relError: number };
  readonly parameters: number;
  readonly bytesWritten: number;
  readonly seconds: number;
  readonly peakRssBytes?: number;
}

interface Located {
  readonly file: SafetensorsFile;
  readonly key: string;
  readonly rows?: readonly [number, number];
}

interface Item {
  readonly entry: ModuleEntry;
  readonly base: Located;
  readonly tuned: Located;
  readonly rule: RankRule;
  readonly order: readonly [number, number, number];
}

function dynamicRule(o: ExtractOptions, cap: number): RankRule | null {
  const given = (['minEnergy', 'svRatio', 'svFro', 'svCumulative'] as const).filter((k) => o[k] !== undefined);
  if (given.length > 1) {
    throw new OptionError(
      'OPTION_CONFLICT',
      `extract: choose one of minEnergy, svRatio, svFro, svCumulative; found ${given.join(' and ')}`,
      { found: given },
    );
  }
  const kind = given[0];
  if (kind === undefined) return null;
  const value = o[kind] as number;
  return kind === 'minEnergy' ? { kind, value, maxRank: cap } : { kind, value, maxRank: cap };
}

/** The rank rules for ordinary modules and for 3×3 convolutions (null: leave them out). */
export function extractRules(o: ExtractOptions): { rule: RankRule; conv: RankRule | null } {
  const cap = o.rank ?? o.maxRank ?? DEFAULT_MAX_RANK;
  const dyn = dynamicRule(o, cap);
  if (!dyn && o.rank === undefined) {
    throw new OptionError(
      'OPTION_INVALID',
      'extract: give a rank (rank / --rank K) or a rank rule (minEnergy, svRatio, svFro, svCumulative)',
      { expected: 'rank or a rank rule' },
    );
  }
  const rule = validateRule(dyn ?? { kind: 'rank', rank: o.rank as number });
  let conv: RankRule | null = rule;
  if (o.convRank !== undefined) {
    if (!Number.isInteger(o.convRank) || o.convRank < 0) {
      throw new OptionError('OPTION_INVALID', `extract: convRank must be an integer ≥ 0, found ${o.convRank}`, {
        option: 'convRank',
        found: o.convRank,
      });
    }
    if (o.convRank === 0) conv = null;
    else if (dyn && dyn.kind !== 'rank') conv = { ...dyn, maxRank: o.convRank };
    else conv = { kind: 'rank', rank: o.convRank };
  }
  return { rule, conv };
}

const label = (b: OpenedBase): string =>
  `${ARCH_LABEL[b.detection.arch]}${b.detection.size === 'tiny' ? ' (tiny)' : ''}`;

function find(opened: OpenedBase, entry: ModuleEntry): { loc: Located; fileIndex: number } | null {
  const w = findWeight(opened, entry);
  return w ? { loc: w, fileIndex: w.fileIndex } : null;
}

const is3x3 = (e: ModuleEntry): boolean => e.shape.length === 4 && (e.shape[2] ?? 1) * (e.shape[3] ?? 1) > 1;

/** Pair every module of both checkpoints, in the base's file order; check architecture and shapes first. */
function plan(
  base: OpenedBase,
  tuned: OpenedBase,
  o: ExtractOptions,
  rules: { rule: RankRule; conv: RankRule | null },
): { items: Item[]; skipped: { count: number; reason: string }[] } {
  const b = base.detection;
  const t = tuned.detection;
  if (b.arch !== t.arch || b.size !== t.size) {
    throw new ArchError(
      'ARCH_MISMATCH',
      `extract: the base ${base.name} is ${label(base)} but the tuned checkpoint ${tuned.name} is ${label(tuned)}; ` +
        'both must be the same architecture',
      { base: base.name, file: tuned.name, expected: `${b.arch}/${b.size}`, found: `${t.arch}/${t.size}` },
    );
  }
  // Text encoders: the transformer layers' Linears, as kohya extracts them (not the embeddings or text_projection).
  const wanted = b.layout.modules.filter((e) => e.component === 'unet' || (o.textEncoders === true && !e.extra));
  const items: Item[] = [];
  let convSkipped = 0;
  for (const entry of wanted) {
    const isConv = is3x3(entry);
    const rule = isConv ? rules.conv : rules.rule;
    if (!rule) {
      convSkipped++;
      continue;
    }
    const fb = find(base, entry);
    const ft = find(tuned, entry);
    if (!fb || !ft) {
      const which = !fb ? base.name : tuned.name;
      throw new ArchError(
        'ARCH_MISMATCH',
        `extract: ${which} has no weight for module '${entry.path}' (${entry.component}); ` +
          (entry.component !== 'unet'
            ? 'both checkpoints need their text encoders for textEncoders / --text-encoders'
            : 'both checkpoints must hold the same UNet'),
        { file: which, key: entry.path },
      );
    }
    const ib = fb.loc.file.info(fb.loc.key);
    const it = ft.loc.file.info(ft.loc.key);
    const sameShape = ib.shape.length === it.shape.length && ib.shape.every((d, i) => d === it.shape[i]);
    const rowsMatch = (fb.loc.rows?.join() ?? '') === (ft.loc.rows?.join() ?? '') || !fb.loc.rows || !ft.loc.rows;
    const expected = entry.shape.reduce((a, d) => a * d, 1);
    const numelOf = (info: { numel: number; shape: readonly number[] }, rows?: readonly [number, number]): number =>
      rows ? ((rows[1] - rows[0]) * info.numel) / (info.shape[0] ?? 1) : info.numel;
    if (
      (!sameShape && !(fb.loc.rows || ft.loc.rows)) ||
      !rowsMatch ||
      numelOf(ib, fb.loc.rows) !== expected ||
      numelOf(it, ft.loc.rows) !== expected
    ) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `extract: module '${entry.path}' is [${ib.shape.join(', ')}] in the base ('${fb.loc.key}') but ` +
          `[${it.shape.join(', ')}] in ${tuned.name} ('${ft.loc.key}'); expected ${expected} values [${entry.shape.join(', ')}]`,
        { key: entry.path, expected: entry.shape, found: it.shape },
      );
    }
    items.push({
      entry,
      base: fb.loc,
      tuned: ft.loc,
      rule,
      order: [fb.fileIndex, ib.offset, fb.loc.rows?.[0] ?? 0],
    });
  }
  items.sort((x, y) => x.order[0] - y.order[0] || x.order[1] - y.order[1] || x.order[2] - y.order[2]);
  const skipped = convSkipped > 0 ? [{ count: convSkipped, reason: '3×3 convolutions left out (convRank 0)' }] : [];
  return { items, skipped };
}

/** Reads module weights' stored bytes, keeping the last tensor of each side read for rows (q/k/v of one tensor). */
class WeightReader {
  #key: string | null = null;
  #file: SafetensorsFile | null = null;
  #raw: Promise<Uint8Array> | null = null;

  /** The bytes of exactly the module's values: a whole tensor (read afresh) or its rows (cut out as a copy). */
  async bytes(loc: Located): Promise<{ raw: Uint8Array; dtype: string }> {
    const info = loc.file.info(loc.key);
    if (!loc.rows) return { raw: await loc.file.read(loc.key), dtype: info.dtype };
    if (this.#file !== loc.file || this.#key !== loc.key || !this.#raw) {
      this.#file = loc.file;
      this.#key = loc.key;
      this.#raw = loc.file.read(loc.key);
    }
    const all = await this.#raw;
    const rowBytes = all.byteLength / (info.shape[0] ?? 1);
    return { raw: all.slice(loc.rows[0] * rowBytes, loc.rows[1] * rowBytes), dtype: info.dtype };
  }
}

/** Runs factorModule: on worker threads when the host gives a pool, else here with one reused workspace. */
interface Factorer {
  readonly inFlight: number;
  factor(job: ExtractJob): Promise<ModuleOutcome>;
  close(): Promise<void>;
}

function factorer(threads: number | undefined): Factorer {
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) {
    throw new OptionError('OPTION_INVALID', `extract: threads must be an integer ≥ 1, found ${String(threads)}`, {
      option: 'threads',
      found: threads,
    });
  }
  const pool: ExtractPool | null = threads === 1 ? null : (currentFuseHost()?.createExtractPool?.(threads) ?? null);
  if (pool) return { inFlight: pool.threads, factor: (job) => pool.factor(job), close: () => pool.close() };
  const ws = new ExtractWorkspace();
  return { inFlight: 1, factor: async (job) => factorModule(job, ws), close: async () => undefined };
}

function peakRss(): number | undefined {
  const p = (globalThis as { process?: { resourceUsage?: () => { maxRSS: number } } }).process;
  try {
    return p?.resourceUsage ? p.resourceUsage().maxRSS * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** One module's stored factors (in the output dtype's bytes). */
interface Extracted {
  readonly entry: ModuleEntry;
  readonly rank: number;
  readonly up: Uint8Array;
  readonly down: Uint8Array;
}

/**
 * Extract τ = tuned − base as a LoRA (kohya spelling, LoCon for 3×3 convs) and write it. Fails before writing
 * when the checkpoints differ in architecture or shapes (ARCH_MISMATCH), when no module differs
 * (LORA_ZERO_DELTA), or when a factor does not fit the output dtype (LORA_DTYPE_OVERFLOW).
 */
export async function extractLora(base: BaseInput, tuned: BaseInput, options: ExtractOptions): Promise<ExtractReport> {
  const t0 = now();
  if (
    !options ||
    (typeof options.out !== 'string' && typeof (options.out as ByteSink | undefined)?.write !== 'function')
  )
    throw new OptionError('OPTION_INVALID', 'extract: options.out must be a path or a ByteSink', { option: 'out' });
  const dtype: OutputDType = options.dtype ?? 'F16';
  if (dtype !== 'F16' && dtype !== 'BF16' && dtype !== 'F32') {
    throw new OptionError('OPTION_INVALID', `extract: dtype must be F32, F16 or BF16, found '${String(dtype)}'`, {
      option: 'dtype',
      found: dtype,
    });
  }
  const rules = extractRules(options);
  const openedBase = await openBase(base);
  let openedTuned: OpenedBase | null = null;
  let pool: Factorer | null = null;
  try {
    openedTuned = await openBase(tuned);
    const { items, skipped } = plan(openedBase, openedTuned, options, rules);
    pool = factorer(options.threads);
    const outcomes = await factorAll(items, openedBase.name, openedTuned.name, options, pool, dtype, t0);
    const relOf = new Map(openedBase.files.map((f) => [f.file, f.rel]));
    const used = new Set(items.map((it) => `${relOf.get(it.base.file) ?? ''}\0${it.base.key}`));
    const extractedPaths = items.filter((_, i) => !(outcomes[i] as ModuleOutcome).zero).map((it) => it.entry);
    const diffs: BiasDiffs | null = options.biasDiff
      ? await biasDiffs(openedBase, openedTuned, extractedPaths, options.textEncoders === true)
      : null;
    for (const k of diffs?.used ?? []) used.add(k);
    const outside = await compareOutside(openedBase, openedTuned, used);
    const reports: ExtractModuleReport[] = [];
    const extracted: Extracted[] = [];
    const zeroPaths: string[] = [];
    items.forEach((it, i) => {
      const o = outcomes[i] as ModuleOutcome;
      if (o.zero) zeroPaths.push(it.entry.path);
      else {
        reports.push(o.report);
        extracted.push({ entry: it.entry, rank: o.rank, up: o.up, down: o.down });
      }
    });
    // Reports and the file list modules in layout order, whatever the base's file order was.
    const rank = new Map(openedBase.detection.layout.modules.map((e, i) => [e.path, i]));
    const byLayout = (a: string, b: string): number => (rank.get(a) ?? 0) - (rank.get(b) ?? 0);
    reports.sort((a, b) => byLayout(a.path, b.path));
    extracted.sort((a, b) => byLayout(a.entry.path, b.entry.path));
    zeroPaths.sort(byLayout);
    if (extracted.length === 0) {
      throw new LoraError(
        'LORA_ZERO_DELTA',
        `extract: ${openedTuned.name} and ${openedBase.name} hold identical weights in all ${items.length} module(s) ` +
          'compared (Δ = 0 everywhere); there is nothing to extract — nothing was written. Is the tuned file the base itself?',
        { base: openedBase.name, file: openedTuned.name, compared: items.length },
      );
    }
    let norm2 = 0;
    let err2 = 0;
    let worst: { path: string; relError: number } | undefined;
    for (const r of reports) {
      norm2 += r.norm * r.norm;
      err2 += r.error * r.error;
      if (!worst || r.relError > worst.relError) worst = { path: r.path, relError: r.relError };
    }
    const overall = {
      norm: Math.sqrt(norm2),
      error: Math.sqrt(err2),
      relError: norm2 > 0 ? Math.sqrt(err2 / norm2) : 0,
      keptEnergy: norm2 > 0 ? 1 - err2 / norm2 : 1,
    };
    const sources: ModuleSource[] = extracted.map((x) => {
      const e = x.entry;
      const conv = e.shape.length === 4;
      const inner = e.shape.slice(1);
      return {
        entry: e,
        alpha: x.rank,
        downShape: conv ? [x.rank, ...inner] : [x.rank, ...inner],
        upShape: conv ? [e.shape[0] ?? 1, x.rank, 1, 1] : [e.shape[0] ?? 1, x.rank],
        down: () => decodeToF32(dtype, x.down),
        up: () => decodeToF32(dtype, x.up),
        ...(diffs?.biases.has(e.path) ? { bias: () => diffs.biases.get(e.path) as Float32Array } : {}),
      };
    });
    const ruleText = describeRule(rules.rule);
    const convRule = rules.conv ? describeRule(rules.conv) : 'left out';
    const summary = {
      version: VERSION,
      base: fileNameOf(openedBase.name),
      tuned: fileNameOf(openedTuned.name),
      rule: ruleText,
      convRule,
      modules: reports.length,
      zero: zeroPaths.length,
      ...(diffs ? { biasDiff: diffs.counts } : {}),
      relError: overall.relError,
      keptEnergy: overall.keptEnergy,
    };
    const fixedRank = rules.rule.kind === 'rank' ? String(rules.rule.rank) : 'Dynamic';
    const encoded = encodeModules(
      sources,
      {
        format: 'kohya',
        dtype,
        moduleBiasAsDiff: true,
        ...(options.kohyaPaths ? { kohyaPaths: options.kohyaPaths } : {}),
        metadata: {
          ss_network_module: 'networks.lora',
          ss_network_dim: fixedRank,
          ss_network_alpha: fixedRank,
          ...(rules.conv
            ? {
                ss_network_args: JSON.stringify({
                  conv_dim: String(ruleCap(rules.conv)),
                  conv_alpha: String(ruleCap(rules.conv)),
                }),
              }
            : {}),
          ...(options.metadata ?? {}),
          [EXTRACT_METADATA_KEY]: JSON.stringify(summary),
          lora_mix_version: VERSION,
        },
      },
      {},
      new Map(),
      diffs?.norms ?? [],
    );
    const refuse: (ByteSource | string)[] = [
      ...openedBase.files.map((f) => f.file.source),
      ...openedTuned.files.map((f) => f.file.source),
      ...[base, tuned].filter((x): x is string | ByteSource => typeof x === 'string' || isByteSource(x)),
    ];
    const written = await writeSafetensors(options.out, encoded.tensors, {
      metadata: encoded.metadata,
      refuseOverwrite: refuse,
    });
    const rss = peakRss();
    return {
      base: openedBase.name,
      tuned: openedTuned.name,
      out: written.name,
      arch: openedBase.detection.arch,
      size: openedBase.detection.size,
      rule: ruleText,
      convRule,
      dtype,
      modules: reports,
      zero: { count: zeroPaths.length, paths: zeroPaths },
      skipped,
      compared: items.length,
      outside,
      textEncoders: options.textEncoders === true,
      ...(diffs ? { biasDiff: diffs.counts } : {}),
      overall,
      ...(worst ? { worst } : {}),
      parameters: extracted.reduce((a, x) => a + (x.up.byteLength + x.down.byteLength) / (dtype === 'F32' ? 4 : 2), 0),
      bytesWritten: written.byteLength,
      seconds: now() - t0,
      ...(rss !== undefined ? { peakRssBytes: rss } : {}),
    };
  } finally {
    await pool?.close();
    await openedTuned?.close();
    await openedBase.close();
  }
}

/** Elements of Δ factored at once across threads (each thread holds a few f32 copies of its module). */
const IN_FLIGHT_ELEMENTS = 1 << 25;

/**
 * Read every module pair in file order (the next pair read while earlier ones are factored) and factor them,
 * `pool.inFlight` at a time: at most that many pairs plus the one being read are in memory. Outcomes in item order.
 */
async function factorAll(
  items: readonly Item[],
  baseName: string,
  tunedName: string,
  options: ExtractOptions,
  pool: Factorer,
  dtype: OutputDType,
  t0: number,
): Promise<ModuleOutcome[]> {
  const readers = { base: new WeightReader(), tuned: new WeightReader() };
  const load = (it: Item) => Promise.all([readers.base.bytes(it.base), readers.tuned.bytes(it.tuned)]);
  const outcomes: ModuleOutcome[] = new Array(items.length);
  const running = new Set<Promise<void>>();
  let failure: { error: unknown } | null = null;
  let done = 0;
  let inFlightElements = 0;
  let next = items.length > 0 ? load(items[0] as Item) : null;
  try {
    for (let i = 0; i < items.length && !failure; i++) {
      const it = items[i] as Item;
      const [b, t] = await (next as ReturnType<typeof load>);
      next = i + 1 < items.length ? load(items[i + 1] as Item) : null;
      next?.catch(() => undefined);
      const size = it.entry.shape.reduce((a, d) => a * d, 1);
      // A free thread, and (unless nothing else runs) room under the element budget: the largest SD1.5
      // convolutions (29.5 M elements) are factored alone, which bounds the threads' memory together.
      while (
        !failure &&
        (running.size >= pool.inFlight || (running.size > 0 && inFlightElements + size > IN_FLIGHT_ELEMENTS))
      )
        await Promise.race(running);
      if (failure) break;
      const job: ExtractJob = {
        path: it.entry.path,
        shape: it.entry.shape,
        rule: it.rule,
        dtype,
        ...(options.oversampling !== undefined ? { oversampling: options.oversampling } : {}),
        ...(options.seed !== undefined ? { seed: options.seed } : {}),
        base: { ...b, what: `${baseName}: '${it.base.key}'` },
        tuned: { ...t, what: `${tunedName}: '${it.tuned.key}'` },
      };
      inFlightElements += size;
      const task: Promise<void> = pool.factor(job).then(
        (o) => {
          outcomes[i] = o;
          inFlightElements -= size;
          running.delete(task);
          done++;
          options.onProgress?.({
            modulesDone: done,
            modulesTotal: items.length,
            current: it.entry.path,
            seconds: now() - t0,
          });
        },
        (error: unknown) => {
          inFlightElements -= size;
          running.delete(task);
          failure ??= { error };
        },
      );
      running.add(task);
    }
    await Promise.all(running);
  } finally {
    await next?.catch(() => undefined);
  }
  if (failure) throw (failure as { error: unknown }).error;
  return outcomes;
}
