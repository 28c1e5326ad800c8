/**
 * Give base-dependent terms (DoRA, GLoRA) their base weights: for every module whose delta involves W0, read W0
 * from the base checkpoint (single file, UNet-only file or diffusers folder, any naming; fused in_proj rows sliced)
 * and turn the term into its exact dense delta, so merge, convert and resize can treat the LoRA like any other.
 * Only those modules' weights are read, one at a time.
 */
import { ArchError, LoraError } from '../core/errors.js';
import { getLayout } from '../layout/index.js';
import { termNeedsBase, withBase } from '../lora/terms/index.js';
import type { Lora, Term } from '../lora/types.js';
import { findWeight, readWeightRows, type OpenedBase } from './base.js';
import { openBase } from './fuse.js';
import type { BaseInput } from './types.js';

/** True when some module of `lora` needs the base weights (DoRA, GLoRA). */
export function needsBase(lora: Lora<Term>): boolean {
  for (const t of lora.modules.values()) if (termNeedsBase(t)) return true;
  return false;
}

/** The weight of module `path` of `lora`'s layout in an opened checkpoint, as f32 (LORA_NEEDS_BASE when absent). */
export async function baseWeight(
  opened: OpenedBase,
  lora: Pick<Lora<Term>, 'arch' | 'size'>,
  path: string,
): Promise<Float32Array> {
  const entry = getLayout(lora.arch, lora.size).byPath.get(path);
  const found = entry ? findWeight(opened, entry) : null;
  if (!entry || !found) {
    throw new LoraError('LORA_NEEDS_BASE', `${opened.name}: the base has no weight for module '${path}'`, {
      file: opened.name,
      key: path,
    });
  }
  return readWeightRows(await found.file.read(found.key), found, found.key);
}

/**
 * `lora` with every DoRA / GLoRA term replaced by its exact dense delta against `base` (other terms unchanged).
 * ARCH_MISMATCH when the base is another architecture; LORA_NEEDS_BASE when it lacks a module's weight.
 */
export async function resolveBaseTerms<L extends Lora<Term>>(lora: L, base: BaseInput | OpenedBase): Promise<L> {
  if (!needsBase(lora)) return lora;
  const opened = typeof base === 'object' && base !== null && 'detection' in base ? base : await openBase(base);
  try {
    const d = opened.detection;
    if (d.arch !== lora.arch || d.size !== lora.size) {
      throw new ArchError(
        'ARCH_MISMATCH',
        `${opened.name} is ${d.arch}${d.size === 'tiny' ? ' (tiny)' : ''} but the LoRA is ${lora.arch}${lora.size === 'tiny' ? ' (tiny)' : ''}`,
        { file: opened.name, expected: lora.arch, found: d.arch },
      );
    }
    const modules = new Map<string, Term>();
    for (const [path, t] of lora.modules) {
      modules.set(path, termNeedsBase(t) ? withBase(t, path, await baseWeight(opened, lora, path)) : t);
    }
    return { ...lora, modules };
  } finally {
    if (opened !== base) await opened.close();
  }
}
