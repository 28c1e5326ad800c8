/**
 * The split head (ByteSink.splitHead, src/node/file-sink.ts + direct-writer.ts writeHead): the header and the leading
 * tensors marked `copyOf` are written by the file sink itself, by positional writes alongside the ordered writes,
 * which start at once at a 4 KiB boundary. The file holds the same bytes whatever finishes first; the copies' data
 * is never asked for; a failure of either side leaves no output and no temp file.
 */
import { promises as fs } from 'node:fs';

const open = fs.open.bind(fs);
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { ByteSink, ByteSource, SplitHead } from '../src/core/bytes.js';
import { memorySink } from '../src/core/memory.js';
import { fuseLoras } from '../src/fuse/fuse.js';
import { createWasmKernel } from '../src/kernels/cpu.js';
import { fileSink } from '../src/node/files.js';
import { type TensorToWrite, serializeSafetensors, writeSafetensors, writeToSink } from '../src/safetensors/write.js';

const FX = path.resolve(import.meta.dirname, '..', 'fixtures');

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-mix-head-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A "base file": `count` F16 tensors of varied sizes laid end to end after `skip` bytes, as an in-memory source. */
function baseOf(sizes: readonly number[], skip: number) {
  const offsets: number[] = [];
  let at = skip;
  for (const n of sizes) {
    offsets.push(at);
    at += n;
  }
  const all = bytes(at, 7);
  return { all, offsets };
}

/**
 * A source over `all` that logs each read as it ends; a read starting at `slow.at` (the head's first: where the
 * copies begin) first waits `slow.ms`, and one starting at `failAt` rejects.
 */
function slowSource(
  all: Uint8Array,
  log: string[],
  slow: { at: number; ms: number } | null,
  failAt?: number,
): ByteSource {
  const wait = async (start: number): Promise<void> => {
    if (slow && start === slow.at) await sleep(slow.ms);
    if (start === failAt) throw new Error(`injected read failure at ${start}`);
    log.push(`read ${start}`);
  };
  return {
    name: 'base',
    byteLength: all.byteLength,
    async read(start, end) {
      await wait(start);
      return all.slice(start, end);
    },
    async readInto(start, target) {
      await wait(start);
      target.set(all.subarray(start, start + target.byteLength));
    },
  };
}

/**
 * Tensors: `copies` leading copies of the source (their data throws: it must not be asked for), then `fresh` tensors
 * whose bytes are computed (logged when asked for).
 */
function tensorsOf(
  source: ByteSource,
  all: Uint8Array,
  offsets: readonly number[],
  sizes: readonly number[],
  copies: number,
  log: string[],
): { list: TensorToWrite[]; plain: TensorToWrite[] } {
  const list: TensorToWrite[] = [];
  const plain: TensorToWrite[] = [];
  sizes.forEach((n, i) => {
    const name = `t${String(i).padStart(3, '0')}`;
    const shape = [n / 2];
    const own = i < copies ? all.subarray(offsets[i]!, offsets[i]! + n) : bytes(n, 100 + i);
    plain.push({ name, dtype: 'F16', shape, data: own });
    list.push({
      name,
      dtype: 'F16',
      shape,
      data:
        i < copies
          ? () => {
              throw new Error(`the data of copied tensor ${name} was asked for`);
            }
          : () => {
              log.push(`data ${name}`);
              return own;
            },
      ...(i < copies ? { copyOf: { source, offset: offsets[i]! } } : {}),
    });
  });
  return { list, plain };
}

const SIZES = [
  ...Array.from({ length: 40 }, (_, i) => 2 * (1000 + 37 * i)),
  9 << 20, // the head spans two of its 8 MiB chunks
  2 * 77_777,
  ...Array.from({ length: 30 }, (_, i) => 2 * (500 + 91 * i)),
];
const COPIES = 42;

