/**
 * Give base-dependent terms (DoRA, GLoRA, OFT, BOFT) their base weights: for every module whose delta involves W0, read W0
 * from the base checkpoint (single file, UNet-only file or diffusers folder, any naming; fused in_proj rows sliced)
 * and turn the term into its exact dense delta, so merge, convert and resize can treat the LoRA like any other.
 * Only those modules' weights are read, one at a time.
 */
import { ArchError, LoraError } from '../core/errors.js';
import { getLayout } from '../layout/index.js';
import { termNeedsBase, withBase, withDelta } from '../lora/terms/index.js';
import type { Lora, Term } from '../lora/types.js';
import { findWeight, readWeightRows, type OpenedBase } from './base.js';
import { openBase } from './fuse.js';
import type { BaseInput } from './types.js';

/**
 * Worker threads for the deltas computed from the base weight in f64 JS (OFT, BOFT, DoRA, GLoRA; src/node/delta-pool.ts,
 * for merge --base and convert --base): the same function (termWeightedDelta) on other threads, so the same bits.
 */
export interface DeltaPool {
  /** termWeightedDelta(t, path, w, base): ΔW at strength 1 for w = 1 (what withBase makes dense). */
  weightedDelta(t: Term, path: string, w: number, base: Float32Array): Promise<Float32Array>;
  close(): Promise<void>;
}

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

/** Deltas computed at once on the pool's threads (two per thread of a two-thread pool). */
const IN_FLIGHT = 4;

/**
 * `lora` with every DoRA / GLoRA / OFT / BOFT term replaced by its exact dense delta against `base` (other terms
 * unchanged); with `pool` (src/node/delta-pool.ts), the deltas are computed on its worker threads, the same bits.
 * ARCH_MISMATCH when the base is another architecture; LORA_NEEDS_BASE when it lacks a module's weight.
 */
export async function resolveBaseTerms<L extends Lora<Term>>(
  lora: L,
  base: BaseInput | OpenedBase,
  pool?: DeltaPool | null,
): Promise<L> {
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
    // With a pool, a few deltas are computed on its threads while the next weights are read (the map keeps the
    // layout order: each module's place is taken when it is read).
    const inFlight: Promise<void>[] = [];
    for (const [path, t] of lora.modules) {
      if (!termNeedsBase(t)) {
        modules.set(path, t);
        continue;
      }
      const w0 = await baseWeight(opened, lora, path);
      if (!pool) {
        modules.set(path, withBase(t, path, w0));
        continue;
      }
      modules.set(path, t);
      const p = pool.weightedDelta(t, path, 1, w0).then((d) => {
        modules.set(path, withDelta(t, path, d));
      });
      p.catch(() => undefined); // reported where it is awaited
      inFlight.push(p);
      if (inFlight.length >= IN_FLIGHT) await inFlight.shift();
    }
    await Promise.all(inFlight);
    return { ...lora, modules };
  } finally {
    if (opened !== base) await opened.close();
  }
}
