/**
 * The streamed conversion (src/node/convert-stream.ts: module by module, worker threads, exact factors formed as
 * the writer asks, reduced factors spilled) against the in-memory one (convertLora + saveLora): the same bytes for a
 * file mixing LoHa, LoKr, LoCon-with-Tucker, full diffs and plain LoRA modules, exact and under rank targets, on one
 * and on two threads. And the per-module conversion on both of its spectrum paths (factor-space Grams, dense delta +
 * randomized SVD) against a dense f64 reference: the written error is within 0.1 % of the Eckart–Young optimum and
 * the reported error is the error of the factors written.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ndarray from 'ndarray';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import '../src/node.js';
import { syntheticAdapter, type AdapterFixtureKind } from '../src/fixtures/adapters.js';
import { loadLora, saveLora } from '../src/formats/index.js';
import { VERSION } from '../src/core/version.js';
import { convertedMetadata, convertLora } from '../src/lora/convert.js';
import { MERGE_METADATA_KEY, VERSION_METADATA_KEY } from '../src/lora/merge.js';
import { convertModule } from '../src/lora/convert-module.js';
import { kindCounts, termDelta } from '../src/lora/terms/index.js';
import type { HadamardTerm, LoraModule } from '../src/lora/types.js';
import { convertLoraParallel, convertStreaming } from '../src/node/convert-stream.js';
import { writeSafetensors, type TensorToWrite } from '../src/safetensors/index.js';
import { diffNorm, frob, singularValues } from './lora-helpers.js';

let dir: string;
let mixed: string;

/** Module i of the sample targets gets kind i mod 5: one file holding five kinds (LoRA from a plain generator). */
const KINDS: readonly (AdapterFixtureKind | 'lora')[] = ['loha', 'lokr', 'locon-tucker', 'full', 'lora'];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-mix-convert-stream-'));
  const byKind = new Map<string, Map<string, TensorToWrite[]>>();
  let order: string[] = [];
  for (const kind of KINDS) {
    const spec =
      kind === 'lora'
        ? {
            kind: 'locon-tucker' as const,
            rank: 3,
            alpha: 2,
            targets: 'sample' as const,
            seed: 7,
            dtype: 'F32' as const,
          }
        : { kind, rank: 3, alpha: 2, targets: 'sample' as const, seed: 11, dtype: 'F32' as const };
    const groups = new Map<string, TensorToWrite[]>();
    for (const t of syntheticAdapter('sd15', 'tiny', spec).tensors) {
      const name = t.name.slice(0, t.name.indexOf('.'));
      // the plain LoRA: LoCon modules without their Tucker core (3×3 convs are then flat LoCon factors)
      if (kind === 'lora' && t.name.includes('lora_mid')) continue;
      groups.set(name, [...(groups.get(name) ?? []), t]);
    }
    if (order.length === 0) order = [...groups.keys()];
    byKind.set(kind, groups);
  }
  const tensors: TensorToWrite[] = [];
  order.forEach((name, i) => {
    const kind = KINDS[i % KINDS.length]!;
    let group = byKind.get(kind)?.get(name);
    // a plain LoRA 3×3 conv without its Tucker core has a [r, in, 3, 3] down and no mid: keep it only when linear
    if (kind === 'lora' && group?.some((t) => t.shape.length === 4 && (t.shape[2] ?? 1) > 1)) group = undefined;
    tensors.push(...(group ?? byKind.get('loha')!.get(name)!));
  });
  mixed = join(dir, 'mixed.safetensors');
  await writeSafetensors(mixed, tensors, { metadata: { format: 'pt', ss_network_dim: '3' } });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const SAVE = { format: 'peft' as const, metadata: { note: 'test' } };

type Save = typeof SAVE & { dtype?: 'F16' };

async function streamed(
  name: string,
  target: { rank?: number; minEnergy?: number } | undefined,
  threads: number,
  save: Save = SAVE,
) {
  const out = join(dir, `${name}-streamed-${threads}.safetensors`);
  const s = await convertStreaming(mixed, out, { ...(target ? { target } : {}), threads });
  if (!s) throw new Error('the mixed file took the in-memory path');
  let stats;
  try {
    stats = (await s.save(out, save)).stats;
  } finally {
    await s.dispose();
  }
  return { bytes: await readFile(out), report: s.report, stats };
}

