/**
 * mergeLorasParallel (Node only): the same merge as mergeLoras, with the rank reductions spread over worker
 * threads (one per core by default). Each module is independent, so the work splits module by module; the main
 * thread plans, copies each module's factors to a worker, builds the exact modules meanwhile, and assembles the
 * result in layout order. Results are identical to mergeLoras (the same code reduces each module).
 */
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { LoraError, type LoraErrorCode } from '../core/errors.js';
import type { LoraModule, Lora, Term } from '../lora/types.js';
import {
  assembleMerge,
  exactModule,
  factorTerms,
  mergeLoras,
  methodRequest,
  planMerge,
  type MergeOptions,
  type MergeResult,
  type MergeWeight,
  type PlannedMergeModule,
} from '../lora/merge.js';
import type { ReduceOutcome } from '../lora/reduce.js';
import type { ReduceRequest } from './reduce-worker.js';

export type ParallelMergeOptions = MergeOptions & {
  /** Worker threads for rank reduction (default: os.availableParallelism()). 1 runs mergeLoras on this thread. */
  readonly threads?: number;
};

/**
 * The worker script next to this file. Under a TypeScript loader (tsx, vitest) that is the .ts source, which the
 * worker loads after registering tsx's ESM hooks itself (hooks given on the command line do not reach workers).
 */
function workerSpec(): { entry: string; tsxApi: string | null } {
  const here = import.meta.url;
  const isTs = /\.ts$/.test(new URL(here).pathname);
  return {
    entry: new URL(`./reduce-worker.${isTs ? 'ts' : 'js'}`, here).href,
    tsxApi: isTs
      ? new URL('dist/esm/api/index.mjs', pathToFileURL(createRequire(here).resolve('tsx/package.json'))).href
      : null,
  };
}

const BOOT = `
const { workerData } = require('node:worker_threads');
(async () => {
  if (workerData.tsxApi) (await import(workerData.tsxApi)).register();
  await import(workerData.entry);
})().catch((e) => { setImmediate(() => { throw e; }); });
`;

/** A typed array that owns its whole buffer (posting a view would copy the entire underlying buffer). */
const own = (a: Float32Array): Float32Array =>
  a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice();

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
  let spec: ReturnType<typeof workerSpec>;
  try {
    spec = workerSpec();
  } catch {
    // Running from TypeScript sources without tsx to load them in a worker: reduce on this thread.
    return mergeLoras(loras, weights, options);
  }

  const total = plan.modules.length;
  let done = 0;
  const tick = (): void => {
    done++;
    options.onProgress?.(done, total);
  };
  const outcomes = new Map<string, ReduceOutcome>();
  const built = new Map<string, LoraModule>();
  const workers: Worker[] = [];
  let failed = false;
  try {
    const reductions = new Promise<void>((resolve, reject) => {
      let next = 0;
      let finished = 0;
      const byId = new Map<number, PlannedMergeModule>();
      const fail = (e: unknown): void => {
        if (!failed) {
          failed = true;
          reject(e);
        }
      };
      const send = (w: Worker): void => {
        if (failed || next >= jobs.length) return;
        const id = next++;
        const pm = jobs[id]!;
        byId.set(id, pm);
        const terms =
          pm.action === 'method' ? [] : factorTerms(pm).map((t) => ({ ...t, up: own(t.up), down: own(t.down) }));
        const request: ReduceRequest = {
          id,
          path: pm.path,
          out: pm.out,
          fanIn: pm.fanIn,
          target: plan.target!,
          terms,
          ...(pm.action === 'method' ? { method: methodRequest(plan, pm) } : {}),
        };
        w.postMessage(request);
      };
      for (let t = 0; t < threads; t++) {
        const w = new Worker(BOOT, { eval: true, workerData: spec });
        workers.push(w);
        w.on('error', (e) =>
          fail(
            new LoraError('LORA_WORKER_FAILED', `merge: a rank-reduction worker thread failed: ${e.message}`, {
              found: e.message,
            }),
          ),
        );
        w.on('exit', (code) => {
          if (code !== 0 && finished < jobs.length)
            fail(
              new LoraError(
                'LORA_WORKER_FAILED',
                `merge: a rank-reduction worker thread stopped with exit code ${code}`,
                { found: code },
              ),
            );
        });
        w.on(
          'message',
          (msg: {
            id: number;
            outcome?: ReduceOutcome;
            error?: { message: string; code?: unknown; details?: unknown };
          }) => {
            if (msg.error) {
              const path = byId.get(msg.id)?.path;
              const { message, code, details } = msg.error;
              fail(
                typeof code === 'string' && code.startsWith('LORA_')
                  ? new LoraError(code as LoraErrorCode, message, {
                      ...(details as Record<string, unknown>),
                      key: path,
                    })
                  : new LoraError(
                      'LORA_WORKER_FAILED',
                      `merge: reducing module '${path}' failed in a worker thread: ${message}`,
                      { key: path },
                    ),
              );
              return;
            }
            const pm = byId.get(msg.id)!;
            byId.delete(msg.id);
            outcomes.set(pm.path, msg.outcome!);
            send(w);
            tick();
            if (++finished === jobs.length) resolve();
          },
        );
        // Two jobs per worker: it never waits for the main thread between modules.
        send(w);
        send(w);
      }
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
    })();
    await Promise.all([
      reductions,
      exact.catch((e: unknown) => {
        failed = true;
        throw e;
      }),
    ]);
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
  // Modules whose reduction kept every singular value are written exactly.
  for (const pm of jobs) {
    if (pm.action === 'method') continue;
    const o = outcomes.get(pm.path)!;
    if (o.k >= pm.rankBefore) built.set(pm.path, exactModule(pm));
  }
  return assembleMerge(plan, outcomes, built);
}
