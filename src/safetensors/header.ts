/**
 * The safetensors header: validated completely before any tensor byte is trusted.
 *
 * Layout of a file: 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON (an object, possibly padded with
 * trailing spaces), then the data section. Each JSON entry other than `__metadata__` describes one tensor:
 * `{ "dtype": "F16", "shape": [320, 4, 3, 3], "data_offsets": [begin, end] }`, offsets relative to the data
 * section. The sorted offsets must tile the data section exactly.
 */
import { SafetensorsError } from '../core/errors.js';
import { DTYPE_SIZE, isDType, type DType } from '../core/tensor.js';
import { scanKeys } from './json-keys.js';

/** Header lengths above this are refused before anything is allocated (the reference implementation's limit). */
export const MAX_HEADER_LENGTH = 100_000_000;

/** The reserved key holding string → string metadata. */
export const METADATA_KEY = '__metadata__';

/** One tensor as the header describes it. */
export interface TensorInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Number of elements (1 for a scalar of shape []). */
  readonly numel: number;
  /** Stored size in bytes = numel × dtype size. */
  readonly byteLength: number;
  /** Absolute byte offset of the first byte in the file. */
  readonly offset: number;
  /** [begin, end) relative to the data section, as written in the header. */
  readonly dataOffsets: readonly [number, number];
}

export interface ParsedHeader {
  /** Tensors in file (offset) order. */
  readonly tensors: readonly TensorInfo[];
  readonly metadata: Readonly<Record<string, string>>;
}

/**
 * A short rendering of an arbitrary parsed JSON value for error messages. It looks at most a few levels deep and
 * a few items wide, so a hostile value (deeply nested, huge) cannot blow the stack or the message.
 */
export function show(v: unknown, depth = 0): string {
  const s = render(v, depth);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function render(v: unknown, depth: number): string {
  if (v === undefined) return 'nothing';
  if (v === null || typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === 'bigint') return `${v}n`;
  if (depth >= 2) return Array.isArray(v) ? '[...]' : typeof v === 'object' ? '{...}' : typeof v;
  if (Array.isArray(v)) {
    const items = v.slice(0, 6).map((x) => render(x, depth + 1));
    return `[${items.join(',')}${v.length > 6 ? ',...' : ''}]`;
  }
  if (typeof v === 'object') {
    const keys = Object.keys(v as object);
    const items = keys
      .slice(0, 4)
      .map(
        (k) =>
          `${JSON.stringify(k.length > 20 ? `${k.slice(0, 20)}...` : k)}:${render((v as Record<string, unknown>)[k], depth + 1)}`,
      );
    return `{${items.join(',')}${keys.length > 4 ? ',...' : ''}}`;
  }
  return typeof v;
}

function fail(
  code: ConstructorParameters<typeof SafetensorsError>[0],
  message: string,
  details: Record<string, unknown>,
): never {
  throw new SafetensorsError(code, message, details);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const LBRACE_BYTE = 0x7b;

/**
 * Decode, parse and validate the header bytes of a file.
 * @param bytes the N header bytes (after the 8-byte length)
 * @param file name for messages
 * @param dataOffset absolute offset of the data section (8 + N)
 * @param dataLength bytes in the data section (file length − 8 − N)
 */
export function parseHeader(bytes: Uint8Array, file: string, dataOffset: number, dataLength: number): ParsedHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    fail('SAFETENSORS_HEADER_INVALID_UTF8', `${file}: the ${bytes.length}-byte header is not valid UTF-8`, { file });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
      fail(
        'SAFETENSORS_HEADER_NOT_OBJECT',
        `${file}: the header starts with a UTF-8 byte order mark; it must start with '{'`,
        { file },
      );
    }
    const why = e instanceof Error ? e.message.slice(0, 120) : String(e);
    fail('SAFETENSORS_HEADER_INVALID_JSON', `${file}: the ${bytes.length}-byte header is not valid JSON (${why})`, {
      file,
    });
  }
  if (!isPlainObject(parsed)) {
    fail('SAFETENSORS_HEADER_NOT_OBJECT', `${file}: the header must be a JSON object; found ${show(parsed)}`, { file });
  }
  if (bytes[0] !== LBRACE_BYTE) {
    fail(
      'SAFETENSORS_HEADER_NOT_OBJECT',
      `${file}: the header must start with '{' at byte 8; found byte 0x${bytes[0]!.toString(16).padStart(2, '0')} (only trailing padding is allowed)`,
      { file },
    );
  }
  const scan = scanKeys(text);
  if (scan.duplicate) {
    const { key, parent } = scan.duplicate;
    fail(
      'SAFETENSORS_DUPLICATE_KEY',
      parent === null
        ? `${file}: key '${key}' appears more than once in the header (JSON would silently keep only the last)`
        : `${file}: '${parent}' has the field '${key}' more than once (JSON would silently keep only the last)`,
      { file, key, parent },
    );
  }

  let metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const key of scan.keys) {
    const entry = parsed[key];
    if (key === METADATA_KEY) {
      metadata = parseMetadata(entry, file);
      continue;
    }
    tensors.push(parseTensor(key, entry, file, dataOffset));
  }

  // File order; a zero-length tensor sorts before a non-empty one at the same offset.
  tensors.sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let end = 0;
  let previous: TensorInfo | null = null;
  for (const t of tensors) {
    const [b, e] = t.dataOffsets;
    if (b !== end) {
      const message =
        b < end
          ? `${file}: tensor '${t.name}' starts at data offset ${b}, inside '${previous!.name}' which ends at ${end} (tensors overlap)`
          : `${file}: tensor '${t.name}' starts at data offset ${b}, but the previous tensor${previous ? ` '${previous.name}'` : ''} ends at ${end} (a gap of ${b - end} bytes; tensors must be contiguous from offset 0)`;
      fail('SAFETENSORS_OFFSETS_INVALID', message, { file, key: t.name, expected: end, found: b });
    }
    end = e;
    previous = t;
  }
  if (end > dataLength) {
    fail(
      'SAFETENSORS_TRUNCATED',
      `${file}: tensor '${previous!.name}' ends at data offset ${end}, but the data section holds only ${dataLength} bytes (the file is truncated)`,
      { file, key: previous!.name, expected: end, found: dataLength },
    );
  }
  if (end < dataLength) {
    fail(
      'SAFETENSORS_OFFSETS_INVALID',
      `${file}: the data section has ${dataLength} bytes but the tensors cover only ${end}; ${dataLength - end} trailing bytes belong to no tensor`,
      { file, expected: end, found: dataLength },
    );
  }
  return { tensors, metadata };
}

