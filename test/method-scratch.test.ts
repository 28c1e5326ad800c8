/**
 * methodDelta with a worker's DenseScratch (src/lora/method-module.ts): the inputs' deltas share one buffer of
 * `reserve`·(p − 1) floats; a TIES module whose deltas do not fit side by side goes through tiesSparse, the other
 * methods form what does not fit in arrays of their own. Every path must give the bytes of the plain methodDelta.
 */
import { describe, expect, it } from 'vitest';
import {
  DenseScratch,
  methodDelta,
  methodModule,
  tiesSparse,
  type MethodModuleRequest,
} from '../src/lora/method-module.js';
import type { MergeMethod } from '../src/lora/methods.js';
import { planMerge } from '../src/lora/merge.js';
import { ownedReduceJob } from '../src/node/merge-threads.js';
import { makeLora, prng, randomArray, randomModule } from './lora-helpers.js';

const bytes = (x: Float32Array): Buffer => Buffer.from(x.buffer, x.byteOffset, x.byteLength);

/** Factor members (rank 4) for inputs 0..p-1, over `out` × `fanIn` (> one vote chunk of 65 536 values). */
function factorRequest(
  rand: () => number,
  method: MergeMethod,
  weights: number[],
  out: number,
  fanIn: number,
  params: Partial<MethodModuleRequest['params']> = {},
): MethodModuleRequest {
  const rank = 4;
  return {
    path: 'unet.m',
    out,
    fanIn,
    members: weights.map((_, input) => ({
      input,
      scale: 0.5 + input,
      rank,
      up: randomArray(rand, out * rank, 0.5),
      down: randomArray(rand, rank * fanIn, 0.5),
    })),
    weights,
    method,
    params: { density: 0.2, majoritySign: 'total', seed: 3, t: 0.5, ...params },
  };
}

/** Dense members whose values repeat (ties at the trim threshold) and include −0, so every bit pattern matters. */
function denseRequest(rand: () => number, weights: number[], n: number): MethodModuleRequest {
  const values = [-0, 0, 1, -1, 2, -2, 0.5, -0.5];
  return {
    path: 'unet.d',
    out: n / 100,
    fanIn: 100,
    members: weights.map((_, input) => ({
      input,
      delta: Float32Array.from({ length: n }, () => values[Math.floor(rand() * values.length)] as number),
    })),
    weights,
    method: 'ties',
    params: { density: 0.3, majoritySign: 'frequency', seed: 0, t: 0.5 },
  };
}

describe('methodDelta with a DenseScratch', () => {
  it('TIES through tiesSparse (deltas that do not fit side by side) gives the bytes of the plain method', () => {
    const rand = prng(91);
    for (const [weights, sign] of [
      [[1, 0.8], 'total'],
      [[1, 0, 0.6], 'frequency'],
    ] as const) {
      const req = factorRequest(rand, 'ties', [...weights], 300, 290, { majoritySign: sign });
      const n = req.out * req.fanIn;
      const want = Float32Array.from(methodDelta(req));
      // reserve = n: the buffer holds n·(p − 1) floats, p·n do not fit → tiesSparse.
      const got = methodDelta({ ...req, reserve: n }, new DenseScratch());
      expect(got.length).toBe(n);
      expect(bytes(got)).toEqual(bytes(want));
      // Called directly too (the path methodDelta takes), and on dense inputs with −0 and ties at the threshold.
      expect(bytes(tiesSparse(req, new Float32Array(n)))).toEqual(bytes(want));
    }
    const d = denseRequest(rand, [1, 0.7], 70_000);
    const want = Float32Array.from(methodDelta(d));
    expect(bytes(tiesSparse(d, new Float32Array(70_000)))).toEqual(bytes(want));
    expect(bytes(methodDelta({ ...d, reserve: 70_000 }, new DenseScratch()))).toEqual(bytes(want));
  });

  it('every method gives the same bytes with a scratch reused across modules of any size and reserve', () => {
    const rand = prng(92);
    const scratch = new DenseScratch();
    for (const method of ['ties', 'magnitude_prune', 'dare_ties', 'dare_linear'] as const) {
      for (const [out, fanIn, reserveOf] of [
        [300, 290, 1], // p·n > reserve: tiesSparse, or fresh arrays beyond the buffer
        [120, 100, 3], // fits
        [310, 300, 1],
        [50, 40, 0], // no reserve: the buffer grows to p·n
      ] as const) {
        const req = factorRequest(rand, method, [1, 0.8], out, fanIn, { density: 0.3 });
        const want = Float32Array.from(methodDelta(req));
        const n = out * fanIn;
        const got = methodDelta(reserveOf > 0 ? { ...req, reserve: reserveOf * n } : req, scratch);
        expect(bytes(got), `${method} ${out}×${fanIn}`).toEqual(bytes(want));
      }
    }
  });
});

