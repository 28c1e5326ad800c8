/**
 * mergeLorasParallel (Node only): the same merge as mergeLoras, with the rank reductions spread over worker
 * threads (one per core by default). Each module is independent, so the work splits module by module; the main
 * thread plans, copies each module's factors to a worker, builds the exact modules meanwhile, and assembles the
 * result in layout order. Results are identical to mergeLoras (the same code reduces each module).
 */
import { availableParallelism } from 'node:os';
import type { LoraModule, Lora, Term } from '../lora/types.js';
import {
  assembleMerge,
  exactModule,
  factorTerms,
  mergeLoras,
  methodRequest,
  planMerge,
  type MergeOptions,
  type MergePlan,
  type MergeResult,
  type MergeWeight,
  type PlannedMergeModule,
} from '../lora/merge.js';
import type { ReduceOutcome } from '../lora/reduce.js';
import { ownBuffer, ReducePool, type ReduceJob } from './reduce-pool.js';

export type ParallelMergeOptions = MergeOptions & {
  /** Worker threads for rank reduction (default: os.availableParallelism()). 1 runs mergeLoras on this thread. */
  readonly threads?: number;
};

const largest = new WeakMap<MergePlan, number>();

/** The largest out·fanIn of the plan's method modules (what a worker's reused buffers must hold). */
function largestMethodModule(plan: MergePlan): number {
  let n = largest.get(plan);
  if (n === undefined) {
    n = 0;
    for (const pm of plan.modules) if (pm.action === 'method') n = Math.max(n, pm.out * pm.fanIn);
    largest.set(plan, n);
  }
  return n;
}

/** The worker request of a planned 'reduce' or 'method' module (its factors copied into buffers of their own). */
export function reduceJob(plan: MergePlan, pm: PlannedMergeModule): ReduceJob {
  const terms =
    pm.action === 'method' ? [] : factorTerms(pm).map((t) => ({ ...t, up: ownBuffer(t.up), down: ownBuffer(t.down) }));
  return {
    path: pm.path,
    out: pm.out,
    fanIn: pm.fanIn,
    target: plan.target!,
    terms,
    ...(pm.action === 'method' ? { method: { ...methodRequest(plan, pm), reserve: largestMethodModule(plan) } } : {}),
  };
}

/**
 * reduceJob for a module whose factors were read for this request alone (the streaming merge): a method module's
 * factor buffers are moved to the worker instead of copied — no serialised copy on this thread, no second copy on
 * the worker's (the caller must not use them afterwards: a method module's outcome always carries its factors, so
 * the merge never needs them again).
 */
export function ownedReduceJob(plan: MergePlan, pm: PlannedMergeModule): ReduceJob {
  const job = reduceJob(plan, pm);
  if (!job.method) return job;
  const transfer = new Set<ArrayBuffer>();
  for (const m of job.method.members) {
    if ('delta' in m) continue;
    for (const a of [m.up, m.down])
      if (a.buffer instanceof ArrayBuffer && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength)
        transfer.add(a.buffer);
  }
  return { ...job, transfer: [...transfer] };
}

const yieldToEvents = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Spread the reductions of a merge over worker threads. Same arguments, result and errors as mergeLoras. */
export async function mergeLorasParallel(
  loras: readonly Lora<Term>[],
  weights: readonly MergeWeight[],
  options: ParallelMergeOptions = {},
): Promise<MergeResult> {
  const plan = planMerge(loras, weights, options);
  const jobs = plan.modules.filter((pm) => pm.action === 'reduce' || pm.action === 'method');
  const threads = Math.max(1, Math.min(Math.floor(options.threads ?? availableParallelism()), jobs.length));
  if (jobs.length === 0 || threads <= 1) return mergeLoras(loras, weights, options);
  // Running from TypeScript sources without tsx to load them in a worker: reduce on this thread.
  const pool = ReducePool.start(threads);
  if (!pool) return mergeLoras(loras, weights, options);

  const total = plan.modules.length;
  let done = 0;
  const tick = (): void => {
    done++;
    options.onProgress?.(done, total);
  };
  const outcomes = new Map<string, ReduceOutcome>();
  const built = new Map<string, LoraModule>();
  let failed = false;
  try {
    const reductions = Promise.all(
      jobs.map((pm) =>
        pool
          .run(pm.path, () => reduceJob(plan, pm))
          .then((o) => {
            outcomes.set(pm.path, o);
            tick();
          }),
      ),
    ).catch((e: unknown) => {
      failed = true;
      throw e;
    });
    // Meanwhile, the exact and dropped modules on this thread, yielding so replies are handled promptly.
    const exact = (async () => {
      for (const pm of plan.modules) {
        if (failed) return;
        if (pm.action === 'reduce' || pm.action === 'method') continue;
        if (pm.action === 'exact') built.set(pm.path, exactModule(pm));
        tick();
        await yieldToEvents();
      }
    })().catch((e: unknown) => {
      failed = true;
      throw e;
    });
    await Promise.all([reductions, exact]);
  } finally {
    await pool.close();
  }
  // Modules whose reduction kept every singular value are written exactly.
  for (const pm of jobs) {
    if (pm.action === 'method') continue;
    const o = outcomes.get(pm.path)!;
    if (o.k >= pm.rankBefore) built.set(pm.path, exactModule(pm));
  }
  return assembleMerge(plan, outcomes, built);
}
