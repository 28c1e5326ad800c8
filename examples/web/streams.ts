/**
 * The page's byte plumbing: a ByteSource wrapper that reports how much of a file has been read, and a ByteSink
 * that collects the written file as Blob parts (the browser keeps big Blobs out of the JavaScript heap), so the
 * worker never holds the whole output as one ArrayBuffer.
 */
import type { ByteSink, ByteSource } from '../../src/core/bytes.js';
import { IoError } from '../../src/core/errors.js';

/** `source`, calling `onRead(bytesReadSoFar, size)` after each read. */
export function countingSource(source: ByteSource, onRead: (done: number, total: number) => void): ByteSource {
  let done = 0;
  const note = (n: number) => {
    done += n;
    onRead(Math.min(done, source.byteLength), source.byteLength);
  };
  const counted: ByteSource = {
    name: source.name,
    byteLength: source.byteLength,
    async read(start, end) {
      const bytes = await source.read(start, end);
      note(bytes.byteLength);
      return bytes;
    },
  };
  const readInto = source.readInto?.bind(source);
  if (readInto) {
    counted.readInto = async (start, target) => {
      await readInto(start, target);
      note(target.byteLength);
    };
  }
  return counted;
}

/** Bytes gathered into one part before it is handed on: a Blob part or a stream write costs a round trip each. */
const PART = 8 << 20;

/**
 * Gathers written chunks into parts of PART bytes (copied, so the writer may reuse its buffer as soon as a write
 * resolves) and hands each full part to `emit`; `buffers` recycles a part's memory once `emit` is done with it.
 */
class PartBuffer {
  private part: Uint8Array | null = null;
  private used = 0;
  constructor(
    private readonly take: () => Promise<Uint8Array>,
    private readonly emit: (part: Uint8Array) => Promise<void>,
  ) {}

  async write(chunk: Uint8Array): Promise<void> {
    let at = 0;
    while (at < chunk.byteLength) {
      if (!this.part) {
        this.part = await this.take();
        this.used = 0;
      }
      const n = Math.min(chunk.byteLength - at, this.part.byteLength - this.used);
      this.part.set(chunk.subarray(at, at + n), this.used);
      this.used += n;
      at += n;
      if (this.used === this.part.byteLength) await this.flush();
    }
  }

  /** Hand on what is gathered (a partial part as a view of its buffer). */
  async flush(): Promise<void> {
    const part = this.part;
    if (!part || this.used === 0) return;
    this.part = null;
    await this.emit(part.subarray(0, this.used));
  }
}

/** A sink whose committed bytes are one Blob made of the written chunks, in parts of 8 MiB. */
export interface BlobSink extends ByteSink {
  readonly byteLength: number;
  /** The file, after commit (IO_WRITE_FAILED before). */
  blob(): Blob;
}

export function blobSink(name: string, type = 'application/octet-stream'): BlobSink {
  let parts: Blob[] = [];
  let size = 0;
  let result: Blob | null = null;
  let aborted = false;
  const staging = new Uint8Array(PART);
  // A Blob copies its bytes when it is made, so one staging buffer serves every part.
  const buffer = new PartBuffer(
    async () => staging,
    async (part) => {
      parts.push(new Blob([part as Uint8Array<ArrayBuffer>]));
    },
  );
  return {
    name,
    get byteLength() {
      return size;
    },
    async write(chunk) {
      if (result || aborted)
        throw new IoError('IO_WRITE_FAILED', `${name}: write after ${result ? 'commit' : 'abort'}`, { file: name });
      await buffer.write(chunk);
      size += chunk.byteLength;
    },
    async commit() {
      if (result) return;
      if (aborted) throw new IoError('IO_WRITE_FAILED', `${name}: commit after abort`, { file: name });
      await buffer.flush();
      result = new Blob(parts, { type });
      parts = [];
    },
    async abort() {
      if (result) return;
      aborted = true;
      parts = [];
      size = 0;
    },
    blob() {
      if (!result)
        throw new IoError('IO_WRITE_FAILED', `${name}: the output is not available before commit`, { file: name });
      return result;
    },
  };
}

