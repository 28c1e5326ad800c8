/**
 * fileSink with O_DIRECT: whatever the chunking, the file holds exactly the bytes written (the padded last block is
 * cut back), a refused O_DIRECT (tmpfs) falls back to plain writes, and abort leaves nothing.
 */
import { constants, existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { fileSink } from '../src/node/files.js';
import { writeSafetensors } from '../src/safetensors/write.js';
import { bytes } from './io-helpers.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-direct-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function writeChunks(
  dir: string,
  name: string,
  sizes: readonly number[],
  direct: boolean,
): Promise<{ expected: Buffer; usedDirect: boolean; file: string }> {
  const file = path.join(dir, name);
  const sink = await fileSink(file, { direct });
  const parts = sizes.map((n, i) => bytes(n, i + 1));
  for (const p of parts) await sink.write(p);
  const usedDirect = sink.directIO;
  await sink.commit();
  return { expected: Buffer.concat(parts), usedDirect, file };
}

describe('fileSink({ direct: true })', () => {
  const patterns: [string, number[]][] = [
    ['tiny (under one block)', [1, 2, 100]],
    ['exactly one staging chunk', [16 << 20]],
    ['many small chunks across chunk boundaries', Array.from({ length: 700 }, (_, i) => 40_000 + (i % 7) * 3)],
    ['large unaligned pieces', [(16 << 20) + 3, 5, (8 << 20) - 1, (20 << 20) + 4097]],
    ['empty', []],
  ];
  for (const [label, sizes] of patterns) {
    it(`writes exactly the bytes given: ${label}`, async () => {
      const { expected, file } = await writeChunks(tmp, `${label.replace(/\W+/g, '-')}.bin`, sizes, true);
      const got = await fs.readFile(file);
      expect(got.length).toBe(expected.length);
      expect(got.equals(expected)).toBe(true);
      expect((await fs.readdir(tmp)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    });
  }

  it('on tmpfs (which older kernels refuse O_DIRECT on, newer ones accept) the bytes are right either way', async () => {
    if (!existsSync('/dev/shm')) return; // no tmpfs to try on this system
    const dir = await fs.mkdtemp('/dev/shm/lora-mix-direct-');
    try {
      const { expected, usedDirect, file } = await writeChunks(dir, 'x.bin', [(16 << 20) + 5, 3], true);
      expect(typeof usedDirect).toBe('boolean');
      expect((await fs.readFile(file)).equals(expected)).toBe(true);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('abort removes the temporary file, also with a write in flight', async () => {
    const file = path.join(tmp, 'aborted.bin');
    const sink = await fileSink(file, { direct: true });
    for (let i = 0; i < 3; i++) await sink.write(bytes(10 << 20, i));
    await sink.abort();
    expect(existsSync(file)).toBe(false);
    expect((await fs.readdir(tmp)).filter((n) => n.includes('aborted'))).toEqual([]);
  });

  it('writeSafetensors with direct gives the same file as without', async () => {
    const tensors = [
      { name: 'a', dtype: 'F32' as const, shape: [3, 5], data: new Float32Array(15).map((_, i) => i / 7) },
      { name: 'b', dtype: 'U8' as const, shape: [(16 << 20) + 11], data: () => bytes((16 << 20) + 11, 9) },
      { name: 'c', dtype: 'F16' as const, shape: [7], data: new Uint16Array(7).fill(0x3c00) },
    ];
    const a = path.join(tmp, 'plain.safetensors');
    const b = path.join(tmp, 'direct.safetensors');
    await writeSafetensors(a, tensors, { metadata: { k: 'v' } });
    await writeSafetensors(b, tensors, { metadata: { k: 'v' }, direct: true });
    expect((await fs.readFile(a)).equals(await fs.readFile(b))).toBe(true);
  });

  it('falls back to plain writes when the filesystem accepts O_DIRECT at open but refuses the first write', async () => {
    const O_DIRECT = (constants as { O_DIRECT?: number }).O_DIRECT;
    if (typeof O_DIRECT !== 'number' || O_DIRECT === 0) return; // no O_DIRECT on this platform: nothing to fall back from
    const realOpen = fs.open.bind(fs);
    let refused = 0;
    const spy = vi.spyOn(fs, 'open').mockImplementation(async (...args: Parameters<typeof fs.open>) => {
      const h = await realOpen(...args);
      const flags = args[1];
      if (typeof flags === 'number' && (flags & O_DIRECT) !== 0) {
        // What a filesystem with stricter alignment rules does: the open succeeds, the write does not.
        h.write = (async () => {
          refused++;
          throw Object.assign(new Error('EINVAL: invalid argument, write'), { code: 'EINVAL' });
        }) as typeof h.write;
      }
      return h;
    });
    try {
      const { expected, usedDirect, file } = await writeChunks(
        tmp,
        'refused.bin',
        [(16 << 20) + 7, 100, (3 << 20) + 1],
        true,
      );
      expect(refused).toBe(1);
      expect(usedDirect).toBe(false);
      expect((await fs.readFile(file)).equals(expected)).toBe(true);
    } finally {
      spy.mockRestore();
    }
  });
});
