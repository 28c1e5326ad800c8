import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseWeighted } from '../src/cli/args.js';
import { main } from '../src/cli/main.js';
import { UsageError } from '../src/core/errors.js';
import { loadLora } from '../src/formats/index.js';

const FIXTURES = path.resolve(__dirname, '..', 'fixtures');

describe("LoRA arguments: a path that exists wins over 'name:weight'", () => {
  let tmp = '';
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), 'lora-mix-colon-'));
    const src = path.join(FIXTURES, 'sd15', 'lcm-lora.kohya.safetensors');
    await copyFile(src, path.join(tmp, 'style:v2.safetensors'));
    await copyFile(src, path.join(tmp, 'a:1.safetensors'));
    await copyFile(src, path.join(tmp, 'odd.safetensors:0.5'));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('parseWeighted: existing files with colons are paths; a weight after them still parses', () => {
    expect(parseWeighted('merge', 'style:v2.safetensors', 1, tmp)).toEqual({ path: 'style:v2.safetensors', weight: 1 });
    expect(parseWeighted('merge', 'a:1.safetensors', 1, tmp)).toEqual({ path: 'a:1.safetensors', weight: 1 });
    expect(parseWeighted('merge', 'style:v2.safetensors:0.25', 1, tmp)).toEqual({
      path: 'style:v2.safetensors',
      weight: 0.25,
    });
    // a file literally named 'odd.safetensors:0.5' is that file, at the default weight
    expect(parseWeighted('merge', 'odd.safetensors:0.5', 1, tmp)).toEqual({ path: 'odd.safetensors:0.5', weight: 1 });
    // nothing by that name: the old rules, and the error says so
    expect(parseWeighted('merge', 'lcm.safetensors:0.5', 1, tmp)).toEqual({ path: 'lcm.safetensors', weight: 0.5 });
    expect(() => parseWeighted('merge', 'missing:v2.safetensors', 1, tmp)).toThrow(UsageError);
    expect(() => parseWeighted('merge', 'missing:v2.safetensors', 1, tmp)).toThrow(/no file of that name/);
  });

  it('merge reads style:v2.safetensors as a file', async () => {
    let err = '';
    const out = path.join(tmp, 'merged.safetensors');
    const code = await main(['merge', 'style:v2.safetensors', 'a:1.safetensors:0.5', '-o', out, '--rank', '4'], {
      out: () => undefined,
      err: (s) => {
        err += s;
      },
      isTTY: false,
      cwd: tmp,
    });
    expect(err).not.toMatch(/USAGE/);
    expect(code).toBe(0);
    expect((await loadLora(out)).modules.size).toBeGreaterThan(0);
  });
});
