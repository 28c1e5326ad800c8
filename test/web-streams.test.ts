/**
 * The page's byte plumbing (examples/web/streams.ts): the Blob sink gathers writes into 8 MiB parts and the
 * writable-stream sink (the chosen file of showSaveFilePicker) streams them with a bounded queue, reusing buffers
 * only after the stream is done with them; both give back exactly the bytes written, in any chunking. A stream that
 * fails makes the write or the commit reject with IO_WRITE_FAILED, never a silent short file. The synchronous
 * access-handle sink (an origin-private file) writes every byte at its offset even when the handle takes less than a
 * whole chunk per call, and the read-ahead source gives the bytes of the file it wraps for any sequence of reads.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bufferSource } from '../src/core/memory.js';
import { blobSink, readAheadSource, spillingSink, syncFileSink, writableSink } from '../examples/web/streams.js';

/** A WritableStream that acknowledges each write after `delay` ms, recording the bytes (copied at ack time). */
function slowStream(delay: number, failAt = Number.POSITIVE_INFINITY) {
  const parts: Uint8Array[] = [];
  let pending = 0;
  let maxPending = 0;
  let closed = false;
  const stream = new WritableStream<Uint8Array>(
    {
      async write(chunk) {
        pending++;
        maxPending = Math.max(maxPending, pending);
        await new Promise((r) => setTimeout(r, delay));
        pending--;
        if (parts.length >= failAt) throw new Error('disk full');
        parts.push(chunk.slice());
      },
      close() {
        closed = true;
      },
    },
    { highWaterMark: 64 },
  );
  return {
    stream,
    bytes: () => Buffer.concat(parts),
    parts,
    get closed() {
      return closed;
    },
    get maxPending() {
      return maxPending;
    },
  };
}

/** Deterministic content and a chunking of it (sizes up to ~20 MiB in total). */
const chunking = fc.array(fc.integer({ min: 0, max: 3 << 20 }), { minLength: 1, maxLength: 8 });
const content = (sizes: number[]) => {
  let seed = 7;
  return sizes.map((n) => {
    const c = new Uint8Array(n);
    for (let i = 0; i < n; i += 4096) c[i] = seed = (seed * 31 + 11) & 0xff;
    return c;
  });
};

