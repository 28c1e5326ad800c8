/**
 * Writing safetensors files to any ByteSink, streaming: the header (which needs every name, dtype and shape)
 * goes first, then each tensor's bytes in the given order. A tensor's data may be a thunk that produces it only
 * when its turn comes, so at most one tensor need be in memory at a time.
 */
import { SafetensorsError } from '../core/errors.js';
import type { ByteSink, ByteSource } from '../core/bytes.js';
import { requireHost } from '../core/host.js';
import { DTYPE_SIZE, isDType, type DType } from '../core/tensor.js';
import { typedAsBytes } from '../core/dtype.js';
import { METADATA_KEY, show, type TensorInfo } from './header.js';

/** Tensor bytes: a Uint8Array of stored (little-endian) bytes, or any typed array / DataView over them. */
export type TensorData = Uint8Array | ArrayBufferView;

/**
 * A tensor's bytes in consecutive pieces, for tensors too large to hold at once: each piece is written before the
 * next is asked for (so its buffer may be reused afterwards); together they must make exactly the tensor's bytes.
 */
export type TensorChunks = AsyncIterable<Uint8Array>;

export interface TensorToWrite {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /**
   * The bytes, or a function producing them when this tensor is written (called once, in order): the bytes, or the
   * bytes in pieces (TensorChunks).
   */
  readonly data: TensorData | (() => TensorData | TensorChunks | Promise<TensorData | TensorChunks>);
}

export type TensorsToWrite = readonly TensorToWrite[] | Iterable<TensorToWrite> | AsyncIterable<TensorToWrite>;

export interface WriteOptions {
  /** String → string metadata stored under `__metadata__`. */
  readonly metadata?: Readonly<Record<string, string>>;
  /**
   * Inputs the output must not replace (sources or paths). With a path target the check happens before anything
   * is written (IoError OUTPUT_WOULD_OVERWRITE_INPUT). A ByteSink target is the caller's responsibility
   * (fileSink(path, { refuse }) performs the same check).
   */
  readonly refuseOverwrite?: readonly (ByteSource | string)[];
  /**
   * Node, path targets: write with O_DIRECT, bypassing the page cache, where the filesystem allows it (see
   * fileSink). Worth it for outputs of many GB; the bytes are the same either way.
   */
  readonly direct?: boolean;
  /**
   * Node, path targets: fsync the output before renaming it into place (default true). false keeps the atomic
   * temp + rename but leaves the writeback to the OS (see SinkOptions.fsync).
   */
  readonly fsync?: boolean;
  /**
   * Metadata known only once every tensor is written (e.g. hashes of inputs computed from the run's own reads): the
   * whole `__metadata__` that replaces `metadata`. The header is rewritten in place at the end, so its JSON must not
   * be longer than the one written first (same keys in the same order, values of the same length: placeholders);
   * shorter is padded with spaces. Needs a sink with `writeAt` (file paths, memorySink).
   */
  readonly lateMetadata?: () => Promise<Readonly<Record<string, string>>>;
  /** Called after each tensor's bytes were handed to the sink (progress reporting). */
  readonly onTensor?: (info: TensorInfo, index: number, count: number) => void;
}

export interface WriteResult {
  /** The sink's name (the target path for files). */
  readonly name: string;
  /** Total bytes written. */
  readonly byteLength: number;
  /** N: header length including padding. */
  readonly headerLength: number;
  /** What was written, in file order, with absolute offsets. */
  readonly tensors: readonly TensorInfo[];
}

/** The bytes before the data section and where every tensor will go. */
export interface SafetensorsPlan {
  /** 8-byte length + header JSON + space padding (a multiple of 8 bytes). */
  readonly prefix: Uint8Array;
  readonly headerLength: number;
  readonly tensors: readonly TensorInfo[];
  /** Total file size. */
  readonly byteLength: number;
}

function invalid(message: string, details: Record<string, unknown> = {}): never {
  throw new SafetensorsError('SAFETENSORS_WRITE_INVALID', message, details);
}

