import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SafeTensor } from 'safetensors';
import {
  parseSafetensors,
  serializeSafetensors,
  writeSafetensors,
  writeToSink,
  f32ToF16,
  type TensorToWrite,
} from '../src/safetensors/index.js';
import { bufferSource, memorySink } from '../src/core/memory.js';
import { fileSource, openSafetensors } from '../src/node/files.js';
import type { ByteSink } from '../src/core/bytes.js';
import { IoError, SafetensorsError } from '../src/core/errors.js';
import { DTYPE_SIZE, type DType } from '../src/core/tensor.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-write-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const DTYPES = Object.keys(DTYPE_SIZE) as DType[];

const tensorBody = fc
  .record({ dtype: fc.constantFrom(...DTYPES), shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }) })
  .chain(({ dtype, shape }) => {
    const n = shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[dtype];
    return fc.uint8Array({ minLength: n, maxLength: n }).map((data) => ({ dtype, shape, data }));
  });

/** Names with quotes, backslashes, unicode, integer-like strings, the empty string… */
const nameArb = fc
  .oneof(fc.string({ maxLength: 12 }), fc.string({ unit: 'grapheme', maxLength: 6 }), fc.nat({ max: 20 }).map(String))
  .filter((s) => s !== '__metadata__');

const tensorsArb = fc
  .uniqueArray(nameArb, { maxLength: 8 })
  .chain((names) =>
    fc
      .array(tensorBody, { minLength: names.length, maxLength: names.length })
      .map((bodies) => names.map((name, i) => ({ name, ...bodies[i]! }) as TensorToWrite)),
  );

const metadataArb = fc.option(
  fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 20 }), { maxKeys: 4 }),
  { nil: undefined },
);

async function expectRoundTrip(
  bytes: Uint8Array,
  tensors: TensorToWrite[],
  metadata: Record<string, string> | undefined,
) {
  const file = await parseSafetensors(bufferSource(bytes));
  expect(file.tensors.map((t) => t.name)).toEqual(tensors.map((t) => t.name));
  expect(file.metadata).toEqual(metadata ?? {});
  expect((8 + file.headerLength) % 8).toBe(0);
  for (const t of tensors) {
    const info = file.get(t.name)!;
    expect(info.dtype).toBe(t.dtype);
    expect(info.shape).toEqual(t.shape);
    expect(await file.read(t.name)).toEqual(t.data);
  }
}

