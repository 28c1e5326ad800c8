/**
 * Starting a worker thread on one of the worker scripts next to this file (reduce-worker, extract-worker), from
 * the built .js or — under a TypeScript loader (tsx, vitest) — from the .ts source, which the worker loads after
 * registering tsx's ESM hooks itself (hooks given on the command line do not reach workers).
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { type Transferable, Worker } from 'node:worker_threads';
import { LoraError } from '../core/errors.js';

export interface WorkerSpec {
  readonly entry: string;
  readonly tsxApi: string | null;
}

/** Where the worker script `name` is and, when it is TypeScript, tsx's API to load it. Throws when tsx is missing. */
export function workerSpec(name: string): WorkerSpec {
  const here = import.meta.url;
  const isTs = /\.ts$/.test(new URL(here).pathname);
  return {
    entry: new URL(`./${name}.${isTs ? 'ts' : 'js'}`, here).href,
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

/** A worker thread running the script of `spec`. */
export function startWorker(spec: WorkerSpec): Worker {
  return new Worker(BOOT, { eval: true, workerData: spec });
}

/**
 * Post a module's request to a pool worker. When it cannot be sent (a value that cannot be cloned, no memory for the
 * copy) no reply will ever come: the caller gets the LORA_WORKER_FAILED error to reject that request with — it must
 * not count the request as in flight — instead of a throw (which, from a worker's 'message' listener, would be
 * uncaught). `command` and `path` name the request in the message.
 */
export function sendRequest(
  w: Worker,
  message: unknown,
  transfer: readonly Transferable[] | undefined,
  command: string,
  path: string,
): LoraError | null {
  try {
    w.postMessage(message, transfer ? [...transfer] : undefined);
    return null;
  } catch (e) {
    return new LoraError(
      'LORA_WORKER_FAILED',
      `${command}: module '${path}' could not be sent to a worker thread: ${e instanceof Error ? e.message : String(e)}`,
      { key: path },
    );
  }
}