async function inMemory(name: string, target: { rank?: number; minEnergy?: number } | undefined, save: Save = SAVE) {
  const out = join(dir, `${name}-memory.safetensors`);
  const c = convertLora(await loadLora(mixed), target);
  const { stats } = await saveLora(c.lora, out, save);
  return { bytes: await readFile(out), report: c.report, stats };
}

describe('streamed convert of a mixed-kind file = in-memory convert, byte for byte', () => {
  it('the fixture mixes the kinds', async () => {
    const counts = kindCounts(await loadLora(mixed));
    expect(Object.keys(counts).length).toBeGreaterThanOrEqual(4);
    expect(counts.hadamard ?? 0).toBeGreaterThan(0);
    expect(counts.kronecker ?? 0).toBeGreaterThan(0);
    expect(counts.dense ?? 0).toBeGreaterThan(0);
    expect(counts.lowRank ?? 0).toBeGreaterThan(0);
  });

  for (const [name, target] of [
    ['exact', undefined],
    ['rank2', { rank: 2 }],
    ['energy', { minEnergy: 0.9 }],
  ] as const) {
    it(`${name}: 1 and 2 threads give the in-memory bytes and report`, async () => {
      const ref = await inMemory(name, target);
      for (const threads of [1, 2]) {
        const s = await streamed(name, target, threads);
        expect(Buffer.compare(s.bytes, ref.bytes), `${name}, ${threads} thread(s)`).toBe(0);
        expect(JSON.stringify(s.report?.modules.map((m) => [m.path, m.rankAfter, m.relativeError]))).toBe(
          JSON.stringify(ref.report?.modules.map((m) => [m.path, m.rankAfter, m.relativeError])),
        );
      }
      // the in-memory path on worker threads (what --base / weighted inputs take)
      const out = join(dir, `${name}-memory-threads.safetensors`);
      const p = await convertLoraParallel(await loadLora(mixed), target, { threads: 2 });
      await saveLora(p.lora, out, SAVE);
      expect(Buffer.compare(await readFile(out), ref.bytes), `${name}, in memory on 2 threads`).toBe(0);
      if (target) expect(ref.report?.reduced ?? 0).toBeGreaterThan(0);
    });
  }

  it('the written metadata carries the conversion record (lora_mix_merge, lora_mix_version), streamed and in memory', async () => {
    for (const [target, record] of [
      [undefined, { exact: true }],
      [{ rank: 2 }, { rank: 2 }],
      [{ minEnergy: 0.9 }, { minEnergy: 0.9 }],
    ] as const) {
      const expected = JSON.stringify({ convert: record });
      expect(convertLora(await loadLora(mixed), target).lora.metadata[MERGE_METADATA_KEY]).toBe(expected);
      const s = await convertStreaming(mixed, join(dir, 'record.safetensors'), target ? { target, threads: 1 } : {});
      await s?.dispose();
      expect(s?.lora.metadata[MERGE_METADATA_KEY]).toBe(expected);
      expect(s?.lora.metadata[VERSION_METADATA_KEY]).toBe(VERSION);
    }
  });

  it('the metadata stops describing the trained network: a LyCORIS file becomes networks.lora without its dim, alpha and algo args; a plain kohya LoRA converted exactly keeps its own', () => {
    const lycoris = {
      ss_network_module: 'lycoris.kohya',
      ss_network_dim: '32',
      ss_network_alpha: '16',
      ss_network_args: '{"algo": "loha", "conv_dim": "8"}',
      sshs_model_hash: 'abc',
      ss_output_name: 'style',
    };
    for (const target of [undefined, { rank: 4 }]) {
      const m = convertedMetadata(lycoris, target);
      expect(m.ss_network_module).toBe('networks.lora');
      for (const k of ['ss_network_dim', 'ss_network_alpha', 'ss_network_args', 'sshs_model_hash']) {
        expect(m[k], k).toBeUndefined();
      }
      expect(m.ss_output_name).toBe('style');
    }
    const plain = { ss_network_module: 'networks.lora', ss_network_dim: '8', ss_network_args: '{"conv_dim": "4"}' };
    const exact = convertedMetadata(plain, undefined);
    expect([exact.ss_network_module, exact.ss_network_dim, exact.ss_network_args]).toEqual([
      'networks.lora',
      '8',
      '{"conv_dim": "4"}',
    ]);
    const ranked = convertedMetadata(plain, { rank: 4 });
    expect(ranked.ss_network_dim).toBeUndefined();
    expect(ranked.ss_network_args).toBe('{"conv_dim": "4"}');
  });

  it("the dims that had to go are those of the written file, as kohya's resize_lora.py writes them: the common rank and alpha, else 'Dynamic'", () => {
    const mod = (r: number, alpha: number): LoraModule => ({
      up: ndarray(new Float32Array(0), [8, r]),
      down: ndarray(new Float32Array(0), [r, 8]),
      alpha,
    });
    const lycoris = { ss_network_module: 'lycoris.kohya', ss_network_dim: '32', ss_network_alpha: '16' };
    const plain = { ss_network_module: 'networks.lora', ss_network_dim: '8', ss_network_alpha: '4' };
    const dims = (m: Record<string, string>) => [m.ss_network_dim, m.ss_network_alpha];
    // ranks that differ per module: 'Dynamic' for both
    expect(dims(convertedMetadata(lycoris, undefined, [mod(1024, 1024), mod(640, 640)]))).toEqual([
      'Dynamic',
      'Dynamic',
    ]);
    expect(dims(convertedMetadata(plain, { rank: 4 }, [mod(4, 4), mod(3, 3)]))).toEqual(['Dynamic', 'Dynamic']);
    // one rank and alpha: those
    expect(dims(convertedMetadata(plain, { rank: 4 }, [mod(4, 4), mod(4, 4)]))).toEqual(['4', '4']);
    expect(dims(convertedMetadata(lycoris, undefined, [mod(64, 64)]))).toEqual(['64', '64']);
    // a plain LoRA converted exactly keeps its own; an input without them gets none; nothing written: none
    expect(dims(convertedMetadata(plain, undefined, [mod(3, 3), mod(4, 4)]))).toEqual(['8', '4']);
    expect(dims(convertedMetadata({ ss_network_module: 'lycoris.kohya' }, undefined, [mod(4, 4)]))).toEqual([
      undefined,
      undefined,
    ]);
    expect(dims(convertedMetadata(lycoris, undefined, []))).toEqual([undefined, undefined]);
  });

  it('a LyCORIS LoHa file converted (streamed and in memory, exact and --rank) names the written dims', async () => {
    const loha = join(dir, 'loha-meta.safetensors');
    const a = syntheticAdapter('sd15', 'tiny', {
      kind: 'loha',
      rank: 3,
      alpha: 2,
      targets: 'sample',
      seed: 5,
      dtype: 'F32',
    });
    await writeSafetensors(loha, a.tensors, {
      metadata: { ...a.metadata, ss_network_module: 'lycoris.kohya', ss_network_dim: '3', ss_network_alpha: '2' },
    });
    for (const target of [undefined, { rank: 2 }]) {
      const streamed = await convertStreaming(loha, join(dir, 'meta-out.safetensors'), {
        threads: 1,
        ...(target ? { target } : {}),
      });
      try {
        const memory = convertLora(await loadLora(loha), target).lora;
        const ranks = new Set([...memory.modules.values()].map((m) => m.down.shape[0]));
        const want = ranks.size > 1 ? 'Dynamic' : String([...ranks][0]);
        expect(memory.metadata.ss_network_dim).toBe(want);
        expect(streamed!.lora.metadata.ss_network_dim).toBe(want);
        expect(streamed!.lora.metadata.ss_network_alpha).toBe(memory.metadata.ss_network_alpha);
      } finally {
        await streamed?.dispose();
      }
    }
  });

  it('exact, written as F16: the factors formed and encoded on the workers (exactOutcomeF16) give the bytes and the flush count of the f32 factors encoded by the writer', async () => {
    const save = { ...SAVE, dtype: 'F16' as const };
    const ref = await inMemory('exact-f16', undefined, save);
    for (const threads of [1, 2]) {
      const s = await streamed('exact-f16', undefined, threads, save);
      expect(Buffer.compare(s.bytes, ref.bytes), `F16, ${threads} thread(s)`).toBe(0);
      expect(s.stats).toEqual(ref.stats);
    }
  });
});