describe('write ⇄ read round trip', () => {
  it('serializeSafetensors and writeSafetensors(memorySink) produce the same bytes, which read back exactly', async () => {
    await fc.assert(
      fc.asyncProperty(tensorsArb, metadataArb, async (tensors, metadata) => {
        const bytes = serializeSafetensors(tensors, { metadata });
        const sink = memorySink('out.safetensors');
        const thunked = tensors.map((t) => ({ ...t, data: async () => t.data as Uint8Array }));
        const result = await writeSafetensors(sink, thunked, { metadata });
        expect(sink.committed).toBe(true);
        expect(sink.bytes()).toEqual(bytes);
        expect(result.byteLength).toBe(bytes.length);
        await expectRoundTrip(bytes, tensors, metadata);
      }),
      { numRuns: 300 },
    );
  });

  it('round-trips through a real file (openSafetensors), leaving no temporary files', async () => {
    let i = 0;
    await fc.assert(
      fc.asyncProperty(tensorsArb, metadataArb, async (tensors, metadata) => {
        const target = path.join(dir, `rt-${i++}.safetensors`);
        await writeSafetensors(target, tensors, { metadata });
        const file = await openSafetensors(target);
        try {
          expect(file.tensors.map((t) => t.name)).toEqual(tensors.map((t) => t.name));
          expect(file.metadata).toEqual(metadata ?? {});
          for (const t of tensors) expect(await file.read(t.name)).toEqual(t.data);
        } finally {
          await file.close();
        }
        expect(new Uint8Array(await fs.readFile(target))).toEqual(serializeSafetensors(tensors, { metadata }));
      }),
      { numRuns: 40 },
    );
    expect((await fs.readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('accepts typed arrays, sync and async iterables, and thunks returning typed arrays', async () => {
    const f32 = new Float32Array([1, -2, 3.5]);
    function* gen(): Generator<TensorToWrite> {
      yield { name: 'a', dtype: 'F32', shape: [3], data: f32 };
      yield { name: 'b', dtype: 'F16', shape: [3], data: () => f32ToF16(f32) };
    }
    async function* agen(): AsyncGenerator<TensorToWrite> {
      yield* gen();
    }
    for (const input of [gen(), agen(), [...gen()]]) {
      const sink = memorySink();
      await writeSafetensors(sink, input);
      const file = await parseSafetensors(bufferSource(sink.bytes()));
      expect(Array.from(await file.readF32('a'))).toEqual([1, -2, 3.5]);
      expect(Array.from(await file.readF32('b'))).toEqual([1, -2, 3.5]);
    }
  });

  it('writes the header as the format prescribes: u64 length, JSON, space padding to a multiple of 8', () => {
    const bytes = serializeSafetensors([{ name: 'w', dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 3]) }], {
      metadata: { k: 'v' },
    });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(n % 8).toBe(0);
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    expect(text.trimEnd()).toBe('{"__metadata__":{"k":"v"},"w":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}');
    expect(text.slice(text.trimEnd().length)).toMatch(/^ *$/);
    expect(Array.from(bytes.subarray(8 + n))).toEqual([1, 2, 3]);
  });
});

describe('streaming: one tensor in memory at a time', () => {
  it('calls each thunk only after the previous tensor was handed to the sink', async () => {
    const events: string[] = [];
    let written = 0;
    const sink: ByteSink = {
      name: 'spy',
      async write(chunk) {
        written += chunk.byteLength;
        events.push(`write ${written}`);
      },
      async commit() {
        events.push('commit');
      },
      async abort() {
        events.push('abort');
      },
    };
    const big = 1 << 17; // above the gathering threshold, so each tensor is its own write
    const tensors: TensorToWrite[] = [0, 1, 2].map((i) => ({
      name: `t${i}`,
      dtype: 'U8',
      shape: [big],
      data: async () => {
        events.push(`thunk ${i} after ${written}`);
        return new Uint8Array(big).fill(i);
      },
    }));
    const result = await writeSafetensors(sink, tensors);
    const h = result.tensors[0]!.offset;
    expect(events).toEqual([
      `thunk 0 after 0`,
      `write ${h}`,
      `write ${h + big}`,
      `thunk 1 after ${h + big}`,
      `write ${h + 2 * big}`,
      `thunk 2 after ${h + 2 * big}`,
      `write ${h + 3 * big}`,
      'commit',
    ]);
  });
});

describe('write validation', () => {
  async function expectInvalid(tensors: TensorToWrite[], fragment: string, options = {}) {
    const sink = memorySink();
    const err = await writeSafetensors(sink, tensors, options).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SafetensorsError);
    expect((err as SafetensorsError).code).toBe('SAFETENSORS_WRITE_INVALID');
    expect((err as SafetensorsError).message).toContain(fragment);
    expect(sink.committed).toBe(false);
    expect(() => serializeSafetensors(tensors, options)).toThrow(
      expect.objectContaining({ code: 'SAFETENSORS_WRITE_INVALID' }),
    );
  }

  it('refuses wrong byte lengths, duplicate names, the reserved name, bad dtypes, shapes and metadata', async () => {
    await expectInvalid([{ name: 'w', dtype: 'F16', shape: [3], data: new Uint8Array(5) }], "'w'");
    await expectInvalid([{ name: 'w', dtype: 'F16', shape: [2], data: new Float32Array(1) }], 'Float32Array');
    await expectInvalid(
      [
        { name: 'w', dtype: 'U8', shape: [1], data: new Uint8Array(1) },
        { name: 'w', dtype: 'U8', shape: [1], data: new Uint8Array(1) },
      ],
      'more than once',
    );
    await expectInvalid([{ name: '__metadata__', dtype: 'U8', shape: [1], data: new Uint8Array(1) }], 'reserved');
    await expectInvalid([{ name: 'w', dtype: 'F17' as DType, shape: [1], data: new Uint8Array(1) }], 'F17');
    await expectInvalid([{ name: 'w', dtype: 'U8', shape: [-1], data: new Uint8Array(0) }], 'shape');
    await expectInvalid([{ name: 'w', dtype: 'U8', shape: [1.5], data: new Uint8Array(0) }], 'shape');
    await expectInvalid([{ name: 'w', dtype: 'U8', shape: [1], data: 'abc' as unknown as Uint8Array }], 'data');
    await expectInvalid([], "metadata 'a'", { metadata: { a: 1 } });
  });

  it('a thunk producing the wrong size aborts the sink; eager errors are found before any byte is written', async () => {
    const events: string[] = [];
    const sink: ByteSink = {
      name: 'spy',
      async write() {
        events.push('write');
      },
      async commit() {
        events.push('commit');
      },
      async abort() {
        events.push('abort');
      },
    };
    await expect(
      writeSafetensors(sink, [
        { name: 'a', dtype: 'U8', shape: [1 << 17], data: () => new Uint8Array(1 << 17) },
        { name: 'b', dtype: 'F32', shape: [2], data: () => new Uint8Array(7) },
      ]),
    ).rejects.toMatchObject({ code: 'SAFETENSORS_WRITE_INVALID', message: expect.stringContaining("'b'") });
    expect(events).toEqual(['write', 'write', 'abort']);
    events.length = 0;
    await expect(
      writeSafetensors(sink, [
        { name: 'a', dtype: 'U8', shape: [1], data: () => new Uint8Array(1) },
        { name: 'b', dtype: 'F32', shape: [2], data: new Uint8Array(7) },
      ]),
    ).rejects.toMatchObject({ code: 'SAFETENSORS_WRITE_INVALID' });
    expect(events).toEqual(['abort']);
  });

  it('serializeSafetensors refuses thunks (it cannot await them)', () => {
    expect(() => serializeSafetensors([{ name: 'a', dtype: 'U8', shape: [1], data: () => new Uint8Array(1) }])).toThrow(
      expect.objectContaining({ code: 'SAFETENSORS_WRITE_INVALID' }),
    );
  });

  it('writeToSink does not commit', async () => {
    const sink = memorySink();
    await writeToSink(sink, [{ name: 'a', dtype: 'U8', shape: [1], data: new Uint8Array(1) }]);
    expect(sink.committed).toBe(false);
    expect(sink.byteLength).toBeGreaterThan(8);
  });
});

describe('files: atomic writes and refusing to overwrite inputs', () => {
  const small: TensorToWrite[] = [{ name: 'w', dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) }];

  async function tmpFiles(): Promise<string[]> {
    return (await fs.readdir(dir)).filter((f) => f.endsWith('.tmp'));
  }

  it('a thunk that throws leaves neither the target nor a temporary file; an existing target is unchanged', async () => {
    const target = path.join(dir, 'fail.safetensors');
    const boom: TensorToWrite[] = [
      { name: 'a', dtype: 'U8', shape: [1 << 20], data: () => new Uint8Array(1 << 20) },
      {
        name: 'b',
        dtype: 'U8',
        shape: [1],
        data: () => {
          throw new Error('producer failed');
        },
      },
    ];
    await expect(writeSafetensors(target, boom)).rejects.toThrow('producer failed');
    await expect(fs.stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await tmpFiles()).toEqual([]);

    await writeSafetensors(target, small);
    const before = await fs.readFile(target);
    await expect(writeSafetensors(target, boom)).rejects.toThrow('producer failed');
    expect(await fs.readFile(target)).toEqual(before);
    expect(await tmpFiles()).toEqual([]);
  });

  it('replaces an existing file atomically', async () => {
    const target = path.join(dir, 'replace.safetensors');
    await fs.writeFile(target, 'old contents');
    await writeSafetensors(target, small);
    const file = await openSafetensors(target);
    expect(Array.from(await file.readF32('w'))).toEqual([1, 2]);
    await file.close();
    expect(await tmpFiles()).toEqual([]);
  });

  it('refuses OUTPUT_WOULD_OVERWRITE_INPUT for the same path, a relative spelling, a hard link, a symlink and an open source', async () => {
    const input = path.join(dir, 'input.safetensors');
    await writeSafetensors(input, small);
    const original = await fs.readFile(input);
    const hard = path.join(dir, 'hard.safetensors');
    const soft = path.join(dir, 'soft.safetensors');
    await fs.link(input, hard);
    await fs.symlink(input, soft);
    const src = await fileSource(input);
    const cases: [string, (string | typeof src)[]][] = [
      [input, [input]],
      [path.relative(process.cwd(), input), [input]],
      [hard, [input]],
      [soft, [input]],
      [input, [src]],
      [hard, [src]],
      [input, [path.join(dir, 'other.safetensors'), soft]],
    ];
    try {
      for (const [target, refuse] of cases) {
        const err = await writeSafetensors(target, small, { refuseOverwrite: refuse }).catch((e: unknown) => e);
        expect(err, `${target}`).toBeInstanceOf(IoError);
        expect((err as IoError).code).toBe('OUTPUT_WOULD_OVERWRITE_INPUT');
        expect((err as IoError).message).toContain(target);
      }
    } finally {
      await src.close();
    }
    expect(await fs.readFile(input)).toEqual(original);
    expect(await tmpFiles()).toEqual([]);
    // a different output is fine
    await writeSafetensors(path.join(dir, 'different.safetensors'), small, { refuseOverwrite: [input] });
  });
});

describe('cross-check with the npm safetensors package', () => {
  it('parses our files to the same names, dtypes, shapes and bytes', async () => {
    await fc.assert(
      fc.asyncProperty(tensorsArb, async (tensors) => {
        // The npm reader cannot handle __metadata__ (it treats it as a tensor), so this check writes none.
        const bytes = serializeSafetensors(tensors);
        const theirs = new SafeTensor(bytes);
        const names = [...theirs.metadata.keys()];
        expect(names.sort()).toEqual(tensors.map((t) => t.name).sort());
        for (const t of tensors) {
          const m = theirs.metadata.get(t.name)!;
          expect(m.dtype).toBe(t.dtype);
          expect(m.shape).toEqual(t.shape);
          expect(theirs.getTensor(t.name)).toEqual(t.data);
        }
      }),
      { numRuns: 200 },
    );
  });
});
