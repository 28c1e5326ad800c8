/**
 * mergeLoraFiles (src/node/merge-files.ts, the Node API of `lora-mix merge`): the same file as the CLI for the same
 * merge — streamed (a method with a rank target), reduced in memory (--base) and exact — and nothing written on
 * bad input.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { mergeLoraFiles, openSafetensors } from '../src/node.js';
import { runCli } from './cli-helpers.js';

const ROOT = path.resolve(__dirname, '..');
const dir = mkdtempSync(path.join(os.tmpdir(), 'lora-mix-merge-files-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function metadataOf(file: string): Promise<Record<string, string>> {
  const f = await openSafetensors(file);
  try {
    return { ...(f.metadata ?? {}) };
  } finally {
    await f.close();
  }
}

describe('mergeLoraFiles', () => {
  const sd15 = ['fixtures/sd15/lcm-lora.kohya.safetensors', 'fixtures/sd15/style-lora.peft.safetensors'];
  const sdxl = ['fixtures/sdxl/lcm-lora.kohya.safetensors', 'fixtures/sdxl/style-lora.peft.safetensors'];
  const cases: [string, string[], string[], Parameters<typeof mergeLoraFiles>[3], boolean][] = [
    [
      'ties-sdxl-2',
      sdxl,
      ['--method', 'ties', '--density', '0.3', '--rank', '4', '--threads', '2'],
      { method: 'ties', density: 0.3, rank: 4, threads: 2 },
      true,
    ],
    [
      'dare-sd15-1',
      sd15,
      ['--method', 'dare_ties', '--density', '0.5', '--seed', '3', '--rank', '8', '--threads', '1', '--format', 'peft'],
      { method: 'dare_ties', density: 0.5, seed: 3, rank: 8, threads: 1, format: 'peft' },
      true,
    ],
    ['linear-min-energy', sd15, ['--min-energy', '0.9', '--dtype', 'fp32'], { minEnergy: 0.9, dtype: 'F32' }, true],
    ['exact', sd15, [], {}, false],
  ];

  it.each(cases)('%s: byte-identical to the CLI', async (name, inputs, flags, options, streams) => {
    const viaCli = path.join(dir, `${name}.cli.safetensors`);
    const run = await runCli(['merge', inputs[0]!, `${inputs[1]}:0.8`, '-o', viaCli, '-q', ...flags], ROOT);
    expect(run.code, run.err).toBe(0);
    const viaApi = path.join(dir, `${name}.api.safetensors`);
    // The CLI adds its provenance (file hashes, the command's options): pass the same metadata.
    const result = await mergeLoraFiles(
      inputs.map((p) => path.join(ROOT, p)),
      [1, 0.8],
      viaApi,
      { ...options, metadata: await metadataOf(viaCli) },
    );
    expect(result.streamed).toBe(streams);
    expect(result.byteLength).toBe(readFileSync(viaApi).length);
    expect(readFileSync(viaApi).equals(readFileSync(viaCli))).toBe(true);
    expect(result.report.written).toBeGreaterThan(0);
  });

  it('writes the merge metadata without extra metadata, and nothing on bad input', async () => {
    const out = path.join(dir, 'plain.safetensors');
    const r = await mergeLoraFiles(
      sd15.map((p) => path.join(ROOT, p)),
      [1, 0.8],
      out,
      { method: 'ties', density: 0.4, rank: 4 },
    );
    expect(r.dtype).toBe('F16');
    expect(Object.keys(await metadataOf(out))).toContain('lora_mix_merge');
    const bad = path.join(dir, 'bad.safetensors');
    await expect(
      mergeLoraFiles([path.join(ROOT, sd15[0]!)], [1], bad, { method: 'slerp', rank: 4 }),
    ).rejects.toMatchObject({ code: expect.stringMatching(/^OPTION_|^LORA_|^ARG_/) });
    await expect(
      mergeLoraFiles([path.join(ROOT, sd15[0]!), path.join(dir, 'missing.safetensors')], [1, 1], bad, { rank: 4 }),
    ).rejects.toMatchObject({ code: 'INPUT_NOT_FOUND' });
    expect(existsSync(bad)).toBe(false);
    expect(readdirSync(dir).filter((f) => f.includes('bad'))).toEqual([]);
  });
});
