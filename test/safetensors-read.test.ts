import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  parseSafetensors,
  serializeSafetensors,
  scanKeys,
  MAX_HEADER_LENGTH,
  isFloatDType,
  type TensorToWrite,
} from '../src/safetensors/index.js';
import { bufferSource } from '../src/core/memory.js';
import type { ByteSource } from '../src/core/bytes.js';
import { LoraMixError, SafetensorsError, type SafetensorsErrorCode } from '../src/core/errors.js';
import { DTYPE_SIZE, type DType } from '../src/core/tensor.js';

const enc = new TextEncoder();

/** A file from a header (object or raw JSON text) and data bytes; headerLength overrides the 8-byte prefix. */
function rawFile(
  header: unknown,
  data: Uint8Array | number = 0,
  opts: { headerLength?: bigint; pad?: number } = {},
): Uint8Array {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const json = header instanceof Uint8Array ? header : enc.encode(text + ' '.repeat(opts.pad ?? 0));
  const bytes = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.length + bytes.length);
  new DataView(out.buffer).setBigUint64(0, opts.headerLength ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(bytes, 8 + json.length);
  return out;
}

async function parseBytes(bytes: Uint8Array, name = 'test.safetensors') {
  return parseSafetensors(bufferSource(bytes, name));
}

async function expectCode(
  bytes: Uint8Array,
  code: SafetensorsErrorCode,
  ...fragments: string[]
): Promise<SafetensorsError> {
  let err: unknown;
  try {
    await parseBytes(bytes);
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(SafetensorsError);
  const se = err as SafetensorsError;
  expect(se.code, se.message).toBe(code);
  expect(se.message).toContain('test.safetensors');
  for (const f of fragments) expect(se.message).toContain(f);
  return se;
}

const t = (dtype: string, shape: unknown, data_offsets: unknown) => ({ dtype, shape, data_offsets });

/** A source that pretends to be huge and records what was asked of it. */
function spySource(prefix: Uint8Array, byteLength: number): ByteSource & { reads: [number, number][] } {
  const reads: [number, number][] = [];
  return {
    name: 'test.safetensors',
    byteLength,
    reads,
    async read(start, end) {
      reads.push([start, end]);
      if (end - start > 1 << 20) throw new Error(`test source refused a ${end - start}-byte read`);
      const out = new Uint8Array(end - start);
      out.set(prefix.subarray(start, Math.min(end, prefix.length)));
      return out;
    },
  };
}

describe('parseSafetensors: valid files', () => {
  it('reads tensors in offset order with absolute offsets, metadata and every dtype as typed arrays', async () => {
    const header = {
      b: t('F32', [2], [8, 16]),
      __metadata__: { format: 'pt', note: 'é ✓' },
      a: t('F16', [2, 2], [0, 8]),
      '0': t('I64', [], [16, 24]),
      empty: t('BF16', [0, 3], [24, 24]),
    };
    const data = new Uint8Array(24);
    const dv = new DataView(data.buffer);
    [0x3c00, 0xc000, 0x0001, 0x7c00].forEach((h, i) => {
      dv.setUint16(i * 2, h, true);
    });
    dv.setFloat32(8, 1.5, true);
    dv.setFloat32(12, -0.25, true);
    dv.setBigInt64(16, -42n, true);
    const file = await parseBytes(rawFile(header, data, { pad: 3 }));
    const headerLen = enc.encode(JSON.stringify(header)).length + 3;
    expect(file.headerLength).toBe(headerLen);
    expect(file.dataOffset).toBe(8 + headerLen);
    expect(file.tensors.map((x) => x.name)).toEqual(['a', 'b', '0', 'empty']);
    expect(file.tensors.map((x) => x.offset - file.dataOffset)).toEqual([0, 8, 16, 24]);
    expect(file.metadata).toEqual({ format: 'pt', note: 'é ✓' });
    expect(file.get('a')).toMatchObject({ dtype: 'F16', shape: [2, 2], numel: 4, byteLength: 8 });
    expect(file.has('zzz')).toBe(false);
    expect(Array.from(await file.readF32('a'))).toEqual([1, -2, 2 ** -24, Infinity]);
    expect(Array.from(await file.readTyped<'F16'>('a'))).toEqual([0x3c00, 0xc000, 0x0001, 0x7c00]);
    expect(Array.from(await file.readF32('b'))).toEqual([1.5, -0.25]);
    const i64 = await file.readTyped('0');
    expect(i64).toBeInstanceOf(BigInt64Array);
    expect(i64[0]).toBe(-42n);
    expect((await file.read('empty')).length).toBe(0);
    expect((await file.readF32('empty')).length).toBe(0);
    await expect(file.readF32('0')).rejects.toMatchObject({
      code: 'SAFETENSORS_DTYPE_NOT_FLOAT',
      message: expect.stringContaining('I64'),
    });
    await expect(file.read('missing')).rejects.toMatchObject({
      code: 'SAFETENSORS_TENSOR_NOT_FOUND',
      message: expect.stringContaining("'missing'"),
    });
  });

  it('accepts an empty header object, several empty tensors at one offset, and metadata alone', async () => {
    expect((await parseBytes(rawFile({}))).tensors).toEqual([]);
    const f = await parseBytes(
      rawFile(
        { x: t('F32', [0], [0, 0]), y: t('U8', [2], [0, 2]), z: t('I8', [0, 0], [2, 2]), w: t('F32', [0], [0, 0]) },
        2,
      ),
    );
    expect(f.tensors.map((x) => x.name)).toEqual(['x', 'w', 'y', 'z']);
    expect((await parseBytes(rawFile({ __metadata__: { a: '1' } }))).metadata).toEqual({ a: '1' });
  });

  it('copies unaligned tensor bytes into an aligned typed array', async () => {
    // A header of odd length puts the F32 data at an odd offset inside the underlying buffer.
    const data = new Uint8Array(new Float32Array([3.25, -7]).buffer);
    const file = await parseBytes(rawFile({ w: t('F32', [2], [0, 8]) }, data, { pad: 1 }));
    expect(file.dataOffset % 4).not.toBe(0);
    expect(Array.from(await file.readTyped<'F32'>('w'))).toEqual([3.25, -7]);
  });

  it('read(name, into) and readF32(name, into) fill a reused buffer; concurrent decodes do not share scratch', async () => {
    const tensors: TensorToWrite[] = [
      { name: 'h', dtype: 'F16', shape: [3], data: new Uint16Array([0x3c00, 0x4000, 0xc200]) },
      { name: 'b', dtype: 'BF16', shape: [2], data: new Uint16Array([0x3f80, 0xc000]) },
      { name: 'f', dtype: 'F32', shape: [2], data: new Float32Array([0.5, 7]) },
      { name: 'd', dtype: 'F64', shape: [2], data: new Float64Array([1 / 3, -2]) },
      { name: 'e', dtype: 'F8_E4M3', shape: [2], data: new Uint8Array([0x38, 0x7e]) },
    ];
    const file = await parseBytes(serializeSafetensors(tensors));
    const buf = new Uint8Array(64).fill(0xaa);
    const got = await file.read('h', buf);
    expect(got.buffer).toBe(buf.buffer);
    expect(Array.from(got)).toEqual([0x00, 0x3c, 0x00, 0x40, 0x00, 0xc2]);
    expect(buf[6]).toBe(0xaa);
    const out = new Float32Array(8).fill(-99);
    const expected: Record<string, number[]> = {
      h: [1, 2, -3],
      b: [1, -2],
      f: [0.5, 7],
      d: [Math.fround(1 / 3), -2],
      e: [1, 448],
    };
    for (const [name, values] of Object.entries(expected)) {
      const v = await file.readF32(name, out);
      expect(v.buffer).toBe(out.buffer);
      expect(Array.from(v)).toEqual(values);
    }
    const all = await Promise.all(Object.keys(expected).flatMap((n) => [file.readF32(n), file.readF32(n)]));
    expect(all.map((a) => Array.from(a))).toEqual(Object.values(expected).flatMap((v) => [v, v]));
    await expect(file.read('h', new Uint8Array(5))).rejects.toMatchObject({
      code: 'SAFETENSORS_BUFFER_TOO_SMALL',
      message: expect.stringContaining("'h'"),
    });
    await expect(file.readF32('h', new Float32Array(2))).rejects.toMatchObject({
      code: 'SAFETENSORS_BUFFER_TOO_SMALL',
    });
    await file.close();
  });

  it('keeps "__proto__" as an ordinary metadata key and tensor name', async () => {
    const file = await parseBytes(
      rawFile('{"__metadata__":{"__proto__":"x"},"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1),
    );
    expect(Object.keys(file.metadata)).toEqual(['__proto__']);
    // biome-ignore lint/suspicious/noProto: a metadata key named __proto__ is what this test reads back
    // biome-ignore lint/complexity/useLiteralKeys: the same
    expect(file.metadata['__proto__']).toBe('x');
    expect(file.has('__proto__')).toBe(true);
  });
});

describe('parseSafetensors: every validation rule', () => {
  it('SAFETENSORS_TRUNCATED: shorter than 8 bytes, than 8 + N, or than the last tensor', async () => {
    await expectCode(new Uint8Array(0), 'SAFETENSORS_NOT_SAFETENSORS', 'empty file (0 bytes)');
    await expectCode(new Uint8Array(7), 'SAFETENSORS_TRUNCATED');
    const ok = rawFile({ w: t('F32', [4], [0, 16]) }, 16);
    const n = Number(new DataView(ok.buffer).getBigUint64(0, true));
    await expectCode(ok.subarray(0, 8 + n - 1), 'SAFETENSORS_TRUNCATED', `${8 + n}`);
    // a header length beyond the whole file is a lying length rather than a cut file
    await expectCode(ok.subarray(0, n - 1), 'SAFETENSORS_HEADER_TOO_LARGE');
    await expectCode(ok.subarray(0, ok.length - 1), 'SAFETENSORS_TRUNCATED', "'w'", '16', '15');
  });

  it('SAFETENSORS_HEADER_TOO_LARGE: N over 100 MB or over the file size, refused after reading only 8 bytes', async () => {
    for (const n of [BigInt(MAX_HEADER_LENGTH) + 1n, 2n ** 64n - 1n, 2n ** 53n]) {
      const prefix = new Uint8Array(8);
      new DataView(prefix.buffer).setBigUint64(0, n, true);
      const src = spySource(prefix, 2 ** 40); // a "1 TiB file"
      await expect(parseSafetensors(src)).rejects.toMatchObject({ code: 'SAFETENSORS_HEADER_TOO_LARGE' });
      expect(src.reads).toEqual([[0, 8]]);
    }
    const lying = rawFile({}, 0, { headerLength: 5000n });
    const src = spySource(lying, lying.length);
    await expect(parseSafetensors(src)).rejects.toMatchObject({
      code: 'SAFETENSORS_HEADER_TOO_LARGE',
      message: expect.stringContaining('5000'),
    });
    expect(src.reads).toEqual([[0, 8]]);
  });

  it('SAFETENSORS_HEADER_INVALID_UTF8', async () => {
    const bad = new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]);
    await expectCode(rawFile(bad), 'SAFETENSORS_HEADER_INVALID_UTF8');
    // a lone surrogate encoded as UTF-8 (CESU) is not valid UTF-8 either
    await expectCode(
      rawFile(new Uint8Array([0x7b, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x3a, 0x31, 0x7d])),
      'SAFETENSORS_HEADER_INVALID_UTF8',
    );
  });

  it('SAFETENSORS_HEADER_INVALID_JSON, including an empty header and NUL padding', async () => {
    await expectCode(rawFile('{"a": '), 'SAFETENSORS_HEADER_INVALID_JSON');
    await expectCode(rawFile(''), 'SAFETENSORS_HEADER_INVALID_JSON');
    await expectCode(rawFile(new Uint8Array([0x7b, 0x7d, 0, 0])), 'SAFETENSORS_HEADER_INVALID_JSON');
    await expectCode(rawFile('{} {}'), 'SAFETENSORS_HEADER_INVALID_JSON');
  });

  it('SAFETENSORS_HEADER_NOT_OBJECT: arrays, null, numbers, strings, leading whitespace or BOM', async () => {
    for (const h of ['[]', 'null', '42', '"x"', ' {}', '\n{}'])
      await expectCode(rawFile(h), 'SAFETENSORS_HEADER_NOT_OBJECT');
    await expectCode(rawFile(new Uint8Array([0xef, 0xbb, 0xbf, 0x7b, 0x7d])), 'SAFETENSORS_HEADER_NOT_OBJECT');
    // trailing spaces are the format's padding and are fine
    expect((await parseBytes(rawFile('{}', 0, { pad: 6 }))).tensors).toEqual([]);
  });

  it('SAFETENSORS_DUPLICATE_KEY: top-level, escaped spellings of one key, and fields inside an entry', async () => {
    const e = '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}';
    const err = await expectCode(rawFile(`{"w":${e},"w":${e}}`, 1), 'SAFETENSORS_DUPLICATE_KEY', "'w'");
    expect(err.details).toMatchObject({ key: 'w', parent: null });
    await expectCode(rawFile(`{"w":${e},"\\u0077":${e}}`, 1), 'SAFETENSORS_DUPLICATE_KEY');
    await expectCode(
      rawFile('{"w":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}', 1),
      'SAFETENSORS_DUPLICATE_KEY',
      "'dtype'",
      "'w'",
    );
    await expectCode(rawFile('{"__metadata__":{"a":"1","a":"2"}}'), 'SAFETENSORS_DUPLICATE_KEY', "'a'");
    // equal keys in different entries, and inside strings or deeper levels, are not duplicates
    const f = await parseBytes(
      rawFile(
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":{"k":1,"k":2}},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"__metadata__":{"\\"a\\",\\"a\\"":"a"}}',
        2,
      ),
    );
    expect(f.tensors.map((x) => x.name)).toEqual(['a', 'b']);
  });

  it('SAFETENSORS_TENSOR_INVALID: an entry that is not an object or lacks a field', async () => {
    await expectCode(rawFile({ w: 5 }), 'SAFETENSORS_TENSOR_INVALID', "'w'");
    await expectCode(rawFile({ w: [1, 2] }), 'SAFETENSORS_TENSOR_INVALID');
    await expectCode(rawFile({ w: null }), 'SAFETENSORS_TENSOR_INVALID');
    await expectCode(rawFile({ w: { dtype: 'F32', shape: [1] } }, 4), 'SAFETENSORS_TENSOR_INVALID', 'data_offsets');
    await expectCode(rawFile({ w: { shape: [1], data_offsets: [0, 4] } }, 4), 'SAFETENSORS_TENSOR_INVALID', 'dtype');
  });

  it('SAFETENSORS_UNKNOWN_DTYPE', async () => {
    for (const d of ['F128', 'f32', '', 'C64'])
      await expectCode(rawFile({ w: t(d, [1], [0, 4]) }, 4), 'SAFETENSORS_UNKNOWN_DTYPE', "'w'");
    await expectCode(rawFile({ w: { dtype: 4, shape: [1], data_offsets: [0, 4] } }, 4), 'SAFETENSORS_UNKNOWN_DTYPE');
  });

  it('SAFETENSORS_SHAPE_INVALID: negative, fractional, non-numeric, unsafe or overflowing dims', async () => {
    for (const s of [[-1], [1.5], ['2'], 3, null, [2 ** 53], [null], [[2]]]) {
      await expectCode(rawFile({ w: t('F32', s, [0, 4]) }, 4), 'SAFETENSORS_SHAPE_INVALID', "'w'");
    }
    await expectCode(rawFile({ w: t('F32', [2 ** 30, 2 ** 30, 2 ** 30], [0, 4]) }, 4), 'SAFETENSORS_SHAPE_INVALID');
    // a zero dim makes the product 0 whatever the other dims are
    expect((await parseBytes(rawFile({ w: t('F32', [2 ** 40, 0, 2 ** 40], [0, 0]) }))).get('w')!.numel).toBe(0);
  });

  it('SAFETENSORS_OFFSETS_INVALID: malformed pairs, overlaps, gaps, not starting at 0, trailing bytes', async () => {
    for (const o of [[0], [0, 4, 8], [4, 0], [-4, 0], [0.5, 4.5], ['0', '4'], null, [0, 2 ** 53]]) {
      await expectCode(rawFile({ w: t('F32', [1], o) }, 4), 'SAFETENSORS_OFFSETS_INVALID', "'w'");
    }
    await expectCode(
      rawFile({ a: t('F32', [2], [0, 8]), b: t('F32', [1], [4, 8]) }, 8),
      'SAFETENSORS_OFFSETS_INVALID',
      'overlap',
    );
    await expectCode(
      rawFile({ a: t('F32', [1], [0, 4]), b: t('F32', [1], [8, 12]) }, 12),
      'SAFETENSORS_OFFSETS_INVALID',
      'gap',
    );
    await expectCode(rawFile({ a: t('F32', [1], [4, 8]) }, 8), 'SAFETENSORS_OFFSETS_INVALID', "'a'");
    await expectCode(rawFile({ a: t('F32', [1], [0, 4]), b: t('F32', [1], [0, 4]) }, 4), 'SAFETENSORS_OFFSETS_INVALID');
    await expectCode(rawFile({ a: t('F32', [1], [0, 4]) }, 5), 'SAFETENSORS_OFFSETS_INVALID', 'trailing');
    await expectCode(rawFile({}, 3), 'SAFETENSORS_OFFSETS_INVALID', 'trailing');
  });

  it('SAFETENSORS_BYTE_LENGTH_MISMATCH: end − begin ≠ numel × dtype size', async () => {
    await expectCode(rawFile({ w: t('F16', [3], [0, 4]) }, 4), 'SAFETENSORS_BYTE_LENGTH_MISMATCH', "'w'", '6', '4');
    await expectCode(rawFile({ w: t('F32', [], [0, 2]) }, 2), 'SAFETENSORS_BYTE_LENGTH_MISMATCH');
  });

  it('SAFETENSORS_METADATA_INVALID: not an object, or a non-string value', async () => {
    for (const m of [5, 'x', null, ['a'], { a: 1 }, { a: { b: 'c' } }, { a: null }]) {
      await expectCode(rawFile({ __metadata__: m }), 'SAFETENSORS_METADATA_INVALID');
    }
  });
});

