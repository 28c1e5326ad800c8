/**
 * The page's byte plumbing (examples/web/streams.ts): the Blob sink gathers writes into 8 MiB parts and the
 * writable-stream sink (the chosen file of showSaveFilePicker) streams them with a bounded queue, reusing buffers
 * only after the stream is done with them; both give back exactly the bytes written, in any chunking. A stream that
 * fails makes the write or the commit reject with IO_WRITE_FAILED, never a silent short file.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { blobSink, writableSink } from '../examples/web/streams.js';

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
});
