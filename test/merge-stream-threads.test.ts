import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadLora, saveLora, type SaveOptions } from '../src/formats/index.js';
import type { MergeOptions } from '../src/lora/merge.js';
import { mergeStreaming, openStreamingInputs } from '../src/node/merge-stream.js';
import { mergeLorasParallel } from '../src/node/merge-threads.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
const dir = mkdtempSync(path.join(os.tmpdir(), 'lora-mix-stream-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SAVE: SaveOptions = { format: 'kohya', dtype: 'F16', metadata: { note: 'stream test' } };

/** The file the in-memory path writes, and the file the streaming path writes, for the same merge. */
async function bothWays(
  inputs: string[],
  weights: number[],
  options: MergeOptions & { threads?: number },
  name: string,
): Promise<{ memory: Buffer; streamed: Buffer; sameReport: boolean }> {
  const loras = await Promise.all(inputs.map((p) => loadLora(p)));
  const inMemory = await mergeLorasParallel(loras, weights, options);
  const a = path.join(dir, `${name}.memory.safetensors`);
  await saveLora(inMemory.lora, a, SAVE);

  const opened = await openStreamingInputs(inputs);
  expect(opened).not.toBeNull();
  const b = path.join(dir, `${name}.stream.safetensors`);
  const streamed = await mergeStreaming(opened!, weights, options, b);
  await opened!.close();
  await streamed.save(b, SAVE);
  await streamed.dispose();
  return {
    memory: readFileSync(a),
    streamed: readFileSync(b),
    sameReport: JSON.stringify(streamed.report) === JSON.stringify(inMemory.report),
  };
}

describe('streaming merge (factors read per module, result spilled)', () => {
  const sdxl = [
    path.join(FIXTURES, 'sdxl/lcm-lora.kohya.safetensors'),
    path.join(FIXTURES, 'sdxl/style-lora.peft.safetensors'),
  ];
  const cases: [string, MergeOptions & { threads?: number }][] = [
    ['ties-2', { method: 'ties', density: 0.3, rank: 4, threads: 2 }],
    ['ties-1', { method: 'ties', density: 0.5, majoritySign: 'frequency', rank: 8, threads: 1 }],
    ['dare-2', { method: 'dare_ties', density: 0.4, seed: 9, rank: 4, threads: 2 }],
    ['slerp-2', { method: 'slerp', t: 0.3, rank: 4, threads: 2 }],
    ['linear-2', { method: 'linear', rank: 4, minEnergy: 0.95, threads: 2 }],
    ['rank-2', { rank: 6, threads: 2 }],
  ];
  for (const [name, options] of cases) {
    it(`writes the same bytes and report as the in-memory merge: ${name}`, async () => {
      const { memory, streamed, sameReport } = await bothWays(sdxl, [1, -0.8], options, name);
      expect(streamed.equals(memory)).toBe(true);
      expect(sameReport).toBe(true);
    });
  }

  it('leaves no spill file behind, after a write and after a failure', async () => {
    const out = path.join(dir, 'clean.safetensors');
    const opened = await openStreamingInputs(sdxl);
    const merged = await mergeStreaming(opened!, [1, 1], { method: 'ties', density: 0.2, rank: 2, threads: 2 }, out);
    expect(readdirSync(dir).some((f) => f.includes('.spill.'))).toBe(true);
    await merged.save(out, SAVE);
    await merged.dispose();
    expect(readdirSync(dir).filter((f) => f.includes('.spill.'))).toEqual([]);
    // Factors too large for F16 fail while the output is written: typed error, no output, spill removed.
    const bad = path.join(dir, 'bad.safetensors');
    const huge = await mergeStreaming(opened!, [1e30, 1e30], { method: 'linear', rank: 2, threads: 1 }, bad);
    await opened!.close();
    try {
      await expect(huge.save(bad, SAVE)).rejects.toMatchObject({ code: 'LORA_DTYPE_OVERFLOW' });
    } finally {
      await huge.dispose();
    }
    expect(readdirSync(dir).filter((f) => f.includes('.spill.') || f.includes('bad.'))).toEqual([]);
  });

  it('leaves inputs of other adapter kinds to the in-memory path', async () => {
    expect(await openStreamingInputs([path.join(FIXTURES, 'adapters/loha.safetensors')])).toBeNull();
  });
});