/**
 * Validate names, dtypes, shapes and metadata, and lay out the header. Eager data is checked for its byte
 * length here, before anything is written; thunk data is checked when produced.
 */
export function planSafetensors(
  tensors: readonly TensorToWrite[],
  metadata?: Readonly<Record<string, string>>,
  target = '<output>',
): SafetensorsPlan {
  const seen = new Set<string>();
  const infos: TensorInfo[] = [];
  const parts: string[] = [];
  if (metadata !== undefined) {
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
      invalid(`${target}: metadata must be an object of strings; found ${show(metadata)}`, { file: target });
    }
    const keys = Object.keys(metadata);
    for (const k of keys) {
      if (typeof metadata[k] !== 'string') {
        invalid(`${target}: metadata '${k}' must be a string; found ${show(metadata[k])}`, { file: target, key: k });
      }
    }
    if (keys.length > 0) parts.push(`${JSON.stringify(METADATA_KEY)}:${JSON.stringify(metadata)}`);
  }
  let offset = 0;
  for (const t of tensors) {
    if (typeof t !== 'object' || t === null)
      invalid(`${target}: each tensor must be an object; found ${show(t)}`, { file: target });
    const { name, dtype, shape } = t;
    if (typeof name !== 'string')
      invalid(`${target}: a tensor name must be a string; found ${show(name)}`, { file: target });
    if (name === METADATA_KEY)
      invalid(`${target}: '${METADATA_KEY}' is reserved for metadata and cannot name a tensor`, {
        file: target,
        key: name,
      });
    if (seen.has(name)) invalid(`${target}: tensor '${name}' is given more than once`, { file: target, key: name });
    seen.add(name);
    if (!isDType(dtype)) {
      invalid(
        `${target}: tensor '${name}' has dtype ${show(dtype)}; expected one of ${Object.keys(DTYPE_SIZE).join(', ')}`,
        { file: target, key: name },
      );
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      invalid(`${target}: tensor '${name}' has shape ${show(shape)}; expected an array of non-negative integers`, {
        file: target,
        key: name,
      });
    }
    const dims = (shape as number[]).map((d) => d + 0);
    const count = dims.reduce((a, d) => a * d, 1);
    const byteLength = count * DTYPE_SIZE[dtype];
    if (!Number.isSafeInteger(byteLength) || !Number.isSafeInteger(offset + byteLength)) {
      invalid(`${target}: tensor '${name}' with shape ${show(shape)} is too large to address`, {
        file: target,
        key: name,
      });
    }
    if (typeof t.data !== 'function') checkData(t.data, dtype, byteLength, name, target);
    const info: TensorInfo = Object.freeze({
      name,
      dtype,
      shape: Object.freeze(dims),
      numel: count,
      byteLength,
      offset, // relative for now; made absolute below
      dataOffsets: Object.freeze([offset, offset + byteLength] as [number, number]),
    });
    infos.push(info);
    parts.push(
      `${JSON.stringify(name)}:{"dtype":${JSON.stringify(dtype)},"shape":${JSON.stringify(dims)},"data_offsets":[${offset},${offset + byteLength}]}`,
    );
    offset += byteLength;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const headerLength = Math.ceil(json.length / 8) * 8;
  const prefix = new Uint8Array(8 + headerLength).fill(0x20, 8 + json.length);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(headerLength), true);
  prefix.set(json, 8);
  const dataOffset = 8 + headerLength;
  const absolute = infos.map((t) => Object.freeze({ ...t, offset: dataOffset + t.dataOffsets[0] }));
  return { prefix, headerLength, tensors: absolute, byteLength: dataOffset + offset };
}

