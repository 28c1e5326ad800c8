/**
 * Worker-thread side of mergeLorasParallel (Node only): reduces the modules it is sent, one at a time, with its
 * own RankReducer, and sends back the outcome with the new factors' buffers transferred (not copied).
 *
 * Message in:  { id, path, out, fanIn, target, terms: [{ coef, rank, up: Float32Array, down: Float32Array }], method? }
 * Message out: { id, outcome } or { id, error: { message, code, details } }
 */
import { parentPort } from 'node:worker_threads';
import { RankReducer, reduceModule, type FactorTerm, type RankTarget } from '../lora/reduce.js';
import { DenseScratch, methodModule, type MethodModuleRequest } from '../lora/method-module.js';

export interface ReduceRequest {
  readonly id: number;
  readonly path: string;
  readonly out: number;
  readonly fanIn: number;
  readonly target: RankTarget;
  readonly terms: readonly FactorTerm[];
  /** A delta-space merge method on this module instead of a reduction of `terms`. */
  readonly method?: MethodModuleRequest;
}

if (parentPort) {
  const port = parentPort;
  const reducer = new RankReducer();
  const scratch = new DenseScratch();
  port.on('message', (msg: ReduceRequest) => {
    try {
      const outcome = msg.method
        ? methodModule(msg.method, msg.target, scratch)
        : reduceModule(reducer, msg.terms, msg.out, msg.fanIn, msg.target, msg.path);
      const transfer = outcome.factors ? [outcome.factors.up.buffer, outcome.factors.down.buffer] : [];
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
