/**
 * Reading a safetensors file through a ByteSource: the 8-byte header length and the header are read and
 * validated up front; tensor bytes are fetched only when asked for, one byte range at a time.
 */
import { IoError, SafetensorsError } from '../core/errors.js';
import type { ByteSource } from '../core/bytes.js';
import type { DType } from '../core/tensor.js';
import {
  bytesAsTyped,
  decodeInto,
  decodeToF32,
  isFloatDType,
  LITTLE_ENDIAN,
  type TypedArrayFor,
} from '../core/dtype.js';
import { MAX_HEADER_LENGTH, parseHeader, type TensorInfo } from './header.js';
import { SNIFF_BYTES, sniffFileKind } from './sniff.js';

/** Scratch buffers a file keeps for readF32 between calls, and the size up to which several are kept. */
const SCRATCH_KEPT = 4;
const SCRATCH_SMALL = 16 << 20;

export type { TensorInfo } from './header.js';

/** A parsed safetensors file: the validated header, and lazy access to tensor bytes. */
export class SafetensorsFile {
  /** The source's name (a path, a file name, "<memory>"), used in messages. */
  readonly name: string;
  readonly source: ByteSource;
  /** Total file size in bytes. */
  readonly byteLength: number;
  /** N, the header's length in bytes (padding included). */
  readonly headerLength: number;
  /** Absolute offset of the data section: 8 + N. */
  readonly dataOffset: number;
  /** Every tensor, in file (offset) order. */
  readonly tensors: readonly TensorInfo[];
  /** The `__metadata__` strings ({} when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  readonly #byName: Map<string, TensorInfo>;

  constructor(
    source: ByteSource,
    headerLength: number,
    tensors: readonly TensorInfo[],
    metadata: Readonly<Record<string, string>>,
  ) {
    this.name = source.name;
    this.source = source;
    this.byteLength = source.byteLength;
    this.headerLength = headerLength;
    this.dataOffset = 8 + headerLength;
    this.tensors = Object.freeze([...tensors]);
    this.metadata = Object.freeze({ ...metadata });
    this.#byName = new Map(tensors.map((t) => [t.name, t]));
  }

  /** Tensor names in file order. */
  get names(): string[] {
    return this.tensors.map((t) => t.name);
  }

  /** The tensor's header entry, or undefined. */
  get(name: string): TensorInfo | undefined {
    return this.#byName.get(name);
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** The tensor's header entry; SAFETENSORS_TENSOR_NOT_FOUND when absent. */
  info(name: string): TensorInfo {
    const t = this.#byName.get(name);
    if (!t) {
      throw new SafetensorsError(
        'SAFETENSORS_TENSOR_NOT_FOUND',
        `${this.name}: no tensor named '${name}' (the file has ${this.tensors.length} tensors)`,
        { file: this.name, key: name },
      );
    }
    return t;
  }

  /**
   * The stored bytes of a tensor (little-endian, as in the file). With `into`, the bytes are read into the start
   * of that buffer (at least byteLength long; reuse it across tensors to avoid allocating) and the filled
   * subarray is returned.
   */
  async read(name: string, into?: Uint8Array): Promise<Uint8Array> {
    const t = this.info(name);
    if (into !== undefined) {
      if (!(into instanceof Uint8Array) || into.byteLength < t.byteLength) {
        throw new SafetensorsError(
          'SAFETENSORS_BUFFER_TOO_SMALL',
          `${this.name}: tensor '${name}' needs ${t.byteLength} bytes; the buffer given holds ${into instanceof Uint8Array ? into.byteLength : 'none'}`,
          { file: this.name, key: name, expected: t.byteLength },
        );
      }
      const target = into.subarray(0, t.byteLength);
      await this.#readRange(t, target);
      return target;
    }
    if (t.byteLength === 0) return new Uint8Array(0);
    const bytes = await this.source.read(t.offset, t.offset + t.byteLength);
    if (!(bytes instanceof Uint8Array) || bytes.byteLength !== t.byteLength) {
      throw new IoError(
        'IO_READ_FAILED',
        `${this.name}: reading tensor '${name}' returned ${bytes instanceof Uint8Array ? bytes.byteLength : 'no'} bytes; expected ${t.byteLength}`,
        { file: this.name, key: name },
      );
    }
    return bytes;
  }

  async #readRange(t: TensorInfo, target: Uint8Array): Promise<void> {
    if (target.byteLength === 0) return;
    if (this.source.readInto) {
      await this.source.readInto(t.offset, target);
      return;
    }
    const bytes = await this.source.read(t.offset, t.offset + target.byteLength);
    if (!(bytes instanceof Uint8Array) || bytes.byteLength !== target.byteLength) {
      throw new IoError(
        'IO_READ_FAILED',
        `${this.name}: reading tensor '${t.name}' returned ${bytes instanceof Uint8Array ? bytes.byteLength : 'no'} bytes; expected ${target.byteLength}`,
        { file: this.name, key: t.name },
      );
    }
    target.set(bytes);
  }

