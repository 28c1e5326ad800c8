/**
 * Worker-thread side of the extract pool (src/node/extract-threads.ts): factors the modules it is sent, one at a
 * time, with one ExtractWorkspace reused across them, and sends back the outcome with the factors' bytes
 * transferred (not copied).
 *
 * Message in:  { id, job: ExtractJob }     (the job's weight bytes transferred)
 * Message out: { id, outcome } or { id, error: { message, code, details } }
 */
import { parentPort } from 'node:worker_threads';
import { ExtractWorkspace, factorModule, type ExtractJob } from '../fuse/extract-module.js';

export interface ExtractRequest {
  readonly id: number;
  readonly job: ExtractJob;
}

if (parentPort) {
  const port = parentPort;
  const workspace = new ExtractWorkspace();
  port.on('message', (msg: ExtractRequest) => {
    try {
      const outcome = factorModule(msg.job, workspace);
      const transfer = outcome.zero ? [] : [outcome.up.buffer, outcome.down.buffer];
      port.postMessage({ id: msg.id, outcome }, transfer as ArrayBuffer[]);
    } catch (e) {
      const err = e as Error & { code?: unknown; details?: unknown };
      port.postMessage({
        id: msg.id,
        error: { message: err?.message ?? String(e), code: err?.code, details: err?.details },
      });
    }
  });
}