/** Bytes of tensor data, checked against the dtype and expected length. */
function checkData(data: unknown, dtype: DType, byteLength: number, name: string, target: string): Uint8Array {
  if (!ArrayBuffer.isView(data)) {
    invalid(
      `${target}: tensor '${name}' data must be a Uint8Array or a typed array; found ${data === null ? 'null' : typeof data}`,
      { file: target, key: name },
    );
  }
  const element = (data as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT;
  if (element !== undefined && element !== 1 && element !== DTYPE_SIZE[dtype]) {
    invalid(
      `${target}: tensor '${name}' is ${dtype} (${DTYPE_SIZE[dtype]}-byte elements) but its data is a ${data.constructor.name} (${element}-byte elements)`,
      { file: target, key: name },
    );
  }
  if (data.byteLength !== byteLength) {
    invalid(`${target}: tensor '${name}' (${dtype}) needs ${byteLength} bytes; its data has ${data.byteLength}`, {
      file: target,
      key: name,
      expected: byteLength,
      found: data.byteLength,
    });
  }
  return data instanceof Uint8Array ? data : typedAsBytes(data);
}

function isChunks(x: unknown): x is TensorChunks {
  return typeof x === 'object' && x !== null && !ArrayBuffer.isView(x) && Symbol.asyncIterator in x;
}

/** Write a tensor given in pieces, checking each piece and that together they are exactly its bytes. */
async function writeChunks(out: Gatherer, chunks: TensorChunks, info: TensorInfo, target: string): Promise<void> {
  let n = 0;
  for await (const chunk of chunks) {
    if (!(chunk instanceof Uint8Array)) {
      invalid(`${target}: a piece of tensor '${info.name}' must be a Uint8Array; found ${show(chunk)}`, {
        file: target,
        key: info.name,
      });
    }
    n += chunk.byteLength;
    if (n > info.byteLength) break;
    await out.write(chunk);
  }
  if (n !== info.byteLength) {
    invalid(
      `${target}: tensor '${info.name}' (${info.dtype}) needs ${info.byteLength} bytes; its pieces have ${n}${n > info.byteLength ? ' or more' : ''}`,
      {
        file: target,
        key: info.name,
        expected: info.byteLength,
        found: n,
      },
    );
  }
}

async function collect(tensors: TensorsToWrite): Promise<TensorToWrite[]> {
  if (Array.isArray(tensors)) return tensors as TensorToWrite[];
  const out: TensorToWrite[] = [];
  if (tensors !== null && typeof tensors === 'object' && Symbol.asyncIterator in tensors) {
    for await (const t of tensors as AsyncIterable<TensorToWrite>) out.push(t);
    return out;
  }
  if (tensors !== null && typeof tensors === 'object' && Symbol.iterator in tensors) {
    for (const t of tensors as Iterable<TensorToWrite>) out.push(t);
    return out;
  }
  invalid(`tensors to write must be an array or an (async) iterable; found ${show(tensors)}`);
}

/** Chunks under this size are gathered into one buffer before reaching the sink (fewer system calls). */
const SMALL_CHUNK = 1 << 16;
const GATHER = 1 << 20;

class Gatherer {
  #buf = new Uint8Array(GATHER);
  #used = 0;
  constructor(private readonly sink: ByteSink) {}
  async write(chunk: Uint8Array): Promise<void> {
    if (chunk.byteLength === 0) return;
    if (chunk.byteLength < SMALL_CHUNK) {
      if (this.#used + chunk.byteLength > GATHER) await this.flush();
      this.#buf.set(chunk, this.#used);
      this.#used += chunk.byteLength;
      return;
    }
    await this.flush();
    await this.sink.write(chunk);
  }
  async flush(): Promise<void> {
    if (this.#used === 0) return;
    const n = this.#used;
    this.#used = 0;
    await this.sink.write(this.#buf.subarray(0, n));
  }
}

/**
 * Write tensors to a sink (header first, then data in order) WITHOUT committing it. On failure the error
 * propagates and the caller aborts the sink; writeSafetensors does both.
 */
export async function writeToSink(
  sink: ByteSink,
  tensors: TensorsToWrite,
  options: WriteOptions = {},
): Promise<WriteResult> {
  const list = await collect(tensors);
  const plan = planSafetensors(list, options.metadata, sink.name);
  if (options.lateMetadata && typeof sink.writeAt !== 'function') {
    invalid(`${sink.name}: metadata given at the end needs a sink that can rewrite its header (writeAt)`, {
      file: sink.name,
    });
  }
  const out = new Gatherer(sink);
  await out.write(plan.prefix);
  for (let i = 0; i < list.length; i++) {
    const t = list[i]!;
    const info = plan.tensors[i]!;
    const raw = typeof t.data === 'function' ? await t.data() : t.data;
    if (isChunks(raw)) await writeChunks(out, raw, info, sink.name);
    else await out.write(checkData(raw, info.dtype, info.byteLength, info.name, sink.name));
    options.onTensor?.(info, i, list.length);
  }
  await out.flush();
  if (options.lateMetadata) await rewriteHeader(sink, list, plan, await options.lateMetadata());
  return { name: sink.name, byteLength: plan.byteLength, headerLength: plan.headerLength, tensors: plan.tensors };
}

/** Rewrite the header with the final metadata, padded with spaces to the length written first. */
async function rewriteHeader(
  sink: ByteSink,
  list: readonly TensorToWrite[],
  first: SafetensorsPlan,
  metadata: Readonly<Record<string, string>>,
): Promise<void> {
  const final = planSafetensors(list, metadata, sink.name);
  if (final.headerLength > first.headerLength) {
    invalid(
      `${sink.name}: the metadata given at the end needs a header of ${final.headerLength} bytes; ${first.headerLength} were written`,
      { file: sink.name, expected: first.headerLength, found: final.headerLength },
    );
  }
  const prefix = new Uint8Array(first.prefix.byteLength).fill(0x20);
  prefix.set(first.prefix.subarray(0, 8));
  prefix.set(final.prefix.subarray(8), 8);
  await sink.writeAt?.(0, prefix);
}

function openPathSink(path: string, options: WriteOptions): Promise<ByteSink> {
  return requireHost(path, 'pass a ByteSink such as memorySink()').openSink(path, {
    refuse: options.refuseOverwrite ?? [],
    direct: options.direct === true,
    fsync: options.fsync !== false,
  });
}

/**
 * Write a safetensors file. `target` is a path (Node: temp file beside it, fsync, rename — nothing is left behind
 * on failure, and inputs named in `refuseOverwrite` are never replaced) or a ByteSink, which is committed on
 * success and aborted on failure.
 */
export async function writeSafetensors(
  target: string | ByteSink,
  tensors: TensorsToWrite,
  options: WriteOptions = {},
): Promise<WriteResult> {
  const sink = typeof target === 'string' ? await openPathSink(target, options) : target;
  try {
    const result = await writeToSink(sink, tensors, options);
    await sink.commit();
    return result;
  } catch (e) {
    try {
      await sink.abort();
    } catch {
      // The original failure is the one to report.
    }
    throw e;
  }
}

/** The whole file in memory (small files, browsers). Data must be given directly, not as thunks. */
export function serializeSafetensors(
  tensors: readonly TensorToWrite[],
  options: { metadata?: Readonly<Record<string, string>> } = {},
): Uint8Array {
  for (const t of tensors) {
    if (typeof t?.data === 'function') {
      invalid(
        `<memory>: tensor '${t.name}' has its data as a function; serializeSafetensors needs the bytes (use writeSafetensors with a sink for thunks)`,
        { key: t.name },
      );
    }
  }
  const plan = planSafetensors(tensors, options.metadata, '<memory>');
  const out = new Uint8Array(plan.byteLength);
  out.set(plan.prefix, 0);
  for (let i = 0; i < tensors.length; i++) {
    const info = plan.tensors[i]!;
    out.set(checkData(tensors[i]!.data, info.dtype, info.byteLength, info.name, '<memory>'), info.offset);
  }
  return out;
}