  /**
   * The tensor as a typed array of its stored dtype (Float32Array for F32, Uint16Array for F16/BF16, Uint8Array
   * for F8/U8/BOOL, BigInt64Array for I64, …). Copied into an aligned buffer when the bytes are not aligned.
   */
  async readTyped<D extends DType = DType>(name: string): Promise<TypedArrayFor<D>> {
    const t = this.info(name);
    return bytesAsTyped(t.dtype, await this.read(name)) as unknown as TypedArrayFor<D>;
  }

  /**
   * The tensor decoded to f32, whatever float dtype it is stored in (F64 rounds to nearest even).
   * Integer dtypes are refused with SAFETENSORS_DTYPE_NOT_FLOAT. With `into` (at least numel long) the values
   * are written there and the filled subarray is returned: with a reused `into`, reading a whole checkpoint
   * allocates nothing per tensor (stored bytes go through a scratch buffer the file keeps until close()).
   */
  async readF32(name: string, into?: Float32Array): Promise<Float32Array> {
    const t = this.info(name);
    const what = `${this.name}: tensor '${name}'`;
    if (!isFloatDType(t.dtype)) decodeToF32(t.dtype, new Uint8Array(0), what); // throws before any read
    if (into !== undefined && (!(into instanceof Float32Array) || into.length < t.numel)) {
      throw new SafetensorsError(
        'SAFETENSORS_BUFFER_TOO_SMALL',
        `${what} has ${t.numel} elements; the Float32Array given holds ${into instanceof Float32Array ? into.length : 'none'}`,
        { file: this.name, key: name, expected: t.numel },
      );
    }
    const out = into ? into.subarray(0, t.numel) : new Float32Array(t.numel);
    if (t.dtype === 'F32' && LITTLE_ENDIAN) {
      await this.#readRange(t, new Uint8Array(out.buffer, out.byteOffset, t.byteLength));
      return out;
    }
    const scratch = this.#takeScratch(t.byteLength);
    try {
      await this.#readRange(t, scratch);
      decodeInto(t.dtype, scratch, out, what);
    } finally {
      this.#giveScratch(scratch);
    }
    return out;
  }

  /** Free scratch buffers (a few: a module's factors are read concurrently, and fresh pages are costly). */
  #scratch: Uint8Array[] = [];