describe('ByteSink.splitHead: the leading copies written alongside', () => {
  it('a sink that splits: the ordered writes start at the split, before the head is written, and the bytes are the same', async () => {
    // An in-memory sink that splits at a 4 KiB boundary and finishes the head only after every ordered write.
    const { all, offsets } = baseOf(SIZES, 12_345);
    const log: string[] = [];
    const source = slowSource(all, log, null);
    const { list, plain } = tensorsOf(source, all, offsets, SIZES, COPIES, log);
    const writes: { at: number; bytes: Uint8Array }[] = [];
    let pos = -1;
    let headDone = false;
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const sink: ByteSink = {
      name: 'split',
      async write(chunk) {
        expect(pos, 'ordered writes begin after splitHead').toBeGreaterThanOrEqual(0);
        writes.push({ at: pos, bytes: chunk.slice() });
        pos += chunk.byteLength;
      },
      async commit() {},
      async abort() {},
      splitHead(prefix, src, start, upTo): SplitHead {
        const at = Math.floor(upTo / 4096) * 4096;
        pos = at;
        const done = (async () => {
          await gate; // the head ends last
          const head = new Uint8Array(at);
          head.set(prefix);
          head.set(await src.read(start, start + at - prefix.byteLength), prefix.byteLength);
          writes.push({ at: 0, bytes: head });
          headDone = true;
        })();
        return { at, done };
      },
    };
    const expected = serializeSafetensors(plain, { metadata: { a: 'b' } });
    const written = writeToSink(sink, list, { metadata: { a: 'b' } });
    // Every computed tensor is asked for while the head is still waiting.
    for (let k = 0; k < 50 && !log.includes(`data t${String(SIZES.length - 1).padStart(3, '0')}`); k++) await sleep(5);
    expect(headDone).toBe(false);
    expect(log.filter((e) => e.startsWith('data ')).length).toBe(SIZES.length - COPIES);
    release();
    const res = await written;
    expect(headDone).toBe(true);
    expect(res.byteLength).toBe(expected.byteLength);
    const got = new Uint8Array(expected.byteLength);
    for (const w of writes) got.set(w.bytes, w.at);
    expect(Buffer.from(got).equals(Buffer.from(expected))).toBe(true);
    // The first ordered write is at the split (inside the last copy, less than a block before the computed ones).
    const first = writes[0]!;
    const copiesEnd = res.tensors[COPIES - 1]!.offset + res.tensors[COPIES - 1]!.byteLength;
    expect(first.at % 4096).toBe(0);
    expect(first.at).toBeGreaterThan(copiesEnd - 4096);
    expect(first.at).toBeLessThanOrEqual(copiesEnd);
  });

  it('a sink that splits early: the rest of the leading copies is written in order, the same bytes', async () => {
    const { all, offsets } = baseOf(SIZES, 999);
    const log: string[] = [];
    const source = slowSource(all, log, null);
    const { list, plain } = tensorsOf(source, all, offsets, SIZES, COPIES, log);
    const parts: { at: number; bytes: Uint8Array }[] = [];
    let pos = 0;
    const sink: ByteSink = {
      name: 'early',
      async write(chunk) {
        parts.push({ at: pos, bytes: chunk.slice() });
        pos += chunk.byteLength;
      },
      async commit() {},
      async abort() {},
      splitHead(prefix, src, start, upTo): SplitHead {
        expect(upTo).toBeGreaterThan(8192 + (9 << 20));
        pos = 8192; // far below upTo, like a capped head: megabytes of copies are left to the ordered writes
        const head = new Uint8Array(8192);
        head.set(prefix);
        const done = src.read(start, start + 8192 - prefix.byteLength).then((b) => {
          head.set(b, prefix.byteLength);
          parts.push({ at: 0, bytes: head });
        });
        return { at: 8192, done };
      },
    };
    const expected = serializeSafetensors(plain);
    await writeToSink(sink, list);
    const got = new Uint8Array(expected.byteLength);
    for (const w of parts) got.set(w.bytes, w.at);
    expect(Buffer.from(got).equals(Buffer.from(expected))).toBe(true);
  });

  for (const direct of [true, false]) {
    it(`fileSink (direct ${direct}): a slow head ends after the ordered writes; same bytes, copies never asked for`, async () => {
      const { all, offsets } = baseOf(SIZES, 4_321);
      const log: string[] = [];
      const source = slowSource(all, log, { at: offsets[0]!, ms: 300 });
      const { list, plain } = tensorsOf(source, all, offsets, SIZES, COPIES, log);
      const target = path.join(tmp, `slow-head-${direct}.safetensors`);
      await writeSafetensors(target, list, { metadata: { x: 'y' }, direct, fsync: false });
      const got = await fs.readFile(target);
      expect(got.equals(Buffer.from(serializeSafetensors(plain, { metadata: { x: 'y' } })))).toBe(true);
      // The computed tensors were asked for (and written) before the head's first read came back.
      const headRead = log.indexOf(`read ${offsets[0]}`);
      const lastData = log.reduce((k, e, i) => (e.startsWith('data ') ? i : k), -1);
      expect(lastData).toBeGreaterThan(0);
      expect(headRead).toBeGreaterThan(lastData);
      expect((await fs.readdir(tmp)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    });
  }

  it('a failing head read: the run fails, and neither the output nor the temp file is left', async () => {
    const { all, offsets } = baseOf(SIZES, 100);
    const log: string[] = [];
    const source = slowSource(all, log, { at: offsets[0]!, ms: 20 }, offsets[0]!);
    const { list } = tensorsOf(source, all, offsets, SIZES, COPIES, log);
    const target = path.join(tmp, 'head-fails.safetensors');
    await expect(writeSafetensors(target, list, { direct: true })).rejects.toThrow(/injected read failure/);
    expect(await fs.readdir(tmp).then((n) => n.filter((x) => x.includes('head-fails')))).toEqual([]);
  });

  it('a failing ordered write: the head is stopped, and neither the output nor the temp file is left', async () => {
    const { all, offsets } = baseOf(SIZES, 100);
    const log: string[] = [];
    const source = slowSource(all, log, { at: offsets[0]!, ms: 100 });
    const { list } = tensorsOf(source, all, offsets, SIZES, COPIES, log);
    const broken = [...list];
    broken[COPIES + 3] = {
      ...list[COPIES + 3]!,
      data: () => {
        throw new Error('injected compute failure');
      },
    };
    const target = path.join(tmp, 'body-fails.safetensors');
    await expect(writeSafetensors(target, broken, { direct: true })).rejects.toThrow(/injected compute failure/);
    await sleep(200); // a head still writing would show up here
    expect(await fs.readdir(tmp).then((n) => n.filter((x) => x.includes('body-fails')))).toEqual([]);
  });

  it('fileSink alone: commit waits for a head still being written', async () => {
    const all = bytes(3 << 20, 3);
    const source = slowSource(all, [], { at: 1000, ms: 300 });
    const prefix = bytes(100, 9);
    const target = path.join(tmp, 'sink-only.bin');
    const sink = await fileSink(target, { direct: true, fsync: false });
    const split = sink.splitHead?.(prefix, source, 1000, 2_000_000);
    expect(split?.at).toBe(Math.floor(2_000_000 / 4096) * 4096);
    const tail = bytes(12_345, 4);
    await sink.write(all.subarray(1000 + split!.at - 100, 1000 + 2_000_000 - 100));
    await sink.write(tail);
    await sink.commit(); // split.done not awaited here
    const expected = Buffer.concat([prefix, all.subarray(1000, 1000 + 2_000_000 - 100), tail]);
    expect((await fs.readFile(target)).equals(expected)).toBe(true);
  });

  it('lateMetadata rewrites the header after the head is written', async () => {
    const { all, offsets } = baseOf(SIZES, 0);
    const log: string[] = [];
    const source = slowSource(all, log, { at: offsets[0]!, ms: 100 });
    const { list, plain } = tensorsOf(source, all, offsets, SIZES, COPIES, log);
    const target = path.join(tmp, 'late.safetensors');
    const sink = await fileSink(target, { direct: true, fsync: false });
    await writeToSink(sink, list, {
      metadata: { hash: '0000' },
      lateMetadata: async () => ({ hash: 'abcd' }),
    });
    await sink.commit();
    const got = await fs.readFile(target);
    expect(got.equals(Buffer.from(serializeSafetensors(plain, { metadata: { hash: 'abcd' } })))).toBe(true);
  });
});

describe('fuse into a file with a split head', () => {
  it('writes the same bytes and reports the same counts as a fuse into memory (no split)', async () => {
    const base = path.join(FX, 'sd15', 'base.safetensors');
    const lora = path.join(FX, 'sd15', 'lcm-lora.kohya.safetensors');
    const kernel = await createWasmKernel();
    try {
      const mem = memorySink();
      const a = await fuseLoras(base, [lora], [1], { out: mem, kernel });
      const target = path.join(tmp, 'fused.safetensors');
      const events: string[] = [];
      const opened: string[] = [];
      const spy = vi.spyOn(fs, 'open').mockImplementation(async (...args: Parameters<typeof fs.open>) => {
        opened.push(String(args[0]));
        return open(...args);
      });
      const b = await fuseLoras(base, [lora], [1], {
        out: target,
        kernel,
        directIO: true,
        onProgress: (p) => events.push(p.current),
      }).finally(() => spy.mockRestore());
      // The temp file was opened twice: by the ordered writes and by the head (the split happened).
      expect(opened.filter((p) => p.endsWith('.tmp')).length).toBe(2);
      expect((await fs.readFile(target)).equals(Buffer.from(mem.bytes()))).toBe(true);
      expect(b.tensors).toEqual(a.tensors);
      expect(b.bytesRead).toBe(a.bytesRead);
      expect(b.bytesWritten).toBe(a.bytesWritten);
      expect(events.length).toBe(a.tensors.total);
    } finally {
      await kernel.dispose();
    }
  });
});
