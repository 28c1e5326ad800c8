import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { blobSource, bufferSource, memorySink } from '../src/core/memory.js';
import { fileSink, fileSource, openSafetensors } from '../src/node/files.js';
import { IoError } from '../src/core/errors.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-io-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const content = new Uint8Array(10_000).map((_, i) => (i * 31 + 7) & 0xff);
const rangeArb = fc
  .tuple(fc.nat({ max: content.length }), fc.nat({ max: content.length }))
  .map(([a, b]) => [Math.min(a, b), Math.max(a, b)] as const);

describe('byte sources return exactly the requested range', () => {
  it('fileSource, blobSource and bufferSource agree with the bytes', async () => {
    const p = path.join(dir, 'content.bin');
    await fs.writeFile(p, content);
    const file = await fileSource(p);
    const st = await fs.stat(p);
    expect(file.identity).toBe(`${st.dev}:${st.ino}`);
    expect(file.byteLength).toBe(content.length);
    expect(typeof file.readInto).toBe('function');
    const sources = [
      file,
      blobSource(new Blob([content]), 'blob'),
      // small windows: reads within, across and beyond windows, served from the cache and the read-ahead
      blobSource(new Blob([content]), 'blob-windows', { window: { window: 997, keep: 3 } }),
      blobSource(new Blob([content]), 'blob-exact', { window: false }),
      bufferSource(content.buffer, 'buf'),
      bufferSource(content),
    ];
    try {
      await fc.assert(
        fc.asyncProperty(rangeArb, async ([a, b]) => {
          for (const s of sources) {
            expect(await s.read(a, b)).toEqual(content.subarray(a, b));
            if (s.readInto) {
              const target = new Uint8Array(b - a + 2).fill(7);
              await s.readInto(a, target.subarray(1, 1 + b - a));
              expect(target.subarray(1, 1 + b - a)).toEqual(content.subarray(a, b));
              expect([target[0], target[target.length - 1]]).toEqual([7, 7]);
            }
          }
        }),
        { numRuns: 40 },
      );
      for (const s of sources) {
        for (const [a, b] of [
          [-1, 2],
          [5, 4],
          [0, content.length + 1],
          [0.5, 2],
        ] as const) {
          await expect(s.read(a, b), `${s.name} ${a}…${b}`).rejects.toMatchObject({ code: 'IO_READ_FAILED' });
        }
        if (s.readInto) {
          await expect(s.readInto(content.length - 1, new Uint8Array(2))).rejects.toMatchObject({
            code: 'IO_READ_FAILED',
          });
        }
      }
    } finally {
      await file.close();
      await file.close(); // idempotent
    }
    await expect(file.read(0, 1)).rejects.toBeInstanceOf(IoError);
  });

  it('bufferSource hands out copies; blobSource takes a File name', async () => {
    const bytes = new Uint8Array([1, 2, 3]);
    const s = bufferSource(bytes);
    const got = await s.read(0, 3);
    got[0] = 99;
    expect(bytes[0]).toBe(1);
    expect(blobSource(new File([bytes], 'x.safetensors')).name).toBe('x.safetensors');
    expect(blobSource(new Blob([bytes])).name).toBe('<blob>');
  });

  it('fileSource reports missing files, directories and files that shrink after opening', async () => {
    await expect(fileSource(path.join(dir, 'nope'))).rejects.toMatchObject({ code: 'INPUT_NOT_FOUND' });
    await expect(openSafetensors(path.join(dir, 'nope'))).rejects.toMatchObject({ code: 'INPUT_NOT_FOUND' });
    await expect(fileSource(dir)).rejects.toMatchObject({ code: 'IO_NOT_A_REGULAR_FILE' });
    const p = path.join(dir, 'shrinks.bin');
    await fs.writeFile(p, content);
    const s = await fileSource(p);
    try {
      await fs.truncate(p, 100);
      await expect(s.read(50, 500)).rejects.toMatchObject({
        code: 'IO_READ_FAILED',
        message: expect.stringContaining('ended at byte 100'),
      });
    } finally {
      await s.close();
    }
  });

  it('openSafetensors closes the file when the header is invalid', async () => {
    const p = path.join(dir, 'bad.safetensors');
    await fs.writeFile(p, new Uint8Array(4));
    await expect(openSafetensors(p)).rejects.toMatchObject({ code: 'SAFETENSORS_TRUNCATED' });
    await fs.rm(p); // would still work with an open handle on Linux, so check the handle count instead
    const fds = await fs.readdir('/proc/self/fd').catch(() => null);
    if (fds) {
      const before = fds.length;
      for (let i = 0; i < 20; i++) {
        await fs.writeFile(p, new Uint8Array(4));
        await openSafetensors(p).catch(() => undefined);
      }
      expect((await fs.readdir('/proc/self/fd')).length).toBeLessThanOrEqual(before + 1);
    }
  });
});

