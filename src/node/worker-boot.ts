/**
 * Starting a worker thread on one of the worker scripts next to this file (reduce-worker, extract-worker), from
 * the built .js or — under a TypeScript loader (tsx, vitest) — from the .ts source, which the worker loads after
 * registering tsx's ESM hooks itself (hooks given on the command line do not reach workers).
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';

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
