/**
 * The base-dependent deltas on worker threads (src/node/delta-pool.ts: termWeightedDelta on the reduce workers, an
 * OFT / BOFT delta cut into column ranges, one per thread) give the bits of termWeightedDelta on this thread: SDXL-sized
 * synthetic OFT and BOFT terms (conv shape, rescale, constraint, strengths 1 and 0.7), every base-dependent fixture
 * (OFT, kohya OFT, oft_diag, BOFT, DoRA, GLoRA) module by module, and resolveBaseTerms with the pool against without.
 */
import ndarray from 'ndarray';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import '../src/node.js';
import { loadLora } from '../src/formats/index.js';
import { resolveBaseTerms } from '../src/fuse/index.js';
import type { DeltaPool } from '../src/fuse/base-terms.js';
import { termNeedsBase, termWeightedDelta } from '../src/lora/terms/index.js';
import type { BoftTerm, DenseTerm, OftTerm, Term } from '../src/lora/types.js';
import { createDeltaPool } from '../src/node/delta-pool.js';
import { BASE, adapter, baseWeights } from './oft-helpers.js';

let pool: DeltaPool;
beforeAll(() => {
  const p = createDeltaPool(2);
  if (!p) throw new Error('no worker threads here');
  pool = p;
});
afterAll(async () => {
  await pool.close();
});

function random(n: number, seed: number, scale = 0.05): Float32Array {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return a;
}

/** Index of the first value whose bits differ, -1 when none. */
function firstDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return -2;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return i;
  return -1;
}

const oft: OftTerm = {
  kind: 'oft',
  shape: [640, 320, 3, 3],
  blocks: ndarray(random(40 * 16 * 16, 3, 0.3), [40, 16, 16]),
  cayley: true,
  constraint: 0.5 * 640,
  rescale: random(640, 4, 1).map((x) => 1 + x),
};
const boft: BoftTerm = {
  kind: 'boft',
  shape: [1280, 1283],
  blocks: ndarray(random(3 * 80 * 16 * 16, 5, 0.2), [3, 80, 16, 16]),
  constraint: 0,
  rescale: random(1280, 6, 1).map((x) => 1 + x),
};

describe('deltas on the pool = termWeightedDelta here, bit for bit', () => {
  for (const [name, t] of [
    ['OFT 640×320×3×3, 40 blocks of 16, rescale, constraint', oft],
    ['BOFT 1280×1283 (odd columns), 3 stages of 80 blocks of 16, rescale', boft],
    ['OFT narrower than two column ranges (one range)', { ...oft, shape: [640, 40] }],
  ] as [string, Term][]) {
    for (const w of [1, 0.7]) {
      it(`${name}, strength ${w}`, async () => {
        const n = (t as OftTerm).shape.reduce((a, b) => a * b, 1);
        const w0 = random(n, 7, 0.2);
        const want = termWeightedDelta(t, name, w, w0);
        expect(firstDifference(await pool.weightedDelta(t, name, w, w0), want)).toBe(-1);
      });
    }
  }

  it('every base-dependent fixture, module by module', async () => {
    let modules = 0;
    for (const kind of ['oft', 'oft-kohya', 'oft-diag', 'boft', 'dora-out', 'dora-in', 'glora']) {
      const lora = await loadLora(adapter(kind));
      const paths = [...lora.modules].filter(([, t]) => termNeedsBase(t)).map(([p]) => p);
      const bases = await baseWeights(paths);
      for (const p of paths) {
        const t = lora.modules.get(p)!;
        for (const w of [1, -0.6]) {
          const want = termWeightedDelta(t, p, w, bases.get(p));
          expect(firstDifference(await pool.weightedDelta(t, p, w, bases.get(p)!), want), `${kind} ${p} ${w}`).toBe(-1);
          modules++;
        }
      }
    }
    expect(modules).toBeGreaterThan(50);
  });

  it('resolveBaseTerms with the pool gives the dense terms it gives without', async () => {
    for (const kind of ['oft', 'boft', 'dora-out', 'glora']) {
      const lora = await loadLora(adapter(kind));
      const here = await resolveBaseTerms(lora, BASE);
      const there = await resolveBaseTerms(lora, BASE, pool);
      expect([...there.modules.keys()]).toEqual([...here.modules.keys()]);
      for (const [p, t] of here.modules) {
        const u = there.modules.get(p)!;
        expect(u.kind, p).toBe(t.kind);
        if (t.kind === 'dense') {
          expect(firstDifference((u as DenseTerm).delta.data as Float32Array, t.delta.data as Float32Array), p).toBe(
            -1,
          );
          expect((u as DenseTerm).shape).toEqual(t.shape);
        }
      }
    }
  });
});
