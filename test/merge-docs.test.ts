import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '..');

describe('docs/arithmetic.md', () => {
  it('the API example runs and prints what its comments say', async () => {
    const doc = await readFile(path.join(ROOT, 'docs/arithmetic.md'), 'utf8');
    const block = /```ts\n([\s\S]*?)```/.exec(doc)?.[1];
    expect(block).toBeDefined();
    const dir = await mkdtemp(path.join(tmpdir(), 'lora-mix-doc-'));
    try {
      const file = path.join(dir, 'example.mts');
      // The example imports './src/…' from the repository root; run it from a temp copy with absolute imports.
      await writeFile(
        file,
        block!
          .replaceAll("'./src/", `'${ROOT}/src/`)
          .replaceAll('/tmp/lcm-style-r8.safetensors', path.join(dir, 'out.safetensors')),
      );
      const r = spawnSync(process.execPath, ['--import', 'tsx', file], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 120_000,
      });
      expect(r.status, r.stderr).toBe(0);
      const lines = r.stdout.trim().split('\n');
      expect(lines[0]).toMatch(/^1052 true \{ min: 4, max: 12, mean: 9\.74/);
      expect(Number(lines[1])).toBeLessThan(1e-9);
      expect(r.stdout).toMatch(/rankAfter: 8/);
      expect(r.stdout).toMatch(/\n7 true\n986\ntrue\n?$/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
