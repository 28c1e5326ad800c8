/**
 * A Blob read front to back through one stream (`Blob.stream()`, a byte stream read into the caller's own buffers
 * where the runtime supports it) instead of a File.slice per read. In a browser each slice is a round trip to the
 * browser process and a fresh buffer; the stream is one pipe: reading a 135 MB file took 0.17–0.36 s streamed
 * against 0.5–1.4 s in 8–64 MiB slices (headless Chromium, bench/RESULTS.md). For readers that go through a file
 * in order — a fuse reads its base checkpoint tensor by tensor — with reads that go backwards served by a slice.
 */
import type { ByteSource } from './bytes.js';
import { IoError } from './errors.js';

/** Bytes asked of one BYOB read at most. */
const BYOB_STEP = 4 << 20;

/** A forward gap larger than this restarts the stream at the read instead of streaming through the gap. */
const MAX_SKIP = 32 << 20;

/** Buffers given back with `recycle` kept for later reads at most. */
const MAX_SPARES = 4;

/** A ByteSource whose reads may fill buffers given back to it instead of fresh ones. */
export interface RecyclingSource extends ByteSource {
  /**
   * Give back bytes a read returned, which the caller will not touch again: a later read of at most their buffer's
   * size fills that buffer instead of a fresh one (a fresh buffer's pages are faulted in as they are first written,
   * which costs more than the copy itself on some machines: bench/RESULTS.md, issue 16 session 7).
   */
  recycle(bytes: Uint8Array): void;
}

type Reader =
  | { byob: true; reader: ReadableStreamBYOBReader }
  | { byob: false; reader: ReadableStreamDefaultReader<Uint8Array> };

function openReader(blob: Blob, at: number): Reader {
  const stream = blob.slice(at).stream();
  try {
    return { byob: true, reader: stream.getReader({ mode: 'byob' }) };
  } catch {
    return { byob: false, reader: stream.getReader() };
  }
}

/**
 * `blob` as a ByteSource whose reads are served from one forward stream. Reads are handled one at a time in the
 * order they are made; a read that starts before the stream's position is served by `blob.slice` (correct, just
 * not streamed). Each read returns a buffer the caller owns: a fresh one, or one it gave back with `recycle`.
 */
export function streamedBlobSource(blob: Blob, name: string): RecyclingSource {
  const size = blob.size;
  let reader: Reader | null = null;
  /** File offset of the next byte the stream gives. */
  let position = 0;
  /** Bytes the default reader gave beyond the last read, at `position - leftover.byteLength`. */
  let leftover: Uint8Array = new Uint8Array(0);
  let queue: Promise<unknown> = Promise.resolve();
  /** Buffers given back by the caller (`recycle`), largest last. */
  const spares: ArrayBuffer[] = [];
  const recycle = (bytes: Uint8Array): void => {
    const b = bytes.buffer;
    if (!(b instanceof ArrayBuffer) || b.byteLength === 0 || spares.includes(b)) return;
    spares.push(b);
    spares.sort((x, y) => x.byteLength - y.byteLength);
    if (spares.length > MAX_SPARES) spares.shift();
  };
  /** A spare buffer of at least `length` bytes (the smallest such), or a fresh one. */
  const bufferFor = (length: number): Uint8Array => {
    const i = spares.findIndex((b) => b.byteLength >= length);
    if (i < 0) return new Uint8Array(length);
    const [b] = spares.splice(i, 1);
    return new Uint8Array(b as ArrayBuffer, 0, length);
  };

  const fail = (start: number, end: number, e: unknown): IoError =>
    new IoError(
      'IO_READ_FAILED',
      `${name}: reading bytes ${start}…${end} failed (${e instanceof Error ? e.message : String(e)})`,
      { file: name },
      { cause: e },
    );
  const restart = (at: number): void => {
    if (reader) void reader.reader.cancel().catch(() => undefined);
    reader = openReader(blob, at);
    position = at;
    leftover = new Uint8Array(0);
  };
  /**
   * The next `length` bytes of the stream, in a buffer of their own (a BYOB read transfers the buffer it fills: the
   * bytes are returned as a view of the last buffer the stream handed back).
   */
  const next = async (length: number): Promise<Uint8Array> => {
    const out = bufferFor(length);
    let at = Math.min(leftover.byteLength, length);
    out.set(leftover.subarray(0, at));
    leftover = leftover.subarray(at);
    let buffer = out.buffer as ArrayBuffer;
    while (at < length) {
      const r = reader;
      if (!r) throw new Error('stream closed');
      if (r.byob) {
        const { done, value } = await r.reader.read(new Uint8Array(buffer, at, Math.min(length - at, BYOB_STEP)));
        if (done || !value) throw new Error(`the stream ended ${length - at} bytes early`);
        buffer = value.buffer as ArrayBuffer;
        at += value.byteLength;
        position += value.byteLength;
      } else {
        const { done, value } = await r.reader.read();
        if (done || !value) throw new Error(`the stream ended ${length - at} bytes early`);
        position += value.byteLength;
        const n = Math.min(value.byteLength, length - at);
        out.set(value.subarray(0, n), at);
        leftover = value.subarray(n);
        at += n;
      }
    }
    return buffer === out.buffer ? out : new Uint8Array(buffer, 0, length);
  };

  const streamed = async (start: number, end: number): Promise<Uint8Array> => {
    const streamAt = position - leftover.byteLength;
    if (!reader || start < streamAt || start - streamAt > MAX_SKIP) restart(start);
    // Skip forward to `start` (a small gap: padding, a tensor nobody asked for).
    for (let gap = start - (position - leftover.byteLength); gap > 0; ) {
      const skipped = await next(Math.min(gap, 1 << 20));
      gap -= skipped.byteLength;
      recycle(skipped);
    }
    const bytes = await next(end - start);
    if (position === size && leftover.byteLength === 0) await drain();
    return bytes;
  };
  /** Read the stream's end and let it go (a Blob stream read to its last byte but not to its end stays open). */
  const drain = async (): Promise<void> => {
    const r = reader;
    reader = null;
    if (!r) return;
    const { done } = r.byob ? await r.reader.read(new Uint8Array(1)) : await r.reader.read();
    if (!done) throw new Error(`the stream gave more than the blob's ${size} bytes`);
    r.reader.releaseLock();
  };

  return {
    name,
    byteLength: size,
    read(start, end) {
      if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && start <= end && end <= size)) {
        return Promise.reject(
          new IoError('IO_READ_FAILED', `${name}: bytes ${start}…${end} are outside the file (${size} bytes)`, {
            file: name,
          }),
        );
      }
      const work = queue.then(async () => {
        if (end === start) return new Uint8Array(0);
        const streamAt = reader ? position - leftover.byteLength : -1;
        try {
          if (reader && start < streamAt) return new Uint8Array(await blob.slice(start, end).arrayBuffer());
          return await streamed(start, end);
        } catch (e) {
          reader = null;
          throw fail(start, end, e);
        }
      });
      queue = work.catch(() => undefined);
      return work;
    },
    recycle,
    async close() {
      spares.length = 0;
      await queue;
      // Not awaited: cancelling a stream read to its end may never settle (seen in Chromium 156).
      if (reader) void reader.reader.cancel().catch(() => undefined);
      reader = null;
    },
  };
}