describe('memorySink', () => {
  it('collects copies of the chunks and gives bytes and a Blob after commit', async () => {
    const sink = memorySink('m');
    const chunk = new Uint8Array([1, 2, 3]);
    await sink.write(chunk);
    chunk.fill(0); // the sink must have copied
    await sink.write(new Uint8Array([4]));
    expect(() => sink.bytes()).toThrow(IoError);
    await sink.commit();
    await sink.commit();
    expect(Array.from(sink.bytes())).toEqual([1, 2, 3, 4]);
    expect(new Uint8Array(await sink.blob().arrayBuffer())).toEqual(new Uint8Array([1, 2, 3, 4]));
    await expect(sink.write(new Uint8Array(1))).rejects.toBeInstanceOf(IoError);
  });

  it('abort discards everything', async () => {
    const sink = memorySink();
    await sink.write(new Uint8Array(5));
    await sink.abort();
    await sink.abort();
    expect(sink.byteLength).toBe(0);
    expect(() => sink.bytes()).toThrow(/aborted/);
    await expect(sink.commit()).rejects.toBeInstanceOf(IoError);
  });
});

describe('fileSink', () => {
  it('writes a hidden temp file beside the target and renames it on commit', async () => {
    const target = path.join(dir, 'out.bin');
    const sink = await fileSink(target);
    expect(path.dirname(sink.tempPath)).toBe(dir);
    expect(path.basename(sink.tempPath)).toMatch(/^\.out\.bin\.lora-mix-\d+-[0-9a-f]+\.tmp$/);
    await sink.write(content.subarray(0, 5000));
    await sink.write(content.subarray(5000));
    await expect(fs.stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
    await sink.commit();
    expect(new Uint8Array(await fs.readFile(target))).toEqual(content);
    await expect(fs.stat(sink.tempPath)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(sink.write(new Uint8Array(1))).rejects.toBeInstanceOf(IoError);
  });

  it('abort removes the temp file and leaves an existing target alone', async () => {
    const target = path.join(dir, 'keep.bin');
    await fs.writeFile(target, 'keep');
    const sink = await fileSink(target);
    await sink.write(content);
    await sink.abort();
    await sink.abort();
    await expect(fs.stat(sink.tempPath)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await fs.readFile(target, 'utf8')).toBe('keep');
    await expect(sink.commit()).rejects.toBeInstanceOf(IoError);
  });

  it('refuses a target that is an input before creating anything, and a directory target', async () => {
    const target = path.join(dir, 'in.bin');
    await fs.writeFile(target, 'x');
    const before = await fs.readdir(dir);
    await expect(fileSink(target, { refuse: [target] })).rejects.toMatchObject({
      code: 'OUTPUT_WOULD_OVERWRITE_INPUT',
    });
    expect(await fs.readdir(dir)).toEqual(before);
    await expect(fileSink(dir)).rejects.toMatchObject({ code: 'IO_NOT_A_REGULAR_FILE' });
    await expect(fileSink(path.join(dir, 'no-such-dir', 'x.bin'))).rejects.toMatchObject({ code: 'IO_WRITE_FAILED' });
  });
});