describe('hostile headers', () => {
  it('deep nesting is an error, never a stack overflow', async () => {
    const depth = 200_000;
    const arr = `{"w":${'['.repeat(depth)}${']'.repeat(depth)}}`;
    await expectCode(rawFile(arr), 'SAFETENSORS_TENSOR_INVALID');
    const obj = `{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}}`;
    expect((await parseBytes(rawFile(obj, 1))).tensors.length).toBe(1);
    const meta = `{"__metadata__":${'{"a":'.repeat(depth)}"x"${'}'.repeat(depth)}}`;
    await expectCode(rawFile(meta), 'SAFETENSORS_METADATA_INVALID');
  });

  it('many keys are scanned in linear time; a duplicate at the end is found', async () => {
    const n = 100_000;
    const parts: string[] = [];
    for (let i = 0; i < n; i++) parts.push(`"k${i}":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}`);
    const ok = `{${parts.join(',')}}`;
    expect((await parseBytes(rawFile(ok))).tensors.length).toBe(n);
    const dup = `{${parts.join(',')},"k0":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`;
    await expectCode(rawFile(dup), 'SAFETENSORS_DUPLICATE_KEY', "'k0'");
  });

  it('scanKeys returns top-level keys in text order (integer-like keys included)', () => {
    expect(scanKeys('{"b":1,"2":{"x":[1,{"y":2}]},"a":"s","1":[]}')).toEqual({
      keys: ['b', '2', 'a', '1'],
      duplicate: null,
    });
    expect(scanKeys('{"a":{"b":1,"c":[{"b":2}],"b":3}}').duplicate).toEqual({ key: 'b', parent: 'a' });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Fuzzing: corruption of valid files gives a valid parse or a SafetensorsError, nothing else.
// ---------------------------------------------------------------------------------------------------------------

const DTYPES = Object.keys(DTYPE_SIZE) as DType[];

const tensorArb: fc.Arbitrary<Omit<TensorToWrite, 'name'>> = fc
  .record({ dtype: fc.constantFrom(...DTYPES), shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }) })
  .chain(({ dtype, shape }) => {
    const n = shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[dtype];
    return fc.uint8Array({ minLength: n, maxLength: n }).map((data) => ({ dtype, shape, data }));
  });

const fileArb = fc
  .tuple(
    fc.uniqueArray(
      fc.string({ maxLength: 8 }).filter((s) => s !== '__metadata__'),
      { maxLength: 6 },
    ),
    fc.array(tensorArb, { minLength: 6, maxLength: 6 }),
    fc.option(fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }), {
      nil: undefined,
    }),
  )
  .map(([names, specs, metadata]) =>
    serializeSafetensors(
      names.map((name, i) => ({ name, ...specs[i]! })),
      { metadata },
    ),
  );