describe('page sinks', () => {
  it('blobSink: the Blob holds exactly the written bytes, in 8 MiB parts; the writer may reuse its buffer', async () => {
    await fc.assert(
      fc.asyncProperty(chunking, async (sizes) => {
        const chunks = content(sizes);
        const sink = blobSink('x.safetensors');
        const reused = new Uint8Array(3 << 20);
        for (const c of chunks) {
          const view = reused.subarray(0, c.byteLength);
          view.set(c);
          await sink.write(view);
          view.fill(0xee); // the sink must have copied it
        }
        await sink.commit();
        const got = new Uint8Array(await sink.blob().arrayBuffer());
        expect(Buffer.compare(Buffer.from(got), Buffer.concat(chunks))).toBe(0);
        expect(sink.byteLength).toBe(got.byteLength);
      }),
      { numRuns: 12 },
    );
  });

  it('writableSink: the stream gets exactly the written bytes, with at most `queued` parts in flight', async () => {
    await fc.assert(
      fc.asyncProperty(chunking, async (sizes) => {
        const chunks = content(sizes);
        const target = slowStream(2);
        const sink = writableSink('out.safetensors', target.stream, 2);
        for (const c of chunks) await sink.write(c.slice());
        await sink.commit();
        expect(target.closed).toBe(true);
        expect(Buffer.compare(target.bytes(), Buffer.concat(chunks))).toBe(0);
        expect(target.parts.slice(0, -1).every((p) => p.byteLength === 8 << 20)).toBe(true);
        expect(target.maxPending).toBeLessThanOrEqual(2);
      }),
      { numRuns: 10 },
    );
  });

  it('writableSink: a failing stream rejects with IO_WRITE_FAILED; abort discards', async () => {
    const target = slowStream(1, 1);
    const sink = writableSink('full.safetensors', target.stream, 2);
    const big = new Uint8Array(20 << 20);
    await expect(
      (async () => {
        await sink.write(big);
        await sink.write(big);
        await sink.commit();
      })(),
    ).rejects.toMatchObject({ code: 'IO_WRITE_FAILED', message: expect.stringContaining('full.safetensors') });
    expect(target.closed).toBe(false);
    await sink.abort();
    await expect(sink.write(big)).rejects.toMatchObject({ code: 'IO_WRITE_FAILED' });
  });

  it('syncFileSink: every byte at its offset, partial handle writes continued; truncate + close on commit', async () => {
    let file = new Uint8Array(0);
    const calls: string[] = [];
    const target = {
      write(buffer: Uint8Array, { at }: { at: number }) {
        const n = Math.min(buffer.byteLength, 3000); // a handle may take less than asked
        if (file.byteLength < at + n) {
          const grown = new Uint8Array(at + n);
          grown.set(file);
          file = grown;
        }
        file.set(buffer.subarray(0, n), at);
        return n;
      },
      read(): number {
        return 0;
      },
      truncate(size: number) {
        calls.push(`truncate ${size}`);
        file = file.slice(0, size);
      },
      close() {
        calls.push('close');
      },
    };
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 0, max: 9000 }), { maxLength: 12 }), async (lengths) => {
        file = new Uint8Array(0);
        calls.length = 0;
        const sink = syncFileSink('out.safetensors', target, async () => undefined);
        const expected: number[] = [];
        for (const [i, n] of lengths.entries()) {
          const chunk = Uint8Array.from({ length: n }, (_, j) => (i * 31 + j) & 255);
          expected.push(...chunk);
          await sink.write(chunk);
        }
        await sink.commit();
        expect(Buffer.from(file).equals(Buffer.from(expected))).toBe(true);
        expect(sink.byteLength).toBe(expected.length);
        expect(calls).toEqual([`truncate ${expected.length}`, 'close']);
      }),
      { numRuns: 40 },
    );
  });

  it('syncFileSink: a failing handle rejects with IO_WRITE_FAILED; abort closes and discards the file', async () => {
    let discarded = 0;
    let closed = 0;
    const target = {
      write(): number {
        throw new DOMException('quota exceeded', 'QuotaExceededError');
      },
      read(): number {
        return 0;
      },
      truncate() {},
      close() {
        closed++;
      },
    };
    const sink = syncFileSink('full.safetensors', target, async () => {
      discarded++;
    });
    await expect(sink.write(new Uint8Array(10))).rejects.toMatchObject({
      code: 'IO_WRITE_FAILED',
      message: expect.stringContaining('quota exceeded'),
    });
    await sink.abort();
    expect([closed, discarded]).toEqual([1, 1]);
    await expect(sink.write(new Uint8Array(1))).rejects.toMatchObject({ code: 'IO_WRITE_FAILED' });
  });

  it("spillingSink: past the quota, the file's bytes and every later write go to Blob parts, the file removed", async () => {
    /** An origin-private file whose writes past `quota` bytes throw QuotaExceededError, as Chromium's do. */
    const quotaFile = (quota: number) => {
      let file = new Uint8Array(0);
      let discarded = 0;
      const target = {
        write(buffer: Uint8Array, { at }: { at: number }) {
          if (at + buffer.byteLength > quota) throw new DOMException('quota exceeded', 'QuotaExceededError');
          const n = Math.min(buffer.byteLength, 5000);
          if (file.byteLength < at + n) {
            const grown = new Uint8Array(at + n);
            grown.set(file);
            file = grown;
          }
          file.set(buffer.subarray(0, n), at);
          return n;
        },
        read(buffer: Uint8Array, { at }: { at: number }) {
          const n = Math.max(0, Math.min(buffer.byteLength, file.byteLength - at, 7000));
          buffer.set(file.subarray(at, at + n));
          return n;
        },
        truncate(size: number) {
          file = file.slice(0, size);
        },
        close() {},
      };
      const sink = syncFileSink('out.safetensors', target, async () => {
        discarded++;
      });
      return { sink, bytes: () => file, discarded: () => discarded };
    };
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 20000 }), { maxLength: 10 }),
        fc.integer({ min: 0, max: 60000 }),
        async (lengths, quota) => {
          const opfs = quotaFile(quota);
          const sink = spillingSink(opfs.sink, () => blobSink('out.safetensors'));
          const expected: number[] = [];
          for (const [i, n] of lengths.entries()) {
            const chunk = Uint8Array.from({ length: n }, (_, j) => (i * 29 + j * 3) & 255);
            expected.push(...chunk);
            await sink.write(chunk);
          }
          await sink.commit();
          expect(sink.byteLength).toBe(expected.length);
          const spilled = lengths.some((_, i) => lengths.slice(0, i + 1).reduce((a, b) => a + b, 0) > quota);
          expect(sink.spilled !== null).toBe(spilled);
          const got = sink.spilled
            ? new Uint8Array(await sink.spilled.blob().arrayBuffer())
            : opfs.bytes().subarray(0, expected.length);
          expect(Buffer.from(got).equals(Buffer.from(expected))).toBe(true);
          expect(opfs.discarded()).toBe(spilled ? 1 : 0);
        },
      ),
      { numRuns: 60 },
    );
    // Any other failure is the write's own.
    const broken = syncFileSink(
      'out.safetensors',
      {
        write(): number {
          throw new DOMException('gone', 'InvalidStateError');
        },
        read: () => 0,
        truncate() {},
        close() {},
      },
      async () => undefined,
    );
    const sink = spillingSink(broken, () => blobSink('out.safetensors'));
    await expect(sink.write(new Uint8Array(4))).rejects.toMatchObject({ code: 'IO_WRITE_FAILED' });
    expect(sink.spilled).toBeNull();
  });

  it('readAheadSource: the wrapped bytes for forward, overlapping and backward reads; chunks fetched ahead', async () => {
    const size = 5321;
    const bytes = Uint8Array.from({ length: size }, (_, i) => (i * 7 + 3) & 255);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: size }), fc.integer({ min: 0, max: 1500 }), fc.boolean()), {
          minLength: 1,
          maxLength: 20,
        }),
        fc.boolean(),
        async (reads, sorted) => {
          const src = readAheadSource(bufferSource(bytes, 'base.safetensors'), 1000, 2);
          const ranges = reads.map(([s, n, into]) => [s, Math.min(size, s + n), into] as const);
          if (sorted) ranges.sort((a, b) => a[0] - b[0]);
          // Issued together, as the fuse does with its read-ahead segment, then checked.
          const got = await Promise.all(
            ranges.map(async ([s, e, into]) => {
              if (!into) return src.read(s, e);
              const t = new Uint8Array(e - s);
              await src.readInto?.(s, t);
              return t;
            }),
          );
          for (const [i, [s, e]] of ranges.entries())
            expect(Buffer.from(got[i]!).equals(Buffer.from(bytes.subarray(s, e)))).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
    // A source that takes chunks back (streamedBlobSource): each chunk given back is overwritten at once and filled
    // by a later fetch, so a chunk given back while a read still copies from it shows as wrong bytes.
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: size }), fc.integer({ min: 0, max: 1500 })), {
          minLength: 1,
          maxLength: 20,
        }),
        fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 8 }),
        async (reads, delays) => {
          const spares: Uint8Array[] = [];
          let fetched = 0;
          const recycling = {
            name: 'base.safetensors',
            byteLength: size,
            async read(s: number, e: number) {
              await new Promise((r) => setTimeout(r, delays[fetched++ % delays.length]));
              const spare = spares.pop();
              const out = spare ? new Uint8Array(spare.buffer, 0, e - s) : new Uint8Array(1000);
              out.set(bytes.subarray(s, e));
              return out.subarray(0, e - s);
            },
            recycle(b: Uint8Array) {
              expect(spares.some((x) => x.buffer === b.buffer)).toBe(false); // given back once
              new Uint8Array(b.buffer).fill(0xee);
              spares.push(b);
            },
          };
          const src = readAheadSource(recycling, 1000, 2);
          const ranges = reads.map(([s, n]) => [s, Math.min(size, s + n)] as const).sort((a, b) => a[0] - b[0]);
          const got = await Promise.all(
            ranges.map(async ([s, e]) => {
              const t = new Uint8Array(e - s);
              await src.readInto?.(s, t);
              return t;
            }),
          );
          for (const [i, [s, e]] of ranges.entries())
            expect(Buffer.from(got[i]!).equals(Buffer.from(bytes.subarray(s, e)))).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
    // Front to back, in 400-byte reads: the chunks behind the reads are given back and the later fetches reuse them.
    {
      const given: number[] = [];
      const inner = bufferSource(bytes);
      const src = readAheadSource(
        {
          ...inner,
          read: (s: number, e: number) => inner.read(s, e),
          recycle: (b: Uint8Array) => given.push(b[0]!),
        },
        1000,
        2,
      );
      for (let s = 0; s < size; s += 400) await src.readInto?.(s, new Uint8Array(Math.min(400, size - s)));
      // chunks 0–4, each once, when the reads have passed them; chunk 5 (the last read's) is still kept
      expect(given).toEqual([bytes[0], bytes[1000], bytes[2000], bytes[3000], bytes[4000]]);
    }
    const asked: number[] = [];
    const inner = bufferSource(bytes);
    const counted = {
      ...inner,
      read(s: number, e: number) {
        asked.push(s);
        return inner.read(s, e);
      },
    };
    const src = readAheadSource(counted, 1000, 2);
    await src.read(10, 20);
    expect(asked).toEqual([0, 1000, 2000]); // the chunk read and the two after it
    await src.read(1500, 2500);
    expect(asked).toEqual([0, 1000, 2000, 3000, 4000]);
    await src.read(500, 600); // before the chunks kept: straight from the source
    expect(asked.at(-1)).toBe(500);
  });
});
