/**
 * DoRA and GLoRA need the base weights: `--base` (resolveBaseTerms) turns them into their exact deltas against the
 * base, so convert and merge can write them as plain LoRAs. Checked end to end against fuse, which reads the base
 * itself: fusing the DoRA/GLoRA file and fusing its converted plain LoRA give the same checkpoint within one F16
 * rounding.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/main.js';
import { f16BitsToF32 } from '../src/core/dtype.js';
import { fuseLoras, needsBase, resolveBaseTerms } from '../src/fuse/index.js';
import { loadLora, saveLora } from '../src/formats/index.js';
import { openSafetensors } from '../src/node/files.js';

const BASE = 'fixtures/sd15/base.safetensors';
const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});
async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'lora-mix-base-terms-'));
  dirs.push(d);
  return d;
}
const cli = async (args: string[]): Promise<{ code: number; err: string }> => {
  let err = '';
  const code = await main(args, { out: () => undefined, err: (s) => (err += s), isTTY: false, cwd: process.cwd() });
  return { code, err };
};

describe.each(['dora-out', 'dora-in', 'dora-peft', 'glora'])('%s with the base', (name) => {
  const file = `fixtures/adapters/${name}.safetensors`;

  it('converts to a plain LoRA that fuses to the same checkpoint as the adapter file', async () => {
    const dir = await tmp();
    const lora = await loadLora(file);
    expect(needsBase(lora)).toBe(true);
    const plain = await resolveBaseTerms(lora, BASE);
    expect(needsBase(plain)).toBe(false);
    await saveLora(plain, join(dir, 'plain.safetensors'), { format: 'kohya', dtype: 'F32' });
    await fuseLoras(BASE, [file], [0.7], { out: join(dir, 'a.safetensors') });
    await fuseLoras(BASE, [join(dir, 'plain.safetensors')], [0.7], { out: join(dir, 'b.safetensors') });
    const a = await openSafetensors(join(dir, 'a.safetensors'));
    const b = await openSafetensors(join(dir, 'b.safetensors'));
    const w0 = await openSafetensors(BASE);
    let changed = 0;
    // Weights more than one F16 rounding apart, named (one expect for the whole file: an expect per weight cost
    // most of this test's time).
    const apart: string[] = [];
    try {
      for (const t of a.tensors) {
        if (t.dtype !== 'F16') continue;
        const x = new Uint16Array((await a.read(t.name)).slice().buffer);
        const y = new Uint16Array((await b.read(t.name)).slice().buffer);
        const z = new Uint16Array((await w0.read(t.name)).slice().buffer);
        for (let i = 0; i < x.length; i++) {
          const xi = x[i] ?? 0;
          const yi = y[i] ?? 0;
          if (xi !== (z[i] ?? 0)) changed++;
          // one F16 rounding apart at most: the same value or neighbours
          if (!(Math.abs(xi - yi) <= 1 || f16BitsToF32(xi) === f16BitsToF32(yi))) apart.push(`${t.name}[${i}]`);
        }
      }
    } finally {
      await Promise.all([a.close(), b.close(), w0.close()]);
    }
    expect(apart.slice(0, 20), `${apart.length} weights more than one rounding apart`).toEqual([]);
    expect(changed).toBeGreaterThan(0);
  });

  it('the CLI refuses it without --base (LORA_NEEDS_BASE, exit 4, nothing written) and converts with it', async () => {
    const dir = await tmp();
    const out = join(dir, 'out.safetensors');
    const without = await cli(['convert', file, '--to', 'peft', '-o', out]);
    expect(without.code).toBe(4);
    expect(without.err).toContain('LORA_NEEDS_BASE');
    expect(await readdir(dir)).toEqual([]);
    // Worker threads (seconds to start under the test's TS loader) for the first kind only: the threaded deltas and
    // conversion are the single-thread bits (test/delta-pool.test.ts, test/convert-stream.test.ts).
    const threads = name === 'dora-out' ? [] : ['--threads', '1'];
    const withBase = await cli(['convert', file, '--to', 'peft', '-o', out, '--base', BASE, ...threads]);
    expect(withBase.err).toBe('');
    expect(withBase.code).toBe(0);
    const merged = await cli([
      'merge',
      file,
      'fixtures/sd15/lcm-lora.kohya.safetensors:0.5',
      '-o',
      join(dir, 'm.safetensors'),
      '--base',
      BASE,
      '--dtype',
      'fp32',
      '-q',
      ...threads,
    ]);
    expect(merged.err).toBe('');
    expect(merged.code).toBe(0);
  });
});

it('a base of another architecture is ARCH_MISMATCH', async () => {
  const lora = await loadLora('fixtures/adapters/dora-out.safetensors');
  await expect(resolveBaseTerms(lora, 'fixtures/sdxl/base.safetensors')).rejects.toMatchObject({
    code: 'ARCH_MISMATCH',
  });
});
