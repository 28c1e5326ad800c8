/**
 * NaN / ±Inf already in a base checkpoint: a weight the LoRAs touch would carry them into the output silently, so
 * fuse refuses (FORMAT_NONFINITE naming the tensor and the count, nothing written) unless allowNonfiniteBase /
 * --allow-nonfinite-base; tensors the LoRAs do not touch are copied byte for byte either way.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/main.js';
import { loadLora } from '../src/formats/index.js';
import { fuseLoras } from '../src/fuse/index.js';
import { getLayout } from '../src/layout/index.js';
import { openSafetensors } from '../src/node/files.js';
import { FIXTURES } from './formats-helpers.js';

const BASE = path.join(FIXTURES, 'sd15', 'base.safetensors');
const LCM = path.join(FIXTURES, 'sd15', 'lcm-lora.kohya.safetensors');
let tmp = '';
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-nonfinite-base-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** A copy of the base with NaN / +Inf written into the first values of tensor `key` (its stored dtype). */
async function poisoned(key: string, name: string): Promise<string> {
  const bytes = Buffer.from(await fs.readFile(BASE));
  const f = await openSafetensors(BASE);
  let info;
  try {
    info = f.info(key);
  } finally {
    await f.close();
  }
  const start = info.offset; // absolute
  if (info.dtype === 'F16') {
    bytes.writeUInt16LE(0x7e00, start); // NaN
    bytes.writeUInt16LE(0x7c00, start + 2); // +Inf
  } else if (info.dtype === 'F32') {
    bytes.writeFloatLE(Number.NaN, start);
    bytes.writeFloatLE(Number.POSITIVE_INFINITY, start + 4);
  } else {
    throw new Error(`unexpected dtype ${info.dtype}`);
  }
  const out = path.join(tmp, name);
  await fs.writeFile(out, bytes);
  return out;
}

describe('NaN / Inf in the base checkpoint', () => {
  it('a touched weight with NaN/Inf is refused naming the tensor and the count; nothing is written', async () => {
    const lora = await loadLora(LCM);
    const layout = getLayout('sd15', 'tiny');
    const touched = layout.byPath.get([...lora.modules.keys()][0]!)!.singleFileWeightKey;
    const base = await poisoned(touched, 'touched.safetensors');
    const out = path.join(tmp, 'refused.safetensors');
    const e = await fuseLoras(base, [LCM], [1], { out }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'FORMAT_NONFINITE', details: expect.objectContaining({ key: touched, count: 2 }) });
    expect((e as Error).message).toContain(touched);
    expect((e as Error).message).toMatch(/allow-nonfinite-base/);
    await expect(fs.stat(out)).rejects.toThrow();
    // The CLI: input content, exit 1, nothing written; with the flag the fuse goes through and reports the count.
    let err = '';
    const io = { out: () => undefined, err: (s: string) => void (err += s), isTTY: false, cwd: tmp };
    expect(await main(['fuse', '--base', base, LCM, '-o', out, '-q'], io)).toBe(1);
    expect(err).toContain('FORMAT_NONFINITE');
    await expect(fs.stat(out)).rejects.toThrow();
    expect(await main(['fuse', '--base', base, LCM, '-o', out, '-q', '--allow-nonfinite-base'], io)).toBe(0);
    const report = await fuseLoras(base, [LCM], [1], {
      out: path.join(tmp, 'allowed.safetensors'),
      allowNonfiniteBase: true,
    });
    expect(report.nonFiniteInput).toBe(2);
  });

  it('NaN/Inf in a tensor no LoRA touches is copied as it is, without a refusal', async () => {
    const layout = getLayout('sd15', 'tiny');
    const untouched = layout.norms[0]!.weight.singleFileKey;
    const base = await poisoned(untouched, 'untouched.safetensors');
    const out = path.join(tmp, 'untouched-out.safetensors');
    await fuseLoras(base, [LCM], [1], { out });
    const [a, b] = [await openSafetensors(base), await openSafetensors(out)];
    try {
      expect(Buffer.from(await b.read(untouched)).equals(Buffer.from(await a.read(untouched)))).toBe(true);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
