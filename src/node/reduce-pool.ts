/**
 * A pool of rank-reduction worker threads (Node only), shared by mergeLorasParallel and the streaming method merge:
 * each worker (./reduce-worker.ts) reduces one module at a time; the pool keeps two requests in flight per worker so
 * a worker never waits for the main thread between modules. A request is built only when it is dispatched (its
 * factors are copied to the worker then), so queueing every module costs nothing.
 */
import type { Worker } from 'node:worker_threads';
import { LoraError, type LoraErrorCode, OptionError } from '../core/errors.js';
import type { ReduceOutcome } from '../lora/reduce.js';
import type { ReduceRequest } from './reduce-worker.js';
import { sendRequest, startWorker, type WorkerSpec, workerSpec } from './worker-boot.js';

/** A typed array that owns its whole buffer (posting a view would copy the entire underlying buffer). */
export const ownBuffer = (a: Float32Array): Float32Array =>
  a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice();

/**
 * What a caller asks the pool to do for one module (the pool adds the id). `transfer`: buffers of the request that
 * the caller hands over (moved to the worker, not copied; unusable here afterwards).
 */
export type ReduceJob = Omit<ReduceRequest, 'id'> & { readonly transfer?: readonly ArrayBuffer[] };

interface Pending {
  readonly id: number;
  readonly path: string;
  readonly make: () => ReduceJob;
  readonly resolve: (o: never) => void;
  readonly reject: (e: unknown) => void;
}

/** Requests in flight per worker. */
const DEPTH = 2;

export class ReducePool {
  private readonly queue: Pending[] = [];
  private readonly inFlight = new Map<Worker, Map<number, Pending>>();
  private nextId = 0;
  private failure: unknown = null;

  private constructor(private readonly workers: readonly Worker[]) {
    for (const w of workers) {
      this.inFlight.set(w, new Map());
      w.on('error', (e) =>
        this.fail(
          new LoraError('LORA_WORKER_FAILED', `merge: a rank-reduction worker thread failed: ${e.message}`, {
            found: e.message,
          }),
        ),
      );
      w.on('exit', (code) => {
        if (code !== 0 && this.failure === null)
          this.fail(
            new LoraError(
              'LORA_WORKER_FAILED',
              `merge: a rank-reduction worker thread stopped with exit code ${code}`,
              {
                found: code,
              },
            ),
          );
      });
      w.on('message', (msg: { id: number; outcome?: ReduceOutcome; error?: WorkerError }) => this.reply(w, msg));
    }
  }

  /** Start `threads` workers, or null when they cannot be started here (TypeScript sources without tsx). */
  static start(threads: number): ReducePool | null {
    // A pool without a worker would queue every request forever (NaN gets here through the callers' Math.max/min),
    // and Infinity would start workers forever.
    if (!(Number.isFinite(threads) && threads >= 1)) {
      throw new OptionError('OPTION_INVALID', `threads must be a finite number ≥ 1, found ${String(threads)}`, {
        option: 'threads',
        found: threads,
      });
    }
    let spec: WorkerSpec;
    try {
      spec = workerSpec('reduce-worker');
    } catch {
      return null;
    }
    const workers: Worker[] = [];
    for (let t = 0; t < threads; t++) workers.push(startWorker(spec));
    return new ReducePool(workers);
  }

  /**
   * Reduce one module on a worker; `make` builds the request when a worker is free for it. The outcome is a
   * ReduceOutcome, or a ModuleConvertOutcome for a `convert` request (the caller names which).
   */
  run<O = ReduceOutcome>(path: string, make: () => ReduceJob): Promise<O> {
    if (this.failure !== null) return Promise.reject(this.failure);
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, path, make, resolve, reject });
      this.dispatch();
    });
  }

  /** Stop the workers (pending requests are rejected). */
  async close(): Promise<void> {
    if (this.failure === null) this.failure = new LoraError('LORA_WORKER_FAILED', 'merge: the worker pool was closed');
    this.rejectAll(this.failure);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private dispatch(): void {
    for (const w of this.workers) {
      const mine = this.inFlight.get(w);
      while (mine && mine.size < DEPTH && this.queue.length > 0) {
        const p = this.queue.shift();
        if (!p) break;
        let job: ReduceJob;
        try {
          job = p.make();
        } catch (e) {
          p.reject(e);
          continue;
        }
        const { transfer, ...request } = job;
        const unsent = sendRequest(w, { ...request, id: p.id } satisfies ReduceRequest, transfer, 'merge', p.path);
        if (unsent) {
          p.reject(unsent); // no reply will come: it holds none of the worker's slots
          continue;
        }
        mine.set(p.id, p);
      }
    }
  }

  private reply(w: Worker, msg: { id: number; outcome?: ReduceOutcome; error?: WorkerError }): void {
    const mine = this.inFlight.get(w);
    const p = mine?.get(msg.id);
    if (!mine || !p) return;
    mine.delete(msg.id);
    if (msg.error) p.reject(workerError(msg.error, p.path));
    else if (msg.outcome) p.resolve(msg.outcome as never);
    else p.reject(workerError({ message: 'no outcome in the reply' }, p.path));
    this.dispatch();
  }

  private fail(e: unknown): void {
    if (this.failure === null) this.failure = e;
    this.rejectAll(e);
  }

  private rejectAll(e: unknown): void {
    for (const p of this.queue.splice(0)) p.reject(e);
    for (const mine of this.inFlight.values()) {
      for (const p of mine.values()) p.reject(e);
      mine.clear();
    }
  }
}

interface WorkerError {
  readonly message: string;
  readonly code?: unknown;
  readonly details?: unknown;
}

/** A worker's error as the typed error it was (LORA_*), or LORA_WORKER_FAILED naming the module. */
function workerError({ message, code, details }: WorkerError, path: string): LoraError {
  return typeof code === 'string' && code.startsWith('LORA_')
    ? new LoraError(code as LoraErrorCode, message, { ...(details as Record<string, unknown>), key: path })
    : new LoraError('LORA_WORKER_FAILED', `merge: reducing module '${path}' failed in a worker thread: ${message}`, {
        key: path,
      });
}
