/**
 * Byte sources and sinks that work anywhere (browsers, Node, workers): Blobs/Files, ArrayBuffers and an
 * in-memory sink. No `node:` imports.
 */
import { IoError } from './errors.js';
import type { ByteSink, ByteSource } from './bytes.js';
import { type ReadWindowOptions, windowedSource } from './read-window.js';

function checkRange(name: string, start: number, end: number, size: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start || end > size) {
    throw new IoError('IO_READ_FAILED', `${name}: byte range ${start}…${end} is outside the data (0…${size})`, {
      file: name,
      expected: size,
      found: end,
    });
  }
}

/**
 * A Blob (or a File from an <input> or a drop) as a ByteSource: reads slice the Blob, so only the requested ranges
 * are loaded. Small reads are served from 8 MiB windows, the next one read ahead (src/core/read-window.ts): each
 * slice costs a round trip in a browser, and a LoRA is hundreds of small tensors. `window: false` slices every read
 * exactly. The name defaults to the File's name.
 */
export function blobSource(
  blob: Blob,
  name?: string,
  options: { window?: ReadWindowOptions | false } = {},
): ByteSource {
  const exact = exactBlobSource(blob, name);
  return options.window === false ? exact : windowedSource(exact, options.window);
}

function exactBlobSource(blob: Blob, name?: string): ByteSource {
  const label = name ?? ((blob as { name?: unknown }).name as string | undefined) ?? '<blob>';
  const size = blob.size;
  return {
    name: typeof label === 'string' && label !== '' ? label : '<blob>',
    byteLength: size,
    async read(start: number, end: number): Promise<Uint8Array> {
      checkRange(label, start, end, size);
      let buf: ArrayBuffer;
      try {
        buf = await blob.slice(start, end).arrayBuffer();
      } catch (e) {
        throw new IoError(
          'IO_READ_FAILED',
          `${label}: reading bytes ${start}…${end} failed (${e instanceof Error ? e.message : String(e)})`,
          { file: label },
          { cause: e },
        );
      }
      if (buf.byteLength !== end - start) {
        throw new IoError(
          'IO_READ_FAILED',
          `${label}: reading bytes ${start}…${end} returned ${buf.byteLength} bytes`,
          { file: label },
        );
      }
      return new Uint8Array(buf);
    },
  };
}

/**
 * Bytes already in memory as a ByteSource. Each read returns a copy, so callers may modify what they get
 * without changing the source.
 */
export function bufferSource(bytes: ArrayBuffer | Uint8Array, name = '<memory>'): ByteSource {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  return {
    name,
    byteLength: view.byteLength,
    async read(start: number, end: number): Promise<Uint8Array> {
      checkRange(name, start, end, view.byteLength);
      return view.slice(start, end);
    },
    async readInto(start: number, target: Uint8Array): Promise<void> {
      checkRange(name, start, start + target.byteLength, view.byteLength);
      target.set(view.subarray(start, start + target.byteLength));
    },
  };
}

/** A sink collecting everything in memory; after commit, the bytes are available as one Uint8Array or a Blob. */
export interface MemorySink extends ByteSink {
  /** True once commit() succeeded. */
  readonly committed: boolean;
  /** Bytes written so far. */
  readonly byteLength: number;
  /** The committed bytes (IO_WRITE_FAILED before commit). */
  bytes(): Uint8Array;
  /** The committed bytes as a Blob (e.g. for a download link). */
  blob(type?: string): Blob;
}

export function memorySink(name = '<memory>'): MemorySink {
  let chunks: Uint8Array[] = [];
  let size = 0;
  let result: Uint8Array<ArrayBuffer> | null = null;
  let aborted = false;
  const notReady = (): never => {
    throw new IoError(
      'IO_WRITE_FAILED',
      `${name}: the output is not available: ${aborted ? 'the write was aborted' : 'commit() has not been called'}`,
      { file: name },
    );
  };
  return {
    name,
    get committed() {
      return result !== null;
    },
    get byteLength() {
      return result ? result.byteLength : size;
    },
    async write(chunk: Uint8Array): Promise<void> {
      if (result || aborted)
        throw new IoError('IO_WRITE_FAILED', `${name}: write after ${result ? 'commit' : 'abort'}`, { file: name });
      chunks.push(chunk.slice()); // the caller may reuse its buffer once write resolves
      size += chunk.byteLength;
    },
    async writeAt(offset: number, bytes: Uint8Array): Promise<void> {
      if (result || aborted)
        throw new IoError('IO_WRITE_FAILED', `${name}: write after ${result ? 'commit' : 'abort'}`, { file: name });
      if (offset < 0 || offset + bytes.byteLength > size)
        throw new IoError(
          'IO_WRITE_FAILED',
          `${name}: rewrite of bytes ${offset}…${offset + bytes.byteLength} beyond the ${size} written`,
          { file: name },
        );
      let at = 0;
      for (const c of chunks) {
        const lo = Math.max(offset, at);
        const hi = Math.min(offset + bytes.byteLength, at + c.byteLength);
        if (lo < hi) c.set(bytes.subarray(lo - offset, hi - offset), lo - at);
        at += c.byteLength;
      }
    },
    async commit(): Promise<void> {
      if (result) return;
      if (aborted) throw new IoError('IO_WRITE_FAILED', `${name}: commit after abort`, { file: name });
      const out = new Uint8Array(size);
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.byteLength;
      }
      chunks = [];
      result = out;
    },
    async abort(): Promise<void> {
      if (result) return;
      aborted = true;
      chunks = [];
      size = 0;
    },
    bytes(): Uint8Array {
      return result ?? notReady();
    },
    blob(type = 'application/octet-stream'): Blob {
      return new Blob([result ?? notReady()], { type });
    },
  };
}