  /** An 8-byte-aligned buffer of n bytes, reused across calls (the smallest free one that fits, grown if none). */
  #takeScratch(n: number): Uint8Array {
    let best = -1;
    for (let i = 0; i < this.#scratch.length; i++) {
      const len = this.#scratch[i]?.byteLength ?? 0;
      if (len >= n && (best < 0 || len < (this.#scratch[best]?.byteLength ?? 0))) best = i;
    }
    // None fits: the largest free one is replaced by a bigger one (so the list stays short).
    if (best < 0 && this.#scratch.length > 0) {
      let largest = 0;
      for (let i = 1; i < this.#scratch.length; i++)
        if ((this.#scratch[i]?.byteLength ?? 0) > (this.#scratch[largest]?.byteLength ?? 0)) largest = i;
      this.#scratch.splice(largest, 1);
    }
    const buf = best >= 0 ? (this.#scratch.splice(best, 1)[0] ?? new Uint8Array(n)) : new Uint8Array(n);
    return buf.subarray(0, n);
  }

  #giveScratch(s: Uint8Array): void {
    const whole = new Uint8Array(s.buffer, 0, s.buffer.byteLength);
    // Small buffers up to SCRATCH_KEPT; a large one only alone (as one scratch buffer was kept before).
    if (this.#scratch.length === 0 || (this.#scratch.length < SCRATCH_KEPT && whole.byteLength <= SCRATCH_SMALL))
      this.#scratch.push(whole);
  }

  /** Close the underlying source. Idempotent. */
  async close(): Promise<void> {
    this.#scratch = [];
    await this.source.close?.();
  }
}

/**
 * Read and validate the header of a safetensors file. Only the first 8 + N bytes are read; every rule of the
 * format is checked (see docs/safetensors.md) and a violation is a SafetensorsError naming the file and key.
 */
export async function parseSafetensors(source: ByteSource): Promise<SafetensorsFile> {
  const file = source.name;
  const size = source.byteLength;
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new IoError('IO_READ_FAILED', `${file}: the source reports an invalid length ${String(size)}`, { file });
  }
  if (size < 8) {
    await refuseOtherKind(source, size === 0 ? new Uint8Array(0) : await readExactly(source, 0, size));
    throw new SafetensorsError(
      'SAFETENSORS_TRUNCATED',
      `${file}: the file is ${size} bytes long; a safetensors file starts with an 8-byte header length`,
      { file, expected: 8, found: size },
    );
  }
  const prefix = await readExactly(source, 0, 8);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_LENGTH)) {
    await refuseOtherKind(source, prefix);
    throw new SafetensorsError(
      'SAFETENSORS_HEADER_TOO_LARGE',
      `${file}: the header length is ${n} bytes; at most ${MAX_HEADER_LENGTH} is allowed`,
      { file, expected: MAX_HEADER_LENGTH, found: n.toString() },
    );
  }
  const headerLength = Number(n);
  if (headerLength > size) {
    await refuseOtherKind(source, prefix);
    throw new SafetensorsError(
      'SAFETENSORS_HEADER_TOO_LARGE',
      `${file}: the header length is ${headerLength} bytes but the whole file is only ${size} bytes`,
      { file, expected: size, found: headerLength },
    );
  }
  if (8 + headerLength > size) {
    throw new SafetensorsError(
      'SAFETENSORS_TRUNCATED',
      `${file}: the header needs bytes 8…${8 + headerLength} but the file is ${size} bytes long`,
      { file, expected: 8 + headerLength, found: size },
    );
  }
  const headerBytes = headerLength === 0 ? new Uint8Array(0) : await readExactly(source, 8, 8 + headerLength);
  const { tensors, metadata } = parseHeader(headerBytes, file, 8 + headerLength, size - 8 - headerLength);
  return new SafetensorsFile(source, headerLength, tensors, metadata);
}

/**
 * The header length is impossible: if the first bytes say what the file really is (a PyTorch pickle, GGUF, an HTML
 * error page …), refuse with that. Text-looking starts are read a little further to tell JSON, HTML and Git LFS
 * pointers apart; binary files are judged on the bytes already read.
 */
async function refuseOtherKind(source: ByteSource, first: Uint8Array): Promise<void> {
  let bytes = first;
  const size = source.byteLength;
  if (bytes.length < SNIFF_BYTES && size > bytes.length && sniffFileKind(bytes, size)?.kind === 'text') {
    bytes = await readExactly(source, 0, Math.min(size, SNIFF_BYTES));
  }
  const sniffed = sniffFileKind(bytes, size);
  if (!sniffed) return;
  throw new SafetensorsError(
    'SAFETENSORS_NOT_SAFETENSORS',
    `${source.name}: not a safetensors file: this is ${sniffed.what}; ${sniffed.fix}`,
    { file: source.name, kind: sniffed.kind, found: sniffed.what },
  );
}

async function readExactly(source: ByteSource, start: number, end: number): Promise<Uint8Array> {
  const bytes = await source.read(start, end);
  if (!(bytes instanceof Uint8Array) || bytes.byteLength !== end - start) {
    throw new IoError(
      'IO_READ_FAILED',
      `${source.name}: reading bytes ${start}…${end} returned ${bytes instanceof Uint8Array ? bytes.byteLength : 'no'} bytes`,
      { file: source.name, expected: end - start },
    );
  }
  return bytes;
}