/** What the sink needs of a FileSystemWritableFileStream (or any WritableStream of bytes). */
export interface WritableTarget {
  getWriter(): WritableStreamDefaultWriter<Uint8Array>;
}

/** Where a sink of this module stands: taking bytes, finished, or given up. */
type SinkState = 'open' | 'committed' | 'aborted';

/** IO_WRITE_FAILED naming the sink, the step and the cause. */
function writeFailure(name: string, what: string, e: unknown): IoError {
  return new IoError(
    'IO_WRITE_FAILED',
    `${name}: ${what} failed (${e instanceof Error ? e.message : String(e)})`,
    { file: name },
    { cause: e },
  );
}

/** IO_WRITE_FAILED unless the sink still takes bytes. */
function assertWritable(name: string, state: SinkState): void {
  if (state !== 'open') {
    throw new IoError('IO_WRITE_FAILED', `${name}: write after ${state === 'committed' ? 'commit' : 'abort'}`, {
      file: name,
    });
  }
}

/** Whether commit has nothing left to do (a second commit); IO_WRITE_FAILED after an abort. */
function committedAlready(name: string, state: SinkState): boolean {
  if (state === 'aborted') throw new IoError('IO_WRITE_FAILED', `${name}: commit after abort`, { file: name });
  return state === 'committed';
}
/**
 * A sink that streams into a file chosen with showSaveFilePicker (or an OPFS file) through its writable stream:
 * the bytes go to disk as they are made, never held whole. Writes are gathered into 8 MiB parts; at most `queued`
 * parts are in flight (a bounded queue between the computing code and the disk), their buffers reused. The
 * browser replaces the file only when the stream closes (commit); abort discards everything written.
 */
export function writableSink(
  name: string,
  target: WritableTarget,
  queued = 4,
): ByteSink & { readonly byteLength: number } {
  const writer = target.getWriter();
  const free: Uint8Array[] = [];
  /** Parts written but not yet acknowledged, oldest first. */
  const inFlight: Promise<void>[] = [];
  let made = 0;
  let size = 0;
  let failed: unknown = null;
  let state: SinkState = 'open';
  const fail = (what: string, e: unknown) => writeFailure(name, what, e);
  const take = async (): Promise<Uint8Array> => {
    const buffer = free.pop();
    if (buffer) return buffer;
    if (made < queued) {
      made++;
      return new Uint8Array(PART);
    }
    // Every buffer is in flight: wait for the oldest write, which returns its buffer.
    await inFlight.shift();
    if (failed) throw fail('writing', failed);
    return free.pop() ?? new Uint8Array(PART);
  };
  const buffer = new PartBuffer(take, async (part) => {
    if (failed) throw fail('writing', failed);
    const whole = new Uint8Array(part.buffer, 0, part.buffer.byteLength);
    inFlight.push(
      writer.write(part).then(
        () => {
          free.push(whole);
        },
        (e: unknown) => {
          failed ??= e;
        },
      ),
    );
  });
  return {
    name,
    get byteLength() {
      return size;
    },
    async write(chunk) {
      assertWritable(name, state);
      await buffer.write(chunk);
      size += chunk.byteLength;
    },
    async commit() {
      if (committedAlready(name, state)) return;
      await buffer.flush();
      await Promise.all(inFlight.splice(0));
      if (failed) throw fail('writing', failed);
      try {
        await writer.close();
      } catch (e) {
        throw fail('closing', e);
      }
      state = 'committed';
    },
    async abort() {
      if (state !== 'open') return;
      state = 'aborted';
      await writer.abort().catch(() => undefined);
      await Promise.all(inFlight.splice(0));
    },
  };
}

/** What the sink needs of a FileSystemSyncAccessHandle (origin-private files, workers only). */
export interface SyncTarget {
  write(buffer: Uint8Array, options: { at: number }): number;
  read(buffer: Uint8Array, options: { at: number }): number;
  truncate(size: number): void;
  close(): void;
}

