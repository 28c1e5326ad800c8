/**
 * The one I/O interface the core reads through (hyparquet's AsyncBuffer idea): a length and byte ranges.
 * Node file handles, Blobs and ArrayBuffers all implement it; nothing in the core imports `node:` modules.
 */
export interface ByteSource {
  /** Human-readable name used in error messages (a path, a file name, "<memory>"). */
  readonly name: string;
  /** Total size in bytes. */
  readonly byteLength: number;
  /**
   * Bytes [start, end). Must resolve to exactly end - start bytes or reject
   * (a short read is an error, never silently padded).
   */
  read(start: number, end: number): Promise<Uint8Array>;
  /**
   * Optional: fill `target` with bytes [start, start + target.byteLength), so callers can reuse one buffer
   * instead of allocating (and page-faulting) a new one per read. Same exactness rule as `read`.
   */
  readInto?(start: number, target: Uint8Array): Promise<void>;
  /** Release the underlying handle, if any. Idempotent. */
  close?(): Promise<void>;
  /** Identity of the underlying file (e.g. "dev:ino") when known; used to refuse overwriting an input. */
  readonly identity?: string;
}

/** A destination for bytes, written strictly in order. */
export interface ByteSink {
  readonly name: string;
  write(chunk: Uint8Array): Promise<void>;
  /**
   * Optional: overwrite bytes already written, [offset, offset + bytes.byteLength), before commit (the writer uses it
   * to rewrite a safetensors header whose metadata is known only at the end). The range must lie within what was
   * written.
   */
  writeAt?(offset: number, bytes: Uint8Array): Promise<void>;
  /** Make the written bytes durable and visible at the final name (temp file + fsync + rename for files). */
  commit(): Promise<void>;
  /** Remove everything written so far; nothing is left behind. Idempotent. */
  abort(): Promise<void>;
}

/** True for anything shaped like a ByteSource (a length and a read method). */
export function isByteSource(x: unknown): x is ByteSource {
  return (
    typeof x === 'object' &&
    x !== null &&
    typeof (x as ByteSource).read === 'function' &&
    typeof (x as ByteSource).byteLength === 'number'
  );
}
