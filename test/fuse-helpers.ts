/** Shared setup of the fusion tests that work on real files: the fixture folder, a temp folder, tensor values. */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { openSafetensors } from '../src/node/files.js';

/** The committed fixtures (fixtures/). */
export const FX = path.resolve(import.meta.dirname, '..', 'fixtures');

/**
 * A temporary folder for the calling test file: created before its tests run, removed after them. Read `dir` inside
 * tests and hooks (it is set once the folder exists).
 */
export function useTempDir(prefix: string): { readonly dir: string } {
  const box = { dir: '' };
  beforeAll(async () => {
    box.dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  });
  afterAll(async () => {
    if (box.dir) await fs.rm(box.dir, { recursive: true, force: true });
  });
  return box;
}

/** Every tensor of a safetensors file as f32 values, by name. */
export async function tensorValues(p: string): Promise<Map<string, Float32Array>> {
  const f = await openSafetensors(p);
  try {
    const m = new Map<string, Float32Array>();
    for (const t of f.tensors) m.set(t.name, await f.readF32(t.name));
    return m;
  } finally {
    await f.close();
  }
}
