import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { streamedBlobSource } from '../src/core/blob-stream.js';
import { IoError } from '../src/core/errors.js';

const bytesOf = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 2654435761) >>> 24);
/** Byte equality without a deep-equal walk (which costs seconds on arrays this size). */
const same = (a: Uint8Array | undefined, b: Uint8Array) => a !== undefined && Buffer.compare(a, b) === 0;

describe('streamedBlobSource: a Blob read through one forward stream', () => {
  it('returns the bytes of every read, in order, with gaps, backwards and concurrently', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 300_000 }),
        fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.nat(70_000)), { minLength: 1, maxLength: 12 }),
        fc.boolean(),
        fc.boolean(),
        async (n, picks, sorted, concurrent) => {
          const bytes = bytesOf(n);
          const src = streamedBlobSource(new Blob([bytes]), 'blob');
          let reads = picks.map(([f, len]) => {
            const s = Math.min(n, Math.floor(f * n));
            return [s, Math.min(n, s + len)] as const;
          });
          if (sorted) reads = [...reads].sort((a, b) => a[0] - b[0]);
          const got = concurrent
            ? await Promise.all(reads.map(([s, e]) => src.read(s, e)))
            : await reads.reduce<Promise<Uint8Array[]>>(
                async (acc, [s, e]) => [...(await acc), await src.read(s, e)],
                Promise.resolve([]),
              );
          for (const [i, [s, e]] of reads.entries()) expect(same(got[i], bytes.subarray(s, e)), `${s}…${e}`).toBe(true);
          await src.close?.();
        },
      ),
      { numRuns: 60 },
    );
  });

  it('gives each read a buffer of its own (changing one changes no other read)', async () => {
    const bytes = bytesOf(100_000);
    const src = streamedBlobSource(new Blob([bytes]), 'blob');
    const a = await src.read(0, 40_000);
    const b = await src.read(40_000, 100_000);
    a.fill(0);
    expect(same(b, bytes.subarray(40_000))).toBe(true);
    expect(await src.read(10, 20)).toEqual(bytes.slice(10, 20));
  });

  it('fills a buffer given back with recycle instead of a fresh one, and the bytes stay right', async () => {
    const bytes = bytesOf(300_000);
    const src = streamedBlobSource(new Blob([bytes]), 'blob');
    const a = await src.read(0, 64_000);
    const buffer = a.buffer;
    src.recycle(a);
    const b = await src.read(64_000, 100_000);
    expect(same(b, bytes.subarray(64_000, 100_000))).toBe(true);
    // The read filled a's buffer: a BYOB read transfers it (a is detached), a default reader writes into it.
    expect(b.buffer === buffer || buffer.byteLength === 0).toBe(true);
    // A buffer too small for a read is not used; a fresh one is.
    src.recycle(b);
    const c = await src.read(100_000, 300_000);
    expect(c.byteLength).toBe(200_000);
    expect(same(c, bytes.subarray(100_000))).toBe(true);
    await src.close?.();
  });

  it('gives the right bytes when every read is given back as soon as it is checked', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 200_000 }),
        fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.nat(50_000)), { minLength: 1, maxLength: 12 }),
        async (n, picks) => {
          const bytes = bytesOf(n);
          const src = streamedBlobSource(new Blob([bytes]), 'blob');
          const reads = picks
            .map(([f, len]) => {
              const s = Math.min(n, Math.floor(f * n));
              return [s, Math.min(n, s + len)] as const;
            })
            .sort((x, y) => x[0] - y[0]);
          for (const [s, e] of reads) {
            const got = await src.read(s, e);
            expect(same(got, bytes.subarray(s, e)), `${s}…${e}`).toBe(true);
            src.recycle(got);
          }
          await src.close?.();
        },
      ),
      { numRuns: 40 },
    );
  });

  it('refuses ranges outside the file with IO_READ_FAILED naming the file', async () => {
    const src = streamedBlobSource(new Blob([bytesOf(10)]), 'x.safetensors');
    await expect(src.read(5, 11)).rejects.toThrow(IoError);
    await expect(src.read(5, 11)).rejects.toThrow(/x\.safetensors.*outside the file/);
    expect(await src.read(2, 4)).toEqual(bytesOf(10).slice(2, 4));
  });
});