describe('methodModule with a DenseScratch (the SVD and its factor start in the workspace)', () => {
  it('gives the factors of a fresh call, module after module, whatever the sizes before', () => {
    const rand = prng(95);
    const scratch = new DenseScratch();
    for (const [out, fanIn, k] of [
      [300, 290, 8],
      [40, 350, 6],
      [260, 30, 12],
      [300, 290, 8],
    ] as const) {
      const req = factorRequest(rand, 'ties', [1, 0.8], out, fanIn, { density: 0.3 });
      const want = methodModule(req, { rank: k });
      const got = methodModule({ ...req, reserve: 300 * 290 }, { rank: k }, scratch);
      expect(got.k).toBe(want.k);
      expect(bytes(got.factors!.up), `${out}×${fanIn} up`).toEqual(bytes(want.factors!.up));
      expect(bytes(got.factors!.down), `${out}×${fanIn} down`).toEqual(bytes(want.factors!.down));
    }
  });
});

describe('ownedReduceJob (the streaming merge hands a method module its factor buffers)', () => {
  it('lists each member factor buffer once for a method module', () => {
    const rand = prng(93);
    const loras = [0, 1].map((i) => makeLora({ 'unet.m': randomModule(rand, { out: 24, in: 20, rank: 4 + i }) }));
    const plan = planMerge(loras, [1, 0.5], { method: 'ties', density: 0.3, rank: 4 });
    const pm = plan.modules.find((m) => m.path === 'unet.m')!;
    const job = ownedReduceJob(plan, pm);
    const buffers = job.method!.members.flatMap((m) => ('delta' in m ? [] : [m.up.buffer, m.down.buffer]));
    expect(buffers.length).toBe(4);
    expect(new Set(job.transfer)).toEqual(new Set(buffers));
    // Posted with that list, the buffers move (detached here) and arrive whole.
    const { port1, port2 } = new MessageChannel();
    const received = new Promise<Float32Array>((resolve) => {
      port2.onmessage = (e) => resolve(((e.data as typeof job).method!.members[0] as { up: Float32Array }).up);
    });
    const up = Float32Array.from((job.method!.members[0] as { up: Float32Array }).up);
    const { transfer, ...request } = job;
    port1.postMessage(request, [...transfer!]);
    expect(buffers.every((b) => b.byteLength === 0)).toBe(true);
    return received.then((got) => {
      expect(bytes(got)).toEqual(bytes(up));
      port1.close();
    });
  });

  it('a rank reduction (no method) transfers nothing: its factors may still be written exactly', () => {
    const rand = prng(94);
    const loras = [0, 1].map(() => makeLora({ 'unet.m': randomModule(rand, { out: 24, in: 20, rank: 4 }) }));
    const plan = planMerge(loras, [1, 0.5], { rank: 4 });
    const pm = plan.modules.find((m) => m.path === 'unet.m')!;
    expect(ownedReduceJob(plan, pm).transfer).toBeUndefined();
  });
});
