/**
 * Large tensors streamed in pieces (src/fuse/fuse.ts pieceLimits): with the limits lowered so that the bundled
 * fixtures' tensors are cut (copies by byte ranges, conversions and fusions by row ranges, pieces that split a
 * tensor's row-slice targets such as SDXL's in_proj_weight), the output is byte-identical to the uncut run, the
 * overflow and non-finite checks count the whole tensor, and the writer refuses pieces that do not add up.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { memorySink } from '../src/core/memory.js';
import { LoraMixError } from '../src/core/errors.js';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras, pieceLimits } from '../src/fuse/fuse.js';
import type { FuseOptions } from '../src/fuse/types.js';
import { createWasmKernel } from '../src/kernels/cpu.js';
import type { FuseKernel } from '../src/kernels/types.js';
import { scaleLora } from '../src/lora/scale.js';
import { requirePlain } from '../src/lora/terms/index.js';
import { writeToSink } from '../src/safetensors/write.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');
const fx = (...p: string[]): string => path.join(FX, ...p);
const SD15 = { base: fx('sd15', 'base.safetensors'), lcm: fx('sd15', 'lcm-lora.kohya.safetensors') };
const SD15_STYLE = fx('sd15', 'style-lora.kohya.safetensors');
const SDXL = { base: fx('sdxl', 'base.safetensors'), lcm: fx('sdxl', 'lcm-lora.kohya.safetensors') };

const DEFAULTS = { ...pieceLimits };
afterEach(() => {
  Object.assign(pieceLimits, DEFAULTS);
});

/** A WASM kernel that counts its update calls (a tensor cut in pieces makes more of them). */
async function countingKernel(): Promise<{ kernel: FuseKernel; calls: () => number }> {
  const inner = await createWasmKernel();
  let calls = 0;
  const kernel: FuseKernel = {
    name: inner.name,
    backend: inner.backend,
    get stats() {
      return inner.stats;
    },
    update(...args) {
      calls++;
      return inner.update(...args);
    },
    dispose: () => inner.dispose(),
  };
  return { kernel, calls: () => calls };
}

type Run = { bytes: Uint8Array; calls: number; overflow: number; report: Awaited<ReturnType<typeof fuseLoras>> };

async function fuseToMemory(
  base: string,
  loras: Parameters<typeof fuseLoras>[1],
  weights: number[],
  options: Omit<FuseOptions, 'out' | 'kernel'> = {},
): Promise<Run> {
  const { kernel, calls } = await countingKernel();
  try {
    const sink = memorySink('pieces.safetensors');
    const report = await fuseLoras(base, loras, weights, { ...options, out: sink, kernel });
    return { bytes: sink.bytes(), calls: calls(), overflow: report.overflow.total, report };
  } finally {
    await kernel.dispose();
  }
}

const same = (a: Uint8Array, b: Uint8Array): boolean => a.byteLength === b.byteLength && Buffer.compare(a, b) === 0;

describe('fuse: large tensors in pieces', () => {
  const cases: { name: string; base: string; loras: string[]; weights: number[]; options?: FuseOptions['dtype'] }[] = [
    { name: 'SD1.5, one LoRA', base: SD15.base, loras: [SD15.lcm], weights: [1] },
    {
      name: 'SD1.5, two LoRAs, F32 output',
      base: SD15.base,
      loras: [SD15.lcm, SD15_STYLE],
      weights: [1, 0.8],
      options: 'F32',
    },
    { name: 'SDXL (q/k/v row slices of in_proj_weight)', base: SDXL.base, loras: [SDXL.lcm], weights: [1] },
    { name: 'SDXL, BF16 output', base: SDXL.base, loras: [SDXL.lcm], weights: [0.7], options: 'BF16' },
  ];
  for (const c of cases) {
    it(`${c.name}: byte-identical whatever the piece sizes`, async () => {
      const opts = c.options ? { dtype: c.options } : {};
      const whole = await fuseToMemory(c.base, c.loras, c.weights, opts);
      // Pieces of a few rows: every fused tensor of the fixtures is cut, most targets span several pieces.
      Object.assign(pieceLimits, { copy: 4096, convert: 4096, fuse: 3000 });
      const cut = await fuseToMemory(c.base, c.loras, c.weights, opts);
      expect(cut.calls).toBeGreaterThan(whole.calls);
      expect(same(cut.bytes, whole.bytes)).toBe(true);
      expect(cut.report.tensors).toEqual(whole.report.tensors);
      expect(cut.report.bytesWritten).toBe(whole.report.bytesWritten);
      // One row per piece, and copies in pieces smaller than most tensors.
      Object.assign(pieceLimits, { copy: 64, convert: 1, fuse: 1 });
      const rows = await fuseToMemory(c.base, c.loras, c.weights, opts);
      expect(same(rows.bytes, whole.bytes)).toBe(true);
    });
  }

  it('overflow is counted over the whole tensor: the same totals, the same refusal', async () => {
    const huge = scaleLora(requirePlain(await loadLora(SD15.lcm)), 1e10); // deltas of ~1e5, beyond F16
    const whole = await fuseToMemory(SD15.base, [huge], [1], { onOverflow: 'clamp' });
    expect(whole.overflow).toBeGreaterThan(0);
    Object.assign(pieceLimits, { copy: 4096, convert: 4096, fuse: 3000 });
    const cut = await fuseToMemory(SD15.base, [huge], [1], { onOverflow: 'clamp' });
    expect(cut.report.overflow).toEqual(whole.report.overflow);
    expect(same(cut.bytes, whole.bytes)).toBe(true);
    const refused = await fuseToMemory(SD15.base, [huge], [1]).then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(LoraMixError);
    expect((refused as LoraMixError).code).toBe('FUSE_OVERFLOW');
    // The count in the message is the whole tensor's, as without pieces.
    const first = whole.report.overflow.tensors[0]!;
    expect((refused as LoraMixError).message).toContain(`${first.count} value(s) of '${first.name}'`);
  });
});

describe('writeToSink: tensors given in pieces', () => {
  const pieces = async function* (sizes: number[]): AsyncGenerator<Uint8Array> {
    let v = 0;
    for (const n of sizes) yield Uint8Array.from({ length: n }, () => v++ & 0xff);
  };

  it('writes the pieces in order, the same bytes as one buffer', async () => {
    const a = memorySink('a');
    await writeToSink(a, [{ name: 'x', dtype: 'U8', shape: [10], data: () => pieces([3, 0, 7]) }]);
    await a.commit();
    const b = memorySink('b');
    await writeToSink(b, [{ name: 'x', dtype: 'U8', shape: [10], data: Uint8Array.from({ length: 10 }, (_, i) => i) }]);
    await b.commit();
    expect(same(a.bytes(), b.bytes())).toBe(true);
  });

  for (const sizes of [[3, 6], [3, 8], [11]]) {
    it(`refuses pieces of ${sizes.join(' + ')} bytes for a 10-byte tensor`, async () => {
      const sink = memorySink('bad');
      const e = await writeToSink(sink, [{ name: 'x', dtype: 'U8', shape: [10], data: () => pieces(sizes) }]).then(
        () => null,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(LoraMixError);
      expect((e as LoraMixError).code).toBe('SAFETENSORS_WRITE_INVALID');
      expect((e as LoraMixError).message).toMatch(/'x' \(U8\) needs 10 bytes; its pieces have/);
    });
  }
});
