/**
 * Worker-thread side of mergeLorasParallel and of convert (Node only): reduces the modules it is sent, one at a time,
 * with its own RankReducer, and sends back the outcome with the new factors' buffers transferred (not copied).
 *
 * Message in:  { id, path, out, fanIn, target, terms: [{ coef, rank, up: Float32Array, down: Float32Array }], method?,
 *                convert?, delta? }
 * Message out: { id, outcome } or { id, error: { message, code, details } }
 */
import { parentPort } from 'node:worker_threads';
import { RankReducer, reduceModule, type FactorTerm, type RankTarget } from '../lora/reduce.js';
import { DenseScratch, methodModule, type MethodModuleRequest } from '../lora/method-module.js';
import { ConvertScratch, convertModule, exactOutcomeF16 } from '../lora/convert-module.js';
import { unpackTerm, type PackedTerm } from '../lora/terms/pack.js';
import { termWeightedDelta } from '../lora/terms/index.js';

export interface ReduceRequest {
  readonly id: number;
  readonly path: string;
  readonly out: number;
  readonly fanIn: number;
  readonly target: RankTarget;
  readonly terms: readonly FactorTerm[];
  /** A delta-space merge method on this module instead of a reduction of `terms`. */
  readonly method?: MethodModuleRequest;
  /** convert: one module of any kind, exact (`exact`) or to `target` (src/lora/convert-module.ts). */
  /** `f16`: an exact conversion with the factors formed as F16 bits (exactOutcomeF16). */
  readonly convert?: { readonly term: PackedTerm; readonly exact: boolean; readonly f16?: boolean };
  /**
   * A base-dependent delta (src/node/delta-pool.ts): termWeightedDelta(term, path, w, base), the f64 work of OFT,
   * BOFT, DoRA and GLoRA off the caller's thread; the outcome is the delta (Float32Array).
   */
  readonly delta?: { readonly term: PackedTerm; readonly w: number; readonly base: Float32Array };
}

/**
 * The buffers of an outcome's arrays (f32 factors, F16 bits; up to three levels of plain objects deep), each once
 * (a buffer listed twice cannot be transferred).
 */
function buffersOf(outcome: object): ArrayBuffer[] {
  const seen = new Set<ArrayBuffer>();
  const visit = (x: unknown, depth: number): void => {
    if (x instanceof Float32Array || x instanceof Uint16Array) {
      if (x.buffer instanceof ArrayBuffer) seen.add(x.buffer);
    } else if (x && typeof x === 'object' && !ArrayBuffer.isView(x) && depth < 3) {
      for (const v of Object.values(x)) visit(v, depth + 1);
    }
  };
  visit(outcome, 0);
  return [...seen];
}

if (parentPort) {
  const port = parentPort;
  const reducer = new RankReducer();
  const scratch = new DenseScratch();
  let convertScratch: ConvertScratch | undefined;
  port.on('message', (msg: ReduceRequest) => {
    try {
      const outcome = msg.delta
        ? termWeightedDelta(unpackTerm(msg.delta.term), msg.path, msg.delta.w, msg.delta.base)
        : msg.convert
          ? msg.convert.exact && msg.convert.f16
            ? exactOutcomeF16(unpackTerm(msg.convert.term), msg.path)
            : convertModule(
                unpackTerm(msg.convert.term),
                msg.path,
                msg.convert.exact ? undefined : msg.target,
                (convertScratch ??= new ConvertScratch()),
              )
          : msg.method
            ? methodModule(msg.method, msg.target, scratch)
            : reduceModule(reducer, msg.terms, msg.out, msg.fanIn, msg.target, msg.path);
      port.postMessage({ id: msg.id, outcome }, buffersOf(outcome));
    } catch (e) {
      const err = e as Error & { code?: unknown; details?: unknown };
      port.postMessage({
        id: msg.id,
        error: { message: err?.message ?? String(e), code: err?.code, details: err?.details },
      });
    }
  });
}
