/**
 * The fuse pipeline's read-ahead (src/fuse/fuse.ts, AHEAD_JOBS): the next fused tensor is read — and its kernel job
 * queued — while the current one is computed and written, even when untouched tensors (a layer's bias, a norm) lie
 * between them; and no further. Observed through the order of the base's reads and the writer's progress.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ByteSource } from '../src/core/bytes.js';
import { memorySink } from '../src/core/memory.js';
import { fuseLoras } from '../src/fuse/fuse.js';
import { createWasmKernel } from '../src/kernels/cpu.js';
import { parseSafetensors } from '../src/safetensors/read.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');

describe('fuse read-ahead', () => {
  it('reads the next fused tensor before the current one is written, past the copies between them, and no further', async () => {
    const bytes = new Uint8Array(await fs.readFile(path.join(FX, 'sd15', 'base.safetensors')));
    const events: string[] = [];
    const source = (log: boolean): ByteSource => ({
      name: 'base.safetensors',
      byteLength: bytes.byteLength,
      async read(start, end) {
        if (log) events.push(`read ${start}`);
        return bytes.slice(start, end);
      },
    });
    const infos = (await parseSafetensors(source(false))).tensors;
    const sink = memorySink();
    const kernel = await createWasmKernel();
    try {
      await fuseLoras(source(true), [path.join(FX, 'sd15', 'lcm-lora.kohya.safetensors')], [1], {
        out: sink,
        kernel,
        onProgress: (p) => events.push(`done ${p.current}`),
      });
    } finally {
      await kernel.dispose();
    }
    // Fused tensors: those whose bytes changed (the LCM LoRA changes every weight it targets).
    const out = (
      await parseSafetensors({
        name: 'out',
        byteLength: sink.bytes().byteLength,
        read: async (s, e) => sink.bytes().slice(s, e),
      })
    ).tensors;
    const fused = infos.filter((t, i) => {
      const o = out[i]!;
      expect(o.name).toBe(t.name);
      const a = bytes.subarray(t.offset, t.offset + t.byteLength);
      const b = sink.bytes().subarray(o.offset, o.offset + o.byteLength);
      return a.some((x, k) => x !== b[k]);
    });
    expect(fused.length).toBeGreaterThan(10);
    const at = (e: string): number => {
      const k = events.indexOf(e);
      expect(k, e).toBeGreaterThanOrEqual(0);
      return k;
    };
    let gaps = 0;
    for (let k = 0; k + 1 < fused.length; k++) {
      const cur = fused[k]!;
      const next = fused[k + 1]!;
      if (infos.indexOf(next) > infos.indexOf(cur) + 1) gaps++;
      // The next fused tensor was read before the current one was handed to the writer …
      expect(at(`read ${next.offset}`), `${next.name} read before ${cur.name} written`).toBeLessThan(
        at(`done ${cur.name}`),
      );
      // … and the one after it only once the current one was written (one kernel job ahead: memory stays flat).
      const after = fused[k + 2];
      if (after) expect(at(`read ${after.offset}`)).toBeGreaterThan(at(`done ${cur.name}`));
    }
    // The fixture has untouched tensors between fused ones (biases, norms): the case a depth of one segment missed.
    expect(gaps).toBeGreaterThan(5);
  });
});
