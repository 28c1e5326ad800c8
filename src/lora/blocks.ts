/**
 * Block weights: per-block multipliers with the block IDs of LoRA Block Weight / SuperMerger.
 *
 * IDs: BASE (the text encoders), INnn (input_blocks.nn of the single-file UNet), M00 (the middle block) and OUTnn
 * (output_blocks.nn). SD1.5 has 26 IDs (IN00–IN11, OUT00–OUT11), SDXL and SSD-1B 20 (IN00–IN08, OUT00–OUT08).
 * Which module belongs to which block comes from the layout (ModuleEntry.block); modules no ID covers (time and
 * add embeddings, conv_out) keep multiplier 1.
 *
 * Accepted forms:
 *   - "IN04=0,OUT05=0.5"                 IDs not named keep 1 ("MID" is accepted for M00, case does not matter);
 *   - "1,0,0.5,…" / [1, 0, 0.5, …]       a vector in one of the arch's orders: 26 or 17 values for SD1.5, 20 or
 *                                        12 for SDXL / SSD-1B (the 17 and 12 orders list only the blocks that hold
 *                                        attention; blocks they omit keep 1);
 *   - { IN04: 0, OUT05: 0.5 }             like the string form;
 *   - (path, entry) => number            any per-module rule.
 */
import { OptionError } from '../core/errors.js';
import { blockIds, familyOf, getLayout } from '../layout/index.js';
import type { Arch, BlockId, LayoutSize, ModuleEntry } from '../layout/types.js';

export type BlockWeightFn = (path: string, entry?: ModuleEntry) => number;

/** Per-block multipliers in any accepted form. */
export type BlockSpec = string | Readonly<Record<string, number>> | readonly number[] | BlockWeightFn;

/** A merge weight with block multipliers: module weight = weight × block multiplier. */
export interface BlockWeights {
  /** The input's overall weight (default 1). */
  readonly weight?: number;
  readonly blocks: BlockSpec;
}

/** 17-value order (SD1.5 blocks with attention). */
export const SD15_ATTENTION_BLOCKS: readonly BlockId[] = [
  'BASE',
  'IN01',
  'IN02',
  'IN04',
  'IN05',
  'IN07',
  'IN08',
  'M00',
  'OUT03',
  'OUT04',
  'OUT05',
  'OUT06',
  'OUT07',
  'OUT08',
  'OUT09',
  'OUT10',
  'OUT11',
];

/** 12-value order (SDXL / SSD-1B blocks with attention). */
export const SDXL_ATTENTION_BLOCKS: readonly BlockId[] = [
  'BASE',
  'IN04',
  'IN05',
  'IN07',
  'IN08',
  'M00',
  'OUT00',
  'OUT01',
  'OUT02',
  'OUT03',
  'OUT04',
  'OUT05',
];

/** The vector orders an architecture accepts, keyed by length: {26, 17} for SD1.5, {20, 12} for SDXL / SSD-1B. */
export function blockVectorForms(arch: Arch): ReadonlyMap<number, readonly BlockId[]> {
  const all = blockIds(arch);
  const short = familyOf(arch) === 'sd15' ? SD15_ATTENTION_BLOCKS : SDXL_ATTENTION_BLOCKS;
  return new Map([
    [all.length, all],
    [short.length, short],
  ]);
}

function describeForms(arch: Arch): string {
  const forms = [...blockVectorForms(arch)];
  return forms.map(([n, ids]) => `${n} (${ids.join(', ')})`).join(' or ');
}

/** 'in4' → 'IN04', 'mid' → 'M00', 'base' → 'BASE'; undefined when it is not shaped like an ID. */
export function normalizeBlockId(raw: string): BlockId | undefined {
  const s = raw.trim().toUpperCase();
  if (s === 'BASE') return 'BASE';
  if (s === 'MID' || s === 'M' || /^M0?0$/.test(s)) return 'M00';
  const m = /^(IN|OUT)(\d{1,2})$/.exec(s);
  if (m) return `${m[1]}${m[2]!.padStart(2, '0')}`;
  return undefined;
}

function invalid(message: string, details: Record<string, unknown> = {}): OptionError {
  return new OptionError('OPTION_INVALID', message, { option: 'blocks', ...details });
}

