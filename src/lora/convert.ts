/**
 * convertLora: a LoRA of any mix of kinds as a plain LoRA, in memory — exactly, or with a rank target as each
 * module's best approximation with its error reported. Module by module through convertModule (./convert-module.ts),
 * the same function the streamed conversion (src/node/convert-stream.ts) runs on worker threads, so both write the
 * same bytes.
 */
import { OptionError } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { summarizeConversions, moduleConversion, type ConversionReport } from './conversion-report.js';
import { ConvertScratch, convertedModule, convertModule, type ModuleConvertOutcome } from './convert-module.js';
import { MERGE_METADATA_KEY, STALE_ON_RESIZE, VERSION_METADATA_KEY } from './merge.js';
import type { RankTarget } from './reduce.js';
import { termLabel, termShape } from './terms/index.js';
import type { Lora, LoraModule, Term } from './types.js';

export interface ConvertResult<L extends Lora<Term>> {
  /** The plain LoRA: every other field of the input kept (metadata without the keys a resize makes stale). */
  readonly lora: Omit<L, 'modules'> & Lora;
  /** With a target: per module the rank before and after, the relative error and the kept norm. */
  readonly report?: ConversionReport;
}

/** OptionError unless the target is a rank ≥ 1 and / or a fraction in (0, 1]. */
export function checkConvertTarget(target: RankTarget | undefined): void {
  if (!target) return;
  const { rank, minEnergy } = target;
  if (rank !== undefined && !(Number.isInteger(rank) && rank >= 1)) {
    throw new OptionError('OPTION_INVALID', `convert: rank must be an integer ≥ 1, found ${String(rank)}`, {
      key: 'rank',
      expected: 'an integer ≥ 1',
      found: rank,
    });
  }
  if (minEnergy !== undefined && !(minEnergy > 0 && minEnergy <= 1)) {
    throw new OptionError('OPTION_INVALID', `convert: minEnergy must be in (0, 1], found ${String(minEnergy)}`, {
      key: 'minEnergy',
      expected: '(0, 1]',
      found: minEnergy,
    });
  }
}

/**
 * The record of a conversion, under the keys a merge and a resize write theirs: `lora_mix_version` and
 * `lora_mix_merge` = {"convert":{"exact":true}} or {"convert":{"rank":K,"minEnergy":E}} (the target as given).
 */
export function conversionRecord(target: RankTarget | undefined): Record<string, string> {
  const convert =
    target === undefined
      ? { exact: true }
      : {
          ...(target.rank !== undefined ? { rank: target.rank } : {}),
          ...(target.minEnergy !== undefined ? { minEnergy: target.minEnergy } : {}),
        };
  return { [VERSION_METADATA_KEY]: VERSION, [MERGE_METADATA_KEY]: JSON.stringify({ convert }) };
}

/** kohya's training metadata names the network module; a plain LoRA's is this one (sd-scripts' networks/lora.py). */
const PLAIN_NETWORK_MODULE = 'networks.lora';

/**
 * Metadata of a converted LoRA: the input's, with the conversion's record (conversionRecord; it replaces an input's
 * own merge record), and nothing that describes the input's network rather than the written one:
 * - with a rank target, the keys a resize makes stale (ss_network_dim / ss_network_alpha, the hashes);
 * - from a file trained as another kind (kohya metadata `ss_network_module` other than networks.lora, e.g. LyCORIS'
 *   lycoris.kohya with `ss_network_args` {"algo": "loha", …}), those stale keys too — an exact LoHa conversion writes
 *   rank r1·r2, not the dim the file was trained with — and the module becomes networks.lora, without the other
 *   kind's network args. A plain LoRA converted exactly keeps its ranks and all of its metadata.
 * With `written` (the modules as written), an input's ss_network_dim / ss_network_alpha that had to go are replaced
 * by those of the written file, as kohya's resize_lora.py writes them: the rank and alpha when every module has the
 * same, else 'Dynamic' for both (as its dynamic resize does).
 */
export function convertedMetadata(
  metadata: Readonly<Record<string, string>>,
  target: RankTarget | undefined,
  written?: Iterable<LoraModule>,
): Record<string, string> {
  const module = metadata.ss_network_module;
  const otherKind = module !== undefined && module !== PLAIN_NETWORK_MODULE;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata)) {
    if ((target || otherKind) && STALE_ON_RESIZE.includes(k)) continue;
    if (otherKind && k === 'ss_network_args') continue;
    out[k] = v;
  }
  if (otherKind) out.ss_network_module = PLAIN_NETWORK_MODULE;
  const dims = written && (target || otherKind) ? writtenDims(written) : null;
  if (dims && (metadata.ss_network_dim !== undefined || metadata.ss_network_alpha !== undefined)) {
    out.ss_network_dim = dims.dim;
    out.ss_network_alpha = dims.alpha;
  }
  return { ...out, ...conversionRecord(target) };
}

/** kohya's ss_network_dim / ss_network_alpha of these modules: their rank and alpha if all share them, else 'Dynamic'. */
function writtenDims(modules: Iterable<LoraModule>): { dim: string; alpha: string } | null {
  const ranks = new Set<number>();
  const alphas = new Set<number>();
  for (const m of modules) {
    ranks.add(m.down.shape[0] ?? 0);
    alphas.add(m.alpha);
  }
  if (ranks.size === 0) return null;
  if (ranks.size > 1 || alphas.size > 1) return { dim: 'Dynamic', alpha: 'Dynamic' };
  return { dim: String([...ranks][0]), alpha: String([...alphas][0]) };
}

/**
 * Every module as a plain LoRA module: exact without a target, else the best approximation under `target` (rank K:
 * at most K; minEnergy E: the smallest rank keeping ‖Δ_k‖/‖Δ‖ ≥ E). Base-dependent kinds must be resolved first
 * (resolveBaseTerms). A module whose delta is zero is left out.
 */
export function convertLora<L extends Lora<Term>>(lora: L, target?: RankTarget): ConvertResult<L> {
  checkConvertTarget(target);
  const scratch = new ConvertScratch();
  return assembleConversion(lora, target, (path, t) => convertModule(t, path, target, scratch));
}

/**
 * The converted LoRA from each module's outcome (computed here or on worker threads), in the input's module order:
 * the modules whose delta is not zero, the metadata without stale keys, the report with a target.
 */
export function assembleConversion<L extends Lora<Term>>(
  lora: L,
  target: RankTarget | undefined,
  outcomeOf: (path: string, term: Term) => ModuleConvertOutcome,
): ConvertResult<L> {
  const modules = new Map<string, LoraModule>();
  const rows = [];
  for (const [path, t] of lora.modules) {
    const o = outcomeOf(path, t);
    const m = convertedModule(o, termShape(t, path));
    if (m) modules.set(path, m);
    rows.push(moduleConversion(path, termLabel(t), o));
  }
  return {
    lora: { ...lora, modules, metadata: convertedMetadata(lora.metadata, target, modules.values()) },
    ...(target ? { report: summarizeConversions(rows, target) } : {}),
  };
}
