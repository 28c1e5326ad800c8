/**
 * The layer rules of docs/ARCHITECTURE.md are enforced: dependency-cruiser with the project's own config rejects
 * an upward import, an import cycle and a `node:` import outside the node layer, and passes the real tree.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CONFIG = join(ROOT, '.dependency-cruiser.cjs');
const DEPCRUISE = join(ROOT, 'node_modules/.bin/depcruise');
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Run the project's dependency rules over a tree of the given files (path → source). */
function cruise(files: Record<string, string>): { status: number | null; out: string } {
  const dir = mkdtempSync(join(tmpdir(), 'lora-mix-layers-'));
  dirs.push(dir);
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext' } }),
  );
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), text);
  }
  const r = spawnSync(DEPCRUISE, ['src', '--config', CONFIG, '--output-type', 'err'], { cwd: dir, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('layer rules (npm run lint)', () => {
  it('accept imports that go down the layers', () => {
    const r = cruise({
      'src/core/a.ts': 'export const a = 1;\n',
      'src/lora/b.ts': "import { a } from '../core/a.js';\nexport const b = a;\n",
      'src/node/c.ts':
        "import { readFileSync } from 'node:fs';\nimport { b } from '../lora/b.js';\nexport const c = [b, readFileSync];\n",
    });
    expect(r.out).toContain('no dependency violations');
    expect(r.status).toBe(0);
  });

  it('reject an upward import', () => {
    const r = cruise({
      'src/core/a.ts': "import { b } from '../lora/b.js';\nexport const a = b;\n",
      'src/lora/b.ts': 'export const b = 1;\n',
    });
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(/layer-core: src\/core\/a\.ts → src\/lora\/b\.ts/);
  });

  it('reject an import cycle inside one layer', () => {
    const r = cruise({
      'src/kernels/x.ts': "import { y } from './y.js';\nexport const x = () => y;\n",
      'src/kernels/y.ts': "import { x } from './x.js';\nexport const y = () => x;\n",
    });
    expect(r.status).not.toBe(0);
    expect(r.out).toContain('no-circular');
  });

  it('reject node: outside src/node, src/cli and src/node.ts', () => {
    const r = cruise({ 'src/fuse/f.ts': "import { readFileSync } from 'node:fs';\nexport const f = readFileSync;\n" });
    expect(r.status).not.toBe(0);
    expect(r.out).toContain('node-builtins-only-in-node-layer');
  });

  it('pass the real source tree', () => {
    const r = spawnSync(DEPCRUISE, ['src', '--config', CONFIG, '--output-type', 'err'], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    expect(`${r.stdout}${r.stderr}`).toContain('no dependency violations');
    expect(r.status).toBe(0);
  });
});
