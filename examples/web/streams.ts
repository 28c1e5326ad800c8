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

/** A sink whose committed bytes are one Blob made of the written chunks. */
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
  return {
    name,
    get byteLength() {
      return size;
    },
    async write(chunk) {
      if (result || aborted)
        throw new IoError('IO_WRITE_FAILED', `${name}: write after ${result ? 'commit' : 'abort'}`, { file: name });
      // A Blob copies the bytes now, so the writer may reuse its buffer once this resolves.
      parts.push(new Blob([chunk as Uint8Array<ArrayBuffer>]));
      size += chunk.byteLength;
    },
    async commit() {
      if (result) return;
      if (aborted) throw new IoError('IO_WRITE_FAILED', `${name}: commit after abort`, { file: name });
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