/** A seeded LoHa term [out, fanIn] of dims r1 = r2 = r. */
function loha(out: number, fanIn: number, r: number, seed: number): HadamardTerm {
  let s = seed;
  const rand = (n: number): Float32Array =>
    Float32Array.from({ length: n }, () => {
      s = (s * 1103515245 + 12345) % 2147483648;
      return s / 2147483648 - 0.5;
    });
  return {
    kind: 'hadamard',
    shape: [out, fanIn],
    scale: 0.5,
    a: { up: ndarray(rand(out * r), [out, r]), down: ndarray(rand(r * fanIn), [r, fanIn]) },
    b: { up: ndarray(rand(out * r), [out, r]), down: ndarray(rand(r * fanIn), [r, fanIn]) },
  };
}

/** ‖Δ − Δ_k‖/‖Δ‖ of the best rank k, from the singular values. */
function optimal(sigma: Float64Array, k: number): number {
  let all = 0,
    tail = 0;
  sigma.forEach((x, i) => {
    all += x * x;
    if (i >= k) tail += x * x;
  });
  return Math.sqrt(tail / all);
}

describe('--rank error report against a dense reference, on both spectrum paths', () => {
  const cases: [string, HadamardTerm | LoraModule, number, 'dense' | 'factors'][] = [
    // Khatri–Rao rank 64 on a 96 × 80 weight: the dense delta and the randomized SVD
    ['LoHa r1 = r2 = 8', loha(96, 80, 8, 3), 5, 'dense'],
    ['LoHa r1 = r2 = 8 on 120 × 150, rank 12', loha(120, 150, 8, 5), 12, 'dense'],
    // a plain LoRA of rank 6: the exact SVD from the factors' Grams
    [
      'LoRA rank 6',
      {
        up: ndarray(
          Float32Array.from({ length: 40 * 6 }, (_, i) => Math.sin(i * i + 0.3 * i)),
          [40, 6],
        ),
        down: ndarray(
          Float32Array.from({ length: 6 * 50 }, (_, i) => Math.cos(1.7 * i * i)),
          [6, 50],
        ),
        alpha: 3,
      },
      2,
      'factors',
    ],
  ];
  for (const [what, term, k, method] of cases) {
    it(`${what} → rank ${k}`, () => {
      const o = convertModule(term, 'm', { rank: k });
      expect(o.method).toBe(method);
      expect(o.rank).toBe(k);
      const d = Float64Array.from(termDelta(term, 'm'));
      const shape = 'shape' in term ? term.shape : [term.up.shape[0]!, term.down.shape[1]!];
      const [out, n] = [shape[0]!, shape[1]!];
      const w = new Float64Array(out * n);
      for (let i = 0; i < out; i++)
        for (let j = 0; j < n; j++) {
          let acc = 0;
          for (let r = 0; r < o.rank; r++) acc += o.up![i * o.rank + r]! * o.down![r * n + j]!;
          w[i * n + j] = (o.alpha / o.rank) * acc;
        }
      const norm = frob(d);
      const actual = diffNorm(d, w) / norm;
      const best = optimal(singularValues(d, out, n), k);
      expect(best).toBeGreaterThan(1e-3);
      // within 0.1 % of the Eckart–Young optimum, and the reported figure is the written factors' error
      expect(actual).toBeLessThanOrEqual(best * 1.001 + 1e-6);
      expect(actual).toBeGreaterThanOrEqual(best * (1 - 1e-6) - 1e-6);
      expect(Math.abs(o.error / o.norm - actual)).toBeLessThanOrEqual(1e-4 * actual + 1e-6);
      expect(Math.abs(o.norm - norm)).toBeLessThanOrEqual(1e-5 * norm);
    });
  }
});