/**
 * A sink that writes into an origin-private file through its synchronous access handle: each write is a plain file
 * write on the worker's thread — no stream, no copy into a Blob, no round trip to the browser process per chunk
 * (306–386 MB/s here against ≈ 100 MB/s for a createWritable stream; bench/browser-io.ts). The caller owns the file:
 * after commit it reads it back as a File (a Blob backed by the file, never held in memory); `discard` is called on
 * abort to remove it.
 */
export function syncFileSink(
  name: string,
  target: SyncTarget,
  discard: () => Promise<void>,
): ByteSink & { readonly byteLength: number; readBack(at: number, into: Uint8Array): void } {
  let size = 0;
  let state: SinkState = 'open';
  const fail = (what: string, e: unknown) => writeFailure(name, what, e);
  return {
    name,
    get byteLength() {
      return size;
    },
    readBack(at, into) {
      let done = 0;
      while (done < into.byteLength) {
        const n = target.read(into.subarray(done), { at: at + done });
        if (n <= 0)
          throw fail('reading back', new Error(`read ${n} of ${into.byteLength - done} bytes at ${at + done}`));
        done += n;
      }
    },
    async write(chunk) {
      assertWritable(name, state);
      let at = 0;
      try {
        while (at < chunk.byteLength) {
          const n = target.write(chunk.subarray(at), { at: size + at });
          if (n <= 0) throw new Error(`wrote ${n} of ${chunk.byteLength - at} bytes`);
          at += n;
        }
      } catch (e) {
        throw fail('writing', e);
      }
      size += chunk.byteLength;
    },
    async commit() {
      if (committedAlready(name, state)) return;
      try {
        target.truncate(size);
        target.close();
      } catch (e) {
        throw fail('closing', e);
      }
      state = 'committed';
    },
    async abort() {
      if (state !== 'open') return;
      state = 'aborted';
      try {
        target.close();
      } catch {
        // already closed
      }
      await discard().catch(() => undefined);
    },
  };
}

/** Whether a write failed because the origin's storage quota is used up (a DOMException named QuotaExceededError). */
export function isQuotaError(e: unknown): boolean {
  for (let c: unknown = e, depth = 0; c && depth < 4; c = (c as { cause?: unknown }).cause, depth++) {
    if ((c as { name?: unknown }).name === 'QuotaExceededError') return true;
  }
  return false;
}

/**
 * A sink that writes into `first` (an origin-private file) until a write fails because the storage quota is used up,
 * then moves to `second()` (Blob parts): the bytes `first` already took are read back into `second` in PART-sized
 * pieces, `first` is aborted (its file removed), and the failed write and every later one go to `second`. Any other
 * failure of `first` is the write's failure. `spilled` says which one holds the result.
 */
export function spillingSink<S extends ByteSink & { readonly byteLength: number }>(
  first: ByteSink & { readonly byteLength: number; readBack(at: number, into: Uint8Array): void },
  second: () => S,
): ByteSink & { readonly byteLength: number; readonly spilled: S | null } {
  let spilled: S | null = null;
  const spill = async (): Promise<S> => {
    const to = second();
    const piece = new Uint8Array(Math.min(PART, first.byteLength));
    for (let at = 0; at < first.byteLength; at += piece.byteLength) {
      const n = Math.min(piece.byteLength, first.byteLength - at);
      first.readBack(at, piece.subarray(0, n));
      await to.write(piece.subarray(0, n));
    }
    await first.abort();
    return to;
  };
  return {
    name: first.name,
    get byteLength() {
      return spilled ? spilled.byteLength : first.byteLength;
    },
    get spilled() {
      return spilled;
    },
    async write(chunk) {
      if (spilled) return spilled.write(chunk);
      try {
        await first.write(chunk);
      } catch (e) {
        if (!isQuotaError(e)) throw e;
        spilled = await spill();
        await spilled.write(chunk);
      }
    },
    async commit() {
      await (spilled ?? first).commit();
    },
    async abort() {
      await (spilled ?? first).abort();
    },
  };
}

