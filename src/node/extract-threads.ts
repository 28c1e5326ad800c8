/**
 * The extract pool (Node only): worker threads that factor extraction modules (src/fuse/extract-module.ts), one
 * module at a time each, so that extractLora keeps `threads` modules in flight while its own thread reads the next
 * pair of weights in file order. Each worker runs the same factorModule as the single-thread path, so the factors
 * do not depend on the thread count. Installed on the fuse host (src/node/install.ts) as `createExtractPool`.
 */
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { errorFromCode, LoraError } from '../core/errors.js';
import type { ExtractJob, ExtractPool, ModuleOutcome } from '../fuse/extract-module.js';
import type { ExtractRequest } from './extract-worker.js';
import { sendRequest, startWorker, workerSpec } from './worker-boot.js';

interface Pending {
  readonly path: string;
  readonly resolve: (o: ModuleOutcome) => void;
  readonly reject: (e: unknown) => void;
}

/** The bytes as a buffer of their own, so they can be transferred (a view into a larger buffer is copied). */
const own = (a: Uint8Array): Uint8Array =>
  a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && a.buffer instanceof ArrayBuffer ? a : a.slice();

/**
 * Default thread count: one per core, at most 4 — each thread keeps up to ≈ 400 MB of buffers for the largest
 * modules it has seen, so more threads cost memory faster than they save time (the reads are sequential).
 */
const DEFAULT_MAX_THREADS = 4;

/**
 * Start `threads` extract workers (default: one per core, at most 4). Returns null when the worker script cannot be located
 * (TypeScript sources without tsx): extractLora then factors on its own thread.
 */
export function createExtractPool(threads?: number): ExtractPool | null {
  const n = Math.max(1, Math.floor(threads ?? Math.min(DEFAULT_MAX_THREADS, availableParallelism())));
  let spec: ReturnType<typeof workerSpec>;
  try {
    spec = workerSpec('extract-worker');
  } catch {
    return null;
  }
  const idle: Worker[] = [];
  const queue: { request: ExtractRequest; pending: Pending }[] = [];
  const busy = new Map<Worker, { id: number; pending: Pending }>();
  const workers: Worker[] = [];
  let nextId = 0;
  let broken: unknown = null;
  let closed = false;

  const failAll = (e: unknown): void => {
    if (!broken) broken = e;
    for (const [, b] of busy) b.pending.reject(e);
    busy.clear();
    for (const q of queue.splice(0)) q.pending.reject(e);
  };
  const dispatch = (): void => {
    while (idle.length > 0 && queue.length > 0) {
      const w = idle.pop() as Worker;
      const { request, pending } = queue.shift() as { request: ExtractRequest; pending: Pending };
      const transfer = [request.job.base.raw.buffer, request.job.tuned.raw.buffer].filter(
        (b, i, all) => all.indexOf(b) === i,
      ) as ArrayBuffer[];
      const unsent = sendRequest(w, request, transfer, 'extract', pending.path);
      if (unsent) {
        idle.push(w); // no reply will come: the worker stays free
        pending.reject(unsent);
        continue;
      }
      busy.set(w, { id: request.id, pending });
    }
  };
  for (let t = 0; t < n; t++) {
    const w = startWorker(spec);
    workers.push(w);
    idle.push(w);
    w.on('error', (e) =>
      failAll(
        new LoraError('LORA_WORKER_FAILED', `extract: a factoring worker thread failed: ${e.message}`, {
          found: e.message,
        }),
      ),
    );
    w.on('exit', (code) => {
      if (!closed && code !== 0)
        failAll(
          new LoraError('LORA_WORKER_FAILED', `extract: a factoring worker thread stopped with exit code ${code}`, {
            found: code,
          }),
        );
    });
    w.on(
      'message',
      (msg: {
        id: number;
        outcome?: ModuleOutcome;
        error?: { message: string; code?: unknown; details?: unknown };
      }) => {
        const b = busy.get(w);
        busy.delete(w);
        idle.push(w);
        if (b) {
          if (msg.error) {
            const { message, code, details } = msg.error;
            b.pending.reject(
              (typeof code === 'string' && errorFromCode(code, message, details as Record<string, unknown>)) ||
                new LoraError(
                  'LORA_WORKER_FAILED',
                  `extract: factoring module '${b.pending.path}' failed in a worker thread: ${message}`,
                  { key: b.pending.path },
                ),
            );
          } else b.pending.resolve(msg.outcome as ModuleOutcome);
        }
        dispatch();
      },
    );
  }
  return {
    threads: n,
    factor(job: ExtractJob): Promise<ModuleOutcome> {
      if (broken) return Promise.reject(broken);
      const request: ExtractRequest = {
        id: nextId++,
        job: {
          ...job,
          base: { ...job.base, raw: own(job.base.raw) },
          tuned: { ...job.tuned, raw: own(job.tuned.raw) },
        },
      };
      return new Promise<ModuleOutcome>((resolve, reject) => {
        queue.push({ request, pending: { path: job.path, resolve, reject } });
        dispatch();
      });
    },
    async close(): Promise<void> {
      closed = true;
      // The workers' exits are expected from here on and reported by nobody: what is queued or in flight fails now
      // (it would never settle), and so does any later request.
      failAll(new LoraError('LORA_WORKER_FAILED', 'extract: the worker pool was closed'));
      await Promise.all(workers.map((w) => w.terminate()));
    },
  };
}