type Mutation =
  | { kind: 'flip'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'extend'; bytes: Uint8Array }
  | { kind: 'length'; value: bigint };

const mutationArb: fc.Arbitrary<Mutation[]> = fc.array(
  fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('extend' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
    fc.record({ kind: fc.constant('length' as const), value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  ),
  { minLength: 1, maxLength: 4 },
);

function mutate(file: Uint8Array, muts: Mutation[]): Uint8Array {
  let b = file.slice();
  for (const m of muts) {
    if (m.kind === 'flip' && b.length > 0) {
      // bias towards the header, where the structure lives
      const n = b.length >= 8 ? new DataView(b.buffer, b.byteOffset).getBigUint64(0, true) : 0n;
      const hdr = Math.min(b.length, 8 + Number(n % 4096n));
      const at = m.at % 3 === 0 ? m.at % b.length : m.at % Math.max(1, hdr);
      b[at] = m.value;
    } else if (m.kind === 'truncate') b = b.slice(0, m.at % (b.length + 1));
    else if (m.kind === 'extend') {
      const n = new Uint8Array(b.length + m.bytes.length);
      n.set(b);
      n.set(m.bytes, b.length);
      b = n;
    } else if (m.kind === 'length' && b.length >= 8) {
      b = b.slice();
      const v = m.value % 3n === 0n ? m.value : m.value % BigInt(b.length + 2);
      new DataView(b.buffer, b.byteOffset).setBigUint64(0, v, true);
    }
  }
  return b;
}

describe('fuzz', () => {
  it('a corrupted file parses validly or fails with a SafetensorsError (and a valid parse reads back fully)', async () => {
    await fc.assert(
      fc.asyncProperty(fileArb, mutationArb, async (file, muts) => {
        const bytes = mutate(file, muts);
        let parsed;
        try {
          parsed = await parseBytes(bytes);
        } catch (e) {
          if (!(e instanceof SafetensorsError)) throw e;
          expect(e.message).toContain('test.safetensors');
          return;
        }
        for (const info of parsed.tensors) {
          expect(info.offset + info.byteLength).toBeLessThanOrEqual(bytes.length);
          const raw = await parsed.read(info.name);
          expect(raw.length).toBe(info.byteLength);
          await parsed.readTyped(info.name);
          if (isFloatDType(info.dtype)) expect((await parsed.readF32(info.name)).length).toBe(info.numel);
        }
      }),
      { numRuns: 1500 },
    );
  });

  it('arbitrary JSON headers are accepted or refused with a SafetensorsError', async () => {
    await fc.assert(
      fc.asyncProperty(fc.json({ maxDepth: 4 }), fc.nat({ max: 64 }), async (json, dataLen) => {
        try {
          await parseBytes(rawFile(json, dataLen));
        } catch (e) {
          expect(e).toBeInstanceOf(LoraMixError);
          expect(e).toBeInstanceOf(SafetensorsError);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('arbitrary tensor-shaped entries are accepted or refused with a SafetensorsError', async () => {
    const val = fc.oneof(
      fc.integer({ min: -3, max: 40 }),
      fc.double(),
      fc.string({ maxLength: 3 }),
      fc.constant(null),
      fc.constant(2 ** 60),
    );
    const entry = fc.record(
      {
        dtype: fc.oneof(fc.constantFrom(...DTYPES), fc.string({ maxLength: 4 })),
        shape: fc.oneof(fc.array(val, { maxLength: 3 }), val),
        data_offsets: fc.oneof(fc.array(val, { maxLength: 3 }), val),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(fc.string({ maxLength: 3 }), entry, { maxKeys: 4 }),
        fc.nat({ max: 64 }),
        async (header, dataLen) => {
          try {
            const f = await parseBytes(rawFile(header, dataLen));
            for (const info of f.tensors) await f.read(info.name);
          } catch (e) {
            expect(e).toBeInstanceOf(SafetensorsError);
          }
        },
      ),
      { numRuns: 1500 },
    );
  });
});