function parseMetadata(v: unknown, file: string): Record<string, string> {
  if (!isPlainObject(v)) {
    fail('SAFETENSORS_METADATA_INVALID', `${file}: '${METADATA_KEY}' must be an object of strings; found ${show(v)}`, {
      file,
      key: METADATA_KEY,
    });
  }
  const entries: [string, string][] = [];
  for (const k of Object.keys(v)) {
    const value = v[k];
    if (typeof value !== 'string') {
      fail('SAFETENSORS_METADATA_INVALID', `${file}: metadata '${k}' must be a string; found ${show(value)}`, {
        file,
        key: k,
        found: show(value),
      });
    }
    entries.push([k, value]);
  }
  // fromEntries defines own properties, so a key like "__proto__" stays an ordinary key.
  return Object.fromEntries(entries);
}

function parseTensor(name: string, entry: unknown, file: string, dataOffset: number): TensorInfo {
  if (!isPlainObject(entry)) {
    fail(
      'SAFETENSORS_TENSOR_INVALID',
      `${file}: tensor '${name}' must be an object with dtype, shape and data_offsets; found ${show(entry)}`,
      { file, key: name },
    );
  }
  for (const field of ['dtype', 'shape', 'data_offsets']) {
    if (!(field in entry)) {
      fail('SAFETENSORS_TENSOR_INVALID', `${file}: tensor '${name}' has no '${field}' field; found ${show(entry)}`, {
        file,
        key: name,
        field,
      });
    }
  }
  const dtype = entry.dtype;
  if (!isDType(dtype)) {
    fail(
      'SAFETENSORS_UNKNOWN_DTYPE',
      `${file}: tensor '${name}' has dtype ${show(dtype)}; expected one of ${Object.keys(DTYPE_SIZE).join(', ')}`,
      { file, key: name, found: show(dtype) },
    );
  }
  const shape = entry.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
    fail(
      'SAFETENSORS_SHAPE_INVALID',
      `${file}: tensor '${name}' has shape ${show(shape)}; expected an array of non-negative integers`,
      { file, key: name, found: show(shape) },
    );
  }
  const dims = (shape as number[]).map((d) => (d === 0 ? 0 : d)); // normalise -0
  let count = 1;
  if (!dims.includes(0)) {
    for (const d of dims) {
      count *= d;
      if (count > Number.MAX_SAFE_INTEGER) {
        fail(
          'SAFETENSORS_SHAPE_INVALID',
          `${file}: tensor '${name}' has shape ${show(shape)} with more elements than can be addressed`,
          { file, key: name, found: show(shape) },
        );
      }
    }
  } else count = 0;
  const offsets = entry.data_offsets;
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && (o as number) >= 0) ||
    (offsets[0] as number) > (offsets[1] as number)
  ) {
    fail(
      'SAFETENSORS_OFFSETS_INVALID',
      `${file}: tensor '${name}' has data_offsets ${show(offsets)}; expected [begin, end] with 0 ≤ begin ≤ end`,
      { file, key: name, found: show(offsets) },
    );
  }
  const begin = (offsets[0] as number) + 0,
    end = (offsets[1] as number) + 0;
  const byteLength = count * DTYPE_SIZE[dtype];
  if (end - begin !== byteLength) {
    fail(
      'SAFETENSORS_BYTE_LENGTH_MISMATCH',
      `${file}: tensor '${name}' (${dtype} ${show(shape)}) needs ${byteLength} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`,
      { file, key: name, expected: byteLength, found: end - begin },
    );
  }
  return Object.freeze({
    name,
    dtype,
    shape: Object.freeze(dims),
    numel: count,
    byteLength,
    offset: dataOffset + begin,
    dataOffsets: Object.freeze([begin, end] as [number, number]),
  });
}