function checkValue(value: unknown, what: string, arch: Arch): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw invalid(`block weights for ${arch}: ${what} must be a finite number, found ${String(value)}`, {
      key: what,
      found: value,
    });
  }
  return value;
}

/**
 * Parse block multipliers into a map from block ID to multiplier (IDs not present mean 1). `source` names the
 * input in error messages.
 */
export function parseBlockWeights(
  spec: string | Readonly<Record<string, number>> | readonly number[],
  arch: Arch,
  source = 'block weights',
): Map<BlockId, number> {
  const valid = new Set(blockIds(arch));
  const result = new Map<BlockId, number>();
  const fromPairs = (pairs: [string, unknown][]): Map<BlockId, number> => {
    for (const [rawId, value] of pairs) {
      const id = normalizeBlockId(rawId);
      if (id === undefined || !valid.has(id)) {
        throw invalid(`${source}: unknown block ID '${rawId}' for ${arch}; valid IDs: ${[...valid].join(', ')}`, {
          key: rawId,
          expected: [...valid],
        });
      }
      if (result.has(id)) throw invalid(`${source}: block ${id} is given twice`, { key: id });
      result.set(id, checkValue(value, `the value of ${id}`, arch));
    }
    return result;
  };
  const fromVector = (values: readonly unknown[]): Map<BlockId, number> => {
    const order = blockVectorForms(arch).get(values.length);
    if (!order) {
      throw invalid(`${source}: ${values.length} value(s) given; ${arch} accepts a vector of ${describeForms(arch)}`, {
        found: values.length,
        expected: [...blockVectorForms(arch).keys()],
      });
    }
    order.forEach((id, i) => {
      result.set(id, checkValue(values[i], `value ${i + 1} (${id})`, arch));
    });
    return result;
  };
  if (typeof spec === 'string') {
    const text = spec.trim();
    if (text === '') throw invalid(`${source}: empty block weight string`, {});
    const items = text
      .split(/[,;\n]/)
      .map((t) => t.trim())
      .filter((t) => t !== '');
    if (items.some((t) => t.includes('=') || t.includes(':'))) {
      return fromPairs(
        items.map((item) => {
          const m = /^([^=:]+)[=:](.*)$/.exec(item);
          if (!m) throw invalid(`${source}: '${item}' is not ID=value (e.g. IN04=0)`, { key: item });
          const num = m[2]!.trim() === '' ? NaN : Number(m[2]);
          return [m[1]!, num];
        }),
      );
    }
    return fromVector(items.map((t) => Number(t)));
  }
  if (Array.isArray(spec)) return fromVector(spec as readonly unknown[]);
  return fromPairs(Object.entries(spec));
}

/**
 * The per-module multiplier function of a block spec for one architecture: looks the module up in the layout and
 * returns its block's multiplier (1 for modules without a block ID or unknown to the layout). Functions are
 * wrapped to check what they return.
 */
export function compileBlockWeights(
  spec: BlockSpec,
  arch: Arch,
  size: LayoutSize = 'full',
  source = 'block weights',
): (path: string) => number {
  const layout = getLayout(arch, size);
  if (typeof spec === 'function') {
    return (path) => {
      const v = spec(path, layout.byPath.get(path));
      if (typeof v !== 'number' || !Number.isFinite(v)) {
        throw invalid(
          `${source}: the block weight function returned ${String(v)} for module '${path}'; expected a finite number`,
          { key: path, found: v },
        );
      }
      return v;
    };
  }
  const table = parseBlockWeights(spec, arch, source);
  return (path) => {
    // Modules by their block; norm layers (norm differences) by the block of the resnet / attention they sit in.
    const block = layout.byPath.get(path)?.block ?? layout.normByPath.get(path)?.block ?? null;
    return block === null ? 1 : (table.get(block) ?? 1);
  };
}

/** The modules of a layout each block ID covers, in layout order (for documentation and inspection). */
export function modulesByBlock(arch: Arch, size: LayoutSize = 'full'): Map<BlockId | null, ModuleEntry[]> {
  const byBlock = new Map<BlockId | null, ModuleEntry[]>();
  for (const id of blockIds(arch)) byBlock.set(id, []);
  for (const entry of getLayout(arch, size).modules) {
    const list = byBlock.get(entry.block) ?? [];
    list.push(entry);
    byBlock.set(entry.block, list);
  }
  return byBlock;
}
