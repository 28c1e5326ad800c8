/**
 * The deltas computed from the base weight (OFT, BOFT, DoRA, GLoRA: f64 JS over the whole weight) on worker threads
 * (./reduce-worker.ts runs termWeightedDelta), so the main thread of merge --base and convert --base only reads while
 * they run (DeltaPool, src/fuse/base-terms.ts). OFT and BOFT multiply the rows of W0 by blocks of R and treat every column
 * alone, so one delta is cut into column ranges, one per thread: every value is computed by the same operations in
 * the same order as on one thread, so the bits are those of termWeightedDelta here.
 */
import { availableParallelism } from 'node:os';
import { type DeltaPool, needsBase, resolveBaseTerms } from '../fuse/base-terms.js';
import type { BaseInput } from '../fuse/types.js';
import { termDims } from '../lora/terms/index.js';
import { packTerm } from '../lora/terms/pack.js';
import type { Lora, Term } from '../lora/types.js';
import { ownBuffer, ReducePool } from './reduce-pool.js';

/** A column range narrower than this is not worth a message of its own. */
const MIN_COLUMNS = 32;

/** A pool of `threads` workers (default one per core), or null when workers cannot start here. */
export function createDeltaPool(threads?: number): DeltaPool | null {
  const n = Math.max(1, Math.floor(threads ?? availableParallelism()));
  const pool = ReducePool.start(n);
  if (!pool) return null;
  const one = (t: Term, path: string, w: number, base: Float32Array): Promise<Float32Array> =>
    pool.run<Float32Array>(path, () => ({
      path,
      out: 0,
      fanIn: 0,
      target: {},
      terms: [],
      delta: { term: packTerm(t), w, base: ownBuffer(base) },
    }));
  return {
    async weightedDelta(t, path, w, base) {
      if (t.kind !== 'oft' && t.kind !== 'boft') return one(t, path, w, base);
      // Checked here so that a bad term fails with the whole weight's shape in its message.
      const { out, fanIn } = termDims(t, path);
      const parts = Math.min(n, Math.floor(fanIn / MIN_COLUMNS));
      if (parts <= 1 || base.length !== out * fanIn) return one(t, path, w, base);
      const ranges: [number, number][] = [];
      for (let k = 0; k < parts; k++)
        ranges.push([Math.floor((k * fanIn) / parts), Math.floor(((k + 1) * fanIn) / parts)]);
      const deltas = await Promise.all(
        ranges.map(([c0, c1]) => {
          const cols = c1 - c0;
          const slice = new Float32Array(out * cols);
          for (let r = 0; r < out; r++) slice.set(base.subarray(r * fanIn + c0, r * fanIn + c1), r * cols);
          return one({ ...t, shape: [out, cols] }, path, w, slice);
        }),
      );
      const delta = new Float32Array(out * fanIn);
      ranges.forEach(([c0, c1], k) => {
        const d = deltas[k]!;
        const cols = c1 - c0;
        for (let r = 0; r < out; r++) delta.set(d.subarray(r * cols, (r + 1) * cols), r * fanIn + c0);
      });
      return delta;
    },
    close: () => pool.close(),
  };
}

/**
 * resolveBaseTerms with the deltas on `threads` worker threads (default one per core; 1: on this thread): for
 * merge --base and convert --base.
 */
export async function resolveBaseTermsThreaded<L extends Lora<Term>>(
  lora: L,
  base: BaseInput,
  threads?: number,
): Promise<L> {
  if (!needsBase(lora)) return lora;
  const pool = threads === 1 ? null : createDeltaPool(threads);
  try {
    return await resolveBaseTerms(lora, base, pool);
  } finally {
    await pool?.close();
  }
}