/**
 * `source` read ahead for a reader that goes through it front to back (a fuse reading its base checkpoint): the file
 * is fetched in aligned chunks of `chunk` bytes, and every read also starts the fetch of the `depth` chunks after
 * the last one it needs, so the browser keeps delivering bytes while the worker computes — instead of only when the
 * next tensor is asked for. Chunks before a read's start are let go; a read before the oldest chunk kept goes to
 * `source` directly. `readInto` copies from the chunks into the caller's buffer (one copy, as a plain read is).
 * Where `source` takes buffers back (`recycle`, streamedBlobSource), a chunk let go is given back once no read still
 * copies from it, so the next chunks fill the same few buffers: a fresh 16 MiB buffer per chunk faulted in 2.1 GB of
 * new pages per SD1.5 fuse, 6–7 s of the worker's time on the test machine (bench/RESULTS.md, issue 16 session 7).
 */
export function readAheadSource(
  source: ByteSource & { recycle?(bytes: Uint8Array): void },
  chunk = 16 << 20,
  depth = 2,
): ByteSource {
  const size = source.byteLength;
  /** A chunk being fetched or fetched, and how many reads will still copy from it. */
  interface Chunk {
    bytes: Promise<Uint8Array>;
    users: number;
    dropped: boolean;
  }
  /** Chunk index → the chunk. */
  const chunks = new Map<number, Chunk>();
  /** Lowest chunk index still kept (reads before it go to the source). */
  let floor = 0;
  /** Give a chunk's buffer back to the source once it is let go and no read copies from it any more. */
  const retire = (c: Chunk): void => {
    if (!c.dropped || c.users > 0 || !source.recycle) return;
    c.bytes.then(
      (b) => source.recycle?.(b),
      () => undefined,
    );
  };
  const fetch = (k: number): Chunk => {
    let c = chunks.get(k);
    if (!c) {
      const bytes = source.read(k * chunk, Math.min(size, (k + 1) * chunk));
      bytes.catch(() => undefined); // reported to the read that needs it
      c = { bytes, users: 0, dropped: false };
      chunks.set(k, c);
    }
    return c;
  };
  /** The chunks covering [start, end), fetched, and the ones after them started; null: before the kept chunks. */
  const cover = (start: number, end: number): Chunk[] | null => {
    const k0 = Math.floor(start / chunk);
    if (k0 < floor) return null;
    const k1 = Math.floor((end - 1) / chunk);
    for (const [k, c] of chunks) {
      if (k < k0) {
        chunks.delete(k);
        c.dropped = true;
        retire(c);
      }
    }
    floor = k0;
    const need: Chunk[] = [];
    for (let k = k0; k <= k1; k++) need.push(fetch(k));
    for (let k = k1 + 1; k <= k1 + depth && k * chunk < size; k++) fetch(k);
    for (const c of need) c.users++;
    return need;
  };
  const copy = async (start: number, target: Uint8Array, need: Chunk[]): Promise<void> => {
    let at = 0;
    let k = Math.floor(start / chunk);
    try {
      for (const c of need) {
        const bytes = await c.bytes;
        const from = start + at - k * chunk;
        const n = Math.min(bytes.byteLength - from, target.byteLength - at);
        target.set(bytes.subarray(from, from + n), at);
        at += n;
        k++;
      }
    } finally {
      for (const c of need) {
        c.users--;
        retire(c);
      }
    }
  };
  return {
    name: source.name,
    byteLength: size,
    async read(start, end) {
      if (end <= start || end > size) return source.read(start, end);
      const need = cover(start, end);
      if (!need) return source.read(start, end);
      const out = new Uint8Array(end - start);
      await copy(start, out, need);
      return out;
    },
    async readInto(start, target) {
      const end = start + target.byteLength;
      const need = end > start && end <= size ? cover(start, end) : null;
      if (need) return copy(start, target, need);
      if (source.readInto) return source.readInto(start, target);
      target.set(await source.read(start, end));
    },
    async close() {
      chunks.clear();
      await source.close?.();
    },
  };
}
